//! After-funcs: callbacks that run once a context is done.

pub use crate::node::AfterFuncs;
use crate::node::{AfterFuncInner, AF_RAN, AF_RUNNING, AF_STOPPED};
use crate::sync::{AtomicBool, Ordering};
use crate::Arc;
use core::fmt;
use core::future::Future;
use core::pin::Pin;
use core::task::{Context as TaskContext, Poll};

/// A callback registered with [`Context::after_func`](crate::Context::after_func).
///
/// The callback runs once, after every lock is released: on the thread that
/// cancels the context explicitly (`cancel`, a dropped handle), or, for a
/// deadline, off the thread that noticed it — a read (`is_done`, `err`, a
/// `done()` poll) never runs it, nor does the std timer's thread: they hand
/// it to the after-func spawner ([`set_after_func_spawner`]; by default a
/// thread of its own with `std`), as Go runs each `AfterFunc` in a goroutine
/// of its own. Timers that fire from an executor or a virtual clock
/// (`TokioTimer`, `ManualClock::advance`) run it where they fire, after the
/// wakers, unless they say otherwise
/// ([`Timer::hands_off_after_funcs`](crate::Timer::hands_off_after_funcs)). Dropping an `AfterFunc` does **not** stop it (as in Go); turn it
/// into a [`guard`](Self::guard) for a callback scoped to a block, which is
/// stopped — and waited for, if it is running — when the guard drops.
///
/// [`try_stop`](Self::try_stop) tells apart a callback it stopped, one that
/// is running now and one that ran; [`stop_and_wait`](Self::stop_and_wait)
/// (and its async form [`stop_wait`](Self::stop_wait)) also waits for a
/// running one to return. After either returns, the callback is not running
/// and never will be — what a pooled resource needs before its next user
/// (a late interrupt from a finished request must not hit the next query).
///
/// ```
/// use ctxcore::Context;
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use std::sync::Arc;
///
/// let runs = Arc::new(AtomicUsize::new(0));
/// let (ctx, handle) = Context::background().with_cancel();
/// let r = runs.clone();
/// let stopped = ctx.after_func(move || { r.fetch_add(1, Ordering::SeqCst); });
/// let r = runs.clone();
/// let _kept = ctx.after_func(move || { r.fetch_add(10, Ordering::SeqCst); });
/// assert!(stopped.stop());   // prevented it from running
/// assert!(!stopped.stop());  // already stopped
/// handle.cancel();
/// assert_eq!(runs.load(Ordering::SeqCst), 10);
/// ```
pub struct AfterFunc {
    state: State,
}

enum State {
    /// Registered on a node.
    Registered(Arc<AfterFuncInner>),
    /// The context was already done: the callback ran during registration.
    Ran,
    /// The context can never be done: the callback was dropped unrun; the flag
    /// records whether `stop` was called.
    Never(AtomicBool),
}

impl AfterFunc {
    pub(crate) fn registered(inner: Option<Arc<AfterFuncInner>>) -> Self {
        match inner {
            Some(i) => AfterFunc {
                state: State::Registered(i),
            },
            None => AfterFunc { state: State::Ran },
        }
    }

    pub(crate) fn never() -> Self {
        AfterFunc {
            state: State::Never(AtomicBool::new(false)),
        }
    }

    /// Stops the callback from running. Returns true iff this call prevented
    /// it from running (false if it already ran or started, or was already
    /// stopped). May be called any number of times, from any thread.
    ///
    /// Unlike Go, where `stop` returns false as soon as the context is done,
    /// a callback that a canceller has taken but not started yet can still
    /// be stopped here; either way the answer tells the truth.
    pub fn stop(&self) -> bool {
        self.try_stop() == StopOutcome::Stopped
    }

