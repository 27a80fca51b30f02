//! Children of a done parent (invariant 15): the immortal node a plainly
//! cancelled parent's children get is looked up once and cached in the
//! parent's `state`. Each test attacks that cache: every child, the first
//! (which looks up) and the later ones (which read the cache), must be done
//! at once with the parent's error, cause and location, keep its values,
//! and outlive the parent; concurrent children, cancels and other writers
//! of the parent's `state` must not break it.

use core::panic::Location;
use core::time::Duration;
use ctxcore::{Context, Error, Key, StaticContext};
use std::future::Future;
use std::sync::{Arc, Barrier};
use std::task::{Context as TaskContext, Waker};

/// Asserts that `child` is done exactly as `parent` is.
#[track_caller]
fn same_as(child: &Context, parent: &Context) {
    assert!(child.is_done());
    assert_eq!(child.err(), parent.err());
    assert_eq!(
        child.cause().map(|c| c.to_string()),
        parent.cause().map(|c| c.to_string())
    );
    assert_eq!(
        child.cause().and_then(|c| c.as_error()),
        parent.cause().and_then(|c| c.as_error())
    );
    let (at, pat) = (child.cancelled_at(), parent.cancelled_at());
    assert!(pat.is_some());
    assert!(at.is_some_and(|a| core::ptr::eq(a, pat.unwrap()) || a == pat.unwrap()));
    assert_eq!(child.deadline(), parent.deadline());
}

#[test]
fn every_child_of_a_done_parent_keeps_every_semantic() {
    static KEY: Key<u32> = Key::new("n");
    let (p, h) = Context::background().with_value(&KEY, 7).with_cancel();
    let line = line!() + 1;
    h.cancel();
    let mut kids = Vec::new();
    for _ in 0..4 {
        // The first looks the immortal node up, the others read the cache.
        let (c, hc) = p.with_cancel();
        same_as(&c, &p);
        assert_eq!(c.cancelled_at().unwrap().line(), line);
        assert_eq!(c.value(&KEY), Some(&7));
        assert_eq!(c.err(), Some(Error::Canceled));
        hc.cancel_with("too late");
        assert_eq!(c.cause().unwrap().as_error(), Some(Error::Canceled));
        let (g, _hg) = c.with_cancel();
        same_as(&g, &p);
        assert_eq!(g.value(&KEY), Some(&7));
        kids.push((c, g));
    }
    // Leaked handles: a done child's has no node. (A leaked child context
    // leaks its values, and its parent if a colliding location left it no
    // immortal node: Miri would report those, so natively only.)
    std::mem::forget(p.with_cancel().1);
    if !cfg!(miri) {
        std::mem::forget(p.with_cancel());
        std::mem::forget(kids[0].0.clone());
    }
    // The parent goes (freed): its children were never its.
    let parent_at = p.cancelled_at().unwrap();
    drop((p, h));
    for (c, g) in &kids {
        assert_eq!(c.cancelled_at(), Some(parent_at));
        assert_eq!(g.cancelled_at(), Some(parent_at));
        assert!(c.is_done() && g.is_done());
    }
    // A deadline child of a cached parent still gets a node of its own.
    let (d, _hd) = kids[0].0.with_timeout(Duration::from_secs(60));
    assert_eq!(d.cancelled_at(), Some(parent_at));
    assert!(d.deadline().is_some());
}

