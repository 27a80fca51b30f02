//! Review 4: the std timer's wheel, its intrusive node tails (invariant 20)
//! and its sleep protocol, attacked from the public API. Own test binary:
//! `StdTimer::global().armed()` sees only these deadlines.
//!
//! The `miri_*` tests are the ones that matter under Miri (`cargo +nightly
//! miri test --test review4_timer miri_`); the others need real time.

use ctxcore::{Context, Error, Instant, ManualClock, StdTimer};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskCx, Wake, Waker};
use std::time::Duration;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Polls `ctx.done()` once with `waker`, leaving it registered.
fn register(ctx: &Context, waker: &Waker) {
    let mut fut = Box::pin(ctx.done_owned());
    let mut cx = TaskCx::from_waker(waker);
    assert!(Pin::new(&mut fut).poll(&mut cx).is_pending());
    // Keep it registered: the owned future unregisters when dropped.
    std::mem::forget(fut);
}

/// Arms `ctx`'s deadline: one poll of `done()` (deadlines are armed when
/// first waited on, node/mod.rs invariant 20; the entry stays armed after
/// the future goes).
fn arm(ctx: &Context) {
    let mut fut = std::pin::pin!(ctx.done());
    let mut cx = TaskCx::from_waker(Waker::noop());
    // Ready if the deadline passed meanwhile: nothing armed, nothing owed.
    let _ = fut.as_mut().poll(&mut cx);
}

