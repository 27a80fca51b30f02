//! A hierarchical timing wheel over intrusive entries: the store of one
//! [`StdTimer`](super::StdTimer) shard. Insert and remove are O(1); finding
//! the next due entry is O(1) per level, plus a scan of the one-tick slot it
//! fires from and at most one move per level per entry ("cascading").
//!
//! Time is cut in ticks of 2^20 ns (about 1 ms). Level `l` has 64 slots of
//! 64^l ticks each, so six levels cover 2^36 ticks (about 2.2 years); a
//! later deadline waits in the last level and is placed again when its slot
//! comes up. An entry sits at the lowest level whose slot width separates
//! its tick from `elapsed` (the tick up to which the wheel has been
//! processed): all its ticks above that level's 6-bit group equal
//! `elapsed`'s. So every entry at level 0 is due before any slot of level 1
//! starts, and the earliest slot is found level by level with one bit scan.
//! When a slot of level `l > 0` comes up, its entries are placed again
//! (they land lower); when a level-0 slot comes up, its entries are
//! compared with the exact deadline in nanoseconds: those due move to the
//! `pending` list, the others stay, and the wheel reports the earliest of
//! them, so the timer fires to the nanosecond, not to the tick.
//!
//! # Invariants
//!
//! W1. **Lock.** A [`WheelSlot`]'s fields and the whole [`Wheel`] are
//!     touched only under the lock of the shard that owns the wheel (every
//!     method takes `&mut Wheel`; a slot is linked into at most one wheel,
//!     chosen by its node's address, so it is always the same lock).
//! W2. **Position.** A slot's `pos` names the list it is in: `level * 64 +
//!     slot`, [`POS_PENDING`], or [`POS_NONE`] when it is in none; its
//!     `prev` is null exactly when it is the first of that list, and the
//!     list's head points at it. `occupied[l]` has bit `s` set exactly when
//!     list `(l, s)` is not empty, and `len` counts linked slots.
//! W3. **Placement.** A slot at `(l, s)` has `tick` (its deadline's tick,
//!     raised to `elapsed` and capped at `elapsed + SPAN - 1` when placed)
//!     with `s = (tick >> 6l) & 63`, and agrees with `elapsed` above group
//!     `l`, except at level 5, which may hold the next round. `elapsed` only
//!     grows, and only to the start of the earliest non-empty slot, so no
//!     slot is ever passed over.
//! W4. **Pinned entries.** A linked slot is pinned and valid: its owner
//!     removes it (under the lock, W1) before its memory goes. The wheel
//!     dereferences only linked slots and the one it is given.

use core::cell::Cell;
use core::marker::PhantomData;
use core::ptr::{self, NonNull};

/// log2 of a tick in nanoseconds.
pub(crate) const TICK_SHIFT: u32 = 20;
const LEVELS: usize = 6;
const SLOTS: usize = 64;
/// Ticks covered by the wheel from `elapsed`.
const SPAN: u64 = 1 << (6 * LEVELS as u64);
/// Not in any list.
pub(crate) const POS_NONE: u16 = u16::MAX;
/// In the `pending` list: due, waiting to be taken.
pub(crate) const POS_PENDING: u16 = (LEVELS * SLOTS) as u16;

/// The links of one wheel entry, embedded in its owner (for a node, in the
/// tail of its allocation). 24 bytes on 64-bit targets.
pub(crate) struct WheelSlot {
    prev: Cell<*const WheelSlot>,
    next: Cell<*const WheelSlot>,
    pos: Cell<u16>,
}

// SAFETY: the cells are touched only under the owning shard's lock (W1).
unsafe impl Send for WheelSlot {}
// SAFETY: as for `Send`.
unsafe impl Sync for WheelSlot {}

impl WheelSlot {
    pub(crate) const fn new() -> Self {
        WheelSlot {
            prev: Cell::new(ptr::null()),
            next: Cell::new(ptr::null()),
            pos: Cell::new(POS_NONE),
        }
    }
}

impl core::fmt::Debug for WheelSlot {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("WheelSlot").finish_non_exhaustive()
    }
}

/// How the wheel reads an entry's deadline (nanoseconds) from its slot.
///
/// # Safety
/// `deadline` is called only on linked slots (W4) and must return the same
/// value for a slot every time while it is linked.
pub(crate) unsafe trait SlotDeadline {
    /// The deadline of the entry that embeds `slot`.
    ///
    /// # Safety
    /// `slot` is valid (linked, W4).
    unsafe fn deadline(slot: NonNull<WheelSlot>) -> u64;
}

