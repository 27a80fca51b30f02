//! Cancellation: winning `DONE`, leaving the parent (invariant 14), and
//! the three phases of propagation.
//!
//! Maintains: 2 (done is final, published last; `CAUSE_UP`), 9 (phase 1
//! runs no user code; no scoped node is held across user code), 11 (one
//! writer of `state`), 14, and 6's release points (processed nodes held
//! until phase 1 ends, counted ones until phase 2). Relies on: 4 (parents
//! outlive children), 12 and 13 (in `drain.rs`), 16 (a kid's own cancel
//! takes its own lock first), 17 (in `pending.rs`).

use super::*;

impl Node {
    /// Cancels this node and its subtree. Returns true iff this call won.
    /// The caller keeps the node alive for the duration.
    /// A cancel that names no location reports the node's own (where it
    /// was made) or, without one, the done node it inherits from
    /// (invariant 18).
    pub(crate) fn cancel(&self, err: Error, cause: Option<Cause>) -> bool {
        self.cancel_inner(err, cause, false)
    }

    /// [`cancel`](Self::cancel), requested at `at` (reported by
    /// `cancelled_at` if this call wins: invariant 18).
    pub(crate) fn cancel_at(&self, err: Error, cause: Option<Cause>, at: &'static Location<'static>) -> bool {
        // SAFETY: `self` is valid for the call and `owned` is false, so the
        // node is never released in there.
        unsafe { Self::cancel_raw(self, err, cause, Some(at), false, false, false, false) }
    }

    /// [`cancel`](Self::cancel) through the pointer of a counted reference
    /// (a handle's), which lets the std timer release a tailed entry at
    /// once (`after_done_ptr`).
    #[cfg(feature = "alloc")]
    #[inline]
    pub(crate) fn cancel_ref(
        node: &NodeRef,
        err: Error,
        cause: Option<Cause>,
        at: Option<&'static Location<'static>>,
    ) -> bool {
        if node.node().deadline_won() {
            drop(cause);
            return false;
        }
        // SAFETY: the reference keeps the node alive for the call, `owned`
        // is false, and its pointer is the allocation's.
        unsafe { Self::cancel_raw(node.ptr.as_ptr(), err, cause, at, false, false, false, true) }
    }

    /// Before a node's own cancel (a handle's, a scoped owner's): whether a
    /// deadline that has passed makes the node done now — one nobody waited
    /// on (so no timer entry fires it: invariant 20), or one whose timer is
    /// a little late. It wins against the later cancel: the cancel looks
    /// first, as a read does (property 5), and loses. One clock read per
    /// own cancel of a live node with a deadline.
    #[inline]
    pub(crate) fn deadline_won(&self) -> bool {
        // Armed or not: an armed owner's timer fires it late (the std
        // timer by up to its thread's wake-up latency), and a cancel in that
        // window must not win either (property 5; review 5, D3).
        let s = self.state.load(Ordering::Relaxed);
        if s & HAS_DEADLINE == 0 || s & DONE != 0 {
            // No deadline, or done already: the cancel loses or wins by
            // itself.
            return false;
        }
        self.deadline_won_slow(s)
    }

    /// [`deadline_won`](Self::deadline_won) for a live node with a
    /// deadline: out of line, one copy for every caller (firmware flash).
    #[inline(never)]
    fn deadline_won_slow(&self, s: u32) -> bool {
        // The deadline fires as its timer would have fired it: after-funcs
        // handed off if the timer does so (the std timer), else run here,
        // where the cancel runs its own (not a read: property 7 allows it).
        let hand_off = self.timer.is_some_and(|t| t.hands_off_after_funcs());
        #[cfg(feature = "alloc")]
        if s & ALL != 0 {
            return self.all_observed().is_some();
        }
        self.fire_passed_deadline(true, hand_off)
    }

    /// A passed deadline noticed by a read (`is_done`, `err`, `cause`, a
    /// `done()` poll): the owner of the deadline is cancelled here, its
    /// waiters woken, but its after-funcs are handed off (issue 11: user
    /// callbacks never run inside a read).
    pub(super) fn cancel_observed(&self) -> bool {
        // SAFETY: `self` is valid for the call and `owned` is false.
        unsafe { Self::cancel_raw(self, Error::DeadlineExceeded, None, None, true, false, true, false) }
    }

    pub(super) fn cancel_inner(&self, err: Error, cause: Option<Cause>, own_deadline: bool) -> bool {
        // SAFETY: `self` is valid for the call and `owned` is false, so the
        // node is never released in there.
        unsafe { Self::cancel_raw(self, err, cause, None, own_deadline, false, false, false) }
    }

