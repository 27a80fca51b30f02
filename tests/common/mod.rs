//! Helpers shared by the integration tests (`mod common;` in each).
// Each test crate uses some of them.
#![allow(dead_code)]

use core::pin::Pin;
use std::sync::Mutex;

/// A leaked value's address, kept only so that it stays reachable.
struct Leaked(#[allow(dead_code)] *const ());
// SAFETY: the pointer is only kept, never used.
unsafe impl Send for Leaked {}

/// Everything the tests leak on purpose, reachable from a static: Miri's
/// leak check and LeakSanitizer then report only what the library loses.
static LEAKED: Mutex<Vec<Leaked>> = Mutex::new(Vec::new());

/// `mem::forget` of a pinned box (its `Drop` never runs, its memory never
/// goes), with the address kept reachable.
pub fn leak<T>(b: Pin<Box<T>>) {
    let p = &*b as *const T as *const ();
    core::mem::forget(b);
    LEAKED.lock().unwrap_or_else(|e| e.into_inner()).push(Leaked(p));
}

/// A waker that counts its wake-ups.
#[derive(Default)]
pub struct Count(pub std::sync::atomic::AtomicUsize);

impl std::task::Wake for Count {
    fn wake(self: std::sync::Arc<Self>) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A counting waker and its counter.
pub fn counting() -> (std::sync::Arc<Count>, std::task::Waker) {
    let c = std::sync::Arc::new(Count::default());
    (c.clone(), std::task::Waker::from(c))
}

/// Polls `f` once with `w`.
pub fn poll<F: std::future::Future>(f: Pin<&mut F>, w: &std::task::Waker) -> std::task::Poll<F::Output> {
    f.poll(&mut std::task::Context::from_waker(w))
}

/// A timer that never fires by itself (an executor's timer that has not run
/// yet): only reads observe its deadlines. Its clock moves only when a test
/// moves it. Shared with the loom models (`#[path]`); plain std atomics
/// there too, reset at the start of each execution.
pub struct Lazy(pub std::sync::atomic::AtomicU64);

impl Lazy {
    /// A clock at zero.
    pub const fn new() -> Self {
        Self::at(0)
    }

    /// A clock at `nanos`.
    pub const fn at(nanos: u64) -> Self {
        Lazy(std::sync::atomic::AtomicU64::new(nanos))
    }

    /// Moves the clock `secs` seconds on.
    pub fn advance(&self, secs: u64) {
        self.0
            .fetch_add(secs * 1_000_000_000, std::sync::atomic::Ordering::SeqCst);
    }
}

impl ctxcore::time::Clock for Lazy {
    fn now(&self) -> ctxcore::Instant {
        ctxcore::Instant::from_nanos(self.0.load(std::sync::atomic::Ordering::SeqCst))
    }
}

// SAFETY: keeps no entry: `arm` forgets it, nothing ever claims it.
unsafe impl ctxcore::time::Timer for Lazy {
    unsafe fn arm(&self, _: ctxcore::time::TimerEntry) {}
    unsafe fn disarm(&self, _: &ctxcore::time::TimerEntry) {}
}
