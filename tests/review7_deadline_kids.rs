//! Review 7: deadline kids (commit 39e0d56). A child with a deadline of its
//! own under a plain heap parent without one holds that parent by its kid
//! count (node invariant 16), which its own cancel gives up. These tests
//! attack every walk up from such a kid (or from below it) that may run
//! after that count is gone, and the timer, release and canceller races
//! around it. Public API only.
//!
//! The single-threaded tests are small enough for Miri
//! (`cargo +nightly miri test --test review7_deadline_kids`). Natively a
//! use-after-free write is caught by the quarantine allocator below: while
//! a test holds `Quarantine`, freed blocks are zeroed and never reused, and
//! a byte written into one afterwards fails the test.

use ctxcore::time::{Clock, Instant, Timer, TimerEntry};
use ctxcore::{CancelHandle, Context, Error, ManualClock};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod common;
#[allow(unused_imports)]
use common::{counting, poll};

// ---------------------------------------------------------------------------
// Quarantine allocator (native only: under Miri, frees must be real so that
// Miri reports the use after them).

#[cfg(not(miri))]
mod quarantine {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Mutex;

    pub(crate) struct QuarantineAlloc;

    /// Set while a quarantining test runs (tests of this binary that use it
    /// take `GATE`, so at most one at a time).
    static ON: AtomicBool = AtomicBool::new(false);
    const CAP: usize = 4096;
    static BLOCKS: [(AtomicUsize, AtomicUsize); CAP] = [const { (AtomicUsize::new(0), AtomicUsize::new(0)) }; CAP];
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    static GATE: Mutex<()> = Mutex::new(());

    // SAFETY: forwards to `System`; a quarantined block is never handed out
    // again (it leaks), so no two live allocations overlap.
    unsafe impl GlobalAlloc for QuarantineAlloc {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            // SAFETY: forwarded.
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            if ON.load(Ordering::SeqCst) {
                // SAFETY: the block is ours until freed, and it never is.
                unsafe { ptr.write_bytes(0, layout.size()) };
                let i = NEXT.fetch_add(1, Ordering::SeqCst);
                if i < CAP {
                    BLOCKS[i].1.store(layout.size(), Ordering::SeqCst);
                    BLOCKS[i].0.store(ptr as usize, Ordering::SeqCst);
                }
                return;
            }
            // SAFETY: forwarded.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    /// Quarantines frees until dropped, then checks that no quarantined
    /// block was written after it was freed.
    pub(crate) struct Quarantine {
        _g: std::sync::MutexGuard<'static, ()>,
    }

    impl Quarantine {
        pub(crate) fn start() -> Self {
            let g = GATE.lock().unwrap_or_else(|e| e.into_inner());
            NEXT.store(0, Ordering::SeqCst);
            ON.store(true, Ordering::SeqCst);
            Quarantine { _g: g }
        }

        /// Stops quarantining; panics if a freed block was written.
        pub(crate) fn check(self) {
            ON.store(false, Ordering::SeqCst);
            let n = NEXT.load(Ordering::SeqCst).min(CAP);
            for (p, len) in BLOCKS.iter().take(n) {
                let p = p.load(Ordering::SeqCst) as *const u8;
                let len = len.load(Ordering::SeqCst);
                if p.is_null() {
                    continue;
                }
                // SAFETY: a quarantined block is never freed nor reused.
                let bytes = unsafe { std::slice::from_raw_parts(p, len) };
                assert!(
                    bytes.iter().all(|&b| b == 0),
                    "a freed block ({len} bytes) was written after it was freed: use after free"
                );
            }
        }
    }

