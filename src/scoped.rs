//! The heap-free tier: [`ContextRef`], a borrowed view of any context, and
//! [`ScopedContext`], a child whose node is pinned in its owner (a task's
//! future, a stack frame) instead of on the heap.

use crate::cause::Cause;
use crate::done::Done;
use crate::error::{ContextError, Error};
use crate::node::{Node, NodePtr};
use crate::time::{default_timer, Instant};
use core::fmt;
use core::marker::PhantomData;
use core::panic::Location;
use core::pin::Pin;
use core::time::Duration;

/// A borrowed, `Copy` view of a context: a [`StaticContext`], a pinned
/// [`ScopedContext`] or (with `alloc`) a [`Context`]. It reads the state and
/// waits without allocating, and is the parent of [`ScopedContext`]s.
///
/// ```
/// use ctxcore::{ContextRef, Error, StaticContext};
///
/// static ROOT: StaticContext = StaticContext::new();
/// let r: ContextRef<'static> = ROOT.as_ref();
/// ROOT.cancel_with("stop");
/// assert_eq!(r.err(), Some(Error::Canceled));
/// assert_eq!(r.cause().unwrap().as_str(), Some("stop"));
/// ```
///
/// [`StaticContext`]: crate::StaticContext
/// [`Context`]: crate::Context
#[derive(Clone, Copy)]
pub struct ContextRef<'a> {
    node: Option<NodePtr<'a>>,
}

impl<'a> ContextRef<'a> {
    pub(crate) fn new(node: Option<NodePtr<'a>>) -> Self {
        ContextRef { node }
    }

    /// The node viewed (`None`: never done).
    pub(crate) fn node(&self) -> Option<&'a Node> {
        self.node.map(NodePtr::get)
    }

    /// The node viewed, for waiters (`done`, `stream`): with its
    /// allocation's provenance (node/arm.rs).
    pub(crate) fn node_ptr(&self) -> Option<NodePtr<'a>> {
        self.node
    }

    /// A view of [`Context::background`](crate::Context::background): never
    /// done.
    pub const fn background() -> ContextRef<'static> {
        ContextRef { node: None }
    }

    /// Whether the context is done: one atomic load (plus a clock read for a
    /// live context with a deadline).
    #[inline]
    pub fn is_done(&self) -> bool {
        self.node().is_some_and(Node::is_done)
    }

    /// Why the context is done, if it is.
    pub fn err(&self) -> Option<Error> {
        self.node().and_then(Node::err)
    }

    /// The cause of the winning cancellation, if done.
    pub fn cause(&self) -> Option<Cause> {
        self.node().and_then(Node::cause)
    }

    /// Where the winning cancellation was requested, inherited like the
    /// cause; `None` while live. See
    /// [`Context::cancelled_at`](crate::Context::cancelled_at): a
    /// [`ScopedContext`] dropped (or whose deadline fires) reports the call
    /// that made it.
    ///
    /// ```
    /// use ctxcore::{ScopedContext, StaticContext};
    /// use core::pin::pin;
    ///
    /// static ROOT: StaticContext = StaticContext::new();
    /// let job = pin!(ScopedContext::new(ROOT.as_ref()));
    /// let ctx = job.as_ref().context();
    /// let line = line!() + 1;
    /// job.cancel();
    /// assert_eq!(ctx.cancelled_at().unwrap().line(), line);
    /// ```
    pub fn cancelled_at(&self) -> Option<&'static Location<'static>> {
        self.node().and_then(Node::cancelled_at)
    }

    /// Why the context is done and the cause, as one [`ContextError`]; `None`
    /// while live. See [`Context::error`](crate::Context::error).
    ///
    /// ```
    /// use ctxcore::{Error, ScopedContext, StaticContext};
    /// use core::pin::pin;
    ///
    /// static ROOT: StaticContext = StaticContext::new();
    /// let step = pin!(ScopedContext::new(ROOT.as_ref()));
    /// let ctx = step.as_ref().context();
    /// step.cancel_with("step aborted");
    /// assert_eq!(ctx.error().unwrap().to_string(), "context canceled: step aborted");
    /// ```
    pub fn error(&self) -> Option<ContextError> {
        self.node().and_then(ContextError::of_node)
    }

    /// The earliest deadline on the path to the root.
    pub fn deadline(&self) -> Option<Instant> {
        self.node().and_then(Node::deadline)
    }

    /// The current time on this context's own clock (its tree's timer, or
    /// the default one); [`Instant::ZERO`] without any timer. See
    /// [`Context::now`](crate::Context::now).
    ///
    /// ```
    /// use ctxcore::{ManualClock, StaticContext};
    /// use core::time::Duration;
    ///
    /// static CLOCK: ManualClock = ManualClock::new();
    /// static ROOT: StaticContext = StaticContext::with_timer(&CLOCK);
    /// CLOCK.advance(Duration::from_millis(3));
    /// assert_eq!(ROOT.as_ref().now().as_nanos(), 3_000_000);
    /// ```
    pub fn now(&self) -> Instant {
        self.node()
            .and_then(Node::timer)
            .or_else(default_timer)
            .map_or(Instant::ZERO, |t| t.now())
    }

    /// How long until the deadline, on this context's own clock: `None`
    /// without a deadline, [`Duration::ZERO`] once it has passed. See
    /// [`Context::time_left`](crate::Context::time_left).
    ///
    /// ```
    /// use ctxcore::{ManualClock, ScopedContext, StaticContext};
    /// use core::pin::pin;
    /// use core::time::Duration;
    ///
    /// static CLOCK: ManualClock = ManualClock::new();
    /// static ROOT: StaticContext = StaticContext::with_timer(&CLOCK);
    /// let step = pin!(ScopedContext::with_timeout(ROOT.as_ref(), Duration::from_secs(5)));
    /// let ctx = step.as_ref().context();
    /// CLOCK.advance(Duration::from_secs(2));
    /// assert_eq!(ctx.time_left(), Some(Duration::from_secs(3)));
    /// assert_eq!(ROOT.as_ref().time_left(), None);
    /// ```
    pub fn time_left(&self) -> Option<Duration> {
        let deadline = self.deadline()?;
        Some(deadline.saturating_duration_since(self.now()))
    }

    /// A future that completes once the context is done; allocates nothing.
    pub fn done(&self) -> Done<'a> {
        Done::new(self.node)
    }
}

