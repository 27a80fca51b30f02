//! A `ScopedContext` dropped by the task its own deadline's firing wakes,
//! while the firing still holds its node: the host analogue of
//! `tests/firmware/src/bin/scoped_prio.rs`, where a task on an embassy
//! `InterruptExecutor` preempts the thread-mode timer driver inside
//! `TimerFiring::fire` (a waker that polls its task inline plays the
//! preempting interrupt). Ignored until the core is fixed; run it with
//! `cargo test --test scoped_priority -- --ignored`.

use core::future::Future;
use core::pin::{pin, Pin};
use core::task::Context as TaskContext;
use core::time::Duration;
use ctxcore::{Error, ManualClock, ScopedContext, StaticContext};
use std::sync::{mpsc, Arc, Mutex};
use std::task::{Wake, Waker};
use std::thread;

/// Runs `f` on its own thread; false if it has not returned within 5 s (a
/// hang: that thread is left spinning).
fn finishes(f: impl FnOnce() + Send + 'static) -> bool {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    rx.recv_timeout(Duration::from_secs(5)).is_ok()
}

type TaskFuture = Pin<Box<dyn Future<Output = Error> + Send>>;

/// A task whose waker polls it at once, on the waking thread, and drops the
/// future when it completes — as a higher-priority executor does.
struct InlineTask(Mutex<Option<TaskFuture>>);

impl InlineTask {
    fn poll(self: &Arc<Self>) {
        let waker = Waker::from(self.clone());
        let mut slot = self.0.lock().unwrap();
        if let Some(fut) = slot.as_mut() {
            if fut.as_mut().poll(&mut TaskContext::from_waker(&waker)).is_ready() {
                // The future, and the ScopedContext pinned in it, end here.
                *slot = None;
            }
        }
    }
}

impl Wake for InlineTask {
    fn wake(self: Arc<Self>) {
        self.poll();
    }
}

#[test]
#[cfg_attr(miri, ignore)]
fn scoped_dropped_by_the_task_its_deadline_wakes() {
    assert!(finishes(|| {
        static CLOCK: ManualClock = ManualClock::new();
        static ROOT: StaticContext = StaticContext::with_timer(&CLOCK);
        let task = Arc::new(InlineTask(Mutex::new(Some(Box::pin(async {
            let child = pin!(ScopedContext::with_timeout(ROOT.as_ref(), Duration::from_secs(1)));
            child.as_ref().context().done().await
        })))));
        task.poll(); // registers the waiter, arms the deadline
        assert_eq!(CLOCK.armed(), 1);
        CLOCK.advance(Duration::from_secs(1)); // fires: wakes the task inline
        assert!(task.0.lock().unwrap().is_none(), "the task completed");
    }));
}

/// The same task, woken by a plain cancel of the root instead of a deadline:
/// the cancel releases its references before waking, so this one passes.
#[test]
#[cfg_attr(miri, ignore)]
fn scoped_dropped_by_the_task_a_cancel_wakes() {
    assert!(finishes(|| {
        static ROOT: StaticContext = StaticContext::new();
        let task = Arc::new(InlineTask(Mutex::new(Some(Box::pin(async {
            let child = pin!(ScopedContext::new(ROOT.as_ref()));
            child.as_ref().context().done().await
        })))));
        task.poll();
        ROOT.cancel();
        assert!(task.0.lock().unwrap().is_none(), "the task completed");
    }));
}
