//! `Context::all`: done only when every parent is done, with the last
//! parent's error and cause and the latest deadline (issue 14).

use ctxcore::time::TimerEntry;
use ctxcore::{Clock, Context, Error, Instant, Key, ManualClock, Timer};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

static NAME: Key<&'static str> = Key::new("name");

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn at(ms: u64) -> Instant {
    Instant::ZERO + Duration::from_millis(ms)
}

fn cause_str(ctx: &Context) -> Option<String> {
    ctx.cause().map(|c| c.to_string())
}

/// A timer whose clock moves only on `set` and which never fires anything:
/// what a read reports comes from the read itself (property 5).
struct FrozenClock {
    now: AtomicU64,
}

impl FrozenClock {
    const fn new() -> Self {
        FrozenClock { now: AtomicU64::new(0) }
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
        let _ = entry;
    }
    unsafe fn disarm(&self, _entry: &TimerEntry) {}
}

#[test]
fn all_is_done_only_when_every_parent_is() {
    let (a, ha) = Context::background().with_cancel();
    let (b, hb) = Context::background().with_cancel();
    let (c, hc) = Context::background().with_cancel();
    let all = Context::all([&a, &b, &c]);
    assert!(!all.is_done());
    hb.cancel_with("b");
    assert!(!all.is_done());
    assert_eq!(all.err(), None);
    ha.cancel_with("a");
    assert!(!all.is_done());
    assert!(all.cause().is_none());
    hc.cancel_with("c");
    assert!(all.is_done());
    assert_eq!(all.err(), Some(Error::Canceled));
    assert_eq!(cause_str(&all).as_deref(), Some("c"), "the last parent's cause");
}

#[test]
fn all_of_nothing_is_done_at_once() {
    let none: [&Context; 0] = [];
    let all = Context::all(none);
    assert!(all.is_done());
    assert_eq!(all.err(), Some(Error::Canceled));
    assert_eq!(all.deadline(), None);
    // No explicit cause: the error.
    assert_eq!(all.cause().unwrap().to_string(), Error::Canceled.to_string());
    let (child, _h) = all.with_cancel();
    assert!(child.is_done());
}

#[test]
fn a_parent_that_is_never_done_makes_all_never_done() {
    let (a, ha) = Context::background().with_cancel();
    let (root, hr) = Context::background().with_cancel();
    let detached = root.without_cancel();
    static CLOCK: ManualClock = ManualClock::new();
    let timer_root = Context::with_timer(&CLOCK);
    for never in [
        Context::background(),
        Context::todo(),
        detached.clone(),
        timer_root.clone(),
    ] {
        let all = Context::all([&a, &never]);
        assert!(!all.is_done());
        assert_eq!(all.deadline(), None);
    }
    let all = Context::all([&a, &detached]);
    let all_timer = Context::all([&timer_root, &a]);
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    let _af = all.after_func(move || {
        r.fetch_add(1, Ordering::SeqCst);
    });
    ha.cancel();
    hr.cancel();
    assert!(!all.is_done() && !all_timer.is_done());
    assert_eq!(all.err(), None);
    assert_eq!(ran.load(Ordering::SeqCst), 0);
    // Deadlines under a never-done `all` still use the parents' timer.
    let (child, _hc) = all_timer.with_timeout(ms(5));
    CLOCK.advance(ms(5));
    assert_eq!(child.err(), Some(Error::DeadlineExceeded));
}

#[test]
fn duplicates_count_once() {
    let (a, ha) = Context::background().with_cancel();
    let (b, hb) = Context::background().with_cancel();
    let a_valued = a.with_value(&NAME, "a");
    let all = Context::all([&a, &a_valued, &b, &a]);
    ha.cancel_with("a");
    assert!(!all.is_done(), "b is still live");
    hb.cancel_with("b");
    assert_eq!(cause_str(&all).as_deref(), Some("b"));
    let (c, hc) = Context::background().with_cancel();
    let only_c = Context::all([&c, &c]);
    hc.cancel();
    assert!(only_c.is_done());
}

