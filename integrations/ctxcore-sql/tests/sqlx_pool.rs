//! 1,000 short queries on a pool of 4 connections, each under a context
//! cancelled at a random moment (before, during, after the call, or never):
//! no late `pg_cancel_backend` ever hits another request's query.
#![cfg(feature = "sqlx")]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ctxcore::Context;
use ctxcore_sql::sqlx::{cancels_sent, Pool};
use ctxcore_sql::Error;
use sqlx::postgres::PgPoolOptions;
use sqlx::Row;
use support::pg::PgCluster;

const LIMIT: Duration = Duration::from_secs(20);
const QUERIES: usize = 1_000;
const POOL: u32 = 4;

/// The cause each request cancels with: its own number.
#[derive(Debug, PartialEq)]
struct Request(usize);
impl std::fmt::Display for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "request {} cancelled", self.0)
    }
}
impl std::error::Error for Request {}

/// xorshift64*: enough randomness for when to cancel, and reproducible.
fn next(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

#[derive(Clone, Copy, Debug)]
enum When {
    Before,
    DuringTask,
    DuringThread,
    After,
    Never,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_random_cancels_on_a_pool_of_four() {
    let pg = PgCluster::shared();
    let db = tokio::task::spawn_blocking(move || pg.create_database("sqlx_pool"))
        .await
        .unwrap();
    let raw = PgPoolOptions::new()
        .max_connections(POOL)
        .acquire_timeout(LIMIT)
        .connect(&pg.url(&db))
        .await
        .unwrap();
    let pool = Pool::new(raw);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("sqlx pool: seed {seed:#x}");
    let finished = Arc::new(AtomicUsize::new(0));
    let cancelled = Arc::new(AtomicUsize::new(0));
    let sent_before = cancels_sent();
    let started = Instant::now();
    let gate = Arc::new(tokio::sync::Semaphore::new(16));
    let mut tasks = Vec::with_capacity(QUERIES);
    let mut rng = seed;
    for i in 0..QUERIES {
        let r = next(&mut rng);
        let when = match r % 5 {
            0 => When::Before,
            1 => When::DuringTask,
            2 => When::DuringThread,
            3 => When::After,
            _ => When::Never,
        };
        // Up to 3 ms of server time, up to 4 ms before a cancel "during".
        let sleep_us = if (r >> 8) % 2 == 0 { 0 } else { (r >> 16) % 3_000 };
        let cancel_after = Duration::from_micros((r >> 32) % 4_000);
        let pool = pool.clone();
        let gate = gate.clone();
        let finished = finished.clone();
        let cancelled = cancelled.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire().await.unwrap();
            let bg = Context::background();
            let mut conn = pool.acquire(&bg).await.unwrap();
            // Half of them with a deadline: statement_timeout set and put back.
            let (parent, _parent_handle) = if i % 2 == 0 {
                bg.with_cancel()
            } else {
                bg.with_timeout(Duration::from_secs(10))
            };
            let (ctx, h) = parent.with_cancel();
            let mut canceller = None;
            let mut thread = None;
            match when {
                When::Before => h.cancel_with(Request(i)),
                When::DuringTask => {
                    canceller = Some(tokio::spawn(async move {
                        tokio::time::sleep(cancel_after).await;
                        h.cancel_with(Request(i));
                    }))
                }
                When::DuringThread => {
                    thread = Some(std::thread::spawn(move || {
                        std::thread::sleep(cancel_after);
                        h.cancel_with(Request(i));
                    }))
                }
                When::After | When::Never => {
                    // Cancelled (or never) after the call.
                    let res = conn
                        .fetch_one(
                            &ctx,
                            sqlx::query("SELECT $1::int4 AS n, pg_sleep($2::float8)")
                                .bind(i as i32)
                                .bind(sleep_us as f64 / 1e6),
                        )
                        .await;
                    if let When::After = when {
                        h.cancel_with(Request(i));
                    }
                    let row = res.unwrap_or_else(|e| panic!("request {i} ({when:?}) failed: {e:?}"));
                    assert_eq!(row.get::<i32, _>("n"), i as i32);
                    finished.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
            let res = conn
                .fetch_one(
                    &ctx,
                    sqlx::query("SELECT $1::int4 AS n, pg_sleep($2::float8)")
                        .bind(i as i32)
                        .bind(sleep_us as f64 / 1e6),
                )
                .await;
            match res {
                Ok(row) => {
                    assert!(!matches!(when, When::Before), "request {i}: done before, yet ran");
                    assert_eq!(row.get::<i32, _>("n"), i as i32, "request {i} got its own row");
                    finished.fetch_add(1, Ordering::Relaxed);
                }
                Err(Error::Context(e)) => {
                    assert!(e.is_canceled());
                    assert_eq!(
                        e.cause().downcast_ref::<Request>(),
                        Some(&Request(i)),
                        "request {i} stopped by its own cancel"
                    );
                    cancelled.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => panic!("request {i} ({when:?}): {e:?} — a cancel from elsewhere?"),
            }
            if let Some(c) = canceller {
                c.await.unwrap();
            }
            if let Some(t) = thread {
                t.join().unwrap();
            }
        }));
    }
    for t in tasks {
        tokio::time::timeout(LIMIT, t).await.expect("bounded").unwrap();
    }
    let took = started.elapsed();
    let (finished, cancelled) = (finished.load(Ordering::Relaxed), cancelled.load(Ordering::Relaxed));
    eprintln!(
        "sqlx pool: {QUERIES} queries in {took:?}: {finished} finished with their rows, {cancelled} cancelled \
         with their own cause, {} pg_cancel_backend sent",
        cancels_sent() - sent_before
    );
    assert_eq!(finished + cancelled, QUERIES);
    assert!(cancelled > 0 && finished > 0);

    // The pool ends with its 4 connections, all healthy and clean.
    let raw = pool.get_ref().clone();
    let start = Instant::now();
    while raw.num_idle() < POOL as usize {
        assert!(
            start.elapsed() < LIMIT,
            "pool: {} idle of {}",
            raw.num_idle(),
            raw.size()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(raw.size(), POOL);
    let bg = Context::background();
    let mut conns = Vec::new();
    for _ in 0..POOL {
        conns.push(pool.acquire(&bg).await.unwrap());
    }
    let mut pids = Vec::new();
    for conn in &mut conns {
        let row = conn
            .fetch_one(
                &bg,
                sqlx::query("SELECT pg_backend_pid(), current_setting('statement_timeout')"),
            )
            .await
            .unwrap();
        pids.push(row.get::<i32, _>(0));
        assert_eq!(row.get::<String, _>(1), "0");
    }
    pids.sort_unstable();
    pids.dedup();
    assert_eq!(pids.len(), POOL as usize, "four distinct healthy connections");
}
