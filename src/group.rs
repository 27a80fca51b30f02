//! Error groups: Go's `errgroup.WithContext`. Several futures under one
//! child context; the first `Err` cancels it, with that error as the cause,
//! and is what the group returns.
//!
//! # The error slot
//!
//! The first error is kept in an [`ErrorSlot`]: an `Option<E>` behind the
//! crate's one lock ([`RawLock`](crate::sync::RawLock)).
//!
//! **Invariant G1.** `ErrorSlot::value` is only read or written while
//! `ErrorSlot::lock` is held, and no user code (no `E`'s drop, no cause
//! conversion) runs while it is held: a refused error is handed back and
//! dropped after the lock is released.
//!
//! **Lock order.** The slot's lock is a leaf: nothing else is locked while it
//! is held, and it is never taken while a context's lock is held.

use crate::cause::Cause;
use crate::context::{CancelHandle, Context};
use crate::done::DoneOwned;
use crate::sync::{RawLock, UnsafeCell};
use crate::tracker::{InFlight, Tracker};
use crate::Arc;
use alloc::boxed::Box;
use alloc::vec::Vec;
use core::fmt;
use core::future::Future;
use core::pin::Pin;
use core::task::{Context as TaskContext, Poll};
use futures_core::future::FusedFuture;

type LocalTask<'a, E> = Pin<Box<dyn Future<Output = Result<(), E>> + Send + 'a>>;
type SpawnedFuture<E> = Pin<Box<dyn Future<Output = Result<(), E>> + Send + 'static>>;

/// Runs several futures under one child context: the first to fail cancels
/// the others, with its error as the cause, and is what
/// [`wait`](Self::wait) returns — Go's `errgroup.WithContext`.
///
/// - [`spawn`](Self::spawn) adds a future to the group itself: all of them
///   run in the task that awaits [`wait`](Self::wait), on any executor, with
///   no spawning and no `'static` bound (they may borrow from the caller).
///   They start when `wait` is first polled.
/// - [`spawn_with`](Self::spawn_with) hands a future to an executor's spawn
///   function (`tokio::spawn`, a smol `Executor::spawn`, …) for work that
///   should run in parallel; it starts at once.
///
/// When a future returns `Err`, the group's [`context`](Self::context) is
/// cancelled with that error as the [`Cause`] (so `cause().downcast_ref::<E>()`
/// finds it); the others observe the cancel (`ctx.done()`, `ctx.run(..)`) and
/// stop. `wait` returns once **every** future has finished, like Go's `Wait`:
/// a future that ignores the context keeps it waiting (drop the `wait` future
/// to drop the in-task futures at once). When `wait` returns, or when the
/// group is dropped, the context is cancelled plainly.
///
/// Turning `E` into the cause needs a copy of it: [`Group::new`] takes
/// `E: Clone` (e.g. your own error enum, `Arc<io::Error>`);
/// [`Group::with_cause`] takes any conversion.
///
/// ```
/// use ctxcore::{Context, Group};
///
/// #[derive(Debug, Clone, PartialEq)]
/// struct QueryFailed(&'static str);
/// impl std::fmt::Display for QueryFailed {
///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
///         write!(f, "query failed: {}", self.0)
///     }
/// }
/// impl std::error::Error for QueryFailed {}
///
/// let (request, _request_handle) = Context::background().with_cancel();
/// let mut group = Group::new(&request);
/// let ctx = group.context().clone();
/// group.spawn(async { Err(QueryFailed("users")) });
/// group.spawn(async move {
///     // A sibling: stops when the group's context is cancelled.
///     let _ = ctx.done().await;
///     assert_eq!(ctx.cause().unwrap().downcast_ref(), Some(&QueryFailed("users")));
///     Ok(())
/// });
/// let result = futures::executor::block_on(group.wait());
/// assert_eq!(result, Err(QueryFailed("users")));
/// assert!(!request.is_done()); // only the group's own context was cancelled
/// ```
pub struct Group<'a, E> {
    shared: Arc<Shared<E>>,
    context: Context,
    tasks: Vec<LocalTask<'a, E>>,
    /// Counts the tasks handed to `spawn_with`; created by the first.
    spawned: Option<Spawned>,
}

struct Spawned {
    tracker: Tracker,
    /// Keeps the count above zero until `wait` starts, so every spawned
    /// task's guard is a clone (never refused, tracker.rs invariant 2).
    anchor: Option<InFlight>,
}

struct Shared<E> {
    /// Cancels the group's context: on the first error, when `wait` returns,
    /// or when the group drops.
    handle: CancelHandle,
    first_error: ErrorSlot<E>,
    to_cause: fn(&E) -> Cause,
}

