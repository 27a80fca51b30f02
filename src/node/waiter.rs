//! The waiter a `done()` future embeds: no allocation per wait.
//!
//! Maintains: 8 (pinned, unlinked under the node's lock in `Drop`), 9 (the
//! task's waker is cloned and dropped with no lock held), 20 (a first
//! registration arms the deadline that can wake it). Relies on: 3, and on
//! the future keeping its node alive (dropck: `Done` has its own `Drop`).

use super::*;

/// The waiter that a `done()` future embeds: no allocation per wait.
#[repr(C)]
pub(crate) struct Waiter {
    pub(super) entry: Entry,
    /// # Safety
    /// Guarded by the lock of the node it waits on (invariant 1).
    pub(super) waker: UnsafeCell<Option<Waker>>,
    /// The node this waiter may be linked into (set on first registration).
    pub(super) node: *const Node,
    pub(super) _pin: PhantomPinned,
}

// SAFETY: the waker slot is guarded by the node's lock; `node` is only
// dereferenced while the owner keeps the node alive (`poll_wait` contract).
unsafe impl Send for Waiter {}

// SAFETY: as for `Send`; `&Waiter` exposes nothing.
unsafe impl Sync for Waiter {}

impl Waiter {
    pub(crate) fn new() -> Self {
        Waiter {
            entry: Entry::new(EntryKind::Waker),
            waker: UnsafeCell::new(None),
            node: ptr::null(),
            _pin: PhantomPinned,
        }
    }

    /// Polls for `node` being done; registers the waker if not, and on the
    /// first registration makes sure the deadline that can make `node` done
    /// is armed (invariant 20).
    ///
    /// # Safety
    /// `node` stays valid until this waiter is dropped, and every call on this
    /// waiter passes the same node.
    pub(crate) unsafe fn poll_wait(self: Pin<&mut Self>, at: NodePtr<'_>, cx: &mut TaskContext<'_>) -> Poll<()> {
        let node = at.get();
        if node.is_done() {
            return Poll::Ready(());
        }
        // SAFETY: we never move out of the pinned waiter.
        let this = unsafe { self.get_unchecked_mut() };
        // Cloning a waker is user code: never under the lock (invariant 9).
        // A waiter's first poll always needs a clone; a later one only if
        // the task's waker changed, which `will_wake` (no user code) tells.
        let mut new = if this.node.is_null() {
            Some(cx.waker().clone())
        } else {
            None
        };
        this.node = node;
        let mut guard = node.lock.lock();
        if new.is_none() {
            let waker = &this.waker;
            // SAFETY: we hold the node's lock, which guards the slot
            // (invariant 1).
            let same = waker.with(|p| unsafe { (*p).as_ref().is_some_and(|w| w.will_wake(cx.waker())) });
            if !same {
                drop(guard);
                new = Some(cx.waker().clone());
                guard = node.lock.lock();
            }
        }
        if node.is_done_flag() {
            drop(guard);
            drop(new);
            return Poll::Ready(());
        }
        let mut old = None;
        // SAFETY: we hold the node's lock (invariants 1, 8); the waiter is
        // pinned and unlinks itself in `Drop` (invariant 8).
        let pushed = unsafe {
            if let Some(w) = new {
                this.waker.with_mut(|p| old = (*p).replace(w));
            }
            let pushed = !this.entry.link.is_linked();
            if pushed {
                // The container pointer (not `&this.entry.link`) keeps the
                // provenance of the whole waiter for the canceller's cast back.
                node.waiters.push(this as *mut Waiter as *const Link);
            }
            pushed
        };
        drop(guard);
        drop(old);
        if pushed {
            // `at` is valid (our caller) and keeps the allocation's
            // provenance (`NodePtr`, invariants 7 and 20).
            // Linked first, armed second, no lock held (the timer's is a
            // leaf, invariant 1): a deadline that passed since the check
            // above is fired by the arming itself (it re-reads the clock
            // after arming), and its canceller wakes us, once, like any
            // other (invariant 20). So we stay `Pending` even then: a
            // `Ready` while linked would earn a second, spurious wake-up.
            // SAFETY: as argued above (invariants 7, 20, 1).
            unsafe { Node::arm_for_waiters(at.as_ptr()) };
        }
        Poll::Pending
    }

    /// Whether the waiter might be linked (it registered at least once).
    pub(crate) fn registered(&self) -> bool {
        !self.node.is_null()
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        if self.node.is_null() {
            return;
        }
        // SAFETY: `poll_wait`'s contract keeps the node valid until now.
        let node = unsafe { &*self.node };
        let guard = node.lock.lock();
        // SAFETY: we hold the node's lock (invariant 1).
        let waker = unsafe {
            if self.entry.link.is_linked() {
                node.waiters.remove(&self.entry.link);
            }
            self.waker.with_mut(|p| (*p).take())
        };
        drop(guard);
        drop(waker);
    }
}
