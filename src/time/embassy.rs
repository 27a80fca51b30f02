//! The `embassy-time` backend: deadlines on `embassy_time`'s clock, fired by
//! a driver future that the application spawns on its executor.

use super::{Clock, Instant, Timer, TimerEntry};
use alloc::collections::BTreeMap;
use core::cell::RefCell;
use core::fmt;
use core::future::{poll_fn, Future};
use core::task::{Poll, Waker};
use critical_section::Mutex;
use embassy_time::{Instant as EmbassyInstant, Timer as EmbassySleep, TICK_HZ};

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// A [`Timer`] on `embassy_time`: the clock is `embassy_time::Instant::now()`
/// (converted to nanoseconds), and a driver future, [`EmbassyTimer::run`],
/// which you spawn once on your executor, sleeps on an embassy `Timer` until
/// the earliest deadline and fires it.
///
/// Choose it on firmware (or anywhere an embassy time driver is the clock).
/// It is `const`-constructible, so it lives in a `static` and costs no
/// allocation of its own; each armed deadline costs one ordered-map entry
/// (O(log n) arm and disarm). The entries are guarded by a
/// `critical_section::Mutex`, so cancelling a context from an interrupt
/// handler (which disarms its deadline) cannot deadlock against the code it
/// interrupted. Firing runs outside the critical section, in the driver task.
///
/// Without the driver running, deadlines are still exact when observed
/// (`is_done`, `err`); only wake-ups and after-funcs wait for it.
///
/// ```no_run
/// use ctxcore::{Context, EmbassyTimer, Error};
/// use core::time::Duration;
///
/// static TIMER: EmbassyTimer = EmbassyTimer::new();
///
/// #[embassy_executor::task]
/// async fn timer_driver() {
///     TIMER.run().await
/// }
///
/// #[embassy_executor::task]
/// async fn worker() {
///     let root = Context::with_timer(&TIMER);
///     let (ctx, _h) = root.with_timeout(Duration::from_millis(10));
///     assert_eq!(ctx.done().await, Error::DeadlineExceeded);
/// }
///
/// fn main() {
///     let executor = Box::leak(Box::new(embassy_executor::Executor::new()));
///     executor.run(|spawner| {
///         spawner.spawn(timer_driver().unwrap());
///         spawner.spawn(worker().unwrap());
///     });
/// }
/// ```
pub struct EmbassyTimer {
    state: Mutex<RefCell<State>>,
}

struct State {
    entries: super::EntryMap,
    /// The driver's waker, taken by `arm` when it arms an earlier deadline.
    driver: Option<Waker>,
    /// Set by `arm` when the driver must recompute its sleep; cleared by the
    /// driver. Checked under the same critical section as `driver`, so no
    /// wake-up is lost between the driver's check and its sleep.
    notified: bool,
}

impl EmbassyTimer {
    /// An empty timer, for a `static`.
    pub const fn new() -> Self {
        EmbassyTimer {
            state: Mutex::new(RefCell::new(State {
                entries: BTreeMap::new(),
                driver: None,
                notified: false,
            })),
        }
    }

    /// Converts an embassy instant to nanoseconds since embassy's epoch
    /// (saturating at [`Instant::MAX`]).
    pub fn to_instant(t: EmbassyInstant) -> Instant {
        let ticks = t.as_ticks();
        let nanos = if NANOS_PER_SEC % TICK_HZ == 0 {
            ticks.saturating_mul(NANOS_PER_SEC / TICK_HZ)
        } else {
            let n = ticks as u128 * NANOS_PER_SEC as u128 / TICK_HZ as u128;
            u64::try_from(n).unwrap_or(u64::MAX)
        };
        Instant::from_nanos(nanos)
    }

