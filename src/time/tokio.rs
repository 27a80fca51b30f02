//! The `tokio` backend: deadlines on a tokio runtime's timer, read on that
//! runtime's clock, so a tree follows `tokio::time::pause` and `advance`.

extern crate std;

use super::{Clock, Instant, Timer, TimerEntry};
use ::tokio::runtime::Handle;
use ::tokio::sync::Notify;
use ::tokio::time::Instant as TokioInstant;
use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use core::fmt;
use core::future::{poll_fn, Future};
use core::pin::pin;
use core::task::Poll;
use core::time::Duration;
use std::sync::{Mutex, MutexGuard};

/// The longest single sleep of the driver task. Deadlines up to
/// `Instant::MAX` (584 years) are valid; the driver never asks tokio for a
/// sleep longer than a year (well inside what tokio's wheel and its
/// millisecond arithmetic are built for) and, if it wakes with nothing due,
/// simply sleeps again. Nothing fires early: an entry is claimed only when
/// the clock has reached it.
const MAX_SLEEP: Duration = Duration::from_secs(365 * 24 * 3600);

/// A [`Timer`] on a tokio runtime: the clock is the runtime's
/// (`tokio::time::Instant`, relative to when the timer was made), and one task
/// spawned on the runtime sleeps until the earliest deadline and fires it.
///
/// Choose it when a tree's deadlines should follow the runtime's clock: under
/// `tokio::time::pause()` (feature `test-util` of tokio) time is virtual, so a
/// one-hour timeout elapses as soon as the runtime is idle or the test calls
/// `tokio::time::advance`. Without paused time it behaves like the `std`
/// timer, with tokio's millisecond resolution and no extra thread.
///
/// [`TokioTimer::new`] leaks one small allocation (the struct, a runtime
/// [`Handle`] clone and an `Arc` of the entry map): a tree's timer is a
/// `&'static dyn Timer`. Make one per runtime, once, and keep it (for example
/// in a `OnceLock`). Each armed deadline costs one ordered-map entry
/// (O(log n) arm and disarm under a mutex); every [`Clock::now`] enters the
/// runtime's context to read its clock (a thread-local swap and a reference
/// count increment).
///
/// The driver task is spawned on the first armed deadline and lives as long
/// as the runtime; when the runtime shuts down, the task is dropped and the
/// next `arm` tries to spawn it again (which does nothing on a shut-down
/// runtime). Without a running driver, deadlines are still exact when
/// observed (`is_done`, `err`); only wake-ups and after-funcs wait.
///
/// ```
/// use ctxcore::{Context, Error, TokioTimer};
/// use std::time::Duration;
///
/// let rt = tokio::runtime::Builder::new_current_thread()
///     .enable_time()
///     .start_paused(true)
///     .build()
///     .unwrap();
/// let timer = TokioTimer::new(rt.handle().clone());
/// rt.block_on(async {
///     let root = Context::with_timer(timer);
///     let (ctx, _h) = root.with_timeout(Duration::from_secs(3600));
///     // Paused time: the runtime is idle, so the clock jumps an hour.
///     assert_eq!(ctx.done().await, Error::DeadlineExceeded);
/// });
/// ```
pub struct TokioTimer {
    /// Shared with the driver task, which must own what it uses ('static).
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// Tells the driver task that an earlier deadline was armed. `notify_one`
    /// stores a permit if the driver is not waiting yet, so no wake-up is
    /// lost between its check and its wait.
    notify: Notify,
    handle: Handle,
    base: TokioInstant,
}

struct State {
    entries: super::EntryMap,
    driver_running: bool,
}

