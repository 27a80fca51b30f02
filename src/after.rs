//! After-funcs: callbacks that run once a context is done.

use crate::node::AfterFuncInner;
use crate::sync::{AtomicBool, Ordering};
use crate::Arc;
use core::fmt;

/// A callback registered with [`Context::after_func`](crate::Context::after_func).
///
/// The callback runs once, on the thread that cancels the context (or that
/// observes its deadline, or the timer's thread), after every lock is
/// released. Dropping an `AfterFunc` does **not** stop it (as in Go).
///
/// ```
/// use ctxcore::Context;
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use std::sync::Arc;
///
/// let runs = Arc::new(AtomicUsize::new(0));
/// let (ctx, handle) = Context::background().with_cancel();
/// let r = runs.clone();
/// let stopped = ctx.after_func(move || { r.fetch_add(1, Ordering::SeqCst); });
/// let r = runs.clone();
/// let _kept = ctx.after_func(move || { r.fetch_add(10, Ordering::SeqCst); });
/// assert!(stopped.stop());   // prevented it from running
/// assert!(!stopped.stop());  // already stopped
/// handle.cancel();
/// assert_eq!(runs.load(Ordering::SeqCst), 10);
/// ```
pub struct AfterFunc {
    state: State,
}

enum State {
    /// Registered on a node.
    Registered(Arc<AfterFuncInner>),
    /// The context was already done: the callback ran during registration.
    Ran,
    /// The context can never be done: the callback was dropped unrun; the flag
    /// records whether `stop` was called.
    Never(AtomicBool),
}

impl AfterFunc {
    pub(crate) fn registered(inner: Option<Arc<AfterFuncInner>>) -> Self {
        match inner {
            Some(i) => AfterFunc {
                state: State::Registered(i),
            },
            None => AfterFunc { state: State::Ran },
        }
    }

    pub(crate) fn never() -> Self {
        AfterFunc {
            state: State::Never(AtomicBool::new(false)),
        }
    }

    /// Stops the callback from running. Returns true iff this call prevented
    /// it from running (false if it already ran or started, or was already
    /// stopped). May be called any number of times, from any thread.
    pub fn stop(&self) -> bool {
        match &self.state {
            State::Registered(inner) => AfterFuncInner::stop(inner),
            State::Ran => false,
            State::Never(stopped) => !stopped.swap(true, Ordering::AcqRel),
        }
    }
}

impl fmt::Debug for AfterFunc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AfterFunc").finish_non_exhaustive()
    }
}
