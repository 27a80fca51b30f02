//! Streams that end when a context is done: [`RunStream`] and
//! [`RunStreamWithCause`], from [`Context::stream`](crate::Context::stream),
//! [`Context::stream_with_cause`](crate::Context::stream_with_cause) and the
//! same methods of [`ContextRef`].
//!
//! The adapter embeds its waiter, as [`Done`](crate::Done) does: no
//! allocation, ever, and one atomic load per item on the fast path. It adds
//! no protocol of its own: it checks the node's state word, and registers
//! its waiter (`Waiter::poll_wait`, the waiter protocol of `done()`) only
//! when the inner stream is pending.

#[cfg(feature = "alloc")]
use crate::context::Context;
use crate::error::{ContextError, Error};
use crate::node::{Node, NodePtr, Waiter};
use crate::scoped::ContextRef;
use core::fmt;
use core::pin::Pin;
use core::task::{Context as TaskContext, Poll};
use futures_core::stream::{FusedStream, Stream};

/// What keeps the node alive while the stream runs.
enum Source<'a> {
    /// A [`ContextRef`]: the borrow keeps it alive.
    Borrowed(NodePtr<'a>),
    /// A [`Context`]: a clone of it (its node reference) keeps it alive.
    #[cfg(feature = "alloc")]
    Owned(Context),
    /// A context that can never be done, or a stream that has ended.
    None,
}

impl Source<'_> {
    fn node(&self) -> Option<NodePtr<'_>> {
        match self {
            Source::Borrowed(n) => Some(*n),
            #[cfg(feature = "alloc")]
            Source::Owned(ctx) => ctx.node_ptr(),
            Source::None => None,
        }
    }
}

/// A stream that yields the items of the stream it wraps until the
/// context is done, then ends (and stays ended: it is a
/// [`FusedStream`]). From [`Context::stream`] (owning a clone of the
/// context: `'static` when the stream is) or [`ContextRef::stream`]
/// (borrowing it: no heap).
///
/// - **Each poll reads the context first** (one atomic load): once it is
///   done, the stream ends, even if the inner stream has items ready (an
///   endless ready stream still stops), and the inner stream is dropped at
///   once. An item the inner stream has produced is always yielded: a
///   cancel never loses one.
/// - When the inner stream is pending, the adapter's waiter registers on
///   the context (the `done()` protocol), so a cancel wakes the task.
/// - When the inner stream ends by itself, the adapter ends too and lets
///   go of its waiter and its context at once.
/// - No allocation per poll (none at all: the waiter is embedded), `Send`
///   and `Sync` when the inner stream is.
///
/// To tell "finished" from "cancelled", use [`RunStreamWithCause`].
///
/// ```
/// use ctxcore::Context;
/// use futures::StreamExt;
///
/// let (ctx, cancel) = Context::background().with_cancel();
/// let ticks = futures::stream::iter(0..); // endless, always ready
/// let mut ticks = Box::pin(ctx.stream(ticks));
/// futures::executor::block_on(async {
///     assert_eq!(ticks.next().await, Some(0));
///     assert_eq!(ticks.next().await, Some(1));
///     cancel.cancel();
///     assert_eq!(ticks.next().await, None); // ended
///     assert_eq!(ticks.next().await, None); // and fused
/// });
/// ```
///
/// Once polled, its waiter may be linked into the context's list, so it is
/// `!Unpin` (pin it with `Box::pin` or `core::pin::pin!`):
///
/// ```compile_fail
/// fn assert_unpin<T: Unpin>(_: T) {}
/// let ctx = ctxcore::Context::background();
/// assert_unpin(ctx.stream(futures::stream::iter([1, 2])));
/// ```
///
/// and one that borrows a context cannot outlive it:
///
/// ```compile_fail,E0597
/// use ctxcore::{ContextRef, RunStream, ScopedContext};
/// use core::pin::pin;
///
/// let holder: RunStream<'_, futures::stream::Iter<std::ops::Range<u32>>>;
/// {
///     let sc = pin!(ScopedContext::new(ContextRef::background()));
///     holder = sc.as_ref().context().stream(futures::stream::iter(0..3));
/// } // error[E0597]: the pinned `ScopedContext` does not live long enough
/// ```
#[must_use = "streams do nothing unless polled"]
pub struct RunStream<'a, S> {
    // Declared first: dropped (unlinked) before `source` lets go of the
    // node. That the node is alive then is what the `Drop` impl below
    // guarantees for a borrowed one.
    waiter: Waiter,
    source: Source<'a>,
    /// `None` once ended.
    stream: Option<S>,
}

