//! [`PropagateDeadlineLayer`]: builds [`PropagateDeadline`] services.

use super::service::PropagateDeadline;
use ctxcore::Context;
use http::HeaderName;
use std::time::Duration;
use tower_layer::Layer;

/// A [`Layer`] that wraps an HTTP client service in [`PropagateDeadline`]:
/// each request's [`Context`] (from the request extensions) sets the
/// `grpc-timeout` header and bounds the call and its response body.
///
/// See the [module docs](super) for what it does exactly.
///
/// ```
/// use ctxcore_http::client::PropagateDeadlineLayer;
/// use ctxcore::Context;
/// use http::HeaderName;
///
/// // Requests without a context pass through unchanged.
/// let layer = PropagateDeadlineLayer::new();
/// // Or: requests without a context run under this one.
/// let (service_ctx, _stop) = Context::background().with_cancel();
/// let layer = PropagateDeadlineLayer::new()
///     .default_context(service_ctx)
///     .timeout_ms_header(HeaderName::from_static("x-timeout-ms"));
/// # let _ = layer;
/// ```
#[derive(Clone, Debug)]
pub struct PropagateDeadlineLayer {
    pub(crate) default: Option<Context>,
    pub(crate) ms_header: Option<HeaderName>,
    pub(crate) margin: Duration,
}

/// What [`PropagateDeadlineLayer`] takes off the time left before sending
/// it, by default: 2 ms. See [`PropagateDeadlineLayer::margin`].
///
/// ```
/// assert_eq!(ctxcore_http::client::DEFAULT_MARGIN, std::time::Duration::from_millis(2));
/// ```
pub const DEFAULT_MARGIN: Duration = Duration::from_millis(2);

impl Default for PropagateDeadlineLayer {
    fn default() -> Self {
        PropagateDeadlineLayer {
            default: None,
            ms_header: None,
            margin: DEFAULT_MARGIN,
        }
    }
}

impl PropagateDeadlineLayer {
    /// A layer without a default context and without a millisecond header:
    /// requests that carry no [`Context`] pass through unchanged.
    ///
    /// ```
    /// let layer = ctxcore_http::client::PropagateDeadlineLayer::new();
    /// # let _ = layer;
    /// ```
    pub fn new() -> Self {
        PropagateDeadlineLayer::default()
    }

    /// Sends the time left **minus `margin`** (saturating at zero), so that
    /// the next hop's deadline is not later than ours. The peer starts its
    /// clock when the request *arrives*, so without a margin its deadline
    /// would be later than ours by the time the request took to get there
    /// (connecting, queueing, the network): the margin must cover that.
    /// Default [`DEFAULT_MARGIN`] (2 ms, for a local network); zero sends
    /// the time left exactly (truncated to the header's unit).
    ///
    /// ```
    /// use std::time::Duration;
    /// let layer = ctxcore_http::client::PropagateDeadlineLayer::new().margin(Duration::from_millis(10));
    /// # let _ = layer;
    /// ```
    pub fn margin(mut self, margin: Duration) -> Self {
        self.margin = margin;
        self
    }

    /// Requests that carry no [`Context`] in their extensions run under `ctx`
    /// (for example a service-wide context that shutdown cancels). A
    /// context in the request always wins.
    ///
    /// ```
    /// use ctxcore::Context;
    /// use std::time::Duration;
    /// let (ctx, _h) = Context::background().with_timeout(Duration::from_secs(5));
    /// let layer = ctxcore_http::client::PropagateDeadlineLayer::new().default_context(ctx);
    /// # let _ = layer;
    /// ```
    pub fn default_context(mut self, ctx: Context) -> Self {
        self.default = Some(ctx);
        self
    }

    /// Also send the time left, in whole milliseconds (truncated, never
    /// rounded up), in the header `name` (for example `x-timeout-ms`),
    /// keeping a smaller value already there. Less than a millisecond left
    /// is sent as `1`, never `0`, which many peers read as "no timeout".
    ///
    /// ```
    /// use http::HeaderName;
    /// let layer = ctxcore_http::client::PropagateDeadlineLayer::new()
    ///     .timeout_ms_header(HeaderName::from_static("x-timeout-ms"));
    /// # let _ = layer;
    /// ```
    pub fn timeout_ms_header(mut self, name: HeaderName) -> Self {
        self.ms_header = Some(name);
        self
    }
}

impl<S> Layer<S> for PropagateDeadlineLayer {
    type Service = PropagateDeadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PropagateDeadline {
            inner,
            layer: self.clone(),
        }
    }
}
