//! The raw node layer: one atomic state word per context, an intrusive list of
//! children and an intrusive list of waiters. All of the crate's unsafe code
//! about lifetimes lives here (the list surgery itself is in `list.rs`).
//!
//! Nothing in this file allocates except the `alloc`-only constructors
//! ([`NodeRef`], after-func entries and `Context::any` links).
//!
//! # States
//!
//! A node is *live* until one `cancel` wins, which sets `DONE` (and
//! `DEADLINE_ERR` for a deadline) in `state` under the node's lock. `DONE` is
//! never cleared. See `docs/design.md` for the diagram.
//!
//! # Invariants
//!
//! 1. **Lock scope.** `children`, `waiters`, the `link` of every element in
//!    them, `callbacks`, `kids`, and `cause` while the node is live are
//!    guarded by the node's own `lock` (list.rs invariant 1). Node locks nest
//!    only between a parent and its child, and never both ways across the
//!    same edge (see "Lock order"): a node's own cancel takes its parent's
//!    lock and then its own, a kid's its own and then its parent's
//!    (invariants 14, 16), and a canceller holding a parent's lock *tries* a
//!    child's (invariant 12), waiting for it only to hold an orphan
//!    (invariant 16). The timer's lock is a
//!    leaf taken with no node lock held: `claim` under the timer lock only
//!    touches `refs`.
//! 2. **Done is final and published last.** `DONE` is set with a Release
//!    write (invariant 11) while the lock is held, after `cause` is written; after that `cause` is
//!    immutable until the node is freed, so a reader that observed `DONE` with
//!    Acquire may read `cause` without the lock. A node that phase 1 of a
//!    cancellation finds holding a deadline cause keeps it (dropping it
//!    there would be user code: invariant 9) and gets `CAUSE_UP` with
//!    `DONE`: it reports its parent's cause, read by walking up to the first
//!    done ancestor without `CAUSE_UP` (each holds the next: invariant 4).
//! 3. **No entries after done.** A node whose state has `DONE` never gains a
//!    child or a waiter: registration checks `DONE` under the lock. So a
//!    canceller that drains both lists under the lock (possibly in several
//!    lock sections) drains them for good.
//! 4. **Parents outlive children.** A node holds its parent for its whole
//!    life — by a reference, or, for a kid, by the parent's kid count
//!    (invariant 16), or, for a scoped node, by its owner's borrow plus a
//!    reference to a counted parent (invariant 10) — and an `any` node
//!    retains every parent, so `parent`, the deadline parent and every
//!    ancestor are valid for as long as the node is. A scoped node leaked
//!    with `mem::forget` loses its owner's borrow: under a counted parent it
//!    keeps its reference (both leak); under a scoped parent nothing reads
//!    its parent through it except a canceller, which holds that parent
//!    itself (invariant 6).
//! 5. **Reference counts.** `refs` counts owners: contexts, handles, waiting
//!    futures' contexts, after-func entries, children that are not kids
//!    (invariants 4, 16), attached scoped children of counted parents
//!    (invariant 10), retained work-list entries and parent holds (invariant
//!    6). A count that reaches `MAX_REFS` (2^31) is saturated: every retain
//!    or release that sees it so stores `SATURATED` (3 * 2^30) back, so it
//!    never leaves the saturated range (that would take 2^30 threads caught
//!    between their read-modify-write and their store at once) and the node
//!    is never freed: it leaks instead of being freed early. A node is unlinked
//!    from its parent, from its timer and from every `any` parent, and only
//!    then freed, when `refs` drops to zero and no kid count holds it
//!    (invariant 16). Code that holds only a *list* pointer to a node (a
//!    parent's children list, a timer, an `any` link) may use it only while
//!    holding that list's lock, and may keep it past the lock only after
//!    `try_retain` succeeded under the lock (or, for an orphan popped from a
//!    children list, `hold_popped` took a kid count: invariant 16).
//! 6. **Work list.** A canceller that pops a child (or wins `QUEUED` on an
//!    `any` node) owns that node's free `link.next` (list.rs invariant 4) and
//!    one hold on it — a reference, or a kid count on an orphan (invariant
//!    16) — until it has processed it; a child popped from a scoped or static
//!    node also holds that parent by a reference (a *parent hold*), given up
//!    once phase 1 is over, since the child inherits from it and a leaked
//!    scoped child does not keep its owner's borrow of it. Processed nodes
//!    stay held until phase 1 ends, counted ones until phase 2 (a last
//!    release frees, and freeing drops a cause: user code).
//! 7. **Timer entries.** A node with `OWNS_DEADLINE` has armed at most one
//!    entry on its timer, and only once it has `ARMED` (invariant 20).
//!    `disarm` runs before the node is freed (`after_done`, for an `ARMED`
//!    node); the timer serialises `claim` with `disarm` (the `Timer` safety
//!    contract), so a claimed entry's node is retained and a disarmed entry
//!    is never claimed. The entry's pointer has the node's allocation's
//!    provenance (a claimed entry's reference may be the last: `NodePtr`).
//! 8. **Waiter entries.** An entry in `waiters` is pinned (its container is
//!    `!Unpin` and pinned, or heap-allocated and owned by the list) and is
//!    unlinked under the node's lock before its memory is released: a waiting
//!    future unlinks itself in `Drop`; a heap entry's list reference, its free
//!    link and (for an after-func) its callback slot belong, once it is
//!    unlinked, to whoever unlinked it. An after-func's status (pending,
//!    running, ran, stopped) and the waker of a task waiting for it to
//!    return are guarded by its node's lock, linked or not: a canceller
//!    claims the run under that lock (a `stop` that came first wins) and
//!    marks it ran under it, so a waiting `stop` returns only once the
//!    callback is not running and never will be.
//! 9. **Callbacks outside locks, after-funcs last.** Wakers are woken, causes
//!    and entries dropped and nodes released only after the lock is dropped
//!    (through a [`Batch`] of 16). Phase 1 of a cancellation runs no user
//!    code at all (not even a cause's `Drop`: invariant 2), and no user code
//!    runs while the canceller holds a reference to a scoped node (invariant
//!    17): holding a counted node blocks nobody, holding a scoped one blocks
//!    its owner's drop. After-funcs wait in an intrusive run list and run at
//!    the very end, when the canceller holds no node reference, so an
//!    after-func may drop any context of the tree; a cause displaced by an
//!    own cancel is dropped after them. A panicking waker, after-func, cause
//!    or freed node's `Drop` (with `std`) is caught and re-raised once the
//!    whole cancellation is complete.
//! 10. **Scoped nodes.** A node owned by a pinned owner (`ScopedContext`,
//!     `StaticContext`) keeps one reference that the owner never releases;
//!     its `Drop` cancels and unlinks it, disarms its timer entry, takes it
//!     out of the pending list (invariant 17), then waits until the
//!     transient references of cancellers and timers (bounded work, no user
//!     code: invariant 9) are gone. Attached under a counted parent, it holds
//!     that parent by a reference until then: a pinned owner may be leaked
//!     (`mem::forget` of a `Box::pin`), and its borrow then ends without its
//!     `Drop`.
//! 11. **One writer of `state`.** Once a node other than an `any` node can be
//!     reached by another thread, its `state` is written only under its own
//!     lock: `set_done`, and `ATTACHED`, which `attach_scoped` sets under the
//!     lock because a `ScopedContext` may be cancelled from another thread
//!     before (or while) it is attached. So `set_done` publishes `DONE` with a
//!     plain Release store. An `any` node's `QUEUED` is set by cancellers of
//!     its parents without its lock, so its `DONE` is set with a
//!     read-modify-write. (A node born done is written once more, without
//!     the lock, before anyone else can see it.) A done node's
//!     `IMMORTAL_CACHE` bits are written under its lock with a
//!     read-modify-write too, for that `QUEUED` (invariant 15).
//! 12. **Finishing a child under its parent's lock.** A canceller that pops a
//!     child from a done parent's `children` may, still holding the parent's
//!     lock, *try* the child's lock (never wait for it) and, if it gets it,
//!     cancel the child there without taking a reference: the child cannot be
//!     freed meanwhile, because its last release takes the parent's lock to
//!     unlink it (invariant 5), and the canceller lets go of the child's lock
//!     before the parent's. Only children without a deadline of their own and
//!     without waiters are finished so: their `cause` slot is empty before
//!     they are done (nothing displaced, no user data dropped under a lock),
//!     they have no timer entry to disarm (the timer's lock stays a leaf), and
//!     they have nothing to wake or run. Their own children are retained into
//!     the work list as `drain` does.
//! 13. **Descending.** When the child finished under its parent's lock
//!     (invariant 12) was the parent's last and has children of its own, the
//!     canceller keeps the child's lock, lets go of the parent's
//!     ([`LockGuard::hand_over`]) and goes on emptying the child's list. The
//!     child is a heap node and stays valid with no reference of ours: every
//!     child linked under it when we took its lock holds it alive (a
//!     reference or a kid count, invariants 4, 10 and 16) and gives
//!     that up only after taking
//!     the child's lock to unlink itself (`release_last` and
//!     `detach_scoped` take the parent's lock whether or not they are still
//!     linked, except after the child unlinked *itself* under that lock,
//!     invariant 14, when it was no longer linked), and we hold that lock
//!     until we descend again or finish. So a
//!     chain is cancelled with one read-modify-write per level, holding at
//!     most two node locks, the second one only ever tried. A descent goes
//!     at most `DESCENT_MAX` levels in one lock section, then leaves the
//!     rest to the work list, so with `critical-section` interrupts are
//!     masked for a bounded stretch, not for a whole chain.
//! 14. **A cancelled node leaves its parent at once.** A node's own cancel
//!     (a handle, its deadline, a scoped owner's drop; not propagation from
//!     above) takes its parent's lock and then its own (a kid: its own, then
//!     its parent's, invariant 16), unlinks itself and sets `UNLINKED` with
//!     `DONE`. A node with `UNLINKED` is in no parent's
//!     list and was taken out by itself, so no canceller popped it and none
//!     can reach it through the parent; its last release skips the parent's
//!     lock. (It still holds its reference to the parent: invariant 4.)
//! 15. **Immortal node.** [`CANCELED`] is a `static` node born done with
//!     `Canceled`, no cause, no deadline and no timer; a child without a
//!     deadline of its own of a done node in that same state (and whose timer
//!     is none or the default one, which is what a missing timer falls back
//!     to) gets it instead of sharing its parent's node: nothing can tell
//!     them apart (values live in the `Context`, not the node). References to
//!     it are never counted — `NodeRef`'s `clone` and `drop` skip it by
//!     comparing the pointer with the static's address, a child's reference
//!     to it as parent is a forgotten clone, and `release_last` skips it
//!     when walking up to a parent or an `any` link's parent — so its count
//!     keeps its initial 1 and it is never freed (it is not on the heap).
//!     Nothing else can reach it by a counted path: being done from the
//!     start it never gains a child or a waiter (invariant 3), so no list
//!     holds it and `try_retain` or a work list never sees it, and with no
//!     deadline it has no timer entry (invariant 7). `cancel` on it loses at
//!     once. Under loom (no `const` atomics) there is no such node and such
//!     children share their parent's node. With `std` there are also a few
//!     *located* immortal nodes (`IMMORTALS[1..]`), each the same but for
//!     the location in its slot (invariant 18), so that a child of a plainly
//!     cancelled node still reports where that node was cancelled: an entry
//!     is claimed once (`FREE` to `CLAIMED` by compare-and-swap), its slot's
//!     location written by the claimer alone, then published by a Release
//!     store of `READY`; it is handed out only to a thread that read `READY`
//!     with Acquire (or to its writer), so nobody reads the slot before or
//!     during the write, and it is never written again. A location that
//!     hashes to an entry holding another gets no immortal node (the child
//!     shares its parent's). `is_immortal` is a range check on the statics'
//!     addresses: still no load. The look-up is made once per done node:
//!     its result is cached in the node's `state` (`IMMORTAL_CACHE`, above
//!     every flag: the entry's index plus one), written after `DONE` under
//!     the node's lock (invariant 11) by a Release `fetch_or` (an `any`
//!     node's `QUEUED` is set without its lock), so a later child reads it
//!     from the Acquire load that tells it the node is done, and reads the
//!     entry's location after it was written (the cacher read `READY` with
//!     Acquire, or wrote it, before its Release). The bits are a pure
//!     function of what is immutable once the node is done (flags, timer,
//!     cause, location, the default timer, a `READY` entry): racing cachers
//!     write the same ones; none are written if the entry holds another
//!     location.
//! 16. **Kids and orphans.** A child of a plain heap node (`HEAP`, not
//!     `ANY`) without a deadline (`HAS_DEADLINE` unset on the parent; the
//!     child may have one of its own) holds its parent not
//!     by a reference but by the parent's `kids` count, raised under the
//!     parent's lock in the section that links the child (flag `KID` on the
//!     child, `HAD_KIDS` on the parent): no atomic read-modify-write on the
//!     parent's count at creation, none at the end. The count is given up
//!     under the parent's lock in the section that takes the kid out of the
//!     list: its own cancel's (then `UNLINKED` is set and its release skips
//!     the parent), or, if it was never cancelled by itself, its last
//!     release's. A kid's own cancel takes its *own* lock first and checks
//!     `DONE` before it takes its parent's: a second, concurrent cancel of
//!     the same kid (through a shared handle) then sees `DONE` and never
//!     touches the parent, whose count the first one may have given up and
//!     which may be gone. A kid popped by its parent's canceller keeps its
//!     count until its release. Nothing else walks up from a kid: a
//!     deadline kid owns its deadline (its parent has none), and deadline
//!     walks stop at the owner without reading its parent (`deadline_owner`,
//!     `fire_passed_deadline`: a read racing the kid's own cancel would
//!     otherwise read a freed parent, review 7), and a canceller that
//!     inherits through it holds the kid, which holds the parent. When a
//!     node's reference count reaches zero while kids hold it, its last
//!     release marks it an *orphan* (`ORPHAN` in `kids`, under its lock) and
//!     stops; it stays linked under its own parent, and whoever gives up its
//!     last kid count frees it (the decision is made under its lock, so
//!     exactly once). An orphan has no owners, so no after-funcs, `any`
//!     links or timer entry (a node with a deadline has no kids: its
//!     children inherit the deadline), but it may have waiters: those of `done()`
//!     futures leaked with `mem::forget` (their memory leaks too, so the
//!     canceller may still take their wakers; freeing the node leaves them
//!     linked to a list nobody reads again). So a canceller holds a popped
//!     child with waiters like any other, by `hold_popped`. A canceller that pops an orphan
//!     finds its count at zero and holds it by a kid count instead
//!     (`hold_popped`, waiting for the orphan's lock while holding the
//!     parent's); children stop one short of the largest count, so that hold
//!     always fits, and only one canceller can pop a node. A count that
//!     reached zero never rises again, so a work-list entry whose count reads
//!     zero is held by a kid count (`release_held`).
//! 17. **The pending list.** A canceller never runs user code while it
//!     holds a reference to a scoped node, whose owner's `Drop` waits for
//!     every such reference (invariant 10) and may run on the canceller's own
//!     thread, inside a waker. So when phase 1 ends it lets go of every
//!     scoped node it holds, and one whose wakers did not fit in the batch
//!     goes into a process-wide *pending list* instead (`park`): its
//!     `PENDING` bit is set under its lock, and it is threaded through its
//!     spare `children` head (empty for good once done, invariant 3) with
//!     the cancellation's tag in its `kids` (unused by scoped nodes), both
//!     guarded by the list's lock. The canceller takes its own entries back
//!     one at a time (`wake_pending`): under the list's lock it unlinks one
//!     and takes a reference (the node is valid: an owner must take it out
//!     under that lock before it can let go), then under the node's lock it
//!     moves up to a batch of wakers out — unless `PENDING` was cleared, by
//!     an owner that took over — parks the node again if some are left, lets
//!     go of it and only then wakes the batch. The owner's `Drop`
//!     (`take_over_wakers`) clears `PENDING` and takes the node out of the
//!     list under the node's lock, then wakes what is still linked itself
//!     (only leaked futures can be), and only then waits for references:
//!     each is held for a bounded stretch with no user code. Lock order:
//!     a node's lock, then the list's; never the reverse.
//! 18. **Where it was cancelled.** The cause slot (a `CauseSlot`, the size
//!     of `Option<Cause>`: the cause's kind lives in the two low bits of the
//!     location pointer) also holds a `&'static Location`, under the same
//!     rules as the cause (invariants 1, 2): guarded by the lock while live,
//!     written with the winning cause before `DONE` is published, immutable
//!     after. While live it holds where the node was made (`with_cancel`,
//!     `with_deadline`, a `ScopedContext` constructor: `#[track_caller]`);
//!     the winning cancel replaces it with its own call site, or, if it
//!     names none (a deadline, a dropped handle or owner), keeps it — and a
//!     node made without one (an `any` node) takes its done source's.
//!     Phase 1 and the finishing under a parent's lock (invariant 12) write
//!     the done source's location into each node they cancel, also into a
//!     `CAUSE_UP` node (whose slot keeps its own cause: the location is
//!     `Copy`, nothing is dropped), so `cancelled_at` reads one slot, never
//!     walks. The location is `'static` data: writing or displacing one runs
//!     no user code.
//! 19. **All-of countdown.** An `all` node (flags `ANY | ALL`, links as
//!     an `any` node's) counts in its links' `remaining` the parents not yet
//!     seen done, and each parent is counted down exactly once: by the
//!     constructor, if it finds the parent done under that parent's lock
//!     before linking to it (it then pushes no link), else by the canceller
//!     that pops the parent's link under the parent's lock in `take_entry`
//!     (a link is pushed once and popped at most once: invariant 8). So the
//!     count cannot reach zero before the constructor has visited every
//!     parent. Whoever takes it to zero records that parent's index in
//!     `last` and alone starts the node's cancellation through its links —
//!     the constructor by cancelling it, a canceller through `QUEUED`
//!     (invariant 6) — whose phase 1 reads `last` back on the same thread
//!     (`inherit_source`) and inherits that done parent's error and cause.
//!     "Last" is the parent whose pop completed the countdown: a parent is
//!     flagged done before its canceller reaches its links, so of two
//!     cancellations close together either may be last. A read never
//!     cancels an `all` node itself: its deadline is its latest parent's
//!     (`deadline_parent`), so a reader's walk to the deadline's owner
//!     always moves past it, and its parents' deadlines are fired on their
//!     own owners (`all_observed`, whose cancellations hand after-funcs off
//!     like every read's). A descendant's walk that meets it reads done only
//!     if `all_observed` finds it done. Parents on different timers give it
//!     no deadline (no `HAS_DEADLINE`, `deadline_parent` null), only
//!     `POLLS`: a maximum of instants on different clocks means nothing.
//! 20. **Lazy arming.** A deadline is exact when observed (property 5), so
//!     the timer is needed only to wake waiters and run after-funcs on time:
//!     a node's own deadline is armed when an entry is first pushed onto the
//!     waiters of a node whose effective deadline it owns (a `done()` waiter,
//!     an after-func, an `all` link; not an `any` link: an `any` node is done
//!     with its first parent, and its own waiters arm its earliest parent's
//!     deadline through its `deadline_parent`), never at creation. After the
//!     push, with no node lock held, `arm_for_waiters` tests `HAS_DEADLINE`
//!     (nothing else for a node without a deadline), walks up to the owner
//!     (the nodes on the way have the same deadline and outlive the waited
//!     node, invariant 4), and under the owner's lock sets `ARMED` if it is
//!     neither done nor armed (`state` written under the lock, invariant
//!     11), then arms outside every lock (the timer's lock is a leaf,
//!     invariant 1), then re-reads: if `DONE` now, it disarms itself (a
//!     cancel that set `DONE` after our section read `ARMED` and disarmed,
//!     and the timer's lock orders that disarm and our arm: if the disarm
//!     came first, our arm's lock section happens after it, so our re-read
//!     sees `DONE`; if ours came first, the disarm removed it); else, if the
//!     clock has passed the deadline, it fires the owner as a read does
//!     (`cancel_observed`: after-funcs handed off, property 7), which covers
//!     a timer that scanned its due entries just before ours landed. A
//!     waiter is linked before it arms, so it is never lost: a cancel after
//!     its push wakes it, and the deadline is armed or fired. `ARMED` is set
//!     only while not `DONE` and never cleared, in the same word as `DONE`,
//!     so any read of `state` that sees `DONE` sees `ARMED` for good; and a
//!     node freed live is freed by its last owner, after every arming
//!     thread (each holds the waited node, which holds the owner) released
//!     its reference (Release, then the freer's Acquire): `after_done`'s
//!     plain read of `ARMED` is exact, and an unarmed node never takes the
//!     timer's lock. A waiter that goes away leaves the entry armed (once
//!     per node) until the node is done or freed.
//! 21. **Wheel tails.** With `std`, a heap tree node that owns a deadline
//!     (`HEAP | OWNS_DEADLINE`, flags fixed before it is allocated) is the
//!     first field of a `TimedNode`, allocated and freed as one (`alloc`,
//!     `free_node`), whose `slot` holds the [`StdTimer`]'s wheel links
//!     (time/wheel.rs, invariants W1–W4). The slot is touched only under
//!     the lock of the timer shard its node's address picks, while the
//!     entry is armed (invariant 7: it is unlinked before the node goes).
//!     Other nodes have no tail; the timer keeps their entries in a map.
//!
//! [`StdTimer`]: crate::StdTimer
//!
//! # Lock order
//!
//! A path waits for a node lock while holding another only across one
//! parent-child edge, and only in these places: a node's own cancel (parent,
//! then own; a kid's: own, then parent, invariants 14 and 16) and a
//! canceller holding a parent's lock that holds a popped orphan or node
//! being freed (parent, then child, only for a child whose reference count
//! is zero, invariant 16). A canceller holding a parent's lock otherwise
//! makes a single attempt at a child's (invariant 12) and falls back to the
//! work list if it is taken; the descent (invariant 13) lets go of the parent
//! once it holds the child. Every other path holds one node lock at a time.
//! A cycle of waiting threads would, in a tree, have to cross some edge both
//! ways at once: one thread holding a child and waiting for the parent (so
//! the child is a kid in its own cancel, whose caller holds a reference to
//! it) and another holding the parent and waiting for that child (so the
//! child is not a kid, or its count is zero) — which cannot both be true.
//! The timer's lock is taken only with no node lock held (arming included,
//! invariant 20), and the pending
//! list's lock (invariant 17) is a leaf taken with at most one node lock
//! held and nothing taken under it. So no deadlock can
//! form, and a cancel may run from any thread, a waker, an after-func or a
//! drop.
//!
//! With the `critical-section` feature each lock section also masks
//! interrupts, so an interrupt handler that cancels can never spin on a lock
//! held by the code it interrupted. Without it, cancelling from an interrupt
//! handler on a single core can deadlock if the interrupted code holds the same
//! node's lock.

