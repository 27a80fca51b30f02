//! What running a SQLite statement under a context costs.
//!
//! - `rusqlite_overhead`: one short statement (`SELECT ?1` from the
//!   statement cache), bare and through [`ConnectionExt::with_context`] under
//!   a cancellable context, a context with a deadline, and `background()`
//!   (never done). The difference to `bare` is the per-call overhead
//!   (target: under 2 µs).
//! - `rusqlite_progress`: a CPU-bound statement (a recursive CTE counting to
//!   100,000) with no progress handler and with one polling a deadline
//!   context's `is_done` every 100, 1,000 and 10,000 VM instructions: the
//!   cost of the fallback that catches a lost interrupt, which picks
//!   `PROGRESS_OPS`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use ctxcore::Context;
use ctxcore_sql::rusqlite::ConnectionExt;
use rusqlite::Connection;

fn select(conn: &Connection, v: i64) -> rusqlite::Result<i64> {
    conn.prepare_cached("SELECT ?1")?.query_row([v], |r| r.get(0))
}

fn overhead(c: &mut Criterion) {
    let mut g = c.benchmark_group("rusqlite_overhead");
    let mut conn = Connection::open_in_memory().unwrap();
    g.bench_function("bare", |b| b.iter(|| select(&conn, black_box(7)).unwrap()));
    let (cancel_ctx, _h1) = Context::background().with_cancel();
    g.bench_function("with_cancel", |b| {
        b.iter(|| conn.with_context(&cancel_ctx, |c| select(c, black_box(7))).unwrap())
    });
    let (deadline_ctx, _h2) = Context::background().with_timeout(Duration::from_secs(3600));
    g.bench_function("with_deadline", |b| {
        b.iter(|| conn.with_context(&deadline_ctx, |c| select(c, black_box(7))).unwrap())
    });
    let background = Context::background();
    g.bench_function("background", |b| {
        b.iter(|| conn.with_context(&background, |c| select(c, black_box(7))).unwrap())
    });
    g.finish();
}

const COUNT: &str =
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 100000) SELECT count(*) FROM c";

fn progress(c: &mut Criterion) {
    let mut g = c.benchmark_group("rusqlite_progress");
    g.sample_size(30);
    let mut conn = Connection::open_in_memory().unwrap();
    let run = |conn: &Connection| -> i64 { conn.prepare_cached(COUNT).unwrap().query_row([], |r| r.get(0)).unwrap() };
    g.bench_function("none", |b| b.iter(|| run(&conn)));
    let (ctx, _h) = Context::background().with_timeout(Duration::from_secs(3600));
    for ops in [100, 1000, 10_000] {
        let polled = ctx.clone();
        conn.progress_handler(ops, Some(move || polled.is_done())).unwrap();
        g.bench_function(format!("every_{ops}"), |b| b.iter(|| run(&conn)));
    }
    conn.progress_handler(0, None::<fn() -> bool>).unwrap();
    g.finish();
}

criterion_group!(benches, overhead, progress);
criterion_main!(benches);
