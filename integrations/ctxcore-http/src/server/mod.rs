//! The server layer: a [`Context`](ctxcore::Context) for every request.
//!
//! [`SetRequestContextLayer`] wraps any tower service over
//! `http::Request<B>` (axum's `Router`, a `service_fn` under hyper through
//! `hyper_util::service::TowerToHyperService`, tonic's routes), over HTTP/1.1
//! and HTTP/2. For every request it:
//!
//! - makes a child of the server's root context (cancel the root to shut
//!   down), with a deadline when the request carries a `grpc-timeout` (or a
//!   configured millisecond header) or the layer has a
//!   [`max_timeout`](SetRequestContextLayer::max_timeout): the earlier of the
//!   two. A header can only shorten the server's own limit; a malformed one
//!   is ignored and traced (`tracing::debug!`);
//! - puts that plain `ctxcore::Context` in the request extensions, where
//!   handlers (see `extract::RequestContext` with feature `axum`) and client
//!   layers downstream find it;
//! - cancels it with a typed cause when the exchange ends:
//!
//! | when | cause (`ctx.cause()`) | `ctx.err()` |
//! |---|---|---|
//! | the response future or the response body is dropped before the end (the client went away) | [`ClientDisconnected`] | `Canceled` |
//! | the body's last frame was sent (`poll_frame` → `None`, `is_end_stream()` after a frame, or the whole `Content-Length` yielded), or a response with no body on the wire (HEAD request, status 1xx, 204, 304) was dropped | [`ResponseComplete`] | `Canceled` |
//! | the inner service returned `Err` | [`ServiceFailed`] | `Canceled` |
//! | the response body yielded `Err` | [`ResponseBodyFailed`] | `Canceled` |
//! | the inner service's `call`, the response future's or the body's poll panicked (the server dropped it while unwinding or after catching the panic) | [`HandlerPanicked`] | `Canceled` |
//! | a [`Tracker`](ctxcore::Tracker) refused the request because it is closed (draining) | [`ShuttingDown`] | `Canceled` |
//! | a tracker refused the request because its in-flight count is saturated (sticky; reachable only by leaking marks) | [`TrackerSaturated`] | `Canceled` |
//! | the deadline passed | the deadline | `DeadlineExceeded` |
//! | the root was cancelled | the root's cause | `Canceled` |
//!
//! The first of these wins and reaches every descendant of the request's
//! context. The disconnect is signalled in the future's and the body's
//! `PinnedDrop`, **before any of their fields drop**, so the handler's own
//! destructors (dropped with the future) already see `ClientDisconnected`.
//! A body that is already at its end when it is dropped (an empty body hyper
//! never polls, a body whose whole `Content-Length` was yielded, a response
//! that has no body on the wire) ends with `ResponseComplete`. Such a drop
//! cannot tell whether the head reached the client: for a bodyless response
//! the end is when the server lets go of it.
//!
//! A handler that panics under hyper/tokio unwinds out of the future's poll;
//! the server then drops the future (tokio catches the panic of the
//! connection's task) and its context ends with [`HandlerPanicked`], not
//! `ClientDisconnected`. The layer never catches a panic itself.
//!
//! The layer **enforces nothing**: the error stays `S::Error`, it builds no
//! response and never times a request out itself. Handlers race their work
//! against the context (`ctx.run(..)`, `ctx.done()`) and map its error with
//! [`response`](crate::response) (or `grpc`).
//!
//! # Graceful shutdown
//!
//! Built with [`with_tracker`](SetRequestContextLayer::with_tracker), each
//! request is `track()`ed until its response body has been sent or dropped, so
//! `Tracker::drain` waits for in-flight requests, bodies included (the mark
//! is released only once the body and its destructor are gone, even when
//! the context ended at the last frame). A request that arrives while the
//! tracker is closed gets a context that is already cancelled with
//! [`ShuttingDown`].
//!
//! A response future or body that is **leaked** (`mem::forget`, a reference
//! cycle) never runs its drop: its request context stays live until the root
//! is cancelled or its deadline passes, and with a tracker it stays in
//! flight, so `drain` cancels its context but reports it in flight until the
//! drain's timeout. Set a [`max_timeout`](SetRequestContextLayer::max_timeout)
//! so that no request context outlives the server's own limit.
//!
//! # What hyper can notice (its limits)
//!
//! The cause is only as prompt as the server under the layer:
//! - **HTTP/2**: a stream reset (RST_STREAM) or a closed connection drops the
//!   response future or body at once (hyper polls `poll_reset` while the
//!   service future is pending).
//! - **HTTP/1.1**: hyper notices that the peer closed only once the request
//!   body has been fully read (its `mid_message_detect_eof`), with
//!   `half_close` off (the default) and nothing pipelined
//!   (hyperium/hyper#1980). A client that half-closes (shuts down its write
//!   side) is treated as gone. A handler that has not read a large request
//!   body yet is not told the client left until it reads it.
//!
//! # Example
//!
//! ```
//! use ctxcore::Context;
//! use ctxcore_http::server::{ClientDisconnected, SetRequestContextLayer};
//! use http::{Request, Response};
//! use std::{convert::Infallible, time::Duration};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let (root, _shutdown) = Context::background().with_cancel();
//! let mut svc = ServiceBuilder::new()
//!     .layer(SetRequestContextLayer::new(&root).max_timeout(Duration::from_secs(30)))
//!     .service_fn(|req: Request<String>| async move {
//!         let ctx = req.extensions().get::<Context>().unwrap().clone();
//!         assert!(ctx.time_left().unwrap() <= Duration::from_secs(1));
//!         Ok::<_, Infallible>(Response::new(String::from("hello")))
//!     });
//!
//! let req = Request::builder().header("grpc-timeout", "1S").body(String::new()).unwrap();
//! let resp = svc.ready().await.unwrap().call(req).await.unwrap();
//! drop(resp); // the client went away before the body was sent
//! # }
//! ```