impl<E> Shared<E> {
    /// Keeps `err` if it is the first, and cancels the group with its cause.
    fn record(&self, err: E) {
        if self.first_error.is_set() {
            return;
        }
        // User code (the conversion) runs before the slot is locked (G1).
        let cause = (self.to_cause)(&err);
        if self.first_error.put(err).is_ok() {
            // Reported at the group's creation (`Context::cancelled_at`).
            self.handle.cancel_as_made(Some(cause));
        }
        // A refused error and its cause drop here, with no lock held.
    }
}

/// The first error of a group: an `Option<E>` behind the crate's lock
/// (invariant G1).
struct ErrorSlot<E> {
    lock: RawLock,
    /// # Safety
    /// Guarded by `lock` (invariant G1).
    value: UnsafeCell<Option<E>>,
}

// (Invariant G1) `value` is only accessed with `lock` held, so the
// slot never gives out a reference to an `E`: sharing it between threads
// only moves an `E` from the thread that puts it to the thread that takes it,
// which `E: Send` allows.
// SAFETY: as argued above.
unsafe impl<E: Send> Sync for ErrorSlot<E> {}

impl<E> ErrorSlot<E> {
    fn new() -> Self {
        ErrorSlot {
            lock: RawLock::new(),
            value: UnsafeCell::new(None),
        }
    }

    fn is_set(&self) -> bool {
        let _locked = self.lock.lock();
        // SAFETY: (G1) the lock is held; the reference ends within it.
        self.value.with(|v| unsafe { (*v).is_some() })
    }

    /// Stores `err` if the slot is empty; otherwise hands it back, to be
    /// dropped by the caller once the lock is released.
    fn put(&self, err: E) -> Result<(), E> {
        let _locked = self.lock.lock();
        // (G1) the lock is held; the reference ends within it, and
        // nothing dropped inside it is user data (the slot is empty when
        // written).
        // SAFETY: as argued above (invariant G1).
        self.value.with_mut(|v| unsafe {
            match &mut *v {
                Some(_) => Err(err),
                empty @ None => {
                    *empty = Some(err);
                    Ok(())
                }
            }
        })
    }

    /// Takes the error out; the caller drops it, after the lock is released.
    fn take(&self) -> Option<E> {
        let _locked = self.lock.lock();
        // SAFETY: (G1) the lock is held; the reference ends within it.
        self.value.with_mut(|v| unsafe { (*v).take() })
    }
}

fn clone_into_cause<E: Clone + Into<Cause>>(err: &E) -> Cause {
    err.clone().into()
}

