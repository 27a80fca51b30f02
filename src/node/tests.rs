//! Unit tests of the node layer (run under Miri: `ci/miri.sh`).

use super::*;

/// Invariant 14: a child cancelled by its own handle leaves its parent's
/// list at once (as Go's `CancelFunc` removes the child), even while its
/// context lives on; a child cancelled by its parent is taken out by
/// the parent's cancel. Either way the parent's list is empty.
#[test]
pub(super) fn a_cancelled_child_leaves_its_parent_at_once() {
    // A parent with a deadline: its children hold it by reference
    // (invariant 16: a node with a deadline has no kids).
    let parent = NodeRef::new_child(None, None, Some(Instant::from_nanos(u64::MAX / 2 + 1)), None);
    let children_empty = |p: &NodeRef| {
        let n = p.node();
        let g = n.lock.lock();
        // SAFETY: we hold the lock (invariant 1).
        let empty = unsafe { n.children.is_empty() };
        drop(g);
        empty
    };
    // Children of a deadline parent hold it by reference (invariant 16),
    // so they leave its list when cancelled (invariant 14).
    let far = Some(Instant::from_nanos(u64::MAX / 2));
    let a = NodeRef::new_child(Some(&parent), None, far, None);
    let b = NodeRef::new_child(Some(&parent), None, far, None);
    assert_eq!(a.node().state.load(Ordering::Relaxed) & KID, 0);
    assert!(!children_empty(&parent));
    assert!(a.node().cancel(Error::Canceled, None));
    assert!(a.node().state.load(Ordering::Relaxed) & UNLINKED != 0);
    // `b` is still linked.
    assert!(!children_empty(&parent));
    assert!(b.node().cancel(Error::Canceled, Some(Cause::from("b"))));
    assert!(children_empty(&parent));
    // A second cancel of a done node takes no lock and changes nothing.
    assert!(!a.node().cancel(Error::DeadlineExceeded, None));
    assert_eq!(a.node().err(), Some(Error::Canceled));
    // Propagation from the parent does not mark a child `UNLINKED`: the
    // parent's canceller popped it.
    let c = NodeRef::new_child(Some(&parent), None, far, None);
    assert!(parent.node().cancel(Error::Canceled, None));
    assert!(c.node().is_done_flag());
    assert!(c.node().state.load(Ordering::Relaxed) & UNLINKED == 0);
    assert!(children_empty(&parent));
    drop((a, b, c, parent));
}

pub(super) fn kid_count(p: &NodeRef) -> u32 {
    let n = p.node();
    let _g = n.lock.lock();
    // SAFETY: we hold the lock (invariant 1).
    n.kids.with(|k| unsafe { *k })
}

/// A child without a deadline holds its parent by the parent's kid
/// count, not by a reference. Its own cancel takes it out of the list and
/// gives the count up at once; dropped live, its release does
/// (invariant 16).
#[test]
pub(super) fn a_kid_holds_its_parent_by_count() {
    let parent = NodeRef::new_child(None, None, None, None);
    let linked = |k: &NodeRef| {
        let g = parent.node().lock.lock();
        // SAFETY: we hold the parent's lock, which guards the link (inv. 1).
        let l = unsafe { k.node().link.is_linked() };
        drop(g);
        l
    };
    let k = NodeRef::new_child(Some(&parent), None, None, None);
    assert_ne!(k.node().state.load(Ordering::Relaxed) & KID, 0);
    assert_ne!(parent.node().state.load(Ordering::Relaxed) & HAD_KIDS, 0);
    assert_eq!(parent.node().refs.load(Ordering::Relaxed), 1);
    assert_eq!(kid_count(&parent), 1);
    assert!(k.node().cancel(Error::Canceled, None));
    assert_ne!(k.node().state.load(Ordering::Relaxed) & UNLINKED, 0);
    assert!(!linked(&k));
    assert_eq!(kid_count(&parent), 0);
    drop(k);
    assert_eq!(kid_count(&parent), 0);
    // Dropped without a cancel: the last release unlinks it and gives
    // the count up under the parent's lock.
    let k = NodeRef::new_child(Some(&parent), None, None, None);
    assert_eq!(kid_count(&parent), 1);
    drop(k);
    assert_eq!(kid_count(&parent), 0);
    // Popped by the parent's cancel: still counted until it is freed.
    let k = NodeRef::new_child(Some(&parent), None, None, None);
    assert!(parent.node().cancel(Error::Canceled, None));
    assert!(k.node().is_done_flag());
    assert!(!linked(&k));
    assert_eq!(kid_count(&parent), 1);
    drop(k);
    assert_eq!(kid_count(&parent), 0);
    // A child of a done parent is born done and holds it by reference.
    let late = NodeRef::new_child(Some(&parent), None, None, None);
    assert_eq!(late.node().state.load(Ordering::Relaxed) & KID, 0);
    assert_eq!(parent.node().refs.load(Ordering::Relaxed), 2);
    drop((late, parent));
}

