//! Code-size baseline of the heap-free firmwares: the skeleton of
//! `size_static` (embassy executor, SysTick time driver, semihosting), with
//! no ctxcore and no allocator.

#![no_std]
#![no_main]

#[path = "../board.rs"]
mod board;
#[path = "../panic_exit.rs"]
mod panic_exit;

use core::hint::black_box;
use embassy_executor::Executor;
use static_cell::StaticCell;

#[embassy_executor::task]
async fn app() {
    embassy_time::Timer::after_millis(black_box(2)).await;
    board::exit(black_box(true));
}

#[cfg_attr(target_arch = "arm", cortex_m_rt::exception)]
#[cfg_attr(
    target_arch = "riscv32",
    riscv_rt::core_interrupt(riscv::interrupt::Interrupt::MachineTimer),
    allow(non_snake_case)
)]
fn SysTick() {
    board::on_systick();
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
