//! Lazy arming of deadline timer entries (issue 15, node invariant 20): a
//! deadline is armed only once something waits on it, and whatever waits is
//! still woken (or run) on time.

use ctxcore::time::{Clock, Instant, Timer, TimerEntry};
use ctxcore::{Context, ContextRef, Error, ManualClock, ScopedContext};
use std::pin::pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

const SEC: Duration = Duration::from_secs(1);

mod common;
use common::{counting, poll};

#[test]
fn creating_and_dropping_a_deadline_context_arms_nothing() {
    static CLOCK: ManualClock = ManualClock::new();
    let root = Context::with_timer(&CLOCK);
    for _ in 0..100 {
        drop(root.with_timeout(SEC));
    }
    let (ctx, h) = root.with_timeout(SEC);
    let (child, _hc) = ctx.with_timeout(2 * SEC);
    let (_grandchild, _hg) = child.with_cancel();
    assert_eq!(CLOCK.armed(), 0, "nothing waits: nothing armed");
    // Still exact when observed.
    CLOCK.advance(SEC);
    assert_eq!(child.err(), Some(Error::DeadlineExceeded));
    assert_eq!(CLOCK.armed(), 0);
    drop(h);
}

#[test]
fn polling_done_once_arms_exactly_one_entry_and_wakes_on_time() {
    static CLOCK: ManualClock = ManualClock::new();
    let root = Context::with_timer(&CLOCK);
    let (ctx, _h) = root.with_timeout(10 * SEC);
    let (count, w) = counting();
    let mut d = pin!(ctx.done());
    assert!(poll(d.as_mut(), &w).is_pending());
    assert_eq!(CLOCK.armed(), 1);
    // Polled again, and a second waiter: still one entry.
    assert!(poll(d.as_mut(), &w).is_pending());
    let mut d2 = pin!(ctx.done());
    assert!(poll(d2.as_mut(), &w).is_pending());
    assert_eq!(CLOCK.armed(), 1);
    CLOCK.advance(10 * SEC - Duration::from_nanos(1));
    assert_eq!(count.0.load(Ordering::SeqCst), 0, "1 ns early");
    CLOCK.advance(Duration::from_nanos(1));
    assert_eq!(count.0.load(Ordering::SeqCst), 2, "both waiters woken at the deadline");
    assert_eq!(poll(d.as_mut(), &w), Poll::Ready(Error::DeadlineExceeded));
    assert_eq!(CLOCK.armed(), 0);
}

#[test]
fn a_waiter_on_a_grandchild_arms_the_deadline_owner() {
    static CLOCK: ManualClock = ManualClock::new();
    let root = Context::with_timer(&CLOCK);
    let (outer, _ho) = root.with_timeout(100 * SEC);
    let (owner, _h) = outer.with_timeout_cause(5 * SEC, "owner");
    let (child, _hc) = owner.with_cancel();
    let (grandchild, _hg) = child.with_timeout(50 * SEC); // inherits 5 s
    assert_eq!(grandchild.deadline(), owner.deadline());
    assert_eq!(CLOCK.armed(), 0);
    let (count, w) = counting();
    let mut d = pin!(grandchild.done());
    assert!(poll(d.as_mut(), &w).is_pending());
    assert_eq!(CLOCK.armed(), 1, "the owner alone, not the outer deadline");
    CLOCK.advance(5 * SEC);
    assert_eq!(count.0.load(Ordering::SeqCst), 1);
    assert_eq!(poll(d.as_mut(), &w), Poll::Ready(Error::DeadlineExceeded));
    assert_eq!(grandchild.cause().unwrap().as_str(), Some("owner"));
    assert!(!outer.is_done());
    assert_eq!(CLOCK.armed(), 0);
}

#[test]
fn an_after_func_arms_and_runs_on_time() {
    static CLOCK: ManualClock = ManualClock::new();
    let root = Context::with_timer(&CLOCK);
    let (ctx, h) = root.with_timeout(3 * SEC);
    h.detach();
    let (child, _hc) = ctx.with_cancel();
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    let _af = child.after_func(move || {
        r.fetch_add(1, Ordering::SeqCst);
    });
    assert_eq!(CLOCK.armed(), 1);
    drop(ctx);
    CLOCK.advance(3 * SEC);
    assert_eq!(ran.load(Ordering::SeqCst), 1, "ran by the clock's advance");
    assert_eq!(CLOCK.armed(), 0);
}

