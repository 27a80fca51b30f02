//! Review reproducer: with more than 16 wakers in one cancellation, phase 2
//! of `propagate` runs wakers while the canceller still holds references to
//! nodes in its `later` list (node/mod.rs propagate, `batch.run()` before the
//! `later` loop). A waker that drops the task owning a scoped node of that
//! list makes the scoped node's drop (`detach_scoped`) spin for `refs == 1`
//! on the very thread that holds the extra reference: the thread never
//! returns (self-deadlock). The drain_wakers doc explicitly allows a waker
//! to drop the scoped owner.
use core::future::Future;
use core::pin::{pin, Pin};
use core::task::{Context as TaskCx, Waker};
use ctxcore::{ScopedContext, StaticContext};
use std::sync::{mpsc, Arc, Mutex};
use std::task::Wake;
use std::time::Duration;

type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

static ROOT: StaticContext = StaticContext::new();
static SLOT: Mutex<Option<Task>> = Mutex::new(None);

// A waker whose `wake` drops the task (e.g. an executor that tears the task
// down, or polls it inline and it completes).

#[test]
fn waker_dropping_a_scoped_owner_held_in_later_deadlocks() {
    run(&ROOT, &SLOT, 17, wake_17); // one more than the batch: deadlock
}

static ROOT16: StaticContext = StaticContext::new();
static SLOT16: Mutex<Option<Task>> = Mutex::new(None);

/// Control: 16 waiters (fits the batch, no `later`): the same waker is fine.
#[test]
fn control_16_waiters_is_fine() {
    run(&ROOT16, &SLOT16, 16, wake_16);
}

fn wake_17() {
    drop(SLOT.lock().unwrap().take());
}
fn wake_16() {
    drop(SLOT16.lock().unwrap().take());
}

struct DropVia(fn());
impl Wake for DropVia {
    fn wake(self: Arc<Self>) {
        (self.0)()
    }
}

fn run(root: &'static StaticContext, slot: &'static Mutex<Option<Task>>, n: usize, wake: fn()) {
    #[allow(non_snake_case)]
    let WAITERS = n;
    let task: Task = Box::pin(async move {
        let s = pin!(ScopedContext::new(root.as_ref()));
        let c = s.as_ref().context();
        let waits: Vec<_> = (0..WAITERS).map(|_| c.done()).collect();
        futures::future::join_all(waits).await;
    });
    *slot.lock().unwrap() = Some(task);
    let waker = Waker::from(Arc::new(DropVia(wake)));
    {
        let mut g = slot.lock().unwrap();
        let t = g.as_mut().unwrap();
        let mut cx = TaskCx::from_waker(&waker);
        assert!(t.as_mut().poll(&mut cx).is_pending()); // 17 waiters registered
    }
    let (tx, rx) = mpsc::channel();
    let canceller = std::thread::spawn(move || {
        root.cancel();
        let _ = tx.send(());
    });
    assert!(
        rx.recv_timeout(Duration::from_secs(10)).is_ok(),
        "cancel() never returned: detach_scoped spins on a reference its own thread holds"
    );
    canceller.join().unwrap();
}
