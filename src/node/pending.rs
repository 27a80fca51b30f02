//! Wakers that did not fit the batch: counted nodes are woken while held
//! (that blocks nobody), scoped nodes through the process-wide pending list
//! (invariant 17), so that no user code runs while a canceller holds a
//! scoped node its owner may be dropping on this very thread.
//!
//! Maintains: 17, 10's take-over (an owner's drop takes its node back out of
//! the list before waiting for references). Relies on: 3 (a done node's
//! `children` head is free for good), 9, 11 (`PENDING` written under the
//! node's lock).

use super::*;

impl Node {
    /// Wakes the wakers [`drain`](Self::drain) had no room for, 16 at a
    /// time, on a node the caller keeps alive by a counted reference or a
    /// borrow (holding either blocks nobody: invariant 17). Returns with the
    /// last (possibly partial) batch *not yet run*, so that the caller can
    /// release its reference first.
    pub(super) fn drain_wakers(&self, batch: &mut Batch) {
        loop {
            let guard = self.lock.lock();
            // SAFETY: we hold the lock (invariant 1); the node is done, so
            // only wakers are left (invariant 3 and `drain`).
            let empty = unsafe { self.pop_wakers(batch) };
            drop(guard);
            if empty {
                return;
            }
            batch.run();
        }
    }

    /// Moves wakers from this done node's `waiters` into `batch` while it
    /// has room; returns whether the list is now empty.
    ///
    /// # Safety
    /// The lock is held, and the node is done and drained, so only waker
    /// entries are left in `waiters` (invariant 3 and `drain`).
    pub(super) unsafe fn pop_wakers(&self, batch: &mut Batch) -> bool {
        // SAFETY: forwarded from the caller (invariants 1, 8).
        unsafe {
            while !batch.is_full() {
                let e = self.waiters.pop_front() as *const Entry;
                if e.is_null() {
                    break;
                }
                debug_assert!((*e).kind == EntryKind::Waker);
                let w = e as *const Waiter;
                if let Some(waker) = (*w).waker.with_mut(|p| (*p).take()) {
                    batch.push(waker);
                }
            }
            self.waiters.is_empty()
        }
    }

    /// If this done scoped (or static) node still has wakers, puts it in the
    /// pending list under this cancellation's `tag` (allocated on first
    /// use), for [`wake_pending`] or its owner's
    /// [`take_over_wakers`](Self::take_over_wakers) (invariant 17).
    pub(super) fn park(&self, tag: &mut u32) {
        let list = pending_list();
        if *tag == 0 {
            *tag = list.new_tag();
        }
        let guard = self.lock.lock();
        // SAFETY: we hold the lock (invariant 1).
        if unsafe { !self.waiters.is_empty() } {
            let s = self.state.load(Ordering::Relaxed);
            if s & PENDING == 0 {
                // A scoped node is not an `any` node: its state is written
                // only under its lock (invariant 11).
                self.state.store(s | PENDING, Ordering::Release);
                // SAFETY: we hold the node's lock; it is done, drained and
                // not in the list (no `PENDING`).
                unsafe { list.push(self, *tag) };
            }
        }
        drop(guard);
    }

    /// The owner's side of invariant 17, in `detach_scoped`: takes the node
    /// out of the pending list (a canceller that already took it out holds a
    /// reference and finds `PENDING` cleared) and wakes what is still
    /// linked, with no lock held.
    pub(super) fn take_over_wakers(&self, batch: &mut Batch) {
        loop {
            let guard = self.lock.lock();
            let s = self.state.load(Ordering::Relaxed);
            if s & PENDING != 0 {
                // SAFETY: we hold the node's lock; `PENDING` says it may be
                // in the list.
                unsafe { pending_list().remove(self) };
                self.state.store(s & !PENDING, Ordering::Release);
            }
            // SAFETY: we hold the lock; the owner cancelled the node before
            // calling this, so it is done and only wakers are left.
            let empty = unsafe { self.pop_wakers(batch) };
            drop(guard);
            batch.run();
            if empty {
                break;
            }
        }
    }
}

/// Done scoped nodes whose wakers a canceller has yet to wake: one list for
/// the process, threaded through the spare `children` head of each node
/// (empty for good once a node is done: invariant 3), each entry tagged (in
/// the node's `kids`, which only heap nodes use otherwise) with the
/// cancellation that left it.
pub(super) struct PendingList {
    pub(super) lock: RawLock,
    /// # Safety
    /// Guarded by `lock`, as are the spare head and `kids` of every node in
    /// the list.
    pub(super) head: UnsafeCell<*const Node>,
    /// # Safety
    /// Guarded by `lock`.
    pub(super) last_tag: UnsafeCell<u32>,
}

// SAFETY: every field is guarded by `lock` (invariant 17).
unsafe impl Sync for PendingList {}

// SAFETY: as for `Sync`.
unsafe impl Send for PendingList {}

