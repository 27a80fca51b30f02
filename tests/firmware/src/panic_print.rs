//! The test firmwares' panic handler: prints the message through
//! semihosting (`core::fmt`), then exits with the failure code.

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    crate::board::hprintln!("FAIL: panic: {}", info);
    crate::board::exit(false)
}
