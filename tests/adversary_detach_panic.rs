//! Adversary: a panic raised by user code *inside* `ScopedContext::drop`
//! (the owner's own cancel in `detach_scoped` wakes a leaked waiter whose
//! waker panics) must not unwind out of `detach_scoped` before its
//! `while refs != 1` spin and its release of the attach reference.
//!
//! With `std` this is fixed by 4d759c9 (`Batch::call` catches). WITHOUT
//! `std` (`--no-default-features --features alloc`, e.g. a no_std library
//! linked into a normal std program with panic=unwind) `Batch::call` does not
//! catch, so the panic unwinds straight out of `detach_scoped`: the Box is
//! freed while another thread still holds a counted reference to the node.
//!
//!   cargo test --no-default-features --features alloc --test adversary_detach_panic
//!   MIRIFLAGS="-Zmiri-strict-provenance -Zmiri-symbolic-alignment-check -Zmiri-ignore-leaks" \
//!     cargo +nightly miri test --no-default-features --features alloc \
//!     --test adversary_detach_panic detach_unwind_frees
//!
//! Interleaving (uaf test):
//!   T1: ROOT.cancel(): drain(ROOT) pops S (attached last, so popped first,
//!       pushed first to the work list, processed last) and retains it; the
//!       N siblings (heap, with after-funcs, so they too go to the work list)
//!       are processed first.
//!   T2: sees ROOT done, drops Box<S>: detach_scoped -> cancel(S): lock ROOT
//!       (after T1's drain), S not done yet: T2 wins S, propagate(S) wakes
//!       the leaked waker -> panic (not caught without `std`) -> unwinds out
//!       of `detach_scoped` (no spin) -> Box<S> freed.
//!   T1: pops S from its work list (`WorkList::pop` reads S's link): freed.
//!
//! Fixed (issue 10, adversarial pass): with `std` the owner's cancel and the
//! take-over run under `catch_unwind` (4d759c9); without `std` a drop guard
//! finishes the detach (unlink, disarm, pending list, wait for holders,
//! release the parent) while the panic unwinds. `.ci/run` runs this file
//! without `std` too.

mod common;
use common::leak;
use core::future::Future;
use core::task::{Context as TaskCx, Waker};
use ctxcore::{Context, ManualClock, ScopedContext, StaticContext};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Wake;

struct PanicWaker;
impl Wake for PanicWaker {
    fn wake(self: Arc<Self>) {
        panic!("waker panics");
    }
    fn wake_by_ref(self: &Arc<Self>) {
        panic!("waker panics");
    }
}

fn leak_panicking_waiter(ctx: ctxcore::ContextRef<'_>) {
    let waker = Waker::from(Arc::new(PanicWaker));
    let mut cx = TaskCx::from_waker(&waker);
    let mut d = Box::pin(ctx.done());
    assert!(d.as_mut().poll(&mut cx).is_pending());
    leak(d);
}

/// Deterministic half: the unwind skips the rest of `detach_scoped`, so the
/// attach reference on a heap parent is never given back: the parent (here
/// observed through its deadline cause's `Drop`) is never freed.
#[test]
fn detach_unwinds_before_releasing_the_parent() {
    static FREED: AtomicBool = AtomicBool::new(false);
    struct Flag;
    impl Drop for Flag {
        fn drop(&mut self) {
            FREED.store(true, Ordering::SeqCst);
        }
    }
    impl core::fmt::Display for Flag {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            f.write_str("flag")
        }
    }
    impl core::fmt::Debug for Flag {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            f.write_str("flag")
        }
    }
    impl std::error::Error for Flag {}
    {
        static CLOCK: ManualClock = ManualClock::new();
        let root = Context::with_timer(&CLOCK);
        let (p, h) = root.with_timeout_cause(std::time::Duration::from_secs(1), Flag);
        let s = Box::pin(ScopedContext::new(p.as_ref()));
        leak_panicking_waiter(s.as_ref().context());
        assert!(!FREED.load(Ordering::SeqCst));
        let r = catch_unwind(AssertUnwindSafe(|| drop(s)));
        assert!(!FREED.load(Ordering::SeqCst));
        assert!(r.is_err(), "the waker's panic escapes ScopedContext::drop");
        // P's own deadline fires: its deadline cause stays in its slot
        // until the node is freed.
        CLOCK.advance(std::time::Duration::from_secs(2));
        assert!(p.is_done());
        assert!(!FREED.load(Ordering::SeqCst), "cause dropped before the node is freed");
        drop(h);
        drop(p);
    }
    assert!(
        FREED.load(Ordering::SeqCst),
        "heap parent leaked: detach_scoped unwound before releasing its attach reference"
    );
}

static ROOT: StaticContext = StaticContext::new();

/// The use-after-free (run under Miri; natively it is a silent race).
#[test]
fn detach_unwind_frees_node_a_canceller_still_holds() {
    const N: usize = if cfg!(miri) { 40 } else { 4000 };
    let root = ROOT.context();
    let mut sibs = Vec::new();
    for _ in 0..N {
        let (c, h) = root.with_cancel();
        let af = c.after_func(|| {});
        sibs.push((c, h, af));
    }
    let s = Box::pin(ScopedContext::new(ROOT.as_ref()));
    leak_panicking_waiter(s.as_ref().context());
    std::thread::scope(|sc| {
        sc.spawn(|| {
            let _ = catch_unwind(|| ROOT.cancel());
        });
        sc.spawn(move || {
            while !ROOT.is_done() {
                std::thread::yield_now();
            }
            let _ = catch_unwind(AssertUnwindSafe(move || drop(s)));
        });
    });
    drop(sibs);
}
