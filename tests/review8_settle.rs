//! Review 8: session 8's `settle_observed` (a read of a live `any` node
//! that finds a parent done makes the node done itself before answering)
//! under attack: `all` nodes (never settled, never early), nested shapes,
//! what the settled node reports (error, cause, site, children, waiters,
//! after-funcs handed off exactly once), re-entrant and panicking wakers,
//! races of readers against cancellers and against the last release, and
//! leaks (a cause that counts its live copies: a node kept alive by a
//! queued entry that is never released keeps its cause).
//!
//! Every clock here is a `Lazy` timer: it never fires by itself, so only
//! reads observe its deadlines (the situation `settle_observed` is about).
//!
//! Verdicts: `all_read_vs_other_reader_stress` is a defect (ignored): the
//! `all` counterpart of review 6's flip, which `settle_observed` does not
//! cover; the rest hold.

use ctxcore::{Context, Error, ManualClock};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::task::{Wake, Waker};
use std::time::Duration;

mod common;
use common::{poll, Lazy};

const SEC: Duration = Duration::from_secs(1);

/// A cause that counts its live values in `live` (a leaked node keeps one).
#[derive(Debug)]
struct Counted(&'static str, Arc<AtomicUsize>);
impl Counted {
    fn new(s: &'static str, live: &Arc<AtomicUsize>) -> Self {
        live.fetch_add(1, Ordering::SeqCst);
        Counted(s, live.clone())
    }
}
impl Drop for Counted {
    fn drop(&mut self) {
        self.1.fetch_sub(1, Ordering::SeqCst);
    }
}
impl std::fmt::Display for Counted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}
impl std::error::Error for Counted {}

fn result(
    ctx: &Context,
) -> (
    Option<String>,
    Option<Error>,
    Option<&'static std::panic::Location<'static>>,
) {
    // The cause first: a flip shows in its text.
    let cause = ctx.cause().map(|c| c.to_string());
    (cause, ctx.err(), ctx.cancelled_at())
}

/// The `all` counterpart of review 6's flip. An `all` node over two parents
/// whose deadlines (with causes) have passed: one thread reads the first
/// parent (firing it: it is flagged done, then, still under its lock, its
/// waiter list is drained and the `all` node counted down), the other reads
/// the `all` node. A read that finds the first parent flagged but not yet
/// counted skips it, fires the second one, counts it down (not last) and
/// reports the parent with the latest deadline it found passed
/// (`all_observed`); the first parent's canceller then counts last and the
/// node ends done with the first parent's cause. A second read in that
/// window even reads live (every parent flagged, none fired by it: `None`).
/// Nothing settles an `all` node (`settle_observed` is for `any` nodes
/// only). To widen the window, the first parent has many other `any`
/// nodes linked in front of the `all` node's link (a waiter list is drained
/// front to back, pushed at the front), and the reader starts after a
/// varying spin. Not reproduced natively (the reader saw the first parent
/// flagged with the countdown untouched in most rounds, yet always found
/// the node done by the end of its read), and loom's exploration of the
/// same shape (loom/tests/review8_settle.rs) passes; with two Relaxed
/// loads of the countdown added to `all_observed` (tracing only: more
/// scheduling points) loom fails at once with a read that reported cause
/// "p2", a next read that said live (`err()` `None`), and the node ending
/// done with "p1".
#[test]
#[cfg_attr(miri, ignore = "threads, many rounds")]
#[ignore = "suspected defect (review 8), not reproduced natively: loom finds it only with tracing loads of the countdown added to all_observed (an all node's read reports the latest fired parent, then reads live, while a racing parent's canceller counts last and the node ends with that parent's cause)"]
fn all_read_vs_other_reader_stress() {
    static L: Lazy = Lazy::new();
    let mut flipped = 0;
    let mut went_live = 0;
    let mut examples = Vec::new();
    let rounds = 500;
    for round in 0..rounds {
        // Two roots: siblings would serialize on their parent's lock.
        let (r1, r2) = (Context::with_timer(&L), Context::with_timer(&L));
        let (p1, _h1) = r1.with_deadline_cause(r1.now() + SEC, "p1");
        let (p2, _h2) = r2.with_deadline_cause(r2.now() + 2 * SEC, "p2");
        let all = Context::all([&p1, &p2]);
        let others: Vec<Context> = (0..4000).map(|_| Context::any([&p1])).collect();
        L.advance(2);
        let go = Arc::new(AtomicBool::new(false));
        let (p1b, go2) = (p1.clone(), go.clone());
        let t = std::thread::spawn(move || {
            go2.store(true, Ordering::SeqCst);
            assert!(p1b.is_done());
        });
        while !go.load(Ordering::SeqCst) {
            std::hint::spin_loop();
        }
        for _ in 0..(round % 128) * 8 {
            std::hint::spin_loop();
        }
        let seen = all.cause().map(|c| c.to_string());
        let err = all.err();
        t.join().unwrap();
        let fin = all.cause().map(|c| c.to_string());
        if seen.is_some() && err.is_none() {
            went_live += 1;
        }
        if seen.is_some() && seen != fin {
            flipped += 1;
            if examples.len() < 3 {
                examples.push((seen, fin));
            }
        }
        drop(others);
    }
    assert_eq!(
        (flipped, went_live),
        (0, 0),
        "of {rounds} rounds, {flipped} reads of the all node reported a cause it did not end with \
         ({examples:?}), and in {went_live} a read after a done read said live"
    );
}

