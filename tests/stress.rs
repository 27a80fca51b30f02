//! Stress tests: many threads hammering one tree, checking that nothing is
//! lost (every waiter wakes, every after-func runs exactly once or is
//! stopped) and that everything is given back (timer entries, stored values).
//!
//! Bounded in iterations, never in time. `CTXCORE_STRESS_SCALE` (percent of
//! the default sizes, default 100) shrinks them for the sanitizers
//! (`ci/san.sh` uses 10); under Miri they shrink to about 1%.
//!
//! Node memory itself is not observable from here: a node that is never
//! freed shows up as a leak under AddressSanitizer's leak checker
//! (`ci/san.sh`) and under Miri, and as an allocation-count mismatch in the
//! `ops` fuzz target.

use ctxcore::{Cause, Context, Error, Key, ManualClock, ScopedContext, StdTimer};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex, MutexGuard};
use std::task::{Context as TaskContext, Poll, Wake, Waker};
use std::thread;
use std::time::Duration;

/// The timer and the `armed` counts are process-wide: run one stress test at
/// a time (each is multi-threaded inside).
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// `n` scaled by `CTXCORE_STRESS_SCALE` percent (about 1% under Miri),
/// never below 1.
fn scaled(n: usize) -> usize {
    let pct: usize = if cfg!(miri) {
        1
    } else {
        std::env::var("CTXCORE_STRESS_SCALE")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(100)
    };
    (n * pct / 100).max(1)
}

fn threads() -> usize {
    if cfg!(miri) {
        2
    } else {
        4
    }
}

/// A tiny deterministic generator (xorshift64*), one per thread.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Stored in every context a test makes: `Arc::strong_count(&token) == 1`
/// at the end proves every context (and every after-func closure holding
/// one) was dropped.
static TOKEN: Key<Arc<()>> = Key::new("stress token");

/// A waker that counts its wake-ups.
struct CountWaker(AtomicUsize);

