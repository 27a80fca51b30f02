//! Figures for `ctxcore_sql::postgres`, against a throwaway PostgreSQL cluster
//! (started by the test harness; needs PostgreSQL's binaries installed):
//!
//! - cancel-to-return latency: `SELECT pg_sleep(10)` cancelled 20 ms in, 200
//!   times: from `cancel_with` to the call returning the context's error (the
//!   server has answered `57014` and the cancel connection is closed);
//! - deadline-to-return latency with the server's `statement_timeout`;
//! - the cost of an uncancelled query against the bare driver call (a round
//!   trip dominates; `benches/postgres.rs` measures it with criterion).
//!
//! `cargo run --release -p ctxcore-sql --features tokio-postgres --example figures_postgres`

#[path = "../tests/support/pg.rs"]
mod pg;

use std::time::{Duration, Instant};

use ctxcore::Context;
use ctxcore_sql::postgres::{Canceller, ClientExt};
use tokio_postgres::{Config, NoTls};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn report(name: &str, mut v: Vec<Duration>) {
    v.sort();
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
    let db = cluster.create_database("figures");
    let config: Config = cluster.config(&db).parse()?;
    let (client, conn) = config.connect(NoTls).await?;
    tokio::spawn(conn);
    let cancel = Canceller::new(&config);

    // Cancel-to-return latency.
    let mut lat = Vec::with_capacity(200);
    for _ in 0..200 {
        let (ctx, handle) = Context::background().with_cancel();
        let at = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            handle.cancel_with("figures");
            Instant::now()
        });
        let err = client
            .with_ctx(&ctx, &cancel)
            .query("SELECT pg_sleep(10)", &[])
            .await
            .unwrap_err();
        let returned = Instant::now();
        assert!(err.is_context(), "{err}");
        lat.push(returned - at.await?);
    }
    report("cancel-to-return (cancel request, pg_sleep cancelled 20 ms in)", lat);

    // Deadline-to-return latency, server-side statement_timeout and cancel-only.
    for statement_timeout in [true, false] {
        let mut lat = Vec::with_capacity(50);
        for _ in 0..50 {
            let (ctx, _h) = Context::background().with_timeout(Duration::from_millis(20));
            let deadline = ctx.deadline().unwrap();
            let err = client
                .with_ctx(&ctx, &cancel)
                .statement_timeout(statement_timeout)
                .query("SELECT pg_sleep(10)", &[])
                .await
                .unwrap_err();
            assert!(err.context_error().is_some_and(|e| e.is_deadline_exceeded()), "{err}");
            lat.push(ctx.now().saturating_duration_since(deadline));
        }
        report(
            &format!("deadline-to-return (20 ms deadline, statement_timeout {statement_timeout})"),
            lat,
        );
    }

    // Uncancelled queries: wrapper against the bare call, interleaved.
    let stmt = client.prepare("SELECT 1::int4").await?;
    let (ctx, _h) = Context::background().with_cancel();
    let (ctx_deadline, _h2) = Context::background().with_timeout(Duration::from_secs(3600));
    for _ in 0..500 {
        client.query(&stmt, &[]).await?;
        client.with_ctx(&ctx, &cancel).query(&stmt, &[]).await?;
    }
    let rounds = 5000;
    let (mut bare, mut wrapped, mut with_deadline) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    for _ in 0..rounds {
        let t = Instant::now();
        client.query(&stmt, &[]).await?;
        bare += t.elapsed();
        let t = Instant::now();
        client.with_ctx(&ctx, &cancel).query(&stmt, &[]).await?;
        wrapped += t.elapsed();
        let t = Instant::now();
        client.with_ctx(&ctx_deadline, &cancel).query(&stmt, &[]).await?;
        with_deadline += t.elapsed();
    }
    let per = |d: Duration| d / rounds;
    println!(
        "uncancelled SELECT 1 (prepared), mean of {rounds}: bare {:?}, with_ctx (cancel only) {:?} (+{:?}), \
         with_ctx (deadline, statement_timeout pipelined) {:?} (+{:?})",
        per(bare),
        per(wrapped),
        per(wrapped).saturating_sub(per(bare)),
        per(with_deadline),
        per(with_deadline).saturating_sub(per(bare)),
    );
    drop(client);
    drop(cluster);
    Ok(())
}
