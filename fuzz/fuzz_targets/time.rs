//! `Instant`/`Duration` arithmetic and deadline selection at the extremes:
//! saturation everywhere, no panic, `deadline() == min(parent, own)`, and a
//! context is done exactly when the clock reaches its effective deadline,
//! with the cause of the node that owns it.
#![no_main]

use arbitrary::Arbitrary;
use core::time::Duration;
use ctxcore::time::{TimerEntry, TimerFiring};
use ctxcore::{Clock, Context, Error, Instant, Timer};
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// A manual timer that, unlike `ManualClock`, may be reset to any time
/// between inputs (when nothing is armed), so every input can start anywhere
/// in `0..=u64::MAX`.
struct ResetClock {
    now: AtomicU64,
    entries: Mutex<BTreeMap<(Instant, usize), TimerEntry>>,
}

static TCLOCK: ResetClock = ResetClock {
    now: AtomicU64::new(0),
    entries: Mutex::new(BTreeMap::new()),
};

impl ResetClock {
    fn reset(&self, t: u64) {
        assert!(self.entries.lock().unwrap().is_empty(), "entries left armed");
        self.now.store(t, Ordering::SeqCst);
    }

    fn advance_to(&self, t: u64) {
        self.now.fetch_max(t, Ordering::SeqCst);
        let now = Instant::from_nanos(self.now.load(Ordering::SeqCst));
        loop {
            let mut due: Vec<TimerFiring> = Vec::new();
            {
                let mut map = self.entries.lock().unwrap();
                while let Some(e) = map.first_entry() {
                    if e.key().0 > now {
                        break;
                    }
                    // SAFETY: under the map's mutex; the entry was armed and leaves the map here (claimed once).
                    if let Some(f) = unsafe { e.remove().claim() } {
                        due.push(f);
                    }
                }
            }
            if due.is_empty() {
                return;
            }
            for f in due {
                f.fire();
            }
        }
    }
}

impl Clock for ResetClock {
    fn now(&self) -> Instant {
        Instant::from_nanos(self.now.load(Ordering::SeqCst))
    }
}

// SAFETY: arm, disarm and claim run under `entries`' mutex; a claimed or
// disarmed entry leaves the map at once; firings run after the guard drops.
unsafe impl Timer for ResetClock {
    unsafe fn arm(&self, entry: TimerEntry) {
        self.entries.lock().unwrap().insert(entry.key(), entry);
    }
    unsafe fn disarm(&self, entry: &TimerEntry) {
        self.entries.lock().unwrap().remove(&entry.key());
    }
}

#[derive(Arbitrary, Debug)]
struct Dur {
    secs: u64,
    nanos: u32,
}

impl Dur {
    fn get(&self) -> Duration {
        Duration::new(self.secs, self.nanos % 1_000_000_000)
    }
}

#[derive(Arbitrary, Debug)]
enum Child {
    Cancel,
    Deadline(u64, bool),
    Timeout(Dur, bool),
}

#[derive(Arbitrary, Debug)]
struct Input {
    arith: Vec<(u64, Dur, u64)>,
    start: u64,
    chain: Vec<Child>,
    any_mask: u64,
    advances: Vec<u64>,
}

const CAUSES: [&str; 2] = ["own deadline a", "own deadline b"];

fn check_arith(a: u64, d: Duration, b: u64) {
    let ia = Instant::from_nanos(a);
    let ib = Instant::from_nanos(b);
    let dn = d.as_nanos();
    let sum = (a as u128 + dn).min(u64::MAX as u128) as u64;
    assert_eq!((ia + d).as_nanos(), sum);
    assert_eq!(ia.saturating_add(d).as_nanos(), sum);
    let dn64 = dn.min(u64::MAX as u128) as u64;
    assert_eq!((ia - d).as_nanos(), a.saturating_sub(dn64));
    assert_eq!(ia.saturating_sub(d).as_nanos(), a.saturating_sub(dn64));
    let exact = a as u128 + dn;
    assert_eq!(
        ia.checked_add(d).map(Instant::as_nanos),
        (exact <= u64::MAX as u128).then_some(exact as u64)
    );
    assert_eq!(ia - ib, Duration::from_nanos(a.saturating_sub(b)));
    assert_eq!(
        ia.saturating_duration_since(ib),
        Duration::from_nanos(a.saturating_sub(b))
    );
    assert_eq!(ia.cmp(&ib), a.cmp(&b));
    assert_eq!(ia == ib, a == b);
    assert!(Instant::MAX + d == Instant::MAX && Instant::ZERO - d == Instant::ZERO);
    let _ = format!("{ia:?} {:?}", ia + d);
}