#![allow(clippy::missing_safety_doc)]
// Without `alloc` the heap paths (`any` links, after-funcs, freeing) are
// compiled out, leaving some flags and helpers unused.
#![cfg_attr(
    not(feature = "alloc"),
    allow(
        dead_code,
        unused_imports,
        unused_variables,
        clippy::drop_non_drop,
        clippy::forget_non_drop
    )
)]

use crate::cause::{Cause, CauseSlot};
use crate::error::Error;
use crate::list::{Link, List};
use crate::sync::{AtomicU32, LockGuard, Ordering, RawLock, UnsafeCell};
use crate::time::{Instant, Timer};
use core::marker::PhantomPinned;
use core::mem::MaybeUninit;
use core::panic::Location;
use core::pin::Pin;
use core::ptr::{self, NonNull};
use core::task::{Context as TaskContext, Poll, Waker};
#[cfg(feature = "alloc")]
use {crate::Arc, alloc::boxed::Box, alloc::vec::Vec};

/// The node is done (final).
pub(crate) const DONE: u32 = 1 << 0;

/// With `DONE`: the error is `DeadlineExceeded` (else `Canceled`).
pub(crate) const DEADLINE_ERR: u32 = 1 << 1;

/// Immutable: the node has an effective deadline.
pub(crate) const HAS_DEADLINE: u32 = 1 << 2;

