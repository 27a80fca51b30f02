//! A clock that moves only when told to: deterministic tests.

use super::{Clock, Instant, Timer, TimerEntry};
use crate::sync::RawLock;
use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::cell::UnsafeCell;
use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};
use core::time::Duration;

/// A manual clock and timer: time moves only on [`advance`](Self::advance) or
/// [`set`](Self::set), and deadlines that become due fire right there, on the
/// calling thread. Deterministic: for your own tests, and for ours.
///
/// `const`-constructible, so it can be a `static` (a tree's timer is
/// `&'static dyn Timer`).
///
/// ```
/// use ctxcore::{Context, Error, ManualClock};
/// use std::time::Duration;
///
/// static CLOCK: ManualClock = ManualClock::new();
/// let root = Context::with_timer(&CLOCK);
/// let (hour, _h1) = root.with_timeout(Duration::from_secs(3600));
/// let (minute, _h2) = hour.with_timeout_cause(Duration::from_secs(60), "slow query");
///
/// CLOCK.advance(Duration::from_secs(59));
/// assert!(!minute.is_done());
/// CLOCK.advance(Duration::from_secs(1));
/// assert_eq!(minute.err(), Some(Error::DeadlineExceeded));
/// assert_eq!(minute.cause().unwrap().to_string(), "slow query");
/// assert!(!hour.is_done());
/// CLOCK.advance(Duration::from_secs(3600));
/// assert!(hour.is_done());
/// ```
pub struct ManualClock {
    now: AtomicU64,
    lock: RawLock,
    /// # Safety
    /// Guarded by `lock`.
    entries: UnsafeCell<BTreeMap<(Instant, usize), TimerEntry>>,
}

// SAFETY: `entries` is only touched under `lock`.
unsafe impl Sync for ManualClock {}
// SAFETY: as above; entries are `Send`.
unsafe impl Send for ManualClock {}

impl ManualClock {
    /// A clock at [`Instant::ZERO`].
    pub const fn new() -> Self {
        Self::starting_at(Instant::ZERO)
    }

    /// A clock at `now`.
    pub const fn starting_at(now: Instant) -> Self {
        ManualClock {
            now: AtomicU64::new(now.as_nanos()),
            lock: RawLock::new(),
            entries: UnsafeCell::new(BTreeMap::new()),
        }
    }

    /// Moves time forward by `d` (saturating) and fires every deadline that
    /// is now due, earliest first, on this thread.
    pub fn advance(&self, d: Duration) {
        let now = Instant::from_nanos(self.now.load(Ordering::Acquire)).saturating_add(d);
        self.set(now);
    }

    /// Moves time to `t` (never backwards: an earlier `t` is ignored) and
    /// fires every deadline that is due.
    pub fn set(&self, t: Instant) {
        self.now.fetch_max(t.as_nanos(), Ordering::AcqRel);
        let now = self.now();
        loop {
            let guard = self.lock.lock();
            // SAFETY: we hold `lock`.
            let entries = unsafe { &mut *self.entries.get() };
            let mut due = Vec::new();
            while let Some(entry) = entries.first_entry() {
                if entry.key().0 > now || due.len() == 64 {
                    break;
                }
                let e = entry.remove();
                if let Some(f) = e.claim() {
                    due.push(f);
                }
            }
            let more = entries.first_key_value().is_some_and(|(k, _)| k.0 <= now);
            drop(guard);
            for f in due {
                f.fire();
            }
            if !more {
                return;
            }
        }
    }

    /// Number of armed deadlines (for leak checks in tests).
    pub fn armed(&self) -> usize {
        let _guard = self.lock.lock();
        // SAFETY: we hold `lock`.
        unsafe { (*self.entries.get()).len() }
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManualClock")
            .field("now", &self.now())
            .field("armed", &self.armed())
            .finish()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        Instant::from_nanos(self.now.load(Ordering::Acquire))
    }
}

// SAFETY: `arm`, `disarm` and `claim` all run under `lock`; a claimed or
// disarmed entry is removed from the map at once; claimed entries fire after
// the lock is dropped (the `Timer` contract).
unsafe impl Timer for ManualClock {
    fn arm(&self, entry: TimerEntry) {
        let _guard = self.lock.lock();
        // SAFETY: we hold `lock`.
        unsafe { (*self.entries.get()).insert(entry.key(), entry) };
    }

    fn disarm(&self, entry: &TimerEntry) {
        let guard = self.lock.lock();
        // SAFETY: we hold `lock`.
        let _removed = unsafe { (*self.entries.get()).remove(&entry.key()) };
        drop(guard);
    }
}
