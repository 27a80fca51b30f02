//! The program language, reference model and checker behind the `ops` and
//! `ops_threads` fuzz targets.
//!
//! A fuzz input decodes (with `arbitrary`) into a [`Program`]: a list of
//! [`Op`]s over a forest of contexts, handles, `done` futures and
//! after-funcs. Each op goes through three stages:
//!
//! 1. [`Model::plan`] turns the raw op into a concrete [`Action`] (indices
//!    resolved, deadlines made concrete), or skips it;
//! 2. [`Real::exec`] performs the action on the real `ctxcore` objects and
//!    reports what it saw ([`Outcome`]) — on the calling thread, or on another
//!    thread in `ops_threads`;
//! 3. [`Model::apply`] performs the same action on plain Rust structs and
//!    panics on any difference; then [`check`] compares every observable of
//!    every live object with the model: `is_done`, `err`, `cause`,
//!    `deadline`, values, the clock, every waker's wake count, every
//!    after-func's run count, `is_terminated`.
//!
//! After the program, a teardown drops and stops everything, and the input
//! must leave no allocation, no armed timer entry and no stored value behind.
//!
//! All deadlines live on one `static` [`ManualClock`] ([`CLOCK`]): time only
//! moves forward across inputs, so the model starts each input at
//! `CLOCK.now()` and works relative to it. Deadlines are chosen so that no two
//! armed entries of one input are due at the same instant (their low 10 bits
//! hold a per-input sequence number while the clock only moves in steps of
//! 1024 ns), which keeps the firing order — and so every cause — determined.

use arbitrary::Arbitrary;
use core::future::Future;
use core::pin::Pin;
use core::task::{Context as TaskContext, Poll, Waker};
use core::time::Duration;
use ctxcore::{
    AfterFunc, CancelHandle, Cause, Clock, Context, ContextRef, DoneOwned, Error, Instant, Key, ManualClock, Run,
    ScopedContext,
};
use futures_core::FusedFuture;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Once};
use std::task::Wake;

/// The clock of every deadline in the fuzz targets.
pub static CLOCK: ManualClock = ManualClock::new();

/// Operations executed and checked against the model, over the whole process.
pub static OPS: AtomicU64 = AtomicU64::new(0);
/// Inputs run to completion.
pub static INPUTS: AtomicU64 = AtomicU64::new(0);

// ---------------------------------------------------------------------------
// Allocation accounting: every input must free everything it allocated.

/// The system allocator, counting live allocations.
pub struct CountingAlloc;

static LIVE_ALLOCS: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards every call to `System` unchanged; only counts.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE_ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE_ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_ALLOCS.fetch_sub(1, Ordering::Relaxed);
        // SAFETY: forwarded contract.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

/// Live allocations right now.
pub fn live_allocs() -> isize {
    LIVE_ALLOCS.load(Ordering::Relaxed)
}

// ---------------------------------------------------------------------------
// Values, causes, wakers

/// Two keys of the same type (must never collide) and one of a drop-counted
/// type (every stored value must be dropped by the end of the input).
pub static K_A: Key<u16> = Key::new("a");
/// See [`K_A`].
pub static K_B: Key<u16> = Key::new("b");
/// See [`K_A`].
pub static K_T: Key<Tracked> = Key::new("tracked");

static TRACKED_LIVE: AtomicIsize = AtomicIsize::new(0);

/// A value that counts its live instances.
#[derive(Debug)]
pub struct Tracked(pub u16);

impl Tracked {
    fn new(v: u16) -> Self {
        TRACKED_LIVE.fetch_add(1, Ordering::Relaxed);
        Tracked(v)
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        TRACKED_LIVE.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A user error type used as a cause (checked with `downcast_ref`).
#[derive(Debug, PartialEq, Eq)]
pub struct Custom(pub u8);

impl core::fmt::Display for Custom {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "custom {}", self.0)
    }
}

impl std::error::Error for Custom {}

const STRS: [&str; 3] = ["shutdown", "client gone", "budget"];

/// A cancellation cause, as the fuzzer chooses it.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum CauseSpec {
    /// A `&'static str` (no allocation).
    Str(u8),
    /// An [`Error`] given as the cause (`true`: `DeadlineExceeded`).
    Err(bool),
    /// A [`Custom`] error (boxed, downcastable).
    Custom(u8),
    /// A `String` (boxed; only its text is observable).
    Text(u8),
}

impl CauseSpec {
    fn make(self) -> Cause {
        match self {
            CauseSpec::Str(i) => Cause::from(STRS[i as usize % STRS.len()]),
            CauseSpec::Err(false) => Cause::from(Error::Canceled),
            CauseSpec::Err(true) => Cause::from(Error::DeadlineExceeded),
            CauseSpec::Custom(n) => Cause::from(Custom(n)),
            CauseSpec::Text(n) => Cause::from(format!("text {n}")),
        }
    }
}

/// Whether `c` is what the model expects for a context done with `err` and
/// `spec` (`None`: no explicit cause, so the error itself).
fn cause_matches(c: &Cause, err: Error, spec: Option<CauseSpec>) -> bool {
    match spec {
        None => c.as_error() == Some(err),
        Some(CauseSpec::Str(i)) => c.as_str() == Some(STRS[i as usize % STRS.len()]),
        Some(CauseSpec::Err(dl)) => c.as_error() == Some(if dl { Error::DeadlineExceeded } else { Error::Canceled }),
        Some(CauseSpec::Custom(n)) => c.downcast_ref::<Custom>() == Some(&Custom(n)),
        Some(CauseSpec::Text(n)) => {
            c.as_str().is_none() && c.as_error().is_none() && c.to_string() == format!("text {n}")
        }
    }
}

/// A cause reduced to what can be compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CauseKey {
    /// A bare [`Error`].
    Err(Error),
    /// A static message.
    Str(&'static str),
    /// A [`Custom`] error.
    Custom(u8),
    /// Anything else, by its text.
    Text(String),
}

fn cause_key(c: &Cause) -> CauseKey {
    if let Some(e) = c.as_error() {
        CauseKey::Err(e)
    } else if let Some(s) = c.as_str() {
        CauseKey::Str(s)
    } else if let Some(x) = c.downcast_ref::<Custom>() {
        CauseKey::Custom(x.0)
    } else {
        CauseKey::Text(c.to_string())
    }
}

fn expected_key(err: Error, spec: Option<CauseSpec>) -> CauseKey {
    match spec {
        None => CauseKey::Err(err),
        Some(CauseSpec::Str(i)) => CauseKey::Str(STRS[i as usize % STRS.len()]),
        Some(CauseSpec::Err(false)) => CauseKey::Err(Error::Canceled),
        Some(CauseSpec::Err(true)) => CauseKey::Err(Error::DeadlineExceeded),
        Some(CauseSpec::Custom(n)) => CauseKey::Custom(n),
        Some(CauseSpec::Text(n)) => CauseKey::Text(format!("text {n}")),
    }
}

/// What one scoped level looked like: `is_done` (through the `ContextRef`
/// and through the `ScopedContext`), `err`, `cause`, `deadline`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snap {
    done: bool,
    scoped_done: bool,
    err: Option<Error>,
    cause: Option<CauseKey>,
    deadline: Option<Instant>,
}

/// A waker that counts its wake-ups.
struct CountWaker(AtomicUsize);

