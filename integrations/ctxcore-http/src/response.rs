//! ctxcore's errors as HTTP responses: a deadline is `504 Gateway Timeout`,
//! a cancellation `499 Client Closed Request` (nginx's code; the client is
//! usually gone and never reads it, but logs and metrics do).
//!
//! The body carries the [`Error`]'s own text only ("context deadline
//! exceeded" / "context canceled"): a [`Cause`](ctxcore::Cause) can hold
//! internal details (a query, a host name, a shutdown reason) and reaches
//! the client only when the server opts in, per layer with
//! [`SetRequestContextLayer::expose_cause`] (read by
//! [`ErrorResponse::from_context`]) or per response with
//! [`ErrorResponse::expose_cause`]. The crate's own `tracing` events carry
//! only the error's kind, never the cause; the server reads the full error
//! (for its own logs) through [`ErrorResponse::error`].
//!
//! For gRPC clients, use the `grpc` module's trailers-only mapping (feature
//! `grpc`). With feature `axum`, [`ErrorResponse`] implements
//! `IntoResponse`, so handlers can `?` a context's error.
//!
//! ```
//! use ctxcore::{Context, ContextError, Error};
//! use ctxcore_http::response::{ErrorResponse, CLIENT_CLOSED_REQUEST};
//! use http::StatusCode;
//!
//! let (ctx, handle) = Context::background().with_cancel();
//! handle.cancel_with("db-7.internal refused the query");
//! let resp = ErrorResponse::from_context(&ctx).unwrap();
//! assert_eq!(resp.status(), CLIENT_CLOSED_REQUEST);
//! assert_eq!(resp.body_text(), "context canceled"); // the cause stays on the server
//! assert!(resp.error().has_cause());
//!
//! let late = ErrorResponse::new(Error::DeadlineExceeded);
//! assert_eq!(late.status(), StatusCode::GATEWAY_TIMEOUT);
//! let http: http::Response<String> = late.into_response();
//! assert_eq!(http.body(), "context deadline exceeded");
//! ```
//!
//! [`SetRequestContextLayer::expose_cause`]: crate::server::SetRequestContextLayer::expose_cause

use crate::server::layer_marker;
use ctxcore::{Context, ContextError, Error};
use http::{header, HeaderValue, Response, StatusCode};
use std::fmt;

/// `499 Client Closed Request`, the status of a cancelled request.
///
/// ```
/// assert_eq!(ctxcore_http::response::CLIENT_CLOSED_REQUEST.as_u16(), 499);
/// ```
pub const CLIENT_CLOSED_REQUEST: StatusCode = match StatusCode::from_u16(499) {
    Ok(s) => s,
    Err(_) => StatusCode::INTERNAL_SERVER_ERROR,
};

/// The status for an error kind: 504 for a deadline, 499 for a cancel.
///
/// ```
/// use ctxcore::Error;
/// use ctxcore_http::response::status_for;
/// assert_eq!(status_for(Error::DeadlineExceeded), http::StatusCode::GATEWAY_TIMEOUT);
/// assert_eq!(status_for(Error::Canceled).as_u16(), 499);
/// ```
pub fn status_for(kind: Error) -> StatusCode {
    match kind {
        Error::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        _ => CLIENT_CLOSED_REQUEST,
    }
}

/// Whether `ctx` comes from a layer built with
/// [`expose_cause(true)`](crate::server::SetRequestContextLayer::expose_cause)
/// (or descends from such a request context).
///
/// ```
/// use ctxcore::Context;
/// assert!(!ctxcore_http::response::cause_exposed(&Context::background()));
/// ```
pub fn cause_exposed(ctx: &Context) -> bool {
    layer_marker(ctx)
}

