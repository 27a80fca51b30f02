//! A bridge to tokio-util's [`CancellationToken`], both ways (feature
//! `tokio-util`): [`Context::cancellation_token`] gives a token that is
//! cancelled when the context is done, [`Context::with_cancellation_token`]
//! a context that is done when a token is cancelled. Libraries that take
//! only tokens then work with ctxcore trees, and tokens from tokio's
//! ecosystem can cancel a ctxcore tree.
//!
//! Neither direction spawns a task or needs a runtime:
//! - context → token: an after-func on the context cancels the token;
//! - token → context: the bridge polls the token's `cancelled_owned()`
//!   future once, with a waker of its own; the token's `cancel()` wakes that
//!   waker, which cancels the context (with the cause [`TokenCancelled`]) on
//!   the thread that cancelled the token. No task, and no polling after the
//!   first.
//!
//! No new lock order: the bridge's own mutex guards only the slot of the
//! token's future and is never held while a context is cancelled, a waker
//! woken or user data dropped. That the token's own locks are not held
//! either, when its `cancel()` wakes the bridge, is tokio-util's promise
//! since 0.7.20 (tokio-rs/tokio#8556: descendants are notified after its
//! locks are released), which is why the feature requires `0.7.20`: with
//! an older tokio-util, an after-func of the bridged context that touched
//! the parent token (`is_cancelled`, `child_token`) would deadlock.
//!
//! Costs and limits:
//! - Bridges chained through each other (context → token → context → …)
//!   cancel one link per nested call on the cancelling thread: the chain's
//!   length is bounded by that thread's stack, unlike a ctxcore subtree,
//!   which is cancelled iteratively. Keep such chains short (hundreds of
//!   links overflowed a 2 MiB debug stack in review).
//! - Dropping a [`ContextToken`] stops its after-func as
//!   [`AfterFunc::stop`] does: it does not wait for a run already under way,
//!   so the token may still be cancelled just after the drop (Go's `stop`).

use crate::cause::Cause;
use crate::context::{CancelHandle, Context};
use crate::error::Error;
use crate::AfterFunc;
use core::fmt;
use core::future::Future;
use core::ops::Deref;
use core::pin::Pin;
use core::task::{Context as TaskContext, Waker};
use std::boxed::Box;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Wake;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// The cause of a context made by [`Context::with_cancellation_token`]
/// when its token is cancelled (its error is [`Error::Canceled`]).
/// Downcast the cause to it to tell that cancel from the others.
///
/// ```
/// use ctxcore::{Context, Error, TokenCancelled};
/// use tokio_util::sync::CancellationToken;
///
/// let token = CancellationToken::new();
/// let (ctx, _h) = Context::background().with_cancellation_token(&token);
/// token.cancel();
/// assert_eq!(ctx.err(), Some(Error::Canceled));
/// assert!(ctx.cause().unwrap().is::<TokenCancelled>());
/// assert_eq!(ctx.error().unwrap().to_string(), "context canceled: cancellation token cancelled");
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TokenCancelled;

impl fmt::Display for TokenCancelled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("cancellation token cancelled")
    }
}

impl core::error::Error for TokenCancelled {}

/// A [`CancellationToken`] that is cancelled when a context is done, from
/// [`Context::cancellation_token`]. It dereferences to the token: pass
/// `&token` or `token.clone()` (a plain `CancellationToken`) to the
/// libraries that take one.
///
/// The link from the context to the token is an after-func on the context.
/// Dropping the `ContextToken` stops it (the token, and every clone of it,
/// then no longer follows the context), so a long-lived context does not
/// accumulate links of tokens nobody uses: keep the `ContextToken` for as
/// long as the token must follow the context, as the scope of the call that
/// uses it. [`detach`](Self::detach) gives that up and returns the token; the
/// link then lives until the context is done.
///
/// ```
/// use ctxcore::Context;
///
/// let (ctx, cancel) = Context::background().with_cancel();
/// let token = ctx.cancellation_token();
/// let for_library = token.clone(); // a tokio_util CancellationToken
/// assert!(!for_library.is_cancelled());
/// cancel.cancel();
/// assert!(for_library.is_cancelled());
///
/// // Dropped, the link is gone: the token no longer follows the context.
/// let (ctx, cancel) = Context::background().with_cancel();
/// let token = ctx.cancellation_token();
/// let kept = token.clone();
/// drop(token);
/// cancel.cancel();
/// assert!(!kept.is_cancelled());
/// ```
pub struct ContextToken {
    token: CancellationToken,
    /// `None` once detached.
    link: Option<AfterFunc>,
}