impl Wake for CountWaker {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// A counting waker and the handle to read its count.
struct Counter {
    arc: Arc<CountWaker>,
    waker: Waker,
}

impl Counter {
    fn new() -> Self {
        let arc = Arc::new(CountWaker(AtomicUsize::new(0)));
        let waker = Waker::from(arc.clone());
        Counter { arc, waker }
    }
    fn count(&self) -> usize {
        self.arc.0.load(Ordering::SeqCst)
    }
}

/// The inner future of a `run`: ready after `left` more polls; reports its
/// drop through `alive`.
struct Countdown {
    left: u8,
    alive: Arc<AtomicBool>,
}

impl Future for Countdown {
    type Output = u8;
    fn poll(mut self: Pin<&mut Self>, _cx: &mut TaskContext<'_>) -> Poll<u8> {
        if self.left == 0 {
            Poll::Ready(7)
        } else {
            self.left -= 1;
            Poll::Pending
        }
    }
}

impl Drop for Countdown {
    fn drop(&mut self) {
        self.alive.store(false, Ordering::SeqCst);
    }
}

fn err_code(e: Option<Error>) -> u8 {
    match e {
        None => 1,
        Some(Error::Canceled) => 2,
        Some(Error::DeadlineExceeded) => 3,
    }
}

// ---------------------------------------------------------------------------
// The program

/// When a deadline is, as the fuzzer chooses it.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum When {
    /// `Instant::ZERO`: already passed.
    Past,
    /// Exactly now: already passed.
    Now,
    /// `Instant::MAX`: never.
    Max,
    /// `((x + 1) << 10) + seq` ns from now.
    In(u16),
    /// The parent's effective deadline (a tie: the child does not own it).
    Parent,
}

/// A timeout, as the fuzzer chooses it.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Dur {
    /// Zero: already passed.
    Zero,
    /// `Duration::MAX`: saturates to never.
    Max,
    /// `((x + 1) << 10) + seq` ns.
    In(u16),
    /// Exactly up to the parent's effective deadline (a tie).
    Parent,
}

/// One step of a fuzz program. Indices are taken modulo the number of
/// objects of that kind (an op on an empty set is skipped).
#[derive(Arbitrary, Debug, Clone)]
#[allow(missing_docs)]
pub enum Op {
    NewRoot {
        clock: bool,
    },
    WithCancel {
        ctx: u8,
    },
    WithDeadline {
        ctx: u8,
        when: When,
        cause: Option<CauseSpec>,
    },
    WithTimeout {
        ctx: u8,
        dur: Dur,
        cause: Option<CauseSpec>,
    },
    WithValue {
        ctx: u8,
        key: u8,
        v: u16,
    },
    WithoutCancel {
        ctx: u8,
    },
    Any {
        ctxs: [u8; 4],
        n: u8,
    },
    CloneCtx {
        ctx: u8,
    },
    DropCtx {
        ctx: u8,
    },
    Cancel {
        h: u8,
        cause: Option<CauseSpec>,
    },
    DropHandle {
        h: u8,
    },
    Detach {
        h: u8,
    },
    DoneFut {
        ctx: u8,
    },
    RunFut {
        ctx: u8,
        polls: u8,
    },
    Poll {
        f: u8,
        fresh: bool,
    },
    DropFut {
        f: u8,
    },
    BorrowedDone {
        ctx: u8,
        h: u8,
        cause: Option<CauseSpec>,
    },
    WaitZero {
        ctx: u8,
    },
    AfterFunc {
        ctx: u8,
        capture: bool,
    },
    Stop {
        a: u8,
    },
    DropAfter {
        a: u8,
    },
    Advance {
        x: u16,
    },
    SetClock {
        x: u16,
        back: bool,
    },
    Scoped {
        ctx: u8,
        levels: [ScopedKind; 3],
        n: u8,
        event: ScopedEvent,
    },
}

/// One level of a chain of [`ScopedContext`]s, as the fuzzer chooses it.
#[derive(Arbitrary, Debug, Clone, Copy)]
#[allow(missing_docs)]
pub enum ScopedKind {
    New,
    Deadline(When, Option<CauseSpec>),
    Timeout(Dur),
}

/// What happens while a chain of scoped contexts is alive.
#[derive(Arbitrary, Debug, Clone, Copy)]
#[allow(missing_docs)]
pub enum ScopedEvent {
    Nothing,
    CancelLevel(u8, Option<CauseSpec>),
    CancelHandle(u8, Option<CauseSpec>),
    Advance(u16),
}

/// A concrete scoped level.
#[derive(Debug, Clone, Copy)]
#[allow(missing_docs)]
pub enum ScopedLevel {
    New,
    Deadline(Instant, Option<CauseSpec>),
    Timeout(Duration),
}

/// A concrete scoped event.
#[derive(Debug, Clone, Copy)]
#[allow(missing_docs)]
pub enum SEvent {
    Nothing,
    CancelLevel(usize, Option<CauseSpec>),
    CancelHandle(usize, Option<CauseSpec>),
    Advance(Duration),
}

/// A whole fuzz input.
#[derive(Arbitrary, Debug)]
pub struct Program {
    /// Teardown drops handles before futures (`true`) or after.
    pub handles_first: bool,
    /// The ops, in order.
    pub ops: Vec<Op>,
}

/// A concrete step: indices resolved, times concrete.
#[derive(Debug, Clone)]
#[allow(missing_docs)]
pub enum Action {
    NewRoot {
        clock: bool,
    },
    WithCancel {
        ctx: usize,
    },
    WithDeadline {
        ctx: usize,
        at: Instant,
        cause: Option<CauseSpec>,
    },
    WithTimeout {
        ctx: usize,
        d: Duration,
        cause: Option<CauseSpec>,
    },
    WithValue {
        ctx: usize,
        key: u8,
        v: u16,
    },
    WithoutCancel {
        ctx: usize,
    },
    Any {
        ctxs: Vec<usize>,
    },
    CloneCtx {
        ctx: usize,
    },
    DropCtx {
        ctx: usize,
    },
    Cancel {
        h: usize,
        cause: Option<CauseSpec>,
    },
    /// Drop the handle (cancels it).
    DropHandle {
        h: usize,
    },
    /// `really`: call `detach`; else keep the handle aside unused (the same
    /// to every observer) so teardown can still free its tree.
    Detach {
        h: usize,
        really: bool,
    },
    DoneFut {
        ctx: usize,
    },
    RunFut {
        ctx: usize,
        polls: u8,
    },
    Poll {
        f: usize,
        fresh: bool,
    },
    DropFut {
        f: usize,
    },
    BorrowedDone {
        ctx: usize,
        h: Option<usize>,
        cause: Option<CauseSpec>,
    },
    WaitZero {
        ctx: usize,
    },
    AfterFunc {
        ctx: usize,
        capture: bool,
    },
    Stop {
        a: usize,
    },
    /// `really`: drop the `AfterFunc`; else keep it aside (see `Detach`).
    DropAfter {
        a: usize,
        really: bool,
    },
    Advance {
        d: Duration,
    },
    SetClock {
        t: Instant,
    },
    /// A chain of 1 to 3 `ScopedContext`s pinned on the stack under `ctx`:
    /// snapshot, poll the deepest's `done()`, the event, snapshot, poll;
    /// then the scopes end (deepest first), which cancels them.
    Scoped {
        ctx: usize,
        levels: Vec<ScopedLevel>,
        event: SEvent,
    },
}