mod body;
mod future;
mod layer;
mod service;

pub use body::ResponseBody;
pub use future::ResponseFuture;
pub use layer::SetRequestContextLayer;
pub use service::SetRequestContext;

use core::fmt;

macro_rules! cause_type {
    ($(#[$doc:meta])* $name:ident, $text:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
        pub struct $name;

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str($text)
            }
        }

        impl std::error::Error for $name {}
    };
}

cause_type!(
    /// The cause of a request context whose response future or response body
    /// was dropped before the response was complete: the client went away
    /// (HTTP/2 reset, closed connection) or the server gave up the exchange.
    ///
    /// ```
    /// use ctxcore::Context;
    /// use ctxcore_http::server::ClientDisconnected;
    ///
    /// let (ctx, handle) = Context::background().with_cancel();
    /// handle.cancel_with(ClientDisconnected);
    /// assert!(ctx.cause().unwrap().downcast_ref::<ClientDisconnected>().is_some());
    /// assert_eq!(ClientDisconnected.to_string(), "client disconnected");
    /// ```
    ClientDisconnected,
    "client disconnected"
);

cause_type!(
    /// The cause of a request context whose response has been sent in full:
    /// its body's last frame went out. Work still running under the request
    /// (spawned tasks, after-funcs) stops.
    ///
    /// ```
    /// use ctxcore_http::server::ResponseComplete;
    /// assert_eq!(ResponseComplete.to_string(), "response complete");
    /// ```
    ResponseComplete,
    "response complete"
);

cause_type!(
    /// The cause of a request context whose inner service returned `Err`
    /// (the error itself stays with the service's caller).
    ///
    /// ```
    /// use ctxcore_http::server::ServiceFailed;
    /// assert_eq!(ServiceFailed.to_string(), "the service returned an error");
    /// ```
    ServiceFailed,
    "the service returned an error"
);

cause_type!(
    /// The cause of a request context whose response body yielded `Err`: the
    /// response cannot complete, so the request's work stops at once (the
    /// error itself goes on to the server).
    ///
    /// ```
    /// use ctxcore_http::server::ResponseBodyFailed;
    /// assert_eq!(ResponseBodyFailed.to_string(), "the response body failed");
    /// ```
    ResponseBodyFailed,
    "the response body failed"
);

cause_type!(
    /// The cause of a request context born cancelled because the layer's
    /// [`Tracker`](ctxcore::Tracker) was closed (the server is draining).
    ///
    /// ```
    /// use ctxcore_http::server::ShuttingDown;
    /// assert_eq!(ShuttingDown.to_string(), "server shutting down");
    /// ```
    ShuttingDown,
    "server shutting down"
);

cause_type!(
    /// The cause of a request context whose handler panicked: the inner
    /// service's `call`, or a poll of its response future or response body,
    /// unwound, and the server dropped what was left.
    ///
    /// ```
    /// use ctxcore_http::server::HandlerPanicked;
    /// assert_eq!(HandlerPanicked.to_string(), "the handler panicked");
    /// ```
    HandlerPanicked,
    "the handler panicked"
);

cause_type!(
    /// The cause of a request context born cancelled because the layer's
    /// [`Tracker`](ctxcore::Tracker) could not count one more request: its
    /// in-flight count is saturated (sticky, reachable only by leaking
    /// in-flight marks), though the tracker is not closed.
    ///
    /// ```
    /// use ctxcore_http::server::TrackerSaturated;
    /// assert_eq!(TrackerSaturated.to_string(), "request tracker saturated");
    /// ```
    TrackerSaturated,
    "request tracker saturated"
);

/// Whether `ctx` carries the marker of a layer with `expose_cause(true)`.
pub(crate) fn layer_marker(ctx: &ctxcore::Context) -> bool {
    ctx.value(&layer::EXPOSE_CAUSE).is_some()
}
