//! What every firmware image here shares: the SysTick time driver for
//! embassy-time, start-up and semihosting verdicts. Included with `#[path]`
//! by each binary so that each one links exactly what it uses; the `alloc`
//! binaries add `heap.rs`.

use cortex_m_semihosting::debug::{self, EXIT_FAILURE, EXIT_SUCCESS};
use cortex_m_semihosting::hprintln;
use systick_timer::SystickDriver;

/// QEMU's lm3s6965evb runs SysTick from a 12 MHz clock; embassy-time ticks at
/// 1 kHz (`tick-hz-1_000`).
const SYSCLK_HZ: u64 = 12_000_000;

embassy_time_driver::time_driver_impl!(static DRIVER: SystickDriver<4>
    = SystickDriver::new_default(SYSCLK_HZ));

/// Starts SysTick (embassy-time's clock). Call once, first thing in `main`
/// (after the heap, if any).
pub fn init() {
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
