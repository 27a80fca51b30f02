//! Review 6: the immortal-node cache (`IMMORTAL_CACHE`, bits 28-31 of a done
//! parent's `state`, invariant 15) under attack: parents whose timer, cause,
//! deadline or inherited done state must keep their children off the
//! immortal nodes; `all` nodes; freed parents whose memory is reused by a
//! parent cancelled elsewhere (a stale cache would name the old location);
//! static roots on another timer; concurrent first children while other
//! writers of the parent's `state` run; leaked children.

use core::time::Duration;
use ctxcore::time::Clock;
use ctxcore::{Context, Error, Instant, ManualClock, StaticContext};
use std::sync::{Arc, Barrier};

/// Asserts that `child` is done exactly as `parent` is, and runs on the
/// same clock.
#[track_caller]
fn same_as(child: &Context, parent: &Context) {
    assert!(child.is_done());
    assert_eq!(child.err(), parent.err());
    assert_eq!(
        child.cause().map(|c| c.to_string()),
        parent.cause().map(|c| c.to_string())
    );
    assert_eq!(child.cancelled_at(), parent.cancelled_at());
    assert_eq!(child.deadline(), parent.deadline());
}

/// Attack: a parent on a non-default timer must not hand its children the
/// immortal node (whose timer is the default): every child, and the
/// grandchildren and deadline children below it, read the parent's clock.
#[test]
fn children_of_a_cancelled_parent_on_another_timer_keep_its_clock() {
    static CLOCK: ManualClock = ManualClock::new();
    CLOCK.set(Instant::from_nanos(7_000_000_000));
    let (p, h) = Context::with_timer(&CLOCK).with_cancel();
    h.cancel();
    for _ in 0..3 {
        let (c, _) = p.with_cancel();
        same_as(&c, &p);
        assert_eq!(
            c.now(),
            CLOCK.now(),
            "a child of a ManualClock parent reads another clock"
        );
        let (g, _) = c.with_cancel();
        assert_eq!(g.now(), CLOCK.now());
        let (d, _) = g.with_timeout(Duration::from_secs(1));
        assert_eq!(d.deadline(), Some(CLOCK.now() + Duration::from_secs(1)));
    }
}

/// The same for a static root on a `ManualClock`, cancelled (its node is
/// a `static`, never freed; children share it).
#[test]
fn children_of_a_cancelled_static_root_on_another_timer_keep_its_clock() {
    static CLOCK: ManualClock = ManualClock::new();
    static ROOT: StaticContext = StaticContext::with_timer(&CLOCK);
    CLOCK.set(Instant::from_nanos(3_000_000_000));
    let root = ROOT.context();
    ROOT.cancel();
    for _ in 0..3 {
        let (c, _) = root.with_cancel();
        same_as(&c, &root);
        assert_eq!(c.now(), CLOCK.now());
        let (g, _) = c.with_cancel();
        assert_eq!(g.now(), CLOCK.now());
    }
}

/// A plain static root (default timer) cancelled: its children get (and
/// cache) an immortal node with the static's cancel site, many times over
/// (the static is never reset: its cache stays right).
#[test]
fn children_of_a_cancelled_default_static_root() {
    static ROOT: StaticContext = StaticContext::new();
    let root = ROOT.context();
    let line = line!() + 1;
    ROOT.cancel();
    for _ in 0..5 {
        let (c, _) = root.with_cancel();
        same_as(&c, &root);
        assert_eq!(c.cancelled_at().unwrap().line(), line);
    }
    // A second cancel, with a cause, at another site: loses (done is final),
    // and the cached children still report the first.
    ROOT.cancel_with("late");
    let (c, _) = root.with_cancel();
    assert_eq!(c.cancelled_at().unwrap().line(), line);
    assert_eq!(c.cause().unwrap().as_error(), Some(Error::Canceled));
}

