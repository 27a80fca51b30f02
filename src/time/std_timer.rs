//! The `std` backend: one lazily started timer thread for the whole process.

extern crate std;

use super::sleeper::{Sleeper, Slept};
use super::wheel::Wheel;
use super::{Clock, Instant, Timer, TimerEntry};
use crate::node::NodeDeadline;
use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use core::fmt;
use core::sync::atomic::AtomicU64;
use core::sync::atomic::Ordering::{Relaxed, SeqCst};
use core::time::Duration;
use std::sync::{Mutex, MutexGuard, OnceLock};

/// How long the thread waits with nothing armed before it exits (it is
/// started again by the next `arm`).
const IDLE_EXIT: Duration = Duration::from_secs(2);

/// The thread sleeps until this long before the earliest deadline, then
/// spins until it is due: trades at most this much CPU time per wake-up for
/// firing within a few microseconds instead of a kernel's timer slack late.
const SPIN_BEFORE: Duration = Duration::from_micros(60);

/// The process-wide timer of the `std` feature: a monotonic clock
/// (`std::time::Instant` since the first use) and one background thread that
/// fires deadlines. Entries are spread over 16 shards by their context's
/// address, each under its own lock, so threads that arm and disarm at once
/// rarely meet. A shard is a hierarchical timing wheel (six levels of 64
/// slots, ticks of about 1 ms, fired to the nanosecond) whose links live in
/// the context's own allocation: arm and disarm are O(1) and allocate
/// nothing, and a context that is cancelled or dropped removes its entry at
/// once. The thread sleeps towards the earliest of the shards' hints; `arm`
/// wakes it only for an earlier deadline, with no lock shared by all arms.
/// The thread starts on the first armed deadline and exits after two idle
/// seconds.
///
/// Accuracy: the thread sleeps on a condvar until 60 µs before the earliest
/// deadline and spins the rest, so a deadline fires a few microseconds late
/// on an idle machine instead of a kernel timer slack (~50 µs) late; every
/// deadline is absolute, so lateness never accumulates. Deadlines' after-funcs
/// run on this thread (a panicking one is caught and does not stop it); keep
/// them short. See `docs/timers.md` for measured figures.
///
/// # Fork
///
/// A child made by `fork()` inherits the timer's state but none of the
/// parent's threads, the timer thread included. The timer notices and starts
/// a new thread in the child on its next `arm` (any new deadline, in any
/// tree of the child that uses this timer), which then fires every deadline
/// the child inherited too. Detection costs nothing per `arm`: on Linux,
/// Android, macOS, iOS and the BSDs/illumos, the first thread start registers
/// a `pthread_atfork` child handler that bumps a fork generation, and `arm`
/// compares it (one relaxed load) with the generation that started the
/// thread (measured: no change to `deadline_create_drop`, within noise).
/// Remembering the process id instead costs a `getpid` system call per `arm`
/// (glibc no longer caches it): it made `deadline_create_drop` 70 % slower
/// (175 to 300 ns). Elsewhere, and under Miri, nothing is detected: a forked
/// child gets no wake-ups (deadlines stay exact when observed).
///
/// Fork in a multi-threaded process is otherwise on the caller, as for
/// tokio's runtime and Go (which offers fork only together with exec): POSIX
/// allows only async-signal-safe calls in such a child until it execs. In
/// practice, fork while no other thread is inside `ctxcore`: a lock that
/// another thread held at the moment of the fork (this timer's mutex during
/// an `arm`, `disarm` or the thread's bookkeeping, or a context's own lock
/// during a cancel) stays held forever in the child, and the child's first
/// use of it blocks. A child that forks from a single-threaded parent, or
/// execs at once, has nothing to worry about.
///
/// ```no_run
/// use ctxcore::{Context, Error};
/// use std::time::Duration;
///
/// # fn fork() -> i32 { 0 }
/// // In a child forked while no other thread was inside ctxcore:
/// if fork() == 0 {
///     let (ctx, _h) = Context::background().with_timeout(Duration::from_millis(10));
///     assert_eq!(ctx.wait_blocking(), Error::DeadlineExceeded); // woken by a new timer thread
/// }
/// ```
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
    shards: Box<[Shard]>,
    sleeper: Sleeper,
}

/// How many shards entries are spread over (by the node's address).
const SHARDS: usize = 16;

/// One shard: its own lock, its own wheel, and the hint the thread sleeps
/// by (sleeper.rs, S1). Aligned so that two shards never share a cache line.
#[repr(align(128))]
struct Shard {
    state: Mutex<ShardState>,
    /// No later than the earliest entry (`u64::MAX`: none). Lowered by `arm`
    /// and recomputed by the thread, both under `state`'s lock.
    hint: AtomicU64,
}

struct ShardState {
    /// Heap nodes that own their deadline: links in their allocation.
    wheel: Wheel<NodeDeadline>,
    /// Every other entry (scoped nodes: no tail), by key.
    others: super::EntryMap,
}

