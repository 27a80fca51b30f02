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

/// A node's cause slot: an optional [`Cause`] and an optional
/// `&'static Location` (where the winning cancellation was requested, or,
/// while the node is live, where it was made) in the 24 bytes (12 on 32-bit
/// targets) that `Option<Cause>` alone takes: the kind of cause lives in the
/// two low bits of the location pointer (a `Location` is at least 4-aligned,
/// checked below), so the node does not grow (issue 14).
///
/// Every operation is safe; the unsafe reads of the union are justified by
/// the one invariant of this type: `payload` holds the variant that the tag
/// names (`EMPTY`: nothing, `ERROR`: `error`, `STATIC`: `stat`, `SHARED`: an
/// owned `Arc` in `shared`), kept by every writer below.
pub(crate) struct CauseSlot {
    payload: Payload,
    /// The location pointer (null if none) with the kind of cause in its two
    /// low bits; built with `map_addr`, so it keeps the location's
    /// provenance.
    tagged: *const Location<'static>,
}

union Payload {
    empty: (),
    error: Error,
    stat: &'static str,
    #[cfg(feature = "alloc")]
    shared: core::mem::ManuallyDrop<Arc<dyn core::error::Error + Send + Sync + 'static>>,
}

use core::panic::Location;

const EMPTY: usize = 0;
const ERROR: usize = 1;
const STATIC: usize = 2;
#[cfg(feature = "alloc")]
const SHARED: usize = 3;
const TAG: usize = 3;

// The tag needs the two low bits of every `Location` pointer.
const _: () = assert!(core::mem::align_of::<Location<'static>>() > TAG);
// The location costs the node nothing (issue 14): the slot is the size of
// the `Option<Cause>` it replaced, on every target this builds for.
const _: () = assert!(core::mem::size_of::<CauseSlot>() == core::mem::size_of::<Option<Cause>>());

impl CauseSlot {
    /// An empty slot: no cause, no location.
    pub(crate) const EMPTY: CauseSlot = CauseSlot {
        payload: Payload { empty: () },
        tagged: core::ptr::null(),
    };

    /// A slot holding `cause` and `site`.
    #[inline]
    pub(crate) fn new(cause: Option<Cause>, site: Option<&'static Location<'static>>) -> Self {
        let mut slot = CauseSlot::EMPTY;
        slot.put(cause);
        slot.set_location(site);
        slot
    }

    #[inline]
    fn tag(&self) -> usize {
        self.tagged.addr() & TAG
    }

    /// Whether a cause is held.
    #[inline]
    pub(crate) fn has_cause(&self) -> bool {
        self.tag() != EMPTY
    }

    /// The location, if any.
    #[inline]
    pub(crate) fn location(&self) -> Option<&'static Location<'static>> {
        let p = self.tagged.map_addr(|a| a & !TAG);
        // SAFETY: a non-null untagged pointer is the `&'static Location`
        // that `set_location` stored, with its provenance (`map_addr`).
        unsafe { p.as_ref() }
    }

    /// Replaces the location, keeping the cause.
    #[inline]
    pub(crate) fn set_location(&mut self, site: Option<&'static Location<'static>>) {
        let tag = self.tag();
        let p = site.map_or(core::ptr::null(), |l| l as *const Location<'static>);
        self.tagged = p.map_addr(|a| a | tag);
    }

    /// A clone of the cause, if any.
    pub(crate) fn cause(&self) -> Option<Cause> {
        // SAFETY: the tag names the payload's variant (the type's invariant).
        unsafe {
            match self.tag() {
                ERROR => Some(Cause(Repr::Error(self.payload.error))),
                STATIC => Some(Cause(Repr::Static(self.payload.stat))),
                #[cfg(feature = "alloc")]
                SHARED => Some(Cause(Repr::Shared(Arc::clone(&self.payload.shared)))),
                _ => None,
            }
        }
    }

    /// Takes the cause out, leaving none (the location stays).
    pub(crate) fn take(&mut self) -> Option<Cause> {
        let tag = self.tag();
        self.tagged = self.tagged.map_addr(|a| a & !TAG);
        // SAFETY: the tag named the payload's variant (the type's invariant);
        // it now says `EMPTY`, so the value read out is not read again.
        unsafe {
            match tag {
                ERROR => Some(Cause(Repr::Error(self.payload.error))),
                STATIC => Some(Cause(Repr::Static(self.payload.stat))),
                #[cfg(feature = "alloc")]
                SHARED => Some(Cause(Repr::Shared(core::mem::ManuallyDrop::take(
                    &mut self.payload.shared,
                )))),
                _ => None,
            }
        }
    }

    /// Stores `cause` into a slot that holds none (the location stays).
    fn put(&mut self, cause: Option<Cause>) {
        debug_assert!(!self.has_cause());
        let (payload, tag) = match cause {
            None => (Payload { empty: () }, EMPTY),
            Some(Cause(Repr::Error(e))) => (Payload { error: e }, ERROR),
            Some(Cause(Repr::Static(s))) => (Payload { stat: s }, STATIC),
            #[cfg(feature = "alloc")]
            Some(Cause(Repr::Shared(a))) => (
                Payload {
                    shared: core::mem::ManuallyDrop::new(a),
                },
                SHARED,
            ),
        };
        self.payload = payload;
        self.tagged = self.tagged.map_addr(|a| (a & !TAG) | tag);
    }

    /// Replaces the cause and the location; returns the displaced cause.
    #[inline]
    pub(crate) fn replace(&mut self, cause: Option<Cause>, site: Option<&'static Location<'static>>) -> Option<Cause> {
        let old = self.take();
        self.put(cause);
        self.set_location(site);
        old
    }
}

impl Drop for CauseSlot {
    fn drop(&mut self) {
        // The cause (with `alloc`, a counted error whose last drop runs user
        // code) is taken out of the tagged slot and dropped here.
        let _cause = self.take();
    }
}