    /// Stops the callback if it has not started, and says what it found.
    /// Never waits.
    ///
    /// ```
    /// use ctxcore::{Context, StopOutcome};
    ///
    /// let (ctx, handle) = Context::background().with_cancel();
    /// let af = ctx.after_func(|| {});
    /// let ran = ctx.after_func(|| {});
    /// assert_eq!(af.try_stop(), StopOutcome::Stopped);
    /// assert_eq!(af.try_stop(), StopOutcome::AlreadyStopped);
    /// handle.cancel();
    /// assert_eq!(ran.try_stop(), StopOutcome::Ran);
    /// ```
    pub fn try_stop(&self) -> StopOutcome {
        match &self.state {
            State::Registered(inner) => StopOutcome::from_status(AfterFuncInner::stop(inner)),
            State::Ran => StopOutcome::Ran,
            State::Never(stopped) => {
                if stopped.swap(true, Ordering::AcqRel) {
                    StopOutcome::AlreadyStopped
                } else {
                    StopOutcome::Stopped
                }
            }
        }
    }

    /// Stops the callback, or, if it is running now, waits (blocking the
    /// thread) until it has returned. Returns [`StopOutcome::Ran`] after
    /// such a wait. Called from inside the callback itself (or from a
    /// callback it runs nested, by cancelling another context) it cannot
    /// wait for itself: it returns [`StopOutcome::Running`] at once. Two
    /// callbacks on two threads each waiting for the other deadlock, as two
    /// threads joining each other would.
    ///
    /// ```
    /// use ctxcore::{Context, StopOutcome};
    /// use std::sync::atomic::{AtomicBool, Ordering};
    /// use std::sync::Arc;
    ///
    /// let (ctx, handle) = Context::background().with_cancel();
    /// let busy = Arc::new(AtomicBool::new(false));
    /// let b = busy.clone();
    /// let af = ctx.after_func(move || {
    ///     b.store(true, Ordering::SeqCst);
    ///     std::thread::sleep(std::time::Duration::from_millis(20));
    ///     b.store(false, Ordering::SeqCst);
    /// });
    /// let t = std::thread::spawn(move || handle.cancel());
    /// let outcome = af.stop_and_wait();
    /// // Whatever happened, the callback is not running now, and never will be.
    /// assert!(!busy.load(Ordering::SeqCst));
    /// assert!(matches!(outcome, StopOutcome::Stopped | StopOutcome::Ran));
    /// t.join().unwrap();
    /// ```
    #[cfg(feature = "std")]
    pub fn stop_and_wait(&self) -> StopOutcome {
        let first = self.try_stop();
        if first != StopOutcome::Running {
            return first;
        }
        let State::Registered(inner) = &self.state else {
            return first;
        };
        if Running::is(Arc::as_ptr(inner) as *const ()) {
            return first;
        }
        block_on(Finished { inner })
    }

    /// The async form of [`stop_and_wait`](Self::stop_and_wait): a future
    /// that stops the callback on its first poll and, if it is running,
    /// completes once it has returned. No allocation; any executor.
    ///
    /// ```
    /// use ctxcore::{Context, StopOutcome};
    ///
    /// # futures::executor::block_on(async {
    /// let (ctx, _handle) = Context::background().with_cancel();
    /// let af = ctx.after_func(|| {});
    /// assert_eq!(af.stop_wait().await, StopOutcome::Stopped);
    /// # });
    /// ```
    pub fn stop_wait(&self) -> StopWait<'_> {
        StopWait {
            after: self,
            first: None,
        }
    }

    /// A guard that stops the callback when it drops — and, with `std`,
    /// waits for it if it is running ([`stop_and_wait`](Self::stop_and_wait);
    /// without `std`, [`stop`](Self::stop)). The callback is then scoped to
    /// the guard's life.
    ///
    /// ```
    /// use ctxcore::Context;
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    /// use std::sync::Arc;
    ///
    /// let (ctx, handle) = Context::background().with_cancel();
    /// let runs = Arc::new(AtomicUsize::new(0));
    /// {
    ///     let r = runs.clone();
    ///     let _interrupt = ctx.after_func(move || { r.fetch_add(1, Ordering::SeqCst); }).guard();
    ///     // ... the query runs here; a cancel now would interrupt it ...
    /// } // the query is over: the interrupt is stopped (or waited for)
    /// handle.cancel();
    /// assert_eq!(runs.load(Ordering::SeqCst), 0);
    /// ```
    pub fn guard(self) -> AfterFuncGuard {
        AfterFuncGuard { after: self }
    }
}