/// The shard an entry lives in, from its node's address: every arm, disarm
/// and claim of one entry takes the same lock (the `Timer` contract's
/// point 1). The address's page picks it, so the nodes that one thread's
/// allocator hands out again and again mostly share a shard, and two
/// threads mostly use different ones.
#[inline]
fn shard_of(entry: &TimerEntry) -> usize {
    let page = (entry.key().1 >> 12) as u64;
    (page.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 60) as usize % SHARDS
}

impl ShardState {
    /// Takes one entry due at `now` (to claim under the lock), or returns
    /// when to look again (no later than the earliest entry).
    fn take_due(&mut self, now: Instant) -> Result<TimerEntry, u64> {
        if let Some(first) = self.others.first_entry() {
            if first.key().0 <= now {
                return Ok(first.remove());
            }
        }
        let others = self.others.first_key_value().map_or(u64::MAX, |(k, _)| k.0.as_nanos());
        match self.wheel.take_due(now.as_nanos()) {
            // SAFETY: a slot in the wheel is the tail of a live `TimedNode`
            // (node/mod.rs invariants 7 and 21).
            Ok(slot) => Ok(unsafe { TimerEntry::from_wheel_slot(slot) }),
            Err(next) => Err(next.min(others)),
        }
    }

    fn len(&self) -> usize {
        self.wheel.len() + self.others.len()
    }
}

impl StdTimer {
    /// The process-wide timer that [`Context::background`]'s descendants use.
    ///
    /// [`Context::background`]: crate::Context::background
    pub fn global() -> &'static StdTimer {
        static GLOBAL: OnceLock<StdTimer> = OnceLock::new();
        GLOBAL.get_or_init(|| StdTimer {
            base: std::time::Instant::now(),
            shards: (0..SHARDS)
                .map(|_| Shard {
                    state: Mutex::new(ShardState {
                        wheel: Wheel::new(),
                        others: BTreeMap::new(),
                    }),
                    hint: AtomicU64::new(u64::MAX),
                })
                .collect(),
            sleeper: Sleeper::new(),
        })
    }

    /// Converts a [`std::time::Instant`] to this clock's [`Instant`]
    /// (saturating at both ends).
    #[inline]
    pub fn to_instant(&self, t: std::time::Instant) -> Instant {
        let d = t.saturating_duration_since(self.base);
        // u64 arithmetic (no `u128` from `as_nanos`): every clock read of a
        // deadline context comes through here.
        let nanos = d
            .as_secs()
            .saturating_mul(1_000_000_000)
            .saturating_add(u64::from(d.subsec_nanos()));
        Instant::from_nanos(nanos)
    }

    /// Number of armed deadlines.
    pub fn armed(&self) -> usize {
        self.shards.iter().map(|s| lock(&s.state).len()).sum()
    }

    /// The earliest hint of all shards (sleeper.rs, S1).
    fn hints(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.hint.load(SeqCst))
            .min()
            .unwrap_or(u64::MAX)
    }

    fn run(&'static self, generation: u32) {
        loop {
            let mut next = u64::MAX;
            for shard in self.shards.iter() {
                next = next.min(self.fire_due(shard));
            }
            let now = self.now().as_nanos();
            if next <= now {
                continue;
            }
            let wait = Duration::from_nanos(next - now);
            if next != u64::MAX && wait <= SPIN_BEFORE {
                // Spin the last few microseconds, holding no lock, so that
                // `arm` and `disarm` never wait for us.
                while self.now().as_nanos() < next {
                    core::hint::spin_loop();
                }
                continue;
            }
            // Sleep until shortly before the deadline: the kernel's timer
            // slack makes a sleep end up to ~50 us late.
            let timeout = if next == u64::MAX {
                IDLE_EXIT
            } else {
                wait - SPIN_BEFORE
            };
            if self.sleeper.sleep(next, timeout, || self.hints()) == Slept::Idle
                && self.sleeper.try_exit(generation, || self.hints())
            {
                return;
            }
        }
    }

    /// Fires every due entry of `shard`, one at a time (the `Timer`
    /// contract's point 4), and returns when to look at it again.
    fn fire_due(&self, shard: &Shard) -> u64 {
        let mut state = lock(&shard.state);
        loop {
            match state.take_due(self.now()) {
                Ok(entry) => {
                    // Under the shard's lock, the entry is armed and
                    // leaves the timer here: claimed once (the `Timer`
                    // contract).
                    // SAFETY: as argued above (the `Timer` contract).
                    let firing = unsafe { entry.claim() };
                    drop(state);
                    if let Some(f) = firing {
                        // A panicking after-func must not kill the timer thread.
                        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f.fire()));
                    }
                    state = lock(&shard.state);
                }
                Err(next) => {
                    // Exact under the lock: every `arm` that lowered the hint
                    // put its entry in before.
                    shard.hint.store(next, SeqCst);
                    return next;
                }
            }
        }
    }
}

fn lock(state: &Mutex<ShardState>) -> MutexGuard<'_, ShardState> {
    // Nothing panics while holding the lock (callbacks run outside it), but
    // never let poisoning turn into a panic for the user.
    state.lock().unwrap_or_else(|e| e.into_inner())
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
    #[inline]
    fn now(&self) -> Instant {
        self.to_instant(std::time::Instant::now())
    }
}