    impl Drop for Quarantine {
        fn drop(&mut self) {
            ON.store(false, Ordering::SeqCst);
        }
    }
}

#[cfg(not(miri))]
#[global_allocator]
static ALLOC: quarantine::QuarantineAlloc = quarantine::QuarantineAlloc;

#[cfg(not(miri))]
use quarantine::Quarantine;

/// Under Miri there is no quarantine: Miri itself reports the use after
/// free.
#[cfg(miri)]
struct Quarantine;

#[cfg(miri)]
impl Quarantine {
    fn start() -> Self {
        Quarantine
    }
    fn check(self) {}
}

// ---------------------------------------------------------------------------
// A clock whose `now` runs a hook once: user code at the exact point where a
// deadline read has read the clock and is about to walk up from the node.

type Hook = Box<dyn FnOnce() + Send>;

struct HookClock {
    now: AtomicU64,
    hook: Mutex<Option<Hook>>,
    armed: Mutex<Vec<(Instant, usize)>>,
}

impl HookClock {
    const fn new() -> Self {
        HookClock {
            now: AtomicU64::new(0),
            hook: Mutex::new(None),
            armed: Mutex::new(Vec::new()),
        }
    }
    fn set_hook(&self, f: impl FnOnce() + Send + 'static) {
        *self.hook.lock().unwrap() = Some(Box::new(f));
    }
    fn set(&self, nanos: u64) {
        self.now.store(nanos, Ordering::SeqCst);
    }
}

impl Clock for HookClock {
    fn now(&self) -> Instant {
        let hook = self.hook.lock().unwrap().take();
        if let Some(f) = hook {
            f();
        }
        Instant::from_nanos(self.now.load(Ordering::SeqCst))
    }
}

// SAFETY: arm and disarm run under one mutex; entries are never claimed.
unsafe impl Timer for HookClock {
    unsafe fn arm(&self, entry: TimerEntry) {
        self.armed.lock().unwrap().push(entry.key());
    }
    unsafe fn disarm(&self, entry: &TimerEntry) {
        self.armed.lock().unwrap().retain(|k| *k != entry.key());
    }
}

// ---------------------------------------------------------------------------
// Attack 1: the deadline walk (`fire_passed_deadline`) reads the deadline
// kid's parent after the kid's own cancel (on another path) gave its kid
// count up and the parent was freed.

/// A deadline kid (deadline at 10 ns on `clock`) that alone holds its
/// orphaned parent: the connection's handle is detached and its last
/// context dropped.
fn orphaned_request(clock: &'static HookClock) -> (Context, CancelHandle) {
    let root = Context::with_timer(clock);
    let (conn, conn_h) = root.with_cancel();
    drop(root);
    conn_h.detach();
    conn.with_deadline(Instant::from_nanos(10))
}

/// The connection context is an orphan held only by its per-request
/// timeout's kid count. A read of the request finds its deadline passed;
/// while it reads the clock, the request is cancelled (here by a re-entrant
/// clock, in real life by another thread: its handle, its timer, another
/// read), which frees the orphan. The read then walks up from the request
/// to find the deadline's owner and must not touch the freed connection.
#[test]
fn a_deadline_read_does_not_walk_into_a_parent_freed_by_the_kids_own_cancel() {
    static CLOCK: HookClock = HookClock::new();
    let q = Quarantine::start();
    let root = Context::with_timer(&CLOCK);
    let (conn, conn_h) = root.with_cancel();
    drop(root);
    conn_h.detach();
    let (req, req_h) = conn.with_deadline(Instant::from_nanos(10));
    // The connection is an orphan now, held by the request's kid count.
    drop(conn);
    CLOCK.set(10);
    CLOCK.set_hook(move || {
        // Fires the request's passed deadline first and frees the orphan.
        req_h.cancel();
    });
    assert_eq!(req.err(), Some(Error::DeadlineExceeded));
    drop(req);
    q.check();
}

/// The same walk from a grandchild (a child of the deadline kid, which
/// holds the kid by a reference): the walk passes the kid, the owner, and
/// reads the kid's parent. Here the parent is not an orphan: its last
/// reference is dropped right after the kid left it.
#[test]
fn a_deadline_read_below_the_kid_does_not_walk_into_a_freed_parent() {
    static CLOCK: HookClock = HookClock::new();
    let q = Quarantine::start();
    let root = Context::with_timer(&CLOCK);
    let (conn, conn_h) = root.with_cancel();
    let (req, req_h) = conn.with_deadline(Instant::from_nanos(10));
    let (step, _step_h) = req.with_cancel();
    drop(req);
    CLOCK.set(10);
    CLOCK.set_hook(move || {
        // The request's own cancel gives its kid count up...
        req_h.cancel();
        // ...and the connection goes (cancelled, then freed: no kid holds
        // it any more).
        drop(conn_h);
        drop(conn);
        drop(root);
    });
    // The step's deadline is the request's: the walk goes up to it.
    assert_eq!(step.err(), Some(Error::DeadlineExceeded));
    drop(step);
    q.check();
}

/// The own-cancel path's clock read (`deadline_won`, property 5) walks the
/// same way: a second handle cancel of a shared request context.
#[test]
fn an_own_cancel_does_not_walk_into_a_parent_freed_by_a_concurrent_cancel() {
    static CLOCK: HookClock = HookClock::new();
    let q = Quarantine::start();
    let (req, req_h) = orphaned_request(&CLOCK);
    let req_h = Arc::new(req_h);
    CLOCK.set(10);
    let inner = Arc::clone(&req_h);
    CLOCK.set_hook(move || {
        inner.cancel();
    });
    req_h.cancel();
    assert_eq!(req.err(), Some(Error::DeadlineExceeded));
    drop(req);
    q.check();
}

/// The same race with two threads and no re-entrancy: a reader of the
/// request is between its clock read and its walk up (held there by the
/// clock) while the request's handle, on another thread, fires the passed
/// deadline and frees the orphaned connection.
#[test]
fn a_deadline_read_racing_the_kids_own_cancel_on_another_thread() {
    use std::sync::mpsc::channel;
    static CLOCK: HookClock = HookClock::new();
    let q = Quarantine::start();
    let (req, req_h) = orphaned_request(&CLOCK);
    CLOCK.set(10);
    let (in_now_tx, in_now_rx) = channel::<()>();
    let (done_tx, done_rx) = channel::<()>();
    CLOCK.set_hook(move || {
        in_now_tx.send(()).unwrap();
        done_rx.recv().unwrap();
    });
    let canceller = std::thread::spawn(move || {
        in_now_rx.recv().unwrap();
        req_h.cancel();
        done_tx.send(()).unwrap();
    });
    assert!(req.is_done());
    canceller.join().unwrap();
    drop(req);
    q.check();
}

/// An `any` context over a deadline kid: its read walks to the kid (the
/// owner of its deadline) and must stop there, even when the kid's own
/// cancel freed the kid's parent in between.
#[test]
fn an_any_read_over_a_deadline_kid_stops_at_the_kid() {
    static CLOCK: HookClock = HookClock::new();
    let q = Quarantine::start();
    let (req, req_h) = orphaned_request(&CLOCK);
    let either = Context::any([&req]);
    CLOCK.set(10);
    CLOCK.set_hook(move || req_h.cancel());
    assert_eq!(either.err(), Some(Error::DeadlineExceeded));
    drop((either, req));
    q.check();
}

/// Every read of a deadline kid after its own cancel freed its parent:
/// error, cause, site, deadline, clock, time left, values (which live in
/// the context, not the node: nothing walks up).
#[test]
fn reads_of_a_cancelled_deadline_kid_whose_parent_is_gone() {
    static CLOCK: ManualClock = ManualClock::new();
    static K: ctxcore::Key<u32> = ctxcore::Key::new("k");
    let root = Context::with_timer(&CLOCK).with_value(&K, 7);
    let (conn, conn_h) = root.with_cancel();
    drop(root);
    conn_h.detach();
    let (req, req_h) = conn
        .with_value(&K, 8)
        .with_timeout_cause(Duration::from_secs(1), "slow");
    drop(conn);
    CLOCK.advance(Duration::from_secs(1));
    drop(req_h); // the deadline wins over the dropped handle (property 5)
    assert_eq!(req.err(), Some(Error::DeadlineExceeded));
    assert_eq!(req.cause().unwrap().as_str(), Some("slow"));
    assert!(req.cancelled_at().is_some());
    assert_eq!(req.value(&K), Some(&8));
    assert_eq!(req.time_left(), Some(Duration::ZERO));
    assert!(req.deadline().is_some());
    assert_eq!(req.now(), CLOCK.now());
    let (child, _h) = req.with_timeout(Duration::from_secs(5));
    assert_eq!(child.err(), Some(Error::DeadlineExceeded));
    assert_eq!(child.cause().unwrap().as_str(), Some("slow"));
    assert_eq!(child.value(&K), Some(&8));
}

/// Leaked `done()` futures on the orphan and on its deadline kid: the
/// timer fires the kid (armed by a waiter), which frees the orphan; the
/// leaked waiters stay in lists nobody reads again. Then the same with the
/// grandparent's cancel walking through the orphan first.
#[test]
fn leaked_waiters_on_the_orphan_and_on_its_deadline_kid() {
    static CLOCK: ManualClock = ManualClock::new();
    let (count, w) = counting();
    for grandparent_first in [false, true] {
        let (root, root_h) = Context::with_timer(&CLOCK).with_cancel();
        let (conn, conn_h) = root.with_cancel();
        conn_h.detach();
        let (req, _req_h) = conn.with_timeout(Duration::from_nanos(1));
        let mut on_conn = Box::pin(conn.done_owned());
        assert!(poll(on_conn.as_mut(), &w).is_pending());
        common::leak(on_conn);
        let mut on_req = Box::pin(req.done_owned());
        assert!(poll(on_req.as_mut(), &w).is_pending());
        common::leak(on_req);
        let mut d = Box::pin(req.done());
        assert!(poll(d.as_mut(), &w).is_pending());
        drop(conn);
        if grandparent_first {
            root_h.cancel();
            assert_eq!(req.err(), Some(Error::Canceled));
        } else {
            CLOCK.advance(Duration::from_nanos(1));
            assert_eq!(req.err(), Some(Error::DeadlineExceeded));
            drop(root_h);
        }
        assert!(poll(d.as_mut(), &w).is_ready());
        drop(d);
        drop((req, root));
        assert_eq!(CLOCK.armed(), 0);
    }
    assert!(count.0.load(Ordering::SeqCst) >= 4);
}

/// An after-func on a deadline kid that drops the last context of the
/// kid's parent (making it an orphan mid-cancellation) and cancels the
/// root; another that panics. The timer fires the kid.
#[test]
fn after_funcs_on_a_deadline_kid_drop_its_parent_and_panic() {
    static CLOCK: ManualClock = ManualClock::new();
    let (root, root_h) = Context::with_timer(&CLOCK).with_cancel();
    let (conn, conn_h) = root.with_cancel();
    conn_h.detach();
    let (req, _req_h) = conn.with_timeout(Duration::from_nanos(1));
    let (step, _step_h) = req.with_cancel();
    let slot = Arc::new(Mutex::new(Some((conn, root_h))));
    let s2 = Arc::clone(&slot);
    let _af = req.after_func(move || {
        let (conn, root_h) = s2.lock().unwrap().take().unwrap();
        drop(conn);
        root_h.cancel();
    });
    let _boom = step.after_func(|| panic!("after-func panics"));
    let r = std::panic::catch_unwind(|| CLOCK.advance(Duration::from_nanos(1)));
    assert!(r.is_err(), "the panic is re-raised once the cancellation is complete");
    assert!(slot.lock().unwrap().is_none(), "the after-func ran");
    assert_eq!(req.err(), Some(Error::DeadlineExceeded));
    assert_eq!(step.err(), Some(Error::DeadlineExceeded));
    assert!(root.is_done());
    assert_eq!(CLOCK.armed(), 0);
}

/// A deadline cause whose `Drop` re-enters: it drops the kid's parent's
/// last context and cancels the grandparent, while the kid is freed.
#[test]
fn a_deadline_cause_whose_drop_drops_the_parent() {
    #[derive(Debug)]
    struct Reentrant(Mutex<Option<(Context, ctxcore::CancelHandle)>>);
    impl std::fmt::Display for Reentrant {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("reentrant")
        }
    }
    impl std::error::Error for Reentrant {}
    impl Drop for Reentrant {
        fn drop(&mut self) {
            if let Some((conn, root_h)) = self.0.lock().unwrap().take() {
                drop(conn);
                root_h.cancel();
            }
        }
    }
    static CLOCK: ManualClock = ManualClock::new();
    for own_cancel in [false, true] {
        let (root, root_h) = Context::with_timer(&CLOCK).with_cancel();
        let (conn, conn_h) = root.with_cancel();
        conn_h.detach();
        let conn2 = conn.clone();
        let cause = Reentrant(Mutex::new(Some((conn2, root_h))));
        let (req, req_h) = conn.with_timeout_cause(Duration::from_secs(1), cause);
        drop(conn);
        if own_cancel {
            req_h.cancel();
        } else {
            req_h.detach();
        }
        drop(req);
        assert!(root.is_done());
    }
}

