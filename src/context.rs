//! [`Context`] and [`CancelHandle`]: the `alloc` API.

use crate::after::AfterFunc;
use crate::cause::Cause;
use crate::done::{Done, DoneOwned, Run, RunWithCause};
use crate::error::{ContextError, Error};
use crate::node::{AfterFuncInner, Node, NodeRef};
use crate::time::{default_timer, Instant, Timer};
use crate::value::{self, Key, Values};
use alloc::boxed::Box;
use alloc::vec::Vec;
use core::fmt;
use core::future::Future;
use core::panic::Location;
use core::time::Duration;

/// A node in a cancellation tree: Go's `context.Context`.
///
/// A context is done when it is cancelled (through its [`CancelHandle`]),
/// when any ancestor is, or when the earliest deadline on its path to the root
/// passes. It also carries request-scoped values under typed [`Key`]s.
/// Cloning is cheap (one reference-count increment) and every clone is the
/// same context.
///
/// ```
/// use ctxcore::{Context, Error, Key};
/// use std::time::Duration;
///
/// static REQUEST_ID: Key<u64> = Key::new("request_id");
///
/// let (request, cancel_request) = Context::background().with_cancel();
/// let request = request.with_value(&REQUEST_ID, 7);
/// let (query, _cancel_query) = request.with_timeout(Duration::from_secs(5));
///
/// assert_eq!(query.value(&REQUEST_ID), Some(&7));
/// assert!(query.deadline().is_some());
///
/// cancel_request.cancel_with("client went away");
/// assert_eq!(query.err(), Some(Error::Canceled));
/// assert_eq!(query.cause().unwrap().to_string(), "client went away");
/// ```
#[derive(Clone)]
pub struct Context {
    /// The cancellation node; `None` for a context that can never be done.
    node: Option<NodeRef>,
    /// Values, nearest first.
    values: Option<Values>,
}

/// Cancels its context: explicitly, or when dropped (Go's `defer cancel()`
/// made automatic). `detach` gives that up.
///
/// ```
/// use ctxcore::Context;
///
/// let (ctx, handle) = Context::background().with_cancel();
/// drop(handle);
/// assert!(ctx.is_done());
///
/// let (ctx, handle) = Context::background().with_cancel();
/// handle.detach();
/// assert!(!ctx.is_done());
/// ```
pub struct CancelHandle {
    node: Option<NodeRef>,
}

impl Context {
    /// The node, for the core's unit tests.
    #[cfg(test)]
    pub(crate) fn test_node_ref(&self) -> Option<&NodeRef> {
        self.node.as_ref()
    }

    /// The root of every tree: never done, no deadline, no values. Allocates
    /// nothing. Its descendants' deadlines use the default timer (the `std`
    /// timer thread with feature `std`).
    ///
    /// ```
    /// let ctx = ctxcore::Context::background();
    /// assert!(!ctx.is_done());
    /// assert_eq!(ctx.err(), None);
    /// assert_eq!(ctx.deadline(), None);
    /// ```
    pub const fn background() -> Context {
        Context {
            node: None,
            values: None,
        }
    }

    /// The same as [`Context::background`], to mark plumbing that is not
    /// finished yet.
    ///
    /// ```
    /// assert!(!ctxcore::Context::todo().is_done());
    /// ```
    pub const fn todo() -> Context {
        Context::background()
    }

    /// A root that is never done and whose descendants read time and arm
    /// deadlines on `timer`.
    ///
    /// ```
    /// use ctxcore::{Context, Error, ManualClock};
    /// use std::time::Duration;
    ///
    /// static CLOCK: ManualClock = ManualClock::new();
    /// let root = Context::with_timer(&CLOCK);
    /// let (ctx, _h) = root.with_timeout(Duration::from_millis(10));
    /// CLOCK.advance(Duration::from_millis(10));
    /// assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
    /// ```
    pub fn with_timer(timer: &'static dyn Timer) -> Context {
        Context {
            node: Some(NodeRef::new_root(Some(timer))),
            values: None,
        }
    }

    /// A context over an existing node (a static root).
    #[cfg(not(loom))]
    pub(crate) fn from_node(node: NodeRef) -> Context {
        Context {
            node: Some(node),
            values: None,
        }
    }

    pub(crate) fn node_ref(&self) -> Option<&crate::node::Node> {
        self.node.as_ref().map(NodeRef::node)
    }

