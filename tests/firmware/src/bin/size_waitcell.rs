//! The flash budget's second yardstick: the job of `size_child` without
//! ctxcore, on maitake-sync's `WaitCell`. One task waits; the tick interrupt
//! stores a `&'static str` reason and wakes it. `size_bare` plus a
//! `WaitCell` (one waker slot, no lock).

#![no_std]
#![no_main]

#[path = "../board.rs"]
mod board;
#[path = "../panic_exit.rs"]
mod panic_exit;

use core::hint::black_box;
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use embassy_executor::Executor;
use maitake_sync::WaitCell;
use static_cell::StaticCell;

static STOP: WaitCell = WaitCell::new();
/// Set (then `STOP` woken) by the handler; a `WaitCell` carries no value.
static STOPPED: AtomicBool = AtomicBool::new(false);
/// Ticks seen by the handler (load/store only: no RMW on M0 or RV32IMC).
static TICKS: AtomicU32 = AtomicU32::new(0);

#[embassy_executor::task]
async fn app() {
    let ok = STOP.wait_for(|| STOPPED.load(Ordering::Acquire)).await.is_ok();
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
        STOPPED.store(true, Ordering::Release);
        STOP.wake();
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
