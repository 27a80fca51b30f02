//! What running a tokio-postgres query under a context costs when nothing is
//! cancelled, against the bare driver call:
//!
//! - `postgres_select_1`: a prepared `SELECT 1` on a throwaway local cluster
//!   (one loopback round trip in every figure; on a loaded machine its noise
//!   is larger than the wrapper's cost);
//! - `postgres_overhead`: the wrapper alone, around an operation that is ready
//!   at once: the per-call overhead (target: under 2 µs).
//!
//! `cargo bench -p ctxcore-sql --features tokio-postgres --bench postgres`

#[path = "../tests/support/pg.rs"]
mod pg;

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use ctxcore::Context;
use ctxcore_sql::postgres::{Canceller, ClientExt};
use tokio_postgres::{Config, NoTls};

fn bench(c: &mut Criterion) {
    let cluster = pg::PgCluster::start();
    let db = cluster.create_database("bench");
    let config: Config = cluster.config(&db).parse().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (client, conn) = rt.block_on(config.connect(NoTls)).unwrap();
    rt.spawn(conn);
    let cancel = Canceller::new(&config);
    let stmt = rt.block_on(client.prepare("SELECT 1::int4")).unwrap();
    let (ctx, _h) = Context::background().with_cancel();
    let (far, _h2) = Context::background().with_timeout(Duration::from_secs(3600));

    let mut g = c.benchmark_group("postgres_select_1");
    g.bench_function("bare", |b| {
        b.iter(|| rt.block_on(async { black_box(client.query(&stmt, &[]).await.unwrap()) }))
    });
    g.bench_function("with_ctx_cancel_only", |b| {
        b.iter(|| rt.block_on(async { black_box(client.with_ctx(&ctx, &cancel).query(&stmt, &[]).await.unwrap()) }))
    });
    g.bench_function("with_ctx_background", |b| {
        let bg = Context::background();
        b.iter(|| rt.block_on(async { black_box(client.with_ctx(&bg, &cancel).query(&stmt, &[]).await.unwrap()) }))
    });
    g.bench_function("with_ctx_deadline_statement_timeout", |b| {
        b.iter(|| rt.block_on(async { black_box(client.with_ctx(&far, &cancel).query(&stmt, &[]).await.unwrap()) }))
    });
    g.bench_function("with_ctx_deadline_no_statement_timeout", |b| {
        b.iter(|| {
            rt.block_on(async {
                black_box(
                    client
                        .with_ctx(&far, &cancel)
                        .statement_timeout(false)
                        .query(&stmt, &[])
                        .await
                        .unwrap(),
                )
            })
        })
    });
    g.finish();

    // The wrapper alone: an operation that is ready at once (no network), so
    // the difference to `bare` is everything `with_ctx` adds to a call that
    // nobody cancels (after-func registered and stopped, cancel token, the
    // poll loop with the context's done future).
    let mut g = c.benchmark_group("postgres_overhead");
    let ready = || async { Ok::<_, tokio_postgres::Error>(black_box(1u64)) };
    g.bench_function("bare", |b| {
        b.iter(|| rt.block_on(async { black_box(ready().await.unwrap()) }))
    });
    g.bench_function("with_ctx_cancel_only", |b| {
        b.iter(|| rt.block_on(async { black_box(client.with_ctx(&ctx, &cancel).run(|_| ready()).await.unwrap()) }))
    });
    g.bench_function("with_ctx_background", |b| {
        let bg = Context::background();
        b.iter(|| rt.block_on(async { black_box(client.with_ctx(&bg, &cancel).run(|_| ready()).await.unwrap()) }))
    });
    g.bench_function("with_ctx_deadline_no_statement_timeout", |b| {
        b.iter(|| {
            rt.block_on(async {
                black_box(
                    client
                        .with_ctx(&far, &cancel)
                        .statement_timeout(false)
                        .run(|_| ready())
                        .await
                        .unwrap(),
                )
            })
        })
    });
    g.finish();
    drop(client);
    drop(rt);
    drop(cluster);
}

criterion_group!(benches, bench);
criterion_main!(benches);
