//! `TickTimer`: a heap-free ctxcore [`Timer`] for firmware with no allocator.
//!
//! Time is embassy-time's clock (SysTick through `systick-timer`, 1 kHz).
//! Armed entries live in a fixed array of [`SLOTS`] behind a
//! `critical_section::Mutex`; [`TickTimer::fire_due`], called from the SysTick
//! handler on every tick, fires the ones that are due.
//!
//! The `Timer` contract (ctxcore `src/time/mod.rs`), point by point:
//!
//! 1. `arm`, `disarm` and every `claim` run inside one critical section
//!    holding `state`, so they never overlap (and an interrupt cannot run one
//!    of them in the middle of another).
//! 2. `disarm` clears the slot holding an entry with the same key; after that
//!    nothing here refers to the entry.
//! 3. `fire_due` takes an entry out of its slot and claims it in the same
//!    critical section (so at most one claim per `arm`), and fires the
//!    returned `TimerFiring` after the critical section ends.
//! 4. `fire_due` holds one unfired `TimerFiring` at a time: claim one, fire
//!    it, then look for the next.
//!
//! **A full array.** `arm` never panics and never blocks: when all slots are
//! taken the entry is refused (not stored) and counted in
//! [`refused`](TickTimer::refused). The refused context still has its
//! deadline and is still exact *when observed*: `is_done()`, `err()` and a
//! poll of `done()` compare against the clock and report
//! `DeadlineExceeded` once it has passed. What it loses is the wake-up: a task
//! that only waits on its `done()` is not woken at the deadline, but at its
//! next poll for any other reason (pair it with `embassy_time::with_timeout`
//! or a periodic tick if that can happen). Size `SLOTS` for the deadlines
//! that can be armed at once; the firmware checks `refused() == 0` where it
//! matters.

// Each binary uses the part it needs (the size probe skips the counters).
#![allow(dead_code)]

use core::cell::RefCell;
use critical_section::Mutex;
use ctxcore::time::{Clock, TimerEntry};
use ctxcore::{Instant, Timer};

/// Deadlines that can be armed at once.
pub const SLOTS: usize = 16;

struct State {
    slots: [Option<TimerEntry>; SLOTS],
    /// Entries refused because every slot was taken.
    refused: u32,
    /// Entries claimed and fired by `fire_due`.
    fired: u32,
}

/// A fixed-capacity timer on embassy-time's clock, fired from the SysTick
/// handler. `const`-constructible, for a `static`.
pub struct TickTimer {
    state: Mutex<RefCell<State>>,
}

impl TickTimer {
    /// An empty timer.
    pub const fn new() -> Self {
        TickTimer {
            state: Mutex::new(RefCell::new(State {
                slots: [const { None }; SLOTS],
                refused: 0,
                fired: 0,
            })),
        }
    }

    /// Fires every armed entry that is due, earliest first, one at a time.
    /// Call it from the SysTick handler after the time driver's tick.
    pub fn fire_due(&self) {
        let now = self.now();
        loop {
            let claimed = critical_section::with(|cs| {
                let mut st = self.state.borrow_ref_mut(cs);
                let (_, i) = st
                    .slots
                    .iter()
                    .enumerate()
                    .filter_map(|(i, s)| s.as_ref().filter(|e| e.deadline() <= now).map(|e| (e.key(), i)))
                    .min()?;
                // Taken out and claimed under the same lock (point 3).
                // SAFETY: inside the critical section that guards every
                // slot (point 1); the entry was armed and leaves its slot
                // here, so it is claimed once (point 3).
                let firing = unsafe { st.slots[i].take()?.claim() };
                if firing.is_some() {
                    st.fired += 1;
                }
                Some(firing)
            });
            match claimed {
                None => break,
                // The context is being freed; it disarms on its own.
                Some(None) => continue,
                // Outside the critical section (point 3), before the next
                // claim (point 4).
                Some(Some(firing)) => firing.fire(),
            }
        }
    }

    /// Entries armed and not yet fired or disarmed.
    pub fn armed(&self) -> usize {
        critical_section::with(|cs| self.state.borrow_ref(cs).slots.iter().filter(|s| s.is_some()).count())
    }

    /// Entries `arm` could not store (every slot taken).
    pub fn refused(&self) -> u32 {
        critical_section::with(|cs| self.state.borrow_ref(cs).refused)
    }

    /// Entries fired by the tick handler.
    pub fn fired(&self) -> u32 {
        critical_section::with(|cs| self.state.borrow_ref(cs).fired)
    }
}

impl Clock for TickTimer {
    fn now(&self) -> Instant {
        // Microseconds are exact at any embassy tick rate up to 1 MHz.
        Instant::from_nanos(embassy_time::Instant::now().as_micros().saturating_mul(1_000))
    }
}

// SAFETY: the contract's points 1–3 hold as the module doc explains: every
// slot access, including each `claim`, is inside a critical section holding
// `state`; `disarm` clears the entry's slot; `fire_due` removes an entry in
// the critical section that claims it and fires after leaving it.
unsafe impl Timer for TickTimer {
    unsafe fn arm(&self, entry: TimerEntry) {
        critical_section::with(|cs| {
            let mut st = self.state.borrow_ref_mut(cs);
            match st.slots.iter_mut().find(|s| s.is_none()) {
                Some(slot) => *slot = Some(entry),
                // Full: refused, never a panic (see the module doc).
                None => st.refused += 1,
            }
        });
    }

    unsafe fn disarm(&self, entry: &TimerEntry) {
        let key = entry.key();
        critical_section::with(|cs| {
            let mut st = self.state.borrow_ref_mut(cs);
            if let Some(slot) = st.slots.iter_mut().find(|s| s.as_ref().is_some_and(|e| e.key() == key)) {
                *slot = None;
            }
        });
    }
}