impl<'a, E: Send + 'a> Group<'a, E> {
    /// A group under a new child of `parent`; an error becomes the cause by
    /// `err.clone().into()`, so `cause().downcast_ref::<E>()` finds it.
    ///
    /// ```
    /// use ctxcore::{Context, Group};
    ///
    /// let mut group = Group::<&'static str>::new(&Context::background());
    /// group.spawn(async { Err("disk full") });
    /// let ctx = group.context().clone();
    /// assert_eq!(futures::executor::block_on(group.wait()), Err("disk full"));
    /// assert_eq!(ctx.cause().unwrap().to_string(), "disk full");
    /// ```
    #[track_caller]
    pub fn new(parent: &Context) -> Self
    where
        E: Clone + Into<Cause>,
    {
        Group::with_cause(parent, clone_into_cause::<E>)
    }

    /// A group whose errors become causes through `to_cause`: for error
    /// types that are not `Clone` (`std::io::Error`, `anyhow::Error`,
    /// `Box<dyn Error>`).
    ///
    /// ```
    /// use ctxcore::{Cause, Context, Group};
    /// use std::io;
    ///
    /// let mut group = Group::with_cause(&Context::background(), |e: &io::Error| {
    ///     Cause::from(io::Error::new(e.kind(), e.to_string()))
    /// });
    /// group.spawn(async { Err(io::Error::new(io::ErrorKind::BrokenPipe, "peer left")) });
    /// let ctx = group.context().clone();
    /// let err = futures::executor::block_on(group.wait()).unwrap_err();
    /// assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    /// let cause = ctx.cause().unwrap();
    /// assert_eq!(cause.downcast_ref::<io::Error>().unwrap().kind(), io::ErrorKind::BrokenPipe);
    /// ```
    #[track_caller]
    pub fn with_cause(parent: &Context, to_cause: fn(&E) -> Cause) -> Self {
        let (context, handle) = parent.with_cancel();
        Group {
            shared: Arc::new(Shared {
                handle,
                first_error: ErrorSlot::new(),
                to_cause,
            }),
            context,
            tasks: Vec::new(),
            spawned: None,
        }
    }

    /// The group's context: done at the first error (with it as the cause),
    /// when an ancestor is, or when `wait` returns.
    ///
    /// ```
    /// use ctxcore::{Context, Group};
    ///
    /// let (parent, cancel_parent) = Context::background().with_cancel();
    /// let group = Group::<&'static str>::new(&parent);
    /// cancel_parent.cancel_with("request aborted");
    /// assert_eq!(group.context().cause().unwrap().to_string(), "request aborted");
    /// ```
    pub fn context(&self) -> &Context {
        &self.context
    }

    /// Adds `fut` to the group, to run in the task that awaits
    /// [`wait`](Self::wait) (no executor needed, no `'static` bound). Each
    /// wake-up of that task polls every unfinished future of the group, so
    /// this suits the usual fan-out of a request (a few to a few dozen
    /// calls); use [`spawn_with`](Self::spawn_with) for thousands.
    ///
    /// ```
    /// use ctxcore::{Context, Group};
    ///
    /// let mut hits = Vec::new();
    /// let mut group = Group::<&'static str>::new(&Context::background());
    /// group.spawn(async { hits.push("users"); Ok(()) }); // borrows `hits`
    /// assert_eq!(futures::executor::block_on(group.wait()), Ok(()));
    /// assert_eq!(hits, ["users"]);
    /// ```
    pub fn spawn<F>(&mut self, fut: F)
    where
        F: Future<Output = Result<(), E>> + Send + 'a,
    {
        self.tasks.push(Box::pin(fut));
    }

    /// Hands `fut` to `spawn` (an executor's spawn function) wrapped in a
    /// [`GroupTask`]; returns what `spawn` returns. The task starts at once,
    /// runs wherever the executor runs it, records its error in the group
    /// (cancelling the group's context from its own thread), and
    /// [`wait`](Self::wait) waits for it. No channel: the task and the group
    /// share one small state.
    ///
    /// A task dropped before it completes (it panicked, or its executor shut
    /// down) cancels the group with [`TaskAbandoned`] as the cause and makes
    /// `wait` return `E::from(TaskAbandoned)` if no error came first.
    ///
    /// With tokio, pass `tokio::spawn` (dropping a `JoinHandle` detaches
    /// the task); with smol/async-executor, detach the returned task (dropping
    /// an `async_task::Task` cancels it):
    ///
    /// ```
    /// use ctxcore::{Context, Group, TaskAbandoned};
    ///
    /// #[derive(Debug, Clone, PartialEq)]
    /// enum Failure { Query(&'static str), Abandoned }
    /// impl std::fmt::Display for Failure {
    ///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    ///         write!(f, "{self:?}")
    ///     }
    /// }
    /// impl std::error::Error for Failure {}
    /// impl From<TaskAbandoned> for Failure {
    ///     fn from(_: TaskAbandoned) -> Self { Failure::Abandoned }
    /// }
    ///
    /// let ex = async_executor::Executor::new();
    /// let mut group = Group::new(&Context::background());
    /// for shard in 0..4 {
    ///     let ctx = group.context().clone();
    ///     group.spawn_with(|task| ex.spawn(task).detach(), async move {
    ///         if shard == 2 {
    ///             return Err(Failure::Query("shard 2 down"));
    ///         }
    ///         let _ = ctx.done().await; // the others stop on the cancel
    ///         Ok(())
    ///     });
    /// }
    /// let result = futures_lite::future::block_on(ex.run(group.wait()));
    /// assert_eq!(result, Err(Failure::Query("shard 2 down")));
    /// ```
    pub fn spawn_with<S, R, F>(&mut self, spawn: S, fut: F) -> R
    where
        S: FnOnce(GroupTask<E>) -> R,
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: From<TaskAbandoned> + 'static,
    {
        let spawned = self.spawned.get_or_insert_with(|| {
            let tracker = Tracker::new(&Context::background());
            let anchor = tracker.track();
            Spawned { tracker, anchor }
        });
        let task = GroupTask {
            fut: Some(Box::pin(fut)),
            shared: self.shared.clone(),
            abandoned: abandoned::<E>,
            // A clone of the anchor: never refused (see `Spawned::anchor`).
            _in_flight: spawned.anchor.clone(),
        };
        spawn(task)
    }

    /// Runs the group's in-task futures and waits for them and for the
    /// spawned tasks: `Err` with the first error, `Ok(())` if none failed.
    /// The context is then cancelled plainly (Go's `Wait`). Dropping the
    /// returned future before it completes drops the in-task futures and
    /// cancels the context; spawned tasks then stop on the cancel.
    ///
    /// ```
    /// use ctxcore::{Context, Group};
    ///
    /// let mut group = Group::<&'static str>::new(&Context::background());
    /// group.spawn(async { Ok(()) });
    /// group.spawn(async { Ok(()) });
    /// let ctx = group.context().clone();
    /// assert_eq!(futures::executor::block_on(group.wait()), Ok(()));
    /// assert!(ctx.is_done());
    /// ```
    pub fn wait(self) -> GroupWait<'a, E> {
        GroupWait {
            group: Some(self),
            spawned_done: None,
        }
    }
}