    /// The node with its allocation's provenance, for waiters (a waiter may
    /// arm the node's timer entry, which may free it: node/arm.rs).
    pub(crate) fn node_ptr(&self) -> Option<crate::node::NodePtr<'_>> {
        self.node.as_ref().map(crate::node::NodePtr::counted)
    }

    fn timer(&self) -> Option<&'static dyn Timer> {
        self.node.as_ref().and_then(|n| n.node().timer()).or_else(default_timer)
    }

    fn child(
        &self,
        deadline: Option<Instant>,
        cause: Option<Cause>,
        site: &'static Location<'static>,
    ) -> (Context, CancelHandle) {
        if deadline.is_none() {
            if let Some(parent) = &self.node {
                if let Some(node) = parent.child_if_done(default_timer) {
                    // A child of a done parent is done at birth with the
                    // parent's error and cause, and nothing can ever change
                    // it: it needs no node of its own (no allocation; the
                    // shared immortal one if the parent was plainly
                    // cancelled), and its handle has nothing left to cancel.
                    let ctx = Context {
                        node: Some(node),
                        values: self.values.clone(),
                    };
                    return (ctx, CancelHandle { node: None });
                }
            }
        }
        let (node, handle) = NodeRef::new_child_pair(self.node.as_ref(), default_timer(), deadline, cause, Some(site));
        let ctx = Context {
            node: Some(node),
            values: self.values.clone(),
        };
        (ctx, CancelHandle { node: Some(handle) })
    }

    /// A child cancelled by its handle or by any ancestor. Costs one
    /// allocation.
    ///
    /// ```
    /// use ctxcore::Context;
    ///
    /// let (parent, cancel_parent) = Context::background().with_cancel();
    /// let (child, _cancel_child) = parent.with_cancel();
    /// cancel_parent.cancel();
    /// assert!(child.is_done());
    /// ```
    #[track_caller]
    pub fn with_cancel(&self) -> (Context, CancelHandle) {
        self.child(None, None, Location::caller())
    }

    /// A child that is done with [`Error::DeadlineExceeded`] at `deadline`
    /// (or earlier, if an ancestor's deadline is earlier).
    ///
    /// ```
    /// use ctxcore::{Context, Error, Instant};
    ///
    /// let (ctx, _h) = Context::background().with_deadline(Instant::ZERO); // already past
    /// assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
    /// ```
    #[track_caller]
    pub fn with_deadline(&self, deadline: Instant) -> (Context, CancelHandle) {
        self.child(Some(deadline), None, Location::caller())
    }

    /// As [`with_deadline`](Self::with_deadline); when the deadline fires,
    /// [`cause`](Self::cause) reports `cause`.
    ///
    /// ```
    /// use ctxcore::{Context, Instant};
    /// let (ctx, _h) = Context::background().with_deadline_cause(Instant::ZERO, "too slow");
    /// assert_eq!(ctx.cause().unwrap().to_string(), "too slow");
    /// ```
    #[track_caller]
    pub fn with_deadline_cause(&self, deadline: Instant, cause: impl Into<Cause>) -> (Context, CancelHandle) {
        self.child(Some(deadline), Some(cause.into()), Location::caller())
    }

    /// `with_deadline(now + timeout)`, saturating: never panics, even for
    /// `Duration::MAX`. Without any timer (no `std`, no `with_timer` root)
    /// there is no clock, and the child has no deadline.
    ///
    /// ```
    /// use ctxcore::Context;
    /// use std::time::Duration;
    ///
    /// let (ctx, _h) = Context::background().with_timeout(Duration::MAX);
    /// assert!(!ctx.is_done());
    /// ```
    #[track_caller]
    pub fn with_timeout(&self, timeout: Duration) -> (Context, CancelHandle) {
        let deadline = self.timer().map(|t| t.now().saturating_add(timeout));
        self.child(deadline, None, Location::caller())
    }

    /// As [`with_timeout`](Self::with_timeout), reporting `cause` when the
    /// timeout fires.
    ///
    /// ```
    /// use ctxcore::Context;
    /// use std::time::Duration;
    /// let (ctx, _h) = Context::background().with_timeout_cause(Duration::ZERO, "budget spent");
    /// assert_eq!(ctx.cause().unwrap().to_string(), "budget spent");
    /// ```
    #[track_caller]
    pub fn with_timeout_cause(&self, timeout: Duration, cause: impl Into<Cause>) -> (Context, CancelHandle) {
        let deadline = self.timer().map(|t| t.now().saturating_add(timeout));
        self.child(deadline, Some(cause.into()), Location::caller())
    }

    /// A context that carries `value` under `key`, and otherwise is this
    /// context (same cancellation, deadline and other values). One allocation.
    ///
    /// ```
    /// use ctxcore::{Context, Key};
    /// static TENANT: Key<String> = Key::new("tenant");
    /// let ctx = Context::background().with_value(&TENANT, "acme".to_string());
    /// let inner = ctx.with_value(&TENANT, "shadow".to_string());
    /// assert_eq!(inner.value(&TENANT).map(String::as_str), Some("shadow"));
    /// assert_eq!(ctx.value(&TENANT).map(String::as_str), Some("acme"));
    /// ```
    pub fn with_value<T: Send + Sync + 'static>(&self, key: &'static Key<T>, value: T) -> Context {
        Context {
            node: self.node.clone(),
            values: Some(value::push(self.values.as_ref(), key, value)),
        }
    }

    /// The value under `key` on the nearest context that set it.
    ///
    /// ```
    /// use ctxcore::{Context, Key};
    /// static K: Key<u8> = Key::new("k");
    /// assert_eq!(Context::background().value(&K), None);
    /// ```
    pub fn value<T: Send + Sync + 'static>(&self, key: &'static Key<T>) -> Option<&T> {
        value::lookup(self.values.as_ref(), key)
    }

    /// A context with this one's values but no cancellation and no deadline
    /// (Go's `WithoutCancel`). It keeps the tree's timer for its own
    /// descendants' deadlines.
    ///
    /// ```
    /// use ctxcore::{Context, Key};
    /// static K: Key<u8> = Key::new("k");
    /// let (ctx, h) = Context::background().with_value(&K, 1).with_cancel();
    /// let detached = ctx.without_cancel();
    /// h.cancel();
    /// assert!(ctx.is_done());
    /// assert!(!detached.is_done());
    /// assert_eq!(detached.value(&K), Some(&1));
    /// ```
    pub fn without_cancel(&self) -> Context {
        let timer = self.timer();
        let node = match (timer, default_timer()) {
            (Some(t), Some(d)) if core::ptr::addr_eq(t as *const dyn Timer, d as *const dyn Timer) => None,
            (None, _) => None,
            (Some(t), _) => Some(NodeRef::new_root(Some(t))),
        };
        Context {
            node,
            values: self.values.clone(),
        }
    }

    /// A context that is done as soon as any of `parents` is, with that
    /// parent's error and cause (`AbortSignal.any`, linked tokens). Its
    /// deadline is the earliest of the parents'; its values are the first
    /// parent's. With no parent that can be done, it is never done.
    ///
    /// Parents may run on different timers (say a `ManualClock` tree and
    /// the std timer's): the deadline it reports and hands to its children
    /// is then one parent's, but reads of the `any` context itself stay
    /// exact on every parent's own clock — [`is_done`](Self::is_done) and
    /// [`err`](Self::err) fire a parent whose deadline passed, and the
    /// context is done with that parent's error. Its children follow when
    /// that cancellation arrives: when a timer fires it, or when the `any`
    /// context or that parent is read. A parent that is itself such an
    /// `any` context is read by its own deadline only (one level: nested
    /// contexts over different clocks follow when read or fired).
    ///
    /// ```
    /// use ctxcore::{Context, Error};
    ///
    /// let (shutdown, stop_all) = Context::background().with_cancel();
    /// let (request, _stop_request) = Context::background().with_cancel();
    /// let either = Context::any([&request, &shutdown]);
    /// stop_all.cancel_with("shutting down");
    /// assert_eq!(either.err(), Some(Error::Canceled));
    /// assert_eq!(either.cause().unwrap().to_string(), "shutting down");
    /// ```
    pub fn any<'a, I>(parents: I) -> Context
    where
        I: IntoIterator<Item = &'a Context>,
    {
        let mut values = None;
        let mut first = true;
        let mut nodes: Vec<&NodeRef> = Vec::new();
        for p in parents {
            if first {
                values = p.values.clone();
                first = false;
            }
            if let Some(n) = &p.node {
                nodes.push(n);
            }
        }
        let nodes = distinct(nodes);
        let node = if nodes.is_empty() {
            None
        } else {
            Some(NodeRef::new_any(&nodes))
        };
        Context { node, values }
    }

    /// A context that is done only once every one of `parents` is: a job
    /// shared by several requests, which must go on while any of them still
    /// wants it. The dual of [`Context::any`]. No task is spawned and
    /// nothing is allocated per wait: the node is linked into each parent's
    /// waiter list like an `any` node, and counts its parents down.
    ///
    /// - **Error and cause:** the last parent's: the one whose cancellation
    ///   completed the countdown, i.e. reached this context after every other
    ///   parent's had. A cancellation reaches descendants only after the
    ///   parent itself reads done (as for [`any`](Self::any), and as in Go,
    ///   whose children are cancelled after the parent's `Done` closes), so
    ///   of two cancellations close together either may be the last, even
    ///   one whose parent was seen done before the other was cancelled. Once
    ///   every parent's cancel has returned, the context is done with one of
    ///   their errors and causes. (A read that itself finds the last parents'
    ///   deadlines passed before their timers fired reports the one with the
    ///   latest deadline among them.)
    /// - **Deadline:** the latest of the parents', if every parent has one and
    ///   all of them run on the same timer; otherwise none (the latest of
    ///   instants read on different clocks means nothing, and children then
    ///   inherit no deadline from it). Reads of the `all` context itself are
    ///   exact (as for any deadline), on each parent's own clock: once every
    ///   parent is cancelled or past its deadline, [`is_done`](Self::is_done)
    ///   and [`err`](Self::err) say so, even before a timer fires. A parent
    ///   that is itself an `all` context counts as done once it is flagged
    ///   done or its own deadline has passed (its parents are not read through
    ///   it). Its descendants follow when its cancellation arrives — at once
    ///   when the `all` context (or a parent) is read or a timer fires — so
    ///   a child, with or without a deadline of its own, may read live for a
    ///   moment while the `all` context would read done, if no timer has
    ///   fired yet and nobody has read it; a descendant never reads done
    ///   while the `all` context is live.
    /// - **A parent that can never be done** ([`Context::background`],
    ///   [`without_cancel`](Self::without_cancel), a
    ///   [`with_timer`](Self::with_timer) root) makes the result never done,
    ///   with no deadline; it then links to no parent at all.
    /// - **No parents:** every parent is done, vacuously: the result is done at
    ///   once with [`Error::Canceled`](crate::Error::Canceled) and no cause
    ///   (the dual of `Context::any([])`, which is never done).
    /// - **Duplicates** of a parent (the same node, even through different
    ///   values) count once; a parent already done counts as done.
    /// - **Values:** the first parent's (as for `any`).
    ///
    /// It holds its parents until it is dropped (they do not hold it), so
    /// dropping it releases them.
    ///
    /// ```
    /// use ctxcore::{Context, Error};
    ///
    /// let (first, stop_first) = Context::background().with_cancel();
    /// let (second, stop_second) = Context::background().with_cancel();
    /// let shared = Context::all([&first, &second]);
    /// stop_first.cancel_with("first client left");
    /// assert!(!shared.is_done());
    /// stop_second.cancel_with("second client left");
    /// assert_eq!(shared.err(), Some(Error::Canceled));
    /// assert_eq!(shared.cause().unwrap().to_string(), "second client left");
    ///
    /// assert!(Context::all([]).is_done());
    /// assert!(!Context::all([&first, &Context::background()]).is_done());
    /// ```
    pub fn all<'a, I>(parents: I) -> Context
    where
        I: IntoIterator<Item = &'a Context>,
    {
        let mut values = None;
        let mut first: Option<&Context> = None;
        let mut never = false;
        let mut nodes: Vec<&NodeRef> = Vec::new();
        for p in parents {
            if first.is_none() {
                values = p.values.clone();
                first = Some(p);
            }
            match &p.node {
                Some(n) if !n.node().never_done() => nodes.push(n),
                _ => never = true,
            }
        }
        let node = match first {
            // Never done: like `without_cancel` of the first parent, a node
            // only to carry a timer other than the default one.
            Some(f) if never => match (f.timer(), default_timer()) {
                (Some(t), Some(d)) if core::ptr::addr_eq(t as *const dyn Timer, d as *const dyn Timer) => None,
                (None, _) => None,
                (Some(t), _) => Some(NodeRef::new_root(Some(t))),
            },
            _ => Some(NodeRef::new_all(&distinct(nodes))),
        };
        Context { node, values }
    }

    /// Runs `f` once this context is done: at once (on this thread) if it
    /// already is, otherwise on the thread that cancels it. Returns a handle
    /// whose [`AfterFunc::stop`] can prevent the call. Like Go, `f` keeps the
    /// context alive until it has run or been stopped.
    ///
    /// ```
    /// use ctxcore::Context;
    /// use std::sync::mpsc;
    ///
    /// let (tx, rx) = mpsc::channel();
    /// let (ctx, handle) = Context::background().with_cancel();
    /// ctx.after_func(move || tx.send("cleaned up").unwrap());
    /// handle.cancel();
    /// assert_eq!(rx.try_recv(), Ok("cleaned up"));
    /// ```
    pub fn after_func<F>(&self, f: F) -> AfterFunc
    where
        F: FnOnce() + Send + 'static,
    {
        match &self.node {
            Some(n) if !n.node().never_done() => AfterFunc::registered(AfterFuncInner::register(n, Box::new(f))),
            _ => AfterFunc::never(),
        }
    }

    /// Whether the context is done. One atomic load on a live context
    /// without a deadline (plus a clock read with one).
    ///
    /// ```
    /// let (ctx, h) = ctxcore::Context::background().with_cancel();
    /// assert!(!ctx.is_done());
    /// h.cancel();
    /// assert!(ctx.is_done());
    /// ```
    #[inline]
    pub fn is_done(&self) -> bool {
        match &self.node {
            Some(n) => n.node().is_done(),
            None => false,
        }
    }

    /// `None` while live; then why it is done. Exact: reports
    /// [`Error::DeadlineExceeded`] as soon as the clock passes the deadline.
    ///
    /// ```
    /// use ctxcore::{Context, Error};
    /// let (ctx, h) = Context::background().with_cancel();
    /// h.cancel();
    /// assert_eq!(ctx.err(), Some(Error::Canceled));
    /// ```
    pub fn err(&self) -> Option<Error> {
        self.node.as_ref().and_then(|n| n.node().err())
    }

    /// The cause given to the cancellation that won (inherited from the
    /// ancestor that was cancelled); the [`Error`] itself when none was given;
    /// `None` while live.
    ///
    /// ```
    /// use ctxcore::{Context, Error};
    /// let (ctx, h) = Context::background().with_cancel();
    /// h.cancel();
    /// assert_eq!(ctx.cause().unwrap().as_error(), Some(Error::Canceled));
    /// ```
    pub fn cause(&self) -> Option<Cause> {
        self.node.as_ref().and_then(|n| n.node().cause())
    }

    /// Where the winning cancellation was requested, inherited like the
    /// cause; `None` while live. An explicit
    /// [`cancel`](CancelHandle::cancel) or
    /// [`cancel_with`](CancelHandle::cancel_with) reports its own call site; a
    /// deadline that fires, and a [`CancelHandle`] that cancels by being
    /// dropped, report the call that made the context
    /// ([`with_cancel`](Self::with_cancel),
    /// [`with_deadline`](Self::with_deadline),
    /// [`with_timeout`](Self::with_timeout), ...). A child reports its
    /// cancelled ancestor's, also one made after the ancestor was cancelled.
    /// Go has no counterpart (golang/go#26356); here it is a
    /// `&'static Location` kept with the cause, free at run time.
    ///
    /// ```
    /// use ctxcore::Context;
    ///
    /// let (ctx, h) = Context::background().with_cancel();
    /// let (child, _h2) = ctx.with_cancel();
    /// assert!(child.cancelled_at().is_none());
    /// let line = line!() + 1;
    /// h.cancel();
    /// let at = child.cancelled_at().unwrap();
    /// assert_eq!((at.file(), at.line()), (file!(), line));
    /// ```
    pub fn cancelled_at(&self) -> Option<&'static Location<'static>> {
        self.node.as_ref().and_then(|n| n.node().cancelled_at())
    }

    /// `None` while live; then why it is done together with the cause, as
    /// one [`ContextError`]: [`err`](Self::err) and [`cause`](Self::cause)
    /// in a value that implements `std::error::Error` (the cause is its
    /// `source`), for returning across an API edge with `?`.
    ///
    /// ```
    /// use ctxcore::{Context, Error};
    ///
    /// let (ctx, h) = Context::background().with_cancel();
    /// assert!(ctx.error().is_none());
    /// h.cancel_with("client disconnected");
    /// let err = ctx.error().unwrap();
    /// assert_eq!(err.kind(), Error::Canceled);
    /// assert_eq!(err.to_string(), "context canceled: client disconnected");
    /// ```
    pub fn error(&self) -> Option<ContextError> {
        self.node.as_ref().and_then(|n| ContextError::of_node(n.node()))
    }

    /// The earliest deadline on the path to the root, if any.
    ///
    /// ```
    /// use ctxcore::{Context, Instant};
    /// let t = Instant::from_nanos(u64::MAX / 2);
    /// let (ctx, _h) = Context::background().with_deadline(t);
    /// let (child, _h2) = ctx.with_deadline(Instant::MAX);
    /// assert_eq!(child.deadline(), Some(t));
    /// ```
    pub fn deadline(&self) -> Option<Instant> {
        self.node.as_ref().and_then(|n| n.node().deadline())
    }

    /// The current time on this context's own clock: the timer of its tree
    /// (the root's [`with_timer`](Self::with_timer) timer, or the default
    /// one for [`background`](Self::background) trees). This is the clock
    /// [`deadline`](Self::deadline) is measured on; [`Instant::now`] reads
    /// only the default clock and must not be mixed with a tree on another
    /// timer.
    ///
    /// Without any timer (no `std` feature and no `with_timer` root) there is
    /// no clock: `now` is [`Instant::ZERO`] and deadlines never pass.
    ///
    /// ```
    /// use ctxcore::{Context, ManualClock};
    /// use std::time::Duration;
    ///
    /// static CLOCK: ManualClock = ManualClock::new();
    /// let root = Context::with_timer(&CLOCK);
    /// CLOCK.advance(Duration::from_secs(7));
    /// let (ctx, _h) = root.with_timeout(Duration::from_secs(1));
    /// assert_eq!(ctx.now().as_nanos(), 7_000_000_000);
    /// assert_eq!(ctx.deadline(), Some(ctx.now() + Duration::from_secs(1)));
    /// ```
    pub fn now(&self) -> Instant {
        self.timer().map_or(Instant::ZERO, |t| t.now())
    }

    /// How long until the deadline, on this context's own clock (Go's
    /// `time.Until(deadline)`): `None` without a deadline, and
    /// [`Duration::ZERO`] once it has passed. Use it to propagate a deadline
    /// — a timeout for a downstream call, a socket, a database statement —
    /// rather than `deadline() - Instant::now()`, which is wrong on any tree
    /// whose timer is not the default one (a `TokioTimer` tree's clock starts
    /// when the timer is made, and may be paused).
    ///
    /// A context cancelled before its deadline still reports the time left
    /// until that deadline; check [`err`](Self::err) for whether it is done.
    ///
    /// ```
    /// use ctxcore::Context;
    /// use std::time::Duration;
    ///
    /// fn call_downstream(ctx: &Context) -> Duration {
    ///     // The downstream call gets what is left of our budget, at most 2 s.
    ///     ctx.time_left().map_or(Duration::from_secs(2), |left| left.min(Duration::from_secs(2)))
    /// }
    ///
    /// let (request, _h) = Context::background().with_timeout(Duration::from_millis(500));
    /// assert!(call_downstream(&request) <= Duration::from_millis(500));
    /// assert_eq!(call_downstream(&Context::background()), Duration::from_secs(2));
    ///
    /// let (late, _h) = Context::background().with_timeout(Duration::ZERO);
    /// assert_eq!(late.time_left(), Some(Duration::ZERO));
    /// ```
    pub fn time_left(&self) -> Option<Duration> {
        let deadline = self.deadline()?;
        Some(deadline.saturating_duration_since(self.now()))
    }

    /// A future that completes with the [`Error`] once the context is done.
    /// Waiting allocates nothing: the waiter lives inside the future. It is a
    /// `FusedFuture`; on a context that can never be done it never completes.
    ///
    /// ```
    /// use ctxcore::{Context, Error};
    /// let (ctx, h) = Context::background().with_cancel();
    /// h.cancel();
    /// assert_eq!(futures::executor::block_on(ctx.done()), Error::Canceled);
    /// ```
    pub fn done(&self) -> Done<'_> {
        Done::new(self.node_ptr())
    }

    /// [`done`](Self::done) as a `'static` future that owns a clone of the
    /// context, for spawning.
    ///
    /// ```
    /// use ctxcore::{Context, Error};
    /// let (ctx, h) = Context::background().with_cancel();
    /// let waiting = std::thread::spawn({
    ///     let done = ctx.done_owned();
    ///     move || futures::executor::block_on(done)
    /// });
    /// h.cancel();
    /// assert_eq!(waiting.join().unwrap(), Error::Canceled);
    /// ```
    pub fn done_owned(&self) -> DoneOwned {
        DoneOwned::new(self.node.clone())
    }

    /// Runs `fut` until it completes (`Ok(output)`) or the context is done
    /// (`Err(error)`, and `fut` is dropped at once). The future owns a clone of
    /// the context, so it is `'static` and `Send` when `fut` is.
    ///
    /// Who wins when both happen:
    /// - a context already done before the first poll never starts the work:
    ///   `fut` is dropped without being polled;
    /// - once the work has started, finished work is kept: every poll polls
    ///   `fut` first, so an output that is ready wins over a cancel seen on
    ///   the same poll (as tokio-util's `run_until_cancelled`).
    ///
    /// ```
    /// use ctxcore::{Context, Error};
    ///
    /// let (ctx, h) = Context::background().with_cancel();
    /// assert_eq!(futures::executor::block_on(ctx.run(async { 5 })), Ok(5));
    /// h.cancel();
    /// let never = futures::future::pending::<()>();
    /// assert_eq!(futures::executor::block_on(ctx.run(never)), Err(Error::Canceled));
    /// // Done before the first poll: even ready work is not started.
    /// assert_eq!(futures::executor::block_on(ctx.run(async { 5 })), Err(Error::Canceled));
    /// ```
    ///
    /// A value that arrives together with the cancel is returned, not lost:
    ///
    /// ```
    /// use ctxcore::Context;
    /// use futures::channel::oneshot;
    /// use futures::FutureExt;
    ///
    /// let (ctx, h) = Context::background().with_cancel();
    /// let (tx, rx) = oneshot::channel();
    /// let mut run = Box::pin(ctx.run(rx));
    /// assert!(run.as_mut().now_or_never().is_none()); // started, waiting
    /// tx.send(7).unwrap();
    /// h.cancel(); // both are ready on the next poll
    /// assert_eq!(run.now_or_never(), Some(Ok(Ok(7))));
    /// ```
    pub fn run<F: Future>(&self, fut: F) -> Run<F> {
        Run::new(self.done_owned(), fut)
    }

    /// [`run`](Self::run), reporting the cause too: `Ok(output)`, or
    /// `Err(`[`ContextError`]`)` — the error and the cause of the
    /// cancellation that won — if the context is done first. The same rules
    /// as `run`: done before the first poll, the work never starts; once
    /// started, a ready output wins.
    ///
    /// ```
    /// use ctxcore::{Context, ContextError};
    /// use std::time::Duration;
    ///
    /// async fn query(ctx: &Context) -> Result<u32, Box<dyn std::error::Error + Send + Sync>> {
    ///     let rows = ctx.run_with_cause(futures::future::pending::<u32>()).await?;
    ///     Ok(rows)
    /// }
    ///
    /// let (ctx, _h) = Context::background().with_timeout_cause(Duration::from_millis(5), "database too slow");
    /// let err = futures::executor::block_on(query(&ctx)).unwrap_err();
    /// assert_eq!(err.to_string(), "context deadline exceeded: database too slow");
    /// assert!(err.downcast_ref::<ContextError>().unwrap().is_deadline_exceeded());
    /// ```
    pub fn run_with_cause<F: Future>(&self, fut: F) -> RunWithCause<F> {
        RunWithCause::new(self.run(fut))
    }

    /// Blocks this thread until the context is done; returns the error.
    /// Blocks forever on a context that can never be done.
    ///
    /// ```
    /// use ctxcore::{Context, Error};
    /// use std::time::Duration;
    /// let (ctx, _h) = Context::background().with_timeout(Duration::from_millis(5));
    /// assert_eq!(ctx.wait_blocking(), Error::DeadlineExceeded);
    /// ```
    #[cfg(feature = "std")]
    pub fn wait_blocking(&self) -> Error {
        crate::done::block_on_done(self.done(), None, || self.time_left()).unwrap_or(Error::Canceled)
    }

    /// Blocks until the context is done (`Some(error)`) or `timeout` passes
    /// (`None`). Never panics, even for `Duration::MAX`.
    ///
    /// ```
    /// use ctxcore::Context;
    /// use std::time::Duration;
    /// let (ctx, _h) = Context::background().with_cancel();
    /// assert_eq!(ctx.wait_blocking_timeout(Duration::from_millis(1)), None);
    /// ```
    #[cfg(feature = "std")]
    pub fn wait_blocking_timeout(&self, timeout: Duration) -> Option<Error> {
        crate::done::block_on_done(self.done(), Some(timeout), || self.time_left())
    }
}