#[test]
fn parents_already_done_count_as_done() {
    let (a, ha) = Context::background().with_cancel();
    let (b, hb) = Context::background().with_cancel();
    let (c, hc) = Context::background().with_cancel();
    ha.cancel_with("a");
    let all = Context::all([&a, &c]);
    assert!(!all.is_done());
    hc.cancel_with("c");
    assert_eq!(cause_str(&all).as_deref(), Some("c"));
    // Every parent done already: born done, with the last one's cause in
    // the order given.
    hb.cancel_with("b");
    let born = Context::all([&b, &a]);
    assert!(born.is_done());
    assert_eq!(cause_str(&born).as_deref(), Some("a"));
    let born = Context::all([&a, &b]);
    assert_eq!(cause_str(&born).as_deref(), Some("b"));
}

#[test]
fn all_does_not_cancel_its_parents_and_values_are_the_first_parents() {
    let (a, _ha) = Context::background().with_value(&NAME, "a").with_cancel();
    let (b, _hb) = Context::background().with_value(&NAME, "b").with_cancel();
    let all = Context::all([&a, &b]);
    assert_eq!(all.value(&NAME), Some(&"a"));
    assert_eq!(Context::all([&b, &a]).value(&NAME), Some(&"b"));
    // A child of `all` cancelled does nothing to the parents.
    let (child, hc) = all.with_cancel();
    hc.cancel();
    assert!(child.is_done());
    drop(all);
    assert!(!a.is_done() && !b.is_done());
}

#[test]
fn children_and_after_funcs_follow_the_last_parent() {
    let (a, ha) = Context::background().with_cancel();
    let (b, hb) = Context::background().with_cancel();
    let all = Context::all([&a, &b]);
    let (child, _hc) = all.with_cancel();
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    let _af = child.after_func(move || {
        r.fetch_add(1, Ordering::SeqCst);
    });
    ha.cancel();
    assert!(!child.is_done());
    assert_eq!(ran.load(Ordering::SeqCst), 0);
    hb.cancel_with("b");
    assert_eq!(child.err(), Some(Error::Canceled));
    assert_eq!(cause_str(&child).as_deref(), Some("b"));
    assert_eq!(ran.load(Ordering::SeqCst), 1);
}

#[test]
fn a_waiting_thread_wakes_when_the_last_parent_is_done() {
    let (a, ha) = Context::background().with_cancel();
    let (b, hb) = Context::background().with_cancel();
    let all = Context::all([&a, &b]);
    let waiter = {
        let all = all.clone();
        std::thread::spawn(move || all.wait_blocking())
    };
    ha.cancel();
    assert_eq!(all.wait_blocking_timeout(ms(1)), None);
    hb.cancel();
    assert_eq!(waiter.join().unwrap(), Error::Canceled);
}

#[test]
fn all_takes_the_latest_deadline_and_its_cause() {
    static CLOCK: ManualClock = ManualClock::new();
    let root = Context::with_timer(&CLOCK);
    let (late, _hl) = root.with_deadline_cause(at(50), "late");
    let (early, _he) = root.with_deadline_cause(at(20), "early");
    let all = Context::all([&late, &early]);
    assert_eq!(all.deadline(), Some(at(50)));
    let (child, _hc) = all.with_timeout(ms(100));
    assert_eq!(child.deadline(), Some(at(50)));
    CLOCK.advance(ms(20));
    assert!(early.is_done());
    assert!(!all.is_done() && !child.is_done());
    CLOCK.advance(ms(30));
    assert_eq!(all.err(), Some(Error::DeadlineExceeded));
    assert_eq!(cause_str(&all).as_deref(), Some("late"));
    assert_eq!(child.err(), Some(Error::DeadlineExceeded));
    // A parent without a deadline: none.
    let (none, _hn) = root.with_cancel();
    let (dl, _hd) = root.with_timeout(ms(10));
    assert_eq!(Context::all([&dl, &none]).deadline(), None);
}

