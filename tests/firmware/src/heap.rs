//! The heap of the `alloc` firmwares: embedded-alloc's linked-list heap
//! behind a counting wrapper (bytes per context are measured with it).

// Not every binary uses every helper (the size baselines skip the counters).
#![allow(dead_code)]

use core::alloc::{GlobalAlloc, Layout};
use core::cell::Cell;
use core::mem::MaybeUninit;
use critical_section::Mutex;
use embedded_alloc::LlffHeap;

/// Heap size: the whole `alloc` API runs in this much RAM.
pub const HEAP_SIZE: usize = 24 * 1024;

/// Allocation counters, updated inside a critical section (no atomic RMW on
/// Cortex-M0).
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    /// Allocations so far.
    pub allocs: usize,
    /// Bytes currently allocated.
    pub live: usize,
    /// Most bytes ever allocated at once.
    pub peak: usize,
}

/// The global allocator: embedded-alloc's linked-list heap, counted.
pub struct CountingHeap {
    heap: LlffHeap,
    stats: Mutex<Cell<Stats>>,
}

impl CountingHeap {
    const fn new() -> Self {
        CountingHeap {
            heap: LlffHeap::empty(),
            stats: Mutex::new(Cell::new(Stats {
                allocs: 0,
                live: 0,
                peak: 0,
            })),
        }
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        critical_section::with(|cs| self.stats.borrow(cs).get())
    }
}

// SAFETY: forwards to `LlffHeap`, which upholds `GlobalAlloc`; the counters
// are side data.
unsafe impl GlobalAlloc for CountingHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { self.heap.alloc(layout) };
        if !p.is_null() {
            critical_section::with(|cs| {
                let cell = self.stats.borrow(cs);
                let mut s = cell.get();
                s.allocs += 1;
                s.live += layout.size();
                s.peak = s.peak.max(s.live);
                cell.set(s);
            });
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { self.heap.dealloc(ptr, layout) };
        critical_section::with(|cs| {
            let cell = self.stats.borrow(cs);
            let mut s = cell.get();
            s.live -= layout.size();
            cell.set(s);
        });
    }
}

#[global_allocator]
pub static HEAP: CountingHeap = CountingHeap::new();

/// Sets up the heap. Call once, before any allocation.
pub fn init() {
    static mut HEAP_MEM: [MaybeUninit<u8>; HEAP_SIZE] = [MaybeUninit::uninit(); HEAP_SIZE];
    // SAFETY: called once, before any allocation; `HEAP_MEM` is used by
    // nothing else.
    unsafe { HEAP.heap.init(core::ptr::addr_of_mut!(HEAP_MEM) as usize, HEAP_SIZE) };
}
