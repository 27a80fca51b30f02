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
    fn arm(&self, entry: TimerEntry) {
        let _ = entry;
    }
    fn disarm(&self, _entry: &TimerEntry) {}
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
