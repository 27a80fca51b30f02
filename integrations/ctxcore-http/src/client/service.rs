//! [`PropagateDeadline`]: the client service.

use super::future::ResponseFuture;
use super::layer::PropagateDeadlineLayer;
use super::{codec, Error};
use ctxcore::Context;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;
use tower_service::Service;

use super::body::ResponseBody;

/// The `grpc-timeout` header.
const GRPC_TIMEOUT: HeaderName = HeaderName::from_static(crate::grpc_timeout::GRPC_TIMEOUT);

/// A client service that propagates the request's [`Context`]: it sets
/// `grpc-timeout` from the time left, fails at once when the context is
/// already done, and drops the call when the context ends first.
///
/// Made by [`PropagateDeadlineLayer`]; see the [module docs](super).
///
/// ```
/// use ctxcore_http::client::PropagateDeadline;
/// use tower::service_fn;
///
/// let svc = PropagateDeadline::new(service_fn(|_req: http::Request<()>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(()))
/// }));
/// let _inner = svc.get_ref();
/// ```
#[derive(Clone, Debug)]
pub struct PropagateDeadline<S> {
    pub(crate) inner: S,
    pub(crate) layer: PropagateDeadlineLayer,
}

impl<S> PropagateDeadline<S> {
    /// Wraps `inner` with the defaults of [`PropagateDeadlineLayer::new`].
    ///
    /// ```
    /// # use tower::service_fn;
    /// let svc = ctxcore_http::client::PropagateDeadline::new(service_fn(|_req: http::Request<()>| async {
    ///     Ok::<_, std::convert::Infallible>(http::Response::new(()))
    /// }));
    /// # let _ = svc;
    /// ```
    pub fn new(inner: S) -> Self {
        PropagateDeadline {
            inner,
            layer: PropagateDeadlineLayer::new(),
        }
    }

    /// A [`PropagateDeadlineLayer`] (same as [`PropagateDeadlineLayer::new`]).
    ///
    /// ```
    /// let layer = ctxcore_http::client::PropagateDeadline::<()>::layer();
    /// # let _ = layer;
    /// ```
    pub fn layer() -> PropagateDeadlineLayer {
        PropagateDeadlineLayer::new()
    }

    /// The inner service.
    ///
    /// ```
    /// let svc = ctxcore_http::client::PropagateDeadline::new(5u8);
    /// assert_eq!(*svc.get_ref(), 5);
    /// ```
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    ///
    /// ```
    /// let mut svc = ctxcore_http::client::PropagateDeadline::new(5u8);
    /// *svc.get_mut() = 6;
    /// assert_eq!(svc.into_inner(), 6);
    /// ```
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    ///
    /// ```
    /// let svc = ctxcore_http::client::PropagateDeadline::new(5u8);
    /// assert_eq!(svc.into_inner(), 5);
    /// ```
    pub fn into_inner(self) -> S {
        self.inner
    }
}

