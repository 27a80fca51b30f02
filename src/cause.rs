//! The reason given to the cancellation that won.

use crate::Error;
use core::fmt;

#[cfg(feature = "alloc")]
use crate::Arc;
#[cfg(feature = "alloc")]
use alloc::boxed::Box;

/// Why a context was cancelled: Go's `context.Cause`.
///
/// Built with `Cause::from(x)` from a `&'static str` (never allocates) or,
/// with the `alloc` feature, from any `E: core::error::Error + Send + Sync +
/// 'static` (and anything else that converts into `Box<dyn Error + Send +
/// Sync>`, such as `String`). An error cause can be downcast back with
/// [`Cause::downcast_ref`]. Cloning is cheap: a copy or one reference-count
/// increment.
///
/// Like `anyhow::Error`, `Cause` is not itself an `Error` (that is what lets
/// one blanket `From` accept every error type).
///
/// ```
/// use ctxcore::{Cause, Context, Error};
///
/// #[derive(Debug)]
/// struct ClientGone;
/// impl std::fmt::Display for ClientGone {
///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
///         f.write_str("client went away")
///     }
/// }
/// impl std::error::Error for ClientGone {}
///
/// let (ctx, handle) = Context::background().with_cancel();
/// handle.cancel_with(ClientGone);
/// let cause = ctx.cause().unwrap();
/// assert!(cause.downcast_ref::<ClientGone>().is_some());
/// assert_eq!(cause.to_string(), "client went away");
/// assert_eq!(ctx.err(), Some(Error::Canceled));
///
/// let static_cause = Cause::from("shutting down");
/// assert_eq!(static_cause.to_string(), "shutting down");
/// ```
#[derive(Clone)]
pub struct Cause(Repr);

#[derive(Clone)]
enum Repr {
    Error(Error),
    Static(&'static str),
    #[cfg(feature = "alloc")]
    Shared(Arc<dyn core::error::Error + Send + Sync + 'static>),
}

impl Cause {
    /// The cause reported when a context was cancelled without one: the
    /// [`Error`] itself.
    ///
    /// ```
    /// use ctxcore::{Cause, Error};
    /// assert_eq!(Cause::from_error(Error::Canceled).as_error(), Some(Error::Canceled));
    /// ```
    pub const fn from_error(err: Error) -> Self {
        Cause(Repr::Error(err))
    }

    /// A cause from a static message; never allocates (usable in `const`).
    ///
    /// ```
    /// const SHUTDOWN: ctxcore::Cause = ctxcore::Cause::from_static("shutdown");
    /// assert_eq!(SHUTDOWN.as_str(), Some("shutdown"));
    /// ```
    pub const fn from_static(msg: &'static str) -> Self {
        Cause(Repr::Static(msg))
    }

    /// If this cause is a bare [`Error`] (no explicit cause was given), that
    /// error.
    pub fn as_error(&self) -> Option<Error> {
        match self.0 {
            Repr::Error(e) => Some(e),
            _ => None,
        }
    }

    /// If this cause is a static message, that message.
    pub fn as_str(&self) -> Option<&'static str> {
        match self.0 {
            Repr::Static(s) => Some(s),
            _ => None,
        }
    }

    /// The cause as an error trait object, if it is one (a bare [`Error`]
    /// or an error cause).
    ///
    /// ```
    /// use ctxcore::{Cause, Error};
    /// assert!(Cause::from_error(Error::Canceled).as_dyn_error().is_some());
    /// assert!(Cause::from("static").as_dyn_error().is_none());
    /// ```
    pub fn as_dyn_error(&self) -> Option<&(dyn core::error::Error + Send + Sync + 'static)> {
        match &self.0 {
            Repr::Error(e) => Some(e),
            Repr::Static(_) => None,
            #[cfg(feature = "alloc")]
            Repr::Shared(e) => Some(&**e),
        }
    }

    /// Downcasts an error cause back to its concrete type.
    ///
    /// ```
    /// use ctxcore::{Cause, Error};
    /// let c = Cause::from_error(Error::DeadlineExceeded);
    /// assert_eq!(c.downcast_ref::<Error>(), Some(&Error::DeadlineExceeded));
    /// ```
    pub fn downcast_ref<E: core::error::Error + 'static>(&self) -> Option<&E> {
        self.as_dyn_error().and_then(|e| e.downcast_ref::<E>())
    }

    /// Whether the cause is of type `E`.
    pub fn is<E: core::error::Error + 'static>(&self) -> bool {
        self.downcast_ref::<E>().is_some()
    }
}

impl fmt::Debug for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Repr::Error(e) => fmt::Debug::fmt(e, f),
            Repr::Static(s) => fmt::Debug::fmt(s, f),
            #[cfg(feature = "alloc")]
            Repr::Shared(e) => fmt::Debug::fmt(e, f),
        }
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Repr::Error(e) => fmt::Display::fmt(e, f),
            Repr::Static(s) => f.write_str(s),
            #[cfg(feature = "alloc")]
            Repr::Shared(e) => fmt::Display::fmt(e, f),
        }
    }
}

#[cfg(not(feature = "alloc"))]
impl From<Error> for Cause {
    fn from(err: Error) -> Self {
        Cause::from_error(err)
    }
}

#[cfg(not(feature = "alloc"))]
impl From<&'static str> for Cause {
    fn from(msg: &'static str) -> Self {
        Cause::from_static(msg)
    }
}

#[cfg(feature = "alloc")]
impl<E> From<E> for Cause
where
    E: Into<Box<dyn core::error::Error + Send + Sync + 'static>> + 'static,
{
    fn from(value: E) -> Self {
        use core::any::Any;
        // A `&'static str` is stored as is (no allocation); `Error` is stored
        // without a box so `as_error` keeps working.
        let any: &dyn Any = &value;
        if let Some(s) = any.downcast_ref::<&'static str>() {
            return Cause::from_static(s);
        }
        if let Some(e) = any.downcast_ref::<Error>() {
            return Cause::from_error(*e);
        }
        let boxed: Box<dyn core::error::Error + Send + Sync + 'static> = value.into();
        Cause(Repr::Shared(Arc::from(boxed)))
    }
}