/// What the model expects of one node of the chain.
#[derive(Clone, Copy, Debug)]
struct Expect {
    /// Effective deadline (`u64::MAX`: none).
    eff: u64,
    /// The deadline is this node's own.
    owns: bool,
    /// Cause if its own deadline fires (`None`: the error itself).
    dcause: Option<&'static str>,
    done: Option<(Error, Option<&'static str>)>,
}

fn check_node(ctx: &Context, e: &Expect) {
    assert_eq!(ctx.deadline(), (e.eff != u64::MAX).then(|| Instant::from_nanos(e.eff)));
    assert_eq!(ctx.is_done(), e.done.is_some(), "{e:?}");
    assert_eq!(ctx.err(), e.done.map(|d| d.0), "{e:?}");
    if let Some((err, cause)) = e.done {
        let c = ctx.cause().unwrap();
        match cause {
            Some(s) => assert_eq!(c.as_str(), Some(s)),
            None => assert_eq!(c.as_error(), Some(err)),
        }
    }
}

fuzz_target!(|input: Input| {
    for (a, d, b) in &input.arith {
        check_arith(*a, d.get(), *b);
    }

    TCLOCK.reset(input.start);
    let mut now = input.start;
    let root = Context::with_timer(&TCLOCK);
    let mut ctxs = vec![root];
    let mut handles = Vec::new();
    let mut exp: Vec<Expect> = vec![Expect {
        eff: u64::MAX,
        owns: false,
        dcause: None,
        done: None,
    }];
    for (i, c) in input.chain.iter().take(64).enumerate() {
        let parent = ctxs.last().unwrap().clone();
        let pe = *exp.last().unwrap();
        let (own, cause) = match c {
            Child::Cancel => (u64::MAX, None),
            Child::Deadline(t, with_cause) => (*t, with_cause.then_some(CAUSES[i % 2])),
            Child::Timeout(d, with_cause) => (
                Instant::from_nanos(now).saturating_add(d.get()).as_nanos(),
                with_cause.then_some(CAUSES[i % 2]),
            ),
        };
        let (ctx, h) = match (c, cause) {
            (Child::Cancel, _) => parent.with_cancel(),
            (Child::Deadline(..), None) => parent.with_deadline(Instant::from_nanos(own)),
            (Child::Deadline(..), Some(s)) => parent.with_deadline_cause(Instant::from_nanos(own), s),
            (Child::Timeout(d, _), None) => parent.with_timeout(d.get()),
            (Child::Timeout(d, _), Some(s)) => parent.with_timeout_cause(d.get(), s),
        };
        let owns = own < pe.eff;
        let mut e = Expect {
            eff: own.min(pe.eff),
            owns,
            dcause: if owns { cause } else { None },
            done: pe.done,
        };
        if e.done.is_none() && owns && now >= own {
            e.done = Some((Error::DeadlineExceeded, e.dcause));
        }
        check_node(&ctx, &e);
        ctxs.push(ctx);
        handles.push(h);
        exp.push(e);
    }
    // Deadline selection across trees: `any` takes the earliest.
    let picked: Vec<usize> = (0..ctxs.len())
        .filter(|i| input.any_mask >> (i % 64) & 1 == 1)
        .collect();
    let any = Context::any(picked.iter().map(|&i| &ctxs[i]));
    let min = picked.iter().map(|&i| exp[i].eff).min().unwrap_or(u64::MAX);
    assert_eq!(any.deadline(), (min != u64::MAX).then(|| Instant::from_nanos(min)));

    for &t in input.advances.iter().take(8) {
        TCLOCK.advance_to(t);
        now = now.max(t);
        // Owners fire earliest first; a node done earlier keeps its cause.
        for k in 1..exp.len() {
            if exp[k].done.is_none() && exp[k].eff <= now && exp[k].eff != u64::MAX {
                // The owner of the effective deadline: the first node on the
                // path, from the top, whose own deadline it is.
                let owner = (1..=k).find(|&j| exp[j].owns && exp[j].eff == exp[k].eff).unwrap();
                exp[k].done = Some((Error::DeadlineExceeded, exp[owner].dcause));
            } else if exp[k].done.is_none() && exp[k - 1].done.is_some() {
                exp[k].done = exp[k - 1].done;
            }
        }
        for (c, e) in ctxs.iter().zip(&exp) {
            check_node(c, e);
        }
        let any_done = picked.iter().any(|&i| exp[i].done.is_some());
        assert_eq!(any.is_done(), any_done);
    }
    drop(any);
    drop(handles);
    drop(ctxs);
    assert!(TCLOCK.entries.lock().unwrap().is_empty(), "entries left armed");
});
