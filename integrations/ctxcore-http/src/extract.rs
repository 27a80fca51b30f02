//! The axum extractor for the request context that
//! [`SetRequestContextLayer`](crate::server::SetRequestContextLayer) puts in
//! the request extensions.
//!
//! `RequestContext` rejects with [`MissingRequestContext`] (500, naming the
//! layer) when the layer is missing; `Option<RequestContext>` never rejects.
//!
//! ```
//! use axum::{routing::get, Router};
//! use ctxcore::Context;
//! use ctxcore_http::{extract::RequestContext, response::ErrorResponse, server::SetRequestContextLayer};
//! use std::time::Duration;
//!
//! async fn handler(RequestContext(ctx): RequestContext) -> Result<String, ErrorResponse> {
//!     // Race the work against the request: a done context becomes 499 or 504.
//!     let answer = ctx.run(async { 42 }).await.map_err(|_| ErrorResponse::from_context(&ctx).unwrap())?;
//!     Ok(answer.to_string())
//! }
//!
//! let (root, _shutdown) = Context::background().with_cancel();
//! let app: Router = Router::new()
//!     .route("/", get(handler))
//!     .layer(SetRequestContextLayer::new(&root).max_timeout(Duration::from_secs(10)));
//! ```

use crate::response::ErrorResponse;
use axum_core::extract::{FromRequestParts, OptionalFromRequestParts};
use axum_core::response::{IntoResponse, Response};
use ctxcore::Context;
use http::{request::Parts, StatusCode};
use std::{convert::Infallible, fmt, ops::Deref};

/// The request's [`Context`], extracted from the request extensions.
///
/// ```
/// use axum::{routing::get, Router};
/// use ctxcore_http::extract::RequestContext;
///
/// async fn handler(ctx: Option<RequestContext>) -> &'static str {
///     match ctx {
///         Some(RequestContext(ctx)) if ctx.is_done() => "done",
///         Some(_) => "live",
///         None => "no layer",
///     }
/// }
/// let app: Router = Router::new().route("/", get(handler));
/// ```
#[derive(Clone, Debug)]
pub struct RequestContext(pub Context);

impl RequestContext {
    /// `Err` with the mapped response once the context is done (for `?`);
    /// see [`crate::response::check`].
    ///
    /// ```
    /// use ctxcore::Context;
    /// use ctxcore_http::extract::RequestContext;
    /// let (ctx, handle) = Context::background().with_timeout(std::time::Duration::ZERO);
    /// let err = RequestContext(ctx).check().unwrap_err();
    /// assert_eq!(err.status(), http::StatusCode::GATEWAY_TIMEOUT);
    /// # drop(handle);
    /// ```
    pub fn check(&self) -> Result<(), ErrorResponse> {
        crate::response::check(&self.0)
    }

    /// The context.
    ///
    /// ```
    /// use ctxcore_http::extract::RequestContext;
    /// let ctx = RequestContext(ctxcore::Context::background()).into_inner();
    /// assert!(!ctx.is_done());
    /// ```
    pub fn into_inner(self) -> Context {
        self.0
    }
}

impl Deref for RequestContext {
    type Target = Context;

    fn deref(&self) -> &Context {
        &self.0
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RequestContext {
    type Rejection = MissingRequestContext;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Context>()
            .cloned()
            .map(RequestContext)
            .ok_or(MissingRequestContext { _private: () })
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for RequestContext {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<Context>().cloned().map(RequestContext))
    }
}

/// The rejection of [`RequestContext`] when the request has no context: the
/// service is not behind `SetRequestContextLayer` (a server bug, hence 500).
///
/// ```
/// use axum::extract::FromRequestParts;
/// use ctxcore_http::extract::RequestContext;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let (mut parts, ()) = http::Request::new(()).into_parts();
/// let err = RequestContext::from_request_parts(&mut parts, &()).await.unwrap_err();
/// assert_eq!(err.status(), http::StatusCode::INTERNAL_SERVER_ERROR);
/// assert!(err.body_text().contains("SetRequestContextLayer"));
/// # }
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub struct MissingRequestContext {
    _private: (),
}

impl MissingRequestContext {
    /// 500 Internal Server Error.
    ///
    /// ```
    /// # use ctxcore_http::extract::MissingRequestContext;
    /// fn status(e: &MissingRequestContext) -> http::StatusCode { e.status() }
    /// ```
    pub fn status(&self) -> StatusCode {
        StatusCode::INTERNAL_SERVER_ERROR
    }

    /// The body: names the missing layer.
    ///
    /// ```
    /// # use ctxcore_http::extract::MissingRequestContext;
    /// fn text(e: &MissingRequestContext) -> String { e.body_text() }
    /// ```
    pub fn body_text(&self) -> String {
        String::from("Missing request context: the service is not behind ctxcore_http::server::SetRequestContextLayer")
    }
}

impl fmt::Display for MissingRequestContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.body_text())
    }
}

impl std::error::Error for MissingRequestContext {}

impl IntoResponse for MissingRequestContext {
    fn into_response(self) -> Response {
        tracing::error!("{}", self.body_text());
        (self.status(), self.body_text()).into_response()
    }
}