/// A node whose last reference goes while kids still hold it becomes an
/// orphan: still linked under its own parent, cancelled through it, and
/// freed by the last kid to let go (invariant 16).
#[test]
pub(super) fn an_orphan_lives_while_kids_hold_it() {
    let root = NodeRef::new_child(None, None, None, None);
    let mid = NodeRef::new_child(Some(&root), None, None, None);
    let leaf = NodeRef::new_child(Some(&mid), None, None, None);
    let leaf2 = NodeRef::new_child(Some(&mid), None, None, None);
    drop(mid);
    assert_eq!(kid_count(&root), 1, "the orphan still holds the root");
    // The root's cancel reaches the leaves through the orphan (a
    // canceller's kid count holds it meanwhile).
    assert!(root.node().cancel(Error::Canceled, Some(Cause::from("root"))));
    assert!(leaf.node().is_done_flag());
    assert_eq!(leaf.node().cause().unwrap().as_str(), Some("root"));
    drop(leaf);
    assert_eq!(kid_count(&root), 1);
    drop(leaf2);
    assert_eq!(kid_count(&root), 0, "the last kid freed the orphan");
    drop(root);
}

/// A child with a deadline of its own under a plain parent is a kid too
/// (a per-request timeout under a connection's context); its children are
/// not (a node with a deadline has no kids, so an orphan never has a
/// deadline or a timer entry). Its deadline cancel takes it out of the
/// list and gives the count up, freeing an orphaned parent (invariant 16).
#[test]
pub(super) fn a_deadline_child_of_a_plain_parent_is_a_kid() {
    let far = Some(Instant::from_nanos(u64::MAX / 2));
    let root = NodeRef::new_child(None, None, None, None);
    let mid = NodeRef::new_child(Some(&root), None, None, None);
    let timed = NodeRef::new_child(Some(&mid), None, far, None);
    assert_ne!(timed.node().state.load(Ordering::Relaxed) & KID, 0);
    assert_eq!(kid_count(&mid), 1);
    let below = NodeRef::new_child(Some(&timed), None, None, None);
    let below_timed = NodeRef::new_child(Some(&timed), None, Some(Instant::from_nanos(1)), None);
    for n in [&below, &below_timed] {
        assert_eq!(n.node().state.load(Ordering::Relaxed) & KID, 0);
    }
    assert_eq!(kid_count(&timed), 0);
    assert_eq!(timed.node().state.load(Ordering::Relaxed) & HAD_KIDS, 0);
    // The middle node becomes an orphan held by its deadline kid.
    drop(mid);
    assert_eq!(kid_count(&root), 1);
    // The deadline fires: the kid leaves the orphan's list, gives up its
    // last count and frees it; the subtree below follows.
    assert!(timed.node().cancel(Error::DeadlineExceeded, None));
    assert_ne!(timed.node().state.load(Ordering::Relaxed) & UNLINKED, 0);
    assert_eq!(kid_count(&root), 0, "the orphan was freed");
    assert_eq!(below.node().err(), Some(Error::DeadlineExceeded));
    assert!(below_timed.node().is_done_flag());
    drop((below, below_timed, timed));
    // Dropped live, a deadline kid gives its count up in its release.
    let t = NodeRef::new_child(Some(&root), None, far, None);
    assert_eq!(kid_count(&root), 1);
    drop(t);
    assert_eq!(kid_count(&root), 0);
    // Under a parent with a deadline, a child holds it by reference.
    let p = NodeRef::new_child(Some(&root), None, far, None);
    let c = NodeRef::new_child(Some(&p), None, Some(Instant::from_nanos(2)), None);
    assert_eq!(c.node().state.load(Ordering::Relaxed) & KID, 0);
    assert_eq!(kid_count(&p), 0);
    drop((c, p, root));
}

