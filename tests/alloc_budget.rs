//! Allocation budget: what allocates, how much, and that nothing is left
//! behind (DESIGN.md §1 "allocates nothing", property 2 "no allocation" when
//! cancelling, property 6 "one allocation", and "a long-lived parent with
//! millions of short-lived children does not grow").
//!
//! A counting global allocator keeps *per-thread* counters, so the test
//! harness and the timer thread allocating concurrently cannot disturb a
//! measurement; the tests are also serialised by one mutex because the std
//! timer is process-wide.

use core::pin::pin;
use core::task::{Context as TaskContext, Poll, Waker};
use ctxcore::{Context, ContextRef, Error, Key, ManualClock, ScopedContext, StaticContext, StdTimer};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::Wake;
use std::time::Duration;

// ---------------------------------------------------------------------------
// The counting allocator

struct Counting;

thread_local! {
    /// Allocations (including reallocations) made by this thread.
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
    /// Bytes allocated minus bytes freed by this thread.
    static LIVE: Cell<isize> = const { Cell::new(0) };
}

fn note(allocs: usize, bytes: isize) {
    // `try_with`: the allocator also runs while thread-locals are being torn
    // down; those allocations are simply not counted.
    let _ = ALLOCS.try_with(|a| a.set(a.get() + allocs));
    let _ = LIVE.try_with(|l| l.set(l.get() + bytes));
}

// SAFETY: every call is forwarded unchanged to `System`; the bookkeeping
// touches only const-initialised thread-locals without destructors, which
// never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded from our caller.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            note(1, layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded from our caller.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            note(1, layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded from our caller.
        unsafe { System.dealloc(ptr, layout) };
        note(0, -(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded from our caller.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            note(1, new_size as isize - layout.size() as isize);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// What a closure allocated on this thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Usage {
    allocs: usize,
    live_bytes: isize,
}

fn measure<R>(f: impl FnOnce() -> R) -> (R, Usage) {
    let a0 = ALLOCS.with(Cell::get);
    let l0 = LIVE.with(Cell::get);
    let r = f();
    let usage = Usage {
        allocs: ALLOCS.with(Cell::get) - a0,
        live_bytes: LIVE.with(Cell::get) - l0,
    };
    (r, usage)
}

/// Serialises the tests of this file: the std timer is shared by all of them.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn cycles(native: usize) -> usize {
    if cfg!(miri) {
        50
    } else {
        native
    }
}

/// A waker that counts its wakes; built before measuring, cloning it is a
/// reference-count increment.
#[derive(Default)]
struct Flag(AtomicUsize);

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// Keeps one far deadline armed on the std timer so that its thread stays
/// up (it exits after two idle seconds) and its storage stays grown:
/// otherwise starting the thread inside a measured section would be counted.
/// Deadlines are armed lazily (node invariant 20): only something that waits
/// arms one, so the keep-alive gets an after-func (never run, never stopped:
/// dropping its handle leaves it registered).
fn std_timer_warm() {
    static KEEPALIVE: OnceLock<(Context, ctxcore::CancelHandle)> = OnceLock::new();
    KEEPALIVE.get_or_init(|| {
        let (ctx, h) = Context::background().with_timeout(Duration::from_secs(24 * 3600));
        drop(ctx.after_func(|| {}));
        (ctx, h)
    });
    // One arm/disarm round so any lazily grown storage exists already.
    let (ctx, h) = Context::background().with_timeout(Duration::from_secs(3600));
    drop(ctx.after_func(|| {}));
    drop((ctx, h));
}

static TRACE: Key<u64> = Key::new("trace");

// ---------------------------------------------------------------------------
// Zero-allocation operations

#[test]
fn background_clone_and_queries_allocate_nothing() {
    let _s = serial();
    // Under Miri no timer thread may outlive the main thread: use a clock.
    static NEVER: ManualClock = ManualClock::new();
    let base = if cfg!(miri) {
        Context::with_timer(&NEVER)
    } else {
        std_timer_warm();
        Context::background()
    };
    let (live, _h) = base.with_cancel();
    let valued = live.with_value(&TRACE, 7);
    let (dl, _hd) = valued.with_timeout(Duration::from_secs(3600));
    let ((), usage) = measure(|| {
        let bg = Context::background();
        let todo = Context::todo();
        assert!(!bg.is_done() && !todo.is_done());
        for ctx in [&bg, &live, &valued, &dl] {
            let c = ctx.clone();
            assert!(!c.is_done());
            assert_eq!(c.err(), None);
            assert!(c.cause().is_none());
            let _ = c.deadline();
            let _ = c.value(&TRACE);
            drop(c);
        }
        drop((bg, todo));
    });
    assert_eq!(usage.allocs, 0, "{usage:?}");
    assert_eq!(usage.live_bytes, 0, "{usage:?}");
}