// `arm`, `disarm` and `claim` of one entry all run under the lock of
// the shard its address picks; claimed and disarmed entries leave the shard
// at once; firing happens after the lock is released, one entry at a time
// (the `Timer` contract).
// SAFETY: as argued above (the `Timer` contract).
unsafe impl Timer for StdTimer {
    unsafe fn arm(&self, entry: TimerEntry) {
        let deadline = entry.deadline().as_nanos();
        let shard = &self.shards[shard_of(&entry)];
        let mut state = lock(&shard.state);
        // SAFETY: the caller passes the entry of a live node (the `Timer`
        // contract; invariant 7), under its shard's lock.
        match unsafe { entry.wheel_slot() } {
            // The tail of a pinned heap node, not linked (an entry is
            // armed at most once, invariant 7), in this shard's wheel only
            // (its address picks the shard); it is removed by `disarm`
            // before the node goes (invariants 7, 21; W4).
            // SAFETY: as argued above (invariants 7, 21).
            Some(slot) => unsafe { state.wheel.insert(slot, deadline) },
            None => {
                let _replaced = state.others.insert(entry.key(), entry);
            }
        }
        if deadline < shard.hint.load(Relaxed) {
            shard.hint.store(deadline, SeqCst);
        }
        drop(state);
        let generation = fork::generation();
        let this = StdTimer::global();
        if !core::ptr::eq(this, self) {
            return;
        }
        self.sleeper.armed(deadline, generation, || {
            // Before the thread exists, so no fork can miss it.
            fork::watch();
            std::thread::Builder::new()
                .name("ctxcore-timer".into())
                .spawn(move || this.run(generation))
                .is_ok()
        });
    }

    fn fires_late_arms(&self) -> bool {
        // A past deadline goes into the wheel's current slot and lowers its
        // shard's hint, which wakes the thread (sleeper.rs, S1).
        true
    }

    fn hands_off_after_funcs(&self) -> bool {
        // The timer thread wakes tasks and moves on: user callbacks run on
        // the after-func spawner (a thread of their own by default).
        true
    }

    unsafe fn disarm(&self, entry: &TimerEntry) {
        let shard = &self.shards[shard_of(entry)];
        let mut state = lock(&shard.state);
        // SAFETY: the caller passes the entry of a live node (the `Timer`
        // contract: ctxcore disarms before the node goes, invariant 7).
        match unsafe { entry.wheel_slot() } {
            Some(slot) => {
                // SAFETY: valid; linked, if at all, only in this shard's
                // wheel (its address picks the shard: W1).
                let _removed = unsafe { state.wheel.remove(slot) };
            }
            None => {
                let _removed = state.others.remove(&entry.key());
            }
        }
        // The hint may now be early: the thread wakes once for nothing and
        // recomputes it.
        drop(state);
    }
}

/// Fork detection: a generation counter bumped in every forked child.
#[cfg(all(
    not(miri),
    any(
        target_os = "linux",
        target_os = "android",
        target_os = "macos",
        target_os = "ios",
        target_os = "freebsd",
        target_os = "netbsd",
        target_os = "openbsd",
        target_os = "dragonfly",
        target_os = "illumos",
        target_os = "solaris",
    )
))]
mod fork {
    use core::ffi::c_int;
    use core::sync::atomic::{AtomicU32, Ordering};

    static GENERATION: AtomicU32 = AtomicU32::new(0);

    // std links the C library on these targets; `pthread_atfork` is POSIX.
    extern "C" {
        fn pthread_atfork(
            prepare: Option<extern "C" fn()>,
            parent: Option<extern "C" fn()>,
            child: Option<extern "C" fn()>,
        ) -> c_int;
    }

    /// Runs in the child, on the forking thread, before `fork` returns: the
    /// child has one thread, and this is async-signal-safe (one atomic add).
    extern "C" fn in_child() {
        GENERATION.fetch_add(1, Ordering::Relaxed);
    }

    /// Registers the child handler, once per process (a forked child keeps
    /// its parent's handlers, and the `Once` is inherited as done).
    pub(super) fn watch() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            // Registers a handler that only touches a static atomic;
            // the function pointer is valid for the life of the program. A
            // failure (ENOMEM) only loses fork detection.
            // SAFETY: as argued above.
            let _failed = unsafe { pthread_atfork(None, None, Some(in_child)) };
        });
    }

    /// How many forks separate this process from the one that called
    /// `watch` first (0 there).
    #[inline]
    pub(super) fn generation() -> u32 {
        GENERATION.load(Ordering::Relaxed)
    }
}

/// No fork detection on this target (or under Miri): see "Fork" on
/// [`StdTimer`].
#[cfg(not(all(
    not(miri),
    any(
        target_os = "linux",
        target_os = "android",
        target_os = "macos",
        target_os = "ios",
        target_os = "freebsd",
        target_os = "netbsd",
        target_os = "openbsd",
        target_os = "dragonfly",
        target_os = "illumos",
        target_os = "solaris",
    )
)))]
mod fork {
    pub(super) fn watch() {}

    #[inline]
    pub(super) fn generation() -> u32 {
        0
    }
}
