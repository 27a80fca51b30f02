//! Timer entries: what a [`Timer`] keeps, claims and fires.
//!
//! Maintains: 7 (a claimed entry's node is held by a reference; `claim` is
//! `unsafe` with the `Timer` contract as its safety section; `after_done`
//! disarms an armed node before it is freed), 21 (a `TimedNode`'s tail is
//! reached only through its allocation's pointer). Relies on: 5
//! (`try_retain`), 9 (firing hands the reference over before user code),
//! 20 (only `ARMED` nodes have an entry).

use super::*;
#[cfg(feature = "std")]
use crate::time::wheel::{SlotDeadline, WheelSlot};

/// A heap node that owns a deadline, with the links of the std timer's
/// wheel in the same allocation (invariant 21).
#[cfg(feature = "std")]
#[repr(C)]
pub(super) struct TimedNode {
    /// First: a `*mut TimedNode` is a `*mut Node`.
    pub(super) node: Node,
    pub(super) slot: WheelSlot,
}

/// Whether a node with these flags is the `node` of a [`TimedNode`]
/// (immutable flags: fixed before the node is allocated).
#[cfg(feature = "std")]
#[inline]
pub(super) fn has_wheel_tail(flags: u32) -> bool {
    flags & (HEAP | OWNS_DEADLINE) == HEAP | OWNS_DEADLINE
}

/// Reads a wheel entry's deadline from its node.
#[cfg(feature = "std")]
pub(crate) struct NodeDeadline;

#[cfg(feature = "std")]
// SAFETY: a linked slot is the tail of a live `TimedNode` (invariants 7,
// 21), whose `deadline` is immutable.
unsafe impl SlotDeadline for NodeDeadline {
    unsafe fn deadline(slot: NonNull<WheelSlot>) -> u64 {
        // SAFETY: the caller passes a linked slot: the tail of a live
        // `TimedNode` (invariant 21).
        unsafe { TimerEntry::from_wheel_slot(slot) }.deadline.as_nanos()
    }
}

/// A deadline registered with a [`Timer`]: which node to fire, and when.
///
/// Entries compare and hash by `(deadline, node address)`, which is unique
/// among armed entries, so a timer can keep them in an ordered map.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TimerEntry {
    pub(super) deadline: Instant,
    pub(super) node: NonNull<Node>,
}

// SAFETY: the entry is only a key plus a pointer used under the timer's
// protocol (invariant 7); the node itself is `Send + Sync`.
unsafe impl Send for TimerEntry {}

// SAFETY: as for `Send`.
unsafe impl Sync for TimerEntry {}

impl TimerEntry {
    /// When the entry is due.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// A key unique among armed entries, ordered by deadline.
    pub fn key(&self) -> (Instant, usize) {
        (self.deadline, self.node.as_ptr() as usize)
    }

    /// The wheel links in the tail of the entry's node, if it has them
    /// (a heap node that owns its deadline: invariant 21).
    ///
    /// # Safety
    /// The entry's node is valid: the entry is being armed or is armed, and
    /// the caller holds the timer's lock (invariant 7).
    #[cfg(feature = "std")]
    pub(crate) unsafe fn wheel_slot(&self) -> Option<NonNull<WheelSlot>> {
        // SAFETY: valid (caller); `state`'s flags read here are immutable.
        let flags = unsafe { self.node.as_ref() }.state.load(Ordering::Relaxed);
        if !has_wheel_tail(flags) {
            return None;
        }
        let timed = self.node.as_ptr() as *mut TimedNode;
        // SAFETY: a node with these flags is a `TimedNode`'s first field
        // (invariant 21): the tail is in the same allocation.
        Some(unsafe { NonNull::new_unchecked(ptr::addr_of_mut!((*timed).slot)) })
    }

    /// The entry of the node whose tail `slot` is.
    ///
    /// # Safety
    /// `slot` is the tail of a valid `TimedNode` (invariant 21).
    #[cfg(feature = "std")]
    pub(crate) unsafe fn from_wheel_slot(slot: NonNull<WheelSlot>) -> TimerEntry {
        let offset = core::mem::offset_of!(TimedNode, slot);
        // SAFETY: the slot sits `offset` bytes into its `TimedNode`, whose
        // first field is the node (caller, invariant 21).
        let node = unsafe { NonNull::new_unchecked((slot.as_ptr() as *mut u8).sub(offset) as *mut Node) };
        // SAFETY: valid (caller); `deadline` is immutable.
        let deadline = unsafe { node.as_ref() }.deadline;
        TimerEntry { deadline, node }
    }

