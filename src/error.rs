//! Why a context is done.

use core::fmt;

/// Why a context is done: Go's `context.Canceled` and
/// `context.DeadlineExceeded`.
///
/// ```
/// use ctxcore::{Context, Error};
///
/// let (ctx, handle) = Context::background().with_cancel();
/// assert_eq!(ctx.err(), None);
/// handle.cancel();
/// assert_eq!(ctx.err(), Some(Error::Canceled));
/// assert_eq!(Error::Canceled.to_string(), "context canceled");
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Error {
    /// The context, or one of its ancestors, was cancelled.
    Canceled,
    /// The deadline of the context, or of one of its ancestors, passed.
    DeadlineExceeded,
}

impl Error {
    /// Whether this is [`Error::DeadlineExceeded`] (Go's `os.IsTimeout`).
    ///
    /// ```
    /// assert!(ctxcore::Error::DeadlineExceeded.is_deadline_exceeded());
    /// assert!(!ctxcore::Error::Canceled.is_deadline_exceeded());
    /// ```
    pub const fn is_deadline_exceeded(self) -> bool {
        matches!(self, Error::DeadlineExceeded)
    }

    /// Whether this is [`Error::Canceled`].
    ///
    /// ```
    /// assert!(ctxcore::Error::Canceled.is_canceled());
    /// ```
    pub const fn is_canceled(self) -> bool {
        matches!(self, Error::Canceled)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Error::Canceled => "context canceled",
            Error::DeadlineExceeded => "context deadline exceeded",
        })
    }
}

impl core::error::Error for Error {}