/// What the real objects reported for an action.
#[derive(Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Outcome {
    None,
    Done(Poll<Error>),
    Run(Poll<Result<u8, Error>>),
    Stop(bool),
    Wait(Option<Error>),
    /// First poll, wakes after the cancel, second poll.
    Borrowed(Poll<Error>, usize, Poll<Error>),
    Scoped {
        before: Vec<Snap>,
        first: Poll<Error>,
        wakes: usize,
        after: Vec<Snap>,
        second: Poll<Error>,
    },
}

type ScopedChain<'b> = [(ContextRef<'b>, Pin<&'b ScopedContext<'b>>)];

/// Pins one scoped level per stack frame, then runs `body` on the chain.
fn scoped_rec<'a>(
    parent: ContextRef<'a>,
    levels: &[ScopedLevel],
    chain: &ScopedChain<'a>,
    body: &mut dyn for<'b> FnMut(&ScopedChain<'b>) -> Outcome,
) -> Outcome {
    let Some((level, rest)) = levels.split_first() else {
        return body(chain);
    };
    let sc = match *level {
        ScopedLevel::New => ScopedContext::new(parent),
        ScopedLevel::Deadline(at, None) => ScopedContext::with_deadline(parent, at),
        ScopedLevel::Deadline(at, Some(c)) => ScopedContext::with_deadline_cause(parent, at, c.make()),
        ScopedLevel::Timeout(d) => ScopedContext::with_timeout(parent, d),
    };
    let sc = core::pin::pin!(sc);
    let r = sc.as_ref().context();
    let mut v: Vec<(ContextRef<'_>, Pin<&ScopedContext<'_>>)> = chain.to_vec();
    v.push((r, sc.as_ref()));
    scoped_rec(r, rest, &v, body)
}

fn snap_real(chain: &ScopedChain<'_>) -> Vec<Snap> {
    chain
        .iter()
        .map(|(r, s)| Snap {
            done: r.is_done(),
            scoped_done: s.is_done(),
            err: r.err(),
            cause: r.cause().map(|c| cause_key(&c)),
            deadline: r.deadline(),
        })
        .collect()
}

// ---------------------------------------------------------------------------
// The real objects

enum RealFut {
    Done(Pin<Box<DoneOwned>>),
    Run(Pin<Box<Run<Countdown>>>, Arc<AtomicBool>),
}

struct RealAf {
    handle: Option<AfterFunc>,
    runs: Arc<AtomicUsize>,
    seen: Arc<AtomicU8>,
}

/// The real `ctxcore` objects of one input. Everything in it is `Send`, so an
/// action can run on any thread.
#[derive(Default)]
pub struct Real {
    ctxs: Vec<Context>,
    handles: Vec<Option<CancelHandle>>,
    futs: Vec<(RealFut, Counter)>,
    /// Wakers replaced by a fresh one: (counter, count it must keep).
    retired: Vec<(Counter, usize)>,
    afs: Vec<RealAf>,
}

impl Real {
    /// Performs `a` and reports what it saw.
    pub fn exec(&mut self, a: &Action) -> Outcome {
        match *a {
            Action::NewRoot { clock } => {
                self.ctxs.push(if clock {
                    Context::with_timer(&CLOCK)
                } else {
                    Context::todo()
                });
            }
            Action::WithCancel { ctx } => {
                let (c, h) = self.ctxs[ctx].with_cancel();
                self.ctxs.push(c);
                self.handles.push(Some(h));
            }
            Action::WithDeadline { ctx, at, cause } => {
                let (c, h) = match cause {
                    Some(s) => self.ctxs[ctx].with_deadline_cause(at, s.make()),
                    None => self.ctxs[ctx].with_deadline(at),
                };
                self.ctxs.push(c);
                self.handles.push(Some(h));
            }
            Action::WithTimeout { ctx, d, cause } => {
                let (c, h) = match cause {
                    Some(s) => self.ctxs[ctx].with_timeout_cause(d, s.make()),
                    None => self.ctxs[ctx].with_timeout(d),
                };
                self.ctxs.push(c);
                self.handles.push(Some(h));
            }
            Action::WithValue { ctx, key, v } => {
                let c = match key % 3 {
                    0 => self.ctxs[ctx].with_value(&K_A, v),
                    1 => self.ctxs[ctx].with_value(&K_B, v),
                    _ => self.ctxs[ctx].with_value(&K_T, Tracked::new(v)),
                };
                self.ctxs.push(c);
            }
            Action::WithoutCancel { ctx } => {
                let c = self.ctxs[ctx].without_cancel();
                self.ctxs.push(c);
            }
            Action::Any { ref ctxs } => {
                let c = Context::any(ctxs.iter().map(|&i| &self.ctxs[i]));
                self.ctxs.push(c);
            }
            Action::CloneCtx { ctx } => {
                let c = self.ctxs[ctx].clone();
                self.ctxs.push(c);
            }
            Action::DropCtx { ctx } => {
                drop(self.ctxs.swap_remove(ctx));
            }
            Action::Cancel { h, cause } => {
                let h = self.handles[h].as_ref().expect("live handle");
                match cause {
                    Some(s) => h.cancel_with(s.make()),
                    None => h.cancel(),
                }
            }
            Action::DropHandle { h } => {
                drop(self.handles[h].take().expect("live handle"));
            }
            Action::Detach { h, really } => {
                if really {
                    self.handles[h].take().expect("live handle").detach();
                }
            }
            Action::DoneFut { ctx } => {
                let f = Box::pin(self.ctxs[ctx].done_owned());
                self.futs.push((RealFut::Done(f), Counter::new()));
            }
            Action::RunFut { ctx, polls } => {
                let alive = Arc::new(AtomicBool::new(true));
                let inner = Countdown {
                    left: polls,
                    alive: alive.clone(),
                };
                let f = Box::pin(self.ctxs[ctx].run(inner));
                self.futs.push((RealFut::Run(f, alive), Counter::new()));
            }
            Action::Poll { f, fresh } => {
                let (fut, counter) = &mut self.futs[f];
                if fresh {
                    let old = core::mem::replace(counter, Counter::new());
                    let n = old.count();
                    self.retired.push((old, n));
                }
                let mut cx = TaskContext::from_waker(&counter.waker);
                return match fut {
                    RealFut::Done(d) => Outcome::Done(d.as_mut().poll(&mut cx)),
                    RealFut::Run(r, _) => Outcome::Run(r.as_mut().poll(&mut cx)),
                };
            }
            Action::DropFut { f } => {
                let (fut, counter) = self.futs.swap_remove(f);
                drop(fut);
                let n = counter.count();
                self.retired.push((counter, n));
            }
            Action::BorrowedDone { ctx, h, cause } => {
                let counter = Counter::new();
                let mut cx = TaskContext::from_waker(&counter.waker);
                let c = &self.ctxs[ctx];
                let mut done = core::pin::pin!(c.done());
                let first = done.as_mut().poll(&mut cx);
                if let Some(h) = h {
                    let h = self.handles[h].as_ref().expect("live handle");
                    match cause {
                        Some(s) => h.cancel_with(s.make()),
                        None => h.cancel(),
                    }
                }
                let wakes = counter.count();
                let second = done.as_mut().poll(&mut cx);
                return Outcome::Borrowed(first, wakes, second);
            }
            Action::WaitZero { ctx } => {
                return Outcome::Wait(self.ctxs[ctx].wait_blocking_timeout(Duration::ZERO));
            }
            Action::AfterFunc { ctx, capture } => {
                let runs = Arc::new(AtomicUsize::new(0));
                let seen = Arc::new(AtomicU8::new(0));
                let captured = capture.then(|| self.ctxs[ctx].clone());
                let (r, s) = (runs.clone(), seen.clone());
                let handle = self.ctxs[ctx].after_func(move || {
                    r.fetch_add(1, Ordering::SeqCst);
                    if let Some(c) = &captured {
                        // Runs only once the context is done.
                        s.store(err_code(c.err()), Ordering::SeqCst);
                    }
                });
                self.afs.push(RealAf {
                    handle: Some(handle),
                    runs,
                    seen,
                });
            }
            Action::Stop { a } => {
                let h = self.afs[a].handle.as_ref().expect("held after-func");
                return Outcome::Stop(h.stop());
            }
            Action::DropAfter { a, really } => {
                if really {
                    drop(self.afs[a].handle.take());
                }
            }
            Action::Advance { d } => CLOCK.advance(d),
            Action::SetClock { t } => CLOCK.set(t),
            Action::Scoped { ctx, ref levels, event } => {
                let handles = &self.handles;
                let parent = self.ctxs[ctx].as_ref();
                return scoped_rec(parent, levels, &[], &mut |chain| {
                    let before = snap_real(chain);
                    let counter = Counter::new();
                    let mut cx = TaskContext::from_waker(&counter.waker);
                    let deepest = chain.last().expect("at least one level").0;
                    let mut done = core::pin::pin!(deepest.done());
                    let first = done.as_mut().poll(&mut cx);
                    match event {
                        SEvent::Nothing => {}
                        SEvent::CancelLevel(i, cause) => match cause {
                            Some(c) => chain[i].1.cancel_with(c.make()),
                            None => chain[i].1.cancel(),
                        },
                        SEvent::CancelHandle(h, cause) => {
                            let h = handles[h].as_ref().expect("live handle");
                            match cause {
                                Some(c) => h.cancel_with(c.make()),
                                None => h.cancel(),
                            }
                        }
                        SEvent::Advance(d) => CLOCK.advance(d),
                    }
                    let wakes = counter.count();
                    let after = snap_real(chain);
                    let second = done.as_mut().poll(&mut cx);
                    Outcome::Scoped {
                        before,
                        first,
                        wakes,
                        after,
                        second,
                    }
                });
            }
        }
        Outcome::None
    }
}