/// A `without_cancel` root on a non-default timer is a plain heap node:
/// its deadline children are kids too. Dropped first, it is an orphan
/// freed by its kid's timer firing or release, on a ManualClock.
#[test]
fn deadline_kids_of_a_without_cancel_root() {
    static CLOCK: ManualClock = ManualClock::new();
    let (count, w) = counting();
    let base = Context::with_timer(&CLOCK);
    for i in 0..4 {
        let detached = base.without_cancel();
        let (req, req_h) = detached.with_timeout(Duration::from_nanos(1));
        drop(detached);
        let mut d = Box::pin(req.done());
        assert!(poll(d.as_mut(), &w).is_pending());
        match i {
            0 => CLOCK.advance(Duration::from_nanos(1)),
            1 => req_h.cancel(),
            _ => {}
        }
        drop(d);
        drop((req, req_h));
    }
    assert_eq!(CLOCK.armed(), 0);
    assert!(count.0.load(Ordering::SeqCst) >= 1);
}

/// Scoped contexts with deadlines under a plain heap parent (they hold it
/// by a reference, never as kids) next to a heap deadline kid, all fired
/// by the clock.
#[test]
fn scoped_deadline_children_next_to_a_deadline_kid() {
    use ctxcore::ScopedContext;
    use std::pin::pin;
    static CLOCK: ManualClock = ManualClock::new();
    let (count, w) = counting();
    let root = Context::with_timer(&CLOCK);
    let (conn, conn_h) = root.with_cancel();
    conn_h.detach();
    let (req, _req_h) = conn.with_timeout(Duration::from_nanos(2));
    {
        let scoped = pin!(ScopedContext::with_timeout(conn.as_ref(), Duration::from_nanos(1)));
        let under_kid = pin!(ScopedContext::new(req.as_ref()));
        let mut d1 = pin!(scoped.as_ref().context().done());
        let mut d2 = pin!(under_kid.as_ref().context().done());
        assert!(poll(d1.as_mut(), &w).is_pending());
        assert!(poll(d2.as_mut(), &w).is_pending());
        CLOCK.advance(Duration::from_nanos(1));
        assert!(poll(d1.as_mut(), &w).is_ready());
        assert!(poll(d2.as_mut(), &w).is_pending());
        CLOCK.advance(Duration::from_nanos(1));
        assert!(poll(d2.as_mut(), &w).is_ready());
    }
    assert_eq!(req.err(), Some(Error::DeadlineExceeded));
    // The parent outlived its scoped children (they borrow it); now the
    // kid, done, holds it alone... until its release frees it.
    drop(conn);
    drop((req, root));
    assert!(count.0.load(Ordering::SeqCst) >= 2);
    assert_eq!(CLOCK.armed(), 0);
}

