//! Why a context is done: [`Error`], and [`ContextError`], the error with
//! its cause.

use crate::cause::Cause;
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

/// Why a context is done, with the cause that made it so: the [`Error`]
/// kind together with the [`Cause`] of the cancellation that won. Go's
/// `ctx.Err()` and `context.Cause(ctx)` in one value that crosses an API
/// edge: `?` turns it into a `Box<dyn Error + Send + Sync>` (or an
/// `anyhow::Error`), and with `std` into a [`std::io::Error`].
///
/// Get one from [`Context::error`], [`ContextRef::error`],
/// [`StaticContext::error`] or [`Context::run_with_cause`]. It is `Clone`
/// (cheap: a copy or one reference-count increment), `Send + Sync +
/// 'static`, and an [`core::error::Error`]:
///
/// - **`Display`** is Go's: `context canceled` or `context deadline
///   exceeded`, then `: ` and the cause when one was given (`context
///   canceled: client disconnected`).
/// - **`source()`** is the cause when it is an error (given with
///   `cancel_with(err)` or a `_cause` constructor): downcast it back to your
///   type. A `&'static str` cause is only text, so it is in `Display` and
///   there is no source; without an explicit cause there is none either.
///   (Because `Display` already shows the cause, a printer that walks the
///   whole chain, like `anyhow`'s `{:#}`, shows an error cause twice; print
///   [`kind`](Self::kind) and walk [`source`](core::error::Error::source) if
///   that matters.)
///
/// ```
/// use ctxcore::{Context, ContextError, Error};
///
/// #[derive(Debug)]
/// struct ClientGone;
/// impl std::fmt::Display for ClientGone {
///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
///         f.write_str("client disconnected")
///     }
/// }
/// impl std::error::Error for ClientGone {}
///
/// let (request, handle) = Context::background().with_cancel();
/// let (query, _q) = request.with_cancel();
/// assert!(query.error().is_none());
/// handle.cancel_with(ClientGone);
///
/// let err: ContextError = query.error().unwrap();
/// assert_eq!(err.kind(), Error::Canceled);
/// assert_eq!(err.to_string(), "context canceled: client disconnected");
/// let source = std::error::Error::source(&err).unwrap();
/// assert!(source.downcast_ref::<ClientGone>().is_some());
///
/// // Crosses an API edge with `?`, cause and all.
/// fn handler(ctx: &Context) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
///     if let Some(err) = ctx.error() {
///         return Err(err)?;
///     }
///     Ok(())
/// }
/// let boxed = handler(&query).unwrap_err();
/// assert!(boxed.downcast_ref::<ContextError>().unwrap().cause().is::<ClientGone>());
/// ```
///
/// [`Context::error`]: crate::Context::error
/// [`Context::run_with_cause`]: crate::Context::run_with_cause
/// [`ContextRef::error`]: crate::ContextRef::error
/// [`StaticContext::error`]: crate::StaticContext::error
#[derive(Clone)]
pub struct ContextError {
    kind: Error,
    cause: Cause,
}

impl ContextError {
    /// An error of `kind` with `cause` (what [`Context::error`] reports after
    /// `cancel_with(cause)`).
    ///
    /// ```
    /// use ctxcore::{ContextError, Error};
    /// let err = ContextError::new(Error::DeadlineExceeded, "database too slow");
    /// assert_eq!(err.to_string(), "context deadline exceeded: database too slow");
    /// ```
    ///
    /// [`Context::error`]: crate::Context::error
    pub fn new(kind: Error, cause: impl Into<Cause>) -> Self {
        ContextError {
            kind,
            cause: cause.into(),
        }
    }

    /// An error of `kind` without an explicit cause: its cause is the kind
    /// itself, as [`Context::cause`](crate::Context::cause) reports it.
    ///
    /// ```
    /// use ctxcore::{ContextError, Error};
    /// let err = ContextError::from_error(Error::Canceled);
    /// assert_eq!(err.to_string(), "context canceled");
    /// assert!(!err.has_cause());
    /// assert!(std::error::Error::source(&err).is_none());
    /// ```
    pub const fn from_error(kind: Error) -> Self {
        ContextError {
            kind,
            cause: Cause::from_error(kind),
        }
    }

    /// Why the context is done: [`Error::Canceled`] or
    /// [`Error::DeadlineExceeded`] (Go's `ctx.Err()`).
    ///
    /// ```
    /// use ctxcore::{ContextError, Error};
    /// assert_eq!(ContextError::new(Error::Canceled, "stop").kind(), Error::Canceled);
    /// ```
    pub const fn kind(&self) -> Error {
        self.kind
    }

    /// The cause of the cancellation that won (Go's `context.Cause(ctx)`):
    /// the one given, or the [`Error`] itself when none was.
    ///
    /// ```
    /// use ctxcore::{ContextError, Error};
    /// let err = ContextError::new(Error::Canceled, "shutting down");
    /// assert_eq!(err.cause().as_str(), Some("shutting down"));
    /// ```
    pub const fn cause(&self) -> &Cause {
        &self.cause
    }

    /// The cause, by value.
    ///
    /// ```
    /// use ctxcore::{ContextError, Error};
    /// let cause = ContextError::from_error(Error::Canceled).into_cause();
    /// assert_eq!(cause.as_error(), Some(Error::Canceled));
    /// ```
    pub fn into_cause(self) -> Cause {
        self.cause
    }

