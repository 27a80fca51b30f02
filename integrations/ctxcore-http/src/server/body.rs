use super::layer::Guard;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use std::{
    fmt,
    pin::Pin,
    task::{ready, Context as TaskContext, Poll},
};

pin_project! {
    /// The response body of [`SetRequestContext`](super::SetRequestContext):
    /// the inner body, holding the request context alive while it streams.
    ///
    /// - After its last frame (`poll_frame` gives `None`, or `is_end_stream()`
    ///   is true after a frame) it cancels the request context with
    ///   [`ResponseComplete`](super::ResponseComplete).
    /// - A frame `Err` cancels it at once with
    ///   [`ResponseBodyFailed`](super::ResponseBodyFailed) (the error goes on).
    /// - Dropped before its end, it cancels with
    ///   [`ClientDisconnected`](super::ClientDisconnected) in its
    ///   `PinnedDrop`, before the inner body is dropped; a body already at its
    ///   end when dropped (an empty body nobody polled) ends with
    ///   `ResponseComplete`.
    ///
    /// `is_end_stream` and `size_hint` are the inner body's.
    ///
    /// ```
    /// use ctxcore::Context;
    /// use ctxcore_http::server::{ResponseComplete, SetRequestContext};
    /// use http::{Request, Response};
    /// use http_body_util::{BodyExt, Full};
    /// use std::{convert::Infallible, sync::{Arc, Mutex}};
    /// use tower::{service_fn, Service, ServiceExt};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let seen = Arc::new(Mutex::new(None));
    /// let s = seen.clone();
    /// let mut svc = SetRequestContext::new(
    ///     service_fn(move |req: Request<()>| {
    ///         *s.lock().unwrap() = req.extensions().get::<Context>().cloned();
    ///         async { Ok::<_, Infallible>(Response::new(Full::new(bytes::Bytes::from("hi")))) }
    ///     }),
    ///     &Context::background(),
    /// );
    /// let resp = svc.ready().await.unwrap().call(Request::new(())).await.unwrap();
    /// let ctx = seen.lock().unwrap().take().unwrap();
    /// assert!(!ctx.is_done()); // still streaming
    /// let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    /// assert_eq!(bytes, "hi");
    /// assert!(ctx.cause().unwrap().is::<ResponseComplete>());
    /// # }
    /// ```
    pub struct ResponseBody<B> {
        // Declared before `guard`: see `ResponseFuture`.
        #[pin]
        inner: B,
        guard: Option<Guard>,
        // `<B as Body>::is_end_stream`, recorded by `new` (the drop cannot
        // require `B: Body`).
        at_end: fn(&B) -> bool,
    }

    impl<B> PinnedDrop for ResponseBody<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(guard) = this.guard.as_ref() {
                if (this.at_end)(&this.inner) {
                    guard.complete();
                } else {
                    guard.disconnected();
                }
            }
        }
    }
}

impl<B: Body> ResponseBody<B> {
    pub(crate) fn new(inner: B, guard: Option<Guard>) -> Self {
        ResponseBody {
            inner,
            guard,
            at_end: <B as Body>::is_end_stream,
        }
    }
}

impl<B> ResponseBody<B> {
    /// The inner body.
    ///
    /// ```
    /// # use ctxcore_http::server::ResponseBody;
    /// fn peek(body: &ResponseBody<String>) -> &str {
    ///     body.get_ref()
    /// }
    /// ```
    pub fn get_ref(&self) -> &B {
        &self.inner
    }

    /// The inner body, mutably.
    ///
    /// ```
    /// # use ctxcore_http::server::ResponseBody;
    /// fn clear(body: &mut ResponseBody<String>) {
    ///     body.get_mut().clear()
    /// }
    /// ```
    pub fn get_mut(&mut self) -> &mut B {
        &mut self.inner
    }

    /// The inner body, pinned.
    ///
    /// ```
    /// # use ctxcore_http::server::ResponseBody;
    /// # use std::pin::Pin;
    /// fn inner(body: Pin<&mut ResponseBody<String>>) -> Pin<&mut String> {
    ///     body.get_pin_mut()
    /// }
    /// ```
    pub fn get_pin_mut(self: Pin<&mut Self>) -> Pin<&mut B> {
        self.project().inner
    }
}

impl<B: Body> Body for ResponseBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        if this.guard.is_none() {
            return this.inner.poll_frame(cx);
        }
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        match &frame {
            None => {
                if let Some(guard) = this.guard.take() {
                    guard.complete();
                }
            }
            Some(Ok(_)) => {
                if this.inner.is_end_stream() {
                    if let Some(guard) = this.guard.take() {
                        guard.complete();
                    }
                }
            }
            Some(Err(_)) => {
                if let Some(guard) = this.guard.take() {
                    guard.body_failed();
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseBody")
            .field("streaming", &self.guard.is_some())
            .finish_non_exhaustive()
    }
}
