//! Heap nodes (feature `alloc`): [`NodeRef`], an owning counted reference,
//! and the constructors of tree children.
//!
//! Maintains: 15 (the immortal node, and the cache of it in a done node's
//! `state`, written under that node's lock: 11), 16 (a child of a plain
//! heap node without a deadline is a kid, with or without a deadline of its
//! own: its parent's count raised in the section that links it). Relies on: 1, 2 (a done node's cause and
//! location are immutable, so the cache never goes stale), 3, 5, 20 (a
//! deadline child is armed lazily, by its first waiter, not here).

use super::*;

/// An owning, counted reference to a heap node.
#[cfg(feature = "alloc")]
pub(crate) struct NodeRef {
    pub(super) ptr: NonNull<Node>,
}

#[cfg(feature = "alloc")]
// SAFETY: a counted reference to a `Send + Sync` node (invariant 5).
unsafe impl Send for NodeRef {}

#[cfg(feature = "alloc")]
// SAFETY: as for `Send`.
unsafe impl Sync for NodeRef {}

/// How many immortal nodes carry a location (invariant 15): with `std` a
/// few, so that a child of a plainly cancelled node reports where that node
/// was cancelled and still costs no reference count; without `std` none
/// (static memory is dear on firmware: such children share their parent's
/// node instead).
#[cfg(all(feature = "alloc", not(loom)))]
const LOCATED: usize = if cfg!(feature = "std") { 8 } else { 0 };

/// The immortal nodes (invariant 15): done with `Canceled`, no cause, no
/// deadline, no timer; never counted, never freed. The first has no
/// location ([`CANCELED`]); each of the others gets one, once, when it is
/// first claimed (`LOCATED_STATE`).
#[cfg(all(feature = "alloc", not(loom)))]
static IMMORTALS: [Node; 1 + LOCATED] = [const { Node::static_with_state(DONE, None) }; 1 + LOCATED];

/// The immortal node without a location.
#[cfg(all(feature = "alloc", not(loom)))]
pub(super) static CANCELED: &Node = &IMMORTALS[0];

/// Per located immortal node: `FREE`, `CLAIMED` (its location is being
/// written) or `READY` (written for good, published with Release).
#[cfg(all(feature = "alloc", not(loom)))]
static LOCATED_STATE: [AtomicU32; LOCATED] = [const { AtomicU32::new(FREE) }; LOCATED];

#[cfg(all(feature = "alloc", not(loom)))]
const FREE: u32 = 0;
#[cfg(all(feature = "alloc", not(loom)))]
const CLAIMED: u32 = 1;
#[cfg(all(feature = "alloc", not(loom)))]
const READY: u32 = 2;

/// The immortal node for a child of a plainly cancelled node cancelled at
/// `site`: [`CANCELED`] without a location, else the located one that
/// `site` hashes to, claiming it if it is free; `None` if that one holds
/// another location (the child then shares its parent's node).
#[cfg(all(feature = "alloc", not(loom)))]
#[inline]
fn immortal_for(site: Option<&'static Location<'static>>) -> Option<&'static Node> {
    let Some(at) = site else {
        return Some(CANCELED);
    };
    if LOCATED == 0 {
        return None;
    }
    // `LOCATED` is a power of two: a mask, not a division.
    const _: () = assert!(LOCATED.is_power_of_two() || LOCATED == 0);
    let i = ((at as *const Location<'static>).addr() / core::mem::align_of::<Location<'static>>())
        & LOCATED.saturating_sub(1);
    let node = &IMMORTALS[1 + i];
    // The common case, inline: the entry is ready with this location.
    // `READY` observed with Acquire: the location is written for good
    // (invariant 15).
    if LOCATED_STATE[i].load(Ordering::Acquire) == READY {
        return node.done_site().is_some_and(|l| ptr::eq(l, at)).then_some(node);
    }
    claim_immortal(i, at)
}

/// `immortal_for`'s first use of an entry: claims it if it is free.
#[cfg(all(feature = "alloc", not(loom)))]
#[cold]
#[inline(never)]
fn claim_immortal(i: usize, at: &'static Location<'static>) -> Option<&'static Node> {
    let (state, node) = (&LOCATED_STATE[i], &IMMORTALS[1 + i]);
    let mut s = state.load(Ordering::Acquire);
    if s == FREE
        && state
            .compare_exchange(FREE, CLAIMED, Ordering::Acquire, Ordering::Acquire)
            .is_ok()
    {
        // SAFETY: we claimed the entry, so we are its one writer, and
        // nobody reads its slot before it is `READY` (invariant 15).
        node.cause.with_mut(|p| unsafe { (*p).set_location(Some(at)) });
        state.store(READY, Ordering::Release);
        s = READY;
    } else if s == FREE {
        s = state.load(Ordering::Acquire);
    }
    // `READY` observed with Acquire (or written by us): the location is
    // written for good (invariant 15).
    (s == READY && node.done_site().is_some_and(|l| ptr::eq(l, at))).then_some(node)
}

