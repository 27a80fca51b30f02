//! What every firmware image here shares: the heap (behind a counting
//! wrapper), the SysTick time driver for embassy-time, semihosting verdicts.
//! Included with `#[path]` by each binary so that each one links exactly
//! what it uses.

// Not every binary uses every helper (the size baselines skip the counters).
#![allow(dead_code)]

use core::alloc::{GlobalAlloc, Layout};
use core::cell::Cell;
use core::mem::MaybeUninit;
use cortex_m_semihosting::debug::{self, EXIT_FAILURE, EXIT_SUCCESS};
use cortex_m_semihosting::hprintln;
use critical_section::Mutex;
use embedded_alloc::LlffHeap;
use systick_timer::SystickDriver;

/// QEMU's lm3s6965evb runs SysTick from a 12 MHz clock; embassy-time ticks at
/// 1 kHz (`tick-hz-1_000`).
const SYSCLK_HZ: u64 = 12_000_000;

embassy_time_driver::time_driver_impl!(static DRIVER: SystickDriver<4>
    = SystickDriver::new_default(SYSCLK_HZ));

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

/// Sets up the heap and starts SysTick (embassy-time's clock). Call once,
/// first thing in `main`.
pub fn init() {
    static mut HEAP_MEM: [MaybeUninit<u8>; HEAP_SIZE] = [MaybeUninit::uninit(); HEAP_SIZE];
    // SAFETY: called once, before any allocation; `HEAP_MEM` is used by
    // nothing else.
    unsafe { HEAP.heap.init(core::ptr::addr_of_mut!(HEAP_MEM) as usize, HEAP_SIZE) };
    let mut p = cortex_m::Peripherals::take().unwrap();
    DRIVER.start(&mut p.SYST);
}

/// To be called from the SysTick exception handler of each binary.
pub fn on_systick() {
    DRIVER.systick_interrupt();
}

/// Ends the QEMU run with the given verdict.
pub fn exit(ok: bool) -> ! {
    debug::exit(if ok { EXIT_SUCCESS } else { EXIT_FAILURE });
    #[allow(clippy::empty_loop)]
    loop {}
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    hprintln!("FAIL: panic: {}", info);
    exit(false)
}