impl Default for Context {
    /// [`Context::background`].
    fn default() -> Self {
        Context::background()
    }
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Context");
        match &self.node {
            None => d.field("cancellable", &false),
            Some(_) => d.field("err", &self.err()),
        };
        if let Some(at) = self.cancelled_at() {
            d.field("cancelled_at", &format_args!("{at}"));
        }
        if let Some(dl) = self.deadline() {
            d.field("deadline", &dl);
        }
        struct Keys<'a>(&'a Option<Values>);
        impl fmt::Debug for Keys<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let mut l = f.debug_list();
                value::names(self.0.as_ref(), |n| {
                    l.entry(&n);
                });
                l.finish()
            }
        }
        if self.values.is_some() {
            d.field("values", &Keys(&self.values));
        }
        d.finish()
    }
}

impl CancelHandle {
    /// Cancels the context with [`Error::Canceled`]. Only the first
    /// cancellation counts; later ones change nothing.
    ///
    /// ```
    /// let (ctx, h) = ctxcore::Context::background().with_cancel();
    /// h.cancel();
    /// h.cancel(); // no-op
    /// assert!(ctx.is_done());
    /// ```
    #[track_caller]
    pub fn cancel(&self) {
        if let Some(n) = &self.node {
            Node::cancel_ref(n, Error::Canceled, None, Some(Location::caller()));
        }
    }

