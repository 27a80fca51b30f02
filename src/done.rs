//! Waiting for a context: [`Done`], [`DoneOwned`], [`Run`],
//! [`RunWithCause`].

#[cfg(feature = "alloc")]
use crate::error::ContextError;
use crate::error::Error;
#[cfg(feature = "alloc")]
use crate::node::NodeRef;
use crate::node::{NodePtr, Waiter};
use core::fmt;
use core::future::Future;
use core::pin::Pin;
use core::task::{Context as TaskContext, Poll};
use futures_core::future::FusedFuture;

/// The future returned by [`Context::done`](crate::Context::done) and
/// [`ContextRef::done`](crate::ContextRef::done).
///
/// It embeds its waiter, so waiting allocates nothing; once polled it is
/// linked into the context's waiter list and must stay where it is, so it is
/// `!Unpin`:
///
/// ```compile_fail
/// fn assert_unpin<T: Unpin>(_: T) {}
/// let ctx = ctxcore::Context::background();
/// assert_unpin(ctx.done());
/// ```
///
/// Dropping a polled `Done` unlinks it from the context it borrows, so it
/// must be dropped while that context is alive; the borrow checker enforces
/// it. A `Done` moved out of the block that owns a heap [`Context`] does not
/// compile:
///
/// ```compile_fail,E0505
/// use core::future::Future;
/// use core::pin::Pin;
/// use core::task::{Context as TaskCx, Poll};
/// use ctxcore::{Context, Done};
///
/// let waker = futures::task::noop_waker();
/// let mut cx = TaskCx::from_waker(&waker);
/// let holder: Pin<Box<Done<'_>>>;
/// {
///     let (ctx, handle) = Context::background().with_cancel();
///     let mut d = Box::pin(ctx.done());
///     assert!(matches!(d.as_mut().poll(&mut cx), Poll::Pending));
///     holder = d;
///     drop(handle);
///     drop(ctx); // error[E0505]: cannot move out of `ctx` because it is borrowed
/// }
/// // `holder` would be dropped here, after the context's node was freed.
/// ```
///
/// nor does one that outlives a pinned [`ScopedContext`]:
///
/// ```compile_fail,E0597
/// use core::future::Future;
/// use core::pin::{pin, Pin};
/// use core::task::{Context as TaskCx, Poll};
/// use ctxcore::{ContextRef, Done, ScopedContext};
///
/// let waker = futures::task::noop_waker();
/// let mut cx = TaskCx::from_waker(&waker);
/// let holder: Pin<Box<Done<'_>>>;
/// {
///     let sc = pin!(ScopedContext::new(ContextRef::background()));
///     let c = sc.as_ref().context();
///     let mut d = Box::pin(c.done());
///     assert!(matches!(d.as_mut().poll(&mut cx), Poll::Pending));
///     holder = d;
/// } // error[E0597]: the pinned `ScopedContext` does not live long enough
/// // `holder` would be dropped here, after the scoped node's stack slot died.
/// ```
///
/// Dropping it earlier is fine, polled or not, done or not:
///
/// ```
/// use core::future::Future;
/// use core::task::{Context as TaskCx, Poll};
/// use ctxcore::Context;
///
/// let waker = futures::task::noop_waker();
/// let mut cx = TaskCx::from_waker(&waker);
/// let (ctx, handle) = Context::background().with_cancel();
/// let mut d = Box::pin(ctx.done());
/// assert!(matches!(d.as_mut().poll(&mut cx), Poll::Pending));
/// handle.cancel();
/// drop(d); // before `ctx`
/// drop(ctx);
/// ```
///
/// [`Context`]: crate::Context
/// [`ScopedContext`]: crate::ScopedContext
#[must_use = "futures do nothing unless polled"]
pub struct Done<'a> {
    // Declared first: dropped (unlinked) before the other fields. That the
    // node is still alive then is what the `Drop` impl below guarantees.
    waiter: Waiter,
    node: Option<NodePtr<'a>>,
    terminated: bool,
}

/// Deliberately empty: the unlinking is `Waiter::drop`, run by the drop glue
/// right after this. What matters is that the impl exists. `Waiter` has no
/// lifetime and `NodePtr<'a>` (a `&'a Node` keeping its provenance) has no
/// drop, so without it dropck would not
/// require `'a` to be live where a `Done<'a>` is dropped, and a polled `Done`
/// could outlive its context in safe code (issue 10, defect 6) and then lock
/// the freed node. With it, every drop of a `Done<'a>` is a use of `'a`
/// (no `#[may_dangle]`).
impl Drop for Done<'_> {
    #[inline]
    fn drop(&mut self) {}
}

impl<'a> Done<'a> {
    pub(crate) fn new(node: Option<NodePtr<'a>>) -> Self {
        Done {
            waiter: Waiter::new(),
            node,
            terminated: false,
        }
    }
}

