//! The client layer: propagate the request's [`Context`] to the next service.
//!
//! [`PropagateDeadlineLayer`] wraps any tower service of `http::Request`s
//! (hyper-util's legacy `Client`, tonic's `Channel` — see
//! [`crate::tonic`]) in [`PropagateDeadline`]; reqwest, which is not such a
//! service, has `reqwest::RequestBuilderExt` (feature `reqwest`) with the same
//! behaviour and error. For each request it:
//!
//! 1. reads the caller's [`Context`] from the request extensions
//!    (`req.extensions_mut().insert(ctx.clone())`). A request **without a
//!    context passes through unchanged** (no header, no race; its body is
//!    still wrapped, and only forwards), unless the layer was given a
//!    [`default_context`](PropagateDeadlineLayer::default_context), which
//!    then stands in for it;
//! 2. fails at once, without calling the inner service, when the context is
//!    already done;
//! 3. sets `grpc-timeout` to [`Context::time_left`] (read on the tree's own
//!    clock) less a [`margin`](PropagateDeadlineLayer::margin) for the
//!    request's way to the peer (default [`DEFAULT_MARGIN`], 2 ms), encoded
//!    in the most precise unit and truncated, so that the next hop's
//!    deadline is not later than ours; a shorter value already in the
//!    request is kept (of several values, the shortest valid one, and only
//!    it is sent on); optionally also a millisecond header
//!    ([`timeout_ms_header`](PropagateDeadlineLayer::timeout_ms_header));
//! 4. races the call against the context: every poll of the
//!    [`ResponseFuture`] checks the context before polling the inner future.
//!    When the context ends first, the inner future is dropped at once —
//!    hyper then **closes an HTTP/1 connection** or **resets an HTTP/2
//!    stream** (`RST_STREAM`, the connection stays usable) — and the error is
//!    [`Error::Canceled`] or [`Error::DeadlineExceeded`] with the cause;
//! 5. wraps the response body in [`ResponseBody`], so that streaming the
//!    body is raced the same way (its errors are the same [`Error`]).
//!
//! The layer never changes the inner service's error: it is
//! [`Error::Inner`]. With the `tonic` feature,
//! [`IntoStatusLayer`](crate::tonic::IntoStatusLayer) turns these errors into
//! `tonic::Status` codes 1 and 4 for a generated client.
//!
//! ```
//! use ctxcore::Context;
//! use ctxcore_http::client::{Error, PropagateDeadlineLayer};
//! use std::time::Duration;
//! use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! // Any tower service of http::Request; here one that echoes the header.
//! let inner = service_fn(|req: http::Request<()>| async move {
//!     let timeout = req.headers().get("grpc-timeout").cloned();
//!     Ok::<_, std::convert::Infallible>(http::Response::new(timeout))
//! });
//! let mut client = ServiceBuilder::new().layer(PropagateDeadlineLayer::new()).service(inner);
//!
//! let (ctx, _h) = Context::background().with_timeout(Duration::from_secs(2));
//! let mut req = http::Request::new(());
//! req.extensions_mut().insert(ctx);
//! let resp = client.ready().await.unwrap().call(req).await.unwrap();
//! let sent = resp.body().get_ref().unwrap().clone().unwrap();
//! assert!(sent.to_str().unwrap().ends_with('u')); // e.g. "1997987u": 2 s, less the margin, less the time spent
//!
//! // A done context never reaches the inner service.
//! let (ctx, h) = Context::background().with_cancel();
//! h.cancel_with("shutting down");
//! let mut req = http::Request::new(());
//! req.extensions_mut().insert(ctx);
//! let err = client.ready().await.unwrap().call(req).await.unwrap_err();
//! assert_eq!(err.to_string(), "context canceled: shutting down");
//! # });
//! ```

mod body;
mod future;
mod layer;
mod service;

pub use body::ResponseBody;
pub use future::ResponseFuture;
pub use layer::{PropagateDeadlineLayer, DEFAULT_MARGIN};
pub use service::PropagateDeadline;

#[cfg(doc)]
use ctxcore::Context;
use ctxcore::{Cause, ContextError};
use std::fmt;

/// The error of [`PropagateDeadline`], its [`ResponseFuture`] and its
/// [`ResponseBody`]: the inner service's (or body's) own error, or the
/// request's context ended first, with the cause of that.
///
/// `Display` is the inner error's, or Go's text for the context error
/// (`context canceled`, `context deadline exceeded`) followed by `: ` and the
/// cause when one was given. `source()` is the inner error, or the cause when
/// it is an error.
///
/// ```
/// use ctxcore::{ContextError, Error as Kind};
/// use ctxcore_http::client::Error;
///
/// let err: Error<std::io::Error> = ContextError::new(Kind::DeadlineExceeded, "too slow").into();
/// assert!(err.is_deadline_exceeded());
/// assert_eq!(err.to_string(), "context deadline exceeded: too slow");
/// assert_eq!(err.cause().unwrap().as_str(), Some("too slow"));
/// ```
#[non_exhaustive]
pub enum Error<E> {
    /// The inner service (or body) failed.
    Inner(E),
    /// The request's context was cancelled; the cause of the cancel.
    Canceled(Cause),
    /// The request's context passed its deadline; the cause (the
    /// [`ctxcore::Error`] itself unless a `_cause` constructor gave one).
    DeadlineExceeded(Cause),
}