/// Immutable: the node's deadline is its own (earlier than its parent's); it
/// may have a timer entry.
pub(crate) const OWNS_DEADLINE: u32 = 1 << 3;

/// An `any` node is in some canceller's work list.
pub(crate) const QUEUED: u32 = 1 << 4;

/// Immutable: the node is an `any` node (no tree parent; `any` links).
pub(crate) const ANY: u32 = 1 << 5;

/// A scoped (pinned, owner-held) node has been linked to its parent; its
/// owner must detach it before its memory goes.
pub(crate) const ATTACHED: u32 = 1 << 6;

/// Immutable: nothing can ever cancel the node (a `with_timer` or
/// `without_cancel` root, or an `any` over such roots).
pub(crate) const NEVER_DONE: u32 = 1 << 7;

/// Set with `DONE` by a node's own cancel that unlinked it from its parent's
/// list under the parent's lock (invariant 14): its release need not take
/// that lock again.
pub(crate) const UNLINKED: u32 = 1 << 8;

/// Immutable: a heap tree node (not `any`, scoped or static), whose children
/// without a deadline hold it by its `kids` count instead of by a reference
/// (invariant 16).
pub(crate) const HEAP: u32 = 1 << 9;

/// Immutable once shared: this node holds its parent by the parent's `kids`
/// count, not by a reference (invariant 16).
pub(crate) const KID: u32 = 1 << 10;

