//! [`ResponseBody`]: the response body raced against the request's context.

use super::future::context_error;
use super::Error;
use ctxcore::{Context, DoneOwned};
use http_body::Frame;
use http_body::{Body, SizeHint};
use pin_project_lite::pin_project;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

pin_project! {
    /// The response body of [`PropagateDeadline`](super::PropagateDeadline):
    /// streaming it is raced against the request's [`Context`] too.
    ///
    /// Each poll checks the context first: once it is done, the inner body
    /// is dropped (hyper closes an HTTP/1 connection or resets an HTTP/2
    /// stream), the frame is [`Error::Canceled`] or
    /// [`Error::DeadlineExceeded`] with the cause, and the body then ends:
    /// every later poll gives `None`, `is_end_stream()` is true and
    /// [`get_ref`](Self::get_ref) is `None` (the rest of the data is not
    /// read).
    /// An error of the inner body is [`Error::Inner`]. `is_end_stream` and
    /// `size_hint` are forwarded. A request without a context gives a body
    /// that only forwards. See the [module docs](super).
    ///
    /// ```
    /// use ctxcore::Context;
    /// use ctxcore_http::client::ResponseBody;
    /// use http_body_util::{BodyExt, Full};
    ///
    /// let (ctx, handle) = Context::background().with_cancel();
    /// let body = ResponseBody::new(Full::new(bytes::Bytes::from_static(b"hi")), Some(ctx));
    /// handle.cancel_with("user left");
    /// let err = tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(body.collect()).unwrap_err();
    /// assert!(err.is_canceled());
    /// ```
    pub struct ResponseBody<B> {
        #[pin]
        inner: Option<B>,
        // Boxed (made on the first `Pending` of the inner body) so that the
        // body is `Unpin` whenever `B` is.
        done: Option<Pin<Box<DoneOwned>>>,
        ctx: Option<Context>,
    }
}

impl<B> ResponseBody<B> {
    /// Wraps `body`: raced against `ctx` when there is one, forwarded as it
    /// is otherwise.
    ///
    /// ```
    /// use ctxcore_http::client::ResponseBody;
    /// let body = ResponseBody::new(http_body_util::Empty::<bytes::Bytes>::new(), None);
    /// # let _ = body;
    /// ```
    pub fn new(body: B, ctx: Option<Context>) -> Self {
        ResponseBody {
            inner: Some(body),
            done: None,
            ctx,
        }
    }

    /// The context the body is raced against, if any.
    ///
    /// ```
    /// use ctxcore_http::client::ResponseBody;
    /// let body = ResponseBody::new((), None);
    /// assert!(body.context().is_none());
    /// ```
    pub fn context(&self) -> Option<&Context> {
        self.ctx.as_ref()
    }

    /// The inner body, unless it was dropped because the context ended.
    ///
    /// ```
    /// use ctxcore_http::client::ResponseBody;
    /// let body = ResponseBody::new(7u8, None);
    /// assert_eq!(body.get_ref(), Some(&7));
    /// ```
    pub fn get_ref(&self) -> Option<&B> {
        self.inner.as_ref()
    }

    /// The inner body (giving up the race), unless it was dropped because
    /// the context ended.
    ///
    /// ```
    /// use ctxcore_http::client::ResponseBody;
    /// let body = ResponseBody::new(7u8, None);
    /// assert_eq!(body.into_inner(), Some(7));
    /// ```
    pub fn into_inner(self) -> Option<B> {
        self.inner
    }
}

impl<B> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseBody")
            .field("streaming", &self.inner.is_some())
            .field("ctx", &self.ctx)
            .finish()
    }
}

impl<B: Body> Body for ResponseBody<B> {
    type Data = B::Data;
    type Error = Error<B::Error>;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Result<Frame<B::Data>, Self::Error>>> {
        let mut this = self.project();
        let Some(inner) = this.inner.as_mut().as_pin_mut() else {
            return Poll::Ready(None);
        };
        let Some(ctx) = this.ctx.as_ref() else {
            // No context: only forward.
            return inner.poll_frame(cx).map_err(Error::Inner);
        };
        // The context first, then the body.
        if let Some(err) = ctx.error() {
            this.inner.set(None);
            *this.done = None;
            return Poll::Ready(Some(Err(err.into())));
        }
        match inner.poll_frame(cx) {
            Poll::Ready(None) => {
                *this.done = None;
                this.ctx.take();
                Poll::Ready(None)
            }
            Poll::Ready(Some(frame)) => Poll::Ready(Some(frame.map_err(Error::Inner))),
            Poll::Pending => {
                // Wait for the context too: the first wait registers a waiter.
                let done = this.done.get_or_insert_with(|| Box::pin(ctx.done_owned()));
                match done.as_mut().poll(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(kind) => {
                        let err = context_error(Some(ctx), kind);
                        this.inner.set(None);
                        *this.done = None;
                        Poll::Ready(Some(Err(err.into())))
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(B::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), B::size_hint)
    }
}
