//! Conformance tests: the documented semantics of Go's `context` package and
//! the behaviour of tokio-util's `CancellationToken` trees, checked against
//! ctxcore's public API only.
//!
//! Deadline tests run on a per-test `static ManualClock` (deterministic), or on
//! [`FrozenClock`], a timer that never fires, to prove that deadlines are exact
//! when observed (DESIGN.md property 5) without any sleeping. Tests that need
//! real time or block a thread are `#[cfg_attr(miri, ignore)]`; they sleep at
//! most 50 ms and assert outcomes and ordering only, never durations. Thread
//! races without sleeps stay on under Miri with small loops (`scale`), so Miri
//! checks the concurrent protocols too (`-Zmiri-many-seeds` varies schedules).
//!
//! Sections follow the API: background, cancel trees, deadlines, exactness,
//! values, after-funcs, `without_cancel`, `any`, futures, blocking waits,
//! threads, regressions (bugs this suite found, each kept as a test), and the
//! heap-free tier (`StaticContext`, `ScopedContext`, `ContextRef`).

use core::future::Future;
use core::pin::{pin, Pin};
use core::task::{Context as TaskContext, Poll, Waker};
use ctxcore::time::{Clock, Instant, Timer, TimerEntry};
use ctxcore::{Cause, Context, ContextRef, Error, Key, ManualClock, ScopedContext, StaticContext};
use futures::executor::block_on;
use futures::future::FusedFuture;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Barrier, Mutex};
use std::task::Wake;
use std::thread;
use std::time::Duration;

// ---------------------------------------------------------------------------
// Helpers

/// Shrinks loop counts under Miri, which is orders of magnitude slower.
fn scale(native: usize, miri: usize) -> usize {
    if cfg!(miri) {
        miri
    } else {
        native
    }
}

/// A waker that records whether (and how often) it was woken.
#[derive(Default)]
struct Flag {
    wakes: AtomicUsize,
}

impl Flag {
    fn new() -> Arc<Flag> {
        Arc::new(Flag::default())
    }
    fn woken(&self) -> bool {
        self.wakes.load(Ordering::SeqCst) > 0
    }
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wakes.fetch_add(1, Ordering::SeqCst);
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.wakes.fetch_add(1, Ordering::SeqCst);
    }
}

fn waker_of(flag: &Arc<Flag>) -> Waker {
    Waker::from(flag.clone())
}

fn poll_with<F: Future + ?Sized>(fut: Pin<&mut F>, waker: &Waker) -> Poll<F::Output> {
    fut.poll(&mut TaskContext::from_waker(waker))
}

/// A root for tests that arm far deadlines but do not care about the timer:
/// the default (std) timer natively; under Miri a clock that never moves, so
/// that no timer thread outlives the test binary's main thread (Miri reports
/// that as an error).
fn base() -> Context {
    static NEVER: ManualClock = ManualClock::new();
    if cfg!(miri) {
        Context::with_timer(&NEVER)
    } else {
        Context::background()
    }
}

/// A counter and a callback that bumps it (for after-funcs).
fn counter() -> (Arc<AtomicUsize>, impl FnOnce() + Send + 'static) {
    let c = Arc::new(AtomicUsize::new(0));
    let c2 = c.clone();
    (c, move || {
        c2.fetch_add(1, Ordering::SeqCst);
    })
}

fn count(c: &AtomicUsize) -> usize {
    c.load(Ordering::SeqCst)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn at(ms: u64) -> Instant {
    Instant::ZERO + Duration::from_millis(ms)
}

fn cause_str(ctx: &Context) -> Option<String> {
    ctx.cause().map(|c| c.to_string())
}

/// A timer whose clock moves only on `set` and which never fires anything: a
/// deadline can only be noticed by reading the clock, which is exactly what
/// DESIGN.md property 5 requires to work.
struct FrozenClock {
    now: AtomicU64,
    arms: AtomicUsize,
}

impl FrozenClock {
    const fn new() -> Self {
        FrozenClock {
            now: AtomicU64::new(0),
            arms: AtomicUsize::new(0),
        }
    }
    fn set(&self, t: Instant) {
        self.now.store(t.as_nanos(), Ordering::SeqCst);
    }
}

impl Clock for FrozenClock {
    fn now(&self) -> Instant {
        Instant::from_nanos(self.now.load(Ordering::SeqCst))
    }
}

// SAFETY: `arm` forgets the entry at once and nothing ever claims it, so the
// entry protocol (serialised claim/disarm, no use after disarm) holds
// trivially.
unsafe impl Timer for FrozenClock {
    unsafe fn arm(&self, entry: TimerEntry) {
        self.arms.fetch_add(1, Ordering::SeqCst);
        // Forgotten at once: this timer never fires.
        let _ = entry;
    }
    unsafe fn disarm(&self, _entry: &TimerEntry) {}
}

#[derive(Debug)]
struct ClientGone(u32);

impl std::fmt::Display for ClientGone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "client {} went away", self.0)
    }
}

impl std::error::Error for ClientGone {}

// ---------------------------------------------------------------------------
// Auto traits and basic types

#[test]
fn public_types_have_the_promised_auto_traits() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>(_: &T) {}
    fn is_static<T: 'static>(_: &T) {}
    fn clone_debug<T: Clone + std::fmt::Debug>() {}
    send_sync::<Context>();
    send_sync::<ctxcore::CancelHandle>();
    send_sync::<ctxcore::AfterFunc>();
    send_sync::<Cause>();
    send_sync::<Key<u32>>();
    clone_debug::<Context>();
    clone_debug::<Cause>();
    clone_debug::<Error>();
    clone_debug::<Instant>();

    let ctx = Context::background();
    send(&ctx.done());
    let owned = ctx.done_owned();
    send(&owned);
    is_static(&owned);
    let run = ctx.run(async { 1u8 });
    send(&run);
    is_static(&run);
    assert!(std::mem::size_of::<Key<()>>() > 0, "keys are identified by address");
}

#[test]
fn error_is_copy_eq_display_and_std_error() {
    fn std_error<E: std::error::Error + Copy + Eq>(_: E) {}
    std_error(Error::Canceled);
    assert_eq!(Error::Canceled.to_string(), "context canceled");
    assert_eq!(Error::DeadlineExceeded.to_string(), "context deadline exceeded");
    assert_ne!(Error::Canceled, Error::DeadlineExceeded);
}

#[test]
fn instant_arithmetic_saturates() {
    assert_eq!(Instant::MAX + Duration::MAX, Instant::MAX);
    assert_eq!(Instant::ZERO + Duration::MAX, Instant::MAX);
    assert_eq!(
        Instant::from_nanos(5) + Duration::from_nanos(7),
        Instant::from_nanos(12)
    );
    assert_eq!(Instant::from_nanos(12).as_nanos(), 12);
    assert!(Instant::ZERO < Instant::MAX);
}

#[test]
fn debug_output_names_state_deadline_and_keys() {
    static CLOCK: ManualClock = ManualClock::new();
    let (ctx, h) = Context::with_timer(&CLOCK)
        .with_value(&NAME, "secret")
        .with_deadline(at(5));
    let s = format!("{ctx:?}");
    assert!(s.contains("name"), "{s}");
    assert!(!s.contains("secret"), "values are not printed: {s}");
    assert!(s.contains("deadline"), "{s}");
    h.cancel();
    assert!(format!("{ctx:?}").contains("Canceled"));
    assert!(!format!("{:?}", Context::background()).is_empty());
    assert!(format!("{:?}", ctx.done()).contains("Done"));
}

// ---------------------------------------------------------------------------
// Background and TODO

#[test]
fn background_and_todo_are_never_done() {
    static K: Key<u8> = Key::new("k");
    for ctx in [Context::background(), Context::todo(), Context::default()] {
        assert!(!ctx.is_done());
        assert_eq!(ctx.err(), None);
        assert!(ctx.cause().is_none());
        assert_eq!(ctx.deadline(), None);
        assert_eq!(ctx.value(&K), None);
        let flag = Flag::new();
        let mut done = pin!(ctx.done());
        assert!(poll_with(done.as_mut(), &waker_of(&flag)).is_pending());
        assert!(!done.is_terminated());
        let mut owned = pin!(ctx.done_owned());
        assert!(poll_with(owned.as_mut(), &waker_of(&flag)).is_pending());
        assert!(!flag.woken());
    }
}

#[test]
fn background_run_completes_with_the_future_output() {
    assert_eq!(block_on(Context::background().run(async { 7 })), Ok(7));
}

// ---------------------------------------------------------------------------
// WithCancel: propagation parent → children, never child → parent

#[test]
fn cancel_reports_canceled_and_the_error_as_cause() {
    let (ctx, handle) = Context::background().with_cancel();
    assert!(!ctx.is_done());
    assert!(!handle.is_done());
    assert_eq!(ctx.err(), None);
    assert!(ctx.cause().is_none());
    handle.cancel();
    assert!(ctx.is_done());
    assert!(handle.is_done());
    assert_eq!(ctx.err(), Some(Error::Canceled));
    let cause = ctx.cause().unwrap();
    assert_eq!(cause.as_error(), Some(Error::Canceled));
    assert_eq!(cause.downcast_ref::<Error>(), Some(&Error::Canceled));
    assert_eq!(cause.to_string(), "context canceled");
}

#[test]
fn cancel_propagates_to_every_descendant() {
    let (root, handle) = Context::background().with_cancel();
    let mut all = Vec::new();
    let mut handles = Vec::new();
    let mut level = vec![root.clone()];
    for _ in 0..3 {
        let mut next = Vec::new();
        for p in &level {
            for _ in 0..3 {
                let (c, h) = p.with_cancel();
                handles.push(h);
                next.push(c.clone());
                all.push(c);
            }
        }
        level = next;
    }
    assert_eq!(all.len(), 3 + 9 + 27);
    assert!(all.iter().all(|c| !c.is_done()));
    handle.cancel();
    for c in &all {
        assert_eq!(c.err(), Some(Error::Canceled));
        assert_eq!(c.cause().unwrap().as_error(), Some(Error::Canceled));
    }
    assert!(handles.iter().all(|h| h.is_done()));
}

#[test]
fn cancelling_a_child_affects_neither_parent_nor_siblings() {
    let (parent, _hp) = Context::background().with_cancel();
    let (a, ha) = parent.with_cancel();
    let (b, _hb) = parent.with_cancel();
    let (a_child, _hac) = a.with_cancel();
    ha.cancel_with("a only");
    assert!(a.is_done());
    assert!(a_child.is_done());
    assert_eq!(cause_str(&a_child).as_deref(), Some("a only"));
    assert!(!parent.is_done());
    assert!(!b.is_done());
    assert_eq!(parent.err(), None);
}

#[test]
fn first_cancel_wins_and_later_ones_change_nothing() {
    let (ctx, h) = Context::background().with_cancel();
    h.cancel_with("first");
    h.cancel_with("second");
    h.cancel();
    assert_eq!(ctx.err(), Some(Error::Canceled));
    assert_eq!(ctx.cause().unwrap().as_str(), Some("first"));

    let (ctx, h) = Context::background().with_cancel();
    h.cancel();
    h.cancel_with("too late");
    assert_eq!(ctx.cause().unwrap().as_error(), Some(Error::Canceled));
}

#[test]
fn parent_cancel_after_child_cancel_keeps_the_child_cause() {
    let (parent, hp) = Context::background().with_cancel();
    let (child, hc) = parent.with_cancel();
    let (grandchild, _hg) = child.with_cancel();
    hc.cancel_with("child first");
    hp.cancel_with("parent later");
    assert_eq!(cause_str(&child).as_deref(), Some("child first"));
    assert_eq!(cause_str(&grandchild).as_deref(), Some("child first"));
    assert_eq!(cause_str(&parent).as_deref(), Some("parent later"));
}

#[test]
fn causes_are_inherited_by_every_descendant() {
    let (root, h) = base().with_cancel();
    let (mid, _hm) = root.with_cancel();
    let mid = mid.with_value(&NAME, "mid");
    let (leaf, _hl) = mid.with_timeout(Duration::from_secs(3600));
    h.cancel_with(ClientGone(7));
    for ctx in [&root, &mid, &leaf] {
        assert_eq!(ctx.err(), Some(Error::Canceled));
        let cause = ctx.cause().unwrap();
        assert_eq!(cause.downcast_ref::<ClientGone>().map(|c| c.0), Some(7));
        assert!(cause.is::<ClientGone>());
        assert_eq!(cause.to_string(), "client 7 went away");
        assert!(cause.as_error().is_none());
        assert!(cause.as_str().is_none());
    }
}

#[test]
fn causes_from_strings_and_errors() {
    let (ctx, h) = Context::background().with_cancel();
    h.cancel_with(String::from("owned message"));
    assert_eq!(cause_str(&ctx).as_deref(), Some("owned message"));

    let (ctx, h) = Context::background().with_cancel();
    h.cancel_with(Error::DeadlineExceeded);
    // The error stays `Canceled`: the cause is only the reason given.
    assert_eq!(ctx.err(), Some(Error::Canceled));
    assert_eq!(ctx.cause().unwrap().as_error(), Some(Error::DeadlineExceeded));

    let c = Cause::from("static");
    assert_eq!(c.as_str(), Some("static"));
    assert_eq!(c.clone().to_string(), "static");
    assert!(format!("{c:?}").contains("static"));
}

#[test]
fn child_of_a_done_parent_is_born_done_with_the_parent_cause() {
    let (parent, h) = Context::background().with_cancel();
    h.cancel_with("gone");
    let (child, _hc) = parent.with_cancel();
    let (dl_child, _hd) = parent.with_timeout(Duration::from_secs(3600));
    let valued = parent.with_value(&NAME, "v");
    for ctx in [&child, &dl_child, &valued] {
        assert!(ctx.is_done());
        assert_eq!(ctx.err(), Some(Error::Canceled));
        assert_eq!(cause_str(ctx).as_deref(), Some("gone"));
    }
    let (grandchild, _hg) = child.with_cancel();
    assert_eq!(cause_str(&grandchild).as_deref(), Some("gone"));
}

