//! The canceller's scratch state: the wake [`Batch`] (user code is collected
//! under locks and run after them, invariant 9), the [`WorkList`] of held
//! nodes still to process (invariant 6) and the [`RunList`] of after-funcs
//! (invariants 8, 9), all intrusive or fixed-size: a cancellation allocates
//! nothing.
//!
//! Maintains: 9 (every piece of user code goes through [`Batch::call`],
//! caught with `std`). Relies on: 6 (a work list owns its nodes' free
//! links), 8 (a popped after-func entry is the run list's).

use super::*;

/// Deferred work to run with no lock held (invariant 9): a waker to wake.
pub(super) type Task = Waker;

/// Wakers taken per lock section. Measured (`benches/versus.rs`, `wake_100`
/// and `wake_1000`): 8 and 16 are 15-20% faster than 32 and 64 (the batch's
/// slots stay hot), and 16 needs half the lock round trips of 8; 256 bytes
/// of stack suits small targets too.
#[cfg(not(loom))]
pub(super) const BATCH: usize = 16;

/// Under loom the batch is small, so that models with a few waiters reach
/// the paths of a full batch (`later`, the pending list: invariant 17).
#[cfg(loom)]
pub(super) const BATCH: usize = 2;

/// Levels a canceller descends hand over hand before it hands the rest of a
/// chain to the work list (invariant 13): one unbroken lock section (with
/// `critical-section`, interrupts masked) per this many levels, not per chain.
pub(super) const DESCENT_MAX: u32 = 16;

/// Up to 32 tasks collected under a lock and run after it is dropped.
pub(super) struct Batch {
    /// `tasks[..len]` are initialised; the rest are not (no cost to set up
    /// a batch on every cancel).
    pub(super) tasks: [MaybeUninit<Task>; BATCH],
    pub(super) len: usize,
    /// The first panic of a waker or after-func, re-raised once the whole
    /// cancellation is finished (so a panicking callback can neither leave a
    /// done parent with live children nor drop other callbacks unrun).
    #[cfg(feature = "std")]
    pub(super) panic: Option<Box<dyn core::any::Any + Send + 'static>>,
}

impl Batch {
    pub(super) fn new() -> Self {
        Batch {
            tasks: [const { MaybeUninit::uninit() }; BATCH],
            len: 0,
            #[cfg(feature = "std")]
            panic: None,
        }
    }

    pub(super) fn is_full(&self) -> bool {
        self.len == BATCH
    }

    pub(super) fn push(&mut self, task: Task) {
        debug_assert!(!self.is_full());
        self.tasks[self.len].write(task);
        self.len += 1;
    }

    /// Takes the initialised tasks out, leaving the batch empty.
    pub(super) fn take(&mut self, i: usize) -> Task {
        // Callers read each of the first `len` slots exactly once,
        // after setting `len` to zero, so every slot read is initialised and
        // never read again.
        // SAFETY: as argued above.
        unsafe { self.tasks[i].assume_init_read() }
    }

    /// Runs every task. Must be called with no lock held (invariant 9).
    pub(super) fn run(&mut self) {
        let n = core::mem::replace(&mut self.len, 0);
        for i in 0..n {
            let w = self.take(i);
            self.call(|| w.wake());
        }
    }
}

impl Batch {
    /// Runs user code (a waker or an after-func): with `std`, a panic is
    /// caught and kept, to be re-raised by `finish` once the whole
    /// cancellation is done.
    pub(super) fn call(&mut self, f: impl FnOnce()) {
        #[cfg(feature = "std")]
        if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            self.panic.get_or_insert(p);
        }
        #[cfg(not(feature = "std"))]
        f()
    }

    /// Re-raises the first panic of user code, once everything is done,
    /// unless this thread is already unwinding (a cancel from a `Drop`
    /// during a panic): a second panic would abort, so the payload is
    /// leaked instead. (By reference: moving the batch would cost a copy.)
    pub(super) fn finish(&mut self) {
        #[cfg(feature = "std")]
        if let Some(p) = self.panic.take() {
            if !std::thread::panicking() {
                std::panic::resume_unwind(p);
            }
            // Already unwinding: the payload's `Drop` is user code too, and a
            // second panic would abort; leak it instead.
            core::mem::forget(p);
        }
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        // Wakers are left only while unwinding (without `std`): still wake
        // them so nobody waits forever.
        let n = core::mem::replace(&mut self.len, 0);
        for i in 0..n {
            self.take(i).wake();
        }
    }
}

/// Retained nodes still to cancel, threaded through their free links
/// (invariant 6).
pub(super) struct WorkList {
    pub(super) head: *const Node,
}

/// After-func entries popped from waiter lists, threaded through their free
/// links (list.rs invariant 4), each carrying the list's `Arc` reference.
/// They run only at the very end of a cancellation, after every node
/// reference the canceller held is released: an after-func may then drop a
/// `ScopedContext` of this tree without waiting on this very thread.
pub(super) struct RunList {
    #[cfg(feature = "alloc")]
    pub(super) head: *const AfterFuncInner,
}