fn abandoned<E: From<TaskAbandoned>>() -> E {
    E::from(TaskAbandoned)
}

impl<E> Drop for Group<'_, E> {
    fn drop(&mut self) {
        self.shared.handle.cancel_as_made(None);
    }
}

impl<E> fmt::Debug for Group<'_, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Group")
            .field("context", &self.context)
            .field("in_task", &self.tasks.len())
            .field(
                "spawned",
                &self
                    .spawned
                    .as_ref()
                    .map_or(0, |s| s.tracker.in_flight().saturating_sub(1)),
            )
            .finish_non_exhaustive()
    }
}

/// The future of [`Group::wait`]: `Ok(())`, or the group's first error.
///
/// ```
/// use ctxcore::{Context, Group};
///
/// let group = Group::<&'static str>::new(&Context::background());
/// let wait: ctxcore::GroupWait<'_, &'static str> = group.wait();
/// assert_eq!(futures::executor::block_on(wait), Ok(()));
/// ```
#[must_use = "futures do nothing unless polled"]
pub struct GroupWait<'a, E> {
    /// `None` once finished.
    group: Option<Group<'a, E>>,
    /// Done when the spawned tasks have all finished; armed on the first poll.
    spawned_done: Option<Pin<Box<DoneOwned>>>,
}

impl<E> Future for GroupWait<'_, E> {
    type Output = Result<(), E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Result<(), E>> {
        // Every field is `Unpin` (the futures are boxed).
        let this = &mut *self;
        let Some(group) = this.group.as_mut() else {
            return Poll::Pending; // finished before: fused
        };
        if this.spawned_done.is_none() {
            if let Some(spawned) = group.spawned.as_mut() {
                // No more spawns can come (`wait` took the group): let the
                // count reach zero.
                spawned.tracker.close();
                spawned.anchor = None;
                this.spawned_done = Some(Box::pin(spawned.tracker.drained_done()));
            }
        }
        let mut i = 0;
        while i < group.tasks.len() {
            match group.tasks[i].as_mut().poll(cx) {
                Poll::Ready(result) => {
                    drop(group.tasks.swap_remove(i));
                    if let Err(err) = result {
                        group.shared.record(err);
                    }
                }
                Poll::Pending => i += 1,
            }
        }
        if !group.tasks.is_empty() {
            return Poll::Pending;
        }
        if let Some(done) = this.spawned_done.as_mut() {
            if done.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
        // Every future has finished (the spawned ones recorded their errors
        // before their guards dropped: tracker.rs invariant 4).
        let first_error = group.shared.first_error.take();
        // Dropping the group cancels its context plainly (Go's `Wait`).
        this.group = None;
        Poll::Ready(match first_error {
            Some(err) => Err(err),
            None => Ok(()),
        })
    }
}

impl<E> FusedFuture for GroupWait<'_, E> {
    fn is_terminated(&self) -> bool {
        self.group.is_none()
    }
}

impl<E> fmt::Debug for GroupWait<'_, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupWait")
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

/// A future of a [`Group`] handed to an executor by
/// [`Group::spawn_with`]: `'static`, `Send`, output `()`. It runs the
/// group's future, records an error in the group, and tells the group when it
/// is over.
///
/// ```
/// use ctxcore::{Context, Group, GroupTask, TaskAbandoned};
///
/// let mut group = Group::<Box<dyn std::error::Error + Send + Sync>>::with_cause(
///     &Context::background(),
///     |e| ctxcore::Cause::from(e.to_string()),
/// );
/// let mut handed_over: Vec<GroupTask<_>> = Vec::new();
/// group.spawn_with(|task| handed_over.push(task), async { Err("no route".into()) });
/// // The "executor": runs the tasks here.
/// for task in handed_over {
///     futures::executor::block_on(task);
/// }
/// let err = futures::executor::block_on(group.wait()).unwrap_err();
/// assert_eq!(err.to_string(), "no route");
/// ```
#[must_use = "a group task does nothing unless spawned or polled"]
pub struct GroupTask<E> {
    /// `None` once finished.
    fut: Option<SpawnedFuture<E>>,
    shared: Arc<Shared<E>>,
    abandoned: fn() -> E,
    /// Declared last: released only after the error has been recorded.
    _in_flight: Option<InFlight>,
}

