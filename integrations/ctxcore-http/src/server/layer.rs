use super::{
    ClientDisconnected, HandlerPanicked, ResponseBodyFailed, ResponseComplete, ServiceFailed, SetRequestContext,
    ShuttingDown, TrackerSaturated,
};
use crate::grpc_timeout;
use ctxcore::{CancelHandle, Cause, Context, InFlight, Tracker};
use http::{HeaderMap, HeaderName};
use std::{fmt, sync::Arc, time::Duration};
use tower_layer::Layer;

/// Builds [`SetRequestContext`] services: a request context for every
/// request, a child of the server's root. See the [module docs](super).
///
/// Cloning is cheap (one reference count); the configuration is shared.
///
/// ```
/// use ctxcore::Context;
/// use ctxcore_http::{grpc_timeout::CONNECT_TIMEOUT_MS, server::SetRequestContextLayer};
/// use http::HeaderName;
/// use std::time::Duration;
///
/// let (root, shutdown) = Context::background().with_cancel();
/// let layer = SetRequestContextLayer::new(&root)
///     .max_timeout(Duration::from_secs(30))
///     .millis_header(HeaderName::from_static(CONNECT_TIMEOUT_MS));
/// assert_eq!(layer.get_max_timeout(), Some(Duration::from_secs(30)));
/// # drop(shutdown);
/// ```
#[derive(Clone)]
pub struct SetRequestContextLayer {
    pub(crate) config: Arc<Config>,
}

pub(crate) struct Config {
    root: Context,
    tracker: Option<Arc<Tracker>>,
    max_timeout: Option<Duration>,
    read_grpc_timeout: bool,
    millis_headers: Vec<HeaderName>,
    expose_cause: bool,
    // Built once: cloning a `Cause` is a reference-count increment, building
    // one from an error type allocates.
    disconnected: Cause,
    complete: Cause,
    service_failed: Cause,
    body_failed: Cause,
    shutting_down: Cause,
    panicked: Cause,
    saturated: Cause,
}

impl SetRequestContextLayer {
    /// A layer whose request contexts are children of `root`: cancelling
    /// `root` cancels every request (shutdown). Reads `grpc-timeout`; no
    /// maximum timeout; causes stay private.
    ///
    /// ```
    /// use ctxcore::Context;
    /// use ctxcore_http::server::SetRequestContextLayer;
    /// let layer = SetRequestContextLayer::new(&Context::background());
    /// assert_eq!(layer.get_max_timeout(), None);
    /// ```
    pub fn new(root: &Context) -> Self {
        Self::build(root.clone(), None)
    }

    /// A layer whose requests run under `tracker.context()` and are each
    /// tracked (`Tracker::track`) until their response body has been sent or
    /// dropped: `tracker.drain(..)` cancels them and waits for them, bodies
    /// included. A request arriving once the tracker is closed gets a context
    /// already cancelled with [`ShuttingDown`] (with a saturated count, not
    /// closed, with [`TrackerSaturated`]). A leaked response body holds the
    /// drain until its timeout (see the [module docs](super)).
    ///
    /// ```
    /// use ctxcore::{Context, Tracker};
    /// use ctxcore_http::server::{SetRequestContextLayer, ShuttingDown};
    /// use http::{Request, Response};
    /// use std::{convert::Infallible, sync::Arc, time::Duration};
    /// use tower::{Service, ServiceBuilder, ServiceExt};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let tracker = Arc::new(Tracker::new(&Context::background()));
    /// let mut svc = ServiceBuilder::new()
    ///     .layer(SetRequestContextLayer::with_tracker(tracker.clone()))
    ///     .service_fn(|req: Request<()>| async move {
    ///         let ctx = req.extensions().get::<Context>().unwrap().clone();
    ///         Ok::<_, Infallible>(Response::new(format!("done: {}", ctx.is_done())))
    ///     });
    ///
    /// let resp = svc.ready().await.unwrap().call(Request::new(())).await.unwrap();
    /// assert_eq!(tracker.in_flight(), 1); // the body has not been sent yet
    /// drop(resp);
    /// assert_eq!(tracker.in_flight(), 0);
    ///
    /// tracker.drain("SIGTERM", Duration::from_secs(1)).await.unwrap();
    /// let resp = svc.ready().await.unwrap().call(Request::new(())).await.unwrap();
    /// assert_eq!(resp.body().get_ref(), "done: true"); // refused work sees a done context
    /// # }
    /// ```
    pub fn with_tracker(tracker: Arc<Tracker>) -> Self {
        Self::build(tracker.context().clone(), Some(tracker))
    }