/// Deliberately empty, as `Done`'s: its existence makes every drop of a
/// `RunStream<'a, _>` a use of `'a`, so a polled stream cannot outlive the
/// context it borrows (its waiter's drop locks the node).
impl<S> Drop for RunStream<'_, S> {
    #[inline]
    fn drop(&mut self) {}
}

impl<'a, S> RunStream<'a, S> {
    fn new(source: Source<'a>, stream: S) -> Self {
        RunStream {
            waiter: Waiter::new(),
            source,
            stream: Some(stream),
        }
    }

    /// Polls for the next step: an item, the inner stream's end
    /// (`Ready(None)`), or the context's end (`Err`, with the error when
    /// `with_cause`).
    #[allow(clippy::type_complexity)]
    fn poll_step(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        with_cause: bool,
    ) -> Poll<Option<Result<S::Item, Option<ContextError>>>>
    where
        S: Stream,
    {
        // Structural pinning of `waiter` and `stream`: neither is
        // moved out; both are only dropped in place (by assignment, which
        // runs their drop where they are, as `Pin::set` does).
        // SAFETY: as argued above.
        let this = unsafe { self.get_unchecked_mut() };
        let Some(stream) = this.stream.as_mut() else {
            return Poll::Ready(None);
        };
        let node = this.source.node();
        if let Some(n) = node {
            if n.get().is_done() {
                let err = with_cause.then(|| error_of(n.get()));
                this.end();
                return Poll::Ready(Some(Err(err)));
            }
        }
        // SAFETY: `stream` is pinned because `self` is (see above).
        match unsafe { Pin::new_unchecked(stream) }.poll_next(cx) {
            Poll::Ready(Some(item)) => return Poll::Ready(Some(Ok(item))),
            Poll::Ready(None) => {
                this.end();
                return Poll::Ready(None);
            }
            Poll::Pending => {}
        }
        let Some(n) = node else { return Poll::Pending };
        // SAFETY: `waiter` is pinned because `self` is.
        let waiter = unsafe { Pin::new_unchecked(&mut this.waiter) };
        // `source` keeps `n` alive until the waiter is dropped: it is
        // declared after `waiter` (dropped after it), `end` resets the waiter
        // before it lets go of the source, and a borrowed node outlives the
        // stream (the `Drop` impl above). Every call passes the same node:
        // `source` only changes in `end`, after which nothing polls the
        // waiter again (`stream` is `None`). The waiter unlinks itself under
        // the node's lock when dropped (invariant 8).
        // SAFETY: as argued above (invariant 8).
        match unsafe { waiter.poll_wait(n, cx) } {
            Poll::Ready(()) => {
                let err = with_cause.then(|| error_of(n.get()));
                this.end();
                Poll::Ready(Some(Err(err)))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// Ends the stream: drops the inner stream, unlinks the waiter (a fresh,
    /// unregistered one replaces it, dropping the old one in place), then
    /// lets go of the context.
    fn end(&mut self) {
        self.stream = None;
        self.waiter = Waiter::new();
        self.source = Source::None;
    }

    fn upper_bound(&self, extra: usize) -> Option<usize>
    where
        S: Stream,
    {
        match &self.stream {
            Some(s) => s.size_hint().1.and_then(|n| n.checked_add(extra)),
            None => Some(0),
        }
    }
}

/// The error of a node known to be done.
fn error_of(n: &Node) -> ContextError {
    ContextError::of_node(n).unwrap_or(ContextError::from_error(Error::Canceled))
}

impl<S: Stream> Stream for RunStream<'_, S> {
    type Item = S::Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<S::Item>> {
        match self.poll_step(cx, false) {
            Poll::Ready(Some(Ok(item))) => Poll::Ready(Some(item)),
            Poll::Ready(Some(Err(_)) | None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, self.upper_bound(0))
    }
}

impl<S: Stream> FusedStream for RunStream<'_, S> {
    fn is_terminated(&self) -> bool {
        self.stream.is_none()
    }
}

impl<S> fmt::Debug for RunStream<'_, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunStream")
            .field("ended", &self.stream.is_none())
            .field("registered", &self.waiter.registered())
            .finish_non_exhaustive()
    }
}

