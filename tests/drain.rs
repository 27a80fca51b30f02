//! Draining (issue 11, item 6): a `Tracker` marks in-flight work with cheap
//! guards; a shutdown cancels the subtree with a cause and waits until every
//! guard has been dropped, or reports how many are left when it times out.
//! Server-shaped: 1,000 in-flight requests on a tokio multi-thread runtime and
//! on plain threads; none lost, none left running. Each test is bounded to a
//! few seconds.

use ctxcore::{Context, DrainTimeout, ManualClock, Tracker};
use futures::FutureExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const REQUESTS: usize = 1000;

#[derive(Default)]
struct Counts {
    started: AtomicUsize,
    running: AtomicUsize,
    finished: AtomicUsize,
}

impl Counts {
    fn start(&self) {
        self.running.fetch_add(1, Ordering::SeqCst);
        self.started.fetch_add(1, Ordering::SeqCst);
    }
    fn finish(&self) {
        self.running.fetch_sub(1, Ordering::SeqCst);
        self.finished.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn tokio_server_shutdown_drains_every_request() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (process, _process_handle) = Context::background().with_cancel();
        let server = Tracker::new(&process);
        let counts = Arc::new(Counts::default());
        for i in 0..REQUESTS {
            // The accept loop: every request is tracked before it is spawned.
            let request = server.track().expect("not shutting down");
            let counts = counts.clone();
            tokio::spawn(async move {
                counts.start();
                let (ctx, _timeout) = request.context().with_timeout(Duration::from_secs(60));
                let handled = ctx.run(tokio::time::sleep(Duration::from_secs(60))).await;
                assert!(handled.is_err(), "the shutdown stops the request");
                assert_eq!(ctx.cause().unwrap().to_string(), "shutting down");
                // Clean-up after the cancel: the drain waits for it too.
                tokio::time::sleep(Duration::from_millis((i % 10) as u64)).await;
                counts.finish();
                drop(request);
            });
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while counts.started.load(Ordering::SeqCst) < REQUESTS {
            assert!(Instant::now() < deadline, "requests did not start");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(server.in_flight(), REQUESTS);

        let begun = Instant::now();
        let drained = server.drain("shutting down", Duration::from_secs(5)).await;
        assert_eq!(drained, Ok(()));
        assert!(begun.elapsed() < Duration::from_secs(3), "{:?}", begun.elapsed());
        // None lost, none left running.
        assert_eq!(counts.finished.load(Ordering::SeqCst), REQUESTS);
        assert_eq!(counts.running.load(Ordering::SeqCst), 0);
        assert_eq!(server.in_flight(), 0);
        assert!(server.is_drained());
        assert!(server.track().is_none(), "new requests are refused");
        assert!(!process.is_done(), "only the server's subtree was cancelled");
    });
}

#[test]
fn threads_server_shutdown_drains_every_request() {
    let server = Tracker::new(&Context::background());
    let counts = Arc::new(Counts::default());
    let mut threads = Vec::with_capacity(REQUESTS);
    for i in 0..REQUESTS {
        let request = server.track().expect("not shutting down");
        let counts = counts.clone();
        threads.push(
            std::thread::Builder::new()
                .stack_size(128 * 1024)
                .spawn(move || {
                    counts.start();
                    let err = request.context().wait_blocking();
                    assert!(err.is_canceled());
                    if i % 100 == 0 {
                        std::thread::sleep(Duration::from_millis(2)); // clean-up
                    }
                    counts.finish();
                    drop(request);
                })
                .unwrap(),
        );
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while counts.started.load(Ordering::SeqCst) < REQUESTS {
        assert!(Instant::now() < deadline, "threads did not start");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(server.in_flight(), REQUESTS);
    let drained = server.drain_blocking("shutting down", Duration::from_secs(5));
    assert_eq!(drained, Ok(()));
    assert_eq!(counts.finished.load(Ordering::SeqCst), REQUESTS);
    assert_eq!(counts.running.load(Ordering::SeqCst), 0);
    for t in threads {
        t.join().unwrap();
    }
}

/// Some requests ignore the cancel: the drain times out and says how many
/// are left; a later wait picks up where it left off.
#[test]
fn timeout_reports_what_is_left_blocking() {
    let server = Tracker::new(&Context::background());
    let (released, release) = Context::background().with_cancel();
    let mut threads = Vec::new();
    for i in 0..10 {
        let request = server.track().unwrap();
        let released = released.clone();
        threads.push(std::thread::spawn(move || {
            if i % 3 == 0 {
                released.wait_blocking(); // stuck: ignores the request's context
            } else {
                request.context().wait_blocking();
            }
            drop(request);
        }));
    }
    let begun = Instant::now();
    let drained = server.drain_blocking("shutting down", Duration::from_millis(100));
    assert_eq!(drained, Err(DrainTimeout { in_flight: 4 }));
    assert!(begun.elapsed() >= Duration::from_millis(100));
    assert!(begun.elapsed() < Duration::from_secs(3));
    release.cancel();
    assert_eq!(server.wait_blocking_timeout(Duration::from_secs(5)), Ok(()));
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn timeout_reports_what_is_left_async() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let server = Tracker::new(&Context::background());
        for i in 0..20 {
            let request = server.track().unwrap();
            tokio::spawn(async move {
                if i < 5 {
                    // Ignores the cancel for a while.
                    tokio::time::sleep(Duration::from_millis(1000)).await;
                } else {
                    let _ = request.context().done().await;
                }
                drop(request);
            });
        }
        tokio::task::yield_now().await;
        let drained = server.drain("shutting down", Duration::from_millis(300)).await;
        assert_eq!(drained, Err(DrainTimeout { in_flight: 5 }));
        assert_eq!(server.wait_timeout(Duration::from_secs(5)).await, Ok(()));
    });
}

/// The async timeout runs on the tree's own timer.
#[test]
fn timeout_follows_the_trees_clock() {
    static CLOCK: ManualClock = ManualClock::new();
    let server = Tracker::new(&Context::with_timer(&CLOCK));
    let request = server.track().unwrap();
    let mut drain = Box::pin(server.drain("shutting down", Duration::from_secs(10)));
    assert!(drain.as_mut().now_or_never().is_none());
    assert!(request.context().is_done());
    CLOCK.advance(Duration::from_secs(9));
    assert!(drain.as_mut().now_or_never().is_none());
    CLOCK.advance(Duration::from_secs(1));
    assert_eq!(drain.as_mut().now_or_never(), Some(Err(DrainTimeout { in_flight: 1 })));
    drop(request);
    assert!(server.is_drained());
}

/// Graceful first: close, let the work finish on its own, cancel only what
/// is left after the grace period.
#[test]
fn graceful_then_forced() {
    let server = Tracker::new(&Context::background());
    let quick = server.track().unwrap();
    let slow = server.track().unwrap();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(10));
        drop(quick); // finishes on its own
        slow.context().wait_blocking(); // only stops on the cancel
        assert_eq!(slow.context().cause().unwrap().to_string(), "grace period over");
    });
    server.close();
    assert_eq!(
        server.wait_blocking_timeout(Duration::from_millis(100)),
        Err(DrainTimeout { in_flight: 1 })
    );
    assert_eq!(
        server.drain_blocking("grace period over", Duration::from_secs(5)),
        Ok(())
    );
    t.join().unwrap();
}