/// The same shape for an `any` node (what `settle_observed` fixed), two
/// readers and a canceller of the other parent at once: every read agrees
/// with what the node ends with (holds).
#[test]
#[cfg_attr(miri, ignore = "threads, many rounds")]
fn polls_any_two_readers_and_a_cancel_stress() {
    static A: Lazy = Lazy::new();
    static B: Lazy = Lazy::new();
    let mut flipped = 0;
    for _ in 0..5_000 {
        let (a, ha) = Context::with_timer(&A).with_timeout(1000 * SEC);
        let (b, _hb) = Context::with_timer(&B).with_timeout_cause(SEC, "b");
        let any = Context::any([&a, &b]);
        B.advance(1);
        let bar = Arc::new(Barrier::new(3));
        let spawn = |ctx: Context, bar: Arc<Barrier>| {
            std::thread::spawn(move || {
                bar.wait();
                result(&ctx)
            })
        };
        let t1 = spawn(any.clone(), bar.clone());
        let t2 = spawn(any.clone(), bar.clone());
        bar.wait();
        ha.cancel_with("a");
        let (s1, s2) = (t1.join().unwrap(), t2.join().unwrap());
        let fin = result(&any);
        assert!(s1.1.is_some() && s2.1.is_some());
        if s1 != fin || s2 != fin {
            flipped += 1;
        }
    }
    assert_eq!(flipped, 0, "{flipped} reads disagreed with the node's end");
}

/// Leaks and after-funcs under the race `settle_observed` decides: a
/// reader (settling) against the other parent's canceller, with a waiter,
/// a child and an after-func on the `any` node and a counted cause. Every
/// round: the after-func runs exactly once and never on the reader's
/// thread (the read hands it off; the canceller's own cancel may run it
/// inline), the waiter is woken, the child is done with the node's result,
/// and once everything is dropped no copy of the cause is left (a queued
/// entry of the node that lost to the read is released).
#[test]
#[cfg_attr(miri, ignore = "threads, many rounds")]
fn settle_vs_cancel_after_funcs_once_and_no_leak() {
    static A: Lazy = Lazy::new();
    static B: Lazy = Lazy::new();
    let live = Arc::new(AtomicUsize::new(0));
    let ran = Arc::new(AtomicUsize::new(0));
    let on_reader = Arc::new(AtomicUsize::new(0));
    let rounds = 3_000;
    for _ in 0..rounds {
        let (a, ha) = Context::with_timer(&A).with_timeout(1000 * SEC);
        let (b, hb) = Context::with_timer(&B).with_timeout(SEC);
        let any = Context::any([&a, &b]);
        let (child, hc) = any.with_cancel();
        let (woke, waker) = common::counting();
        let mut done = Box::pin(any.done_owned());
        assert!(poll(done.as_mut(), &waker).is_pending());
        let reader = Arc::new(Mutex::new(None));
        let af = {
            let (ran, on_reader, reader) = (ran.clone(), on_reader.clone(), reader.clone());
            any.after_func(move || {
                if *reader.lock().unwrap() == Some(std::thread::current().id()) {
                    on_reader.fetch_add(1, Ordering::SeqCst);
                }
                ran.fetch_add(1, Ordering::SeqCst);
            })
        };
        B.advance(1);
        let bar = Arc::new(Barrier::new(2));
        let t = {
            let (any, bar, reader) = (any.clone(), bar.clone(), reader.clone());
            std::thread::spawn(move || {
                *reader.lock().unwrap() = Some(std::thread::current().id());
                bar.wait();
                let r = result(&any);
                drop(any);
                r
            })
        };
        bar.wait();
        ha.cancel_with(Counted::new("a", &live));
        let seen = t.join().unwrap();
        let fin = result(&any);
        assert_eq!(seen, fin);
        assert_eq!(result(&child), fin, "the child follows the node");
        assert!(woke.0.load(Ordering::SeqCst) == 1, "the waiter was woken once");
        assert!(poll(done.as_mut(), &waker).is_ready());
        drop((a, b, any, child, done, af, ha, hb, hc));
    }
    let t0 = std::time::Instant::now();
    while ran.load(Ordering::SeqCst) < rounds && t0.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(ran.load(Ordering::SeqCst), rounds, "each after-func ran once");
    assert_eq!(on_reader.load(Ordering::SeqCst), 0, "an after-func ran inside a read");
    assert_eq!(
        live.load(Ordering::SeqCst),
        0,
        "a cause copy was left behind (a leaked node)"
    );
}