    /// Cancels with a cause that [`Context::cause`] reports (if this
    /// cancellation wins).
    ///
    /// ```
    /// let (ctx, h) = ctxcore::Context::background().with_cancel();
    /// h.cancel_with("shutdown");
    /// h.cancel_with("ignored");
    /// assert_eq!(ctx.cause().unwrap().to_string(), "shutdown");
    /// ```
    #[track_caller]
    pub fn cancel_with(&self, cause: impl Into<Cause>) {
        if let Some(n) = &self.node {
            Node::cancel_ref(n, Error::Canceled, Some(cause.into()), Some(Location::caller()));
        }
    }

    /// Cancels as dropping the handle does: the location reported is where
    /// the context was made, for helpers whose own call site would tell the
    /// user nothing (a `Group`'s first error, a `CancelOnDrop` dropped).
    pub(crate) fn cancel_as_made(&self, cause: Option<Cause>) {
        if let Some(n) = &self.node {
            Node::cancel_ref(n, Error::Canceled, cause, None);
        }
    }

    /// Whether the context is done (for any reason).
    pub fn is_done(&self) -> bool {
        // No node: the context was born done (a child of a done parent).
        self.node.as_ref().is_none_or(|n| n.node().is_done())
    }

    /// Gives up cancel-on-drop: the context then lives until an ancestor is
    /// cancelled or its deadline passes.
    pub fn detach(mut self) {
        self.node = None;
    }
}

