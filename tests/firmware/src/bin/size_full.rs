//! Code size of ctxcore as a firmware typically uses it: `size_cancel` plus
//! deadlines on `EmbassyTimer` (and its driver task), values, after-funcs and
//! `run`.

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
use core::sync::atomic::{AtomicBool, Ordering};
use core::time::Duration;
use ctxcore::{EmbassyTimer, Error, Key, StaticContext};
use embassy_executor::Executor;
use static_cell::StaticCell;

static TIMER: EmbassyTimer = EmbassyTimer::new();
static ROOT: StaticContext = StaticContext::with_timer(&TIMER);
static ID: Key<u32> = Key::new("id");
static RAN: AtomicBool = AtomicBool::new(false);

#[embassy_executor::task]
async fn timer_driver() {
    TIMER.run().await
}

#[embassy_executor::task]
async fn app() {
    let v = alloc::vec![alloc::boxed::Box::new(black_box(1u32))];
    embassy_time::Timer::after_millis(black_box(2)).await;
    let (ctx, handle) = ROOT.context().with_cancel();
    let ctx = ctx.with_value(&ID, black_box(7));
    let (child, _h) = ctx.with_timeout(Duration::from_millis(black_box(3)));
    let _after = child.after_func(|| RAN.store(true, Ordering::Relaxed));
    let r = child.run(embassy_time::Timer::after_secs(black_box(60))).await;
    let ok = r == Err(Error::DeadlineExceeded) && child.value(&ID) == Some(&7) && RAN.load(Ordering::Relaxed);
    handle.cancel_with(black_box("stop"));
    let ok = ok && ctx.done().await == Error::Canceled;
    board::exit(black_box(&v).len() == 1 && ok);
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
    EXECUTOR.init(Executor::new()).run(|spawner| {
        spawner.spawn(timer_driver().unwrap());
        spawner.spawn(app().unwrap());
    })
}
