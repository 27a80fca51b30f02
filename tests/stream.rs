//! Streams that end on cancel (issue 14, part 2): `Context::stream`,
//! `Context::stream_with_cause` and the `ContextRef` forms, on
//! `futures::executor`, tokio (current and multi thread) and smol.

use core::pin::{pin, Pin};
use core::task::{Context as TaskContext, Poll};
use ctxcore::{
    Context, ContextError, ContextRef, Error, ManualClock, RunStream, RunStreamWithCause, ScopedContext, StaticContext,
};
use futures::channel::mpsc;
use futures::stream::{self, FusedStream, Stream, StreamExt};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

// ---------------------------------------------------------------------------
// Per-thread allocation counting (the harness allocates on other threads).

struct Counting;

thread_local! {
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: forwards every call to `System`; the counter is a const-initialised
// thread-local without a destructor, which never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|a| a.set(a.get() + 1));
        // SAFETY: forwarded from our caller.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded from our caller.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCS.try_with(|a| a.set(a.get() + 1));
        // SAFETY: forwarded from our caller.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocs() -> usize {
    ALLOCS.with(Cell::get)
}

// ---------------------------------------------------------------------------
// Helpers

/// A stream that counts its polls and its drop, yielding `ready` items then
/// pending forever.
struct Probe {
    polls: Arc<AtomicUsize>,
    dropped: Arc<AtomicUsize>,
    ready: usize,
}

impl Stream for Probe {
    type Item = usize;
    fn poll_next(mut self: Pin<&mut Self>, _cx: &mut TaskContext<'_>) -> Poll<Option<usize>> {
        let n = self.polls.fetch_add(1, Ordering::SeqCst);
        if self.ready > 0 {
            self.ready -= 1;
            Poll::Ready(Some(n))
        } else {
            Poll::Pending
        }
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.dropped.fetch_add(1, Ordering::SeqCst);
    }
}

fn probe(ready: usize) -> (Probe, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let polls = Arc::new(AtomicUsize::new(0));
    let dropped = Arc::new(AtomicUsize::new(0));
    let p = Probe {
        polls: polls.clone(),
        dropped: dropped.clone(),
        ready,
    };
    (p, polls, dropped)
}

fn noop_cx() -> TaskContext<'static> {
    TaskContext::from_waker(futures::task::noop_waker_ref())
}

fn assert_send_sync<T: Send + Sync>(_: &T) {}
fn assert_static<T: 'static>(_: &T) {}

// ---------------------------------------------------------------------------
// Semantics

#[test]
fn yields_items_then_ends_on_cancel_and_stays_ended() {
    let (ctx, h) = Context::background().with_cancel();
    let (p, polls, dropped) = probe(usize::MAX);
    let mut s = pin!(ctx.stream(p));
    let mut cx = noop_cx();
    assert_eq!(s.as_mut().poll_next(&mut cx), Poll::Ready(Some(0)));
    assert_eq!(s.as_mut().poll_next(&mut cx), Poll::Ready(Some(1)));
    assert!(!s.is_terminated());
    h.cancel();
    // An endless, always-ready stream still stops: the context is read
    // first on each poll.
    assert_eq!(s.as_mut().poll_next(&mut cx), Poll::Ready(None));
    assert!(s.is_terminated());
    assert_eq!(polls.load(Ordering::SeqCst), 2);
    assert_eq!(
        dropped.load(Ordering::SeqCst),
        1,
        "the inner stream is dropped at the end"
    );
    assert_eq!(s.as_mut().poll_next(&mut cx), Poll::Ready(None));
    assert_eq!(polls.load(Ordering::SeqCst), 2);
    assert_eq!(s.size_hint(), (0, Some(0)));
}

#[test]
fn done_before_the_first_poll_never_polls_the_stream() {
    let (ctx, h) = Context::background().with_cancel();
    h.cancel();
    let (p, polls, dropped) = probe(5);
    let mut s = pin!(ctx.stream(p));
    assert_eq!(s.as_mut().poll_next(&mut noop_cx()), Poll::Ready(None));
    assert_eq!(polls.load(Ordering::SeqCst), 0);
    assert_eq!(dropped.load(Ordering::SeqCst), 1);
}