#[test]
fn with_cancel_costs_at_most_one_allocation() {
    let _s = serial();
    let (parent, _hp) = Context::background().with_cancel();
    for p in [&Context::background(), &parent, &parent.with_value(&TRACE, 1)] {
        let ((c, h), usage) = measure(|| p.with_cancel());
        assert!(usage.allocs <= 1, "with_cancel allocated {usage:?}");
        let ((), freed) = measure(|| drop((c, h)));
        assert_eq!(usage.live_bytes + freed.live_bytes, 0, "with_cancel left bytes behind");
    }
    let (v, usage) = measure(|| parent.with_value(&TRACE, 9));
    assert!(usage.allocs <= 1, "with_value allocated {usage:?}");
    drop(v);
}

#[test]
fn cancelling_a_tree_allocates_nothing() {
    let _s = serial();
    let (root, h) = Context::background().with_cancel();
    let mut keep = Vec::new();
    let mut level = vec![root.clone()];
    for _ in 0..3 {
        let mut next = Vec::new();
        for p in &level {
            for _ in 0..4 {
                let (c, hc) = p.with_cancel();
                next.push(c.clone());
                keep.push((c, hc));
            }
        }
        level = next;
    }
    // Waiters, after-funcs and an `any` hang off the tree too.
    let flag = Arc::new(Flag::default());
    let waker = Waker::from(flag.clone());
    let mut cx = TaskContext::from_waker(&waker);
    let mut futs: Vec<_> = keep.iter().map(|(c, _)| Box::pin(c.done())).collect();
    for f in futs.iter_mut() {
        assert!(f.as_mut().poll(&mut cx).is_pending());
    }
    let runs = Arc::new(AtomicUsize::new(0));
    for (c, _) in keep.iter().step_by(5) {
        let r = runs.clone();
        c.after_func(move || {
            r.fetch_add(1, Ordering::SeqCst);
        });
    }
    let (other, _ho) = Context::background().with_cancel();
    let any = Context::any([&other, &level[0]]);
    let ((), usage) = measure(|| h.cancel_with("shutdown"));
    assert_eq!(usage.allocs, 0, "cancelling allocated: {usage:?}");
    assert!(keep.iter().all(|(c, _)| c.err() == Some(Error::Canceled)));
    assert!(any.is_done());
    assert_eq!(flag.0.load(Ordering::SeqCst), futs.len());
    assert_eq!(runs.load(Ordering::SeqCst), keep.len().div_ceil(5));
}

#[test]
fn polling_done_allocates_nothing() {
    let _s = serial();
    let (ctx, h) = Context::background().with_cancel();
    let flag = Arc::new(Flag::default());
    let waker = Waker::from(flag.clone());
    let other = Waker::from(Arc::new(Flag::default()));
    let noop = futures::task::noop_waker();
    let ((), usage) = measure(|| {
        let mut done = pin!(ctx.done());
        let mut owned = pin!(ctx.done_owned());
        let mut run = pin!(ctx.run(futures::future::pending::<()>()));
        // Register, re-poll with the same waker, re-poll with other wakers.
        assert!(done.as_mut().poll(&mut TaskContext::from_waker(&noop)).is_pending());
        assert!(done.as_mut().poll(&mut TaskContext::from_waker(&other)).is_pending());
        assert!(done.as_mut().poll(&mut TaskContext::from_waker(&waker)).is_pending());
        assert!(done.as_mut().poll(&mut TaskContext::from_waker(&waker)).is_pending());
        assert!(owned.as_mut().poll(&mut TaskContext::from_waker(&waker)).is_pending());
        assert!(run.as_mut().poll(&mut TaskContext::from_waker(&waker)).is_pending());
        // Be woken.
        h.cancel();
        assert_eq!(flag.0.load(Ordering::SeqCst), 3);
        let mut cx = TaskContext::from_waker(&waker);
        assert_eq!(done.as_mut().poll(&mut cx), Poll::Ready(Error::Canceled));
        assert_eq!(owned.as_mut().poll(&mut cx), Poll::Ready(Error::Canceled));
        assert_eq!(run.as_mut().poll(&mut cx), Poll::Ready(Err(Error::Canceled)));
    });
    assert_eq!(usage.allocs, 0, "waiting allocated: {usage:?}");
    assert_eq!(usage.live_bytes, 0);
}

