//! Nodes in a pinned owner (`ScopedContext`) or a `static` (`StaticContext`):
//! attach, detach.
//!
//! Maintains: 10 (the owner's reference; a counted parent held by a
//! reference from attach to detach; detach waits out transient holders,
//! panic-safe), 11 (`ATTACHED` under the node's lock). Relies on: 3, 7, 14,
//! 17.

use super::*;

impl Node {
    /// A live root for a `static`: never freed (its own reference is never
    /// released), so it may be borrowed for `'static` and wrapped in a
    /// `NodeRef` (invariant 5: the count never reaches zero).
    #[cfg(not(loom))]
    pub(crate) const fn new_static(timer: Option<&'static dyn Timer>) -> Self {
        Node::static_with_state(0, timer)
    }

    /// A root in a `static` whose state word starts as `state`.
    #[cfg(not(loom))]
    pub(super) const fn static_with_state(state: u32, timer: Option<&'static dyn Timer>) -> Self {
        Node {
            link: Link::new(),
            state: AtomicU32::new(state),
            refs: AtomicU32::new(1),
            lock: RawLock::new(),
            callbacks: UnsafeCell::new(0),
            kids: UnsafeCell::new(0),
            up: ptr::null(),
            children: List::new(),
            waiters: List::new(),
            cause: UnsafeCell::new(CauseSlot::EMPTY),
            deadline: Instant::MAX,
            timer,
        }
    }

    /// An unattached node for a pinned owner (the heap-free scoped tier):
    /// nothing links to it until [`attach_scoped`](Self::attach_scoped).
    /// The parent is *not* retained: the owner's borrow of it keeps it alive
    /// (invariant 4 by lifetimes instead of counts). Its pointer keeps the
    /// parent's allocation provenance: a heap parent may be released (and
    /// freed) through it, and armed (invariant 20).
    pub(crate) fn new_scoped(
        parent: Option<NodePtr<'_>>,
        fallback_timer: Option<&'static dyn Timer>,
        deadline: Option<Instant>,
        deadline_cause: Option<Cause>,
        site: Option<&'static Location<'static>>,
    ) -> Node {
        let parent_ptr = parent.map_or(ptr::null(), |p| p.as_ptr().as_ptr() as *const Node);
        let (flags, eff, timer) = Node::child_layout(parent.map(NodePtr::get), fallback_timer, deadline);
        let cause = if flags & OWNS_DEADLINE != 0 {
            deadline_cause
        } else {
            None
        };
        Node::new_at(parent_ptr, flags, eff, cause, site, timer)
    }

    /// Links a scoped node to its parent, once; later calls return at once.
    /// Its deadline is armed only when something first waits on it
    /// (invariant 20), as a heap node's. A concurrent caller that loses the race may see
    /// the node live until the winner has finished linking (as while a
    /// cancellation is still propagating).
    ///
    /// # Safety
    /// The node is pinned until [`detach_scoped`](Self::detach_scoped)
    /// returns, and its parent outlives it.
    pub(crate) unsafe fn attach_scoped(&self) {
        if self.state.load(Ordering::Acquire) & ATTACHED != 0 {
            return;
        }
        // Under our own lock: another thread may be cancelling this node
        // right now (`ScopedContext` is `Sync`; its `cancel` needs no
        // attach), and a cancel writes `state` with a plain store under the
        // lock (invariant 11). Outside the lock, that store could erase
        // `ATTACHED`, and the owner's drop would then skip unlinking a node
        // that is linked.
        let guard = self.lock.lock();
        let prev = self.state.fetch_or(ATTACHED, Ordering::AcqRel);
        drop(guard);
        if prev & ATTACHED != 0 {
            return;
        }
        // SAFETY: the caller guarantees the parent outlives us (invariant 4).
        if let Some(p) = unsafe { self.parent_ptr().as_ref() } {
            if p.counted() {
                // A counted (heap) parent is held by a reference until
                // `detach_scoped`: the owner's borrow alone would not keep
                // it alive if the owner is leaked (invariant 10).
                p.retain();
            }
            let guard = p.lock.lock();
            if p.is_done_flag() {
                drop(guard);
                self.cancel_inherited();
                return;
            }
            // SAFETY: we hold the parent's lock; the node is pinned (caller)
            // and not linked (it was never attached).
            unsafe { p.children.push(self as *const Node as *const Link) };
            drop(guard);
        }
    }

    /// The owner's last act: cancels the node (a scope that ends cancels,
    /// as a dropped handle does), unlinks it from its parent and its timer,
    /// and waits out any canceller or timer that still holds a transient
    /// reference (invariant 5), so the memory can go.
    ///
    /// # Safety
    /// Called once, by the owner, when nothing else borrows the node (no
    /// waiting future, no child: both borrow the owner).
    pub(crate) unsafe fn detach_scoped(&self) {
        if self.state.load(Ordering::Acquire) & ATTACHED == 0 {
            return;
        }
        // User code runs in here (the owner's own cancel wakes and runs
        // after-funcs, the take-over wakes leaked futures, the parent's
        // release may free it). With `std` each piece is caught and the
        // first panic re-raised at the very end; without, a panic unwinds,
        // and the guard still finishes the detach on the way out. Either way
        // the memory never goes before the node is unlinked and every
        // transient holder is done (invariant 10).
        struct Finish<'a> {
            node: &'a Node,
            batch: Batch,
        }
        impl Drop for Finish<'_> {
            fn drop(&mut self) {
                self.node.finish_detach(&mut self.batch);
            }
        }
        let mut finish = Finish {
            node: self,
            batch: Batch::new(),
        };
        finish.batch.call(|| {
            if !self.deadline_won() {
                self.cancel(Error::Canceled, None);
            }
        });
        drop(finish);
    }

    /// The rest of [`detach_scoped`](Self::detach_scoped), after the
    /// owner's own cancel: unlink, disarm, take the node out of the pending
    /// list, wait for transient holders, give back the parent's reference;
    /// then re-raise the first panic of user code, if any.
    fn finish_detach(&self, batch: &mut Batch) {
        let parent = self.parent_ptr();
        // SAFETY: the parent outlives us (invariant 4).
        if let Some(p) = unsafe { parent.as_ref() } {
            let guard = p.lock.lock();
            // SAFETY: we hold the parent's lock (invariant 1).
            unsafe {
                if self.link.is_linked() {
                    p.children.remove(self as *const Node as *const Link);
                }
            }
            drop(guard);
        }
        self.after_done();
        // Take back from any canceller the wakers it left for later
        // (invariant 17), and wake whatever is still linked ourselves: only
        // futures leaked with `mem::forget` can be (every other one
        // borrowed this owner and is gone).
        self.take_over_wakers(batch);
        // Unlinked and disarmed, out of the pending list: nobody can take a
        // new reference, and the ones still held are released after bounded
        // work that runs no user code (invariants 9, 17).
        let mut spins = 0u32;
        while self.refs.load(Ordering::Acquire) != 1 {
            crate::sync::spin_hint(&mut spins);
        }
        // SAFETY: the parent outlives us (invariant 4).
        if let Some(p) = unsafe { parent.as_ref() } {
            if p.counted() {
                // We own it and use the parent no more.
                // The reference `attach_scoped` took (invariant 10); a last
                // release frees, which drops a cause: user code.
                // SAFETY: as argued above (invariant 10).
                batch.call(|| unsafe { release_node(parent) });
            }
        }
        batch.finish();
    }
}
