//! The two API-level holes of the fourth review, shown and closed.
//!
//! 1. `poll_wait` cloned the task's waker — user code — while holding the
//!    node's spin lock (against node/mod.rs invariant 9). A waker whose `clone`
//!    touches the same node (here: cancels it, which takes that lock) spun
//!    forever on the lock its own thread held. The clone now happens with no
//!    lock held: the first poll clones before locking, a later poll only if
//!    `will_wake` (no user code) says the waker changed, after unlocking.
//! 2. `TimerEntry::claim` was a safe fn that dereferences the entry's node:
//!    a clone kept past `disarm` and the node's free was a use-after-free in
//!    safe code. It is `unsafe` now, with the `Timer` contract as its safety
//!    section; the `compile_fail` doctest on `TimerEntry::claim` shows a safe
//!    call no longer compiles.
use core::future::Future;
use core::task::{Context as TaskCx, Poll, RawWaker, RawWakerVTable, Waker};
use ctxcore::{CancelHandle, Context, Error};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::Duration;

/// The handle the waker's `clone` cancels through.
static HANDLE: Mutex<Option<CancelHandle>> = Mutex::new(None);

fn raw() -> RawWaker {
    RawWaker::new(core::ptr::null(), &VTABLE)
}
unsafe fn clone(_: *const ()) -> RawWaker {
    // User code in `clone` that takes the node's lock: a cancel.
    if let Some(h) = HANDLE.lock().unwrap().as_ref() {
        h.cancel_with("from the waker's clone");
    }
    raw()
}
unsafe fn noop(_: *const ()) {}
static VTABLE: RawWakerVTable = RawWakerVTable::new(clone, noop, noop, noop);

#[test]
fn a_waker_whose_clone_cancels_the_same_context_does_not_deadlock() {
    let (tx, rx) = mpsc::channel();
    let t = std::thread::spawn(move || {
        let (ctx, handle) = Context::background().with_cancel();
        *HANDLE.lock().unwrap() = Some(handle);
        // SAFETY: the vtable's functions uphold the `RawWaker` contract
        // (they ignore the null data pointer).
        let waker = unsafe { Waker::from_raw(raw()) };
        let mut cx = TaskCx::from_waker(&waker);
        let mut done = Box::pin(ctx.done());
        // The clone inside this poll cancels `ctx`: the poll sees it done.
        let first = done.as_mut().poll(&mut cx);
        let _ = tx.send((first, ctx.err(), ctx.cause().map(|c| c.to_string())));
        HANDLE.lock().unwrap().take();
    });
    let (first, err, cause) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("poll never returned: the waker was cloned under the node's lock");
    t.join().unwrap();
    assert_eq!(first, Poll::Ready(Error::Canceled));
    assert_eq!(err, Some(Error::Canceled));
    assert_eq!(cause.as_deref(), Some("from the waker's clone"));
}

/// A second poll with a *different* waker clones it outside the lock too.
#[test]
fn a_changed_waker_is_cloned_outside_the_lock() {
    static H2: Mutex<Option<CancelHandle>> = Mutex::new(None);
    unsafe fn clone2(_: *const ()) -> RawWaker {
        if let Some(h) = H2.lock().unwrap().as_ref() {
            h.cancel();
        }
        RawWaker::new(core::ptr::null(), &VT2)
    }
    static VT2: RawWakerVTable = RawWakerVTable::new(clone2, noop, noop, noop);
    let (tx, rx) = mpsc::channel();
    let t = std::thread::spawn(move || {
        let (ctx, handle) = Context::background().with_cancel();
        let mut done = Box::pin(ctx.done());
        // First poll with a plain waker: registered, pending.
        let plain = Waker::noop();
        assert!(done.as_mut().poll(&mut TaskCx::from_waker(plain)).is_pending());
        *H2.lock().unwrap() = Some(handle);
        // SAFETY: as above.
        let waker = unsafe { Waker::from_raw(RawWaker::new(core::ptr::null(), &VT2)) };
        let second = done.as_mut().poll(&mut TaskCx::from_waker(&waker));
        let _ = tx.send(second);
        H2.lock().unwrap().take();
    });
    let second = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("poll never returned: the new waker was cloned under the node's lock");
    t.join().unwrap();
    assert_eq!(second, Poll::Ready(Error::Canceled));
}
