//! One shim for every primitive the core synchronises with.
//!
//! The same code runs natively (core atomics), on targets without
//! compare-and-swap (`portable-atomic`), under loom's model checker
//! (`--cfg loom`) and under Miri. Nothing outside this module names
//! `core::sync::atomic` or `loom` directly.
//!
//! # The lock
//!
//! [`RawLock`] is the only lock in the crate. Its default implementation is a
//! test-and-test-and-set spin lock; with the `critical-section` feature it
//! additionally enters a critical section for as long as it is held, which makes
//! it safe to take from an interrupt handler on a single core (the interrupted
//! code cannot be inside the lock while the handler runs, because interrupts are
//! masked while the lock is held). See `docs/design.md`, "Locks".
//!
//! **Invariant CS.** Critical sections are acquired and released in LIFO
//! order: each guard releases the section its own `lock`/`try_lock` opened,
//! guards are scoped (never leaked), and the one guard that outlives a guard
//! taken inside it ([`LockGuard::hand_over`]) closes the inner section first
//! and inherits the outer one.

#![allow(dead_code)]

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU32};

#[cfg(all(not(loom), feature = "portable-atomic"))]
pub(crate) use portable_atomic::{AtomicBool, AtomicU32};

#[cfg(all(not(loom), not(feature = "portable-atomic")))]
pub(crate) use core::sync::atomic::{AtomicBool, AtomicU32};

pub(crate) use core::sync::atomic::Ordering;

/// An `UnsafeCell` with loom's closure-based access API.
#[cfg(loom)]
pub(crate) use loom::cell::UnsafeCell;

/// An `UnsafeCell` with loom's closure-based access API, so that the same
/// code can run under loom (which tracks every access) and natively.
#[cfg(not(loom))]
#[derive(Debug)]
#[repr(transparent)]
pub(crate) struct UnsafeCell<T: ?Sized>(core::cell::UnsafeCell<T>);

#[cfg(not(loom))]
impl<T> UnsafeCell<T> {
    #[inline]
    pub(crate) const fn new(value: T) -> Self {
        UnsafeCell(core::cell::UnsafeCell::new(value))
    }
}

#[cfg(not(loom))]
impl<T: ?Sized> UnsafeCell<T> {
    #[inline(always)]
    pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    #[inline(always)]
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}

/// Spin-loop hint; under loom it yields to the model's scheduler so that a
/// spinning thread lets the lock holder make progress.
#[inline(always)]
pub(crate) fn spin_hint(spins: &mut u32) {
    #[cfg(loom)]
    {
        let _ = spins;
        loom::thread::yield_now();
    }
    #[cfg(not(loom))]
    {
        *spins = spins.saturating_add(1);
        #[cfg(feature = "std")]
        if *spins > 64 {
            extern crate std;
            std::thread::yield_now();
            return;
        }
        core::hint::spin_loop();
    }
}

/// The crate's one lock: a test-and-test-and-set spin lock (plus a critical
/// section with the `critical-section` feature).
///
/// It guards only short, bounded sections that never run user code: list
/// surgery, taking a waker out of a slot, writing a cause. It is never held
/// while waking a task, running a callback or dropping user data.
#[derive(Debug)]
pub(crate) struct RawLock {
    locked: AtomicBool,
}

/// Proof that a [`RawLock`] is held; unlocks on drop.
#[must_use]
pub(crate) struct LockGuard<'a> {
    lock: &'a RawLock,
    #[cfg(feature = "critical-section")]
    restore: critical_section::RestoreState,
}

impl RawLock {
    #[cfg(not(loom))]
    pub(crate) const fn new() -> Self {
        RawLock {
            locked: AtomicBool::new(false),
        }
    }

    #[cfg(loom)]
    pub(crate) fn new() -> Self {
        RawLock {
            locked: AtomicBool::new(false),
        }
    }

    // Out of line in the heap-free tier, whose firmwares count flash: one
    // copy instead of one per call site (about 20 of them).
    #[cfg_attr(feature = "alloc", inline)]
    #[cfg_attr(not(feature = "alloc"), inline(never))]
    pub(crate) fn lock(&self) -> LockGuard<'_> {
        #[cfg(feature = "critical-section")]
        // Acquire/release are paired and nested: the matching
        // `release` runs in `LockGuard::drop`, with the state returned here,
        // in LIFO order (guards are scoped, never leaked).
        // SAFETY: as argued above.
        let restore = unsafe { critical_section::acquire() };
        let mut spins = 0u32;
        loop {
            if self
                .locked
                .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                break;
            }
            while self.locked.load(Ordering::Relaxed) {
                spin_hint(&mut spins);
            }
        }
        LockGuard {
            lock: self,
            #[cfg(feature = "critical-section")]
            restore,
        }
    }

    /// One attempt to take the lock, never waiting: `None` if it is held.
    ///
    /// A canceller holding a parent's lock *tries* a child's with it (node/mod.rs
    /// invariant 12, "Lock order"): because it never waits, no cycle of
    /// waiting can form through it.
    #[inline]
    pub(crate) fn try_lock(&self) -> Option<LockGuard<'_>> {
        #[cfg(feature = "critical-section")]
        // SAFETY: acquire/release are paired and nested, as in `lock`:
        // released by the guard's drop, or just below.
        let restore = unsafe { critical_section::acquire() };
        if !self.locked.load(Ordering::Relaxed)
            && self
                .locked
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        {
            return Some(LockGuard {
                lock: self,
                #[cfg(feature = "critical-section")]
                restore,
            });
        }
        #[cfg(feature = "critical-section")]
        // SAFETY: (sync.rs invariant CS) pairs with the `acquire` above, the
        // innermost one still open.
        unsafe {
            critical_section::release(restore)
        };
        None
    }
}

impl<'a> LockGuard<'a> {
    /// Hand-over-hand: releases this guard's lock and keeps `next`'s, which
    /// was taken while this one was held (node/mod.rs invariant 13).
    ///
    /// With `critical-section` the sections stay properly nested: `next`'s
    /// (inner) section is closed first, which leaves interrupts masked by
    /// this guard's (outer) one, and the returned guard carries the outer
    /// section's state, to be restored when it drops.
    #[inline]
    pub(crate) fn hand_over(self, next: LockGuard<'a>) -> LockGuard<'a> {
        let this = core::mem::ManuallyDrop::new(self);
        let next = core::mem::ManuallyDrop::new(next);
        #[cfg(feature = "critical-section")]
        // SAFETY: (sync.rs invariant CS) `next`'s section is the innermost
        // one open: closing it first keeps acquire/release in LIFO order.
        unsafe {
            critical_section::release(next.restore)
        };
        this.lock.locked.store(false, Ordering::Release);
        LockGuard {
            lock: next.lock,
            #[cfg(feature = "critical-section")]
            restore: this.restore,
        }
    }
}

impl Drop for LockGuard<'_> {
    // Out of line in the heap-free tier, as `RawLock::lock` is.
    #[cfg_attr(feature = "alloc", inline)]
    #[cfg_attr(not(feature = "alloc"), inline(never))]
    fn drop(&mut self) {
        self.lock.locked.store(false, Ordering::Release);
        #[cfg(feature = "critical-section")]
        // SAFETY: (sync.rs invariant CS) `restore` came from the `acquire` in
        // `RawLock::lock` for this very guard, and guards drop in LIFO order.
        unsafe {
            critical_section::release(self.restore)
        };
    }
}
