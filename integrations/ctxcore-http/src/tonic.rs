//! tonic support: context errors as `tonic::Status`, the request's
//! [`Context`] in a `tonic::Request`, and the client layer on a tonic
//! `Channel`.
//!
//! - [`status`] maps a [`ContextError`] to a [`Status`]: a deadline gives
//!   `DEADLINE_EXCEEDED` (code 4), a cancel gives `CANCELLED` (code 1). The
//!   message is the error's own text (`context deadline exceeded`), never the
//!   cause: causes are for this process's logs, not for the peer.
//! - [`RequestExt`] reads and sets the [`Context`] of a `tonic::Request`. On
//!   the server, tonic copies the HTTP request's extensions into the
//!   `tonic::Request`, so a handler served behind
//!   [`SetRequestContextLayer`](crate::server::SetRequestContextLayer)
//!   (`Server::builder().layer(..)`) finds its request context there. On the
//!   client, tonic moves the `tonic::Request`'s extensions into the HTTP
//!   request, where [`PropagateDeadlineLayer`] reads it.
//! - [`IntoStatusLayer`] goes on top of [`PropagateDeadlineLayer`] on a
//!   `Channel`, so that a generated client reports the context's end as
//!   `CANCELLED` / `DEADLINE_EXCEEDED` (without it the client layer works
//!   too, but tonic reports its errors as `UNKNOWN`):
//!
//! ```no_run
//! use ctxcore::Context;
//! use ctxcore_http::client::PropagateDeadlineLayer;
//! use ctxcore_http::tonic::{IntoStatusLayer, RequestExt};
//! use std::time::Duration;
//! use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
//!
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:50051").connect().await?;
//! let channel = tower::ServiceBuilder::new()
//!     .layer(IntoStatusLayer::new())
//!     .layer(PropagateDeadlineLayer::new())
//!     .service(channel);
//! let mut client = HealthClient::new(channel);
//!
//! let (ctx, _h) = Context::background().with_timeout(Duration::from_millis(200));
//! let req = tonic::Request::new(HealthCheckRequest { service: String::new() }).with_context(&ctx);
//! match client.check(req).await {
//!     Ok(resp) => println!("{:?}", resp.into_inner().status),
//!     Err(status) if status.code() == tonic::Code::DeadlineExceeded => println!("too slow"),
//!     Err(status) => return Err(status.into()),
//! }
//! # Ok(()) }
//! ```

use crate::client;
#[cfg(doc)]
use crate::client::PropagateDeadlineLayer;
use ::tonic::{Code, Status, TimeoutExpired};
use ctxcore::{Context, ContextError};
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use tower_layer::Layer;
use tower_service::Service;

type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// The gRPC code of a context error: `DeadlineExceeded` (4) or `Cancelled` (1).
///
/// ```
/// use ctxcore::Error;
/// assert_eq!(ctxcore_http::tonic::code(Error::DeadlineExceeded), tonic::Code::DeadlineExceeded);
/// assert_eq!(ctxcore_http::tonic::code(Error::Canceled), tonic::Code::Cancelled);
/// ```
pub fn code(kind: ctxcore::Error) -> Code {
    match kind {
        ctxcore::Error::Canceled => Code::Cancelled,
        ctxcore::Error::DeadlineExceeded => Code::DeadlineExceeded,
    }
}

/// A [`ContextError`] as a [`Status`]: code 4 for a deadline, 1 for a
/// cancel; the message is the kind's text only, never the cause.
///
/// ```
/// use ctxcore::{ContextError, Error};
/// let status = ctxcore_http::tonic::status(&ContextError::new(Error::DeadlineExceeded, "db secret"));
/// assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
/// assert_eq!(status.message(), "context deadline exceeded");
/// ```
pub fn status(err: &ContextError) -> Status {
    Status::new(code(err.kind()), err.kind().to_string())
}

