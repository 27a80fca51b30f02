use super::layer::Guard;
use bytes::Buf;
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
    /// - With a `Content-Length`, the frame that brings the data yielded to
    ///   that length is the last (HTTP/1.1 servers stop polling there).
    /// - Dropped before its end, it cancels with
    ///   [`ClientDisconnected`](super::ClientDisconnected) in its
    ///   `PinnedDrop`, before the inner body is dropped. Dropped at its end
    ///   without the last poll (an empty body nobody polled, the whole
    ///   `Content-Length` yielded) or when the response has no body on the
    ///   wire (after a HEAD request, status 1xx, 204 or 304: the server drops
    ///   it unpolled), it ends with `ResponseComplete`. Dropped while its
    ///   poll unwinds (it panicked), with
    ///   [`HandlerPanicked`](super::HandlerPanicked).
    /// - A tracker's in-flight mark is held until the body is dropped, after
    ///   the inner body's destructor, even when the context ended earlier.
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
        // Declared before `guard`: the inner body is dropped before the guard
        // (and with it the tracker's in-flight mark), so a drain waits for
        // the body's destructor. The cancel does not rely on this order: it
        // happens in `PinnedDrop` (or at the last frame).
        #[pin]
        inner: B,
        // Kept until the body is dropped, even once the context has ended.
        guard: Option<Guard>,
        end: End,
        // Data bytes yielded so far (compared with a `Content-Length`).
        sent: u64,
        // Set around each poll of `inner`: still set when the body is
        // dropped, the poll unwound (the body panicked).
        polling: bool,
        // `<B as Body>::is_end_stream`, recorded by `new` (the drop cannot
        // require `B: Body`).
        at_end: fn(&B) -> bool,
    }

    impl<B> PinnedDrop for ResponseBody<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            let Some(guard) = this.guard.as_mut() else { return };
            if guard.ended() {
                return;
            }
            if *this.polling {
                guard.panicked();
            } else if this.end.reached(*this.sent) || (this.at_end)(&this.inner) {
                guard.complete();
            } else {
                guard.disconnected();
            }
        }
    }
}

/// Where a response body ends, besides `poll_frame` giving `None` or
/// `is_end_stream()`.
#[derive(Clone, Copy, Debug)]
pub(crate) enum End {
    /// Nothing is sent (HEAD, 1xx, 204, 304): the server drops the body
    /// unpolled, and that drop is the end.
    Bodyless,
    /// A `Content-Length`: once that many data bytes have been yielded the
    /// response is complete (hyper's length encoder stops polling there).
    Length(u64),
    /// Only the stream's own end.
    Stream,
}

impl End {
    fn reached(self, sent: u64) -> bool {
        match self {
            End::Bodyless => true,
            End::Length(n) => sent >= n,
            End::Stream => false,
        }
    }
}

impl<B: Body> ResponseBody<B> {
    pub(crate) fn new(inner: B, guard: Option<Guard>, end: End) -> Self {
        ResponseBody {
            inner,
            guard,
            end,
            sent: 0,
            polling: false,
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
        let Some(guard) = this.guard.as_mut().filter(|g| !g.ended()) else {
            return this.inner.poll_frame(cx);
        };
        *this.polling = true;
        let frame = this.inner.as_mut().poll_frame(cx);
        *this.polling = false;
        let frame = ready!(frame);
        match &frame {
            None => guard.complete(),
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let n = u64::try_from(data.remaining()).unwrap_or(u64::MAX);
                    *this.sent = this.sent.saturating_add(n);
                }
                if this.end.reached(*this.sent) || this.inner.is_end_stream() {
                    guard.complete();
                }
            }
            Some(Err(_)) => guard.body_failed(),
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
            .field("streaming", &self.guard.as_ref().is_some_and(|g| !g.ended()))
            .finish_non_exhaustive()
    }
}