    /// The first embassy tick at or after `t` (rounded up, so that waking
    /// there never fires a deadline early), saturating at
    /// `embassy_time::Instant::MAX`.
    pub fn to_embassy(t: Instant) -> EmbassyInstant {
        let nanos = t.as_nanos() as u128;
        let ticks = (nanos * TICK_HZ as u128).div_ceil(NANOS_PER_SEC as u128);
        EmbassyInstant::from_ticks(u64::try_from(ticks).unwrap_or(u64::MAX))
    }

    /// Number of armed deadlines (for leak checks in tests).
    pub fn armed(&self) -> usize {
        critical_section::with(|cs| self.state.borrow_ref(cs).entries.len())
    }

    /// The driver: fires due deadlines, then sleeps until the earliest one
    /// (or until an earlier one is armed). Spawn it once, on any embassy
    /// executor, for the life of the program; it never returns.
    pub async fn run(&self) -> ! {
        loop {
            let now = self.now();
            let (due, next) = critical_section::with(|cs| {
                let mut state = self.state.borrow_ref_mut(cs);
                // Claimed under the lock, removed at once, one at a time
                // (contract 1, 3, 4).
                let due = super::claim_due(&mut state.entries, now);
                (due, state.entries.first_key_value().map(|(k, _)| k.0))
            });
            if let Some(firing) = due {
                if let Some(f) = firing {
                    f.fire();
                }
                yield_now().await;
                continue;
            }
            let mut sleep = next.map(|t| EmbassySleep::at(Self::to_embassy(t)));
            poll_fn(|cx| {
                let (notified, old) = critical_section::with(|cs| {
                    let mut state = self.state.borrow_ref_mut(cs);
                    if core::mem::take(&mut state.notified) {
                        (true, None)
                    } else if state.driver.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                        (false, None)
                    } else {
                        (false, state.driver.replace(cx.waker().clone()))
                    }
                });
                // Dropped outside the critical section: a waker's drop is
                // foreign code.
                drop(old);
                if notified {
                    return Poll::Ready(());
                }
                match sleep.as_mut() {
                    Some(s) => core::pin::Pin::new(s).poll(cx),
                    None => Poll::Pending,
                }
            })
            .await;
        }
    }
}

/// Yields once to the executor, so a burst of firings does not starve the
/// other tasks.
async fn yield_now() {
    let mut yielded = false;
    poll_fn(|cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await
}

impl Default for EmbassyTimer {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for EmbassyTimer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmbassyTimer")
            .field("now", &self.now())
            .field("armed", &self.armed())
            .finish()
    }
}

impl Clock for EmbassyTimer {
    fn now(&self) -> Instant {
        Self::to_instant(EmbassyInstant::now())
    }
}

// The `Timer` contract (src/time/mod.rs) is upheld as follows.
// 1. `arm`, `disarm` and the driver's `claim` calls all run inside a
//    critical section holding `state` (a `critical_section::Mutex`), the one
//    lock of this timer.
// 2. `disarm` removes the entry with that key from the map inside the
//    critical section; the driver only claims entries it finds in the map, so
//    a disarmed entry is never touched again (unless armed again).
// 3. The driver removes an entry from the map in the same critical section in
//    which it claims it (so at most one claim per arm), and fires the
//    returned `TimerFiring`s after the critical section ends.
// SAFETY: as argued above (the `Timer` contract).
unsafe impl Timer for EmbassyTimer {
    unsafe fn arm(&self, entry: TimerEntry) {
        let key = entry.key();
        let wake = critical_section::with(|cs| {
            let mut state = self.state.borrow_ref_mut(cs);
            let earliest = state.entries.first_key_value().is_none_or(|(k, _)| key < *k);
            state.entries.insert(key, entry);
            if earliest {
                state.notified = true;
                state.driver.take()
            } else {
                None
            }
        });
        if let Some(w) = wake {
            w.wake();
        }
    }

    unsafe fn disarm(&self, entry: &TimerEntry) {
        critical_section::with(|cs| {
            self.state.borrow_ref_mut(cs).entries.remove(&entry.key());
        });
    }
}