/// The last release during a settle: the reader holds the only clone of the
/// `any` node and drops it right after the read, while the other thread
/// cancels a parent and drops every other context (no use-after-free,
/// nothing left: the counted cause is gone at the end).
#[test]
#[cfg_attr(miri, ignore = "threads, many rounds")]
fn settle_vs_last_release() {
    static A: Lazy = Lazy::new();
    static B: Lazy = Lazy::new();
    let live = Arc::new(AtomicUsize::new(0));
    for _ in 0..3_000 {
        let (a, ha) = Context::with_timer(&A).with_timeout(1000 * SEC);
        let (b, hb) = Context::with_timer(&B).with_timeout(SEC);
        let any = Context::any([&a, &b]);
        let (child, hc) = any.with_cancel();
        B.advance(1);
        let bar = Arc::new(Barrier::new(2));
        let t = {
            let bar = bar.clone();
            std::thread::spawn(move || {
                bar.wait();
                let r = any.err();
                drop(any);
                r
            })
        };
        bar.wait();
        ha.cancel_with(Counted::new("a", &live));
        drop((a, b, ha, hb));
        let r = t.join().unwrap();
        assert!(r.is_some());
        assert!(child.err().is_some(), "the child follows the node");
        drop((child, hc));
    }
    assert_eq!(
        live.load(Ordering::SeqCst),
        0,
        "a cause copy was left behind (a leaked node)"
    );
}

/// `all` nodes are never settled, and never early: a `POLLS` `any` node over
/// an `all` node (parents on two clocks) and a live context. With only one
/// of the `all` node's parents past its deadline, reads of the `any` node,
/// of the `all` node and of a child say live; once the other one passes,
/// all agree, with the last-fired parent's cause (holds).
#[test]
fn all_parent_is_not_settled_early() {
    static L: Lazy = Lazy::new();
    static M: Lazy = Lazy::new();
    let (q1, _h1) = Context::with_timer(&L).with_timeout_cause(5 * SEC, "q1");
    let (q2, _h2) = Context::with_timer(&M).with_timeout_cause(10 * SEC, "q2");
    let all = Context::all([&q1, &q2]);
    let (live, _hl) = Context::with_timer(&L).with_cancel();
    let any = Context::any([&all, &live]);
    let (child, _hc) = any.with_cancel();
    L.advance(100);
    assert_eq!(any.err(), None, "one all-parent passed: the any node is live");
    assert_eq!(all.err(), None);
    assert_eq!(child.err(), None);
    assert!(q1.is_done());
    assert_eq!(any.err(), None);
    assert!(!all.is_done() && !any.is_done());
    M.advance(100);
    // The `all` node over two clocks has no deadline, so neither has the
    // `any` node over it: nothing polls through it until the `all` node is
    // read (design.md invariant 19's caveat for descendants of `all`
    // nodes), so the `all` node is read first here.
    assert_eq!(any.err(), None, "documented caveat: follows when the all node is read");
    assert_eq!(all.err(), Some(Error::DeadlineExceeded));
    let seen = result(&any);
    assert_eq!(seen.1, Some(Error::DeadlineExceeded));
    assert_eq!(result(&any), seen);
    assert_eq!(result(&all), seen, "the any node reports its all parent's result");
    assert_eq!(result(&child), seen);
    assert_eq!(seen.0.as_deref(), Some("q2"), "q2 fired last");
}

