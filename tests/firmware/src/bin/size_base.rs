//! Code-size baseline: the same firmware skeleton as `size_cancel` and
//! `size_full` (heap, embassy executor, SysTick time driver, semihosting),
//! without ctxcore. `ci/qemu.sh` reports the `.text` differences.

#![no_std]
#![no_main]

extern crate alloc;

#[path = "../board.rs"]
mod board;
#[path = "../heap.rs"]
mod heap;
#[path = "../panic_exit.rs"]
mod panic_exit;

use core::hint::black_box;
use embassy_executor::Executor;
use static_cell::StaticCell;

#[embassy_executor::task]
async fn app() {
    let v = alloc::vec![alloc::boxed::Box::new(black_box(1u32))];
    embassy_time::Timer::after_millis(black_box(2)).await;
    board::exit(black_box(&v).len() == 1);
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
    heap::init();
    board::init();
    EXECUTOR
        .init(Executor::new())
        .run(|spawner| spawner.spawn(app().unwrap()))
}
