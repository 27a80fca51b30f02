//! `Context::any` nodes (feature `alloc`): one node linked as a callback
//! entry into every parent's waiter list.
//!
//! Maintains: 4 (an `any` node retains every parent), 8 (its links are
//! unlinked under each parent's lock before they are freed), 11 (`QUEUED`
//! is set without the node's lock, so `DONE` is a read-modify-write there).

use super::*;

#[cfg(feature = "alloc")]
impl NodeRef {
    /// A node done when the first of `parents` is done.
    pub(crate) fn new_any(parents: &[&NodeRef]) -> NodeRef {
        debug_assert!(!parents.is_empty());
        let dl_parent = parents
            .iter()
            .min_by_key(|p| p.node().deadline)
            .copied()
            .unwrap_or(parents[0]);
        let deadline = dl_parent.node().deadline;
        let timer = if deadline != Instant::MAX {
            dl_parent.node().timer
        } else {
            parents[0].node().timer
        };
        let mut flags = ANY | if deadline != Instant::MAX { HAS_DEADLINE } else { 0 };
        if parents.iter().all(|p| p.node().never_done()) {
            flags |= NEVER_DONE;
        }
        if parents
            .iter()
            .any(|p| p.node().state.load(Ordering::Relaxed) & HAS_DEADLINE != 0 && !same_timer(p.node().timer, timer))
        {
            // A parent's deadline on another clock than the node's may pass
            // while the node's own clock says nothing: reads check every
            // parent, each on its own clock (`POLLS`, `any_observed`;
            // property 5, review 5 D5).
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
            deadline_parent: dl_parent.ptr.as_ptr(),
            links,
            next_pending: ptr::null_mut(),
            remaining: AtomicU32::new(0),
            last: AtomicU32::new(0),
        })));
        // SAFETY: the node is not shared yet; we are its only owner, so this
        // write of an immutable-after-construction field races with nothing.
        unsafe { (*node.ptr.as_ptr()).up = any.as_ptr() as *const () };
        let mut born_done = false;
        // SAFETY: just allocated; the links do not move (the Vec is never
        // touched again until the node is freed).
        let links = unsafe { &any.as_ref().links };
        for l in links.iter() {
            let p = l.parent.node();
            let guard = p.lock.lock();
            if p.is_done_flag() {
                born_done = true;
                drop(guard);
                break;
            }
            // SAFETY: we hold the parent's lock; the link is pinned in the
            // boxed Vec and unlinked (invariant 8).
            unsafe {
                p.waiters.push(l as *const AnyLink as *const Link);
                p.add_callbacks(1);
            }
            drop(guard);
            // No arming here (invariant 20): the node is done when its first
            // parent is, so only the earliest deadline matters, and the
            // node's deadline walk reaches that parent's owner
            // (`deadline_parent`): a waiter on this node, or on a
            // descendant, arms it then.
        }
        if !born_done {
            // Parents on another timer than the node's: the earliest
            // deadline is a minimum of instants read on different clocks,
            // which means nothing, and a waiter's walk (`deadline_parent`)
            // reaches one of them only. Each other timer's deadline is
            // armed now, as an `all` node's parents are (invariant 20), so
            // that it wakes the node's waiters on time (review 5, D1).
            // After the loop, with no lock held.
            for l in links.iter() {
                if !same_timer(l.parent.node().timer, timer) {
                    // SAFETY: `l.parent` is a reference of ours (invariant
                    // 4), with the allocation's pointer (invariants 7, 20).
                    unsafe { Node::arm_for_waiters(l.parent.ptr) };
                }
            }
        }
        if born_done {
            node.node().cancel_inherited();
        }
        node
    }
}

/// Whether two nodes run on the same timer (or both on none).
#[cfg(feature = "alloc")]
pub(super) fn same_timer(a: Option<&'static dyn Timer>, b: Option<&'static dyn Timer>) -> bool {
    match (a, b) {
        (Some(t), Some(u)) => ptr::addr_eq(t as *const dyn Timer, u as *const dyn Timer),
        (t, u) => t.is_none() && u.is_none(),
    }
}

