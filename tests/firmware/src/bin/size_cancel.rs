//! Code size of ctxcore's cancellation core: `size_base` plus a static root,
//! a heap child, cancel with a `&'static str` cause and waiting on `done()`.
//! No deadlines, values or after-funcs.

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
use ctxcore::{Error, StaticContext};
use embassy_executor::Executor;
use static_cell::StaticCell;

static ROOT: StaticContext = StaticContext::new();

#[embassy_executor::task]
async fn app() {
    let v = alloc::vec![alloc::boxed::Box::new(black_box(1u32))];
    embassy_time::Timer::after_millis(black_box(2)).await;
    let (ctx, handle) = ROOT.context().with_cancel();
    let (child, _h) = ctx.with_cancel();
    handle.cancel_with(black_box("stop"));
    let err = child.done().await;
    let ok = err == Error::Canceled && child.cause().and_then(|c| c.as_str()) == Some("stop");
    ROOT.cancel();
    board::exit(black_box(&v).len() == 1 && ok && ROOT.done().await == Error::Canceled);
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
