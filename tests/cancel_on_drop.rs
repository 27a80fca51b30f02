//! `CancelOnDrop` (issue 11, item 3): a future dropped before it completes
//! cancels its context with the cause *before* dropping the work inside it,
//! so every leaf — even one whose handle lives inside the work — sees the
//! real cause; a completed one cancels plainly.

use ctxcore::{CancelOnDrop, Context, Error, Group};
use futures::FutureExt;
use std::future::Future;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

/// Where the handler publishes its innermost context, for the test to look at
/// after the handler's future is gone.
type LeafSlot = Arc<Mutex<Option<Context>>>;

/// A request handler shaped like the one of issue 11: a per-request
/// timeout, a group inside it, a downstream call with a tighter timeout under
/// the group; every handle lives inside the future.
async fn handler(request: Context, leaf_slot: LeafSlot, cancelled_with: mpsc::Sender<String>) {
    let (with_budget, _budget_handle) = request.with_timeout(Duration::from_secs(30));
    let mut group = Group::<&'static str>::new(&with_budget);
    let group_ctx = group.context().clone();
    group.spawn(async move {
        let (call, _call_handle) = group_ctx.with_timeout(Duration::from_secs(5));
        let seen = call.clone();
        call.after_func(move || {
            let _ = cancelled_with.send(seen.cause().unwrap().to_string());
        });
        *leaf_slot.lock().unwrap() = Some(call.clone());
        let _ = call.done().await; // the downstream call, in flight
        Ok(())
    });
    let _ = group.wait().await;
}

fn leaf(slot: &LeafSlot) -> Context {
    slot.lock().unwrap().clone().expect("the handler reached its leaf")
}

#[test]
fn without_the_adapter_the_leaf_is_cancelled_plainly() {
    // The pitfall itself: the handles inside the future cancel first.
    let slot = LeafSlot::default();
    let (tx, rx) = mpsc::channel();
    let (request, request_handle) = Context::background().with_cancel();
    let mut fut = Box::pin(handler(request, slot.clone(), tx));
    assert!(fut.as_mut().now_or_never().is_none());
    drop(fut);
    request_handle.cancel_with("client disconnected");
    assert_eq!(rx.recv_timeout(Duration::from_secs(1)).unwrap(), "context canceled");
    assert_eq!(leaf(&slot).cause().unwrap().as_error(), Some(Error::Canceled));
}

#[test]
fn the_leaf_sees_the_outer_cause() {
    let slot = LeafSlot::default();
    let (tx, rx) = mpsc::channel();
    let (request, request_handle) = Context::background().with_cancel();
    let mut fut =
        Box::pin(request_handle.cancel_on_drop(handler(request.clone(), slot.clone(), tx), "client disconnected"));
    assert!(fut.as_mut().now_or_never().is_none());
    assert!(!fut.is_finished());
    drop(fut);
    assert_eq!(rx.recv_timeout(Duration::from_secs(1)).unwrap(), "client disconnected");
    let leaf = leaf(&slot);
    assert_eq!(leaf.err(), Some(Error::Canceled));
    assert_eq!(leaf.cause().unwrap().to_string(), "client disconnected");
    assert_eq!(request.cause().unwrap().to_string(), "client disconnected");
}

#[derive(Debug, PartialEq)]
struct ClientGone(u16);
impl std::fmt::Display for ClientGone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "client on port {} went away", self.0)
    }
}
impl std::error::Error for ClientGone {}

#[test]
fn an_error_cause_downcasts_at_the_leaf() {
    let slot = LeafSlot::default();
    let (tx, _rx) = mpsc::channel();
    let (request, request_handle) = Context::background().with_cancel();
    let mut fut = Box::pin(CancelOnDrop::new(
        request_handle,
        ClientGone(4242),
        handler(request, slot.clone(), tx),
    ));
    assert!(fut.as_mut().now_or_never().is_none());
    drop(fut);
    assert_eq!(leaf(&slot).cause().unwrap().downcast_ref(), Some(&ClientGone(4242)));
}

#[test]
fn completion_cancels_plainly_and_returns_the_output() {
    let (request, handle) = Context::background().with_cancel();
    let (child, _child_handle) = request.with_cancel();
    let mut fut = Box::pin(handle.cancel_on_drop(async { 42 }, "unused"));
    assert_eq!(fut.as_mut().now_or_never(), Some(42));
    assert!(fut.is_finished());
    assert!(futures::future::FusedFuture::is_terminated(&fut));
    // Finished work leaves nothing running under it (Go's `defer cancel()`).
    assert_eq!(child.cause().unwrap().as_error(), Some(Error::Canceled));
    // Polled again: pending, like a fused future; dropping changes nothing.
    assert!(fut.as_mut().now_or_never().is_none());
    drop(fut);
    assert_eq!(request.cause().unwrap().as_error(), Some(Error::Canceled));
}