#[cfg(feature = "alloc")]
impl Node {
    /// A read of a live `any` node whose parents run on different timers
    /// (`POLLS`): fires each parent's passed deadline on that parent's own
    /// clock, and reports the node done if one parent is. The node then is
    /// too, or is about to be: a parent's cancellation reaches it through
    /// its link (synchronously here, when this read fired it); until then
    /// the nearest done node above that parent is reported, as a deadline
    /// read does. A parent's own check never comes back here: an `all`
    /// parent (or one met on a parent's way up) has its parents read by
    /// their deadlines alone (`all_observed`), so at most three levels, no
    /// recursion; a parent that is itself such an `any` node is read by its
    /// own deadline only (the documented caveat of nested mixed timers).
    pub(super) fn any_observed(&self) -> Option<&Node> {
        let links = self.any()?;
        // SAFETY: immutable after construction and freed only with the node;
        // the parents are retained (invariant 4).
        let links = unsafe { links.as_ref() };
        let fired = links.links.iter().map(|l| l.parent.node()).find(|p| {
            if p.is_done_flag() {
                return true;
            }
            let s = p.state.load(Ordering::Relaxed);
            if s & ALL != 0 {
                // An `all` parent is done once its own parents are: read
                // them (`all_observed` reads each by its deadline alone),
                // as a read of the `all` node would, not through its latest
                // parent only (review 6: that read reported one cause, the
                // next read another).
                s & POLLS != 0 && p.all_observed().is_some()
            } else {
                // An `all` node met on the way up is read the same way.
                s & HAS_DEADLINE != 0 && p.check_deadline_tree(true)
            }
        })?;
        self.settle_observed();
        if self.is_done_flag() {
            return Some(self);
        }
        Some(fired.nearest_done_up())
    }

    /// After a read of this live `any` node found one of its parents done
    /// (it may have fired it): makes the node done itself, with what it
    /// inherits, unless a cancellation got there first. A racing canceller
    /// of another parent that won the node's `QUEUED` may not have set
    /// `DONE` yet; reporting the fired parent's result meanwhile let the
    /// next read report the winner's (review 6: `err()` and `cause()`
    /// disagreed). Whichever cancel takes the node's lock first sets `DONE`
    /// (invariant 2), the other loses, and a queued entry of a node already
    /// done is only released (phase 1), so every read agrees with what the
    /// node ends with. Its after-funcs are handed off (property 7). A parent
    /// only observed done (an `all` parent whose parents passed their
    /// deadlines, not flagged yet) leaves the node as it is.
    pub(super) fn settle_observed(&self) {
        if self.is_done_flag() {
            return;
        }
        let Some(source) = self.inherit_source() else { return };
        let (err, cause, site) = source.done_with_site();
        // SAFETY: `self` is valid for the call and `owned` is false, so the
        // node is never released in there (as `cancel_observed`).
        unsafe { Self::cancel_raw(self, err, cause, site, false, false, true, false) };
    }
}

/// `Context::any` links, owned by the `any` node.
#[cfg(feature = "alloc")]
pub(super) struct AnyLinks {
    /// The parent with the earliest deadline (retained through `links`).
    pub(super) deadline_parent: *const Node,
    pub(super) links: Vec<AnyLink>,
    /// An `all` node (flag `ALL`): how many of `links`' parents are not done
    /// yet. Whoever takes it to zero (a parent's canceller, under that
    /// parent's lock, or the constructor) and only it cancels the node
    /// (invariant 19). Unused by an `any` node.
    pub(super) remaining: AtomicU32,
    /// An `all` node: the index in `links` of the parent whose done took
    /// `remaining` to zero, written by that one taker before it cancels the
    /// node and read only by it (invariant 19).
    pub(super) last: AtomicU32,
    /// Once the node is freed: the next dying node's links in `release`'s
    /// stack.
    pub(super) next_pending: *mut AnyLinks,
}

/// One parent of an `any` node: an entry in that parent's `waiters`.
#[cfg(feature = "alloc")]
#[repr(C)]
pub(super) struct AnyLink {
    pub(super) entry: Entry,
    pub(super) target: *const Node,
    pub(super) parent: NodeRef,
}
