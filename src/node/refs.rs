//! References, kid counts and orphans: how long a node lives.
//!
//! Maintains: 5 (counts, sticky saturation), 16 (kids and orphans: the
//! last kid count frees an orphan, decided under its lock), 15 (the
//! immortal node is never counted), and the freeing walk's part of 4, 14
//! and 7 (a node is unlinked from its parent, timer and `any` parents
//! before it is freed; the walk up is iterative). Relies on: 1 (lock scope),
//! 3, 14 (`UNLINKED` means no parent's list holds the node).

use super::*;

/// In `kids`: the node's reference count reached zero while kids still held
/// it; whoever lets go of the last kid count frees it (invariant 16).
pub(super) const ORPHAN: u32 = 1 << 31;

/// Mask of the count in `kids`, and the largest count.
pub(super) const KIDS_MAX: u32 = ORPHAN - 1;

/// Reference counts at or above this are *saturated*: the node is pinned
/// (never freed) and the count no longer tracks owners (invariant 5).
pub(super) const MAX_REFS: u32 = 1 << 31;

/// Where a saturated count is put back by every retain and release that
/// sees it saturated: `2^30` away from both `MAX_REFS` and overflow, so only
/// `2^30` threads caught at once between their increment (or decrement) and
/// their store could move it out of the saturated range (as `Arc`'s argument
/// for `isize::MAX`).
pub(super) const SATURATED: u32 = 3 << 30;

impl Node {
    /// Drops one kid count; returns true if the node is an orphan and that
    /// was its last (the caller must then free it: invariant 16).
    ///
    /// # Safety
    /// The lock is held and the caller held one kid count.
    pub(super) unsafe fn drop_kid(&self) -> bool {
        // SAFETY: the caller holds the lock (invariant 1).
        self.kids.with_mut(|k| unsafe {
            debug_assert!(*k & KIDS_MAX != 0);
            *k -= 1;
            *k == ORPHAN
        })
    }

    /// Holds a node just popped from its parent's list, under the parent's
    /// still-held lock, for a work list (invariant 6): by a reference, or,
    /// if its count is zero but kids still hold it (an orphan, invariant
    /// 16), by one more kid count. A node with neither is being freed and
    /// finds itself unlinked: it needs nothing, and false is returned.
    ///
    /// Waits for the popped node's lock while holding its parent's, only for
    /// a node whose count is zero, which no own cancel is working on ("Lock
    /// order").
    #[inline]
    pub(super) fn hold_popped(&self) -> bool {
        self.try_retain() || self.hold_orphan()
    }

    /// The rare half of [`hold_popped`](Self::hold_popped): a popped node
    /// whose count is zero.
    #[cold]
    #[inline(never)]
    pub(super) fn hold_orphan(&self) -> bool {
        #[cfg(feature = "alloc")]
        {
            let _g = self.lock.lock();
            // SAFETY: we hold the lock, which guards `kids` (invariant 1).
            self.kids.with_mut(|k| unsafe {
                if *k & KIDS_MAX != 0 {
                    // The count never saturates here: children stop one short
                    // of the maximum (invariant 16).
                    *k += 1;
                    true
                } else {
                    false
                }
            })
        }
        #[cfg(not(feature = "alloc"))]
        false
    }

