//! Prints the sizes of ctxcore's public types (figures for docs/design.md).
//!
//! Run with `cargo run --example sizes`.
use core::mem::size_of;
use ctxcore::{AfterFunc, CancelHandle, Context, Done, DoneOwned};

fn main() {
    println!("Context       {:>4} bytes", size_of::<Context>());
    println!("CancelHandle  {:>4} bytes", size_of::<CancelHandle>());
    println!("AfterFunc     {:>4} bytes", size_of::<AfterFunc>());
    println!(
        "Done<'_>      {:>4} bytes (waiter embedded: no allocation per wait)",
        size_of::<Done<'static>>()
    );
    println!("DoneOwned     {:>4} bytes", size_of::<DoneOwned>());
}