#[test]
fn an_earlier_cancel_wins() {
    let (request, handle) = Context::background().with_cancel();
    let (outer, outer_handle) = Context::background().with_cancel();
    let request2 = Context::any([&request, &outer]);
    outer_handle.cancel_with("shutdown");
    let fut = handle.cancel_on_drop(std::future::pending::<()>(), "client disconnected");
    drop(fut);
    assert_eq!(request.cause().unwrap().to_string(), "client disconnected");
    assert_eq!(request2.cause().unwrap().to_string(), "shutdown");
}

/// A panic inside the work unwinds through the work's own locals first
/// (their handles cancel plainly, as with any unwinding); the adapter then
/// cancels the context with the cause, which everything else under it sees.
#[test]
fn a_panic_inside_cancels_with_the_cause() {
    let (request, handle) = Context::background().with_cancel();
    let (sibling, _sibling_handle) = request.with_cancel(); // e.g. a spawned task's
    let (leaf_tx, leaf_rx) = mpsc::channel();
    let r = request.clone();
    let mut fut = Box::pin(handle.cancel_on_drop(
        async move {
            let (leaf, _leaf_handle) = r.with_cancel();
            leaf_tx.send(leaf.clone()).unwrap();
            futures::pending!();
            panic!("handler bug");
        },
        "handler panicked",
    ));
    assert!(fut.as_mut().now_or_never().is_none());
    let leaf = leaf_rx.recv().unwrap();
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = fut.as_mut().now_or_never();
    }));
    assert!(caught.is_err());
    // The unwinding dropped the panicking frame's own handle.
    assert_eq!(leaf.cause().unwrap().as_error(), Some(Error::Canceled));
    assert!(!request.is_done());
    drop(fut);
    assert_eq!(request.cause().unwrap().to_string(), "handler panicked");
    assert_eq!(sibling.cause().unwrap().to_string(), "handler panicked");
}

fn assert_send<T: Send>(_: &T) {}

#[test]
fn it_is_send_when_the_future_is() {
    let (ctx, handle) = Context::background().with_cancel();
    let fut = handle.cancel_on_drop(async move { ctx.done().await }, "x");
    assert_send(&fut);
    fn assert_future<F: Future<Output = Error>>(_: &F) {}
    assert_future(&fut);
}

/// The server shape on a real runtime: the request task is aborted (tokio
/// drops its future on a worker thread); the leaf sees the cause.
#[test]
fn tokio_abort_reaches_the_leaf_with_the_cause() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let slot = LeafSlot::default();
        let (tx, rx) = mpsc::channel();
        let (request, request_handle) = Context::background().with_cancel();
        let task =
            tokio::spawn(request_handle.cancel_on_drop(handler(request, slot.clone(), tx), "client disconnected"));
        // Wait until the handler reached its leaf.
        for _ in 0..2000 {
            if slot.lock().unwrap().is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let leaf = leaf(&slot);
        task.abort();
        assert!(task.await.unwrap_err().is_cancelled());
        assert_eq!(rx.recv_timeout(Duration::from_secs(1)).unwrap(), "client disconnected");
        assert_eq!(leaf.cause().unwrap().to_string(), "client disconnected");
    });
}

/// The same on smol: dropping a `Task` cancels it.
#[test]
fn smol_task_drop_reaches_the_leaf_with_the_cause() {
    let ex = async_executor::Executor::new();
    futures_lite::future::block_on(ex.run(async {
        let slot = LeafSlot::default();
        let (tx, rx) = mpsc::channel();
        let (request, request_handle) = Context::background().with_cancel();
        let task = ex.spawn(request_handle.cancel_on_drop(handler(request, slot.clone(), tx), "client disconnected"));
        while slot.lock().unwrap().is_none() {
            futures_lite::future::yield_now().await;
        }
        // Dropping a smol `Task` cancels it; the executor drops its future.
        drop(task);
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        let seen = loop {
            match rx.try_recv() {
                Ok(seen) => break seen,
                Err(_) => {
                    assert!(std::time::Instant::now() < deadline, "the task was not dropped");
                    futures_lite::future::yield_now().await;
                }
            }
        };
        assert_eq!(seen, "client disconnected");
    }));
}
