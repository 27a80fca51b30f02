//! Code size of ctxcore's heap-free core: `size_bare` plus a `StaticContext`
//! cancelled with a `&'static str` cause and waited on with `done()`.

#![no_std]
#![no_main]

#[path = "../board.rs"]
mod board;
#[path = "../panic_exit.rs"]
mod panic_exit;

use core::hint::black_box;
use ctxcore::{Error, StaticContext};
use embassy_executor::Executor;
use static_cell::StaticCell;

static ROOT: StaticContext = StaticContext::new();

#[embassy_executor::task]
async fn app() {
    embassy_time::Timer::after_millis(black_box(2)).await;
    ROOT.cancel_with(black_box("stop"));
    let ok = ROOT.done().await == Error::Canceled && ROOT.cause().and_then(|c| c.as_str()) == Some("stop");
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