/// A kid's own cancel gives up its orphaned parent's last kid count and
/// frees it (through the parent's allocation pointer: Miri checks the
/// provenance).
#[test]
pub(super) fn a_kids_cancel_frees_its_orphaned_parent() {
    let root = NodeRef::new_child(None, None, None, None);
    let mid = NodeRef::new_child(Some(&root), None, None, None);
    let leaf = NodeRef::new_child(Some(&mid), None, None, None);
    drop(mid);
    assert_eq!(kid_count(&root), 1);
    assert!(leaf.node().cancel(Error::Canceled, None));
    assert_eq!(kid_count(&root), 0, "the orphan was freed");
    assert!(!root.node().is_done_flag());
    drop((leaf, root));
}

/// A kid's cancel whose after-func panics still frees the orphaned
/// parent whose last kid count it gave up (found by review: the free ran
/// after the re-raise and was skipped by the unwind).
#[cfg(feature = "std")]
#[test]
pub(super) fn a_panicking_after_func_does_not_leak_the_orphan() {
    let (root, _hr) = crate::Context::background().with_cancel();
    let (mid, hm) = root.with_cancel();
    hm.detach();
    let (leaf, hl) = mid.with_cancel();
    drop(mid);
    assert_eq!(kid_count(root.test_node_ref().unwrap()), 1);
    let _af = leaf.after_func(|| panic!("boom"));
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hl.cancel()));
    assert!(caught.is_err());
    assert_eq!(kid_count(root.test_node_ref().unwrap()), 0, "the orphan leaked");
    drop((leaf, hl));
}

/// The same without a cancel: dropping the kids frees the orphan and
/// unlinks it from its parent.
#[test]
pub(super) fn the_last_kid_frees_an_uncancelled_orphan() {
    let root = NodeRef::new_child(None, None, None, None);
    let mid = NodeRef::new_child(Some(&root), None, None, None);
    let leaf = NodeRef::new_child(Some(&mid), None, None, None);
    drop(mid);
    assert!(!leaf.node().is_done_flag());
    drop(leaf);
    assert_eq!(kid_count(&root), 0);
    let g = root.node().lock.lock();
    // SAFETY: we hold the lock (invariant 1).
    assert!(unsafe { root.node().children.is_empty() });
    drop(g);
    drop(root);
}

#[test]
pub(super) fn node_size_is_documented() {
    // docs/design.md reports this figure; keep them in step.
    let size = core::mem::size_of::<Node>();
    if cfg!(target_pointer_width = "64") {
        assert_eq!(size, 104, "Node is now {size} bytes: update docs/design.md");
    }
}

