//! The core API a service needs (issue 11): `run` keeps finished work, time
//! on the tree's clock (`now`, `time_left`), and errors that carry their
//! cause (`ContextError`). Public API only.
//!
//! The `run` section ports the semantics of tokio-util's own tests of
//! `with_cancellation_token` / `run_until_cancelled` (tokio-util
//! `tests/future.rs`): a context done before the first poll never starts the
//! work; once started, a ready output wins over a cancel seen on the same
//! poll.

use core::future::Future;
use core::pin::{pin, Pin};
use core::task::{Context as TaskContext, Poll, Waker};
use ctxcore::{Context, Error};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Wake;

// ---------------------------------------------------------------------------
// Helpers

/// A waker that counts its wake-ups.
#[derive(Default)]
struct CountingWaker {
    wakes: AtomicUsize,
}

impl CountingWaker {
    fn new() -> (Arc<CountingWaker>, Waker) {
        let w = Arc::new(CountingWaker::default());
        let waker = Waker::from(w.clone());
        (w, waker)
    }

    fn wakes(&self) -> usize {
        self.wakes.load(Ordering::SeqCst)
    }
}

impl Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.wakes.fetch_add(1, Ordering::SeqCst);
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.wakes.fetch_add(1, Ordering::SeqCst);
    }
}

/// Pending on its first poll, ready on every later one; counts its polls.
struct ReadyOnSecondPoll {
    polls: Arc<AtomicUsize>,
}