// ---------------------------------------------------------------------------
// The reference model: plain structs, no unsafe, no concurrency.

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum TimerKind {
    /// The fuzz [`CLOCK`].
    Clock,
    /// The process's `StdTimer` (only deadlines `ZERO` and `MAX` are used on
    /// it, so its real time never matters).
    Std,
}

#[derive(Debug)]
struct MNode {
    timer: TimerKind,
    /// Effective deadline (`u64::MAX`: none).
    deadline: u64,
    /// Whether the deadline is this node's own (armed on the timer).
    owns: bool,
    /// Cause reported if the own deadline fires.
    dcause: Option<CauseSpec>,
    /// Tree parent (one) or `any` parents (deduplicated, in order).
    parents: Vec<usize>,
    children: Vec<usize>,
    /// Roots made by `with_timer` or `without_cancel`: never done.
    root: bool,
    /// A `Context::any` node.
    any: bool,
    done: Option<(Error, Option<CauseSpec>)>,
}

#[derive(Debug, Clone)]
struct MCtx {
    node: Option<usize>,
    /// (key, value), nearest last.
    vals: Vec<(u8, u16)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HState {
    Live,
    /// Detached (really, or kept aside).
    Detached,
    Dropped,
}

#[derive(Debug)]
struct MHandle {
    node: usize,
    state: HState,
}

#[derive(Debug)]
enum MFutKind {
    Done,
    Run { left: u8, inner_alive: bool },
}

#[derive(Debug)]
struct MFut {
    node: Option<usize>,
    kind: MFutKind,
    /// Has returned `Ready`.
    terminated: bool,
    /// Its current waker is registered on a live node.
    registered: bool,
    /// Wakes the current waker must have seen.
    wakes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfState {
    Pending,
    Ran,
    Stopped,
    /// On a context that can never be done: dropped unrun at registration.
    Never {
        stopped: bool,
    },
}

#[derive(Debug)]
struct MAf {
    node: Option<usize>,
    state: AfState,
    capture: bool,
    /// `err_code` the callback must have recorded (0: not run or no capture).
    seen: u8,
    /// The `AfterFunc` handle is gone (really, or kept aside).
    dropped: bool,
    /// The real `AfterFunc` handle still exists (not really dropped).
    held: bool,
}

/// The reference model of one input.
pub struct Model {
    /// `CLOCK.now()` as the model computes it.
    now: u64,
    /// Next deadline sequence number (low 10 bits of every future deadline).
    seq: u64,
    nodes: Vec<MNode>,
    ctxs: Vec<MCtx>,
    handles: Vec<MHandle>,
    futs: Vec<MFut>,
    afs: Vec<MAf>,
}

fn pick(i: u8, len: usize) -> Option<usize> {
    (len > 0).then(|| i as usize % len)
}

impl Model {
    /// A model at the clock's current time.
    pub fn new() -> Self {
        Model {
            now: CLOCK.now().as_nanos(),
            seq: 1,
            nodes: Vec::new(),
            ctxs: Vec::new(),
            handles: Vec::new(),
            futs: Vec::new(),
            afs: Vec::new(),
        }
    }

    fn timer_of(&self, c: &MCtx) -> TimerKind {
        c.node.map_or(TimerKind::Std, |n| self.nodes[n].timer)
    }

    /// The `k`-th handle (modulo) that is still live.
    fn live_handle(&self, k: u8) -> Option<usize> {
        let live: Vec<usize> = (0..self.handles.len())
            .filter(|&i| self.handles[i].state == HState::Live)
            .collect();
        pick(k, live.len()).map(|i| live[i])
    }

    /// Can node `n` ever be done (by a handle, a deadline or an ancestor)?
    /// Roots never are; every child has a handle (dropped at teardown at the
    /// latest); an `any` node can be iff one of its parents can.
    fn can_be_done(&self, n: usize) -> bool {
        let node = &self.nodes[n];
        if node.done.is_some() {
            return true;
        }
        if node.root {
            return false;
        }
        if node.any {
            return node.parents.iter().any(|&p| self.can_be_done(p));
        }
        true
    }

    fn seq_ns(&mut self) -> Option<u64> {
        if self.seq >= 1024 {
            return None;
        }
        let s = self.seq;
        self.seq += 1;
        Some(s)
    }

    /// A concrete deadline on `timer` under a parent whose effective
    /// deadline is `pdl`.
    fn plan_deadline(&mut self, timer: TimerKind, pdl: u64, when: When) -> Instant {
        match (timer, when) {
            (_, When::Parent) => Instant::from_nanos(pdl),
            (_, When::Past) => Instant::ZERO,
            (_, When::Max) => Instant::MAX,
            (TimerKind::Std, When::Now | When::In(_)) => Instant::MAX,
            (TimerKind::Clock, When::Now) => Instant::from_nanos(self.now),
            (TimerKind::Clock, When::In(x)) => match self.seq_ns() {
                Some(s) => Instant::from_nanos(self.now + (((x as u64) + 1) << 10) + s),
                None => Instant::MAX,
            },
        }
    }

