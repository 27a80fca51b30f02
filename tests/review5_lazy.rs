//! Review 5: lazy arming (invariant 20) under attack.

use ctxcore::{Context, Error, ManualClock};
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Poll, Wake, Waker};
use std::time::Duration;

const SEC: Duration = Duration::from_secs(1);

mod common;
use common::{counting, poll, Lazy};

/// D1: an `any` over parents on different timers arms only its
/// `deadline_parent`'s owner (the minimum of instants read on different
/// clocks). The other parent's deadline is never armed, so its timer
/// never fires it and a waiter on the `any` node is never woken.
#[test]
fn any_over_two_timers_wakes_on_the_other_timers_deadline() {
    static A: ManualClock = ManualClock::new();
    // B's epoch is far later: its instants compare larger.
    static B: ManualClock = ManualClock::starting_at(ctxcore::Instant::from_nanos(1_000_000_000_000));
    let (a, _ha) = Context::with_timer(&A).with_timeout(10 * SEC);
    let (b, _hb) = Context::with_timer(&B).with_timeout(5 * SEC);
    let any = Context::any([&a, &b]);
    let (count, w) = counting();
    let mut d = pin!(any.done());
    assert!(poll(d.as_mut(), &w).is_pending());
    B.advance(5 * SEC);
    // B's timer had an entry before lazy arming: its advance fired it,
    // which cancelled `any` and woke us.
    assert_eq!(
        count.0.load(Ordering::SeqCst),
        1,
        "waiter on any(a, b) not woken by b's deadline (B.armed() = {})",
        B.armed()
    );
    assert_eq!(b.err(), Some(Error::DeadlineExceeded));
}

/// D1 through a descendant: a child of the `any` node.
#[test]
fn child_of_any_over_two_timers_wakes_on_the_other_timers_deadline() {
    static A: ManualClock = ManualClock::new();
    static B: ManualClock = ManualClock::starting_at(ctxcore::Instant::from_nanos(1_000_000_000_000));
    let (a, _ha) = Context::with_timer(&A).with_timeout(10 * SEC);
    let (b, _hb) = Context::with_timer(&B).with_timeout(5 * SEC);
    let any = Context::any([&a, &b]);
    let (child, _hc) = any.with_cancel();
    let (count, w) = counting();
    let mut d = pin!(child.done());
    assert!(poll(d.as_mut(), &w).is_pending());
    B.advance(5 * SEC);
    assert_eq!(
        count.0.load(Ordering::SeqCst),
        1,
        "waiter on a child of any(a, b) not woken"
    );
}

/// D1 through an after-func on the `any` node.
#[test]
fn after_func_on_any_over_two_timers_runs_on_the_other_timers_deadline() {
    static A: ManualClock = ManualClock::new();
    static B: ManualClock = ManualClock::starting_at(ctxcore::Instant::from_nanos(1_000_000_000_000));
    let (a, _ha) = Context::with_timer(&A).with_timeout(10 * SEC);
    let (b, _hb) = Context::with_timer(&B).with_timeout(5 * SEC);
    let any = Context::any([&a, &b]);
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    let _af = any.after_func(move || {
        r.fetch_add(1, Ordering::SeqCst);
    });
    B.advance(5 * SEC);
    assert_eq!(
        ran.load(Ordering::SeqCst),
        1,
        "after-func on any(a, b) did not run at b's deadline"
    );
}

/// D2: a deadline owner whose last reference went while a kid still holds
/// it (an orphan, invariant 16: its handle detached, its context dropped)
/// is live, and its deadline is the only thing that can end the kid. Its
/// timer entry's `claim` takes "refs == 0" for "being freed" and drops the
/// entry unfired: a waiter on the kid is never woken.
#[test]
fn orphaned_deadline_owner_still_wakes_its_kids_waiter() {
    static CLOCK: ManualClock = ManualClock::new();
    let root = Context::with_timer(&CLOCK);
    let (p, hp) = root.with_timeout(10 * SEC);
    hp.detach();
    let (c, _hc) = p.with_cancel();
    drop(p);
    let (count, w) = counting();
    let mut d = pin!(c.done());
    assert!(poll(d.as_mut(), &w).is_pending());
    assert_eq!(CLOCK.armed(), 1);
    CLOCK.advance(10 * SEC);
    assert_eq!(CLOCK.armed(), 0);
    assert_eq!(
        count.0.load(Ordering::SeqCst),
        1,
        "waiter on the orphan's kid not woken by its deadline"
    );
    assert_eq!(c.err(), Some(Error::DeadlineExceeded));
}

