//! `cancelled_at()` (issue 14): where the winning cancellation was requested.
//! Each test pins the expected line with `line!() + 1` just above the call
//! that should be reported.

use core::panic::Location;
use core::pin::pin;
use core::time::Duration;
use ctxcore::time::TimerEntry;
use ctxcore::{
    Cause, Clock, Context, Error, Group, Instant, ManualClock, ScopedContext, StaticContext, Timer, Tracker,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};

/// A root for tests that arm far deadlines: the std timer natively; under
/// Miri a clock that never moves (no timer thread outlives the test).
fn base() -> Context {
    static NEVER: ManualClock = ManualClock::new();
    if cfg!(miri) {
        Context::with_timer(&NEVER)
    } else {
        Context::background()
    }
}

/// Asserts that `at` is this file at `line`.
#[track_caller]
fn is_here(at: Option<&'static Location<'static>>, line: u32) {
    let at = at.expect("a location");
    assert_eq!((at.file(), at.line()), (file!(), line), "reported {at}");
}

#[test]
fn live_reports_none() {
    let (ctx, _h) = Context::background().with_cancel();
    assert!(ctx.cancelled_at().is_none());
    assert!(Context::background().cancelled_at().is_none());
    assert!(ctx.as_ref().cancelled_at().is_none());
}

#[test]
fn cancel_reports_its_call_site_and_first_wins() {
    let (ctx, h) = Context::background().with_cancel();
    let line = line!() + 1;
    h.cancel();
    h.cancel_with("later: changes nothing");
    is_here(ctx.cancelled_at(), line);
    assert_eq!(ctx.cause().unwrap().as_error(), Some(Error::Canceled));

    let (ctx, h) = Context::background().with_cancel();
    let line = line!() + 1;
    h.cancel_with("first");
    h.cancel();
    is_here(ctx.cancelled_at(), line);
    is_here(ctx.as_ref().cancelled_at(), line);
}

#[test]
fn children_report_the_ancestors_site() {
    // A chain (the under-lock descent), a fan-out with waiters (the work
    // list), a child with a deadline cause of its own (kept in its slot:
    // `CAUSE_UP`) and an `any` child.
    let (root, h) = base().with_cancel();
    let mut chain = vec![root.clone()];
    for _ in 0..20 {
        let (c, h) = chain.last().unwrap().with_cancel();
        h.detach();
        chain.push(c);
    }
    let fan: Vec<_> = (0..40).map(|_| root.with_cancel()).collect();
    let mut waits: Vec<_> = fan.iter().map(|(c, _)| Box::pin(c.done_owned())).collect();
    let waker = futures::task::noop_waker();
    let mut cx = core::task::Context::from_waker(&waker);
    for w in &mut waits {
        assert!(w.as_mut().poll(&mut cx).is_pending());
    }
    let (dl, _dlh) = root.with_deadline_cause(Instant::from_nanos(u64::MAX / 2), "own deadline");
    let (other, _oh) = Context::background().with_cancel();
    let any = Context::any([&chain[3], &other]);
    let (any_child, _ah) = any.with_cancel();

    let line = line!() + 1;
    h.cancel_with("root gone");
    for c in chain.iter().chain(fan.iter().map(|(c, _)| c)) {
        is_here(c.cancelled_at(), line);
        assert_eq!(c.cause().unwrap().as_str(), Some("root gone"));
    }
    is_here(dl.cancelled_at(), line);
    assert_eq!(dl.cause().unwrap().as_str(), Some("root gone"));
    is_here(any.cancelled_at(), line);
    is_here(any_child.cancelled_at(), line);
    assert!(other.cancelled_at().is_none());
}

use core::future::Future;

#[test]
fn dropped_handle_reports_where_it_was_made() {
    let line = line!() + 1;
    let (ctx, h) = Context::background().with_cancel();
    let (child, _ch) = ctx.with_cancel();
    drop(h);
    is_here(ctx.cancelled_at(), line);
    is_here(child.cancelled_at(), line);

    // A deadline child's handle: its `with_timeout` call.
    let line = line!() + 1;
    let (ctx, h) = base().with_timeout(Duration::from_secs(3600));
    drop(h);
    is_here(ctx.cancelled_at(), line);
}

