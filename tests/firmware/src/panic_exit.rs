//! The size firmwares' panic handler: the failure exit code, nothing
//! printed. The message is never formatted, so no `core::fmt` is linked for
//! it (what `panic-halt` or a `defmt` firmware ships); the verdict of a size
//! firmware is its semihosting exit code alone (docs/embedded.md, "Flash").

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    crate::board::exit(false)
}