/// [`RunStream`] that tells "finished" from "cancelled": it yields
/// `Ok(item)` for each item of the inner stream, then, if the context is
/// done first, one final `Err(`[`ContextError`]`)` (the error and the cause
/// of the cancellation that won) before it ends. A stream that finishes by
/// itself just ends. The same rules otherwise: the context is read first on
/// each poll, no item is lost, no allocation, fused.
///
/// ```
/// use ctxcore::{Context, Error};
/// use futures::StreamExt;
///
/// let (ctx, cancel) = Context::background().with_cancel();
/// let mut rows = Box::pin(ctx.stream_with_cause(futures::stream::iter(0..)));
/// futures::executor::block_on(async {
///     assert_eq!(rows.next().await.unwrap().unwrap(), 0);
///     cancel.cancel_with("client went away");
///     let err = rows.next().await.unwrap().unwrap_err();
///     assert_eq!(err.kind(), Error::Canceled);
///     assert_eq!(err.cause().as_str(), Some("client went away"));
///     assert!(rows.next().await.is_none());
///
///     // A stream that finishes first yields no error.
///     let (live, _h) = Context::background().with_cancel();
///     let all: Vec<_> = live.stream_with_cause(futures::stream::iter([1, 2])).collect().await;
///     assert_eq!(all.len(), 2);
///     assert!(all.iter().all(Result::is_ok));
/// });
/// ```
#[must_use = "streams do nothing unless polled"]
pub struct RunStreamWithCause<'a, S> {
    inner: RunStream<'a, S>,
}

impl<S: Stream> Stream for RunStreamWithCause<'_, S> {
    type Item = Result<S::Item, ContextError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        // SAFETY: structural pinning of `inner`; it is never moved out.
        let inner = unsafe { self.map_unchecked_mut(|s| &mut s.inner) };
        match inner.poll_step(cx, true) {
            Poll::Ready(Some(Ok(item))) => Poll::Ready(Some(Ok(item))),
            Poll::Ready(Some(Err(err))) => {
                Poll::Ready(Some(Err(err.unwrap_or(ContextError::from_error(Error::Canceled)))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, self.inner.upper_bound(1))
    }
}

impl<S: Stream> FusedStream for RunStreamWithCause<'_, S> {
    fn is_terminated(&self) -> bool {
        self.inner.stream.is_none()
    }
}