/// Nested: an `any` over an `any` over mixed clocks, an `all` over a
/// `POLLS` `any`, and an `any` of `any` of `all`: whichever is read first,
/// every level that reads done agrees with the level it inherits from, and
/// reads do not change afterwards (holds).
#[test]
fn nested_any_of_any_and_all_reads_agree() {
    static L: Lazy = Lazy::new();
    static M: ManualClock = ManualClock::new();
    for first in 0..4 {
        let (a, _ha) = Context::with_timer(&M).with_timeout(1000 * SEC);
        let (b, _hb) = Context::with_timer(&L).with_timeout_cause(5 * SEC, "b");
        let inner = Context::any([&a, &b]);
        let (c, _hc) = Context::with_timer(&L).with_timeout_cause(6 * SEC, "c");
        let outer = Context::any([&inner, &c]);
        let all = Context::all([&inner, &c]);
        let top = Context::any([&all]);
        L.advance(10);
        let order: [&Context; 4] = match first {
            0 => [&inner, &outer, &all, &top],
            1 => [&outer, &inner, &top, &all],
            2 => [&all, &top, &outer, &inner],
            _ => [&top, &all, &inner, &outer],
        };
        let seen: Vec<_> = order.iter().map(|c| result(c)).collect();
        let again: Vec<_> = order.iter().map(|c| result(c)).collect();
        assert_eq!(seen, again, "first read {first}: a result changed after it was read");
        assert!(seen.iter().all(|r| r.1 == Some(Error::DeadlineExceeded)));
        assert_eq!(result(&inner).0.as_deref(), Some("b"));
        // outer: its first done parent in link order is inner, done with b's.
        assert_eq!(result(&outer), result(&inner));
        assert_eq!(result(&top), result(&all));
    }
}

/// The settled node's result is the one propagation would give: error,
/// cause, site (the fired parent's), a deadline cause kept; its children
/// (a tree child, a deadline child, an `any` over it) and its waiters
/// follow; its after-funcs are handed off, none inline (holds).
#[test]
fn settled_result_matches_propagation() {
    static A: ManualClock = ManualClock::new();
    static L: Lazy = Lazy::new();
    let me = std::thread::current().id();
    let inline = Arc::new(AtomicUsize::new(0));
    let ran = Arc::new(AtomicUsize::new(0));
    for polls in [true, false] {
        let (a, _ha) = if polls {
            Context::with_timer(&A).with_timeout(1000 * SEC)
        } else {
            Context::with_timer(&L).with_timeout(1000 * SEC)
        };
        let (b, _hb) = Context::with_timer(&L).with_timeout_cause(5 * SEC, "b late");
        let any = Context::any([&a, &b]);
        let (child, _hc) = any.with_cancel();
        let (dl_child, _hd) = any.with_timeout_cause(3 * SEC, "own");
        let over = Context::any([&child]);
        let (woke, waker) = common::counting();
        let mut done = Box::pin(any.done());
        assert!(poll(done.as_mut(), &waker).is_pending());
        let afs: Vec<_> = [&any, &child, &over]
            .iter()
            .map(|ctx| {
                let (inline, ran) = (inline.clone(), ran.clone());
                ctx.after_func(move || {
                    if std::thread::current().id() == me {
                        inline.fetch_add(1, Ordering::SeqCst);
                    }
                    ran.fetch_add(1, Ordering::SeqCst);
                })
            })
            .collect();
        L.advance(5);
        let r = result(&any);
        assert_eq!(r.0.as_deref(), Some("b late"));
        assert_eq!(r.1, Some(Error::DeadlineExceeded));
        assert_eq!(r.2, b.cancelled_at(), "the site is the fired parent's");
        assert_eq!(woke.0.load(Ordering::SeqCst), 1, "the waiter was woken by the read");
        assert!(child.is_done() && over.is_done());
        assert_eq!(result(&child), r);
        assert_eq!(result(&over), r);
        // The deadline child's own deadline (3 s) passed first: its own
        // cause, as phase 1 gives it (`set_done_inherited`).
        assert_eq!(dl_child.err(), Some(Error::DeadlineExceeded));
        assert_eq!(dl_child.cause().unwrap().to_string(), "own");
        assert_eq!(inline.load(Ordering::SeqCst), 0, "an after-func ran inside a read");
        assert!(poll(done.as_mut(), &waker).is_ready());
        drop(afs);
    }
    let t0 = std::time::Instant::now();
    while ran.load(Ordering::SeqCst) < 6 && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(ran.load(Ordering::SeqCst), 6);
    assert_eq!(inline.load(Ordering::SeqCst), 0);
}

