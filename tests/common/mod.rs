//! Helpers shared by the integration tests (`mod common;` in each).

use core::pin::Pin;
use std::sync::Mutex;

/// A leaked value's address, kept only so that it stays reachable.
struct Leaked(#[allow(dead_code)] *const ());
// SAFETY: the pointer is only kept, never used.
unsafe impl Send for Leaked {}

/// Everything the tests leak on purpose, reachable from a static: Miri's
/// leak check and LeakSanitizer then report only what the library loses.
static LEAKED: Mutex<Vec<Leaked>> = Mutex::new(Vec::new());

/// `mem::forget` of a pinned box (its `Drop` never runs, its memory never
/// goes), with the address kept reachable.
pub fn leak<T>(b: Pin<Box<T>>) {
    let p = &*b as *const T as *const ();
    core::mem::forget(b);
    LEAKED.lock().unwrap_or_else(|e| e.into_inner()).push(Leaked(p));
}