/// Keeps the smaller of `timeout` and what `name` already says (read with
/// `parse`; of several values, the shortest valid one), leaving a single
/// value; a missing or unreadable value is replaced.
fn set_shorter(
    headers: &mut HeaderMap,
    name: &HeaderName,
    timeout: Duration,
    parse: fn(&[u8]) -> Option<Duration>,
    encode: fn(Duration) -> HeaderValue,
) {
    // Several values: the shortest valid one is what a strict peer reads.
    let mut count = 0;
    let mut shortest: Option<(Duration, &HeaderValue)> = None;
    for value in headers.get_all(name) {
        count += 1;
        if let Some(there) = parse(value.as_bytes()) {
            if shortest.is_none_or(|(s, _)| there < s) {
                shortest = Some((there, value));
            }
        }
    }
    let keep = match shortest {
        Some((there, value)) if there <= timeout => {
            if count == 1 {
                return;
            }
            value.clone()
        }
        _ => encode(timeout),
    };
    // One value left, so that every peer reads the same timeout.
    headers.insert(name.clone(), keep);
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for PropagateDeadline<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = Error<S::Error>;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Error::Inner)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let ctx: Option<Context> = req
            .extensions()
            .get::<Context>()
            .cloned()
            .or_else(|| self.layer.default.clone());
        let Some(ctx) = ctx else {
            return ResponseFuture::passthrough(self.inner.call(req));
        };
        if let Some(err) = ctx.error() {
            return ResponseFuture::failed(err);
        }
        if let Some(left) = ctx.time_left() {
            let left = left.saturating_sub(self.layer.margin);
            let headers = req.headers_mut();
            set_shorter(headers, &GRPC_TIMEOUT, left, codec::parse, codec::encode);
            if let Some(name) = &self.layer.ms_header {
                set_shorter(headers, name, left, codec::parse_ms, codec::encode_ms);
            }
        }
        ResponseFuture::new(self.inner.call(req), ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shorter_header_is_kept() {
        let mut h = HeaderMap::new();
        h.insert(GRPC_TIMEOUT, HeaderValue::from_static("100m"));
        set_shorter(
            &mut h,
            &GRPC_TIMEOUT,
            Duration::from_secs(1),
            codec::parse,
            codec::encode,
        );
        assert_eq!(h[&GRPC_TIMEOUT], "100m");
        set_shorter(
            &mut h,
            &GRPC_TIMEOUT,
            Duration::from_millis(50),
            codec::parse,
            codec::encode,
        );
        assert_eq!(
            codec::parse(h[&GRPC_TIMEOUT].as_bytes()),
            Some(Duration::from_millis(50))
        );
    }

    #[test]
    fn malformed_or_repeated_header_is_replaced() {
        let mut h = HeaderMap::new();
        h.insert(GRPC_TIMEOUT, HeaderValue::from_static("soon"));
        set_shorter(
            &mut h,
            &GRPC_TIMEOUT,
            Duration::from_secs(1),
            codec::parse,
            codec::encode,
        );
        assert_eq!(codec::parse(h[&GRPC_TIMEOUT].as_bytes()), Some(Duration::from_secs(1)));
        h.append(GRPC_TIMEOUT, HeaderValue::from_static("1m"));
        set_shorter(
            &mut h,
            &GRPC_TIMEOUT,
            Duration::from_secs(2),
            codec::parse,
            codec::encode,
        );
        assert_eq!(h.get_all(&GRPC_TIMEOUT).iter().count(), 1);
        // Repeated: the shortest valid value is kept, alone.
        h.append(GRPC_TIMEOUT, HeaderValue::from_static("3m"));
        h.append(GRPC_TIMEOUT, HeaderValue::from_static("junk"));
        set_shorter(
            &mut h,
            &GRPC_TIMEOUT,
            Duration::from_secs(2),
            codec::parse,
            codec::encode,
        );
        assert_eq!(h.get_all(&GRPC_TIMEOUT).iter().collect::<Vec<_>>(), ["1m"]);
        // Repeated, all longer than ours: ours, alone.
        h.append(GRPC_TIMEOUT, HeaderValue::from_static("9S"));
        set_shorter(
            &mut h,
            &GRPC_TIMEOUT,
            Duration::from_micros(5),
            codec::parse,
            codec::encode,
        );
        assert_eq!(h.get_all(&GRPC_TIMEOUT).iter().collect::<Vec<_>>(), ["5000n"]);
    }

    #[test]
    fn ms_header() {
        let name = HeaderName::from_static("x-timeout-ms");
        let mut h = HeaderMap::new();
        set_shorter(
            &mut h,
            &name,
            Duration::from_micros(2_999_999),
            codec::parse_ms,
            codec::encode_ms,
        );
        assert_eq!(h[&name], "2999");
        set_shorter(&mut h, &name, Duration::from_secs(9), codec::parse_ms, codec::encode_ms);
        assert_eq!(h[&name], "2999");
        assert_eq!(codec::parse_ms(b"+5"), None);
        assert_eq!(codec::parse_ms(b""), None);
        assert_eq!(codec::encode_ms(Duration::MAX), "9999999999");
        // Never "0", which many peers read as "no timeout".
        assert_eq!(codec::encode_ms(Duration::from_micros(999)), "1");
        assert_eq!(codec::encode_ms(Duration::ZERO), "1");
        assert_eq!(codec::encode_ms(Duration::from_millis(1)), "1");
        assert_eq!(codec::encode_ms(Duration::from_micros(2_500)), "2");
    }
}
