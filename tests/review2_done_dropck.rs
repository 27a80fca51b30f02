//! Issue 10, defect 6: a polled `Done<'a>` could outlive the context it
//! borrows, in safe code.
//!
//! # The defect
//!
//! `Done<'a>` had no `Drop` impl of its own: its drop work is `Waiter::drop`
//! (it unlinks the waiter under the node's lock), and `Waiter` has no lifetime
//! parameter, while the `&'a Node` field has a trivial drop. So dropck put no
//! constraint on `'a` where a `Done<'a>` is dropped, and the borrow checker
//! accepted a `Done` whose only remaining use was its implicit drop after the
//! borrowed context was gone. `Waiter::drop` then dereferenced the freed node:
//! a use-after-free for a heap `Context` (node freed by its last `NodeRef`)
//! and for a pinned `ScopedContext` (its stack slot gone). The field-order
//! note ("the waiter drops first") orders the fields of one `Done`; it says
//! nothing about the node it borrows.
//!
//! # The interleaving (one thread)
//!
//! 1. `let mut d = Box::pin(ctx.done());` and poll it once: the waiter is
//!    linked into the node's list and remembers the node.
//! 2. `holder = d;` moves the pinned box out of the block (a move of the
//!    `Box`, not of the pinned `Done`).
//! 3. The block ends: the cancel handle cancels the node (the waiter is
//!    popped), the last `Context` releases it and the node is freed (or the
//!    `ScopedContext` detaches and its stack slot dies).
//! 4. `holder` drops at the end of the function: `Waiter::drop` takes
//!    `&*self.node` and locks freed memory (Miri: "dangling reference
//!    (use-after-free)" at `Waiter::drop`).
//!
//! # The fix, and where the reproducer went
//!
//! `Done` now has an explicit (empty) `impl Drop`, so every drop of a
//! `Done<'a>` is a use of `'a`: dropck requires the borrowed context to be
//! alive there. The original reproducer (`../shared/repro/review2_done_dropck.rs`)
//! no longer compiles, so it cannot be a test here; both of its shapes are
//! `compile_fail` doctests on the `Done` type's documentation (src/done.rs,
//! `ctxcore::Done`: the heap `Context` dropped before its polled `Done`,
//! E0505, and the pinned `ScopedContext` gone before its polled `Done`,
//! E0597), run by `cargo test --doc`.
//!
//! The audit found no other hole: `DoneOwned` and `Run` own a counted
//! reference (no lifetime), `ScopedContext<'p>` already has its own `Drop`,
//! `ContextRef<'a>` is `Copy` with no drop work, and `AfterFunc`,
//! `CancelHandle` and `StaticContext` borrow nothing.
//!
//! The tests below are the *legal* patterns that must keep compiling and
//! working. They use no real time, so they also run under Miri:
//!
//! `cargo +nightly miri test --test review2_done_dropck` (also in ci/miri.sh).
use ctxcore::{Context, ContextRef, Done, Error, ScopedContext, StaticContext};
use std::future::Future;
use std::pin::{pin, Pin};
use std::task::{Context as TaskCx, Poll, Waker};

fn poll_once<F: Future>(fut: Pin<&mut F>) -> Poll<F::Output> {
    fut.poll(&mut TaskCx::from_waker(Waker::noop()))
}

/// A polled `Done`, boxed and moved around, dropped before its heap context:
/// it unlinks from a live node, and the context works on afterwards.
#[test]
fn polled_boxed_done_dropped_before_its_heap_context() {
    let (ctx, handle) = Context::background().with_cancel();
    let holder: Pin<Box<Done<'_>>>;
    {
        let mut d = Box::pin(ctx.done());
        assert!(poll_once(d.as_mut()).is_pending());
        holder = d; // moving the box is fine: the `Done` stays put
    }
    drop(holder); // unlinks while `ctx` is alive
    assert!(!ctx.is_done());
    // A second waiter after the first left: the list is intact.
    let mut again = Box::pin(ctx.done());
    assert!(poll_once(again.as_mut()).is_pending());
    handle.cancel();
    assert_eq!(poll_once(again.as_mut()), Poll::Ready(Error::Canceled));
    drop(again);
    drop(ctx);
}