/// Set under the lock, never cleared, when the node first gains a child
/// that holds it by `kids`: its last release then checks `kids` under its
/// lock (invariant 16).
pub(crate) const HAD_KIDS: u32 = 1 << 11;

/// Set with `DONE` by phase 1 of a cancellation on a node that holds a
/// deadline cause: the node keeps that cause in its slot (to drop it when it
/// is freed, never in phase 1) and reports its parent's (invariant 2).
pub(crate) const CAUSE_UP: u32 = 1 << 12;

/// A done scoped node whose wakers a canceller left in the pending list;
/// written under the node's lock (invariant 17).
pub(crate) const PENDING: u32 = 1 << 13;

/// Immutable: with `ANY`, the node is an `all` node, done when every parent
/// is (its links count down, invariant 19).
pub(crate) const ALL: u32 = 1 << 14;

/// Immutable: an `all` node with a parent that has a deadline, or an `any`
/// node with a parent whose deadline runs on another timer than the node's:
/// a read of it while live checks its parents (property 5), deadline of its
/// own or not.
pub(crate) const POLLS: u32 = 1 << 15;

/// Set once, under the node's lock and while it is live, on a node with
/// `OWNS_DEADLINE` whose timer entry is (being) armed: the first entry
/// pushed onto the waiters of a node whose deadline it owns arms it
/// (invariant 20). Never cleared.
pub(crate) const ARMED: u32 = 1 << 16;

