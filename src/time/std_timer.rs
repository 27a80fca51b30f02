//! The `std` backend: one lazily started timer thread for the whole process.

extern crate std;

use super::{Clock, Instant, Timer, TimerEntry};
use alloc::collections::BTreeMap;
use core::fmt;
use core::time::Duration;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};

/// How long the thread waits with nothing armed before it exits (it is
/// started again by the next `arm`).
const IDLE_EXIT: Duration = Duration::from_secs(2);

/// The thread sleeps until this long before the earliest deadline, then
/// spins until it is due: trades at most this much CPU time per wake-up for
/// firing within a few microseconds instead of a kernel's timer slack late.
const SPIN_BEFORE: Duration = Duration::from_micros(60);

/// The process-wide timer of the `std` feature: a monotonic clock
/// (`std::time::Instant` since the first use) and one background thread that
/// fires deadlines. Entries live in an ordered map: arm and disarm are
/// O(log n), and a context that is cancelled or dropped removes its entry at
/// once. The thread starts on the first armed deadline and exits after two
/// idle seconds.
///
/// Accuracy: the thread sleeps on a condvar until 60 µs before the earliest
/// deadline and spins the rest, so a deadline fires a few microseconds late
/// on an idle machine instead of a kernel timer slack (~50 µs) late; every
/// deadline is absolute, so lateness never accumulates. Deadlines' after-funcs
/// run on this thread (a panicking one is caught and does not stop it); keep
/// them short. See `docs/timers.md` for measured figures.
///
/// ```
/// use ctxcore::{Context, Error, Instant};
/// use std::time::Duration;
///
/// let (ctx, _h) = Context::background().with_timeout(Duration::from_millis(20));
/// assert!(ctx.deadline().unwrap() > Instant::now());
/// assert_eq!(ctx.wait_blocking(), Error::DeadlineExceeded);
/// ```
pub struct StdTimer {
    base: std::time::Instant,
    state: Mutex<State>,
    wake: Condvar,
}

struct State {
    entries: super::EntryMap,
    thread_running: bool,
    /// What the thread sleeps towards: `arm` wakes it only for an earlier
    /// deadline (`Instant::ZERO` while it is awake, `Instant::MAX` while it
    /// idles), so that creating and dropping deadline contexts costs no
    /// futex wake each.
    sleeping_until: Instant,
}

impl StdTimer {
    /// The process-wide timer that [`Context::background`]'s descendants use.
    ///
    /// [`Context::background`]: crate::Context::background
    pub fn global() -> &'static StdTimer {
        static GLOBAL: OnceLock<StdTimer> = OnceLock::new();
        GLOBAL.get_or_init(|| StdTimer {
            base: std::time::Instant::now(),
            state: Mutex::new(State {
                entries: BTreeMap::new(),
                thread_running: false,
                sleeping_until: Instant::ZERO,
            }),
            wake: Condvar::new(),
        })
    }

    /// Converts a [`std::time::Instant`] to this clock's [`Instant`]
    /// (saturating at both ends).
    pub fn to_instant(&self, t: std::time::Instant) -> Instant {
        let nanos = t.saturating_duration_since(self.base).as_nanos();
        Instant::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// Number of armed deadlines.
    pub fn armed(&self) -> usize {
        self.lock().entries.len()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock (callbacks run outside it),
        // but never let poisoning turn into a panic for the user.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn run(&'static self) {
        let mut state = self.lock();
        loop {
            let now = self.now();
            // One entry at a time: the thread never holds a claimed entry (a
            // reference to its context) while it runs another's after-funcs,
            // which may drop that context.
            if let Some(firing) = super::claim_due(&mut state.entries, now) {
                drop(state);
                if let Some(f) = firing {
                    // A panicking after-func must not kill the timer thread.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f.fire()));
                }
                state = self.lock();
                continue;
            }
            match state.entries.first_key_value().map(|(k, _)| k.0) {
                Some(next) => {
                    let wait = next.saturating_duration_since(now);
                    if wait > SPIN_BEFORE {
                        // Sleep until shortly before the deadline: the kernel's
                        // timer slack makes a sleep end up to ~50 µs late.
                        let sleep = wait - SPIN_BEFORE;
                        state.sleeping_until = next;
                        state = self
                            .wake
                            .wait_timeout(state, sleep)
                            .unwrap_or_else(|e| e.into_inner())
                            .0;
                        state.sleeping_until = Instant::ZERO;
                    } else {
                        // Spin the last few microseconds, without the lock so
                        // that `arm` and `disarm` never wait for us.
                        drop(state);
                        while self.now() < next {
                            core::hint::spin_loop();
                        }
                        state = self.lock();
                    }
                }
                None => {
                    state.sleeping_until = Instant::MAX;
                    let (s, res) = self
                        .wake
                        .wait_timeout(state, IDLE_EXIT)
                        .unwrap_or_else(|e| e.into_inner());
                    state = s;
                    state.sleeping_until = Instant::ZERO;
                    if res.timed_out() && state.entries.is_empty() {
                        state.thread_running = false;
                        return;
                    }
                }
            }
        }
    }
}

impl fmt::Debug for StdTimer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StdTimer")
            .field("now", &self.now())
            .field("armed", &self.armed())
            .finish()
    }
}

impl Clock for StdTimer {
    fn now(&self) -> Instant {
        self.to_instant(std::time::Instant::now())
    }
}

// SAFETY: `arm`, `disarm` and `claim` all run under `state`'s mutex; claimed
// and disarmed entries leave the map at once; firing happens after the mutex
// is released (the `Timer` contract).
unsafe impl Timer for StdTimer {
    fn arm(&self, entry: TimerEntry) {
        let key = entry.key();
        let mut state = self.lock();
        // Wake the thread only if it sleeps towards a later instant.
        let earliest = key.0 < state.sleeping_until;
        state.entries.insert(key, entry);
        if !state.thread_running {
            let this: &'static StdTimer = StdTimer::global();
            if core::ptr::eq(this, self) {
                let spawned = std::thread::Builder::new()
                    .name("ctxcore-timer".into())
                    .spawn(move || this.run());
                // If the thread cannot start, deadlines are still exact when
                // observed; only wake-ups are lost until the next arm retries.
                state.thread_running = spawned.is_ok();
                state.sleeping_until = Instant::ZERO;
            }
        } else if earliest {
            self.wake.notify_one();
        }
    }

    fn disarm(&self, entry: &TimerEntry) {
        let mut state = self.lock();
        let _removed = state.entries.remove(&entry.key());
        drop(state);
    }
}