    /// The cancellation, in three phases so that no user code runs while
    /// this thread holds a reference that a context's owner might wait for
    /// (invariants 9, 10):
    ///
    /// 1. structure: every node of the subtree is marked done and emptied
    ///    (children, after-funcs, `any` targets, up to 16 wakers); nodes are
    ///    released as soon as they are empty. No user code.
    /// 2. wakers: the batch, then the wakers of nodes that had more than the
    ///    batch held, each node released before its last batch runs.
    /// 3. after-funcs, with no node reference held at all.
    ///
    /// `at` is where the cancel was requested; `None` reports the node's own
    /// site, else its done source's (invariant 18).
    ///
    /// With `owned`, the caller hands over one reference to `node` (a
    /// claimed timer entry), released in phase 2 before any of `node`'s
    /// wakers run. With `hand_off`, the after-funcs go to the installed
    /// spawner instead of running on this thread.
    ///
    /// # Safety
    /// `node` is valid; with `owned`, the caller owns a reference to it and
    /// gives it up (and `node` has its allocation's provenance); without,
    /// the caller keeps `node` alive for the call. With `full`, `node` has
    /// its allocation's provenance (see `after_done_ptr`).
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn cancel_raw(
        node: *const Node,
        err: Error,
        cause: Option<Cause>,
        at: Option<&'static Location<'static>>,
        own_deadline: bool,
        owned: bool,
        hand_off: bool,
        full: bool,
    ) -> bool {
        // SAFETY: the caller keeps `node` valid until we release it (below,
        // after the last use of `this`).
        let this = unsafe { &*node };
        if this.is_done_flag() {
            // Forwarded from our caller; no lock is held.
            // Already done (`DONE` is final, invariant 2): this call loses
            // without taking a lock. The common case is a handle dropped
            // after an explicit `cancel`.
            // SAFETY: as argued above (invariant 2).
            return unsafe { Self::lose(node, cause, owned) };
        }
        // With its parent an orphan whose last kid count this cancel gave up:
        // freed when this guard drops, after every lock below is released,
        // even if a waker or after-func panics (invariant 16). Declared
        // before the lock guards, so it drops after them.
        let mut orphaned = OrphanGuard(None);
        let Some((guard, unlinked)) = this.lock_to_cancel(&mut orphaned) else {
            // SAFETY: forwarded from our caller; the locks are released.
            return unsafe { Self::lose(node, cause, owned) };
        };
        // A cancel that names no location (a deadline, a dropped handle or
        // owner) reports where the node was made, or, for a node made
        // without one (an `any` node), where its done source was cancelled
        // (invariant 18).
        let site = at
            .or_else(|| {
                this.cause.with(|p| {
                    // SAFETY: we hold the lock (invariant 1).
                    unsafe { (*p).location() }
                })
            })
            .or_else(|| {
                // A kid that just left its parent's list gave its kid count
                // up with it: the parent may be gone, and is not read
                // (invariant 16). Every public heap node has a site of its
                // own, so only nodes made without one get here at all.
                if cfg!(feature = "alloc") && unlinked && this.state.load(Ordering::Relaxed) & KID != 0 {
                    return None;
                }
                this.inherit_source().and_then(Node::done_site)
            });
        let unlinked_flag = if unlinked { UNLINKED } else { 0 };
        // SAFETY: we hold the lock and the node is live (invariant 1).
        let displaced = unsafe { this.set_done_with(err, cause, site, own_deadline, unlinked_flag) };
        // SAFETY: we hold the lock (invariant 1).
        if unsafe { this.waiters.is_empty() && this.children.is_empty() } {
            // A leaf nobody waits on (the common case: a request's last
            // step): nothing to propagate, wake or run.
            drop(guard);
            // SAFETY: valid; `full` as our caller says.
            unsafe { Self::after_done_ptr(node, full) };
            if owned {
                // SAFETY: the caller handed us this reference.
                unsafe { release_node(node) };
            }
            drop(orphaned);
            // User code (a cause's `Drop`) last, with nothing left to do.
            drop(displaced);
            return true;
        }
        // SAFETY: forwarded from our caller; we hold `this`'s lock.
        unsafe { Self::propagate(node, guard, displaced, owned, hand_off, full) };
        drop(orphaned);
        true
    }