/// Parents cancelled at more call sites than there are immortal nodes:
/// those whose site collides get no immortal node (their children share
/// them); every child, first or later, reports its own parent's site.
#[test]
fn more_cancel_sites_than_immortal_nodes() {
    macro_rules! cancelled {
        () => {{
            let (p, h) = Context::background().with_cancel();
            h.cancel();
            p
        }};
    }
    let parents = [
        cancelled!(),
        cancelled!(),
        cancelled!(),
        cancelled!(),
        cancelled!(),
        cancelled!(),
        cancelled!(),
        cancelled!(),
        cancelled!(),
        cancelled!(),
        cancelled!(),
        cancelled!(),
        cancelled!(),
        cancelled!(),
        cancelled!(),
        cancelled!(),
        cancelled!(),
        cancelled!(),
        cancelled!(),
        cancelled!(),
    ];
    let sites: Vec<&'static Location<'static>> = parents.iter().map(|p| p.cancelled_at().unwrap()).collect();
    for (i, a) in sites.iter().enumerate() {
        for b in &sites[..i] {
            assert_ne!(a.line(), b.line(), "distinct sites");
        }
    }
    for _ in 0..3 {
        for p in &parents {
            let (c, _) = p.with_cancel();
            same_as(&c, p);
            let (g, _) = c.with_cancel();
            same_as(&g, p);
        }
    }
}

/// Threads making the first children of a freshly cancelled parent at
/// once: several may look up and cache (the same bits); each child reports
/// the cancel.
#[test]
fn concurrent_first_children() {
    let rounds = if cfg!(miri) { 3 } else { 300 };
    for _ in 0..rounds {
        let (p, h) = Context::background().with_cancel();
        h.cancel();
        let b = Arc::new(Barrier::new(2));
        let (p2, b2) = (p.clone(), b.clone());
        let t = std::thread::spawn(move || {
            b2.wait();
            let kids: Vec<_> = (0..3).map(|_| p2.with_cancel().0).collect();
            for c in &kids {
                same_as(c, &p2);
            }
            kids
        });
        b.wait();
        let mine: Vec<_> = (0..3).map(|_| p.with_cancel().0).collect();
        let theirs = t.join().unwrap();
        drop(p);
        for c in mine.iter().chain(&theirs) {
            assert_eq!(c.cancelled_at(), theirs[0].cancelled_at());
            assert_eq!(c.err(), Some(Error::Canceled));
        }
    }
}

/// A cancel racing child creation: a child made before it is a live node
/// that the cancel reaches, one made after is born done; both report the
/// cancel's site.
#[test]
fn cancel_racing_child_creation() {
    let rounds = if cfg!(miri) { 3 } else { 300 };
    for _ in 0..rounds {
        let (p, h) = Context::background().with_cancel();
        let b = Arc::new(Barrier::new(2));
        let b2 = b.clone();
        let t = std::thread::spawn(move || {
            b2.wait();
            let line = line!() + 1;
            h.cancel();
            line
        });
        b.wait();
        let kids: Vec<_> = (0..4).map(|_| p.with_cancel()).collect();
        let line = t.join().unwrap();
        for (c, _) in &kids {
            assert_eq!(c.cancelled_at().unwrap().line(), line);
            same_as(c, &p);
        }
        for _ in 0..3 {
            let (late, _) = p.with_cancel();
            same_as(&late, &p);
        }
    }
}

/// An `any` node's `state` is also written without its lock (`QUEUED`, by
/// its other parents' cancellers): the cache write must not lose that bit
/// (a lost `QUEUED` would let two cancellers queue the node).
#[test]
fn any_node_cache_vs_other_parents_cancel() {
    let rounds = if cfg!(miri) { 3 } else { 300 };
    for _ in 0..rounds {
        let (p1, h1) = Context::background().with_cancel();
        let (p2, h2) = Context::background().with_cancel();
        let (p3, h3) = Context::background().with_cancel();
        let any = Context::any([&p1, &p2, &p3]);
        let line = line!() + 1;
        h1.cancel();
        let b = Arc::new(Barrier::new(2));
        let (any2, b2) = (any.clone(), b.clone());
        let t = std::thread::spawn(move || {
            b2.wait();
            (0..4).map(|_| any2.with_cancel().0).collect::<Vec<_>>()
        });
        b.wait();
        h2.cancel_with("second");
        h3.cancel();
        let kids = t.join().unwrap();
        assert_eq!(any.cancelled_at().unwrap().line(), line);
        for c in &kids {
            same_as(c, &any);
        }
        drop((any, p1, p2, p3));
        for c in &kids {
            assert_eq!(c.cancelled_at().unwrap().line(), line);
        }
    }
}

