//! After-funcs never run inside a read, and a slow one never holds up another
//! deadline (issue 11, item 7).
//!
//! A read (`is_done`, `err`, `cause`, a `done()` poll) that finds a deadline
//! passed publishes it and wakes its waiters, but hands its after-funcs to the
//! after-func spawner (a thread of their own by default with `std`); the std
//! timer hands off the after-funcs of the deadlines it fires the same way.
#![cfg(not(miri))]

use ctxcore::{Context, Error};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// Go's `ExampleAfterFunc_cond`, ported literally: `err()` is called while
/// holding the lock that the after-func takes. Before, the read ran the
/// after-func inside `err()` and deadlocked (198 of 200 rounds).
#[test]
fn a_read_under_the_lock_the_after_func_takes_never_deadlocks() {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for _ in 0..50 {
            let lock = Arc::new(Mutex::new(0u32));
            let (ctx, _h) = Context::background().with_timeout(Duration::from_millis(1));
            let l = lock.clone();
            let (ran_tx, ran_rx) = mpsc::channel();
            let _af = ctx.after_func(move || {
                *l.lock().unwrap() += 1;
                ran_tx.send(()).unwrap();
            });
            let guard = lock.lock().unwrap();
            // Spin on the read while holding the lock (a cond-var wait loop).
            while ctx.err().is_none() {
                std::hint::spin_loop();
            }
            assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
            drop(guard);
            // The callback runs elsewhere, once the lock is free.
            ran_rx.recv_timeout(Duration::from_secs(10)).unwrap();
            assert_eq!(*lock.lock().unwrap(), 1);
        }
        tx.send(()).unwrap();
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("a read ran the after-func under the caller's lock: deadlock");
}

/// A 300 ms after-func on one deadline delays another deadline's wake-up by
/// under 5 ms (before, both ran on the one std timer thread: 301 ms).
#[test]
fn a_slow_after_func_does_not_hold_up_another_deadline() {
    let (slow, _hs) = Context::background().with_timeout(Duration::from_millis(5));
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    let (ran_tx, ran_rx) = mpsc::channel();
    let _af = slow.after_func(move || {
        std::thread::sleep(Duration::from_millis(300));
        r.fetch_add(1, Ordering::SeqCst);
        ran_tx.send(()).unwrap();
    });
    let (other, _ho) = Context::background().with_timeout(Duration::from_millis(20));
    let start = Instant::now();
    // Waiting on `other` relies on the timer thread to wake us on time.
    let waker_side = std::thread::spawn(move || {
        let err = futures::executor::block_on(other.done());
        (err, start.elapsed())
    });
    let (err, elapsed) = waker_side.join().unwrap();
    assert_eq!(err, Error::DeadlineExceeded);
    assert!(
        elapsed < Duration::from_millis(20 + 5 + 40),
        "the other deadline woke {elapsed:?} after start (20 ms deadline): held up by the slow after-func"
    );
    ran_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(ran.load(Ordering::SeqCst), 1);
}

/// An installed spawner receives the after-funcs of a deadline noticed by a
/// read; explicit cancels still run them on the cancelling thread.
#[test]
fn an_installed_spawner_runs_them_and_explicit_cancels_stay_inline() {
    static SPAWNED: AtomicUsize = AtomicUsize::new(0);
    fn spawner(funcs: ctxcore::AfterFuncs) {
        SPAWNED.fetch_add(1, Ordering::SeqCst);
        std::thread::spawn(move || funcs.run());
    }
    ctxcore::set_after_func_spawner(spawner);
    // A clock that never fires: only a read can notice the deadline.
    struct Frozen(std::sync::atomic::AtomicU64);
    impl ctxcore::Clock for Frozen {
        fn now(&self) -> ctxcore::Instant {
            ctxcore::Instant::from_nanos(self.0.load(Ordering::SeqCst))
        }
    }
    // SAFETY: it never claims an entry, so the entry protocol holds
    // trivially.
    unsafe impl ctxcore::Timer for Frozen {
        unsafe fn arm(&self, _: ctxcore::time::TimerEntry) {}
        unsafe fn disarm(&self, _: &ctxcore::time::TimerEntry) {}
    }
    static CLOCK: Frozen = Frozen(std::sync::atomic::AtomicU64::new(0));
    let root = Context::with_timer(&CLOCK);
    let (ctx, _h) = root.with_timeout(Duration::from_secs(1));
    let me = std::thread::current().id();
    let (on_tx, on_rx) = mpsc::channel();
    let _af = ctx.after_func(move || on_tx.send(std::thread::current().id()).unwrap());
    CLOCK.0.store(2_000_000_000, Ordering::SeqCst);
    assert!(ctx.is_done());
    let on = on_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_ne!(on, me, "ran inside the read");
    assert!(SPAWNED.load(Ordering::SeqCst) >= 1);
    // Explicit cancel: inline, on this thread.
    let (c2, h2) = Context::background().with_cancel();
    let on2 = Arc::new(Mutex::new(None));
    let o2 = on2.clone();
    c2.after_func(move || *o2.lock().unwrap() = Some(std::thread::current().id()));
    h2.cancel();
    assert_eq!(on2.lock().unwrap().unwrap(), me);
}