    /// Increments `refs` unless it is zero (the node is being freed).
    pub(super) fn try_retain(&self) -> bool {
        let mut cur = self.refs.load(Ordering::Relaxed);
        loop {
            if cur == 0 {
                return false;
            }
            if cur >= MAX_REFS {
                // Saturated: pinned for good, nothing to count (invariant 5).
                return true;
            }
            match self
                .refs
                .compare_exchange_weak(cur, cur + 1, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Increments `refs`; the caller already owns a reference.
    pub(super) fn retain(&self) {
        let old = self.refs.fetch_add(1, Ordering::Relaxed);
        if old >= MAX_REFS - 1 {
            // Saturated (or saturating now): pin the count in the middle of
            // the saturated range. The node leaks rather than being freed
            // early (invariant 5).
            self.refs.store(SATURATED, Ordering::Relaxed);
        }
    }
}

/// Drops one reference; frees the node (and walks up to parents whose last
/// reference that was) when it reaches zero.
///
/// # Safety
/// The caller owns one reference to `node`.
pub(super) unsafe fn release_node(node: *const Node) {
    #[cfg(feature = "alloc")]
    // SAFETY: forwarded from the caller.
    unsafe {
        release(NonNull::new_unchecked(node as *mut Node))
    }
    #[cfg(not(feature = "alloc"))]
    // SAFETY: forwarded from the caller; without `alloc` every node is owned
    // by a pinned owner that waits for `refs` to drop to its own reference.
    unsafe {
        (*node).refs.fetch_sub(1, Ordering::Release);
    }
}

/// At a heap node's last release (its count is zero, or it is an orphan
/// whose last kid count just went): if kids still hold it, marks it an
/// orphan and returns false; otherwise returns true and it may be freed
/// (invariant 16).
///
/// A raw pointer, not `&self`: once the lock is released another thread may
/// free the orphan while this call is still returning, which a protected
/// reference argument would forbid.
///
/// # Safety
/// The caller owns the node's last reference or last kid count.
#[cfg(feature = "alloc")]
pub(super) unsafe fn orphan_or_free(node: NonNull<Node>) -> bool {
    // SAFETY: what the caller owns keeps the node valid until the lock is
    // released below.
    let n = unsafe { node.as_ref() };
    let g = n.lock.lock();
    // SAFETY: we hold the lock, which guards `kids` (invariant 1).
    let free = n.kids.with_mut(|k| unsafe {
        if *k & KIDS_MAX != 0 {
            *k |= ORPHAN;
            false
        } else {
            true
        }
    });
    drop(g);
    free
}

/// Frees, when dropped, the orphan (if any) whose last kid count a cancel
/// gave up (invariant 16): also when a waker or after-func of that cancel
/// panics, so an orphan is never leaked.
pub(super) struct OrphanGuard(pub(super) Option<NonNull<Node>>);

impl Drop for OrphanGuard {
    fn drop(&mut self) {
        // SAFETY: the cancel that set it gave up the orphan's last kid count,
        // and this guard is dropped after every lock of that cancel.
        unsafe { free_orphan(self.0.take()) };
    }
}

/// Frees the orphan (if any) whose last kid count a cancel just gave up
/// (invariant 16).
///
/// # Safety
/// The caller gave up that count and holds no node lock.
#[inline]
pub(super) unsafe fn free_orphan(orphan: Option<NonNull<Node>>) {
    #[cfg(feature = "alloc")]
    if let Some(p) = orphan {
        // SAFETY: an orphan's count is zero and its last kid count is gone:
        // the caller is the one to free it.
        unsafe { release_last(p) };
    }
    #[cfg(not(feature = "alloc"))]
    let _ = orphan;
}

/// Gives up a work list's hold on a node (invariant 6): a reference, or, on
/// an orphan (whose count is zero for good: nothing revives it), a kid count
/// (invariant 16).
///
/// # Safety
/// The caller owns that hold.
pub(super) unsafe fn release_held(node: *const Node) {
    #[cfg(feature = "alloc")]
    // SAFETY: our hold keeps the node valid. A held reference keeps the count
    // above zero, so zero means our hold is a kid count.
    if unsafe { (*node).refs.load(Ordering::Relaxed) } == 0 {
        // SAFETY: as above.
        return unsafe { release_kid(NonNull::new_unchecked(node as *mut Node)) };
    }
    // SAFETY: forwarded from the caller.
    unsafe { release_node(node) }
}

/// # Safety
/// The caller owns one reference to the heap node `node`.
///
/// Iterative, whatever the shape: a tree node's last release continues with
/// its parent in the loop, and a dying `any` node's parents wait on an
/// intrusive stack of their `AnyLinks` (threaded through `next_pending`), so
/// dropping a chain of a million nodes, `any` or not, never recurses.
#[cfg(feature = "alloc")]
#[inline]
pub(super) unsafe fn release(node: NonNull<Node>) {
    debug_assert!(!is_immortal(node), "the immortal node is never counted (invariant 15)");
    // SAFETY: we own a reference, so the node is valid.
    let n = unsafe { node.as_ref() };
    let old = n.refs.fetch_sub(1, Ordering::Release);
    if old == 1 {
        // SAFETY: we just dropped the last reference.
        unsafe { release_last(node) }
    } else if old >= MAX_REFS {
        // Saturated: sticky, never free (invariant 5).
        n.refs.store(SATURATED, Ordering::Relaxed);
    }
}

/// Frees `node`, whose count just reached zero, then walks on (see
/// `release`).
///
/// # Safety
/// The caller dropped `node`'s last reference.
#[cfg(feature = "alloc")]
#[cold]
pub(super) unsafe fn release_last(node: NonNull<Node>) {
    let mut zeroed = true;
    let mut next = Some(node);
    // Dying `any` nodes' links whose parent references are still to release.
    let mut pending: *mut AnyLinks = ptr::null_mut();
    #[cfg(feature = "std")]
    let mut panic: Option<Box<dyn core::any::Any + Send>> = None;
    loop {
        let cur = match next.take() {
            Some(cur) => cur,
            None => {
                // SAFETY: `pending` holds links of freed `any` nodes only.
                match unsafe { pop_pending_parent(&mut pending) } {
                    Some(p) => {
                        zeroed = false;
                        p
                    }
                    None => break,
                }
            }
        };
        // SAFETY: we own a reference (or the last one, just dropped), so the
        // node is valid.
        let n = unsafe { cur.as_ref() };
        // We own that reference.
        // A reference taken over from the walk (a parent's, an `any`
        // link's) is given up here; the first node's count is already zero.
        // SAFETY: as argued above.
        if !core::mem::replace(&mut zeroed, false) && unsafe { !release_walked(cur) } {
            continue;
        }
        // Synchronise with every other owner's Release decrement before
        // freeing. An Acquire load of the count rather than a fence: the same
        // guarantee, and ThreadSanitizer understands it (it does not model
        // fences, and reported the free as racing with a timer's read).
        let _ = n.refs.load(Ordering::Acquire);
        let s = n.state.load(Ordering::Relaxed);
        // SAFETY: `HAD_KIDS` is set only on heap nodes; we own the last
        // reference or an orphan's last kid count.
        if s & HAD_KIDS != 0 && unsafe { !orphan_or_free(cur) } {
            // Kids still hold it: the last of them frees it (invariant 16).
            continue;
        }
        // Last reference: unhook the node from everything that can still
        // reach it by a list pointer (invariant 5), then free it.
        // SAFETY: `cur` is the allocation's pointer (invariant 21).
        unsafe { Node::after_done_ptr(cur.as_ptr(), true) };
        let parent = n.parent_ptr();
        // Whether to walk on to the parent, and whether its count is already
        // settled (an orphan whose last kid count this node held).
        // A kid that left the list by its own cancel gave its count up there.
        let mut walk_up = s & (KID | UNLINKED) != KID | UNLINKED;
        if s & (UNLINKED | ANY) == 0 {
            // SAFETY: we own the node's last hold; its parent outlives it.
            if let Some(last_kid) = unsafe { unlink_from_parent(n, parent, s) } {
                walk_up = last_kid;
                zeroed = last_kid;
            }
        }
        let any = n.any();
        if let Some(any) = any {
            // SAFETY: immutable while the node lived; parents retained.
            unsafe { unlink_any_links(any.as_ref()) };
        }
        // SAFETY: refs is zero and nothing can reach the node any more.
        let freed = unsafe { free_node(cur) };
        #[cfg(feature = "std")]
        if let Err(p) = freed {
            panic.get_or_insert(p);
        }
        #[cfg(not(feature = "std"))]
        let _: Result<(), ()> = freed;
        if let Some(any) = any {
            // SAFETY: the links are unlinked from every parent and the node
            // that owned them is gone: this loop owns them now.
            unsafe { (*any.as_ptr()).next_pending = pending };
            pending = any.as_ptr();
        }
        if walk_up {
            next = NonNull::new(parent as *mut Node);
        }
    }
    #[cfg(feature = "std")]
    if let Some(p) = panic {
        if std::thread::panicking() {
            // A second panic would abort: the payload (user data) leaks.
            core::mem::forget(p);
        } else {
            std::panic::resume_unwind(p);
        }
    }
}

/// Gives up a reference that `release_last`'s walk holds (to a parent or an
/// `any` link's parent); true if it was the last, so the node is to be freed.
///
/// # Safety
/// The caller owns that reference.
#[cfg(feature = "alloc")]
#[inline]
unsafe fn release_walked(cur: NonNull<Node>) -> bool {
    if is_immortal(cur) {
        // A parent's or an `any` link's reference to the immortal node was
        // never counted (invariant 15).
        return false;
    }
    // SAFETY: our reference keeps the node valid.
    let n = unsafe { cur.as_ref() };
    let old = n.refs.fetch_sub(1, Ordering::Release);
    if old >= MAX_REFS {
        // Saturated: sticky, never free (invariant 5).
        n.refs.store(SATURATED, Ordering::Relaxed);
    }
    old == 1
}

/// A panic payload caught while freeing a node, or nothing to carry without
/// `std`.
#[cfg(feature = "std")]
type Caught = Box<dyn core::any::Any + Send>;
#[cfg(not(feature = "std"))]
type Caught = ();

/// Frees a heap node. Its cause is the one field whose drop is user code
/// (it may panic): a node without one is freed plainly; otherwise, with
/// `std`, the drop runs under `catch_unwind` and a panic is returned, so the
/// freeing walk can finish (a parent's count is still to give back) and
/// re-raise it at the end.
///
/// # Safety
/// The node's count is zero and nothing can reach it any more; it was
/// allocated by `Box::leak` in `NodeRef::alloc`.
#[cfg(feature = "alloc")]
#[inline]
unsafe fn free_node(cur: NonNull<Node>) -> Result<(), Caught> {
    // SAFETY: forwarded from the caller: the node is still valid.
    let n = unsafe { cur.as_ref() };
    // SAFETY: nothing else can reach the node: the slot is ours alone.
    let has_cause = n.cause.with(|p| unsafe { (*p).has_cause() });
    #[cfg(feature = "std")]
    if has_wheel_tail(n.state.load(Ordering::Relaxed)) {
        // SAFETY: forwarded from the caller; a node with these flags was
        // allocated as a `TimedNode` (invariant 21).
        let freed = unsafe { Box::from_raw(cur.as_ptr() as *mut TimedNode) };
        return drop_freed(freed, has_cause);
    }
    // SAFETY: forwarded from the caller.
    let freed = unsafe { Box::from_raw(cur.as_ptr()) };
    drop_freed(freed, has_cause)
}

/// Drops a freed node's box, under `catch_unwind` if it holds a cause.
#[cfg(feature = "alloc")]
#[inline]
fn drop_freed<T>(freed: Box<T>, has_cause: bool) -> Result<(), Caught> {
    if !has_cause {
        // No user code to run.
        drop(freed);
        return Ok(());
    }
    #[cfg(feature = "std")]
    {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(freed)))
    }
    #[cfg(not(feature = "std"))]
    {
        drop(freed);
        Ok(())
    }
}

/// Takes the next parent reference of a freed `any` node off `release_last`'s
/// stack, freeing the links of each node whose parents are all done; `None`
/// once the stack is empty.
///
/// # Safety
/// `pending` is a stack of links of freed `any` nodes, owned by the caller.
#[cfg(feature = "alloc")]
#[inline]
unsafe fn pop_pending_parent(pending: &mut *mut AnyLinks) -> Option<NonNull<Node>> {
    while !pending.is_null() {
        // SAFETY: the links belong to freed `any` nodes: they are unlinked
        // everywhere and owned by the caller alone.
        let top = unsafe { &mut **pending };
        match top.links.pop() {
            Some(link) => return Some(link.parent.into_raw()),
            None => {
                // SAFETY: allocated by `Box::leak` in `NodeRef::new_any`;
                // nothing refers to it any more.
                let links = unsafe { Box::from_raw(*pending) };
                *pending = links.next_pending;
            }
        }
    }
    None
}

/// The freeing node `n` (state `s`) leaves its parent's list under the
/// parent's lock (invariant 5). For a kid, gives up its kid count there and
/// returns whether that was an orphaned parent's last (`Some(true)`: the
/// caller frees the parent next); `None` for a node that holds its parent
/// by a reference.
///
/// # Safety
/// The caller owns `n`'s last hold; `parent` is its up-pointer.
#[cfg(feature = "alloc")]
unsafe fn unlink_from_parent(n: &Node, parent: *const Node, s: u32) -> Option<bool> {
    // SAFETY: the parent outlives us (invariants 4, 16).
    let p = unsafe { parent.as_ref()? };
    let g = p.lock.lock();
    // SAFETY: we hold the parent's lock (invariant 1).
    unsafe {
        if n.link.is_linked() {
            p.children.remove(&n.link);
        }
    }
    let last_kid = if s & KID != 0 {
        // SAFETY: we hold the parent's lock.
        // Our hold on the parent was a kid count (invariant 16).
        Some(unsafe { p.drop_kid() })
    } else {
        None
    };
    drop(g);
    last_kid
}

/// A freeing `any` node's links leave their parents' waiter lists, each
/// under that parent's lock (invariant 8).
///
/// # Safety
/// `links` belong to an `any` node whose last hold the caller owns.
#[cfg(feature = "alloc")]
unsafe fn unlink_any_links(links: &AnyLinks) {
    for l in links.links.iter() {
        let p = l.parent.node();
        let g = p.lock.lock();
        // SAFETY: we hold that parent's lock (invariant 1); the link is ours
        // (invariant 8).
        unsafe {
            if l.entry.link.is_linked() {
                p.waiters.remove(&l.entry.link);
                p.add_callbacks(-1);
            }
        }
        drop(g);
    }
}

/// Gives up one kid count on `node` (a canceller's hold on an orphan,
/// invariant 16), freeing it if that was the orphan's last.
///
/// # Safety
/// The caller holds one kid count on `node`.
#[cfg(feature = "alloc")]
#[cold]
pub(super) unsafe fn release_kid(node: NonNull<Node>) {
    // SAFETY: our kid count keeps the node alive (invariant 16).
    let n = unsafe { node.as_ref() };
    let g = n.lock.lock();
    // SAFETY: we hold its lock.
    let last = unsafe { n.drop_kid() };
    drop(g);
    if last {
        // SAFETY: an orphan with no kid count left: its count is zero and
        // nobody else can free it.
        unsafe { release_last(node) };
    }
}