    /// Whether an explicit cause was given (the cause is not just the
    /// [`kind`](Self::kind) again).
    ///
    /// ```
    /// use ctxcore::{ContextError, Error};
    /// assert!(ContextError::new(Error::Canceled, "stop").has_cause());
    /// assert!(!ContextError::from_error(Error::DeadlineExceeded).has_cause());
    /// ```
    pub fn has_cause(&self) -> bool {
        self.cause.as_error() != Some(self.kind)
    }

    /// Whether the kind is [`Error::Canceled`].
    ///
    /// ```
    /// assert!(ctxcore::ContextError::from_error(ctxcore::Error::Canceled).is_canceled());
    /// ```
    pub const fn is_canceled(&self) -> bool {
        self.kind.is_canceled()
    }

    /// Whether the kind is [`Error::DeadlineExceeded`] (Go's `os.IsTimeout`).
    ///
    /// ```
    /// use ctxcore::{ContextError, Error};
    /// assert!(ContextError::from_error(Error::DeadlineExceeded).is_deadline_exceeded());
    /// ```
    pub const fn is_deadline_exceeded(&self) -> bool {
        self.kind.is_deadline_exceeded()
    }

    /// The error of a node, if it is done: its kind, then the cause of the
    /// same winning cancellation (once a node is done neither changes).
    pub(crate) fn of_node(node: &crate::node::Node) -> Option<Self> {
        let err = node.err()?;
        let cause = node.cause().unwrap_or(Cause::from_error(err));
        Some(ContextError { kind: err, cause })
    }
}

impl From<Error> for ContextError {
    /// [`ContextError::from_error`]: no explicit cause.
    fn from(kind: Error) -> Self {
        ContextError::from_error(kind)
    }
}

impl From<ContextError> for Error {
    /// The kind, without the cause.
    fn from(err: ContextError) -> Self {
        err.kind
    }
}

impl fmt::Display for ContextError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.kind, f)?;
        if self.has_cause() {
            write!(f, ": {}", self.cause)?;
        }
        Ok(())
    }
}

impl fmt::Debug for ContextError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContextError")
            .field("kind", &self.kind)
            .field("cause", &self.cause)
            .finish()
    }
}

impl core::error::Error for ContextError {
    /// The cause, when it is an error other than the kind itself.
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        if !self.has_cause() {
            return None;
        }
        let source: &(dyn core::error::Error + 'static) = self.cause.as_dyn_error()?;
        Some(source)
    }
}

/// The [`std::io::ErrorKind`] of a context error: `TimedOut` for a deadline,
/// `Other` for a cancel.
///
/// Not `Interrupted`, although "interrupted" is what a cancel means: std's
/// I/O loops (`read_exact`, `write_all`, `read_to_end`, `io::copy`, ...)
/// treat `Interrupted` as "retry at once", so a reader that reports a
/// cancelled context as `Interrupted` would spin forever inside them, its
/// context staying cancelled. Recover the context error with
/// `io_err.get_ref()` and `downcast_ref::<ContextError>()` (or `<Error>`).
#[cfg(feature = "std")]
fn io_kind(kind: Error) -> std::io::ErrorKind {
    match kind {
        Error::DeadlineExceeded => std::io::ErrorKind::TimedOut,
        Error::Canceled => std::io::ErrorKind::Other,
    }
}

#[cfg(feature = "std")]
impl From<ContextError> for std::io::Error {
    /// An I/O error of kind `TimedOut` for a deadline and `Other` for a
    /// cancel, carrying the `ContextError` (and so its cause) inside.
    ///
    /// A cancel is deliberately not `Interrupted`: std's I/O loops
    /// (`read_exact`, `write_all`, `read_to_end`, `io::copy`) retry
    /// `Interrupted` at once, so a reader that reported a cancelled context
    /// that way would spin forever.
    ///
    /// ```
    /// use ctxcore::{Context, ContextError};
    /// use std::io::ErrorKind;
    /// use std::time::Duration;
    ///
    /// fn read_request(ctx: &Context) -> std::io::Result<Vec<u8>> {
    ///     if let Some(err) = ctx.error() {
    ///         return Err(err.into());
    ///     }
    ///     Ok(Vec::new())
    /// }
    ///
    /// let (ctx, _h) = Context::background().with_timeout_cause(Duration::ZERO, "too slow");
    /// let io = read_request(&ctx).unwrap_err();
    /// assert_eq!(io.kind(), ErrorKind::TimedOut);
    /// assert_eq!(io.to_string(), "context deadline exceeded: too slow");
    /// let inner = io.get_ref().unwrap().downcast_ref::<ContextError>().unwrap();
    /// assert_eq!(inner.cause().as_str(), Some("too slow"));
    ///
    /// let (ctx, h) = Context::background().with_cancel();
    /// h.cancel();
    /// assert_eq!(read_request(&ctx).unwrap_err().kind(), ErrorKind::Other);
    /// ```
    fn from(err: ContextError) -> Self {
        std::io::Error::new(io_kind(err.kind), err)
    }
}

#[cfg(feature = "std")]
impl From<Error> for std::io::Error {
    /// As `From<ContextError>`: `TimedOut` for a deadline, `Other` for a
    /// cancel, with the [`Error`] inside.
    ///
    /// ```
    /// let io: std::io::Error = ctxcore::Error::DeadlineExceeded.into();
    /// assert_eq!(io.kind(), std::io::ErrorKind::TimedOut);
    /// ```
    fn from(err: Error) -> Self {
        std::io::Error::new(io_kind(err), err)
    }
}
