//! loom model of the immortal-node cache (invariant 15, `src/node/heap.rs`).
//! Under loom the crate has no immortal nodes (no `const` atomics), so the
//! cache code is compiled out: this models its protocol with loom's own
//! types, step for step as the code does it:
//!
//! - an entry: `FREE` → `CLAIMED` by compare-and-swap, its location written
//!   by the claimer alone, `READY` published with Release (`claim_immortal`);
//! - a done parent's state word: its cache bits written under the parent's
//!   lock by a Release `fetch_or` (`cache_immortal`), while another thread
//!   sets an `any` node's `QUEUED` with a `fetch_or` and no lock
//!   (drain.rs), and a third sets `PENDING` with a plain store under the
//!   lock (pending.rs);
//! - a child: one Acquire load of the parent's state; with the bits set it
//!   reads the entry's location without reading `READY` (`child_if_done`).
//!
//! loom checks that the child's read of the location never races the
//! claimer's write (its `UnsafeCell` tracking panics on a causality
//! violation), that a racing second cacher writes the same bits, and that
//! no bit of another writer is lost.
//!
//! Run with `ci/loom.sh` (`RUSTFLAGS="--cfg loom" cargo test --release` in `loom/`).
#![cfg(loom)]

use loom::cell::UnsafeCell;
use loom::sync::atomic::{AtomicU32, Ordering};
use loom::sync::{Arc, Mutex};
use loom::thread;

const DONE: u32 = 1;
const QUEUED: u32 = 1 << 4;
const PENDING: u32 = 1 << 13;
const SHIFT: u32 = 28;
const CACHE: u32 = 0xf << SHIFT;

const FREE: u32 = 0;
const CLAIMED: u32 = 1;
const READY: u32 = 2;

/// The entry's index (1: the first located immortal node) and the
/// location it is claimed for.
const INDEX: u32 = 1;
const SITE: usize = 0x1234;

struct Shared {
    entry_state: AtomicU32,
    /// The entry's location (0: none yet).
    entry_site: UnsafeCell<usize>,
    /// The done parent's state word and lock.
    state: AtomicU32,
    lock: Mutex<()>,
}

impl Shared {
    fn new() -> Self {
        Shared {
            entry_state: AtomicU32::new(FREE),
            entry_site: UnsafeCell::new(0),
            state: AtomicU32::new(DONE),
            lock: Mutex::new(()),
        }
    }

    /// `claim_immortal`, then `cache_immortal`: a first child of the done
    /// parent. Returns the site it read from the entry.
    fn first_child(&self) -> usize {
        let mut s = self.entry_state.load(Ordering::Acquire);
        if s == FREE
            && self
                .entry_state
                .compare_exchange(FREE, CLAIMED, Ordering::Acquire, Ordering::Acquire)
                .is_ok()
        {
            // SAFETY: we claimed the entry: its one writer (invariant 15).
            self.entry_site.with_mut(|p| unsafe { *p = SITE });
            self.entry_state.store(READY, Ordering::Release);
            s = READY;
        } else if s == FREE {
            s = self.entry_state.load(Ordering::Acquire);
        }
        if s != READY {
            // Being claimed by another: the code shares the parent's node
            // and caches nothing.
            return SITE;
        }
        // SAFETY: `READY` read with Acquire or written by us (invariant 15).
        let site = self.entry_site.with(|p| unsafe { *p });
        if site == SITE {
            let _guard = self.lock.lock().unwrap();
            self.state.fetch_or(INDEX << SHIFT, Ordering::Release);
        }
        site
    }

    /// `child_if_done`: the cached entry's site, if the bits are set.
    fn cached_child(&self) -> Option<usize> {
        let s = self.state.load(Ordering::Acquire);
        assert_ne!(s & DONE, 0);
        let bits = (s & CACHE) >> SHIFT;
        if bits == 0 {
            return None;
        }
        assert_eq!(bits, INDEX, "racing cachers write the same bits");
        // SAFETY: the bits read with Acquire follow the cacher's read of
        // `READY` (invariant 15); loom checks it.
        Some(self.entry_site.with(|p| unsafe { *p }))
    }
}

/// A first child caches while another reads the cache: a child that sees
/// the bits reads the location after it was written.
#[test]
fn cached_child_reads_the_written_location() {
    loom::model(|| {
        let sh = Arc::new(Shared::new());
        let s2 = sh.clone();
        let t = thread::spawn(move || assert_eq!(s2.first_child(), SITE));
        if let Some(site) = sh.cached_child() {
            assert_eq!(site, SITE);
        }
        t.join().unwrap();
        assert_eq!(sh.cached_child(), Some(SITE));
    });
}

/// Two first children race to claim and cache; a third thread only reads
/// the cache. Every location read is the written one.
#[test]
fn two_cachers_and_a_reader() {
    loom::model(|| {
        let sh = Arc::new(Shared::new());
        let (s2, s3) = (sh.clone(), sh.clone());
        let t1 = thread::spawn(move || assert_eq!(s2.first_child(), SITE));
        let t2 = thread::spawn(move || {
            if let Some(site) = s3.cached_child() {
                assert_eq!(site, SITE);
            }
        });
        assert_eq!(sh.first_child(), SITE);
        t1.join().unwrap();
        t2.join().unwrap();
        assert_eq!(sh.state.load(Ordering::Relaxed), DONE | INDEX << SHIFT);
    });
}

/// The cache written on an `any` node while another parent's canceller
/// sets its `QUEUED` without the lock: neither bit is lost (a plain store
/// of the cache bits could erase `QUEUED`, letting a second canceller
/// queue the node).
#[test]
fn cache_keeps_an_any_nodes_queued() {
    loom::model(|| {
        let sh = Arc::new(Shared::new());
        let s2 = sh.clone();
        let queue = thread::spawn(move || {
            let prev = s2.state.fetch_or(QUEUED, Ordering::AcqRel);
            assert_eq!(prev & QUEUED, 0, "queued once");
        });
        assert_eq!(sh.first_child(), SITE);
        queue.join().unwrap();
        let s = sh.state.load(Ordering::Relaxed);
        assert_eq!(s & QUEUED, QUEUED, "QUEUED kept");
        assert_eq!(s & CACHE, INDEX << SHIFT, "cache kept");
    });
}

/// The cache written on a done scoped node while a canceller parks it
/// (`PENDING`, a plain store under the lock): both bits stay, and a child
/// that reads the word `PENDING` wrote reads the location after it was
/// written.
#[test]
fn cache_keeps_a_scoped_nodes_pending() {
    loom::model(|| {
        let sh = Arc::new(Shared::new());
        let (s2, s3) = (sh.clone(), sh.clone());
        let park = thread::spawn(move || {
            let _guard = s2.lock.lock().unwrap();
            let s = s2.state.load(Ordering::Relaxed);
            s2.state.store(s | PENDING, Ordering::Release);
        });
        let reader = thread::spawn(move || {
            if let Some(site) = s3.cached_child() {
                assert_eq!(site, SITE);
            }
        });
        assert_eq!(sh.first_child(), SITE);
        park.join().unwrap();
        reader.join().unwrap();
        let s = sh.state.load(Ordering::Relaxed);
        assert_eq!(s & CACHE, INDEX << SHIFT, "cache kept");
        assert_eq!(s & PENDING, PENDING, "PENDING kept");
    });
}