/// A stream whose poll cancels the context and yields an item: the item
/// is yielded (never lost), the end comes on the next poll.
#[test]
fn an_item_produced_together_with_the_cancel_is_yielded() {
    let (ctx, h) = Context::background().with_cancel();
    let mut h = Some(h);
    let inner = stream::poll_fn(move |_| {
        if let Some(h) = h.take() {
            h.cancel();
        }
        Poll::Ready(Some(7))
    });
    let mut s = pin!(ctx.stream_with_cause(inner));
    let mut cx = noop_cx();
    assert!(matches!(s.as_mut().poll_next(&mut cx), Poll::Ready(Some(Ok(7)))));
    assert!(matches!(s.as_mut().poll_next(&mut cx), Poll::Ready(Some(Err(_)))));
    assert!(matches!(s.as_mut().poll_next(&mut cx), Poll::Ready(None)));
}

#[test]
fn a_finished_stream_ends_without_an_error_and_lets_go_of_the_context() {
    let (ctx, h) = Context::background().with_cancel();
    let all: Vec<_> = futures::executor::block_on(ctx.stream_with_cause(stream::iter([1, 2, 3])).collect());
    assert_eq!(all.iter().map(|r| *r.as_ref().unwrap()).collect::<Vec<_>>(), [1, 2, 3]);
    let plain: Vec<_> = futures::executor::block_on(ctx.stream(stream::iter([4, 5])).collect());
    assert_eq!(plain, [4, 5]);

    // A stream that waited (its waiter registered) and then finished by
    // itself unlinks at once: cancelling afterwards finds nothing to wake.
    let (tx, rx) = mpsc::unbounded::<u32>();
    let mut s = pin!(ctx.stream_with_cause(rx));
    let mut cx = noop_cx();
    assert!(s.as_mut().poll_next(&mut cx).is_pending());
    tx.unbounded_send(1).unwrap();
    drop(tx);
    assert!(matches!(s.as_mut().poll_next(&mut cx), Poll::Ready(Some(Ok(1)))));
    assert!(matches!(s.as_mut().poll_next(&mut cx), Poll::Ready(None)));
    assert!(s.is_terminated());
    h.cancel_with("late");
    assert!(
        matches!(s.as_mut().poll_next(&mut cx), Poll::Ready(None)),
        "no error after the end"
    );
}

#[test]
fn with_cause_ends_with_one_error_carrying_the_cause() {
    #[derive(Debug)]
    struct Shutdown;
    impl std::fmt::Display for Shutdown {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("shutdown")
        }
    }
    impl std::error::Error for Shutdown {}

    let (root, h) = Context::background().with_cancel();
    let (ctx, _c) = root.with_cancel();
    let (tx, rx) = mpsc::unbounded::<u32>();
    let mut s = pin!(ctx.stream_with_cause(rx));
    let mut cx = noop_cx();
    tx.unbounded_send(1).unwrap();
    assert!(matches!(s.as_mut().poll_next(&mut cx), Poll::Ready(Some(Ok(1)))));
    assert!(s.as_mut().poll_next(&mut cx).is_pending());
    assert_eq!(s.size_hint(), (0, None));
    h.cancel_with(Shutdown);
    let Poll::Ready(Some(Err(err))) = s.as_mut().poll_next(&mut cx) else {
        panic!("expected the final error")
    };
    let err: ContextError = err;
    assert_eq!(err.kind(), Error::Canceled);
    assert!(err.cause().is::<Shutdown>());
    assert_eq!(err.to_string(), "context canceled: shutdown");
    assert!(s.is_terminated());
    assert!(matches!(s.as_mut().poll_next(&mut cx), Poll::Ready(None)));
    // The sender sees the receiver gone: the inner stream was dropped.
    assert!(tx.unbounded_send(2).is_err());
}

#[test]
fn with_cause_reports_a_deadline() {
    static CLOCK: ManualClock = ManualClock::new();
    let (ctx, _h) = Context::with_timer(&CLOCK).with_timeout_cause(Duration::from_secs(1), "too slow");
    let mut s = pin!(ctx.stream_with_cause(stream::pending::<u8>()));
    let mut cx = noop_cx();
    assert!(s.as_mut().poll_next(&mut cx).is_pending());
    CLOCK.advance(Duration::from_secs(1));
    let Poll::Ready(Some(Err(err))) = s.as_mut().poll_next(&mut cx) else {
        panic!("expected the final error")
    };
    assert_eq!(err.kind(), Error::DeadlineExceeded);
    assert_eq!(err.cause().as_str(), Some("too slow"));
    assert!(matches!(s.as_mut().poll_next(&mut cx), Poll::Ready(None)));
}

