//! ctxcore's test firmware: runs on QEMU's lm3s6965evb (Cortex-M3, and
//! Cortex-M0 through portable-atomic) and on QEMU's RISC-V `virt` machine
//! (RV32IMAC, and RV32IMC through portable-atomic; the tick is the machine
//! timer there, see board.rs), prints each check through semihosting and
//! exits with the verdict. Any failed check, panic or hang (caught by the
//! runner's timeout) fails the run.
//!
//! It uses ctxcore's `alloc` API on a 24 KiB heap (embedded-alloc), deadlines
//! on `EmbassyTimer` over a SysTick-driven embassy-time driver, and the
//! `critical-section` lock, so that the SysTick handler can cancel contexts
//! while thread-mode code is inside ctxcore.

#![no_std]
#![no_main]

extern crate alloc;

#[path = "board.rs"]
mod board;
#[path = "heap.rs"]
mod heap;
#[path = "panic_print.rs"]
mod panic_print;

use core::future::Future as _;
use board::hprintln;
use core::cell::RefCell;
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use core::time::Duration;
use critical_section::Mutex;
use ctxcore::{CancelHandle, Clock, Context, EmbassyTimer, Error, Key, ManualClock, StaticContext};
use embassy_executor::{Executor, Spawner};
use static_cell::StaticCell;

/// Checks a condition; on failure prints it and ends the run as failed.
macro_rules! check {
    ($cond:expr) => {
        if !$cond {
            hprintln!("FAIL: {}:{}: {}", file!(), line!(), stringify!($cond));
            board::exit(false);
        }
    };
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            hprintln!("FAIL: {}:{}: {}: {}", file!(), line!(), stringify!($cond), format_args!($($arg)+));
            board::exit(false);
        }
    };
}

/// Deadlines of every tree here: embassy-time's clock, fired by the
/// `timer_driver` task.
static TIMER: EmbassyTimer = EmbassyTimer::new();

/// A heap-free root in a static, cancelled from the SysTick handler.
static STOP: StaticContext = StaticContext::with_timer(&TIMER);

static TRACE_ID: Key<u32> = Key::new("trace_id");
static USER: Key<&'static str> = Key::new("user");

#[embassy_executor::task]
async fn timer_driver() {
    TIMER.run().await
}

/// Waits on `job` in its own task, then reports through `reply`.
#[embassy_executor::task]
async fn waiter(job: Context, reply: CancelHandle) {
    let err = job.done().await;
    reply.cancel_with(match (err, job.cause().and_then(|c| c.as_str())) {
        (Error::Canceled, Some("stop job")) => "waiter saw the job stop",
        _ => "waiter saw something else",
    });
}

#[embassy_executor::task]
async fn tests(spawner: Spawner) {
    hprintln!("ctxcore firmware tests on {}", core_name());
    cancel_trees();
    causes();
    values();
    node_sizes();
    deadlines().await;
    manual_clock();
    waiting(spawner).await;
    cancel_from_interrupt().await;
    let s = heap::HEAP.stats();
    hprintln!(
        "heap: {} allocations in all, peak {} bytes, {} bytes still live",
        s.allocs,
        s.peak,
        s.live
    );
    hprintln!("PASS: all firmware checks");
    board::exit(true);
}

fn core_name() -> &'static str {
    match board::CPU {
        "Cortex-M3" => "Cortex-M3 (thumbv7m, native atomics)",
        "Cortex-M0" => "Cortex-M0 (thumbv6m, portable-atomic, single-core cfg)",
        "RV32IMAC" => "RV32IMAC (riscv32imac, native atomics)",
        _ => "RV32IMC (riscv32imc, no atomic extension: portable-atomic, single-core cfg)",
    }
}