#[test]
pub(super) fn state_bits_are_distinct() {
    let all = [
        DONE,
        DEADLINE_ERR,
        HAS_DEADLINE,
        OWNS_DEADLINE,
        QUEUED,
        ANY,
        ATTACHED,
        NEVER_DONE,
        UNLINKED,
        HEAP,
        KID,
        HAD_KIDS,
        CAUSE_UP,
        PENDING,
        ALL,
        POLLS,
    ];
    let mut acc = 0;
    for b in all {
        assert_eq!(acc & b, 0);
        acc |= b;
    }
}

#[test]
pub(super) fn refcount_frees_on_last_release() {
    let root = NodeRef::new_root(None);
    let child = NodeRef::new_child(Some(&root), None, None, None);
    // A kid holds its parent by count (invariant 16).
    assert_eq!(root.node().refs.load(Ordering::Relaxed), 1);
    assert_eq!(kid_count(&root), 1);
    let c2 = child.clone();
    assert_eq!(child.node().refs.load(Ordering::Relaxed), 2);
    drop(child);
    drop(c2);
    assert_eq!(kid_count(&root), 0);
    assert_eq!(root.node().refs.load(Ordering::Relaxed), 1);
    let _g = root.node().lock.lock();
    // SAFETY: we hold the lock.
    assert!(unsafe { root.node().children.is_empty() });
}

#[test]
pub(super) fn cancel_once_wins() {
    let root = NodeRef::new_child(None, None, None, None);
    assert!(root.node().cancel(Error::Canceled, Some(Cause::from("first"))));
    assert!(!root.node().cancel(Error::Canceled, Some(Cause::from("second"))));
    assert_eq!(root.node().cause().unwrap().as_str(), Some("first"));
}

#[test]
pub(super) fn children_of_plainly_cancelled_nodes_share_the_uncounted_immortal_node() {
    let is_canceled = |c: &crate::Context| is_immortal(NonNull::from(c.node_ref().unwrap()));
    let (parent, h) = crate::Context::background().with_cancel();
    h.cancel();
    let (child, hc) = parent.with_cancel();
    assert!(is_canceled(&child), "the immortal node is handed out");
    assert!(!is_canceled(&parent));
    let (grandchild, _hg) = child.clone().with_cancel();
    assert!(is_canceled(&grandchild));
    let (dl, _hd) = child.with_timeout(core::time::Duration::from_secs(60));
    assert!(!is_canceled(&dl), "a deadline child has its own node");
    let any = crate::Context::any([&child, &grandchild]);
    let (of_any, _ha) = any.with_cancel();
    assert!(is_canceled(&of_any));
    // The one located immortal node for `h.cancel()`'s site (with `std`),
    // reporting it (invariant 15).
    // SAFETY: an immortal node is a `static`, never freed (invariant 15).
    let imm: &'static Node = unsafe { &*(child.node_ref().unwrap() as *const Node) };
    assert!(ptr::eq(imm, of_any.node_ref().unwrap()));
    assert_eq!(of_any.cancelled_at(), parent.cancelled_at());
    assert!(parent.cancelled_at().is_some());
    // Looked up once, then cached in the done parent's state (and in the
    // immortal node's own, for the grandchild): the next child is the same
    // node, found by the cache alone.
    let cached = |n: &Node| n.state.load(Ordering::Acquire) & IMMORTAL_CACHE;
    assert_ne!(cached(parent.node_ref().unwrap()), 0);
    assert_eq!(
        cached_immortal(cached(parent.node_ref().unwrap())).map(ptr::from_ref),
        Some(ptr::from_ref(imm))
    );
    assert_eq!(
        cached_immortal(cached(imm)).map(ptr::from_ref),
        Some(ptr::from_ref(imm))
    );
    let (again, _) = parent.with_cancel();
    assert!(ptr::eq(imm, again.node_ref().unwrap()));
    drop((child, hc, grandchild, dl, any, of_any, again));
    // Never counted: other tests running meanwhile cannot move it either
    // (its cache bits may be set, by any test: the same ones).
    assert_eq!(CANCELED.refs.load(Ordering::Relaxed), 1);
    assert_eq!(CANCELED.state.load(Ordering::Relaxed) & !IMMORTAL_CACHE, DONE);
    assert_eq!(imm.refs.load(Ordering::Relaxed), 1);
    assert_eq!(imm.state.load(Ordering::Relaxed) & !IMMORTAL_CACHE, DONE);
    let (p2, h2) = crate::Context::background().with_cancel();
    h2.cancel_with("why");
    assert!(!is_canceled(&p2.with_cancel().0), "a cause needs the parent's node");
    assert!(!is_canceled(&p2.with_cancel().0), "and nothing was cached");
    assert_eq!(cached(p2.node_ref().unwrap()), 0);
}

