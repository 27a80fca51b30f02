//! Deadlines under virtual time: the same suite runs on a `ManualClock` and
//! (feature `tokio`) on a `TokioTimer` whose runtime's clock is paused. Time
//! moves only when a test says so, so results are exact (to the nanosecond
//! on the manual clock, to tokio's millisecond on tokio) and no test waits on
//! the wall clock.
//!
//! Tests are named `<clock>::<test>`; assertion messages start with the clock.

use ctxcore::{Context, Error, Instant, ManualClock};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const SEC: Duration = Duration::from_secs(1);
const MS: Duration = Duration::from_millis(1);

/// A virtual clock a tree can run on.
/// Something waits on `ctx`'s deadline (an after-func, kept running): the
/// deadline's owner is armed now, not at creation (node invariant 20).
fn wait_on(ctx: &Context) {
    drop(ctx.after_func(|| {}));
}

trait Virtual {
    /// Name for assertion messages.
    const NAME: &'static str;
    /// A root whose descendants use this clock.
    fn root(&self) -> Context;
    /// The clock's current time.
    fn now(&self) -> Instant;
    /// Moves time forward by `d` and lets due deadlines fire.
    fn advance(&self, d: Duration) -> impl Future<Output = ()>;
    /// Armed timer entries.
    fn armed(&self) -> usize;
}