/// The error of a done context, `Err`, or `Ok(())` while it is live: for `?`
/// in handlers. Honours the layer's
/// [`expose_cause`](crate::server::SetRequestContextLayer::expose_cause).
///
/// ```
/// use ctxcore::Context;
/// use ctxcore_http::response::check;
///
/// let (ctx, handle) = Context::background().with_cancel();
/// assert!(check(&ctx).is_ok());
/// handle.cancel();
/// assert_eq!(check(&ctx).unwrap_err().status().as_u16(), 499);
/// ```
pub fn check(ctx: &Context) -> Result<(), ErrorResponse> {
    match ErrorResponse::from_context(ctx) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// A context's error, ready to become a response (504 or 499, plain text).
///
/// It is also an `Error` whose `source()` is the [`ContextError`], and
/// displays as its body text.
///
/// ```
/// use ctxcore::{ContextError, Error};
/// use ctxcore_http::response::ErrorResponse;
///
/// let err = ContextError::new(Error::DeadlineExceeded, "replica 3 too slow");
/// let hidden = ErrorResponse::from(err.clone());
/// assert_eq!(hidden.body_text(), "context deadline exceeded");
/// let shown = ErrorResponse::new(err).expose_cause(true);
/// assert_eq!(shown.body_text(), "context deadline exceeded: replica 3 too slow");
/// ```
#[derive(Clone, Debug)]
pub struct ErrorResponse {
    error: ContextError,
    expose_cause: bool,
}

impl ErrorResponse {
    /// The response for `error`; its cause is not shown to the client.
    ///
    /// ```
    /// use ctxcore_http::response::ErrorResponse;
    /// let resp = ErrorResponse::new(ctxcore::Error::Canceled);
    /// assert_eq!(resp.body_text(), "context canceled");
    /// ```
    pub fn new(error: impl Into<ContextError>) -> Self {
        ErrorResponse {
            error: error.into(),
            expose_cause: false,
        }
    }

    /// The response for a done context, `None` while it is live. Shows the
    /// cause only if the context comes from a layer with
    /// [`expose_cause(true)`](crate::server::SetRequestContextLayer::expose_cause).
    ///
    /// ```
    /// use ctxcore::Context;
    /// use ctxcore_http::response::ErrorResponse;
    /// let (ctx, handle) = Context::background().with_cancel();
    /// assert!(ErrorResponse::from_context(&ctx).is_none());
    /// handle.cancel_with("secret");
    /// assert_eq!(ErrorResponse::from_context(&ctx).unwrap().body_text(), "context canceled");
    /// ```
    pub fn from_context(ctx: &Context) -> Option<Self> {
        let error = ctx.error()?;
        Some(ErrorResponse {
            error,
            expose_cause: cause_exposed(ctx),
        })
    }

    /// Whether the client is shown the cause (`"context canceled: <cause>"`).
    ///
    /// ```
    /// use ctxcore::{ContextError, Error};
    /// use ctxcore_http::response::ErrorResponse;
    /// let resp = ErrorResponse::new(ContextError::new(Error::Canceled, "maintenance"))
    ///     .expose_cause(true);
    /// assert_eq!(resp.body_text(), "context canceled: maintenance");
    /// ```
    pub fn expose_cause(mut self, expose: bool) -> Self {
        self.expose_cause = expose;
        self
    }

    /// Whether the cause will be shown.
    ///
    /// ```
    /// let resp = ctxcore_http::response::ErrorResponse::new(ctxcore::Error::Canceled);
    /// assert!(!resp.cause_is_exposed());
    /// ```
    pub fn cause_is_exposed(&self) -> bool {
        self.expose_cause
    }

    /// The full error, cause included, for the server's own logs.
    ///
    /// ```
    /// use ctxcore::{ContextError, Error};
    /// use ctxcore_http::response::ErrorResponse;
    /// let resp = ErrorResponse::new(ContextError::new(Error::Canceled, "SIGTERM"));
    /// assert_eq!(resp.error().cause().as_str(), Some("SIGTERM"));
    /// ```
    pub fn error(&self) -> &ContextError {
        &self.error
    }

    /// 504 for a deadline, 499 for a cancel.
    ///
    /// ```
    /// let resp = ctxcore_http::response::ErrorResponse::new(ctxcore::Error::DeadlineExceeded);
    /// assert_eq!(resp.status(), http::StatusCode::GATEWAY_TIMEOUT);
    /// ```
    pub fn status(&self) -> StatusCode {
        status_for(self.error.kind())
    }

    /// What the client reads: the error's own text, plus the cause if
    /// exposed.
    ///
    /// ```
    /// let resp = ctxcore_http::response::ErrorResponse::new(ctxcore::Error::DeadlineExceeded);
    /// assert_eq!(resp.body_text(), "context deadline exceeded");
    /// ```
    pub fn body_text(&self) -> String {
        if self.expose_cause {
            self.error.to_string()
        } else {
            self.error.kind().to_string()
        }
    }

    /// The response: the status, `content-type: text/plain; charset=utf-8`
    /// and [`body_text`](Self::body_text).
    ///
    /// ```
    /// let resp = ctxcore_http::response::ErrorResponse::new(ctxcore::Error::Canceled);
    /// let http: http::Response<String> = resp.into_response();
    /// assert_eq!(http.status().as_u16(), 499);
    /// assert_eq!(http.headers()["content-type"], "text/plain; charset=utf-8");
    /// ```
    pub fn into_response<B: From<String>>(self) -> Response<B> {
        // The kind only: the cause may hold internal details, and the layer
        // formats it only where it is exposed (`body_text`). The caller still
        // has `error()` for its own logs.
        tracing::debug!(
            error = %self.error.kind(),
            status = %self.status(),
            cause_exposed = self.expose_cause,
            "request context error response"
        );
        let mut resp = Response::new(B::from(self.body_text()));
        *resp.status_mut() = self.status();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        resp
    }
}

impl From<ContextError> for ErrorResponse {
    fn from(error: ContextError) -> Self {
        ErrorResponse::new(error)
    }
}

impl From<Error> for ErrorResponse {
    fn from(error: Error) -> Self {
        ErrorResponse::new(error)
    }
}

impl fmt::Display for ErrorResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.body_text())
    }
}

impl std::error::Error for ErrorResponse {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
impl axum_core::response::IntoResponse for ErrorResponse {
    fn into_response(self) -> axum_core::response::Response {
        ErrorResponse::into_response::<axum_core::body::Body>(self)
    }
}