/// Waits (bounded) until the global timer holds `n` entries.
fn armed_becomes(n: usize) -> usize {
    let start = std::time::Instant::now();
    loop {
        let a = StdTimer::global().armed();
        if a == n || start.elapsed() > Duration::from_secs(5) {
            return a;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

// ---------------------------------------------------------------- Miri ---

/// A heap deadline node on any timer is a `TimedNode`: allocated and freed
/// as one. Stacked Borrows: the node pointer must keep the provenance of
/// the whole allocation (it was narrowed to the `node` field by
/// `NonNull::from(&mut timed.node)`, so `free_node`'s `Box::from_raw` of
/// the `TimedNode` retagged bytes outside it: UB).
#[test]
fn miri_timed_node_alloc_and_free() {
    static CLOCK: ManualClock = ManualClock::new();
    let root = Context::with_timer(&CLOCK);
    let (ctx, h) = root.with_timeout(Duration::from_secs(10));
    assert!(!ctx.is_done());
    drop((ctx, h));
    let (ctx, _h) = root.with_timeout(Duration::from_secs(1));
    CLOCK.advance(Duration::from_secs(1));
    assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
}

/// A std deadline cancelled by its handle: `after_done` disarms through a
/// `TimerEntry` made from `&Node`, and the std timer reaches the wheel
/// tail through it (Stacked Borrows: outside the reference's range).
#[test]
fn miri_std_deadline_cancelled_disarms_its_tail() {
    let _s = serial();
    let (ctx, h) = Context::background().with_timeout(Duration::from_secs(3600));
    let (ctx2, h2) = Context::background().with_timeout(Duration::from_secs(3601));
    h.cancel();
    assert_eq!(ctx.err(), Some(Error::Canceled));
    drop((ctx, h));
    drop((ctx2, h2));
}

/// A std deadline that fires: claimed from the wheel (`from_wheel_slot`),
/// fired on the timer thread, then disarmed and freed.
#[test]
fn miri_std_deadline_fires() {
    let _s = serial();
    let (ctx, _h) = Context::background().with_timeout(Duration::from_millis(2));
    assert_eq!(ctx.wait_blocking(), Error::DeadlineExceeded);
}

/// Born done (parent already cancelled), deadline already passed, deadline
/// at `Instant::ZERO`: never armed or armed-and-fired at once; freed safely.
#[test]
fn miri_born_done_and_past_deadlines() {
    let _s = serial();
    let (parent, ph) = Context::background().with_cancel();
    ph.cancel();
    let (a, _ha) = parent.with_timeout(Duration::from_secs(5));
    assert!(a.is_done());
    let (b, _hb) = Context::background().with_deadline(Instant::ZERO);
    assert_eq!(b.err(), Some(Error::DeadlineExceeded));
    let (c, _hc) = Context::background().with_timeout(Duration::ZERO);
    assert_eq!(c.err(), Some(Error::DeadlineExceeded));
    drop((a, b, c, parent));
}

// ------------------------------------------------------------ real time ---

/// Deadlines 1-200 ms out, armed from 8 threads: each wakes its waiter
/// within a few ms of its deadline on an otherwise idle machine.
#[test]
#[cfg_attr(miri, ignore)]
fn wakes_on_time_across_threads() {
    let _s = serial();
    let worst = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let worst = worst.clone();
            std::thread::spawn(move || {
                let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ (t + 1).wrapping_mul(0xD1B5_4A32_D192_ED03);
                let mut rnd = move || {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed
                };
                let mut pairs = Vec::new();
                for _ in 0..40 {
                    let ms = 1 + rnd() % 200;
                    let us = rnd() % 1000;
                    let timeout = Duration::from_millis(ms) + Duration::from_micros(us);
                    pairs.push(Context::background().with_timeout(timeout));
                }
                // Waits in deadline order, measuring how late each wakes.
                pairs.sort_by_key(|(c, _)| c.deadline());
                let mut late = Vec::new();
                for (ctx, _h) in &pairs {
                    assert_eq!(ctx.wait_blocking(), Error::DeadlineExceeded);
                    let now = Instant::now();
                    late.push(now - ctx.deadline().unwrap());
                }
                worst.lock().unwrap().extend(late);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let mut late = worst.lock().unwrap().clone();
    late.sort();
    let max = *late.last().unwrap();
    let p99 = late[late.len() * 99 / 100];
    // Generous: a wake-up goes through a condvar and the scheduler.
    assert!(p99 < Duration::from_millis(5), "p99 late {p99:?}, max {max:?}");
    assert!(max < Duration::from_millis(20), "max late {max:?}");
}

/// An entry far beyond the wheel's span (2^36 ticks, ~2.2 years) and one at
/// `Instant::MAX - 1` share the wheel with short ones, which still fire on
/// time; all of them leave the timer when dropped.
#[test]
#[cfg_attr(miri, ignore)]
fn far_deadlines_do_not_delay_near_ones() {
    let _s = serial();
    let base = armed_becomes(0);
    assert_eq!(base, 0);
    let far: Vec<_> = (0..64)
        .map(|i| match i % 4 {
            0 => Context::background().with_deadline(Instant::from_nanos(u64::MAX - 1)),
            1 => Context::background().with_timeout(Duration::from_secs(3 * 365 * 86_400)),
            2 => Context::background().with_timeout(Duration::from_secs(100 * 365 * 86_400)),
            _ => Context::background().with_timeout(Duration::from_secs(3600)),
        })
        .collect();
    // Let the thread process the wheel with only far entries in it.
    std::thread::sleep(Duration::from_millis(30));
    for round in 0..3 {
        let mut near: Vec<_> = (0..64u64)
            .map(|i| Context::background().with_timeout(Duration::from_millis(5 + i % 7)))
            .collect();
        near.sort_by_key(|(c, _)| c.deadline());
        for (ctx, _h) in &near {
            assert_eq!(ctx.wait_blocking(), Error::DeadlineExceeded);
            let late = Instant::now() - ctx.deadline().unwrap();
            assert!(late < Duration::from_millis(20), "round {round}: late {late:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(far.iter().all(|(c, _)| !c.is_done()));
    drop(far);
    assert_eq!(armed_becomes(0), 0);
}

/// 100k armed deadlines from 4 threads, cancelled or dropped: `armed()`
/// counts them exactly and returns to 0; then 200k create/drop cycles leave
/// nothing behind.
#[test]
#[cfg_attr(miri, ignore)]
fn armed_is_exact_for_100k_entries() {
    let _s = serial();
    assert_eq!(armed_becomes(0), 0);
    let held: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(|| {
                (0..25_000u64)
                    .map(|i| {
                        let pair = Context::background().with_timeout(Duration::from_secs(600 + i));
                        arm(&pair.0);
                        pair
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let held: Vec<_> = held.into_iter().flat_map(|t| t.join().unwrap()).collect();
    assert_eq!(StdTimer::global().armed(), 100_000);
    for (i, (_c, h)) in held.iter().enumerate() {
        if i % 2 == 0 {
            h.cancel();
        }
    }
    assert_eq!(StdTimer::global().armed(), 50_000);
    drop(held);
    assert_eq!(StdTimer::global().armed(), 0);
    let workers: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(|| {
                for i in 0..50_000u64 {
                    let (c, h) = Context::background().with_timeout(Duration::from_micros(50 + i % 3000));
                    if i % 2 == 0 {
                        arm(&c);
                    }
                    if i % 3 == 0 {
                        h.cancel();
                    }
                    drop((c, h));
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    assert_eq!(armed_becomes(0), 0);
}

struct PanicWaker;
impl Wake for PanicWaker {
    fn wake(self: Arc<Self>) {
        panic!("waker panics on the timer thread");
    }
}

/// A waker that panics on the timer thread does not stop it: the next
/// deadlines still fire.
#[test]
#[cfg_attr(miri, ignore)]
fn panicking_waker_does_not_kill_the_timer() {
    let _s = serial();
    let (ctx, _h) = Context::background().with_timeout(Duration::from_millis(2));
    register(&ctx, &Waker::from(Arc::new(PanicWaker)));
    // Not observed by a read here (a read that notices the deadline cancels
    // on this thread and runs the waker here): the timer thread fires it.
    std::thread::sleep(Duration::from_millis(50));
    for _ in 0..3 {
        let (c, _h) = Context::background().with_timeout(Duration::from_millis(3));
        assert_eq!(
            c.wait_blocking_timeout(Duration::from_secs(2)),
            Some(Error::DeadlineExceeded)
        );
    }
}

/// A waker that, on the timer thread, creates deadline contexts (some due at
/// once, some soon, some far) and drops others: no lock of the timer is held
/// while it runs, and what it creates fires.
struct Reentrant {
    made: Mutex<Vec<(Context, ctxcore::CancelHandle)>>,
    hits: AtomicUsize,
}
impl Wake for Reentrant {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref()
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.hits.fetch_add(1, Ordering::SeqCst);
        let mut made = self.made.lock().unwrap();
        made.clear(); // drops (disarms) earlier ones on this thread
        for i in 0..32u64 {
            made.push(Context::background().with_timeout(Duration::from_micros(i * 100)));
        }
        made.push(Context::background().with_timeout(Duration::from_secs(3600)));
    }
}

#[test]
#[cfg_attr(miri, ignore)]
fn reentrant_waker_arms_and_drops_on_the_timer_thread() {
    let _s = serial();
    let w = Arc::new(Reentrant {
        made: Mutex::new(Vec::new()),
        hits: AtomicUsize::new(0),
    });
    let mut ctxs = Vec::new();
    for i in 0..16u64 {
        let (ctx, h) = Context::background().with_timeout(Duration::from_millis(1 + i));
        register(&ctx, &Waker::from(w.clone()));
        ctxs.push((ctx, h));
    }
    for (c, _) in &ctxs {
        assert_eq!(
            c.wait_blocking_timeout(Duration::from_secs(5)),
            Some(Error::DeadlineExceeded)
        );
    }
    // The waker ran on the timer thread for each; its short children fire.
    let start = std::time::Instant::now();
    while w.hits.load(Ordering::SeqCst) < 16 && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(w.hits.load(Ordering::SeqCst), 16);
    std::thread::sleep(Duration::from_millis(20));
    let made = std::mem::take(&mut *w.made.lock().unwrap());
    assert_eq!(made.iter().filter(|(c, _)| c.is_done()).count(), 32);
    drop(made);
    drop(ctxs);
    assert_eq!(armed_becomes(0), 0);
}

/// An after-func (handed to its own thread) that arms a new deadline, in a
/// chain of 20: every link fires.
#[test]
#[cfg_attr(miri, ignore)]
fn after_func_chain_arms_new_deadlines() {
    let _s = serial();
    let (tx, rx) = std::sync::mpsc::channel::<usize>();
    fn link(n: usize, tx: std::sync::mpsc::Sender<usize>) {
        let (ctx, h) = Context::background().with_timeout(Duration::from_millis(1));
        let c2 = ctx.clone();
        ctx.after_func(move || {
            let _keep = (&c2, &h);
            tx.send(n).unwrap();
            if n < 20 {
                link(n + 1, tx);
            }
        });
        std::mem::forget(ctx);
    }
    link(1, tx);
    let mut got = 0;
    while let Ok(n) = rx.recv_timeout(Duration::from_secs(2)) {
        got = n;
        if n == 20 {
            break;
        }
    }
    assert_eq!(got, 20);
}

/// Idle exit and restart: after the thread's idle timeout (2 s) with
/// nothing armed, a new deadline (armed right around the exit, from many
/// threads) still fires.
#[test]
#[cfg_attr(miri, ignore)]
fn deadline_armed_around_idle_exit_fires() {
    let _s = serial();
    assert_eq!(armed_becomes(0), 0);
    for delay_ms in [1990u64, 2000, 2005, 2010, 2100] {
        // Let the thread go idle: nothing armed since now.
        let (c, _h) = Context::background().with_timeout(Duration::from_millis(1));
        c.wait_blocking();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let ts: Vec<_> = (0..4)
            .map(|i| {
                std::thread::spawn(move || {
                    let (c, _h) = Context::background().with_timeout(Duration::from_millis(2 + i));
                    c.wait_blocking_timeout(Duration::from_secs(1))
                })
            })
            .collect();
        for t in ts {
            assert_eq!(t.join().unwrap(), Some(Error::DeadlineExceeded), "delay {delay_ms}");
        }
    }
}

/// An earlier deadline armed while the thread sleeps towards a later one
/// wakes it (S1), repeatedly, from other threads.
#[test]
#[cfg_attr(miri, ignore)]
fn earlier_deadline_wakes_a_sleeping_thread() {
    let _s = serial();
    for _ in 0..50 {
        let (far, _hf) = Context::background().with_timeout(Duration::from_millis(500));
        std::thread::sleep(Duration::from_millis(2));
        let t0 = std::time::Instant::now();
        let (near, _hn) = std::thread::spawn(|| Context::background().with_timeout(Duration::from_millis(3)))
            .join()
            .unwrap();
        assert_eq!(near.wait_blocking(), Error::DeadlineExceeded);
        let took = t0.elapsed();
        assert!(took < Duration::from_millis(30), "took {took:?}");
        drop(far);
    }
}