    fn build(root: Context, tracker: Option<Arc<Tracker>>) -> Self {
        SetRequestContextLayer {
            config: Arc::new(Config {
                root,
                tracker,
                max_timeout: None,
                read_grpc_timeout: true,
                millis_headers: Vec::new(),
                expose_cause: false,
                disconnected: Cause::from(ClientDisconnected),
                complete: Cause::from(ResponseComplete),
                service_failed: Cause::from(ServiceFailed),
                body_failed: Cause::from(ResponseBodyFailed),
                shutting_down: Cause::from(ShuttingDown),
                panicked: Cause::from(HandlerPanicked),
                saturated: Cause::from(TrackerSaturated),
            }),
        }
    }

    fn edit(mut self, f: impl FnOnce(&mut Config)) -> Self {
        match Arc::get_mut(&mut self.config) {
            Some(config) => f(config),
            None => {
                let mut config = self.config.duplicate();
                f(&mut config);
                self.config = Arc::new(config);
            }
        }
        self
    }

    /// The server's own limit: no request context lives longer than
    /// `timeout`, whatever its headers say (a header can only shorten it; an
    /// absurd `99999999H` is clamped to it). Without it, requests without a
    /// timeout header get no deadline, and a header past the end of
    /// ctxcore's clock (about 584 years; `99999999H` is 11,415) saturates to
    /// no deadline either.
    ///
    /// ```
    /// use ctxcore::Context;
    /// use ctxcore_http::server::SetRequestContextLayer;
    /// use std::time::Duration;
    /// let layer = SetRequestContextLayer::new(&Context::background())
    ///     .max_timeout(Duration::from_secs(5));
    /// assert_eq!(layer.get_max_timeout(), Some(Duration::from_secs(5)));
    /// ```
    pub fn max_timeout(self, timeout: Duration) -> Self {
        self.edit(|c| c.max_timeout = Some(timeout))
    }

    /// The configured maximum timeout.
    ///
    /// ```
    /// use ctxcore_http::server::SetRequestContextLayer;
    /// let layer = SetRequestContextLayer::new(&ctxcore::Context::background());
    /// assert!(layer.get_max_timeout().is_none());
    /// ```
    pub fn get_max_timeout(&self) -> Option<Duration> {
        self.config.max_timeout
    }

    /// Whether to read the `grpc-timeout` header (default: yes).
    ///
    /// ```
    /// use ctxcore_http::server::SetRequestContextLayer;
    /// let layer = SetRequestContextLayer::new(&ctxcore::Context::background())
    ///     .read_grpc_timeout(false);
    /// # drop(layer);
    /// ```
    pub fn read_grpc_timeout(self, read: bool) -> Self {
        self.edit(|c| c.read_grpc_timeout = read)
    }

    /// Also reads `name` as a timeout in whole milliseconds
    /// ([`grpc_timeout::parse_millis`]), e.g.
    /// [`CONNECT_TIMEOUT_MS`](grpc_timeout::CONNECT_TIMEOUT_MS) or a mesh's
    /// own header. Several may be added; the shortest valid one wins.
    ///
    /// ```
    /// use ctxcore_http::server::SetRequestContextLayer;
    /// use http::HeaderName;
    /// let layer = SetRequestContextLayer::new(&ctxcore::Context::background())
    ///     .millis_header(HeaderName::from_static("x-request-timeout-ms"));
    /// # drop(layer);
    /// ```
    pub fn millis_header(self, name: HeaderName) -> Self {
        self.edit(|c| c.millis_headers.push(name))
    }

    /// Lets the error mappings ([`crate::response::ErrorResponse`]) put the
    /// cancellation's cause in the response sent to the client (default: no,
    /// only "context canceled" / "context deadline exceeded": a cause may hold
    /// internal details). The request contexts of this layer then carry a
    /// marker that [`crate::response::cause_exposed`] reads.
    ///
    /// ```
    /// use ctxcore_http::server::SetRequestContextLayer;
    /// let layer = SetRequestContextLayer::new(&ctxcore::Context::background())
    ///     .expose_cause(true);
    /// # drop(layer);
    /// ```
    pub fn expose_cause(self, expose: bool) -> Self {
        self.edit(|c| c.expose_cause = expose)
    }
}

impl<S> Layer<S> for SetRequestContextLayer {
    type Service = SetRequestContext<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SetRequestContext::from_layer(inner, self.clone())
    }
}

impl fmt::Debug for SetRequestContextLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        f.debug_struct("SetRequestContextLayer")
            .field("root", &c.root)
            .field("tracker", &c.tracker)
            .field("max_timeout", &c.max_timeout)
            .field("read_grpc_timeout", &c.read_grpc_timeout)
            .field("millis_headers", &c.millis_headers)
            .field("expose_cause", &c.expose_cause)
            .finish()
    }
}

/// The marker value [`SetRequestContextLayer::expose_cause`] puts in request
/// contexts.
#[derive(Debug)]
pub(crate) struct ExposeCause;

pub(crate) static EXPOSE_CAUSE: ctxcore::Key<ExposeCause> = ctxcore::Key::new("ctxcore-http expose cause");