fn poll_node(waiter: Pin<&mut Waiter>, node: Option<NodePtr<'_>>, cx: &mut TaskContext<'_>) -> Poll<Error> {
    let Some(node) = node else { return Poll::Pending };
    // SAFETY: the future that owns `waiter` also keeps `node` alive for longer
    // (field order: the waiter drops first) and always passes the same node.
    match unsafe { waiter.poll_wait(node, cx) } {
        Poll::Ready(()) => Poll::Ready(node.get().err().unwrap_or(Error::Canceled)),
        Poll::Pending => Poll::Pending,
    }
}

impl Future for Done<'_> {
    type Output = Error;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Error> {
        // SAFETY: structural pinning of `waiter`; nothing is moved out.
        let this = unsafe { self.get_unchecked_mut() };
        // SAFETY: `waiter` is pinned because `self` is.
        let waiter = unsafe { Pin::new_unchecked(&mut this.waiter) };
        let r = poll_node(waiter, this.node, cx);
        if r.is_ready() {
            this.terminated = true;
        }
        r
    }
}

impl FusedFuture for Done<'_> {
    fn is_terminated(&self) -> bool {
        self.terminated
    }
}

impl fmt::Debug for Done<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Done")
            .field("registered", &self.waiter.registered())
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "alloc")]
/// The `'static` future returned by
/// [`Context::done_owned`](crate::Context::done_owned): like [`Done`], but it
/// owns a clone of the context.
#[must_use = "futures do nothing unless polled"]
pub struct DoneOwned {
    waiter: Waiter,
    node: Option<NodeRef>,
    terminated: bool,
}

#[cfg(feature = "alloc")]
impl DoneOwned {
    pub(crate) fn new(node: Option<NodeRef>) -> Self {
        DoneOwned {
            waiter: Waiter::new(),
            node,
            terminated: false,
        }
    }
}

#[cfg(feature = "alloc")]
impl Future for DoneOwned {
    type Output = Error;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Error> {
        // SAFETY: structural pinning of `waiter`; nothing is moved out.
        let this = unsafe { self.get_unchecked_mut() };
        // SAFETY: `waiter` is pinned because `self` is.
        let waiter = unsafe { Pin::new_unchecked(&mut this.waiter) };
        let r = poll_node(waiter, this.node.as_ref().map(NodePtr::counted), cx);
        if r.is_ready() {
            this.terminated = true;
        }
        r
    }
}

#[cfg(feature = "alloc")]
impl FusedFuture for DoneOwned {
    fn is_terminated(&self) -> bool {
        self.terminated
    }
}

#[cfg(feature = "alloc")]
impl fmt::Debug for DoneOwned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DoneOwned")
            .field("registered", &self.waiter.registered())
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "alloc")]
/// The future returned by [`Context::run`](crate::Context::run).
///
/// A context that is done before the first poll never starts the work: `fut`
/// is dropped unpolled. Once the work has started, each poll polls `fut`
/// first, so an output that is ready wins over a cancel seen on the same
/// poll (tokio-util's `run_until_cancelled` does the same): work that has
/// finished — a value that already arrived on a channel, a row already
/// written — is returned, not dropped.
#[must_use = "futures do nothing unless polled"]
pub struct Run<F> {
    done: DoneOwned,
    fut: Option<F>,
    /// `fut` has been polled once: from then on its output wins a tie.
    started: bool,
}

#[cfg(feature = "alloc")]
impl<F> Run<F> {
    pub(crate) fn new(done: DoneOwned, fut: F) -> Self {
        Run {
            done,
            fut: Some(fut),
            started: false,
        }
    }
}

#[cfg(feature = "alloc")]
impl<F: Future> Future for Run<F> {
    type Output = Result<F::Output, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        // SAFETY: structural pinning of both fields; `fut` is only dropped in
        // place (`Pin::set`), never moved.
        let this = unsafe { self.get_unchecked_mut() };
        // SAFETY: as above.
        let mut done = unsafe { Pin::new_unchecked(&mut this.done) };
        // SAFETY: as above.
        let mut fut = unsafe { Pin::new_unchecked(&mut this.fut) };
        if fut.is_none() {
            // Finished before: behave as a fused future would.
            return Poll::Pending;
        }
        // A context done before the first poll never starts the work. Later
        // polls skip this read: `done` is polled after `fut` below anyway,
        // and a ready output must win over a cancel seen on the same poll.
        if !this.started {
            this.started = true;
            if let Some(node) = &done.node {
                if let Some(err) = node.node().err() {
                    fut.set(None);
                    return Poll::Ready(Err(err));
                }
            }
        }
        if let Some(f) = fut.as_mut().as_pin_mut() {
            if let Poll::Ready(out) = f.poll(cx) {
                fut.set(None);
                return Poll::Ready(Ok(out));
            }
        }
        match done.as_mut().poll(cx) {
            Poll::Ready(err) => {
                fut.set(None);
                Poll::Ready(Err(err))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(feature = "alloc")]
impl<F: Future> FusedFuture for Run<F> {
    fn is_terminated(&self) -> bool {
        self.fut.is_none()
    }
}

#[cfg(feature = "alloc")]
impl<F> fmt::Debug for Run<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Run")
            .field("finished", &self.fut.is_none())
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "alloc")]
impl<F> Run<F> {
    /// The error to report for `kind`, with the cause of the cancellation
    /// that won (read once the context is known to be done).
    fn context_error(&self, kind: Error) -> ContextError {
        let cause = self.done.node.as_ref().and_then(|n| n.node().cause());
        match cause {
            Some(cause) => ContextError::new(kind, cause),
            None => ContextError::from_error(kind),
        }
    }
}