impl TokioTimer {
    /// A timer on the runtime of `handle`, with its epoch at the runtime's
    /// current time. Leaks one small allocation (see the type's docs): call
    /// it once per runtime.
    ///
    /// # Panics
    ///
    /// Like `tokio::time::sleep`, if the runtime was built without its time
    /// driver (`enable_time` or `enable_all`).
    pub fn new(handle: Handle) -> &'static TokioTimer {
        let base = {
            let _in_runtime = handle.enter();
            // Fail here, where the cause is obvious, rather than in the
            // driver task later: tokio panics on a sleep without a time
            // driver.
            drop(::tokio::time::sleep(Duration::ZERO));
            TokioInstant::now()
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                entries: BTreeMap::new(),
                driver_running: false,
            }),
            notify: Notify::new(),
            handle,
            base,
        });
        Box::leak(Box::new(TokioTimer { shared }))
    }

    /// The runtime this timer arms its deadlines on.
    pub fn handle(&self) -> &Handle {
        &self.shared.handle
    }

    /// Converts a tokio instant to this timer's [`Instant`] (saturating:
    /// instants before the timer was made map to [`Instant::ZERO`]).
    ///
    /// ```
    /// use ctxcore::TokioTimer;
    ///
    /// let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    /// let timer = TokioTimer::new(rt.handle().clone());
    /// let t = rt.block_on(async { tokio::time::Instant::now() });
    /// assert_eq!(timer.to_tokio(timer.to_instant(t)), t);
    /// ```
    pub fn to_instant(&self, t: TokioInstant) -> Instant {
        self.shared.to_instant(t)
    }

    /// Converts this timer's [`Instant`] (a context's
    /// [`deadline`](crate::Context::deadline), say) to a
    /// `tokio::time::Instant`, for `tokio::time::sleep_until` or
    /// `tokio::time::timeout_at`. Exact for every instant since the timer was
    /// made; saturating, never panics: an instant beyond what tokio can
    /// represent (such as [`Instant::MAX`], "never") maps to the latest one
    /// it can on the way there.
    ///
    /// To propagate a deadline as a duration, prefer
    /// [`Context::time_left`](crate::Context::time_left).
    ///
    /// ```
    /// use ctxcore::{Context, Error, TokioTimer};
    /// use std::time::Duration;
    ///
    /// let rt = tokio::runtime::Builder::new_current_thread()
    ///     .enable_time()
    ///     .start_paused(true)
    ///     .build()
    ///     .unwrap();
    /// let timer = TokioTimer::new(rt.handle().clone());
    /// rt.block_on(async {
    ///     let (ctx, _h) = Context::with_timer(timer).with_timeout(Duration::from_secs(60));
    ///     let deadline = timer.to_tokio(ctx.deadline().unwrap());
    ///     let slow = tokio::time::sleep(Duration::from_secs(3600));
    ///     assert!(tokio::time::timeout_at(deadline, slow).await.is_err());
    ///     assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
    /// });
    /// ```
    pub fn to_tokio(&self, t: Instant) -> TokioInstant {
        let since_base = Duration::from_nanos(t.as_nanos());
        super::convert::add_saturating(self.shared.base, since_base, TokioInstant::checked_add)
    }

    /// Number of armed deadlines (for leak checks in tests).
    pub fn armed(&self) -> usize {
        self.shared.lock().entries.len()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock (firings run outside it), but
        // never let poisoning turn into a panic for the user.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn to_instant(&self, t: TokioInstant) -> Instant {
        let nanos = t.saturating_duration_since(self.base).as_nanos();
        Instant::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// The runtime's current time. Reading it inside the runtime's context
    /// is what makes paused time visible from any thread.
    fn now(&self) -> Instant {
        let _in_runtime = self.handle.enter();
        self.to_instant(TokioInstant::now())
    }

    /// When the driver should next wake for a deadline `next`: never earlier
    /// than the deadline itself, and at most [`MAX_SLEEP`] ahead.
    fn wake_at(&self, next: Instant, now: TokioInstant) -> TokioInstant {
        let horizon = now.checked_add(MAX_SLEEP);
        let at = self.base.checked_add(Duration::from_nanos(next.as_nanos()));
        match (at, horizon) {
            (Some(at), Some(h)) => at.min(h),
            (Some(at), None) => at,
            (None, Some(h)) => h,
            // Unreachable in practice (2^63 seconds of uptime); wake now and
            // recompute rather than panic.
            (None, None) => now,
        }
    }

    fn start_driver(self: &Arc<Self>) {
        let running = DriverRunning(self.clone());
        // Spawning on a shut-down runtime drops the future (and so
        // `running`, which clears `driver_running`) without running it. We
        // hold no lock here, so that drop may take it.
        drop(self.handle.spawn(drive(running)));
    }
}

/// Clears `driver_running` when the driver future is dropped, whether it ran
/// or not (a runtime shutting down drops its tasks), so the next `arm`
/// starts a new one.
struct DriverRunning(Arc<Shared>);

impl Drop for DriverRunning {
    fn drop(&mut self) {
        self.0.lock().driver_running = false;
    }
}

/// The driver task: fires due entries, then sleeps until the earliest
/// deadline or until `arm` reports an earlier one.
async fn drive(running: DriverRunning) {
    let shared = &running.0;
    loop {
        let now = TokioInstant::now();
        let now_i = shared.to_instant(now);
        let (due, next) = {
            let mut state = shared.lock();
            // Claimed under the lock, removed at once, one at a time
            // (contract 1, 3, 4).
            let due = super::claim_due(&mut state.entries, now_i);
            (due, state.entries.first_key_value().map(|(k, _)| k.0))
        };
        if let Some(firing) = due {
            if let Some(f) = firing {
                // A panicking after-func must not kill the driver (the other
                // entries would never fire).
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f.fire()));
            }
            // Let other tasks run between firings.
            ::tokio::task::yield_now().await;
            continue;
        }
        let mut notified = pin!(shared.notify.notified());
        match next {
            None => notified.await,
            Some(next) => {
                let mut sleep = pin!(::tokio::time::sleep_until(shared.wake_at(next, now)));
                poll_fn(|cx| {
                    if notified.as_mut().poll(cx).is_ready() || sleep.as_mut().poll(cx).is_ready() {
                        Poll::Ready(())
                    } else {
                        Poll::Pending
                    }
                })
                .await
            }
        }
    }
}

impl fmt::Debug for TokioTimer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokioTimer")
            .field("now", &self.now())
            .field("armed", &self.armed())
            .finish()
    }
}

impl Clock for TokioTimer {
    fn now(&self) -> Instant {
        self.shared.now()
    }
}

// The `Timer` contract (src/time/mod.rs) is upheld as follows.
// 1. `arm`, `disarm` and the driver's `claim` calls all run while holding
//    `shared.state`'s mutex, the one lock of this timer.
// 2. `disarm` removes the entry with that key from the map under the mutex;
//    the driver only claims entries it finds in the map under the mutex, so a
//    disarmed entry is never touched again (unless armed again).
// 3. The driver removes an entry from the map in the same lock section in
//    which it claims it (so at most one claim per arm), and fires the
//    returned `TimerFiring`s only after the guard is dropped.
// SAFETY: as argued above (the `Timer` contract).
unsafe impl Timer for TokioTimer {
    unsafe fn arm(&self, entry: TimerEntry) {
        let key = entry.key();
        let mut state = self.shared.lock();
        let earliest = state.entries.first_key_value().is_none_or(|(k, _)| key < *k);
        state.entries.insert(key, entry);
        let start = !state.driver_running;
        state.driver_running = true;
        drop(state);
        if start {
            self.shared.start_driver();
        } else if earliest {
            self.shared.notify.notify_one();
        }
    }

    unsafe fn disarm(&self, entry: &TimerEntry) {
        self.shared.lock().entries.remove(&entry.key());
    }
}
