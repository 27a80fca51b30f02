//! Draining: a [`Tracker`] marks in-flight work under a context with cheap
//! [`InFlight`] guards, then cancels the subtree with a cause and waits —
//! blocking or async — until every guard has been dropped.
//!
//! # Protocol
//!
//! One atomic word per tracker, `state`: bit 0 is `CLOSED`, the bits above it
//! count the live guards (`ONE` = 2). No lock, no unsafe code; the wake-up is
//! a [`Context`] of the tracker's own (`drained`), cancelled by whoever sees
//! the tracker become closed and empty, so waiting is `done()` (any executor)
//! or `wait_blocking` (threads) and inherits their no-lost-wake-up guarantees.
//!
//! **Invariants.**
//!
//! 1. Every change of `state` is a compare-and-swap or a `fetch_or`, so
//!    `track`'s check of `CLOSED` and its increment are one atomic step: a
//!    guard is either counted before `close` (and waited for) or refused.
//! 2. The count rises only through `track` while `CLOSED` is clear, or through
//!    a clone of a live guard (count ≥ 1). Hence once `state` reads
//!    `CLOSED` with a count of zero it never changes again.
//! 3. Exactly one party sees the word become `CLOSED` with a count of zero:
//!    `close` (if the count was already zero when it set `CLOSED`) or the
//!    guard whose decrement made it zero (with `CLOSED` already set). That
//!    party cancels `drained`. (Cancelling twice would be harmless anyway.)
//! 4. Decrements are `AcqRel`: the last one acquires every earlier guard's
//!    release (they form one release sequence on `state`), and cancelling
//!    `drained` publishes it to the waiters. So everything a guard's owner did
//!    before dropping it happens-before the wait returns.
//! 5. A count of all ones is sticky (saturated): it never rises nor falls, so
//!    an overflow (possible only by leaking ~2³¹ guards) turns into a drain
//!    that never finishes and reports its timeout, never into a drain that
//!    finishes early.
//!
//! The model checks are in `loom/tests/drain.rs`.

use crate::cause::Cause;
use crate::context::{CancelHandle, Context};
use crate::sync::{AtomicU32, Ordering};
use crate::Arc;
use core::fmt;
use core::time::Duration;

const CLOSED: u32 = 1;
const ONE: u32 = 2;
/// The count's bits all set: saturated (invariant 5).
const SATURATED: u32 = !CLOSED;

fn count(state: u32) -> usize {
    (state >> 1) as usize
}

fn saturated(state: u32) -> bool {
    state & SATURATED == SATURATED
}

/// Tracks in-flight work under a context, and drains it on shutdown: cancel
/// the subtree with a cause, then wait until every piece of work has
/// finished (Go's `http.Server.Shutdown` plus a `sync.WaitGroup`; tokio-util's
/// `TaskTracker`; linkerd's `drain`).
///
/// Each piece of work holds an [`InFlight`] guard from [`track`](Self::track)
/// and runs under [`context`](Self::context) (or a child of it). A guard costs
/// one atomic compare-and-swap and one reference-count increment, no
/// allocation. [`drain`](Self::drain) (async) and
/// [`drain_blocking`](Self::drain_blocking) close the tracker (new work is
/// refused), cancel the context with a cause, and wait until every guard has
/// been dropped or the timeout passes; a timeout reports how many are still in
/// flight. It works on any executor (the wait is a [`Context::done`] future)
/// and on plain threads.
///
/// Dropping the tracker cancels its context (it owns its
/// [`CancelHandle`]), like dropping any handle.
///
/// ```
/// use ctxcore::{Context, Tracker};
/// use std::time::Duration;
///
/// let server = Tracker::new(&Context::background());
/// let mut workers = Vec::new();
/// for _ in 0..4 {
///     let request = server.track().expect("not shutting down yet");
///     workers.push(std::thread::spawn(move || {
///         // The request's work, stopped by the shutdown.
///         request.context().wait_blocking();
///         // `request` drops here: the work is over.
///     }));
/// }
/// assert_eq!(server.in_flight(), 4);
///
/// let drained = server.drain_blocking("shutting down", Duration::from_secs(5));
/// assert_eq!(drained, Ok(()));
/// assert_eq!(server.in_flight(), 0);
/// assert!(server.track().is_none()); // closed: new work is refused
/// # for w in workers { w.join().unwrap(); }
/// ```
pub struct Tracker {
    shared: Arc<Shared>,
    /// Cancels `shared.context`: on `cancel`, or when the tracker drops.
    handle: CancelHandle,
}