/// Set on a done node, under its lock, never cleared: which immortal node
/// its children get, as its index in the immortals plus one (zero: not
/// looked up yet, or none to be had); a cache, a pure function of what is
/// immutable once the node is done, so whoever sets it sets the same bits
/// (invariant 15).
#[cfg(not(loom))]
pub(crate) const IMMORTAL_CACHE: u32 = 0xf << IMMORTAL_SHIFT;

/// The lowest bit of `IMMORTAL_CACHE`, above every flag.
#[cfg(not(loom))]
pub(crate) const IMMORTAL_SHIFT: u32 = 28;
#[cfg(not(loom))]
const _: () = assert!(ARMED < 1 << IMMORTAL_SHIFT);

/// One context node.
#[repr(C)]
pub(crate) struct Node {
    /// Sibling link in the parent's `children` (first field: a `*const Link`
    /// is a `*const Node`).
    ///
    /// # Safety
    /// Guarded by the parent's lock (invariant 1); owned by a canceller while
    /// in a work list (invariant 6).
    link: Link,
    state: AtomicU32,
    refs: AtomicU32,
    lock: RawLock,
    /// How many entries of `waiters` are callbacks (after-funcs, `any`
    /// links) rather than futures' wakers, so that a canceller whose wake
    /// batch is full can stop walking the list (it fits in padding).
    ///
    /// # Safety
    /// Guarded by `lock`.
    callbacks: UnsafeCell<u16>,
    /// How many children (and cancellers, for an orphan) hold this node by
    /// count rather than by reference, plus the `ORPHAN` bit (invariant 16).
    ///
    /// # Safety
    /// Guarded by `lock`.
    kids: UnsafeCell<u32>,
    /// Up-pointer, immutable (invariant 4): the tree parent (null for a
    /// root), or, for an `any` node (flag `ANY`), its `AnyLinks`.
    up: *const (),
    /// # Safety
    /// Guarded by `lock`.
    children: List,
    /// # Safety
    /// Guarded by `lock`.
    waiters: List,
    /// The cause and the location of the winning cancellation; before that,
    /// the cause to report if this node's own deadline fires and where the
    /// node was made (reported by a cancel that names no location of its
    /// own: a deadline, a dropped handle or owner; invariant 18). One
    /// `CauseSlot`, the size of `Option<Cause>`.
    ///
    /// # Safety
    /// Guarded by `lock` while live; immutable once `DONE` (invariant 2).
    cause: UnsafeCell<CauseSlot>,
    /// Effective deadline (`Instant::MAX` if none). Immutable.
    deadline: Instant,
    /// The tree's timer. Immutable.
    timer: Option<&'static dyn Timer>,
}