impl<E: Into<BoxError>> From<client::Error<E>> for Status {
    /// A context error as [`status`] does; an inner error as tonic's
    /// [`Status::from_error`] does (a `Status` inside stays itself, an
    /// HTTP/2 or connect error gets its code, anything else is `UNKNOWN`),
    /// except that tonic's own [`TimeoutExpired`] (a `Channel` enforcing the
    /// `grpc-timeout` header this layer set: with the default margin it fires
    /// just before the context's deadline) is `DEADLINE_EXCEEDED`, not
    /// tonic's `CANCELLED`.
    fn from(err: client::Error<E>) -> Status {
        match err {
            client::Error::Inner(e) => inner_status(e.into()),
            client::Error::Canceled(_) => Status::new(Code::Cancelled, ctxcore::Error::Canceled.to_string()),
            client::Error::DeadlineExceeded(_) => {
                Status::new(Code::DeadlineExceeded, ctxcore::Error::DeadlineExceeded.to_string())
            }
        }
    }
}

/// tonic's [`Status::from_error`], except that tonic's own timeout (a
/// `Channel` enforcing the `grpc-timeout` header, [`TimeoutExpired`]
/// anywhere in the source chain) is `DEADLINE_EXCEEDED`, as gRPC specifies,
/// not tonic's `CANCELLED`.
fn inner_status(err: BoxError) -> Status {
    let mut source: Option<&(dyn StdError + 'static)> = Some(&*err);
    while let Some(e) = source {
        if let Some(timeout) = e.downcast_ref::<TimeoutExpired>() {
            return Status::new(Code::DeadlineExceeded, timeout.to_string());
        }
        source = e.source();
    }
    Status::from_error(err)
}

/// Reads and sets the [`Context`] of a `tonic::Request` (kept in its
/// extensions).
///
/// ```
/// use ctxcore::Context;
/// use ctxcore_http::tonic::RequestExt;
///
/// let (ctx, _h) = Context::background().with_cancel();
/// let req = tonic::Request::new(()).with_context(&ctx);
/// assert!(req.context().is_some());
/// assert!(tonic::Request::new(()).context().is_none());
/// ```
pub trait RequestExt: sealed::Sealed {
    /// The request's context: on a server, the one
    /// [`SetRequestContextLayer`](crate::server::SetRequestContextLayer)
    /// put in; on a client, the one set with
    /// [`with_context`](Self::with_context).
    ///
    /// ```
    /// use ctxcore_http::tonic::RequestExt;
    /// assert!(tonic::Request::new(()).context().is_none());
    /// ```
    fn context(&self) -> Option<&Context>;

    /// The request with `ctx` as its context, for a client behind
    /// [`PropagateDeadlineLayer`].
    ///
    /// ```
    /// use ctxcore_http::tonic::RequestExt;
    /// let req = tonic::Request::new(()).with_context(&ctxcore::Context::background());
    /// assert!(req.context().is_some());
    /// ```
    fn with_context(self, ctx: &Context) -> Self;

    /// Sets `ctx` as the request's context.
    ///
    /// ```
    /// use ctxcore_http::tonic::RequestExt;
    /// let mut req = tonic::Request::new(());
    /// req.set_context(&ctxcore::Context::background());
    /// assert!(req.context().is_some());
    /// ```
    fn set_context(&mut self, ctx: &Context);
}

impl<T> RequestExt for ::tonic::Request<T> {
    fn context(&self) -> Option<&Context> {
        self.extensions().get::<Context>()
    }

    fn with_context(mut self, ctx: &Context) -> Self {
        self.set_context(ctx);
        self
    }

    fn set_context(&mut self, ctx: &Context) {
        self.extensions_mut().insert(ctx.clone());
    }
}

mod sealed {
    pub trait Sealed {}
    impl<T> Sealed for ::tonic::Request<T> {}
}

/// The request's [`Context`], or [`Status`] `INTERNAL` when there is none
/// (the server layer is missing), for a handler's `?`.
///
/// ```
/// let err = ctxcore_http::tonic::request_context(&tonic::Request::new(())).unwrap_err();
/// assert_eq!(err.code(), tonic::Code::Internal);
/// ```
#[allow(clippy::result_large_err)]
pub fn request_context<T>(req: &::tonic::Request<T>) -> Result<Context, Status> {
    req.context()
        .cloned()
        .ok_or_else(|| Status::internal("no request context: SetRequestContextLayer is missing"))
}

/// A [`Layer`] that turns the errors of a [`PropagateDeadline`](client::PropagateDeadline)
/// service (and of its response bodies) into [`Status`], so that a
/// generated tonic client reports `CANCELLED` / `DEADLINE_EXCEEDED`. Put it
/// above [`PropagateDeadlineLayer`]; see the [module docs](self).
///
/// ```
/// use ctxcore_http::client::PropagateDeadlineLayer;
/// use ctxcore_http::tonic::IntoStatusLayer;
/// use tower::ServiceBuilder;
///
/// let builder = ServiceBuilder::new().layer(IntoStatusLayer::new()).layer(PropagateDeadlineLayer::new());
/// # let _ = builder;
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct IntoStatusLayer {
    _private: (),
}

impl IntoStatusLayer {
    /// The layer.
    ///
    /// ```
    /// let layer = ctxcore_http::tonic::IntoStatusLayer::new();
    /// # let _ = layer;
    /// ```
    pub fn new() -> Self {
        IntoStatusLayer { _private: () }
    }
}

impl<S> Layer<S> for IntoStatusLayer {
    type Service = IntoStatus<S>;

    fn layer(&self, inner: S) -> IntoStatus<S> {
        IntoStatus { inner }
    }
}

/// The service of [`IntoStatusLayer`]: its errors and its bodies' errors are
/// [`Status`].
///
/// ```
/// use ctxcore_http::tonic::IntoStatus;
/// let svc = IntoStatus::new(5u8);
/// assert_eq!(*svc.get_ref(), 5);
/// ```
#[derive(Clone, Debug)]
pub struct IntoStatus<S> {
    inner: S,
}

impl<S> IntoStatus<S> {
    /// Wraps `inner`.
    ///
    /// ```
    /// let svc = ctxcore_http::tonic::IntoStatus::new(());
    /// # let _ = svc;
    /// ```
    pub fn new(inner: S) -> Self {
        IntoStatus { inner }
    }

    /// The inner service.
    ///
    /// ```
    /// assert_eq!(*ctxcore_http::tonic::IntoStatus::new(1u8).get_ref(), 1);
    /// ```
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    ///
    /// ```
    /// let mut svc = ctxcore_http::tonic::IntoStatus::new(1u8);
    /// *svc.get_mut() = 2;
    /// assert_eq!(*svc.get_ref(), 2);
    /// ```
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    ///
    /// ```
    /// assert_eq!(ctxcore_http::tonic::IntoStatus::new(1u8).into_inner(), 1);
    /// ```
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqBody, ResBody, E> Service<Request<ReqBody>> for IntoStatus<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>, Error = client::Error<E>>,
    E: Into<BoxError>,
{
    type Response = Response<StatusBody<ResBody>>;
    type Error = Status;
    type Future = IntoStatusFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Status>> {
        self.inner.poll_ready(cx).map_err(Status::from)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        IntoStatusFuture {
            inner: self.inner.call(req),
        }
    }
}

pin_project! {
    /// The future of [`IntoStatus`].
    ///
    /// ```
    /// use ctxcore_http::tonic::{IntoStatus, IntoStatusFuture};
    /// use ctxcore_http::client::PropagateDeadline;
    /// use tower::{service_fn, Service};
    ///
    /// let mut svc = IntoStatus::new(PropagateDeadline::new(service_fn(|_req: http::Request<()>| async {
    ///     Ok::<_, std::io::Error>(http::Response::new(()))
    /// })));
    /// let fut: IntoStatusFuture<_> = svc.call(http::Request::new(()));
    /// assert!(tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(fut).is_ok());
    /// ```
    pub struct IntoStatusFuture<F> {
        #[pin]
        inner: F,
    }
}

impl<F> fmt::Debug for IntoStatusFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IntoStatusFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> Future for IntoStatusFuture<F>
where
    F: Future<Output = Result<Response<B>, client::Error<E>>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<StatusBody<B>>, Status>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        self.project().inner.poll(cx).map(|res| {
            res.map(|resp| resp.map(|inner| StatusBody { inner }))
                .map_err(Status::from)
        })
    }
}