impl Config {
    fn duplicate(&self) -> Config {
        Config {
            root: self.root.clone(),
            tracker: self.tracker.clone(),
            max_timeout: self.max_timeout,
            read_grpc_timeout: self.read_grpc_timeout,
            millis_headers: self.millis_headers.clone(),
            expose_cause: self.expose_cause,
            disconnected: self.disconnected.clone(),
            complete: self.complete.clone(),
            service_failed: self.service_failed.clone(),
            body_failed: self.body_failed.clone(),
            shutting_down: self.shutting_down.clone(),
            panicked: self.panicked.clone(),
            saturated: self.saturated.clone(),
        }
    }

    /// The shortest valid timeout header, if any. A repeated header counts
    /// with every value (the shortest valid one wins: the stricter reading);
    /// a malformed value is traced and ignored.
    fn header_timeout(&self, headers: &HeaderMap) -> Option<Duration> {
        let mut shortest: Option<Duration> = None;
        let mut keep = |d: Duration| shortest = Some(shortest.map_or(d, |s| s.min(d)));
        if self.read_grpc_timeout {
            for v in headers.get_all(grpc_timeout::GRPC_TIMEOUT) {
                match grpc_timeout::parse_bytes(v.as_bytes()) {
                    Ok(d) => keep(d),
                    Err(error) => tracing::debug!(%error, "ignoring a malformed grpc-timeout header"),
                }
            }
        }
        for name in &self.millis_headers {
            for v in headers.get_all(name) {
                match grpc_timeout::parse_millis(v.as_bytes()) {
                    Ok(d) => keep(d),
                    Err(error) => {
                        tracing::debug!(header = %name, %error, "ignoring a malformed millisecond timeout header")
                    }
                }
            }
        }
        shortest
    }

    /// The request's context and the guard that ends it.
    pub(crate) fn start(self: &Arc<Self>, headers: &HeaderMap) -> (Context, Guard) {
        let header = self.header_timeout(headers);
        let timeout = match (header, self.max_timeout) {
            (Some(h), Some(max)) => {
                if h > max {
                    tracing::debug!(
                        requested = ?h,
                        max_timeout = ?max,
                        "request timeout header clamped to the server's max_timeout"
                    );
                }
                Some(h.min(max))
            }
            (h, max) => h.or(max),
        };
        // `None` from `track()`: closed (draining), or a saturated count.
        let mut refused = None;
        let in_flight = match &self.tracker {
            Some(t) => {
                let g = t.track();
                if g.is_none() {
                    refused = Some(if t.is_closed() {
                        tracing::debug!("request arrived while the tracker is closed: its context is cancelled");
                        &self.shutting_down
                    } else {
                        tracing::warn!(
                            "the tracker's in-flight count is saturated: the request's context is cancelled"
                        );
                        &self.saturated
                    });
                }
                g
            }
            None => None,
        };
        let (ctx, handle) = match timeout {
            Some(d) => self.root.with_timeout(d),
            None => self.root.with_cancel(),
        };
        if let Some(cause) = refused {
            handle.cancel_with(cause.clone());
        }
        let ctx = if self.expose_cause {
            ctx.with_value(&EXPOSE_CAUSE, ExposeCause)
        } else {
            ctx
        };
        let guard = Guard {
            handle,
            config: Arc::clone(self),
            ended: false,
            _in_flight: in_flight,
        };
        (ctx, guard)
    }
}

/// Owns a request context's cancel handle (and its tracker guard) until the
/// exchange ends.
///
/// The owner (future, then body) ends the context through one of the methods
/// below, which marks the guard `ended`; the guard itself stays with its
/// owner until the owner is dropped. `_in_flight` is dropped with the guard,
/// and the owner declares its guard field after the inner future or body, so
/// a drain also waits for the handler's and the body's destructors.
///
/// Dropped without having ended (only when something unwound: the inner
/// `call` panicked, or a panic in between), the guard cancels with
/// [`HandlerPanicked`].
pub(crate) struct Guard {
    handle: CancelHandle,
    config: Arc<Config>,
    ended: bool,
    _in_flight: Option<InFlight>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if !self.ended {
            self.handle.cancel_with(self.config.panicked.clone());
        }
    }
}

impl Guard {
    /// Whether the context has been ended through the guard.
    pub(crate) fn ended(&self) -> bool {
        self.ended
    }

    fn end(&mut self, cause: fn(&Config) -> &Cause) {
        if !self.ended {
            self.ended = true;
            self.handle.cancel_with(cause(&self.config).clone());
        }
    }

    pub(crate) fn disconnected(&mut self) {
        self.end(|c| &c.disconnected);
    }

    pub(crate) fn complete(&mut self) {
        self.end(|c| &c.complete);
    }

    pub(crate) fn service_failed(&mut self) {
        self.end(|c| &c.service_failed);
    }

    pub(crate) fn body_failed(&mut self) {
        self.end(|c| &c.body_failed);
    }

    pub(crate) fn panicked(&mut self) {
        self.end(|c| &c.panicked);
    }
}
