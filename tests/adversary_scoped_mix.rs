//! Adversary: several scoped nodes with more than a batch of wakers each,
//! whose wakers synchronously drop the tasks that own them (every task, not
//! only their own), under a cancel from another thread; and a scoped
//! deadline firing (ManualClock) concurrently with the owner's drop.
//!
//! These attacks held against the round-4 fixes; kept as regression tests.

mod common;
use common::leak;
use core::future::Future;
use core::pin::{pin, Pin};
use core::task::{Context as TaskCx, Waker};
use ctxcore::{ManualClock, ScopedContext, StaticContext};
use std::sync::{mpsc, Arc, Mutex};
use std::task::Wake;
use std::time::Duration;

type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

static ROOT: StaticContext = StaticContext::new();
static SLOTS: Mutex<Vec<Option<Task>>> = Mutex::new(Vec::new());

static ARMED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
struct DropAll;
impl Wake for DropAll {
    fn wake(self: Arc<Self>) {
        // join_all (FuturesUnordered) wakes itself while being set up.
        if !ARMED.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let tasks: Vec<_> = SLOTS.lock().unwrap().iter_mut().map(|t| t.take()).collect();
        drop(tasks);
    }
}

/// Three tasks, each a chain of two scoped nodes with 17 waiters on each:
/// six nodes parked at once; the first waker drops all three tasks.
#[test]
fn many_parked_scoped_nodes_dropped_by_their_wakers() {
    const TASKS: usize = if cfg!(miri) { 2 } else { 3 };
    for _ in 0..TASKS {
        let t: Task = Box::pin(async {
            let a = pin!(ScopedContext::new(ROOT.as_ref()));
            let ac = a.as_ref().context();
            let b = pin!(ScopedContext::new(ac));
            let bc = b.as_ref().context();
            let mut w: Vec<_> = (0..17).map(|_| ac.done()).collect();
            w.extend((0..17).map(|_| bc.done()));
            futures::future::join_all(w).await;
        });
        SLOTS.lock().unwrap().push(Some(t));
    }
    let waker = Waker::from(Arc::new(DropAll));
    for i in 0..TASKS {
        let mut t = SLOTS.lock().unwrap()[i].take().unwrap();
        assert!(t.as_mut().poll(&mut TaskCx::from_waker(&waker)).is_pending());
        SLOTS.lock().unwrap()[i] = Some(t);
    }
    ARMED.store(true, std::sync::atomic::Ordering::SeqCst);
    let (tx, rx) = mpsc::channel();
    let h = std::thread::spawn(move || {
        ROOT.cancel();
        let _ = tx.send(());
    });
    assert!(
        rx.recv_timeout(Duration::from_secs(if cfg!(miri) { 600 } else { 10 }))
            .is_ok(),
        "cancel hung"
    );
    h.join().unwrap();
    assert!(SLOTS.lock().unwrap().iter().all(Option::is_none));
}

static CLOCK: ManualClock = ManualClock::new();
static TROOT: StaticContext = StaticContext::with_timer(&CLOCK);

/// A scoped deadline (with a waiter leaked with `mem::forget`, so the node
/// also has wakers left for the owner to take over) fires on one thread while
/// the owner drops on another.
#[test]
fn timer_fires_while_owner_drops() {
    let rounds = if cfg!(miri) { 3 } else { 200 };
    for i in 0..rounds {
        let s = Box::pin(ScopedContext::with_timeout(TROOT.as_ref(), Duration::from_millis(1)));
        let c = s.as_ref().context();
        let mut leaked = Vec::new();
        for _ in 0..17 {
            let mut d = Box::pin(c.done());
            assert!(d.as_mut().poll(&mut TaskCx::from_waker(Waker::noop())).is_pending());
            leaked.push(d);
        }
        for d in leaked {
            leak(d);
        }
        std::thread::scope(|sc| {
            sc.spawn(|| CLOCK.advance(Duration::from_millis(2)));
            sc.spawn(move || {
                if i % 2 == 0 {
                    std::thread::yield_now();
                }
                drop(s)
            });
        });
        assert_eq!(CLOCK.armed(), 0);
    }
}