struct Shared {
    /// `CLOSED` and the guard count (see the module's invariants).
    state: AtomicU32,
    /// The tracked subtree.
    context: Context,
    /// Done once the tracker is closed and empty (invariant 3). A child of
    /// the parent's `without_cancel()`: on the tree's timer, never cancelled
    /// by the parent.
    drained: Context,
    drained_handle: CancelHandle,
}

/// Marks one piece of in-flight work of a [`Tracker`]; dropping it says the
/// work is over.
///
/// Cloning it marks one more piece (for a task the work spawns); a clone is
/// never refused, even while the tracker drains, because the work it extends
/// is already counted. `InFlight` is `Send + Sync` and `'static`.
///
/// ```
/// use ctxcore::{Context, Tracker};
///
/// let tracker = Tracker::new(&Context::background());
/// let request = tracker.track().unwrap();
/// let subtask = request.clone();
/// assert_eq!(tracker.in_flight(), 2);
/// drop(request);
/// drop(subtask);
/// assert_eq!(tracker.in_flight(), 0);
/// ```
pub struct InFlight {
    shared: Arc<Shared>,
}

/// A drain or wait that timed out: how much work was still in flight.
///
/// ```
/// use ctxcore::{Context, DrainTimeout, Tracker};
/// use std::time::Duration;
///
/// let tracker = Tracker::new(&Context::background());
/// let _stuck = tracker.track().unwrap(); // work that ignores the cancel
/// let err = tracker.drain_blocking("shutdown", Duration::from_millis(10)).unwrap_err();
/// assert_eq!(err, DrainTimeout { in_flight: 1 });
/// assert_eq!(err.to_string(), "drain timed out with 1 still in flight");
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct DrainTimeout {
    /// Guards still alive when the timeout passed.
    pub in_flight: usize,
}

impl fmt::Display for DrainTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "drain timed out with {} still in flight", self.in_flight)
    }
}

impl core::error::Error for DrainTimeout {}

impl Tracker {
    /// A tracker of work under a new child of `parent`: the child is
    /// cancelled by [`cancel`](Self::cancel) and the drains, by any ancestor,
    /// or when the tracker drops. Three allocations (the shared state, the
    /// child and the tracker's own "drained" context).
    ///
    /// ```
    /// use ctxcore::{Context, Tracker};
    ///
    /// let (root, shutdown) = Context::background().with_cancel();
    /// let tracker = Tracker::new(&root);
    /// shutdown.cancel_with("SIGTERM");
    /// assert_eq!(tracker.context().cause().unwrap().to_string(), "SIGTERM");
    /// ```
    #[track_caller]
    pub fn new(parent: &Context) -> Tracker {
        let (context, handle) = parent.with_cancel();
        let (drained, drained_handle) = parent.without_cancel().with_cancel();
        Tracker {
            shared: Arc::new(Shared {
                state: AtomicU32::new(0),
                context,
                drained,
                drained_handle,
            }),
            handle,
        }
    }

    /// The tracked context: run the work under it (or under children of it)
    /// so that the drain's cancel reaches it.
    ///
    /// ```
    /// use ctxcore::{Context, Tracker};
    ///
    /// let tracker = Tracker::new(&Context::background());
    /// let (query, _query_handle) = tracker.context().with_cancel();
    /// tracker.cancel("shutdown");
    /// assert!(query.is_done());
    /// ```
    pub fn context(&self) -> &Context {
        &self.shared.context
    }

    /// Marks a new piece of in-flight work; `None` once the tracker is closed
    /// (shutting down: refuse the request). One compare-and-swap and one
    /// reference-count increment; never allocates.
    ///
    /// ```
    /// use ctxcore::{Context, Tracker};
    ///
    /// let tracker = Tracker::new(&Context::background());
    /// let guard = tracker.track().unwrap();
    /// assert!(!guard.context().is_done());
    /// tracker.close();
    /// assert!(tracker.track().is_none());
    /// ```
    pub fn track(&self) -> Option<InFlight> {
        let state = &self.shared.state;
        let mut s = state.load(Ordering::Relaxed);
        loop {
            // Closed, or saturated (invariant 5): refuse.
            if s & CLOSED != 0 || saturated(s) {
                return None;
            }
            // Invariant 1: the check above and this increment are one step.
            match state.compare_exchange_weak(s, s + ONE, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => {
                    return Some(InFlight {
                        shared: self.shared.clone(),
                    })
                }
                Err(now) => s = now,
            }
        }
    }

