//! What every firmware image here shares: the tick source for embassy-time,
//! start-up and semihosting verdicts. Included with `#[path]` by each binary
//! so that each one links exactly what it uses; the `alloc` binaries add
//! `heap.rs`. The panic handler is not here: each binary includes one of
//! `panic_print.rs` (the test firmwares: prints the panic message, so
//! `core::fmt` is linked) or `panic_exit.rs` (the `size_*` firmwares: the
//! failure exit code only, no formatting, as a firmware that logs with
//! `defmt` or not at all would ship).
//!
//! Two boards:
//! - Cortex-M (QEMU's lm3s6965evb): SysTick through `systick-timer`, output
//!   and exit through `cortex-m-semihosting`.
//! - RISC-V (QEMU's `virt`, machine mode, one hart): the CLINT's machine
//!   timer (`mtime`/`mtimecmp` at 0x0200_0000) interrupts every millisecond
//!   and runs embassy-time's timer queue; output and exit through the
//!   `semihosting` crate.
//!
//! Each binary names its tick handler `SysTick` on both: on RISC-V the
//! attribute makes it the machine-timer interrupt handler, and
//! [`on_systick`] re-arms `mtimecmp`.

// Unused by the size firmwares, which print nothing.
#[cfg(target_arch = "arm")]
#[allow(unused_imports)]
pub use cortex_m_semihosting::hprintln;
#[cfg(target_arch = "riscv32")]
#[allow(unused_imports)]
pub use semihosting::println as hprintln;

/// Which CPU this image is for, as the firmwares print it.
#[allow(dead_code)]
pub const CPU: &str = if cfg!(target_arch = "riscv32") {
    if cfg!(target_has_atomic = "ptr") {
        "RV32IMAC"
    } else {
        "RV32IMC"
    }
} else if cfg!(target_has_atomic = "ptr") {
    "Cortex-M3"
} else {
    "Cortex-M0"
};

#[cfg(target_arch = "arm")]
mod arch {
    use cortex_m_semihosting::debug::{self, EXIT_FAILURE, EXIT_SUCCESS};
    use systick_timer::SystickDriver;

    /// QEMU's lm3s6965evb runs SysTick from a 12 MHz clock; embassy-time ticks
    /// at 1 kHz (`tick-hz-1_000`).
    const SYSCLK_HZ: u64 = 12_000_000;

    embassy_time_driver::time_driver_impl!(static DRIVER: SystickDriver<4>
        = SystickDriver::new_default(SYSCLK_HZ));

    pub fn init() {
        let mut p = cortex_m::Peripherals::take().unwrap();
        DRIVER.start(&mut p.SYST);
    }

    pub fn on_systick() {
        DRIVER.systick_interrupt();
    }

    pub fn exit(ok: bool) {
        debug::exit(if ok { EXIT_SUCCESS } else { EXIT_FAILURE });
    }
}

#[cfg(target_arch = "riscv32")]
mod arch {
    use core::cell::{Cell, RefCell};
    use core::task::Waker;
    use critical_section::Mutex;
    use embassy_time_queue_utils::Queue;

    /// The `virt` machine's CLINT: `mtime` (10 MHz) and hart 0's `mtimecmp`,
    /// each 64 bits as two 32-bit words (RV32 has no 64-bit access).
    const MTIME: *const u32 = 0x0200_bff8 as *const u32;
    const MTIMECMP: *mut u32 = 0x0200_4000 as *mut u32;
    /// `mtime` counts at 10 MHz on QEMU's `virt`; embassy-time ticks at 1 kHz.
    const MTIME_PER_TICK: u64 = 10_000_000 / 1_000;

    fn mtime() -> u64 {
        loop {
            // SAFETY: MMIO reads of the CLINT's mtime, always mapped on `virt`.
            let (hi, lo, hi2) = unsafe {
                (
                    MTIME.add(1).read_volatile(),
                    MTIME.read_volatile(),
                    MTIME.add(1).read_volatile(),
                )
            };
            if hi == hi2 {
                return (u64::from(hi) << 32) | u64::from(lo);
            }
        }
    }

    fn set_mtimecmp(at: u64) {
        // SAFETY: MMIO writes of hart 0's mtimecmp. High word first to
        // all-ones so that no intermediate value lies in the past.
        unsafe {
            MTIMECMP.add(1).write_volatile(u32::MAX);
            MTIMECMP.write_volatile(at as u32);
            MTIMECMP.add(1).write_volatile((at >> 32) as u32);
        }
    }

    /// A periodic 1 kHz tick on the machine timer; every tick wakes the due
    /// timers of embassy's queue (as `systick-timer` does on Cortex-M).
    struct ClintDriver {
        queue: Mutex<RefCell<Queue>>,
        next: Mutex<Cell<u64>>,
    }

    impl embassy_time_driver::Driver for ClintDriver {
        fn now(&self) -> u64 {
            mtime() / MTIME_PER_TICK
        }
        fn schedule_wake(&self, at: u64, waker: &Waker) {
            critical_section::with(|cs| {
                // Woken by the next tick at or after `at`.
                self.queue.borrow_ref_mut(cs).schedule_wake(at, waker);
            });
        }
    }

    embassy_time_driver::time_driver_impl!(static DRIVER: ClintDriver = ClintDriver {
        queue: Mutex::new(RefCell::new(Queue::new())),
        next: Mutex::new(Cell::new(0)),
    });

    pub fn init() {
        critical_section::with(|cs| {
            let next = mtime() + MTIME_PER_TICK;
            DRIVER.next.borrow(cs).set(next);
            set_mtimecmp(next);
        });
        // SAFETY: enables the machine-timer interrupt, whose handler each
        // binary defines; everything it touches is initialised above.
        unsafe {
            riscv::register::mie::set_mtimer();
            riscv::interrupt::enable();
        }
    }

    pub fn on_systick() {
        critical_section::with(|cs| {
            let next = DRIVER.next.borrow(cs).get() + MTIME_PER_TICK;
            DRIVER.next.borrow(cs).set(next);
            set_mtimecmp(next);
            DRIVER
                .queue
                .borrow_ref_mut(cs)
                .next_expiration(mtime() / MTIME_PER_TICK);
        });
    }

    pub fn exit(ok: bool) {
        semihosting::process::exit(if ok { 0 } else { 1 });
    }
}

/// Starts embassy-time's clock (SysTick, or the RISC-V machine timer). Call
/// once, first thing in `main` (after the heap, if any).
pub fn init() {
    arch::init();
}

/// To be called from the tick handler (`SysTick`) of each binary.
pub fn on_systick() {
    arch::on_systick();
}

/// Ends the QEMU run with the given verdict.
pub fn exit(ok: bool) -> ! {
    arch::exit(ok);
    #[allow(clippy::empty_loop)]
    loop {}
}