#[test]
fn background_never_ends_the_stream() {
    let ctx = Context::background();
    let s = ctx.stream(stream::iter(0..100));
    assert_eq!(s.size_hint(), (0, Some(100)));
    assert_eq!(futures::executor::block_on(s.count()), 100);
    let s = ContextRef::background().stream_with_cause(stream::iter(0..3));
    assert_eq!(s.size_hint(), (0, Some(4)));
    assert_eq!(futures::executor::block_on(s.count()), 3);
}

#[test]
fn a_cancel_wakes_a_waiting_stream_from_another_thread() {
    let (ctx, h) = Context::background().with_cancel();
    let (_tx, rx) = mpsc::unbounded::<u32>();
    let s = ctx.stream_with_cause(rx);
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(10));
        h.cancel_with("from a thread");
    });
    let out: Vec<_> = futures::executor::block_on(s.collect());
    t.join().unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].as_ref().unwrap_err().cause().as_str(), Some("from a thread"));
}

#[test]
fn dropping_a_waiting_stream_unlinks_it() {
    let (ctx, h) = Context::background().with_cancel();
    {
        let mut s = Box::pin(ctx.stream(stream::pending::<()>()));
        assert!(s.as_mut().poll_next(&mut noop_cx()).is_pending());
    }
    // Its waiter is gone from the list: the cancel touches no freed memory
    // (Miri checks).
    h.cancel();
    let mut s = Box::pin(ctx.stream(stream::pending::<()>()));
    assert_eq!(s.as_mut().poll_next(&mut noop_cx()), Poll::Ready(None));
}

#[test]
fn heap_free_tier_scoped_and_static() {
    static ROOT: StaticContext = StaticContext::new();
    let scoped = pin!(ScopedContext::new(ROOT.as_ref()));
    let ctx = scoped.as_ref().context();
    let (tx, rx) = mpsc::unbounded::<u32>();
    let mut s = pin!(ctx.stream_with_cause(rx));
    let mut cx = noop_cx();
    tx.unbounded_send(3).unwrap();
    assert!(matches!(s.as_mut().poll_next(&mut cx), Poll::Ready(Some(Ok(3)))));
    assert!(s.as_mut().poll_next(&mut cx).is_pending());
    ROOT.cancel_with("power loss");
    let Poll::Ready(Some(Err(err))) = s.as_mut().poll_next(&mut cx) else {
        panic!("expected the final error")
    };
    assert_eq!(err.cause().as_str(), Some("power loss"));
    assert!(s.is_terminated());

    // A `Context` viewed as a `ContextRef`.
    let (heap, h) = Context::background().with_cancel();
    let r = heap.as_ref();
    let mut s = pin!(r.stream(stream::repeat(1u8)));
    assert_eq!(s.as_mut().poll_next(&mut cx), Poll::Ready(Some(1)));
    h.cancel();
    assert_eq!(s.as_mut().poll_next(&mut cx), Poll::Ready(None));
}

#[test]
fn auto_traits() {
    let (ctx, _h) = Context::background().with_cancel();
    let s: RunStream<'static, _> = ctx.stream(stream::iter([1u8]));
    assert_send_sync(&s);
    assert_static(&s);
    let s: RunStreamWithCause<'static, _> = ctx.stream_with_cause(stream::iter([1u8]));
    assert_send_sync(&s);
    assert_static(&s);
    let r = ctx.as_ref();
    let s = r.stream(stream::iter([1u8]));
    assert_send_sync(&s);
    // `Send` follows the inner stream: a `!Send` one gives a `!Send` adapter
    // (checked by the compiler wherever `Send` is required, as in the
    // executor tests spawning these adapters below).
}