#[test]
fn a_parent_cancelled_before_the_others_deadline() {
    static CLOCK: ManualClock = ManualClock::new();
    let root = Context::with_timer(&CLOCK);
    let (a, ha) = root.with_deadline_cause(at(50), "a's deadline");
    let (b, _hb) = root.with_deadline_cause(at(30), "b's deadline");
    let all = Context::all([&a, &b]);
    ha.cancel_with("a cancelled");
    assert!(!all.is_done());
    CLOCK.advance(ms(30));
    assert_eq!(all.err(), Some(Error::DeadlineExceeded));
    assert_eq!(cause_str(&all).as_deref(), Some("b's deadline"));
}

#[test]
fn all_deadline_is_exact_before_the_timers_fire() {
    static CLOCK: FrozenClock = FrozenClock::new();
    let root = Context::with_timer(&CLOCK);
    let (a, _ha) = root.with_deadline_cause(at(5), "a's deadline");
    let (b, _hb) = root.with_deadline_cause(at(9), "b's deadline");
    let all = Context::all([&a, &b]);
    let (child, _hc) = all.with_cancel();
    let (grandchild, _hg) = child.with_timeout(ms(100));
    assert_eq!(grandchild.deadline(), Some(at(9)));
    CLOCK.set(at(6));
    assert!(a.is_done());
    assert!(!all.is_done());
    CLOCK.set(at(9));
    assert_eq!(all.err(), Some(Error::DeadlineExceeded));
    assert_eq!(cause_str(&all).as_deref(), Some("b's deadline"));
    // The read fired the parents: the cancellation reached the child.
    assert!(child.is_done());
    assert_eq!(grandchild.err(), Some(Error::DeadlineExceeded));
}

#[test]
fn a_descendant_read_fires_every_parent() {
    static CLOCK: FrozenClock = FrozenClock::new();
    let root = Context::with_timer(&CLOCK);
    let (a, _ha) = root.with_deadline_cause(at(5), "a's deadline");
    let (b, _hb) = root.with_deadline_cause(at(9), "b's deadline");
    let all = Context::all([&a, &b]);
    let (child, _hc) = all.with_timeout(ms(100));
    CLOCK.set(at(9));
    assert_eq!(child.err(), Some(Error::DeadlineExceeded));
    assert!(a.is_done() && b.is_done());
    assert!(all.is_done());
}

#[test]
fn a_cancelled_parent_and_a_passed_deadline_unfired() {
    static CLOCK: FrozenClock = FrozenClock::new();
    let root = Context::with_timer(&CLOCK);
    let (a, ha) = root.with_cancel();
    let (b, _hb) = root.with_deadline_cause(at(7), "b's deadline");
    let all = Context::all([&a, &b]);
    assert_eq!(all.deadline(), None);
    CLOCK.set(at(7));
    assert!(!all.is_done(), "a is live");
    ha.cancel_with("a");
    // b's deadline has passed; no timer fired: the read finds it.
    assert!(all.is_done());
    assert_eq!(all.err(), Some(Error::DeadlineExceeded));
    assert_eq!(cause_str(&all).as_deref(), Some("b's deadline"));
}

#[test]
fn all_and_any_nest() {
    let (a, ha) = Context::background().with_cancel();
    let (b, hb) = Context::background().with_cancel();
    let (c, hc) = Context::background().with_cancel();
    let ab = Context::all([&a, &b]);
    let either = Context::any([&ab, &c]);
    let outer = Context::all([&ab, &c]);
    ha.cancel();
    hc.cancel_with("c");
    assert!(either.is_done());
    assert!(!outer.is_done());
    hb.cancel_with("b");
    assert!(ab.is_done());
    assert_eq!(cause_str(&outer).as_deref(), Some("b"));
}

#[test]
fn dropped_before_or_while_its_parents_are_cancelled() {
    for round in 0..4u32 {
        let (a, ha) = Context::background().with_cancel();
        let (b, hb) = Context::background().with_cancel();
        let all = Context::all([&a, &b]);
        let (child, hc) = all.with_cancel();
        if round & 1 == 0 {
            drop(all);
        }
        let t = std::thread::spawn(move || ha.cancel_with("a"));
        if round & 2 == 0 {
            drop(child);
            drop(hc);
        } else {
            hb.cancel_with("b");
            t.join().unwrap();
            assert!(child.is_done());
            continue;
        }
        hb.cancel_with("b");
        t.join().unwrap();
    }
}