fn cancel_trees() {
    let root = Context::with_timer(&TIMER);
    let (parent, parent_handle) = root.with_cancel();
    let (child, _child_handle) = parent.with_cancel();
    let (grandchild, _gc_handle) = child.with_timeout(Duration::from_secs(3600));
    let (sibling, sibling_handle) = root.with_cancel();
    check!(!grandchild.is_done() && grandchild.err().is_none());

    parent_handle.cancel();
    check!(child.err() == Some(Error::Canceled));
    check!(
        grandchild.err() == Some(Error::Canceled),
        "parent cancel reaches the grandchild"
    );
    check!(!root.is_done() && !sibling.is_done(), "cancel stays inside its subtree");

    // Dropping a handle cancels; a detached handle does not.
    drop(sibling_handle);
    check!(sibling.is_done());
    let (kept, kept_handle) = root.with_cancel();
    kept_handle.detach();
    check!(!kept.is_done());

    // A deep chain cancels iteratively: no recursion on a small stack.
    let (top, top_handle) = root.with_cancel();
    let mut chain = alloc::vec::Vec::new();
    let mut leaf = top.clone();
    for _ in 0..64 {
        let (next, h) = leaf.with_cancel();
        chain.push(h);
        leaf = next;
    }
    top_handle.cancel();
    check!(leaf.err() == Some(Error::Canceled), "64 levels down");
    drop(chain);
    hprintln!(
        "ok: cancel trees (parent -> child -> grandchild, siblings untouched, drop cancels, detach, 64-deep chain)"
    );
}

fn causes() {
    let root = Context::with_timer(&TIMER);
    let (ctx, handle) = root.with_cancel();
    let (child, _h) = ctx.with_cancel();
    handle.cancel_with("sensor unplugged");
    handle.cancel_with("second cancel loses");
    check!(ctx.cause().and_then(|c| c.as_str()) == Some("sensor unplugged"));
    check!(
        child.cause().and_then(|c| c.as_str()) == Some("sensor unplugged"),
        "inherited"
    );
    check!(child.err() == Some(Error::Canceled));

    let (plain, plain_handle) = root.with_cancel();
    plain_handle.cancel();
    check!(
        plain.cause().and_then(|c| c.as_error()) == Some(Error::Canceled),
        "no cause: the error"
    );

    // A `&'static str` cause never allocates.
    let (quiet, quiet_handle) = root.with_cancel();
    let before = heap::HEAP.stats().allocs;
    quiet_handle.cancel_with("no heap");
    let _ = quiet.cause();
    check!(
        heap::HEAP.stats().allocs == before,
        "cancel_with(&'static str) allocated"
    );
    hprintln!("ok: causes (&'static str, first wins, inherited, default = error, no allocation)");
}

fn values() {
    let root = Context::with_timer(&TIMER);
    let traced = root.with_value(&TRACE_ID, 7);
    let (child, child_handle) = traced.with_cancel();
    let inner = child.with_value(&TRACE_ID, 8).with_value(&USER, "ada");
    check!(root.value(&TRACE_ID).is_none());
    check!(child.value(&TRACE_ID) == Some(&7));
    check!(inner.value(&TRACE_ID) == Some(&8), "nearest wins");
    check!(inner.value(&USER) == Some(&"ada"));
    check!(child.value(&USER).is_none());
    let detached = inner.without_cancel();
    child_handle.cancel();
    check!(
        inner.is_done() && !detached.is_done(),
        "without_cancel drops cancellation"
    );
    check!(detached.value(&USER) == Some(&"ada"), "without_cancel keeps values");
    hprintln!("ok: values (typed keys, nearest wins, without_cancel keeps them)");
}

