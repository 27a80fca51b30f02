//! An intrusive, doubly linked list of [`Link`]s: one pointer per list, two
//! per element, O(1) push, pop and remove, no allocation. Order is LIFO
//! (nothing in the core depends on order).
//!
//! The list never allocates: every element embeds its own [`Link`] as the
//! *first* field of a `#[repr(C)]` struct, so a `*const Link` is also a
//! pointer to the element. Nodes put their children in one such list and
//! their waiters (futures, after-funcs, `Context::any` links) in another.
//!
//! # Invariants
//!
//! 1. **Owner lock.** Every list is owned by exactly one [`RawLock`]
//!    (the lock of the node that holds the list head). The head, and the
//!    `prev`, `next` and `linked` fields of every element currently in the
//!    list, are read and written only while that lock is held.
//! 2. **Pinned elements.** An element's address does not change while it is
//!    linked, and its memory stays valid until it has been unlinked (by its
//!    owner under the owner lock, or popped by whoever drains the list).
//! 3. **Linked means `prev` is not null.** A linked element's `prev` points
//!    at the previous element, or, for the first element, at the list head
//!    itself (a sentinel address, compared but never dereferenced as a
//!    link). `push` requires an unlinked element; `remove` requires a linked
//!    one; both `remove` and `pop_front` null the pointers.
//! 4. **Free links.** While unlinked, the element's `next` pointer
//!    belongs to whoever unlinked it; the cancel work list threads retained
//!    nodes through it (see `node/`, invariant 6).
//!
//! # Lock order
//!
//! The list takes no locks; its callers hold the owner lock (see `node/`).
//!
//! [`RawLock`]: crate::sync::RawLock

use crate::sync::UnsafeCell;
use core::marker::PhantomPinned;
use core::ptr;

/// The links embedded in every list element.
#[derive(Debug)]
pub(crate) struct Link {
    /// # Safety
    /// Guarded by the owner lock of the list the element is in (invariant 1).
    /// Non-null exactly while linked (invariant 3).
    prev: UnsafeCell<*const Link>,
    /// # Safety
    /// Guarded by the owner lock (invariant 1), or owned by the unlinker while
    /// unlinked (invariant 4).
    next: UnsafeCell<*const Link>,
    _pin: PhantomPinned,
}

// SAFETY: (invariant 1) the raw pointers are only dereferenced under the owner
// lock, which serialises every access across threads.
unsafe impl Send for Link {}
// SAFETY: (invariant 1) as for `Send`.
unsafe impl Sync for Link {}

impl Link {
    #[cfg(not(loom))]
    pub(crate) const fn new() -> Self {
        Link {
            prev: UnsafeCell::new(ptr::null()),
            next: UnsafeCell::new(ptr::null()),
            _pin: PhantomPinned,
        }
    }

    #[cfg(loom)]
    pub(crate) fn new() -> Self {
        Link {
            prev: UnsafeCell::new(ptr::null()),
            next: UnsafeCell::new(ptr::null()),
            _pin: PhantomPinned,
        }
    }

    /// Whether the element is in a list.
    ///
    /// # Safety
    /// The caller holds the owner lock of the list the element may be in
    /// (invariant 1).
    pub(crate) unsafe fn is_linked(&self) -> bool {
        // SAFETY: the caller holds the owner lock (invariant 1).
        self.prev.with(|p| unsafe { !(*p).is_null() })
    }

    /// The work-list successor, for an element that is not linked.
    ///
    /// # Safety
    /// The element is not linked and the caller is the one that unlinked it
    /// (invariant 4).
    pub(crate) unsafe fn work_next(&self) -> *const Link {
        // SAFETY: the caller owns the free links (invariant 4).
        self.next.with(|p| unsafe { *p })
    }

    /// Sets the work-list successor of an unlinked element.
    ///
    /// # Safety
    /// As [`Link::work_next`].
    pub(crate) unsafe fn set_work_next(&self, next: *const Link) {
        // SAFETY: the caller owns the free links (invariant 4).
        self.next.with_mut(|p| unsafe { *p = next });
    }
}

