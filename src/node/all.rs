//! `Context::all` nodes (feature `alloc`): an `any` node (flag `ANY`: the
//! same links in every parent's waiter list, the same freeing and the same
//! propagation through `QUEUED`) that also has flag `ALL` and counts its
//! parents down; the parent whose done takes the count to zero cancels it.
//!
//! Maintains: 4 (an `all` node retains every parent), 8 (its links are
//! unlinked under each parent's lock before they are freed), 11 (as an `any`
//! node), 19 (the countdown), 20 (its links arm their parents' deadlines).
//! Relies on: 5 (a link's target is valid while the link is reachable under
//! its parent's lock).

use super::*;

#[cfg(feature = "alloc")]
impl NodeRef {
    /// A node done when every one of `parents` is (distinct nodes, none of
    /// them never done): with the error and cause of the last one, the
    /// latest of their deadlines if every one has a deadline. Done at once,
    /// with `Canceled` and no cause, if there are none.
    pub(crate) fn new_all(parents: &[&NodeRef]) -> NodeRef {
        debug_assert!(parents.iter().all(|p| !p.node().never_done()));
        // The latest deadline (`Instant::MAX` if some parent has none).
        let dl_parent = parents.iter().max_by_key(|p| p.node().deadline).copied();
        let mut deadline = dl_parent.map_or(Instant::MAX, |p| p.node().deadline);
        // Parents on different timers: the latest of instants read on
        // different clocks means nothing, so the node has no deadline (reads
        // still poll the parents, each on its own clock: `POLLS` below), and
        // its children inherit none.
        let first = parents.first().and_then(|f| f.node().timer);
        if !parents.iter().all(|p| same_timer(p.node().timer, first)) {
            deadline = Instant::MAX;
        }
        let timer = match dl_parent {
            Some(p) if deadline != Instant::MAX => p.node().timer,
            _ => parents.first().and_then(|p| p.node().timer),
        };
        let mut flags = ANY | ALL;
        if deadline != Instant::MAX {
            flags |= HAS_DEADLINE;
        }
        if parents
            .iter()
            .any(|p| p.node().state.load(Ordering::Relaxed) & HAS_DEADLINE != 0)
        {
            // A parent's deadline may pass before any timer fires: reads
            // check the parents (property 5).
            flags |= POLLS;
        }
        let node = Self::alloc(Node::new(ptr::null(), flags, deadline, None, timer));
        let mut links = Vec::with_capacity(parents.len());
        for p in parents {
            links.push(AnyLink {
                entry: Entry::new(EntryKind::AnyLink),
                target: node.ptr.as_ptr(),
                parent: (*p).clone(),
            });
        }
        let any = NonNull::from(Box::leak(Box::new(AnyLinks {
            deadline_parent: if deadline != Instant::MAX {
                dl_parent.map_or(ptr::null(), |p| p.ptr.as_ptr() as *const Node)
            } else {
                ptr::null()
            },
            links,
            next_pending: ptr::null_mut(),
            // More than `u32::MAX` parents cannot be allocated (each link is
            // larger than 4 bytes): saturating is only for form.
            remaining: AtomicU32::new(u32::try_from(parents.len()).unwrap_or(u32::MAX)),
            last: AtomicU32::new(0),
        })));
        // SAFETY: the node is not shared yet; we are its only owner, so this
        // write of an immutable-after-construction field races with nothing.
        unsafe { (*node.ptr.as_ptr()).up = any.as_ptr() as *const () };
        // SAFETY: just allocated; the links do not move (the Vec is never
        // touched again until the node is freed).
        let all = unsafe { any.as_ref() };
        // No parents: vacuously, every parent is done.
        let mut zero = parents.is_empty();
        for (i, l) in all.links.iter().enumerate() {
            let p = l.parent.node();
            let guard = p.lock.lock();
            if p.is_done_flag() {
                drop(guard);
                // Done before it could be linked: counted down here, once
                // (invariant 19).
                zero |= all.count_down(i);
                continue;
            }
            // SAFETY: we hold the parent's lock; the link is pinned in the
            // boxed Vec and unlinked (invariant 8).
            unsafe {
                p.waiters.push(l as *const AnyLink as *const Link);
                p.add_callbacks(1);
            }
            drop(guard);
        }
        // Every parent's deadline is armed (invariant 20): the node is done
        // only once every parent is, so each parent's deadline must fire on
        // time for a waiter on this node (or on a descendant, whose deadline
        // walk would reach only the latest parent's owner) to be woken.
        // After the loop, with no lock held: arming a passed deadline fires
        // it here (a read's cancel: after-funcs handed off), which may
        // count the node down.
        for l in all.links.iter() {
            // SAFETY: `l.parent` is a reference of ours (invariant 4), with
            // the allocation's pointer (invariants 7, 20).
            unsafe { Node::arm_for_waiters(l.parent.ptr) };
        }
        if zero {
            // We took the count to zero: we alone cancel the node
            // (invariant 19), with the last parent's error and cause.
            node.node().cancel_inherited();
        }
        node
    }
}

#[cfg(feature = "alloc")]
impl AnyLinks {
    /// Counts down the parent at `index`, done now; true if that was the
    /// last one, and then records it as the node's last parent. Called once
    /// per parent (invariant 19).
    pub(super) fn count_down(&self, index: usize) -> bool {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            // Read back only by this thread (invariant 19).
            self.last
                .store(u32::try_from(index).unwrap_or(u32::MAX), Ordering::Relaxed);
            true
        } else {
            false
        }
    }

    /// The index in `links` of the link at `l`, one of ours.
    pub(super) fn index_of(&self, l: *const AnyLink) -> usize {
        let base = self.links.as_ptr() as usize;
        (l as usize - base) / core::mem::size_of::<AnyLink>()
    }

    /// The parent whose done took the count to zero (invariant 19), if it
    /// has.
    pub(super) fn last_parent(&self) -> Option<&Node> {
        if self.remaining.load(Ordering::Acquire) != 0 {
            return None;
        }
        let i = self.last.load(Ordering::Relaxed) as usize;
        self.links.get(i).map(|l| l.parent.node()).filter(|p| p.is_done_flag())
    }
}

#[cfg(feature = "alloc")]
impl Node {
    /// A read of a live `all` node (property 5: exact when observed): if
    /// every parent is done, or its deadline has passed (a passed deadline
    /// is fired here, cancelling its owner, so the count goes down at once),
    /// the done node whose error and cause to report — this node, if the
    /// last parent's cancellation reached it, else the parent with the
    /// latest deadline that this read found passed. `None` while some parent
    /// is live, or while a cancellation of the last parent is still on its
    /// way (as for a tree child). A parent that is itself an `all` node is
    /// taken as done once its own deadline has passed or it is flagged done:
    /// its own parents are not polled from here (no recursion).
    pub(super) fn all_observed(&self) -> Option<&Node> {
        let links = self.any()?;
        // SAFETY: immutable after construction and freed only with the node;
        // the parents are retained (invariant 4).
        let links = unsafe { links.as_ref() };
        let mut latest: Option<&Node> = None;
        for l in links.links.iter() {
            let p = l.parent.node();
            if p.is_done_flag() {
                continue;
            }
            if p.state.load(Ordering::Relaxed) & HAS_DEADLINE != 0 && p.check_deadline_tree(false) {
                if latest.is_none_or(|q| p.deadline >= q.deadline) {
                    latest = Some(p);
                }
                continue;
            }
            return None;
        }
        if self.is_done_flag() {
            return Some(self);
        }
        // The deadline's owner, fired above, is on the way up.
        Some(latest?.nearest_done_up())
    }
}
