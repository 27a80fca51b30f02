//! Review reproducer: invariant 16 assumes "an orphan has no owners, so no
//! waiters". A pinned `Done` future leaked with `mem::forget` (safe) leaves
//! a waiter linked on a node whose references then all go: an orphan *with*
//! a waiter. The parent's canceller (drain_children) try-locks it, sees
//! waiters, `try_retain` fails (count zero) and skips it: the orphan is
//! never marked done and its kids are never cancelled.
//!
//! Fixed (issue 10, defect 3): `drain_children` holds a popped child with
//! waiters by `hold_popped`, which holds an orphan by a kid count, so the
//! orphan is cancelled and its kids after it. Loom model:
//! `orphan_with_leaked_waiter_vs_root_cancel`; this test runs under Miri
//! (`ci/miri.sh`).

mod common;
use common::leak;
use core::future::Future;
use core::task::{Context as TaskCx, Poll};
use ctxcore::Context;

#[test]
fn orphan_with_leaked_waiter_is_skipped_by_parent_cancel() {
    let (root, root_h) = Context::background().with_cancel();
    let (mid, mid_h) = root.with_cancel();
    mid_h.detach();
    let (leaf, _leaf_h) = mid.with_cancel(); // a kid: holds `mid` by kid count
    {
        let mut d = Box::pin(mid.done());
        let waker = futures::task::noop_waker();
        assert_eq!(d.as_mut().poll(&mut TaskCx::from_waker(&waker)), Poll::Pending);
        leak(d); // safe (`mem::forget`): the waiter stays linked on `mid`
    }
    drop(mid); // refs -> 0 with a kid: `mid` becomes an orphan (with a waiter)
    root_h.cancel();
    assert!(root.is_done());
    assert!(
        leaf.is_done(),
        "leaf is live although its ancestor `root` was cancelled"
    );
}
