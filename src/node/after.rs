//! After-funcs (feature `alloc`): a callback entry in a node's waiter list.
//!
//! Maintains: 8 (the entry, its callback slot and the list's reference
//! belong to whoever unlinked it). Relies on: 9 (a canceller runs it last,
//! holding no node).

use super::*;

/// A registered after-func: an entry in a node's `waiters` list.
#[cfg(feature = "alloc")]
#[repr(C)]
pub(crate) struct AfterFuncInner {
    pub(super) entry: Entry,
    /// The callback, until it runs or is stopped.
    ///
    /// # Safety
    /// Guarded by the lock of `node` while the entry is linked (invariant
    /// 1); after that, owned by whoever unlinked it (invariant 8).
    pub(super) func: UnsafeCell<Option<Box<dyn FnOnce() + Send>>>,
    pub(super) node: NodeRef,
}

// SAFETY: `func` is guarded by the node's lock; the entry is otherwise
// immutable.
#[cfg(feature = "alloc")]
unsafe impl Send for AfterFuncInner {}

// SAFETY: as for `Send`.
#[cfg(feature = "alloc")]
unsafe impl Sync for AfterFuncInner {}

#[cfg(feature = "alloc")]
impl AfterFuncInner {
    /// Registers `f` to run once `node` is done; runs it at once (on this
    /// thread) if it already is, and returns `None` then.
    pub(crate) fn register(node: &NodeRef, f: Box<dyn FnOnce() + Send>) -> Option<Arc<AfterFuncInner>> {
        if node.node().is_done() {
            f();
            return None;
        }
        let inner = Arc::new(AfterFuncInner {
            entry: Entry::new(EntryKind::AfterFunc),
            func: UnsafeCell::new(Some(f)),
            node: node.clone(),
        });
        let n = node.node();
        let guard = n.lock.lock();
        if n.is_done_flag() {
            drop(guard);
            // SAFETY: not linked, so nobody else can see `func`.
            let f = inner.func.with_mut(|p| unsafe { (*p).take() });
            drop(inner);
            if let Some(f) = f {
                f();
            }
            return None;
        }
        let list_ref = Arc::into_raw(inner.clone());
        // SAFETY: we hold the lock; the entry is pinned in its `Arc`, and the
        // list now owns the reference `list_ref` (invariant 8).
        unsafe {
            n.waiters.push(list_ref as *const Link);
            n.add_callbacks(1);
        }
        drop(guard);
        Some(inner)
    }

    /// Stops the after-func; true iff this call kept it from running.
    pub(crate) fn stop(this: &Arc<AfterFuncInner>) -> bool {
        let n = this.node.node();
        let guard = n.lock.lock();
        // A linked entry has not been taken by a canceller: unlinking it
        // makes its func and the list's reference ours (invariant 8).
        // SAFETY: we hold the lock (invariant 1).
        let taken = unsafe {
            if this.entry.link.is_linked() {
                n.waiters.remove(&this.entry.link);
                n.add_callbacks(-1);
                let f = this.func.with_mut(|p| (*p).take());
                Some((f, Arc::from_raw(Arc::as_ptr(this))))
            } else {
                None
            }
        };
        drop(guard);
        taken.is_some()
    }
}
