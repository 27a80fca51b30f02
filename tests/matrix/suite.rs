//! The executor-independent suite: every test is an `async fn(Env)` that uses
//! only `Env` to spawn and wait, so it runs unchanged on every executor in
//! `tests/matrix.rs`. Assertion messages start with the executor's name.

use super::Env;
use ctxcore::{Context, Error, Instant};
use futures::channel::oneshot;
use futures::StreamExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A spawned task waiting on `done` wakes when another task cancels.
pub async fn done_wakes(env: Env) {
    let (ctx, handle) = env.root().with_cancel();
    let waiter = env.spawn_join({
        let env = env.clone();
        async move { env.wait(&ctx).await }
    });
    env.spawn(async move { handle.cancel() });
    assert_eq!(
        waiter.await.expect(env.name),
        Error::Canceled,
        "{}: waiter result",
        env.name
    );
}

/// `done_owned` is `'static`: spawned on its own, it reports error and cause.
pub async fn done_owned(env: Env) {
    let (ctx, handle) = env.root().with_cancel();
    let waiter = env.spawn_join(ctx.done_owned());
    env.spawn(async move { handle.cancel_with("bye") });
    assert_eq!(
        waiter.await.expect(env.name),
        Error::Canceled,
        "{}: done_owned result",
        env.name
    );
    assert_eq!(ctx.cause().unwrap().to_string(), "bye", "{}: cause", env.name);
    // Already done: completes at once.
    assert_eq!(
        ctx.done_owned().await,
        Error::Canceled,
        "{}: done_owned after cancel",
        env.name
    );
}