/// The immortal node that a done node's `state` names in its
/// `IMMORTAL_CACHE` bits (index plus one; none if zero), for its children
/// (invariant 15).
#[cfg(all(feature = "alloc", not(loom)))]
#[inline(always)]
pub(super) fn cached_immortal(state: u32) -> Option<&'static Node> {
    // One compare covers both "none" (0 wraps to `usize::MAX`) and the
    // bound.
    IMMORTALS.get((((state & IMMORTAL_CACHE) >> IMMORTAL_SHIFT) as usize).wrapping_sub(1))
}

/// Whether `ptr` is an immortal node: a range check on the statics'
/// addresses, no load (invariant 15).
#[cfg(feature = "alloc")]
#[inline(always)]
pub(super) fn is_immortal(ptr: NonNull<Node>) -> bool {
    #[cfg(not(loom))]
    {
        let base = IMMORTALS.as_ptr().addr();
        ptr.as_ptr().addr().wrapping_sub(base) < core::mem::size_of_val(&IMMORTALS)
    }
    #[cfg(loom)]
    {
        let _ = ptr;
        false
    }
}

#[cfg(feature = "alloc")]
impl Clone for NodeRef {
    #[inline]
    fn clone(&self) -> Self {
        if !is_immortal(self.ptr) {
            self.node().retain();
        }
        NodeRef { ptr: self.ptr }
    }
}

#[cfg(feature = "alloc")]
impl Drop for NodeRef {
    #[inline]
    fn drop(&mut self) {
        if is_immortal(self.ptr) {
            // Never counted (invariant 15).
            return;
        }
        // SAFETY: we own one reference.
        unsafe { release(self.ptr) }
    }
}

#[cfg(feature = "alloc")]
impl NodeRef {
    #[inline]
    pub(crate) fn node(&self) -> &Node {
        // SAFETY: we own a reference, so the node is alive (invariant 5).
        unsafe { self.ptr.as_ref() }
    }

    /// Gives up the reference as a raw pointer (to release later).
    pub(super) fn into_raw(self) -> NonNull<Node> {
        let ptr = self.ptr;
        core::mem::forget(self);
        ptr
    }

    /// If this node is done (`DONE` read with Acquire), the node for a
    /// child of it without a deadline of its own: such a child is done at
    /// birth with this node's error, cause and location, and nothing can
    /// change that, so it needs no node of its own. A plainly cancelled
    /// node's child gets an immortal node with the same location (invariant
    /// 15: no reference count at all), if one is to be had; any other
    /// shares this node. The immortal node is looked up once per done node
    /// and cached in its `state` (`IMMORTAL_CACHE`): later children cost
    /// the one load that tells them the node is done.
    #[inline]
    pub(crate) fn child_if_done(&self, default_timer: impl FnOnce() -> Option<&'static dyn Timer>) -> Option<NodeRef> {
        let s = self.node().state.load(Ordering::Acquire);
        if s & DONE == 0 {
            return None;
        }
        // Cached by a thread whose release of this node's lock (or whose
        // Release store of the bits under it) our Acquire load follows: the
        // cached node's location is written for good (invariant 15).
        #[cfg(not(loom))]
        if let Some(n) = cached_immortal(s) {
            return Some(NodeRef { ptr: NonNull::from(n) });
        }
        Some(self.done_child(default_timer))
    }

    /// [`child_if_done`](Self::child_if_done) without a cached immortal
    /// node: looks it up and caches it. Out of line: once per done node (or
    /// per child of a node whose children share it).
    #[inline(never)]
    fn done_child(&self, default_timer: impl FnOnce() -> Option<&'static dyn Timer>) -> NodeRef {
        #[cfg(not(loom))]
        if self.node().plainly_canceled(default_timer) {
            // The caller saw `DONE` (Acquire): the slot is immutable.
            if let Some(n) = immortal_for(self.node().done_site()) {
                self.node().cache_immortal(n);
                return NodeRef { ptr: NonNull::from(n) };
            }
        }
        #[cfg(loom)]
        let _ = default_timer;
        self.clone()
    }

