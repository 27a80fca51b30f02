//! Where heap nodes come from and go to: a small per-thread cache of freed
//! node blocks in front of the global allocator (feature `std`).
//!
//! A request handler creates a few contexts and drops them again, on the
//! same thread, over and over. The global allocator's round trip for one
//! 104-byte block costs about 19 ns on the benchmark machine
//! (`floor_box_alloc` in `docs/benchmarks.md`), a third of a whole child
//! create + drop; taking a block from this cache and giving it back costs a
//! few loads and stores. The cache keeps at most [`CAPACITY`] blocks per
//! thread (under a kilobyte), gives them back to the allocator when the
//! thread exits, and can be emptied at any time with
//! [`trim_node_cache`](crate::trim_node_cache).
//!
//! Every node is still exactly one block of `Layout::new::<Node>()`: the
//! cache only decides whether that block is fresh from the allocator or
//! recycled. Blocks move freely between threads with their nodes: a node
//! freed on another thread than the one that made it goes to the freeing
//! thread's cache (or, if that is full, back to the allocator).
//!
//! Without `std` (no thread-locals) and under loom, nodes come straight
//! from the global allocator.
//!
//! # Invariants
//!
//! 1. **Blocks.** Every block in a cache was allocated by the global
//!    allocator with [`LAYOUT`], holds no value (its node was dropped in
//!    place before it came in), and is reachable from nothing but its
//!    cache's `head` chain. Its first word is a [`Free`] link to the next
//!    block.
//! 2. **Thread-owned.** A cache is a thread-local: only its thread touches
//!    `head` and `len`, and no user code runs while a cache operation is in
//!    progress (a node's drop glue runs before its block is pushed, outside
//!    the thread-local access), so a push or pop is never re-entered.

use crate::node::Node;
use core::ptr::NonNull;

#[cfg(all(feature = "std", not(loom)))]
pub(crate) use cached::{alloc_node, free_node, trim};
#[cfg(not(all(feature = "std", not(loom))))]
pub(crate) use direct::{alloc_node, free_node};

/// No cache: the global allocator for every node.
#[cfg(not(all(feature = "std", not(loom))))]
mod direct {
    use super::*;
    use alloc::boxed::Box;

    /// Moves `node` into a new heap block.
    pub(crate) fn alloc_node(node: Node) -> NonNull<Node> {
        NonNull::from(Box::leak(Box::new(node)))
    }

    /// Drops the node and frees its block.
    ///
    /// # Safety
    /// `p` came from [`alloc_node`] and nothing refers to it any more.
    pub(crate) unsafe fn free_node(p: NonNull<Node>) {
        // SAFETY: `alloc_node` made it with `Box`; the caller gives it up.
        drop(unsafe { Box::from_raw(p.as_ptr()) });
    }
}

#[cfg(all(feature = "std", not(loom)))]
mod cached {
    use super::*;
    use core::alloc::Layout;
    use core::cell::Cell;
    use core::ptr;
    use std::alloc::{alloc, dealloc, handle_alloc_error};

    /// The one layout of every heap node.
    const LAYOUT: Layout = Layout::new::<Node>();

    /// Blocks kept per thread: enough for a handler's nested contexts
    /// (create a few, drop them all, repeat), small enough not to matter
    /// (8 × 104 bytes on 64-bit targets).
    pub(crate) const CAPACITY: usize = 8;

    /// The first word of a cached block (invariant 1).
    struct Free {
        next: *mut Free,
    }

    // A block can hold a `Free` link.
    const _: () = assert!(LAYOUT.size() >= core::mem::size_of::<Free>());
    const _: () = assert!(LAYOUT.align() >= core::mem::align_of::<Free>());

    struct Cache {
        head: Cell<*mut Free>,
        len: Cell<usize>,
    }

    impl Cache {
        fn pop(&self) -> Option<NonNull<Node>> {
            let top = NonNull::new(self.head.get())?;
            // SAFETY: a cached block starts with its `Free` link and only
            // this thread touches the chain (invariants 1, 2).
            self.head.set(unsafe { (*top.as_ptr()).next });
            self.len.set(self.len.get() - 1);
            Some(top.cast())
        }

        /// Keeps the block if there is room; gives it back otherwise.
        ///
        /// # Safety
        /// `block` is a block of [`LAYOUT`] from the global allocator that
        /// holds no value and that nothing else refers to.
        unsafe fn push(&self, block: NonNull<Node>) -> bool {
            if self.len.get() >= CAPACITY {
                return false;
            }
            let free = block.cast::<Free>().as_ptr();
            // SAFETY: the block is ours, large and aligned enough for a
            // `Free` (the asserts above), and holds no value (invariant 1).
            unsafe { free.write(Free { next: self.head.get() }) };
            self.head.set(free);
            self.len.set(self.len.get() + 1);
            true
        }

        fn trim(&self) {
            while let Some(block) = self.pop() {
                // SAFETY: cached blocks came from the global allocator with
                // `LAYOUT` and are referred to by nothing else (invariant 1).
                unsafe { dealloc(block.as_ptr().cast(), LAYOUT) };
            }
        }
    }