static CLOCK: ManualClock = ManualClock::new();

#[test]
fn deadline_reports_the_with_deadline_site() {
    let root = Context::with_timer(&CLOCK);
    let start = root.now();
    let la = line!() + 1;
    let (a, _ha) = root.with_timeout(Duration::from_secs(5));
    let lb = line!() + 1;
    let (b, _hb) = root.with_deadline(start.saturating_add(Duration::from_secs(5)));
    let lc = line!() + 1;
    let (c, _hc) = root.with_timeout_cause(Duration::from_secs(5), "slow");
    let ld = line!() + 1;
    let (d, _hd) = root.with_deadline_cause(start.saturating_add(Duration::from_secs(5)), "slow");
    let (under, _hu) = a.with_cancel();
    // Fired by the clock (the timer path).
    CLOCK.advance(Duration::from_secs(10));
    is_here(a.cancelled_at(), la);
    is_here(b.cancelled_at(), lb);
    is_here(c.cancelled_at(), lc);
    is_here(d.cancelled_at(), ld);
    is_here(under.cancelled_at(), la);
    assert_eq!(a.err(), Some(Error::DeadlineExceeded));
    assert_eq!(c.cause().unwrap().as_str(), Some("slow"));

    // Already past at creation (the `arm` path).
    let le = line!() + 1;
    let (e, _he) = root.with_deadline(Instant::ZERO);
    is_here(e.cancelled_at(), le);
}

/// A clock that never fires: a passed deadline is noticed by a read.
struct Frozen(AtomicU64);

impl Clock for Frozen {
    fn now(&self) -> Instant {
        Instant::from_nanos(self.0.load(Ordering::SeqCst))
    }
}

// SAFETY: `arm` forgets the entry at once and nothing ever claims it, so the
// entry protocol holds trivially.
unsafe impl Timer for Frozen {
    unsafe fn arm(&self, entry: TimerEntry) {
        let _ = entry;
    }
    unsafe fn disarm(&self, _entry: &TimerEntry) {}
}

#[test]
fn deadline_observed_by_a_read_reports_its_site() {
    static FROZEN: Frozen = Frozen(AtomicU64::new(0));
    let root = Context::with_timer(&FROZEN);
    let line = line!() + 1;
    let (ctx, _h) = root.with_timeout(Duration::from_secs(1));
    let (child, _hc) = ctx.with_cancel();
    FROZEN.0.store(2_000_000_000, Ordering::SeqCst);
    // The child's read walks up to the owner and cancels it there.
    is_here(child.cancelled_at(), line);
    assert_eq!(child.err(), Some(Error::DeadlineExceeded));
    is_here(ctx.cancelled_at(), line);
}

#[test]
fn an_explicit_cancel_before_the_deadline_wins() {
    static CLOCK2: ManualClock = ManualClock::new();
    let root = Context::with_timer(&CLOCK2);
    let (ctx, h) = root.with_timeout(Duration::from_secs(1));
    let line = line!() + 1;
    h.cancel();
    CLOCK2.advance(Duration::from_secs(2));
    is_here(ctx.cancelled_at(), line);
    assert_eq!(ctx.err(), Some(Error::Canceled));
}

#[test]
fn children_made_after_the_cancel() {
    // With a cause: the child shares the parent's node.
    let (p, h) = base().with_cancel();
    let line = line!() + 1;
    h.cancel_with("gone");
    let (c, _hc) = p.with_cancel();
    is_here(c.cancelled_at(), line);
    // With a deadline of its own: a node of its own, born done.
    let (d, _hd) = p.with_timeout(Duration::from_secs(60));
    is_here(d.cancelled_at(), line);
    assert_eq!(d.cause().unwrap().as_str(), Some("gone"));

    // Without a cause too (an immortal node located at the cancel, or the
    // parent's own node where that location's entry is taken: invariant
    // 15).
    let (p, h) = Context::background().with_cancel();
    let line = line!() + 1;
    h.cancel();
    let (c, _hc) = p.with_cancel();
    let (g, _hg) = c.with_cancel();
    is_here(c.cancelled_at(), line);
    is_here(g.cancelled_at(), line);
    assert_eq!(format!("{g:?}"), format!("{p:?}"));
}

