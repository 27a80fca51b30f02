//! ctxcore without an allocator: no `alloc` feature, no global allocator
//! linked at all (any allocation would fail the link). The whole heap-free
//! tier, on a real tick source and real interrupts:
//!
//! 1. `StaticContext` roots in `static`s, with `&'static str` causes;
//! 2. chains of `ScopedContext` children pinned inside embassy tasks: a
//!    parent's cancel reaches grandchildren, a child's does not reach its
//!    parent, causes are inherited, a dropped child unlinks (1000 created and
//!    dropped, then the root cancelled);
//! 3. deadlines with no heap, on `TickTimer` (`tick_timer.rs`): a fixed array
//!    of 16 entries fired from the SysTick handler; a timeout wakes a task
//!    waiting on `done()`, a deadline cause is inherited, cancel and drop
//!    disarm, a full array refuses an entry without panicking and that
//!    deadline is still exact when observed;
//! 4. cancels from the SysTick handler — of a root waited on directly, and of
//!    a root whose scoped grandchild a task waits on — while thread code
//!    keeps taking the same node's lock (waiters, scoped children).

#![no_std]
#![no_main]

#[path = "../board.rs"]
mod board;
#[path = "../panic_print.rs"]
mod panic_print;
#[path = "../tick_timer.rs"]
mod tick_timer;

use board::hprintln;
use core::future::Future;
use core::pin::{pin, Pin};
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering};
use core::task::{Context as TaskContext, Waker};
use core::time::Duration;
use ctxcore::{Clock, ContextRef, Done, Error, Instant, ScopedContext, StaticContext};
use embassy_executor::{Executor, Spawner};
use static_cell::StaticCell;
use tick_timer::{TickTimer, SLOTS};

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

/// The heap-free timer of the deadline tests, fired from SysTick.
static TICKS: TickTimer = TickTimer::new();

/// A root that is never cancelled, to check a cause without allocating.
static OTHER: StaticContext = StaticContext::new();
/// Root of the chain pinned in `chain_owner`.
static TREE: StaticContext = StaticContext::new();
/// Root of the 1000 scoped children created and dropped in a loop.
static CHURN: StaticContext = StaticContext::new();
/// Root of every deadline test: its scoped descendants use `TICKS`.
static TIMED: StaticContext = StaticContext::with_timer(&TICKS);
/// Cancelled by the SysTick handler (phase 1); `watcher` waits on it.
static STOP: StaticContext = StaticContext::new();
/// Cancelled by the SysTick handler (phase 2); `irq_waiter` waits on a
/// scoped grandchild of it.
static IRQ_ROOT: StaticContext = StaticContext::new();

/// One-shot replies from the helper tasks: each is cancelled once, with a
/// `&'static str` verdict as its cause ("ok" or what went wrong).
static CHAIN_REPLY: StaticContext = StaticContext::new();
static WATCH_REPLY: StaticContext = StaticContext::new();
static IRQ_REPLY: StaticContext = StaticContext::new();
/// Set by helper tasks once their children are linked and they are waiting.
static CHAIN_READY: AtomicBool = AtomicBool::new(false);
static IRQ_READY: AtomicBool = AtomicBool::new(false);

/// What the SysTick handler does besides ticking: 0 nothing, 1 churn waiters
/// on `STOP` then cancel it, 2 churn scoped children of `IRQ_ROOT` then
/// cancel it.
static PHASE: AtomicU8 = AtomicU8::new(0);
/// Ticks of the current phase. Written only by the handler while a phase
/// runs (Cortex-M0 has no atomic read-modify-write), reset by thread code
/// between phases.
static ISR_TICKS: AtomicU32 = AtomicU32::new(0);
/// Ticks during which the handler takes the node's lock before cancelling.
const ISR_ROUNDS: u32 = 250;

use board::CPU;

/// Polls `f` once with a waker that does nothing: registers a waiter (one
/// section of the node's lock) without blocking.
fn poll_once<F: Future>(f: Pin<&mut F>) -> bool {
    f.poll(&mut TaskContext::from_waker(Waker::noop())).is_ready()
}

