//! Time: [`Instant`], the [`Clock`] and [`Timer`] traits, and the timer
//! backends.
//!
//! A context tree reads its clock and arms its deadlines through one
//! [`Timer`], chosen at the root: [`Context::with_timer`] makes a root on any
//! timer, and [`Context::background`] uses the default one (the `std` timer
//! thread with the `std` feature). Every descendant uses its root's timer.
//!
//! An [`Instant`] is only meaningful on the clock that made it. Read a
//! context's own clock with [`Context::now`], and propagate a deadline with
//! [`Context::time_left`]; [`Instant::now`] reads the default clock only.
//! Each backend converts its instants to and from its native type
//! (`StdTimer::to_std` / `to_instant`, `TokioTimer::to_tokio` /
//! `to_instant`).
//!
//! ```
//! use ctxcore::{Context, ManualClock};
//! use core::time::Duration;
//!
//! static CLOCK: ManualClock = ManualClock::new();
//! CLOCK.advance(Duration::from_secs(300)); // this clock's epoch is not std's
//! let (ctx, _h) = Context::with_timer(&CLOCK).with_timeout(Duration::from_secs(2));
//! assert_eq!(ctx.time_left(), Some(Duration::from_secs(2)));
//! ```
//!
//! [`Context::with_timer`]: crate::Context::with_timer
//! [`Context::background`]: crate::Context::background
//! [`Context::now`]: crate::Context::now
//! [`Context::time_left`]: crate::Context::time_left

use core::fmt;
use core::ops::{Add, Sub};
use core::time::Duration;

#[cfg(feature = "std")]
mod convert;
#[cfg(all(feature = "embassy-time", feature = "alloc"))]
mod embassy;
#[cfg(all(feature = "alloc", not(loom)))]
mod manual;
#[cfg(feature = "std")]
mod sleeper;
#[cfg(feature = "std")]
mod std_timer;
#[cfg(feature = "tokio")]
mod tokio;
#[cfg(feature = "std")]
pub(crate) mod wheel;

#[cfg(feature = "tokio")]
pub use self::tokio::TokioTimer;
#[cfg(all(feature = "embassy-time", feature = "alloc"))]
pub use embassy::EmbassyTimer;
#[cfg(all(feature = "alloc", not(loom)))]
pub use manual::ManualClock;
#[cfg(feature = "std")]
pub use std_timer::StdTimer;

pub use crate::node::{TimerEntry, TimerFiring};

/// A point in time: nanoseconds since an epoch chosen by the clock that made it.
///
/// `Instant`s from different clocks are not comparable in meaning (they are in
/// type). Arithmetic saturates: `Instant::MAX + anything == Instant::MAX`, and
/// no operation panics.
///
/// ```
/// use ctxcore::Instant;
/// use core::time::Duration;
///
/// let t = Instant::from_nanos(5);
/// assert_eq!(t + Duration::from_nanos(10), Instant::from_nanos(15));
/// assert_eq!(Instant::MAX + Duration::MAX, Instant::MAX);
/// assert_eq!(t.saturating_duration_since(Instant::from_nanos(9)), Duration::ZERO);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Instant(u64);

impl Instant {
    /// The clock's epoch.
    pub const ZERO: Instant = Instant(0);
    /// The latest representable instant (about 584 years after the epoch);
    /// a deadline here never fires.
    pub const MAX: Instant = Instant(u64::MAX);

    /// An instant `nanos` nanoseconds after the epoch.
    pub const fn from_nanos(nanos: u64) -> Self {
        Instant(nanos)
    }

    /// Nanoseconds since the epoch.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// `self + d`, saturating at [`Instant::MAX`].
    pub const fn saturating_add(self, d: Duration) -> Self {
        let n = d.as_nanos();
        let n = if n > u64::MAX as u128 { u64::MAX } else { n as u64 };
        Instant(self.0.saturating_add(n))
    }

    /// `self - d`, saturating at [`Instant::ZERO`].
    pub const fn saturating_sub(self, d: Duration) -> Self {
        let n = d.as_nanos();
        let n = if n > u64::MAX as u128 { u64::MAX } else { n as u64 };
        Instant(self.0.saturating_sub(n))
    }

