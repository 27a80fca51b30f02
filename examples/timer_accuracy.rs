//! Firing accuracy of the timer backends: arms 1 000 deadlines spread over
//! one second and reports how late each fired (the time from the deadline,
//! on the backend's own clock, to its after-func running).
//!
//! ```text
//! cargo run --release --example timer_accuracy                      # std
//! cargo run --release --example timer_accuracy --features tokio,embassy-time
//! ```
//!
//! The figures quoted in `docs/timers.md` come from this program.

use ctxcore::{Clock, Context, StdTimer};
use std::sync::mpsc;
use std::time::Duration;

const DEADLINES: u64 = 1_000;
const SPREAD: Duration = Duration::from_secs(1);
/// Time to arm everything before the first deadline is due.
const LEAD: Duration = Duration::from_millis(50);

/// Arms the deadlines under `root` (whose timer reads `clock`) from this
/// thread and prints lateness percentiles.
fn measure(name: &str, root: &Context, clock: &'static dyn Clock, armed: impl Fn() -> usize) {
    let start = clock.now() + LEAD;
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
        let (ctx, handle) = root.with_deadline(deadline);
        let tx = tx.clone();
        ctx.after_func(move || {
            let late = clock.now().saturating_duration_since(deadline);
            let _ = tx.send(late);
        });
        handles.push((ctx, handle));
    }
    drop(tx);
    let mut late: Vec<Duration> = rx.iter().take(DEADLINES as usize).collect();
    assert_eq!(late.len(), DEADLINES as usize, "every deadline fired");
    assert_eq!(armed(), 0, "no entry left armed");
    late.sort();
    let pct = |p: usize| late[(late.len() * p / 100).min(late.len() - 1)];
    println!(
        "{name}: {DEADLINES} deadlines over {SPREAD:?}: median lateness {:?}, p90 {:?}, p99 {:?}, max {:?}",
        pct(50),
        pct(90),
        pct(99),
        late[late.len() - 1]
    );
}

fn main() {
    let std_timer = StdTimer::global();
    measure("std timer thread", &Context::background(), std_timer, || {
        std_timer.armed()
    });

    #[cfg(feature = "tokio")]
    {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_time()
            .build()
            .expect("runtime");
        let timer = ctxcore::TokioTimer::new(rt.handle().clone());
        measure(
            "tokio timer (multi_thread, 1 worker)",
            &Context::with_timer(timer),
            timer,
            || timer.armed(),
        );
    }

    #[cfg(feature = "embassy-time")]
    {
        static TIMER: ctxcore::EmbassyTimer = ctxcore::EmbassyTimer::new();

        #[embassy_executor::task]
        async fn driver() {
            TIMER.run().await
        }

        std::thread::spawn(|| {
            let executor = Box::leak(Box::new(embassy_executor::Executor::new()));
            executor.run(|spawner| spawner.spawn(driver().expect("driver task")))
        });
        measure(
            "embassy timer (platform-std executor, std time driver)",
            &Context::with_timer(&TIMER),
            &TIMER,
            || TIMER.armed(),
        );
    }

    #[cfg(not(all(feature = "tokio", feature = "embassy-time")))]
    println!("(run with --features tokio,embassy-time to measure those backends too)");
}
