//! Emptying a done node: its waiters (into the batch, run list and work
//! list) and its children (finished under the parent's lock, descended
//! into, or held in the work list).
//!
//! Maintains: 3 (a drained done node stays empty), 6 (popped children are
//! held, scoped and static parents by a parent hold), 12, 13 (descent only
//! into heap nodes). Relies on: 1, 5 (`try_retain` under the list's lock),
//! 8 (a just-unlinked entry is valid until its owner learns it is
//! unlinked), 16 (an orphan, waiters or not, is held by a kid count).

use super::*;

impl Node {
    /// Takes everything out of a done node whose lock `guard` holds, and
    /// releases the lock: children go to `work`, after-funcs to `runs`,
    /// `any` targets to `work`, and wakers to `batch` while it has room.
    /// Returns true if wakers are left (the batch filled up): the caller then
    /// finishes them with [`drain_wakers`](Self::drain_wakers) once every
    /// other node is done. No user code runs in here.
    pub(super) fn drain(
        &self,
        guard: LockGuard<'_>,
        batch: &mut Batch,
        runs: &mut RunList,
        work: &mut WorkList,
    ) -> bool {
        let mut left = false;
        // SAFETY: we hold the lock (invariant 1) while walking the list;
        // `next` is read before the current entry is unlinked.
        unsafe {
            let mut cur = self.waiters.first();
            while !cur.is_null() {
                let next = self.waiters.next(cur);
                let e = cur as *const Entry;
                if (*e).kind == EntryKind::Waker && batch.is_full() {
                    left = true;
                    // Callbacks (after-funcs, `any` links) need `alloc`.
                    if !cfg!(feature = "alloc") || self.callbacks.with(|p| *p) == 0 {
                        // Only wakers from here on: `drain_wakers` takes them.
                        break;
                    }
                } else {
                    self.waiters.remove(cur);
                    if (*e).kind != EntryKind::Waker {
                        self.add_callbacks(-1);
                    }
                    // A just-unlinked entry is valid until its owner learns
                    // it is unlinked, which needs this lock (invariant 8).
                    self.take_entry(e, batch, runs, work);
                }
                cur = next;
            }
        }
        self.drain_children(guard, work);
        left
    }

    /// Empties the `children` of this done node, whose lock `guard` holds,
    /// and releases the lock. Children without a deadline of their own and
    /// without waiters whose lock is free are cancelled on the spot
    /// (invariant 12); when such a child is the last one and has children of
    /// its own, the walk descends into it (invariant 13). Every other child
    /// goes to `work`, retained, unless it is being freed.
    pub(super) fn drain_children(&self, guard: LockGuard<'_>, work: &mut WorkList) {
        let mut inherit: Option<(Error, Option<Cause>, Option<&'static Location<'static>>)> = None;
        let mut guard = guard;
        // Levels descended in this lock section (bounded: see invariant 13).
        let mut depth = 0u32;
        // The node whose list we are emptying; `guard` holds its lock.
        let mut cur: &Node = self;
        loop {
            // SAFETY: we hold `cur`'s lock (invariant 1).
            let c = unsafe { cur.children.pop_front() } as *const Node;
            if c.is_null() {
                break;
            }
            // A child popped under its parent's still-held lock is
            // valid (invariants 5 and 12).
            // A reference of any lifetime is fine: it is used only while the
            // parent's lock holds (or, once we descend, while invariant 13 does).
            // SAFETY: as argued above (invariants 5, 12, 13).
            let child: &Node = unsafe { &*c };
            if child.state.load(Ordering::Relaxed) & OWNS_DEADLINE == 0 {
                if let Some(child_guard) = child.lock.try_lock() {
                    if child.is_done_flag() {
                        // Done by its own cancel, which will not touch the
                        // parent's list again: it finds itself unlinked.
                        drop(child_guard);
                        continue;
                    }
                    // SAFETY: we hold the child's lock (invariant 1).
                    if unsafe { !child.waiters.is_empty() } {
                        // Wakers and callbacks need the batch and its
                        // bookkeeping: the work loop cancels it. Held like
                        // any popped child: an orphan (count zero, kids
                        // left) may still have waiters, those of a `Done`
                        // leaked with `mem::forget` (invariant 16).
                        drop(child_guard);
                        if child.hold_popped() {
                            push_popped(work, cur, c);
                        }
                        continue;
                    }
                    let (err, cause, site) = inherit.get_or_insert_with(|| {
                        let (err, cause) = self.done_with();
                        (err, cause, self.done_site())
                    });
                    // We hold the child's lock and it is live (inv. 1).
                    // Without a deadline of its own its cause slot is empty, so
                    // nothing is displaced (invariant 12).
                    // SAFETY: as argued above (invariants 1, 12).
                    let displaced = unsafe { child.set_done(*err, cause.clone(), *site, false) };
                    debug_assert!(displaced.is_none());
                    core::mem::forget(displaced);
                    // Only into a heap node: its children hold it by counts
                    // that they give up under its lock, so it outlives our
                    // hold of that lock. A scoped node's owner could be gone
                    // once its children are leaked (invariant 13).
                    if cfg!(feature = "alloc")
                        && depth < DESCENT_MAX
                        && child.state.load(Ordering::Relaxed) & HEAP != 0
                        // SAFETY: we hold both locks (invariant 1).
                        && unsafe { cur.children.is_empty() && !child.children.is_empty() }
                    {
                        depth += 1;
                        // Descend: keep the child's lock, let go of the
                        // parent's (invariant 13).
                        guard = guard.hand_over(child_guard);
                        cur = child;
                    } else {
                        // SAFETY: we hold the child's lock.
                        unsafe { child.retain_children_into(work) };
                        drop(child_guard);
                    }
                    continue;
                }
            }
            // If it is being freed, it no longer finds itself linked and will
            // not touch its link again.
            if child.hold_popped() {
                push_popped(work, cur, c);
            }
        }
        drop(guard);
    }

