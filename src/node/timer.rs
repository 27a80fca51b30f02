//! Timer entries: what a [`Timer`] keeps, claims and fires.
//!
//! Maintains: 7 (a claimed entry's node is held by a reference; `claim` is
//! `unsafe` with the `Timer` contract as its safety section). Relies on: 5
//! (`try_retain`), 9 (firing hands the reference over before user code).

use super::*;

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
        // SAFETY: the caller guarantees the entry is armed and we are under
        // the timer's lock, where an armed entry's node is valid: it disarms
        // under the same lock before it is freed (invariant 7).
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
        // SAFETY: the node is valid while we own the reference.
        // A timer that keeps user code off its own thread
        // (`Timer::hands_off_after_funcs`) hands the after-funcs off.
        let hand_off = unsafe { (*node).timer }.is_some_and(|t| t.hands_off_after_funcs());
        // SAFETY: we own a reference (claimed) and hand it over.
        // The reference is released before the context's wakers and
        // after-funcs run, so one may drop it (even a `ScopedContext`).
        unsafe { Node::cancel_raw(node, Error::DeadlineExceeded, None, None, true, true, hand_off) };
    }
}

impl Drop for TimerFiring {
    fn drop(&mut self) {
        // SAFETY: we own one reference (claimed).
        unsafe { release_node(self.node.as_ptr()) }
    }
}
