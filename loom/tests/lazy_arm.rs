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