#[test]
fn an_any_over_a_deadline_context_arms_when_waited() {
    static CLOCK: ManualClock = ManualClock::new();
    let root = Context::with_timer(&CLOCK);
    let (a, _ha) = root.with_timeout(7 * SEC);
    let (b, _hb) = root.with_timeout(9 * SEC);
    let (c, _hc) = root.with_cancel();
    let any = Context::any([&a, &b, &c]);
    assert_eq!(CLOCK.armed(), 0, "an any node's links arm nothing");
    let (count, w) = counting();
    let mut d = pin!(any.done());
    assert!(poll(d.as_mut(), &w).is_pending());
    assert_eq!(CLOCK.armed(), 1, "the earliest parent's deadline only");
    CLOCK.advance(7 * SEC);
    assert_eq!(count.0.load(Ordering::SeqCst), 1);
    assert_eq!(poll(d.as_mut(), &w), Poll::Ready(Error::DeadlineExceeded));
    assert!(!b.is_done());
    assert_eq!(CLOCK.armed(), 0);
}

#[test]
fn an_all_over_deadline_contexts_arms_every_parent() {
    static CLOCK: ManualClock = ManualClock::new();
    let root = Context::with_timer(&CLOCK);
    let (a, _ha) = root.with_timeout(2 * SEC);
    let (b, _hb) = root.with_timeout(4 * SEC);
    let all = Context::all([&a, &b]);
    assert_eq!(CLOCK.armed(), 2, "done only when both are: both armed");
    let (child, _h) = all.with_cancel();
    let (count, w) = counting();
    let mut d = pin!(child.done());
    assert!(poll(d.as_mut(), &w).is_pending());
    assert_eq!(CLOCK.armed(), 2);
    CLOCK.advance(2 * SEC);
    assert_eq!(count.0.load(Ordering::SeqCst), 0);
    CLOCK.advance(2 * SEC);
    assert_eq!(count.0.load(Ordering::SeqCst), 1);
    assert_eq!(poll(d.as_mut(), &w), Poll::Ready(Error::DeadlineExceeded));
    assert_eq!(CLOCK.armed(), 0);
}

#[test]
fn scoped_deadlines_arm_lazily_and_release_on_drop() {
    static CLOCK: ManualClock = ManualClock::new();
    let root = Context::with_timer(&CLOCK);
    {
        let s = pin!(ScopedContext::with_timeout(root.as_ref(), SEC));
        let c: ContextRef<'_> = s.as_ref().context();
        assert!(!c.is_done());
        assert_eq!(CLOCK.armed(), 0);
        let inner = pin!(ScopedContext::new(c));
        let ic = inner.as_ref().context();
        let (count, w) = counting();
        let mut d = pin!(ic.done());
        assert!(poll(d.as_mut(), &w).is_pending());
        assert_eq!(CLOCK.armed(), 1, "the waiter on the inner scope armed the outer");
        CLOCK.advance(SEC);
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert_eq!(poll(d.as_mut(), &w), Poll::Ready(Error::DeadlineExceeded));
    }
    {
        let s = pin!(ScopedContext::with_timeout(root.as_ref(), SEC));
        let c = s.as_ref().context();
        let (_count, w) = counting();
        let mut d = pin!(c.done());
        assert!(poll(d.as_mut(), &w).is_pending());
        assert_eq!(CLOCK.armed(), 1);
    }
    assert_eq!(CLOCK.armed(), 0, "the scope's drop disarmed");
}

/// A timer whose clock passes every deadline while it is being armed, and
/// which never fires by itself: only the arming's re-check of the clock
/// can wake a waiter that registered just as its deadline passed.
struct PassingTimer {
    now: AtomicU64,
    entries: Mutex<Vec<(Instant, usize)>>,
}

impl Clock for PassingTimer {
    fn now(&self) -> Instant {
        Instant::from_nanos(self.now.load(Ordering::SeqCst))
    }
}