#[test]
fn polling_done_on_a_deadline_context_allocates_nothing() {
    let _s = serial();
    static CLOCK: ManualClock = ManualClock::new();
    let root = Context::with_timer(&CLOCK);
    // Warm the clock's map (its first node is allocated once, for ever):
    // an entry is armed only once something waits on the deadline (here an
    // after-func), then disarmed by the cancel.
    {
        let (warm, _wh) = root.with_timeout(Duration::from_secs(1));
        drop(warm.after_func(|| {}));
    }
    let (ctx, _h) = root.with_timeout(Duration::from_millis(5));
    let flag = Arc::new(Flag::default());
    let waker = Waker::from(flag.clone());
    let mut done = pin!(ctx.done());
    let mut cx = TaskContext::from_waker(&waker);
    let (r, usage) = measure(|| done.as_mut().poll(&mut cx));
    assert!(r.is_pending());
    assert_eq!(usage.allocs, 0, "registering allocated: {usage:?}");
    // Not measured: `ManualClock::advance` itself may allocate (it collects
    // due entries); what matters is that the waiter does not.
    CLOCK.advance(Duration::from_millis(5));
    assert_eq!(flag.0.load(Ordering::SeqCst), 1);
    let (r, usage) = measure(|| done.as_mut().poll(&mut cx));
    assert_eq!(r, Poll::Ready(Error::DeadlineExceeded));
    assert_eq!(usage.allocs, 0, "completing allocated: {usage:?}");
    assert_eq!(CLOCK.armed(), 0);
}

// ---------------------------------------------------------------------------
// Churn under a long-lived parent: nothing left behind

/// Runs `n` cycles of `cycle` under `parent` and checks that the live bytes
/// come back to where they started; returns allocations per cycle.
fn churn(n: usize, mut cycle: impl FnMut(usize)) -> f64 {
    // One cycle first, so lazily grown storage (timer maps) is not counted.
    cycle(usize::MAX);
    let ((), usage) = measure(|| {
        for i in 0..n {
            cycle(i);
        }
    });
    assert_eq!(usage.live_bytes, 0, "{n} cycles left {} bytes behind", usage.live_bytes);
    usage.allocs as f64 / n as f64
}

#[test]
#[cfg_attr(miri, ignore)]
fn churn_of_cancel_children_leaves_nothing_behind() {
    let _s = serial();
    let (parent, hp) = Context::background().with_cancel();
    let parent = parent.with_value(&TRACE, 1);
    let n = cycles(100_000);

    let per = churn(n, |_| drop(parent.with_cancel()));
    assert!(per <= 1.0, "with_cancel + drop: {per} allocations per cycle");

    let per = churn(n, |_| {
        let (c, h) = parent.with_cancel();
        h.detach();
        drop(c);
    });
    assert!(per <= 1.0, "detached: {per}");

    let per = churn(n, |_| {
        let (c, h) = parent.with_cancel();
        h.cancel_with("done");
        assert!(c.is_done());
    });
    assert!(per <= 1.0, "cancelled: {per}");

    churn(n, |_| {
        let (c, h) = parent.with_cancel();
        let (gc, hg) = c.with_cancel();
        drop(h);
        drop((gc, hg, c));
    });

    churn(n, |_| {
        let (c, _h) = parent.with_cancel();
        let af = c.after_func(|| {});
        assert!(af.stop());
    });

    churn(n, |_| {
        let (c, _h) = parent.with_cancel();
        drop(c.after_func(|| {}));
    });

    let noop = futures::task::noop_waker();
    let per = churn(n, |_| {
        let mut d = pin!(parent.done());
        assert!(d.as_mut().poll(&mut TaskContext::from_waker(&noop)).is_pending());
    });
    assert_eq!(per, 0.0, "waiting on the parent allocates");

    let (other, _ho) = Context::background().with_cancel();
    churn(n / 10, |_| {
        let any = Context::any([&parent, &other]);
        let (c, _h) = any.with_cancel();
        drop((any, c));
    });

    // Orphans (node/mod.rs invariant 16): a detached child dropped while its own
    // child lives is kept by that child alone, then freed by it; or a whole
    // orphaned subtree is cancelled from above and then dropped.
    let per = churn(n, |_| {
        let (mid, mh) = parent.with_cancel();
        mh.detach();
        let (kid, kh) = mid.with_cancel();
        drop(mid);
        assert!(!kid.is_done());
        drop((kid, kh));
    });
    assert!(per <= 2.0, "orphan: {per}");
    churn(n / 10, |_| {
        let (sub, sh) = parent.with_cancel();
        let (mid, mh) = sub.with_cancel();
        mh.detach();
        let (kid, kh) = mid.with_cancel();
        kh.detach();
        drop(mid);
        sh.cancel();
        assert!(kid.is_done());
        drop((kid, sub));
    });

    assert!(!parent.is_done());
    hp.cancel();

    // Children of a done parent need no node: plainly cancelled (the shared
    // immortal node) or with a cause (the parent's node).
    let per = churn(n, |_| {
        let (c, h) = parent.with_cancel();
        assert!(c.is_done());
        drop((c.clone(), c, h));
    });
    assert_eq!(per, 0.0, "child of a cancelled parent allocates");
    let (caused, hc) = Context::background().with_cancel();
    hc.cancel_with("why");
    let per = churn(n, |_| drop(caused.with_cancel()));
    assert_eq!(per, 0.0, "child of a parent cancelled with a cause allocates");
}

