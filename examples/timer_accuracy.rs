//! Firing accuracy of the `std` timer backend: arms 1 000 deadlines spread
//! over one second and reports how late each fired (the time from the
//! deadline to its after-func running on the timer thread).
//!
//! ```text
//! cargo run --release --example timer_accuracy
//! ```
//!
//! The figure quoted in `docs/timers.md` comes from this program.

use ctxcore::{Context, Instant, StdTimer};
use std::sync::mpsc;
use std::time::Duration;

const DEADLINES: u64 = 1_000;
const SPREAD: Duration = Duration::from_secs(1);
/// Time to arm everything before the first deadline is due.
const LEAD: Duration = Duration::from_millis(50);

fn main() {
    let timer = StdTimer::global();
    let start = Instant::now() + LEAD;
    let (tx, rx) = mpsc::channel::<Duration>();
    let mut handles = Vec::with_capacity(DEADLINES as usize);
    // A fixed pseudo-random order, so deadlines are not armed in deadline
    // order (the common case for a real server) yet runs are reproducible.
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..DEADLINES {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let offset = Duration::from_nanos(seed % SPREAD.as_nanos() as u64);
        let deadline = start + offset;
        let (ctx, handle) = Context::background().with_deadline(deadline);
        let tx = tx.clone();
        ctx.after_func(move || {
            let late = Instant::now().saturating_duration_since(deadline);
            let _ = tx.send(late);
        });
        handles.push((ctx, handle));
    }
    drop(tx);
    let mut late: Vec<Duration> = rx.iter().take(DEADLINES as usize).collect();
    assert_eq!(late.len(), DEADLINES as usize, "every deadline fired");
    assert_eq!(timer.armed(), 0, "no entry left armed");
    late.sort();
    let pct = |p: usize| late[(late.len() * p / 100).min(late.len() - 1)];
    println!(
        "std timer, {DEADLINES} deadlines over {SPREAD:?}: median lateness {:?}, p90 {:?}, p99 {:?}, max {:?}",
        pct(50),
        pct(90),
        pct(99),
        late[late.len() - 1]
    );
}