impl ContextToken {
    /// The token.
    ///
    /// ```
    /// let token = ctxcore::Context::background().cancellation_token();
    /// let t: &tokio_util::sync::CancellationToken = token.token();
    /// assert!(!t.is_cancelled());
    /// ```
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Returns the token and keeps the link: it is cancelled when the
    /// context is done, however long that takes (the link, holding a clone
    /// of the token, lives until then; a context that can never be done
    /// holds none).
    ///
    /// ```
    /// use ctxcore::Context;
    ///
    /// let (ctx, cancel) = Context::background().with_cancel();
    /// let token = ctx.cancellation_token().detach();
    /// cancel.cancel();
    /// assert!(token.is_cancelled());
    /// ```
    pub fn detach(mut self) -> CancellationToken {
        self.link = None;
        self.token.clone()
    }
}

impl Deref for ContextToken {
    type Target = CancellationToken;

    fn deref(&self) -> &CancellationToken {
        &self.token
    }
}

impl Drop for ContextToken {
    fn drop(&mut self) {
        if let Some(link) = &self.link {
            // Drops the after-func's clone of the token, if it has not run.
            link.stop();
        }
    }
}

impl fmt::Debug for ContextToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContextToken")
            .field("cancelled", &self.token.is_cancelled())
            .field("linked", &self.link.is_some())
            .finish()
    }
}

/// The token → context link: the context to cancel and the token's
/// `cancelled_owned()` future, polled with a waker that is this link.
struct TokenLink {
    /// The context that the token cancels (a clone: it keeps the node alive
    /// until the link is dropped).
    ctx: Context,
    slot: Mutex<Slot>,
}

enum Slot {
    /// Waiting for the token; once polled, its waker (this link) is
    /// registered with the token.
    Waiting(Pin<Box<WaitForCancellationFutureOwned>>),
    /// The token fired or the context is done: nothing to wait for.
    Closed,
}

impl TokenLink {
    /// Polls the token's future (first registration, or a wake-up); if the
    /// token is cancelled, cancels the context. Nothing but the poll runs
    /// under the slot's lock.
    fn poll_token(self: &Arc<Self>) {
        let waker = Waker::from(Arc::clone(self));
        let mut cx = TaskContext::from_waker(&waker);
        let mut slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        let fired = match &mut *slot {
            Slot::Waiting(fut) => fut.as_mut().poll(&mut cx).is_ready(),
            Slot::Closed => return,
        };
        let old = if fired {
            core::mem::replace(&mut *slot, Slot::Closed)
        } else {
            Slot::Closed
        };
        drop(slot);
        // The future (and the waker it registered) is dropped with no lock
        // held.
        drop(old);
        drop(waker);
        if fired {
            self.cancel_context();
        }
    }

    /// Cancels the context with [`TokenCancelled`]. A panic of the
    /// context's callbacks (after-funcs, wakers) is caught here, after the
    /// whole cancellation is complete (ctxcore re-raises such panics only
    /// then): it must not unwind into tokio's `notify_waiters`, which would
    /// leave the token's other waiters unwoken. The panic hook has already
    /// reported it.
    fn cancel_context(&self) {
        if let Some(node) = self.ctx.node_ref() {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                node.cancel(Error::Canceled, Some(Cause::from(TokenCancelled)));
            }));
        }
    }

    /// The context is done: stop waiting for the token. Breaks the cycle
    /// link → future → registered waker → link.
    fn close(&self) {
        let old = {
            let mut slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
            core::mem::replace(&mut *slot, Slot::Closed)
        };
        drop(old);
    }
}

impl Wake for TokenLink {
    fn wake(self: Arc<Self>) {
        self.poll_token();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.poll_token();
    }
}