/// D2 with the std timer and a blocking wait: hangs without the fix.
#[test]
#[cfg_attr(miri, ignore)]
fn orphaned_deadline_owner_wakes_wait_blocking_std_timer() {
    let (p, hp) = Context::background().with_timeout(Duration::from_millis(50));
    hp.detach();
    let (c, _hc) = p.with_cancel();
    drop(p);
    let (tx, rx) = std::sync::mpsc::channel();
    let t = std::thread::spawn(move || {
        let e = c.wait_blocking();
        let _ = tx.send(e);
    });
    let got = rx.recv_timeout(Duration::from_secs(3));
    assert_eq!(
        got,
        Ok(Error::DeadlineExceeded),
        "wait_blocking on an orphan's kid not woken"
    );
    t.join().unwrap();
}

/// Parks until woken; `false` if not woken within `limit` (a lost wake-up).
fn block_on_for<F: std::future::Future>(f: F, limit: Duration) -> Option<F::Output> {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let w = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut f = pin!(f);
    let start = std::time::Instant::now();
    loop {
        if let Poll::Ready(v) = poll(f.as_mut(), &w) {
            return Some(v);
        }
        let left = limit.checked_sub(start.elapsed())?;
        std::thread::park_timeout(left);
    }
}

fn wait_std_armed_zero() -> usize {
    let t = ctxcore::StdTimer::global();
    let start = std::time::Instant::now();
    while t.armed() != 0 && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(5));
    }
    t.armed()
}