#[test]
pub(super) fn the_immortal_cache_bits_sit_above_every_flag_and_name_every_immortal() {
    for flag in [
        DONE,
        DEADLINE_ERR,
        HAS_DEADLINE,
        OWNS_DEADLINE,
        QUEUED,
        ANY,
        ATTACHED,
        NEVER_DONE,
    ]
    .into_iter()
    .chain([UNLINKED, HEAP, KID, HAD_KIDS, CAUSE_UP, PENDING, ALL, POLLS, ARMED])
    {
        assert_eq!(flag & IMMORTAL_CACHE, 0);
        assert!(cached_immortal(flag | DONE).is_none());
    }
    assert!(
        cached_immortal(IMMORTAL_CACHE).is_none(),
        "an index past the last is none"
    );
    assert!(ptr::eq(cached_immortal(1 << IMMORTAL_SHIFT).unwrap(), CANCELED));
}

/// Review reproducer (defect 5, simulated): reference-count saturation
/// was not sticky. With `MAX_REFS - 2` other live owners (simulated by a
/// store), two more clones pushed the count to the cap, where the second
/// increment was undone; every owner's release still decremented, so
/// the count could reach zero while an owner was alive (use-after-free).
/// Once saturated, the count must stay pinned whatever the owners do:
/// here a thousand simulated releases stand for the `MAX_REFS - 2`
/// others (the original reproducer stored 1, i.e. assumed every one of
/// them decremented), then the last real owner's.
#[test]
pub(super) fn review_refs_saturation_is_sticky() {
    let root = NodeRef::new_child(None, None, None, None);
    // `root` plus MAX_REFS - 2 simulated live owners.
    root.node().refs.store(MAX_REFS - 1, Ordering::Relaxed);
    let a = root.clone(); // MAX_REFS: saturated
    let b = root.clone(); // stays saturated
    drop(b);
    drop(a);
    for _ in 0..1000 {
        // SAFETY: (of the simulation) each simulated owner owned one
        // reference; the count is saturated, so none of these frees the node.
        unsafe { release_node(root.ptr.as_ptr()) };
    }
    assert!(
        root.node().refs.load(Ordering::Relaxed) >= MAX_REFS,
        "saturation is sticky"
    );
    // `root` is still a live owner and its node was never freed.
    assert!(!root.node().is_done_flag());
    assert!(root.node().try_retain());
    // A pinned node is never freed: that is the leak saturation trades for
    // soundness. End the simulation by hand (every simulated owner is gone,
    // `root` is the last) so that Miri's leak check stays on.
    root.node().refs.store(1, Ordering::Relaxed);
}

#[test]
pub(super) fn deep_chain_cancels_and_drops_without_recursion() {
    // 100k levels would overflow any recursive implementation.
    let depth = if cfg!(miri) { 200 } else { 100_000 };
    let root = NodeRef::new_child(None, None, None, None);
    let mut last = root.clone();
    let mut all = Vec::new();
    for _ in 0..depth {
        let c = NodeRef::new_child(Some(&last), None, None, None);
        all.push(c.clone());
        last = c;
    }
    drop(all);
    root.node().cancel(Error::Canceled, None);
    assert!(last.node().is_done());
    drop(root);
    drop(last);
}