/// What [`AfterFunc::try_stop`] (and its waiting forms) found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StopOutcome {
    /// This call kept the callback from running: it never will.
    Stopped,
    /// An earlier stop kept it from running.
    AlreadyStopped,
    /// It is running now, on another thread (or, from inside the callback,
    /// on this one). The waiting forms never return this except from inside
    /// the callback.
    Running,
    /// It ran and returned (or ran at registration, the context being done
    /// already).
    Ran,
}

impl StopOutcome {
    fn from_status(s: u8) -> Self {
        match s {
            AF_STOPPED => StopOutcome::Stopped,
            AF_RUNNING => StopOutcome::Running,
            AF_RAN => StopOutcome::Ran,
            _ => StopOutcome::AlreadyStopped,
        }
    }
}

/// The future of [`AfterFunc::stop_wait`].
#[must_use = "futures do nothing unless polled"]
#[derive(Debug)]
pub struct StopWait<'a> {
    after: &'a AfterFunc,
    first: Option<StopOutcome>,
}

impl Future for StopWait<'_> {
    type Output = StopOutcome;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<StopOutcome> {
        let this = self.get_mut();
        let first = *this.first.get_or_insert_with(|| this.after.try_stop());
        if first != StopOutcome::Running {
            return Poll::Ready(first);
        }
        match &this.after.state {
            State::Registered(inner) => Finished { inner }.poll_inner(cx),
            _ => Poll::Ready(first),
        }
    }
}

/// Waits for a running callback to return.
struct Finished<'a> {
    inner: &'a Arc<AfterFuncInner>,
}

impl Finished<'_> {
    fn poll_inner(&self, cx: &mut TaskContext<'_>) -> Poll<StopOutcome> {
        self.inner.poll_finished(cx).map(|s| match s {
            AF_RUNNING => StopOutcome::Running,
            _ => StopOutcome::Ran,
        })
    }
}

impl Future for Finished<'_> {
    type Output = StopOutcome;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<StopOutcome> {
        self.poll_inner(cx)
    }
}

/// Blocks the thread on `fut` (parking between polls).
#[cfg(feature = "std")]
fn block_on<F: Future>(fut: F) -> F::Output {
    extern crate std;
    let waker = crate::done::thread_waker();
    let mut cx = TaskContext::from_waker(&waker);
    let mut fut = core::pin::pin!(fut);
    loop {
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park();
    }
}

/// Which after-funcs this thread is running (with `std`): the innermost,
/// and through `prev` every one it runs inside (an after-func that cancels
/// another context runs that context's after-funcs nested in its own). A
/// `stop_and_wait` on any of them cannot wait: its caller is inside it.
#[cfg(feature = "std")]
pub(crate) struct Running {
    entry: *const (),
    prev: *const Running,
}

#[cfg(feature = "std")]
std::thread_local! {
    static CURRENT: core::cell::Cell<*const Running> = const { core::cell::Cell::new(core::ptr::null()) };
}

#[cfg(feature = "std")]
impl Running {
    /// Marks `entry` as running on this thread while `f` runs.
    pub(crate) fn within<R>(entry: *const (), f: impl FnOnce() -> R) -> R {
        let prev = CURRENT.try_with(|c| c.get()).unwrap_or(core::ptr::null());
        let me = Running { entry, prev };
        let _ = CURRENT.try_with(|c| c.set(&me));
        // Restores the previous innermost one, even if `f` unwinds.
        struct Restore(*const Running);
        impl Drop for Restore {
            fn drop(&mut self) {
                let _ = CURRENT.try_with(|c| c.set(self.0));
            }
        }
        let _restore = Restore(prev);
        f()
    }

    fn is(entry: *const ()) -> bool {
        let mut cur = CURRENT.try_with(|c| c.get()).unwrap_or(core::ptr::null());
        while !cur.is_null() {
            // Every `Running` in the chain lives in a frame of
            // `within` below ours on this thread's stack, and unlinks itself
            // (through `Restore`) before that frame ends.
            // SAFETY: as argued above.
            let r = unsafe { &*cur };
            if core::ptr::eq(r.entry, entry) {
                return true;
            }
            cur = r.prev;
        }
        false
    }
}