impl Context {
    /// A [`CancellationToken`] that is cancelled when this context is done
    /// (at once if it already is), for libraries that take tokens. No task:
    /// an after-func on the context cancels the token, on the thread that
    /// cancels the context. The link lives as long as the returned
    /// [`ContextToken`] (or, [`detach`](ContextToken::detach)ed, until the
    /// context is done).
    ///
    /// Costs the token (one allocation) and one after-func entry (one
    /// allocation, none on a context that can never be done); see
    /// `docs/benchmarks.md` for the figures.
    ///
    /// ```
    /// use ctxcore::Context;
    /// use std::time::Duration;
    ///
    /// let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    /// let (ctx, _h) = Context::background().with_timeout(Duration::from_millis(10));
    /// let token = ctx.cancellation_token();
    /// // A library that only takes tokens.
    /// let work = rt.spawn({
    ///     let token = token.clone();
    ///     async move { token.cancelled().await }
    /// });
    /// rt.block_on(work).unwrap(); // returns once the deadline has passed
    /// assert!(ctx.is_done());
    /// ```
    pub fn cancellation_token(&self) -> ContextToken {
        let token = CancellationToken::new();
        let link = {
            let token = token.clone();
            self.after_func(move || token.cancel())
        };
        ContextToken {
            token,
            link: Some(link),
        }
    }

    /// A child of this context that is also done when `token` is cancelled,
    /// with [`Error::Canceled`] and the cause [`TokenCancelled`]: tokens
    /// from tokio's ecosystem (a server's shutdown token, a
    /// `TaskTracker`'s owner) cancel a ctxcore tree. Like
    /// [`with_cancel`](Self::with_cancel), its handle cancels it, and
    /// dropping the handle does too.
    ///
    /// What it costs: no spawned task and no runtime. The bridge polls the
    /// token's `cancelled_owned()` future once, with a waker of its own, and
    /// keeps it (one allocation for the link, one for the future, plus an
    /// after-func entry on the child); `token.cancel()` wakes that waker,
    /// which cancels the context right there, on the cancelling thread
    /// (after-funcs included). Once the child is done, for any reason, the
    /// link drops the future and with it its clone of the token, so neither
    /// side leaks: dropping the handle (or an ancestor's cancel) frees the
    /// bridge; a token dropped by everyone else stays alive only until the
    /// child is done. A [`detach`](CancelHandle::detach)ed handle keeps the
    /// bridge (and the child) alive until the token or an ancestor cancels
    /// it, as a detached `with_cancel` child lives until an ancestor does.
    /// Measured in `benches/bridge.rs` (`docs/benchmarks.md`).
    ///
    /// A panic in the child's callbacks (after-funcs, wakers) during a
    /// cancel that the token drives is caught once the cancellation is
    /// complete (the panic hook has reported it) rather than unwinding into
    /// `token.cancel()`, where it would keep the token's other waiters from
    /// being woken.
    ///
    /// ```
    /// use ctxcore::{Context, TokenCancelled};
    /// use tokio_util::sync::CancellationToken;
    ///
    /// let shutdown = CancellationToken::new();
    /// let (request, _h) = Context::background().with_cancellation_token(&shutdown);
    /// let (query, _q) = request.with_cancel();
    /// shutdown.cancel();
    /// assert!(query.is_done());
    /// assert!(query.cause().unwrap().is::<TokenCancelled>());
    /// ```
    #[track_caller]
    pub fn with_cancellation_token(&self, token: &CancellationToken) -> (Context, CancelHandle) {
        let (ctx, handle) = self.with_cancel();
        if ctx.is_done() {
            return (ctx, handle);
        }
        if token.is_cancelled() {
            handle.cancel_with(TokenCancelled);
            return (ctx, handle);
        }
        let link = Arc::new(TokenLink {
            ctx: ctx.clone(),
            slot: Mutex::new(Slot::Waiting(Box::pin(token.clone().cancelled_owned()))),
        });
        // Registered first: if the child is done meanwhile (an ancestor's
        // cancel on another thread), this closes the slot, and the poll
        // below finds it closed.
        ctx.after_func({
            let link = Arc::clone(&link);
            move || link.close()
        });
        link.poll_token();
        (ctx, handle)
    }
}
