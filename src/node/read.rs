//! Reads of a node's done state: its error, cause and site, and the
//! deadline check that makes them exact when observed (property 5), for
//! plain nodes, `all` nodes (`all_observed`) and `any` nodes over parents on
//! different timers (`any_observed`).
//!
//! Maintains: property 5 (a read fires a passed deadline on its owner, with
//! the after-funcs handed off: property 7). Relies on: 2 (`DONE` is final
//! and publishes the cause), 4 (deadline parents outlive their children),
//! 19 (`all` nodes), 20 (lazy arming: an unarmed deadline is fired here).

use super::*;

impl Node {
    /// The error this node is done with, if it is done.
    pub(crate) fn err(&self) -> Option<Error> {
        self.done_source().map(|n| n.err_of_done())
    }

    /// The cause of the winning cancellation, if done.
    pub(crate) fn cause(&self) -> Option<Cause> {
        self.done_source().map(|n| n.cause_of_done())
    }

    /// Where the winning cancellation was requested, if done (invariant 18).
    pub(crate) fn cancelled_at(&self) -> Option<&'static Location<'static>> {
        self.done_source().and_then(|n| n.done_site())
    }

    /// Error of a node known to be done.
    pub(super) fn err_of_done(&self) -> Error {
        if self.state.load(Ordering::Acquire) & DEADLINE_ERR != 0 {
            Error::DeadlineExceeded
        } else {
            Error::Canceled
        }
    }

    /// Cause of a node known to be done (Acquire-observed `DONE`).
    pub(super) fn cause_of_done(&self) -> Cause {
        debug_assert!(self.is_done_flag());
        self.done_cause()
            .unwrap_or_else(|| Cause::from_error(self.err_of_done()))
    }

    /// The node whose error and cause this node reports, if it is done.
    pub(super) fn done_source(&self) -> Option<&Node> {
        let s = self.state.load(Ordering::Acquire);
        if s & DONE != 0 {
            return Some(self);
        }
        if s & (HAS_DEADLINE | POLLS) == 0 {
            return None;
        }
        #[cfg(feature = "alloc")]
        if s & ALL != 0 {
            return self.all_observed();
        }
        #[cfg(feature = "alloc")]
        if s & POLLS != 0 {
            return self.any_observed();
        }
        if !self.check_deadline() {
            return None;
        }
        #[cfg(feature = "alloc")]
        if s & ANY != 0 {
            // Its deadline parent is done: so is the node, now, with what
            // it inherits, or with a racing cancel's (review 6).
            self.settle_observed();
            if self.is_done_flag() {
                return Some(self);
            }
        }
        // The deadline owner is done now; its cancellation may still be on
        // its way down to us.
        Some(self.nearest_done_up())
    }

    /// The nearest node flagged done on the way up from this one by
    /// deadline parents (the topmost if none is yet): where a read that
    /// fired, or found fired, a deadline above it takes its error and
    /// cause from while that cancellation is on its way down.
    pub(super) fn nearest_done_up(&self) -> &Node {
        let mut n: &Node = self;
        loop {
            if n.is_done_flag() {
                return n;
            }
            match n.deadline_parent() {
                Some(p) => n = p,
                None => return n,
            }
        }
    }

    /// The node whose deadline this node inherits from, if any.
    pub(super) fn deadline_parent(&self) -> Option<&Node> {
        #[cfg(feature = "alloc")]
        if let Some(any) = self.any() {
            // SAFETY: `any` is immutable after construction and freed only
            // with the node; its deadline parent is retained (invariant 4).
            return unsafe { any.as_ref().deadline_parent.as_ref() };
        }
        // SAFETY: the parent outlives this node (invariant 4).
        unsafe { self.parent_ptr().as_ref() }
    }

    /// If the clock has passed the deadline, cancels the node that owns it
    /// (so the whole subtree follows) and returns true.
    #[cold]
    pub(super) fn check_deadline(&self) -> bool {
        #[cfg(feature = "alloc")]
        {
            let s = self.state.load(Ordering::Relaxed);
            if s & ALL != 0 {
                return self.all_observed().is_some();
            }
            if s & POLLS != 0 {
                return self.any_observed().is_some();
            }
        }
        self.check_deadline_tree(true)
    }

    /// [`check_deadline`](Self::check_deadline) by the deadline alone: if
    /// the clock has passed it, cancels the node that owns it. With
    /// `poll_all`, an `all` node met on the way up (whose deadline, the
    /// latest of its parents', has passed too) has its parents checked by
    /// `all_observed` instead, which calls this without: at most two
    /// levels, no recursion.
    pub(super) fn check_deadline_tree(&self, poll_all: bool) -> bool {
        self.fire_passed_deadline(poll_all, true)
    }

    /// [`check_deadline_tree`](Self::check_deadline_tree), with the owner's
    /// after-funcs handed off (`hand_off`, a read's way) or run here (an own
    /// cancel's way, for a timer that runs them where it fires:
    /// `deadline_won`).
    pub(super) fn fire_passed_deadline(&self, poll_all: bool, hand_off: bool) -> bool {
        let _ = poll_all;
        let Some(timer) = self.timer else { return false };
        if timer.now() < self.deadline {
            return false;
        }
        let mut owner: &Node = self;
        // The walk stops at the node that owns the deadline without reading
        // its parent (whose deadline is later: `child_layout`): a deadline
        // kid whose own cancel (a handle, its timer, another read) gave its
        // kid count up no longer holds its parent, which may be gone
        // (invariant 16; review 7). Below the owner every node holds the
        // next by a reference (a node with a deadline has no kids).
        while owner.state.load(Ordering::Relaxed) & OWNS_DEADLINE == 0 {
            let Some(p) = owner.deadline_parent() else { break };
            if p.deadline > owner.deadline {
                break;
            }
            #[cfg(feature = "alloc")]
            if poll_all && p.state.load(Ordering::Relaxed) & ALL != 0 {
                // Every parent of `p` has a deadline no later than ours:
                // fire those that have passed, so that `p` is done at once.
                // Done only if `p` is: a parent that is still live (a
                // cancellation on its way, or an `all` parent whose own
                // parents are not read from here) keeps us live too, so a
                // child never reads done under a live `all` node.
                return p.all_observed().is_some();
            }
            owner = p;
        }
        if hand_off {
            owner.cancel_observed();
        } else {
            owner.cancel_inner(Error::DeadlineExceeded, None, true);
        }
        true
    }
}