struct Manual(&'static ManualClock);

impl Virtual for Manual {
    const NAME: &'static str = "manual_clock";
    fn root(&self) -> Context {
        Context::with_timer(self.0)
    }
    fn now(&self) -> Instant {
        ctxcore::Clock::now(self.0)
    }
    async fn advance(&self, d: Duration) {
        self.0.advance(d)
    }
    fn armed(&self) -> usize {
        self.0.armed()
    }
}

fn on_manual<F: Future<Output = ()>>(clock: &'static ManualClock, test: impl FnOnce(Manual) -> F) {
    futures::executor::block_on(test(Manual(clock)));
}

#[cfg(feature = "tokio")]
struct Paused(&'static ctxcore::TokioTimer);

#[cfg(feature = "tokio")]
impl Virtual for Paused {
    const NAME: &'static str = "tokio_paused";
    fn root(&self) -> Context {
        Context::with_timer(self.0)
    }
    fn now(&self) -> Instant {
        ctxcore::Clock::now(self.0)
    }
    async fn advance(&self, d: Duration) {
        tokio::time::advance(d).await;
        // Let the driver task run its firing batches (it yields between
        // batches of 256); on a current-thread runtime each yield of ours
        // runs it once.
        for _ in 0..16 {
            tokio::task::yield_now().await;
        }
    }
    fn armed(&self) -> usize {
        self.0.armed()
    }
}

#[cfg(feature = "tokio")]
fn on_tokio<F: Future<Output = ()>>(test: impl FnOnce(Paused) -> F) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    let timer = ctxcore::TokioTimer::new(rt.handle().clone());
    // Start away from zero so that "in the past" is representable.
    rt.block_on(async {
        tokio::time::advance(SEC).await;
        test(Paused(timer)).await
    });
}

/// Nested deadlines: the earliest on the path wins, each fires at its exact
/// instant, each owner arms exactly one entry and releases it on firing.
async fn nested_deadlines<V: Virtual>(v: V) {
    let n = V::NAME;
    let t0 = v.now();
    let root = v.root();
    let (hour, _h1) = root.with_timeout(3600 * SEC);
    let (minute, _h2) = hour.with_timeout(60 * SEC);
    let (long, _h3) = minute.with_timeout(7200 * SEC);
    let (sibling, _h4) = hour.with_timeout(30 * SEC);
    assert_eq!(minute.deadline(), Some(t0 + 60 * SEC), "{n}: minute deadline");
    assert_eq!(long.deadline(), Some(t0 + 60 * SEC), "{n}: inherited deadline");
    assert_eq!(sibling.deadline(), Some(t0 + 30 * SEC), "{n}: sibling deadline");
    assert_eq!(v.armed(), 0, "{n}: nothing waits: nothing armed");
    for c in [&hour, &minute, &long, &sibling] {
        wait_on(c);
    }
    assert_eq!(v.armed(), 3, "{n}: hour, minute, sibling own deadlines; long inherits");

    v.advance(30 * SEC - MS).await;
    assert!(!sibling.is_done(), "{n}: sibling 1 ms early");
    v.advance(MS).await;
    assert_eq!(sibling.err(), Some(Error::DeadlineExceeded), "{n}: sibling at 30 s");
    assert!(!minute.is_done() && !hour.is_done(), "{n}: others live at 30 s");
    assert_eq!(v.armed(), 2, "{n}: sibling's entry released");

    v.advance(30 * SEC).await;
    assert_eq!(v.now(), t0 + 60 * SEC, "{n}: clock");
    assert_eq!(minute.err(), Some(Error::DeadlineExceeded), "{n}: minute at 60 s");
    assert_eq!(long.err(), Some(Error::DeadlineExceeded), "{n}: long follows minute");
    assert!(!hour.is_done(), "{n}: hour live at 60 s");
    assert_eq!(v.armed(), 1, "{n}: minute's entry released");

    v.advance(3540 * SEC).await;
    assert_eq!(hour.err(), Some(Error::DeadlineExceeded), "{n}: hour at 3600 s");
    assert_eq!(v.armed(), 0, "{n}: no entry left");
}

/// The deadline's cause reaches every descendant; without one, `cause()` is
/// the error.
async fn deadline_cause<V: Virtual>(v: V) {
    let n = V::NAME;
    let root = v.root();
    let (query, _h1) = root.with_timeout_cause(10 * SEC, "slow query");
    let (child, _h2) = query.with_cancel();
    let (grandchild, _h3) = child.with_timeout_cause(3600 * SEC, "not this one");
    let (plain, _h4) = root.with_timeout(10 * SEC);
    v.advance(10 * SEC).await;
    for (what, ctx) in [("query", &query), ("child", &child), ("grandchild", &grandchild)] {
        assert_eq!(ctx.err(), Some(Error::DeadlineExceeded), "{n}: {what} error");
        assert_eq!(ctx.cause().unwrap().to_string(), "slow query", "{n}: {what} cause");
    }
    assert_eq!(
        plain.cause().unwrap().as_error(),
        Some(Error::DeadlineExceeded),
        "{n}: default cause"
    );
}

/// After-funcs run exactly once when the deadline fires; `stop` before the
/// deadline prevents the call, `stop` after it reports false.
async fn after_func_on_deadline<V: Virtual>(v: V) {
    let n = V::NAME;
    let (ctx, _h) = v.root().with_timeout(5 * SEC);
    let ran = Arc::new(AtomicUsize::new(0));
    let count = |ran: &Arc<AtomicUsize>| {
        let ran = ran.clone();
        move || {
            ran.fetch_add(1, Ordering::SeqCst);
        }
    };
    let first = ctx.after_func(count(&ran));
    let stopped = ctx.after_func(count(&ran));
    v.advance(4 * SEC).await;
    assert!(stopped.stop(), "{n}: stop before the deadline");
    assert_eq!(ran.load(Ordering::SeqCst), 0, "{n}: nothing ran before the deadline");
    v.advance(SEC).await;
    assert_eq!(ran.load(Ordering::SeqCst), 1, "{n}: one after-func ran at the deadline");
    assert!(!first.stop(), "{n}: stop after it ran");
    ctx.after_func(count(&ran));
    assert_eq!(
        ran.load(Ordering::SeqCst),
        2,
        "{n}: registered after done: runs at once"
    );
}

/// Deadline and cancel: whichever happens first (in virtual time) wins, and
/// the loser changes nothing.
async fn deadline_vs_cancel<V: Virtual>(v: V) {
    let n = V::NAME;
    let root = v.root();

    // Cancel first.
    let (a, ha) = root.with_timeout(10 * SEC);
    v.advance(5 * SEC).await;
    ha.cancel_with("user");
    assert_eq!(v.armed(), 0, "{n}: cancelling releases the entry at once");
    v.advance(10 * SEC).await;
    assert_eq!(a.err(), Some(Error::Canceled), "{n}: cancel before deadline");
    assert_eq!(a.cause().unwrap().to_string(), "user", "{n}: cancel cause kept");

    // Deadline first: at exactly the deadline the context is done, and a
    // later cancel changes nothing.
    let (b, hb) = root.with_timeout_cause(10 * SEC, "deadline");
    v.advance(10 * SEC).await;
    assert_eq!(b.err(), Some(Error::DeadlineExceeded), "{n}: deadline at its instant");
    hb.cancel_with("too late");
    assert_eq!(b.err(), Some(Error::DeadlineExceeded), "{n}: later cancel ignored");
    assert_eq!(b.cause().unwrap().to_string(), "deadline", "{n}: deadline cause kept");

    // A parent cancelled at the child's deadline instant, before the clock
    // reaches it: cancel wins; after: the deadline wins.
    let (p1, hp1) = root.with_cancel();
    let (c1, _hc1) = p1.with_timeout(SEC);
    let (p2, hp2) = root.with_cancel();
    let (c2, _hc2) = p2.with_timeout(SEC);
    // Waited on, so armed and fired by the clock (a deadline nobody waits
    // on takes effect when observed: a cancel reaching it first wins).
    wait_on(&c1);
    wait_on(&c2);
    v.advance(SEC - MS).await;
    hp1.cancel();
    v.advance(MS).await;
    hp2.cancel();
    assert_eq!(
        c1.err(),
        Some(Error::Canceled),
        "{n}: parent cancel 1 ms before deadline"
    );
    assert_eq!(
        c2.err(),
        Some(Error::DeadlineExceeded),
        "{n}: parent cancel at deadline"
    );
    assert_eq!(v.armed(), 0, "{n}: no entry left");
}

/// Many contexts whose deadline passes while another thread cancels them:
/// each ends in exactly one consistent state and runs its after-func once.
async fn deadline_cancel_race<V: Virtual>(v: V) {
    const N: usize = 200;
    let n = V::NAME;
    let root = v.root();
    let ran = Arc::new(AtomicUsize::new(0));
    let mut ctxs = Vec::new();
    let mut handles = Vec::new();
    for i in 0..N {
        let (ctx, h) = root.with_timeout(SEC + Duration::from_micros(i as u64));
        let ran = ran.clone();
        ctx.after_func(move || {
            ran.fetch_add(1, Ordering::SeqCst);
        });
        ctxs.push(ctx);
        handles.push(h);
    }
    let canceller = std::thread::spawn(move || {
        for h in &handles {
            h.cancel_with("race");
        }
        handles
    });
    v.advance(2 * SEC).await;
    let handles = canceller.join().expect("canceller");
    let mut deadline = 0;
    for ctx in &ctxs {
        match ctx.err() {
            Some(Error::Canceled) => assert_eq!(ctx.cause().unwrap().to_string(), "race", "{n}: cancel cause"),
            Some(Error::DeadlineExceeded) => {
                deadline += 1;
                assert_eq!(
                    ctx.cause().unwrap().as_error(),
                    Some(Error::DeadlineExceeded),
                    "{n}: deadline cause"
                );
            }
            None => panic!("{n}: context live after its deadline and its cancel"),
        }
    }
    assert_eq!(
        ran.load(Ordering::SeqCst),
        N,
        "{n}: each after-func ran once ({deadline} by deadline)"
    );
    drop(handles);
    assert_eq!(v.armed(), 0, "{n}: no entry left");
}

/// Past, far-future and maximal deadlines: no panic, no entry for a deadline
/// that can never fire, nothing fires early.
async fn bad_input<V: Virtual>(v: V) {
    let n = V::NAME;
    let root = v.root();
    let (past, _h1) = root.with_deadline(Instant::ZERO);
    assert_eq!(
        past.err(),
        Some(Error::DeadlineExceeded),
        "{n}: past deadline done at once"
    );
    let (now, _h2) = root.with_deadline(v.now());
    assert_eq!(now.err(), Some(Error::DeadlineExceeded), "{n}: deadline now is done");
    assert_eq!(v.armed(), 0, "{n}: passed deadlines arm nothing");

    let (never, _h3) = root.with_deadline(Instant::MAX);
    let (forever, _h4) = root.with_timeout(Duration::MAX);
    assert_eq!(v.armed(), 0, "{n}: Instant::MAX arms nothing");
    let far_deadline = v.now() + Duration::from_secs(500 * 365 * 24 * 3600);
    let (far, h5) = root.with_deadline(far_deadline);
    wait_on(&far);
    assert_eq!(v.armed(), 1, "{n}: far deadline armed");
    v.advance(3600 * SEC).await;
    v.advance(Duration::from_secs(100 * 365 * 24 * 3600)).await;
    for (what, ctx) in [
        ("Instant::MAX", &never),
        ("Duration::MAX", &forever),
        ("500 years", &far),
    ] {
        assert!(!ctx.is_done(), "{n}: {what} not done after 100 years");
    }
    assert_eq!(far.deadline(), Some(far_deadline), "{n}: far deadline kept exactly");
    drop(h5);
    assert_eq!(v.armed(), 0, "{n}: cancelled far deadline released");
}

/// Contexts dropped on another thread while the timer fires their
/// neighbours: every after-func runs once, no entry leaks, nothing crashes.
async fn drop_while_firing<V: Virtual>(v: V) {
    const N: usize = 400;
    let n = V::NAME;
    let root = v.root();
    let ran = Arc::new(AtomicUsize::new(0));
    let mut kept = Vec::new();
    let mut dropped = Vec::new();
    for i in 0..N {
        let (ctx, h) = root.with_timeout(MS * (1 + i as u32 / 2));
        let ran = ran.clone();
        ctx.after_func(move || {
            ran.fetch_add(1, Ordering::SeqCst);
        });
        if i % 2 == 0 {
            kept.push((ctx, h));
        } else {
            dropped.push((ctx, h));
        }
    }
    let dropper = std::thread::spawn(move || {
        for pair in dropped {
            drop(pair);
            std::thread::yield_now();
        }
    });
    for _ in 0..N / 2 {
        v.advance(MS).await;
    }
    dropper.join().expect("dropper");
    for (ctx, _h) in &kept {
        assert_eq!(ctx.err(), Some(Error::DeadlineExceeded), "{n}: kept context");
    }
    assert_eq!(ran.load(Ordering::SeqCst), N, "{n}: after-func calls");
    assert_eq!(v.armed(), 0, "{n}: no entry left");
}

/// `now` and `time_left` read the tree's own clock (issue 11, item 1):
/// exact on a virtual clock, `None` without a deadline, zero once passed,
/// the earliest deadline on the path, and children made on any thread agree.
async fn time_on_the_tree_clock<V: Virtual>(v: V) {
    let n = V::NAME;
    let root = v.root();
    assert_eq!(root.now(), v.now(), "{n}: the root reads the tree's clock");
    assert_eq!(root.time_left(), None, "{n}: no deadline, no time left");
    let (outer, _h1) = root.with_timeout(10 * SEC);
    let (inner, _h2) = outer.with_timeout(60 * SEC);
    let (plain, _h3) = inner.with_cancel();
    assert_eq!(outer.time_left(), Some(10 * SEC), "{n}: outer");
    assert_eq!(inner.time_left(), Some(10 * SEC), "{n}: the earliest deadline wins");
    assert_eq!(plain.time_left(), Some(10 * SEC), "{n}: inherited");
    assert_eq!(plain.as_ref().time_left(), Some(10 * SEC), "{n}: through a ContextRef");
    v.advance(4 * SEC).await;
    assert_eq!(inner.now(), v.now(), "{n}: now follows the clock");
    assert_eq!(inner.time_left(), Some(6 * SEC), "{n}: 4 s later");
    let (tight, _h4) = inner.with_timeout(SEC);
    assert_eq!(tight.time_left(), Some(SEC), "{n}: a tighter child");
    assert_eq!(
        tight.without_cancel().now(),
        v.now(),
        "{n}: without_cancel keeps the clock"
    );
    assert_eq!(tight.without_cancel().time_left(), None, "{n}: and drops the deadline");
    v.advance(6 * SEC).await;
    assert_eq!(inner.err(), Some(Error::DeadlineExceeded), "{n}: passed");
    assert_eq!(inner.time_left(), Some(Duration::ZERO), "{n}: zero once passed");
    v.advance(SEC).await;
    assert_eq!(
        plain.time_left(),
        Some(Duration::ZERO),
        "{n}: still zero, never negative"
    );
    let (after, _h5) = plain.with_cancel();
    assert_eq!(after.now(), v.now(), "{n}: a child born done reads the same clock");
    assert_eq!(after.time_left(), Some(Duration::ZERO), "{n}: child born done");
}

macro_rules! clock {
    ($run:ident) => {
        use super::*;
        clock!(@tests $run; nested_deadlines, deadline_cause, after_func_on_deadline, deadline_vs_cancel,
            deadline_cancel_race, bad_input, drop_while_firing, time_on_the_tree_clock);
    };
    (@tests $run:ident; $($test:ident),*) => {
        $(
            #[test]
            fn $test() {
                $run!(super::$test);
            }
        )*
    };
}

/// Runs a test on a clock of its own (tests run in parallel and must not
/// share time), a `static` so nothing leaks. It starts away from zero so that
/// "in the past" is representable.
macro_rules! on_manual {
    ($test:expr) => {{
        static CLOCK: ManualClock = ManualClock::starting_at(Instant::from_nanos(1_000_000_000));
        on_manual(&CLOCK, $test)
    }};
}

#[cfg(feature = "tokio")]
macro_rules! on_tokio {
    ($test:expr) => {
        on_tokio($test)
    };
}

mod manual_clock {
    clock!(on_manual);

    /// The manual clock can be set to `Instant::MAX` itself: a deadline at
    /// `Instant::MAX` still never fires, everything else does.
    #[test]
    fn clock_at_max() {
        static CLOCK: ManualClock = ManualClock::new();
        let root = Context::with_timer(&CLOCK);
        let (never, _h1) = root.with_deadline(Instant::MAX);
        let (almost, _h2) = root.with_deadline(Instant::from_nanos(u64::MAX - 1));
        CLOCK.advance(Duration::MAX);
        assert_eq!(ctxcore::Clock::now(&CLOCK), Instant::MAX);
        assert_eq!(almost.err(), Some(Error::DeadlineExceeded));
        assert!(!never.is_done(), "a deadline at Instant::MAX never fires");
        let (late, _h3) = root.with_timeout(SEC);
        assert!(!late.is_done(), "now + 1 s saturates to Instant::MAX: never");
        assert_eq!(CLOCK.armed(), 0);
    }
}

#[cfg(feature = "tokio")]
mod tokio_paused {
    clock!(on_tokio);

    /// The headline: a one-hour timeout elapses at once, at exactly one
    /// virtual hour, when the paused runtime has nothing else to do.
    #[test]
    fn hour_timeout_elapses_at_once() {
        on_tokio(|v: Paused| async move {
            let t0 = v.now();
            let (ctx, _h) = v.root().with_timeout(3600 * SEC);
            assert_eq!(ctx.done().await, Error::DeadlineExceeded);
            assert_eq!(v.now(), t0 + 3600 * SEC, "fired at exactly one virtual hour");
            let (ctx, _h) = v.root().with_timeout(3600 * SEC);
            let slow = ctx.run(tokio::time::sleep(2 * 3600 * SEC)).await;
            assert_eq!(slow, Err(Error::DeadlineExceeded), "run is cut at the deadline");
            assert_eq!(v.now(), t0 + 2 * 3600 * SEC);
        });
    }

    /// A tree on a paused runtime reads the paused clock from any thread.
    #[test]
    fn paused_clock_from_another_thread() {
        on_tokio(|v: Paused| async move {
            let root = v.root();
            let t0 = v.now();
            let ctx = std::thread::spawn(move || root.with_timeout(60 * SEC))
                .join()
                .expect("thread");
            assert_eq!(ctx.0.deadline(), Some(t0 + 60 * SEC), "deadline on the paused clock");
            assert_eq!(ctx.0.done().await, Error::DeadlineExceeded);
            assert_eq!(v.now(), t0 + 60 * SEC);
        });
    }

    /// The case on paused time: a tree on a `TokioTimer` made after
    /// 300 virtual seconds, whose clock then moves only when tokio's does.
    /// `time_left` reads the tree's clock and is exact to the nanosecond, and
    /// `to_tokio` agrees with tokio's own clock.
    #[test]
    fn time_left_after_a_start_up_gap_paused() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("runtime");
        let _ = Instant::now(); // the default clock starts here
        rt.block_on(tokio::time::advance(300 * SEC));
        let timer = ctxcore::TokioTimer::new(rt.handle().clone());
        rt.block_on(async {
            let root = Context::with_timer(timer);
            let (ctx, _h) = root.with_timeout(2 * SEC);
            assert_eq!(ctx.time_left(), Some(2 * SEC), "exact on the paused clock");
            let truth = timer.to_tokio(ctx.deadline().unwrap()) - tokio::time::Instant::now();
            assert_eq!(truth, 2 * SEC, "to_tokio agrees with tokio's own clock");
            tokio::time::advance(500 * MS).await;
            assert_eq!(ctx.time_left(), Some(1500 * MS));
            assert_eq!(ctx.now(), timer.to_instant(tokio::time::Instant::now()));
            tokio::time::sleep_until(timer.to_tokio(ctx.deadline().unwrap())).await;
            assert_eq!(ctx.time_left(), Some(Duration::ZERO));
            assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
        });
    }

    /// The case in real time: at least 300 ms between the default
    /// clock's start and the `TokioTimer`'s, on a runtime that is not
    /// paused. `time_left` stays within 1 ms of the truth measured on tokio's
    /// clock, where `deadline() - Instant::now()` (the default clock: the
    /// wrong one) is off by the whole gap.
    #[test]
    #[cfg_attr(miri, ignore)]
    fn time_left_after_a_start_up_gap_real_time() {
        let _ = Instant::now(); // the default clock starts here
        std::thread::sleep(300 * MS);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        let timer = ctxcore::TokioTimer::new(rt.handle().clone());
        rt.block_on(async {
            let (ctx, _h) = Context::with_timer(timer).with_timeout(5 * SEC);
            let deadline = timer.to_tokio(ctx.deadline().unwrap());
            for _ in 0..3 {
                let before = deadline.saturating_duration_since(tokio::time::Instant::now());
                let left = ctx.time_left().expect("deadline");
                let after = deadline.saturating_duration_since(tokio::time::Instant::now());
                assert!(
                    left <= before + MS && left + MS >= after,
                    "time_left {left:?} not within 1 ms of the truth ({after:?}..{before:?})"
                );
                let wrong_clock = ctx.deadline().unwrap() - Instant::now();
                assert!(wrong_clock + 250 * MS < after, "the default clock is off by the gap");
                tokio::time::sleep(50 * MS).await;
            }
        });
    }

    /// Dropping the runtime with deadlines armed is fine: contexts stay
    /// exact when observed, and dropping them afterwards releases their
    /// entries.
    #[test]
    fn runtime_dropped_with_armed_deadlines() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        let timer = ctxcore::TokioTimer::new(rt.handle().clone());
        let root = Context::with_timer(timer);
        let (ctx, h) = rt.block_on(async { root.with_timeout(3600 * SEC) });
        let (short, _h2) = rt.block_on(async { root.with_timeout(Duration::ZERO) });
        rt.block_on(async { wait_on(&ctx) });
        assert_eq!(timer.armed(), 1);
        drop(rt);
        assert!(!ctx.is_done());
        assert_eq!(short.err(), Some(Error::DeadlineExceeded));
        // Arming on a shut-down runtime does not panic either.
        let (later, _h3) = root.with_timeout(SEC);
        wait_on(&later);
        assert!(!later.is_done());
        drop(h);
        drop(later);
        drop(_h3);
        assert_eq!(timer.armed(), 0);
    }
}