#[cfg(feature = "alloc")]
/// The future returned by
/// [`Context::run_with_cause`](crate::Context::run_with_cause): [`Run`],
/// whose error is a [`ContextError`] that carries the cause.
///
/// ```
/// use ctxcore::{Context, Error};
///
/// let (ctx, h) = Context::background().with_cancel();
/// h.cancel_with("shutting down");
/// let err = futures::executor::block_on(ctx.run_with_cause(async { 1 })).unwrap_err();
/// assert_eq!(err.kind(), Error::Canceled);
/// assert_eq!(err.cause().as_str(), Some("shutting down"));
/// ```
#[must_use = "futures do nothing unless polled"]
pub struct RunWithCause<F> {
    run: Run<F>,
}

#[cfg(feature = "alloc")]
impl<F> RunWithCause<F> {
    pub(crate) fn new(run: Run<F>) -> Self {
        RunWithCause { run }
    }
}

#[cfg(feature = "alloc")]
impl<F: Future> Future for RunWithCause<F> {
    type Output = Result<F::Output, ContextError>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        // SAFETY: structural pinning of `run`; it is never moved out.
        let this = unsafe { self.get_unchecked_mut() };
        // SAFETY: `run` is pinned because `self` is.
        let run = unsafe { Pin::new_unchecked(&mut this.run) };
        match run.poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(out)) => Poll::Ready(Ok(out)),
            Poll::Ready(Err(kind)) => Poll::Ready(Err(this.run.context_error(kind))),
        }
    }
}

#[cfg(feature = "alloc")]
impl<F: Future> FusedFuture for RunWithCause<F> {
    fn is_terminated(&self) -> bool {
        self.run.is_terminated()
    }
}

#[cfg(feature = "alloc")]
impl<F> fmt::Debug for RunWithCause<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunWithCause")
            .field("finished", &self.run.fut.is_none())
            .finish_non_exhaustive()
    }
}

/// A waker that unparks the current thread: what the blocking waits of the
/// crate (`wait_blocking`, `AfterFunc::stop_and_wait`) park on.
#[cfg(feature = "std")]
pub(crate) fn thread_waker() -> core::task::Waker {
    extern crate std;
    use std::task::Wake;
    use std::thread::Thread;

    struct Unpark(Thread);
    // `Wake` takes `alloc`'s `Arc`, not `crate::Arc` (portable-atomic-util's
    // with `portable-atomic`).
    impl Wake for Unpark {
        fn wake(self: alloc::sync::Arc<Self>) {
            self.0.unpark();
        }
        fn wake_by_ref(self: &alloc::sync::Arc<Self>) {
            self.0.unpark();
        }
    }
    alloc::sync::Arc::new(Unpark(std::thread::current())).into()
}

/// Blocks the thread on `done`, up to `timeout`. `until_deadline` tells how
/// long until the context's own deadline: the thread then wakes by itself to
/// observe it, so a blocking wait never depends on a timer thread that may be
/// busy (for example running the after-func that is waiting here).
#[cfg(feature = "std")]
pub(crate) fn block_on_done(
    done: Done<'_>,
    timeout: Option<core::time::Duration>,
    until_deadline: impl Fn() -> Option<core::time::Duration>,
) -> Option<Error> {
    extern crate std;
    use core::time::Duration;
    use std::thread;

    let start = std::time::Instant::now();
    let waker = thread_waker();
    let mut cx = TaskContext::from_waker(&waker);
    let mut done = core::pin::pin!(done);
    loop {
        if let Poll::Ready(err) = done.as_mut().poll(&mut cx) {
            return Some(err);
        }
        let left = match timeout {
            Some(t) => {
                let left = t.saturating_sub(start.elapsed());
                if left.is_zero() {
                    return None;
                }
                Some(left)
            }
            None => None,
        };
        // Wake for the deadline a hair after it (the poll then observes it).
        let dl = until_deadline().map(|d| d.saturating_add(Duration::from_micros(50)));
        match (left, dl) {
            (None, None) => thread::park(),
            (Some(a), None) | (None, Some(a)) => thread::park_timeout(a),
            (Some(a), Some(b)) => thread::park_timeout(a.min(b)),
        }
    }
}