/// One shard's entries (invariants W1–W4).
pub(crate) struct Wheel<D> {
    elapsed: u64,
    occupied: [u64; LEVELS],
    heads: [[*const WheelSlot; SLOTS]; LEVELS],
    pending: *const WheelSlot,
    len: usize,
    _deadline: PhantomData<D>,
}

// SAFETY: the raw pointers are list links to slots that are `Send + Sync`
// and touched only under the owner's lock (W1).
unsafe impl<D> Send for Wheel<D> {}

impl<D: SlotDeadline> Wheel<D> {
    pub(crate) const fn new() -> Self {
        Wheel {
            elapsed: 0,
            occupied: [0; LEVELS],
            heads: [[ptr::null(); SLOTS]; LEVELS],
            pending: ptr::null(),
            len: 0,
            _deadline: PhantomData,
        }
    }

    /// Linked entries.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Links `slot`, due at `deadline` (nanoseconds).
    ///
    /// # Safety
    /// `slot` is pinned, valid until it is removed or taken, not linked, and
    /// `D::deadline(slot) == deadline` while it is linked (W4).
    pub(crate) unsafe fn insert(&mut self, slot: NonNull<WheelSlot>, deadline: u64) {
        let tick = (deadline >> TICK_SHIFT).clamp(self.elapsed, self.elapsed + (SPAN - 1));
        let level = level_for(self.elapsed, tick);
        let index = ((tick >> (6 * level)) & 63) as usize;
        // SAFETY: the slot is valid and ours to link (caller); list heads
        // point at linked, valid slots (W2, W4).
        unsafe { self.push(slot, (level * SLOTS + index) as u16) };
        self.len += 1;
    }

    /// Unlinks `slot` if it is linked; returns whether it was.
    ///
    /// # Safety
    /// `slot` is valid, and if linked, linked in this wheel (W1).
    pub(crate) unsafe fn remove(&mut self, slot: NonNull<WheelSlot>) -> bool {
        // SAFETY: valid (caller); its fields are ours under the lock (W1).
        let pos = unsafe { slot.as_ref() }.pos.get();
        if pos == POS_NONE {
            return false;
        }
        // SAFETY: linked in this wheel at `pos` (W2).
        unsafe { self.unlink(slot, pos) };
        self.len -= 1;
        true
    }

    /// Takes one entry whose deadline is at or before `now`, or returns the
    /// instant at which to look again (`u64::MAX`: the wheel is empty). That
    /// instant is never later than the earliest deadline in the wheel.
    pub(crate) fn take_due(&mut self, now: u64) -> Result<NonNull<WheelSlot>, u64> {
        let now_tick = now >> TICK_SHIFT;
        loop {
            if let Some(first) = NonNull::new(self.pending as *mut WheelSlot) {
                // SAFETY: linked in `pending` (W2, W4).
                unsafe { self.unlink(first, POS_PENDING) };
                self.len -= 1;
                return Ok(first);
            }
            let Some((level, index, start)) = self.next_slot() else {
                // Empty: jump ahead, so that new entries start low.
                self.elapsed = self.elapsed.max(now_tick);
                return Err(u64::MAX);
            };
            if start > now_tick {
                return Err(start << TICK_SHIFT);
            }
            self.elapsed = start;
            let mut cur = core::mem::replace(&mut self.heads[level][index], ptr::null());
            self.occupied[level] &= !(1 << index);
            if level > 0 {
                // Cascade: every entry goes lower (W3), none is due yet
                // unless its deadline's tick is `start`'s.
                while let Some(s) = NonNull::new(cur as *mut WheelSlot) {
                    // SAFETY: linked until now (W4); we detached the list.
                    let sr = unsafe { s.as_ref() };
                    cur = sr.next.get();
                    // SAFETY: as above (W4).
                    let deadline = unsafe { D::deadline(s) };
                    let tick = (deadline >> TICK_SHIFT).clamp(start, start + (SPAN - 1));
                    let l = level_for(start, tick);
                    let i = ((tick >> (6 * l)) & 63) as usize;
                    // SAFETY: valid, detached: relink (W2).
                    unsafe { self.push(s, (l * SLOTS + i) as u16) };
                }
                continue;
            }
            // A level-0 slot: one tick. Due entries go to `pending`, the
            // others stay; report the earliest of those.
            let mut earliest = u64::MAX;
            while let Some(s) = NonNull::new(cur as *mut WheelSlot) {
                // SAFETY: linked until now (W4); we detached the list.
                let sr = unsafe { s.as_ref() };
                cur = sr.next.get();
                // SAFETY: as above (W4).
                let deadline = unsafe { D::deadline(s) };
                if deadline <= now {
                    // SAFETY: valid, detached: relink (W2).
                    unsafe { self.push(s, POS_PENDING) };
                } else {
                    earliest = earliest.min(deadline);
                    // SAFETY: as above.
                    unsafe { self.push(s, index as u16) };
                }
            }
            if self.pending.is_null() {
                return Err(earliest);
            }
        }
    }

