//! The wheel against a reference model (an ordered set), with random
//! inserts, removes and clock steps: every entry is taken exactly once, not
//! before its deadline, and never after the wheel said to look again.

extern crate std;

use super::*;
use std::boxed::Box;
use std::collections::BTreeSet;
use std::vec::Vec;

#[repr(C)]
struct Entry {
    slot: WheelSlot,
    deadline: u64,
}

struct ByEntry;

// SAFETY: `slot` is the first field of a `repr(C)` `Entry` whose deadline
// never changes.
unsafe impl SlotDeadline for ByEntry {
    unsafe fn deadline(slot: NonNull<WheelSlot>) -> u64 {
        // SAFETY: every slot in these tests is an `Entry`'s first field.
        unsafe { (*(slot.as_ptr() as *const Entry)).deadline }
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// The slot of `e`, as a pointer to the whole `Entry` (its first field):
/// `ByEntry::deadline` reads past the slot through it, which a pointer made
/// from `&e.slot` may not do (Stacked Borrows: outside its range).
fn slot_of(e: &Entry) -> NonNull<WheelSlot> {
    NonNull::from(e).cast::<WheelSlot>()
}

fn run(seed: u64, steps: usize, spread: u64) {
    let mut rng = Rng(seed);
    let entries: Vec<Box<Entry>> = (0..64)
        .map(|_| {
            Box::new(Entry {
                slot: WheelSlot::new(),
                deadline: 0,
            })
        })
        .collect();
    let mut entries = entries;
    let mut wheel: Wheel<ByEntry> = Wheel::new();
    let mut model: BTreeSet<(u64, usize)> = BTreeSet::new();
    let mut now: u64 = rng.next() % (1 << 40);
    let mut look_again = u64::MAX;
    for _ in 0..steps {
        match rng.next() % 4 {
            0 => {
                let i = (rng.next() % 64) as usize;
                if entries[i].slot.pos.get() == POS_NONE {
                    // Sometimes in the past, mostly ahead, sometimes far.
                    let d = match rng.next() % 8 {
                        0 => now.saturating_sub(rng.next() % 5_000_000),
                        1 => now.saturating_add(rng.next() % (1 << 50)),
                        _ => now.saturating_add(rng.next() % spread),
                    };
                    entries[i].deadline = d;
                    // SAFETY: boxed (pinned), unlinked, deadline fixed.
                    unsafe { wheel.insert(slot_of(&entries[i]), d) };
                    model.insert((d, i));
                    look_again = look_again.min(d);
                }
            }
            1 => {
                let i = (rng.next() % 64) as usize;
                let d = entries[i].deadline;
                // SAFETY: valid; linked only in this wheel.
                let was = unsafe { wheel.remove(slot_of(&entries[i])) };
                assert_eq!(was, model.remove(&(d, i)));
            }
            _ => {
                now = now.saturating_add(rng.next() % (spread / 4 + 1));
                loop {
                    match wheel.take_due(now) {
                        Ok(s) => {
                            let i = entries.iter().position(|e| slot_of(e) == s).unwrap();
                            let d = entries[i].deadline;
                            assert!(d <= now, "taken early: {d} > {now}");
                            assert!(model.remove(&(d, i)), "taken twice or never armed");
                        }
                        Err(next) => {
                            // Nothing due is left, and `next` is no later
                            // than the earliest remaining deadline.
                            if let Some(&(d, _)) = model.iter().next() {
                                assert!(d > now, "due entry {d} left at {now}");
                                assert!(next <= d, "look again at {next}, after deadline {d}");
                            } else {
                                assert_eq!(next, u64::MAX);
                            }
                            look_again = next;
                            break;
                        }
                    }
                }
            }
        }
        assert_eq!(wheel.len(), model.len());
    }
    let _ = look_again;
    // Leave nothing linked to freed memory.
    for e in &mut entries {
        // SAFETY: valid; linked only in this wheel.
        unsafe { wheel.remove(slot_of(e)) };
    }
    assert_eq!(wheel.len(), 0);
}

#[test]
fn matches_model_short_deadlines() {
    let steps = if cfg!(miri) { 300 } else { 20_000 };
    for seed in 1..=4 {
        run(seed * 0x9E37_79B9, steps, 5_000_000);
    }
}

#[test]
fn matches_model_long_deadlines() {
    let steps = if cfg!(miri) { 300 } else { 20_000 };
    for seed in 5..=8 {
        run(seed * 0x9E37_79B9, steps, 10_000_000_000);
    }
}

#[test]
fn matches_model_huge_deadlines() {
    let steps = if cfg!(miri) { 200 } else { 10_000 };
    run(77, steps, 1 << 62);
}

#[test]
fn fires_to_the_nanosecond() {
    let e = Box::new(Entry {
        slot: WheelSlot::new(),
        deadline: 5_000_123,
    });
    let mut wheel: Wheel<ByEntry> = Wheel::new();
    // SAFETY: boxed, unlinked, deadline fixed.
    unsafe { wheel.insert(slot_of(&e), e.deadline) };
    let mut now = 0;
    loop {
        match wheel.take_due(now) {
            Ok(_) => break,
            Err(next) => {
                assert!(next > now && next <= 5_000_123);
                now = next;
            }
        }
    }
    assert_eq!(now, 5_000_123);
}
