//! The error of a query run under a context.

use core::fmt;

use ctxcore::ContextError;

/// What a query run under a context returns on failure: the context's error
/// (with its cause) when the context was done before or while the query ran,
/// or the driver's own error for anything else.
///
/// A query that failed on its own (a syntax error, a constraint violation, a
/// broken connection) is always [`Error::Driver`], even when the context
/// happens to be done by the time the error is seen: only a query that the
/// context stopped (or never started) is [`Error::Context`].
///
/// ```
/// use ctxcore::{Context, Error as Kind};
/// use ctxcore_sql::Error;
///
/// let (ctx, cancel) = Context::background().with_cancel();
/// cancel.cancel_with("client went away");
/// let err: Error<std::io::Error> = Error::Context(ctx.error().unwrap());
/// assert_eq!(err.context_error().map(|e| e.kind()), Some(Kind::Canceled));
/// assert_eq!(err.to_string(), "context canceled: client went away");
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum Error<E> {
    /// The context was done: the query was never sent, or the engine stopped
    /// it. Carries the context's error kind and cause.
    Context(ContextError),
    /// The driver's own error.
    Driver(E),
}

impl<E> Error<E> {
    /// The context's error, if the context stopped the query.
    pub fn context_error(&self) -> Option<&ContextError> {
        match self {
            Error::Context(e) => Some(e),
            Error::Driver(_) => None,
        }
    }

    /// The driver's error, if the query failed on its own.
    pub fn driver_error(&self) -> Option<&E> {
        match self {
            Error::Driver(e) => Some(e),
            Error::Context(_) => None,
        }
    }

    /// Whether the context stopped the query.
    pub fn is_context(&self) -> bool {
        matches!(self, Error::Context(_))
    }
}

impl<E> From<ContextError> for Error<E> {
    fn from(e: ContextError) -> Self {
        Error::Context(e)
    }
}

impl<E: fmt::Display> fmt::Display for Error<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Context(e) => fmt::Display::fmt(e, f),
            Error::Driver(e) => fmt::Display::fmt(e, f),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for Error<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Context(e) => Some(e),
            Error::Driver(e) => Some(e),
        }
    }
}