    impl Drop for Cache {
        fn drop(&mut self) {
            self.trim();
        }
    }

    std::thread_local! {
        static CACHE: Cache = const {
            Cache {
                head: Cell::new(ptr::null_mut()),
                len: Cell::new(0),
            }
        };
    }

    /// Moves `node` into a block, from this thread's cache if it has one.
    #[inline]
    pub(crate) fn alloc_node(node: Node) -> NonNull<Node> {
        // `try_with`: while the thread's locals are torn down the cache is
        // gone and blocks come from the allocator.
        let block = match CACHE.try_with(Cache::pop) {
            Ok(Some(block)) => block,
            _ => {
                // SAFETY: `LAYOUT` has a non-zero size (it holds a `Free`).
                let p = unsafe { alloc(LAYOUT) };
                match NonNull::new(p) {
                    Some(p) => p.cast(),
                    None => handle_alloc_error(LAYOUT),
                }
            }
        };
        // SAFETY: the block is ours, of `Node`'s layout, and holds no value
        // (invariant 1, or fresh from the allocator).
        unsafe { block.as_ptr().write(node) };
        block
    }

    /// Drops the node in place, then keeps its block in this thread's cache
    /// or frees it.
    ///
    /// # Safety
    /// `p` came from [`alloc_node`] and nothing refers to it any more.
    #[inline]
    pub(crate) unsafe fn free_node(p: NonNull<Node>) {
        // The node's drop glue (its cause: user data) runs before the cache
        // is touched, so it may free nodes itself (invariant 2).
        // SAFETY: the caller gives the node up; it is valid until here.
        unsafe { ptr::drop_in_place(p.as_ptr()) };
        // SAFETY: the block came from `alloc_node` (so from the allocator
        // with `LAYOUT`), holds no value now and is referred to by nothing.
        let kept = CACHE.try_with(|c| unsafe { c.push(p) }).unwrap_or(false);
        if !kept {
            // SAFETY: as above.
            unsafe { dealloc(p.as_ptr().cast(), LAYOUT) };
        }
    }

    /// Frees every block in this thread's cache.
    pub(crate) fn trim() {
        let _ = CACHE.try_with(Cache::trim);
    }

    /// Blocks in this thread's cache.
    #[cfg(test)]
    pub(crate) fn len() -> usize {
        CACHE.with(|c| c.len.get())
    }
}

#[cfg(all(test, feature = "std", not(loom)))]
mod tests {
    use super::cached::{len, trim, CAPACITY};
    use crate::Context;
    use std::vec::Vec;

    #[test]
    fn a_freed_block_is_reused_on_the_same_thread() {
        trim();
        let (c, h) = Context::background().with_cancel();
        let addr = c.node_addr();
        drop((c, h));
        assert_eq!(len(), 1);
        let (c, _h) = Context::background().with_cancel();
        assert_eq!(c.node_addr(), addr, "the cached block is handed out again");
        assert_eq!(len(), 0);
    }

    #[test]
    fn the_cache_keeps_at_most_its_capacity_and_trims_to_nothing() {
        trim();
        let many: Vec<_> = (0..CAPACITY + 5).map(|_| Context::background().with_cancel()).collect();
        drop(many);
        assert_eq!(len(), CAPACITY);
        trim();
        assert_eq!(len(), 0);
        crate::trim_node_cache();
        assert_eq!(len(), 0);
    }

    #[test]
    fn a_node_freed_on_another_thread_goes_to_that_threads_cache() {
        trim();
        let (parent, ph) = Context::background().with_cancel();
        let (child, h) = parent.with_cancel();
        let addr = child.node_addr();
        std::thread::spawn(move || {
            assert_eq!(len(), 0);
            drop((child, h));
            assert_eq!(len(), 1);
            let (again, _h) = Context::background().with_cancel();
            assert_eq!(again.node_addr(), addr);
            drop(again);
            // The thread exits with a block cached: its destructor frees it
            // (Miri reports a leak otherwise).
        })
        .join()
        .unwrap();
        assert_eq!(len(), 0);
        drop((parent, ph));
        assert_eq!(len(), 1);
        trim();
    }

    #[test]
    fn causes_are_dropped_before_the_block_is_cached() {
        use core::sync::atomic::{AtomicUsize, Ordering};
        static DROPS: AtomicUsize = AtomicUsize::new(0);
        #[derive(Debug)]
        struct Loud;
        impl core::fmt::Display for Loud {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.write_str("loud")
            }
        }
        impl core::error::Error for Loud {}
        impl Drop for Loud {
            fn drop(&mut self) {
                DROPS.fetch_add(1, Ordering::SeqCst);
                // User code in a cause's drop may make and drop contexts
                // (the cache is not in use while it runs: invariant 2).
                drop(Context::background().with_cancel());
            }
        }
        trim();
        let (c, h) = Context::background().with_cancel();
        h.cancel_with(Loud);
        drop((c, h));
        assert_eq!(DROPS.load(Ordering::SeqCst), 1);
        assert!(len() >= 1);
        trim();
    }
}
