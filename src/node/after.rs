//! After-funcs (feature `alloc`): a callback entry in a node's waiter list.
//!
//! Maintains: 8 (the entry, its callback slot and the list's reference
//! belong to whoever unlinked it), 20 (registering arms the deadline that
//! will run it). Relies on: 9 (a canceller runs it last, holding no node).

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
    /// Where the callback is: `AF_PENDING`, `AF_RUNNING`, `AF_RAN` or
    /// `AF_STOPPED`.
    ///
    /// # Safety
    /// Guarded by the lock of `node` (invariant 1).
    pub(super) status: UnsafeCell<u8>,
    /// A task waiting for the running callback to return
    /// ([`AfterFuncInner::poll_finished`]).
    ///
    /// # Safety
    /// Guarded by the lock of `node` (invariant 1).
    pub(super) finished: UnsafeCell<Option<Waker>>,
}

/// Not started: linked, or popped by a canceller that has not run it yet.
#[cfg(feature = "alloc")]
pub(crate) const AF_PENDING: u8 = 0;
/// A canceller is running the callback now.
#[cfg(feature = "alloc")]
pub(crate) const AF_RUNNING: u8 = 1;
/// The callback ran and returned (or panicked).
#[cfg(feature = "alloc")]
pub(crate) const AF_RAN: u8 = 2;
/// `stop` came first: the callback never runs.
#[cfg(feature = "alloc")]
pub(crate) const AF_STOPPED: u8 = 3;

#[cfg(feature = "alloc")]
// SAFETY: `func` is guarded by the node's lock; the entry is otherwise
// immutable.
unsafe impl Send for AfterFuncInner {}

#[cfg(feature = "alloc")]
// SAFETY: as for `Send`.
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
            status: UnsafeCell::new(AF_PENDING),
            finished: UnsafeCell::new(None),
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
        // We hold a reference to the node (`node`, invariant 5),
        // whose pointer is the allocation's (invariants 7, 20).
        // The deadline that will run `f` on time is armed now (invariant
        // 20); if it has passed, it fires here with the after-funcs handed
        // off, `f` among them: like a read, an `after_func` call never runs
        // a callback other than its own, and runs its own only if the
        // context was done before it was linked.
        // SAFETY: as argued above (invariants 5, 7, 20).
        unsafe { Node::arm_for_waiters(node.ptr) };
        Some(inner)
    }

    /// Stops the after-func. Returns what it found, as one of `AF_*`:
    /// `AF_STOPPED` if this call kept the callback from running (it was
    /// still linked, or popped by a canceller that had not started it: the
    /// canceller then drops it unrun), `AF_RUNNING` if a canceller is running
    /// it now, `AF_RAN` if it ran, and `u8::MAX` if an earlier stop kept it
    /// from running. The callback, if this call took it, is dropped after
    /// the lock (user code, invariant 9).
    pub(crate) fn stop(this: &Arc<AfterFuncInner>) -> u8 {
        let n = this.node.node();
        let guard = n.lock.lock();
        // We hold the lock (invariant 1), which guards the link,
        // the func slot of a linked entry and `status`.
        // A linked entry has not been taken by a canceller: unlinking it
        // makes its func and the list's reference ours (invariant 8).
        // SAFETY: as argued above (invariants 1, 8).
        let (found, taken) = unsafe {
            let status = this.status.with_mut(|p| &mut *p);
            if this.entry.link.is_linked() {
                n.waiters.remove(&this.entry.link);
                n.add_callbacks(-1);
                *status = AF_STOPPED;
                let f = this.func.with_mut(|p| (*p).take());
                (AF_STOPPED, Some((f, Arc::from_raw(Arc::as_ptr(this)))))
            } else if *status == AF_PENDING {
                // Popped, not started: the canceller finds `AF_STOPPED`
                // under this lock and drops the callback unrun.
                *status = AF_STOPPED;
                (AF_STOPPED, None)
            } else if *status == AF_STOPPED {
                (u8::MAX, None)
            } else {
                (*status, None)
            }
        };
        drop(guard);
        drop(taken);
        found
    }

    /// A canceller's claim, in phase 3, to run the callback it popped: true
    /// (and `AF_RUNNING`) unless a `stop` came first.
    pub(crate) fn begin_run(&self) -> bool {
        let n = self.node.node();
        let guard = n.lock.lock();
        // SAFETY: we hold the lock, which guards `status` (invariant 1).
        let run = self.status.with_mut(|p| unsafe {
            let run = *p == AF_PENDING;
            if run {
                *p = AF_RUNNING;
            }
            run
        });
        drop(guard);
        run
    }

    /// The canceller's end of a run: `AF_RAN`, and the waiting task's
    /// waker, to wake with no lock held.
    pub(crate) fn end_run(&self) -> Option<Waker> {
        let n = self.node.node();
        let guard = n.lock.lock();
        // SAFETY: we hold the lock, which guards both (invariant 1).
        let waker = unsafe {
            self.status.with_mut(|p| *p = AF_RAN);
            self.finished.with_mut(|p| (*p).take())
        };
        drop(guard);
        waker
    }

    /// Ready once the callback is not running (it ran, or never will);
    /// else registers `cx`'s waker. A second task waiting at the same time
    /// replaces the first's waker, which is woken to poll again (no wake-up
    /// is lost; two waiters take turns).
    pub(crate) fn poll_finished(&self, cx: &mut TaskContext<'_>) -> Poll<u8> {
        // Cloned before the lock: a waker's `clone` is user code (inv. 9).
        let mine = cx.waker().clone();
        let n = self.node.node();
        let guard = n.lock.lock();
        // SAFETY: we hold the lock, which guards both (invariant 1).
        let (status, old) = unsafe {
            let status = self.status.with(|p| *p);
            let old = if status == AF_RUNNING {
                self.finished.with_mut(|p| (*p).replace(mine))
            } else {
                Some(mine)
            };
            (status, old)
        };
        drop(guard);
        if status == AF_RUNNING {
            // Someone else's waker, replaced: let it poll again.
            if let Some(w) = old {
                // Ours from an earlier poll (`will_wake` can miss a clone of
                // the same waker whose vtable was instantiated twice: the
                // data pointer tells).
                let ours = w.will_wake(cx.waker()) || ptr::eq(w.data(), cx.waker().data());
                if !ours {
                    w.wake();
                }
            }
            Poll::Pending
        } else {
            drop(old);
            Poll::Ready(status)
        }
    }
}