impl Future for ReadyOnSecondPoll {
    type Output = &'static str;
    fn poll(self: Pin<&mut Self>, _cx: &mut TaskContext<'_>) -> Poll<&'static str> {
        if self.polls.fetch_add(1, Ordering::SeqCst) == 0 {
            Poll::Pending
        } else {
            Poll::Ready("finished")
        }
    }
}

fn poll_once<F: Future>(f: Pin<&mut F>, waker: &Waker) -> Poll<F::Output> {
    f.poll(&mut TaskContext::from_waker(waker))
}

// ---------------------------------------------------------------------------
// run: finished work is kept (issue 11, item 8)

/// tokio-util `pending_only_on_first_poll_with_cancellation_token_test` (and
/// its `_owned` twin: ctxcore's `run` owns its context): pending on the
/// first poll, cancelled, then ready on the poll that sees the cancel — the
/// output is returned.
#[test]
fn run_ready_output_wins_over_cancel_seen_on_same_poll() {
    let (counter, waker) = CountingWaker::new();
    let (ctx, handle) = Context::background().with_cancel();
    let polls = Arc::new(AtomicUsize::new(0));
    let mut run = pin!(ctx.run(ReadyOnSecondPoll { polls: polls.clone() }));
    assert!(poll_once(run.as_mut(), &waker).is_pending());
    handle.cancel();
    assert_eq!(counter.wakes(), 1, "the cancel wakes the task");
    assert_eq!(poll_once(run.as_mut(), &waker), Poll::Ready(Ok("finished")));
    assert_eq!(polls.load(Ordering::SeqCst), 2);
}

/// The same with a value that arrived on a channel before the cancel (the
/// shape the issue found: a oneshot's value dropped with the future).
#[test]
fn run_keeps_a_value_that_arrived_before_the_cancel() {
    let (_counter, waker) = CountingWaker::new();
    let (ctx, handle) = Context::background().with_cancel();
    let (tx, rx) = futures::channel::oneshot::channel::<u32>();
    let mut run = pin!(ctx.run(rx));
    assert!(poll_once(run.as_mut(), &waker).is_pending());
    tx.send(42).expect("receiver alive");
    handle.cancel_with("client went away");
    assert_eq!(poll_once(run.as_mut(), &waker), Poll::Ready(Ok(Ok(42))));
}

/// Deadline flavour: a deadline that passed while the work was finishing
/// does not discard it either.
#[test]
fn run_ready_output_wins_over_passed_deadline() {
    static CLOCK: ctxcore::ManualClock = ctxcore::ManualClock::new();
    let (_counter, waker) = CountingWaker::new();
    let (ctx, _h) = Context::with_timer(&CLOCK).with_timeout(std::time::Duration::from_secs(1));
    let polls = Arc::new(AtomicUsize::new(0));
    let mut run = pin!(ctx.run(ReadyOnSecondPoll { polls }));
    assert!(poll_once(run.as_mut(), &waker).is_pending());
    CLOCK.advance(std::time::Duration::from_secs(1));
    assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
    assert_eq!(poll_once(run.as_mut(), &waker), Poll::Ready(Ok("finished")));
}

/// tokio-util `ready_fut_with_already_cancelled_token_test`: done before the
/// first poll, even ready work is never started.
#[test]
fn run_done_before_first_poll_never_starts_the_work() {
    let (counter, waker) = CountingWaker::new();
    let (ctx, handle) = Context::background().with_cancel();
    handle.cancel();
    let polls = Arc::new(AtomicUsize::new(0));
    let mut run = pin!(ctx.run(ReadyOnSecondPoll { polls: polls.clone() }));
    assert_eq!(poll_once(run.as_mut(), &waker), Poll::Ready(Err(Error::Canceled)));
    assert_eq!(polls.load(Ordering::SeqCst), 0, "the work was never polled");

    let started = Arc::new(AtomicUsize::new(0));
    let s = started.clone();
    let ready = ctx.run(async move {
        s.fetch_add(1, Ordering::SeqCst);
    });
    assert_eq!(futures::executor::block_on(ready), Err(Error::Canceled));
    assert_eq!(started.load(Ordering::SeqCst), 0, "an async block is not started");
    assert_eq!(counter.wakes(), 0, "no wake-up needed");
}

/// A deadline that passed before the first poll (not yet fired by any
/// timer) also keeps the work from starting.
#[test]
fn run_deadline_passed_before_first_poll_never_starts_the_work() {
    static CLOCK: ctxcore::ManualClock = ctxcore::ManualClock::new();
    let (_counter, waker) = CountingWaker::new();
    let (ctx, _h) = Context::with_timer(&CLOCK).with_timeout(std::time::Duration::from_secs(1));
    let polls = Arc::new(AtomicUsize::new(0));
    let mut run = pin!(ctx.run(ReadyOnSecondPoll { polls: polls.clone() }));
    CLOCK.advance(std::time::Duration::from_secs(1));
    assert_eq!(
        poll_once(run.as_mut(), &waker),
        Poll::Ready(Err(Error::DeadlineExceeded))
    );
    assert_eq!(polls.load(Ordering::SeqCst), 0);
}

/// tokio-util `pending_fut_with_token_cancelled_test`: pending work, then a
/// cancel: one wake-up, and the next poll returns the error and drops the
/// work.
#[test]
fn run_pending_work_then_cancel_returns_the_error() {
    struct DropFlag(Arc<AtomicUsize>);
    impl Drop for DropFlag {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let (counter, waker) = CountingWaker::new();
    let (ctx, handle) = Context::background().with_cancel();
    let dropped = Arc::new(AtomicUsize::new(0));
    let flag = DropFlag(dropped.clone());
    let mut run = pin!(ctx.run(async move {
        let _flag = flag;
        futures::future::pending::<()>().await
    }));
    assert!(poll_once(run.as_mut(), &waker).is_pending());
    handle.cancel();
    assert_eq!(counter.wakes(), 1);
    assert_eq!(poll_once(run.as_mut(), &waker), Poll::Ready(Err(Error::Canceled)));
    assert_eq!(dropped.load(Ordering::SeqCst), 1, "the work is dropped at once");
    assert!(futures::future::FusedFuture::is_terminated(&*run));
    assert!(poll_once(run.as_mut(), &waker).is_pending(), "fused afterwards");
}

/// Work that cancels its own context and finishes on the same poll keeps
/// its output (the cancel is seen on that poll, after the work is ready).
#[test]
fn run_work_that_cancels_its_own_context_keeps_its_output() {
    let (ctx, handle) = Context::background().with_cancel();
    let out = futures::executor::block_on(ctx.run(async move {
        handle.cancel();
        "done anyway"
    }));
    assert_eq!(out, Ok("done anyway"));
}
