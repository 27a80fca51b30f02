//! Code-size baseline of the heap-free firmwares: the skeleton of
//! `size_static` (embassy executor, SysTick time driver, semihosting), with
//! no ctxcore and no allocator.

#![no_std]
#![no_main]

#[path = "../board.rs"]
mod board;

use core::hint::black_box;
use cortex_m_semihosting::hprintln;
use embassy_executor::Executor;
use static_cell::StaticCell;

#[embassy_executor::task]
async fn app() {
    embassy_time::Timer::after_millis(black_box(2)).await;
    hprintln!("size_bare: {}", black_box(true));
    board::exit(true);
}

#[cortex_m_rt::exception]
fn SysTick() {
    board::on_systick();
}

static EXECUTOR: StaticCell<Executor> = StaticCell::new();

#[cortex_m_rt::entry]
fn main() -> ! {
    board::init();
    EXECUTOR
        .init(Executor::new())
        .run(|spawner| spawner.spawn(app().unwrap()))
}
