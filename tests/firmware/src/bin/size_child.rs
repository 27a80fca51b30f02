//! The heap-free tier at its smallest useful size: cancel + wait + one
//! scoped child. A `StaticContext` root, one `ScopedContext` child pinned in
//! the waiting task, `done().await` on the child, and the tick interrupt
//! cancelling the root with a `&'static str` cause (the same job as
//! `size_signal`, which does it on embassy-sync's `Signal`).

#![no_std]
#![no_main]

#[path = "../board.rs"]
mod board;
#[path = "../panic_exit.rs"]
mod panic_exit;

use core::hint::black_box;
use core::pin::pin;
use core::sync::atomic::{AtomicU32, Ordering};
use ctxcore::{Error, ScopedContext, StaticContext};
use embassy_executor::Executor;
use static_cell::StaticCell;

static ROOT: StaticContext = StaticContext::new();
/// Ticks seen by the handler (load/store only: no RMW on M0 or RV32IMC).
static TICKS: AtomicU32 = AtomicU32::new(0);

#[embassy_executor::task]
async fn app() {
    let child = pin!(ScopedContext::new(ROOT.as_ref()));
    let child = child.as_ref().context();
    let ok = child.done().await == Error::Canceled && child.cause().and_then(|c| c.as_str()) == Some("stop");
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
        ROOT.cancel_with(black_box("stop"));
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
