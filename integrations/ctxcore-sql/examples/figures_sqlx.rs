//! Figures for ctxcore_sql::sqlx on a throwaway PostgreSQL: cancel-to-return
//! latency (p50/p99 over 200 cancels of `pg_sleep(30)`), deadline overshoot,
//! and the rough per-query overhead against the bare sqlx call (the
//! criterion bench `benches/sqlx.rs` measures it properly).
//!
//! `cargo run -p ctxcore-sql --example figures_sqlx --features sqlx --release`

#[path = "../tests/support/pg.rs"]
mod pg;

use std::time::{Duration, Instant};

use ctxcore::Context;
use ctxcore_sql::sqlx::{cancels_sent, Conn, Pool};
use sqlx::postgres::PgPoolOptions;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn summary(name: &str, mut v: Vec<Duration>) {
    v.sort_unstable();
    println!(
        "{name}: n={} p50={:?} p99={:?} max={:?}",
        v.len(),
        percentile(&v, 0.50),
        percentile(&v, 0.99),
        v[v.len() - 1]
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cluster = pg::PgCluster::start();
    let db = cluster.create_database("figures_sqlx");
    let raw = PgPoolOptions::new()
        .max_connections(2)
        .connect(&cluster.url(&db))
        .await?;
    let pool = Pool::new(raw);
    pool.warm_up().await?;
    let bg = Context::background();
    let mut conn = pool.acquire(&bg).await?;
    conn.execute(&bg, sqlx::query("SELECT 1")).await?;

    // 1. Cancel-to-return: pg_sleep(30), cancelled 5 ms in (from another task).
    let sent = cancels_sent();
    let mut latencies = Vec::with_capacity(200);
    for _ in 0..200 {
        let (ctx, h) = bg.with_cancel();
        let canceller = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let at = Instant::now();
            h.cancel_with("figures");
            at
        });
        let res = tokio::time::timeout(
            Duration::from_secs(10),
            conn.fetch_one(&ctx, sqlx::query("SELECT pg_sleep(30)")),
        )
        .await?;
        let returned = Instant::now();
        let at = canceller.await?;
        assert!(res.as_ref().is_err_and(|e| e.is_context()), "{res:?}");
        latencies.push(returned.saturating_duration_since(at));
    }
    summary("cancel-to-return (pg_sleep(30) cancelled 5 ms in)", latencies);
    println!(
        "  pg_cancel_backend statements sent: {} for 200 cancels",
        cancels_sent() - sent
    );

    // 2. Deadline overshoot: 20 ms deadlines (statement_timeout + cancel).
    let mut overshoot = Vec::with_capacity(50);
    for _ in 0..50 {
        let (ctx, _h) = bg.with_timeout(Duration::from_millis(20));
        let deadline = Instant::now() + Duration::from_millis(20);
        let res = conn.fetch_one(&ctx, sqlx::query("SELECT pg_sleep(30)")).await;
        overshoot.push(Instant::now().saturating_duration_since(deadline));
        assert!(res.is_err_and(|e| e.context_error().is_some_and(|c| c.is_deadline_exceeded())));
    }
    summary("deadline overshoot (20 ms deadline on pg_sleep(30))", overshoot);

    // 3. Per-query overhead, SELECT 1 round trips (noisy: see the bench).
    let (live, _h) = bg.with_cancel();
    let (timed, _h2) = bg.with_timeout(Duration::from_secs(3600));
    let mut bare = Duration::ZERO;
    let mut guarded = Duration::ZERO;
    let mut deadline = Duration::ZERO;
    const N: u32 = 3_000;
    for _ in 0..N {
        let t = Instant::now();
        bare_select(&mut conn).await?;
        bare += t.elapsed();
        let t = Instant::now();
        conn.fetch_one(&live, sqlx::query("SELECT 1")).await?;
        guarded += t.elapsed();
        let t = Instant::now();
        conn.fetch_one(&timed, sqlx::query("SELECT 1")).await?;
        deadline += t.elapsed();
    }
    println!(
        "SELECT 1: bare sqlx {:?}/query, under a cancellable context {:?}/query (+{:?}), under a deadline {:?}/query (statement_timeout set and put back: 2 more round trips)",
        bare / N,
        guarded / N,
        (guarded / N).saturating_sub(bare / N),
        deadline / N
    );

    // 4. The client-side part alone: a call whose closure sends nothing.
    const M: u32 = 200_000;
    let t = Instant::now();
    for _ in 0..M {
        let f: ctxcore_sql::sqlx::QueryFuture<'_, ()> = Box::pin(async { Ok(()) });
        f.await?;
    }
    let bare_noop = t.elapsed() / M;
    let t = Instant::now();
    for _ in 0..M {
        conn.run(&live, |_| Box::pin(async { Ok(()) })).await?;
    }
    let guarded_noop = t.elapsed() / M;
    println!(
        "client-side overhead per call (no round trip): {:?} (bare boxed future {bare_noop:?}, guarded {guarded_noop:?})",
        guarded_noop.saturating_sub(bare_noop)
    );
    drop(conn);
    Ok(())
}

async fn bare_select(conn: &mut Conn) -> Result<(), sqlx::Error> {
    let c = conn.get_mut().ok_or(sqlx::Error::PoolClosed)?;
    sqlx::query("SELECT 1").fetch_one(&mut *c).await?;
    Ok(())
}