impl fmt::Debug for ContextRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("ContextRef");
        d.field("err", &self.err()).field("deadline", &self.deadline());
        if let Some(at) = self.cancelled_at() {
            d.field("cancelled_at", &format_args!("{at}"));
        }
        d.finish()
    }
}

#[cfg(feature = "alloc")]
impl crate::Context {
    /// A borrowed view of this context, to hang heap-free
    /// [`ScopedContext`] children under it.
    ///
    /// ```
    /// use ctxcore::{Context, ScopedContext};
    /// use core::pin::pin;
    ///
    /// let (request, cancel) = Context::background().with_cancel();
    /// let step = pin!(ScopedContext::new(request.as_ref()));
    /// let step = step.as_ref().context();
    /// cancel.cancel();
    /// assert!(step.is_done());
    /// ```
    pub fn as_ref(&self) -> ContextRef<'_> {
        ContextRef::new(self.node_ptr())
    }
}

/// A child context whose node lives inside its owner — pinned in a task's
/// future or on the stack — so it needs no allocator. It is cancelled by
/// [`cancel`](Self::cancel), by its parent, by its deadline, or when it is
/// dropped (the end of the scope cancels it, as dropping a
/// [`CancelHandle`](crate::CancelHandle) does).
///
/// Pin it (`core::pin::pin!`, or as a field of a pinned future), then call
/// [`context`](Self::context) for a [`ContextRef`] to read, wait on, and hang
/// further children under. The borrow checker keeps every child and waiter
/// inside its parent's lifetime.
///
/// ```
/// use ctxcore::{Error, ScopedContext, StaticContext};
/// use core::pin::pin;
///
/// static SHUTDOWN: StaticContext = StaticContext::new();
///
/// let job = pin!(ScopedContext::new(SHUTDOWN.as_ref()));
/// let job_ctx = job.as_ref().context();
/// let step = pin!(ScopedContext::new(job_ctx));
/// let step_ctx = step.as_ref().context();
///
/// job.cancel_with("job aborted");
/// assert_eq!(step_ctx.err(), Some(Error::Canceled));
/// assert_eq!(step_ctx.cause().unwrap().as_str(), Some("job aborted"));
/// assert!(!SHUTDOWN.is_done());
/// ```
///
/// Misuse does not compile. A child cannot outlive its parent:
///
/// ```compile_fail
/// use ctxcore::{ContextRef, ScopedContext};
/// use core::pin::pin;
/// let escaped;
/// {
///     let parent = pin!(ScopedContext::new(ContextRef::background()));
///     escaped = parent.as_ref().context();
/// }
/// escaped.is_done(); // error: `parent` does not live long enough
/// ```
///
/// and a scoped context cannot move once pinned (it is `!Unpin`):
///
/// ```compile_fail
/// fn assert_unpin<T: Unpin>() {}
/// assert_unpin::<ctxcore::ScopedContext<'static>>();
/// ```
pub struct ScopedContext<'p> {
    node: Node,
    _parent: PhantomData<ContextRef<'p>>,
}

