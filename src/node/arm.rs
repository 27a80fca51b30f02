//! Lazy arming of deadline timer entries: a node that owns a deadline arms
//! its timer entry only when something first needs to be woken by that
//! deadline, not when it is made. A deadline is exact when observed
//! (property 5), so one that nobody waits on needs no entry at all.
//!
//! Maintains: 20 (`ARMED` set once under the owner's lock while live, the
//! entry armed with no lock held, the re-check after arming), 7 (a node
//! frees or finishes only after `after_done` saw `ARMED`). Relies on: 1 (the
//! timer's lock is a leaf), 4 (the deadline owner outlives the node waited
//! on), 11 (one writer of `state`).

use super::*;
use core::marker::PhantomData;

/// A borrowed node, as a pointer that keeps the provenance of the node's own
/// allocation: `&'a Node` with the right to free.
///
/// A heap node may be freed through the pointer its timer entry holds (a
/// claimed entry's reference can be the last one), so the entry must hold
/// the allocation's pointer (`NodeRef::ptr`, a heap child's up-pointer), not
/// one derived from a `&Node`, which under Stacked and Tree Borrows grants no
/// write to the node's plain fields and padding. Lazy arming arms from
/// whatever the waiter was given, so waiters are given this.
#[derive(Clone, Copy)]
pub(crate) struct NodePtr<'a> {
    ptr: NonNull<Node>,
    _borrow: PhantomData<&'a Node>,
}

// SAFETY: a shared borrow of a `Send + Sync` node, exactly like `&'a Node`:
// the node stays valid for `'a` (invariant 4 and the borrow).
unsafe impl Send for NodePtr<'_> {}

// SAFETY: as for `Send`.
unsafe impl Sync for NodePtr<'_> {}

impl<'a> NodePtr<'a> {
    /// A node in a pinned owner or a `static`: never freed through a pointer
    /// (invariant 10), so a reference's provenance is enough.
    pub(crate) fn pinned(node: &'a Node) -> Self {
        NodePtr {
            ptr: NonNull::from(node),
            _borrow: PhantomData,
        }
    }

    /// A counted node, through the allocation pointer of its reference.
    #[cfg(feature = "alloc")]
    pub(crate) fn counted(node: &'a NodeRef) -> Self {
        NodePtr {
            ptr: node.ptr,
            _borrow: PhantomData,
        }
    }

    #[inline]
    pub(crate) fn get(self) -> &'a Node {
        // SAFETY: valid for `'a`, the borrow this was made from (invariant
        // 4 for the nodes it reaches).
        unsafe { self.ptr.as_ref() }
    }

    #[inline]
    pub(crate) fn as_ptr(self) -> NonNull<Node> {
        self.ptr
    }
}

impl Node {
    /// After an entry was pushed onto `node`'s waiters (with no node lock
    /// held any more): makes sure the deadline that can make `node` done is
    /// armed, so that the entry is woken or run on time (invariant 20). One
    /// flag test for a node without a deadline.
    ///
    /// What runs where: if the deadline has already passed, its owner is
    /// cancelled here as a read would (`cancel_observed`): its waiters are
    /// woken on this thread, its after-funcs handed off (property 7: this
    /// runs inside a `poll`, an `after_func` or `Context::all` call, which
    /// must not run other contexts' after-funcs).
    ///
    /// # Safety
    /// `node` is valid for the call and has the provenance of its allocation
    /// if it is a heap node (it may become a timer entry's pointer).
    #[inline]
    pub(super) unsafe fn arm_for_waiters(node: NonNull<Node>) {
        // SAFETY: valid for the call (our caller; invariant 4).
        if unsafe { node.as_ref() }.state.load(Ordering::Relaxed) & HAS_DEADLINE != 0 {
            // SAFETY: forwarded from our caller (invariants 4, 20).
            unsafe { Self::arm_deadline_owner(node) }
        }
    }