// Every mutable field is atomic or guarded by `lock` (invariant 1) or
// immutable after publication; raw pointers point at nodes kept alive by
// invariant 4.
// SAFETY: as argued above (invariants 1, 4).
unsafe impl Send for Node {}

// SAFETY: as for `Send`.
unsafe impl Sync for Node {}

/// What kind of container an entry in a node's `waiters` list is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum EntryKind {
    /// A [`Waiter`] inside a pinned future.
    Waker,
    /// A heap [`AfterFuncInner`], referenced by the list.
    #[cfg(feature = "alloc")]
    AfterFunc,
    /// An [`AnyLink`] owned by an `any` node.
    #[cfg(feature = "alloc")]
    AnyLink,
}

/// The head of every container in a `waiters` list.
#[repr(C)]
struct Entry {
    link: Link,
    kind: EntryKind,
}

impl Entry {
    #[cfg(not(loom))]
    const fn new(kind: EntryKind) -> Self {
        Entry {
            link: Link::new(),
            kind,
        }
    }

    #[cfg(loom)]
    fn new(kind: EntryKind) -> Self {
        Entry {
            link: Link::new(),
            kind,
        }
    }
}

impl Node {
    /// A live node. Its flags must be final before it is shared.
    fn new(
        parent: *const Node,
        flags: u32,
        deadline: Instant,
        deadline_cause: Option<Cause>,
        timer: Option<&'static dyn Timer>,
    ) -> Self {
        Self::new_at(parent, flags, deadline, deadline_cause, None, timer)
    }