impl<'p> ScopedContext<'p> {
    /// A child of `parent`, cancelled by its owner or any ancestor.
    #[track_caller]
    pub fn new(parent: ContextRef<'p>) -> Self {
        Self::build(parent, None, None)
    }

    /// A child that is done with [`Error::DeadlineExceeded`] at `deadline`
    /// (or its parent's, if earlier). Deadlines need a timer on the tree
    /// ([`StaticContext::with_timer`](crate::StaticContext::with_timer), or
    /// the `std` default).
    #[track_caller]
    pub fn with_deadline(parent: ContextRef<'p>, deadline: Instant) -> Self {
        Self::build(parent, Some(deadline), None)
    }

    /// As [`with_deadline`](Self::with_deadline), reporting `cause` when the
    /// deadline fires.
    #[track_caller]
    pub fn with_deadline_cause(parent: ContextRef<'p>, deadline: Instant, cause: impl Into<Cause>) -> Self {
        Self::build(parent, Some(deadline), Some(cause.into()))
    }

    /// A child with a deadline `timeout` from now on the tree's clock
    /// (saturating). Without a timer there is no clock and no deadline.
    #[track_caller]
    pub fn with_timeout(parent: ContextRef<'p>, timeout: Duration) -> Self {
        let timer = parent.node().and_then(Node::timer).or_else(default_timer);
        Self::build(parent, timer.map(|t| t.now().saturating_add(timeout)), None)
    }

    #[track_caller]
    fn build(parent: ContextRef<'p>, deadline: Option<Instant>, cause: Option<Cause>) -> Self {
        ScopedContext {
            node: Node::new_scoped(parent.node, default_timer(), deadline, cause, Some(Location::caller())),
            _parent: PhantomData,
        }
    }

    /// The context, for reading, waiting and children. The first call links
    /// the pinned node under its parent (and arms its deadline).
    pub fn context(self: Pin<&Self>) -> ContextRef<'_> {
        let this = self.get_ref();
        // SAFETY: `self` is pinned, so the node stays put until `Drop`, which
        // detaches it; the parent outlives `'p`, which outlives us.
        unsafe { this.node.attach_scoped() };
        ContextRef::new(Some(NodePtr::pinned(&this.node)))
    }

    /// Cancels the context (first cancellation wins).
    #[track_caller]
    pub fn cancel(&self) {
        if !self.node.deadline_won() {
            self.node.cancel_at(Error::Canceled, None, Location::caller());
        }
    }

    /// Cancels with a cause.
    #[track_caller]
    pub fn cancel_with(&self, cause: impl Into<Cause>) {
        if !self.node.deadline_won() {
            self.node
                .cancel_at(Error::Canceled, Some(cause.into()), Location::caller());
        }
    }

    /// Whether the context is done.
    pub fn is_done(&self) -> bool {
        self.node.is_done()
    }
}

impl Drop for ScopedContext<'_> {
    fn drop(&mut self) {
        // This is the owner's one, last call: no `ContextRef` or
        // waiting future can still borrow us (they borrow `self`); an
        // attached node was pinned, and drop ends its pinning.
        // SAFETY: as argued above.
        unsafe { self.node.detach_scoped() };
    }
}

impl fmt::Debug for ScopedContext<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("ScopedContext");
        d.field("err", &self.node.err());
        if let Some(at) = self.node.cancelled_at() {
            d.field("cancelled_at", &format_args!("{at}"));
        }
        d.finish_non_exhaustive()
    }
}
