//! loom models of `ctx.stream(s)` (src/stream.rs): its waiter (the `done()`
//! waiter protocol, invariant 8) racing a cancel, and the stream's own end,
//! which drops the waiter in place (unlinking it) while a canceller may be
//! draining the waiter list.
#![cfg(loom)]

use core::pin::Pin;
use core::task::{Context as TaskContext, Poll, Waker};
use ctxcore::{Context, Error};
use futures_core::stream::{FusedStream, Stream};
use loom::thread;

/// Pending on its first poll, ended on the second.
struct PendingThenEnd(u8);

impl Stream for PendingThenEnd {
    type Item = ();
    fn poll_next(mut self: Pin<&mut Self>, _cx: &mut TaskContext<'_>) -> Poll<Option<()>> {
        self.0 += 1;
        if self.0 == 1 {
            Poll::Pending
        } else {
            Poll::Ready(None)
        }
    }
}

/// Pending forever.
struct Never;

impl Stream for Never {
    type Item = ();
    fn poll_next(self: Pin<&mut Self>, _cx: &mut TaskContext<'_>) -> Poll<Option<()>> {
        Poll::Pending
    }
}

/// A task waiting on a stream whose inner stream never yields is woken by a
/// cancel from another thread, and ends with the cause (no lost wake-up).
#[test]
fn stream_waiting_vs_cancel() {
    loom::model(|| {
        let (ctx, handle) = Context::background().with_cancel();
        let t = thread::spawn(move || {
            let mut s = Box::pin(ctx.stream_with_cause(Never));
            let first = loom::future::block_on(core::future::poll_fn(|cx| s.as_mut().poll_next(cx)));
            let err = first.expect("an error item").expect_err("the cancel");
            assert!(s.is_terminated());
            err
        });
        handle.cancel_with("stop");
        let err = t.join().unwrap();
        assert_eq!(err.kind(), Error::Canceled);
        assert_eq!(err.cause().as_str(), Some("stop"));
    });
}

/// The stream ends by itself (dropping its registered waiter in place)
/// while another thread cancels the context (draining the waiter list):
/// either outcome, never both, and no use after free.
#[test]
fn stream_end_vs_cancel() {
    loom::model(|| {
        let (ctx, handle) = Context::background().with_cancel();
        let t = thread::spawn(move || handle.cancel_with("stop"));
        let mut s = Box::pin(ctx.stream_with_cause(PendingThenEnd(0)));
        let mut cx = TaskContext::from_waker(Waker::noop());
        let first = s.as_mut().poll_next(&mut cx);
        let second = s.as_mut().poll_next(&mut cx);
        match (&first, &second) {
            // Registered, then ended by itself.
            (Poll::Pending, Poll::Ready(None)) => {}
            // Registered, then the cancel was seen first.
            (Poll::Pending, Poll::Ready(Some(Err(e)))) => assert_eq!(e.cause().as_str(), Some("stop")),
            // Done before the first poll: the inner stream is never polled.
            (Poll::Ready(Some(Err(_))), Poll::Ready(None)) => {}
            _ => panic!("unexpected {first:?} then {second:?}"),
        }
        assert!(s.is_terminated());
        drop(s);
        t.join().unwrap();
        assert!(ctx.is_done());
    });
}