    /// The owner of `node`'s effective deadline: `node` itself if it owns
    /// it, else the first node up the deadline walk that does. Raw pointers
    /// all the way (up-pointers and an `any` node's deadline parent are
    /// allocation pointers), so the result may become a timer entry.
    ///
    /// # Safety
    /// As for [`arm_for_waiters`](Self::arm_for_waiters).
    unsafe fn deadline_owner(node: NonNull<Node>) -> Option<NonNull<Node>> {
        let mut cur = node;
        loop {
            // SAFETY: `node` is valid, and every node on its deadline walk
            // outlives it (invariant 4).
            let n = unsafe { cur.as_ref() };
            let s = n.state.load(Ordering::Relaxed);
            if s & OWNS_DEADLINE != 0 {
                return Some(cur);
            }
            if s & HAS_DEADLINE == 0 {
                return None;
            }
            #[cfg(feature = "alloc")]
            let up = match n.any() {
                // SAFETY: immutable after construction, freed with the node,
                // and its deadline parent is retained (invariant 4).
                Some(any) => unsafe { any.as_ref().deadline_parent },
                None => n.parent_ptr(),
            };
            #[cfg(not(feature = "alloc"))]
            let up = n.parent_ptr();
            // A node that does not own its effective deadline inherits it,
            // unchanged, from its deadline parent (`child_layout`, `new_any`,
            // `new_all`): the walk ends at a node that owns it.
            cur = NonNull::new(up as *mut Node)?;
        }
    }

    /// Arms the timer entry of the owner of `node`'s deadline, once.
    ///
    /// # Safety
    /// As for [`arm_for_waiters`](Self::arm_for_waiters).
    #[cold]
    #[inline(never)]
    unsafe fn arm_deadline_owner(node: NonNull<Node>) {
        // SAFETY: forwarded from our caller (invariant 4).
        let Some(owner) = (unsafe { Self::deadline_owner(node) }) else {
            return;
        };
        // SAFETY: the owner outlives `node` (invariant 4), which our caller
        // keeps valid.
        let o = unsafe { owner.as_ref() };
        // Armed already (or done: nothing left to wake): a stale read only
        // sends us to the lock, which decides.
        if o.state.load(Ordering::Relaxed) & (ARMED | DONE) != 0 {
            return;
        }
        let Some(t) = o.timer else { return };
        let guard = o.lock.lock();
        let s = o.state.load(Ordering::Relaxed);
        if s & (ARMED | DONE) != 0 {
            drop(guard);
            return;
        }
        // An owner of a deadline is a tree node, never an `any` node: its
        // `state` is written only under its lock, which we hold (invariant
        // 11). Once `DONE` is set nobody sets `ARMED` (checked just above),
        // so a `state` read that sees `DONE` sees `ARMED` for good
        // (invariant 20).
        o.state.store(s | ARMED, Ordering::Relaxed);
        drop(guard);
        // The timer's lock is a leaf, taken with no node lock (invariant 1).
        // SAFETY: our entry, of a node that outlives the waited one, which
        // the caller keeps alive (the `Timer` contract; invariants 4, 7).
        unsafe {
            t.arm(TimerEntry {
                node: owner,
                deadline: o.deadline,
            })
        };
        if o.is_done_flag() {
            // A cancel that set `DONE` after our section may have run its
            // `after_done` before our entry landed: the timer's lock orders
            // that disarm before our arm, so we see `DONE` now and give the
            // entry back ourselves (invariant 20).
            // SAFETY: `owner` is an allocation pointer (see
            // `deadline_owner`), valid while the waited node is.
            unsafe { Node::after_done_ptr(owner.as_ptr(), true) };
        } else if !t.fires_late_arms() && t.now() >= o.deadline {
            // Passed before (or while) we armed: a timer that scanned its
            // due entries just before ours landed (a virtual clock's
            // `advance` on another thread) would not fire it until its next
            // scan. Fire it here, as a read would: waiters woken on this
            // thread, after-funcs handed off (property 7). Its cancel
            // disarms the entry. A timer that fires such an entry by itself
            // (the std timer: its thread is woken for it) saves the clock
            // read.
            o.cancel_observed();
        }
    }
}
