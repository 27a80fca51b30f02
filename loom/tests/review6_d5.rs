//! Review 6: loom model of the D5 read (`any_observed`) racing another
//! parent's cancel. An `any` node over `a` (a lazy clock that never moves)
//! and `b` (a lazy clock whose time has passed b's deadline, nothing fired
//! yet): one thread reads the node (the read fires b on its own clock),
//! another cancels `a` with a cause. A read that reported the node done
//! must agree with what the node ends done with (done is final; the read
//! is exact when observed).
//!
//! Both models failed until session 8: the read reported the fired
//! parent's result through `nearest_done_up` while the other parent's
//! canceller, which had already won the node's `QUEUED`, set `DONE` with
//! its own; the same happened with one timer (no `POLLS`), so it predates
//! D5. Fixed: a read that finds a parent done makes the `any` node done
//! itself (`settle_observed`, under the node's lock, the first cancel
//! wins; a queued entry of a node already done is only released), so the
//! read reports what the node ends with. Both fail again if
//! `settle_observed` does nothing.
#![cfg(loom)]

use ctxcore::{Context, Error};
use loom::thread;
use std::sync::atomic::Ordering;

#[path = "../../tests/common/mod.rs"]
mod common;
use common::Lazy;

static A: Lazy = Lazy::new();
static B: Lazy = Lazy::new();
/// The one-timer model's own clock: the two models may run at once, on two
/// test threads, and must not share a clock (loom reports the other
/// model's writes as nondeterminism).
static C: Lazy = Lazy::new();
const SEC: u64 = 1_000_000_000;

#[test]
fn polls_any_read_vs_other_parents_cancel() {
    loom::model(|| {
        A.0.store(0, Ordering::SeqCst);
        B.0.store(0, Ordering::SeqCst);
        let (a, ha) = Context::with_timer(&A).with_timeout(core::time::Duration::from_secs(10));
        let (b, _hb) = Context::with_timer(&B).with_timeout(core::time::Duration::from_secs(5));
        let any = Context::any([&a, &b]);
        B.0.store(5 * SEC, Ordering::SeqCst);
        let any2 = any.clone();
        let t = thread::spawn(move || {
            let err = any2.err();
            let cause = any2.cause().map(|c| c.as_str().map(str::to_owned));
            (err, cause)
        });
        ha.cancel_with("a");
        let (err, cause) = t.join().unwrap();
        let fin = (any.err(), any.cause().map(|c| c.as_str().map(str::to_owned)));
        assert!(err.is_some(), "b's deadline had passed: the read reports done");
        assert_eq!(
            (err, cause),
            fin,
            "a read reported one result, the node ended with another"
        );
        assert!(matches!(fin.0, Some(Error::Canceled) | Some(Error::DeadlineExceeded)));
    });
}

/// The same race without `POLLS`: both parents on one lazy timer (b's
/// deadline the earlier: the node's `deadline_parent`). Tells whether the
/// disagreement above is new with D5 or the `any` node's read in general.
#[test]
fn one_timer_any_read_vs_other_parents_cancel() {
    loom::model(|| {
        C.0.store(0, Ordering::SeqCst);
        let (a, ha) = Context::with_timer(&C).with_timeout(core::time::Duration::from_secs(10));
        let (b, _hb) = Context::with_timer(&C).with_timeout(core::time::Duration::from_secs(5));
        let any = Context::any([&a, &b]);
        C.0.store(5 * SEC, Ordering::SeqCst);
        let any2 = any.clone();
        let t = thread::spawn(move || {
            let err = any2.err();
            let cause = any2.cause().map(|c| c.as_str().map(str::to_owned));
            (err, cause)
        });
        ha.cancel_with("a");
        let (err, cause) = t.join().unwrap();
        let fin = (any.err(), any.cause().map(|c| c.as_str().map(str::to_owned)));
        assert!(err.is_some());
        assert_eq!(
            (err, cause),
            fin,
            "a read reported one result, the node ended with another"
        );
    });
}