#[test]
fn concurrent_last_parents_one_cause() {
    let rounds = if cfg!(miri) { 3 } else { 200 };
    for _ in 0..rounds {
        let (a, ha) = Context::background().with_cancel();
        let (b, hb) = Context::background().with_cancel();
        let all = Context::all([&a, &b]);
        let t = std::thread::spawn(move || ha.cancel_with("a"));
        hb.cancel_with("b");
        t.join().unwrap();
        let cause = cause_str(&all).unwrap();
        assert!(cause == "a" || cause == "b");
    }
}

// The adversarial review of `Context::all` (D1–D4 and its stress cases).

/// Deep chains and big fan-ins run at full size natively, small under Miri.
const fn big(n: usize) -> usize {
    if cfg!(miri) {
        20
    } else {
        n
    }
}

/// D2: parents on two timers. The all node has no deadline (the latest of
/// instants on two clocks means nothing), and a child never reads done while
/// the all node and one parent are live.
#[test]
fn cross_timer_child_done_under_live_all() {
    static CA: FrozenClock = FrozenClock::new();
    static CB: FrozenClock = FrozenClock::new();
    let ra = Context::with_timer(&CA);
    let rb = Context::with_timer(&CB);
    let (a, _ha) = ra.with_deadline(at(100));
    let (b, _hb) = rb.with_deadline(at(50));
    let all = Context::all([&a, &b]);
    assert_eq!(all.deadline(), None, "no deadline across timers");
    let (child, _hc) = all.with_cancel();
    assert_eq!(child.deadline(), None);
    CA.set(at(100)); // a's deadline passes; b's clock is still at 0
    assert!(!child.is_done(), "child done under a live all node");
    assert!(!all.is_done());
    assert!(!b.is_done());
    assert!(a.is_done());
    assert_eq!(child.err(), None);
    // b's deadline passes on its own clock: a read of the all node fires it,
    // and the cancellation reaches the child before the read returns.
    CB.set(at(50));
    assert_eq!(all.err(), Some(Error::DeadlineExceeded));
    assert!(child.is_done());
}

/// D2, same timer: a child whose deadline passed reads done only through an
/// all node that is done.
#[test]
fn same_timer_child_reads_through_the_all_node() {
    static C: FrozenClock = FrozenClock::new();
    let root = Context::with_timer(&C);
    let (a, _ha) = root.with_deadline(at(10));
    let (b, _hb) = root.with_deadline(at(20));
    let all = Context::all([&a, &b]);
    assert_eq!(all.deadline(), Some(at(20)));
    let (child, _hc) = all.with_cancel();
    C.set(at(20));
    assert_eq!(child.err(), Some(Error::DeadlineExceeded));
    assert!(all.is_done() && a.is_done() && b.is_done());
}

/// D4: duplicates are removed by sorting, not by a scan per parent; a big
/// fan-in is built and counted down quickly.
#[test]
fn many_parents() {
    let n = big(100_000);
    let ps: Vec<_> = (0..n).map(|_| Context::background().with_cancel()).collect();
    // Every parent twice, the second time in reverse.
    let all = Context::all(ps.iter().map(|(c, _)| c).chain(ps.iter().rev().map(|(c, _)| c)));
    for (_, h) in &ps[..n - 1] {
        h.cancel();
    }
    assert!(!all.is_done(), "the duplicates count once");
    ps[n - 1].1.cancel_with("last");
    assert_eq!(cause_str(&all).as_deref(), Some("last"));
    let any = Context::any(ps.iter().map(|(c, _)| c).chain(ps.iter().map(|(c, _)| c)));
    assert!(any.is_done());
}

/// D4: removing duplicates keeps each parent at its first position: for
/// parents done already, "the last parent" is the last in the order given
/// (after duplicates are dropped), and `any`'s the first.
#[test]
fn duplicates_keep_the_first_position() {
    let (one, h1) = Context::background().with_cancel();
    let (two, h2) = Context::background().with_cancel();
    h1.cancel_with("1");
    h2.cancel_with("2");
    assert_eq!(cause_str(&Context::all([&one, &two, &one])).as_deref(), Some("2"));
    assert_eq!(cause_str(&Context::all([&two, &one, &two])).as_deref(), Some("1"));
    assert_eq!(cause_str(&Context::any([&two, &one, &two])).as_deref(), Some("2"));
    assert_eq!(cause_str(&Context::any([&one, &two, &one])).as_deref(), Some("1"));
}

