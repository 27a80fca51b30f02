//! The core API a service needs (issue 11): `run` keeps finished work, time
//! on the tree's clock (`now`, `time_left`), and errors that carry their
//! cause (`ContextError`). Public API only.
//!
//! The `run` section ports the semantics of tokio-util's own tests of
//! `with_cancellation_token` / `run_until_cancelled` (tokio-util
//! `tests/future.rs`): a context done before the first poll never starts the
//! work; once started, a ready output wins over a cancel seen on the same
//! poll.
//!
//! Tests that arm the `std` timer (its thread outlives them) are ignored
//! under Miri; the rest run there (`ci/miri.sh`).

use core::future::Future;
use core::pin::{pin, Pin};
use core::task::{Context as TaskContext, Poll, Waker};
use ctxcore::{Context, ContextError, ContextRef, Error, Instant, ManualClock, ScopedContext, StaticContext, StdTimer};
use std::error::Error as StdError;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Wake;
use std::time::Duration;

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
    let (ctx, _h) = Context::with_timer(&CLOCK).with_timeout(SEC);
    let polls = Arc::new(AtomicUsize::new(0));
    let mut run = pin!(ctx.run(ReadyOnSecondPoll { polls }));
    assert!(poll_once(run.as_mut(), &waker).is_pending());
    CLOCK.advance(SEC);
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
    let (ctx, _h) = Context::with_timer(&CLOCK).with_timeout(SEC);
    let polls = Arc::new(AtomicUsize::new(0));
    let mut run = pin!(ctx.run(ReadyOnSecondPoll { polls: polls.clone() }));
    CLOCK.advance(SEC);
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

// ---------------------------------------------------------------------------
// Time on the tree's clock (issue 11, item 1). The virtual-clock suite
// (tests/virtual_time.rs `time_on_the_tree_clock`, and the tokio start-up
// gap tests) covers exactness; these cover every context kind.

const SEC: Duration = Duration::from_secs(1);

#[test]
fn time_left_is_none_without_a_deadline() {
    assert_eq!(Context::background().time_left(), None);
    let (ctx, h) = Context::background().with_cancel();
    assert_eq!(ctx.time_left(), None);
    h.cancel();
    assert_eq!(ctx.time_left(), None, "done without a deadline: still none");
    assert_eq!(ContextRef::background().time_left(), None);
}

#[test]
#[cfg_attr(miri, ignore)] // arms the std timer: its thread outlives the test
fn time_left_on_the_default_clock() {
    let (ctx, _h) = Context::background().with_timeout(60 * SEC);
    let left = ctx.time_left().expect("deadline");
    assert!(left <= 60 * SEC && left > 59 * SEC, "{left:?}");
    // A background tree's clock is the default one.
    let before = Instant::now();
    let now = ctx.now();
    assert!(before <= now && now <= Instant::now());
    assert!(ctx.deadline().unwrap() - ctx.now() <= left);
    let (past, _h) = Context::background().with_deadline(Instant::ZERO);
    assert_eq!(past.time_left(), Some(Duration::ZERO));
    let (never, _h) = Context::background().with_timeout(Duration::MAX);
    assert_eq!(never.deadline(), None, "Instant::MAX is no deadline");
    assert_eq!(never.time_left(), None);
}

#[test]
fn time_left_reports_the_deadline_even_after_a_cancel() {
    static CLOCK: ManualClock = ManualClock::new();
    let (ctx, h) = Context::with_timer(&CLOCK).with_timeout(10 * SEC);
    h.cancel();
    assert_eq!(ctx.err(), Some(Error::Canceled));
    assert_eq!(ctx.time_left(), Some(10 * SEC), "as Go's time.Until(deadline)");
}

#[test]
fn time_on_scoped_static_and_any_contexts() {
    static CLOCK: ManualClock = ManualClock::new();
    static ROOT: StaticContext = StaticContext::with_timer(&CLOCK);
    CLOCK.advance(100 * SEC);
    assert_eq!(ROOT.now(), Instant::from_nanos(100_000_000_000));
    assert_eq!(ROOT.as_ref().now(), ROOT.now());
    assert_eq!(ROOT.as_ref().time_left(), None);

    let step = pin!(ScopedContext::with_timeout(ROOT.as_ref(), 5 * SEC));
    let step = step.as_ref().context();
    assert_eq!(step.now(), ROOT.now());
    assert_eq!(step.time_left(), Some(5 * SEC));

    let heap = ROOT.context();
    let (a, _ha) = heap.with_timeout(30 * SEC);
    let (b, _hb) = heap.with_timeout(3 * SEC);
    let either = Context::any([&a, &b]);
    assert_eq!(either.now(), ROOT.now(), "any keeps the tree's clock");
    assert_eq!(either.time_left(), Some(3 * SEC), "the earliest parent deadline");
    CLOCK.advance(4 * SEC);
    assert_eq!(either.time_left(), Some(Duration::ZERO));
    assert_eq!(step.time_left(), Some(SEC));
    assert_eq!(a.time_left(), Some(26 * SEC));
}

