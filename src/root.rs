//! [`StaticContext`]: a heap-free root that lives in a `static`.

use crate::cause::Cause;
use crate::done::Done;
use crate::error::{ContextError, Error};
use crate::node::{Node, NodePtr};
use crate::scoped::ContextRef;
use crate::time::{default_timer, Instant, Timer};
use core::fmt;
use core::panic::Location;

/// A cancellation root in a `static`: `const`-constructible, needs no
/// allocator, and can be cancelled from anywhere — any thread, any task, and
/// (with the `critical-section` feature) an interrupt handler.
///
/// It uses the same node, state machine and waiter list as [`Context`]:
/// waiting on [`done`](Self::done) allocates nothing, and with the `alloc`
/// feature [`context`](Self::context) hangs a whole heap tree under it.
///
/// ```
/// use ctxcore::{Error, StaticContext};
///
/// static SHUTDOWN: StaticContext = StaticContext::new();
///
/// assert!(!SHUTDOWN.is_done());
/// SHUTDOWN.cancel_with("power loss"); // e.g. from an interrupt handler
/// assert_eq!(SHUTDOWN.err(), Some(Error::Canceled));
/// assert_eq!(SHUTDOWN.cause().unwrap().as_str(), Some("power loss"));
/// assert_eq!(futures::executor::block_on(SHUTDOWN.done()), Error::Canceled);
/// ```
///
/// [`Context`]: crate::Context
pub struct StaticContext {
    node: Node,
}

impl StaticContext {
    /// A live root without a timer (its heap descendants' deadlines use the
    /// default timer, if any).
    pub const fn new() -> Self {
        StaticContext {
            node: Node::new_static(None),
        }
    }

    /// A live root whose heap descendants read time and arm deadlines on
    /// `timer`.
    pub const fn with_timer(timer: &'static dyn Timer) -> Self {
        StaticContext {
            node: Node::new_static(Some(timer)),
        }
    }

    /// Cancels the root (and everything under it) with [`Error::Canceled`].
    /// The first cancellation wins; later ones change nothing.
    #[track_caller]
    pub fn cancel(&self) {
        self.node.cancel_at(Error::Canceled, None, Location::caller());
    }

    /// Cancels with a cause (for example `Cause::from("reason")`, which never
    /// allocates).
    #[track_caller]
    pub fn cancel_with(&self, cause: impl Into<Cause>) {
        self.node
            .cancel_at(Error::Canceled, Some(cause.into()), Location::caller());
    }

    /// Whether the root is done: one atomic load.
    #[inline]
    pub fn is_done(&self) -> bool {
        self.node.is_done()
    }

    /// Why the root is done, if it is.
    pub fn err(&self) -> Option<Error> {
        self.node.err()
    }

    /// The cause of the winning cancellation, if done.
    pub fn cause(&self) -> Option<Cause> {
        self.node.cause()
    }

    /// Where the winning cancellation ([`cancel`](Self::cancel) or
    /// [`cancel_with`](Self::cancel_with)) was called, if done.
    ///
    /// ```
    /// use ctxcore::StaticContext;
    ///
    /// static ROOT: StaticContext = StaticContext::new();
    /// assert!(ROOT.cancelled_at().is_none());
    /// let line = line!() + 1;
    /// ROOT.cancel();
    /// ROOT.cancel_with("later: changes nothing");
    /// assert_eq!(ROOT.cancelled_at().unwrap().line(), line);
    /// ```
    pub fn cancelled_at(&self) -> Option<&'static Location<'static>> {
        self.node.cancelled_at()
    }

    /// Why the root is done and the cause, as one [`ContextError`]; `None`
    /// while live. See [`Context::error`](crate::Context::error).
    ///
    /// ```
    /// use ctxcore::StaticContext;
    ///
    /// static POWER: StaticContext = StaticContext::new();
    /// POWER.cancel_with("power loss");
    /// assert_eq!(POWER.error().unwrap().to_string(), "context canceled: power loss");
    /// ```
    pub fn error(&self) -> Option<ContextError> {
        ContextError::of_node(&self.node)
    }

    /// The current time on this root's clock: its
    /// [`with_timer`](Self::with_timer) timer, or the default one;
    /// [`Instant::ZERO`] without any timer. A root has no deadline; for the
    /// time left under a deadline, see
    /// [`ContextRef::time_left`](crate::ContextRef::time_left).
    ///
    /// ```
    /// use ctxcore::{ManualClock, StaticContext};
    /// use core::time::Duration;
    ///
    /// static CLOCK: ManualClock = ManualClock::new();
    /// static ROOT: StaticContext = StaticContext::with_timer(&CLOCK);
    /// CLOCK.advance(Duration::from_secs(1));
    /// assert_eq!(ROOT.now().as_nanos(), 1_000_000_000);
    /// ```
    pub fn now(&self) -> Instant {
        self.node
            .timer()
            .or_else(default_timer)
            .map_or(Instant::ZERO, |t| t.now())
    }

    /// A future that completes once the root is done; allocates nothing.
    pub fn done(&'static self) -> Done<'static> {
        Done::new(Some(NodePtr::pinned(&self.node)))
    }

    /// A borrowed view of the root, to hang heap-free
    /// [`ScopedContext`](crate::ScopedContext) children under it.
    ///
    /// ```
    /// use ctxcore::{ScopedContext, StaticContext};
    /// use core::pin::pin;
    ///
    /// static ROOT: StaticContext = StaticContext::new();
    /// let child = pin!(ScopedContext::new(ROOT.as_ref()));
    /// let ctx = child.as_ref().context();
    /// assert!(!ctx.is_done());
    /// ```
    pub fn as_ref(&'static self) -> ContextRef<'static> {
        ContextRef::new(Some(NodePtr::pinned(&self.node)))
    }

    /// A [`Context`](crate::Context) for this root, to build a heap tree under
    /// it (`with_cancel`, `with_timeout`, values...). Allocates nothing itself.
    ///
    /// ```
    /// use ctxcore::StaticContext;
    /// static ROOT: StaticContext = StaticContext::new();
    /// let (child, _h) = ROOT.context().with_cancel();
    /// # assert!(!child.is_done());
    /// ```
    #[cfg(feature = "alloc")]
    pub fn context(&'static self) -> crate::Context {
        crate::Context::from_node(crate::node::NodeRef::from_static(&self.node))
    }
}

impl Default for StaticContext {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for StaticContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("StaticContext");
        d.field("err", &self.err());
        if let Some(at) = self.cancelled_at() {
            d.field("cancelled_at", &format_args!("{at}"));
        }
        d.finish()
    }
}