    /// A concrete timeout, as [`plan_deadline`](Self::plan_deadline).
    fn plan_timeout(&mut self, timer: TimerKind, pdl: u64, dur: Dur) -> Duration {
        match (timer, dur) {
            (TimerKind::Clock, Dur::Parent) if pdl != u64::MAX => Duration::from_nanos(pdl.saturating_sub(self.now)),
            (TimerKind::Std, _) | (_, Dur::Max | Dur::Parent) => Duration::MAX,
            (TimerKind::Clock, Dur::Zero) => Duration::ZERO,
            (TimerKind::Clock, Dur::In(x)) => match self.seq_ns() {
                Some(s) => Duration::from_nanos((((x as u64) + 1) << 10) + s),
                None => Duration::MAX,
            },
        }
    }

    /// Turns a raw op into a concrete action, or `None` to skip it.
    pub fn plan(&mut self, op: &Op) -> Option<Action> {
        let nc = self.ctxs.len();
        Some(match *op {
            Op::NewRoot { clock } => Action::NewRoot { clock },
            Op::WithCancel { ctx } => Action::WithCancel { ctx: pick(ctx, nc)? },
            Op::WithDeadline { ctx, when, cause } => {
                let ctx = pick(ctx, nc)?;
                let pdl = self.ctxs[ctx].node.map_or(u64::MAX, |n| self.nodes[n].deadline);
                let at = self.plan_deadline(self.timer_of(&self.ctxs[ctx]), pdl, when);
                Action::WithDeadline { ctx, at, cause }
            }
            Op::WithTimeout { ctx, dur, cause } => {
                let ctx = pick(ctx, nc)?;
                let pdl = self.ctxs[ctx].node.map_or(u64::MAX, |n| self.nodes[n].deadline);
                let d = self.plan_timeout(self.timer_of(&self.ctxs[ctx]), pdl, dur);
                Action::WithTimeout { ctx, d, cause }
            }
            Op::WithValue { ctx, key, v } => Action::WithValue {
                ctx: pick(ctx, nc)?,
                key: key % 3,
                v,
            },
            Op::WithoutCancel { ctx } => Action::WithoutCancel { ctx: pick(ctx, nc)? },
            Op::Any { ctxs, n } => {
                let n = n as usize % (ctxs.len() + 1);
                if nc == 0 && n > 0 {
                    return None;
                }
                Action::Any {
                    ctxs: ctxs[..n].iter().map(|&c| c as usize % nc).collect(),
                }
            }
            Op::CloneCtx { ctx } => Action::CloneCtx { ctx: pick(ctx, nc)? },
            Op::DropCtx { ctx } => Action::DropCtx { ctx: pick(ctx, nc)? },
            Op::Cancel { h, cause } => Action::Cancel {
                h: self.live_handle(h)?,
                cause,
            },
            Op::DropHandle { h } => Action::DropHandle {
                h: self.live_handle(h)?,
            },
            Op::Detach { h } => {
                let h = self.live_handle(h)?;
                // Detaching a live context could strand it (and its tree) past
                // teardown; keep the handle aside instead, which no observer
                // can tell apart.
                let really = self.nodes[self.handles[h].node].done.is_some();
                Action::Detach { h, really }
            }
            Op::DoneFut { ctx } => Action::DoneFut { ctx: pick(ctx, nc)? },
            Op::RunFut { ctx, polls } => Action::RunFut {
                ctx: pick(ctx, nc)?,
                polls: polls % 4,
            },
            Op::Poll { f, fresh } => {
                let f = pick(f, self.futs.len())?;
                // A fresh waker only replaces the registered one if the poll
                // reaches the `done` part; a `run` that is finished, or whose
                // inner future completes now, leaves the old one registered.
                let reaches_done = match self.futs[f].kind {
                    MFutKind::Done => true,
                    MFutKind::Run { left, .. } => {
                        !self.futs[f].terminated && (left > 0 || self.done_of(self.futs[f].node).is_some())
                    }
                };
                Action::Poll {
                    f,
                    fresh: fresh && reaches_done,
                }
            }
            Op::DropFut { f } => Action::DropFut {
                f: pick(f, self.futs.len())?,
            },
            Op::BorrowedDone { ctx, h, cause } => Action::BorrowedDone {
                ctx: pick(ctx, nc)?,
                h: self.live_handle(h),
                cause,
            },
            Op::WaitZero { ctx } => Action::WaitZero { ctx: pick(ctx, nc)? },
            Op::AfterFunc { ctx, capture } => Action::AfterFunc {
                ctx: pick(ctx, nc)?,
                capture,
            },
            Op::Stop { a } => {
                let a = pick(a, self.afs.len())?;
                if self.afs[a].dropped {
                    return None;
                }
                Action::Stop { a }
            }
            Op::DropAfter { a } => {
                let a = pick(a, self.afs.len())?;
                let af = &self.afs[a];
                if af.dropped {
                    return None;
                }
                Action::DropAfter { a, really: true }
            }
            Op::Advance { x } => Action::Advance {
                d: Duration::from_nanos((x as u64) << 10),
            },
            Op::Scoped { ctx, levels, n, event } => {
                let ctx = pick(ctx, nc)?;
                let timer = self.timer_of(&self.ctxs[ctx]);
                let mut pdl = self.ctxs[ctx].node.map_or(u64::MAX, |n| self.nodes[n].deadline);
                let mut planned = Vec::new();
                for kind in &levels[..1 + n as usize % levels.len()] {
                    let (level, own) = match *kind {
                        ScopedKind::New => (ScopedLevel::New, u64::MAX),
                        ScopedKind::Deadline(when, c) => {
                            let at = self.plan_deadline(timer, pdl, when);
                            (ScopedLevel::Deadline(at, c), at.as_nanos())
                        }
                        ScopedKind::Timeout(dur) => {
                            let d = self.plan_timeout(timer, pdl, dur);
                            let own = match timer {
                                TimerKind::Clock => Instant::from_nanos(self.now).saturating_add(d).as_nanos(),
                                TimerKind::Std => u64::MAX,
                            };
                            (ScopedLevel::Timeout(d), own)
                        }
                    };
                    pdl = pdl.min(own);
                    planned.push(level);
                }
                let event = match event {
                    ScopedEvent::Nothing => SEvent::Nothing,
                    ScopedEvent::CancelLevel(i, c) => SEvent::CancelLevel(i as usize % planned.len(), c),
                    ScopedEvent::CancelHandle(h, c) => match self.live_handle(h) {
                        Some(h) => SEvent::CancelHandle(h, c),
                        None => SEvent::Nothing,
                    },
                    ScopedEvent::Advance(x) => SEvent::Advance(Duration::from_nanos((x as u64) << 10)),
                };
                Action::Scoped {
                    ctx,
                    levels: planned,
                    event,
                }
            }
            Op::SetClock { x, back } => {
                let d = (x as u64) << 10;
                let t = if back { self.now.saturating_sub(d) } else { self.now + d };
                Action::SetClock {
                    t: Instant::from_nanos(t),
                }
            }
        })
    }
}

impl Default for Model {
    fn default() -> Self {
        Model::new()
    }
}

impl Model {
    fn push_node(&mut self, node: MNode) -> usize {
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    fn new_root(&mut self) -> usize {
        self.push_node(MNode {
            timer: TimerKind::Clock,
            deadline: u64::MAX,
            owns: false,
            dcause: None,
            parents: Vec::new(),
            children: Vec::new(),
            root: true,
            any: false,
            done: None,
        })
    }

    /// `with_cancel` / `with_deadline*` / `with_timeout*` on `ctx`, with own
    /// deadline `own` (`u64::MAX`: none).
    fn child(&mut self, ctx: usize, own: u64, dcause: Option<CauseSpec>) {
        let n = self.child_node(self.ctxs[ctx].node, own, dcause);
        let vals = self.ctxs[ctx].vals.clone();
        self.ctxs.push(MCtx { node: Some(n), vals });
        self.handles.push(MHandle {
            node: n,
            state: HState::Live,
        });
    }

    /// A new child node of `parent` (heap or scoped: the same rules).
    fn child_node(&mut self, parent: Option<usize>, own: u64, dcause: Option<CauseSpec>) -> usize {
        let (pdl, timer) = match parent {
            Some(p) => (self.nodes[p].deadline, self.nodes[p].timer),
            None => (u64::MAX, TimerKind::Std),
        };
        let owns = own < pdl;
        let n = self.push_node(MNode {
            timer,
            deadline: if owns { own } else { pdl },
            owns,
            dcause: if owns { dcause } else { None },
            parents: parent.into_iter().collect(),
            children: Vec::new(),
            root: false,
            any: false,
            done: None,
        });
        if let Some(p) = parent {
            self.nodes[p].children.push(n);
            // Born done: inherits the parent's error and cause.
            self.nodes[n].done = self.nodes[p].done;
        }
        if self.nodes[n].done.is_none() && owns {
            let passed = match timer {
                TimerKind::Clock => self.now >= own,
                // Only `ZERO` and `MAX` are used on the std timer.
                TimerKind::Std => own == 0,
            };
            if passed {
                self.cancel(n, Error::DeadlineExceeded, self.nodes[n].dcause);
            }
        }
        n
    }

    fn snap_model(&self, nodes: &[usize]) -> Vec<Snap> {
        nodes
            .iter()
            .map(|&n| {
                let node = &self.nodes[n];
                Snap {
                    done: node.done.is_some(),
                    scoped_done: node.done.is_some(),
                    err: node.done.map(|d| d.0),
                    cause: node.done.map(|(e, s)| expected_key(e, s)),
                    deadline: (node.deadline != u64::MAX).then(|| Instant::from_nanos(node.deadline)),
                }
            })
            .collect()
    }

    /// The error and cause a node takes from the done parent that cancels it:
    /// the first done parent, in order.
    fn inherit(&self, n: usize) -> (Error, Option<CauseSpec>) {
        self.nodes[n]
            .parents
            .iter()
            .find_map(|&p| self.nodes[p].done)
            .expect("cancelled through a done parent")
    }

    /// Cancels `n` and, iteratively, every descendant that is not done yet.
    fn cancel(&mut self, n: usize, err: Error, cause: Option<CauseSpec>) {
        if self.nodes[n].done.is_some() {
            return;
        }
        self.nodes[n].done = Some((err, cause));
        let mut stack = self.nodes[n].children.clone();
        while let Some(c) = stack.pop() {
            if self.nodes[c].done.is_some() {
                continue;
            }
            self.nodes[c].done = Some(self.inherit(c));
            stack.extend_from_slice(&self.nodes[c].children);
        }
    }

    /// Moves the clock to `t` (never back) and fires every own deadline that
    /// is due, earliest first (they are all distinct).
    fn set_time(&mut self, t: u64) {
        self.now = self.now.max(t);
        loop {
            let due = (0..self.nodes.len())
                .filter(|&i| {
                    let n = &self.nodes[i];
                    n.done.is_none() && n.owns && n.timer == TimerKind::Clock && n.deadline <= self.now
                })
                .min_by_key(|&i| self.nodes[i].deadline);
            match due {
                Some(i) => self.cancel(i, Error::DeadlineExceeded, self.nodes[i].dcause),
                None => return,
            }
        }
    }

    fn done_of(&self, node: Option<usize>) -> Option<(Error, Option<CauseSpec>)> {
        node.and_then(|n| self.nodes[n].done)
    }

    /// What polling a `done` future on `node` gives; registers if pending.
    fn poll_done(&self, node: Option<usize>) -> (Poll<Error>, bool) {
        match node {
            None => (Poll::Pending, false),
            Some(n) => match self.nodes[n].done {
                Some((e, _)) => (Poll::Ready(e), false),
                None => (Poll::Pending, true),
            },
        }
    }

    /// Applies `a` to the model and panics if `out` is not what the real
    /// objects should have reported.
    pub fn apply(&mut self, a: &Action, out: &Outcome) {
        let expected = match *a {
            Action::NewRoot { clock } => {
                let node = clock.then(|| self.new_root());
                self.ctxs.push(MCtx { node, vals: Vec::new() });
                Outcome::None
            }
            Action::WithCancel { ctx } => {
                self.child(ctx, u64::MAX, None);
                Outcome::None
            }
            Action::WithDeadline { ctx, at, cause } => {
                self.child(ctx, at.as_nanos(), cause);
                Outcome::None
            }
            Action::WithTimeout { ctx, d, cause } => {
                let own = match self.timer_of(&self.ctxs[ctx]) {
                    TimerKind::Clock => Instant::from_nanos(self.now).saturating_add(d).as_nanos(),
                    TimerKind::Std => {
                        assert_eq!(d, Duration::MAX, "planned: only MAX on the std timer");
                        u64::MAX
                    }
                };
                self.child(ctx, own, cause);
                Outcome::None
            }
            Action::WithValue { ctx, key, v } => {
                let mut c = self.ctxs[ctx].clone();
                c.vals.push((key, v));
                self.ctxs.push(c);
                Outcome::None
            }
            Action::WithoutCancel { ctx } => {
                let node = match self.timer_of(&self.ctxs[ctx]) {
                    TimerKind::Clock => Some(self.new_root()),
                    TimerKind::Std => None,
                };
                let vals = self.ctxs[ctx].vals.clone();
                self.ctxs.push(MCtx { node, vals });
                Outcome::None
            }
            Action::Any { ref ctxs } => {
                let vals = ctxs.first().map(|&c| self.ctxs[c].vals.clone()).unwrap_or_default();
                let mut parents: Vec<usize> = Vec::new();
                for &c in ctxs {
                    if let Some(n) = self.ctxs[c].node {
                        if !parents.contains(&n) {
                            parents.push(n);
                        }
                    }
                }
                let node = if parents.is_empty() {
                    None
                } else {
                    // The first parent with the earliest deadline gives the
                    // deadline (and then the timer).
                    let mut dlp = parents[0];
                    for &p in &parents {
                        if self.nodes[p].deadline < self.nodes[dlp].deadline {
                            dlp = p;
                        }
                    }
                    let deadline = self.nodes[dlp].deadline;
                    let timer = if deadline != u64::MAX {
                        self.nodes[dlp].timer
                    } else {
                        self.nodes[parents[0]].timer
                    };
                    let n = self.push_node(MNode {
                        timer,
                        deadline,
                        owns: false,
                        dcause: None,
                        parents: parents.clone(),
                        children: Vec::new(),
                        root: false,
                        any: true,
                        done: None,
                    });
                    for &p in &parents {
                        self.nodes[p].children.push(n);
                    }
                    if parents.iter().any(|&p| self.nodes[p].done.is_some()) {
                        self.nodes[n].done = Some(self.inherit(n));
                    }
                    Some(n)
                };
                self.ctxs.push(MCtx { node, vals });
                Outcome::None
            }
            Action::CloneCtx { ctx } => {
                let c = self.ctxs[ctx].clone();
                self.ctxs.push(c);
                Outcome::None
            }
            Action::DropCtx { ctx } => {
                self.ctxs.swap_remove(ctx);
                Outcome::None
            }
            Action::Cancel { h, cause } => {
                self.cancel(self.handles[h].node, Error::Canceled, cause);
                Outcome::None
            }
            Action::DropHandle { h } => {
                self.handles[h].state = HState::Dropped;
                self.cancel(self.handles[h].node, Error::Canceled, None);
                Outcome::None
            }
            Action::Detach { h, .. } => {
                self.handles[h].state = HState::Detached;
                Outcome::None
            }
            Action::DoneFut { ctx } => {
                self.futs.push(MFut {
                    node: self.ctxs[ctx].node,
                    kind: MFutKind::Done,
                    terminated: false,
                    registered: false,
                    wakes: 0,
                });
                Outcome::None
            }
            Action::RunFut { ctx, polls } => {
                self.futs.push(MFut {
                    node: self.ctxs[ctx].node,
                    kind: MFutKind::Run {
                        left: polls,
                        inner_alive: true,
                    },
                    terminated: false,
                    registered: false,
                    wakes: 0,
                });
                Outcome::None
            }
            Action::Poll { f, fresh } => {
                let done = self.done_of(self.futs[f].node);
                let (pd, reg) = self.poll_done(self.futs[f].node);
                let fut = &mut self.futs[f];
                if fresh {
                    // The old waker is replaced (and dropped unwoken) by this
                    // poll, or was already taken by the cancel.
                    fut.wakes = 0;
                    fut.registered = false;
                }
                match &mut fut.kind {
                    MFutKind::Done => {
                        if pd.is_ready() {
                            fut.terminated = true;
                        }
                        fut.registered |= reg;
                        Outcome::Done(pd)
                    }
                    MFutKind::Run { left, inner_alive } => {
                        if fut.terminated {
                            Outcome::Run(Poll::Pending)
                        } else if let Some((e, _)) = done {
                            fut.terminated = true;
                            *inner_alive = false;
                            Outcome::Run(Poll::Ready(Err(e)))
                        } else if *left == 0 {
                            fut.terminated = true;
                            *inner_alive = false;
                            Outcome::Run(Poll::Ready(Ok(7)))
                        } else {
                            *left -= 1;
                            fut.registered |= reg;
                            Outcome::Run(Poll::Pending)
                        }
                    }
                }
            }
            Action::DropFut { f } => {
                self.futs.swap_remove(f);
                Outcome::None
            }
            Action::BorrowedDone { ctx, h, cause } => {
                let node = self.ctxs[ctx].node;
                let (first, reg) = self.poll_done(node);
                if let Some(h) = h {
                    self.cancel(self.handles[h].node, Error::Canceled, cause);
                }
                let wakes = usize::from(reg && self.done_of(node).is_some());
                let (second, _) = self.poll_done(node);
                Outcome::Borrowed(first, wakes, second)
            }
            Action::WaitZero { ctx } => Outcome::Wait(self.done_of(self.ctxs[ctx].node).map(|d| d.0)),
            Action::AfterFunc { ctx, capture } => {
                let node = self.ctxs[ctx].node;
                let (state, seen) = match node {
                    // Nothing can ever cancel it: the callback is dropped
                    // unrun at once (not kept, so it cannot leak).
                    None => (AfState::Never { stopped: false }, 0),
                    Some(n) if !self.can_be_done(n) => (AfState::Never { stopped: false }, 0),
                    Some(n) => match self.nodes[n].done {
                        Some((e, _)) => (AfState::Ran, if capture { err_code(Some(e)) } else { 0 }),
                        None => (AfState::Pending, 0),
                    },
                };
                self.afs.push(MAf {
                    node,
                    state,
                    capture,
                    seen,
                    dropped: false,
                    held: true,
                });
                Outcome::None
            }
            Action::Stop { a } => {
                let af = &mut self.afs[a];
                let r = match af.state {
                    AfState::Pending => {
                        af.state = AfState::Stopped;
                        true
                    }
                    AfState::Ran | AfState::Stopped => false,
                    AfState::Never { stopped } => {
                        af.state = AfState::Never { stopped: true };
                        !stopped
                    }
                };
                Outcome::Stop(r)
            }
            Action::DropAfter { a, really } => {
                self.afs[a].dropped = true;
                self.afs[a].held = !really;
                Outcome::None
            }
            Action::Advance { d } => {
                let t = Instant::from_nanos(self.now).saturating_add(d).as_nanos();
                self.set_time(t);
                Outcome::None
            }
            Action::SetClock { t } => {
                self.set_time(t.as_nanos());
                Outcome::None
            }
            Action::Scoped { ctx, ref levels, event } => {
                let mut chain: Vec<usize> = Vec::new();
                let mut parent = self.ctxs[ctx].node;
                let timer = self.timer_of(&self.ctxs[ctx]);
                for level in levels {
                    let (own, dcause) = match *level {
                        ScopedLevel::New => (u64::MAX, None),
                        ScopedLevel::Deadline(at, c) => (at.as_nanos(), c),
                        ScopedLevel::Timeout(d) => match timer {
                            TimerKind::Clock => (Instant::from_nanos(self.now).saturating_add(d).as_nanos(), None),
                            TimerKind::Std => {
                                assert_eq!(d, Duration::MAX, "planned: only MAX on the std timer");
                                (u64::MAX, None)
                            }
                        },
                    };
                    let n = self.child_node(parent, own, dcause);
                    chain.push(n);
                    parent = Some(n);
                }
                let before = self.snap_model(&chain);
                let deepest = *chain.last().expect("at least one level");
                let (first, reg) = self.poll_done(Some(deepest));
                match event {
                    SEvent::Nothing => {}
                    SEvent::CancelLevel(i, c) => self.cancel(chain[i], Error::Canceled, c),
                    SEvent::CancelHandle(h, c) => self.cancel(self.handles[h].node, Error::Canceled, c),
                    SEvent::Advance(d) => {
                        let t = Instant::from_nanos(self.now).saturating_add(d).as_nanos();
                        self.set_time(t);
                    }
                }
                let wakes = usize::from(reg && self.nodes[deepest].done.is_some());
                let after = self.snap_model(&chain);
                let (second, _) = self.poll_done(Some(deepest));
                // The scopes end, deepest first: each cancels its node.
                for &n in chain.iter().rev() {
                    self.cancel(n, Error::Canceled, None);
                }
                Outcome::Scoped {
                    before,
                    first,
                    wakes,
                    after,
                    second,
                }
            }
        };
        assert_eq!(*out, expected, "outcome of {a:?}");
        self.settle();
    }

    /// Every after-func of a done node has run; every waker registered on a
    /// done node has been woken (once).
    fn settle(&mut self) {
        for i in 0..self.afs.len() {
            if self.afs[i].state == AfState::Pending {
                if let Some((e, _)) = self.done_of(self.afs[i].node) {
                    let af = &mut self.afs[i];
                    af.state = AfState::Ran;
                    af.seen = if af.capture { err_code(Some(e)) } else { 0 };
                }
            }
        }
        for i in 0..self.futs.len() {
            if self.futs[i].registered && self.done_of(self.futs[i].node).is_some() {
                self.futs[i].registered = false;
                self.futs[i].wakes += 1;
            }
        }
    }
}

/// Compares every observable of `real` with `m`; panics on a difference.
pub fn check(real: &Real, m: &Model) {
    assert_eq!(CLOCK.now().as_nanos(), m.now, "clock");
    assert_eq!(real.ctxs.len(), m.ctxs.len());
    for (i, (c, mc)) in real.ctxs.iter().zip(&m.ctxs).enumerate() {
        let exp = m.done_of(mc.node);
        assert_eq!(c.is_done(), exp.is_some(), "is_done of ctx {i} ({mc:?})");
        assert_eq!(c.err(), exp.map(|d| d.0), "err of ctx {i} ({mc:?})");
        match (c.cause(), exp) {
            (None, None) => {}
            (Some(cause), Some((e, spec))) => {
                assert!(
                    cause_matches(&cause, e, spec),
                    "cause of ctx {i}: {cause:?}, expected {e:?}/{spec:?}"
                )
            }
            (got, _) => panic!("cause of ctx {i}: {got:?}, expected {exp:?}"),
        }
        let dl = mc.node.map_or(u64::MAX, |n| m.nodes[n].deadline);
        assert_eq!(
            c.deadline(),
            (dl != u64::MAX).then(|| Instant::from_nanos(dl)),
            "deadline of ctx {i}"
        );
        let val = |k: u8| mc.vals.iter().rev().find(|(key, _)| *key == k).map(|(_, v)| *v);
        assert_eq!(c.value(&K_A).copied(), val(0), "value a of ctx {i}");
        assert_eq!(c.value(&K_B).copied(), val(1), "value b of ctx {i}");
        assert_eq!(c.value(&K_T).map(|t| t.0), val(2), "value t of ctx {i}");
    }
    for (i, (h, mh)) in real.handles.iter().zip(&m.handles).enumerate() {
        match mh.state {
            HState::Live => {
                let h = h.as_ref().expect("live handle");
                assert_eq!(h.is_done(), m.nodes[mh.node].done.is_some(), "handle {i}");
            }
            HState::Dropped => assert!(h.is_none()),
            HState::Detached => {}
        }
    }
    assert_eq!(real.futs.len(), m.futs.len());
    for (i, ((f, counter), mf)) in real.futs.iter().zip(&m.futs).enumerate() {
        assert_eq!(counter.count(), mf.wakes, "wakes of future {i} ({mf:?})");
        match (f, &mf.kind) {
            (RealFut::Done(d), MFutKind::Done) => assert_eq!(d.is_terminated(), mf.terminated),
            (RealFut::Run(r, alive), MFutKind::Run { inner_alive, .. }) => {
                assert_eq!(r.is_terminated(), mf.terminated, "run {i} terminated");
                assert_eq!(
                    alive.load(Ordering::SeqCst),
                    *inner_alive,
                    "run {i}: inner future dropped?"
                );
            }
            _ => unreachable!("kinds stay aligned"),
        }
    }
    for (counter, n) in &real.retired {
        assert_eq!(counter.count(), *n, "a replaced or dropped future's waker was woken");
    }
    assert_eq!(real.afs.len(), m.afs.len());
    for (i, (a, ma)) in real.afs.iter().zip(&m.afs).enumerate() {
        let runs = a.runs.load(Ordering::SeqCst);
        assert_eq!(
            runs,
            usize::from(ma.state == AfState::Ran),
            "runs of after-func {i} ({ma:?})"
        );
        assert_eq!(a.seen.load(Ordering::SeqCst), ma.seen, "err seen by after-func {i}");
        assert_eq!(a.handle.is_some(), ma.held);
    }
}

/// Things every input needs once per process before allocations can be
/// counted: lazily initialised state that is never freed.
fn warm_up() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The manual clock's map keeps its (empty) root node once used.
        let root = Context::with_timer(&CLOCK);
        let (_c, _h) = root.with_timeout(Duration::from_secs(1));
        assert_eq!(CLOCK.armed(), 1);
        drop((_c, _h));
        // The blocking wait's thread handle; the std timer's clock.
        let (c, _h) = Context::background().with_cancel();
        assert_eq!(c.wait_blocking_timeout(Duration::ZERO), None);
        let _ = Instant::now();
    });
}

