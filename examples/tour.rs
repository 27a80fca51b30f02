//! A guided tour: one request's context tree, with deadlines, causes, values
//! and after-funcs, printing what is cancelled, when and why as it happens.
//!
//! Run with `cargo run --example tour`.

use ctxcore::{Context, Error, Key, ScopedContext, StaticContext};
use std::pin::pin;
use std::thread;
use std::time::{Duration, Instant};

static REQUEST_ID: Key<u64> = Key::new("request_id");
static USER: Key<&'static str> = Key::new("user");
/// A heap-free root, as firmware would keep it (cancellable from anywhere).
static POWER: StaticContext = StaticContext::new();

#[derive(Debug)]
struct ClientGone {
    peer: &'static str,
}

impl std::fmt::Display for ClientGone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "client {} closed the connection", self.peer)
    }
}

impl std::error::Error for ClientGone {}

fn main() {
    let start = Instant::now();
    let t = move || format!("{:>6.1} ms", start.elapsed().as_secs_f64() * 1e3);

    // The server's root: cancelled at shutdown.
    let (server, shutdown) = Context::background().with_cancel();

    // One request: its own cancel handle, request-scoped values.
    let (request, client_gone) = server.with_cancel();
    let request = request.with_value(&REQUEST_ID, 4711).with_value(&USER, "ada");
    println!(
        "{}  request {} for {:?} starts",
        t(),
        request.value(&REQUEST_ID).unwrap(),
        request.value(&USER).unwrap()
    );

    // Each outbound call gets its own, tighter timeout under the request.
    let (db_query, _db_handle) = request.with_timeout_cause(Duration::from_millis(40), "database too slow");
    let (cache_call, _cache_handle) = request.with_timeout(Duration::from_millis(400));
    let (audit_log, _audit_handle) = request.with_timeout(Duration::from_secs(3600));
    // A background job that must outlive the request, but keeps its values.
    let metrics = request.without_cancel();

    // After-funcs report, from the cancelling thread, when each context ends.
    let announce = |name: &'static str, ctx: &Context| {
        let watched = ctx.clone();
        ctx.after_func(move || {
            let ms = start.elapsed().as_secs_f64() * 1e3;
            println!(
                "{ms:>6.1} ms  after-func: {name} is done: {} ({})",
                watched.err().unwrap(),
                watched.cause().unwrap()
            );
        })
    };
    announce("db_query", &db_query);
    announce("cache_call", &cache_call);
    announce("audit_log", &audit_log);
    let stopped = announce("request", &request);

    // A worker thread racing its work against the deadline.
    let worker = {
        let db_query = db_query.clone();
        thread::spawn(move || {
            println!(
                "{}  db worker waits (deadline {:?} away)",
                t(),
                // Time left on the tree's own clock (right on any timer).
                db_query.time_left().unwrap()
            );
            let err = db_query.wait_blocking();
            println!("{}  db worker stops: {err} ({})", t(), db_query.cause().unwrap());
            // Where it came from: a deadline reports its with_timeout call.
            println!("{}  db worker: cancelled at {}", t(), db_query.cancelled_at().unwrap());
        })
    };
    worker.join().unwrap();
    assert_eq!(db_query.err(), Some(Error::DeadlineExceeded));
    println!("{}  the request itself is still live: {:?}", t(), request.err());

    // An async task on any executor: run() drops the work when the context is done.
    let slow_fetch = cache_call.run(async {
        futures::future::pending::<()>().await;
        "never"
    });
    let task = thread::spawn(move || futures::executor::block_on(slow_fetch));

    thread::sleep(Duration::from_millis(20));
    println!("{}  stopping the request's own after-func: {}", t(), stopped.stop());
    println!("{}  the client goes away: cancelling the request with a cause", t());
    client_gone.cancel_with(ClientGone { peer: "10.0.0.7:5123" });

    let outcome = task.join().unwrap();
    println!("{}  cache task finished with {:?}", t(), outcome);
    let cause = cache_call.cause().unwrap();
    println!(
        "{}  cache_call cause downcasts to ClientGone: {}",
        t(),
        cause.downcast_ref::<ClientGone>().is_some()
    );
    // Go cannot say where a cancellation came from (golang/go#26356): here
    // every context under the request reports the cancel_with call above.
    println!(
        "{}  cache_call cancelled at {} (Debug: {:?})",
        t(),
        cache_call.cancelled_at().unwrap(),
        cache_call
    );
    println!(
        "{}  audit_log: err={:?}; metrics (without_cancel): err={:?}, user={:?}",
        t(),
        audit_log.err(),
        metrics.err(),
        metrics.value(&USER)
    );

    // Any-of: a job bound to both the server and its own deadline.
    let (job_deadline, _job_handle) = metrics.with_timeout(Duration::from_secs(10));
    let job = Context::any([&job_deadline, &server]);
    println!(
        "{}  job deadline is the earliest parent's: {:?}",
        t(),
        job.deadline().is_some()
    );
    println!("{}  shutdown", t());
    shutdown.cancel_with("SIGTERM");
    println!(
        "{}  job: err={:?}, cause={}",
        t(),
        job.err().unwrap(),
        job.cause().unwrap()
    );
    println!(
        "{}  server: err={:?}; request's cause stays the one that won: {}",
        t(),
        server.err().unwrap(),
        request.cause().unwrap()
    );

    // The heap-free tier: children pinned in their owner, no allocation.
    let sensor = pin!(ScopedContext::with_timeout(POWER.as_ref(), Duration::from_secs(1)));
    let sensor_ctx = sensor.as_ref().context();
    let step = pin!(ScopedContext::new(sensor_ctx));
    let step_ctx = step.as_ref().context();
    println!(
        "{}  heap-free: sensor and step pinned on the stack, deadline {:?}",
        t(),
        sensor_ctx.deadline().is_some()
    );
    POWER.cancel_with("brown-out");
    println!(
        "{}  heap-free: power root cancelled -> step: {:?} ({})",
        t(),
        step_ctx.err().unwrap(),
        step_ctx.cause().unwrap()
    );
    println!(
        "{}  heap-free: step cancelled at {}",
        t(),
        step_ctx.cancelled_at().unwrap()
    );
}