#[cfg(not(loom))]
pub(super) static PENDING_LIST: PendingList = PendingList {
    lock: RawLock::new(),
    head: UnsafeCell::new(ptr::null()),
    last_tag: UnsafeCell::new(0),
};

#[cfg(loom)]
loom::lazy_static! {
    static ref PENDING_LIST: PendingList = PendingList {
        lock: RawLock::new(),
        head: UnsafeCell::new(ptr::null()),
        last_tag: UnsafeCell::new(0),
    };
}

#[inline]
pub(super) fn pending_list() -> &'static PendingList {
    &PENDING_LIST
}

impl PendingList {
    /// A tag for one cancellation's entries: never zero. Tags wrap after
    /// 2^32 cancellations; two live ones sharing a tag would only wake each
    /// other's wakers.
    pub(super) fn new_tag(&self) -> u32 {
        let g = self.lock.lock();
        // SAFETY: we hold the lock.
        let t = self.last_tag.with_mut(|p| unsafe {
            *p = (*p).wrapping_add(1).max(1);
            *p
        });
        drop(g);
        t
    }

    /// Adds `node` under `tag`.
    ///
    /// # Safety
    /// The caller holds `node`'s lock, `node` is a done, drained scoped or
    /// static node not in the list, and it just set its `PENDING` bit.
    pub(super) unsafe fn push(&self, node: &Node, tag: u32) {
        let g = self.lock.lock();
        // We hold the list's lock, which guards the head, and the
        // node's spare head and `kids` while it is in the list; its
        // `children` list is empty for good (invariant 3).
        // SAFETY: as argued above (invariant 3).
        unsafe {
            node.kids.with_mut(|k| *k = tag);
            node.children.set_spare(self.head.with(|h| *h) as *const ());
            self.head.with_mut(|h| *h = node as *const Node);
        }
        drop(g);
    }

    /// Takes out the first entry tagged `tag`, holding it by a reference.
    /// It is valid meanwhile: its owner takes it out of the list under the
    /// same lock before it can let it go (invariant 17).
    pub(super) fn take(&self, tag: u32) -> Option<*const Node> {
        let g = self.lock.lock();
        // SAFETY: we hold the lock; every node in the list is valid.
        let found = unsafe { self.unlink(|n| n.kids.with(|k| *k) == tag) };
        if let Some(n) = found {
            // SAFETY: as above.
            unsafe { (*n).retain() };
        }
        drop(g);
        found
    }

    /// Takes `node` out if it is in the list.
    ///
    /// # Safety
    /// The caller holds `node`'s lock and saw its `PENDING` bit.
    pub(super) unsafe fn remove(&self, node: &Node) {
        let g = self.lock.lock();
        // SAFETY: we hold the lock.
        unsafe { self.unlink(|n| ptr::eq(n, node)) };
        drop(g);
    }

    /// Unlinks the first node matching `f` and clears its spare head.
    ///
    /// # Safety
    /// The lock is held.
    pub(super) unsafe fn unlink(&self, f: impl Fn(&Node) -> bool) -> Option<*const Node> {
        // SAFETY: the caller holds the lock, which guards the chain; every
        // node in it is valid (invariant 17).
        unsafe {
            let mut prev: *const Node = ptr::null();
            let mut cur = self.head.with(|h| *h);
            while !cur.is_null() {
                let next = (*cur).children.spare() as *const Node;
                if f(&*cur) {
                    if prev.is_null() {
                        self.head.with_mut(|h| *h = next);
                    } else {
                        (*prev).children.set_spare(next as *const ());
                    }
                    (*cur).children.set_spare(ptr::null());
                    return Some(cur);
                }
                prev = cur;
                cur = next;
            }
            None
        }
    }
}

/// Phase 2 for the scoped nodes this cancellation parked under `tag`: takes
/// each back (by a reference), moves up to a batch of its wakers out under
/// its lock, parks it again if some are left, lets go of it, and only then
/// wakes the batch (invariant 17).
pub(super) fn wake_pending(tag: u32, batch: &mut Batch) {
    let list = pending_list();
    while let Some(n_ptr) = list.take(tag) {
        // SAFETY: `take` retained it.
        let n = unsafe { &*n_ptr };
        let guard = n.lock.lock();
        let s = n.state.load(Ordering::Relaxed);
        if s & PENDING != 0 {
            // SAFETY: we hold the lock; a parked node is done and drained.
            let empty = unsafe { n.pop_wakers(batch) };
            if empty {
                n.state.store(s & !PENDING, Ordering::Release);
            } else {
                // SAFETY: we hold its lock; `PENDING` is set and `take`
                // took it out of the list.
                unsafe { list.push(n, tag) };
            }
        }
        // Else its owner is detaching and wakes the rest itself.
        drop(guard);
        // SAFETY: the reference `take` took; a scoped node is never freed by
        // its count.
        unsafe { release_node(n_ptr) };
        batch.run();
    }
}