/// The head of an intrusive list.
#[derive(Debug)]
pub(crate) struct List {
    /// # Safety
    /// Guarded by the owner lock (invariant 1).
    head: UnsafeCell<*const Link>,
}

// SAFETY: (invariant 1) all access happens under the owner lock.
unsafe impl Send for List {}
// SAFETY: (invariant 1) all access happens under the owner lock.
unsafe impl Sync for List {}

impl List {
    #[cfg(not(loom))]
    pub(crate) const fn new() -> Self {
        List {
            head: UnsafeCell::new(ptr::null()),
        }
    }

    #[cfg(loom)]
    pub(crate) fn new() -> Self {
        List {
            head: UnsafeCell::new(ptr::null()),
        }
    }

    /// The `prev` of the first element: the head's own address (invariant 3).
    fn sentinel(&self) -> *const Link {
        self as *const List as *const Link
    }

    /// Whether the list is empty.
    ///
    /// # Safety
    /// The caller holds the owner lock (invariant 1).
    pub(crate) unsafe fn is_empty(&self) -> bool {
        // SAFETY: the caller holds the owner lock (invariant 1).
        self.head.with(|p| unsafe { (*p).is_null() })
    }

    /// The head word of a list that is empty for good, read as a spare
    /// pointer: node/mod.rs invariant 17 threads its pending list through the
    /// `children` head of done scoped nodes (never used again once a node is
    /// done and drained, node/mod.rs invariant 3).
    ///
    /// # Safety
    /// The list is empty for good, and the caller holds the lock that the
    /// reuse names (node/mod.rs invariant 17).
    pub(crate) unsafe fn spare(&self) -> *const () {
        // SAFETY: forwarded from the caller.
        self.head.with(|p| unsafe { *p }) as *const ()
    }

    /// Writes the spare head word (see [`spare`](Self::spare)); null makes
    /// the list empty again.
    ///
    /// # Safety
    /// As for [`spare`](Self::spare).
    pub(crate) unsafe fn set_spare(&self, word: *const ()) {
        // SAFETY: forwarded from the caller.
        self.head.with_mut(|p| unsafe { *p = word as *const Link });
    }

    /// Adds `elem` at the front.
    ///
    /// # Safety
    /// The caller holds the owner lock (invariant 1); `elem` is valid, pinned
    /// until unlinked (invariant 2) and not linked (invariant 3).
    pub(crate) unsafe fn push(&self, elem: *const Link) {
        // SAFETY: the caller guarantees `elem` is valid and unlinked, and holds
        // the owner lock that guards the head and every element (invariant 1).
        unsafe {
            let e = &*elem;
            debug_assert!(!e.is_linked());
            let head = self.head.with(|p| *p);
            e.prev.with_mut(|p| *p = self.sentinel());
            e.next.with_mut(|p| *p = head);
            if !head.is_null() {
                (*head).prev.with_mut(|p| *p = elem);
            }
            self.head.with_mut(|p| *p = elem);
        }
    }

    /// The first element, or null (to walk the list with [`List::next`]).
    ///
    /// # Safety
    /// The caller holds the owner lock (invariant 1).
    pub(crate) unsafe fn first(&self) -> *const Link {
        // SAFETY: the caller holds the owner lock (invariant 1).
        self.head.with(|p| unsafe { *p })
    }

    /// The element after `elem` in this list, or null.
    ///
    /// # Safety
    /// The caller holds the owner lock (invariant 1) and `elem` is linked in
    /// this list.
    pub(crate) unsafe fn next(&self, elem: *const Link) -> *const Link {
        // SAFETY: `elem` is a valid, linked element (invariants 1-3).
        unsafe { (*elem).next.with(|p| *p) }
    }

    /// Removes and returns the first element, or null.
    ///
    /// # Safety
    /// The caller holds the owner lock (invariant 1).
    pub(crate) unsafe fn pop_front(&self) -> *const Link {
        // SAFETY: the caller holds the owner lock (invariant 1); a non-null
        // head is a linked, valid element (invariants 2, 3).
        unsafe {
            let head = self.head.with(|p| *p);
            if !head.is_null() {
                self.remove(head);
            }
            head
        }
    }

