//! [`CancelOnDrop`]: a future that cancels its context with a cause when it
//! is dropped unfinished, *before* it drops the work inside it.

use crate::cause::Cause;
use crate::context::CancelHandle;
use core::fmt;
use core::future::Future;
use core::pin::Pin;
use core::task::{Context as TaskContext, Poll};
use futures_core::future::FusedFuture;

/// Wraps a future so that dropping it before it completes cancels a context
/// with a cause, and only then drops the future.
///
/// Built with [`CancelHandle::cancel_on_drop`] (or [`CancelOnDrop::new`]);
/// it owns the handle.
///
/// - **Dropped before completing** (the usual way Rust cancels work: a server
///   drops the request future when the client goes away, a `select!` drops
///   the losing branch, a `JoinHandle` is aborted): the context is cancelled
///   with the cause first, then the inner future is dropped.
/// - **Completed**: the handle is dropped as the output is returned, which
///   cancels the context *plainly* ([`Error::Canceled`](crate::Error), no
///   cause) — Go's `defer cancel()`: the work is finished, so nothing under
///   the context may outlive it. Call [`CancelHandle::detach`] on a handle of
///   your own instead if the context must outlive the work.
///
/// # The drop-order pitfall
///
/// A request future usually owns handles of its own: a `with_timeout` for a
/// query, a group's, a downstream call's. When the future is dropped, those
/// handles drop with it — and each cancels its own context *plainly*. A guard
/// outside the future that cancels the request context "with the real cause"
/// in its own `Drop` runs too late: the leaves are already done, and they
/// report `context canceled` instead of `client disconnected`.
///
/// ```
/// use ctxcore::Context;
/// use futures::FutureExt;
/// use std::sync::mpsc;
/// use std::time::Duration;
///
/// // The handler: a query with its own, tighter timeout; the after-func
/// // reports the cause the query's context ends with.
/// async fn handle(request: Context, seen: mpsc::Sender<String>) {
///     let (query, _query_handle) = request.with_timeout(Duration::from_secs(5));
///     let leaf = query.clone();
///     query.after_func(move || seen.send(leaf.cause().unwrap().to_string()).unwrap());
///     let _ = query.done().await; // the query, waiting for its rows
/// }
///
/// // Without the adapter: the handler's future owns `_query_handle`; dropping
/// // the future cancels the query plainly before the server's cancel runs.
/// let (tx, rx) = mpsc::channel();
/// let (request, request_handle) = Context::background().with_cancel();
/// let mut fut = Box::pin(handle(request, tx));
/// assert!(fut.as_mut().now_or_never().is_none()); // in flight
/// drop(fut); // the client went away
/// request_handle.cancel_with("client disconnected"); // too late
/// assert_eq!(rx.recv().unwrap(), "context canceled");
///
/// // With it: the cause reaches the query before its handle drops.
/// let (tx, rx) = mpsc::channel();
/// let (request, request_handle) = Context::background().with_cancel();
/// let mut fut = Box::pin(request_handle.cancel_on_drop(handle(request, tx), "client disconnected"));
/// assert!(fut.as_mut().now_or_never().is_none());
/// drop(fut);
/// assert_eq!(rx.recv().unwrap(), "client disconnected");
/// ```
///
/// A panic inside the future is the one exception: unwinding drops the
/// panicking future's own locals (and their handles, cancelling plainly)
/// before it leaves `poll`; the adapter then cancels with the cause, which
/// the rest of the tree under the context sees.
///
/// The adapter is `Send` when the future is, so it can be spawned anywhere:
///
/// ```
/// fn assert_send<T: Send>(_: &T) {}
/// let (ctx, handle) = ctxcore::Context::background().with_cancel();
/// let fut = handle.cancel_on_drop(async move { ctx.done().await }, "shutdown");
/// assert_send(&fut);
/// ```
///
/// Polling it again after it completed returns `Poll::Pending` (it is a
/// `FusedFuture`), as [`Run`](crate::Run) does.
#[must_use = "futures do nothing unless polled; dropping this one cancels its context"]
pub struct CancelOnDrop<F> {
    /// Structurally pinned (see `poll`); dropped by the drop glue after
    /// `Drop::drop` has cancelled the context.
    fut: F,
    /// `None` once the future completed.
    handle: Option<CancelHandle>,
    /// The cause for a drop before completion.
    cause: Option<Cause>,
}

impl<F> CancelOnDrop<F> {
    /// Wraps `fut`: if it is dropped before completing, `handle`'s context is
    /// cancelled with `cause` before `fut` is dropped.
    ///
    /// ```
    /// use ctxcore::{CancelOnDrop, Context};
    ///
    /// let (ctx, handle) = Context::background().with_cancel();
    /// let work = CancelOnDrop::new(handle, "client disconnected", async {});
    /// drop(work);
    /// assert_eq!(ctx.cause().unwrap().to_string(), "client disconnected");
    /// ```
    pub fn new(handle: CancelHandle, cause: impl Into<Cause>, fut: F) -> Self {
        CancelOnDrop {
            fut,
            handle: Some(handle),
            cause: Some(cause.into()),
        }
    }

