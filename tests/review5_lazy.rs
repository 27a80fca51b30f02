//! Review 5: lazy arming (invariant 20) under attack.

use ctxcore::{Context, Error, ManualClock};
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll, Wake, Waker};
use std::time::Duration;

const SEC: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Count(AtomicUsize);

impl Wake for Count {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn counting() -> (Arc<Count>, Waker) {
    let c = Arc::new(Count::default());
    (c.clone(), Waker::from(c))
}

fn poll<F: std::future::Future>(f: Pin<&mut F>, w: &Waker) -> Poll<F::Output> {
    f.poll(&mut TaskContext::from_waker(w))
}

/// D1: an `any` over parents on different timers arms only its
/// `deadline_parent`'s owner (the minimum of instants read on different
/// clocks). The other parent's deadline is never armed, so its timer
/// never fires it and a waiter on the `any` node is never woken.
#[test]
fn any_over_two_timers_wakes_on_the_other_timers_deadline() {
    static A: ManualClock = ManualClock::new();
    // B's epoch is far later: its instants compare larger.
    static B: ManualClock = ManualClock::starting_at(ctxcore::Instant::from_nanos(1_000_000_000_000));
    let (a, _ha) = Context::with_timer(&A).with_timeout(10 * SEC);
    let (b, _hb) = Context::with_timer(&B).with_timeout(5 * SEC);
    let any = Context::any([&a, &b]);
    let (count, w) = counting();
    let mut d = pin!(any.done());
    assert!(poll(d.as_mut(), &w).is_pending());
    B.advance(5 * SEC);
    // B's timer had an entry before lazy arming: its advance fired it,
    // which cancelled `any` and woke us.
    assert_eq!(count.0.load(Ordering::SeqCst), 1, "waiter on any(a, b) not woken by b's deadline (B.armed() = {})", B.armed());
    assert_eq!(b.err(), Some(Error::DeadlineExceeded));
}

/// D1 through a descendant: a child of the `any` node.
#[test]
fn child_of_any_over_two_timers_wakes_on_the_other_timers_deadline() {
    static A: ManualClock = ManualClock::new();
    static B: ManualClock = ManualClock::starting_at(ctxcore::Instant::from_nanos(1_000_000_000_000));
    let (a, _ha) = Context::with_timer(&A).with_timeout(10 * SEC);
    let (b, _hb) = Context::with_timer(&B).with_timeout(5 * SEC);
    let any = Context::any([&a, &b]);
    let (child, _hc) = any.with_cancel();
    let (count, w) = counting();
    let mut d = pin!(child.done());
    assert!(poll(d.as_mut(), &w).is_pending());
    B.advance(5 * SEC);
    assert_eq!(count.0.load(Ordering::SeqCst), 1, "waiter on a child of any(a, b) not woken");
}

/// D1 through an after-func on the `any` node.
#[test]
fn after_func_on_any_over_two_timers_runs_on_the_other_timers_deadline() {
    static A: ManualClock = ManualClock::new();
    static B: ManualClock = ManualClock::starting_at(ctxcore::Instant::from_nanos(1_000_000_000_000));
    let (a, _ha) = Context::with_timer(&A).with_timeout(10 * SEC);
    let (b, _hb) = Context::with_timer(&B).with_timeout(5 * SEC);
    let any = Context::any([&a, &b]);
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    let _af = any.after_func(move || {
        r.fetch_add(1, Ordering::SeqCst);
    });
    B.advance(5 * SEC);
    assert_eq!(ran.load(Ordering::SeqCst), 1, "after-func on any(a, b) did not run at b's deadline");
}
