//! After-funcs that can be waited for and scoped (issue 11, item 4): `stop`
//! tells "stopped", "running" and "ran" apart; `stop_and_wait` (and the async
//! `stop_wait`) return only once the callback is not running and never will
//! be; a guard stops (and waits) on drop. A pooled connection's interrupt
//! from a finished request must never hit the next borrower's query.
use ctxcore::{Context, StopOutcome};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

#[test]
fn outcomes_are_distinct() {
    let (ctx, handle) = Context::background().with_cancel();
    let stopped = ctx.after_func(|| {});
    let ran = ctx.after_func(|| {});
    assert_eq!(stopped.try_stop(), StopOutcome::Stopped);
    assert_eq!(stopped.try_stop(), StopOutcome::AlreadyStopped);
    assert!(!stopped.stop());
    handle.cancel();
    assert_eq!(ran.try_stop(), StopOutcome::Ran);
    assert_eq!(ran.stop_and_wait(), StopOutcome::Ran);
    // Registered on a done context: ran at once.
    let late = ctx.after_func(|| {});
    assert_eq!(late.try_stop(), StopOutcome::Ran);
    // On a context that can never be done: stopped, then already stopped.
    let never = Context::background().after_func(|| {});
    assert_eq!(never.try_stop(), StopOutcome::Stopped);
    assert_eq!(never.try_stop(), StopOutcome::AlreadyStopped);
}

/// A running callback: `try_stop` says so; `stop_and_wait` returns only
/// after it has returned.
#[test]
fn stop_and_wait_waits_for_a_running_callback() {
    let (ctx, handle) = Context::background().with_cancel();
    let (started_tx, started_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let inside = Arc::new(AtomicBool::new(false));
    let i = inside.clone();
    let af = ctx.after_func(move || {
        i.store(true, Ordering::SeqCst);
        started_tx.send(()).unwrap();
        release_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        i.store(false, Ordering::SeqCst);
    });
    let canceller = std::thread::spawn(move || handle.cancel());
    started_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(af.try_stop(), StopOutcome::Running);
    let releaser = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(30));
        release_tx.send(()).unwrap();
    });
    assert_eq!(af.stop_and_wait(), StopOutcome::Ran);
    assert!(
        !inside.load(Ordering::SeqCst),
        "stop_and_wait returned while the callback ran"
    );
    canceller.join().unwrap();
    releaser.join().unwrap();
}

/// The async form, on tokio, with the callback running on another thread.
#[test]
fn stop_wait_is_async() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (ctx, handle) = Context::background().with_cancel();
        let (started_tx, started_rx) = mpsc::channel();
        let inside = Arc::new(AtomicBool::new(false));
        let i = inside.clone();
        let af = ctx.after_func(move || {
            i.store(true, Ordering::SeqCst);
            started_tx.send(()).unwrap();
            std::thread::sleep(Duration::from_millis(30));
            i.store(false, Ordering::SeqCst);
        });
        let canceller = std::thread::spawn(move || handle.cancel());
        started_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(af.stop_wait().await, StopOutcome::Ran);
        assert!(!inside.load(Ordering::SeqCst));
        canceller.join().unwrap();
    });
}

/// Inside its own callback, `stop_and_wait` cannot wait for itself.
#[test]
fn stop_and_wait_from_inside_the_callback_does_not_wait_for_itself() {
    let (ctx, handle) = Context::background().with_cancel();
    let slot: Arc<std::sync::Mutex<Option<ctxcore::AfterFunc>>> = Arc::default();
    let s = slot.clone();
    let seen = Arc::new(std::sync::Mutex::new(None));
    let seen2 = seen.clone();
    let af = ctx.after_func(move || {
        if let Some(af) = s.lock().unwrap().as_ref() {
            *seen2.lock().unwrap() = Some(af.stop_and_wait());
        }
    });
    *slot.lock().unwrap() = Some(af);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        handle.cancel();
        tx.send(()).unwrap();
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("the callback waited for itself");
    assert_eq!(*seen.lock().unwrap(), Some(StopOutcome::Running));
}

/// The pooled-connection shape: each "query" arms an interrupt scoped to it
/// with a guard; once the guard is dropped, a late cancel of the finished
/// request never reaches the next query.
#[test]
fn a_guard_scopes_the_interrupt_to_its_query() {
    let interrupts = Arc::new(AtomicUsize::new(0));
    for round in 0..200 {
        let (ctx, handle) = Context::background().with_cancel();
        let query_running = Arc::new(AtomicBool::new(true));
        {
            let (i, q) = (interrupts.clone(), query_running.clone());
            let _interrupt = ctx
                .after_func(move || {
                    if q.load(Ordering::SeqCst) {
                        i.fetch_add(1, Ordering::SeqCst);
                    }
                })
                .guard();
            if round % 2 == 0 {
                // Cancelled while the query runs: the interrupt fires.
                let t = std::thread::spawn(move || handle.cancel());
                t.join().unwrap();
                continue;
            }
            // The query finishes; the guard drops here.
            let _ = &handle;
        }
        query_running.store(false, Ordering::SeqCst);
        // The late cancel (the next borrower's query is running now).
        handle.cancel();
    }
    assert_eq!(interrupts.load(Ordering::SeqCst), 100);
}

/// Racing: stop_and_wait vs the cancel, many times; whatever the order, once
/// stop_and_wait returns the callback is not running, and it ran exactly when
/// the outcome says so.
#[test]
fn stop_and_wait_races_the_cancel() {
    for _ in 0..500 {
        let (ctx, handle) = Context::background().with_cancel();
        let inside = Arc::new(AtomicBool::new(false));
        let ran = Arc::new(AtomicBool::new(false));
        let (i, r) = (inside.clone(), ran.clone());
        let af = ctx.after_func(move || {
            i.store(true, Ordering::SeqCst);
            std::hint::spin_loop();
            r.store(true, Ordering::SeqCst);
            i.store(false, Ordering::SeqCst);
        });
        let t = std::thread::spawn(move || handle.cancel());
        let outcome = af.stop_and_wait();
        assert!(!inside.load(Ordering::SeqCst));
        t.join().unwrap();
        match outcome {
            StopOutcome::Stopped => assert!(!ran.load(Ordering::SeqCst)),
            StopOutcome::Ran => assert!(ran.load(Ordering::SeqCst)),
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// An after-func that cancels another context runs that context's
/// after-funcs nested inside its own; one of those waiting for the outer one
/// would wait for its own caller. It returns `Running` at once instead.
#[test]
fn a_nested_callback_does_not_wait_for_the_one_it_runs_inside() {
    let (outer_ctx, outer_h) = Context::background().with_cancel();
    let (inner_ctx, inner_h) = Context::background().with_cancel();
    let outer_slot: Arc<std::sync::Mutex<Option<ctxcore::AfterFunc>>> = Arc::default();
    let seen = Arc::new(std::sync::Mutex::new(None));
    let (os, sn) = (outer_slot.clone(), seen.clone());
    let _inner = inner_ctx.after_func(move || {
        if let Some(a) = os.lock().unwrap().as_ref() {
            *sn.lock().unwrap() = Some(a.stop_and_wait());
        }
    });
    let inner_h = std::sync::Mutex::new(Some(inner_h));
    let outer = outer_ctx.after_func(move || {
        inner_h.lock().unwrap().take().unwrap().cancel();
    });
    *outer_slot.lock().unwrap() = Some(outer);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        outer_h.cancel();
        tx.send(()).unwrap();
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("a nested callback waited for its caller");
    assert_eq!(*seen.lock().unwrap(), Some(StopOutcome::Running));
}