    /// How many guards are alive now.
    ///
    /// ```
    /// let tracker = ctxcore::Tracker::new(&ctxcore::Context::background());
    /// let _a = tracker.track();
    /// assert_eq!(tracker.in_flight(), 1);
    /// ```
    pub fn in_flight(&self) -> usize {
        count(self.shared.state.load(Ordering::Acquire))
    }

    /// Whether the tracker is closed: [`track`](Self::track) refuses new
    /// work.
    ///
    /// ```
    /// let tracker = ctxcore::Tracker::new(&ctxcore::Context::background());
    /// assert!(!tracker.is_closed());
    /// tracker.close();
    /// assert!(tracker.is_closed());
    /// ```
    pub fn is_closed(&self) -> bool {
        self.shared.state.load(Ordering::Relaxed) & CLOSED != 0
    }

    /// Whether the tracker is closed and every guard has been dropped: the
    /// waits return at once, and nothing tracked runs any more or ever will.
    ///
    /// ```
    /// let tracker = ctxcore::Tracker::new(&ctxcore::Context::background());
    /// let guard = tracker.track().unwrap();
    /// tracker.close();
    /// assert!(!tracker.is_drained());
    /// drop(guard);
    /// assert!(tracker.is_drained());
    /// ```
    pub fn is_drained(&self) -> bool {
        self.shared.drained.is_done()
    }

    /// Refuses new work from now on, without cancelling anything: the
    /// graceful half of a shutdown (Go's `Shutdown` closing its listeners).
    /// The work in flight goes on; the waits return once it has finished.
    /// Calling it again changes nothing.
    ///
    /// ```
    /// use ctxcore::{Context, Tracker};
    /// use std::time::Duration;
    ///
    /// let tracker = Tracker::new(&Context::background());
    /// let request = tracker.track().unwrap();
    /// tracker.close();
    /// assert!(!request.context().is_done()); // not cancelled: let it finish
    /// drop(request);
    /// assert_eq!(tracker.wait_blocking_timeout(Duration::from_secs(1)), Ok(()));
    /// ```
    pub fn close(&self) {
        let prev = self.shared.state.fetch_or(CLOSED, Ordering::AcqRel);
        // Invariant 3: closing an empty tracker drains it. (`prev` has no
        // `CLOSED` on the first close only; a later one finds nothing to do.)
        if prev & CLOSED == 0 && count(prev) == 0 {
            self.shared.drained_handle.cancel();
        }
    }

    /// Closes the tracker and cancels its context with `cause` (the first
    /// cancellation wins), without waiting.
    ///
    /// ```
    /// use ctxcore::{Context, Tracker};
    ///
    /// let tracker = Tracker::new(&Context::background());
    /// let request = tracker.track().unwrap();
    /// tracker.cancel("shutting down");
    /// assert_eq!(request.context().cause().unwrap().to_string(), "shutting down");
    /// assert!(tracker.track().is_none());
    /// ```
    #[track_caller]
    pub fn cancel(&self, cause: impl Into<Cause>) {
        // Close first: a guard taken before this point is counted and sees
        // the cancel; one asked for after it is refused.
        self.close();
        self.handle.cancel_with(cause);
    }

    /// Waits until the tracker is closed and every guard has been dropped.
    /// Does not close it: without a [`close`](Self::close) (or a cancel or
    /// drain), it waits for ever.
    ///
    /// ```
    /// use ctxcore::{Context, Tracker};
    ///
    /// let tracker = Tracker::new(&Context::background());
    /// let request = tracker.track().unwrap();
    /// tracker.close();
    /// drop(request);
    /// futures::executor::block_on(tracker.wait());
    /// ```
    pub async fn wait(&self) {
        let _ = self.shared.drained.done().await;
    }

