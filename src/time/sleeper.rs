//! How the [`StdTimer`](super::StdTimer)'s thread sleeps and how `arm`
//! wakes it, without a lock shared by every `arm`.
//!
//! Each shard publishes a *hint*: an instant no later than its earliest
//! entry (`u64::MAX` when empty), lowered by `arm` under the shard's lock and
//! recomputed exactly by the thread when it processes the shard. The thread
//! sleeps towards the earliest hint and publishes that instant as
//! `sleeping_until` (0 while it is awake). This file is self-contained (the
//! loom model in `loom/tests/sleeper.rs` includes it as it is).
//!
//! # Invariants
//!
//! S1. **No lost wake-up.** `arm` stores its hint and then reads
//!     `sleeping_until`; the thread stores `sleeping_until` and then reads
//!     every hint, both under the sleeper's lock, before it waits, each
//!     side with a `SeqCst` fence between its store and its loads. Of two such store-then-load pairs at least one load sees
//!     the other's store: either the thread sees the new hint and does not
//!     sleep past it, or `arm` sees the thread's target, finds its own
//!     instant earlier and notifies under the lock — which it gets only
//!     once the thread waits (the wait releases it) or before the thread
//!     took it (then the thread's reads come after the hint).
//! S2. **One thread per process generation.** `started` is
//!     `generation << 1 | 1` while a thread of that fork generation runs,
//!     else anything else. It is written only under the lock: by `arm` when
//!     it starts a thread, and by an idle thread that exits, which clears
//!     it and then (after a `SeqCst` fence) reads every hint, and stays if one is set. An
//!     `arm` that stored a hint and then read `started` as running relies on
//!     a thread that has not yet read the hints; one that read it cleared
//!     waits for the lock, after which the thread has either stayed (and
//!     restored `started`) or left (and `arm` starts a new one).

#[cfg(loom)]
use loom::sync::{
    atomic::{fence, AtomicU64, Ordering::SeqCst},
    Condvar, Mutex, MutexGuard,
};
#[cfg(not(loom))]
use std::sync::{
    atomic::{fence, AtomicU64, Ordering::SeqCst},
    Condvar, Mutex, MutexGuard,
};
use std::time::Duration;

/// The thread's side and `arm`'s side of the sleep protocol (S1, S2).
pub(crate) struct Sleeper {
    lock: Mutex<()>,
    wake: Condvar,
    /// What the thread sleeps towards: 0 while it is awake, `u64::MAX`
    /// while it idles.
    sleeping_until: AtomicU64,
    /// `generation << 1 | 1` while a thread of that fork generation runs.
    started: AtomicU64,
}

/// How a sleep ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Slept {
    /// Woken, timed out towards an entry, or did not sleep: look again.
    Again,
    /// Idled for the whole timeout with nothing armed.
    Idle,
}

fn running(generation: u32) -> u64 {
    (u64::from(generation) << 1) | 1
}

impl Sleeper {
    pub(crate) fn new() -> Self {
        Sleeper {
            lock: Mutex::new(()),
            wake: Condvar::new(),
            sleeping_until: AtomicU64::new(0),
            started: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        // Nothing panics under this lock; never turn poisoning into a panic.
        self.lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `arm`'s side, after it stored a shard hint of `at` or earlier
    /// (`SeqCst`): starts a thread if none runs in this fork `generation`
    /// (`spawn` returns whether it could), else wakes the thread if it
    /// sleeps towards a later instant (S1, S2).
    #[inline]
    pub(crate) fn armed(&self, at: u64, generation: u32, spawn: impl FnOnce() -> bool) {
        // Orders the caller's hint store before our loads (S1, S2).
        fence(SeqCst);
        if self.started.load(SeqCst) != running(generation) {
            self.start(generation, spawn);
        } else if at < self.sleeping_until.load(SeqCst) {
            let _guard = self.lock();
            self.wake.notify_one();
        }
    }

    #[cold]
    fn start(&self, generation: u32, spawn: impl FnOnce() -> bool) {
        let _guard = self.lock();
        if self.started.load(SeqCst) != running(generation) && spawn() {
            // A new thread looks at every shard before it first sleeps.
            self.sleeping_until.store(0, SeqCst);
            self.started.store(running(generation), SeqCst);
        }
        // If the thread cannot start, deadlines stay exact when observed;
        // only wake-ups are lost until the next `arm` retries.
    }

    /// The thread's side: sleeps towards `next` (an instant on the timer's
    /// clock, `u64::MAX` for none) for at most `timeout`, unless `hints`
    /// (the earliest shard hint, read `SeqCst`) is earlier (S1).
    pub(crate) fn sleep(&self, next: u64, timeout: Duration, hints: impl Fn() -> u64) -> Slept {
        let guard = self.lock();
        self.sleeping_until.store(next, SeqCst);
        fence(SeqCst);
        if hints() < next {
            self.sleeping_until.store(0, SeqCst);
            return Slept::Again;
        }
        let (guard, result) = self
            .wake
            .wait_timeout(guard, timeout)
            .unwrap_or_else(|e| e.into_inner());
        self.sleeping_until.store(0, SeqCst);
        drop(guard);
        if next == u64::MAX && result.timed_out() {
            Slept::Idle
        } else {
            Slept::Again
        }
    }

    /// The thread's side after an idle sleep: returns true if it may exit
    /// (nothing is armed, and the next `arm` starts a new thread), false if
    /// an entry came in meanwhile (S2).
    pub(crate) fn try_exit(&self, generation: u32, hints: impl Fn() -> u64) -> bool {
        let _guard = self.lock();
        self.started.store(0, SeqCst);
        fence(SeqCst);
        if hints() != u64::MAX {
            self.started.store(running(generation), SeqCst);
            return false;
        }
        true
    }
}