impl Drop for CancelHandle {
    #[inline]
    fn drop(&mut self) {
        if let Some(n) = &self.node {
            // A handle dropped after an explicit `cancel` (or whose context an
            // ancestor cancelled) has nothing left to do but let go of its
            // reference: one load, no call.
            if !n.node().is_done_flag() {
                Node::cancel_ref(n, Error::Canceled, None, None);
            }
        }
    }
}

impl fmt::Debug for CancelHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CancelHandle").field("done", &self.is_done()).finish()
    }
}

/// `nodes` without repeats (the same node, even through different
/// contexts), each kept at its first position: `any` and `all` depend on the
/// order given (the first done parent, the last parent to count down, the
/// first parent's timer). O(n log n): a sort by address, not a scan per
/// parent.
fn distinct(nodes: Vec<&NodeRef>) -> Vec<&NodeRef> {
    if nodes.len() < 2 {
        return nodes;
    }
    let mut keyed: Vec<(*const (), usize)> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (core::ptr::from_ref(n.node()).cast::<()>(), i))
        .collect();
    // Sorted by address, then position: the first of each run of equal
    // addresses is the node's first position.
    keyed.sort_unstable();
    keyed.dedup_by(|later, first| nodes[later.1].ptr_eq(nodes[first.1]));
    if keyed.len() == nodes.len() {
        return nodes;
    }
    keyed.sort_unstable_by_key(|k| k.1);
    keyed.into_iter().map(|(_, i)| nodes[i]).collect()
}
