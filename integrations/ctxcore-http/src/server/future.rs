use super::{layer::Guard, ResponseBody};
use http::Response;
use http_body::Body;
use pin_project_lite::pin_project;
use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{ready, Context as TaskContext, Poll},
};

pin_project! {
    /// The response future of [`SetRequestContext`](super::SetRequestContext).
    ///
    /// Dropped before it has resolved (the client went away, the server gave
    /// up the connection), it cancels the request context with
    /// [`ClientDisconnected`](super::ClientDisconnected) in its `PinnedDrop`,
    /// before the inner future (the handler) is dropped. Resolving to `Err`,
    /// it cancels with [`ServiceFailed`](super::ServiceFailed); resolving to a
    /// response, it hands the context over to the [`ResponseBody`]. See the
    /// [module docs](super).
    ///
    /// ```
    /// use ctxcore::Context;
    /// use ctxcore_http::server::{ClientDisconnected, SetRequestContext};
    /// use http::{Request, Response};
    /// use std::{convert::Infallible, future::pending, sync::{Arc, Mutex}};
    /// use tower::{service_fn, Service};
    ///
    /// let seen = Arc::new(Mutex::new(None));
    /// let s = seen.clone();
    /// let mut svc = SetRequestContext::new(
    ///     service_fn(move |req: Request<()>| {
    ///         *s.lock().unwrap() = req.extensions().get::<Context>().cloned();
    ///         async { pending::<Result<Response<String>, Infallible>>().await }
    ///     }),
    ///     &Context::background(),
    /// );
    /// let fut = svc.call(Request::new(()));
    /// drop(fut); // the client went away
    /// let ctx = seen.lock().unwrap().take().unwrap();
    /// assert!(ctx.cause().unwrap().is::<ClientDisconnected>());
    /// ```
    pub struct ResponseFuture<F> {
        // Declared before `guard`: the handler is dropped before the guard
        // (and with it the tracker's in-flight mark). The cancel itself does
        // not rely on this order: it happens in `PinnedDrop`.
        #[pin]
        inner: F,
        guard: Option<Guard>,
    }

    impl<F> PinnedDrop for ResponseFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(guard) = this.project().guard.as_ref() {
                guard.disconnected();
            }
        }
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(inner: F, guard: Guard) -> Self {
        ResponseFuture {
            inner,
            guard: Some(guard),
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let guard = this.guard.take();
        Poll::Ready(match result {
            Ok(response) => Ok(response.map(|body| ResponseBody::new(body, guard))),
            Err(e) => {
                if let Some(guard) = guard {
                    guard.service_failed();
                }
                Err(e)
            }
        })
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("pending", &self.guard.is_some())
            .finish_non_exhaustive()
    }
}
