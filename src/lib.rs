//! Go's `context` for Rust, for every place Rust runs: cancellation trees,
//! deadlines, cancellation causes, typed request-scoped values and
//! after-cancel callbacks, for any executor, plain threads and firmware.
//!
//! ```
//! use ctxcore::{Context, Error, Key};
//! use std::time::Duration;
//!
//! static TRACE_ID: Key<u64> = Key::new("trace_id");
//!
//! let (request, cancel) = Context::background().with_cancel();
//! let request = request.with_value(&TRACE_ID, 42);
//! let (query, _query_handle) = request.with_timeout(Duration::from_secs(1));
//! query.after_func(|| println!("query context done"));
//!
//! cancel.cancel_with("client went away");
//! assert_eq!(query.err(), Some(Error::Canceled));
//! assert_eq!(query.cause().unwrap().to_string(), "client went away");
//! assert_eq!(query.value(&TRACE_ID), Some(&42));
//! ```
//!
//! The core is an atomic state word per context plus intrusive lists of
//! children and waiters (see `docs/design.md`): `is_done` is one atomic load,
//! waiting allocates nothing, cancellation is iterative and wakes tasks only
//! after releasing its locks.
//!
//! # Features
//!
//! - `std` (default): implies `alloc`; the timer thread ([`StdTimer`]),
//!   [`Instant::now`], blocking waits.
//! - `alloc`: [`Context`] and everything built on heap nodes.
//! - `portable-atomic`: atomics for targets without compare-and-swap.
//! - `critical-section`: the lock also masks interrupts, so cancelling from
//!   an interrupt handler cannot deadlock.
//! - `tokio`: `TokioTimer`, deadlines on a tokio runtime's timer and clock
//!   (follows `tokio::time::pause`).
//! - `embassy-time` (with `alloc`): `EmbassyTimer`, deadlines on
//!   `embassy_time`, driven by a task you spawn.
//! - `tokio-util` (with `std`): a bridge to tokio-util's
//!   `CancellationToken`, both ways (`Context::cancellation_token`,
//!   `Context::with_cancellation_token`).
//!
//! A tree's timer is chosen at its root: [`Context::background`] uses the
//! `std` timer thread; [`Context::with_timer`] takes any [`Timer`]
//! ([`ManualClock`] for deterministic tests). See `docs/timers.md`.

#![no_std]
#![deny(
    unsafe_op_in_unsafe_fn,
    clippy::undocumented_unsafe_blocks,
    clippy::missing_safety_doc
)]
#![warn(missing_docs, missing_debug_implementations)]
#![cfg_attr(docsrs, feature(doc_auto_cfg))]

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(any(test, feature = "std"))]
extern crate std;

mod cause;
mod error;
mod list;
mod node;
#[cfg(not(loom))]
mod root;
mod scoped;
mod stream;
mod sync;
pub mod time;
mod value;

#[cfg(feature = "alloc")]
mod after;
#[cfg(feature = "alloc")]
mod cancel_on_drop;
#[cfg(feature = "alloc")]
mod context;
mod done;
#[cfg(feature = "alloc")]
mod group;
#[cfg(all(doctest, feature = "std"))]
mod guides;
#[cfg(feature = "tokio-util")]
mod tokio_util;
#[cfg(feature = "alloc")]
mod tracker;

pub use cause::Cause;
pub use error::{ContextError, Error};
#[cfg(not(loom))]
pub use root::StaticContext;
pub use scoped::{ContextRef, ScopedContext};
pub use stream::{RunStream, RunStreamWithCause};
pub use time::{Clock, Instant, Timer};
pub use value::Key;

#[cfg(feature = "alloc")]
pub use after::{set_after_func_spawner, AfterFunc, AfterFuncGuard, AfterFuncs, StopOutcome, StopWait};
#[cfg(feature = "alloc")]
pub use cancel_on_drop::CancelOnDrop;
#[cfg(feature = "alloc")]
pub use context::{CancelHandle, Context};
pub use done::Done;
#[cfg(feature = "alloc")]
pub use done::{DoneOwned, Run, RunWithCause};
#[cfg(feature = "alloc")]
pub use group::{Group, GroupTask, GroupWait, TaskAbandoned};
#[cfg(all(feature = "embassy-time", feature = "alloc"))]
pub use time::EmbassyTimer;
#[cfg(all(feature = "alloc", not(loom)))]
pub use time::ManualClock;
#[cfg(feature = "std")]
pub use time::StdTimer;
#[cfg(feature = "tokio")]
pub use time::TokioTimer;
#[cfg(feature = "tokio-util")]
pub use tokio_util::{ContextToken, TokenCancelled};
#[cfg(feature = "alloc")]
pub use tracker::{DrainTimeout, InFlight, Tracker};

/// The `Arc` of the heap API: `alloc`'s, or, with `portable-atomic`,
/// portable-atomic-util's, whose counts are portable atomics (so the `alloc`
/// API also works on targets without compare-and-swap, e.g. Cortex-M0).
#[cfg(all(feature = "alloc", not(feature = "portable-atomic")))]
pub(crate) use alloc::sync::Arc;
#[cfg(all(feature = "alloc", feature = "portable-atomic"))]
pub(crate) use portable_atomic_util::Arc;