/// Bytes and allocations per context, from the counting allocator.
fn node_sizes() {
    let root = Context::with_timer(&TIMER);
    let start = heap::HEAP.stats();
    let measure = |f: &dyn Fn() -> (Context, Option<CancelHandle>)| {
        let before = heap::HEAP.stats();
        let kept = f();
        let after = heap::HEAP.stats();
        drop(kept);
        (after.live - before.live, after.allocs - before.allocs)
    };
    let (cancel_bytes, cancel_allocs) = measure(&|| {
        let (c, h) = root.with_cancel();
        (c, Some(h))
    });
    let (timeout_bytes, timeout_allocs) = measure(&|| {
        let (c, h) = root.with_timeout(Duration::from_secs(60));
        (c, Some(h))
    });
    let (value_bytes, value_allocs) = measure(&|| (root.with_value(&TRACE_ID, 1), None));
    hprintln!(
        "size: with_cancel {} B in {} allocation(s); with_timeout {} B in {}; with_value(u32) {} B in {}; Context {} B, CancelHandle {} B",
        cancel_bytes,
        cancel_allocs,
        timeout_bytes,
        timeout_allocs,
        value_bytes,
        value_allocs,
        core::mem::size_of::<Context>(),
        core::mem::size_of::<CancelHandle>()
    );
    hprintln!(
        "size: StaticContext {} B (static, no heap); done() future {} B (waiter inside, no heap)",
        core::mem::size_of::<StaticContext>(),
        core::mem::size_of_val(&root.done())
    );
    check!(cancel_allocs == 1, "a plain child costs one allocation");
    check!(TIMER.armed() == 0);

    // The timer's ordered map grows by B-tree nodes shared by many entries:
    // measure its cost per armed deadline over a batch.
    const BATCH: usize = 44;
    let before = heap::HEAP.stats().live;
    let mut batch = alloc::vec::Vec::with_capacity(BATCH);
    let vec_bytes = heap::HEAP.stats().live - before;
    for i in 0..BATCH {
        batch.push(root.with_timeout(Duration::from_secs(60 + i as u64)));
    }
    // Armed when first waited on, not when made (node invariant 20).
    check!(TIMER.armed() == 0);
    let mut cx = core::task::Context::from_waker(core::task::Waker::noop());
    for (ctx, _) in &batch {
        check!(core::pin::pin!(ctx.done()).poll(&mut cx).is_pending());
    }
    check!(TIMER.armed() == BATCH);
    let per_deadline = (heap::HEAP.stats().live - before - vec_bytes) / BATCH;
    drop(batch);
    check!(TIMER.armed() == 0);
    hprintln!(
        "size: {} armed deadlines cost {} B each on average (node + EmbassyTimer map share)",
        BATCH,
        per_deadline
    );
    check!(
        heap::HEAP.stats().live <= start.live + 512,
        "contexts leaked heap memory"
    );
}

async fn deadlines() {
    let root = Context::with_timer(&TIMER);

    let start = embassy_time::Instant::now();
    let (ctx, _h) = root.with_timeout(Duration::from_millis(20));
    check!(ctx.deadline().is_some());
    check!(ctx.done().await == Error::DeadlineExceeded);
    let waited = start.elapsed().as_millis();
    check!(waited >= 20, "fired early, after {} ms", waited);
    check!(ctx.err() == Some(Error::DeadlineExceeded));

    let (slow, _h) = root.with_timeout_cause(Duration::from_millis(10), "sensor timeout");
    check!(slow.done().await == Error::DeadlineExceeded);
    check!(slow.cause().and_then(|c| c.as_str()) == Some("sensor timeout"));

    // The earliest deadline on the path wins.
    let (outer, _h1) = root.with_timeout(Duration::from_millis(15));
    let (inner, _h2) = outer.with_timeout(Duration::from_secs(3600));
    check!(inner.deadline() == outer.deadline());
    check!(inner.done().await == Error::DeadlineExceeded);

    // `run` drops the future when the context ends first.
    let (short, _h) = root.with_timeout(Duration::from_millis(5));
    let r = short.run(embassy_time::Timer::after_secs(3600)).await;
    check!(r == Err(Error::DeadlineExceeded));
    let (open, _h) = root.with_cancel();
    check!(open.run(async { 5 }).await == Ok(5));

    // A cancelled deadline child gives its timer entry back at once.
    let (gone, gone_handle) = root.with_timeout(Duration::from_secs(3600));
    // Armed by its first wait (node invariant 20).
    let mut cx = core::task::Context::from_waker(core::task::Waker::noop());
    check!(core::pin::pin!(gone.done()).poll(&mut cx).is_pending());
    check!(TIMER.armed() >= 1);
    gone_handle.cancel();
    drop(gone);
    check!(TIMER.armed() == 0, "timer entries leaked: {}", TIMER.armed());
    hprintln!(
        "ok: deadlines on SysTick via embassy-time (20 ms fired after {} ms, never early; cause; earliest wins; run; no leaked timer entries)",
        waited
    );
}

