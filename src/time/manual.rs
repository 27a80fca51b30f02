//! A clock that moves only when told to: deterministic tests.

use super::{Clock, Instant, Timer, TimerEntry};
use crate::sync::RawLock;
use alloc::collections::BTreeMap;
use core::cell::UnsafeCell;
use core::fmt;
#[cfg(target_has_atomic = "64")]
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
    now: Now,
    lock: RawLock,
    /// # Safety
    /// Guarded by `lock`.
    entries: UnsafeCell<super::EntryMap>,
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
            now: Now::new(now.as_nanos()),
            lock: RawLock::new(),
            entries: UnsafeCell::new(BTreeMap::new()),
        }
    }

    /// Moves time forward by `d` (saturating) and fires every deadline that
    /// is now due, earliest first, on this thread.
    pub fn advance(&self, d: Duration) {
        // One atomic step, so advances from several threads add up.
        let by = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.now.saturating_add(by);
        self.fire_due();
    }

    /// Moves time to `t` (never backwards: an earlier `t` is ignored) and
    /// fires every deadline that is due.
    pub fn set(&self, t: Instant) {
        self.now.fetch_max(t.as_nanos());
        self.fire_due();
    }

    /// Fires every entry due at the current reading.
    fn fire_due(&self) {
        let now = self.now();
        // With `std`, a panicking after-func is held back until every due
        // deadline has fired, then re-raised.
        #[cfg(feature = "std")]
        let mut panic = None;
        loop {
            // One entry at a time: this thread never holds a claimed entry
            // (a reference to its context) while it runs another's
            // after-funcs, which may drop that context.
            let guard = self.lock.lock();
            // SAFETY: we hold `lock`.
            let entries = unsafe { &mut *self.entries.get() };
            let due = super::claim_due(entries, now);
            drop(guard);
            let Some(firing) = due else { break };
            let Some(f) = firing else { continue };
            #[cfg(feature = "std")]
            {
                extern crate std;
                if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f.fire())) {
                    panic.get_or_insert(p);
                }
            }
            #[cfg(not(feature = "std"))]
            f.fire();
        }
        #[cfg(feature = "std")]
        if let Some(p) = panic {
            extern crate std;
            std::panic::resume_unwind(p);
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
        Instant::from_nanos(self.now.load())
    }
}

// `arm`, `disarm` and `claim` all run under `lock`; a claimed or
// disarmed entry is removed from the map at once; claimed entries fire after
// the lock is dropped (the `Timer` contract).
// SAFETY: as argued above (the `Timer` contract).
unsafe impl Timer for ManualClock {
    unsafe fn arm(&self, entry: TimerEntry) {
        let _guard = self.lock.lock();
        // SAFETY: we hold `lock`.
        unsafe { (*self.entries.get()).insert(entry.key(), entry) };
    }

    unsafe fn disarm(&self, entry: &TimerEntry) {
        let guard = self.lock.lock();
        // SAFETY: we hold `lock`.
        let _removed = unsafe { (*self.entries.get()).remove(&entry.key()) };
        drop(guard);
    }
}

/// The clock's reading: one 64-bit atomic where the target has them.
#[cfg(target_has_atomic = "64")]
struct Now(AtomicU64);

#[cfg(target_has_atomic = "64")]
impl Now {
    const fn new(nanos: u64) -> Self {
        Now(AtomicU64::new(nanos))
    }

    fn load(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    fn fetch_max(&self, nanos: u64) {
        self.0.fetch_max(nanos, Ordering::AcqRel);
    }

    fn saturating_add(&self, by: u64) {
        let _ = self
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| Some(n.saturating_add(by)));
    }
}

/// The clock's reading on targets without 64-bit atomics (Cortex-M): a `u64`
/// behind its own lock. That lock is a leaf: nothing is called while it is
/// held, so it cannot take part in a cycle with the entries' lock or a
/// node's.
#[cfg(not(target_has_atomic = "64"))]
struct Now {
    lock: RawLock,
    /// # Safety
    /// Guarded by `lock`.
    nanos: UnsafeCell<u64>,
}

#[cfg(not(target_has_atomic = "64"))]
// SAFETY: `nanos` is only touched under `lock`.
unsafe impl Sync for Now {}

#[cfg(not(target_has_atomic = "64"))]
impl Now {
    const fn new(nanos: u64) -> Self {
        Now {
            lock: RawLock::new(),
            nanos: UnsafeCell::new(nanos),
        }
    }

    fn load(&self) -> u64 {
        let _guard = self.lock.lock();
        // SAFETY: we hold `lock`.
        unsafe { *self.nanos.get() }
    }

    fn fetch_max(&self, nanos: u64) {
        let _guard = self.lock.lock();
        // SAFETY: we hold `lock`.
        let now = unsafe { &mut *self.nanos.get() };
        *now = (*now).max(nanos);
    }

    fn saturating_add(&self, by: u64) {
        let _guard = self.lock.lock();
        // SAFETY: we hold `lock`.
        let now = unsafe { &mut *self.nanos.get() };
        *now = now.saturating_add(by);
    }
}
