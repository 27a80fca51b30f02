use super::{body::End, layer::Guard, ResponseBody};
use http::{header, HeaderMap, Response, StatusCode};
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
    /// response, it hands the context over to the [`ResponseBody`] (telling
    /// it whether the response has a body on the wire at all — not after a
    /// HEAD request, nor with status 1xx, 204 or 304 — and its
    /// `Content-Length`). A panic of the handler while it is being polled
    /// cancels with [`HandlerPanicked`](super::HandlerPanicked) instead of
    /// `ClientDisconnected` when the server drops the future. See the
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
        // The request was a HEAD: its response has no body to send.
        head: bool,
        // Set around each poll of `inner`: still set when the future is
        // dropped, the poll unwound (the handler panicked).
        polling: bool,
    }

    impl<F> PinnedDrop for ResponseFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(guard) = this.guard.as_mut() {
                if *this.polling {
                    guard.panicked();
                } else {
                    guard.disconnected();
                }
            }
        }
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(inner: F, guard: Guard, head: bool) -> Self {
        ResponseFuture {
            inner,
            guard: Some(guard),
            head,
            polling: false,
        }
    }
}

/// Whether a response to a request (`head`: a HEAD request) with `status`
/// has no body on the wire (RFC 9110 §6.4.1): whatever body the handler
/// left in it, the server drops it unsent.
fn bodyless(head: bool, status: StatusCode) -> bool {
    head || status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED
}

/// The response's `Content-Length`, when there is exactly one valid value.
fn content_length(headers: &HeaderMap) -> Option<u64> {
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    match (values.next(), values.next()) {
        (Some(v), None) => {
            let v = v.as_bytes();
            if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
                return None;
            }
            std::str::from_utf8(v).ok()?.parse().ok()
        }
        _ => None,
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
        *this.polling = true;
        let result = this.inner.poll(cx);
        *this.polling = false;
        let result = ready!(result);
        let guard = this.guard.take();
        Poll::Ready(match result {
            Ok(response) => {
                let end = if bodyless(*this.head, response.status()) {
                    End::Bodyless
                } else {
                    content_length(response.headers()).map_or(End::Stream, End::Length)
                };
                Ok(response.map(|body| ResponseBody::new(body, guard, end)))
            }
            Err(e) => {
                if let Some(mut guard) = guard {
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