impl Wake for CountWaker {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn counting_waker() -> (Arc<CountWaker>, Waker) {
    let c = Arc::new(CountWaker(AtomicUsize::new(0)));
    (c.clone(), Waker::from(c))
}

const CAUSES: [&str; 4] = ["c0", "c1", "c2", "c3"];

/// Threads cancel random children of a wide tree and its root at once, with
/// different causes: every node ends done, with the cause of its own cancel
/// or the root's; every waiter registered before is woken exactly once.
#[test]
fn cancel_storm_wide() {
    let _g = serial();
    let token = Arc::new(());
    let width = scaled(512);
    for round in 0..scaled(50) {
        let base = Context::background().with_value(&TOKEN, token.clone());
        let (root, root_handle) = base.with_cancel();
        let mut children = Vec::new();
        let mut handles = Vec::new();
        for _ in 0..width {
            let (c, h) = root.with_cancel();
            children.push(c);
            handles.push(h);
        }
        // One registered waiter per child.
        let mut waits = Vec::new();
        for c in &children {
            let (count, waker) = counting_waker();
            let mut fut = Box::pin(c.done_owned());
            assert!(fut.as_mut().poll(&mut TaskContext::from_waker(&waker)).is_pending());
            waits.push((fut, count, waker));
        }
        let handles = Arc::new(handles);
        let root_handle = Arc::new(root_handle);
        let start = Arc::new(Barrier::new(threads() + 1));
        // A reader that reads each child's error and cause as soon as it is
        // done, while the cancellations are still running: the cause must
        // be published before `DONE` is (a data race under TSan otherwise).
        let reader = {
            let (children, start) = (Arc::new(children.clone()), start.clone());
            thread::spawn(move || {
                start.wait();
                for c in children.iter() {
                    while !c.is_done() {
                        thread::yield_now();
                    }
                    assert_eq!(c.err(), Some(Error::Canceled));
                    let cause = c.cause().expect("done");
                    let s = cause.as_str().expect("a static cause");
                    assert!(s == "root" || CAUSES.contains(&s), "cause {s}");
                }
            })
        };
        let workers: Vec<_> = (0..threads())
            .map(|t| {
                let (handles, root_handle, start) = (handles.clone(), root_handle.clone(), start.clone());
                thread::spawn(move || {
                    let mut rng = Rng::new((round * 31 + t) as u64);
                    start.wait();
                    for _ in 0..width / 2 {
                        let i = rng.below(handles.len());
                        handles[i].cancel_with(CAUSES[t % CAUSES.len()]);
                    }
                    if t == 0 {
                        root_handle.cancel_with("root");
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        reader.join().unwrap();
        assert!(root.is_done());
        for (c, (fut, count, waker)) in children.iter().zip(&mut waits) {
            assert_eq!(c.err(), Some(Error::Canceled));
            let cause = c.cause().unwrap().as_str().unwrap();
            assert!(cause == "root" || CAUSES.contains(&cause), "cause {cause}");
            assert_eq!(c.cause().unwrap().as_str(), Some(cause), "cause must not change");
            assert_eq!(count.0.load(Ordering::SeqCst), 1, "waiter woken exactly once");
            let r = fut.as_mut().poll(&mut TaskContext::from_waker(waker));
            assert_eq!(r, Poll::Ready(Error::Canceled));
        }
    }
    assert_eq!(Arc::strong_count(&token), 1, "contexts leaked");
}

/// A deep chain cancelled at several levels at once: each node's cause is
/// one of the causes given at or above it, and never changes afterwards.
#[test]
fn cancel_storm_deep() {
    let _g = serial();
    let token = Arc::new(());
    let depth = scaled(4000).max(8);
    for round in 0..scaled(20) {
        let mut chain = vec![Context::background().with_value(&TOKEN, token.clone())];
        let mut handles = Vec::new();
        for _ in 0..depth {
            let (c, h) = chain.last().unwrap().with_cancel();
            chain.push(c);
            handles.push(Some(h));
        }
        // Levels to cancel, one per thread, and the cause each uses.
        let mut rng = Rng::new(round as u64 + 7);
        let levels: Vec<usize> = (0..threads()).map(|_| 1 + rng.below(depth)).collect();
        let mut taken = Vec::new();
        for (t, &l) in levels.iter().enumerate() {
            if let Some(h) = handles[l - 1].take() {
                taken.push((t, l, h));
            }
        }
        let start = Arc::new(Barrier::new(taken.len()));
        let workers: Vec<_> = taken
            .into_iter()
            .map(|(t, _, h)| {
                let start = start.clone();
                thread::spawn(move || {
                    start.wait();
                    if t % 2 == 0 {
                        h.cancel_with(CAUSES[t % CAUSES.len()]);
                    } else {
                        // Dropping cancels too (no cause).
                        drop(h);
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        let top = *levels.iter().min().unwrap();
        for (k, c) in chain.iter().enumerate() {
            if k < top {
                assert!(!c.is_done(), "level {k} above every cancel");
                continue;
            }
            assert_eq!(c.err(), Some(Error::Canceled));
            let cause = c.cause().unwrap();
            let allowed = levels
                .iter()
                .enumerate()
                .filter(|&(_, &l)| l <= k)
                .any(|(t, _)| match t % 2 {
                    0 => cause.as_str() == Some(CAUSES[t % CAUSES.len()]),
                    _ => cause.as_error() == Some(Error::Canceled),
                });
            assert!(allowed, "level {k}: cause {cause:?} not given at or above it");
        }
        // Dropping the rest of a deep chain must not recurse.
        drop(handles);
        drop(chain);
    }
    assert_eq!(Arc::strong_count(&token), 1, "contexts leaked");
}

/// Orphans (node/mod.rs invariant 16): middle nodes whose handles are detached
/// and whose contexts are dropped live on only through their kids' counts.
/// Worker threads drop some kids while another cancels the root: every kid
/// still held is cancelled through its orphaned parent with the root's
/// cause, and the orphans are freed by whoever lets go of them last (a leak
/// shows under Miri and the sanitizers, a double free or use-after-free
/// anywhere).
#[test]
fn orphans_race_cancel() {
    let _g = serial();
    for round in 0..scaled(2000) {
        let (root, rh) = Context::background().with_cancel();
        let mut kept = Vec::new();
        let mut dropped = Vec::new();
        for m in 0..4 {
            let (mid, mh) = root.with_cancel();
            mh.detach();
            for k in 0..6 {
                let (kid, kh) = mid.with_cancel();
                // Kids of kids, so that orphans nest.
                let (grandkid, gh) = kid.with_cancel();
                gh.detach();
                if (m + k + round) % 2 == 0 {
                    kh.detach();
                    kept.push(grandkid);
                    drop(kid);
                } else {
                    dropped.push((kid, kh, grandkid));
                }
            }
            drop(mid);
        }
        let workers = threads().max(2);
        let mut shares: Vec<Vec<_>> = (0..workers - 1).map(|_| Vec::new()).collect();
        for (i, d) in dropped.into_iter().enumerate() {
            shares[i % (workers - 1)].push(d);
        }
        let start = Arc::new(Barrier::new(workers));
        let mut joins: Vec<_> = shares
            .into_iter()
            .map(|share| {
                let start = start.clone();
                thread::spawn(move || {
                    start.wait();
                    drop(share);
                })
            })
            .collect();
        joins.push({
            let start = start.clone();
            thread::spawn(move || {
                start.wait();
                rh.cancel_with("root");
            })
        });
        for j in joins {
            j.join().unwrap();
        }
        for g in &kept {
            assert_eq!(g.err(), Some(Error::Canceled));
            assert_eq!(g.cause().unwrap().as_str(), Some("root"));
        }
        drop(kept);
        drop(root);
    }
}

/// Node.rs invariant 16: the kid of an orphan cancelled through one handle
/// from several threads at once. The winner gives up the orphan's last kid
/// count and frees it; every loser must see the kid done before it could
/// touch the orphan (a use-after-free shows under Miri and AddressSanitizer).
#[test]
fn shared_handle_cancels_free_an_orphan() {
    let _g = serial();
    for _ in 0..scaled(3000) {
        let (root, _rh) = Context::background().with_cancel();
        let (mid, mh) = root.with_cancel();
        mh.detach();
        let (kid, kh) = mid.with_cancel();
        drop(mid);
        let kh = Arc::new(kh);
        let n = threads().max(2);
        let start = Arc::new(Barrier::new(n));
        let joins: Vec<_> = (0..n)
            .map(|t| {
                let (kh, start) = (kh.clone(), start.clone());
                thread::spawn(move || {
                    start.wait();
                    kh.cancel_with(CAUSES[t % CAUSES.len()]);
                })
            })
            .collect();
        for j in joins {
            j.join().unwrap();
        }
        assert!(kid.is_done());
        assert!(!root.is_done());
    }
}

/// Threads create and drop children (plain, std-timer and manual-clock
/// deadlines, grandchildren, `any`) under one shared parent: the parent
/// never becomes done, and every timer entry and context is given back.
#[test]
fn create_drop_churn() {
    let _g = serial();
    static CLOCK: ManualClock = ManualClock::new();
    let token = Arc::new(());
    let std_armed = StdTimer::global().armed();
    let (parent, parent_handle) = Context::background().with_value(&TOKEN, token.clone()).with_cancel();
    let clock_parent = Context::with_timer(&CLOCK).with_value(&TOKEN, token.clone());
    let iters = scaled(20_000);
    let workers: Vec<_> = (0..threads())
        .map(|t| {
            let (parent, clock_parent) = (parent.clone(), clock_parent.clone());
            thread::spawn(move || {
                let mut rng = Rng::new(t as u64 + 100);
                let mut kept: Vec<(Context, Option<ctxcore::CancelHandle>)> = Vec::new();
                // Miri ends the program with the std timer thread still
                // idling: no std-timer deadlines there.
                let kinds = if cfg!(miri) { [0, 2, 4, 4, 0] } else { [0, 1, 2, 3, 4] };
                for _ in 0..iters {
                    let (c, h) = match kinds[rng.below(5)] {
                        0 => parent.with_cancel(),
                        // Long enough never to fire during the test.
                        1 => parent.with_timeout(Duration::from_secs(3600)),
                        2 => clock_parent.with_timeout(Duration::from_secs(1 + rng.below(100) as u64)),
                        3 => {
                            let (mid, mh) = parent.with_cancel();
                            let (c, h) = mid.with_timeout(Duration::from_secs(3600));
                            kept.push((mid, Some(mh)));
                            (c, h)
                        }
                        _ => {
                            let a = Context::any([&parent, &clock_parent]);
                            a.with_cancel()
                        }
                    };
                    kept.push((c, Some(h)));
                    // Drop a random earlier one, in a random order of parts.
                    if kept.len() > 8 {
                        let i = rng.below(kept.len());
                        let (c, h) = kept.swap_remove(i);
                        if rng.below(2) == 0 {
                            drop(h);
                            drop(c);
                        } else {
                            drop(c);
                            drop(h);
                        }
                    }
                    if rng.below(64) == 0 {
                        CLOCK.advance(Duration::from_millis(rng.below(2000) as u64));
                    }
                }
                drop(kept);
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    assert!(!parent.is_done(), "children's churn must not cancel the parent");
    assert_eq!(CLOCK.armed(), 0, "manual-clock entries left armed");
    assert_eq!(StdTimer::global().armed(), std_armed, "std timer entries left armed");
    drop(parent_handle);
    drop(parent);
    drop(clock_parent);
    assert_eq!(Arc::strong_count(&token), 1, "contexts leaked");
}

/// Waiters register (async, with counting wakers) and block (threads) while
/// another thread cancels: every async waiter that saw `Pending` was woken
/// exactly once, and every blocked thread returns.
#[test]
fn waiters_race_cancel() {
    let _g = serial();
    let token = Arc::new(());
    let per_thread = scaled(64);
    for round in 0..scaled(200) {
        let (ctx, handle) = Context::background().with_value(&TOKEN, token.clone()).with_cancel();
        let (child, _child_handle) = ctx.with_cancel();
        let n = threads();
        let start = Arc::new(Barrier::new(n + 2));
        let waiters: Vec<_> = (0..n)
            .map(|t| {
                let (ctx, child, start) = (ctx.clone(), child.clone(), start.clone());
                thread::spawn(move || {
                    let mut futs = Vec::new();
                    start.wait();
                    for i in 0..per_thread {
                        let (count, waker) = counting_waker();
                        let target = if (i + t) % 2 == 0 { &ctx } else { &child };
                        let mut fut = Box::pin(target.done_owned());
                        let first = fut.as_mut().poll(&mut TaskContext::from_waker(&waker));
                        futs.push((fut, count, waker, first.is_pending()));
                    }
                    futs
                })
            })
            .collect();
        let blocked = {
            let (child, start) = (child.clone(), start.clone());
            thread::spawn(move || {
                start.wait();
                child.wait_blocking()
            })
        };
        start.wait();
        if round % 2 == 0 {
            thread::yield_now();
        }
        handle.cancel();
        assert_eq!(blocked.join().unwrap(), Error::Canceled);
        for w in waiters {
            for (mut fut, count, waker, was_pending) in w.join().unwrap() {
                let wakes = count.0.load(Ordering::SeqCst);
                assert_eq!(wakes, usize::from(was_pending), "lost or extra wake-up");
                let r = fut.as_mut().poll(&mut TaskContext::from_waker(&waker));
                assert_eq!(r, Poll::Ready(Error::Canceled));
            }
        }
    }
    assert_eq!(Arc::strong_count(&token), 1, "contexts leaked");
}

/// After-funcs registered, stopped and run from several threads at once:
/// for every one, `stop() == true` and running are mutually exclusive and
/// one of them happens — exactly once.
#[test]
fn after_funcs_race_stop() {
    let _g = serial();
    let token = Arc::new(());
    let per_thread = scaled(200);
    for round in 0..scaled(100) {
        let (ctx, handle) = Context::background().with_value(&TOKEN, token.clone()).with_cancel();
        let n = threads();
        let start = Arc::new(Barrier::new(n + 1));
        let workers: Vec<_> = (0..n)
            .map(|t| {
                let (ctx, start) = (ctx.clone(), start.clone());
                thread::spawn(move || {
                    let mut rng = Rng::new((round * 13 + t) as u64);
                    let mut results = Vec::new();
                    start.wait();
                    for _ in 0..per_thread {
                        let runs = Arc::new(AtomicUsize::new(0));
                        let r = runs.clone();
                        // The closure holds a context: freed when run or stopped.
                        let held = ctx.clone();
                        let af = ctx.after_func(move || {
                            assert!(held.is_done(), "after-func ran on a live context");
                            r.fetch_add(1, Ordering::SeqCst);
                        });
                        let stopped = match rng.below(3) {
                            0 => af.stop(),
                            1 => af.stop() | af.stop(), // the second must be false
                            _ => false,                 // dropped unstopped: must still run
                        };
                        results.push((runs, stopped));
                    }
                    results
                })
            })
            .collect();
        start.wait();
        handle.cancel();
        for w in workers {
            for (runs, stopped) in w.join().unwrap() {
                let ran = runs.load(Ordering::SeqCst);
                assert_eq!(ran + usize::from(stopped), 1, "ran {ran} times, stopped: {stopped}");
            }
        }
        // A stop racing the run on another thread.
        let (ctx, handle) = Context::background().with_cancel();
        let runs = Arc::new(AtomicUsize::new(0));
        let r = runs.clone();
        let af = Arc::new(ctx.after_func(move || {
            r.fetch_add(1, Ordering::SeqCst);
        }));
        let stopper = {
            let af = af.clone();
            thread::spawn(move || af.stop())
        };
        handle.cancel();
        let stopped = stopper.join().unwrap();
        assert_eq!(runs.load(Ordering::SeqCst) + usize::from(stopped), 1);
    }
    assert_eq!(Arc::strong_count(&token), 1, "contexts or after-func closures leaked");
}

/// Deadlines firing (std timer thread) while other threads cancel: every
/// context ends with one consistent error/cause pair, its after-func ran
/// once and its waiter woke, and no timer entry is left.
#[test]
#[cfg_attr(miri, ignore)] // the timer thread outlives the test under Miri
fn deadlines_race_cancel_std_timer() {
    let _g = serial();
    let token = Arc::new(());
    let std_armed = StdTimer::global().armed();
    let count = scaled(400);
    let (root, _root_handle) = Context::background().with_value(&TOKEN, token.clone()).with_cancel();
    let mut rng = Rng::new(99);
    let mut items = Vec::new();
    for i in 0..count {
        let d = Duration::from_micros(rng.below(3000) as u64);
        let (c, h) = if i % 2 == 0 {
            root.with_timeout_cause(d, "deadline cause")
        } else {
            root.with_timeout(d)
        };
        let runs = Arc::new(AtomicUsize::new(0));
        let r = runs.clone();
        c.after_func(move || {
            r.fetch_add(1, Ordering::SeqCst);
        });
        let (wc, waker) = counting_waker();
        let mut fut = Box::pin(c.done_owned());
        let pending = fut.as_mut().poll(&mut TaskContext::from_waker(&waker)).is_pending();
        items.push((c, Some(h), runs, fut, wc, waker, pending));
    }
    // Cancel half of them from two threads while the timer fires the rest.
    let mut hs: Vec<Vec<_>> = vec![Vec::new(), Vec::new()];
    for (i, it) in items.iter_mut().enumerate() {
        if i % 4 < 2 {
            hs[i % 2].push(it.1.take().unwrap());
        }
    }
    let cancellers: Vec<_> = hs
        .into_iter()
        .map(|hs| {
            thread::spawn(move || {
                for h in hs {
                    h.cancel_with("cancelled");
                }
            })
        })
        .collect();
    for c in cancellers {
        c.join().unwrap();
    }
    for (i, (c, h, runs, mut fut, wc, waker, pending)) in items.into_iter().enumerate() {
        // Blocks until the deadline (at most 3 ms away) if not cancelled.
        let err = c.wait_blocking();
        let cause = c.cause().unwrap();
        match err {
            Error::DeadlineExceeded if i % 2 == 0 => assert_eq!(cause.as_str(), Some("deadline cause")),
            Error::DeadlineExceeded => assert_eq!(cause.as_error(), Some(Error::DeadlineExceeded)),
            Error::Canceled => {
                assert!(i % 4 < 2, "only the cancelled half can be Canceled");
                assert_eq!(cause.as_str(), Some("cancelled"));
            }
        }
        // The timer thread fires outside its lock; wait for the callback
        // to have run (it is the same thread that woke `wait_blocking`).
        let r = fut.as_mut().poll(&mut TaskContext::from_waker(&waker));
        assert_eq!(r, Poll::Ready(err));
        while runs.load(Ordering::SeqCst) == 0 || (pending && wc.0.load(Ordering::SeqCst) == 0) {
            thread::yield_now();
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert!(wc.0.load(Ordering::SeqCst) <= 1);
        drop(h);
    }
    assert_eq!(StdTimer::global().armed(), std_armed, "std timer entries left armed");
    drop(root);
    drop(_root_handle);
    assert_eq!(Arc::strong_count(&token), 1, "contexts leaked");
}

/// The same race on a manual clock advanced from one thread while others
/// cancel and create deadline children: the outcome must be consistent and
/// every entry disarmed or fired.
#[test]
fn deadlines_race_cancel_manual_clock() {
    let _g = serial();
    static CLOCK: ManualClock = ManualClock::new();
    let token = Arc::new(());
    let rounds = scaled(100);
    let per = scaled(100);
    for round in 0..rounds {
        let root = Context::with_timer(&CLOCK).with_value(&TOKEN, token.clone());
        let (mid, mid_handle) = root.with_timeout_cause(Duration::from_millis(50), "mid deadline");
        let stop = Arc::new(AtomicBool::new(false));
        let ticker = {
            let stop = stop.clone();
            thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    CLOCK.advance(Duration::from_micros(100));
                    thread::yield_now();
                }
            })
        };
        let workers: Vec<_> = (0..threads().saturating_sub(1).max(1))
            .map(|t| {
                let mid = mid.clone();
                thread::spawn(move || {
                    let mut rng = Rng::new((round * 7 + t) as u64);
                    let mut out = Vec::new();
                    for _ in 0..per {
                        let d = Duration::from_micros(rng.below(60_000) as u64);
                        let (c, h) = mid.with_timeout_cause(d, "own deadline");
                        let runs = Arc::new(AtomicUsize::new(0));
                        let r = runs.clone();
                        let af = c.after_func(move || {
                            r.fetch_add(1, Ordering::SeqCst);
                        });
                        let stopped = rng.below(4) == 0 && af.stop();
                        if rng.below(3) == 0 {
                            h.cancel_with("cancelled");
                        }
                        out.push((c, h, runs, stopped));
                    }
                    out
                })
            })
            .collect();
        let results: Vec<_> = workers.into_iter().flat_map(|w| w.join().unwrap()).collect();
        stop.store(true, Ordering::SeqCst);
        ticker.join().unwrap();
        // Past every deadline: everything is done now.
        CLOCK.advance(Duration::from_millis(100));
        assert_eq!(mid.err(), Some(Error::DeadlineExceeded));
        for (c, h, runs, stopped) in results {
            let err = c.err().expect("past every deadline");
            let cause = c.cause().unwrap();
            let s = cause.as_str().unwrap();
            match err {
                Error::Canceled => assert_eq!(s, "cancelled"),
                Error::DeadlineExceeded => assert!(s == "own deadline" || s == "mid deadline", "{s}"),
            }
            // A deadline a read noticed first (`after_func`'s own check, a
            // child's creation) hands its after-funcs to a thread of their
            // own (issue 11, item 7): wait for them, boundedly.
            let until = std::time::Instant::now() + Duration::from_secs(10);
            while runs.load(Ordering::SeqCst) + usize::from(stopped) == 0 && std::time::Instant::now() < until {
                thread::yield_now();
            }
            assert_eq!(runs.load(Ordering::SeqCst) + usize::from(stopped), 1);
            drop(h);
        }
        drop(mid_handle);
        assert_eq!(CLOCK.armed(), 0, "manual-clock entries left armed");
    }
    assert_eq!(Arc::strong_count(&token), 1, "contexts leaked");
}

/// `any` nodes over parents cancelled from different threads: done with one
/// parent's cause, woken once, and freed with everything else.
#[test]
fn any_race_cancel() {
    let _g = serial();
    let token = Arc::new(());
    for round in 0..scaled(500) {
        let base = Context::background().with_value(&TOKEN, token.clone());
        let parents: Vec<_> = (0..threads()).map(|_| base.with_cancel()).collect();
        let ctxs: Vec<&Context> = parents.iter().map(|(c, _)| c).collect();
        let anys: Vec<Context> = (0..8)
            .map(|i| Context::any(ctxs.iter().copied().cycle().skip(i).take(1 + i % ctxs.len())))
            .collect();
        let mut waits = Vec::new();
        for a in &anys {
            let (count, waker) = counting_waker();
            let mut fut = Box::pin(a.done_owned());
            assert!(fut.as_mut().poll(&mut TaskContext::from_waker(&waker)).is_pending());
            waits.push((fut, count, waker));
        }
        let start = Arc::new(Barrier::new(parents.len()));
        let cancellers: Vec<_> = parents
            .into_iter()
            .enumerate()
            .map(|(t, (c, h))| {
                let start = start.clone();
                thread::spawn(move || {
                    start.wait();
                    if (t + round) % 3 == 0 {
                        drop(h);
                    } else {
                        h.cancel_with(Cause::from(CAUSES[t % CAUSES.len()]));
                    }
                    drop(c);
                })
            })
            .collect();
        for c in cancellers {
            c.join().unwrap();
        }
        for (a, (fut, count, waker)) in anys.iter().zip(&mut waits) {
            assert_eq!(a.err(), Some(Error::Canceled));
            let cause = a.cause().unwrap();
            assert!(
                cause.as_error() == Some(Error::Canceled) || CAUSES.iter().any(|s| cause.as_str() == Some(s)),
                "{cause:?}"
            );
            assert_eq!(count.0.load(Ordering::SeqCst), 1);
            assert_eq!(
                fut.as_mut().poll(&mut TaskContext::from_waker(waker)),
                Poll::Ready(Error::Canceled)
            );
        }
    }
    assert_eq!(Arc::strong_count(&token), 1, "contexts leaked");
}

/// Heap-free `ScopedContext` chains created, waited on, cancelled and
/// dropped by several threads under one heap parent while it is cancelled:
/// a scope ending while a canceller still holds its node must wait it out
/// (no use-after-free under ASan, no race under TSan, no deadlock), and a
/// scope made under a parent already seen done is born done.
#[test]
fn scoped_children_race_cancel() {
    use std::pin::pin;
    let _g = serial();
    let token = Arc::new(());
    let per_thread = scaled(300);
    for round in 0..scaled(40) {
        let (parent, handle) = Context::background().with_value(&TOKEN, token.clone()).with_cancel();
        let n = threads();
        let start = Arc::new(Barrier::new(n + 1));
        let workers: Vec<_> = (0..n)
            .map(|t| {
                let (parent, start) = (parent.clone(), start.clone());
                thread::spawn(move || {
                    let mut rng = Rng::new((round * 17 + t) as u64);
                    start.wait();
                    for _ in 0..per_thread {
                        let parent_was_done = parent.is_done();
                        let outer = pin!(ScopedContext::new(parent.as_ref()));
                        let outer_ctx = outer.as_ref().context();
                        let inner = pin!(ScopedContext::new(outer_ctx));
                        let inner_ctx = inner.as_ref().context();
                        if parent_was_done {
                            assert_eq!(inner_ctx.err(), Some(Error::Canceled), "born done under a done parent");
                        }
                        let (count, waker) = counting_waker();
                        let mut done = pin!(inner_ctx.done());
                        let first = done.as_mut().poll(&mut TaskContext::from_waker(&waker));
                        match rng.below(3) {
                            0 => outer.cancel_with("outer"),
                            1 => inner.cancel(),
                            _ => {}
                        }
                        if first.is_pending() && inner.is_done() {
                            // Woken by whichever cancel won, possibly still on
                            // its way on another thread: wait for it.
                            while count.0.load(Ordering::SeqCst) == 0 {
                                thread::yield_now();
                            }
                            assert_eq!(count.0.load(Ordering::SeqCst), 1);
                        }
                        // The scopes end here, inner first, possibly while
                        // the parent's canceller still holds them.
                    }
                })
            })
            .collect();
        start.wait();
        thread::yield_now();
        handle.cancel_with(Cause::from("parent"));
        for w in workers {
            w.join().unwrap();
        }
        assert!(parent.is_done());
    }
    assert_eq!(Arc::strong_count(&token), 1, "contexts leaked");
}

/// Node.rs invariant 16 for deadline kids: per-request timeouts under
/// connection contexts that are dropped at once (orphans held only by
/// their deadline kids), racing their own std-timer firing, their
/// handles' cancels from other threads and the root's cancel. Every
/// request ends done with a consistent error and cause; every waiter
/// wakes; nothing is left armed.
#[test]
fn deadline_kids_of_orphans_race_timer_and_root() {
    let _g = serial();
    let armed = StdTimer::global().armed();
    for round in 0..scaled(400) {
        let (root, rh) = Context::background().with_cancel();
        let mut reqs = Vec::new();
        let mut handles = Vec::new();
        let mut rng = Rng::new(round as u64 + 7);
        for _ in 0..4 {
            let (conn, ch) = root.with_cancel();
            ch.detach();
            for _ in 0..6 {
                let timeout = Duration::from_micros(rng.below(300) as u64);
                let (req, h) = conn.with_timeout(timeout);
                let (step, sh) = req.with_cancel();
                sh.detach();
                reqs.push((req, step));
                handles.push(h);
            }
            drop(conn);
        }
        let mut waits = Vec::new();
        for (_, step) in &reqs {
            let (count, waker) = counting_waker();
            let mut fut = Box::pin(step.done_owned());
            if fut.as_mut().poll(&mut TaskContext::from_waker(&waker)).is_pending() {
                waits.push((fut, count));
            }
        }
        let start = Arc::new(Barrier::new(3));
        let cancel_some = {
            let start = start.clone();
            let mut rng = Rng::new(round as u64 + 11);
            thread::spawn(move || {
                start.wait();
                for h in handles {
                    if rng.below(2) == 0 {
                        h.cancel_with("req");
                    } else {
                        drop(h);
                    }
                }
            })
        };
        let cancel_root = {
            let start = start.clone();
            thread::spawn(move || {
                start.wait();
                thread::sleep(Duration::from_micros(50));
                rh.cancel_with("root");
            })
        };
        start.wait();
        cancel_some.join().unwrap();
        cancel_root.join().unwrap();
        for (req, step) in &reqs {
            let err = req.err().expect("every request ends done");
            let cause = req.cause().expect("a done context has a cause");
            match err {
                Error::DeadlineExceeded => assert_eq!(cause.as_str(), None),
                Error::Canceled => assert!(matches!(cause.as_str(), Some("req") | Some("root") | None)),
            }
            assert_eq!(step.err(), Some(err), "a child agrees with its parent");
        }
        for (fut, count) in waits {
            // Every registered waiter was woken once by whichever won.
            while count.0.load(Ordering::SeqCst) == 0 {
                thread::yield_now();
            }
            assert_eq!(count.0.load(Ordering::SeqCst), 1);
            drop(fut);
        }
        drop(reqs);
    }
    assert_eq!(StdTimer::global().armed(), armed, "nothing left armed");
}