/// `ManualClock` on a target without 64-bit atomics (its reading sits
/// behind a lock there): deadlines fire exactly when time is moved.
fn manual_clock() {
    static CLOCK: ManualClock = ManualClock::new();
    static FIRED: AtomicBool = AtomicBool::new(false);
    let root = Context::with_timer(&CLOCK);
    let (hour, _h1) = root.with_timeout(Duration::from_secs(3600));
    let (minute, _h2) = hour.with_timeout_cause(Duration::from_secs(60), "slow query");
    let _after = minute.after_func(|| FIRED.store(true, Ordering::Relaxed));
    // Only the deadline something waits on is armed (the after-func's);
    // `hour` is exact when read (node invariant 20).
    check!(CLOCK.armed() == 1);
    CLOCK.advance(Duration::from_secs(59));
    check!(!minute.is_done() && !FIRED.load(Ordering::Relaxed));
    CLOCK.advance(Duration::from_secs(1));
    check!(minute.err() == Some(Error::DeadlineExceeded));
    check!(minute.cause().and_then(|c| c.as_str()) == Some("slow query"));
    check!(
        FIRED.load(Ordering::Relaxed),
        "the deadline's after_func ran in advance()"
    );
    check!(!hour.is_done());
    CLOCK.set(ctxcore::Instant::from_nanos(0)); // never backwards
    check!(CLOCK.now().as_nanos() == 60_000_000_000);
    CLOCK.advance(Duration::from_secs(3600));
    check!(hour.err() == Some(Error::DeadlineExceeded) && CLOCK.armed() == 0);
    hprintln!("ok: ManualClock without 64-bit atomics (deadlines fire on advance, never backwards)");
}

async fn waiting(spawner: Spawner) {
    let root = Context::with_timer(&TIMER);
    let (job, job_handle) = root.with_cancel();
    let (reply, reply_handle) = root.with_cancel();
    spawner.spawn(waiter(job.clone(), reply_handle).unwrap());
    embassy_time::Timer::after_millis(5).await;
    check!(!reply.is_done(), "the waiter task must still be waiting");
    job_handle.cancel_with("stop job");
    check!(reply.done().await == Error::Canceled);
    check!(reply.cause().and_then(|c| c.as_str()) == Some("waiter saw the job stop"));

    // after_func runs once, after cancel; stop prevents it only beforehand.
    static RAN: AtomicU32 = AtomicU32::new(0);
    let (ctx, handle) = root.with_cancel();
    let runs = ctx.after_func(|| RAN.store(RAN.load(Ordering::Relaxed) + 1, Ordering::Relaxed));
    let stopped = ctx.after_func(|| RAN.store(100, Ordering::Relaxed));
    check!(stopped.stop());
    handle.cancel();
    check!(RAN.load(Ordering::Relaxed) == 1);
    check!(!runs.stop() && !stopped.stop());

    // Context::any: done with the first parent to finish.
    let (a, _ha) = root.with_cancel();
    let (b, hb) = root.with_cancel();
    let either = Context::any([&a, &b]);
    hb.cancel_with("b first");
    check!(either.done().await == Error::Canceled);
    check!(either.cause().and_then(|c| c.as_str()) == Some("b first"));
    hprintln!("ok: waiting on done() in another embassy task; after_func; Context::any");
}

/// Handles the SysTick handler cancels, one per tick.
static SLOT: Mutex<RefCell<Option<CancelHandle>>> = Mutex::new(RefCell::new(None));
static ISR_ARMED: AtomicBool = AtomicBool::new(false);
/// Written only by the handler (no RMW needed on Cortex-M0).
static ISR_CANCELS: AtomicU32 = AtomicU32::new(0);
/// Ticks of interrupt-side cancels before the handler stops the whole tree.
const ISR_ROUNDS: u32 = 250;