// Children of a done parent need no node of their own; those of a plainly
// cancelled one (no cause, no deadline) share one immortal node
// (node/mod.rs invariant 15). Nothing about them may differ from a child of that
// parent with a node of its own.

/// A parent cancelled with no cause, carrying a value.
fn plainly_cancelled() -> Context {
    let (parent, h) = Context::background().with_cancel();
    let parent = parent.with_value(&NAME, "parent");
    h.cancel();
    parent
}

#[test]
fn child_of_a_plainly_cancelled_parent_is_canceled_with_the_error_as_cause() {
    let parent = plainly_cancelled();
    let (child, hc) = parent.with_cancel();
    let (grandchild, hg) = child.with_cancel();
    for ctx in [&child, &grandchild, &child.clone()] {
        assert!(ctx.is_done());
        assert_eq!(ctx.err(), Some(Error::Canceled));
        assert_eq!(ctx.cause().unwrap().as_error(), Some(Error::Canceled));
        assert_eq!(cause_str(ctx), cause_str(&parent));
        assert_eq!(ctx.deadline(), None);
        assert_eq!(ctx.value(&NAME), Some(&"parent"));
    }
    assert!(hc.is_done() && hg.is_done());
    // Later cancellations change nothing, whoever asks.
    hc.cancel_with("late");
    hg.cancel_with("late");
    assert_eq!(child.cause().unwrap().as_error(), Some(Error::Canceled));
    assert_eq!(format!("{child:?}"), format!("{parent:?}"));
}

#[test]
fn children_of_plainly_cancelled_parents_keep_their_own_values() {
    // Two unrelated cancelled trees: their children look alike to the node
    // layer but must keep each one its own values.
    let a = plainly_cancelled().with_value(&COUNT, 1);
    let (b, hb) = Context::background().with_value(&COUNT, 2).with_cancel();
    hb.cancel();
    let (ca, _ha) = a.with_cancel();
    let (cb, _hb) = b.with_cancel();
    assert_eq!(ca.value(&COUNT), Some(&1));
    assert_eq!(ca.value(&NAME), Some(&"parent"));
    assert_eq!(cb.value(&COUNT), Some(&2));
    assert_eq!(cb.value(&NAME), None);
    let ca2 = ca.with_value(&COUNT, 3);
    assert_eq!(ca2.value(&COUNT), Some(&3));
    assert_eq!(ca.value(&COUNT), Some(&1));
    assert_eq!(ca2.err(), Some(Error::Canceled));
    // `any` over them: done, values from the first parent.
    let (live, _hl) = Context::background().with_value(&COUNT, 9).with_cancel();
    let either = Context::any([&live, &cb, &ca]);
    assert!(either.is_done());
    assert_eq!(either.err(), Some(Error::Canceled));
    assert_eq!(either.cause().unwrap().as_error(), Some(Error::Canceled));
    assert_eq!(either.value(&COUNT), Some(&9));
    assert_eq!(either.deadline(), None);
    let both = Context::any([&ca, &cb]);
    assert_eq!(both.value(&COUNT), Some(&1));
    assert_eq!(both.err(), Some(Error::Canceled));
    let (child_of_any, _h) = both.with_cancel();
    assert_eq!(child_of_any.err(), Some(Error::Canceled));
}

#[test]
fn child_of_a_plainly_cancelled_parent_waits_for_nothing() {
    let (child, _h) = plainly_cancelled().with_cancel();
    let (c, f) = counter();
    let af = child.after_func(f);
    assert_eq!(count(&c), 1, "an after-func on a done context runs at once");
    assert!(!af.stop());
    assert_eq!(block_on(child.done()), Error::Canceled);
    assert_eq!(block_on(child.done_owned()), Error::Canceled);
    assert_eq!(
        block_on(child.run(futures::future::pending::<()>())),
        Err(Error::Canceled)
    );
    let flag = Flag::new();
    let mut done = pin!(child.done());
    assert_eq!(poll_with(done.as_mut(), &waker_of(&flag)), Poll::Ready(Error::Canceled));
    assert_eq!(child.wait_blocking(), Error::Canceled);
    assert_eq!(
        child.wait_blocking_timeout(Duration::from_secs(3600)),
        Some(Error::Canceled)
    );
    // Scoped children of it are born done too.
    let scoped = pin!(ScopedContext::new(child.as_ref()));
    let scoped = scoped.as_ref();
    let sctx = scoped.context();
    assert!(sctx.is_done());
    assert_eq!(sctx.err(), Some(Error::Canceled));
    assert_eq!(sctx.cause().unwrap().as_error(), Some(Error::Canceled));
    // `without_cancel` keeps values and is live.
    let detached = child.without_cancel();
    assert!(!detached.is_done());
    assert_eq!(detached.value(&NAME), Some(&"parent"));
}

#[test]
fn deadline_children_of_a_plainly_cancelled_parent_report_their_own_deadline() {
    let (child, _h) = plainly_cancelled().with_cancel();
    let t = Instant::from_nanos(u64::MAX / 2);
    let (dl, hd) = child.with_deadline(t);
    assert_eq!(dl.deadline(), Some(t));
    assert_eq!(dl.err(), Some(Error::Canceled));
    assert_eq!(dl.cause().unwrap().as_error(), Some(Error::Canceled));
    assert_eq!(dl.value(&NAME), Some(&"parent"));
    let (dlc, _h2) = child.with_deadline_cause(Instant::ZERO, "too slow");
    assert_eq!(dlc.deadline(), Some(Instant::ZERO));
    assert_eq!(dlc.err(), Some(Error::Canceled), "born cancelled, not expired");
    assert_eq!(dlc.cause().unwrap().as_error(), Some(Error::Canceled));
    // Their own children inherit that deadline.
    let (gc, _h3) = dl.with_cancel();
    assert_eq!(gc.deadline(), Some(t));
    assert_eq!(gc.err(), Some(Error::Canceled));
    drop((dl, hd));
}

#[test]
fn children_of_a_cancelled_parent_on_another_timer_keep_that_timer() {
    // The timer of a tree is part of what a child inherits: deadlines of its
    // descendants are read on it.
    static CLOCK: ManualClock = ManualClock::new();
    CLOCK.advance(Duration::from_secs(1_000_000));
    let start = CLOCK.now();
    let (parent, h) = Context::with_timer(&CLOCK).with_cancel();
    h.cancel();
    let (child, _h) = parent.with_cancel();
    let (dl, _hd) = child.with_timeout(Duration::from_secs(10));
    assert_eq!(dl.deadline(), Some(start + Duration::from_secs(10)));
    let detached = child.without_cancel();
    let (later, _hl) = detached.with_timeout(Duration::from_secs(10));
    assert_eq!(later.deadline(), Some(start + Duration::from_secs(10)));
    assert!(!later.is_done());
    CLOCK.advance(Duration::from_secs(10));
    assert_eq!(later.err(), Some(Error::DeadlineExceeded));
}

#[test]
fn child_of_a_parent_cancelled_with_a_cause_keeps_that_cause() {
    let (parent, h) = Context::background().with_cancel();
    h.cancel_with(ClientGone(7));
    let (child, _hc) = parent.with_cancel();
    let (grandchild, _hg) = child.with_cancel();
    for ctx in [&child, &grandchild] {
        assert_eq!(ctx.err(), Some(Error::Canceled));
        let cause = ctx.cause().unwrap();
        assert_eq!(cause.downcast_ref::<ClientGone>().map(|c| c.0), Some(7));
        assert_eq!(cause.as_error(), None);
    }
    let (dl, _hd) = child.with_timeout(Duration::from_secs(3600));
    assert_eq!(cause_str(&dl).as_deref(), Some("client 7 went away"));
    let either = Context::any([&grandchild]);
    assert_eq!(cause_str(&either).as_deref(), Some("client 7 went away"));
}

#[test]
fn child_of_an_expired_parent_reports_its_error_and_deadline() {
    static CLOCK: FrozenClock = FrozenClock::new();
    let root = Context::with_timer(&CLOCK);
    let (parent, _hp) = root.with_deadline(at(5));
    let (caused, _hcp) = root.with_deadline_cause(at(5), "slow");
    CLOCK.set(at(5));
    assert_eq!(parent.err(), Some(Error::DeadlineExceeded));
    let (child, hc) = parent.with_cancel();
    let (grandchild, _hg) = child.with_cancel();
    for ctx in [&child, &grandchild] {
        assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
        assert_eq!(ctx.cause().unwrap().as_error(), Some(Error::DeadlineExceeded));
        assert_eq!(ctx.deadline(), Some(at(5)));
    }
    hc.cancel();
    assert_eq!(child.err(), Some(Error::DeadlineExceeded));
    let (c2, _h2) = caused.with_cancel();
    assert_eq!(c2.err(), Some(Error::DeadlineExceeded));
    assert_eq!(cause_str(&c2).as_deref(), Some("slow"));
    assert_eq!(c2.deadline(), Some(at(5)));
}

#[test]
fn child_of_a_cancelled_parent_with_a_deadline_keeps_the_deadline() {
    static CLOCK: FrozenClock = FrozenClock::new();
    let (parent, h) = Context::with_timer(&CLOCK).with_deadline(at(50));
    h.cancel();
    assert_eq!(parent.err(), Some(Error::Canceled));
    let (child, _hc) = parent.with_cancel();
    assert_eq!(child.err(), Some(Error::Canceled));
    assert_eq!(child.cause().unwrap().as_error(), Some(Error::Canceled));
    assert_eq!(child.deadline(), Some(at(50)));
}