    /// [`new`](Self::new), made at `site` (reported if a cancel that names
    /// no location of its own wins: invariant 18).
    fn new_at(
        parent: *const Node,
        flags: u32,
        deadline: Instant,
        deadline_cause: Option<Cause>,
        site: Option<&'static Location<'static>>,
        timer: Option<&'static dyn Timer>,
    ) -> Self {
        Node {
            link: Link::new(),
            state: AtomicU32::new(flags),
            refs: AtomicU32::new(1),
            lock: RawLock::new(),
            callbacks: UnsafeCell::new(0),
            kids: UnsafeCell::new(0),
            up: parent as *const (),
            children: List::new(),
            waiters: List::new(),
            cause: UnsafeCell::new(CauseSlot::new(deadline_cause, site)),
            deadline,
            timer,
        }
    }

    /// A child's immutable flags, effective deadline and timer: the deadline
    /// is the earlier of its own and its parent's (the parent's wins a tie,
    /// as in Go), and the child owns it (arms a timer entry, reports its
    /// cause) only if its own is strictly earlier.
    fn child_layout(
        parent: Option<&Node>,
        fallback_timer: Option<&'static dyn Timer>,
        deadline: Option<Instant>,
    ) -> (u32, Instant, Option<&'static dyn Timer>) {
        let (parent_deadline, timer) = match parent {
            Some(p) => (p.deadline, p.timer.or(fallback_timer)),
            None => (Instant::MAX, fallback_timer),
        };
        let own = deadline.unwrap_or(Instant::MAX);
        let owns = own < parent_deadline;
        let eff = if owns { own } else { parent_deadline };
        let mut flags = 0;
        if eff != Instant::MAX {
            flags |= HAS_DEADLINE;
        }
        if owns {
            flags |= OWNS_DEADLINE;
        }
        (flags, eff, timer)
    }