/// A plain parent with no deadline of its own can still be done with
/// `DeadlineExceeded`: a child of an `all` context over parents on
/// different clocks (no effective deadline, only `POLLS`). Its deadline
/// kid, whose own deadline is far away, must then inherit that error and
/// cause, not report its own deadline's cause as if it had fired.
#[test]
fn a_deadline_kid_under_a_mixed_clock_all_inherits_the_parents_cause() {
    static A: ManualClock = ManualClock::new();
    static B: ManualClock = ManualClock::new();
    let (a, _ha) = Context::with_timer(&A).with_timeout_cause(Duration::from_secs(1), "a");
    let (b, _hb) = Context::with_timer(&B).with_timeout_cause(Duration::from_secs(1), "b");
    let both = Context::all([&a, &b]);
    assert_eq!(both.deadline(), None, "no deadline across clocks");
    let (conn, _hc) = both.with_cancel();
    let (req, _hr) = conn.with_timeout_cause(Duration::from_secs(3600), "request timeout");
    A.advance(Duration::from_secs(1));
    B.advance(Duration::from_secs(1));
    assert_eq!(both.err(), Some(Error::DeadlineExceeded));
    assert_eq!(conn.err(), Some(Error::DeadlineExceeded));
    assert_eq!(req.err(), Some(Error::DeadlineExceeded));
    let parent_cause = conn.cause().unwrap();
    assert!(matches!(parent_cause.as_str(), Some("a") | Some("b")));
    assert_eq!(
        req.cause().unwrap().as_str(),
        parent_cause.as_str(),
        "the kid's hour-long deadline did not pass: it reports its parent's cause"
    );
    assert_eq!(req.cancelled_at(), conn.cancelled_at());
}