pin_project! {
    /// The response body of [`IntoStatus`]: the inner body's
    /// [`client::Error`]s become [`Status`].
    ///
    /// ```
    /// use ctxcore_http::client::ResponseBody;
    /// use ctxcore_http::tonic::StatusBody;
    /// use http_body_util::BodyExt;
    ///
    /// let (ctx, h) = ctxcore::Context::background().with_cancel();
    /// let inner = ResponseBody::new(http_body_util::Full::new(bytes::Bytes::new()), Some(ctx));
    /// h.cancel();
    /// let status = tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(StatusBody::new(inner).collect()).unwrap_err();
    /// assert_eq!(status.code(), tonic::Code::Cancelled);
    /// ```
    pub struct StatusBody<B> {
        #[pin]
        inner: B,
    }
}

impl<B> StatusBody<B> {
    /// Wraps `inner`.
    ///
    /// ```
    /// let body = ctxcore_http::tonic::StatusBody::new(http_body_util::Empty::<bytes::Bytes>::new());
    /// # let _ = body;
    /// ```
    pub fn new(inner: B) -> Self {
        StatusBody { inner }
    }
}

impl<B> fmt::Debug for StatusBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StatusBody").finish_non_exhaustive()
    }
}

impl<B, E> Body for StatusBody<B>
where
    B: Body<Error = client::Error<E>>,
    E: Into<BoxError>,
{
    type Data = B::Data;
    type Error = Status;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Result<Frame<B::Data>, Status>>> {
        self.project().inner.poll_frame(cx).map_err(Status::from)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ctxcore::Error;

    #[test]
    fn codes_and_messages_never_carry_the_cause() {
        for (kind, code, text) in [
            (Error::Canceled, Code::Cancelled, "context canceled"),
            (
                Error::DeadlineExceeded,
                Code::DeadlineExceeded,
                "context deadline exceeded",
            ),
        ] {
            let s = status(&ContextError::new(kind, "secret cause"));
            assert_eq!((s.code(), s.message()), (code, text));
            let s = Status::from(client::Error::<std::io::Error>::from(ContextError::new(
                kind,
                "secret cause",
            )));
            assert_eq!((s.code(), s.message()), (code, text));
        }
        assert_eq!(Code::Cancelled as i32, 1);
        assert_eq!(Code::DeadlineExceeded as i32, 4);
        let inner = Status::from(client::Error::Inner(Status::not_found("gone")));
        assert_eq!((inner.code(), inner.message()), (Code::NotFound, "gone"));
        let io = Status::from(client::Error::Inner(std::io::Error::other("boom")));
        assert_eq!(io.code(), Code::Unknown);
        let timeout = Status::from(client::Error::Inner(TimeoutExpired(())));
        assert_eq!(timeout.code(), Code::DeadlineExceeded);
        let wrapped = Status::from(client::Error::Inner(Wrapped(TimeoutExpired(()))));
        assert_eq!(wrapped.code(), Code::DeadlineExceeded);
    }

    /// An error whose source is tonic's timeout (as `tonic::transport::Error`).
    #[derive(Debug)]
    struct Wrapped(TimeoutExpired);

    impl fmt::Display for Wrapped {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("transport error")
        }
    }

    impl StdError for Wrapped {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            Some(&self.0)
        }
    }
}