/// Attack: a parent done by inheritance (no cancel of its own). With its
/// grandparent's cause, it holds a copy of the cause: no immortal node;
/// without, it is plainly cancelled at the grandparent's site: children
/// report that site.
#[test]
fn parents_done_by_inheritance() {
    let (gp, hg) = Context::background().with_cancel();
    let (p, _hp) = gp.with_cancel();
    let (p2, _hp2) = p.with_cancel();
    hg.cancel_with("why");
    for _ in 0..3 {
        let (c, _) = p2.with_cancel();
        same_as(&c, &gp);
        assert_eq!(c.cause().unwrap().as_str(), Some("why"));
    }
    let (gp, hg) = Context::background().with_cancel();
    let (p, _hp) = gp.with_cancel();
    let (p2, _hp2) = p.with_cancel();
    let line = line!() + 1;
    hg.cancel();
    for _ in 0..3 {
        for q in [&p, &p2] {
            let (c, _) = q.with_cancel();
            same_as(&c, &gp);
            assert_eq!(c.cancelled_at().unwrap().line(), line);
        }
    }
}

/// Attack: a `CAUSE_UP` parent (it keeps its own deadline cause, reports
/// its grandparent's): its children report the grandparent's error, cause
/// and location, and its deadline.
#[test]
fn children_of_a_cause_up_parent() {
    let (gp, hg) = Context::background().with_cancel();
    let (p, _hp) = gp.with_timeout_cause(Duration::from_secs(3600), "own deadline");
    let line = line!() + 1;
    hg.cancel();
    assert_eq!(p.err(), Some(Error::Canceled));
    for _ in 0..3 {
        let (c, _) = p.with_cancel();
        same_as(&c, &p);
        assert_eq!(c.cancelled_at().unwrap().line(), line);
        assert_eq!(c.cause().unwrap().as_error(), Some(Error::Canceled));
    }
    // The same with a cause above.
    let (gp, hg) = Context::background().with_cancel();
    let (p, _hp) = gp.with_timeout_cause(Duration::from_secs(3600), "own deadline");
    hg.cancel_with("above");
    for _ in 0..3 {
        let (c, _) = p.with_cancel();
        same_as(&c, &p);
        assert_eq!(c.cause().unwrap().as_str(), Some("above"));
    }
}

/// Attack: an `all` node done by its last parent: its children report the
/// last parent's error, cause and location, whatever the earlier ones had.
#[test]
fn children_of_an_all_node() {
    let (a, ha) = Context::background().with_cancel();
    let (b, hb) = Context::background().with_cancel();
    let all = Context::all([&a, &b]);
    ha.cancel_with("first");
    let line = line!() + 1;
    hb.cancel();
    assert_eq!(all.cancelled_at().unwrap().line(), line);
    assert_eq!(all.cause().unwrap().as_error(), Some(Error::Canceled));
    for _ in 0..3 {
        let (c, _) = all.with_cancel();
        same_as(&c, &all);
    }
    // And the other way round: the last one has a cause.
    let (a, ha) = Context::background().with_cancel();
    let (b, hb) = Context::background().with_cancel();
    let all = Context::all([&a, &b]);
    ha.cancel();
    hb.cancel_with("last");
    for _ in 0..3 {
        let (c, _) = all.with_cancel();
        same_as(&c, &all);
        assert_eq!(c.cause().unwrap().as_str(), Some("last"));
    }
}

/// Attack: staleness through reuse. Parents are made, cancelled at one of
/// two sites, given children (which caches), and freed, over and over: the
/// allocator hands the same memory to the next parent, which is cancelled
/// at the other site. A cache that outlived its node would name the old
/// site.
#[test]
fn reused_parent_memory_never_reads_a_stale_cache() {
    let rounds = if cfg!(miri) { 20 } else { 5_000 };
    for i in 0..rounds {
        let (p, h) = Context::background().with_cancel();
        // Two sites, alternating (each a located immortal node, or a
        // collision: either way each child must report its own parent's).
        let line = if i % 2 == 0 {
            h.cancel();
            line!() - 1
        } else {
            h.cancel();
            line!() - 1
        };
        for _ in 0..2 {
            let (c, _) = p.with_cancel();
            assert_eq!(c.cancelled_at().unwrap().line(), line, "round {i}");
            same_as(&c, &p);
        }
        drop(p);
    }
}