    /// Moves this node's children to `work`, retained, skipping those being
    /// freed (they find themselves unlinked).
    ///
    /// # Safety
    /// The node's lock is held.
    pub(super) unsafe fn retain_children_into(&self, work: &mut WorkList) {
        loop {
            // SAFETY: the caller holds our lock (invariant 1).
            let c = unsafe { self.children.pop_front() } as *const Node;
            if c.is_null() {
                return;
            }
            // SAFETY: a child popped under its parent's lock is valid while
            // that lock is held (invariant 5).
            if unsafe { (*c).hold_popped() } {
                push_popped(work, self, c);
            }
        }
    }

    /// Moves what a popped waiter entry needs into the batch or work list.
    ///
    /// # Safety
    /// `e` was just popped from `self.waiters` under the lock, still held.
    pub(super) unsafe fn take_entry(
        &self,
        e: *const Entry,
        batch: &mut Batch,
        runs: &mut RunList,
        work: &mut WorkList,
    ) {
        // SAFETY: the caller guarantees `e` is valid (invariant 8).
        let kind = unsafe { (*e).kind };
        match kind {
            EntryKind::Waker => {
                let w = e as *const Waiter;
                // SAFETY: the waker slot is guarded by our lock (invariant 1).
                if let Some(waker) = unsafe { (*w).waker.with_mut(|p| (*p).take()) } {
                    batch.push(waker);
                }
            }
            #[cfg(feature = "alloc")]
            EntryKind::AfterFunc => {
                // SAFETY: we just unlinked it: its free link, its func slot
                // and the list's reference are ours (invariant 8).
                unsafe { runs.push(e as *const AfterFuncInner) };
            }
            #[cfg(feature = "alloc")]
            EntryKind::AnyLink => {
                let l = e as *const AnyLink;
                // SAFETY: the link is owned by its `any` node, which frees it
                // only after unlinking it under this lock (invariant 8).
                let target = unsafe { (*l).target };
                // SAFETY: the target is valid while its link is reachable under
                // our lock (invariant 5).
                let t = unsafe { &*target };
                if t.state.load(Ordering::Relaxed) & ALL != 0 {
                    // SAFETY: an `all` node's links live as long as the node
                    // (valid as above) and are immutable (invariant 19).
                    let links = unsafe { &*(t.up as *const AnyLinks) };
                    // This parent is counted down here, once (invariant 19);
                    // only the last one goes on to cancel the node.
                    if !links.count_down(links.index_of(l)) {
                        return;
                    }
                }
                // Win `QUEUED` first, then retain: a loser takes no reference
                // (so none has to be given back under this lock), and a target
                // whose count is already zero is being freed and needs nothing.
                let prev = t.state.fetch_or(QUEUED, Ordering::AcqRel);
                if prev & (QUEUED | DONE) == 0 && t.try_retain() {
                    work.push(target);
                }
            }
        }
    }
}

/// Pushes a child popped from `parent`'s list (and held by
/// [`Node::hold_popped`]) to `work`. A parent that is not counted (scoped or
/// static) is held too, by a reference, until the child has been processed:
/// phase 1 reads it to inherit, and a leaked scoped child does not keep its
/// owner's borrow of it (invariants 6, 10).
#[inline]
pub(super) fn push_popped(work: &mut WorkList, parent: &Node, child: *const Node) {
    if !parent.counted() {
        parent.retain();
    }
    work.push(child);
}

/// Gives up the parent hold [`push_popped`] took for `node`, if any.
///
/// # Safety
/// `node` came out of a work list (popped from its parent, or an `any`
/// target) and its parent hold, if any, is ours.
pub(super) unsafe fn release_parent_hold(node: &Node) {
    let p = node.parent_ptr();
    // SAFETY: the hold (or `node`, invariant 4) keeps the parent valid.
    if let Some(p) = unsafe { p.as_ref() } {
        if !p.counted() {
            // We own the hold.
            // A scoped or static node is never freed by its count (its
            // owner holds one and waits for the rest, invariant 10).
            // SAFETY: as argued above (invariant 10).
            unsafe { release_node(p) };
        }
    }
}