    /// Whether the node is counted by references and freed at zero (a heap
    /// tree node or an `any` node), rather than owned by a pinned owner or a
    /// `static`.
    #[inline]
    fn counted(&self) -> bool {
        // Without `alloc` there are neither (a constant false, so that the
        // heap-free build drops their paths).
        cfg!(feature = "alloc") && self.state.load(Ordering::Relaxed) & (HEAP | ANY) != 0
    }

    /// Adjusts the callback count.
    ///
    /// # Safety
    /// The lock is held (invariant 1).
    unsafe fn add_callbacks(&self, delta: i16) {
        // SAFETY: the caller holds the lock.
        self.callbacks.with_mut(|p| unsafe {
            // Sticky at the maximum: a saturated count is never decremented
            // again, so it never reads zero while callbacks are left (the
            // canceller then just walks the whole list).
            if *p != u16::MAX {
                *p = (*p).saturating_add_signed(delta);
            }
        });
    }

    /// The tree parent, or null (a root or an `any` node).
    #[inline]
    fn parent_ptr(&self) -> *const Node {
        // No `any` nodes without `alloc` (a constant there: firmware flash).
        if cfg!(feature = "alloc") && self.state.load(Ordering::Relaxed) & ANY != 0 {
            ptr::null()
        } else {
            self.up as *const Node
        }
    }

    /// An `any` node's links (immutable after construction).
    #[cfg(feature = "alloc")]
    #[inline]
    fn any(&self) -> Option<NonNull<AnyLinks>> {
        if self.state.load(Ordering::Relaxed) & ANY != 0 {
            NonNull::new(self.up as *mut AnyLinks)
        } else {
            None
        }
    }

    /// One Acquire load: whether `DONE` is set (deadline not consulted).
    #[inline]
    pub(crate) fn is_done_flag(&self) -> bool {
        self.state.load(Ordering::Acquire) & DONE != 0
    }

    /// Whether the node is done, firing its deadline if the clock has passed
    /// it (property 5: exact when observed).
    #[inline]
    pub(crate) fn is_done(&self) -> bool {
        let s = self.state.load(Ordering::Acquire);
        if s & DONE != 0 {
            return true;
        }
        s & (HAS_DEADLINE | POLLS) != 0 && self.check_deadline()
    }

    /// Whether nothing can ever cancel this node (so an after-func on it can
    /// never run, and is not kept).
    pub(crate) fn never_done(&self) -> bool {
        self.state.load(Ordering::Relaxed) & NEVER_DONE != 0
    }

    /// The effective deadline.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        (self.deadline != Instant::MAX).then_some(self.deadline)
    }

    pub(crate) fn timer(&self) -> Option<&'static dyn Timer> {
        self.timer
    }
}

impl core::fmt::Debug for Node {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Node")
            .field("state", &self.state.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

mod after;
mod all;
mod any;
mod arm;
mod cancel;
mod drain;
mod heap;
mod pending;
mod read;
mod refs;
mod scoped;
#[cfg(all(test, feature = "std", not(loom)))]
mod tests;
mod timer;
mod waiter;
mod work;

#[allow(unused_imports)]
use self::{
    after::*, all::*, any::*, arm::*, cancel::*, drain::*, heap::*, pending::*, refs::*, scoped::*, timer::*,
    waiter::*, work::*,
};

#[cfg(feature = "alloc")]
pub(crate) use self::after::{AfterFuncInner, AF_RAN, AF_RUNNING, AF_STOPPED};
pub(crate) use self::arm::NodePtr;
#[cfg(feature = "alloc")]
pub(crate) use self::heap::NodeRef;
#[cfg(feature = "std")]
pub(crate) use self::timer::NodeDeadline;
pub use self::timer::{TimerEntry, TimerFiring};
pub(crate) use self::waiter::Waiter;
#[cfg(feature = "alloc")]
pub use self::work::AfterFuncs;