/// An [`AfterFunc`] scoped to this guard's life: see [`AfterFunc::guard`].
#[must_use = "dropping the guard at once stops the callback at once"]
#[derive(Debug)]
pub struct AfterFuncGuard {
    after: AfterFunc,
}

impl AfterFuncGuard {
    /// The after-func, e.g. to [`try_stop`](AfterFunc::try_stop) it early.
    pub fn after_func(&self) -> &AfterFunc {
        &self.after
    }

    /// Gives up the guard: the callback stays registered, as a plain
    /// [`AfterFunc`].
    pub fn into_inner(self) -> AfterFunc {
        let this = core::mem::ManuallyDrop::new(self);
        // SAFETY: `this` is never dropped, so `after` is moved out once.
        unsafe { core::ptr::read(&this.after) }
    }
}

impl Drop for AfterFuncGuard {
    fn drop(&mut self) {
        #[cfg(feature = "std")]
        let _ = self.after.stop_and_wait();
        #[cfg(not(feature = "std"))]
        let _ = self.after.stop();
    }
}

impl fmt::Debug for AfterFunc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AfterFunc").finish_non_exhaustive()
    }
}

/// The installed after-func spawner, as a `fn(AfterFuncs)` (null: none).
/// A process-wide setting read with one load, not part of any protocol the
/// loom models explore, so a `core` atomic rather than `crate::sync`'s (a
/// loom atomic cannot live in a `static`); pointer-sized loads and stores
/// exist on every target the crate builds for, CAS or not.
static SPAWNER: core::sync::atomic::AtomicPtr<()> = core::sync::atomic::AtomicPtr::new(core::ptr::null_mut());

/// Installs where the after-funcs of a deadline go when they must not run on
/// the thread that noticed it: a read (`is_done`, `err`, `cause`, a `done()`
/// poll) that finds a deadline passed, or a timer that keeps user code off
/// its thread ([`Timer::hands_off_after_funcs`](crate::Timer::hands_off_after_funcs),
/// e.g. [`StdTimer`](crate::StdTimer)). Explicit cancels (`cancel`, a dropped
/// handle) still run them on the cancelling thread, as before.
///
/// Without a spawner, with `std`, each batch runs on a new thread (falling
/// back to the calling thread if one cannot be started); without `std`, on
/// the calling thread. A spawner must run (or drop: that runs them too) the
/// [`AfterFuncs`] it is given — on a thread pool, `tokio::task::spawn_blocking`,
/// an embassy task's queue. Process-wide; the last call wins.
///
/// ```
/// use ctxcore::{set_after_func_spawner, AfterFuncs};
///
/// fn on_a_thread(funcs: AfterFuncs) {
///     std::thread::spawn(move || funcs.run());
/// }
/// set_after_func_spawner(on_a_thread);
/// ```
pub fn set_after_func_spawner(spawn: fn(AfterFuncs)) {
    SPAWNER.store(spawn as *mut (), Ordering::Release);
}

/// Runs `funcs` where the installed spawner says (see
/// [`set_after_func_spawner`]).
pub(crate) fn hand_off(funcs: AfterFuncs) {
    let p = SPAWNER.load(Ordering::Acquire);
    if !p.is_null() {
        // SAFETY: only `set_after_func_spawner` stores here, and it stores a
        // `fn(AfterFuncs)`, which has the size and validity of a pointer.
        let spawn: fn(AfterFuncs) = unsafe { core::mem::transmute::<*mut (), fn(AfterFuncs)>(p) };
        spawn(funcs);
        return;
    }
    #[cfg(feature = "std")]
    {
        // If the thread cannot start, the closure is dropped with `funcs`,
        // whose `Drop` runs them here.
        let _ = std::thread::Builder::new()
            .name("ctxcore-after-func".into())
            .spawn(move || funcs.run());
    }
    #[cfg(not(feature = "std"))]
    funcs.run();
}
