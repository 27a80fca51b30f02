//! Code size of the heap-free tier as a firmware uses it: `size_static` plus
//! `ScopedContext` children pinned in the task (a chain, a cancel with a
//! cause), a `with_timeout` child on `TickTimer` (the 16-slot heap-free timer
//! fired from SysTick) awaited with `done()`, and its deadline cause.

#![no_std]
#![no_main]

#[path = "../board.rs"]
mod board;
#[path = "../panic_exit.rs"]
mod panic_exit;
#[path = "../tick_timer.rs"]
mod tick_timer;

use core::hint::black_box;
use core::pin::pin;
use core::time::Duration;
use ctxcore::{Clock, Error, ScopedContext, StaticContext};
use embassy_executor::Executor;
use static_cell::StaticCell;
use tick_timer::TickTimer;

static TICKS: TickTimer = TickTimer::new();
static ROOT: StaticContext = StaticContext::with_timer(&TICKS);

#[embassy_executor::task]
async fn app() {
    let job = pin!(ScopedContext::new(ROOT.as_ref()));
    let job_ctx = job.as_ref().context();
    let step = pin!(ScopedContext::with_deadline_cause(
        job_ctx,
        TICKS.now() + Duration::from_millis(black_box(2)),
        "step timeout"
    ));
    let step = step.as_ref().context();
    let timed = pin!(ScopedContext::with_timeout(step, Duration::from_millis(black_box(50))));
    let timed = timed.as_ref().context();
    let fired =
        timed.done().await == Error::DeadlineExceeded && timed.cause().and_then(|c| c.as_str()) == Some("step timeout");
    job.cancel_with(black_box("stop"));
    let ok = fired && job_ctx.done().await == Error::Canceled && !ROOT.is_done();
    ROOT.cancel_with(black_box("stop"));
    let ok = ok && ROOT.done().await == Error::Canceled && ROOT.cause().and_then(|c| c.as_str()) == Some("stop");
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
    TICKS.fire_due();
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
