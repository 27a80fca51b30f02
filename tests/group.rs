//! Error groups (issue 11, item 5): the first `Err` cancels the group's
//! context with that error as the cause and is what `wait` returns; the
//! others observe the cancel and stop. In-task groups need no executor;
//! `spawn_with` hands tasks to tokio (current-thread and multi-thread) or
//! smol (async-executor).

use ctxcore::{Context, Error, Group, TaskAbandoned};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
enum Failure {
    Shard(usize),
    Stopped(Error),
    Abandoned,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}
impl std::error::Error for Failure {}
impl From<TaskAbandoned> for Failure {
    fn from(_: TaskAbandoned) -> Self {
        Failure::Abandoned
    }
}

/// A shard query: fails at once if `failing`, otherwise runs (a long wait)
/// until the group's context stops it, counting the stops.
async fn shard(ctx: Context, n: usize, failing: Option<usize>, stopped: Arc<AtomicUsize>) -> Result<(), Failure> {
    if failing == Some(n) {
        return Err(Failure::Shard(n));
    }
    match ctx.run(std::future::pending::<()>()).await {
        Ok(()) => Ok(()),
        Err(err) => {
            stopped.fetch_add(1, Ordering::SeqCst);
            // A later error: must not replace the first.
            Err(Failure::Stopped(err))
        }
    }
}

/// The in-task group: no executor at all beyond `block_on`.
#[test]
fn first_error_cancels_the_siblings_and_is_returned() {
    let stopped = Arc::new(AtomicUsize::new(0));
    let (request, _request_handle) = Context::background().with_cancel();
    let mut group = Group::new(&request);
    for n in 0..8 {
        group.spawn(shard(group.context().clone(), n, Some(5), stopped.clone()));
    }
    let ctx = group.context().clone();
    let result = futures::executor::block_on(group.wait());
    assert_eq!(result, Err(Failure::Shard(5)));
    assert_eq!(stopped.load(Ordering::SeqCst), 7, "every sibling observed the cancel");
    assert_eq!(ctx.err(), Some(Error::Canceled));
    assert_eq!(ctx.cause().unwrap().downcast_ref(), Some(&Failure::Shard(5)));
    assert!(!request.is_done(), "the parent is untouched");
}

#[test]
fn success_returns_ok_and_cancels_plainly() {
    let mut group = Group::<Failure>::new(&Context::background());
    let ran = Arc::new(AtomicUsize::new(0));
    for _ in 0..3 {
        let ran = ran.clone();
        group.spawn(async move {
            ran.fetch_add(1, Ordering::SeqCst);
            Ok(())
        });
    }
    let ctx = group.context().clone();
    assert!(!ctx.is_done());
    assert_eq!(futures::executor::block_on(group.wait()), Ok(()));
    assert_eq!(ran.load(Ordering::SeqCst), 3);
    assert_eq!(ctx.cause().unwrap().as_error(), Some(Error::Canceled));
}

#[test]
fn an_empty_group_returns_at_once() {
    let group = Group::<Failure>::new(&Context::background());
    assert_eq!(futures::executor::block_on(group.wait()), Ok(()));
}

#[test]
fn a_parent_cancel_reaches_the_group() {
    let (request, request_handle) = Context::background().with_cancel();
    let stopped = Arc::new(AtomicUsize::new(0));
    let mut group = Group::new(&request);
    for n in 0..3 {
        group.spawn(shard(group.context().clone(), n, None, stopped.clone()));
    }
    request_handle.cancel_with("client disconnected");
    let result = futures::executor::block_on(group.wait());
    assert_eq!(result, Err(Failure::Stopped(Error::Canceled)));
    assert_eq!(stopped.load(Ordering::SeqCst), 3);
}

