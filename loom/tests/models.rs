//! loom models of every concurrent protocol in the core.
//!
//! Run with `ci/loom.sh` (`RUSTFLAGS="--cfg loom" cargo test --release` in `loom/`).
//! Each model explores every interleaving (up to the preemption bound) of two
//! threads racing on one node, and checks the outcome.
#![cfg(loom)]

use ctxcore::{Context, Error};
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;

/// A child attached while its parent is being cancelled ends up done, either
/// by being born done or by the parent's propagation.
#[test]
fn cancel_vs_child_attach() {
    loom::model(|| {
        let (parent, handle) = Context::background().with_cancel();
        let p2 = parent.clone();
        let t = thread::spawn(move || {
            let (child, h) = p2.with_cancel();
            h.detach();
            child
        });
        handle.cancel();
        let child = t.join().unwrap();
        assert!(child.is_done());
        assert_eq!(child.err(), Some(Error::Canceled));
    });
}

/// A child dropped while its parent cancels: no use-after-free, no leak
/// (loom checks that every `Arc`-like allocation it tracks is freed; Miri and
/// the alloc-budget test cover the node memory).
#[test]
fn cancel_vs_child_drop() {
    loom::model(|| {
        let (parent, handle) = Context::background().with_cancel();
        let (child, child_handle) = parent.with_cancel();
        let (grandchild, gh) = child.with_cancel();
        gh.detach();
        let t = thread::spawn(move || {
            drop(child_handle);
            drop(child);
        });
        handle.cancel();
        t.join().unwrap();
        assert!(grandchild.is_done());
        assert!(parent.is_done());
    });
}

/// A task waiting on `done()` is always woken by a concurrent cancel (loom
/// reports a deadlock if the wake-up were lost).
#[test]
fn waiter_registration_vs_cancel() {
    loom::model(|| {
        let (ctx, handle) = Context::background().with_cancel();
        let c2 = ctx.clone();
        let t = thread::spawn(move || loom::future::block_on(c2.done()));
        handle.cancel_with("stop");
        assert_eq!(t.join().unwrap(), Error::Canceled);
    });
}

/// A waiter on a grandchild is woken when the root is cancelled from another
/// thread, through the iterative propagation.
#[test]
fn waiter_on_descendant_vs_root_cancel() {
    loom::model(|| {
        let (root, handle) = Context::background().with_cancel();
        let (child, _ch) = root.with_cancel();
        let (leaf, _lh) = child.with_cancel();
        let t = thread::spawn(move || loom::future::block_on(leaf.done()));
        handle.cancel();
        assert_eq!(t.join().unwrap(), Error::Canceled);
    });
}

/// `AfterFunc::stop` racing the cancellation: exactly one of "stop returned
/// true" and "f ran" happens.
#[test]
fn after_func_stop_vs_fire() {
    loom::model(|| {
        let (ctx, handle) = Context::background().with_cancel();
        let runs = Arc::new(AtomicUsize::new(0));
        let r = runs.clone();
        let af = ctx.after_func(move || {
            r.fetch_add(1, Ordering::SeqCst);
        });
        let t = thread::spawn(move || handle.cancel());
        let stopped = af.stop();
        t.join().unwrap();
        let ran = runs.load(Ordering::SeqCst);
        assert_eq!(ran + usize::from(stopped), 1, "ran={ran} stopped={stopped}");
        assert!(!af.stop());
    });
}

/// Two cancels with different causes: exactly one wins, and the node and its
/// child both report the winner's cause.
#[test]
fn concurrent_cancels_one_cause_wins() {
    loom::model(|| {
        let (ctx, handle) = Context::background().with_cancel();
        let (child, _ch) = ctx.with_cancel();
        let handle = Arc::new(handle);
        let h2 = handle.clone();
        let t = thread::spawn(move || h2.cancel_with("a"));
        handle.cancel_with("b");
        t.join().unwrap();
        let cause = ctx.cause().unwrap().as_str().unwrap();
        assert!(cause == "a" || cause == "b");
        assert_eq!(child.cause().unwrap().as_str(), Some(cause));
    });
}

