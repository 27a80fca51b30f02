//! ctxcore request contexts for HTTP and gRPC services: Go's
//! `r.Context()` for tower, hyper, axum and tonic.
//!
//! - **Server** (feature `server`): [`server::SetRequestContextLayer`] gives
//!   every request a child of the server's root [`ctxcore::Context`], in the
//!   request extensions. Its deadline is the earlier of the request's
//!   `grpc-timeout` (or a configured millisecond header) and the layer's
//!   `max_timeout`. It is cancelled with a typed cause when the client goes
//!   away ([`server::ClientDisconnected`], before the handler's destructors
//!   run) or once the response has been sent ([`server::ResponseComplete`]).
//!   With a [`ctxcore::Tracker`], `drain` waits for in-flight requests, bodies
//!   included.
//! - **Error mapping**: [`response`] turns a context's error into `504` or
//!   `499`, `grpc` (feature `grpc`) into a trailers-only gRPC status 4 or 1;
//!   the cause stays on the server unless the layer opts in.
//! - **axum** (feature `axum`): the `extract::RequestContext` extractor, and
//!   `IntoResponse` for the error mappings.
//! - **Client** (feature `client`, also `reqwest` and `tonic`): deadline
//!   propagation to the next service.
//! - **Codec**: [`grpc_timeout`] (no feature): strict `parse`, truncating
//!   `encode`.
//!
//! ```
//! # #[cfg(feature = "server")] {
//! use ctxcore::Context;
//! use ctxcore_http::server::SetRequestContextLayer;
//! use std::{convert::Infallible, time::Duration};
//!
//! let (root, shutdown) = Context::background().with_cancel(); // shutdown.cancel() stops every request
//! let svc = tower::ServiceBuilder::new()
//!     .layer(SetRequestContextLayer::new(&root).max_timeout(Duration::from_secs(30)))
//!     .service_fn(|req: http::Request<hyper::body::Incoming>| async move {
//!         let ctx = req.extensions().get::<Context>().cloned().unwrap(); // or axum's RequestContext
//!         let body = ctx.run(async { "hello" }).await.unwrap_or("cancelled"); // races the client
//!         Ok::<_, Infallible>(http::Response::new(body.to_string()))
//!     });
//! let hyper_svc = hyper_util::service::TowerToHyperService::new(svc); // serve with hyper-util
//! # drop((hyper_svc, shutdown)); }
//! ```
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod grpc_timeout;

#[cfg(feature = "server")]
#[cfg_attr(docsrs, doc(cfg(feature = "server")))]
pub mod server;

#[cfg(feature = "server")]
#[cfg_attr(docsrs, doc(cfg(feature = "server")))]
pub mod response;

#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub mod extract;

#[cfg(feature = "grpc")]
#[cfg_attr(docsrs, doc(cfg(feature = "grpc")))]
pub mod grpc;

#[cfg(feature = "client")]
#[cfg_attr(docsrs, doc(cfg(feature = "client")))]
pub mod client;

#[cfg(feature = "reqwest")]
#[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
pub mod reqwest;

#[cfg(feature = "tonic")]
#[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
pub mod tonic;