#[test]
#[cfg_attr(miri, ignore)]
fn churn_of_std_timer_deadline_children_leaves_nothing_armed() {
    let _s = serial();
    std_timer_warm();
    let (parent, _hp) = Context::background().with_cancel();
    let armed = StdTimer::global().armed();
    let n = cycles(100_000);
    let hour = Duration::from_secs(3600);

    churn(n, |_| drop(parent.with_timeout(hour)));
    assert_eq!(StdTimer::global().armed(), armed);

    churn(n, |_| {
        let (c, h) = parent.with_timeout_cause(hour, "slow");
        h.detach();
        drop(c);
    });
    assert_eq!(
        StdTimer::global().armed(),
        armed,
        "a dropped detached deadline child disarms"
    );

    churn(n, |_| {
        let (c, h) = parent.with_timeout(hour);
        h.cancel();
        assert!(c.is_done());
    });
    assert_eq!(StdTimer::global().armed(), armed);

    // A deadline parent with many short-lived deadline-less children: armed
    // once something waits on it (an after-func), and only once.
    let (dl_parent, _hd) = parent.with_timeout(hour);
    churn(n, |_| drop(dl_parent.with_cancel()));
    assert_eq!(StdTimer::global().armed(), armed, "nothing waits: nothing armed");
    let _af = dl_parent.after_func(|| {});
    churn(n, |_| drop(dl_parent.with_cancel()));
    assert_eq!(StdTimer::global().armed(), armed + 1);
    drop(_af);

    // A per-request deadline child of a plain parent is a kid (node/mod.rs
    // invariant 16): waited on (armed), under a connection context that is
    // dropped first, so the deadline child alone holds the orphan; its
    // drop disarms it and frees the orphan.
    let per = churn(n, |_| {
        let (conn, hc) = parent.with_cancel();
        hc.detach();
        let (req, hr) = conn.with_timeout(hour);
        drop(conn);
        {
            let noop = futures::task::noop_waker();
            let mut d = pin!(req.done());
            assert!(d.as_mut().poll(&mut TaskContext::from_waker(&noop)).is_pending());
        }
        drop((req, hr));
    });
    assert!(per <= 2.0, "deadline kid of an orphan: {per}");
    assert_eq!(StdTimer::global().armed(), armed + 1);
}

#[test]
#[cfg_attr(miri, ignore)]
fn churn_of_manual_clock_deadline_children_leaves_nothing_armed() {
    let _s = serial();
    static CLOCK: ManualClock = ManualClock::new();
    let root = Context::with_timer(&CLOCK);
    let (parent, _hp) = root.with_cancel();
    let n = cycles(100_000);
    let hour = Duration::from_secs(3600);

    churn(n, |_| drop(parent.with_timeout(hour)));
    assert_eq!(CLOCK.armed(), 0);

    churn(n, |_| {
        let (c, h) = parent.with_timeout(hour);
        h.detach();
        drop(c);
    });
    assert_eq!(CLOCK.armed(), 0);

    // Deadlines that fire.
    churn(n / 10, |_| {
        let (c, _h) = parent.with_timeout(Duration::from_nanos(1));
        CLOCK.advance(Duration::from_nanos(1));
        assert_eq!(c.err(), Some(Error::DeadlineExceeded));
    });
    assert_eq!(CLOCK.armed(), 0);

    // A deadline kid (node/mod.rs invariant 16), armed by a waiter, fired
    // by the timer while it alone holds its orphaned parent: its deadline
    // cancel frees the orphan; its grandchild follows.
    let noop = futures::task::noop_waker();
    churn(n / 10, |_| {
        let (conn, hc) = parent.with_cancel();
        hc.detach();
        let (req, _hr) = conn.with_timeout(Duration::from_nanos(1));
        let (step, _hs) = req.with_cancel();
        drop(conn);
        let mut d = pin!(step.done());
        assert!(d.as_mut().poll(&mut TaskContext::from_waker(&noop)).is_pending());
        assert_eq!(CLOCK.armed(), 1);
        CLOCK.advance(Duration::from_nanos(1));
        assert!(d.as_mut().poll(&mut TaskContext::from_waker(&noop)).is_ready());
        assert_eq!(step.err(), Some(Error::DeadlineExceeded));
    });
    assert_eq!(CLOCK.armed(), 0);
}