/// The realistic form of the walk race, with real threads and no hooks: a
/// reader polls a request (and a step below it) while another thread's
/// `advance` fires the armed deadline, which frees the orphaned
/// connection. Natively this only documents the race (the window is a few
/// instructions; run under ASan or Miri to check it); the hook tests above
/// pin it down.
#[test]
fn readers_race_the_timer_firing_a_deadline_kid_of_an_orphan() {
    use std::sync::Barrier;
    static CLOCK: ManualClock = ManualClock::new();
    let rounds = if cfg!(miri) { 3 } else { 2000 };
    let noop = std::task::Waker::noop();
    for _ in 0..rounds {
        let root = Context::with_timer(&CLOCK);
        let (conn, conn_h) = root.with_cancel();
        drop(root);
        conn_h.detach();
        let (req, req_h) = conn.with_timeout(Duration::from_nanos(1));
        let (step, _sh) = req.with_cancel();
        drop(conn);
        let mut d = Box::pin(req.done_owned());
        assert!(poll(d.as_mut(), noop).is_pending());
        let start = Arc::new(Barrier::new(2));
        let s2 = Arc::clone(&start);
        let firer = std::thread::spawn(move || {
            s2.wait();
            CLOCK.advance(Duration::from_nanos(1));
            drop(req_h);
        });
        start.wait();
        while !step.is_done() || !req.is_done() {}
        firer.join().unwrap();
        assert_eq!(step.err(), Some(Error::DeadlineExceeded));
        assert!(poll(d.as_mut(), noop).is_ready());
    }
    assert_eq!(CLOCK.armed(), 0);
}