    /// [`wait`](Self::wait), for at most `timeout` on the tree's own timer
    /// (so a paused tokio clock or a [`ManualClock`](crate::ManualClock)
    /// drives it too). On a tree without any timer (no `std`, no
    /// [`Context::with_timer`] root) the timeout never fires.
    ///
    /// ```
    /// use ctxcore::{Context, DrainTimeout, Tracker};
    /// use std::time::Duration;
    ///
    /// let tracker = Tracker::new(&Context::background());
    /// let _request = tracker.track().unwrap();
    /// tracker.close();
    /// let waited = futures::executor::block_on(tracker.wait_timeout(Duration::from_millis(5)));
    /// assert_eq!(waited, Err(DrainTimeout { in_flight: 1 }));
    /// ```
    pub async fn wait_timeout(&self, timeout: Duration) -> Result<(), DrainTimeout> {
        if !self.is_drained() {
            // A child of `drained` with the deadline: done at the first of
            // the two, on the tree's timer, with no timer future of our own.
            let (limit, _limit_handle) = self.shared.drained.with_timeout(timeout);
            let _ = limit.done().await;
        }
        self.result()
    }

    /// Closes the tracker, cancels its context with `cause`, and waits until
    /// every guard has been dropped.
    ///
    /// ```
    /// use ctxcore::{Context, Tracker};
    ///
    /// let tracker = Tracker::new(&Context::background());
    /// let request = tracker.track().unwrap();
    /// let worker = std::thread::spawn(move || {
    ///     request.context().wait_blocking(); // stops on the cancel
    /// });
    /// futures::executor::block_on(tracker.cancel_and_wait("shutdown"));
    /// assert_eq!(tracker.in_flight(), 0);
    /// # worker.join().unwrap();
    /// ```
    pub async fn cancel_and_wait(&self, cause: impl Into<Cause>) {
        self.cancel(cause);
        self.wait().await
    }

    /// Closes the tracker, cancels its context with `cause`, and waits up to
    /// `timeout` (on the tree's timer, see [`wait_timeout`](Self::wait_timeout))
    /// until every guard has been dropped. `Err` tells how many are still in
    /// flight; calling a wait again goes on waiting for them.
    ///
    /// ```
    /// use ctxcore::{Context, Tracker};
    /// use std::time::Duration;
    ///
    /// let tracker = Tracker::new(&Context::background());
    /// let request = tracker.track().unwrap();
    /// let worker = std::thread::spawn(move || {
    ///     let _request = request; // dropped when the work stops
    ///     _request.context().wait_blocking();
    /// });
    /// let drained = futures::executor::block_on(tracker.drain("shutdown", Duration::from_secs(5)));
    /// assert_eq!(drained, Ok(()));
    /// # worker.join().unwrap();
    /// ```
    pub async fn drain(&self, cause: impl Into<Cause>, timeout: Duration) -> Result<(), DrainTimeout> {
        self.cancel(cause);
        self.wait_timeout(timeout).await
    }

    /// A `'static` future done once the tracker is closed and empty.
    pub(crate) fn drained_done(&self) -> crate::done::DoneOwned {
        self.shared.drained.done_owned()
    }

    fn result(&self) -> Result<(), DrainTimeout> {
        if self.is_drained() {
            Ok(())
        } else {
            Err(DrainTimeout {
                in_flight: self.in_flight(),
            })
        }
    }
}

#[cfg(feature = "std")]
impl Tracker {
    /// Blocks this thread until the tracker is closed and every guard has
    /// been dropped (see [`wait`](Self::wait)).
    ///
    /// ```
    /// let tracker = ctxcore::Tracker::new(&ctxcore::Context::background());
    /// tracker.close();
    /// tracker.wait_blocking(); // nothing was in flight
    /// ```
    pub fn wait_blocking(&self) {
        let _ = self.shared.drained.wait_blocking();
    }

    /// Blocks this thread until the tracker is closed and empty, or `timeout`
    /// (real time) passes. Never panics, even for `Duration::MAX`.
    ///
    /// ```
    /// use ctxcore::{Context, DrainTimeout, Tracker};
    /// use std::time::Duration;
    ///
    /// let tracker = Tracker::new(&Context::background());
    /// let _request = tracker.track().unwrap();
    /// tracker.close();
    /// let waited = tracker.wait_blocking_timeout(Duration::from_millis(5));
    /// assert_eq!(waited, Err(DrainTimeout { in_flight: 1 }));
    /// ```
    pub fn wait_blocking_timeout(&self, timeout: Duration) -> Result<(), DrainTimeout> {
        let _ = self.shared.drained.wait_blocking_timeout(timeout);
        self.result()
    }