    /// Whether the inner future has completed (and the handle has cancelled
    /// its context plainly).
    ///
    /// ```
    /// use futures::FutureExt;
    ///
    /// let (ctx, handle) = ctxcore::Context::background().with_cancel();
    /// let mut work = Box::pin(handle.cancel_on_drop(async { 7 }, "unused"));
    /// assert!(!work.is_finished());
    /// assert_eq!(work.as_mut().now_or_never(), Some(7));
    /// assert!(work.is_finished());
    /// assert_eq!(ctx.cause().unwrap().to_string(), "context canceled");
    /// ```
    pub fn is_finished(&self) -> bool {
        self.handle.is_none()
    }
}

impl CancelHandle {
    /// Wraps `fut` in a [`CancelOnDrop`]: dropped before it completes, it
    /// cancels this handle's context with `cause` *before* dropping `fut`, so
    /// the cause reaches every context under it, even those whose handles
    /// live inside `fut`; once `fut` has completed, the handle cancels
    /// plainly. See [`CancelOnDrop`] for the drop-order pitfall this avoids.
    ///
    /// ```
    /// use ctxcore::Context;
    ///
    /// let (request, handle) = Context::background().with_cancel();
    /// let in_flight = handle.cancel_on_drop(
    ///     {
    ///         let request = request.clone();
    ///         async move {
    ///             let (_query, _query_handle) = request.with_cancel();
    ///             std::future::pending::<()>().await
    ///         }
    ///     },
    ///     "client disconnected",
    /// );
    /// drop(in_flight);
    /// assert_eq!(request.cause().unwrap().to_string(), "client disconnected");
    /// ```
    pub fn cancel_on_drop<F>(self, fut: F, cause: impl Into<Cause>) -> CancelOnDrop<F> {
        CancelOnDrop::new(self, cause, fut)
    }
}

impl<F: Future> Future for CancelOnDrop<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<F::Output> {
        // `fut` is structurally pinned and the other fields are not:
        // `fut` is never moved out of `self` (not here, not in `Drop::drop`,
        // which only touches `handle` and `cause`); it is dropped in place by
        // the drop glue; `CancelOnDrop<F>` is `Unpin` only when `F` is (the
        // auto trait); the struct is not `repr(packed)`.
        // SAFETY: as argued above.
        let this = unsafe { self.get_unchecked_mut() };
        if this.handle.is_none() {
            // Completed before: behave as a fused future.
            return Poll::Pending;
        }
        // SAFETY: as above: `fut` stays pinned where `self` is.
        let fut = unsafe { Pin::new_unchecked(&mut this.fut) };
        match fut.poll(cx) {
            Poll::Ready(out) => {
                this.cause = None;
                // Finished: the handle cancels plainly as it drops.
                this.handle = None;
                Poll::Ready(out)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<F: Future> FusedFuture for CancelOnDrop<F> {
    fn is_terminated(&self) -> bool {
        self.handle.is_none()
    }
}

impl<F> Drop for CancelOnDrop<F> {
    fn drop(&mut self) {
        // Runs before any field is dropped: the context is done, with the
        // cause, before the handles inside `fut` get to cancel plainly.
        if let Some(handle) = self.handle.take() {
            // Reported where the handle's context was made, as a plain
            // handle drop is (`Context::cancelled_at`).
            handle.cancel_as_made(self.cause.take());
        }
    }
}

impl<F> fmt::Debug for CancelOnDrop<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CancelOnDrop")
            .field("finished", &self.is_finished())
            .field("cause", &self.cause)
            .finish_non_exhaustive()
    }
}

/// Unit tests of the pin projection, small enough for Miri (`ci/miri.sh` runs
/// `--lib`).
#[cfg(all(test, feature = "std", not(loom)))]
mod tests {
    use crate::Context;
    use core::future::Future;
    use core::pin::pin;
    use core::task::{Context as TaskContext, Poll};
    use std::string::ToString;

    #[test]
    fn dropped_pinned_in_flight_cancels_with_the_cause() {
        let waker = futures::task::noop_waker();
        let mut cx = TaskContext::from_waker(&waker);
        let (request, handle) = Context::background().with_cancel();
        let (leaf_tx, leaf_rx) = std::sync::mpsc::channel();
        {
            let r = request.clone();
            let mut fut = pin!(handle.cancel_on_drop(
                async move {
                    let (leaf, _leaf_handle) = r.with_cancel();
                    leaf_tx.send(leaf.clone()).unwrap();
                    leaf.done().await
                },
                "client disconnected",
            ));
            assert!(fut.as_mut().poll(&mut cx).is_pending());
        } // dropped in place, pinned
        let leaf = leaf_rx.recv().unwrap();
        assert_eq!(leaf.cause().unwrap().to_string(), "client disconnected");
    }

    #[test]
    fn completed_cancels_plainly() {
        let waker = futures::task::noop_waker();
        let mut cx = TaskContext::from_waker(&waker);
        let (request, handle) = Context::background().with_cancel();
        let mut fut = pin!(handle.cancel_on_drop(async { 3 }, "unused"));
        assert_eq!(fut.as_mut().poll(&mut cx), Poll::Ready(3));
        assert_eq!(fut.as_mut().poll(&mut cx), Poll::Pending);
        assert_eq!(request.cause().unwrap().as_error(), Some(crate::Error::Canceled));
    }
}