    /// `self + d`, or `None` past [`Instant::MAX`].
    pub const fn checked_add(self, d: Duration) -> Option<Self> {
        let n = d.as_nanos();
        if n > u64::MAX as u128 {
            return None;
        }
        match self.0.checked_add(n as u64) {
            Some(v) => Some(Instant(v)),
            None => None,
        }
    }

    /// Time from `earlier` to `self`, zero if `earlier` is later.
    pub const fn saturating_duration_since(self, earlier: Instant) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }

    /// Reads the **default clock only**: the [`StdTimer`]'s, which
    /// [`Context::background`]'s descendants use for `with_timeout`.
    ///
    /// A tree made with [`Context::with_timer`] (a `TokioTimer`, an
    /// `EmbassyTimer`, a [`ManualClock`]) has its own clock with its own
    /// epoch, and its deadlines are instants on that clock: subtracting
    /// `Instant::now()` from them gives nonsense (off by however long the
    /// process ran before the timer was made, or anything under tokio's
    /// paused time). To read a context's clock use [`Context::now`]; to
    /// propagate a deadline use [`Context::time_left`].
    ///
    /// ```
    /// use ctxcore::{Context, Instant};
    /// use std::time::Duration;
    ///
    /// let (ctx, _h) = Context::background().with_timeout(Duration::from_secs(1));
    /// // Right for a background tree, and for every tree:
    /// let left = ctx.time_left().unwrap();
    /// assert!(left <= Duration::from_secs(1));
    /// // Same clock here only because this tree is on the default timer:
    /// assert!(ctx.deadline().unwrap() - Instant::now() <= Duration::from_secs(1));
    /// ```
    ///
    /// [`Context::background`]: crate::Context::background
    /// [`Context::with_timer`]: crate::Context::with_timer
    /// [`Context::now`]: crate::Context::now
    /// [`Context::time_left`]: crate::Context::time_left
    #[cfg(feature = "std")]
    pub fn now() -> Self {
        StdTimer::global().now()
    }
}

impl fmt::Debug for Instant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Instant::MAX {
            f.write_str("Instant::MAX")
        } else {
            write!(f, "Instant({:?})", Duration::from_nanos(self.0))
        }
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;
    /// Saturating.
    fn add(self, d: Duration) -> Instant {
        self.saturating_add(d)
    }
}

impl Sub<Duration> for Instant {
    type Output = Instant;
    /// Saturating.
    fn sub(self, d: Duration) -> Instant {
        self.saturating_sub(d)
    }
}

impl Sub<Instant> for Instant {
    type Output = Duration;
    /// Saturating: zero if `rhs` is later.
    fn sub(self, rhs: Instant) -> Duration {
        self.saturating_duration_since(rhs)
    }
}

/// A source of [`Instant`]s. Must be monotonic (never go backwards).
pub trait Clock: Send + Sync {
    /// The current time.
    fn now(&self) -> Instant;
}

/// A clock that can also wake deadline contexts on time.
///
/// The timer only has to *wake*: a context reports
/// [`Error::DeadlineExceeded`](crate::Error::DeadlineExceeded) as soon as
/// [`Clock::now`] has passed its deadline, whether the timer fired or not.
///
/// # Safety
///
/// Implementations must uphold the entry protocol (node/mod.rs invariant 7):
///
/// 1. `arm` and `disarm` and every call of [`TimerEntry::claim`] on an armed
///    entry are serialised by one lock of the timer (they never run
///    concurrently for the same entry).
/// 2. After `disarm(e)` returns, the timer never again touches an entry equal
///    to `e` (same [`TimerEntry::key`]) unless it is armed again.
/// 3. `claim` is called at most once per `arm`, and the timer forgets the
///    entry when it does; the [`TimerFiring`] it returns is then fired (or
///    dropped) *outside* that lock.
/// 4. (Liveness, not memory safety.) The timer holds at most one unfired
///    [`TimerFiring`] at a time: claim one entry, fire it, then claim the
///    next. A firing holds its context alive; firing one entry may run an
///    after-func that drops another context, whose drop waits for every
///    holder (a pinned `ScopedContext` cannot be freed under a holder).
///
/// ```
/// use ctxcore::{Context, ManualClock};
/// use core::time::Duration;
///
/// static CLOCK: ManualClock = ManualClock::new();
/// let root = Context::with_timer(&CLOCK);
/// let (ctx, _h) = root.with_timeout(Duration::from_secs(3600));
/// assert!(!ctx.is_done());
/// CLOCK.advance(Duration::from_secs(3600));
/// assert!(ctx.is_done());
/// ```
pub unsafe trait Timer: Clock {
    /// Schedules `entry` to be claimed and fired at (or after)
    /// `entry.deadline()`.
    ///
    /// # Safety
    ///
    /// `entry` is one that ctxcore handed out and its context is alive: call
    /// this only as ctxcore does (a timer that forwards to another may pass
    /// on the entry its own `arm` was given, within that call). A timer may
    /// read the entry's context through it (the std timer keeps its links
    /// there), so an entry kept past its context's life is a dangling
    /// pointer: review 4 found a safe `disarm` of a kept clone reading a
    /// freed context.
    unsafe fn arm(&self, entry: TimerEntry);
    /// Forgets `entry` if it is still armed. Must be cheap (it runs whenever a
    /// deadline context is cancelled or freed).
    ///
    /// # Safety
    ///
    /// As for [`arm`](Self::arm): the entry's context is alive (ctxcore
    /// disarms before it frees; a forwarding timer may pass on the entry
    /// its own `disarm` was given, within that call).
    ///
    #[cfg_attr(feature = "std", doc = "```compile_fail")]
    #[cfg_attr(not(feature = "std"), doc = "```ignore")]
    /// fn disarm_a_kept_entry(e: &ctxcore::TimerEntry) {
    ///     use ctxcore::Timer;
    ///     ctxcore::StdTimer::global().disarm(e); // error[E0133]: call to unsafe function
    /// }
    /// ```
    unsafe fn disarm(&self, entry: &TimerEntry);