#[test]
#[cfg_attr(miri, ignore)] // arms the std timer: its thread outlives the test
fn std_timer_converts_to_and_from_std_instants() {
    let timer = StdTimer::global();
    let (ctx, _h) = Context::background().with_timeout(5 * SEC);
    let deadline = ctx.deadline().unwrap();
    let std_deadline = timer.to_std(deadline);
    assert_eq!(timer.to_instant(std_deadline), deadline, "round trip");
    let time_left = ctx.time_left().unwrap();
    // Read later on the same clock: never more than `time_left`.
    let left = std_deadline.saturating_duration_since(std::time::Instant::now());
    assert!(left <= time_left, "{left:?} > {time_left:?}");
    // Saturating, never panics.
    let never = timer.to_std(Instant::MAX);
    assert!(never > std::time::Instant::now() + 365 * 24 * 3600 * SEC);
    assert!(timer.to_std(Instant::ZERO) <= std::time::Instant::now());
}

#[test]
#[cfg_attr(miri, ignore)] // arms the std timer: its thread outlives the test
fn blocking_waits_still_wake_on_the_deadline() {
    let (ctx, _h) = Context::background().with_timeout(Duration::from_millis(5));
    assert_eq!(ctx.wait_blocking(), Error::DeadlineExceeded);
    assert_eq!(ctx.time_left(), Some(Duration::ZERO));
}

// ---------------------------------------------------------------------------
// ContextError: the error with its cause (issue 11, item 2)

#[derive(Debug)]
struct ClientGone {
    peer: &'static str,
}

impl std::fmt::Display for ClientGone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "client {} disconnected", self.peer)
    }
}

impl std::error::Error for ClientGone {}

fn source_of(err: &dyn StdError) -> Option<&(dyn StdError + 'static)> {
    err.source()
}

#[test]
fn context_error_is_send_sync_static_clone_debug() {
    fn assert_traits<T: Send + Sync + Clone + std::fmt::Debug + std::fmt::Display + StdError + 'static>() {}
    assert_traits::<ContextError>();
    fn assert_send<T: Send>(_: &T) {}
    let (ctx, _h) = Context::background().with_cancel();
    assert_send(&ctx.run_with_cause(async {}));
}

#[test]
fn context_error_display_is_gos() {
    let (ctx, h) = Context::background().with_cancel();
    assert!(ctx.error().is_none(), "live: no error");
    h.cancel();
    let err = ctx.error().unwrap();
    assert_eq!(err.to_string(), "context canceled");
    assert!(!err.has_cause());
    assert!(source_of(&err).is_none(), "no explicit cause: no source");

    let (ctx, h) = Context::background().with_cancel();
    h.cancel_with("shutting down");
    let err = ctx.error().unwrap();
    assert_eq!(err.to_string(), "context canceled: shutting down");
    assert!(err.has_cause());
    assert!(source_of(&err).is_none(), "a static message is text only");
    assert_eq!(err.cause().as_str(), Some("shutting down"));

    let (ctx, h) = Context::background().with_cancel();
    h.cancel_with(ClientGone { peer: "10.0.0.7" });
    let err = ctx.error().unwrap();
    assert_eq!(err.to_string(), "context canceled: client 10.0.0.7 disconnected");
    let gone = source_of(&err).unwrap().downcast_ref::<ClientGone>().unwrap();
    assert_eq!(gone.peer, "10.0.0.7");
    assert_eq!(err.cause().downcast_ref::<ClientGone>().unwrap().peer, "10.0.0.7");

    let (ctx, h) = Context::background().with_cancel();
    h.cancel_with(String::from("owned message"));
    assert_eq!(ctx.error().unwrap().to_string(), "context canceled: owned message");

    // An explicit cause that happens to be the other kind is shown.
    let (ctx, h) = Context::background().with_cancel();
    h.cancel_with(Error::DeadlineExceeded);
    let err = ctx.error().unwrap();
    assert_eq!(err.kind(), Error::Canceled);
    assert_eq!(err.to_string(), "context canceled: context deadline exceeded");
    assert_eq!(
        source_of(&err).unwrap().downcast_ref::<Error>(),
        Some(&Error::DeadlineExceeded)
    );

    let dbg = format!("{:?}", ContextError::new(Error::Canceled, "x"));
    assert!(
        dbg.contains("ContextError") && dbg.contains("Canceled") && dbg.contains('x'),
        "{dbg}"
    );
}