impl<E> Error<E> {
    /// Whether the context was cancelled.
    ///
    /// ```
    /// let err = ctxcore_http::client::Error::<()>::Canceled("stop".into());
    /// assert!(err.is_canceled());
    /// ```
    pub fn is_canceled(&self) -> bool {
        matches!(self, Error::Canceled(_))
    }

    /// Whether the context passed its deadline.
    ///
    /// ```
    /// let err = ctxcore_http::client::Error::<()>::DeadlineExceeded(ctxcore::Error::DeadlineExceeded.into());
    /// assert!(err.is_deadline_exceeded());
    /// ```
    pub fn is_deadline_exceeded(&self) -> bool {
        matches!(self, Error::DeadlineExceeded(_))
    }

    /// The cause, when the context ended first.
    ///
    /// ```
    /// let err = ctxcore_http::client::Error::<()>::Inner(());
    /// assert!(err.cause().is_none());
    /// ```
    pub fn cause(&self) -> Option<&Cause> {
        match self {
            Error::Inner(_) => None,
            Error::Canceled(c) | Error::DeadlineExceeded(c) => Some(c),
        }
    }

    /// The context's error (kind and cause), when the context ended first.
    ///
    /// ```
    /// let err = ctxcore_http::client::Error::<()>::Canceled("stop".into());
    /// assert_eq!(err.context_error().unwrap().to_string(), "context canceled: stop");
    /// ```
    pub fn context_error(&self) -> Option<ContextError> {
        match self {
            Error::Inner(_) => None,
            Error::Canceled(c) => Some(ContextError::new(ctxcore::Error::Canceled, c.clone())),
            Error::DeadlineExceeded(c) => Some(ContextError::new(ctxcore::Error::DeadlineExceeded, c.clone())),
        }
    }

    /// The inner error, when there is one.
    ///
    /// ```
    /// let err = ctxcore_http::client::Error::Inner(5u8);
    /// assert_eq!(err.into_inner(), Some(5));
    /// ```
    pub fn into_inner(self) -> Option<E> {
        match self {
            Error::Inner(e) => Some(e),
            _ => None,
        }
    }
}

impl<E> From<ContextError> for Error<E> {
    fn from(err: ContextError) -> Self {
        match err.kind() {
            ctxcore::Error::Canceled => Error::Canceled(err.into_cause()),
            ctxcore::Error::DeadlineExceeded => Error::DeadlineExceeded(err.into_cause()),
        }
    }
}

impl<E: fmt::Debug> fmt::Debug for Error<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Inner(e) => f.debug_tuple("Inner").field(e).finish(),
            Error::Canceled(c) => f.debug_tuple("Canceled").field(c).finish(),
            Error::DeadlineExceeded(c) => f.debug_tuple("DeadlineExceeded").field(c).finish(),
        }
    }
}

impl<E: fmt::Display> fmt::Display for Error<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Inner(e) => e.fmt(f),
            _ => match self.context_error() {
                Some(err) => err.fmt(f),
                None => Ok(()),
            },
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for Error<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Inner(e) => Some(e),
            Error::Canceled(c) | Error::DeadlineExceeded(c) => c.as_dyn_error().map(|e| e as _),
        }
    }
}

/// The header codecs the layer uses ([`crate::grpc_timeout`]).
mod codec {
    use http::HeaderValue;
    use std::time::Duration;

    /// The largest value `parse_millis` reads back (10 digits).
    const MAX_MILLIS: u64 = 9_999_999_999;

    pub(super) fn parse(value: &[u8]) -> Option<Duration> {
        crate::grpc_timeout::parse_bytes(value).ok()
    }

    pub(super) fn encode(timeout: Duration) -> HeaderValue {
        crate::grpc_timeout::encode(timeout).to_header_value()
    }

    pub(super) fn parse_ms(value: &[u8]) -> Option<Duration> {
        crate::grpc_timeout::parse_millis(value).ok()
    }

    /// Whole milliseconds, truncated, at least 1 (many peers read `0` as
    /// "no timeout"; less than a millisecond left is sent as `1`, the
    /// smallest positive value, like `grpc_timeout::encode`'s `1n`), and
    /// saturating at what `parse_ms` reads.
    pub(super) fn encode_ms(timeout: Duration) -> HeaderValue {
        let ms = u64::try_from(timeout.as_millis())
            .unwrap_or(u64::MAX)
            .clamp(1, MAX_MILLIS);
        HeaderValue::from(ms)
    }
}
