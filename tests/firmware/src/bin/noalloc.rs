//! ctxcore without an allocator: no `alloc` feature, no global allocator
//! linked at all. A `StaticContext` root in a `static`, waited on by an
//! embassy task (the waiter lives inside the `done()` future) and cancelled
//! from the SysTick handler, while both the handler and thread code keep
//! registering and dropping waiters on that same node (each takes its lock).

#![no_std]
#![no_main]

#[path = "../board.rs"]
mod board;

use core::future::Future;
use core::pin::pin;
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use core::task::{Context as TaskContext, Waker};
use cortex_m_semihosting::hprintln;
use ctxcore::{Cause, Error, StaticContext};
use embassy_executor::{Executor, Spawner};
use static_cell::StaticCell;

macro_rules! check {
    ($cond:expr) => {
        if !$cond {
            hprintln!("FAIL: {}:{}: {}", file!(), line!(), stringify!($cond));
            board::exit(false);
        }
    };
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            hprintln!("FAIL: {}:{}: {}: {}", file!(), line!(), stringify!($cond), format_args!($($arg)+));
            board::exit(false);
        }
    };
}

/// Cancelled by the SysTick handler.
static STOP: StaticContext = StaticContext::new();
/// Cancelled by the watcher task once it has seen `STOP` end.
static REPLY: StaticContext = StaticContext::new();
/// A root that is never cancelled, to check a cause without allocating.
static OTHER: StaticContext = StaticContext::new();

static ISR_ARMED: AtomicBool = AtomicBool::new(false);
/// Written only by the handler (no RMW on Cortex-M0).
static ISR_TICKS: AtomicU32 = AtomicU32::new(0);
/// Ticks during which the handler registers and drops a waiter on `STOP`
/// before it cancels it.
const ISR_ROUNDS: u32 = 250;

#[cortex_m_rt::exception]
fn SysTick() {
    board::on_systick();
    if !ISR_ARMED.load(Ordering::Acquire) {
        return;
    }
    let n = ISR_TICKS.load(Ordering::Relaxed) + 1;
    ISR_TICKS.store(n, Ordering::Relaxed);
    if n < ISR_ROUNDS {
        // Register a waiter on STOP and drop it: two sections of STOP's lock,
        // taken in the handler.
        let mut done = pin!(STOP.done());
        let _ = done.as_mut().poll(&mut TaskContext::from_waker(Waker::noop()));
    } else {
        ISR_ARMED.store(false, Ordering::Release);
        STOP.cancel_with("stopped by SysTick");
    }
}

#[embassy_executor::task]
async fn watcher() {
    let err = STOP.done().await;
    let expected = err == Error::Canceled && STOP.cause().and_then(|c| c.as_str()) == Some("stopped by SysTick");
    REPLY.cancel_with(if expected {
        "watcher saw the stop"
    } else {
        "watcher saw something else"
    });
}

#[embassy_executor::task]
async fn tests(spawner: Spawner) {
    hprintln!(
        "ctxcore heap-free firmware on {} (no allocator linked)",
        if cfg!(target_has_atomic = "ptr") {
            "Cortex-M3"
        } else {
            "Cortex-M0"
        }
    );
    check!(!STOP.is_done() && STOP.err().is_none() && STOP.cause().is_none());

    // Causes from `&'static str` and first-cancel-wins, with no heap.
    OTHER.cancel_with(Cause::from("first"));
    OTHER.cancel_with("second");
    check!(OTHER.err() == Some(Error::Canceled));
    check!(OTHER.cause().and_then(|c| c.as_str()) == Some("first"));
    check!(
        OTHER.done().await == Error::Canceled,
        "done() of a cancelled root is ready"
    );
    hprintln!("ok: static root, &'static str causes, first cancel wins");

    spawner.spawn(watcher().unwrap());
    embassy_time::Timer::after_millis(3).await;
    check!(!REPLY.is_done(), "the watcher must still be waiting");

    // Thread code registers and drops waiters on STOP in a loop while the
    // handler does the same, then cancels STOP, from interrupt context.
    let mut rounds = 0u32;
    let mut ready = false;
    ISR_ARMED.store(true, Ordering::Release);
    while !ready {
        let mut done = pin!(STOP.done());
        ready = done
            .as_mut()
            .poll(&mut TaskContext::from_waker(Waker::noop()))
            .is_ready();
        rounds += 1;
    }
    let ticks = ISR_TICKS.load(Ordering::Relaxed);
    check!(ticks == ISR_ROUNDS, "handler ran {} times", ticks);
    check!(rounds > ISR_ROUNDS, "thread rounds: {}", rounds);
    check!(STOP.err() == Some(Error::Canceled));
    check!(REPLY.done().await == Error::Canceled);
    check!(REPLY.cause().and_then(|c| c.as_str()) == Some("watcher saw the stop"));
    hprintln!(
        "ok: SysTick handler registered/dropped {} waiters on the node while thread code did {} rounds of the same, then cancelled it; the embassy task waiting on done() woke; no deadlock",
        ticks - 1,
        rounds
    );
    hprintln!(
        "size: StaticContext {} B, done() future {} B (no heap anywhere)",
        core::mem::size_of::<StaticContext>(),
        core::mem::size_of_val(&STOP.done())
    );
    hprintln!("PASS: all heap-free firmware checks");
    board::exit(true);
}

static EXECUTOR: StaticCell<Executor> = StaticCell::new();

#[cortex_m_rt::entry]
fn main() -> ! {
    board::init();
    EXECUTOR
        .init(Executor::new())
        .run(|spawner| spawner.spawn(tests(spawner).unwrap()))
}