    /// The locking of a node's own cancel: takes its lock, and, in the same
    /// section, unlinks it from its parent's list (invariant 14) — a kid
    /// takes its own lock first, then its parent's, giving up its kid count
    /// (an orphaned parent whose last count that was goes to `orphaned`);
    /// any other node takes its parent's first (tree order). Returns `None`,
    /// with every lock released, if the node is already done; else its lock
    /// and whether it unlinked itself.
    #[inline(always)]
    pub(super) fn lock_to_cancel(&self, orphaned: &mut OrphanGuard) -> Option<(LockGuard<'_>, bool)> {
        let this = self;
        let parent = this.parent_ptr();
        // Kids are heap nodes: none without `alloc`.
        if cfg!(feature = "alloc") && this.state.load(Ordering::Relaxed) & KID != 0 {
            // A kid takes its own lock first: a second cancel of the same
            // node (through a shared handle) then sees `DONE` before it
            // could touch the parent, whose kid count we give up below
            // (invariant 16).
            let guard = this.lock.lock();
            if this.is_done_flag() {
                return None;
            }
            // SAFETY: a kid always has a parent, which our kid count holds
            // (invariant 16); only a section of ours gives that count up.
            let p = unsafe { &*parent };
            let pg = p.lock.lock();
            // SAFETY: we hold the parent's lock (invariant 1), which guards
            // our link and its `kids`.
            let unlinked = unsafe {
                let linked = this.link.is_linked();
                if linked {
                    p.children.remove(&this.link);
                    if p.drop_kid() {
                        // The up-pointer (the parent's allocation pointer,
                        // not `p`): freeing goes through it.
                        orphaned.0 = NonNull::new(parent as *mut Node);
                    }
                }
                linked
            };
            drop(pg);
            Some((guard, unlinked))
        } else {
            // SAFETY: the parent outlives us (invariant 4).
            // The parent's lock first, then ours (tree order).
            let parent_guard = unsafe { parent.as_ref() }.map(|p| p.lock.lock());
            let guard = this.lock.lock();
            if this.is_done_flag() {
                drop(guard);
                drop(parent_guard);
                return None;
            }
            match parent_guard {
                Some(pg) => {
                    // SAFETY: we hold the parent's lock (invariant 1), which
                    // guards our link; the parent is valid (invariant 4).
                    let unlinked = unsafe {
                        let linked = this.link.is_linked();
                        if linked {
                            (*parent).children.remove(&this.link);
                        }
                        linked
                    };
                    Some((pg.hand_over(guard), unlinked))
                }
                None => Some((guard, false)),
            }
        }
    }

    /// A cancel that lost (the node was already done): drops its cause and
    /// gives back the caller's reference, with no lock held (invariant 9).
    ///
    /// # Safety
    /// As for [`cancel_raw`](Self::cancel_raw); no lock is held.
    pub(super) unsafe fn lose(node: *const Node, cause: Option<Cause>, owned: bool) -> bool {
        drop(cause);
        if owned {
            // SAFETY: the caller handed us this reference.
            unsafe { release_node(node) };
        }
        false
    }

