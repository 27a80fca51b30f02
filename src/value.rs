//! Request-scoped values under private, typed keys.

#[cfg(feature = "alloc")]
use core::any::Any;
use core::cell::UnsafeCell;
use core::fmt;
use core::marker::PhantomData;

#[cfg(feature = "alloc")]
use crate::Arc;

/// A typed key for [`Context::with_value`](crate::Context::with_value).
///
/// A key is identified by its *address*: declare it as a `static` and pass
/// `&KEY`. Two keys never collide, even with the same name and type, and a
/// crate that keeps its key private keeps its value private: nobody else can
/// read or overwrite it. The type parameter fixes the value type.
///
/// ```
/// use ctxcore::{Context, Key};
///
/// static TRACE_ID: Key<u64> = Key::new("trace_id");
/// static USER: Key<&'static str> = Key::new("user");
///
/// let ctx = Context::background().with_value(&TRACE_ID, 42).with_value(&USER, "ada");
/// assert_eq!(ctx.value(&TRACE_ID), Some(&42));
/// assert_eq!(ctx.value(&USER), Some(&"ada"));
///
/// static OTHER: Key<u64> = Key::new("trace_id"); // same name, different key
/// assert_eq!(ctx.value(&OTHER), None);
/// ```
///
/// Keys must be `static`s. A `const` key would be a fresh value at every use
/// (or one address shared by every identical constant), so `&KEY` of a
/// `const` does not compile:
///
/// ```compile_fail
/// use ctxcore::{Context, Key};
/// const NOT_A_KEY: Key<u64> = Key::new("id");
/// let ctx = Context::background().with_value(&NOT_A_KEY, 1); // error: temporary value dropped
/// ```
pub struct Key<T> {
    name: &'static str,
    _type: PhantomData<fn() -> T>,
    /// Interior mutability (never used) stops constant promotion: `&KEY` is
    /// `&'static` only for a `static`, whose address is unique.
    _unique: UnsafeCell<()>,
}

// SAFETY: the `UnsafeCell<()>` is zero-sized and never accessed; a key is
// otherwise an immutable `&'static str`.
unsafe impl<T> Sync for Key<T> {}

impl<T> Key<T> {
    /// A key; `name` is for debugging only and need not be unique.
    pub const fn new(name: &'static str) -> Self {
        Key {
            name,
            _type: PhantomData,
            _unique: UnsafeCell::new(()),
        }
    }

    /// The name given to [`Key::new`].
    pub const fn name(&self) -> &'static str {
        self.name
    }

    #[cfg_attr(not(feature = "alloc"), allow(dead_code))]
    pub(crate) fn id(&'static self) -> usize {
        self as *const Self as usize
    }
}

impl<T> fmt::Debug for Key<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({:?} @ {:p})", self.name, self)
    }
}

/// One link in a context's chain of values (nearest first).
#[cfg(feature = "alloc")]
pub(crate) struct ValueNode<V: ?Sized + Send + Sync + 'static> {
    parent: Option<Values>,
    key: usize,
    name: &'static str,
    value: V,
}

/// A shared chain of values.
#[cfg(feature = "alloc")]
pub(crate) type Values = Arc<ValueNode<dyn Any + Send + Sync>>;

#[cfg(feature = "alloc")]
pub(crate) fn push<T: Send + Sync + 'static>(parent: Option<&Values>, key: &'static Key<T>, value: T) -> Values {
    let node = ValueNode {
        parent: parent.cloned(),
        key: key.id(),
        name: key.name,
        value,
    };
    #[cfg(not(feature = "portable-atomic"))]
    {
        Arc::new(node)
    }
    // portable-atomic-util's `Arc` cannot unsize-coerce on stable Rust
    // (`CoerceUnsized` is unstable), and going through a `Box`, which can,
    // costs a second allocation and a copy. A raw pointer can: allocate the
    // sized node, unsize the pointer, take the `Arc` back.
    #[cfg(feature = "portable-atomic")]
    {
        let sized: *const ValueNode<T> = Arc::into_raw(Arc::new(node));
        let unsized_: *const ValueNode<dyn Any + Send + Sync> = sized;
        // `from_raw`'s contract: the pointer came from
        // `Arc::<U>::into_raw` with `U = ValueNode<T>` sized and of the same
        // size and alignment as the pointee — a coercion keeps the address
        // and the new vtable is `ValueNode<T>`'s own, so `from_raw` finds the
        // same `ArcInner` and the last drop frees it with the layout it was
        // allocated with. The one reference `into_raw` gave up is taken back
        // once.
        // SAFETY: as argued above.
        unsafe { Arc::from_raw(unsized_) }
    }
}

#[cfg(feature = "alloc")]
pub(crate) fn lookup<'a, T: Send + Sync + 'static>(mut cur: Option<&'a Values>, key: &'static Key<T>) -> Option<&'a T> {
    let id = key.id();
    while let Some(node) = cur {
        if node.key == id {
            return (&node.value as &dyn Any).downcast_ref::<T>();
        }
        cur = node.parent.as_ref();
    }
    None
}

/// Names of the keys on the chain, nearest first (for `Debug`).
#[cfg(feature = "alloc")]
pub(crate) fn names(mut cur: Option<&Values>, mut f: impl FnMut(&'static str)) {
    while let Some(node) = cur {
        f(node.name);
        cur = node.parent.as_ref();
    }
}

#[cfg(feature = "alloc")]
impl<V: ?Sized + Send + Sync + 'static> Drop for ValueNode<V> {
    fn drop(&mut self) {
        // Iterative: a chain of a million `with_value`s must not recurse.
        let mut next = self.parent.take();
        while let Some(mut arc) = next {
            next = match Arc::get_mut(&mut arc) {
                Some(node) => node.parent.take(),
                None => None,
            };
        }
    }
}