/// D1: a parent reads done before its cancellation reaches the all node, so
/// of two cancellations close together either may complete the countdown.
/// What holds: once both cancels returned, the node is done with one of
/// their causes, and its children with the same.
#[test]
fn last_parent_is_the_one_that_completed_the_countdown() {
    for _ in 0..big(200) {
        let (a, ha) = Context::background().with_cancel();
        let (b, hb) = Context::background().with_cancel();
        let both = Context::all([&a, &b]);
        let (child, _hc) = both.with_cancel();
        let t = std::thread::spawn(move || ha.cancel_with("a"));
        while !a.is_done() {
            std::thread::yield_now();
        }
        hb.cancel_with("b");
        t.join().unwrap();
        let cause = cause_str(&both).unwrap();
        assert!(cause == "a" || cause == "b", "{cause}");
        assert_eq!(cause_str(&child), Some(cause));
    }
}

/// D3: a child with a deadline under an all node whose parents are done or
/// past their deadlines (no timer fired): exact reads hold for the all node
/// itself, and the child follows once the all node has been read (the read
/// runs the cancellation, which reaches the child before it returns).
#[test]
fn child_with_deadline_follows_an_observably_done_all() {
    static C: FrozenClock = FrozenClock::new();
    let root = Context::with_timer(&C);
    let (a, _ha) = root.with_deadline(at(5));
    let (b, hb) = root.with_deadline(at(9));
    let all = Context::all([&a, &b]);
    let (child, _hc) = all.with_cancel();
    hb.cancel();
    C.set(at(6));
    assert!(all.is_done());
    assert_eq!(
        all.err(),
        Some(Error::DeadlineExceeded),
        "a's deadline completed the countdown"
    );
    assert!(child.is_done(), "the read of the all node reached the child");
    assert_eq!(child.err(), Some(Error::DeadlineExceeded));
}

/// Deep chain of all nodes: cancel and drop on a small stack.
#[test]
fn deep_chain_of_all_nodes() {
    std::thread::Builder::new()
        .stack_size(128 * 1024)
        .spawn(|| {
            let (root, h) = Context::background().with_cancel();
            let mut cur = root.clone();
            let mut keep = Vec::new();
            for i in 0..big(100_000) {
                let (other, ho) = Context::background().with_cancel();
                let next = if i % 2 == 0 {
                    Context::all([&cur, &other])
                } else {
                    Context::any([&cur])
                };
                ho.cancel();
                keep.push(other);
                cur = next;
            }
            assert!(!cur.is_done());
            h.cancel();
            assert!(cur.is_done());
            drop(keep);
            drop(cur);
        })
        .unwrap()
        .join()
        .unwrap();
}

/// Deep chain of all nodes dropped without being cancelled.
#[test]
fn deep_chain_drop_live() {
    std::thread::Builder::new()
        .stack_size(128 * 1024)
        .spawn(|| {
            let (root, _h) = Context::background().with_cancel();
            let mut cur = root.clone();
            for _ in 0..big(100_000) {
                cur = Context::all([&cur]);
            }
            drop(cur);
        })
        .unwrap()
        .join()
        .unwrap();
}

/// Deep chain with deadlines, read on a small stack (the read path does not
/// recurse).
#[test]
fn deep_chain_read_with_deadlines() {
    static C: FrozenClock = FrozenClock::new();
    std::thread::Builder::new()
        .stack_size(128 * 1024)
        .spawn(|| {
            let root = Context::with_timer(&C);
            let (d, _h) = root.with_deadline(at(10));
            let mut cur = d.clone();
            let mut hs = Vec::new();
            for _ in 0..big(50_000) {
                let (c, h) = cur.with_cancel();
                hs.push(h);
                cur = Context::all([&c]);
            }
            C.set(at(10));
            assert!(cur.is_done());
            assert_eq!(cur.err(), Some(Error::DeadlineExceeded));
        })
        .unwrap()
        .join()
        .unwrap();
}