    /// Unlinks `elem` from this list.
    ///
    /// # Safety
    /// The caller holds the owner lock (invariant 1) and `elem` is linked in
    /// *this* list (invariant 3).
    pub(crate) unsafe fn remove(&self, elem: *const Link) {
        // SAFETY: the caller holds the owner lock and `elem` is in this list,
        // so it and its neighbours are valid (invariants 1-3).
        unsafe {
            let e = &*elem;
            debug_assert!(e.is_linked());
            let prev = e.prev.with(|p| *p);
            let next = e.next.with(|p| *p);
            if prev == self.sentinel() {
                self.head.with_mut(|p| *p = next);
            } else {
                (*prev).next.with_mut(|p| *p = next);
            }
            if !next.is_null() {
                (*next).prev.with_mut(|p| *p = prev);
            }
            e.prev.with_mut(|p| *p = ptr::null());
            e.next.with_mut(|p| *p = ptr::null());
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[repr(C)]
    struct Elem {
        link: Link,
        value: u32,
    }

    fn elem(v: u32) -> Elem {
        Elem {
            link: Link::new(),
            value: v,
        }
    }

    /// The element's link, with the provenance of the whole element (so the
    /// list's pointer can be cast back to `Elem`, as the core does).
    fn l(e: &Elem) -> *const Link {
        e as *const Elem as *const Link
    }

    unsafe fn collect(list: &List) -> std::vec::Vec<u32> {
        let mut out = std::vec::Vec::new();
        // SAFETY: test is single threaded; elements outlive the list use.
        unsafe {
            let mut cur = list.head.with(|p| *p);
            while !cur.is_null() {
                out.push((*(cur as *const Elem)).value);
                cur = (*cur).next.with(|p| *p);
            }
        }
        out
    }

    #[test]
    fn push_pop_remove_keep_lifo_order() {
        let list = List::new();
        let (a, b, c, d) = (elem(1), elem(2), elem(3), elem(4));
        // SAFETY: single-threaded test; every element outlives its membership.
        unsafe {
            assert!(list.is_empty());
            for e in [&a, &b, &c, &d] {
                list.push(l(e));
            }
            assert_eq!(collect(&list), [4, 3, 2, 1]);
            list.remove(l(&c));
            assert!(!c.link.is_linked());
            assert_eq!(collect(&list), [4, 2, 1]);
            list.remove(l(&a));
            assert_eq!(collect(&list), [4, 2]);
            list.remove(l(&d));
            assert_eq!(collect(&list), [2]);
            list.push(l(&c));
            assert_eq!(collect(&list), [3, 2]);
            let first = list.pop_front();
            assert_eq!((*(first as *const Elem)).value, 3);
            assert!(!c.link.is_linked());
            assert_eq!(list.pop_front(), l(&b));
            assert!(list.pop_front().is_null());
            assert!(list.is_empty());
        }
    }

    #[test]
    fn matches_vecdeque_model() {
        use std::collections::VecDeque;
        let elems: std::vec::Vec<Elem> = (0..16).map(elem).collect();
        let list = List::new();
        let mut model: VecDeque<u32> = VecDeque::new();
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        for _ in 0..2000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let i = (seed % 16) as usize;
            // SAFETY: single-threaded; `elems` outlives the list.
            unsafe {
                match (seed >> 8) % 3 {
                    0 if !elems[i].link.is_linked() => {
                        list.push(l(&elems[i]));
                        model.push_front(i as u32);
                    }
                    1 if elems[i].link.is_linked() => {
                        list.remove(l(&elems[i]));
                        model.retain(|&v| v != i as u32);
                    }
                    2 => {
                        let p = list.pop_front();
                        let m = model.pop_front();
                        assert_eq!(m, (!p.is_null()).then(|| (*(p as *const Elem)).value));
                    }
                    _ => {}
                }
                assert_eq!(collect(&list), model.iter().copied().collect::<std::vec::Vec<_>>());
            }
        }
    }
}