    pub(crate) fn ptr_eq(&self, other: &NodeRef) -> bool {
        self.ptr == other.ptr
    }

    /// A counted reference to a node in a `static` (never freed: its own
    /// reference is never released).
    #[cfg(not(loom))]
    pub(crate) fn from_static(node: &'static Node) -> NodeRef {
        node.retain();
        NodeRef {
            ptr: NonNull::from(node),
        }
    }

    /// A node without a wheel tail (every node but a heap child that owns
    /// its deadline: `new_child` picks `alloc_timed` for those).
    #[inline(always)]
    pub(super) fn alloc(node: Node) -> NodeRef {
        #[cfg(feature = "std")]
        debug_assert!(!has_wheel_tail(node.state.load(Ordering::Relaxed)));
        NodeRef {
            ptr: NonNull::from(Box::leak(Box::new(node))),
        }
    }

    /// A heap node that owns a deadline carries the std timer's wheel links
    /// in the same allocation (invariant 21). The pointer keeps the
    /// provenance of the whole allocation (not a reference to the `node`
    /// field, which would cover its bytes only): `wheel_slot` reaches the
    /// tail through it and `free_node` frees the `TimedNode` through it.
    /// Out of line: the untimed path stays as small as it was.
    #[cfg(feature = "std")]
    #[inline(never)]
    fn alloc_timed(node: Node) -> NodeRef {
        let timed = NonNull::from(Box::leak(Box::new(TimedNode {
            node,
            slot: crate::time::wheel::WheelSlot::new(),
        })));
        NodeRef {
            ptr: timed.cast::<Node>(),
        }
    }

    /// A root that is never cancelled, carrying a timer for its descendants.
    pub(crate) fn new_root(timer: Option<&'static dyn Timer>) -> NodeRef {
        Self::alloc(Node::new(ptr::null(), NEVER_DONE | HEAP, Instant::MAX, None, timer))
    }

    /// A child of `parent` (or a new root if `None`), with an optional own
    /// deadline and deadline cause.
    #[cfg(test)]
    pub(crate) fn new_child(
        parent: Option<&NodeRef>,
        fallback_timer: Option<&'static dyn Timer>,
        deadline: Option<Instant>,
        deadline_cause: Option<Cause>,
    ) -> NodeRef {
        Self::new_child_counted(parent, fallback_timer, deadline, deadline_cause, None, 1)
    }

    /// [`new_child`](Self::new_child) for a context and its handle: one
    /// node born with two references (saves an atomic increment per child),
    /// made at `site` (invariant 18).
    pub(crate) fn new_child_pair(
        parent: Option<&NodeRef>,
        fallback_timer: Option<&'static dyn Timer>,
        deadline: Option<Instant>,
        deadline_cause: Option<Cause>,
        site: Option<&'static Location<'static>>,
    ) -> (NodeRef, NodeRef) {
        let first = Self::new_child_counted(parent, fallback_timer, deadline, deadline_cause, site, 2);
        let second = NodeRef { ptr: first.ptr };
        (first, second)
    }

