//! loom models of lazy arming (node invariant 20): a waiter that registers,
//! and so arms its deadline's owner, while the deadline passes and fires, or
//! while the context is cancelled or freed. The waiter is woken exactly when
//! the node is done (loom reports a deadlock if a wake-up is lost), and no
//! timer entry is left armed once the node is done or freed.
#![cfg(loom)]

use ctxcore::time::{Clock, Instant, Timer, TimerEntry};
use ctxcore::{Context, Error};
use loom::sync::atomic::{AtomicU64, Ordering};
use loom::sync::Mutex;
use loom::thread;

/// A timer whose clock moves only on `advance_to`, which then claims and
/// fires due entries one at a time, outside its lock (the `Timer` contract).
struct LoomTimer {
    now: AtomicU64,
    entries: Mutex<Vec<TimerEntry>>,
}

impl Clock for LoomTimer {
    fn now(&self) -> Instant {
        Instant::from_nanos(self.now.load(Ordering::SeqCst))
    }
}

// SAFETY: `arm`, `disarm` and `claim` all run under `entries`' lock; a
// claimed or disarmed entry leaves the list at once; firing happens after
// the lock is released.
unsafe impl Timer for LoomTimer {
    unsafe fn arm(&self, entry: TimerEntry) {
        self.entries.lock().unwrap().push(entry);
    }
    unsafe fn disarm(&self, entry: &TimerEntry) {
        self.entries.lock().unwrap().retain(|e| e.key() != entry.key());
    }
}

impl LoomTimer {
    fn leaked() -> &'static LoomTimer {
        Box::leak(Box::new(LoomTimer {
            now: AtomicU64::new(0),
            entries: Mutex::new(Vec::new()),
        }))
    }

    fn advance_to(&self, t: u64) {
        self.now.fetch_max(t, Ordering::SeqCst);
        let now = self.now();
        loop {
            let mut entries = self.entries.lock().unwrap();
            let Some(i) = entries.iter().position(|e| e.deadline() <= now) else {
                break;
            };
            let entry = entries.swap_remove(i);
            // SAFETY: under the lock, armed, claimed once (it left the list).
            let firing = unsafe { entry.claim() };
            drop(entries);
            if let Some(f) = firing {
                f.fire();
            }
        }
    }

    fn armed(&self) -> usize {
        self.entries.lock().unwrap().len()
    }
}

/// A waiter on a grandchild registers (arming the deadline's owner) while
/// the clock passes the deadline and fires what is armed: it is woken with
/// `DeadlineExceeded` whichever comes first — its registration sees the
/// deadline passed, the timer fires its entry, or its arming's re-check of
/// the clock fires it — and no entry is left.
#[test]
fn waiter_arming_vs_deadline_firing() {
    loom::model(|| {
        let timer = LoomTimer::leaked();
        let root = Context::with_timer(timer);
        let (ctx, _h) = root.with_deadline(Instant::from_nanos(10));
        let (leaf, _hl) = ctx.with_cancel();
        let t = thread::spawn(move || loom::future::block_on(leaf.done()));
        timer.advance_to(10);
        assert_eq!(t.join().unwrap(), Error::DeadlineExceeded);
        assert!(ctx.is_done());
        assert_eq!(timer.armed(), 0, "an entry left armed after the deadline fired");
    });
}

/// A waiter arming while another thread cancels the deadline's owner: woken
/// with `Canceled`, and the entry it may have armed after the cancel's
/// disarm is given back by its own re-check.
#[test]
fn waiter_arming_vs_cancel() {
    loom::model(|| {
        let timer = LoomTimer::leaked();
        let root = Context::with_timer(timer);
        let (ctx, h) = root.with_deadline(Instant::from_nanos(10));
        let (leaf, _hl) = ctx.with_cancel();
        let t = thread::spawn(move || loom::future::block_on(leaf.done()));
        h.cancel();
        assert_eq!(t.join().unwrap(), Error::Canceled);
        assert_eq!(timer.armed(), 0, "an entry left armed after the cancel");
    });
}