#[test]
fn dropping_the_wait_drops_the_futures_and_cancels() {
    struct Flag(Arc<AtomicUsize>);
    impl Drop for Flag {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let dropped = Arc::new(AtomicUsize::new(0));
    let mut group = Group::<Failure>::new(&Context::background());
    let flag = Flag(dropped.clone());
    group.spawn(async move {
        let _flag = flag;
        std::future::pending::<Result<(), Failure>>().await
    });
    let ctx = group.context().clone();
    let mut wait = Box::pin(group.wait());
    assert!(futures::FutureExt::now_or_never(wait.as_mut()).is_none());
    assert!(!ctx.is_done());
    drop(wait);
    assert_eq!(dropped.load(Ordering::SeqCst), 1);
    assert!(ctx.is_done());
}

#[test]
fn dropping_the_group_cancels_plainly() {
    let group = Group::<Failure>::new(&Context::background());
    let ctx = group.context().clone();
    drop(group);
    assert_eq!(ctx.cause().unwrap().as_error(), Some(Error::Canceled));
}

#[test]
fn futures_may_borrow_from_the_caller() {
    let mut seen = Vec::new();
    let names = ["a", "b"];
    let mut group = Group::<&'static str>::new(&Context::background());
    let seen_ref = &mut seen;
    let names_ref = &names;
    group.spawn(async move {
        seen_ref.extend_from_slice(names_ref);
        Ok(())
    });
    assert_eq!(futures::executor::block_on(group.wait()), Ok(()));
    assert_eq!(seen, ["a", "b"]);
}

#[test]
fn with_cause_converts_a_non_clone_error() {
    let mut group = Group::with_cause(&Context::background(), |e: &std::io::Error| {
        ctxcore::Cause::from(std::io::Error::new(e.kind(), e.to_string()))
    });
    let ctx = group.context().clone();
    group.spawn(async { Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset")) });
    group.spawn({
        let ctx = ctx.clone();
        async move {
            let _ = ctx.done().await;
            Ok(())
        }
    });
    let err = futures::executor::block_on(group.wait()).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
    assert_eq!(
        ctx.cause().unwrap().downcast_ref::<std::io::Error>().unwrap().kind(),
        std::io::ErrorKind::ConnectionReset
    );
}

fn assert_send<T: Send>(_: &T) {}

#[test]
fn group_wait_and_tasks_are_send() {
    let mut group = Group::<Failure>::new(&Context::background());
    group.spawn(async { Ok(()) });
    assert_send(&group);
    let mut task = None;
    group.spawn_with(|t| task = Some(t), async { Ok(()) });
    let task = task.unwrap();
    assert_send(&task);
    fn assert_static<T: 'static>(_: &T) {}
    assert_static(&task);
    let wait = group.wait();
    assert_send(&wait);
    drop(task);
    let _ = futures::executor::block_on(wait);
}

// ---------------------------------------------------------------- tokio

fn tokio_rt(multi: bool) -> tokio::runtime::Runtime {
    if multi {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }
}

fn tokio_in_task(multi: bool) {
    tokio_rt(multi).block_on(async {
        let stopped = Arc::new(AtomicUsize::new(0));
        let mut group = Group::new(&Context::background());
        for n in 0..16 {
            let ctx = group.context().clone();
            let stopped = stopped.clone();
            group.spawn(async move {
                if n == 9 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    return Err(Failure::Shard(n));
                }
                // A slow query, raced against the group's context.
                match ctx.run(tokio::time::sleep(Duration::from_secs(30))).await {
                    Ok(()) => Ok(()),
                    Err(_) => {
                        stopped.fetch_add(1, Ordering::SeqCst);
                        Ok(())
                    }
                }
            });
        }
        let started = std::time::Instant::now();
        assert_eq!(group.wait().await, Err(Failure::Shard(9)));
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(stopped.load(Ordering::SeqCst), 15);
    });
}

fn tokio_spawned(multi: bool) {
    tokio_rt(multi).block_on(async {
        let stopped = Arc::new(AtomicUsize::new(0));
        let mut group = Group::new(&Context::background());
        for n in 0..64 {
            let ctx = group.context().clone();
            let stopped = stopped.clone();
            let _join = group.spawn_with(tokio::spawn, async move {
                if n == 40 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    return Err(Failure::Shard(n));
                }
                let _ = ctx.done().await;
                stopped.fetch_add(1, Ordering::SeqCst);
                Ok(())
            });
        }
        // An in-task future beside the spawned ones.
        let ctx = group.context().clone();
        let in_task_stopped = stopped.clone();
        group.spawn(async move {
            let _ = ctx.done().await;
            in_task_stopped.fetch_add(1, Ordering::SeqCst);
            Ok(())
        });
        let ctx = group.context().clone();
        let started = std::time::Instant::now();
        assert_eq!(group.wait().await, Err(Failure::Shard(40)));
        assert!(started.elapsed() < Duration::from_secs(5));
        // `wait` returned after every task: all 64 stopped (63 + the in-task one).
        assert_eq!(stopped.load(Ordering::SeqCst), 64);
        assert_eq!(ctx.cause().unwrap().downcast_ref(), Some(&Failure::Shard(40)));
    });
}

#[test]
fn tokio_current_thread_in_task() {
    tokio_in_task(false);
}

#[test]
fn tokio_multi_thread_in_task() {
    tokio_in_task(true);
}

#[test]
fn tokio_current_thread_spawned() {
    tokio_spawned(false);
}

#[test]
fn tokio_multi_thread_spawned() {
    tokio_spawned(true);
}

#[test]
fn tokio_spawned_all_ok() {
    tokio_rt(true).block_on(async {
        let done = Arc::new(AtomicUsize::new(0));
        let mut group = Group::<Failure>::new(&Context::background());
        for _ in 0..100 {
            let done = done.clone();
            group.spawn_with(tokio::spawn, async move {
                tokio::task::yield_now().await;
                done.fetch_add(1, Ordering::SeqCst);
                Ok(())
            });
        }
        assert_eq!(group.wait().await, Ok(()));
        assert_eq!(done.load(Ordering::SeqCst), 100, "wait returned after every task");
    });
}

/// A spawned task that panics (tokio catches the panic and drops the
/// task): the group is cancelled with `TaskAbandoned` and `wait` says so.
#[test]
fn tokio_panicking_task_is_abandoned() {
    tokio_rt(true).block_on(async {
        let mut group = Group::<Failure>::new(&Context::background());
        let ctx = group.context().clone();
        let sibling_ctx = ctx.clone();
        group.spawn_with(tokio::spawn, async move {
            let _ = sibling_ctx.done().await;
            Ok(())
        });
        let join = group.spawn_with(tokio::spawn, async {
            tokio::task::yield_now().await;
            panic!("task bug");
        });
        assert!(join.await.unwrap_err().is_panic());
        assert_eq!(group.wait().await, Err(Failure::Abandoned));
        assert!(ctx.cause().unwrap().is::<Failure>());
    });
}

/// Work still spawned when the runtime shuts down is abandoned, not lost.
#[test]
fn tokio_runtime_shutdown_abandons_the_tasks() {
    let rt = tokio_rt(false);
    let mut group = Group::<Failure>::new(&Context::background());
    let ctx = group.context().clone();
    {
        let _guard = rt.enter();
        group.spawn_with(tokio::spawn, std::future::pending());
    }
    assert!(!ctx.is_done());
    drop(rt);
    assert_eq!(ctx.cause().unwrap().downcast_ref(), Some(&Failure::Abandoned));
    assert_eq!(futures::executor::block_on(group.wait()), Err(Failure::Abandoned));
}

// ---------------------------------------------------------------- smol

#[test]
fn smol_in_task_and_spawned() {
    let ex = async_executor::Executor::new();
    futures_lite::future::block_on(ex.run(async {
        let stopped = Arc::new(AtomicUsize::new(0));
        let mut group = Group::new(&Context::background());
        for n in 0..32 {
            let fut = shard(group.context().clone(), n, Some(17), stopped.clone());
            if n % 2 == 0 {
                group.spawn(fut);
            } else {
                group.spawn_with(|task| ex.spawn(task).detach(), fut);
            }
        }
        assert_eq!(group.wait().await, Err(Failure::Shard(17)));
        assert_eq!(stopped.load(Ordering::SeqCst), 31);
    }));
}

#[test]
fn smol_multi_threaded_spawned() {
    let ex = Arc::new(async_executor::Executor::new());
    let (stop_tx, stop_rx) = stop_signal::pair();
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let ex = ex.clone();
            let stop_rx = stop_rx.clone();
            std::thread::spawn(move || futures_lite::future::block_on(ex.run(stop_rx.wait())))
        })
        .collect();
    let stopped = Arc::new(AtomicUsize::new(0));
    let mut group = Group::new(&Context::background());
    for n in 0..200 {
        let fut = shard(group.context().clone(), n, Some(123), stopped.clone());
        group.spawn_with(|task| ex.spawn(task).detach(), fut);
    }
    let result = futures_lite::future::block_on(group.wait());
    assert_eq!(result, Err(Failure::Shard(123)));
    assert_eq!(stopped.load(Ordering::SeqCst), 199);
    stop_tx.cancel();
    for w in workers {
        w.join().unwrap();
    }
}

/// A stop signal for the worker threads, from ctxcore itself.
mod stop_signal {
    use ctxcore::{CancelHandle, Context};

    pub struct Rx(Context);
    impl Clone for Rx {
        fn clone(&self) -> Self {
            Rx(self.0.clone())
        }
    }
    impl Rx {
        pub async fn wait(self) {
            let _ = self.0.done().await;
        }
    }
    pub fn pair() -> (CancelHandle, Rx) {
        let (ctx, handle) = Context::background().with_cancel();
        (handle, Rx(ctx))
    }
}