    /// The earliest non-empty slot: `(level, index, start tick)`.
    fn next_slot(&self) -> Option<(usize, usize, u64)> {
        for level in 0..LEVELS {
            let occupied = self.occupied[level];
            if occupied == 0 {
                continue;
            }
            let shift = 6 * level as u32;
            let here = ((self.elapsed >> shift) & 63) as u32;
            let index = (here + occupied.rotate_right(here).trailing_zeros()) & 63;
            let width = 1u64 << shift;
            let round = width << 6;
            let mut start = (self.elapsed & !(round - 1)) + u64::from(index) * width;
            if index < here {
                // Only level 5 holds the next round (W3).
                start += round;
            }
            return Some((level, index as usize, start));
        }
        None
    }

    /// Pushes `slot` at the front of the list `pos`.
    ///
    /// # Safety
    /// `slot` is valid and in no list (W2, W4).
    unsafe fn push(&mut self, slot: NonNull<WheelSlot>, pos: u16) {
        let head = self.head_mut(pos);
        let old = *head;
        *head = slot.as_ptr();
        // SAFETY: valid (caller); its fields are ours under the lock (W1).
        let s = unsafe { slot.as_ref() };
        s.prev.set(ptr::null());
        s.next.set(old);
        s.pos.set(pos);
        if let Some(o) = NonNull::new(old as *mut WheelSlot) {
            // SAFETY: the old head is linked, so valid (W4).
            unsafe { o.as_ref() }.prev.set(slot.as_ptr());
        }
        if pos != POS_PENDING {
            self.occupied[pos as usize / SLOTS] |= 1 << (pos as usize % SLOTS);
        }
    }

    /// Unlinks `slot` from the list `pos` it is in.
    ///
    /// # Safety
    /// `slot` is linked in list `pos` of this wheel (W2).
    unsafe fn unlink(&mut self, slot: NonNull<WheelSlot>, pos: u16) {
        // SAFETY: linked, so valid (W4); fields ours under the lock (W1).
        let s = unsafe { slot.as_ref() };
        let (prev, next) = (s.prev.get(), s.next.get());
        match NonNull::new(prev as *mut WheelSlot) {
            // SAFETY: a linked neighbour is valid (W4).
            Some(p) => unsafe { p.as_ref() }.next.set(next),
            None => *self.head_mut(pos) = next,
        }
        if let Some(n) = NonNull::new(next as *mut WheelSlot) {
            // SAFETY: as above.
            unsafe { n.as_ref() }.prev.set(prev);
        }
        s.prev.set(ptr::null());
        s.next.set(ptr::null());
        s.pos.set(POS_NONE);
        if pos != POS_PENDING && next.is_null() && prev.is_null() {
            self.occupied[pos as usize / SLOTS] &= !(1 << (pos as usize % SLOTS));
        }
    }

    fn head_mut(&mut self, pos: u16) -> &mut *const WheelSlot {
        if pos == POS_PENDING {
            &mut self.pending
        } else {
            &mut self.heads[pos as usize / SLOTS][pos as usize % SLOTS]
        }
    }
}

/// The level at which `tick` sits, seen from `elapsed` (W3).
fn level_for(elapsed: u64, tick: u64) -> usize {
    let masked = (elapsed ^ tick) | 63;
    let masked = masked.min(SPAN - 1);
    let significant = 63 - masked.leading_zeros() as usize;
    significant / 6
}

#[cfg(test)]
mod tests;
