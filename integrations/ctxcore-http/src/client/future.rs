//! [`ResponseFuture`]: the call raced against the request's context.

use super::body::ResponseBody;
use super::Error;
use ctxcore::{Context, ContextError, DoneOwned};
use http::Response;
use pin_project_lite::pin_project;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

pin_project! {
    /// The future of [`PropagateDeadline`](super::PropagateDeadline): the
    /// inner call raced against the request's [`Context`].
    ///
    /// Each poll checks the context first (and, while the call is pending,
    /// waits on it too): once it is done, the inner
    /// future is dropped at once (hyper then closes an HTTP/1 connection or
    /// resets an HTTP/2 stream) and the future resolves to
    /// [`Error::Canceled`] or [`Error::DeadlineExceeded`] with the cause.
    /// The response body is wrapped in [`ResponseBody`], raced the same way.
    /// See the [module docs](super).
    ///
    /// # Panics
    ///
    /// When polled again after it resolved, like an `async fn`'s future and
    /// tower's own futures: that is a bug of the caller (the `Future`
    /// contract), not something a request or a peer can cause, and a silent
    /// `Pending` would hang the caller forever. Use `FutureExt::fuse` from
    /// `futures` to poll it past its end.
    ///
    /// ```
    /// use ctxcore::Context;
    /// use ctxcore_http::client::{Error, PropagateDeadline};
    /// use tower::{service_fn, Service};
    ///
    /// let mut svc = PropagateDeadline::new(service_fn(|_req: http::Request<()>| async {
    ///     Ok::<_, std::convert::Infallible>(http::Response::new(()))
    /// }));
    /// let (ctx, handle) = Context::background().with_cancel();
    /// handle.cancel_with("user left");
    /// let mut req = http::Request::new(());
    /// req.extensions_mut().insert(ctx);
    /// let fut: ctxcore_http::client::ResponseFuture<_> = svc.call(req);
    /// let err = tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(fut).unwrap_err();
    /// assert!(matches!(&err, Error::Canceled(cause) if cause.as_str() == Some("user left")));
    /// ```
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Option<F>,
        #[pin]
        done: Option<DoneOwned>,
        ctx: Option<Context>,
        failed: Option<ContextError>,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(inner: F, ctx: Context) -> Self {
        ResponseFuture {
            inner: Some(inner),
            done: None,
            ctx: Some(ctx),
            failed: None,
        }
    }

    pub(crate) fn passthrough(inner: F) -> Self {
        ResponseFuture {
            inner: Some(inner),
            done: None,
            ctx: None,
            failed: None,
        }
    }

    pub(crate) fn failed(err: ContextError) -> Self {
        ResponseFuture {
            inner: None,
            done: None,
            ctx: None,
            failed: Some(err),
        }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("running", &self.inner.is_some())
            .field("ctx", &self.ctx)
            .field("failed", &self.failed)
            .finish()
    }
}

/// The error of a done context (`kind` from its `done` future), with the cause.
pub(crate) fn context_error(ctx: Option<&Context>, kind: ctxcore::Error) -> ContextError {
    ctx.and_then(Context::error)
        .unwrap_or_else(|| ContextError::from_error(kind))
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ResponseBody<B>>, Error<E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Some(err) = this.failed.take() {
            return Poll::Ready(Err(err.into()));
        }
        let Some(inner) = this.inner.as_mut().as_pin_mut() else {
            // Polled after completion: a caller's bug (the `Future`
            // contract), never something a peer can cause. Returning
            // `Pending` would hang the caller without a waker; there is no
            // result left to give again.
            panic!("ctxcore_http::client::ResponseFuture polled after completion");
        };
        // The context first (one atomic load, and a clock read with a
        // deadline), then the call.
        if let Some(err) = this.ctx.as_ref().and_then(Context::error) {
            // Drop the call now: hyper closes (HTTP/1) or resets (HTTP/2).
            this.inner.set(None);
            this.done.set(None);
            return Poll::Ready(Err(err.into()));
        }
        match inner.poll(cx) {
            Poll::Ready(res) => {
                this.inner.set(None);
                this.done.set(None);
                let ctx = this.ctx.take();
                Poll::Ready(match res {
                    Ok(resp) => Ok(resp.map(|body| ResponseBody::new(body, ctx))),
                    Err(e) => Err(Error::Inner(e)),
                })
            }
            Poll::Pending => {
                let Some(ctx) = this.ctx.as_ref() else {
                    return Poll::Pending;
                };
                // Wait for the context too: the waiter is made (in place, no
                // allocation) on the first `Pending`, so a call that is ready
                // at once never registers one.
                if this.done.is_none() {
                    this.done.set(Some(ctx.done_owned()));
                }
                let Some(done) = this.done.as_mut().as_pin_mut() else {
                    return Poll::Pending;
                };
                match done.poll(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(kind) => {
                        let err = context_error(Some(ctx), kind);
                        this.inner.set(None);
                        this.done.set(None);
                        Poll::Ready(Err(err.into()))
                    }
                }
            }
        }
    }
}
