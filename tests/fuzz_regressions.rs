//! Regression tests for what the fuzz targets, the sanitizers and the stress
//! tests found (docs/testing.md lists each finding). A test that still fails
//! is `#[ignore]`d with the reason, and is un-ignored with the fix.

use ctxcore::{Context, ManualClock};
use std::sync::Arc;

static CLOCK: ManualClock = ManualClock::new();

/// An after-func on a context that can never be done — a `with_timer` root,
/// or `without_cancel` on a `with_timer` tree — can never run. Dropping its
/// `AfterFunc` and every context must free the callback (and what it holds),
/// as on `Context::background()`, where it is dropped at registration.
///
/// Found by the `ops` fuzz target's allocation accounting. Today the entry in
/// the node's waiter list keeps the node alive (`AfterFuncInner::node`) and
/// the node keeps the entry (its list reference): a cycle, so node, entry and
/// callback leak for the life of the process.
#[test]
fn after_func_on_never_done_root_is_freed() {
    let held = Arc::new(());
    let root = Context::with_timer(&CLOCK);
    let h = held.clone();
    let af = root.after_func(move || drop(h));
    drop(af);
    drop(root);
    assert_eq!(Arc::strong_count(&held), 1, "with_timer root: callback leaked");

    let (tree, _handle) = Context::with_timer(&CLOCK).with_cancel();
    let detached = tree.without_cancel();
    let h = held.clone();
    drop(detached.after_func(move || drop(h)));
    drop(detached);
    assert_eq!(Arc::strong_count(&held), 1, "without_cancel root: callback leaked");

    let root = Context::with_timer(&CLOCK);
    let any = Context::any([&root]);
    let h = held.clone();
    drop(any.after_func(move || drop(h)));
    drop(any);
    drop(root);
    assert_eq!(
        Arc::strong_count(&held),
        1,
        "any over never-done parents: callback leaked"
    );
}

/// The same on `background()`, which has no node: the callback is dropped at
/// once (this passes; it pins down the behaviour the test above asks for).
#[test]
fn after_func_on_background_is_freed() {
    let held = Arc::new(());
    let h = held.clone();
    drop(Context::background().after_func(move || drop(h)));
    assert_eq!(Arc::strong_count(&held), 1);
}