#[test]
fn static_and_scoped() {
    static ROOT: StaticContext = StaticContext::new();
    let outer = pin!(ScopedContext::new(ROOT.as_ref()));
    let outer_ctx = outer.as_ref().context();
    let inner = pin!(ScopedContext::new(outer_ctx));
    let inner_ctx = inner.as_ref().context();
    assert!(ROOT.cancelled_at().is_none());
    let line = line!() + 1;
    outer.cancel_with("scope");
    is_here(outer_ctx.cancelled_at(), line);
    is_here(inner_ctx.cancelled_at(), line);
    assert!(format!("{outer:?}").contains(&format!("{}:{line}:", file!())));

    // Attached under a parent that is already done: the parent's site.
    let late = pin!(ScopedContext::new(outer_ctx));
    is_here(late.as_ref().context().cancelled_at(), line);

    let line = line!() + 1;
    ROOT.cancel();
    ROOT.cancel_with("ignored");
    is_here(ROOT.cancelled_at(), line);
    assert!(format!("{ROOT:?}").contains(&format!("{}:{line}:", file!())));
}

#[test]
fn scoped_deadline_reports_its_constructor() {
    static SCLOCK: ManualClock = ManualClock::new();
    static SROOT: StaticContext = StaticContext::with_timer(&SCLOCK);
    let line = line!() + 1;
    let s = pin!(ScopedContext::with_timeout(SROOT.as_ref(), Duration::from_secs(1)));
    let ctx = s.as_ref().context();
    SCLOCK.advance(Duration::from_secs(2));
    assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
    is_here(ctx.cancelled_at(), line);
}

#[test]
fn debug_prints_the_location() {
    let (ctx, h) = Context::background().with_cancel();
    assert!(!format!("{ctx:?}").contains("cancelled_at"));
    let line = line!() + 1;
    h.cancel();
    let dbg = format!("{ctx:?}");
    assert!(dbg.contains(&format!("cancelled_at: {}:{line}:", file!())), "{dbg}");
    let dbg = format!("{:?}", ctx.as_ref());
    assert!(dbg.contains(&format!("cancelled_at: {}:{line}:", file!())), "{dbg}");
}

#[test]
fn helpers_report_their_callers() {
    // Tracker::cancel: its caller.
    let tracker = Tracker::new(&Context::background());
    let line = line!() + 1;
    tracker.cancel("shutdown");
    is_here(tracker.context().cancelled_at(), line);

    // A group's first error: where the group was made.
    let line = line!() + 1;
    let mut group = Group::new(&Context::background());
    group.spawn(async { Err::<(), _>("disk full") });
    let ctx = group.context().clone();
    assert_eq!(futures::executor::block_on(group.wait()), Err("disk full"));
    is_here(ctx.cancelled_at(), line);

    // A dropped CancelOnDrop: where its handle's context was made.
    let line = line!() + 1;
    let (ctx, h) = Context::background().with_cancel();
    let fut = h.cancel_on_drop(std::future::pending::<()>(), "abandoned");
    drop(fut);
    is_here(ctx.cancelled_at(), line);
    assert_eq!(ctx.cause().unwrap().as_str(), Some("abandoned"));
}

#[test]
fn racing_cancels_report_the_winner() {
    // The cause and the location come from the same (winning) cancel.
    let rounds = if cfg!(miri) { 4 } else { 200 };
    for _ in 0..rounds {
        let (ctx, h) = Context::background().with_cancel();
        let (child, _hc) = ctx.with_cancel();
        let h = Arc::new(h);
        let b = Arc::new(Barrier::new(2));
        let (h2, b2) = (h.clone(), b.clone());
        let t = std::thread::spawn(move || {
            b2.wait();
            let l = line!() + 1;
            h2.cancel_with("thread");
            l
        });
        b.wait();
        let main_line = line!() + 1;
        h.cancel_with("main");
        let thread_line = t.join().unwrap();
        let cause = child.cause().unwrap();
        let expected = if cause.as_str() == Some("main") {
            main_line
        } else {
            thread_line
        };
        is_here(child.cancelled_at(), expected);
        is_here(ctx.cancelled_at(), expected);
        assert_eq!(ctx.cause().map(|c| c.to_string()), Some(cause.to_string()));
    }
    let _ = Cause::from("unused");
}
