//! Review tests: re-entrancy of RunStream (run under Miri, SB and TB).
use core::pin::{pin, Pin};
use core::task::{Context as TaskContext, Poll, Waker};
use ctxcore::{CancelHandle, Context, ScopedContext};
use futures::stream::{Stream, StreamExt};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Wake;

/// A pinned stream that never yields, polled by a waker.
type PinnedPending = Pin<Box<ctxcore::RunStream<'static, futures::stream::Pending<u32>>>>;

struct CountWake(AtomicUsize);
impl Wake for CountWake {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// Pending once (so the adapter's waiter registers), then cancels its own
/// context from inside poll_next by dropping the handle, then pending.
struct SelfCancel {
    polls: usize,
    handle: Option<CancelHandle>,
}
impl Stream for SelfCancel {
    type Item = u32;
    fn poll_next(mut self: Pin<&mut Self>, _cx: &mut TaskContext<'_>) -> Poll<Option<u32>> {
        self.polls += 1;
        if self.polls == 2 {
            drop(self.handle.take());
        }
        Poll::Pending
    }
}

#[test]
fn poll_next_cancels_its_own_context_while_registered() {
    let (ctx, h) = Context::background().with_cancel();
    let w = Arc::new(CountWake(AtomicUsize::new(0)));
    let waker = Waker::from(w.clone());
    let mut cx = TaskContext::from_waker(&waker);
    let mut s = pin!(ctx.stream_with_cause(SelfCancel {
        polls: 0,
        handle: Some(h)
    }));
    drop(ctx); // the stream holds the last Context clone
    assert!(s.as_mut().poll_next(&mut cx).is_pending());
    // the cancel runs inside the inner poll, walks the list holding our waiter
    match s.as_mut().poll_next(&mut cx) {
        Poll::Ready(Some(Err(e))) => assert!(e.is_canceled()),
        _ => panic!("expected the cancel error"),
    }
    assert_eq!(w.0.load(Ordering::SeqCst), 1);
    assert!(matches!(s.as_mut().poll_next(&mut cx), Poll::Ready(None)));
}

/// Ends by itself; its Drop (run by `end`) cancels the context while the
/// adapter's waiter is still linked.
struct EndsThenCancelsOnDrop {
    polls: usize,
    _handle: CancelHandle,
}
impl Stream for EndsThenCancelsOnDrop {
    type Item = u32;
    fn poll_next(mut self: Pin<&mut Self>, _cx: &mut TaskContext<'_>) -> Poll<Option<u32>> {
        self.polls += 1;
        if self.polls == 1 {
            Poll::Pending
        } else {
            Poll::Ready(None)
        }
    }
}

#[test]
fn inner_drop_cancels_while_registered() {
    let (ctx, h) = Context::background().with_cancel();
    let w = Arc::new(CountWake(AtomicUsize::new(0)));
    let waker = Waker::from(w.clone());
    let mut cx = TaskContext::from_waker(&waker);
    let mut s = Box::pin(ctx.stream(EndsThenCancelsOnDrop { polls: 0, _handle: h }));
    assert!(s.as_mut().poll_next(&mut cx).is_pending());
    assert!(matches!(s.as_mut().poll_next(&mut cx), Poll::Ready(None)));
    assert!(ctx.is_done());
    drop(s);
}

/// Same on a ScopedContext borrowed through ContextRef; the inner stream's
/// poll cancels the scoped node.
struct CancelScoped<'a> {
    polls: usize,
    sc: Pin<&'a ScopedContext<'a>>,
}
impl Stream for CancelScoped<'_> {
    type Item = u32;
    fn poll_next(mut self: Pin<&mut Self>, _cx: &mut TaskContext<'_>) -> Poll<Option<u32>> {
        self.polls += 1;
        if self.polls == 2 {
            self.sc.cancel();
        }
        Poll::Pending
    }
}

#[test]
fn scoped_inner_cancels_while_registered() {
    let sc = pin!(ScopedContext::new(ctxcore::ContextRef::background()));
    let sc = sc.into_ref();
    let w = Arc::new(CountWake(AtomicUsize::new(0)));
    let waker = Waker::from(w.clone());
    let mut cx = TaskContext::from_waker(&waker);
    let mut s = pin!(sc.context().stream(CancelScoped { polls: 0, sc }));
    assert!(s.as_mut().poll_next(&mut cx).is_pending());
    assert!(matches!(s.as_mut().poll_next(&mut cx), Poll::Ready(None)));
}

/// A waker that panics on wake, then the stream is polled again.
struct PanicWake;
impl Wake for PanicWake {
    fn wake(self: Arc<Self>) {
        panic!("waker panics (expected)");
    }
}

#[test]
fn panicking_waker_then_poll_again() {
    let (ctx, h) = Context::background().with_cancel();
    let waker = Waker::from(Arc::new(PanicWake));
    let mut cx = TaskContext::from_waker(&waker);
    let mut s = Box::pin(ctx.stream(futures::stream::pending::<u32>()));
    assert!(s.as_mut().poll_next(&mut cx).is_pending());
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| h.cancel()));
    assert!(r.is_err());
    assert!(matches!(s.as_mut().poll_next(&mut cx), Poll::Ready(None)));
}

/// A waker whose wake re-registers by polling a second stream on the same
/// context (re-entrant lock of the node?).
struct ReRegister {
    other: Mutex<Option<PinnedPending>>,
}
impl Wake for ReRegister {
    fn wake(self: Arc<Self>) {
        let waker = futures::task::noop_waker();
        let mut cx = TaskContext::from_waker(&waker);
        if let Some(s) = self.other.lock().unwrap().as_mut() {
            assert!(matches!(s.as_mut().poll_next(&mut cx), Poll::Ready(None)));
        }
        *self.other.lock().unwrap() = None; // drops (unlinks) from inside the wake
    }
}

#[test]
fn waker_polls_and_drops_a_sibling_stream() {
    let (ctx, h) = Context::background().with_cancel();
    let sib = Box::pin(ctx.stream(futures::stream::pending::<u32>()));
    let rr = Arc::new(ReRegister {
        other: Mutex::new(Some(sib)),
    });
    {
        let waker = futures::task::noop_waker();
        let mut cx = TaskContext::from_waker(&waker);
        let mut g = rr.other.lock().unwrap();
        assert!(g.as_mut().unwrap().as_mut().poll_next(&mut cx).is_pending());
    }
    let waker = Waker::from(rr.clone());
    let mut cx = TaskContext::from_waker(&waker);
    let mut s = Box::pin(ctx.stream(futures::stream::pending::<u32>()));
    assert!(s.as_mut().poll_next(&mut cx).is_pending());
    h.cancel();
    assert!(futures::executor::block_on(s.next()).is_none());
}
