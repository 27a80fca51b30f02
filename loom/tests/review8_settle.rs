//! Review 8: loom models around `settle_observed` (session 8's fix of
//! review 6) and its `all` counterpart.
//!
//! - `all_read_vs_other_reader`: an `all` node over two parents whose
//!   deadlines (with causes) have passed on a lazy clock; one thread reads
//!   the first parent (firing it), the other reads the `all` node. The
//!   `all` node's read fires the second parent and, finding the first one
//!   flagged done but not yet counted down, reports the parent with the
//!   latest deadline (`all_observed`: `latest.nearest_done_up()`), while
//!   the countdown's last parent, which the node ends done with, is the
//!   first one. The `any` counterpart is what `settle_observed` fixed; the
//!   `all` node has no such settling. This model passes (loom does not
//!   schedule that interleaving); with two Relaxed loads of the countdown
//!   added to `all_observed` for tracing it fails at once (see
//!   `all_read_vs_other_reader_stress` in tests/review8_settle.rs).
//! - `polls_any_two_readers`: two readers of a `POLLS` `any` node fire and
//!   settle it at once: both report what the node ends with (the reader
//!   against another parent's canceller is loom/tests/review6_d5.rs; with
//!   three threads the model did not finish in 15 minutes, so the
//!   three-way race is the stress `polls_any_two_readers_and_a_cancel_stress`
//!   in tests/review8_settle.rs).
#![cfg(loom)]

use ctxcore::{Context, Error};
use loom::thread;
use std::sync::atomic::{AtomicU64, Ordering};

#[path = "../../tests/common/mod.rs"]
mod common;
use common::Lazy;

const SEC: u64 = 1_000_000_000;

/// The cause first (one read: the flip shows in its text), then the error.
fn result(ctx: &Context) -> (Option<Option<String>>, Option<Error>) {
    let cause = ctx.cause().map(|c| c.as_str().map(str::to_owned));
    (cause, ctx.err())
}

#[test]
fn all_read_vs_other_reader() {
    static L: Lazy = Lazy::new();
    static RUNS: AtomicU64 = AtomicU64::new(0);
    loom::model(|| {
        RUNS.fetch_add(1, Ordering::SeqCst);
        L.0.store(0, Ordering::SeqCst);
        // Two roots: siblings would serialize on their parent's lock.
        let (r1, r2) = (Context::with_timer(&L), Context::with_timer(&L));
        let (p1, _h1) = r1.with_deadline_cause(ctxcore::Instant::from_nanos(SEC), "p1");
        let (p2, _h2) = r2.with_deadline_cause(ctxcore::Instant::from_nanos(2 * SEC), "p2");
        let all = Context::all([&p1, &p2]);
        L.0.store(2 * SEC, Ordering::SeqCst);
        let p1b = p1.clone();
        let t = thread::spawn(move || {
            // A read of p1 fires its deadline (and counts the `all` node down).
            assert!(p1b.is_done());
        });
        let seen = result(&all);
        t.join().unwrap();
        let fin = result(&all);
        assert!(seen.1.is_some(), "both deadlines had passed: the read reports done");
        assert_eq!(
            seen, fin,
            "a read of the all node reported one result, the node ended with another"
        );
    });
    assert!(RUNS.load(Ordering::SeqCst) > 1);
}

#[test]
fn polls_any_two_readers() {
    static A: Lazy = Lazy::new();
    static B: Lazy = Lazy::new();
    loom::model(|| {
        A.0.store(0, Ordering::SeqCst);
        B.0.store(0, Ordering::SeqCst);
        let (a, _ha) = Context::with_timer(&A).with_timeout(core::time::Duration::from_secs(10));
        let (b, _hb) = Context::with_timer(&B).with_timeout_cause(core::time::Duration::from_secs(5), "b");
        let any = Context::any([&a, &b]);
        B.0.store(5 * SEC, Ordering::SeqCst);
        let r1 = any.clone();
        let t1 = thread::spawn(move || result(&r1));
        let s2 = result(&any);
        let s1 = t1.join().unwrap();
        let fin = result(&any);
        assert_eq!(s1, (Some(Some("b".to_owned())), Some(Error::DeadlineExceeded)));
        assert_eq!(s1, fin);
        assert_eq!(s2, fin);
    });
}