/// Requests arriving while the shutdown runs are either counted (and waited
/// for) or refused; never started and forgotten.
#[test]
fn track_racing_the_drain_is_counted_or_refused() {
    for _ in 0..50 {
        let server = Arc::new(Tracker::new(&Context::background()));
        let started = Arc::new(AtomicUsize::new(0));
        let finished = Arc::new(AtomicUsize::new(0));
        let acceptors: Vec<_> = (0..3)
            .map(|_| {
                let (server, started, finished) = (server.clone(), started.clone(), finished.clone());
                std::thread::spawn(move || {
                    while let Some(request) = server.track() {
                        started.fetch_add(1, Ordering::SeqCst);
                        let subtask = request.clone(); // work that spawns work
                        drop(request);
                        std::hint::spin_loop();
                        finished.fetch_add(1, Ordering::SeqCst);
                        drop(subtask);
                    }
                })
            })
            .collect();
        std::thread::yield_now();
        assert_eq!(server.drain_blocking("shutdown", Duration::from_secs(5)), Ok(()));
        assert_eq!(started.load(Ordering::SeqCst), finished.load(Ordering::SeqCst));
        for a in acceptors {
            a.join().unwrap();
        }
    }
}

#[test]
fn smol_cancel_and_wait() {
    let ex = async_executor::Executor::new();
    futures_lite::future::block_on(ex.run(async {
        let server = Tracker::new(&Context::background());
        let finished = Arc::new(AtomicUsize::new(0));
        for _ in 0..100 {
            let request = server.track().unwrap();
            let finished = finished.clone();
            ex.spawn(async move {
                let _ = request.context().done().await;
                futures_lite::future::yield_now().await;
                finished.fetch_add(1, Ordering::SeqCst);
                drop(request);
            })
            .detach();
        }
        server.cancel_and_wait("shutdown").await;
        assert_eq!(finished.load(Ordering::SeqCst), 100);
    }));
}

#[test]
fn an_idle_tracker_drains_at_once() {
    let server = Tracker::new(&Context::background());
    assert_eq!(server.drain_blocking("shutdown", Duration::ZERO), Ok(()));
    futures::executor::block_on(server.wait());
    assert_eq!(
        futures::executor::block_on(server.drain("again", Duration::MAX)),
        Ok(())
    );
}

#[test]
fn dropping_the_tracker_cancels_the_work() {
    let server = Tracker::new(&Context::background());
    let request = server.track().unwrap();
    drop(server);
    assert!(request.context().is_done());
}

#[test]
fn guards_are_send_sync_static() {
    fn check<T: Send + Sync + 'static>() {}
    check::<ctxcore::InFlight>();
    check::<Tracker>();
    let server = Tracker::new(&Context::background());
    fn send<T: Send>(_: &T) {}
    send(&server.drain("x", Duration::ZERO));
    send(&server.cancel_and_wait("x"));
    send(&server.wait());
}