/// `Context::any` with both parents cancelled at once: done once, with one
/// of the two causes.
#[test]
fn any_vs_two_cancels() {
    loom::model(|| {
        let (a, ha) = Context::background().with_cancel();
        let (b, hb) = Context::background().with_cancel();
        let either = Context::any([&a, &b]);
        let t = thread::spawn(move || ha.cancel_with("a"));
        hb.cancel_with("b");
        t.join().unwrap();
        let cause = either.cause().unwrap().as_str().unwrap();
        assert!(cause == "a" || cause == "b");
    });
}

/// A pinned scoped child dropped (detached) while its heap parent is
/// cancelled from another thread: the drop waits out the canceller's
/// transient reference, so the canceller never touches freed memory.
#[test]
fn scoped_detach_vs_parent_cancel() {
    use core::pin::pin;
    use ctxcore::ScopedContext;
    loom::model(|| {
        let (parent, handle) = Context::background().with_cancel();
        let t = thread::spawn(move || handle.cancel());
        {
            let child = pin!(ScopedContext::new(parent.as_ref()));
            let ctx = child.as_ref().context();
            let _ = ctx.is_done();
        }
        t.join().unwrap();
        assert!(parent.is_done());
    });
}

/// A canceller finishing a child under its parent's lock (node/mod.rs invariant
/// 12) while the child cancels itself with its own cause and is dropped on
/// another thread: the child's lock is only ever *tried* under the parent's,
/// the grandchild always ends up done with one of the two causes, and the
/// child is never touched after it is freed.
#[test]
fn child_finished_under_parent_vs_own_cancel_and_drop() {
    loom::model(|| {
        let (parent, handle) = Context::background().with_cancel();
        let (child, child_handle) = parent.with_cancel();
        let (grandchild, gh) = child.with_cancel();
        gh.detach();
        let t = thread::spawn(move || {
            child_handle.cancel_with("own");
            drop(child);
        });
        handle.cancel_with("parent");
        t.join().unwrap();
        assert!(grandchild.is_done());
        let cause = grandchild.cause().unwrap().as_str().unwrap();
        assert!(cause == "own" || cause == "parent", "cause {cause}");
    });
}

/// Two leaves finished under their parent's lock while one of them is being
/// dropped (its last release waits for the parent's lock to unlink it) and
/// the other gains a child of its own: nothing is lost or freed early.
#[test]
fn leaves_finished_under_parent_vs_drop_and_attach() {
    loom::model(|| {
        let (parent, handle) = Context::background().with_cancel();
        let (a, ah) = parent.with_cancel();
        let (b, bh) = parent.with_cancel();
        bh.detach();
        let t = thread::spawn(move || {
            drop(ah);
            drop(a);
            let (grandchild, gh) = b.with_cancel();
            gh.detach();
            grandchild
        });
        handle.cancel();
        let grandchild = t.join().unwrap();
        assert!(grandchild.is_done());
        assert_eq!(grandchild.err(), Some(Error::Canceled));
    });
}

/// A task waiting on a direct child while the parent is cancelled: the
/// canceller meets the child either before the waiter registers (finished
/// under the parent's lock, then the registration sees `DONE`) or after (the
/// child has a waiter, so it goes through the work list and its waker runs).
#[test]
fn waiter_on_child_vs_parent_cancel() {
    loom::model(|| {
        let (parent, handle) = Context::background().with_cancel();
        let (child, _ch) = parent.with_cancel();
        let t = thread::spawn(move || loom::future::block_on(child.done()));
        handle.cancel();
        assert_eq!(t.join().unwrap(), Error::Canceled);
    });
}

/// The canceller descending a chain (node/mod.rs invariant 13: it keeps a
/// child's lock and lets go of the parent's) while the middle of the chain is
/// dropped on another thread: the nodes it walks through stay valid because
/// their own children need their locks to let go of them, and the bottom of
/// the chain ends up cancelled.
#[test]
fn descent_vs_chain_drop() {
    loom::model(|| {
        let (root, handle) = Context::background().with_cancel();
        let (a, ah) = root.with_cancel();
        let (b, bh) = a.with_cancel();
        let (c, ch) = b.with_cancel();
        ah.detach();
        bh.detach();
        ch.detach();
        let t = thread::spawn(move || {
            drop(a);
            drop(b);
        });
        handle.cancel_with("root");
        t.join().unwrap();
        assert!(c.is_done());
        assert_eq!(c.cause().unwrap().as_str(), Some("root"));
    });
}