    /// Takes the entry out of the timer: returns a [`TimerFiring`] to fire
    /// *after* releasing the timer's lock, or `None` if the context is being
    /// freed (it will `disarm` as soon as the lock is free).
    ///
    /// # Safety
    ///
    /// The entry's node is dereferenced: call this only under the timer's
    /// lock, on an entry that is armed (given to [`Timer::arm`] and neither
    /// disarmed nor claimed since), at most once per `arm` — the [`Timer`]
    /// safety contract. A clone of an entry kept past its `disarm` may point
    /// at freed memory. So claiming is `unsafe` (review: a safe `claim` on
    /// a kept clone was a use-after-free in safe code):
    ///
    /// ```compile_fail
    /// fn claim_kept_clone(e: &ctxcore::TimerEntry) {
    ///     let _ = e.claim(); // error[E0133]: call to unsafe function
    /// }
    /// ```
    pub unsafe fn claim(&self) -> Option<TimerFiring> {
        // The caller guarantees the entry is armed and we are under
        // the timer's lock, where an armed entry's node is valid: it disarms
        // under the same lock before it is freed (invariant 7).
        // SAFETY: as argued above (invariant 7).
        let node = unsafe { self.node.as_ref() };
        node.try_retain().then_some(TimerFiring { node: self.node })
    }
}

/// A claimed timer entry, holding its context alive: call [`fire`](Self::fire)
/// outside the timer's lock.
#[derive(Debug)]
pub struct TimerFiring {
    pub(super) node: NonNull<Node>,
}

// SAFETY: holds one reference to a `Send + Sync` node (invariant 5).
unsafe impl Send for TimerFiring {}

// SAFETY: as for `Send`.
unsafe impl Sync for TimerFiring {}

impl TimerFiring {
    /// Cancels the context with `DeadlineExceeded` (and its deadline cause),
    /// waking its waiters and running its after-funcs on this thread.
    pub fn fire(self) {
        let node = self.node.as_ptr() as *const Node;
        core::mem::forget(self);
        // The node is valid while we own the reference.
        // A timer that keeps user code off its own thread
        // (`Timer::hands_off_after_funcs`) hands the after-funcs off.
        // SAFETY: as argued above.
        let hand_off = unsafe { (*node).timer }.is_some_and(|t| t.hands_off_after_funcs());
        // We own a reference (claimed) and hand it over.
        // The reference is released before the context's wakers and
        // after-funcs run, so one may drop it (even a `ScopedContext`).
        // SAFETY: as argued above.
        unsafe { Node::cancel_raw(node, Error::DeadlineExceeded, None, None, true, true, hand_off, true) };
    }
}

impl Drop for TimerFiring {
    fn drop(&mut self) {
        // SAFETY: we own one reference (claimed).
        unsafe { release_node(self.node.as_ptr()) }
    }
}

impl Node {
    /// Gives up the node's timer entry once it is done (or freed). A node
    /// never armed (no `ARMED`: nobody waited on its deadline) has none, and
    /// the timer's lock is not taken; the flag read is final here
    /// (invariant 20). Through a pointer derived from `&self`: see
    /// [`after_done_ptr`](Self::after_done_ptr).
    pub(super) fn after_done(&self) {
        // SAFETY: `self` is valid for the call; `full` is false.
        unsafe { Self::after_done_ptr(self, false) }
    }

    /// [`after_done`](Self::after_done) through `node`. With `full`, `node`
    /// has the provenance of its whole allocation (a `NodeRef`'s pointer, an
    /// up-pointer, a work-list or timer entry), which the std timer needs
    /// to reach the wheel links in a `TimedNode`'s tail (invariant 21).
    /// Without it (a pointer derived from a `&Node`, which covers the node
    /// alone), a tailed entry on the std timer stays armed: it is removed
    /// when the node is freed (always through its allocation's pointer, so
    /// before the memory goes: invariant 7) or fired first (a done node's
    /// firing loses at once, a no-op).
    ///
    /// # Safety
    /// `node` is valid for the call; with `full`, as said above.
    // Out of line without `alloc`: one copy instead of one per cancel path
    // (firmware flash); with it, left to the compiler as before (the host's
    // hot paths).
    #[cfg_attr(not(feature = "alloc"), inline(never))]
    pub(super) unsafe fn after_done_ptr(node: *const Node, full: bool) {
        // SAFETY: valid for the call (caller).
        let n = unsafe { &*node };
        let s = n.state.load(Ordering::Relaxed);
        if s & ARMED == 0 {
            return;
        }
        let Some(t) = n.timer else { return };
        #[cfg(not(feature = "std"))]
        let _ = full;
        #[cfg(feature = "std")]
        if !full && has_wheel_tail(s) && ptr::addr_eq(t as *const dyn Timer, crate::time::StdTimer::global()) {
            return;
        }
        // Valid (caller); with `full`, a pointer the timer may use
        // to reach the tail (invariant 21); without, the std timer never
        // gets it for a tailed node (above) and other timers do not read
        // through it.
        // SAFETY: as argued above (invariant 21).
        let node = unsafe { NonNull::new_unchecked(node as *mut Node) };
        // SAFETY: our entry, of a node valid for the call (the `Timer`
        // contract; invariant 7).
        unsafe {
            t.disarm(&TimerEntry {
                node,
                deadline: n.deadline,
            })
        };
    }
}
