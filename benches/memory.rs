//! Bytes and allocations per context node, ctxcore beside tokio-util.
//!
//! `size_of::<Node>()` is internal to the crate, so this counts what the
//! global allocator is actually asked for: a counting allocator wraps the
//! system one, and each operation is run many times between two snapshots.
//! Prints one `memory <what> <lib> allocs=<n> bytes=<n>` line per figure
//! (parsed by `ci/bench.sh`). Not a criterion bench: it ignores its
//! arguments, so `cargo bench` can pass criterion flags to every target.

use std::alloc::{GlobalAlloc, Layout, System};
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context as TaskContext, Waker};
use std::time::Duration;

use ctxcore::Context;
use tokio_util::sync::CancellationToken;

/// Counts every allocation (and its requested size) made in the process.
struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);
static BYTES: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to `System` unchanged; only counts on the side.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller upholds `GlobalAlloc::dealloc`'s contract.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // A growing Vec (tokio-util's children list) shows up here: count the
        // extra bytes so amortised growth is part of the figure.
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(new_size.saturating_sub(layout.size()), Ordering::Relaxed);
        // SAFETY: the caller upholds `GlobalAlloc::realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// How many times each operation runs between snapshots; the figures are
/// averages, so amortised growth (a parent's child vector) is included.
const N: usize = 1000;

/// Average allocations and bytes per call of `op`, which must keep what it
/// creates alive (it pushes into `keep`) so nothing is freed and reused.
fn measure<T>(mut op: impl FnMut() -> T) -> (f64, f64) {
    let mut keep = Vec::with_capacity(N);
    let (a0, b0) = (ALLOCS.load(Ordering::Relaxed), BYTES.load(Ordering::Relaxed));
    for _ in 0..N {
        keep.push(op());
    }
    let (a1, b1) = (ALLOCS.load(Ordering::Relaxed), BYTES.load(Ordering::Relaxed));
    drop(black_box(keep));
    ((a1 - a0) as f64 / N as f64, (b1 - b0) as f64 / N as f64)
}

fn report(what: &str, lib: &str, (allocs, bytes): (f64, f64)) {
    println!("memory {what} {lib} allocs={allocs} bytes={bytes}");
}

fn main() {
    // Start the std timer thread (and any lazily built statics) first, so
    // one-off set-up costs are not charged to the first measured call.
    // (A deadline is armed when first waited on: poll one once.)
    {
        let (ctx, _h) = Context::background().with_timeout(Duration::from_secs(60));
        let mut cx = TaskContext::from_waker(Waker::noop());
        assert!(pin!(ctx.done()).poll(&mut cx).is_pending());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _enter = rt.enter();
    drop(tokio::time::sleep(Duration::from_secs(60)));

    let (parent, _parent_handle) = Context::background().with_cancel();
    let token = CancellationToken::new();

    report("root", "ctxcore", measure(|| Context::background().with_cancel()));
    report("root", "tokio_util", measure(CancellationToken::new));
    report("child", "ctxcore", measure(|| parent.with_cancel()));
    report("child", "tokio_util", measure(|| token.child_token()));
    report("clone", "ctxcore", measure(|| parent.clone()));
    report("clone", "tokio_util", measure(|| token.clone()));
    report(
        "timeout_child",
        "ctxcore",
        measure(|| parent.with_timeout(Duration::from_secs(60))),
    );

    // A timed child that is waited on: its deadline is armed on the std
    // timer (issue 15: one allocation, the wheel's links in its tail).
    report(
        "timeout_child_waited",
        "ctxcore",
        measure(|| {
            let pair = parent.with_timeout(Duration::from_secs(60));
            let mut cx = TaskContext::from_waker(Waker::noop());
            assert!(pin!(pair.0.done()).poll(&mut cx).is_pending());
            pair
        }),
    );

    // Waiting: ctxcore's waiter lives inside the future, so registering
    // allocates nothing. Both futures are polled once with a no-op waker.
    let mut cx = TaskContext::from_waker(Waker::noop());
    let waits = |f: &mut dyn FnMut()| {
        let (a0, b0) = (ALLOCS.load(Ordering::Relaxed), BYTES.load(Ordering::Relaxed));
        for _ in 0..N {
            f();
        }
        let (a1, b1) = (ALLOCS.load(Ordering::Relaxed), BYTES.load(Ordering::Relaxed));
        ((a1 - a0) as f64 / N as f64, (b1 - b0) as f64 / N as f64)
    };
    report(
        "wait",
        "ctxcore",
        waits(&mut || {
            let fut = pin!(parent.done());
            assert!(fut.poll(&mut cx).is_pending());
        }),
    );
    report(
        "wait",
        "tokio_util",
        waits(&mut || {
            let fut = pin!(token.cancelled());
            assert!(fut.poll(&mut cx).is_pending());
        }),
    );
}