fn cause_str(ctx: ContextRef<'_>) -> Option<&'static str> {
    ctx.cause().and_then(|c| c.as_str())
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
    let phase = PHASE.load(Ordering::Acquire);
    if phase == 0 {
        return;
    }
    let n = ISR_TICKS.load(Ordering::Relaxed) + 1;
    ISR_TICKS.store(n, Ordering::Relaxed);
    match (phase, n < ISR_ROUNDS) {
        (1, true) => {
            // Register a waiter on STOP and drop it: two sections of STOP's
            // lock, taken in the handler.
            let mut done = pin!(STOP.done());
            poll_once(done.as_mut());
        }
        (1, false) => {
            PHASE.store(0, Ordering::Release);
            STOP.cancel_with("stopped by SysTick");
        }
        (_, true) => {
            // A scoped child and grandchild of IRQ_ROOT on the handler's
            // stack, with a waiter: link, register, unregister, unlink.
            let child = pin!(ScopedContext::new(IRQ_ROOT.as_ref()));
            let child = child.as_ref().context();
            let grandchild = pin!(ScopedContext::new(child));
            let grandchild = grandchild.as_ref().context();
            let mut done = pin!(grandchild.done());
            poll_once(done.as_mut());
        }
        (_, false) => {
            PHASE.store(0, Ordering::Release);
            IRQ_ROOT.cancel_with("stopped by SysTick");
        }
    }
}

/// Owns a chain TREE → a → b → c pinned in its own future and waits on the
/// grandchild `c`; reports what it saw through `CHAIN_REPLY`.
#[embassy_executor::task]
async fn chain_owner() {
    let a = pin!(ScopedContext::new(TREE.as_ref()));
    let a = a.as_ref().context();
    let b = pin!(ScopedContext::new(a));
    let b = b.as_ref().context();
    let c = pin!(ScopedContext::new(b));
    let c = c.as_ref().context();
    CHAIN_READY.store(true, Ordering::Release);
    let err = c.done().await;
    let verdict = if err != Error::Canceled {
        "c woke with the wrong error"
    } else if cause_str(c) != Some("tree stop") {
        "c did not inherit the root's cause"
    } else if a.err() != Some(Error::Canceled) || b.err() != Some(Error::Canceled) {
        "a or b not cancelled"
    } else if cause_str(a) != Some("tree stop") || cause_str(b) != Some("tree stop") {
        "a or b did not inherit the root's cause"
    } else {
        "ok"
    };
    CHAIN_REPLY.cancel_with(verdict);
}

/// Waits on `STOP` directly (cancelled from the handler, phase 1).
#[embassy_executor::task]
async fn watcher() {
    let err = STOP.done().await;
    let expected = err == Error::Canceled && STOP.cause().and_then(|c| c.as_str()) == Some("stopped by SysTick");
    WATCH_REPLY.cancel_with(if expected { "ok" } else { "watcher saw something else" });
}

/// Waits on a scoped grandchild of `IRQ_ROOT` (cancelled from the handler,
/// phase 2).
#[embassy_executor::task]
async fn irq_waiter() {
    let child = pin!(ScopedContext::new(IRQ_ROOT.as_ref()));
    let child = child.as_ref().context();
    let grandchild = pin!(ScopedContext::new(child));
    let grandchild = grandchild.as_ref().context();
    IRQ_READY.store(true, Ordering::Release);
    let err = grandchild.done().await;
    let verdict = if err != Error::Canceled {
        "grandchild woke with the wrong error"
    } else if cause_str(grandchild) != Some("stopped by SysTick") {
        "grandchild did not inherit the handler's cause"
    } else if child.err() != Some(Error::Canceled) {
        "child not cancelled"
    } else {
        "ok"
    };
    IRQ_REPLY.cancel_with(verdict);
}

/// Static roots: `&'static str` causes, first cancel wins, `done()` of a
/// cancelled root.
async fn static_roots() {
    check!(!STOP.is_done() && STOP.err().is_none() && STOP.cause().is_none());
    OTHER.cancel_with("first");
    OTHER.cancel_with("second");
    check!(OTHER.err() == Some(Error::Canceled));
    check!(OTHER.cause().and_then(|c| c.as_str()) == Some("first"));
    check!(
        OTHER.done().await == Error::Canceled,
        "done() of a cancelled root is ready"
    );
    hprintln!("ok: static root, &'static str causes, first cancel wins");
}

/// Scoped chains: who a cancel reaches, cause inheritance, a chain pinned in
/// another task woken by the root's cancel.
async fn scoped_trees(spawner: Spawner) {
    // A child's cancel reaches its descendants, not its parent or siblings.
    let p = pin!(ScopedContext::new(TREE.as_ref()));
    let p = p.as_ref().context();
    let q = pin!(ScopedContext::new(p));
    let r = pin!(ScopedContext::new(q.as_ref().context()));
    let r = r.as_ref().context();
    let sibling = pin!(ScopedContext::new(p));
    let sibling = sibling.as_ref().context();
    check!(!r.is_done() && r.deadline().is_none());
    q.cancel_with("q stop");
    check!(q.is_done() && r.err() == Some(Error::Canceled));
    check!(cause_str(r) == Some("q stop"), "grandchild inherits its parent's cause");
    check!(r.done().await == Error::Canceled);
    check!(
        !p.is_done() && !sibling.is_done() && !TREE.is_done(),
        "a child's cancel stays below it"
    );
    q.cancel_with("again");
    check!(cause_str(q.as_ref().context()) == Some("q stop"), "first cancel wins");

    // A parent's cancel reaches a grandchild pinned in another task, waking
    // it, and its cause is inherited all the way down.
    spawner.spawn(chain_owner().unwrap());
    while !CHAIN_READY.load(Ordering::Acquire) {
        embassy_time::Timer::after_millis(1).await;
    }
    check!(!CHAIN_REPLY.is_done(), "chain_owner must be waiting");
    TREE.cancel_with("tree stop");
    check!(p.is_done() && sibling.is_done() && cause_str(sibling) == Some("tree stop"));
    check!(CHAIN_REPLY.done().await == Error::Canceled);
    let verdict = CHAIN_REPLY.cause().and_then(|c| c.as_str());
    check!(verdict == Some("ok"), "chain_owner: {:?}", verdict);
    // Born under a cancelled parent: done at once, with the parent's cause.
    let late = pin!(ScopedContext::new(p));
    let late = late.as_ref().context();
    check!(late.is_done() && cause_str(late) == Some("tree stop"));
    hprintln!(
        "ok: ScopedContext chains pinned in embassy tasks: child cancel stays below it, root cancel woke a grandchild in another task, &'static str causes inherited"
    );
}

/// A dropped scoped child unlinks: 1000 children (each with a grandchild and
/// a registered waiter) created and dropped next to a long-lived sibling,
/// then the root cancelled. Had any stayed linked, the cancel would walk
/// dead stack frames (each iteration reuses the same one).
async fn scoped_churn() {
    let keeper = pin!(ScopedContext::new(CHURN.as_ref()));
    let keeper = keeper.as_ref().context();
    let mut keeper_done = pin!(keeper.done());
    check!(!poll_once(keeper_done.as_mut()));
    for i in 0..1000u32 {
        let child = pin!(ScopedContext::new(CHURN.as_ref()));
        let child = child.as_ref().context();
        let grandchild = pin!(ScopedContext::new(child));
        let grandchild = grandchild.as_ref().context();
        let mut done = pin!(grandchild.done());
        check!(!poll_once(done.as_mut()), "round {}", i);
    }
    check!(
        !keeper.is_done() && !CHURN.is_done(),
        "dropping a child cancels only it"
    );
    CHURN.cancel_with("churn over");
    check!(keeper_done.await == Error::Canceled && cause_str(keeper) == Some("churn over"));
    hprintln!("ok: 1000 scoped children (+ grandchild + waiter each) created and dropped, then the root cancelled: they had unlinked");
}

/// Element `i` of a pinned array, pinned.
fn nth<'a, 'p, const N: usize>(all: Pin<&'a [ScopedContext<'p>; N]>, i: usize) -> Pin<&'a ScopedContext<'p>> {
    // SAFETY: an array's elements are structurally pinned: the array is
    // never moved while pinned, so neither is any element.
    unsafe { all.map_unchecked(|a| &a[i]) }
}