/// Two waiters arm the same owner at once, one on another thread, one here
/// just before this thread cancels: at most one entry was ever armed
/// (`ARMED` under the owner's lock), both are woken, none is left.
#[test]
fn two_waiters_arming_vs_cancel() {
    use std::sync::atomic::AtomicUsize as StdCount;
    use std::task::{Wake, Waker};
    struct Count(StdCount);
    impl Wake for Count {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
    loom::model(|| {
        let timer = LoomTimer::leaked();
        let root = Context::with_timer(timer);
        let (ctx, h) = root.with_deadline(Instant::from_nanos(10));
        let a = ctx.clone();
        let ta = thread::spawn(move || loom::future::block_on(a.done()));
        let count = std::sync::Arc::new(Count(StdCount::new(0)));
        let waker = Waker::from(count.clone());
        let mut b = Box::pin(ctx.done());
        let mut cx = core::task::Context::from_waker(&waker);
        assert!(core::future::Future::poll(b.as_mut(), &mut cx).is_pending());
        assert!(timer.armed() <= 1);
        h.cancel();
        assert_eq!(count.0.load(std::sync::atomic::Ordering::SeqCst), 1, "woken once");
        assert_eq!(ta.join().unwrap(), Error::Canceled);
        assert_eq!(timer.armed(), 0);
    });
}

/// A waiter arms, gives up waiting and lets go of its context while the
/// last other owner drops a detached deadline context: the node is freed
/// by whichever release is last, and that release disarms the entry.
#[test]
fn waiter_arming_vs_last_release() {
    loom::model(|| {
        let timer = LoomTimer::leaked();
        let root = Context::with_timer(timer);
        let (ctx, h) = root.with_deadline(Instant::from_nanos(10));
        h.detach();
        let c2 = ctx.clone();
        let t = thread::spawn(move || {
            let mut d = Box::pin(c2.done());
            let mut cx = core::task::Context::from_waker(core::task::Waker::noop());
            assert!(core::future::Future::poll(d.as_mut(), &mut cx).is_pending());
            drop(d);
            drop(c2);
        });
        drop(ctx);
        t.join().unwrap();
        assert_eq!(timer.armed(), 0, "a freed node left its entry armed");
    });
}

/// Node invariant 16 with a deadline kid (a timed child of a plain heap
/// node holds it by its kid count): the kid alone holds an orphaned
/// parent, and its timer fires while the grandparent's canceller walks
/// through the orphan. The orphan is freed once, by whoever gives up its
/// last count; the kid ends done either way; no entry is left armed.
#[test]
fn deadline_kid_firing_vs_cancel_through_its_orphan() {
    loom::model(|| {
        let timer = LoomTimer::leaked();
        let root = Context::with_timer(timer);
        let (conn, ch) = root.with_cancel();
        let (mid, mh) = conn.with_cancel();
        mh.detach();
        let (req, _rh) = mid.with_deadline(Instant::from_nanos(10));
        drop(mid);
        let mut d = Box::pin(req.done());
        let mut cx = core::task::Context::from_waker(core::task::Waker::noop());
        assert!(core::future::Future::poll(d.as_mut(), &mut cx).is_pending());
        assert_eq!(timer.armed(), 1);
        let t = thread::spawn(move || timer.advance_to(10));
        ch.cancel_with("conn");
        t.join().unwrap();
        assert!(req.is_done());
        match req.err() {
            Some(Error::DeadlineExceeded) => assert_eq!(req.cause().unwrap().as_str(), None),
            Some(Error::Canceled) => assert_eq!(req.cause().unwrap().as_str(), Some("conn")),
            None => unreachable!(),
        }
        drop(d);
        assert_eq!(timer.armed(), 0);
    });
}

/// A deadline kid's handle cancel (its own cancel: own lock, then the
/// orphaned parent's, where it gives up the last kid count) racing its
/// timer's firing: one wins, the orphan is freed once, nothing stays armed.
#[test]
fn deadline_kid_handle_cancel_vs_firing() {
    loom::model(|| {
        let timer = LoomTimer::leaked();
        let root = Context::with_timer(timer);
        let (conn, _ch) = root.with_cancel();
        let (mid, mh) = conn.with_cancel();
        mh.detach();
        let (req, rh) = mid.with_deadline(Instant::from_nanos(10));
        drop(mid);
        let r2 = req.clone();
        let t = thread::spawn(move || loom::future::block_on(r2.done()));
        timer.advance_to(10);
        rh.cancel();
        let err = t.join().unwrap();
        assert_eq!(req.err(), Some(err));
        assert_eq!(err, Error::DeadlineExceeded, "the deadline had passed: it wins (property 5)");
        drop(req);
        assert_eq!(timer.armed(), 0);
        assert!(!conn.is_done());
    });
}

/// A deadline kid's last release (disarming its entry, giving up its kid
/// count) racing its parent's last reference: whichever is last frees the
/// parent; the kid's entry is disarmed.
#[test]
fn deadline_kid_last_release_vs_parent_last_release() {
    loom::model(|| {
        let timer = LoomTimer::leaked();
        let root = Context::with_timer(timer);
        let (conn, _ch) = root.with_cancel();
        let (mid, mh) = conn.with_cancel();
        mh.detach();
        let (req, rh) = mid.with_deadline(Instant::from_nanos(10));
        rh.detach();
        let mut d = Box::pin(req.done());
        let mut cx = core::task::Context::from_waker(core::task::Waker::noop());
        assert!(core::future::Future::poll(d.as_mut(), &mut cx).is_pending());
        drop(d);
        let t = thread::spawn(move || drop(mid));
        drop(req);
        t.join().unwrap();
        assert_eq!(timer.armed(), 0, "a freed deadline kid left its entry armed");
        let (late, _lh) = conn.with_cancel();
        assert!(!late.is_done());
    });
}
