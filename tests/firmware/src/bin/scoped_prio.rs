//! A known core problem, shown on the emulator (`ci/qemu.sh` runs this
//! informationally; it is expected to fail until the core is fixed).
//!
//! A `ScopedContext` whose owner runs at a *higher* priority than code that
//! holds a reference to its node cannot be dropped: its `Drop` spins until
//! every holder lets go (src/node/, `detach_scoped`), and on one core the
//! holder cannot run until the dropping code returns.
//!
//! Here the holder is an ordinary thread-mode timer driver (as
//! `EmbassyTimer::run` is): it claims a deadline entry (a `TimerFiring`,
//! which holds the node) and fires it. Firing wakes the task waiting on the
//! context; that task runs on an embassy `InterruptExecutor`, so the wake
//! preempts the driver at once, *inside* `TimerFiring::fire`, before the
//! firing's reference is released. The task's `done().await` completes, the
//! task returns, its future is dropped, and so is the `ScopedContext`, whose
//! drop now waits for the preempted driver: a deadlock. SysTick runs at a
//! higher priority than the executor's interrupt and reports it.

#![no_std]
#![no_main]

#[path = "../board.rs"]
mod board;
#[path = "../panic_print.rs"]
mod panic_print;
#[path = "../tick_timer.rs"]
mod tick_timer;

use board::hprintln;
use core::pin::pin;
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use core::time::Duration;
use cortex_m::interrupt::InterruptNumber;
use ctxcore::{Error, ScopedContext, StaticContext};
use embassy_executor::{Executor, InterruptExecutor, Spawner};
use static_cell::StaticCell;
use tick_timer::TickTimer;

static TICKS: TickTimer = TickTimer::new();
static ROOT: StaticContext = StaticContext::with_timer(&TICKS);

/// The high-priority executor, on IRQ 0 (unused by anything else on QEMU's
/// lm3s6965evb).
static HIGH: InterruptExecutor = InterruptExecutor::new();

#[derive(Clone, Copy)]
struct SoftIrq;

// SAFETY: 0 is a valid interrupt number on the lm3s6965 (GPIO port A, unused
// here).
unsafe impl InterruptNumber for SoftIrq {
    fn number(self) -> u16 {
        0
    }
}

/// Set by the high task once `done()` returned (before its drop).
static WOKE: AtomicBool = AtomicBool::new(false);
/// Set by thread code once the high task has finished, drop included.
static FINISHED: AtomicBool = AtomicBool::new(false);
/// Ticks since start; written only by SysTick.
static TICKS_SEEN: AtomicU32 = AtomicU32::new(0);
/// Ticks after which SysTick declares a deadlock.
const WATCHDOG_TICKS: u32 = 2000;

#[cortex_m_rt::exception]
unsafe fn DefaultHandler(irqn: i16) {
    if irqn == 0 {
        // SAFETY: called from IRQ 0's handler only, after `start`.
        unsafe { HIGH.on_interrupt() };
    }
}

#[cfg_attr(target_arch = "arm", cortex_m_rt::exception)]
#[cfg_attr(
    target_arch = "riscv32",
    riscv_rt::core_interrupt(riscv::interrupt::Interrupt::MachineTimer),
    allow(non_snake_case)
)]
fn SysTick() {
    board::on_systick();
    let n = TICKS_SEEN.load(Ordering::Relaxed) + 1;
    TICKS_SEEN.store(n, Ordering::Relaxed);
    if n > WATCHDOG_TICKS && !FINISHED.load(Ordering::Acquire) {
        hprintln!(
            "DEADLOCK (known core problem): the high-priority task {} and is spinning in ScopedContext's drop, waiting for the thread-mode timer driver it preempted inside TimerFiring::fire (src/node/ detach_scoped)",
            if WOKE.load(Ordering::Acquire) {
                "woke from done() with the deadline"
            } else {
                "never woke"
            }
        );
        board::exit(false);
    }
}

/// Runs on the interrupt executor: a deadline child pinned in this future.
#[embassy_executor::task]
async fn high() {
    let child = pin!(ScopedContext::with_timeout(ROOT.as_ref(), Duration::from_millis(5)));
    let child = child.as_ref().context();
    let err = child.done().await;
    WOKE.store(err == Error::DeadlineExceeded, Ordering::Release);
    // Returning drops `child`.
}

/// The deadline driver, in thread mode (like `EmbassyTimer::run`).
#[embassy_executor::task]
async fn timer_driver() {
    loop {
        TICKS.fire_due();
        embassy_time::Timer::after_millis(1).await;
    }
}

#[embassy_executor::task]
async fn main_task(spawner: Spawner) {
    hprintln!("scoped_prio: a ScopedContext in an InterruptExecutor task, its deadline fired by a thread-mode driver");
    spawner.spawn(timer_driver().unwrap());
    HIGH.spawner().spawn(high().unwrap());
    embassy_time::Timer::after_millis(50).await;
    let woke = WOKE.load(Ordering::Acquire);
    FINISHED.store(true, Ordering::Release);
    if woke && TICKS.armed() == 0 {
        hprintln!("PASS: the high-priority task woke and dropped its ScopedContext; no deadlock");
        board::exit(true);
    }
    hprintln!("FAIL: the high-priority task did not wake (woke = {})", woke);
    board::exit(false);
}

static EXECUTOR: StaticCell<Executor> = StaticCell::new();

#[cfg_attr(target_arch = "arm", cortex_m_rt::entry)]
#[cfg_attr(target_arch = "riscv32", riscv_rt::entry)]
fn main() -> ! {
    board::init();
    // SAFETY: `board::init` took the peripherals; this only sets IRQ 0's
    // priority, before the executor unmasks it (as `start` requires), below
    // SysTick's (0), so the watchdog preempts it.
    unsafe { cortex_m::Peripherals::steal().NVIC.set_priority(SoftIrq, 0x80) };
    HIGH.start(SoftIrq);
    EXECUTOR
        .init(Executor::new())
        .run(|spawner| spawner.spawn(main_task(spawner).unwrap()))
}