/// Several polled `Done`s on one context, dropped in an order other than the
/// one they were linked in, all before the context.
#[test]
fn several_polled_dones_dropped_out_of_order_before_the_context() {
    let (ctx, handle) = Context::background().with_cancel();
    let mut a = Box::pin(ctx.done());
    let mut b = Box::pin(ctx.done());
    let mut c = Box::pin(ctx.done());
    for d in [a.as_mut(), b.as_mut(), c.as_mut()] {
        assert!(poll_once(d).is_pending());
    }
    drop(b);
    drop(a);
    handle.cancel();
    assert_eq!(poll_once(c.as_mut()), Poll::Ready(Error::Canceled));
    drop(c);
    drop(ctx);
}

/// A polled `Done` on a `ScopedContext`, dropped inside the scope (before the
/// pinned owner detaches).
#[test]
fn polled_done_on_scoped_context_dropped_inside_the_scope() {
    {
        let sc = pin!(ScopedContext::new(ContextRef::background()));
        let c = sc.as_ref().context();
        let mut d = Box::pin(c.done());
        assert!(poll_once(d.as_mut()).is_pending());
        drop(d);
        // Pinned on the stack too, dropped at the end of its own block.
        {
            let mut s = pin!(c.done());
            assert!(poll_once(s.as_mut()).is_pending());
        }
        assert!(!c.is_done());
    } // `sc` detaches here, with no waiter left
}

/// A polled `Done` on a scoped child of a heap context, dropped inside the
/// scope after the heap parent cancelled the child.
#[test]
fn polled_done_on_scoped_child_of_heap_parent_after_parent_cancel() {
    let (parent, handle) = Context::background().with_cancel();
    {
        let sc = pin!(ScopedContext::new(parent.as_ref()));
        let c = sc.as_ref().context();
        let mut d = Box::pin(c.done());
        assert!(poll_once(d.as_mut()).is_pending());
        handle.cancel(); // pops the waiter, the node stays alive (pinned)
        assert_eq!(c.err(), Some(Error::Canceled));
        drop(d); // polled, popped, never completed: unlinks nothing
    }
    drop(parent);
}

/// Dropping a polled `Done` after its context was cancelled (the waiter was
/// popped by the canceller) but while the context is still alive, without
/// polling it again: the heap case.
#[test]
fn polled_done_dropped_after_cancel_while_heap_context_alive() {
    let (ctx, handle) = Context::background().with_cancel();
    let mut d = Box::pin(ctx.done());
    assert!(poll_once(d.as_mut()).is_pending());
    drop(handle); // dropping the handle cancels
    assert_eq!(ctx.err(), Some(Error::Canceled));
    drop(d);
    drop(ctx);
}

/// The same on a cancelled child whose parent is also gone: the child's
/// context keeps its node alive, so the `Done` may drop after the parent.
#[test]
fn polled_done_on_child_dropped_after_parent_gone() {
    let (parent, parent_handle) = Context::background().with_cancel();
    let (child, _child_handle) = parent.with_cancel();
    let mut d = Box::pin(child.done());
    assert!(poll_once(d.as_mut()).is_pending());
    parent_handle.cancel();
    drop(parent);
    assert_eq!(child.err(), Some(Error::Canceled));
    drop(d);
    drop(child);
}

/// The same on a `ScopedContext` cancelled by its owner, dropped inside the
/// scope.
#[test]
fn polled_done_dropped_after_cancel_while_scoped_context_alive() {
    let sc = pin!(ScopedContext::new(ContextRef::background()));
    let c = sc.as_ref().context();
    let mut d = pin!(c.done());
    assert!(poll_once(d.as_mut()).is_pending());
    sc.cancel();
    assert!(c.is_done());
    // `d` drops before `sc` (reverse declaration order).
}

/// A `Done<'static>` on a `StaticContext` may be kept anywhere: the root
/// never goes away.
#[test]
fn done_on_static_root_may_live_anywhere() {
    static ROOT: StaticContext = StaticContext::new();
    let holder: Pin<Box<Done<'static>>>;
    {
        let mut d = Box::pin(ROOT.done());
        assert!(poll_once(d.as_mut()).is_pending());
        holder = d;
    }
    drop(holder);
    assert!(!ROOT.is_done());
}