/// Concurrent first children of a parent on the default timer, while other
/// threads cancel it, register and drop waiters and after-funcs on it, and
/// make deadline children of it (every other writer of a tree node's
/// `state` that can run after `DONE`): every child reports the parent.
#[test]
fn cache_races_every_other_writer() {
    let rounds = if cfg!(miri) { 2 } else { 200 };
    for _ in 0..rounds {
        let (gp, hg) = Context::background().with_cancel();
        let (p, hp) = gp.with_cancel();
        let b = Arc::new(Barrier::new(4));
        let mut ts = Vec::new();
        for k in 0..3 {
            let (p, b) = (p.clone(), b.clone());
            ts.push(std::thread::spawn(move || {
                b.wait();
                // Every handle is kept: a dropped one cancels its child.
                let mut kids = Vec::new();
                for _ in 0..8 {
                    match k {
                        0 => kids.push(p.with_cancel()),
                        1 => {
                            let af = p.after_func(|| {});
                            kids.push(p.with_cancel());
                            drop(af);
                        }
                        _ => {
                            let d = p.with_timeout(Duration::from_secs(60));
                            kids.push(d.0.with_cancel());
                            kids.push(d);
                            kids.push(p.with_cancel());
                        }
                    }
                }
                kids
            }));
        }
        b.wait();
        if rand_bit() {
            hp.cancel();
        } else {
            hg.cancel();
        }
        let kids: Vec<(Context, ctxcore::CancelHandle)> = ts.into_iter().flat_map(|t| t.join().unwrap()).collect();
        let site = p.cancelled_at().unwrap();
        for (c, _) in &kids {
            assert_eq!(c.err(), Some(Error::Canceled));
            assert_eq!(c.cancelled_at(), Some(site));
        }
        drop((gp, hg, hp, p));
        for (c, _) in &kids {
            assert_eq!(c.cancelled_at(), Some(site));
        }
    }
}

fn rand_bit() -> bool {
    use std::sync::atomic::{AtomicU32, Ordering};
    static X: AtomicU32 = AtomicU32::new(1);
    X.fetch_add(1, Ordering::Relaxed) % 2 == 0
}

/// Leaked children, handles and after-funcs of a cached parent: the
/// parent still frees its own memory, later children are right (natively
/// only: Miri reports deliberate leaks).
#[test]
#[cfg_attr(miri, ignore = "deliberate leaks")]
fn leaked_children_of_a_cached_parent() {
    let (p, h) = Context::background().with_cancel();
    let line = line!() + 1;
    h.cancel();
    for _ in 0..3 {
        let (c, hc) = p.with_cancel();
        std::mem::forget(hc);
        std::mem::forget(c.clone());
        std::mem::forget(c.after_func(|| {}));
        std::mem::forget(c.done_owned());
        assert_eq!(c.cancelled_at().unwrap().line(), line);
    }
    drop(p);
}

/// fork(): a forked child makes children of parents cancelled before the
/// fork, one whose cache was written before (the bits are inherited with
/// the memory) and one whose cache it writes itself (it takes the parent's
/// lock, free: no other thread held it at the fork). Both report the
/// parent's site.
#[cfg(all(target_os = "linux", not(miri)))]
#[test]
fn forked_child_reads_and_writes_the_cache() {
    extern "C" {
        fn fork() -> i32;
        fn waitpid(pid: i32, status: *mut i32, options: i32) -> i32;
        fn _exit(code: i32) -> !;
    }
    let (cached, h1) = Context::background().with_cancel();
    let l1 = line!() + 1;
    h1.cancel();
    let _ = cached.with_cancel();
    let (fresh, h2) = Context::background().with_cancel();
    let l2 = line!() + 1;
    h2.cancel();
    // The child touches only this test's nodes (`fresh`'s lock, which no
    // other thread ever takes) and the allocator (fork-safe in glibc).
    // SAFETY: as argued above; the child leaves with `_exit`.
    let pid = unsafe { fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let ok = (0..3).all(|_| {
            cached.with_cancel().0.cancelled_at().map(|l| l.line()) == Some(l1)
                && fresh.with_cancel().0.cancelled_at().map(|l| l.line()) == Some(l2)
        });
        // SAFETY: leave the child without running the harness.
        unsafe { _exit(if ok { 0 } else { 1 }) };
    }
    let mut status = 0;
    // SAFETY: plain waitpid on our child.
    unsafe { waitpid(pid, &mut status, 0) };
    assert_eq!(
        (status >> 8) & 0xff,
        0,
        "the forked child's children report the wrong site"
    );
}