#[test]
fn context_error_of_deadlines() {
    static CLOCK: ManualClock = ManualClock::new();
    let root = Context::with_timer(&CLOCK);
    let (plain, _h1) = root.with_timeout(SEC);
    let (caused, _h2) = root.with_timeout_cause(SEC, ClientGone { peer: "p" });
    let (child, _h3) = caused.with_cancel();
    assert!(plain.error().is_none());
    CLOCK.advance(SEC);
    let err = plain.error().unwrap();
    assert!(err.is_deadline_exceeded() && !err.is_canceled());
    assert_eq!(err.to_string(), "context deadline exceeded");
    let err = child.error().unwrap();
    assert_eq!(err.kind(), Error::DeadlineExceeded, "inherited");
    assert_eq!(err.to_string(), "context deadline exceeded: client p disconnected");
    assert!(source_of(&err).unwrap().is::<ClientGone>());
}

#[test]
fn context_error_inherited_and_on_every_context_kind() {
    static ROOT: StaticContext = StaticContext::new();
    let heap = ROOT.context();
    let (request, _h) = heap.with_cancel();
    let (query, _hq) = request.with_cancel();
    let step = pin!(ScopedContext::new(query.as_ref()));
    let step = step.as_ref().context();
    let (other, _ho) = Context::background().with_cancel();
    let either = Context::any([&other, &query]);
    assert!(ROOT.error().is_none() && step.error().is_none() && either.error().is_none());
    ROOT.cancel_with(ClientGone { peer: "root" });
    for err in [
        ROOT.error(),
        ROOT.as_ref().error(),
        request.error(),
        query.error(),
        query.as_ref().error(),
        step.error(),
        either.error(),
        query.with_cancel().0.error(),
    ] {
        let err = err.expect("done");
        assert_eq!(err.kind(), Error::Canceled);
        assert_eq!(err.to_string(), "context canceled: client root disconnected");
        assert!(err.cause().is::<ClientGone>());
    }
    assert!(ContextRef::background().error().is_none());
    assert!(Context::background().error().is_none());
}

#[test]
fn context_error_crosses_api_edges_with_question_mark() {
    fn boxed(ctx: &Context) -> Result<(), Box<dyn StdError + Send + Sync>> {
        ctx.error().map_or(Ok(()), Err)?;
        Ok(())
    }
    fn boxed_plain(ctx: &Context) -> Result<(), Box<dyn StdError>> {
        ctx.error().map_or(Ok(()), Err)?;
        Ok(())
    }
    fn kind_only(ctx: &Context) -> Result<(), Error> {
        ctx.error().map_or(Ok(()), Err)?;
        Ok(())
    }
    let (ctx, h) = Context::background().with_cancel();
    assert!(boxed(&ctx).is_ok());
    h.cancel_with(ClientGone { peer: "b" });
    let b = boxed(&ctx).unwrap_err();
    assert_eq!(b.to_string(), "context canceled: client b disconnected");
    let inner = b.downcast_ref::<ContextError>().unwrap();
    assert!(source_of(inner).unwrap().is::<ClientGone>());
    assert!(boxed_plain(&ctx).unwrap_err().source().unwrap().is::<ClientGone>());
    assert_eq!(kind_only(&ctx), Err(Error::Canceled));
    let from_kind: ContextError = Error::DeadlineExceeded.into();
    assert!(!from_kind.has_cause());
    assert_eq!(from_kind.into_cause().as_error(), Some(Error::DeadlineExceeded));
}

#[test]
fn context_error_as_a_cause_chains_sources() {
    // A failure of one context becomes the cause of cancelling another (the
    // error-group shape): the chain walks down to the original cause.
    static CLOCK: ManualClock = ManualClock::new();
    let (query, _hq) = Context::with_timer(&CLOCK).with_timeout_cause(SEC, ClientGone { peer: "q" });
    CLOCK.advance(SEC);
    let (group, hg) = Context::background().with_cancel();
    hg.cancel_with(query.error().unwrap());
    let err = group.error().unwrap();
    assert_eq!(
        err.to_string(),
        "context canceled: context deadline exceeded: client q disconnected"
    );
    let first = source_of(&err).unwrap().downcast_ref::<ContextError>().unwrap();
    assert!(first.is_deadline_exceeded());
    assert!(source_of(first).unwrap().is::<ClientGone>());
}

