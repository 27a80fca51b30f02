//! Adversary: the pending list's `PENDING` bit is written to `state` with
//! plain *Relaxed* stores after `DONE` was published (`park`, `wake_pending`,
//! `take_over_wakers`). Under the C++20 model that Rust uses, a non-RMW
//! store ends the release sequence headed by `set_done`'s Release store. A
//! reader whose Acquire load of `state` reads the value of such a Relaxed
//! store (`DONE|PENDING`, or `DONE` after `PENDING` was cleared) does not
//! synchronise with the canceller, yet invariant 2 lets it read `cause`
//! without the lock: a data race on the `cause` slot (UB; Miri reports it).
//!
//! Interleaving: T1 cancels ROOT with a cause; phase 1 writes S's inherited
//! cause and publishes DONE (Release); S has 17 wakers, so the 17th does not
//! fit in the batch and S is parked (`state.store(s | PENDING, Relaxed)`);
//! `wake_pending` then clears it (`store(s & !PENDING, Relaxed)`). The main
//! thread (which touches no lock) loads `state` (Acquire), reads the value
//! of a Relaxed store, and reads `cause`.
//!
//! Fixed (issue 10, adversarial pass): the `PENDING` bit is written with
//! Release stores, under the node's lock, so a reader that sees one is
//! synchronised with the cause's writer. Runs under Miri (`ci/miri.sh`),
//! which reported the race before the fix (5 of 6 seeds).
use core::future::Future;
use core::pin::pin;
use core::task::{Context as TaskCx, Waker};
use ctxcore::{Error, ScopedContext, StaticContext};
use std::sync::atomic::{AtomicBool, Ordering};

static ROOT17: StaticContext = StaticContext::new();
static FIRED17: AtomicBool = AtomicBool::new(false);
static ROOT16: StaticContext = StaticContext::new();
static FIRED16: AtomicBool = AtomicBool::new(false);

/// 17 waiters: the node is parked (Relaxed stores of `PENDING`): races.
#[test]
fn cause_read_after_relaxed_pending_store_races() {
    run(&ROOT17, &FIRED17, 17);
}

/// Control: 16 waiters fit the batch, nothing is parked: clean under Miri.
#[test]
fn control_16_waiters_no_race() {
    run(&ROOT16, &FIRED16, 16);
}

fn run(root: &'static StaticContext, fired: &'static AtomicBool, n: usize) {
    let s = pin!(ScopedContext::new(root.as_ref()));
    let c = s.as_ref().context();
    let mut cx = TaskCx::from_waker(Waker::noop());
    let mut waits: Vec<_> = (0..n).map(|_| Box::pin(c.done())).collect();
    for w in waits.iter_mut() {
        assert!(w.as_mut().poll(&mut cx).is_pending());
    }
    std::thread::scope(|sc| {
        sc.spawn(|| {
            root.cancel_with("boom");
            // Relaxed: no synchronisation with the reader.
            fired.store(true, Ordering::Relaxed);
        });
        while !fired.load(Ordering::Relaxed) {
            std::thread::yield_now();
        }
        // (Miri's weak memory may still show an older `state`.)
        while !c.is_done() {
            std::thread::yield_now();
        }
        // No lock touched on this thread since the cancel began.
        assert_eq!(c.err(), Some(Error::Canceled));
        assert_eq!(c.cause().unwrap().as_str(), Some("boom"));
    });
    drop(waits);
}