impl<S> fmt::Debug for RunStreamWithCause<'_, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunStreamWithCause")
            .field("ended", &self.inner.stream.is_none())
            .field("registered", &self.inner.waiter.registered())
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "alloc")]
impl Context {
    /// Yields the items of `stream` until this context is done, then ends:
    /// [`run`](Self::run) for streams. The adapter owns a clone of the
    /// context, so it is `'static` (and `Send`) when `stream` is. See
    /// [`RunStream`] for the rules; [`stream_with_cause`](Self::stream_with_cause)
    /// ends with the error instead.
    ///
    /// ```
    /// use ctxcore::Context;
    /// use futures::StreamExt;
    ///
    /// async fn forward(ctx: Context, mut events: impl futures::Stream<Item = u32> + Unpin) -> u32 {
    ///     let mut events = std::pin::pin!(ctx.stream(events));
    ///     let mut seen = 0;
    ///     while let Some(_event) = events.next().await {
    ///         seen += 1;
    ///     }
    ///     seen // the stream ended, or the context is done
    /// }
    ///
    /// let (ctx, _h) = Context::background().with_cancel();
    /// let n = futures::executor::block_on(forward(ctx, futures::stream::iter([1, 2, 3])));
    /// assert_eq!(n, 3);
    /// ```
    pub fn stream<S: Stream>(&self, stream: S) -> RunStream<'static, S> {
        let source = match self.node_ref() {
            Some(_) => Source::Owned(self.clone()),
            None => Source::None,
        };
        RunStream::new(source, stream)
    }

    /// Like [`stream`](Self::stream), but yields `Ok(item)`s and, if the
    /// context is done before the stream ends, one final
    /// `Err(`[`ContextError`]`)` with the cause: see [`RunStreamWithCause`].
    ///
    /// ```
    /// use ctxcore::Context;
    /// use futures::StreamExt;
    /// use std::time::Duration;
    ///
    /// let (ctx, _h) = Context::background().with_timeout_cause(Duration::from_millis(5), "export too slow");
    /// let rows = futures::stream::pending::<u32>();
    /// let mut rows = Box::pin(ctx.stream_with_cause(rows));
    /// let err = futures::executor::block_on(rows.next()).unwrap().unwrap_err();
    /// assert!(err.is_deadline_exceeded());
    /// assert_eq!(err.to_string(), "context deadline exceeded: export too slow");
    /// ```
    pub fn stream_with_cause<S: Stream>(&self, stream: S) -> RunStreamWithCause<'static, S> {
        RunStreamWithCause {
            inner: self.stream(stream),
        }
    }
}

impl<'a> ContextRef<'a> {
    /// Yields the items of `stream` until this context is done, then ends;
    /// borrows the context, so it needs no heap: see [`RunStream`].
    ///
    /// ```
    /// use ctxcore::{ContextRef, ScopedContext};
    /// use core::pin::pin;
    /// use futures::StreamExt;
    ///
    /// let step = pin!(ScopedContext::new(ContextRef::background()));
    /// let ctx = step.as_ref().context();
    /// futures::executor::block_on(async {
    ///     let mut items = pin!(ctx.stream(futures::stream::iter(0..)));
    ///     assert_eq!(items.next().await, Some(0));
    ///     step.cancel();
    ///     assert_eq!(items.next().await, None);
    /// });
    /// ```
    pub fn stream<S: Stream>(&self, stream: S) -> RunStream<'a, S> {
        let source = match self.node_ptr() {
            Some(n) => Source::Borrowed(n),
            None => Source::None,
        };
        RunStream::new(source, stream)
    }

    /// Like [`stream`](Self::stream), ending with one
    /// `Err(`[`ContextError`]`)` if the context is done first: see
    /// [`RunStreamWithCause`].
    ///
    /// ```
    /// use ctxcore::{ContextRef, StaticContext};
    /// use core::pin::pin;
    /// use futures::StreamExt;
    ///
    /// static SHUTDOWN: StaticContext = StaticContext::new();
    /// futures::executor::block_on(async {
    ///     let mut items = pin!(SHUTDOWN.as_ref().stream_with_cause(futures::stream::iter(0..)));
    ///     assert_eq!(items.next().await.unwrap().unwrap(), 0);
    ///     SHUTDOWN.cancel_with("power loss");
    ///     let err = items.next().await.unwrap().unwrap_err();
    ///     assert_eq!(err.cause().as_str(), Some("power loss"));
    ///     assert!(items.next().await.is_none());
    /// });
    /// ```
    pub fn stream_with_cause<S: Stream>(&self, stream: S) -> RunStreamWithCause<'a, S> {
        RunStreamWithCause {
            inner: self.stream(stream),
        }
    }
}