#[test]
fn context_error_into_io_error() {
    use std::io::{ErrorKind, Read};
    static CLOCK: ManualClock = ManualClock::new();
    let (late, _h) = Context::with_timer(&CLOCK).with_timeout_cause(SEC, "too slow");
    CLOCK.advance(SEC);
    let io: std::io::Error = late.error().unwrap().into();
    assert_eq!(io.kind(), ErrorKind::TimedOut);
    assert_eq!(io.to_string(), "context deadline exceeded: too slow");
    let inner = io.get_ref().unwrap().downcast_ref::<ContextError>().unwrap();
    assert_eq!(inner.cause().as_str(), Some("too slow"));

    let (ctx, h) = Context::background().with_cancel();
    h.cancel_with(ClientGone { peer: "io" });
    let io = std::io::Error::from(ctx.error().unwrap());
    assert_eq!(io.kind(), ErrorKind::Other);
    let plain: std::io::Error = Error::Canceled.into();
    assert_eq!(plain.kind(), ErrorKind::Other);
    assert_eq!(
        std::io::Error::from(Error::DeadlineExceeded).kind(),
        ErrorKind::TimedOut
    );

    // Why not `Interrupted`: std's loops retry it at once. A reader that
    // reports its cancelled context ends `read_exact` after one call.
    struct CtxReader {
        ctx: Context,
        calls: usize,
    }
    impl Read for CtxReader {
        fn read(&mut self, _buf: &mut [u8]) -> std::io::Result<usize> {
            self.calls += 1;
            match self.ctx.error() {
                Some(err) => Err(err.into()),
                None => Ok(0),
            }
        }
    }
    let mut reader = CtxReader { ctx, calls: 0 };
    let err = reader.read_exact(&mut [0u8; 4]).unwrap_err();
    assert_eq!(reader.calls, 1, "not retried");
    assert!(err
        .get_ref()
        .unwrap()
        .downcast_ref::<ContextError>()
        .unwrap()
        .cause()
        .is::<ClientGone>());
}

#[test]
fn run_with_cause_reports_the_cause() {
    let (ctx, h) = Context::background().with_cancel();
    assert_eq!(futures::executor::block_on(ctx.run_with_cause(async { 3 })).unwrap(), 3);

    let (_counter, waker) = CountingWaker::new();
    let mut run = pin!(ctx.run_with_cause(futures::future::pending::<()>()));
    assert!(poll_once(run.as_mut(), &waker).is_pending());
    h.cancel_with(ClientGone { peer: "r" });
    let err = match poll_once(run.as_mut(), &waker) {
        Poll::Ready(Err(err)) => err,
        other => panic!("expected the error, got {other:?}"),
    };
    assert_eq!(err.to_string(), "context canceled: client r disconnected");
    assert!(source_of(&err).unwrap().is::<ClientGone>());
    assert!(futures::future::FusedFuture::is_terminated(&*run));

    // Done before the first poll: never started, and the cause is there.
    let polls = Arc::new(AtomicUsize::new(0));
    let out = futures::executor::block_on(ctx.run_with_cause(ReadyOnSecondPoll { polls: polls.clone() }));
    assert!(out.unwrap_err().cause().is::<ClientGone>());
    assert_eq!(polls.load(Ordering::SeqCst), 0);

    // Once started, a ready output wins, as for `run`.
    let (ctx, h) = Context::background().with_cancel();
    let mut run = pin!(ctx.run_with_cause(ReadyOnSecondPoll { polls: polls.clone() }));
    assert!(poll_once(run.as_mut(), &waker).is_pending());
    h.cancel();
    assert!(matches!(poll_once(run.as_mut(), &waker), Poll::Ready(Ok("finished"))));
}

#[test]
fn run_with_cause_on_a_deadline() {
    static CLOCK: ManualClock = ManualClock::new();
    let (ctx, _h) = Context::with_timer(&CLOCK).with_timeout_cause(SEC, "database too slow");
    let (_counter, waker) = CountingWaker::new();
    let mut run = pin!(ctx.run_with_cause(futures::future::pending::<()>()));
    assert!(poll_once(run.as_mut(), &waker).is_pending());
    CLOCK.advance(SEC);
    match poll_once(run.as_mut(), &waker) {
        Poll::Ready(Err(err)) => {
            assert!(err.is_deadline_exceeded());
            assert_eq!(err.to_string(), "context deadline exceeded: database too slow");
        }
        other => panic!("expected the deadline, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// The README's warning for Go users (issue 11, item 9)

/// `let (ctx, _) = p.with_cancel()` drops the handle at once, which cancels;
/// `detach()` is Go's `_`.
#[test]
#[allow(clippy::let_underscore_untyped)]
fn underscore_pattern_cancels_at_once_detach_does_not() {
    let (ctx, _) = Context::background().with_cancel();
    assert_eq!(ctx.err(), Some(Error::Canceled), "`_` drops the handle at once");
    let (ctx, _cancel) = Context::background().with_cancel();
    assert!(!ctx.is_done(), "a named binding lives to the end of the scope");
    let (ctx, handle) = Context::background().with_cancel();
    handle.detach();
    assert!(!ctx.is_done(), "detach gives cancel-on-drop up");
    static CLOCK: ManualClock = ManualClock::new();
    let (ctx, _) = Context::with_timer(&CLOCK).with_timeout(60 * SEC);
    assert_eq!(ctx.err(), Some(Error::Canceled), "the same for deadline children");
}
