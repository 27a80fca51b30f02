//! The flash budget's yardstick: the job of `size_child` without ctxcore,
//! on embassy-sync's `Signal`. One task waits; the tick interrupt signals it
//! with a `&'static str` reason. `size_bare` plus a `Signal` on a
//! critical-section mutex.

#![no_std]
#![no_main]

#[path = "../board.rs"]
mod board;
#[path = "../panic_exit.rs"]
mod panic_exit;

use core::hint::black_box;
use core::sync::atomic::{AtomicU32, Ordering};
use embassy_executor::Executor;
use embassy_sync::blocking_mutex::raw::CriticalSectionRawMutex;
use embassy_sync::signal::Signal;
use static_cell::StaticCell;

static STOP: Signal<CriticalSectionRawMutex, &'static str> = Signal::new();
/// Ticks seen by the handler (load/store only: no RMW on M0 or RV32IMC).
static TICKS: AtomicU32 = AtomicU32::new(0);

#[embassy_executor::task]
async fn app() {
    let why = STOP.wait().await;
    let ok = why == "stop";
    board::exit(ok);
}

#[cfg_attr(target_arch = "arm", cortex_m_rt::exception)]
#[cfg_attr(
    target_arch = "riscv32",
    riscv_rt::core_interrupt(riscv::interrupt::Interrupt::MachineTimer),
    allow(non_snake_case)
)]
fn SysTick() {
    board::on_systick();
    let t = TICKS.load(Ordering::Relaxed) + 1;
    TICKS.store(t, Ordering::Relaxed);
    if t == black_box(2) {
        STOP.signal(black_box("stop"));
    }
}

static EXECUTOR: StaticCell<Executor> = StaticCell::new();

#[cfg_attr(target_arch = "arm", cortex_m_rt::entry)]
#[cfg_attr(target_arch = "riscv32", riscv_rt::entry)]
fn main() -> ! {
    board::init();
    EXECUTOR
        .init(Executor::new())
        .run(|spawner| spawner.spawn(app().unwrap()))
}