/// Waits (by polling embassy-time) until `TICKS` reads `t` or later.
async fn sleep_until(t: Instant) {
    while TICKS.now() < t {
        embassy_time::Timer::after_millis(1).await;
    }
}

/// Deadlines on `TickTimer`, with no heap.
async fn deadlines() {
    check!(TICKS.armed() == 0);

    // A timeout fires on the tick and wakes the task waiting on `done()`.
    let t0 = TICKS.now();
    let s = pin!(ScopedContext::with_timeout(TIMED.as_ref(), Duration::from_millis(5)));
    let t1 = TICKS.now();
    let s = s.as_ref().context();
    let deadline = s.deadline().unwrap_or(Instant::MAX);
    // The tick may move between the two readings around the constructor.
    let five = Duration::from_millis(5);
    check!(
        t0 + five <= deadline && deadline <= t1 + five,
        "{:?} in {:?}..{:?}",
        deadline,
        t0,
        t1
    );
    // Armed when first waited on (the `await` below), not when made.
    check!(TICKS.armed() == 0);
    let fired = TICKS.fired();
    check!(s.done().await == Error::DeadlineExceeded);
    check!(TICKS.fired() == fired + 1, "the SysTick handler fired it");
    check!(TICKS.now() >= deadline && TICKS.armed() == 0);
    check!(s.cause().and_then(|c| c.as_error()) == Some(Error::DeadlineExceeded));
    check!(!TIMED.is_done());
    hprintln!("ok: ScopedContext::with_timeout(5 ms) fired from SysTick by TickTimer, the task awaiting done() woke with DeadlineExceeded");

    // A deadline cause, inherited by a child whose own timeout is later (the
    // earliest deadline on the path wins; only the parent arms).
    let d = pin!(ScopedContext::with_deadline_cause(
        TIMED.as_ref(),
        TICKS.now() + Duration::from_millis(3),
        "sensor too slow"
    ));
    let d = d.as_ref().context();
    let e = pin!(ScopedContext::with_timeout(d, Duration::from_secs(3600)));
    let e = e.as_ref().context();
    check!(e.deadline() == d.deadline() && d.deadline().is_some());
    check!(TICKS.armed() == 0, "armed when waited on: {}", TICKS.armed());
    arm(e);
    check!(TICKS.armed() == 1, "armed: {}", TICKS.armed());
    check!(e.done().await == Error::DeadlineExceeded);
    check!(cause_str(e) == Some("sensor too slow") && cause_str(d) == Some("sensor too slow"));
    check!(TICKS.armed() == 0);
    hprintln!("ok: with_deadline_cause fired on the tick; the child (later timeout) inherited the deadline and the cause \"sensor too slow\"");

    // Cancel and drop both disarm at once.
    {
        let g = pin!(ScopedContext::with_timeout(TIMED.as_ref(), Duration::from_secs(3600)));
        let gc = g.as_ref().context();
        arm(gc);
        check!(TICKS.armed() == 1);
        g.cancel();
        check!(TICKS.armed() == 0, "cancel disarms");
        check!(gc.err() == Some(Error::Canceled));
    }
    for i in 0..1000u32 {
        let h = pin!(ScopedContext::with_timeout(TIMED.as_ref(), Duration::from_secs(3600)));
        arm(h.as_ref().context());
        check!(TICKS.armed() == 1, "round {}", i);
    }
    check!(TICKS.armed() == 0 && TICKS.refused() == 0, "drop disarms");
    hprintln!("ok: cancel disarms; 1000 deadline children dropped before their deadline left no entry armed");
}