#[test]
fn small_churn_leaves_nothing_behind() {
    // The same checks at a size Miri can run.
    let _s = serial();
    static CLOCK: ManualClock = ManualClock::new();
    let (parent, hp) = Context::with_timer(&CLOCK).with_cancel();
    churn(20, |_| drop(parent.with_cancel()));
    churn(20, |_| drop(parent.with_timeout(Duration::from_secs(3600))));
    churn(20, |_| {
        // The after-func keeps its context alive until it runs: the
        // handle's drop cancels, which runs it and frees everything.
        let (c, h) = parent.with_timeout(Duration::from_secs(3600));
        drop(c.after_func(|| {}));
        drop(c);
        drop(h);
    });
    // Deadline kids of orphans (node/mod.rs invariant 16): fired by the
    // clock, freeing the orphan; or dropped, freeing it and disarming.
    let noop = futures::task::noop_waker();
    churn(10, |i| {
        let (conn, hc) = parent.with_cancel();
        hc.detach();
        let (req, hr) = conn.with_timeout(Duration::from_nanos(1));
        drop(conn);
        {
            let mut d = pin!(req.done());
            assert!(d.as_mut().poll(&mut TaskContext::from_waker(&noop)).is_pending());
        }
        if i % 2 == 0 {
            CLOCK.advance(Duration::from_nanos(1));
            assert_eq!(req.err(), Some(Error::DeadlineExceeded));
        }
        drop((req, hr));
    });
    hp.cancel();
    assert_eq!(CLOCK.armed(), 0);
}

// ---------------------------------------------------------------------------
// The heap-free tier allocates nothing at all

#[test]
fn static_and_scoped_contexts_allocate_nothing() {
    let _s = serial();
    static CLOCK: ManualClock = ManualClock::new();
    static ROOT: StaticContext = StaticContext::with_timer(&CLOCK);
    // Warm the clock's map (its first node is allocated once, for ever):
    // armed by a waiter (an after-func), disarmed by the cancel.
    {
        let (warm, _wh) = ROOT.context().with_timeout(Duration::from_secs(1));
        drop(warm.after_func(|| {}));
    }
    let flag = Arc::new(Flag::default());
    let waker = Waker::from(flag.clone());
    let ((), usage) = measure(|| {
        let job = pin!(ScopedContext::new(ROOT.as_ref()));
        let job_ctx = job.as_ref().context();
        let step = pin!(ScopedContext::with_timeout(job_ctx, Duration::from_secs(3600)));
        let step_ctx = step.as_ref().context();
        let free = pin!(ScopedContext::new(ContextRef::background()));
        let _ = free.as_ref().context();
        let mut cx = TaskContext::from_waker(&waker);
        let mut waiting = pin!(step_ctx.done());
        assert!(waiting.as_mut().poll(&mut cx).is_pending());
        let mut root_waiting = pin!(ROOT.done());
        assert!(root_waiting.as_mut().poll(&mut cx).is_pending());
        assert!(!step_ctx.is_done());
        job.cancel_with("job aborted");
        assert_eq!(flag.0.load(Ordering::SeqCst), 1);
        assert_eq!(waiting.as_mut().poll(&mut cx), Poll::Ready(Error::Canceled));
        assert_eq!(step_ctx.cause().unwrap().as_str(), Some("job aborted"));
        assert!(root_waiting.as_mut().poll(&mut cx).is_pending());
    });
    assert_eq!(usage.allocs, 0, "the heap-free tier allocated: {usage:?}");
    assert_eq!(usage.live_bytes, 0);
    assert_eq!(CLOCK.armed(), 0);
    assert!(!ROOT.is_done());
}

#[test]
#[cfg_attr(miri, ignore)]
fn scoped_churn_under_a_heap_parent_leaves_nothing_behind() {
    let _s = serial();
    let (parent, _hp) = Context::background().with_cancel();
    let per = churn(cycles(100_000), |_| {
        let s = pin!(ScopedContext::new(parent.as_ref()));
        assert!(!s.as_ref().context().is_done());
    });
    assert_eq!(per, 0.0, "a scoped child allocated");
}