    pub(super) fn new_child_counted(
        parent: Option<&NodeRef>,
        fallback_timer: Option<&'static dyn Timer>,
        deadline: Option<Instant>,
        deadline_cause: Option<Cause>,
        site: Option<&'static Location<'static>>,
        refs: u32,
    ) -> NodeRef {
        let (flags, eff, timer) = Node::child_layout(parent.map(NodeRef::node), fallback_timer, deadline);
        // A deadline cause the child will not keep (its parent's deadline is
        // earlier) is dropped first, before any count is taken: its `Drop`
        // is user code and may panic (property 7).
        let owns = flags & OWNS_DEADLINE != 0;
        let cause = if owns {
            deadline_cause
        } else {
            drop(deadline_cause);
            None
        };
        // A child of a plain heap node without a deadline holds its parent
        // by the parent's kid count, under the lock it takes anyway to link
        // itself, instead of by an atomic reference (invariant 16). The
        // child may have a deadline of its own (a per-request timeout under
        // a connection's context); a node with a deadline never has kids,
        // so an orphan never has a deadline or a timer entry.
        let kid_capable =
            parent.is_some_and(|p| p.node().state.load(Ordering::Relaxed) & (HEAP | ANY | HAS_DEADLINE) == HEAP);
        // The up-pointer comes from the parent's own allocation pointer (not
        // a shared reference): the last release may free through it.
        let parent_ptr = match parent {
            Some(p) => {
                if !kid_capable {
                    // The child's reference (released by `release_last`): a
                    // forgotten clone, so the immortal node stays uncounted
                    // (invariant 15).
                    core::mem::forget(p.clone());
                }
                p.ptr.as_ptr() as *const Node
            }
            None => ptr::null(),
        };
        let node = Node::new_at(parent_ptr, flags | HEAP, eff, cause, site, timer);
        // `HEAP | OWNS_DEADLINE` with `std`: a `TimedNode` (invariant 21),
        // decided by the flag the caller computed, not by reading it back.
        #[cfg(feature = "std")]
        let child = if owns {
            Self::alloc_timed(node)
        } else {
            Self::alloc(node)
        };
        #[cfg(not(feature = "std"))]
        let child = Self::alloc(node);
        // Not shared yet (not linked, not armed): a plain store is enough.
        // Every reference counted here is handed out by the caller.
        child.node().refs.store(refs, Ordering::Relaxed);
        if let Some(p) = parent {
            let pn = p.node();
            let guard = pn.lock.lock();
            if pn.is_done_flag() {
                drop(guard);
                if kid_capable {
                    // Never linked: it holds its parent by a reference.
                    core::mem::forget(p.clone());
                }
                // Not linked, not armed: only this thread can touch
                // the child, the exclusivity the lock gives (invariant 1).
                // Born done: no propagation machinery is needed. A deadline
                // cause is kept, not displaced (`CAUSE_UP`, invariant 2):
                // dropping it here would run user code while the caller's
                // second reference is not handed out yet.
                // SAFETY: as argued above (invariants 1, 2).
                unsafe { child.node().set_done_inherited(false) };
                return child;
            }
            // SAFETY: we hold the parent's lock; the child is not shared.
            if kid_capable && unsafe { !make_kid(child.node(), pn) } {
                // A saturated kid count: a reference instead.
                core::mem::forget(p.clone());
            }
            // SAFETY: we hold the parent's lock; the child is new, pinned on
            // the heap and unlinked (invariants 1, 2 of list.rs).
            unsafe { pn.children.push(child.ptr.as_ptr() as *const Link) };
            drop(guard);
        }
        // A deadline of its own is not armed here: only when something
        // first waits on it (invariant 20). Until then a read fires it
        // (property 5).
        child
    }
}

#[cfg(all(feature = "alloc", not(loom)))]
impl Node {
    /// Records in this done node's `state` that its children get the
    /// immortal node `n` (invariant 15). Written under the lock, as every
    /// write of a tree node's `state` is (invariant 11), with a
    /// read-modify-write, as an `any` node's `QUEUED` may be set without
    /// the lock; the bits are a pure function of what is immutable once
    /// the node is done, so a second writer writes the same ones.
    #[cold]
    fn cache_immortal(&self, n: &'static Node) {
        const _: () = assert!(1 + LOCATED < 1 << (32 - IMMORTAL_SHIFT));
        let i = (n as *const Node).addr().wrapping_sub(IMMORTALS.as_ptr().addr()) / core::mem::size_of::<Node>();
        debug_assert!(ptr::eq(n, &IMMORTALS[i]));
        let _guard = self.lock.lock();
        // Release, under the lock: a reader that sees the bits with Acquire
        // reads the immortal node's location after it was written.
        self.state
            .fetch_or(((i + 1) as u32) << IMMORTAL_SHIFT, Ordering::Release);
    }
}

/// Makes a new, unshared `child` a kid of `pn` (invariant 16): raises the
/// parent's kid count, unless it is at its maximum (one count always stays
/// free for a canceller's hold), and marks both. Returns false if the count
/// was full: the child then holds its parent by a reference.
///
/// # Safety
/// The caller holds `pn`'s lock, `pn` is a plain heap node, and `child` is
/// not shared yet.
#[cfg(feature = "alloc")]
#[inline(always)]
unsafe fn make_kid(child: &Node, pn: &Node) -> bool {
    // SAFETY: the caller holds the parent's lock, which guards `kids`
    // (invariant 1).
    let counted = pn.kids.with_mut(|k| unsafe {
        if *k & KIDS_MAX < KIDS_MAX - 1 {
            *k += 1;
            true
        } else {
            false
        }
    });
    if counted {
        let cs = child.state.load(Ordering::Relaxed);
        // The child is not shared yet: a plain store.
        child.state.store(cs | KID, Ordering::Relaxed);
        let ps = pn.state.load(Ordering::Relaxed);
        if ps & HAD_KIDS == 0 {
            // The parent is not an `any` node, so its state is written only
            // under its lock, which we hold (invariant 11).
            pn.state.store(ps | HAD_KIDS, Ordering::Release);
        }
    }
    counted
}
