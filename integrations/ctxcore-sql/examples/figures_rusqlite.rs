//! Figures for SQLite statements under a context (printed, not asserted):
//!
//! - cancel-to-return latency, p50/p99/max over 200 cancels of a runaway
//!   statement, the cancel coming from another thread 1–10 ms in (the
//!   interrupt path);
//! - the same for 200 cancels that land before the statement's first step,
//!   where SQLite drops the interrupt and the progress handler stops it (the
//!   fallback path);
//! - a rough per-call overhead of `with_context` against the bare call
//!   (`benches/rusqlite.rs` measures it properly).
//!
//! Run with `cargo run --release -p ctxcore-sql --features rusqlite --example figures_rusqlite`.

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use ctxcore::Context;
use ctxcore_sql::rusqlite::ConnectionExt;
use rusqlite::Connection;

const RUNAWAY: &str = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c";
const SAMPLES: usize = 200;

fn percentiles(name: &str, mut v: Vec<Duration>) {
    v.sort();
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "{name}: n={} p50={:?} p99={:?} max={:?}",
        v.len(),
        at(0.50),
        at(0.99),
        v[v.len() - 1]
    );
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut conn = Connection::open_in_memory()?;
    // Latency tails depend on the machine's load (2 cores shared here).
    if let Ok(load) = std::fs::read_to_string("/proc/loadavg") {
        println!("load average: {}", load.trim());
    }

    // 1. The interrupt path: a cancel from another thread while the statement runs.
    let mut seed: u64 = 0x2545_F491_4F6C_DD1D;
    let mut latencies = Vec::with_capacity(SAMPLES);
    for i in 0..SAMPLES {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = Duration::from_micros(1_000 + seed % 9_000);
        let (ctx, cancel) = Context::background().with_cancel();
        let (tx, rx) = mpsc::channel();
        let canceller = thread::spawn(move || {
            thread::sleep(delay);
            let at = Instant::now();
            cancel.cancel_with("figures");
            let _ = tx.send(at);
        });
        let res = conn.query_row_ctx(&ctx, RUNAWAY, [], |r| r.get::<_, i64>(0));
        let returned = Instant::now();
        let cancelled_at = rx.recv_timeout(Duration::from_secs(10))?;
        canceller.join().map_err(|_| "canceller panicked")?;
        if !res.as_ref().is_err_and(|e| e.is_context()) {
            return Err(format!("cancel {i}: unexpected {res:?}").into());
        }
        latencies.push(returned.saturating_duration_since(cancelled_at));
    }
    percentiles("cancel-to-return, interrupt (cancel from another thread)", latencies);

    // 2. The fallback path: the interrupt lands on an idle connection and is
    //    dropped by SQLite; the progress handler stops the statement.
    let mut latencies = Vec::with_capacity(SAMPLES);
    for i in 0..SAMPLES {
        let (ctx, cancel) = Context::background().with_cancel();
        let mut cancelled_at = None;
        let res = conn.with_context(&ctx, |c| {
            cancelled_at = Some(Instant::now());
            cancel.cancel_with("figures");
            c.query_row(RUNAWAY, [], |r| r.get::<_, i64>(0))
        });
        let returned = Instant::now();
        if !res.as_ref().is_err_and(|e| e.is_context()) {
            return Err(format!("cancel {i}: unexpected {res:?}").into());
        }
        latencies.push(returned.saturating_duration_since(cancelled_at.ok_or("closure did not run")?));
    }
    percentiles(
        "cancel-to-return, progress-handler fallback (interrupt lost)",
        latencies,
    );

    // 3. Rough overhead per uncancelled call.
    const N: u32 = 200_000;
    let select =
        |c: &Connection| -> rusqlite::Result<i64> { c.prepare_cached("SELECT 1")?.query_row([], |r| r.get(0)) };
    let (ctx, _cancel) = Context::background().with_cancel();
    for _ in 0..2 {
        let start = Instant::now();
        for _ in 0..N {
            std::hint::black_box(select(&conn)?);
        }
        let bare = start.elapsed() / N;
        let start = Instant::now();
        for _ in 0..N {
            std::hint::black_box(conn.with_context(&ctx, |c| select(c))?);
        }
        let wrapped = start.elapsed() / N;
        println!(
            "per call: bare {bare:?}, with_context {wrapped:?}, overhead {:?}",
            wrapped.saturating_sub(bare)
        );
    }
    Ok(())
}