    /// Whether the after-funcs of a deadline this timer fires are handed to
    /// the after-func spawner ([`set_after_func_spawner`]: by default a new
    /// thread with `std`) instead of running on the thread that fires it.
    /// `false` by default: they run where [`TimerFiring::fire`] is called
    /// (a virtual clock's `advance`, an executor's timer task), after its
    /// wakers. [`StdTimer`] says `true`, so a slow after-func never holds up
    /// another deadline. (A deadline noticed by a read is handed off
    /// whatever the timer says: user callbacks never run inside a read.)
    ///
    /// [`set_after_func_spawner`]: crate::set_after_func_spawner
    fn hands_off_after_funcs(&self) -> bool {
        false
    }

    /// Whether an entry armed with a deadline that has already passed (or
    /// passes while `arm` runs) is fired soon by the timer itself, with no
    /// further call: [`StdTimer`] says `true` (its thread is woken for an
    /// earlier deadline, past ones included). `false` by default: then
    /// ctxcore reads the clock once more after arming and fires a passed
    /// deadline itself, since a timer driven from outside (a virtual clock's
    /// `advance`) may have scanned its due entries just before the entry
    /// landed. Either way a waiter is never lost; `true` only saves the
    /// clock read.
    fn fires_late_arms(&self) -> bool {
        false
    }
}

/// The entries of a timer backed by an ordered map, keyed by
/// [`TimerEntry::key`].
#[cfg(feature = "alloc")]
pub(crate) type EntryMap = alloc::collections::BTreeMap<(Instant, usize), TimerEntry>;

/// Takes the earliest entry out of `entries` if it is due at `now` and claims
/// it: `Some(Some(firing))` to fire after releasing the timer's lock,
/// `Some(None)` if its context was being freed (nothing to fire), `None` if
/// nothing is due. One entry per call, as the `Timer` contract's point 4
/// asks; call it under the timer's lock.
#[cfg(feature = "alloc")]
pub(crate) fn claim_due(entries: &mut EntryMap, now: Instant) -> Option<Option<TimerFiring>> {
    let entry = entries.first_entry()?;
    if entry.key().0 > now {
        return None;
    }
    // SAFETY: we are under the timer's lock (our caller's contract) and the
    // entry was armed and is claimed once: it leaves the map here.
    Some(unsafe { entry.remove().claim() })
}

/// The timer used by [`Context::background`](crate::Context::background)'s
/// descendants: the process-wide [`StdTimer`] with the `std` feature, none
/// without it.
#[cfg_attr(not(feature = "alloc"), allow(dead_code))]
pub(crate) fn default_timer() -> Option<&'static dyn Timer> {
    #[cfg(feature = "std")]
    {
        Some(StdTimer::global())
    }
    #[cfg(not(feature = "std"))]
    {
        None
    }
}