/// A waiter on a grandchild registers while the deadline passes (std
/// timer, real time) and while another thread cancels or drops the owner's
/// handle; every waiter is woken, and nothing stays armed.
#[test]
#[cfg_attr(miri, ignore)]
fn grandchild_waiters_race_deadline_and_cancel_std_timer() {
    let threads: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                for i in 0..400u64 {
                    let us = (i * 7 + t * 13) % 300;
                    let (p, hp) = Context::background().with_timeout(Duration::from_micros(us));
                    let (c, hc) = p.with_cancel();
                    let (g, _hg) = c.with_timeout(Duration::from_secs(60));
                    let canceller = if i % 3 == 0 {
                        Some(std::thread::spawn(move || {
                            std::thread::yield_now();
                            drop(hp);
                        }))
                    } else {
                        std::mem::forget(hp);
                        None
                    };
                    if i % 5 == 0 {
                        drop(hc);
                    } else {
                        std::mem::forget(hc);
                    }
                    // A first waiter that gives up, then a second one.
                    {
                        let (_n, w) = counting();
                        let mut d = pin!(g.done());
                        let _ = poll(d.as_mut(), &w);
                    }
                    let r = block_on_for(g.done(), Duration::from_secs(5));
                    assert!(r.is_some(), "lost wake-up: thread {t} iteration {i}");
                    assert!(g.is_done());
                    if let Some(h) = canceller {
                        h.join().unwrap();
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

static STD: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Entries armed on the std timer (tailed heap nodes, scoped nodes, `all`
/// links) are all gone once the contexts are dropped, whichever way they
/// ended: cancelled by a read after the deadline (`cancel_observed`, a
/// `&self` path that leaves a tailed entry armed), by a handle, by an
/// ancestor, or dropped live.
#[test]
#[cfg_attr(miri, ignore)]
fn std_timer_entries_all_released() {
    let _g = STD.lock().unwrap_or_else(|e| e.into_inner());
    let far = Duration::from_secs(3600);
    let (count, w) = counting();
    for i in 0..50u32 {
        // Waited, then dropped live.
        let (a, ha) = Context::background().with_timeout(far);
        let mut d = pin!(a.done());
        let _ = poll(d.as_mut(), &w);
        // Waited, cancelled by an ancestor (phase 1, full pointer).
        let (b, hb) = a.with_timeout(far / 2);
        let mut db = pin!(b.done());
        let _ = poll(db.as_mut(), &w);
        // Waited through an all node, parents on the same timer.
        let (c, _hc) = Context::background().with_timeout(far);
        let all = Context::all([&a, &c]);
        let mut dall = pin!(all.done());
        let _ = poll(dall.as_mut(), &w);
        // Passed deadline observed by a read after it was armed.
        let (e, he) = Context::background().with_timeout(Duration::from_millis(1));
        let mut de = pin!(e.done());
        let _ = poll(de.as_mut(), &w);
        if i % 2 == 0 {
            std::thread::sleep(Duration::from_millis(1));
            assert_eq!(e.err(), Some(Error::DeadlineExceeded));
        }
        // Scoped, std timer, armed by a child's waiter.
        {
            let s = pin!(ctxcore::ScopedContext::with_timeout(a.as_ref(), far / 4));
            let sc = pin!(ctxcore::ScopedContext::new(s.as_ref().context()));
            let r = sc.as_ref().context();
            let mut ds = pin!(r.done());
            let _ = poll(ds.as_mut(), &w);
        }
        if i % 3 == 0 {
            ha.cancel();
        }
        drop(hb);
        drop(he);
        let _ = (d, db, dall, de);
    }
    drop(count);
    assert_eq!(wait_std_armed_zero(), 0, "std timer entries left armed");
}

/// D3: property 5 and `deadline_won` disagree for an *armed* owner: a
/// handle's cancel after the clock passed the deadline reports `Canceled`
/// whenever the std timer has not fired yet, while the same cancel of an
/// owner nobody waited on reports `DeadlineExceeded`. Whether a waiter
/// exists decides the error of a sequential program.
#[test]
#[cfg_attr(miri, ignore)]
fn armed_owner_cancelled_after_its_deadline_reports_deadline_exceeded() {
    let _g = STD.lock().unwrap_or_else(|e| e.into_inner());
    let t = ctxcore::StdTimer::global();
    let (cw, w) = counting();
    let mut canceled = 0;
    for _ in 0..200 {
        let (ctx, h) = Context::background().with_timeout(Duration::from_micros(300));
        let mut d = pin!(ctx.done());
        let _ = poll(d.as_mut(), &w);
        let dl = ctx.deadline().unwrap();
        while ctxcore::time::Clock::now(t) < dl {
            std::hint::spin_loop();
        }
        // The clock has passed the deadline: property 5 says it is exceeded.
        h.cancel();
        if ctx.err() == Some(Error::Canceled) {
            canceled += 1;
        }
    }
    drop(cw);
    assert_eq!(
        canceled, 0,
        "{canceled}/200 armed owners cancelled after their deadline report Canceled"
    );
}

/// D5 (not from lazy arming): a read of an `any` node over parents on
/// different timers consults its `deadline_parent`'s clock only, so it
/// reports live after another parent's deadline passed on that parent's
/// clock, while that parent itself reads done (property 5).
#[test]
fn any_over_two_timers_read_is_exact() {
    static A: ManualClock = ManualClock::new();
    static L: Lazy = Lazy::at(1_000_000_000_000);
    let (a, _ha) = Context::with_timer(&A).with_timeout(10 * SEC);
    let (b, _hb) = Context::with_timer(&L).with_timeout(5 * SEC);
    let any = Context::any([&a, &b]);
    L.0.fetch_add(5_000_000_000, Ordering::SeqCst);
    assert_eq!(
        any.err(),
        Some(Error::DeadlineExceeded),
        "any(a, b) live after b's deadline passed"
    );
    assert_eq!(b.err(), Some(Error::DeadlineExceeded));
}

/// D5, the fix's edges: every read (`is_done`, `err`, `cause`,
/// `cancelled_at`) of the `any` node fires the passed parent, whichever
/// position it has; the node then is done by that parent's cancellation
/// (not merely reported so), and a child made afterwards is born done.
#[test]
fn any_over_two_timers_every_read_fires_the_passed_parent() {
    static A: ManualClock = ManualClock::new();
    static L: Lazy = Lazy::at(2_000_000_000_000);
    for first_is_lazy in [false, true] {
        let (a, _ha) = Context::with_timer(&A).with_timeout(10 * SEC);
        let (b, _hb) = Context::with_timer(&L).with_timeout(5 * SEC);
        let any = if first_is_lazy {
            Context::any([&b, &a])
        } else {
            Context::any([&a, &b])
        };
        let (child, _hc) = any.with_cancel();
        assert!(!any.is_done(), "live before either deadline");
        assert_eq!(any.err(), None);
        L.0.fetch_add(5 * 1_000_000_000, Ordering::SeqCst);
        assert!(any.is_done(), "is_done reads b's clock ({first_is_lazy})");
        // Fired by the read: b itself is done with its deadline, and the
        // cancellation reached the `any` node and its child.
        assert_eq!(b.err(), Some(Error::DeadlineExceeded));
        assert_eq!(any.err(), Some(Error::DeadlineExceeded));
        assert!(any.cause().is_some());
        assert_eq!(any.cancelled_at(), b.cancelled_at());
        assert_eq!(child.err(), Some(Error::DeadlineExceeded));
        assert_eq!(a.err(), None, "a's clock did not move");
        let (late, _hl) = any.with_cancel();
        assert_eq!(late.err(), Some(Error::DeadlineExceeded));
    }
}

/// D5: an `any` node whose parents share one timer keeps the one-clock
/// read (no `POLLS`): a cancel of the later parent still reaches it.
#[test]
fn any_over_one_timer_still_reads_its_earliest_deadline() {
    static A: ManualClock = ManualClock::new();
    let (a, _ha) = Context::with_timer(&A).with_timeout(10 * SEC);
    let (b, hb) = Context::with_timer(&A).with_timeout(5 * SEC);
    let any = Context::any([&a, &b]);
    assert_eq!(any.deadline(), b.deadline());
    hb.cancel();
    assert_eq!(any.err(), Some(Error::Canceled));
    assert_eq!(a.err(), None);
}