#[test]
fn children_of_cancelled_parents_cloned_and_dropped_across_threads() {
    // Clones and drops of such children on many threads at once, mixed with
    // everything built on them: no count may go wrong (a lost or extra
    // decrement would free or leak something, which Miri would report).
    let threads = scale(8, 3);
    let rounds = scale(2_000, 20);
    let (live, _hl) = base().with_cancel();
    let parent = plainly_cancelled();
    let (child, _hc) = parent.with_cancel();
    let barrier = Arc::new(Barrier::new(threads));
    let ran = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..threads)
        .map(|i| {
            let child = child.clone();
            let parent = parent.clone();
            let live = live.clone();
            let barrier = barrier.clone();
            let ran = ran.clone();
            thread::spawn(move || {
                barrier.wait();
                let mut keep = Vec::new();
                for r in 0..rounds {
                    let c = child.clone();
                    let (g, hg) = c.with_cancel();
                    let (p, hp) = parent.with_cancel();
                    let v = g.with_value(&COUNT, r as u64);
                    let either = Context::any([&live, &v, &p]);
                    let (dl, hd) = p.with_deadline(Instant::from_nanos(u64::MAX / 2));
                    let ran = ran.clone();
                    g.after_func(move || {
                        ran.fetch_add(1, Ordering::Relaxed);
                    });
                    assert_eq!(either.err(), Some(Error::Canceled));
                    assert_eq!(v.value(&COUNT), Some(&(r as u64)));
                    assert_eq!(dl.err(), Some(Error::Canceled));
                    if (r + i) % 3 == 0 {
                        keep.push((c, g, hg, p, hp, v, either, dl, hd));
                    } else if (r + i) % 3 == 1 {
                        drop((hd, dl, either, v, hp, p, hg, g, c));
                    }
                }
                keep.len()
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    assert_eq!(ran.load(Ordering::Relaxed), threads * rounds);
    assert_eq!(child.err(), Some(Error::Canceled));
    assert_eq!(child.value(&NAME), Some(&"parent"));
    let (fresh, _h) = plainly_cancelled().with_cancel();
    assert_eq!(fresh.cause().unwrap().as_error(), Some(Error::Canceled));
    assert!(!live.is_done());
}

#[test]
fn dropping_the_handle_cancels_and_detach_does_not() {
    let (ctx, h) = Context::background().with_cancel();
    let (child, _hc) = ctx.with_cancel();
    drop(h);
    assert_eq!(ctx.err(), Some(Error::Canceled));
    assert!(child.is_done());

    let (parent, hp) = Context::background().with_cancel();
    let (ctx, h) = parent.with_cancel();
    h.detach();
    assert!(!ctx.is_done());
    // A detached child still follows its ancestors.
    hp.cancel_with("parent");
    assert_eq!(cause_str(&ctx).as_deref(), Some("parent"));
}

#[test]
fn clones_are_the_same_context() {
    let (ctx, h) = Context::background().with_cancel();
    let clones: Vec<Context> = (0..4).map(|_| ctx.clone()).collect();
    drop(ctx);
    h.cancel_with("all");
    for c in &clones {
        assert_eq!(cause_str(c).as_deref(), Some("all"));
    }
}

#[test]
fn handle_is_done_follows_ancestors() {
    let (parent, hp) = Context::background().with_cancel();
    let (_child, hc) = parent.with_cancel();
    assert!(!hc.is_done());
    hp.cancel();
    assert!(hc.is_done());
    assert!(format!("{hc:?}").contains("true"));
}

#[test]
fn deep_chain_cancels_and_drops_without_recursion() {
    let depth = scale(20_000, 100);
    let (root, h) = Context::background().with_cancel();
    let mut last = root.clone();
    let mut handles = Vec::with_capacity(depth);
    for _ in 0..depth {
        let (c, hc) = last.with_cancel();
        handles.push(hc);
        last = c;
    }
    h.cancel_with("deep");
    assert_eq!(cause_str(&last).as_deref(), Some("deep"));
    drop(handles);
    drop(root);
    drop(last);

    // Dropping a deep chain leaf-first and root-first, live.
    let (root, _h) = Context::background().with_cancel();
    let mut last = root.clone();
    for _ in 0..depth {
        let (c, hc) = last.with_cancel();
        hc.detach();
        last = c;
    }
    drop(root);
    assert!(!last.is_done());
    drop(last);
}

#[test]
fn wide_fan_out_cancels_every_child() {
    let n = scale(5_000, 80);
    let (root, h) = Context::background().with_cancel();
    let children: Vec<_> = (0..n).map(|_| root.with_cancel()).collect();
    h.cancel();
    assert!(children.iter().all(|(c, _)| c.err() == Some(Error::Canceled)));
}

// ---------------------------------------------------------------------------
// tokio-util CancellationToken tree behaviour (single thread)

#[test]
fn grandchild_is_cancelled_through_a_dropped_middle_node() {
    // Middle context dropped, middle handle detached.
    let (root, h) = Context::background().with_cancel();
    let (mid, hm) = root.with_cancel();
    let (leaf, _hl) = mid.with_cancel();
    hm.detach();
    drop(mid);
    assert!(!leaf.is_done());
    h.cancel_with("root");
    assert_eq!(cause_str(&leaf).as_deref(), Some("root"));

    // Middle context dropped, middle handle kept (and dropped last).
    let (root, h) = Context::background().with_cancel();
    let (mid, hm) = root.with_cancel();
    let (leaf, _hl) = mid.with_cancel();
    drop(mid);
    h.cancel_with("root");
    assert_eq!(cause_str(&leaf).as_deref(), Some("root"));
    drop(hm);

    // Middle handle detached first, context kept then dropped after cancel.
    let (root, h) = Context::background().with_cancel();
    let (mid, hm) = root.with_cancel();
    hm.detach();
    let (leaf, _hl) = mid.with_cancel();
    let (leaf2, _hl2) = leaf.with_cancel();
    drop(leaf);
    drop(mid);
    h.cancel();
    assert_eq!(leaf2.err(), Some(Error::Canceled));

    // Two dropped levels, with values and deadlines in between.
    let (root, h) = base().with_cancel();
    let (a, ha) = root.with_value(&NAME, "a").with_timeout(Duration::from_secs(3600));
    let (b, hb) = a.with_cancel();
    let (leaf, _hl) = b.with_cancel();
    ha.detach();
    hb.detach();
    drop((a, b));
    h.cancel_with("two levels");
    assert_eq!(cause_str(&leaf).as_deref(), Some("two levels"));
    assert_eq!(leaf.value(&NAME), Some(&"a"));
}

#[test]
fn dropping_a_middle_handle_cancels_its_subtree() {
    let (root, _h) = Context::background().with_cancel();
    let (mid, hm) = root.with_cancel();
    let (leaf, _hl) = mid.with_cancel();
    drop(mid);
    drop(hm);
    assert_eq!(leaf.err(), Some(Error::Canceled));
    assert!(!root.is_done());
}

#[test]
fn parent_dropped_before_children() {
    // Parent handle dropped (cancels) and context dropped: children done.
    let (parent, hp) = Context::background().with_cancel();
    let kids: Vec<_> = (0..4).map(|_| parent.with_cancel()).collect();
    drop(parent);
    drop(hp);
    for (k, _) in &kids {
        assert_eq!(k.err(), Some(Error::Canceled));
    }
    drop(kids);

    // Parent detached and dropped: children live on, independently.
    let (parent, hp) = Context::background().with_cancel();
    let kids: Vec<_> = (0..4).map(|_| parent.with_cancel()).collect();
    hp.detach();
    drop(parent);
    assert!(kids.iter().all(|(k, _)| !k.is_done()));
    kids[1].1.cancel();
    assert!(kids[1].0.is_done());
    assert!(!kids[0].0.is_done() && !kids[2].0.is_done());
}

#[test]
fn children_dropped_before_parent() {
    let (parent, hp) = Context::background().with_cancel();
    for _ in 0..16 {
        let (c, h) = parent.with_cancel();
        let (gc, hg) = c.with_cancel();
        drop((c, h, gc, hg));
    }
    assert!(!parent.is_done());
    hp.cancel();
    assert!(parent.is_done());
}

#[test]
fn handles_and_contexts_dropped_in_every_order() {
    // 4 objects (parent ctx, parent handle, child ctx, child handle): every
    // drop order must be fine and leave the child done exactly when a handle
    // on its path was dropped without detaching.
    let orders = permutations(4);
    for order in orders {
        let (p, hp) = Context::background().with_cancel();
        let (c, hc) = p.with_cancel();
        let witness = c.clone();
        let mut p = Some(p);
        let mut hp = Some(hp);
        let mut c = Some(c);
        let mut hc = Some(hc);
        for i in order {
            match i {
                0 => drop(p.take()),
                1 => drop(hp.take()),
                2 => drop(c.take()),
                _ => drop(hc.take()),
            }
        }
        assert_eq!(witness.err(), Some(Error::Canceled));
    }
}

fn permutations(n: usize) -> Vec<Vec<usize>> {
    if n == 0 {
        return vec![vec![]];
    }
    let mut out = Vec::new();
    for p in permutations(n - 1) {
        for i in 0..=p.len() {
            let mut q = p.clone();
            q.insert(i, n - 1);
            out.push(q);
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Deadlines (ManualClock)

#[test]
fn deadline_is_the_earliest_on_the_path() {
    static CLOCK: ManualClock = ManualClock::new();
    let root = Context::with_timer(&CLOCK);
    assert_eq!(root.deadline(), None);
    let (p, _hp) = root.with_deadline(at(100));
    assert_eq!(p.deadline(), Some(at(100)));
    let (later, _h1) = p.with_deadline(at(500));
    assert_eq!(later.deadline(), Some(at(100)));
    let (earlier, _h2) = p.with_deadline(at(40));
    assert_eq!(earlier.deadline(), Some(at(40)));
    let (plain, _h3) = earlier.with_cancel();
    assert_eq!(plain.deadline(), Some(at(40)));
    let (t, _h4) = plain.with_timeout(ms(10));
    assert_eq!(t.deadline(), Some(at(10)));
    assert_eq!(plain.with_value(&NAME, "x").deadline(), Some(at(40)));
}

#[test]
fn nested_deadlines_fire_in_order() {
    static CLOCK: ManualClock = ManualClock::new();
    let root = Context::with_timer(&CLOCK);
    let (outer, _ho) = root.with_timeout(ms(100));
    let (inner, _hi) = outer.with_timeout(ms(50));
    let (leaf, _hl) = inner.with_timeout(ms(200)); // inherits 50
    let (sibling, _hs) = outer.with_cancel();
    CLOCK.advance(ms(49));
    assert!(!inner.is_done() && !leaf.is_done() && !outer.is_done());
    CLOCK.advance(ms(1));
    assert_eq!(inner.err(), Some(Error::DeadlineExceeded));
    assert_eq!(leaf.err(), Some(Error::DeadlineExceeded));
    assert!(!outer.is_done());
    assert!(!sibling.is_done());
    CLOCK.advance(ms(50));
    assert_eq!(outer.err(), Some(Error::DeadlineExceeded));
    assert_eq!(sibling.err(), Some(Error::DeadlineExceeded));
    assert!(!root.is_done());
    assert_eq!(CLOCK.armed(), 0);
}

#[test]
fn deadline_cause_is_reported_and_inherited() {
    static CLOCK: ManualClock = ManualClock::new();
    let root = Context::with_timer(&CLOCK);
    let (ctx, _h) = root.with_deadline_cause(at(10), "too slow");
    let (child, _hc) = ctx.with_cancel();
    let (t, _ht) = root.with_timeout_cause(ms(20), ClientGone(3));
    CLOCK.advance(ms(10));
    assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
    assert_eq!(ctx.cause().unwrap().as_str(), Some("too slow"));
    assert_eq!(child.err(), Some(Error::DeadlineExceeded));
    assert_eq!(cause_str(&child).as_deref(), Some("too slow"));
    assert!(!t.is_done());
    CLOCK.advance(ms(10));
    assert_eq!(t.err(), Some(Error::DeadlineExceeded));
    assert_eq!(t.cause().unwrap().downcast_ref::<ClientGone>().map(|c| c.0), Some(3));
}

#[test]
fn deadline_without_cause_reports_the_error() {
    static CLOCK: ManualClock = ManualClock::new();
    let (ctx, _h) = Context::with_timer(&CLOCK).with_timeout(ms(1));
    CLOCK.advance(ms(1));
    assert_eq!(ctx.cause().unwrap().as_error(), Some(Error::DeadlineExceeded));
}

#[test]
fn deadline_cause_is_ignored_when_the_parent_deadline_is_earlier() {
    // Go: WithDeadlineCause returns WithCancel(parent) when the parent's
    // deadline is earlier, so the parent's cause is what is reported.
    static CLOCK: ManualClock = ManualClock::new();
    let root = Context::with_timer(&CLOCK);
    let (p, _hp) = root.with_deadline(at(10));
    let (c, _hc) = p.with_deadline_cause(at(20), "mine");
    assert_eq!(c.deadline(), Some(at(10)));
    CLOCK.advance(ms(10));
    assert_eq!(c.err(), Some(Error::DeadlineExceeded));
    assert_eq!(c.cause().unwrap().as_error(), Some(Error::DeadlineExceeded));
}

#[test]
fn deadline_in_the_past_is_done_at_once() {
    static CLOCK: ManualClock = ManualClock::new();
    let root = Context::with_timer(&CLOCK);
    CLOCK.advance(ms(100));
    let (past, _h1) = root.with_deadline(at(50));
    assert_eq!(past.err(), Some(Error::DeadlineExceeded));
    let (now, _h2) = root.with_deadline(at(100));
    assert_eq!(
        now.err(),
        Some(Error::DeadlineExceeded),
        "a deadline equal to now has passed"
    );
    let (zero, _h3) = root.with_timeout(Duration::ZERO);
    assert_eq!(zero.err(), Some(Error::DeadlineExceeded));
    let (caused, _h4) = root.with_deadline_cause(Instant::ZERO, "late");
    assert_eq!(caused.cause().unwrap().as_str(), Some("late"));
    let (tc, _h5) = root.with_timeout_cause(Duration::ZERO, "no budget");
    assert_eq!(cause_str(&tc).as_deref(), Some("no budget"));
    // after-funcs on a born-expired context run at once.
    let (runs, f) = counter();
    past.after_func(f);
    assert_eq!(count(&runs), 1);
    assert_eq!(CLOCK.armed(), 0, "an expired deadline arms nothing");
    assert!(!root.is_done());
}

#[test]
fn deadline_in_the_past_on_the_default_timer() {
    let (ctx, _h) = Context::background().with_deadline(Instant::ZERO);
    assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
    assert_eq!(block_on(ctx.done()), Error::DeadlineExceeded);
    let (ctx, _h) = Context::background().with_timeout(Duration::ZERO);
    assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
}

#[test]
fn timeout_is_now_plus_duration() {
    static CLOCK: ManualClock = ManualClock::new();
    let root = Context::with_timer(&CLOCK);
    CLOCK.advance(ms(1000));
    let (ctx, _h) = root.with_timeout(ms(30));
    assert_eq!(ctx.deadline(), Some(at(1030)));
    CLOCK.advance(ms(30) - Duration::from_nanos(1));
    assert!(!ctx.is_done());
    CLOCK.advance(Duration::from_nanos(1));
    assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
}

#[test]
fn huge_timeouts_saturate_and_never_panic() {
    static CLOCK: ManualClock = ManualClock::new();
    let root = Context::with_timer(&CLOCK);
    let (a, _ha) = root.with_timeout(Duration::MAX);
    let (b, _hb) = Context::background().with_timeout(Duration::MAX);
    let (c, _hc) = Context::background().with_timeout_cause(Duration::MAX, "never");
    let (d, _hd) = root.with_deadline(Instant::MAX);
    for ctx in [&a, &b, &c, &d] {
        assert!(!ctx.is_done());
        assert!(matches!(ctx.deadline(), None | Some(Instant::MAX)));
    }
    CLOCK.advance(Duration::from_secs(1_000_000));
    assert!(!a.is_done() && !d.is_done());
    // Near the end of time: still saturates.
    CLOCK.set(Instant::MAX - Duration::from_secs(1));
    let (e, _he) = root.with_timeout(Duration::from_secs(3600));
    assert!(e
        .deadline()
        .is_none_or(|dl| dl >= Instant::MAX - Duration::from_secs(1)));
    assert!(b.wait_blocking_timeout(Duration::ZERO).is_none());
}

#[test]
fn deadline_vs_cancel_first_wins() {
    static CLOCK: ManualClock = ManualClock::new();
    let root = Context::with_timer(&CLOCK);

    let (ctx, h) = root.with_deadline_cause(at(10), "deadline");
    wait_on(&ctx);
    h.cancel_with("cancelled first");
    CLOCK.set(at(10));
    assert_eq!(ctx.err(), Some(Error::Canceled));
    assert_eq!(cause_str(&ctx).as_deref(), Some("cancelled first"));

    // Waited on, so armed, so fired by the clock (a deadline nobody waits
    // on fires when observed: a cancel that comes first wins then).
    let (ctx, h) = root.with_deadline_cause(at(20), "deadline first");
    wait_on(&ctx);
    CLOCK.set(at(20));
    h.cancel_with("too late");
    assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
    assert_eq!(cause_str(&ctx).as_deref(), Some("deadline first"));

    // The parent is cancelled before the child's own deadline.
    let (p, hp) = root.with_cancel();
    let (c, _hc) = p.with_deadline(at(30));
    hp.cancel_with("parent");
    CLOCK.set(at(30));
    assert_eq!(c.err(), Some(Error::Canceled));
    assert_eq!(cause_str(&c).as_deref(), Some("parent"));
    assert_eq!(CLOCK.armed(), 0);
}

#[test]
fn after_func_fires_on_deadline() {
    static CLOCK: ManualClock = ManualClock::new();
    let (ctx, _h) = Context::with_timer(&CLOCK).with_timeout(ms(5));
    let seen = Arc::new(Mutex::new(None));
    let (s, c) = (seen.clone(), ctx.clone());
    let af = ctx.after_func(move || *s.lock().unwrap() = Some((c.err(), thread::current().id())));
    CLOCK.advance(ms(4));
    assert_eq!(*seen.lock().unwrap(), None);
    CLOCK.advance(ms(1));
    // ManualClock fires on the thread that advances it.
    assert_eq!(
        *seen.lock().unwrap(),
        Some((Some(Error::DeadlineExceeded), thread::current().id()))
    );
    assert!(!af.stop());
}

#[test]
fn done_future_is_woken_by_deadline() {
    static CLOCK: ManualClock = ManualClock::new();
    let (ctx, _h) = Context::with_timer(&CLOCK).with_timeout(ms(5));
    let flag = Flag::new();
    let w = waker_of(&flag);
    let mut done = pin!(ctx.done());
    assert!(poll_with(done.as_mut(), &w).is_pending());
    CLOCK.advance(ms(5));
    assert!(flag.woken());
    assert_eq!(poll_with(done.as_mut(), &w), Poll::Ready(Error::DeadlineExceeded));
    assert!(done.is_terminated());
}

#[test]
fn run_reports_deadline_exceeded() {
    static CLOCK: ManualClock = ManualClock::new();
    let (ctx, _h) = Context::with_timer(&CLOCK).with_timeout(ms(5));
    let flag = Flag::new();
    let w = waker_of(&flag);
    let mut run = pin!(ctx.run(futures::future::pending::<()>()));
    assert!(poll_with(run.as_mut(), &w).is_pending());
    CLOCK.advance(ms(5));
    assert!(flag.woken());
    assert_eq!(poll_with(run.as_mut(), &w), Poll::Ready(Err(Error::DeadlineExceeded)));
}

/// Something waits on `ctx`'s deadline (an after-func, kept running): the
/// deadline's owner is armed now, not at creation (node invariant 20).
fn wait_on(ctx: &Context) {
    drop(ctx.after_func(|| {}));
}

#[test]
fn timer_entries_are_released_when_contexts_go_away() {
    static CLOCK: ManualClock = ManualClock::new();
    let root = Context::with_timer(&CLOCK);
    let (p, hp) = root.with_timeout(ms(100));
    assert_eq!(CLOCK.armed(), 0, "nothing waits on it: nothing armed");
    wait_on(&p);
    assert_eq!(CLOCK.armed(), 1);
    let (later, _h1) = p.with_timeout(ms(200)); // inherits: arms its owner
    wait_on(&later);
    assert_eq!(CLOCK.armed(), 1);
    let (a, ha) = p.with_timeout(ms(10));
    let (b, hb) = p.with_timeout(ms(20));
    wait_on(&a);
    {
        // A waiter that goes away: the entry stays armed (once per node),
        // but it holds no reference, unlike an after-func.
        let mut d = pin!(b.done());
        assert!(poll_with(d.as_mut(), &waker_of(&Flag::new())).is_pending());
    }
    assert_eq!(CLOCK.armed(), 3);
    ha.cancel();
    assert_eq!(CLOCK.armed(), 2, "cancel disarms");
    drop(a);
    hb.detach();
    drop(b);
    assert_eq!(CLOCK.armed(), 1, "a dropped, detached deadline child disarms");
    // A detached child kept alive stays armed until it fires.
    let (c, hc) = p.with_timeout(ms(30));
    hc.detach();
    wait_on(&c);
    assert_eq!(CLOCK.armed(), 2);
    CLOCK.advance(ms(30));
    assert_eq!(c.err(), Some(Error::DeadlineExceeded));
    assert_eq!(CLOCK.armed(), 1);
    hp.cancel();
    assert_eq!(CLOCK.armed(), 0, "parent cancel disarms the whole subtree");
    drop((p, c, root));
    assert_eq!(CLOCK.armed(), 0);
}

#[test]
fn cancelled_subtree_disarms_every_deadline() {
    static CLOCK: ManualClock = ManualClock::new();
    let (root, h) = Context::with_timer(&CLOCK).with_cancel();
    let n = scale(200, 20);
    let mut kids = Vec::new();
    for i in 0..n {
        kids.push(root.with_timeout(ms(10 + i as u64)));
        wait_on(&kids[i].0);
    }
    assert_eq!(CLOCK.armed(), n);
    h.cancel();
    assert_eq!(CLOCK.armed(), 0);
    assert!(kids.iter().all(|(k, _)| k.err() == Some(Error::Canceled)));
}

#[test]
fn without_cancel_in_a_timer_tree_keeps_the_timer() {
    static CLOCK: ManualClock = ManualClock::new();
    let (ctx, h) = Context::with_timer(&CLOCK).with_timeout(ms(10));
    let detached = ctx.without_cancel();
    assert_eq!(detached.deadline(), None);
    let (child, _hc) = detached.with_timeout(ms(50));
    assert_eq!(child.deadline(), Some(at(50)));
    CLOCK.advance(ms(10));
    assert!(ctx.is_done());
    assert!(!detached.is_done());
    assert!(!child.is_done());
    CLOCK.advance(ms(40));
    assert_eq!(child.err(), Some(Error::DeadlineExceeded));
    drop(h);
    assert!(!detached.is_done());
}

#[test]
fn many_deadlines_fire_in_one_advance() {
    static CLOCK: ManualClock = ManualClock::new();
    let root = Context::with_timer(&CLOCK);
    let n = scale(300, 40);
    let (runs, _) = counter();
    let kids: Vec<_> = (0..n)
        .map(|i| {
            let (c, h) = root.with_timeout(Duration::from_micros(i as u64 + 1));
            let r = runs.clone();
            c.after_func(move || {
                r.fetch_add(1, Ordering::SeqCst);
            });
            (c, h)
        })
        .collect();
    CLOCK.advance(ms(1));
    assert_eq!(count(&runs), n);
    assert!(kids.iter().all(|(c, _)| c.err() == Some(Error::DeadlineExceeded)));
    assert_eq!(CLOCK.armed(), 0);
}

// ---------------------------------------------------------------------------
// Deadlines are exact when observed (property 5), deterministically

#[test]
fn err_is_exact_before_any_timer_fires() {
    static CLOCK: FrozenClock = FrozenClock::new();
    let root = Context::with_timer(&CLOCK);
    let (ctx, _h) = root.with_deadline_cause(at(10), "exact");
    let (child, _hc) = ctx.with_cancel();
    let (grandchild, _hg) = child.with_value(&NAME, "g").with_cancel();
    assert_eq!(CLOCK.arms.load(Ordering::SeqCst), 0, "nothing waits yet");
    let flag = Flag::new();
    let w = waker_of(&flag);
    let mut done = pin!(grandchild.done());
    assert!(poll_with(done.as_mut(), &w).is_pending());
    assert_eq!(
        CLOCK.arms.load(Ordering::SeqCst),
        1,
        "the grandchild's waiter armed the owner"
    );
    CLOCK.set(at(10));
    // Nothing fired, but every observer sees the deadline.
    assert_eq!(grandchild.err(), Some(Error::DeadlineExceeded));
    assert_eq!(cause_str(&grandchild).as_deref(), Some("exact"));
    assert!(child.is_done());
    assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
    assert_eq!(ctx.cause().unwrap().as_str(), Some("exact"));
    // Observing it cancelled the owner, which woke the waiter.
    assert!(flag.woken());
    assert_eq!(poll_with(done.as_mut(), &w), Poll::Ready(Error::DeadlineExceeded));
    assert!(!root.is_done());
}

#[test]
fn each_observer_notices_a_passed_deadline() {
    static CLOCK: FrozenClock = FrozenClock::new();
    let root = Context::with_timer(&CLOCK);
    // is_done, cause, done() and after_func, each first to look.
    let (a, _ha) = root.with_deadline(at(5));
    let (b, _hb) = root.with_deadline(at(5));
    let (c, _hc) = root.with_deadline(at(5));
    let (d, _hd) = root.with_deadline(at(5));
    let (e, _he) = root.with_deadline(at(5));
    CLOCK.set(at(5));
    assert!(a.is_done());
    assert_eq!(a.err(), Some(Error::DeadlineExceeded));
    assert_eq!(b.cause().unwrap().as_error(), Some(Error::DeadlineExceeded));
    assert_eq!(block_on(c.done()), Error::DeadlineExceeded);
    let (runs, f) = counter();
    d.after_func(f);
    assert_eq!(count(&runs), 1, "after_func on an expired context runs at once");
    assert_eq!(
        block_on(e.run(futures::future::pending::<()>())),
        Err(Error::DeadlineExceeded)
    );
    // A child created under an expired-but-unfired parent is born done.
    let (p, _hp) = root.with_deadline(at(100));
    CLOCK.set(at(100));
    let (born, _hborn) = p.with_cancel();
    assert_eq!(born.err(), Some(Error::DeadlineExceeded));
    let any = Context::any([&Context::background(), &p]);
    assert_eq!(any.err(), Some(Error::DeadlineExceeded));
}

#[test]
#[cfg_attr(miri, ignore)]
fn exact_deadline_with_the_std_timer() {
    let (ctx, _h) = Context::background().with_timeout(ms(1));
    let (child, _hc) = ctx.with_cancel();
    thread::sleep(ms(5));
    // Whether or not the timer thread has fired yet, the deadline passed.
    assert_eq!(child.err(), Some(Error::DeadlineExceeded));
    assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
}

// ---------------------------------------------------------------------------
// Values

static NAME: Key<&'static str> = Key::new("name");
static COUNT: Key<u64> = Key::new("count");
static COUNT_TWIN: Key<u64> = Key::new("count"); // same name and type, different key
static OWNED: Key<String> = Key::new("owned");

#[test]
fn values_nearest_wins_and_parents_are_untouched() {
    let base = Context::background().with_value(&NAME, "outer").with_value(&COUNT, 1);
    let inner = base.with_value(&NAME, "inner");
    assert_eq!(inner.value(&NAME), Some(&"inner"));
    assert_eq!(inner.value(&COUNT), Some(&1));
    assert_eq!(base.value(&NAME), Some(&"outer"));
    assert_eq!(Context::background().value(&NAME), None);
    assert_eq!(NAME.name(), "name");
}

#[test]
fn keys_with_the_same_name_and_type_do_not_collide() {
    let ctx = Context::background().with_value(&COUNT, 1);
    assert_eq!(ctx.value(&COUNT_TWIN), None);
    let ctx = ctx.with_value(&COUNT_TWIN, 2);
    assert_eq!(ctx.value(&COUNT), Some(&1));
    assert_eq!(ctx.value(&COUNT_TWIN), Some(&2));
    // A key local to a function is private to it.
    fn private(ctx: &Context) -> Context {
        static SECRET: Key<u64> = Key::new("count");
        assert_eq!(ctx.value(&SECRET), None);
        ctx.with_value(&SECRET, 99)
    }
    let ctx = private(&ctx);
    assert_eq!(ctx.value(&COUNT), Some(&1));
    assert_eq!(ctx.value(&COUNT_TWIN), Some(&2));
}

#[test]
fn values_flow_through_every_kind_of_child_and_survive_cancel() {
    static CLOCK: ManualClock = ManualClock::new();
    let root = Context::with_timer(&CLOCK).with_value(&OWNED, "req-1".to_string());
    let (c, h) = root.with_cancel();
    let (d, _hd) = c.with_timeout(ms(5));
    let (e, _he) = d.with_deadline_cause(at(3), "x");
    let w = e.without_cancel();
    let any = Context::any([&e, &root]);
    h.cancel();
    CLOCK.advance(ms(10));
    for ctx in [&c, &d, &e, &w, &any] {
        assert_eq!(ctx.value(&OWNED).map(String::as_str), Some("req-1"));
    }
}

#[test]
fn values_are_dropped_with_the_last_context() {
    struct Tracked(Arc<AtomicUsize>);
    impl Drop for Tracked {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    static TRACKED: Key<Tracked> = Key::new("tracked");
    let drops = Arc::new(AtomicUsize::new(0));
    let ctx = Context::background().with_value(&TRACKED, Tracked(drops.clone()));
    let (child, h) = ctx.with_cancel();
    let detached = child.without_cancel();
    drop(ctx);
    drop(child);
    drop(h);
    assert_eq!(count(&drops), 0);
    assert!(detached.value(&TRACKED).is_some());
    drop(detached);
    assert_eq!(count(&drops), 1);
}

#[test]
fn long_value_chains_drop_without_recursion() {
    let n = scale(100_000, 200);
    let mut ctx = Context::background();
    for i in 0..n {
        ctx = ctx.with_value(&COUNT, i as u64);
    }
    assert_eq!(ctx.value(&COUNT), Some(&(n as u64 - 1)));
    assert_eq!(ctx.value(&NAME), None);
    drop(ctx);
}

// ---------------------------------------------------------------------------
// AfterFunc

#[test]
fn after_func_runs_once_after_cancel() {
    let (parent, hp) = Context::background().with_cancel();
    let (ctx, h) = parent.with_cancel();
    let (runs, f) = counter();
    let af = ctx.after_func(f);
    assert_eq!(count(&runs), 0);
    h.cancel();
    assert_eq!(count(&runs), 1);
    h.cancel();
    hp.cancel();
    assert_eq!(count(&runs), 1);
    assert!(!af.stop(), "stop after the run prevents nothing");
    assert!(!af.stop());
}

#[test]
fn after_func_sees_the_context_done() {
    let (ctx, h) = Context::background().with_cancel();
    let seen = Arc::new(Mutex::new(None));
    let (s, c) = (seen.clone(), ctx.clone());
    ctx.after_func(move || *s.lock().unwrap() = Some((c.err(), c.cause().map(|x| x.to_string()))));
    h.cancel_with("why");
    assert_eq!(
        *seen.lock().unwrap(),
        Some((Some(Error::Canceled), Some("why".to_string())))
    );
}

#[test]
fn after_func_runs_at_once_on_a_done_context() {
    let (ctx, h) = Context::background().with_cancel();
    h.cancel();
    let (runs, f) = counter();
    let af = ctx.after_func(f);
    assert_eq!(count(&runs), 1, "ran before after_func returned");
    assert!(!af.stop());
}

#[test]
fn stop_returns_true_iff_it_prevented_the_run_and_is_idempotent() {
    let (ctx, h) = Context::background().with_cancel();
    let (runs, f) = counter();
    let af = ctx.after_func(f);
    assert!(af.stop());
    assert!(!af.stop());
    assert!(!af.stop());
    h.cancel();
    assert_eq!(count(&runs), 0);
    assert!(!af.stop());
}

#[test]
fn dropping_an_after_func_does_not_stop_it() {
    let (ctx, h) = Context::background().with_cancel();
    let (runs, f) = counter();
    drop(ctx.after_func(f));
    drop(ctx);
    h.cancel();
    assert_eq!(count(&runs), 1);
}

#[test]
fn after_func_on_background_never_runs() {
    let (runs, f) = counter();
    let af = Context::background().after_func(f);
    assert!(af.stop(), "the first stop prevents the (never) run");
    assert!(!af.stop());
    let (runs2, f2) = counter();
    drop(Context::todo().after_func(f2));
    let (runs3, f3) = counter();
    let (ctx, h) = Context::background().with_cancel();
    let detached = ctx.without_cancel();
    let af3 = detached.after_func(f3);
    h.cancel();
    assert_eq!(count(&runs) + count(&runs2) + count(&runs3), 0);
    assert!(af3.stop());
}

#[test]
fn after_func_on_never_done_roots_never_runs() {
    static CLOCK: ManualClock = ManualClock::new();
    let root = Context::with_timer(&CLOCK);
    let (runs, f) = counter();
    let af = root.after_func(f);
    let (runs2, f2) = counter();
    let detached = root.without_cancel();
    let af2 = detached.after_func(f2);
    let (runs3, f3) = counter();
    let af3 = Context::any([&root, &detached]).after_func(f3);
    CLOCK.advance(Duration::from_secs(3600));
    assert_eq!(count(&runs) + count(&runs2) + count(&runs3), 0);
    for af in [&af, &af2, &af3] {
        assert!(af.stop(), "the first stop prevents the (never) run");
        assert!(!af.stop());
    }
    // A child of a never-done root can be done: its after-funcs run.
    let (child, h) = root.with_cancel();
    let (runs4, f4) = counter();
    child.after_func(f4);
    h.cancel();
    assert_eq!(count(&runs4), 1);
}

#[test]
fn after_func_keeps_running_when_everything_else_is_dropped() {
    // The after-func keeps its context reachable from the parent.
    let (parent, hp) = Context::background().with_cancel();
    let (ctx, h) = parent.with_cancel();
    let (runs, f) = counter();
    drop(ctx.after_func(f));
    h.detach();
    drop(ctx);
    assert_eq!(count(&runs), 0);
    hp.cancel();
    assert_eq!(count(&runs), 1);

    // Dropping the handle is a cancel: the after-func runs.
    let (ctx, h) = Context::background().with_cancel();
    let (runs, f) = counter();
    drop(ctx.after_func(f));
    drop(ctx);
    drop(h);
    assert_eq!(count(&runs), 1);
}

#[test]
fn many_after_funcs_all_run_exactly_once() {
    let n = scale(500, 70); // more than one wake batch
    let (ctx, h) = Context::background().with_cancel();
    let (runs, _) = counter();
    let mut stopped = 0;
    let afs: Vec<_> = (0..n)
        .map(|_| {
            let r = runs.clone();
            ctx.after_func(move || {
                r.fetch_add(1, Ordering::SeqCst);
            })
        })
        .collect();
    for af in afs.iter().step_by(3) {
        assert!(af.stop());
        stopped += 1;
    }
    h.cancel();
    assert_eq!(count(&runs), n - stopped);
    assert!(afs.iter().all(|af| !af.stop()));
}

#[test]
fn after_func_may_cancel_register_and_stop_from_inside() {
    let (a, ha) = Context::background().with_cancel();
    let (b, hb) = Context::background().with_cancel();
    let (runs, f) = counter();
    b.after_func(f);
    let b2 = b.clone();
    let (inner_runs, inner_f) = counter();
    let hb = Mutex::new(Some(hb));
    a.after_func(move || {
        // Cancel another tree from inside a callback.
        hb.lock().unwrap().take().unwrap().cancel_with("from a");
        // Register on a done context from inside a callback: runs at once.
        let af = b2.after_func(inner_f);
        assert!(!af.stop());
    });
    ha.cancel();
    assert_eq!(count(&runs), 1);
    assert_eq!(count(&inner_runs), 1);
    assert_eq!(cause_str(&b).as_deref(), Some("from a"));

    // An after-func may stop another after-func of the same context.
    let (ctx, h) = Context::background().with_cancel();
    let (late_runs, late_f) = counter();
    let slot: Arc<Mutex<Option<ctxcore::AfterFunc>>> = Arc::new(Mutex::new(None));
    let s = slot.clone();
    let stopped = Arc::new(Mutex::new(None));
    let st = stopped.clone();
    ctx.after_func(move || {
        *st.lock().unwrap() = Some(s.lock().unwrap().as_ref().unwrap().stop());
    });
    *slot.lock().unwrap() = Some(ctx.after_func(late_f));
    h.cancel();
    // Either it already ran (false) or we stopped it (true); never both.
    let stopped = stopped.lock().unwrap().expect("the first after-func ran");
    assert_eq!(count(&late_runs), if stopped { 0 } else { 1 });
}

// ---------------------------------------------------------------------------
// WithoutCancel

#[test]
fn without_cancel_keeps_values_and_is_never_done() {
    let (ctx, h) = base().with_value(&NAME, "kept").with_timeout(Duration::from_secs(3600));
    let detached = ctx.without_cancel();
    assert_eq!(detached.deadline(), None);
    assert_eq!(detached.value(&NAME), Some(&"kept"));
    h.cancel_with("parent");
    assert!(ctx.is_done());
    assert!(!detached.is_done());
    assert_eq!(detached.err(), None);
    assert!(detached.cause().is_none());
    let (child, hc) = detached.with_cancel();
    assert!(!child.is_done());
    hc.cancel();
    assert!(child.is_done());
    assert!(!detached.is_done());
    // WithoutCancel of a done context is not done.
    assert!(!ctx.without_cancel().is_done());
}

// ---------------------------------------------------------------------------
// Context::any

#[test]
fn any_of_nothing_is_never_done() {
    let none: [&Context; 0] = [];
    let any = Context::any(none);
    assert!(!any.is_done());
    assert_eq!(any.deadline(), None);
    let any = Context::any([&Context::background(), &Context::todo()]);
    assert!(!any.is_done());
    let (runs, f) = counter();
    assert!(any.after_func(f).stop());
    assert_eq!(count(&runs), 0);
}

#[test]
fn any_is_done_with_the_first_parent_to_be_done() {
    let (a, ha) = Context::background().with_cancel();
    let (b, hb) = Context::background().with_cancel();
    let any = Context::any([&a, &b]);
    let (child, _hc) = any.with_cancel();
    assert!(!any.is_done());
    hb.cancel_with("b first");
    assert_eq!(any.err(), Some(Error::Canceled));
    assert_eq!(cause_str(&any).as_deref(), Some("b first"));
    assert_eq!(cause_str(&child).as_deref(), Some("b first"));
    ha.cancel_with("a later");
    assert_eq!(cause_str(&any).as_deref(), Some("b first"));
    assert!(Context::any([&a, &b]).err().is_some());
}

#[test]
fn any_does_not_cancel_its_parents() {
    let (a, _ha) = Context::background().with_cancel();
    let (b, _hb) = Context::background().with_cancel();
    let any = Context::any([&a, &b]);
    let (child, hc) = any.with_cancel();
    hc.cancel();
    assert!(child.is_done());
    assert!(!any.is_done() && !a.is_done() && !b.is_done());
}

#[test]
fn any_with_an_already_done_parent_is_born_done() {
    let (a, _ha) = Context::background().with_cancel();
    let (b, hb) = Context::background().with_cancel();
    hb.cancel_with("b was done");
    let any = Context::any([&a, &b]);
    assert_eq!(any.err(), Some(Error::Canceled));
    assert_eq!(cause_str(&any).as_deref(), Some("b was done"));
    let (runs, f) = counter();
    any.after_func(f);
    assert_eq!(count(&runs), 1);

    // Two done parents: the first in order wins (AbortSignal.any).
    let (c, hc) = Context::background().with_cancel();
    hc.cancel_with("c");
    let any = Context::any([&c, &b]);
    assert_eq!(cause_str(&any).as_deref(), Some("c"));
    let any = Context::any([&b, &c]);
    assert_eq!(cause_str(&any).as_deref(), Some("b was done"));
}

#[test]
fn any_takes_the_earliest_deadline_and_its_cause() {
    static CLOCK: ManualClock = ManualClock::new();
    let root = Context::with_timer(&CLOCK);
    let (late, _hl) = root.with_deadline_cause(at(50), "late");
    let (early, _he) = root.with_deadline_cause(at(20), "early");
    let (none, _hn) = root.with_cancel();
    let any = Context::any([&none, &late, &early]);
    assert_eq!(any.deadline(), Some(at(20)));
    let (child, _hc) = any.with_timeout(ms(100));
    assert_eq!(child.deadline(), Some(at(20)));
    CLOCK.advance(ms(20));
    assert_eq!(any.err(), Some(Error::DeadlineExceeded));
    assert_eq!(cause_str(&any).as_deref(), Some("early"));
    assert_eq!(child.err(), Some(Error::DeadlineExceeded));
    assert!(!late.is_done() && !none.is_done());
}

#[test]
fn any_deadline_is_exact_before_the_timer_fires() {
    static CLOCK: FrozenClock = FrozenClock::new();
    let root = Context::with_timer(&CLOCK);
    let (a, _ha) = root.with_cancel();
    let (b, _hb) = root.with_deadline_cause(at(7), "b's deadline");
    let any = Context::any([&a, &b]);
    CLOCK.set(at(7));
    assert_eq!(any.err(), Some(Error::DeadlineExceeded));
    assert_eq!(cause_str(&any).as_deref(), Some("b's deadline"));
    assert!(b.is_done());
    assert!(!a.is_done());
}

#[test]
fn any_values_come_from_the_first_parent() {
    let a = Context::background().with_value(&NAME, "a");
    let (b, _hb) = Context::background()
        .with_value(&NAME, "b")
        .with_value(&COUNT, 2)
        .with_cancel();
    let any = Context::any([&a, &b]);
    assert_eq!(any.value(&NAME), Some(&"a"));
    assert_eq!(any.value(&COUNT), None);
    let any = Context::any([&b, &a]);
    assert_eq!(any.value(&NAME), Some(&"b"));
    assert_eq!(any.value(&COUNT), Some(&2));
}

#[test]
fn any_of_any_duplicates_and_dropped_parents() {
    let (root, hr) = Context::background().with_cancel();
    let (a, ha) = root.with_cancel();
    let (b, hb) = root.with_cancel();
    let dup = Context::any([&a, &a, &a]);
    let inner = Context::any([&a, &b]);
    let outer = Context::any([&inner, &dup]);
    let (leaf, _hl) = outer.with_cancel();
    // The parents' own contexts and handles go away; the any nodes keep
    // them reachable from the root.
    ha.detach();
    hb.detach();
    drop((a, b, inner, dup));
    assert!(!outer.is_done());
    hr.cancel_with("root");
    assert_eq!(cause_str(&outer).as_deref(), Some("root"));
    assert_eq!(cause_str(&leaf).as_deref(), Some("root"));
}

#[test]
fn dropping_an_any_leaves_its_parents_intact() {
    static CLOCK: ManualClock = ManualClock::new();
    let root = Context::with_timer(&CLOCK);
    let (a, ha) = root.with_timeout(ms(10));
    let (b, _hb) = root.with_cancel();
    for _ in 0..scale(100, 10) {
        let any = Context::any([&a, &b]);
        let (c, _hc) = any.with_cancel();
        drop((any, c));
    }
    let (runs, f) = counter();
    Context::any([&b, &a]).after_func(f);
    ha.cancel();
    assert_eq!(count(&runs), 1);
    assert!(!b.is_done());
    assert_eq!(CLOCK.armed(), 0);
}

#[test]
fn any_wakes_waiters() {
    let (a, _ha) = Context::background().with_cancel();
    let (b, hb) = Context::background().with_cancel();
    let any = Context::any([&a, &b]);
    let flag = Flag::new();
    let w = waker_of(&flag);
    let mut done = pin!(any.done());
    assert!(poll_with(done.as_mut(), &w).is_pending());
    hb.cancel();
    assert!(flag.woken());
    assert_eq!(poll_with(done.as_mut(), &w), Poll::Ready(Error::Canceled));
}

// ---------------------------------------------------------------------------
// done(), done_owned(), run() (single thread, deterministic)

#[test]
fn done_is_ready_at_once_on_a_done_context_and_fused() {
    let (ctx, h) = Context::background().with_cancel();
    h.cancel();
    assert_eq!(block_on(ctx.done()), Error::Canceled);
    assert_eq!(block_on(ctx.done_owned()), Error::Canceled);
    let flag = Flag::new();
    let w = waker_of(&flag);
    let mut d = pin!(ctx.done());
    assert!(!d.is_terminated());
    assert_eq!(poll_with(d.as_mut(), &w), Poll::Ready(Error::Canceled));
    assert!(d.is_terminated());
}

#[test]
fn done_registers_is_woken_once_and_uses_the_latest_waker() {
    let (ctx, h) = Context::background().with_cancel();
    let (first, second) = (Flag::new(), Flag::new());
    let mut d = pin!(ctx.done());
    assert!(poll_with(d.as_mut(), &waker_of(&first)).is_pending());
    assert!(poll_with(d.as_mut(), &waker_of(&first)).is_pending());
    assert!(poll_with(d.as_mut(), &waker_of(&second)).is_pending());
    h.cancel();
    assert!(second.woken(), "the waker of the latest poll is woken");
    h.cancel();
    assert_eq!(second.wakes.load(Ordering::SeqCst), 1);
    assert_eq!(poll_with(d.as_mut(), &waker_of(&second)), Poll::Ready(Error::Canceled));
}

#[test]
fn many_waiters_are_all_woken() {
    let n = scale(300, 70); // more than one wake batch
    let (ctx, h) = Context::background().with_cancel();
    let (child, _hc) = ctx.with_cancel();
    let flags: Vec<_> = (0..n).map(|_| Flag::new()).collect();
    let mut futs: Vec<Pin<Box<ctxcore::Done<'_>>>> = (0..n)
        .map(|i| {
            if i % 2 == 0 {
                Box::pin(ctx.done())
            } else {
                Box::pin(child.done())
            }
        })
        .collect();
    let mut owned: Vec<Pin<Box<ctxcore::DoneOwned>>> = (0..n).map(|_| Box::pin(child.done_owned())).collect();
    for (f, flag) in futs.iter_mut().zip(&flags) {
        assert!(poll_with(f.as_mut(), &waker_of(flag)).is_pending());
    }
    let owned_flag = Flag::new();
    for f in owned.iter_mut() {
        assert!(poll_with(f.as_mut(), &waker_of(&owned_flag)).is_pending());
    }
    // Drop some registered waiters before the cancel: the rest still wake.
    let dropped: Vec<_> = futs.drain(..n / 4).collect();
    drop(dropped);
    h.cancel();
    for flag in &flags[n / 4..] {
        assert!(flag.woken());
    }
    assert_eq!(owned_flag.wakes.load(Ordering::SeqCst), n);
    for f in futs.iter_mut() {
        assert_eq!(
            poll_with(f.as_mut(), &waker_of(&flags[0])),
            Poll::Ready(Error::Canceled)
        );
    }
}

#[test]
fn done_future_dropped_while_registered_or_never_polled() {
    let (ctx, h) = Context::background().with_cancel();
    {
        let mut d = pin!(ctx.done());
        assert!(poll_with(d.as_mut(), &waker_of(&Flag::new())).is_pending());
    }
    drop(ctx.done());
    drop(ctx.done_owned());
    let owned = ctx.done_owned();
    drop(ctx);
    h.cancel();
    assert_eq!(block_on(owned), Error::Canceled);
}

#[test]
fn done_owned_outlives_every_other_reference() {
    let (ctx, h) = Context::background().with_cancel();
    let mut owned = Box::pin(ctx.done_owned());
    let flag = Flag::new();
    assert!(poll_with(owned.as_mut(), &waker_of(&flag)).is_pending());
    drop(ctx);
    drop(h); // cancels
    assert!(flag.woken());
    assert_eq!(
        poll_with(owned.as_mut(), &waker_of(&flag)),
        Poll::Ready(Error::Canceled)
    );
    assert!(owned.is_terminated());
}

#[test]
fn done_works_with_select() {
    let (ctx, h) = Context::background().with_cancel();
    h.cancel();
    let got = block_on(async {
        let mut done = pin!(ctx.done());
        let mut never = futures::future::pending::<()>();
        futures::select! {
            e = done => Some(e),
            _ = never => None,
        }
    });
    assert_eq!(got, Some(Error::Canceled));
}

#[test]
fn run_returns_output_or_error_and_drops_the_future() {
    let (ctx, h) = Context::background().with_cancel();
    assert_eq!(block_on(ctx.run(async { "out" })), Ok("out"));

    struct DropFlag(Arc<AtomicBool>);
    impl Drop for DropFlag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let dropped = Arc::new(AtomicBool::new(false));
    let guard = DropFlag(dropped.clone());
    let fut = async move {
        let _g = guard;
        futures::future::pending::<()>().await
    };
    let flag = Flag::new();
    let w = waker_of(&flag);
    let mut run = pin!(ctx.run(fut));
    assert!(poll_with(run.as_mut(), &w).is_pending());
    assert!(!dropped.load(Ordering::SeqCst));
    h.cancel_with("stop");
    assert!(flag.woken());
    assert_eq!(poll_with(run.as_mut(), &w), Poll::Ready(Err(Error::Canceled)));
    assert!(dropped.load(Ordering::SeqCst), "the future is dropped at once");
    assert!(run.is_terminated());
}

#[test]
fn run_on_a_done_context_never_polls_the_future() {
    let (ctx, h) = Context::background().with_cancel();
    h.cancel();
    let polls = Arc::new(AtomicUsize::new(0));
    let p = polls.clone();
    let fut = futures::future::poll_fn(move |_| {
        p.fetch_add(1, Ordering::SeqCst);
        Poll::Ready(1)
    });
    assert_eq!(block_on(ctx.run(fut)), Err(Error::Canceled));
    assert_eq!(count(&polls), 0);
}

// ---------------------------------------------------------------------------
// Blocking waits

#[test]
fn wait_blocking_on_a_done_context_returns_at_once() {
    let (ctx, h) = Context::background().with_cancel();
    h.cancel();
    assert_eq!(ctx.wait_blocking(), Error::Canceled);
    assert_eq!(ctx.wait_blocking_timeout(Duration::ZERO), Some(Error::Canceled));
    assert_eq!(ctx.wait_blocking_timeout(Duration::MAX), Some(Error::Canceled));
}

#[test]
#[cfg_attr(miri, ignore)]
fn wait_blocking_timeout_expires_on_a_live_context() {
    let (ctx, _h) = Context::background().with_cancel();
    assert_eq!(ctx.wait_blocking_timeout(ms(2)), None);
    assert_eq!(Context::background().wait_blocking_timeout(ms(1)), None);
    assert!(!ctx.is_done());
}

#[test]
#[cfg_attr(miri, ignore)]
fn wait_blocking_is_woken_by_a_cancel_from_another_thread() {
    let (ctx, h) = Context::background().with_cancel();
    let (child, _hc) = ctx.with_cancel();
    let canceller = thread::spawn(move || {
        thread::sleep(ms(10));
        h.cancel_with("other thread");
    });
    assert_eq!(child.wait_blocking(), Error::Canceled);
    assert_eq!(cause_str(&child).as_deref(), Some("other thread"));
    canceller.join().unwrap();

    let (ctx, h) = Context::background().with_cancel();
    let canceller = thread::spawn(move || {
        thread::sleep(ms(10));
        drop(h);
    });
    assert_eq!(ctx.wait_blocking_timeout(Duration::MAX), Some(Error::Canceled));
    canceller.join().unwrap();
}

#[test]
#[cfg_attr(miri, ignore)]
fn wait_blocking_on_a_manual_clock_tree_is_woken_by_advance() {
    static CLOCK: ManualClock = ManualClock::new();
    let (ctx, _h) = Context::with_timer(&CLOCK).with_timeout(Duration::from_secs(3600));
    let c = ctx.clone();
    let waiter = thread::spawn(move || c.wait_blocking());
    let c = ctx.clone();
    let bounded = thread::spawn(move || c.wait_blocking_timeout(Duration::from_secs(30)));
    thread::sleep(ms(10));
    CLOCK.advance(Duration::from_secs(3600));
    assert_eq!(waiter.join().unwrap(), Error::DeadlineExceeded);
    assert_eq!(bounded.join().unwrap(), Some(Error::DeadlineExceeded));
}

#[test]
#[cfg_attr(miri, ignore)]
fn wait_blocking_sees_std_timer_deadlines() {
    let (ctx, _h) = Context::background().with_timeout(ms(5));
    let (child, _hc) = ctx.with_cancel();
    assert_eq!(child.wait_blocking(), Error::DeadlineExceeded);
    let (ctx, _h) = Context::background().with_timeout_cause(ms(5), "slow");
    assert_eq!(ctx.wait_blocking_timeout(ms(50_000)), Some(Error::DeadlineExceeded));
    assert_eq!(cause_str(&ctx).as_deref(), Some("slow"));
}

#[test]
#[cfg_attr(miri, ignore)]
fn std_timer_fires_after_funcs_and_wakes_futures() {
    let (ctx, _h) = Context::background().with_timeout(ms(5));
    let (tx, rx) = mpsc::channel();
    let c = ctx.clone();
    ctx.after_func(move || tx.send(c.err()).unwrap());
    assert_eq!(block_on(ctx.done()), Error::DeadlineExceeded);
    // The after-func runs on the timer thread (or here, if `done` observed
    // the deadline first); either way it runs exactly once.
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(10)),
        Ok(Some(Error::DeadlineExceeded))
    );
    assert!(rx.try_recv().is_err());
}

// ---------------------------------------------------------------------------
// Threads (tokio-util CancellationToken behaviour)

#[test]
#[cfg_attr(miri, ignore)]
fn cancel_from_another_thread_wakes_a_waiting_future() {
    let (ctx, h) = Context::background().with_cancel();
    let (child, _hc) = ctx.with_cancel();
    let t = thread::spawn(move || {
        thread::sleep(ms(10));
        h.cancel();
    });
    assert_eq!(block_on(child.done()), Error::Canceled);
    assert_eq!(
        block_on(child.run(futures::future::pending::<()>())),
        Err(Error::Canceled)
    );
    t.join().unwrap();
}

#[test]
#[cfg_attr(miri, ignore)]
fn done_owned_and_run_on_other_threads() {
    let (ctx, h) = Context::background().with_cancel();
    let pool = futures::executor::ThreadPool::builder().pool_size(2).create().unwrap();
    let (tx, rx) = mpsc::channel();
    for i in 0..8 {
        let tx = tx.clone();
        let done = ctx.done_owned();
        let run = ctx.run(futures::future::pending::<()>());
        pool.spawn_ok(async move {
            let e = done.await;
            let r = run.await;
            tx.send((i, e, r)).unwrap();
        });
    }
    drop(tx);
    thread::sleep(ms(10));
    h.cancel();
    let mut got: Vec<_> = rx.iter().collect();
    got.sort_by_key(|x| x.0);
    assert_eq!(got.len(), 8);
    assert!(got
        .iter()
        .all(|(_, e, r)| *e == Error::Canceled && *r == Err(Error::Canceled)));
}

#[test]
#[cfg_attr(miri, ignore)]
fn many_waiting_threads_are_all_woken() {
    let (ctx, h) = Context::background().with_cancel();
    let n = 16;
    let ready = Arc::new(Barrier::new(n + 1));
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let (c, _hc) = ctx.with_cancel();
            let ready = ready.clone();
            thread::spawn(move || {
                let _keep = _hc;
                ready.wait();
                if i % 2 == 0 {
                    c.wait_blocking()
                } else {
                    block_on(c.done())
                }
            })
        })
        .collect();
    ready.wait();
    thread::sleep(ms(5));
    h.cancel();
    for t in threads {
        assert_eq!(t.join().unwrap(), Error::Canceled);
    }
}

#[test]
fn handles_and_contexts_dropped_on_other_threads() {
    let (root, hr) = Context::background().with_cancel();
    let n = scale(16, 3);
    let pairs: Vec<_> = (0..n).map(|_| root.with_cancel()).collect();
    let witnesses: Vec<_> = pairs.iter().map(|(c, _)| c.clone()).collect();
    let threads: Vec<_> = pairs
        .into_iter()
        .enumerate()
        .map(|(i, (c, h))| {
            thread::spawn(move || {
                let (gc, hg) = c.with_cancel();
                if i % 2 == 0 {
                    drop(h);
                    assert!(gc.is_done());
                } else {
                    h.detach();
                }
                drop((c, hg, gc));
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    for (i, w) in witnesses.iter().enumerate() {
        assert_eq!(w.is_done(), i % 2 == 0);
    }
    drop(hr);
    assert!(witnesses.iter().all(Context::is_done));
}

#[test]
fn cancel_races_with_child_creation() {
    let rounds = scale(50, 2);
    let per_thread = scale(200, 4);
    for _ in 0..rounds {
        let (root, h) = base().with_cancel();
        let start = Arc::new(Barrier::new(3));
        let makers: Vec<_> = (0..2)
            .map(|_| {
                let root = root.clone();
                let start = start.clone();
                thread::spawn(move || {
                    start.wait();
                    (0..per_thread)
                        .map(|i| match i % 3 {
                            0 => root.with_cancel(),
                            1 => root.with_timeout(Duration::from_secs(3600)),
                            _ => {
                                let (c, h) = root.with_cancel();
                                let (gc, hg) = c.with_cancel();
                                h.detach();
                                (gc, hg)
                            }
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        start.wait();
        h.cancel_with("race");
        for m in makers {
            for (c, _h) in m.join().unwrap() {
                assert_eq!(c.err(), Some(Error::Canceled));
                assert_eq!(cause_str(&c).as_deref(), Some("race"));
            }
        }
    }
}

#[test]
fn cancel_races_with_drops_and_registration() {
    let rounds = scale(50, 2);
    for _ in 0..rounds {
        let (root, h) = Context::background().with_cancel();
        let kids: Vec<_> = (0..scale(64, 4)).map(|_| root.with_cancel()).collect();
        let (runs, _) = counter();
        let start = Arc::new(Barrier::new(3));
        let dropper = {
            let start = start.clone();
            thread::spawn(move || {
                start.wait();
                drop(kids);
            })
        };
        let registrar = {
            let start = start.clone();
            let root = root.clone();
            let runs = runs.clone();
            thread::spawn(move || {
                start.wait();
                let n = scale(64, 4);
                for _ in 0..n {
                    let r = runs.clone();
                    root.after_func(move || {
                        r.fetch_add(1, Ordering::SeqCst);
                    });
                }
                n
            })
        };
        start.wait();
        h.cancel();
        dropper.join().unwrap();
        let n = registrar.join().unwrap();
        assert_eq!(count(&runs), n, "every after-func ran exactly once");
    }
}

#[test]
fn concurrent_cancels_agree_on_one_winner() {
    let rounds = scale(50, 2);
    for _ in 0..rounds {
        let (root, h) = Context::background().with_cancel();
        let (child, hc) = root.with_cancel();
        let (leaf, _hl) = child.with_cancel();
        let h = Arc::new(h);
        let hc = Arc::new(hc);
        let start = Arc::new(Barrier::new(4));
        let threads: Vec<_> = (0..4)
            .map(|i| {
                let (h, hc, start) = (h.clone(), hc.clone(), start.clone());
                thread::spawn(move || {
                    start.wait();
                    let causes = ["t0", "t1", "t2", "t3"];
                    if i % 2 == 0 {
                        h.cancel_with(causes[i]);
                    } else {
                        hc.cancel_with(causes[i]);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let c = cause_str(&child).unwrap();
        assert_eq!(
            cause_str(&leaf).unwrap(),
            c,
            "the leaf reports its parent's winning cause"
        );
        assert!(["t0", "t1", "t2", "t3"].contains(&c.as_str()));
        let r = cause_str(&root).unwrap();
        assert!(r == "t0" || r == "t2");
    }
}

#[test]
fn stop_races_with_cancel_exactly_one_wins() {
    let rounds = scale(200, 3);
    for _ in 0..rounds {
        let (ctx, h) = Context::background().with_cancel();
        let (runs, f) = counter();
        let af = ctx.after_func(f);
        let canceller = thread::spawn(move || h.cancel());
        let stopped = af.stop();
        canceller.join().unwrap();
        assert!(ctx.is_done());
        assert_eq!(
            stopped,
            count(&runs) == 0,
            "stop returns true iff the callback did not and will not run"
        );
        assert!(count(&runs) <= 1);
    }
}

#[test]
fn waiter_registration_races_with_cancel() {
    let rounds = scale(100, 3);
    for _ in 0..rounds {
        let (ctx, h) = Context::background().with_cancel();
        let c = ctx.clone();
        let waiter = thread::spawn(move || {
            let flag = Flag::new();
            let w = waker_of(&flag);
            let mut d = pin!(c.done());
            match poll_with(d.as_mut(), &w) {
                Poll::Ready(e) => e,
                Poll::Pending => {
                    // No lost wake-up: the cancel must wake us.
                    while !flag.woken() {
                        thread::yield_now();
                    }
                    match poll_with(d.as_mut(), &w) {
                        Poll::Ready(e) => e,
                        Poll::Pending => panic!("woken but not done"),
                    }
                }
            }
        });
        h.cancel();
        assert_eq!(waiter.join().unwrap(), Error::Canceled);
    }
}

#[test]
fn deadline_fire_races_with_drop_on_manual_clock() {
    static CLOCK: ManualClock = ManualClock::new();
    let root = Context::with_timer(&CLOCK);
    let rounds = scale(100, 3);
    for i in 0..rounds {
        let (ctx, h) = root.with_timeout(ms(1));
        let dropper = thread::spawn(move || {
            if i % 2 == 0 {
                drop(h);
            } else {
                h.detach();
            }
            drop(ctx);
        });
        CLOCK.advance(ms(1));
        dropper.join().unwrap();
    }
    assert_eq!(CLOCK.armed(), 0);
}

#[test]
fn waiter_drop_races_with_cancel() {
    let rounds = scale(100, 3);
    for i in 0..rounds {
        let (ctx, h) = Context::background().with_cancel();
        let (child, _hc) = ctx.with_cancel();
        let start = Arc::new(Barrier::new(2));
        let s = start.clone();
        let t = thread::spawn(move || {
            let flag = Flag::new();
            let mut futs: Vec<_> = (0..4).map(|_| Box::pin(child.done_owned())).collect();
            for f in futs.iter_mut() {
                let _ = poll_with(f.as_mut(), &waker_of(&flag));
            }
            s.wait();
            // Drop registered futures while the cancel is draining them.
            if i % 2 == 0 {
                drop(futs);
            } else {
                for f in futs.iter_mut().rev() {
                    let _ = poll_with(f.as_mut(), &waker_of(&flag));
                }
            }
            child
        });
        start.wait();
        h.cancel();
        let child = t.join().unwrap();
        assert_eq!(child.err(), Some(Error::Canceled));
    }
}

#[test]
fn any_creation_and_drop_race_with_parent_cancel() {
    let rounds = scale(50, 2);
    for _ in 0..rounds {
        let (a, ha) = Context::background().with_cancel();
        let (b, hb) = Context::background().with_cancel();
        let start = Arc::new(Barrier::new(3));
        let spawn_maker = |first: Context, second: Context, start: Arc<Barrier>| {
            thread::spawn(move || {
                start.wait();
                let mut kept = Vec::new();
                for i in 0..scale(100, 4) {
                    let any = Context::any([&first, &second]);
                    if i % 2 == 0 {
                        kept.push(any);
                    }
                }
                kept
            })
        };
        let t1 = spawn_maker(a.clone(), b.clone(), start.clone());
        let t2 = spawn_maker(b.clone(), a.clone(), start.clone());
        start.wait();
        ha.cancel_with("a");
        let kept: Vec<Context> = t1.join().unwrap().into_iter().chain(t2.join().unwrap()).collect();
        for any in &kept {
            assert_eq!(any.err(), Some(Error::Canceled));
            assert_eq!(cause_str(any).as_deref(), Some("a"));
        }
        drop(hb);
    }
}

#[test]
fn after_func_registration_races_with_deadline_fire() {
    static CLOCK: ManualClock = ManualClock::new();
    let root = Context::with_timer(&CLOCK);
    let rounds = scale(100, 3);
    for _ in 0..rounds {
        let (ctx, _h) = root.with_timeout(ms(1));
        let (runs, _) = counter();
        let (c, r) = (ctx.clone(), runs.clone());
        let t = thread::spawn(move || {
            let mut stops = 0;
            for i in 0..8 {
                let r = r.clone();
                let af = c.after_func(move || {
                    r.fetch_add(1, Ordering::SeqCst);
                });
                if i % 4 == 0 && af.stop() {
                    stops += 1;
                }
            }
            stops
        });
        CLOCK.advance(ms(1));
        let stops = t.join().unwrap();
        assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
        assert_eq!(count(&runs) + stops, 8, "each after-func either ran or was stopped");
    }
    assert_eq!(CLOCK.armed(), 0);
}

#[test]
#[cfg_attr(miri, ignore)]
fn std_timer_firing_races_with_drop_and_cancel() {
    let mut kept = Vec::new();
    for i in 0..200u64 {
        let (ctx, h) = Context::background().with_timeout(Duration::from_micros(i % 50));
        match i % 4 {
            0 => drop((ctx, h)),
            1 => {
                h.detach();
                drop(ctx);
            }
            2 => h.cancel(),
            _ => kept.push((ctx, h)),
        }
    }
    thread::sleep(ms(5));
    for (ctx, _h) in &kept {
        assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
        assert_eq!(ctx.wait_blocking(), Error::DeadlineExceeded);
    }
    drop(kept);
    // (Leaks of std timer entries are checked in tests/alloc_budget.rs,
    // where tests are serialised: here other tests arm entries concurrently.)
}

// ---------------------------------------------------------------------------
// Regressions: bugs this suite found in the core, fixed

#[test]
fn panicking_after_func_still_cancels_the_whole_subtree() {
    // Go never leaves a done parent with a live child. Here more than one
    // batch (16) of entries makes `drain` run callbacks before it has taken
    // the children; a panic there unwinds out of the cancel.
    let (ctx, h) = Context::background().with_cancel();
    let (child, _hc) = ctx.with_cancel();
    let (grandchild, _hg) = child.with_cancel();
    ctx.after_func(|| panic!("after-func panics"));
    for _ in 0..40 {
        ctx.after_func(|| {});
    }
    let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| h.cancel()));
    assert!(unwound.is_err(), "the panic reaches the canceller");
    assert!(ctx.is_done());
    assert!(child.is_done(), "parent is done but its child is not");
    assert!(grandchild.is_done());
}

#[test]
fn panicking_waker_still_cancels_the_whole_subtree() {
    struct Boom;
    impl Wake for Boom {
        fn wake(self: Arc<Self>) {
            panic!("waker panics");
        }
    }
    let (ctx, h) = Context::background().with_cancel();
    let (child, _hc) = ctx.with_cancel();
    let boom = Waker::from(Arc::new(Boom));
    let quiet = Flag::new();
    // More than one batch (16) of waiters: wakers run before the children
    // are taken.
    let mut futs: Vec<_> = (0..40).map(|_| Box::pin(ctx.done())).collect();
    for (i, f) in futs.iter_mut().enumerate() {
        let w = if i == 0 { boom.clone() } else { waker_of(&quiet) };
        assert!(poll_with(f.as_mut(), &w).is_pending());
    }
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| h.cancel()));
    assert!(ctx.is_done());
    assert!(child.is_done(), "parent is done but its child is not");
    assert_eq!(quiet.wakes.load(Ordering::SeqCst), 39, "every other waiter is woken");
}

#[test]
fn manual_clock_fires_every_due_deadline_despite_a_panic() {
    static CLOCK: ManualClock = ManualClock::new();
    let root = Context::with_timer(&CLOCK);
    let (a, _ha) = root.with_timeout(Duration::from_nanos(10));
    let (b, _hb) = root.with_timeout(Duration::from_nanos(20));
    a.after_func(|| panic!("after-func panics"));
    let (runs, f) = counter();
    b.after_func(f);
    let flag = Flag::new();
    let mut waiting = pin!(b.done());
    assert!(poll_with(waiting.as_mut(), &waker_of(&flag)).is_pending());
    let unwound = std::panic::catch_unwind(|| CLOCK.advance(Duration::from_nanos(20)));
    assert!(unwound.is_err(), "the panic reaches the caller of advance");
    assert!(flag.woken(), "b's deadline was due but its waiter was never woken");
    assert_eq!(count(&runs), 1, "b's after-func never ran");
}

#[test]
fn after_funcs_behind_a_panicking_one_run_or_can_be_stopped() {
    let (ctx, h) = Context::background().with_cancel();
    ctx.after_func(|| panic!("after-func panics"));
    let (runs, f) = counter();
    let af = ctx.after_func(f);
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| h.cancel()));
    // Go: "If stop returns false, either the context is done and f has been
    // started ...; or f was already stopped."
    let stopped = af.stop();
    assert!(
        count(&runs) == 1 || stopped,
        "never ran, yet stop() says it could not stop it"
    );
}

#[test]
fn deep_any_chain_drops_without_recursion() {
    let depth = scale(100_000, 100);
    let (root, h) = Context::background().with_cancel();
    let mut cur = root.clone();
    for _ in 0..depth {
        cur = Context::any([&cur]);
    }
    let (leaf, _hl) = cur.with_cancel();
    h.cancel_with("deep any");
    assert_eq!(cause_str(&leaf).as_deref(), Some("deep any"));
    drop((root, cur, leaf));
}

#[test]
fn manual_clock_advance_from_many_threads_adds_up() {
    static CLOCK: ManualClock = ManualClock::new();
    let per_thread = scale(50_000, 20);
    let threads: Vec<_> = (0..4)
        .map(|_| {
            thread::spawn(move || {
                for _ in 0..per_thread {
                    CLOCK.advance(Duration::from_nanos(1));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(CLOCK.now(), Instant::from_nanos(4 * per_thread as u64));
}

/// A timer that runs a hook inside `arm`, before recording the entry: it
/// reproduces a parent cancel landing between `NodeRef::arm`'s done check
/// and the timer's insertion.
struct HookTimer {
    armed: Mutex<Vec<(Instant, usize)>>,
    hook: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl Clock for HookTimer {
    fn now(&self) -> Instant {
        Instant::ZERO
    }
}

// SAFETY: entries are only recorded as keys, never claimed or fired.
unsafe impl Timer for HookTimer {
    unsafe fn arm(&self, entry: TimerEntry) {
        let hook = self.hook.lock().unwrap().take();
        if let Some(hook) = hook {
            hook();
        }
        self.armed.lock().unwrap().push(entry.key());
    }
    unsafe fn disarm(&self, entry: &TimerEntry) {
        let mut armed = self.armed.lock().unwrap_or_else(|e| e.into_inner());
        armed.retain(|k| *k != entry.key());
    }
}

#[test]
fn cancel_during_arm_leaves_no_timer_entry() {
    static TIMER: HookTimer = HookTimer {
        armed: Mutex::new(Vec::new()),
        hook: Mutex::new(None),
    };
    let (parent, h) = Context::with_timer(&TIMER).with_cancel();
    let h = Mutex::new(Some(h));
    *TIMER.hook.lock().unwrap() = Some(Box::new(move || h.lock().unwrap().take().unwrap().cancel()));
    let (child, _hc) = parent.with_deadline(Instant::from_nanos(1_000));
    // Armed by its first waiter; the hook cancels during that arm.
    drop(child.after_func(|| {}));
    assert!(child.is_done());
    let armed = TIMER.armed.lock().unwrap().len();
    assert_eq!(armed, 0, "a done context still holds a timer entry");
}

// ---------------------------------------------------------------------------
// The heap-free tier: StaticContext, ScopedContext, ContextRef

#[test]
fn static_root_cancels_heap_and_scoped_descendants() {
    static ROOT: StaticContext = StaticContext::new();
    static K: Key<u8> = Key::new("k");
    assert!(!ROOT.is_done());
    let (heap, _h) = ROOT.context().with_value(&K, 1).with_cancel();
    let scoped = pin!(ScopedContext::new(ROOT.as_ref()));
    let scoped_ctx = scoped.as_ref().context();
    let grand = pin!(ScopedContext::new(scoped_ctx));
    let grand_ctx = grand.as_ref().context();
    let on_heap = pin!(ScopedContext::new(heap.as_ref()));
    let on_heap_ctx = on_heap.as_ref().context();
    let (runs, f) = counter();
    heap.after_func(f);
    let flag = Flag::new();
    let mut waiting = pin!(grand_ctx.done());
    assert!(poll_with(waiting.as_mut(), &waker_of(&flag)).is_pending());
    let mut root_done = pin!(ROOT.done());
    assert!(poll_with(root_done.as_mut(), &waker_of(&flag)).is_pending());

    ROOT.cancel_with("power loss");
    ROOT.cancel_with("ignored");
    for r in [ROOT.as_ref(), scoped_ctx, grand_ctx, on_heap_ctx, heap.as_ref()] {
        assert_eq!(r.err(), Some(Error::Canceled));
        assert_eq!(r.cause().unwrap().as_str(), Some("power loss"));
    }
    assert_eq!(ROOT.cause().unwrap().as_str(), Some("power loss"));
    assert_eq!(heap.value(&K), Some(&1));
    assert_eq!(count(&runs), 1);
    assert_eq!(flag.wakes.load(Ordering::SeqCst), 2);
    assert_eq!(
        poll_with(waiting.as_mut(), &waker_of(&flag)),
        Poll::Ready(Error::Canceled)
    );
    assert_eq!(
        poll_with(root_done.as_mut(), &waker_of(&flag)),
        Poll::Ready(Error::Canceled)
    );
    // Children made after the fact are born done.
    let (late, _hl) = ROOT.context().with_cancel();
    assert_eq!(cause_str(&late).as_deref(), Some("power loss"));
    let late_scoped = pin!(ScopedContext::new(ROOT.as_ref()));
    assert_eq!(late_scoped.as_ref().context().err(), Some(Error::Canceled));
}

#[test]
fn scoped_cancel_stays_in_its_scope() {
    let (parent, _hp) = Context::background().with_cancel();
    let a = pin!(ScopedContext::new(parent.as_ref()));
    let a_ctx = a.as_ref().context();
    let b = pin!(ScopedContext::new(parent.as_ref()));
    let b_ctx = b.as_ref().context();
    let a_child = pin!(ScopedContext::new(a_ctx));
    let a_child_ctx = a_child.as_ref().context();
    assert!(!a.is_done());
    a.cancel_with("a only");
    assert!(a.is_done());
    assert_eq!(a_child_ctx.cause().unwrap().as_str(), Some("a only"));
    assert!(!parent.is_done());
    assert!(!b_ctx.is_done());
    assert!(!ContextRef::background().is_done());
    assert_eq!(ContextRef::background().deadline(), None);
}

#[test]
fn scoped_context_under_a_heap_parent_follows_it() {
    let (parent, hp) = Context::background().with_cancel();
    for _ in 0..scale(100, 5) {
        let s = pin!(ScopedContext::new(parent.as_ref()));
        let _ = s.as_ref().context();
    }
    let s = pin!(ScopedContext::new(parent.as_ref()));
    let ctx = s.as_ref().context();
    hp.cancel_with("heap parent");
    assert_eq!(ctx.cause().unwrap().as_str(), Some("heap parent"));
}

#[test]
fn scoped_cancelled_before_it_is_attached() {
    let (parent, _hp) = Context::background().with_cancel();
    let s = pin!(ScopedContext::new(parent.as_ref()));
    s.cancel_with("early");
    let ctx = s.as_ref().context();
    assert_eq!(ctx.err(), Some(Error::Canceled));
    assert_eq!(ctx.cause().unwrap().as_str(), Some("early"));
    assert!(!parent.is_done());
}

#[test]
fn scoped_deadlines_on_a_manual_clock() {
    static CLOCK: ManualClock = ManualClock::new();
    static ROOT: StaticContext = StaticContext::with_timer(&CLOCK);
    let outer = pin!(ScopedContext::with_timeout(ROOT.as_ref(), ms(100)));
    let outer_ctx = outer.as_ref().context();
    let inner = pin!(ScopedContext::with_deadline_cause(outer_ctx, at(40), "inner slow"));
    let inner_ctx = inner.as_ref().context();
    let later = pin!(ScopedContext::with_deadline(inner_ctx, at(500)));
    let later_ctx = later.as_ref().context();
    assert_eq!(outer_ctx.deadline(), Some(at(100)));
    assert_eq!(inner_ctx.deadline(), Some(at(40)));
    assert_eq!(later_ctx.deadline(), Some(at(40)));
    assert_eq!(CLOCK.armed(), 0, "nothing waits yet");
    let flag = Flag::new();
    let mut d = pin!(later_ctx.done());
    assert!(poll_with(d.as_mut(), &waker_of(&flag)).is_pending());
    assert_eq!(CLOCK.armed(), 1, "the waiter armed inner, its deadline's owner");
    CLOCK.advance(ms(40));
    assert!(flag.woken());
    assert_eq!(later_ctx.err(), Some(Error::DeadlineExceeded));
    assert_eq!(later_ctx.cause().unwrap().as_str(), Some("inner slow"));
    assert!(!outer_ctx.is_done());
    CLOCK.advance(ms(60));
    assert_eq!(outer_ctx.err(), Some(Error::DeadlineExceeded));
    assert_eq!(CLOCK.armed(), 0);
    assert!(!ROOT.is_done());
}

#[test]
fn dropping_a_scoped_context_releases_its_timer_entry() {
    static CLOCK: ManualClock = ManualClock::new();
    static ROOT: StaticContext = StaticContext::with_timer(&CLOCK);
    for _ in 0..scale(50, 5) {
        let s = pin!(ScopedContext::with_timeout(ROOT.as_ref(), Duration::from_secs(3600)));
        let c = s.as_ref().context();
        assert_eq!(CLOCK.armed(), 0, "attached, nothing waits: not armed");
        let mut d = pin!(c.done());
        assert!(poll_with(d.as_mut(), &waker_of(&Flag::new())).is_pending());
        assert_eq!(CLOCK.armed(), 1);
    }
    assert_eq!(CLOCK.armed(), 0);
    // Never attached: never armed.
    let s = ScopedContext::with_timeout(ROOT.as_ref(), Duration::from_secs(3600));
    assert_eq!(CLOCK.armed(), 0);
    drop(s);
}

#[test]
fn scoped_deadline_is_exact_before_any_timer_fires() {
    static CLOCK: FrozenClock = FrozenClock::new();
    static ROOT: StaticContext = StaticContext::with_timer(&CLOCK);
    let s = pin!(ScopedContext::with_deadline_cause(ROOT.as_ref(), at(5), "exact"));
    let ctx = s.as_ref().context();
    let child = pin!(ScopedContext::new(ctx));
    let child_ctx = child.as_ref().context();
    CLOCK.set(at(5));
    assert_eq!(child_ctx.err(), Some(Error::DeadlineExceeded));
    assert_eq!(ctx.cause().unwrap().as_str(), Some("exact"));
    let past = pin!(ScopedContext::with_deadline(ROOT.as_ref(), at(1)));
    assert_eq!(past.as_ref().context().err(), Some(Error::DeadlineExceeded));
}

#[test]
fn scoped_contexts_dropped_while_a_parent_cancel_races() {
    // The owner's drop must wait out a canceller that still holds the node.
    let rounds = scale(100, 3);
    for _ in 0..rounds {
        let (parent, h) = Context::background().with_cancel();
        let start = Arc::new(Barrier::new(2));
        let s2 = start.clone();
        let p = parent.clone();
        let t = thread::spawn(move || {
            let mut boxes: Vec<_> = (0..8).map(|_| Box::pin(ScopedContext::new(p.as_ref()))).collect();
            for b in &boxes {
                let _ = b.as_ref().context();
            }
            s2.wait();
            boxes.clear();
        });
        start.wait();
        h.cancel();
        t.join().unwrap();
        assert!(parent.is_done());
    }
}

#[test]
#[cfg_attr(miri, ignore)]
fn static_root_without_a_timer_uses_the_default_timer() {
    static ROOT: StaticContext = StaticContext::new();
    let (heap, _h) = ROOT.context().with_timeout(ms(1));
    let (past, _hp) = ROOT.context().with_deadline(Instant::ZERO);
    let s = pin!(ScopedContext::with_timeout(ROOT.as_ref(), ms(1)));
    let scoped = s.as_ref().context();
    assert!(heap.deadline().is_some() && scoped.deadline().is_some());
    assert_eq!(past.err(), Some(Error::DeadlineExceeded));
    assert_eq!(heap.wait_blocking(), Error::DeadlineExceeded);
    assert_eq!(block_on(scoped.done()), Error::DeadlineExceeded);
    assert!(!ROOT.is_done());
}

#[test]
fn scoped_context_under_an_any_follows_it() {
    static CLOCK: ManualClock = ManualClock::new();
    let root = Context::with_timer(&CLOCK);
    let (a, _ha) = root.with_cancel();
    let (b, _hb) = root.with_deadline_cause(at(10), "b's deadline");
    let any = Context::any([&a, &b]);
    let s = pin!(ScopedContext::new(any.as_ref()));
    let ctx = s.as_ref().context();
    assert_eq!(ctx.deadline(), Some(at(10)));
    CLOCK.advance(ms(10));
    assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
    assert_eq!(ctx.cause().unwrap().as_str(), Some("b's deadline"));
}

#[test]
fn scoped_drop_races_with_its_deadline_firing() {
    static CLOCK: ManualClock = ManualClock::new();
    static ROOT: StaticContext = StaticContext::with_timer(&CLOCK);
    let rounds = scale(100, 3);
    for i in 0..rounds {
        let start = Arc::new(Barrier::new(2));
        let s2 = start.clone();
        let t = thread::spawn(move || {
            let s = Box::pin(ScopedContext::with_timeout(ROOT.as_ref(), ms(1)));
            let ctx = s.as_ref().context();
            let mut d = Box::pin(ctx.done());
            let _ = poll_with(d.as_mut(), &waker_of(&Flag::new()));
            s2.wait();
            if i % 2 == 0 {
                drop(d);
            }
        });
        start.wait();
        CLOCK.advance(ms(1));
        t.join().unwrap();
    }
    assert_eq!(CLOCK.armed(), 0);
    assert!(!ROOT.is_done());
}

/// Runs `f` on a thread and reports whether it finished within a few
/// seconds (a hang is a failure, not a stuck test binary).
fn finishes(f: impl FnOnce() + Send + 'static) -> bool {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    rx.recv_timeout(Duration::from_secs(5)).is_ok()
}

#[test]
#[cfg_attr(miri, ignore)]
fn scoped_dropped_by_an_after_func_during_a_cancel() {
    assert!(finishes(|| {
        static ROOT: StaticContext = StaticContext::new();
        let s = Box::pin(ScopedContext::new(ROOT.as_ref()));
        let _ = s.as_ref().context(); // first child of ROOT
        let (x, _hx) = ROOT.context().with_cancel(); // second child
        let mut s = Some(s);
        x.after_func(move || drop(s.take()));
        for _ in 0..40 {
            // More than one batch: callbacks run while `s` is still queued.
            x.after_func(|| {});
        }
        ROOT.cancel();
    }));
}

#[test]
#[cfg_attr(miri, ignore)]
fn scoped_dropped_by_an_after_func_during_a_timer_fire() {
    assert!(finishes(|| {
        static CLOCK: ManualClock = ManualClock::new();
        static ROOT: StaticContext = StaticContext::with_timer(&CLOCK);
        let s = Box::pin(ScopedContext::with_deadline(ROOT.as_ref(), at(20)));
        let _ = s.as_ref().context(); // armed
        let (a, _ha) = ROOT.context().with_deadline(at(10));
        let mut s = Some(s);
        a.after_func(move || drop(s.take()));
        // Both entries are claimed together; firing `a` drops `s`, whose
        // entry this thread still holds.
        CLOCK.advance(ms(20));
    }));
}

#[test]
#[cfg_attr(miri, ignore)]
fn after_func_on_the_timer_thread_may_wait_for_another_deadline() {
    let (tx, rx) = mpsc::channel();
    let (a, _ha) = Context::background().with_timeout(ms(5));
    let (other, _ho) = Context::background().with_timeout(ms(30));
    a.after_func(move || {
        // Runs on the timer thread (or here, if `a` is observed first).
        let _ = tx.send(other.wait_blocking());
    });
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(5)),
        Ok(Error::DeadlineExceeded),
        "the timer thread is stuck"
    );
}

#[test]
#[cfg_attr(miri, ignore)]
fn scoped_dropped_by_a_waker_during_a_cancel() {
    struct DropOnWake(Mutex<Option<Pin<Box<ScopedContext<'static>>>>>);
    impl Wake for DropOnWake {
        fn wake(self: Arc<Self>) {
            drop(self.0.lock().unwrap().take());
        }
    }
    assert!(finishes(|| {
        static ROOT: StaticContext = StaticContext::new();
        let s = Box::pin(ScopedContext::new(ROOT.as_ref()));
        let _ = s.as_ref().context(); // first child of ROOT
        let (x, _hx) = ROOT.context().with_cancel(); // second child
        let dropper = Waker::from(Arc::new(DropOnWake(Mutex::new(Some(s)))));
        let quiet = futures::task::noop_waker();
        // More than one batch (16) of waiters on `x`: the first batch is
        // woken while `s` is still queued in the cancel's work list.
        let mut futs: Vec<_> = (0..40).map(|_| Box::pin(x.done())).collect();
        for (i, f) in futs.iter_mut().enumerate() {
            let w = if i == 0 { &dropper } else { &quiet };
            assert!(poll_with(f.as_mut(), w).is_pending());
        }
        drop(dropper);
        ROOT.cancel();
    }));
}