/// `run` passes the output through, and drops the future on cancellation.
pub async fn run(env: Env) {
    let (ctx, handle) = env.root().with_cancel();
    assert_eq!(ctx.run(async { 7 }).await, Ok(7), "{}: run to completion", env.name);

    struct SetOnDrop(Arc<AtomicUsize>);
    impl Drop for SetOnDrop {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let dropped = Arc::new(AtomicUsize::new(0));
    let guard = SetOnDrop(dropped.clone());
    let running = env.spawn_join(ctx.run(async move {
        let _guard = guard;
        futures::future::pending::<()>().await
    }));
    env.spawn(async move { handle.cancel() });
    assert_eq!(
        running.await.expect(env.name),
        Err(Error::Canceled),
        "{}: run cancelled",
        env.name
    );
    assert_eq!(dropped.load(Ordering::SeqCst), 1, "{}: future dropped once", env.name);
}

/// A short timeout fires on the tree's timer; nested contexts inherit it.
pub async fn deadlines(env: Env) {
    let root = env.root();
    let (ctx, _h) = root.with_timeout_cause(Duration::from_millis(20), "too slow");
    let (inner, _h2) = ctx.with_timeout(Duration::from_secs(3600));
    assert_eq!(inner.deadline(), ctx.deadline(), "{}: earliest deadline wins", env.name);
    let waiter = env.spawn_join({
        let env = env.clone();
        let inner = inner.clone();
        async move { env.wait(&inner).await }
    });
    assert_eq!(
        env.wait(&ctx).await,
        Error::DeadlineExceeded,
        "{}: deadline error",
        env.name
    );
    assert_eq!(
        waiter.await.expect(env.name),
        Error::DeadlineExceeded,
        "{}: inner error",
        env.name
    );
    assert_eq!(
        inner.cause().unwrap().to_string(),
        "too slow",
        "{}: deadline cause",
        env.name
    );
}

/// `Context::any` follows whichever parent is cancelled first.
pub async fn any(env: Env) {
    let (a, _ha) = env.root().with_cancel();
    let (b, hb) = env.root().with_cancel();
    let either = Context::any([&a, &b]);
    let waiter = env.spawn_join({
        let env = env.clone();
        let either = either.clone();
        async move { env.wait(&either).await }
    });
    env.spawn(async move { hb.cancel_with("b went away") });
    assert_eq!(
        waiter.await.expect(env.name),
        Error::Canceled,
        "{}: any result",
        env.name
    );
    assert_eq!(
        either.cause().unwrap().to_string(),
        "b went away",
        "{}: any cause",
        env.name
    );
    assert!(!a.is_done(), "{}: the other parent is untouched", env.name);
}

/// After-funcs registered from several tasks each run once; a stopped one
/// never runs.
pub async fn after_func(env: Env) {
    const TASKS: usize = 8;
    let (ctx, handle) = env.root().with_cancel();
    let ran = Arc::new(AtomicUsize::new(0));
    let mut registered = Vec::new();
    let mut fired = Vec::new();
    for _ in 0..TASKS {
        let (tx, rx) = oneshot::channel();
        fired.push(rx);
        let ctx = ctx.clone();
        let ran = ran.clone();
        registered.push(env.spawn_join(async move {
            ctx.after_func(move || {
                ran.fetch_add(1, Ordering::SeqCst);
                let _ = tx.send(());
            });
        }));
    }
    let stopped = Arc::new(AtomicUsize::new(0));
    let stop = env.spawn_join({
        let ctx = ctx.clone();
        let stopped = stopped.clone();
        async move {
            let af = ctx.after_func(move || {
                stopped.fetch_add(1, Ordering::SeqCst);
            });
            af.stop()
        }
    });
    for r in registered {
        r.await.expect(env.name);
    }
    assert!(
        stop.await.expect(env.name),
        "{}: stop before cancel returns true",
        env.name
    );
    env.spawn(async move { handle.cancel() });
    for f in fired {
        f.await.expect(env.name);
    }
    assert_eq!(
        ran.load(Ordering::SeqCst),
        TASKS,
        "{}: each after-func ran once",
        env.name
    );
    assert_eq!(
        stopped.load(Ordering::SeqCst),
        0,
        "{}: stopped after-func never ran",
        env.name
    );
}

/// Cancelling from a plain thread wakes a task.
pub async fn cancel_from_thread(env: Env) {
    let (ctx, handle) = env.root().with_cancel();
    let (child, _h) = ctx.with_cancel();
    let waiter = env.spawn_join({
        let env = env.clone();
        async move { env.wait(&child).await }
    });
    let thread = std::thread::spawn(move || handle.cancel_with("from a thread"));
    assert_eq!(
        waiter.await.expect(env.name),
        Error::Canceled,
        "{}: waiter result",
        env.name
    );
    thread.join().expect("canceller thread");
    assert_eq!(ctx.cause().unwrap().to_string(), "from a thread", "{}: cause", env.name);
}

/// Many tasks waiting on one tree all wake once its root is cancelled.
pub async fn many_waiters(env: Env) {
    const WAITERS: usize = 64;
    let (root, handle) = env.root().with_cancel();
    let (mid, _h) = root.with_cancel();
    let woken = Arc::new(AtomicUsize::new(0));
    let mut waiters = Vec::new();
    for i in 0..WAITERS {
        let ctx = match i % 3 {
            0 => root.clone(),
            1 => mid.clone(),
            _ => Context::any([&mid]),
        };
        let env2 = env.clone();
        let woken = woken.clone();
        waiters.push(env.spawn_join(async move {
            let err = env2.wait(&ctx).await;
            woken.fetch_add(1, Ordering::SeqCst);
            err
        }));
    }
    env.spawn(async move { handle.cancel() });
    for w in waiters {
        assert_eq!(w.await.expect(env.name), Error::Canceled, "{}: waiter result", env.name);
    }
    assert_eq!(woken.load(Ordering::SeqCst), WAITERS, "{}: every waiter woke", env.name);
}

/// Deadlines in the past, far in the future and at `Instant::MAX` neither
/// panic nor misbehave.
pub async fn bad_deadlines(env: Env) {
    let root = env.root();
    let (past, _h1) = root.with_deadline(Instant::ZERO);
    assert_eq!(past.err(), Some(Error::DeadlineExceeded), "{}: past deadline", env.name);
    assert_eq!(
        env.wait(&past).await,
        Error::DeadlineExceeded,
        "{}: past deadline wait",
        env.name
    );

    let (never, h2) = root.with_deadline(Instant::MAX);
    let (forever, h3) = root.with_timeout(Duration::MAX);
    let (far, h4) = root.with_timeout(Duration::from_secs(500 * 365 * 24 * 3600));
    for (what, ctx) in [
        ("Instant::MAX", &never),
        ("Duration::MAX", &forever),
        ("500 years", &far),
    ] {
        assert!(!ctx.is_done(), "{}: {what} deadline is not done", env.name);
        assert_eq!(ctx.run(async { 1 }).await, Ok(1), "{}: {what} run", env.name);
    }
    assert!(far.deadline().is_some(), "{}: far deadline is kept", env.name);
    let waiter = env.spawn_join({
        let env = env.clone();
        let far = far.clone();
        async move { env.wait(&far).await }
    });
    drop((h2, h3, h4));
    assert_eq!(
        waiter.await.expect(env.name),
        Error::Canceled,
        "{}: far deadline cancelled",
        env.name
    );
    assert!(
        never.is_done() && forever.is_done(),
        "{}: dropped handles cancel",
        env.name
    );
}

/// Contexts and handles dropped on another thread while their deadlines
/// fire: every after-func runs exactly once, the kept contexts see the
/// deadline, nothing crashes.
pub async fn drop_while_firing(env: Env) {
    const N: usize = 200;
    let root = env.root();
    let (tx, rx) = futures::channel::mpsc::unbounded::<()>();
    let mut kept = Vec::new();
    let mut dropped = Vec::new();
    for i in 0..N {
        let (ctx, h) = root.with_timeout(Duration::from_micros(2_000 + 10 * i as u64));
        let tx = tx.clone();
        ctx.after_func(move || {
            let _ = tx.unbounded_send(());
        });
        if i % 2 == 0 {
            kept.push((ctx, h));
        } else {
            dropped.push((ctx, h));
        }
    }
    drop(tx);
    let dropper = std::thread::spawn(move || {
        // Drop them one by one while the timer is firing their neighbours.
        for pair in dropped {
            drop(pair);
            std::thread::yield_now();
        }
    });
    for (ctx, _h) in &kept {
        assert_eq!(
            env.wait(ctx).await,
            Error::DeadlineExceeded,
            "{}: kept context",
            env.name
        );
    }
    dropper.join().expect("dropper thread");
    // Every after-func ran once (by the deadline or by the drop's cancel);
    // the channel closes when the last one has run and been freed.
    assert_eq!(rx.count().await, N, "{}: after-func calls", env.name);
}