/// No allocation per poll, nor to make the adapter (beyond the context's
/// clone, which is a reference count).
#[cfg_attr(miri, ignore = "the allocation count is not what Miri checks")]
#[test]
fn no_allocation_per_poll() {
    let (ctx, h) = Context::background().with_cancel();
    let mut cx = noop_cx();
    let (p, _, _) = probe(1000);
    let before = allocs();
    let mut s = pin!(ctx.stream_with_cause(p));
    for _ in 0..1000 {
        assert!(matches!(s.as_mut().poll_next(&mut cx), Poll::Ready(Some(Ok(_)))));
    }
    // Pending: the waiter registers (clones the noop waker: no allocation).
    assert!(s.as_mut().poll_next(&mut cx).is_pending());
    assert!(s.as_mut().poll_next(&mut cx).is_pending());
    h.cancel_with("stop");
    assert!(matches!(s.as_mut().poll_next(&mut cx), Poll::Ready(Some(Err(_)))));
    assert_eq!(allocs() - before, 0);
}

// ---------------------------------------------------------------------------
// Executors

/// The same scenario on every executor: a spawned task forwards a channel
/// through `ctx.stream_with_cause`, another task cancels the context after
/// the items went through.
async fn forward_until_cancelled(ctx: Context, rx: mpsc::UnboundedReceiver<u32>) -> (Vec<u32>, Option<ContextError>) {
    let mut items = Vec::new();
    let mut s = pin!(ctx.stream_with_cause(rx));
    while let Some(r) = s.next().await {
        match r {
            Ok(x) => items.push(x),
            Err(e) => return (items, Some(e)),
        }
    }
    (items, None)
}

#[cfg_attr(miri, ignore = "tokio's runtime under Miri is too slow")]
#[test]
fn tokio_current_thread() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let (ctx, h) = Context::background().with_cancel();
        let (tx, rx) = mpsc::unbounded();
        let task = tokio::spawn(forward_until_cancelled(ctx.clone(), rx));
        for i in 0..3 {
            tx.unbounded_send(i).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        h.cancel_with("tokio");
        let (items, err) = task.await.unwrap();
        assert_eq!(items, [0, 1, 2]);
        assert_eq!(err.unwrap().cause().as_str(), Some("tokio"));
        // A plain `stream` spawned (`'static + Send`) ends with `None`.
        let (ctx, h) = Context::background().with_cancel();
        let task = tokio::spawn(async move { ctx.stream(futures::stream::pending::<()>()).count().await });
        tokio::task::yield_now().await;
        drop(h);
        assert_eq!(task.await.unwrap(), 0);
    });
}

#[cfg_attr(miri, ignore = "tokio's runtime under Miri is too slow")]
#[test]
fn tokio_multi_thread() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        for round in 0..50u32 {
            let (ctx, h) = Context::background().with_cancel();
            let (tx, rx) = mpsc::unbounded();
            let task = tokio::spawn(forward_until_cancelled(ctx, rx));
            tx.unbounded_send(round).unwrap();
            let canceller = tokio::spawn(async move {
                tokio::task::yield_now().await;
                h.cancel_with("multi");
            });
            let (items, err) = task.await.unwrap();
            canceller.await.unwrap();
            // The item may or may not have gone through before the cancel;
            // never more than it, never a lost end.
            assert!(items.len() <= 1);
            assert_eq!(err.unwrap().cause().as_str(), Some("multi"));
        }
    });
}

#[cfg_attr(miri, ignore = "smol's executor under Miri is too slow")]
#[test]
fn smol() {
    let ex = async_executor::Executor::new();
    futures_lite::future::block_on(ex.run(async {
        let (ctx, h) = Context::background().with_cancel();
        let (tx, rx) = mpsc::unbounded();
        let task = ex.spawn(forward_until_cancelled(ctx, rx));
        tx.unbounded_send(1).unwrap();
        tx.unbounded_send(2).unwrap();
        futures_lite::future::yield_now().await;
        let canceller = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(5));
            h.cancel_with("smol");
        });
        let (items, err) = task.await;
        canceller.join().unwrap();
        assert_eq!(items, [1, 2]);
        assert_eq!(err.unwrap().cause().as_str(), Some("smol"));

        // A stream that finishes first: all items, no error.
        let (ctx, _h) = Context::background().with_cancel();
        let (tx, rx) = mpsc::unbounded();
        let task = ex.spawn(forward_until_cancelled(ctx, rx));
        tx.unbounded_send(9).unwrap();
        drop(tx);
        let (items, err) = task.await;
        assert_eq!(items, [9]);
        assert!(err.is_none());
    }));
}