    /// [`cancel_and_wait`](Self::cancel_and_wait), blocking this thread.
    ///
    /// ```
    /// use ctxcore::{Context, Tracker};
    ///
    /// let tracker = Tracker::new(&Context::background());
    /// let request = tracker.track().unwrap();
    /// let worker = std::thread::spawn(move || {
    ///     request.context().wait_blocking();
    /// });
    /// tracker.cancel_and_wait_blocking("shutdown");
    /// assert!(tracker.is_drained());
    /// # worker.join().unwrap();
    /// ```
    #[track_caller]
    pub fn cancel_and_wait_blocking(&self, cause: impl Into<Cause>) {
        self.cancel(cause);
        self.wait_blocking();
    }

    /// [`drain`](Self::drain), blocking this thread; the timeout is real
    /// time.
    ///
    /// ```
    /// use ctxcore::{Context, Tracker};
    /// use std::time::Duration;
    ///
    /// let tracker = Tracker::new(&Context::background());
    /// let request = tracker.track().unwrap();
    /// let worker = std::thread::spawn(move || {
    ///     request.context().wait_blocking();
    /// });
    /// assert_eq!(tracker.drain_blocking("shutdown", Duration::from_secs(5)), Ok(()));
    /// # worker.join().unwrap();
    /// ```
    pub fn drain_blocking(&self, cause: impl Into<Cause>, timeout: Duration) -> Result<(), DrainTimeout> {
        self.cancel(cause);
        self.wait_blocking_timeout(timeout)
    }
}

impl fmt::Debug for Tracker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tracker")
            .field("in_flight", &self.in_flight())
            .field("closed", &self.is_closed())
            .field("drained", &self.is_drained())
            .finish_non_exhaustive()
    }
}

impl InFlight {
    /// The tracker's context, for the work this guard marks.
    ///
    /// ```
    /// let tracker = ctxcore::Tracker::new(&ctxcore::Context::background());
    /// let guard = tracker.track().unwrap();
    /// tracker.cancel("shutdown");
    /// assert!(guard.context().is_done());
    /// ```
    pub fn context(&self) -> &Context {
        &self.shared.context
    }
}

impl Clone for InFlight {
    fn clone(&self) -> Self {
        let state = &self.shared.state;
        let mut s = state.load(Ordering::Relaxed);
        // Invariant 2: this guard is counted, so the count is ≥ 1 and may
        // rise even while closed. Invariant 5: saturated stays saturated.
        while !saturated(s) {
            match state.compare_exchange_weak(s, s + ONE, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => break,
                Err(now) => s = now,
            }
        }
        InFlight {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let state = &self.shared.state;
        let mut s = state.load(Ordering::Relaxed);
        loop {
            if saturated(s) {
                return; // invariant 5
            }
            // Invariant 4: AcqRel, so the last decrement carries every
            // earlier guard's work to the waiters.
            match state.compare_exchange_weak(s, s - ONE, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => {
                    // Invariant 3: the last guard of a closed tracker drains it.
                    if s - ONE == CLOSED {
                        self.shared.drained_handle.cancel();
                    }
                    return;
                }
                Err(now) => s = now,
            }
        }
    }
}

impl fmt::Debug for InFlight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InFlight")
            .field("in_flight", &count(self.shared.state.load(Ordering::Relaxed)))
            .finish_non_exhaustive()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn saturation_is_sticky() {
        let tracker = Tracker::new(&Context::background());
        let guard = tracker.track().unwrap();
        // Simulate ~2^31 leaked guards: the count's bits all set.
        tracker.shared.state.store(SATURATED, Ordering::Relaxed);
        assert!(tracker.track().is_none());
        let clone = guard.clone();
        drop(clone);
        drop(guard);
        assert_eq!(tracker.shared.state.load(Ordering::Relaxed), SATURATED);
        tracker.close();
        assert!(!tracker.is_drained());
        assert_eq!(tracker.in_flight(), count(SATURATED));
        // Put the word back so the tracker's memory is released normally.
        tracker.shared.state.store(CLOSED, Ordering::Relaxed);
    }

    #[test]
    fn close_of_an_empty_tracker_drains_it_once() {
        let tracker = Tracker::new(&Context::background());
        tracker.close();
        assert!(tracker.is_drained());
        tracker.close();
        assert!(tracker.is_drained());
        assert!(tracker.track().is_none());
    }
}