/// Arms `c`'s deadline the way a task does: one poll of `done()` (a deadline
/// is armed when first waited on, node invariant 20).
fn arm(c: ContextRef<'_>) {
    use core::future::Future as _;
    let mut cx = core::task::Context::from_waker(core::task::Waker::noop());
    let _ = pin!(c.done()).poll(&mut cx);
}

/// A full timer: one more deadline than `SLOTS`.
async fn timer_full() {
    const N: usize = SLOTS + 1;
    let base = TICKS.now() + Duration::from_millis(5);
    let all = pin!(core::array::from_fn::<_, N, _>(|i| {
        // The last (refused) one is due well after the rest.
        let at = if i == N - 1 { 100 } else { 2 * i as u64 };
        ScopedContext::with_deadline(TIMED.as_ref(), base + Duration::from_millis(at))
    }));
    let all = all.as_ref();
    let fired = TICKS.fired();
    // A first wait arms, in index order: the last one finds every slot
    // taken.
    let ctxs: [ContextRef<'_>; N] = core::array::from_fn(|i| nth(all, i).context());
    for c in ctxs {
        arm(c);
    }
    check!(
        TICKS.armed() == SLOTS && TICKS.refused() == 1,
        "armed {} refused {}",
        TICKS.armed(),
        TICKS.refused()
    );
    check!(ctxs[SLOTS - 1].done().await == Error::DeadlineExceeded);
    check!(TICKS.fired() == fired + SLOTS as u32 && TICKS.armed() == 0);
    check!(ctxs
        .iter()
        .take(SLOTS)
        .all(|c| c.err() == Some(Error::DeadlineExceeded)));
    // The refused one: nothing fires it, but it is exact when observed.
    let last = ctxs[N - 1];
    let at = last.deadline().unwrap_or(Instant::MAX);
    sleep_until(at).await;
    check!(last.is_done() && last.err() == Some(Error::DeadlineExceeded));
    check!(last.done().await == Error::DeadlineExceeded);
    check!(TICKS.fired() == fired + SLOTS as u32, "observed, not fired");
    hprintln!(
        "ok: TickTimer full ({} slots): arm refused deadline #{} without panicking; the {} armed ones fired; the refused one read DeadlineExceeded once the clock passed it",
        SLOTS,
        N,
        SLOTS
    );
}

/// Phase 1: the handler cancels a static root that a task waits on, while
/// it and thread code both register and drop waiters on that node.
async fn irq_static(spawner: Spawner) {
    spawner.spawn(watcher().unwrap());
    embassy_time::Timer::after_millis(3).await;
    check!(!WATCH_REPLY.is_done(), "the watcher must still be waiting");
    let mut rounds = 0u32;
    ISR_TICKS.store(0, Ordering::Relaxed);
    PHASE.store(1, Ordering::Release);
    while !STOP.is_done() {
        let mut done = pin!(STOP.done());
        poll_once(done.as_mut());
        rounds += 1;
    }
    let ticks = ISR_TICKS.load(Ordering::Relaxed);
    check!(ticks == ISR_ROUNDS, "handler ran {} times", ticks);
    check!(rounds > ISR_ROUNDS, "thread rounds: {}", rounds);
    check!(STOP.err() == Some(Error::Canceled));
    check!(WATCH_REPLY.done().await == Error::Canceled);
    let verdict = WATCH_REPLY.cause().and_then(|c| c.as_str());
    check!(verdict == Some("ok"), "watcher: {:?}", verdict);
    hprintln!(
        "ok: SysTick handler registered/dropped {} waiters on a StaticContext while thread code did {} rounds of the same, then cancelled it; the task waiting on done() woke; no deadlock",
        ticks - 1,
        rounds
    );
}

/// Phase 2: the handler cancels a static root while a task waits on a scoped
/// grandchild of it, and while it and thread code both link and unlink
/// scoped children (with waiters) under that root.
async fn irq_scoped(spawner: Spawner) {
    spawner.spawn(irq_waiter().unwrap());
    while !IRQ_READY.load(Ordering::Acquire) {
        embassy_time::Timer::after_millis(1).await;
    }
    check!(!IRQ_REPLY.is_done(), "irq_waiter must be waiting");
    let mut rounds = 0u32;
    ISR_TICKS.store(0, Ordering::Relaxed);
    PHASE.store(2, Ordering::Release);
    while !IRQ_ROOT.is_done() {
        let child = pin!(ScopedContext::new(IRQ_ROOT.as_ref()));
        let child = child.as_ref().context();
        let grandchild = pin!(ScopedContext::new(child));
        let grandchild = grandchild.as_ref().context();
        let mut done = pin!(grandchild.done());
        poll_once(done.as_mut());
        rounds += 1;
    }
    let ticks = ISR_TICKS.load(Ordering::Relaxed);
    check!(ticks == ISR_ROUNDS, "handler ran {} times", ticks);
    check!(rounds > ISR_ROUNDS, "thread rounds: {}", rounds);
    check!(IRQ_REPLY.done().await == Error::Canceled);
    let verdict = IRQ_REPLY.cause().and_then(|c| c.as_str());
    check!(verdict == Some("ok"), "irq_waiter: {:?}", verdict);
    hprintln!(
        "ok: SysTick handler linked/unlinked {} scoped child+grandchild pairs under a StaticContext while thread code did {} rounds of the same, then cancelled it; the task waiting on a ScopedContext grandchild's done() woke with the handler's cause; no deadlock",
        ticks - 1,
        rounds
    );
}

#[embassy_executor::task]
async fn tests(spawner: Spawner) {
    hprintln!("ctxcore heap-free firmware on {} (no allocator linked)", CPU);
    static_roots().await;
    scoped_trees(spawner).await;
    scoped_churn().await;
    deadlines().await;
    timer_full().await;
    irq_static(spawner).await;
    irq_scoped(spawner).await;
    check!(TICKS.armed() == 0);
    hprintln!(
        "size on {}: ScopedContext {} B, StaticContext {} B, ContextRef {} B, done() future {} B, TickTimer ({} slots) {} B; no heap anywhere",
        CPU,
        core::mem::size_of::<ScopedContext<'static>>(),
        core::mem::size_of::<StaticContext>(),
        core::mem::size_of::<ContextRef<'static>>(),
        core::mem::size_of::<Done<'static>>(),
        SLOTS,
        core::mem::size_of::<TickTimer>()
    );
    hprintln!("PASS: all heap-free firmware checks");
    board::exit(true);
}

static EXECUTOR: StaticCell<Executor> = StaticCell::new();

#[cfg_attr(target_arch = "arm", cortex_m_rt::entry)]
#[cfg_attr(target_arch = "riscv32", riscv_rt::entry)]
fn main() -> ! {
    board::init();
    EXECUTOR
        .init(Executor::new())
        .run(|spawner| spawner.spawn(tests(spawner).unwrap()))
}