/// A static root's `state` is also written after it is done (`PENDING`,
/// when its wakers do not fit in one batch): children made meanwhile, and
/// after, are right.
#[test]
fn static_parent_with_pending_wakers() {
    static ROOT: StaticContext = StaticContext::new();
    let root = ROOT.context();
    let n = if cfg!(miri) { 20 } else { 100 };
    let mut futs: Vec<_> = (0..n).map(|_| Box::pin(root.done_owned())).collect();
    let mut cx = TaskContext::from_waker(Waker::noop());
    for f in &mut futs {
        assert!(f.as_mut().poll(&mut cx).is_pending());
    }
    let b = Arc::new(Barrier::new(2));
    let b2 = b.clone();
    let t = std::thread::spawn(move || {
        b2.wait();
        let line = line!() + 1;
        ROOT.cancel();
        line
    });
    b.wait();
    let early: Vec<_> = (0..8).map(|_| root.with_cancel()).collect();
    let line = t.join().unwrap();
    for f in &mut futs {
        assert!(f.as_mut().poll(&mut cx).is_ready());
    }
    for (c, _) in &early {
        assert_eq!(c.cancelled_at().unwrap().line(), line);
        same_as(c, &root);
    }
    for _ in 0..3 {
        let (late, _) = root.with_cancel();
        same_as(&late, &root);
    }
}

/// Children made from inside the cancellation that makes their parent
/// done: an after-func and a waker (user code runs with no node lock held,
/// invariant 9, so the first child may take the parent's lock to cache).
#[test]
fn children_made_by_the_parents_own_after_func_and_waker() {
    use std::sync::Mutex;
    use std::task::Wake;

    struct MakeChildren(Context, Mutex<Vec<Context>>);
    impl Wake for MakeChildren {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            let kids = (0..3).map(|_| self.0.with_cancel().0);
            self.1.lock().unwrap().extend(kids);
        }
    }

    let (p, h) = Context::background().with_cancel();
    let made = Arc::new(Mutex::new(Vec::new()));
    let (p2, made2) = (p.clone(), made.clone());
    let _af = p.after_func(move || {
        let kids = (0..3).map(|_| p2.with_cancel().0);
        made2.lock().unwrap().extend(kids);
    });
    let waker_state = Arc::new(MakeChildren(p.clone(), Mutex::new(Vec::new())));
    let waker = Waker::from(waker_state.clone());
    let mut fut = Box::pin(p.done_owned());
    assert!(fut.as_mut().poll(&mut TaskContext::from_waker(&waker)).is_pending());
    let line = line!() + 1;
    h.cancel();
    let from_af = std::mem::take(&mut *made.lock().unwrap());
    let from_waker = std::mem::take(&mut *waker_state.1.lock().unwrap());
    assert_eq!((from_af.len(), from_waker.len()), (3, 3));
    for c in from_af.iter().chain(&from_waker) {
        assert_eq!(c.cancelled_at().unwrap().line(), line);
        same_as(c, &p);
    }
}

/// A parent on a timer other than the default one, or cancelled by its
/// deadline, or with a cause: its children share it (nothing cached), and
/// every one of them, first or later, reports it.
#[test]
fn parents_that_get_no_immortal_node() {
    use ctxcore::{Instant, ManualClock};
    static CLOCK: ManualClock = ManualClock::new();
    let (on_clock, h) = Context::with_timer(&CLOCK).with_cancel();
    h.cancel();
    let (expired, _he) = Context::with_timer(&CLOCK).with_deadline(Instant::ZERO);
    let (with_cause, hc) = Context::background().with_cancel();
    hc.cancel_with("why");
    for p in [&on_clock, &expired, &with_cause] {
        for _ in 0..3 {
            let (c, _) = p.with_cancel();
            same_as(&c, p);
        }
    }
    assert_eq!(expired.with_cancel().0.err(), Some(Error::DeadlineExceeded));
    assert_eq!(with_cause.with_cancel().0.cause().unwrap().as_str(), Some("why"));
}