impl RunList {
    pub(super) fn new() -> Self {
        RunList {
            #[cfg(feature = "alloc")]
            head: ptr::null(),
        }
    }

    /// # Safety
    /// `entry` was just unlinked by the caller, who passes on the list's
    /// reference to it (invariant 8).
    #[cfg(feature = "alloc")]
    pub(super) unsafe fn push(&mut self, entry: *const AfterFuncInner) {
        // SAFETY: the caller owns the entry's free link (list invariant 4).
        unsafe { (*entry).entry.link.set_work_next(self.head as *const Link) };
        self.head = entry;
    }

    /// Runs every after-func (no lock held, no node retained).
    pub(super) fn run(&mut self, batch: &mut Batch) {
        #[cfg(feature = "alloc")]
        while !self.head.is_null() {
            let e = self.head;
            // SAFETY: we own the free link and the list's reference of every
            // entry in the run list (invariant 8).
            let entry = unsafe {
                self.head = (*e).entry.link.work_next() as *const AfterFuncInner;
                Arc::from_raw(e)
            };
            // SAFETY: the entry is unlinked, so its func slot is ours alone
            // (invariant 8: `stop` only touches a linked entry's func).
            let f = entry.func.with_mut(|p| unsafe { (*p).take() });
            // A `stop` since we popped it wins: the callback is dropped
            // unrun. Otherwise it is `AF_RUNNING` until it returns, and a
            // `stop_and_wait` waits for that. The entry (and through it a
            // heap node, which blocks nobody) is held meanwhile.
            if entry.begin_run() {
                if let Some(f) = f {
                    #[cfg(feature = "std")]
                    let entry_ptr = Arc::as_ptr(&entry) as *const ();
                    #[cfg(feature = "std")]
                    batch.call(|| crate::after::Running::within(entry_ptr, f));
                    #[cfg(not(feature = "std"))]
                    batch.call(f);
                }
                if let Some(w) = entry.end_run() {
                    batch.call(|| w.wake());
                }
            } else {
                batch.call(|| drop(f));
            }
            // A last reference frees the entry and may free its node.
            batch.call(|| drop(entry));
        }
        let _ = batch;
    }
}

impl RunList {
    /// Whether there is nothing to run.
    pub(super) fn is_empty(&self) -> bool {
        #[cfg(feature = "alloc")]
        {
            self.head.is_null()
        }
        #[cfg(not(feature = "alloc"))]
        true
    }
}

/// After-funcs of a cancellation, handed to the after-func spawner instead
/// of running on the thread that noticed a deadline (see
/// [`set_after_func_spawner`](crate::set_after_func_spawner)). Run them with
/// [`run`](Self::run), on whatever thread or task suits; dropping it runs
/// them too, so that no callback is lost.
#[cfg(feature = "alloc")]
pub struct AfterFuncs {
    list: RunList,
}

#[cfg(feature = "alloc")]
// The list holds `Arc` references to after-func entries, which are
// `Send + Sync` (their callbacks are `Send`), and nothing else (invariant 8:
// the entries are unlinked and their free links belong to this list).
// SAFETY: as argued above (invariant 8).
unsafe impl Send for AfterFuncs {}

#[cfg(feature = "alloc")]
impl AfterFuncs {
    pub(super) fn new(list: RunList) -> Self {
        AfterFuncs { list }
    }

    /// Runs every callback, in the order the cancellation found them. With
    /// `std`, a panicking one does not stop the others; the first panic is
    /// re-raised at the end.
    pub fn run(mut self) {
        let mut batch = Batch::new();
        self.list.run(&mut batch);
        batch.finish();
    }
}

#[cfg(feature = "alloc")]
impl core::fmt::Debug for AfterFuncs {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("AfterFuncs").finish_non_exhaustive()
    }
}

#[cfg(feature = "alloc")]
impl Drop for AfterFuncs {
    fn drop(&mut self) {
        // Not run by the spawner: run them here rather than lose them.
        let mut batch = Batch::new();
        self.list.run(&mut batch);
        batch.finish();
    }
}

impl Drop for RunList {
    fn drop(&mut self) {
        // Only reached with entries left while unwinding without `std`:
        // give back their references without running user code.
        #[cfg(feature = "alloc")]
        while !self.head.is_null() {
            let e = self.head;
            // SAFETY: as in `run`.
            unsafe {
                self.head = (*e).entry.link.work_next() as *const AfterFuncInner;
                drop(Arc::from_raw(e));
            }
        }
    }
}

impl WorkList {
    pub(super) fn new() -> Self {
        WorkList { head: ptr::null() }
    }

    pub(super) fn push(&mut self, node: *const Node) {
        // SAFETY: the caller owns `node`'s free link and a reference
        // (invariant 6).
        unsafe { (*node).link.set_work_next(self.head as *const Link) };
        self.head = node;
    }

    pub(super) fn pop(&mut self) -> Option<*const Node> {
        let n = self.head;
        if n.is_null() {
            return None;
        }
        // SAFETY: `n` is in this work list, so we own its free link
        // (invariant 6).
        self.head = unsafe { (*n).link.work_next() } as *const Node;
        Some(n)
    }
}