#[cfg_attr(target_arch = "arm", cortex_m_rt::exception)]
#[cfg_attr(
    target_arch = "riscv32",
    riscv_rt::core_interrupt(riscv::interrupt::Interrupt::MachineTimer),
    allow(non_snake_case)
)]
fn SysTick() {
    board::on_systick();
    if !ISR_ARMED.load(Ordering::Acquire) {
        return;
    }
    // Take the handle in a critical section, cancel and drop it outside:
    // the cancel itself runs in the handler with interrupts enabled.
    let handle = critical_section::with(|cs| SLOT.borrow(cs).borrow_mut().take());
    if let Some(h) = handle {
        h.cancel_with("cancelled by SysTick");
        let n = ISR_CANCELS.load(Ordering::Relaxed) + 1;
        ISR_CANCELS.store(n, Ordering::Relaxed);
        if n >= ISR_ROUNDS {
            ISR_ARMED.store(false, Ordering::Release);
            STOP.cancel_with("stopped by SysTick");
        }
    }
}

/// Thread code keeps building and dropping children of one node (each takes
/// that node's lock) while the SysTick handler cancels those children (whose
/// unlinking takes the same lock) and finally the static root. With the
/// `critical-section` lock the handler can never find the lock held by the
/// code it interrupted, so this ends.
async fn cancel_from_interrupt() {
    let live_before = heap::HEAP.stats().live;
    let (victim, victim_handle) = STOP.context().with_cancel();
    let mut rounds = 0u32;
    let mut isr_saw = 0u32;
    ISR_ARMED.store(true, Ordering::Release);
    while !victim.is_done() {
        let (child, handle) = victim.with_cancel();
        let (grandchild, gc_handle) = child.with_cancel();
        let old = critical_section::with(|cs| SLOT.borrow(cs).borrow_mut().replace(handle));
        if old.is_none() {
            isr_saw += 1;
        }
        let (other, other_handle) = victim.with_cancel();
        drop(other_handle);
        drop((other, gc_handle, grandchild, child, old));
        rounds += 1;
    }
    ISR_ARMED.store(false, Ordering::Release);
    drop(critical_section::with(|cs| SLOT.borrow(cs).borrow_mut().take()));
    let cancels = ISR_CANCELS.load(Ordering::Relaxed);
    check!(victim.err() == Some(Error::Canceled));
    check!(victim.cause().and_then(|c| c.as_str()) == Some("stopped by SysTick"));
    check!(STOP.is_done());
    check!(cancels == ISR_ROUNDS, "handler cancels: {}", cancels);
    check!(isr_saw + 1 >= ISR_ROUNDS, "thread saw {} handler cancels", isr_saw);
    check!(rounds > ISR_ROUNDS, "thread rounds: {}", rounds);
    check!(STOP.done().await == Error::Canceled);
    drop((victim, victim_handle));
    let live_after = heap::HEAP.stats().live;
    check!(
        live_after == live_before,
        "{} bytes leaked by interrupt-side cancels",
        live_after as isize - live_before as isize
    );
    hprintln!(
        "ok: cancel from the SysTick handler: {} interrupt-side cancels while thread code ran {} rounds of with_cancel/drop on the same node; static root stopped from the handler; no deadlock",
        cancels,
        rounds
    );
}

static EXECUTOR: StaticCell<Executor> = StaticCell::new();

#[cfg_attr(target_arch = "arm", cortex_m_rt::entry)]
#[cfg_attr(target_arch = "riscv32", riscv_rt::entry)]
fn main() -> ! {
    heap::init();
    board::init();
    let executor = EXECUTOR.init(Executor::new());
    executor.run(|spawner| {
        spawner.spawn(timer_driver().unwrap());
        spawner.spawn(tests(spawner).unwrap());
    })
}