/// Re-entrancy from the settle's wakers: a waker of the `any` node reads it
/// and its parents, makes a child, and drops the last other clones of the
/// node and both parents; a second waker panics. The read that settled
/// re-raises the panic once the cancellation is complete; the node is
/// done, consistent, and the counted causes are freed (holds).
#[test]
fn settle_waker_reenters_drops_and_panics() {
    static A: ManualClock = ManualClock::new();
    static L: Lazy = Lazy::new();
    struct Reenter {
        held: Mutex<Option<(Context, Context, Context)>>,
        saw: Mutex<Vec<(Option<String>, Option<Error>)>>,
    }
    impl Wake for Reenter {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref()
        }
        fn wake_by_ref(self: &Arc<Self>) {
            let taken = self.held.lock().unwrap().take();
            if let Some((any, a, b)) = taken {
                let mut saw = self.saw.lock().unwrap();
                saw.push((any.cause().map(|c| c.to_string()), any.err()));
                saw.push((a.cause().map(|c| c.to_string()), a.err()));
                saw.push((b.cause().map(|c| c.to_string()), b.err()));
                let (c, _h) = any.with_cancel();
                saw.push((c.cause().map(|c| c.to_string()), c.err()));
                drop((any, a, b, c));
            }
        }
    }
    struct Panics;
    impl Wake for Panics {
        fn wake(self: Arc<Self>) {
            panic!("waker panics inside a settling read");
        }
    }
    let live = Arc::new(AtomicUsize::new(0));
    {
        let (a, _ha) = Context::with_timer(&A).with_timeout(1000 * SEC);
        let (b, _hb) = Context::with_timer(&L).with_timeout_cause(5 * SEC, Counted::new("b", &live));
        let any = Context::any([&a, &b]);
        let w = Arc::new(Reenter {
            held: Mutex::new(Some((any.clone(), a.clone(), b.clone()))),
            saw: Mutex::new(Vec::new()),
        });
        let waker = Waker::from(w.clone());
        let pw = Waker::from(Arc::new(Panics));
        let mut d1 = Box::pin(any.done_owned());
        let mut d2 = Box::pin(any.done_owned());
        assert!(poll(d1.as_mut(), &waker).is_pending());
        assert!(poll(d2.as_mut(), &pw).is_pending());
        drop((a, b));
        L.advance(5);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| any.err()));
        assert!(r.is_err(), "the waker's panic reaches the reader");
        let want = (Some("b".to_owned()), Some(Error::DeadlineExceeded));
        assert_eq!((any.cause().map(|c| c.to_string()), any.err()), want);
        let saw = w.saw.lock().unwrap().clone();
        assert_eq!(saw.len(), 4);
        assert_eq!(saw[0], want);
        assert_eq!(saw[1], (None, None), "a is live");
        assert_eq!(saw[2], want);
        assert_eq!(saw[3], want);
        assert!(poll(d1.as_mut(), &waker).is_ready());
        drop((d1, d2, any));
    }
    assert_eq!(live.load(Ordering::SeqCst), 0, "a cause copy was left behind");
}

/// A read of the `any` node from inside an after-func and from inside a
/// waker of another cancellation (the settling read runs inside user code
/// of an unrelated cancel): no deadlock, consistent results (holds).
#[test]
fn settle_inside_other_cancellations_callbacks() {
    static A: ManualClock = ManualClock::new();
    static L: Lazy = Lazy::new();
    let (a, _ha) = Context::with_timer(&A).with_timeout(1000 * SEC);
    let (b, _hb) = Context::with_timer(&L).with_timeout_cause(5 * SEC, "b");
    let any = Context::any([&a, &b]);
    let (other, hother) = Context::with_timer(&A).with_cancel();
    let seen = Arc::new(Mutex::new(Vec::new()));
    struct ReadOnWake(Context, Arc<Mutex<Vec<Option<Error>>>>, AtomicBool);
    impl Wake for ReadOnWake {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref()
        }
        fn wake_by_ref(self: &Arc<Self>) {
            if !self.2.swap(true, Ordering::SeqCst) {
                self.1.lock().unwrap().push(self.0.err());
            }
        }
    }
    let w = Waker::from(Arc::new(ReadOnWake(any.clone(), seen.clone(), AtomicBool::new(false))));
    let mut d = Box::pin(other.done());
    assert!(poll(d.as_mut(), &w).is_pending());
    let af = {
        let (any, seen) = (any.clone(), seen.clone());
        other.after_func(move || seen.lock().unwrap().push(any.err()))
    };
    L.advance(5);
    hother.cancel();
    assert_eq!(
        *seen.lock().unwrap(),
        vec![Some(Error::DeadlineExceeded), Some(Error::DeadlineExceeded)]
    );
    assert_eq!(any.cause().unwrap().to_string(), "b");
    drop(af);
}