    /// The rest of [`cancel_raw`](Self::cancel_raw) for a node that has
    /// waiters or children: out of line, so that the common leaf cancel
    /// does not pay for the batch's stack frame.
    ///
    /// Phase 1 runs no user code at all; before the first user code of
    /// phase 2 runs, this thread holds no reference to any scoped node
    /// (invariant 17), and in phase 3 none to any node. So a waker,
    /// after-func or cause `Drop` may drop any context or scoped owner of the
    /// tree, and panic (caught and re-raised at the end, with `std`).
    ///
    /// # Safety
    /// As for `cancel_raw`; `guard` holds the lock of `node`, which this call
    /// just made done, and `displaced` is the cause that `set_done` displaced.
    #[inline(never)]
    pub(super) unsafe fn propagate(
        node: *const Node,
        guard: LockGuard<'_>,
        displaced: Option<Cause>,
        owned: bool,
        hand_off: bool,
        full: bool,
    ) {
        // SAFETY: the caller keeps `node` valid until we release it (below,
        // after the last use of `this`).
        let this = unsafe { &*node };
        let mut batch = Batch::new();
        let mut runs = RunList::new();
        let mut work = WorkList::new();
        let node_left = this.drain(guard, &mut batch, &mut runs, &mut work);
        // SAFETY: valid; `full` as our caller says.
        unsafe { Self::after_done_ptr(node, full) };
        // Phase 1: structure, no user code.
        let mut held = Held::new();
        phase_one(&mut work, &mut batch, &mut runs, &mut held);
        // Let go of every scoped node before any user code runs: wakers left
        // on one wait in the pending list, where its owner can take them
        // back (invariant 17).
        let mut tag = 0;
        while let Some(n_ptr) = held.scoped.pop() {
            // SAFETY: held by `scoped`; its parent by a parent hold.
            unsafe {
                (*n_ptr).park(&mut tag);
                release_parent_hold(&*n_ptr);
                release_held(n_ptr);
            }
        }
        // Phase 2: wakers.
        if node_left {
            if owned && !this.counted() {
                // The timer's reference to a scoped node goes before any
                // waker runs: the rest wait in the pending list.
                this.park(&mut tag);
            } else {
                // The caller's borrow or our counted reference keeps `this`
                // alive, and holding it blocks nobody.
                batch.run();
                this.drain_wakers(&mut batch);
            }
        }
        if owned {
            // SAFETY: the caller handed us this reference; `this` is not used
            // after this point. A last release frees: user code.
            batch.call(|| unsafe { release_node(node) });
        }
        batch.run();
        while let Some(n_ptr) = held.spent.pop() {
            // SAFETY: `spent` holds it; not used after this.
            batch.call(|| unsafe { release_held(n_ptr) });
        }
        while let Some(n_ptr) = held.later.pop() {
            // SAFETY: `later` holds it (a counted node).
            unsafe { (*n_ptr).drain_wakers(&mut batch) };
            // SAFETY: as above; not used after this.
            batch.call(|| unsafe { release_held(n_ptr) });
            batch.run();
        }
        if tag != 0 {
            wake_pending(tag, &mut batch);
        }
        // Phase 3: after-funcs, then the displaced cause, with no node held.
        // A deadline noticed by a reader, or fired by a timer that keeps
        // user code off its thread, hands its after-funcs to the spawner
        // (`crate::after::hand_off`): they never run inside a read, and a
        // slow one never holds up another deadline.
        #[cfg(feature = "alloc")]
        if hand_off && !runs.is_empty() {
            crate::after::hand_off(AfterFuncs::new(runs));
        } else {
            runs.run(&mut batch);
        }
        #[cfg(not(feature = "alloc"))]
        {
            // No after-funcs without `alloc`.
            let _ = hand_off;
            runs.run(&mut batch);
        }
        batch.call(|| drop(displaced));
        batch.finish();
    }

    /// The done node this one inherits its error and cause from: its tree
    /// parent, an `any` node's first done parent, or an `all` node's last.
    pub(super) fn inherit_source(&self) -> Option<&Node> {
        #[cfg(feature = "alloc")]
        if let Some(any) = self.any() {
            // SAFETY: immutable after construction; parents retained
            // (invariant 4).
            let links = unsafe { any.as_ref() };
            if self.state.load(Ordering::Relaxed) & ALL != 0 {
                // The parent that took the count to zero (invariant 19).
                return links.last_parent();
            }
            return links.links.iter().map(|l| l.parent.node()).find(|p| p.is_done_flag());
        }
        // SAFETY: invariant 4.
        unsafe { self.parent_ptr().as_ref() }.filter(|p| p.is_done_flag())
    }

    /// Error, cause and location from one done source (one scan of an
    /// `any` node's parents: never one parent's cause with another's site).
    pub(super) fn inherited_with_site(&self) -> (Error, Option<Cause>, Option<&'static Location<'static>>) {
        self.inherit_source()
            .map_or((Error::Canceled, None, None), Node::done_with_site)
    }

    /// Error, cause and location of a done node (`DONE` observed with
    /// Acquire), as a node inheriting from it takes them.
    pub(super) fn done_with_site(&self) -> (Error, Option<Cause>, Option<&'static Location<'static>>) {
        (self.err_of_done(), self.done_cause(), self.done_site())
    }

    /// Cancels this node with what it inherits from its done source: its
    /// error, cause and location (invariant 18).
    pub(crate) fn cancel_inherited(&self) -> bool {
        let (err, cause, site) = self.inherited_with_site();
        match site {
            Some(at) => self.cancel_at(err, cause, at),
            None => self.cancel(err, cause),
        }
    }

    /// Where the winning cancellation of a done node (`DONE` observed with
    /// Acquire) was requested: its own slot's location, written with `DONE`
    /// (invariants 2, 18). A `CAUSE_UP` node's slot has its parent's.
    pub(crate) fn done_site(&self) -> Option<&'static Location<'static>> {
        // SAFETY: `DONE` was observed with Acquire, so the slot is immutable
        // (invariant 2).
        self.cause.with(|p| unsafe { (*p).location() })
    }