// SAFETY: arm and disarm run under one mutex; entries are never claimed.
unsafe impl Timer for PassingTimer {
    unsafe fn arm(&self, entry: TimerEntry) {
        self.entries.lock().unwrap().push(entry.key());
        self.now.fetch_max(entry.deadline().as_nanos(), Ordering::SeqCst);
    }
    unsafe fn disarm(&self, entry: &TimerEntry) {
        self.entries.lock().unwrap().retain(|k| *k != entry.key());
    }
}

#[test]
fn a_waiter_registering_as_the_deadline_passes_is_woken() {
    static TIMER: PassingTimer = PassingTimer {
        now: AtomicU64::new(0),
        entries: Mutex::new(Vec::new()),
    };
    let root = Context::with_timer(&TIMER);
    let (ctx, _h) = root.with_timeout_cause(SEC, "passed");
    let (child, _hc) = ctx.with_cancel();
    let (count, w) = counting();
    let mut d = pin!(child.done());
    assert!(poll(d.as_mut(), &w).is_pending());
    assert_eq!(count.0.load(Ordering::SeqCst), 1, "woken by the arming's re-check");
    assert_eq!(poll(d.as_mut(), &w), Poll::Ready(Error::DeadlineExceeded));
    assert_eq!(child.cause().unwrap().as_str(), Some("passed"));
    assert!(TIMER.entries.lock().unwrap().is_empty(), "the fired entry was disarmed");
}

#[test]
#[cfg_attr(miri, ignore)]
fn std_timer_wakes_a_blocking_wait_on_time() {
    use ctxcore::StdTimer;
    use std::time::Instant as StdInstant;
    // Other tests of this binary use only their own timers.
    let before = StdTimer::global().armed();
    for _ in 0..1000 {
        drop(Context::background().with_timeout(Duration::from_secs(3600)));
    }
    assert_eq!(StdTimer::global().armed(), before, "create + drop arms nothing");
    let (ctx, _h) = Context::background().with_timeout(Duration::from_millis(10));
    let t0 = StdInstant::now();
    assert_eq!(ctx.wait_blocking(), Error::DeadlineExceeded);
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(9), "woken early: {took:?}");
    assert!(took < Duration::from_millis(500), "woken late: {took:?}");
    assert_eq!(StdTimer::global().armed(), before);
}

/// A deadline that passed while nobody waited on it (so no entry was armed
/// and nothing fired it) still wins against a later cancel of the context's
/// own handle, by `cancel` or by drop, or of a child under it: the cancel
/// looks first, as a read does (property 5).
#[test]
fn an_unobserved_passed_deadline_wins_against_a_later_own_cancel() {
    static CLOCK: ManualClock = ManualClock::new();
    let root = Context::with_timer(&CLOCK);
    let (a, ha) = root.with_timeout(SEC);
    let (b, hb) = root.with_timeout_cause(SEC, "too slow");
    let (c, _hc) = root.with_timeout(SEC);
    let (c_child, hcc) = c.with_cancel();
    assert_eq!(CLOCK.armed(), 0);
    CLOCK.advance(2 * SEC);
    ha.cancel();
    assert_eq!(a.err(), Some(Error::DeadlineExceeded));
    drop(hb);
    assert_eq!(b.err(), Some(Error::DeadlineExceeded));
    assert_eq!(b.cause().map(|c| c.to_string()), Some("too slow".to_string()));
    // A child without a deadline of its own inherits its parent's: its own
    // handle loses to it too.
    hcc.cancel();
    assert_eq!(c_child.err(), Some(Error::DeadlineExceeded));
    assert_eq!(c.err(), Some(Error::DeadlineExceeded));
    // Before the deadline, the cancel wins as always.
    let (d, hd) = root.with_timeout(SEC);
    hd.cancel();
    assert_eq!(d.err(), Some(Error::Canceled));
}

#[test]
fn an_unobserved_passed_deadline_wins_against_a_scoped_owners_cancel() {
    static CLOCK: ManualClock = ManualClock::new();
    let root = Context::with_timer(&CLOCK);
    let scope = pin!(ScopedContext::with_timeout(root.as_ref(), SEC));
    CLOCK.advance(2 * SEC);
    scope.cancel();
    assert_eq!(scope.as_ref().context().err(), Some(Error::DeadlineExceeded));
}