impl<E> Future for GroupTask<E> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<()> {
        // Every field is `Unpin` (the future is boxed).
        let this = &mut *self;
        let Some(fut) = this.fut.as_mut() else {
            return Poll::Ready(());
        };
        match fut.as_mut().poll(cx) {
            Poll::Ready(result) => {
                this.fut = None;
                if let Err(err) = result {
                    this.shared.record(err);
                }
                // Finished: let the group's `wait` return without us.
                this._in_flight = None;
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<E> Drop for GroupTask<E> {
    fn drop(&mut self) {
        if let Some(fut) = self.fut.take() {
            // Abandoned: cancel the group with the reason *before* dropping
            // the future, so the contexts under it see it (the drop-order
            // pitfall of `CancelOnDrop`).
            self.shared.record((self.abandoned)());
            drop(fut);
        }
    }
}

impl<E> fmt::Debug for GroupTask<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupTask")
            .field("finished", &self.fut.is_none())
            .finish_non_exhaustive()
    }
}

/// The cause and error of a [`Group`] task that was dropped before it
/// completed: it panicked, or its executor shut down.
///
/// ```
/// use ctxcore::{Context, Group, TaskAbandoned};
///
/// let mut group = Group::<std::io::Error>::with_cause(&Context::background(), |e| {
///     ctxcore::Cause::from(e.to_string())
/// });
/// let ctx = group.context().clone();
/// group.spawn_with(drop, async { Ok(()) }); // an "executor" that drops it
/// assert_eq!(ctx.cause().unwrap().to_string(), TaskAbandoned.to_string());
/// let err = futures::executor::block_on(group.wait()).unwrap_err();
/// assert!(err.get_ref().unwrap().is::<TaskAbandoned>());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct TaskAbandoned;

impl fmt::Display for TaskAbandoned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("group task dropped before it completed (it panicked, or its executor shut down)")
    }
}

impl core::error::Error for TaskAbandoned {}

#[cfg(feature = "std")]
impl From<TaskAbandoned> for std::io::Error {
    /// An `io::Error` of kind `Other` whose inner error is the
    /// `TaskAbandoned`.
    fn from(err: TaskAbandoned) -> Self {
        std::io::Error::other(err)
    }
}

/// Unit tests of the error slot and the tasks' hand-over, small enough for
/// Miri (`ci/miri.sh` runs `--lib`).
#[cfg(all(test, feature = "std", not(loom)))]
mod tests {
    use super::*;
    use std::string::String;
    use std::vec;

    #[derive(Debug, Clone, PartialEq)]
    struct Failed(String);
    impl fmt::Display for Failed {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(&self.0)
        }
    }
    impl core::error::Error for Failed {}
    impl From<TaskAbandoned> for Failed {
        fn from(_: TaskAbandoned) -> Self {
            Failed("abandoned".into())
        }
    }

    #[test]
    fn the_slot_keeps_the_first_and_hands_back_the_rest() {
        let slot = ErrorSlot::new();
        assert!(!slot.is_set());
        assert_eq!(slot.put(Failed("a".into())), Ok(()));
        assert_eq!(slot.put(Failed("b".into())), Err(Failed("b".into())));
        assert!(slot.is_set());
        assert_eq!(slot.take(), Some(Failed("a".into())));
        assert_eq!(slot.take(), None);
    }

    #[test]
    fn in_task_and_spawned_on_a_thread() {
        let mut group = Group::<Failed>::new(&Context::background());
        let ctx = group.context().clone();
        let mut tasks = vec![];
        group.spawn_with(|t| tasks.push(t), async { Err(Failed("spawned".into())) });
        let sibling = ctx.clone();
        group.spawn(async move {
            let _ = sibling.done().await;
            Ok(())
        });
        let runner = std::thread::spawn(move || {
            for t in tasks {
                futures::executor::block_on(t);
            }
        });
        let result = futures::executor::block_on(group.wait());
        runner.join().unwrap();
        assert_eq!(result, Err(Failed("spawned".into())));
        assert_eq!(ctx.cause().unwrap().downcast_ref(), Some(&Failed("spawned".into())));
    }

    #[test]
    fn a_dropped_task_is_abandoned() {
        let mut group = Group::<Failed>::new(&Context::background());
        group.spawn_with(drop, async { Ok(()) });
        assert_eq!(
            futures::executor::block_on(group.wait()),
            Err(Failed("abandoned".into()))
        );
    }
}