/// A chain of pinned scoped contexts dropped, innermost first, while the
/// canceller descends through it: scoped children keep their parent alive by
/// their owner's borrow, which ends only after their drop has taken the
/// parent's lock.
#[test]
fn descent_vs_scoped_chain_drop() {
    use core::pin::pin;
    use ctxcore::ScopedContext;
    loom::model(|| {
        let (parent, handle) = Context::background().with_cancel();
        let t = thread::spawn(move || handle.cancel());
        {
            let outer = pin!(ScopedContext::new(parent.as_ref()));
            let outer_ctx = outer.as_ref().context();
            let inner = pin!(ScopedContext::new(outer_ctx));
            let _ = inner.as_ref().context().is_done();
        }
        t.join().unwrap();
        assert!(parent.is_done());
    });
}

/// A pinned scoped context attached on one thread (its first `context()`)
/// while it is cancelled (`cancel(&self)`, which needs no attach) on another
/// (node/mod.rs invariant 11: attaching sets its mark under the node's lock).
/// Found by review: with the mark set outside the lock, the cancel's plain
/// store could erase it, the owner's drop then skipped the unlink, and the
/// parent's list kept a pointer to freed memory. To observe that without
/// undefined behaviour in the harness, the scoped context is dropped in place
/// and a fresh, parentless one is written into the same memory: a stale link
/// in the parent's list would make the parent's cancel reach it.
#[test]
fn scoped_attach_vs_own_cancel() {
    use core::pin::Pin;
    use ctxcore::{ContextRef, ScopedContext};
    loom::model(|| {
        let (parent, handle) = Context::background().with_cancel();
        // The scoped context borrows its parent for `'static` here (loom's
        // threads are `'static`); the parent is leaked, once per execution.
        let parent: &'static Context = Box::leak(Box::new(parent));
        let raw: *mut ScopedContext<'static> = Box::into_raw(Box::new(ScopedContext::new(parent.as_ref())));
        let addr = raw as usize;
        let t = thread::spawn(move || {
            // SAFETY: heap memory that does not move and is freed only after
            // this thread is joined.
            let pinned = unsafe { Pin::new_unchecked(&*(addr as *const ScopedContext<'static>)) };
            let _ = pinned.context();
        });
        // SAFETY: as above.
        unsafe { &*raw }.cancel();
        t.join().unwrap();
        // SAFETY: nothing borrows it any more; this is the owner's drop.
        unsafe { core::ptr::drop_in_place(raw) };
        // SAFETY: the memory is ours again; a fresh, unattached context.
        unsafe { core::ptr::write(raw, ScopedContext::new(ContextRef::background())) };
        handle.cancel();
        // SAFETY: as above.
        let fresh = unsafe { &*raw };
        assert!(
            !fresh.is_done(),
            "the parent reached a dropped scope through a stale link"
        );
        // SAFETY: allocated by `Box::into_raw` above.
        unsafe { drop(Box::from_raw(raw)) };
    });
}

/// A cancel that finds its node already done loses at once, without taking
/// the node's lock. Here a child's handle is cancelled and dropped, then its
/// context, while the parent is cancelled: whichever cancel reaches the child
/// second loses, in some interleavings on the lock-free path while the winner
/// is still finishing the grandchild. The grandchild ends up done with the
/// winner's cause, and the child is never freed under the canceller.
#[test]
fn late_cancel_of_a_done_node_vs_propagation() {
    loom::model(|| {
        let (parent, handle) = Context::background().with_cancel();
        let (child, ch) = parent.with_cancel();
        let (grandchild, gh) = child.with_cancel();
        gh.detach();
        let t = thread::spawn(move || {
            ch.cancel_with("own");
            drop(ch);
            drop(child);
        });
        handle.cancel_with("parent");
        t.join().unwrap();
        assert!(grandchild.is_done());
        let cause = grandchild.cause().unwrap().as_str().unwrap();
        assert!(cause == "own" || cause == "parent", "cause {cause}");
    });
}

/// Node.rs invariant 16: a middle node whose handle is detached and whose
/// context is dropped becomes an orphan, held only by its kid's count. Its
/// kids. One kid is dropped on another thread (taking the orphan's lock to
/// give up its count) while the root is cancelled: the canceller pops the
/// orphan and finishes it under the root's lock, or, finding its lock taken,
/// holds it by a kid count of its own (its reference count is zero). Either
/// way the other kid is cancelled through the orphan, and the orphan is
/// freed once, by whoever gives up its last count, never under the
/// canceller.
#[test]
fn orphan_freed_by_last_kid_vs_root_cancel() {
    loom::model(|| {
        let (root, handle) = Context::background().with_cancel();
        let (mid, mh) = root.with_cancel();
        let (leaf, lh) = mid.with_cancel();
        let (kept, kh) = mid.with_cancel();
        mh.detach();
        kh.detach();
        drop(mid);
        let t = thread::spawn(move || {
            drop(lh);
            drop(leaf);
        });
        handle.cancel_with("root");
        t.join().unwrap();
        // The surviving kid was reached through the orphan.
        assert!(kept.is_done());
        assert_eq!(kept.cause().unwrap().as_str(), Some("root"));
    });
}

/// Invariant 16: the orphan decision. A middle node's last reference goes on
/// one thread while its only kid is dropped on another: whichever takes the
/// middle node's lock last frees it, exactly once. Then its sibling kid,
/// still alive, is cancelled through it from the root.
#[test]
fn last_reference_vs_last_kid() {
    loom::model(|| {
        let (root, handle) = Context::background().with_cancel();
        let (mid, mh) = root.with_cancel();
        let (a, ah) = mid.with_cancel();
        mh.detach();
        let t = thread::spawn(move || {
            drop(mid);
        });
        drop(ah);
        drop(a);
        t.join().unwrap();
        let (b, _bh) = root.with_cancel();
        handle.cancel();
        assert!(b.is_done());
    });
}

/// Invariant 16: a kid's own cancel takes its own lock, then its parent's,
/// leaves the list and gives its kid count up, while the parent is cancelled
/// (the canceller pops the kid or finds it gone) and the kid is dropped on
/// the other thread. The grandchild always ends up done with one of the two
/// causes.
#[test]
fn kid_cancel_vs_parent_cancel_and_drop() {
    loom::model(|| {
        let (parent, handle) = Context::background().with_cancel();
        let (kid, kh) = parent.with_cancel();
        let (grandchild, gh) = kid.with_cancel();
        gh.detach();
        let t = thread::spawn(move || {
            kh.cancel_with("own");
            drop(kh);
            drop(kid);
        });
        handle.cancel_with("parent");
        t.join().unwrap();
        assert!(grandchild.is_done());
        let cause = grandchild.cause().unwrap().as_str().unwrap();
        assert!(cause == "own" || cause == "parent", "cause {cause}");
    });
}

/// Invariant 16: two cancels of one kid through a shared handle, its parent
/// an orphan held only by that kid. The winner leaves the list, gives up the
/// last kid count and frees the orphan; the loser, having taken the kid's
/// own lock first, sees `DONE` and never touches the parent.
#[test]
fn shared_handle_cancels_vs_orphaned_parent() {
    loom::model(|| {
        let (root, _rh) = Context::background().with_cancel();
        let (mid, mh) = root.with_cancel();
        let (kid, kh) = mid.with_cancel();
        mh.detach();
        drop(mid);
        let kh = Arc::new(kh);
        let kh2 = kh.clone();
        let t = thread::spawn(move || kh2.cancel_with("a"));
        kh.cancel_with("b");
        t.join().unwrap();
        let cause = kid.cause().unwrap().as_str().unwrap();
        assert!(cause == "a" || cause == "b");
        assert!(!root.is_done());
    });
}

/// Polls `fut` once with a waker that does nothing.
fn poll_once<F: core::future::Future>(fut: core::pin::Pin<&mut F>) -> core::task::Poll<F::Output> {
    let mut cx = core::task::Context::from_waker(core::task::Waker::noop());
    fut.poll(&mut cx)
}

/// Invariant 17 (review defect 2): a canceller on one thread leaves the
/// wakers of a scoped node that did not fit its batch (3 waiters, a batch of
/// 2 under loom) in the pending list and lets go of the node before waking
/// anything, while the owner drops the waiting futures and the scoped
/// context on another thread. Either side may take the node out of the
/// list: the owner's drop never waits for a canceller that runs user code,
/// never frees the node under one, and every waiter is woken or dropped.
/// Before the fix the canceller held a reference across its wake batch, so
/// a waker that dropped the owner on the canceller's thread spun forever
/// (`tests/review_waker_drop.rs`).
#[test]
fn pending_wakers_vs_owner_detach() {
    use core::pin::pin;
    use ctxcore::ScopedContext;
    loom::model(|| {
        let (root, handle) = Context::background().with_cancel();
        let r2 = root.clone();
        let t = thread::spawn(move || {
            let s = pin!(ScopedContext::new(r2.as_ref()));
            let c = s.as_ref().context();
            let mut a = Box::pin(c.done());
            let mut b = Box::pin(c.done());
            let mut d = Box::pin(c.done());
            let _ = poll_once(a.as_mut());
            let _ = poll_once(b.as_mut());
            let _ = poll_once(d.as_mut());
            drop(a);
            drop(b);
            drop(d);
            // The owner's drop: cancels (if the root's cancel has not
            // reached it), takes its node out of the pending list, waits
            // for transient holds.
        });
        handle.cancel();
        t.join().unwrap();
        assert!(root.is_done());
    });
}

/// Invariant 17 with the waiters still registered when the canceller comes
/// back for them: the wakers are counted, and each of the 3 is woken once
/// (no lost wake-up through the pending list).
#[test]
fn pending_wakers_are_all_woken() {
    use core::pin::pin;
    use ctxcore::ScopedContext;
    use std::sync::atomic::AtomicUsize as StdCount;
    use std::task::{Wake, Waker};
    struct Count(StdCount);
    impl Wake for Count {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
    loom::model(|| {
        let (root, handle) = Context::background().with_cancel();
        let count = std::sync::Arc::new(Count(StdCount::new(0)));
        let waker = Waker::from(count.clone());
        let s = pin!(ScopedContext::new(root.as_ref()));
        let c = s.as_ref().context();
        let mut futs = [Box::pin(c.done()), Box::pin(c.done()), Box::pin(c.done())];
        for f in futs.iter_mut() {
            let mut cx = core::task::Context::from_waker(&waker);
            assert!(core::future::Future::poll(f.as_mut(), &mut cx).is_pending());
        }
        let t = thread::spawn(move || handle.cancel());
        t.join().unwrap();
        assert_eq!(count.0.load(std::sync::atomic::Ordering::SeqCst), 3);
        for f in futs.iter_mut() {
            assert!(poll_once(f.as_mut()).is_ready());
        }
    });
}

/// Review defect 3: an orphan (its references gone while a kid holds it)
/// that still has a waiter — a polled `done()` leaked with `mem::forget` —
/// is cancelled by its parent's canceller racing the last release. Before
/// the fix the canceller skipped it (its count was zero) and the kid stayed
/// live under a done root.
#[test]
fn orphan_with_leaked_waiter_vs_root_cancel() {
    loom::model(|| {
        let (root, root_h) = Context::background().with_cancel();
        let (mid, mid_h) = root.with_cancel();
        mid_h.detach();
        let (leaf, _leaf_h) = mid.with_cancel();
        {
            let mut d = Box::pin(mid.done());
            assert!(poll_once(d.as_mut()).is_pending());
            core::mem::forget(d);
        }
        let t = thread::spawn(move || drop(mid));
        root_h.cancel();
        t.join().unwrap();
        assert!(leaf.is_done(), "a live kid under a done root");
    });
}

/// Issue 11 item 4: `stop_wait` racing the cancel that runs the callback.
/// Whatever the interleaving, once the wait returns the callback is not
/// running and never will be; "stopped" means it never ran, "ran" that it
/// did.
#[test]
fn after_func_stop_and_wait_vs_fire() {
    use ctxcore::StopOutcome;
    use loom::sync::atomic::AtomicBool;
    loom::model(|| {
        let (ctx, handle) = Context::background().with_cancel();
        let inside = Arc::new(AtomicBool::new(false));
        let ran = Arc::new(AtomicBool::new(false));
        let (i, r) = (inside.clone(), ran.clone());
        let af = ctx.after_func(move || {
            i.store(true, Ordering::SeqCst);
            r.store(true, Ordering::SeqCst);
            i.store(false, Ordering::SeqCst);
        });
        let t = thread::spawn(move || handle.cancel());
        let outcome = loom::future::block_on(af.stop_wait());
        assert!(
            !inside.load(Ordering::SeqCst),
            "the wait returned while the callback ran"
        );
        t.join().unwrap();
        match outcome {
            StopOutcome::Stopped => assert!(!ran.load(Ordering::SeqCst)),
            StopOutcome::Ran => assert!(ran.load(Ordering::SeqCst)),
            other => panic!("unexpected {other:?}"),
        }
    });
}

/// Issue 14: two explicit cancels race; the location every node reports is
/// the winner's, the one whose cause won (written in the same slot under
/// the same lock, published with `DONE`: never torn, never the loser's),
/// also for a child reached by propagation and one with a deadline cause of
/// its own (`CAUSE_UP`: its slot keeps its cause, takes the location).
#[test]
fn cancelled_at_is_the_winners() {
    loom::model(|| {
        let (ctx, handle) = Context::background().with_cancel();
        let (child, _ch) = ctx.with_cancel();
        let handle = Arc::new(handle);
        let h2 = handle.clone();
        let t = thread::spawn(move || {
            h2.cancel_with("a");
            line!() - 1
        });
        handle.cancel_with("b");
        let b_line = line!() - 1;
        let a_line = t.join().unwrap();
        let cause = ctx.cause().unwrap().as_str().unwrap();
        let expected = if cause == "a" { a_line } else { b_line };
        for c in [&ctx, &child] {
            let at = c.cancelled_at().unwrap();
            assert_eq!((at.file(), at.line()), (file!(), expected));
            assert_eq!(c.cause().unwrap().as_str(), Some(cause));
        }
    });
}

/// Issue 14: a handle dropped while a clone of the context is read from
/// another thread and the parent is cancelled: whoever wins, the location
/// read after `DONE` is either the parent's `cancel` or the child's
/// `with_cancel` site, and stays the same on every later read.
#[test]
fn cancelled_at_drop_vs_parent_cancel() {
    loom::model(|| {
        let (parent, ph) = Context::background().with_cancel();
        let (child, ch) = parent.with_cancel();
        let made = line!() - 1;
        let c2 = child.clone();
        let t = thread::spawn(move || {
            drop(ch);
            c2.cancelled_at().map(|l| l.line())
        });
        ph.cancel();
        let cancelled = line!() - 1;
        let seen = t.join().unwrap();
        let at = child.cancelled_at().unwrap();
        assert!(at.line() == made || at.line() == cancelled, "{at}");
        // The thread read after its own drop: the node was done by then.
        assert_eq!(seen, Some(at.line()));
    });
}

/// `Context::all` with both parents cancelled at once: the count reaches
/// zero once, and the node and its child report one of the two causes.
#[test]
fn all_vs_two_cancels() {
    loom::model(|| {
        let (a, ha) = Context::background().with_cancel();
        let (b, hb) = Context::background().with_cancel();
        let both = Context::all([&a, &b]);
        let (child, _hc) = both.with_cancel();
        let t = thread::spawn(move || ha.cancel_with("a"));
        hb.cancel_with("b");
        t.join().unwrap();
        let cause = both.cause().unwrap().as_str().unwrap();
        assert!(cause == "a" || cause == "b");
        assert_eq!(child.cause().unwrap().as_str(), Some(cause));
    });
}

/// `Context::all` dropped (with its child) while its two parents are
/// cancelled from two threads: the links leave the parents' lists under
/// their locks before the node goes, so no canceller touches freed memory,
/// and nothing leaks (loom checks both).
#[test]
fn all_drop_vs_two_cancels() {
    loom::model(|| {
        let (a, ha) = Context::background().with_cancel();
        let (b, hb) = Context::background().with_cancel();
        let both = Context::all([&a, &b]);
        let (child, hc) = both.with_cancel();
        let t1 = thread::spawn(move || ha.cancel_with("a"));
        let t2 = thread::spawn(move || hb.cancel_with("b"));
        drop(both);
        drop(hc);
        drop(child);
        t1.join().unwrap();
        t2.join().unwrap();
        assert!(a.is_done() && b.is_done());
    });
}

/// `Context::all` built (and given a child) while one parent is being
/// cancelled: each parent is counted down once, by the constructor or by
/// the canceller, so the node and its child end up done with one of the
/// two causes (the review's model).
#[test]
fn all_new_vs_cancels() {
    loom::model(|| {
        let (a, ha) = Context::background().with_cancel();
        let (b, hb) = Context::background().with_cancel();
        let t = thread::spawn(move || ha.cancel_with("a"));
        let both = Context::all([&a, &b]);
        let (child, _hc) = both.with_cancel();
        hb.cancel_with("b");
        t.join().unwrap();
        assert!(both.is_done() && child.is_done());
        let cause = both.cause().unwrap().as_str().unwrap();
        assert!(cause == "a" || cause == "b");
        assert_eq!(child.cause().unwrap().as_str(), Some(cause));
    });
}

/// An `all` of an `all` (sharing a parent) whose inner node is dropped
/// while both leaves are cancelled from two threads: the outer node is done
/// and everything is freed (the review's model).
#[test]
fn all_nested_drop_vs_cancels() {
    loom::model(|| {
        let (a, ha) = Context::background().with_cancel();
        let (b, hb) = Context::background().with_cancel();
        let inner = Context::all([&a, &b]);
        let outer = Context::all([&inner, &a]);
        let t = thread::spawn(move || ha.cancel_with("a"));
        hb.cancel_with("b");
        drop(inner);
        t.join().unwrap();
        assert!(outer.is_done());
        drop(outer);
    });
}

/// "The last parent" is the one whose cancellation completed the countdown,
/// not the one cancelled last: `a` reads done before its canceller reaches
/// the `all` node, so `b`, cancelled after `a` is seen done, may still come
/// first. What holds once both cancels returned: the node is done, with one
/// of the two causes (the review's model, asserting the documented
/// property).
#[test]
fn all_last_is_one_of_the_parents() {
    loom::model(|| {
        let (a, ha) = Context::background().with_cancel();
        let (b, hb) = Context::background().with_cancel();
        let both = Context::all([&a, &b]);
        let t = thread::spawn(move || ha.cancel_with("a"));
        while !a.is_done() {
            thread::yield_now();
        }
        hb.cancel_with("b");
        t.join().unwrap();
        assert!(both.is_done());
        let cause = both.cause().unwrap().as_str().unwrap();
        assert!(cause == "a" || cause == "b");
    });
}

/// Review (rev-loc): an `any` node's cause and location come from one parent.
#[test]
fn cancelled_at_any_cause_and_site_agree() {
    loom::model(|| {
        let (a, ha) = Context::background().with_cancel();
        let (b, hb) = Context::background().with_cancel();
        let either = Context::any([&a, &b]);
        let t = thread::spawn(move || {
            ha.cancel_with("a");
            line!() - 1
        });
        hb.cancel_with("b");
        let b_line = line!() - 1;
        let a_line = t.join().unwrap();
        let cause = either.cause().unwrap().as_str().unwrap();
        let expected = if cause == "a" { a_line } else { b_line };
        assert_eq!(either.cancelled_at().unwrap().line(), expected, "cause {cause}");
    });
}