/// Runs `prog`, executing each real action through `exec` (which may move it
/// to another thread), checking after every step. Panics on any mismatch.
pub fn run_program(prog: &Program, exec: &mut dyn FnMut(usize, &mut Real, &Action) -> Outcome) {
    warm_up();
    let allocs_before = live_allocs();
    let armed_before = CLOCK.armed();
    assert_eq!(armed_before, 0, "a previous input left a deadline armed");
    {
        let mut real = Real::default();
        let mut m = Model::new();
        let mut step = |i: usize, real: &mut Real, m: &mut Model, a: Action| {
            let out = exec(i, real, &a);
            m.apply(&a, &out);
            check(real, m);
        };
        // Two roots to start from: background and a manual-clock root.
        step(0, &mut real, &mut m, Action::NewRoot { clock: false });
        step(0, &mut real, &mut m, Action::NewRoot { clock: true });
        let mut n = 0u64;
        for (i, op) in prog.ops.iter().enumerate() {
            if let Some(a) = m.plan(op) {
                step(i, &mut real, &mut m, a);
                n += 1;
            }
        }
        // Teardown: drop and stop everything, still checking each step.
        let i = prog.ops.len();
        let drop_futs = |real: &mut Real, m: &mut Model, step: &mut dyn FnMut(usize, &mut Real, &mut Model, Action)| {
            while !m.futs.is_empty() {
                let f = m.futs.len() - 1;
                step(i, real, m, Action::DropFut { f });
            }
        };
        if !prog.handles_first {
            drop_futs(&mut real, &mut m, &mut step);
        }
        for h in 0..m.handles.len() {
            if m.handles[h].state != HState::Dropped && real.handles[h].is_some() {
                step(i, &mut real, &mut m, Action::DropHandle { h });
            }
        }
        if prog.handles_first {
            drop_futs(&mut real, &mut m, &mut step);
        }
        for a in 0..m.afs.len() {
            if m.afs[a].held {
                step(i, &mut real, &mut m, Action::Stop { a });
                step(i, &mut real, &mut m, Action::DropAfter { a, really: true });
            }
        }
        while !m.ctxs.is_empty() {
            let ctx = m.ctxs.len() - 1;
            step(i, &mut real, &mut m, Action::DropCtx { ctx });
        }
        for (k, af) in m.afs.iter().enumerate() {
            assert!(
                af.state != AfState::Pending,
                "after-func {k} neither ran nor was stopped"
            );
        }
        OPS.fetch_add(n, Ordering::Relaxed);
    }
    assert_eq!(CLOCK.armed(), 0, "deadline entries left armed");
    assert_eq!(TRACKED_LIVE.load(Ordering::Relaxed), 0, "stored values not dropped");
    assert_eq!(live_allocs(), allocs_before, "allocations leaked by the input");
    INPUTS.fetch_add(1, Ordering::Relaxed);
}

/// Prints the operation count when the process exits (libFuzzer ends with
/// `exit`, so `atexit` is the one hook that runs).
pub fn report_at_exit() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        extern "C" fn report() {
            eprintln!(
                "ctxcore-fuzz: {} operations over {} inputs checked against the model, 0 mismatches",
                OPS.load(Ordering::Relaxed),
                INPUTS.load(Ordering::Relaxed)
            );
        }
        extern "C" {
            fn atexit(cb: extern "C" fn()) -> core::ffi::c_int;
        }
        // SAFETY: registers a plain function with no captured state.
        unsafe {
            atexit(report);
        }
    });
}
