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
    state: Mutex<State>,
    wake: Condvar,
}

struct State {
    entries: super::EntryMap,
    thread_running: bool,
    /// The fork generation (`fork::generation`) of the process that started
    /// the thread: in a forked child it differs, and the thread is not there.
    thread_generation: u32,
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
                thread_generation: 0,
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
        let generation = fork::generation();
        let mut state = self.lock();
        // Wake the thread only if it sleeps towards a later instant.
        let earliest = key.0 < state.sleeping_until;
        state.entries.insert(key, entry);
        // A thread started before a fork runs only in the parent.
        if !state.thread_running || state.thread_generation != generation {
            let this: &'static StdTimer = StdTimer::global();
            if core::ptr::eq(this, self) {
                // Before the thread exists, so no fork can miss it.
                fork::watch();
                let spawned = std::thread::Builder::new()
                    .name("ctxcore-timer".into())
                    .spawn(move || this.run());
                // If the thread cannot start, deadlines are still exact when
                // observed; only wake-ups are lost until the next arm retries.
                state.thread_running = spawned.is_ok();
                state.thread_generation = generation;
                state.sleeping_until = Instant::ZERO;
            }
        } else if earliest {
            self.wake.notify_one();
        }
    }

    fn hands_off_after_funcs(&self) -> bool {
        // The timer thread wakes tasks and moves on: user callbacks run on
        // the after-func spawner (a thread of their own by default).
        true
    }

    fn disarm(&self, entry: &TimerEntry) {
        let mut state = self.lock();
        let _removed = state.entries.remove(&entry.key());
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
            // SAFETY: registers a handler that only touches a static atomic;
            // the function pointer is valid for the life of the program. A
            // failure (ENOMEM) only loses fork detection.
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