/// Threads create, wait on and drop all nodes while their parents are
/// cancelled.
#[test]
fn stress_threads() {
    for round in 0..big(300) {
        let (a, ha) = Context::background().with_cancel();
        let (b, hb) = Context::background().with_cancel();
        let (c, hc) = b.with_cancel();
        let mut ts = Vec::new();
        for k in 0..4 {
            let (a, b, c) = (a.clone(), b.clone(), c.clone());
            ts.push(std::thread::spawn(move || {
                let x = Context::all([&a, &c, &b]);
                let y = Context::all([&x, &Context::any([&a, &b])]);
                let (z, _hz) = y.with_cancel();
                if k % 2 == 0 {
                    assert!(
                        z.wait_blocking_timeout(Duration::from_secs(10)).is_some(),
                        "round {round}: hang"
                    );
                    assert!(x.is_done() && y.is_done());
                }
                drop((x, y, z));
            }));
        }
        std::thread::yield_now();
        if round % 2 == 0 {
            ha.cancel_with("a");
            hb.cancel_with("b");
        } else {
            hb.cancel_with("b");
            ha.cancel_with("a");
        }
        drop(hc);
        for t in ts {
            t.join().unwrap();
        }
    }
}

mod reenter {
    use super::*;
    use std::future::Future;
    use std::sync::Mutex;
    use std::task::{Context as TaskCx, Wake, Waker};

    struct W(Mutex<Option<Box<dyn FnMut() + Send>>>);
    impl Wake for W {
        fn wake(self: Arc<Self>) {
            let f = self.0.lock().unwrap().take();
            if let Some(mut f) = f {
                f();
            }
        }
    }

    /// A waker on `a`, woken by a's cancel, re-enters: builds all([a, b])
    /// (a already done), cancels b, reads and drops; another waker panics.
    #[test]
    fn waker_reenters_and_panics_during_countdown() {
        let (a, ha) = Context::background().with_cancel();
        let (b, hb) = Context::background().with_cancel();
        let all0 = Context::all([&a, &b]);
        let (a2, b2, all2) = (a.clone(), b.clone(), all0.clone());
        let hb = Mutex::new(Some(hb));
        let w1 = Arc::new(W(Mutex::new(Some(Box::new(move || {
            let x = Context::all([&a2, &b2]);
            assert!(!x.is_done());
            drop(hb.lock().unwrap().take());
            assert!(x.is_done() && all2.is_done());
            assert_eq!(all2.cause().unwrap().to_string(), "context canceled");
        })))));
        let w2 = Arc::new(W(Mutex::new(Some(Box::new(|| panic!("waker panics"))))));
        let mut f1 = Box::pin(a.done());
        let mut f2 = Box::pin(all0.done());
        let wk2 = Waker::from(w2.clone());
        assert!(f2.as_mut().poll(&mut TaskCx::from_waker(&wk2)).is_pending());
        let wk1 = Waker::from(w1.clone());
        assert!(f1.as_mut().poll(&mut TaskCx::from_waker(&wk1)).is_pending());
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ha.cancel_with("a")));
        assert!(r.is_err(), "the waker's panic is re-raised");
        assert!(a.is_done() && b.is_done() && all0.is_done());
        drop(f2);
        drop(f1);
        drop(all0);
    }

    /// An after-func on a parent drops the last handle to an all node and
    /// builds a new one over the same parents while the countdown runs.
    #[test]
    fn after_func_drops_all_during_countdown() {
        let (a, ha) = Context::background().with_cancel();
        let (b, hb) = Context::background().with_cancel();
        let all0 = Arc::new(Mutex::new(Some(Context::all([&a, &b]))));
        let all1 = all0.clone();
        let (a2, b2) = (a.clone(), b.clone());
        let _af = a.after_func(move || {
            drop(all1.lock().unwrap().take());
            let y = Context::all([&a2, &b2]);
            assert!(y.is_done());
            drop(y);
        });
        hb.cancel();
        ha.cancel();
        assert!(all0.lock().unwrap().is_none());
    }
}