    /// Phase 1's cancel of a popped node: done with what it inherits. A node
    /// that holds a deadline cause keeps it (dropping it here would run user
    /// code in phase 1) and reports its parent's cause instead
    /// (`CAUSE_UP`, invariant 2).
    ///
    /// # Safety
    /// The lock is held and the node is live.
    pub(super) unsafe fn set_done_inherited(&self, propagating: bool) {
        // SAFETY: the caller holds the lock (invariant 1).
        let holds_cause = self.cause.with(|p| unsafe { (*p).has_cause() });
        // One scan of the sources: the error, cause and location all come
        // from the same done parent (invariant 18). The cause is cloned only
        // where it is kept: nothing is dropped under the lock.
        let source = self.inherit_source();
        let err = source.map_or(Error::Canceled, Node::err_of_done);
        // Only if the source has a deadline: one with none (a child of an
        // `all` node over parents on different clocks) may be done with
        // `DeadlineExceeded` from deadlines unrelated to ours, which then
        // need not have passed (review 7).
        if propagating
            && err == Error::DeadlineExceeded
            && self.state.load(Ordering::Relaxed) & OWNS_DEADLINE != 0
            && source.is_some_and(|p| p.state.load(Ordering::Relaxed) & HAS_DEADLINE != 0)
        {
            // An ancestor's deadline fired, and this node's own deadline is
            // earlier (it owns it): it has passed too, and fires as its own,
            // with its own cause and site, as its timer would have fired it
            // first had it been armed (lazy arming leaves it to be noticed:
            // invariant 20). No clock read: phase 1 runs no user code.
            // SAFETY: the caller holds the lock (invariant 1).
            let own_site = self.cause.with(|p| unsafe { (*p).location() });
            // SAFETY: forwarded from the caller; no cause given, the slot
            // keeps its own: nothing displaced.
            let none = unsafe { self.set_done_with(err, None, own_site, true, 0) };
            debug_assert!(none.is_none());
            core::mem::forget(none);
            return;
        }
        let site = source.and_then(Node::done_site);
        if holds_cause {
            // SAFETY: forwarded from the caller; no cause, nothing displaced.
            // The slot keeps its cause and takes the parent's location.
            let none = unsafe { self.set_done_with(err, None, site, true, CAUSE_UP) };
            debug_assert!(none.is_none());
            core::mem::forget(none);
        } else {
            let cause = source.and_then(Node::done_cause);
            // SAFETY: forwarded from the caller.
            let none = unsafe { self.set_done(err, cause, site, false) };
            debug_assert!(none.is_none(), "an empty slot displaces nothing");
            core::mem::forget(none);
        }
    }

    /// The cause of a done node (`DONE` observed with Acquire): its own
    /// slot, or, with `CAUSE_UP`, its nearest ancestor's without (invariant
    /// 2). Each node on the way is done and holds its parent (invariant 4).
    pub(super) fn done_cause(&self) -> Option<Cause> {
        let mut n: &Node = self;
        loop {
            if n.state.load(Ordering::Acquire) & CAUSE_UP == 0 {
                // SAFETY: `DONE` was observed with Acquire (by the caller, or
                // on the way up), so `cause` is immutable (invariant 2).
                return n.cause.with(|c| unsafe { (*c).cause() });
            }
            // SAFETY: a `CAUSE_UP` node is a tree node whose parent was done
            // first, and holds it (invariant 4).
            n = unsafe { &*n.parent_ptr() };
        }
    }

    /// Writes the cause and the location, and publishes `DONE` (invariants
    /// 2, 18). Returns a displaced cause, to be dropped after unlocking.
    ///
    /// # Safety
    /// The lock is held and the node is live.
    pub(super) unsafe fn set_done(
        &self,
        err: Error,
        cause: Option<Cause>,
        site: Option<&'static Location<'static>>,
        own_deadline: bool,
    ) -> Option<Cause> {
        // SAFETY: forwarded from the caller.
        unsafe { self.set_done_with(err, cause, site, own_deadline, 0) }
    }

