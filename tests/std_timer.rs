//! The `std` backend on its own (its own test binary, so `StdTimer::global()`
//! sees only these deadlines): no leaked entries, bad input, idle exit and
//! restart of the timer thread.
#![cfg(not(miri))] // real time and threads

use ctxcore::{Context, Error, Instant, StdTimer};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::Duration;

/// The tests share the global timer; `armed()` checks need it to themselves.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Deadlines that fire, are cancelled early, or are dropped (context and
/// handle) on another thread while the timer fires: every after-func runs
/// once, and the timer ends with no entry.
#[test]
fn no_entry_leaks() {
    let _serial = serial();
    const N: usize = 300;
    let (tx, rx) = mpsc::channel();
    let mut kept = Vec::new();
    let mut cancelled = Vec::new();
    let mut dropped = Vec::new();
    for i in 0..N {
        // The ones cancelled below get a far deadline: on a loaded machine
        // creating 300 contexts can outlast a short one, and the timer would
        // then win the race with `cancel` (DeadlineExceeded, not Canceled).
        let timeout = if i % 3 == 1 {
            Duration::from_secs(60)
        } else {
            Duration::from_micros(500 + 50 * i as u64)
        };
        let (ctx, h) = Context::background().with_timeout(timeout);
        let tx = tx.clone();
        ctx.after_func(move || tx.send(()).unwrap());
        match i % 3 {
            0 => kept.push((ctx, h)),
            1 => cancelled.push((ctx, h)),
            _ => dropped.push((ctx, h)),
        }
    }
    drop(tx);
    for (_, h) in &cancelled {
        h.cancel();
    }
    let dropper = std::thread::spawn(move || {
        for pair in dropped {
            drop(pair);
            std::thread::yield_now();
        }
    });
    for (ctx, _h) in &kept {
        assert_eq!(ctx.wait_blocking(), Error::DeadlineExceeded);
    }
    for (ctx, _h) in &cancelled {
        assert_eq!(ctx.err(), Some(Error::Canceled));
    }
    dropper.join().unwrap();
    assert_eq!(rx.iter().count(), N, "each after-func ran once");
    drop(kept);
    drop(cancelled);
    assert_eq!(StdTimer::global().armed(), 0, "no entry left");
}

/// Past, far-future and maximal deadlines on the timer thread.
#[test]
fn bad_input() {
    let _serial = serial();
    let before = StdTimer::global().armed();
    let (past, _h1) = Context::background().with_deadline(Instant::ZERO);
    assert_eq!(past.wait_blocking(), Error::DeadlineExceeded);
    let (never, _h2) = Context::background().with_deadline(Instant::MAX);
    let (forever, _h3) = Context::background().with_timeout(Duration::MAX);
    assert_eq!(StdTimer::global().armed(), before, "nothing armed for past or MAX");
    let (far, h4) = Context::background().with_timeout(Duration::from_secs(500 * 365 * 24 * 3600));
    // Armed by its first waiter (an after-func), not at creation.
    drop(far.after_func(|| {}));
    assert_eq!(StdTimer::global().armed(), before + 1, "far deadline armed");
    // The timer thread sleeps towards a deadline 500 years out without
    // overflow; a nearer one armed later still fires.
    let (near, _h5) = Context::background().with_timeout(Duration::from_millis(5));
    assert_eq!(near.wait_blocking(), Error::DeadlineExceeded);
    for ctx in [&never, &forever, &far] {
        assert_eq!(ctx.wait_blocking_timeout(Duration::from_millis(1)), None);
    }
    drop(h4);
    assert_eq!(StdTimer::global().armed(), before, "released");
}

/// With nothing armed the timer thread exits (after two idle seconds), and
/// the next deadline starts it again.
#[cfg(target_os = "linux")]
#[test]
fn idle_thread_exits_and_restarts() {
    let _serial = serial();
    fn timer_threads() -> usize {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|name| name.trim() == "ctxcore-timer")
            .count()
    }
    let (ctx, _h) = Context::background().with_timeout(Duration::from_millis(1));
    assert_eq!(ctx.wait_blocking(), Error::DeadlineExceeded);
    assert!(timer_threads() <= 1, "one timer thread at most");
    // Wait (generously) for the idle exit; this checks that it happens, not
    // how fast.
    let mut waited = Duration::ZERO;
    while timer_threads() != 0 {
        assert!(
            waited < Duration::from_secs(30),
            "timer thread still running after 30 idle seconds"
        );
        std::thread::sleep(Duration::from_millis(100));
        waited += Duration::from_millis(100);
    }
    let (ctx, _h) = Context::background().with_timeout(Duration::from_millis(1));
    assert_eq!(ctx.wait_blocking(), Error::DeadlineExceeded, "restarted thread fires");
}
