//! What running a sqlx (PostgreSQL) query under a context costs, on a
//! throwaway cluster (tests/support/pg.rs).
//!
//! - `sqlx_client_side`: a [`Conn::run`] whose closure sends nothing (a ready
//!   boxed future) against the same boxed future awaited bare: the
//!   client-side overhead per call alone (the context check, the after-func
//!   registered and stopped, the cancel slot), without a round trip's noise.
//!   Target: under 2 µs.
//! - `sqlx_select1`: `SELECT 1` bare (`fetch_one` on the connection) and
//!   through [`Conn::fetch_one`] under a cancellable context and under
//!   `background()`; the deadline case adds two round trips
//!   (statement_timeout set and put back) and is measured too.

#[path = "../tests/support/pg.rs"]
mod pg;

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use ctxcore::Context;
use ctxcore_sql::sqlx::{Conn, Pool, QueryFuture};
use sqlx::postgres::PgPoolOptions;

fn setup(rt: &tokio::runtime::Runtime) -> Conn {
    let cluster = pg::PgCluster::shared();
    let db = cluster.create_database("bench_sqlx");
    rt.block_on(async {
        let raw = PgPoolOptions::new()
            .max_connections(1)
            .connect(&cluster.url(&db))
            .await
            .unwrap();
        let pool = Pool::new(raw);
        pool.warm_up().await.unwrap();
        let bg = Context::background();
        let mut conn = pool.acquire(&bg).await.unwrap();
        conn.execute(&bg, sqlx::query("SELECT 1")).await.unwrap();
        conn
    })
}

fn client_side(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut conn = setup(&rt);
    let mut g = c.benchmark_group("sqlx_client_side");
    g.bench_function("bare_boxed_future", |b| {
        b.iter(|| {
            rt.block_on(async {
                let f: QueryFuture<'_, ()> = Box::pin(async { Ok(()) });
                f.await.unwrap()
            })
        })
    });
    let (live, _h) = Context::background().with_cancel();
    g.bench_function("run_with_cancel", |b| {
        b.iter(|| rt.block_on(conn.run(&live, |_| Box::pin(async { Ok(()) }))).unwrap())
    });
    let background = Context::background();
    g.bench_function("run_background", |b| {
        b.iter(|| {
            rt.block_on(conn.run(&background, |_| Box::pin(async { Ok(()) })))
                .unwrap()
        })
    });
    g.finish();
}

fn select1(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut conn = setup(&rt);
    let mut g = c.benchmark_group("sqlx_select1");
    g.measurement_time(Duration::from_secs(4));
    g.bench_function("bare", |b| {
        b.iter(|| {
            rt.block_on(async {
                let raw = conn.get_mut().unwrap();
                sqlx::query("SELECT 1").fetch_one(&mut *raw).await.unwrap()
            })
        })
    });
    let (live, _h) = Context::background().with_cancel();
    g.bench_function("with_cancel", |b| {
        b.iter(|| rt.block_on(conn.fetch_one(&live, sqlx::query("SELECT 1"))).unwrap())
    });
    let background = Context::background();
    g.bench_function("background", |b| {
        b.iter(|| {
            rt.block_on(conn.fetch_one(&background, sqlx::query("SELECT 1")))
                .unwrap()
        })
    });
    let (timed, _h2) = Context::background().with_timeout(Duration::from_secs(3600));
    g.bench_function("with_deadline", |b| {
        b.iter(|| rt.block_on(conn.fetch_one(&timed, sqlx::query("SELECT 1"))).unwrap())
    });
    g.finish();
}

criterion_group!(benches, client_side, select1);
criterion_main!(benches);