    /// [`set_done`](Self::set_done), also setting `extra` flags.
    ///
    /// # Safety
    /// As for `set_done`.
    pub(super) unsafe fn set_done_with(
        &self,
        err: Error,
        cause: Option<Cause>,
        site: Option<&'static Location<'static>>,
        own_deadline: bool,
        extra: u32,
    ) -> Option<Cause> {
        // The caller holds the lock and the node is live (invariant
        // 1). The location is written with the cause, before `DONE`
        // (invariant 18).
        // SAFETY: as argued above (invariant 18).
        let displaced = self.cause.with_mut(|p| unsafe {
            let slot = &mut *p;
            if own_deadline && cause.is_none() {
                // A deadline keeps its cause (if any) in the slot.
                slot.set_location(site);
                None
            } else {
                slot.replace(cause, site)
            }
        });
        let bits = extra
            | match err {
                Error::Canceled => DONE,
                Error::DeadlineExceeded => DONE | DEADLINE_ERR,
            };
        let s = self.state.load(Ordering::Relaxed);
        // No `any` nodes without `alloc` (a constant there: firmware flash).
        if !cfg!(feature = "alloc") || s & ANY == 0 {
            // Nobody else writes this word now (invariant 11): a plain store
            // publishes `DONE`, one atomic read-modify-write fewer per node.
            self.state.store(s | bits, Ordering::Release);
        } else {
            // Another canceller may be setting `QUEUED` without our lock.
            self.state.fetch_or(bits, Ordering::Release);
        }
        displaced
    }

    /// Error and cause of a done node (its `cause` is immutable: invariant 2).
    pub(super) fn done_with(&self) -> (Error, Option<Cause>) {
        // The caller set `DONE` or read it with Acquire.
        (self.err_of_done(), self.done_cause())
    }

    /// Whether this done node (`DONE` observed with Acquire) is in the state
    /// of [`CANCELED`]: `Canceled`, no cause, no deadline, and no timer or
    /// `default_timer` (what a missing timer falls back to), so that a child
    /// of it without a deadline of its own may be given the immortal node
    /// (invariant 15).
    #[cfg(all(feature = "alloc", not(loom)))]
    #[inline]
    pub(super) fn plainly_canceled(&self, default_timer: impl FnOnce() -> Option<&'static dyn Timer>) -> bool {
        if self.state.load(Ordering::Relaxed) & (DONE | DEADLINE_ERR | HAS_DEADLINE) != DONE {
            return false;
        }
        let timer_ok = match self.timer {
            None => true,
            Some(t) => default_timer().is_some_and(|d| ptr::addr_eq(t as *const dyn Timer, d as *const dyn Timer)),
        };
        // The caller observed `DONE` with Acquire, so `cause` is
        // immutable and its write visible (invariant 2).
        // The location is matched by `immortal_for` (invariant 15).
        // SAFETY: as argued above (invariants 2, 15).
        timer_ok && self.cause.with(|p| unsafe { !(*p).has_cause() })
    }
}

/// Nodes that phase 1 processed, still held (invariant 6): counted nodes
/// with wakers left (`later`) or not (`spent`), and scoped or static ones.
pub(super) struct Held {
    pub(super) later: WorkList,
    pub(super) spent: WorkList,
    pub(super) scoped: WorkList,
}

impl Held {
    pub(super) fn new() -> Self {
        Held {
            later: WorkList::new(),
            spent: WorkList::new(),
            scoped: WorkList::new(),
        }
    }
}

/// Phase 1 of a propagation: cancels and empties every node of `work`
/// (which grows as children are found) with what it inherits, and keeps
/// each in `held`. Runs no user code (invariant 9).
pub(super) fn phase_one(work: &mut WorkList, batch: &mut Batch, runs: &mut RunList, held: &mut Held) {
    while let Some(n_ptr) = work.pop() {
        // SAFETY: the work list holds it (invariant 6).
        let n = unsafe { &*n_ptr };
        let guard = n.lock.lock();
        let left = if !n.is_done_flag() {
            // SAFETY: we hold the lock and the node is live.
            unsafe { n.set_done_inherited(true) };
            let left = n.drain(guard, batch, runs, work);
            // SAFETY: a work-list pointer is a child's allocation pointer
            // (pushed from a `NodeRef` or an up-pointer: invariant 6).
            unsafe { Node::after_done_ptr(n_ptr, true) };
            left
        } else {
            drop(guard);
            false
        };
        // Its free link is ours again (popped from `work`).
        if !n.counted() {
            held.scoped.push(n_ptr);
        } else {
            // We own the hold `push_popped` took, if any.
            // A counted node's parent is counted too, or a `static` (never
            // freed): its parent hold can go now.
            // SAFETY: as argued above.
            unsafe { release_parent_hold(n) };
            if left {
                held.later.push(n_ptr);
            } else {
                held.spent.push(n_ptr);
            }
        }
    }
}
