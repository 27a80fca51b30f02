//! loom models of the std timer's sleep protocol (src/time/sleeper.rs,
//! invariants S1 and S2), on the file itself: `arm` publishing a shard hint
//! while the timer thread decides to sleep, and while an idle thread
//! decides to exit. loom's `wait_timeout` never times out, so a lost
//! wake-up shows as a deadlock.
#![cfg(loom)]

#[path = "../../src/time/sleeper.rs"]
#[allow(dead_code)]
mod sleeper;

use loom::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use loom::sync::Arc;
use loom::thread;
use sleeper::{Sleeper, Slept};
use std::time::Duration;

const NONE: u64 = u64::MAX;

/// A sleeper whose thread counts as started in fork generation 0.
fn started() -> Arc<Sleeper> {
    let s = Arc::new(Sleeper::new());
    s.armed(NONE, 0, || true);
    s
}

/// The timer thread: looks at the hint, and sleeps towards it (or idles)
/// until it sees an entry at `want` or earlier.
fn timer_thread(s: &Sleeper, hint: &AtomicU64, first: u64, want: u64) {
    let mut next = first;
    loop {
        let h = hint.load(SeqCst);
        if h <= want {
            return;
        }
        next = next.min(h);
        // Never `Idle` under loom (no timeouts).
        assert_eq!(
            s.sleep(next, Duration::from_secs(2), || hint.load(SeqCst)),
            Slept::Again
        );
    }
}

/// S1: an idle thread (nothing armed) and an `arm` that publishes a hint:
/// the thread is woken (or never sleeps).
#[test]
fn arm_wakes_idle_thread() {
    loom::model(|| {
        let s = started();
        let hint = Arc::new(AtomicU64::new(NONE));
        let t = {
            let (s, hint) = (s.clone(), hint.clone());
            thread::spawn(move || timer_thread(&s, &hint, NONE, 5))
        };
        hint.store(5, SeqCst);
        s.armed(5, 0, || panic!("a thread runs already"));
        t.join().unwrap();
    });
}

/// S1: a thread sleeping towards 10 and an `arm` of 5.
#[test]
fn earlier_arm_wakes_sleeping_thread() {
    loom::model(|| {
        let s = started();
        let hint = Arc::new(AtomicU64::new(10));
        let t = {
            let (s, hint) = (s.clone(), hint.clone());
            thread::spawn(move || timer_thread(&s, &hint, 10, 5))
        };
        // The shard's lock orders the hint's updates; here one writer.
        hint.store(5, SeqCst);
        s.armed(5, 0, || panic!("a thread runs already"));
        t.join().unwrap();
    });
}

/// S2: an idle thread that timed out and decides to exit, against an `arm`:
/// exactly one thread is left to fire the entry — the old one stays or a
/// new one is started, never neither, never both.
#[test]
fn idle_exit_against_arm() {
    loom::model(|| {
        let s = started();
        let hint = Arc::new(AtomicU64::new(NONE));
        let spawned = Arc::new(AtomicBool::new(false));
        let t = {
            let (s, hint) = (s.clone(), hint.clone());
            thread::spawn(move || !s.try_exit(0, || hint.load(SeqCst)))
        };
        hint.store(5, SeqCst);
        s.armed(5, 0, || {
            spawned.store(true, SeqCst);
            true
        });
        let stayed = t.join().unwrap();
        assert!(
            stayed ^ spawned.load(SeqCst),
            "stayed {stayed}, spawned {}",
            spawned.load(SeqCst)
        );
    });
}

/// S2 across a fork: a thread started in generation 0 does not count in
/// generation 1 (a forked child), where `arm` starts a new one.
#[test]
fn new_generation_starts_a_thread() {
    loom::model(|| {
        let s = started();
        let mut spawned = false;
        s.armed(5, 1, || {
            spawned = true;
            true
        });
        assert!(spawned);
    });
}
