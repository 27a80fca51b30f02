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
//!    reports what it saw ([`Exec`]: an [`Outcome`] and the panics caught at
//!    its call sites) — on the calling thread, or on another thread in
//!    `ops_threads`;
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
//!
//! # The adversary
//!
//! Besides the plain API, programs do what safe code may legally do and what
//! the core's invariants must survive (issue 10):
//!
//! - **forget** every guard, future and scoped owner: a `CancelHandle`
//!   (its context then lives until an ancestor is cancelled), an
//!   `AfterFunc`, a polled `DoneOwned`/`Run` (these three are kept aside
//!   unused, exactly what `mem::forget` does to the library, and freed after
//!   the input's last check so the leak check stays exact), and, for good,
//!   a polled borrowed `Done` and a pinned, attached `ScopedContext` (with
//!   polled waiters on it; also a scoped child of a scoped chain's deepest
//!   level, whose stack parent then ends);
//! - **panicking user code**: wakers that panic in `wake`, in `drop` or in
//!   `clone`; after-funcs that panic; causes (`cancel_with`, deadline
//!   causes) and values whose `Drop` panics. A panic must come out of the
//!   call that ran the user code (the first one, after the cancellation is
//!   finished) and leave the tree exactly as the model says;
//! - **re-entrant user code**: wakers and after-funcs that cancel or drop a
//!   handle, drop a context moved into them, or create, cancel and drop a
//!   small subtree of the same tree; a task whose waker drops the task that
//!   owns a pinned `ScopedContext` with 1 to 40 waiters on it;
//! - **more than one wake batch**: 17 to 40 waiters registered on one
//!   context at once (the wake batch holds 16).
//!
//! Every panic the harness raises on purpose carries a [`Boom`] payload;
//! the panic hook stays silent for those and aborts (a crash) on any other.

use arbitrary::Arbitrary;
use core::future::Future;
use core::pin::Pin;
use core::task::{Context as TaskContext, Poll, RawWaker, RawWakerVTable, Waker};
use core::time::Duration;
use ctxcore::{
    AfterFunc, AfterFuncs, CancelHandle, Cause, Clock, Context, ContextRef, DoneOwned, Error, Instant, Key,
    ManualClock, Run, ScopedContext,
};
use futures_core::FusedFuture;
use std::alloc::{GlobalAlloc, Layout, System};
use std::panic::{catch_unwind, panic_any, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Once, PoisonError};
use std::task::Wake;

/// The clock of every deadline in the fuzz targets.
pub static CLOCK: ManualClock = ManualClock::new();

/// Operations executed and checked against the model, over the whole process.
pub static OPS: AtomicU64 = AtomicU64::new(0);
/// Inputs run to completion.
pub static INPUTS: AtomicU64 = AtomicU64::new(0);
/// Adversarial operations (forgets, panicking or re-entrant callbacks,
/// multi-batch wake-ups, tasks) among [`OPS`].
pub static ADVERSARIAL: AtomicU64 = AtomicU64::new(0);
/// Panics raised on purpose by user code and caught where the model said.
pub static CAUGHT: AtomicU64 = AtomicU64::new(0);

/// Whether a heap node gives back everything it holds when its cause's
/// `Drop` panics while it is freed or made: true since `a6e016c` (found by
/// this harness, `tests/fuzz_regressions.rs`). Set it to `false` to fuzz an
/// older core without tripping over that leak: the model then keeps clear
/// of its two paths, and every other use of a panicking cause is fuzzed:
///
/// - a cause stored for good in a heap node (the winning cause, or a
///   deadline cause kept by a node cancelled from above) is disarmed at the
///   end of the action that stored it, before anything can free the node
///   (nothing frees a heap node in the action that makes it done: its handle
///   still holds it, so re-entrant user code does not drop handles);
/// - a deadline cause that the child would drop while being made (not its
///   own deadline, or a done parent) is a plain one instead.
///
/// Armed, they still panic when a `cancel_with` on a done context drops
/// them at once, when an explicit cancel displaces a pending deadline cause,
/// and when a scoped node holding one ends.
const CAUSE_DROP_IS_PANIC_SAFE: bool = true;

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

/// Addresses of what programs leaked for good (`mem::forget` of a pinned
/// box): kept reachable so LeakSanitizer does not report them, and so that
/// the memory stays valid for whatever the library may still do with it.
static LEAKED: Mutex<Vec<usize>> = Mutex::new(Vec::new());

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `mem::forget` of a pinned box, remembering its address (see [`LEAKED`]).
fn leak<T>(b: Pin<Box<T>>) {
    let addr = &*b as *const T as usize;
    core::mem::forget(b);
    lock(&LEAKED).push(addr);
}

// ---------------------------------------------------------------------------
// Panics on purpose

/// The payload of every panic the harness's user code raises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Boom {
    /// A waker (by its counter's id) panicked in `wake`, `clone` or `drop`.
    Waker(u32),
    /// An after-func (by id) panicked.
    After(u32),
    /// A cause's or a value's `Drop` panicked.
    Drop,
}

/// Panics raised by a cause's `Drop`, over the whole process.
static CAUSE_PANICS: AtomicUsize = AtomicUsize::new(0);
/// Panics raised by a value's `Drop`, over the whole process.
static VALUE_PANICS: AtomicUsize = AtomicUsize::new(0);

fn drop_panics() -> usize {
    CAUSE_PANICS.load(Ordering::SeqCst) + VALUE_PANICS.load(Ordering::SeqCst)
}

/// Panics with `b`, unless the thread is already unwinding (which would
/// abort): user code that panics in a destructor during unwinding is the
/// user's abort, not the library's.
fn boom(b: Boom) {
    if !std::thread::panicking() {
        panic_any(b);
    }
}

/// Runs `f`, recording a caught [`Boom`] in `caught`.
fn guard<R>(caught: &mut Vec<Boom>, f: impl FnOnce() -> R) -> Option<R> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => Some(r),
        Err(p) => {
            caught.push(boom_of(p));
            None
        }
    }
}

fn boom_of(p: Box<dyn core::any::Any + Send>) -> Boom {
    match p.downcast::<Boom>() {
        Ok(b) => *b,
        // Anything else is a real failure: let it through.
        Err(p) => resume_unwind(p),
    }
}

/// Panics of after-funcs handed to the spawner, not yet reported.
static HANDED_OFF_BOOMS: Mutex<Vec<Boom>> = Mutex::new(Vec::new());

/// The after-func spawner (`set_after_func_spawner`): the after-funcs of a
/// deadline that a read noticed before its timer fired (a callback reading
/// a context while the manual clock fires another deadline, or while the
/// clock has moved past one) run at once, on the reading thread, as the
/// model has them (by default they would run later on a thread of their
/// own). Their first panic stays here (it does not unwind into the read)
/// and is reported with the action's.
fn run_handed_off(funcs: AfterFuncs) {
    if let Err(p) = catch_unwind(AssertUnwindSafe(|| funcs.run())) {
        let b = boom_of(p);
        lock(&HANDED_OFF_BOOMS).push(b);
    }
}

/// Installs the panic hook: silent for [`Boom`] payloads (they are caught and
/// checked), the previous hook (libFuzzer's: print and abort) otherwise.
fn install_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.payload().is::<Boom>() {
                return;
            }
            prev(info)
        }));
    });
}

// ---------------------------------------------------------------------------
// Values, causes

/// Two keys of the same type (must never collide), one of a drop-counted
/// type (every stored value must be dropped by the end of the input) and one
/// whose value panics when dropped.
pub static K_A: Key<u16> = Key::new("a");
/// See [`K_A`].
pub static K_B: Key<u16> = Key::new("b");
/// See [`K_A`].
pub static K_T: Key<Tracked> = Key::new("tracked");
/// See [`K_A`].
pub static K_P: Key<PanicValue> = Key::new("panics");

static TRACKED_LIVE: AtomicIsize = AtomicIsize::new(0);
static PANIC_VALUES_LIVE: AtomicIsize = AtomicIsize::new(0);
static PANIC_CAUSES_LIVE: AtomicIsize = AtomicIsize::new(0);

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

/// A value whose `Drop` panics (once dropped, it is counted as gone).
#[derive(Debug)]
pub struct PanicValue(pub u16);

impl PanicValue {
    fn new(v: u16) -> Self {
        PANIC_VALUES_LIVE.fetch_add(1, Ordering::SeqCst);
        PanicValue(v)
    }
}

impl Drop for PanicValue {
    fn drop(&mut self) {
        PANIC_VALUES_LIVE.fetch_sub(1, Ordering::SeqCst);
        if !std::thread::panicking() {
            VALUE_PANICS.fetch_add(1, Ordering::SeqCst);
            panic_any(Boom::Drop);
        }
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

/// A cause whose `Drop` panics (unless disarmed: see
/// [`CAUSE_DROP_IS_PANIC_SAFE`]). The second field is its birth stamp.
#[derive(Debug)]
pub struct PanicCause(pub u8, u64);

/// Birth stamps of panicking causes.
static PANIC_STAMP: AtomicU64 = AtomicU64::new(1);
/// Per cause number: causes born before this stamp are disarmed.
static DISARMED_BEFORE: [AtomicU64; 256] = [const { AtomicU64::new(0) }; 256];

impl PanicCause {
    fn new(n: u8) -> Self {
        PANIC_CAUSES_LIVE.fetch_add(1, Ordering::SeqCst);
        PanicCause(n, PANIC_STAMP.fetch_add(1, Ordering::SeqCst))
    }

    /// Disarms every live panicking cause numbered `n`.
    fn disarm(n: u8) {
        let now = PANIC_STAMP.fetch_add(1, Ordering::SeqCst);
        DISARMED_BEFORE[n as usize].store(now, Ordering::SeqCst);
    }
}

impl core::fmt::Display for PanicCause {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "panic cause {}", self.0)
    }
}

impl std::error::Error for PanicCause {}

impl Drop for PanicCause {
    fn drop(&mut self) {
        PANIC_CAUSES_LIVE.fetch_sub(1, Ordering::SeqCst);
        let armed = self.1 >= DISARMED_BEFORE[self.0 as usize].load(Ordering::SeqCst);
        if armed && !std::thread::panicking() {
            CAUSE_PANICS.fetch_add(1, Ordering::SeqCst);
            panic_any(Boom::Drop);
        }
    }
}

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
    /// A [`PanicCause`]: its `Drop` panics.
    Panic(u8),
}

impl CauseSpec {
    fn make(self) -> Cause {
        match self {
            CauseSpec::Str(i) => Cause::from(STRS[i as usize % STRS.len()]),
            CauseSpec::Err(false) => Cause::from(Error::Canceled),
            CauseSpec::Err(true) => Cause::from(Error::DeadlineExceeded),
            CauseSpec::Custom(n) => Cause::from(Custom(n)),
            CauseSpec::Text(n) => Cause::from(format!("text {n}")),
            CauseSpec::Panic(n) => Cause::from(PanicCause::new(n)),
        }
    }
}

/// A deadline cause that a heap child would drop while being made (the
/// deadline is not its own, or, before `a6e016c`, it is born done under a
/// done parent) must not panic there while that path leaks (see
/// [`CAUSE_DROP_IS_PANIC_SAFE`]): such a cause is then replaced by a plain
/// one. Since the fix, a heap child not owning its deadline drops the cause
/// (which panics out of `with_deadline_cause`, and no child is made) and a
/// child born done keeps it.
fn creation_cause(c: Option<CauseSpec>, owned: bool, parent_done: bool) -> Option<CauseSpec> {
    match c {
        Some(CauseSpec::Panic(n)) if !CAUSE_DROP_IS_PANIC_SAFE && (!owned || parent_done) => Some(CauseSpec::Custom(n)),
        c => c,
    }
}

/// The same for a scoped level: its construction (not its own deadline) or
/// attachment (a done parent) would drop the cause in the middle of a chain
/// the model builds in one step, so such a cause is always a plain one.
fn scoped_cause(c: Option<CauseSpec>, owned: bool, parent_done: bool) -> Option<CauseSpec> {
    match c {
        Some(CauseSpec::Panic(n)) if !owned || parent_done => Some(CauseSpec::Custom(n)),
        c => c,
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
        Some(CauseSpec::Panic(n)) => c.downcast_ref::<PanicCause>().map(|p| p.0) == Some(n),
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
    /// A [`PanicCause`].
    Panic(u8),
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
    } else if let Some(x) = c.downcast_ref::<PanicCause>() {
        CauseKey::Panic(x.0)
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
        Some(CauseSpec::Panic(n)) => CauseKey::Panic(n),
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

// ---------------------------------------------------------------------------
// Handles in shared slots, re-entrant user code

/// A handle, where both the program and re-entrant user code can reach it.
/// Whoever uses it takes it out for the call (never holding the mutex while
/// calling into the library) and puts it back; a re-entrant drop of a handle
/// that is out marks the slot, and the handle is dropped when it comes back.
#[derive(Default)]
pub struct HandleSlot {
    h: Mutex<Option<CancelHandle>>,
    dropped: AtomicBool,
    /// A handle "detached" by keeping it aside unused (see
    /// [`Action::Detach`]): out of reach of re-entrant user code, as a
    /// detached one would be; teardown drops it.
    aside: Mutex<Option<CancelHandle>>,
}

impl HandleSlot {
    fn new(h: CancelHandle) -> Arc<Self> {
        Arc::new(HandleSlot {
            h: Mutex::new(Some(h)),
            dropped: AtomicBool::new(false),
            aside: Mutex::new(None),
        })
    }

    fn take(&self) -> Option<CancelHandle> {
        lock(&self.h).take()
    }

    fn put_back(&self, h: CancelHandle) -> std::thread::Result<()> {
        if self.dropped.load(Ordering::SeqCst) {
            catch_unwind(AssertUnwindSafe(|| drop(h)))
        } else {
            *lock(&self.h) = Some(h);
            Ok(())
        }
    }

    /// Cancels the handle if it is in the slot (a handle that is out is
    /// being cancelled further up this thread's stack, or is gone).
    fn cancel(&self, cause: Option<CauseSpec>) -> std::thread::Result<()> {
        let Some(h) = self.take() else { return Ok(()) };
        let r = catch_unwind(AssertUnwindSafe(|| match cause {
            Some(s) => h.cancel_with(s.make()),
            None => h.cancel(),
        }));
        let back = self.put_back(h);
        r.and(back)
    }

    /// Drops the handle (now, or when it comes back to the slot).
    fn drop_handle(&self) {
        self.dropped.store(true, Ordering::SeqCst);
        let h = self.take();
        drop(h);
    }

    fn put_aside(&self) {
        let h = self.take().expect("live handle");
        *lock(&self.aside) = Some(h);
    }

    fn is_aside(&self) -> bool {
        lock(&self.aside).is_some()
    }

    /// The handle, wherever it is.
    fn take_any(&self) -> Option<CancelHandle> {
        self.take().or_else(|| lock(&self.aside).take())
    }

    fn is_empty(&self) -> bool {
        lock(&self.h).is_none()
    }

    fn is_done(&self) -> bool {
        lock(&self.h).as_ref().expect("live handle").is_done()
    }
}

/// What re-entrant user code does when it runs.
pub enum Reentry {
    None,
    /// Cancel the handle in this slot.
    Cancel(Arc<HandleSlot>),
    /// Drop the handle in this slot.
    DropHandle(Arc<HandleSlot>),
    /// Drop this context (moved in at registration; the last owner of its
    /// node, maybe).
    DropCtx(Mutex<Option<Context>>),
    /// Create a small subtree under this context, cancel and drop it.
    CreateDrop(Context),
}

impl Reentry {
    fn run(&self) {
        match self {
            Reentry::None => {}
            Reentry::Cancel(slot) => {
                if let Err(p) = slot.cancel(None) {
                    resume_unwind(p);
                }
            }
            Reentry::DropHandle(slot) => slot.drop_handle(),
            Reentry::DropCtx(m) => {
                let c = lock(m).take();
                drop(c);
            }
            Reentry::CreateDrop(c) => create_drop(c),
        }
    }
}

/// A nested cancellation from inside user code: children of `c` (heap,
/// value, `any`, a deadline child of the `any`), an after-func and a polled
/// `done_owned` on the deepest, then the first child's handle dropped, which
/// must cancel all of them.
fn create_drop(c: &Context) {
    let (a, ha) = c.with_cancel();
    let v = a.with_value(&K_A, 9);
    let any = Context::any([c, &v]);
    let (b, hb) = any.with_deadline(Instant::MAX);
    let ran = Arc::new(AtomicBool::new(false));
    let r = ran.clone();
    let af = b.after_func(move || r.store(true, Ordering::SeqCst));
    let mut d = Box::pin(b.done_owned());
    let _ = d.as_mut().poll(&mut TaskContext::from_waker(Waker::noop()));
    drop(ha);
    assert!(
        a.is_done() && any.is_done() && b.is_done(),
        "nested cancel left a child live"
    );
    assert!(ran.load(Ordering::SeqCst), "nested cancel did not run the after-func");
    drop((d, af, hb, b, any, v, a));
}

// ---------------------------------------------------------------------------
// Wakers

/// A waker kind, as the fuzzer chooses it.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum WakerSpec {
    Plain,
    /// Panics in `wake`.
    PanicWake,
    /// Panics whenever the library drops a clone of it unwoken.
    PanicDrop,
    /// Its first `clone` panics (only as a future's first waker).
    PanicClone,
    /// Re-enters the library in `wake`.
    Reenter(ReenterSpec),
}

/// Re-entrant user code, as the fuzzer chooses it.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReenterSpec {
    Cancel(u8),
    DropHandle(u8),
    DropCtx(u8),
    CreateDrop(u8),
}

/// An after-func kind, as the fuzzer chooses it.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterSpec {
    Plain,
    Panic,
    Reenter(ReenterSpec),
}

/// Concrete re-entrant user code: handle, context or context index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RAct {
    /// Cancel handle `h` (if still in its slot).
    Cancel(usize),
    /// Drop handle `h` (if still in its slot).
    DropHandle(usize),
    /// Context `c` is moved into the callback (removed from the program's
    /// list with `swap_remove`) and dropped when the callback runs.
    DropCtx(usize),
    /// A clone of context `c` is captured: [`create_drop`] when called.
    CreateDrop(usize),
}

/// A concrete waker kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WKind {
    Plain,
    PanicWake,
    PanicDrop,
    PanicClone,
    Reenter(RAct),
}

/// A concrete waker: its id (in [`Boom::Waker`]) and kind.
#[derive(Debug, Clone, Copy)]
pub struct WSpec {
    pub id: u32,
    pub kind: WKind,
}

/// A concrete after-func kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AKind {
    Plain,
    Panic,
    Reenter(RAct),
}

/// The shared state behind a counting waker.
struct WState {
    id: u32,
    kind: WKind,
    wakes: AtomicUsize,
    clone_armed: AtomicBool,
    /// Set when the program's own handle on it goes: no more panics or
    /// re-entry from then on.
    quiet: AtomicBool,
    re: Reentry,
}

impl WState {
    fn wake_now(&self) {
        self.wakes.fetch_add(1, Ordering::SeqCst);
        if self.quiet.load(Ordering::SeqCst) {
            return;
        }
        if self.kind == WKind::PanicWake {
            boom(Boom::Waker(self.id));
        }
        self.re.run();
    }
}

static VTABLE: RawWakerVTable = RawWakerVTable::new(w_clone, w_wake, w_wake_by_ref, w_drop);

unsafe fn w_clone(p: *const ()) -> RawWaker {
    // SAFETY: `p` came from `Arc::into_raw` of a `WState` (in `Counter::new`
    // or here) and that reference is still held by the caller.
    let s = unsafe { &*(p as *const WState) };
    if s.kind == WKind::PanicClone && !s.quiet.load(Ordering::SeqCst) && s.clone_armed.swap(false, Ordering::SeqCst) {
        boom(Boom::Waker(s.id));
    }
    // SAFETY: as above; the new reference belongs to the new waker.
    unsafe { Arc::increment_strong_count(p as *const WState) };
    RawWaker::new(p, &VTABLE)
}

unsafe fn w_wake(p: *const ()) {
    // SAFETY: the waker's own reference, consumed by `wake` (dropped even
    // if `wake_now` panics).
    let arc = unsafe { Arc::from_raw(p as *const WState) };
    arc.wake_now();
}

unsafe fn w_wake_by_ref(p: *const ()) {
    // SAFETY: the caller's waker holds a reference.
    let s = unsafe { &*(p as *const WState) };
    s.wake_now();
}

unsafe fn w_drop(p: *const ()) {
    // SAFETY: the waker's own reference, given up here.
    let arc = unsafe { Arc::from_raw(p as *const WState) };
    let panics = arc.kind == WKind::PanicDrop && !arc.quiet.load(Ordering::SeqCst);
    let id = arc.id;
    drop(arc);
    if panics {
        boom(Boom::Waker(id));
    }
}

/// A counting waker of some kind and the handle to read its count.
struct Counter {
    st: Arc<WState>,
    waker: Waker,
}

impl Counter {
    fn new(spec: WSpec, re: Reentry) -> Self {
        let st = Arc::new(WState {
            id: spec.id,
            kind: spec.kind,
            wakes: AtomicUsize::new(0),
            clone_armed: AtomicBool::new(spec.kind == WKind::PanicClone),
            quiet: AtomicBool::new(false),
            re,
        });
        let raw = RawWaker::new(Arc::into_raw(st.clone()) as *const (), &VTABLE);
        // SAFETY: the vtable's functions keep `RawWaker`'s contract: `clone`
        // takes a new reference, `wake` and `drop` give one up, `wake_by_ref`
        // none; `WState` is `Send + Sync`.
        let waker = unsafe { Waker::from_raw(raw) };
        Counter { st, waker }
    }

    fn plain(id: u32) -> Self {
        Counter::new(WSpec { id, kind: WKind::Plain }, Reentry::None)
    }

    fn count(&self) -> usize {
        self.st.wakes.load(Ordering::SeqCst)
    }
}

impl Drop for Counter {
    fn drop(&mut self) {
        // Our own waker's drop (next) and anything after never panics.
        self.st.quiet.store(true, Ordering::SeqCst);
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
// Tasks: a pinned scoped context with many waiters, inside a boxed future

type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A task's waker: counts, and may drop the task itself from `wake`.
struct TaskState {
    wakes: AtomicUsize,
    drop_on_wake: bool,
    slot: Mutex<Option<Task>>,
}

impl Wake for TaskState {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.wakes.fetch_add(1, Ordering::SeqCst);
        if self.drop_on_wake {
            // The executor tears the task down from inside `wake`: its pinned
            // `ScopedContext` is dropped while its node is being cancelled.
            let t = lock(&self.slot).take();
            drop(t);
        }
    }
}

/// A task: `ScopedContext` under `parent` (its own deadline at `deadline`),
/// `n` `done()` futures on it, all awaited together.
fn make_task(parent: Context, deadline: Option<Instant>, n: usize) -> Task {
    Box::pin(async move {
        let parent = parent;
        let s = core::pin::pin!(match deadline {
            None => ScopedContext::new(parent.as_ref()),
            Some(at) => ScopedContext::with_deadline(parent.as_ref(), at),
        });
        let c = s.as_ref().context();
        let mut waits: Vec<Pin<Box<ctxcore::Done<'_>>>> = (0..n).map(|_| Box::pin(c.done())).collect();
        core::future::poll_fn(|cx| {
            let mut all = true;
            for w in waits.iter_mut() {
                if w.as_mut().poll(cx).is_pending() {
                    all = false;
                }
            }
            if all {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
    })
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
        waker: WakerSpec,
    },
    RunFut {
        ctx: u8,
        polls: u8,
        waker: WakerSpec,
    },
    /// `fresh`: poll with a new waker of that kind.
    Poll {
        f: u8,
        fresh: Option<WakerSpec>,
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
        kind: AfterSpec,
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
    /// `mem::forget` of a handle.
    ForgetHandle {
        h: u8,
    },
    /// `mem::forget` of an `AfterFunc`.
    ForgetAfter {
        a: u8,
    },
    /// `mem::forget` of a (polled) `done_owned`/`run` future.
    ForgetFut {
        f: u8,
    },
    /// A borrowed `done()` boxed, pinned, polled once and forgotten.
    ForgetBorrowed {
        ctx: u8,
    },
    /// A `ScopedContext` boxed, pinned, attached, `waiters` polled `done()`s
    /// on it forgotten, then the scoped context itself forgotten.
    ForgetScoped {
        ctx: u8,
        kind: ScopedKind,
        waiters: u8,
    },
    /// 17 to 40 `done_owned` futures on one context, each polled once (every
    /// fifth with a waker of kind `waker`).
    Many {
        ctx: u8,
        n: u8,
        waker: WakerSpec,
    },
    /// A task owning a pinned `ScopedContext` with 1 to 40 waiters, polled
    /// once; its waker may drop the task.
    Task {
        ctx: u8,
        n: u8,
        drop_on_wake: bool,
        deadline: Option<When>,
    },
    DropTask {
        t: u8,
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
    /// A scoped child of the deepest level, boxed, attached, a `done()` on
    /// it polled, both forgotten; the chain then ends under it.
    LeakChild(ScopedKind),
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
    LeakChild(ScopedLevel, u32),
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
        w: WSpec,
    },
    RunFut {
        ctx: usize,
        polls: u8,
        w: WSpec,
    },
    Poll {
        f: usize,
        fresh: Option<WSpec>,
    },
    DropFut {
        f: usize,
    },
    BorrowedDone {
        ctx: usize,
        h: Option<usize>,
        cause: Option<CauseSpec>,
        id: u32,
    },
    WaitZero {
        ctx: usize,
    },
    AfterFunc {
        ctx: usize,
        capture: bool,
        id: u32,
        kind: AKind,
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
        id: u32,
    },
    ForgetHandle {
        h: usize,
    },
    ForgetAfter {
        a: usize,
    },
    ForgetFut {
        f: usize,
    },
    ForgetBorrowed {
        ctx: usize,
        id: u32,
    },
    ForgetScoped {
        ctx: usize,
        level: ScopedLevel,
        ids: Vec<u32>,
    },
    Many {
        ctx: usize,
        ws: Vec<WSpec>,
    },
    Task {
        ctx: usize,
        n: usize,
        drop_on_wake: bool,
        deadline: Option<Instant>,
    },
    DropTask {
        t: usize,
    },
}

impl Action {
    fn adversarial(&self) -> bool {
        match self {
            Action::ForgetHandle { .. }
            | Action::ForgetAfter { .. }
            | Action::ForgetFut { .. }
            | Action::ForgetBorrowed { .. }
            | Action::ForgetScoped { .. }
            | Action::Many { .. }
            | Action::Task { .. }
            | Action::DropTask { .. } => true,
            Action::DoneFut { w, .. } | Action::RunFut { w, .. } => w.kind != WKind::Plain,
            Action::Poll { fresh: Some(w), .. } => w.kind != WKind::Plain,
            Action::AfterFunc { kind, .. } => *kind != AKind::Plain,
            Action::Scoped {
                event: SEvent::LeakChild(..),
                ..
            } => true,
            Action::Cancel {
                cause: Some(CauseSpec::Panic(_)),
                ..
            }
            | Action::WithDeadline {
                cause: Some(CauseSpec::Panic(_)),
                ..
            }
            | Action::WithTimeout {
                cause: Some(CauseSpec::Panic(_)),
                ..
            }
            | Action::WithValue { key: 3, .. } => true,
            _ => false,
        }
    }
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
    /// First poll of each new future.
    Polls(Vec<Poll<Error>>),
    /// The task finished at its first poll.
    Task(bool),
    /// An `AfterFunc` came back from registration.
    Registered(bool),
    /// The call that would have given a value panicked.
    Panicked,
}

/// What [`Real::exec`] reports: the outcome and the panics caught at the
/// action's call sites.
#[derive(Debug)]
pub struct Exec {
    pub out: Outcome,
    pub caught: Vec<Boom>,
}

type ScopedChain<'b> = [(ContextRef<'b>, Pin<&'b ScopedContext<'b>>)];
type ScopedBody<'f> = dyn for<'b> FnMut(&ScopedChain<'b>, &mut Vec<Boom>) -> Outcome + 'f;

fn build_scoped(parent: ContextRef<'_>, level: ScopedLevel) -> ScopedContext<'_> {
    match level {
        ScopedLevel::New => ScopedContext::new(parent),
        ScopedLevel::Deadline(at, None) => ScopedContext::with_deadline(parent, at),
        ScopedLevel::Deadline(at, Some(c)) => ScopedContext::with_deadline_cause(parent, at, c.make()),
        ScopedLevel::Timeout(d) => ScopedContext::with_timeout(parent, d),
    }
}

/// Pins one scoped level per stack frame, then runs `body` on the chain; each
/// scope then ends (its `ScopedContext` dropped in place) under a guard.
fn scoped_rec<'a>(
    parent: ContextRef<'a>,
    levels: &[ScopedLevel],
    chain: &ScopedChain<'a>,
    caught: &mut Vec<Boom>,
    body: &mut ScopedBody<'_>,
) -> Outcome {
    let Some((level, rest)) = levels.split_first() else {
        return body(chain, caught);
    };
    let mut slot = core::pin::pin!(Some(build_scoped(parent, *level)));
    let out = {
        let sc = slot.as_ref().as_pin_ref().expect("just built");
        let r = sc.context();
        let mut v: Vec<(ContextRef<'_>, Pin<&ScopedContext<'_>>)> = chain.to_vec();
        v.push((r, sc));
        scoped_rec(r, rest, &v, caught, body)
    };
    // The scope ends: the owner's drop cancels and detaches its node.
    guard(caught, || slot.as_mut().set(None));
    out
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

/// A scoped child of `parent`, attached, `ids.len()` `done()`s on it polled
/// with plain counters (returned) and forgotten, then itself forgotten.
fn leak_scoped(parent: ContextRef<'_>, level: ScopedLevel, ids: &[u32]) -> (Vec<Counter>, Vec<Poll<Error>>) {
    let sc = Box::pin(build_scoped(parent, level));
    let mut counters = Vec::new();
    let mut polls = Vec::new();
    {
        let r = sc.as_ref().context();
        for &id in ids {
            let counter = Counter::plain(id);
            let mut d = Box::pin(r.done());
            polls.push(d.as_mut().poll(&mut TaskContext::from_waker(&counter.waker)));
            leak(d);
            counters.push(counter);
        }
    }
    leak(sc);
    (counters, polls)
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

struct RealTask {
    st: Arc<TaskState>,
}

/// What a program forgot (`mem::forget`): never used or dropped while the
/// program runs, which is all `forget` does to the library; freed after the
/// input's last check so that the allocation check stays exact.
#[allow(dead_code)] // held only to be dropped late
enum Forgotten {
    Handle(CancelHandle),
    After(AfterFunc),
    Fut(RealFut),
}

/// The real `ctxcore` objects of one input. Everything in it is `Send`, so an
/// action can run on any thread.
#[derive(Default)]
pub struct Real {
    ctxs: Vec<Context>,
    handles: Vec<Arc<HandleSlot>>,
    /// `None`: forgotten (kept in `forgotten`, or leaked for good).
    futs: Vec<(Option<RealFut>, Counter)>,
    /// Wakers replaced by a fresh one: (counter, count it must keep).
    retired: Vec<(Counter, usize)>,
    afs: Vec<RealAf>,
    tasks: Vec<RealTask>,
    forgotten: Vec<Forgotten>,
}

impl Real {
    fn reentry(&mut self, r: RAct) -> Reentry {
        match r {
            RAct::Cancel(h) => Reentry::Cancel(self.handles[h].clone()),
            RAct::DropHandle(h) => Reentry::DropHandle(self.handles[h].clone()),
            RAct::DropCtx(c) => Reentry::DropCtx(Mutex::new(Some(self.ctxs.swap_remove(c)))),
            RAct::CreateDrop(c) => Reentry::CreateDrop(self.ctxs[c].clone()),
        }
    }

    fn counter(&mut self, w: WSpec) -> Counter {
        let re = match w.kind {
            WKind::Reenter(r) => self.reentry(r),
            _ => Reentry::None,
        };
        Counter::new(w, re)
    }

    fn push_handle(&mut self, h: CancelHandle) {
        self.handles.push(HandleSlot::new(h));
    }

    /// Performs `a` and reports what it saw.
    pub fn exec(&mut self, a: &Action) -> Exec {
        let mut caught = Vec::new();
        let out = self.exec_inner(a, &mut caught);
        Exec { out, caught }
    }

    fn exec_inner(&mut self, a: &Action, caught: &mut Vec<Boom>) -> Outcome {
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
                self.push_handle(h);
            }
            Action::WithDeadline { ctx, at, cause } => {
                // A panicking cause the child does not keep panics here.
                let parent = &self.ctxs[ctx];
                let made = guard(caught, || match cause {
                    Some(s) => parent.with_deadline_cause(at, s.make()),
                    None => parent.with_deadline(at),
                });
                if let Some((c, h)) = made {
                    self.ctxs.push(c);
                    self.push_handle(h);
                }
            }
            Action::WithTimeout { ctx, d, cause } => {
                let parent = &self.ctxs[ctx];
                let made = guard(caught, || match cause {
                    Some(s) => parent.with_timeout_cause(d, s.make()),
                    None => parent.with_timeout(d),
                });
                if let Some((c, h)) = made {
                    self.ctxs.push(c);
                    self.push_handle(h);
                }
            }
            Action::WithValue { ctx, key, v } => {
                let c = match key % 4 {
                    0 => self.ctxs[ctx].with_value(&K_A, v),
                    1 => self.ctxs[ctx].with_value(&K_B, v),
                    2 => self.ctxs[ctx].with_value(&K_T, Tracked::new(v)),
                    _ => self.ctxs[ctx].with_value(&K_P, PanicValue::new(v)),
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
                let c = self.ctxs.swap_remove(ctx);
                guard(caught, || drop(c));
            }
            Action::Cancel { h, cause } => {
                let slot = self.handles[h].clone();
                assert!(!slot.is_empty(), "live handle");
                if let Err(p) = slot.cancel(cause) {
                    caught.push(boom_of(p));
                }
            }
            Action::DropHandle { h } => {
                let hd = self.handles[h].take_any().expect("live handle");
                guard(caught, || drop(hd));
            }
            Action::Detach { h, really } => {
                if really {
                    // Its context is done: this may be the node's last
                    // owner, and its cause's `Drop` may panic.
                    let hd = self.handles[h].take().expect("live handle");
                    guard(caught, || hd.detach());
                } else {
                    self.handles[h].put_aside();
                }
            }
            Action::DoneFut { ctx, w } => {
                let f = Box::pin(self.ctxs[ctx].done_owned());
                let counter = self.counter(w);
                self.futs.push((Some(RealFut::Done(f)), counter));
            }
            Action::RunFut { ctx, polls, w } => {
                let alive = Arc::new(AtomicBool::new(true));
                let inner = Countdown {
                    left: polls,
                    alive: alive.clone(),
                };
                let f = Box::pin(self.ctxs[ctx].run(inner));
                let counter = self.counter(w);
                self.futs.push((Some(RealFut::Run(f, alive)), counter));
            }
            Action::Poll { f, fresh } => {
                if let Some(w) = fresh {
                    let new = self.counter(w);
                    let old = core::mem::replace(&mut self.futs[f].1, new);
                    let n = old.count();
                    self.retired.push((old, n));
                }
                let (fut, counter) = &mut self.futs[f];
                let fut = fut.as_mut().expect("not forgotten");
                let mut cx = TaskContext::from_waker(&counter.waker);
                let r = guard(caught, || match fut {
                    RealFut::Done(d) => Outcome::Done(d.as_mut().poll(&mut cx)),
                    RealFut::Run(r, _) => Outcome::Run(r.as_mut().poll(&mut cx)),
                });
                return r.unwrap_or(Outcome::Panicked);
            }
            Action::DropFut { f } => {
                let (fut, counter) = self.futs.swap_remove(f);
                guard(caught, || drop(fut.expect("not forgotten")));
                let n = counter.count();
                self.retired.push((counter, n));
            }
            Action::BorrowedDone { ctx, h, cause, id } => {
                let counter = Counter::plain(id);
                let mut cx = TaskContext::from_waker(&counter.waker);
                let c = &self.ctxs[ctx];
                let mut done = core::pin::pin!(c.done());
                let first = done.as_mut().poll(&mut cx);
                if let Some(h) = h {
                    if let Err(p) = self.handles[h].cancel(cause) {
                        caught.push(boom_of(p));
                    }
                }
                let wakes = counter.count();
                let second = done.as_mut().poll(&mut cx);
                return Outcome::Borrowed(first, wakes, second);
            }
            Action::WaitZero { ctx } => {
                return Outcome::Wait(self.ctxs[ctx].wait_blocking_timeout(Duration::ZERO));
            }
            Action::AfterFunc { ctx, capture, id, kind } => {
                let runs = Arc::new(AtomicUsize::new(0));
                let seen = Arc::new(AtomicU8::new(0));
                let captured = capture.then(|| self.ctxs[ctx].clone());
                let (r, s) = (runs.clone(), seen.clone());
                // A context moved in is moved after registration (the
                // callback may run during it, and then finds nothing).
                let (re, moved) = match kind {
                    AKind::Reenter(RAct::DropCtx(c)) => (Arc::new(Reentry::DropCtx(Mutex::new(None))), Some(c)),
                    AKind::Reenter(act) => (Arc::new(self.reentry(act)), None),
                    _ => (Arc::new(Reentry::None), None),
                };
                let panics = kind == AKind::Panic;
                let re2 = re.clone();
                let ctxs = &self.ctxs;
                let handle = guard(caught, || {
                    ctxs[ctx].after_func(move || {
                        r.fetch_add(1, Ordering::SeqCst);
                        if let Some(c) = &captured {
                            // Runs only once the context is done.
                            s.store(err_code(c.err()), Ordering::SeqCst);
                        }
                        if panics {
                            boom(Boom::After(id));
                        }
                        re2.run();
                    })
                });
                if let (Some(c), Reentry::DropCtx(m)) = (moved, &*re) {
                    *lock(m) = Some(self.ctxs.swap_remove(c));
                }
                // Ours may be the last reference (the callback ran and was
                // dropped): what it holds may panic when dropped.
                guard(caught, move || drop(re));
                let registered = handle.is_some();
                self.afs.push(RealAf { handle, runs, seen });
                return Outcome::Registered(registered);
            }
            Action::Stop { a } => {
                let h = self.afs[a].handle.as_ref().expect("held after-func");
                return guard(caught, || Outcome::Stop(h.stop())).unwrap_or(Outcome::Panicked);
            }
            Action::DropAfter { a, really } => {
                if really {
                    let h = self.afs[a].handle.take();
                    guard(caught, || drop(h));
                }
            }
            Action::Advance { d } => {
                guard(caught, || CLOCK.advance(d));
            }
            Action::SetClock { t } => {
                guard(caught, || CLOCK.set(t));
            }
            Action::Scoped {
                ctx,
                ref levels,
                event,
                id,
            } => {
                let handles = &self.handles;
                let parent = self.ctxs[ctx].as_ref();
                let futs = &mut self.futs;
                return scoped_rec(parent, levels, &[], caught, &mut |chain, caught| {
                    let before = snap_real(chain);
                    let counter = Counter::plain(id);
                    let mut cx = TaskContext::from_waker(&counter.waker);
                    let deepest = chain.last().expect("at least one level").0;
                    let mut done = core::pin::pin!(deepest.done());
                    let first = done.as_mut().poll(&mut cx);
                    match event {
                        SEvent::Nothing => {}
                        SEvent::CancelLevel(i, cause) => {
                            let sc = chain[i].1;
                            guard(caught, || match cause {
                                Some(c) => sc.cancel_with(c.make()),
                                None => sc.cancel(),
                            });
                        }
                        SEvent::CancelHandle(h, cause) => {
                            if let Err(p) = handles[h].cancel(cause) {
                                caught.push(boom_of(p));
                            }
                        }
                        SEvent::Advance(d) => {
                            guard(caught, || CLOCK.advance(d));
                        }
                        SEvent::LeakChild(level, lid) => {
                            let (mut counters, _) = leak_scoped(deepest, level, &[lid]);
                            futs.push((None, counters.pop().expect("one")));
                        }
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
            Action::ForgetHandle { h } => {
                let hd = self.handles[h].take().expect("live handle");
                self.forgotten.push(Forgotten::Handle(hd));
            }
            Action::ForgetAfter { a } => {
                let h = self.afs[a].handle.take().expect("held after-func");
                self.forgotten.push(Forgotten::After(h));
            }
            Action::ForgetFut { f } => {
                let fut = self.futs[f].0.take().expect("not forgotten");
                self.forgotten.push(Forgotten::Fut(fut));
            }
            Action::ForgetBorrowed { ctx, id } => {
                let counter = Counter::plain(id);
                let mut d = Box::pin(self.ctxs[ctx].done());
                let p = d.as_mut().poll(&mut TaskContext::from_waker(&counter.waker));
                leak(d);
                self.futs.push((None, counter));
                return Outcome::Polls(vec![p]);
            }
            Action::ForgetScoped { ctx, level, ref ids } => {
                let (counters, polls) = leak_scoped(self.ctxs[ctx].as_ref(), level, ids);
                self.futs.extend(counters.into_iter().map(|c| (None, c)));
                return Outcome::Polls(polls);
            }
            Action::Many { ctx, ref ws } => {
                let mut polls = Vec::new();
                for &w in ws {
                    let mut f = Box::pin(self.ctxs[ctx].done_owned());
                    let counter = self.counter(w);
                    let mut cx = TaskContext::from_waker(&counter.waker);
                    polls.push(f.as_mut().poll(&mut cx));
                    self.futs.push((Some(RealFut::Done(f)), counter));
                }
                return Outcome::Polls(polls);
            }
            Action::Task {
                ctx,
                n,
                drop_on_wake,
                deadline,
            } => {
                let st = Arc::new(TaskState {
                    wakes: AtomicUsize::new(0),
                    drop_on_wake,
                    slot: Mutex::new(None),
                });
                let mut task = make_task(self.ctxs[ctx].clone(), deadline, n);
                let waker = Waker::from(st.clone());
                let ready = task.as_mut().poll(&mut TaskContext::from_waker(&waker)).is_ready();
                if ready {
                    guard(caught, || drop(task));
                } else {
                    *lock(&st.slot) = Some(task);
                }
                self.tasks.push(RealTask { st });
                return Outcome::Task(ready);
            }
            Action::DropTask { t } => {
                let task = lock(&self.tasks[t].st.slot).take();
                guard(caught, || drop(task));
            }
        }
        Outcome::None
    }

    /// After the input's last check: frees what the program forgot (see
    /// [`Forgotten`]), then everything else. Panics of user code are caught;
    /// nothing is compared any more.
    fn reclaim(mut self) {
        let mut caught = Vec::new();
        for f in self.forgotten.drain(..) {
            guard(&mut caught, || drop(f));
        }
        for t in &self.tasks {
            let task = lock(&t.st.slot).take();
            guard(&mut caught, || drop(task));
        }
        guard(&mut caught, || drop(self));
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
    /// A scoped node (owned by a `ScopedContext`, freed in place).
    scoped: bool,
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
    /// `mem::forget`: the node is held but never cancelled by the handle.
    Forgotten,
}

#[derive(Debug)]
struct MHandle {
    node: usize,
    state: HState,
}

#[derive(Debug)]
enum MFutKind {
    Done,
    /// `started`: polled once (a `run` whose context is done at its first
    /// poll never starts its work; once started, the work is polled first).
    Run {
        left: u8,
        inner_alive: bool,
        started: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leak {
    No,
    /// A forgotten `done_owned`/`run` (holds its node).
    Kept,
    /// A forgotten borrowed `done()`: holds nothing, so once nothing else
    /// holds its node, the node may be freed with the waiter still linked,
    /// and then it is never woken (nothing could poll it again anyway).
    Borrowed,
    /// A `done()` on a forgotten `ScopedContext` (which holds its node for
    /// good).
    Scoped,
}

#[derive(Debug)]
struct MFut {
    node: Option<usize>,
    kind: MFutKind,
    /// Has returned `Ready`.
    terminated: bool,
    /// Its current waker is registered on a live node.
    registered: bool,
    /// It registered at least once (later polls with the same waker clone
    /// nothing).
    ever_registered: bool,
    /// Wakes the current waker must have seen.
    wakes: usize,
    /// The current waker.
    id: u32,
    wk: WKind,
    /// A `PanicClone` waker that has not panicked yet.
    clone_armed: bool,
    leak: Leak,
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
    /// The `AfterFunc` handle is gone (dropped, kept aside or forgotten).
    dropped: bool,
    /// The real `AfterFunc` handle still exists (not really dropped).
    held: bool,
    /// Forgotten: may still be pending at the end.
    forgotten: bool,
    id: u32,
    kind: AKind,
}

#[derive(Debug)]
struct MTask {
    node: usize,
    n: usize,
    drop_on_wake: bool,
    /// The task (and its scoped owner) still exists.
    alive: bool,
    /// Its waiters are registered.
    registered: bool,
    /// Bounds of the wake count: exactly `n` once done, unless the waker
    /// dropped the task (then the waiters it dropped before they were woken
    /// never are: 1 to `n`).
    lo: usize,
    hi: usize,
}

/// The reference model of one input.
pub struct Model {
    /// `CLOCK.now()` as the model computes it.
    now: u64,
    /// Next deadline sequence number (low 10 bits of every future deadline).
    seq: u64,
    /// Next waker or after-func id.
    next_id: u32,
    nodes: Vec<MNode>,
    ctxs: Vec<MCtx>,
    handles: Vec<MHandle>,
    futs: Vec<MFut>,
    afs: Vec<MAf>,
    tasks: Vec<MTask>,
    /// Panics user code raised in the current action, as predicted.
    booms: Vec<Boom>,
    /// Something was leaked for good (a scoped context, a borrowed `done`).
    leaked_for_good: bool,
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
            next_id: 0,
            nodes: Vec::new(),
            ctxs: Vec::new(),
            handles: Vec::new(),
            futs: Vec::new(),
            afs: Vec::new(),
            tasks: Vec::new(),
            booms: Vec::new(),
            leaked_for_good: false,
        }
    }

    fn timer_of(&self, c: &MCtx) -> TimerKind {
        c.node.map_or(TimerKind::Std, |n| self.nodes[n].timer)
    }

    fn id(&mut self) -> u32 {
        self.next_id += 1;
        self.next_id
    }

    /// The `k`-th handle (modulo) that is still live.
    fn live_handle(&self, k: u8) -> Option<usize> {
        let live: Vec<usize> = (0..self.handles.len())
            .filter(|&i| self.handles[i].state == HState::Live)
            .collect();
        pick(k, live.len()).map(|i| live[i])
    }

    /// The `k`-th future (modulo) that is not forgotten.
    fn kept_fut(&self, k: u8) -> Option<usize> {
        let kept: Vec<usize> = (0..self.futs.len())
            .filter(|&i| self.futs[i].leak == Leak::No)
            .collect();
        pick(k, kept.len()).map(|i| kept[i])
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

    /// The own deadline (ns) a timeout `d` gives on `timer`.
    fn timeout_at(&self, timer: TimerKind, d: Duration) -> u64 {
        match timer {
            TimerKind::Clock => Instant::from_nanos(self.now).saturating_add(d).as_nanos(),
            TimerKind::Std => {
                assert_eq!(d, Duration::MAX, "planned: only MAX on the std timer");
                u64::MAX
            }
        }
    }

    /// Whether an own deadline `own` on `timer` has passed.
    fn passed(&self, timer: TimerKind, own: u64) -> bool {
        match timer {
            TimerKind::Clock => self.now >= own,
            TimerKind::Std => own == 0,
        }
    }

    /// Plans one scoped level under a parent of effective deadline `pdl`
    /// that is done (`pdone`) or not. Returns the level, its effective
    /// deadline and whether it is done once attached.
    fn plan_level(&mut self, timer: TimerKind, pdl: u64, pdone: bool, kind: ScopedKind) -> (ScopedLevel, u64, bool) {
        let (level, own) = match kind {
            ScopedKind::New => (ScopedLevel::New, u64::MAX),
            ScopedKind::Deadline(when, c) => {
                let at = self.plan_deadline(timer, pdl, when);
                let own = at.as_nanos();
                let c = scoped_cause(c, own < pdl, pdone);
                (ScopedLevel::Deadline(at, c), own)
            }
            ScopedKind::Timeout(dur) => {
                let d = self.plan_timeout(timer, pdl, dur);
                (ScopedLevel::Timeout(d), self.timeout_at(timer, d))
            }
        };
        let done = pdone || (own < pdl && self.passed(timer, own));
        (level, pdl.min(own), done)
    }

    fn ract(&self, r: ReenterSpec) -> Option<RAct> {
        let (nh, nc) = (self.handles.len(), self.ctxs.len());
        Some(match r {
            ReenterSpec::Cancel(h) => RAct::Cancel(pick(h, nh)?),
            // See `CAUSE_DROP_IS_PANIC_SAFE`: no handle is dropped by user
            // code until then.
            ReenterSpec::DropHandle(h) if !CAUSE_DROP_IS_PANIC_SAFE => RAct::Cancel(pick(h, nh)?),
            ReenterSpec::DropHandle(h) => RAct::DropHandle(pick(h, nh)?),
            ReenterSpec::DropCtx(c) => RAct::DropCtx(pick(c, nc)?),
            ReenterSpec::CreateDrop(c) => RAct::CreateDrop(pick(c, nc)?),
        })
    }

    /// A concrete waker; `first`: a future's first waker (only those may
    /// panic in `clone`, which leaves the future unregistered).
    fn wspec(&mut self, w: WakerSpec, first: bool) -> WSpec {
        let kind = match w {
            WakerSpec::Plain => WKind::Plain,
            WakerSpec::PanicWake => WKind::PanicWake,
            WakerSpec::PanicDrop => WKind::PanicDrop,
            WakerSpec::PanicClone if first => WKind::PanicClone,
            WakerSpec::PanicClone => WKind::Plain,
            WakerSpec::Reenter(r) => self.ract(r).map_or(WKind::Plain, WKind::Reenter),
        };
        WSpec { id: self.id(), kind }
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
                let cause = creation_cause(cause, at.as_nanos() < pdl, self.done_of(self.ctxs[ctx].node).is_some());
                Action::WithDeadline { ctx, at, cause }
            }
            Op::WithTimeout { ctx, dur, cause } => {
                let ctx = pick(ctx, nc)?;
                let pdl = self.ctxs[ctx].node.map_or(u64::MAX, |n| self.nodes[n].deadline);
                let timer = self.timer_of(&self.ctxs[ctx]);
                let d = self.plan_timeout(timer, pdl, dur);
                let own = self.timeout_at(timer, d);
                let cause = creation_cause(cause, own < pdl, self.done_of(self.ctxs[ctx].node).is_some());
                Action::WithTimeout { ctx, d, cause }
            }
            Op::WithValue { ctx, key, v } => Action::WithValue {
                ctx: pick(ctx, nc)?,
                key: key % 4,
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
            Op::DoneFut { ctx, waker } => {
                let ctx = pick(ctx, nc)?;
                Action::DoneFut {
                    ctx,
                    w: self.wspec(waker, true),
                }
            }
            Op::RunFut { ctx, polls, waker } => {
                let ctx = pick(ctx, nc)?;
                Action::RunFut {
                    ctx,
                    polls: polls % 4,
                    w: self.wspec(waker, true),
                }
            }
            Op::Poll { f, fresh } => {
                let f = self.kept_fut(f)?;
                // A fresh waker only replaces the registered one if the poll
                // reaches the `done` part; a `run` that is finished, or whose
                // inner future completes now, leaves the old one registered.
                let reaches_done = match self.futs[f].kind {
                    MFutKind::Done => true,
                    MFutKind::Run { left, started, .. } => {
                        let done = self.done_of(self.futs[f].node).is_some();
                        !self.futs[f].terminated && left > 0 && (started || !done)
                    }
                };
                let fresh = match fresh {
                    Some(w) if reaches_done => Some(self.wspec(w, false)),
                    _ => None,
                };
                Action::Poll { f, fresh }
            }
            Op::DropFut { f } => Action::DropFut { f: self.kept_fut(f)? },
            Op::BorrowedDone { ctx, h, cause } => Action::BorrowedDone {
                ctx: pick(ctx, nc)?,
                h: self.live_handle(h),
                cause,
                id: self.id(),
            },
            Op::WaitZero { ctx } => Action::WaitZero { ctx: pick(ctx, nc)? },
            Op::AfterFunc { ctx, capture, kind } => {
                let ctx = pick(ctx, nc)?;
                let kind = match kind {
                    AfterSpec::Plain => AKind::Plain,
                    AfterSpec::Panic => AKind::Panic,
                    AfterSpec::Reenter(r) => self.ract(r).map_or(AKind::Plain, AKind::Reenter),
                };
                Action::AfterFunc {
                    ctx,
                    capture,
                    id: self.id(),
                    kind,
                }
            }
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
                let mut pdone = self.done_of(self.ctxs[ctx].node).is_some();
                let mut planned = Vec::new();
                for kind in &levels[..1 + n as usize % levels.len()] {
                    let (level, dl, done) = self.plan_level(timer, pdl, pdone, *kind);
                    (pdl, pdone) = (dl, done);
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
                    ScopedEvent::LeakChild(kind) => {
                        let (level, _, _) = self.plan_level(timer, pdl, pdone, kind);
                        SEvent::LeakChild(level, self.id())
                    }
                };
                Action::Scoped {
                    ctx,
                    levels: planned,
                    event,
                    id: self.id(),
                }
            }
            Op::SetClock { x, back } => {
                let d = (x as u64) << 10;
                let t = if back { self.now.saturating_sub(d) } else { self.now + d };
                Action::SetClock {
                    t: Instant::from_nanos(t),
                }
            }
            Op::ForgetHandle { h } => Action::ForgetHandle {
                h: self.live_handle(h)?,
            },
            Op::ForgetAfter { a } => {
                let a = pick(a, self.afs.len())?;
                if self.afs[a].dropped {
                    return None;
                }
                Action::ForgetAfter { a }
            }
            Op::ForgetFut { f } => Action::ForgetFut { f: self.kept_fut(f)? },
            Op::ForgetBorrowed { ctx } => Action::ForgetBorrowed {
                ctx: pick(ctx, nc)?,
                id: self.id(),
            },
            Op::ForgetScoped { ctx, kind, waiters } => {
                let ctx = pick(ctx, nc)?;
                let timer = self.timer_of(&self.ctxs[ctx]);
                let pdl = self.ctxs[ctx].node.map_or(u64::MAX, |n| self.nodes[n].deadline);
                let pdone = self.done_of(self.ctxs[ctx].node).is_some();
                let (level, _, _) = self.plan_level(timer, pdl, pdone, kind);
                let ids = (0..waiters % 4).map(|_| self.id()).collect();
                Action::ForgetScoped { ctx, level, ids }
            }
            Op::Many { ctx, n, waker } => {
                let ctx = pick(ctx, nc)?;
                let n = 17 + n as usize % 24;
                // Moving a context into each of several wakers would empty
                // the list: those get plain wakers.
                let waker = match waker {
                    WakerSpec::Reenter(ReenterSpec::DropCtx(_)) => WakerSpec::Plain,
                    w => w,
                };
                let ws = (0..n)
                    .map(|i| {
                        let w = if i % 5 == 0 { waker } else { WakerSpec::Plain };
                        // Not `first`: no clone panics (the poll is part of
                        // this op and must not stop half-way).
                        self.wspec(w, false)
                    })
                    .collect();
                Action::Many { ctx, ws }
            }
            Op::Task {
                ctx,
                n,
                drop_on_wake,
                deadline,
            } => {
                let ctx = pick(ctx, nc)?;
                let timer = self.timer_of(&self.ctxs[ctx]);
                let pdl = self.ctxs[ctx].node.map_or(u64::MAX, |n| self.nodes[n].deadline);
                let deadline = deadline.map(|w| self.plan_deadline(timer, pdl, w));
                Action::Task {
                    ctx,
                    n: 1 + n as usize % 40,
                    drop_on_wake,
                    deadline,
                }
            }
            Op::DropTask { t } => {
                let alive: Vec<usize> = (0..self.tasks.len()).filter(|&i| self.tasks[i].alive).collect();
                Action::DropTask {
                    t: alive[pick(t, alive.len())?],
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
            scoped: false,
            done: None,
        })
    }

    /// `with_cancel` / `with_deadline*` / `with_timeout*` on `ctx`, with own
    /// deadline `own` (`u64::MAX`: none).
    fn child(&mut self, ctx: usize, own: u64, dcause: Option<CauseSpec>) {
        let pdl = self.ctxs[ctx].node.map_or(u64::MAX, |n| self.nodes[n].deadline);
        if matches!(dcause, Some(CauseSpec::Panic(_))) && own >= pdl {
            // Not its own deadline: the cause is dropped while the child is
            // made, and its panic comes out of the call: no child.
            return;
        }
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
            scoped: false,
            done: None,
        });
        if let Some(p) = parent {
            self.nodes[p].children.push(n);
            // Born done: inherits the parent's error and cause.
            self.nodes[n].done = self.nodes[p].done;
        }
        if self.nodes[n].done.is_none() && owns && self.passed(timer, own) {
            self.cancel(n, Error::DeadlineExceeded, self.nodes[n].dcause);
        }
        n
    }

    /// A scoped level's node under `parent`.
    fn level_node(&mut self, parent: Option<usize>, level: ScopedLevel) -> usize {
        let timer = match parent {
            Some(p) => self.nodes[p].timer,
            None => TimerKind::Std,
        };
        let (own, dcause) = match level {
            ScopedLevel::New => (u64::MAX, None),
            ScopedLevel::Deadline(at, c) => (at.as_nanos(), c),
            ScopedLevel::Timeout(d) => (self.timeout_at(timer, d), None),
        };
        let n = self.child_node(parent, own, dcause);
        self.nodes[n].scoped = true;
        n
    }

    /// Numbers of the panicking causes that done heap nodes keep (their
    /// winning cause, or a deadline cause kept when cancelled from above):
    /// see [`CAUSE_DROP_IS_PANIC_SAFE`].
    fn stored_panics(&self) -> Vec<u8> {
        let mut v = Vec::new();
        for n in self.nodes.iter().filter(|n| !n.scoped && n.done.is_some()) {
            if let Some((_, Some(CauseSpec::Panic(k)))) = n.done {
                v.push(k);
            }
            if let Some(CauseSpec::Panic(k)) = n.dcause {
                v.push(k);
            }
        }
        v
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
    /// User code (wakers, after-funcs) runs in [`settle`](Self::settle).
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

    /// A cancellation as a call makes it: the tree, then the user code it
    /// runs (which may cancel more).
    fn cancel_call(&mut self, n: usize, err: Error, cause: Option<CauseSpec>) {
        self.cancel(n, err, cause);
        self.settle();
    }

    /// Moves the clock to `t` (never back) and fires every own deadline that
    /// is due, earliest first (they are all distinct), each with its user
    /// code run before the next fires.
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
                Some(i) => self.cancel_call(i, Error::DeadlineExceeded, self.nodes[i].dcause),
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

    /// Runs what re-entrant user code does.
    fn reenter(&mut self, r: RAct) {
        match r {
            RAct::Cancel(h) => {
                if self.handles[h].state == HState::Live {
                    self.cancel(self.handles[h].node, Error::Canceled, None);
                }
            }
            RAct::DropHandle(h) => {
                if self.handles[h].state == HState::Live {
                    self.handles[h].state = HState::Dropped;
                    self.cancel(self.handles[h].node, Error::Canceled, None);
                }
            }
            // Moved in at registration; dropping it is not observable.
            RAct::DropCtx(_) | RAct::CreateDrop(_) => {}
        }
    }

    /// What registering user code that moves a context in does at once.
    fn register_reentry(&mut self, r: RAct) {
        if let RAct::DropCtx(c) = r {
            self.ctxs.swap_remove(c);
        }
    }

    /// Runs the user code that the cancellations so far call for: every
    /// after-func of a done node runs, every waker registered on a done node
    /// is woken (once). Re-entrant user code may cancel more, so this goes
    /// on to a fixed point. Everything it cancels is cancelled with
    /// `Canceled` and no cause, so the order does not matter.
    fn settle(&mut self) {
        loop {
            let mut todo: Vec<RAct> = Vec::new();
            let mut changed = false;
            for i in 0..self.afs.len() {
                if self.afs[i].state == AfState::Pending {
                    if let Some((e, _)) = self.done_of(self.afs[i].node) {
                        let af = &mut self.afs[i];
                        af.state = AfState::Ran;
                        af.seen = if af.capture { err_code(Some(e)) } else { 0 };
                        match af.kind {
                            AKind::Plain => {}
                            AKind::Panic => self.booms.push(Boom::After(af.id)),
                            AKind::Reenter(r) => todo.push(r),
                        }
                        changed = true;
                    }
                }
            }
            for i in 0..self.futs.len() {
                if self.futs[i].registered && self.done_of(self.futs[i].node).is_some() {
                    let f = &mut self.futs[i];
                    f.registered = false;
                    f.wakes += 1;
                    match f.wk {
                        WKind::PanicWake => self.booms.push(Boom::Waker(f.id)),
                        WKind::Reenter(r) => todo.push(r),
                        _ => {}
                    }
                    changed = true;
                }
            }
            for t in &mut self.tasks {
                if t.alive && t.registered && self.nodes[t.node].done.is_some() {
                    t.registered = false;
                    if t.drop_on_wake {
                        // The first wake drops the task: its scope ends (the
                        // node is done already).
                        t.alive = false;
                        (t.lo, t.hi) = (1, t.n);
                    } else {
                        (t.lo, t.hi) = (t.n, t.n);
                    }
                }
            }
            for r in todo {
                self.reenter(r);
            }
            if !changed {
                return;
            }
        }
    }

    /// Per node: whether something the program still holds owns it (so it
    /// cannot have been freed): a context, a handle, or a future that holds
    /// its node.
    fn held(&self) -> Vec<bool> {
        let mut held = vec![false; self.nodes.len()];
        for n in self.ctxs.iter().filter_map(|c| c.node) {
            held[n] = true;
        }
        for h in &self.handles {
            if matches!(h.state, HState::Live | HState::Forgotten) {
                held[h.node] = true;
            }
        }
        for f in &self.futs {
            if let (Some(n), Leak::No | Leak::Kept) = (f.node, f.leak) {
                held[n] = true;
            }
        }
        held
    }

    fn new_fut(&mut self, node: Option<usize>, kind: MFutKind, w: WSpec, leak: Leak) -> usize {
        if let WKind::Reenter(r) = w.kind {
            self.register_reentry(r);
        }
        self.futs.push(MFut {
            node,
            kind,
            terminated: false,
            registered: false,
            ever_registered: false,
            wakes: 0,
            id: w.id,
            wk: w.kind,
            clone_armed: w.kind == WKind::PanicClone,
            leak,
        });
        self.futs.len() - 1
    }

    /// The `done` part of a poll of future `f`: registers (cloning the waker
    /// if needed) or reports ready. `Err(())`: the clone panicked.
    fn poll_done_part(&mut self, f: usize) -> Result<Poll<Error>, ()> {
        let (pd, reg) = self.poll_done(self.futs[f].node);
        let fut = &mut self.futs[f];
        if reg && !fut.ever_registered && fut.clone_armed {
            fut.clone_armed = false;
            self.booms.push(Boom::Waker(fut.id));
            return Err(());
        }
        if reg {
            fut.registered = true;
            fut.ever_registered = true;
        }
        Ok(pd)
    }

    /// Applies `a` to the model and panics if what the real objects reported
    /// is not what they should have: the outcome, and the panics caught
    /// (`drops`: how many panics causes' and values' `Drop`s raised, which
    /// the model does not place: they may come out of any call that drops a
    /// context, a handle, a future or an after-func).
    pub fn apply(&mut self, a: &Action, ex: &Exec, drops: usize) {
        self.booms.clear();
        let afs = self.afs.len();
        let mut expected = self.apply_inner(a);
        self.settle();
        let booms = core::mem::take(&mut self.booms);
        let caught = &ex.caught;
        let drop_caught = caught.contains(&Boom::Drop);
        if let Action::AfterFunc { .. } = a {
            // A callback that ran during registration and panicked (itself,
            // or through what it re-entered) takes the `AfterFunc` with it;
            // so may a panicking drop in there (not placed by the model).
            let lost = self.afs[afs].state == AfState::Ran && !booms.is_empty();
            expected = Outcome::Registered(!lost);
            let got = ex.out == Outcome::Registered(true);
            if !got && (lost || drop_caught) {
                self.afs[afs].held = false;
                self.afs[afs].dropped = true;
                expected = Outcome::Registered(false);
            }
        }
        for b in caught {
            match b {
                Boom::Drop => assert!(drops > 0, "a drop panic came out of {a:?}, but none was raised"),
                b => assert!(
                    booms.contains(b),
                    "{b:?} came out of {a:?}; user code expected to panic: {booms:?}"
                ),
            }
        }
        if !booms.is_empty() || drops > 0 {
            assert!(
                !caught.is_empty(),
                "user code panicked ({booms:?}, {drops} drops) in {a:?}, but no panic came out"
            );
        }
        let ok = ex.out == expected || (ex.out == Outcome::Panicked && drop_caught);
        assert!(ok, "outcome of {a:?}: {:?}, expected {expected:?}", ex.out);
    }

    fn apply_inner(&mut self, a: &Action) -> Outcome {
        match *a {
            Action::NewRoot { clock } => {
                let node = clock.then(|| self.new_root());
                self.ctxs.push(MCtx { node, vals: Vec::new() });
            }
            Action::WithCancel { ctx } => {
                self.child(ctx, u64::MAX, None);
            }
            Action::WithDeadline { ctx, at, cause } => {
                self.child(ctx, at.as_nanos(), cause);
            }
            Action::WithTimeout { ctx, d, cause } => {
                let own = self.timeout_at(self.timer_of(&self.ctxs[ctx]), d);
                self.child(ctx, own, cause);
            }
            Action::WithValue { ctx, key, v } => {
                let mut c = self.ctxs[ctx].clone();
                c.vals.push((key, v));
                self.ctxs.push(c);
            }
            Action::WithoutCancel { ctx } => {
                let node = match self.timer_of(&self.ctxs[ctx]) {
                    TimerKind::Clock => Some(self.new_root()),
                    TimerKind::Std => None,
                };
                let vals = self.ctxs[ctx].vals.clone();
                self.ctxs.push(MCtx { node, vals });
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
                        scoped: false,
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
            }
            Action::CloneCtx { ctx } => {
                let c = self.ctxs[ctx].clone();
                self.ctxs.push(c);
            }
            Action::DropCtx { ctx } => {
                self.ctxs.swap_remove(ctx);
            }
            Action::Cancel { h, cause } => {
                self.cancel_call(self.handles[h].node, Error::Canceled, cause);
            }
            Action::DropHandle { h } => {
                self.handles[h].state = HState::Dropped;
                self.cancel_call(self.handles[h].node, Error::Canceled, None);
            }
            Action::Detach { h, .. } => {
                self.handles[h].state = HState::Detached;
            }
            Action::DoneFut { ctx, w } => {
                self.new_fut(self.ctxs[ctx].node, MFutKind::Done, w, Leak::No);
            }
            Action::RunFut { ctx, polls, w } => {
                let kind = MFutKind::Run {
                    left: polls,
                    inner_alive: true,
                    started: false,
                };
                self.new_fut(self.ctxs[ctx].node, kind, w, Leak::No);
            }
            Action::Poll { f, fresh } => return self.apply_poll(f, fresh),
            Action::DropFut { f } => {
                let fut = self.futs.swap_remove(f);
                // The waiter's drop drops the waker clone the library holds.
                if fut.registered && fut.wk == WKind::PanicDrop {
                    self.booms.push(Boom::Waker(fut.id));
                }
            }
            Action::BorrowedDone { ctx, h, cause, .. } => {
                let node = self.ctxs[ctx].node;
                let (first, reg) = self.poll_done(node);
                if let Some(h) = h {
                    self.cancel_call(self.handles[h].node, Error::Canceled, cause);
                }
                let wakes = usize::from(reg && self.done_of(node).is_some());
                let (second, _) = self.poll_done(node);
                return Outcome::Borrowed(first, wakes, second);
            }
            Action::WaitZero { ctx } => return Outcome::Wait(self.done_of(self.ctxs[ctx].node).map(|d| d.0)),
            Action::AfterFunc { ctx, capture, id, kind } => {
                let node = self.ctxs[ctx].node;
                let (state, seen) = match node {
                    // Nothing can ever cancel it: the callback is dropped
                    // unrun at once (not kept, so it cannot leak).
                    None => (AfState::Never { stopped: false }, 0),
                    Some(n) if !self.can_be_done(n) => (AfState::Never { stopped: false }, 0),
                    Some(_) => (AfState::Pending, 0),
                };
                // On a done context the callback runs during registration
                // (in `settle`); if it panics, no `AfterFunc` comes back
                // (see `apply`).
                self.afs.push(MAf {
                    node,
                    state,
                    capture,
                    seen,
                    dropped: false,
                    held: true,
                    forgotten: false,
                    id,
                    kind,
                });
                self.settle();
                if let AKind::Reenter(r) = kind {
                    self.register_reentry(r);
                }
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
                return Outcome::Stop(r);
            }
            Action::DropAfter { a, really } => {
                self.afs[a].dropped = true;
                self.afs[a].held = !really;
            }
            Action::Advance { d } => {
                let t = Instant::from_nanos(self.now).saturating_add(d).as_nanos();
                self.set_time(t);
            }
            Action::SetClock { t } => {
                self.set_time(t.as_nanos());
            }
            Action::Scoped {
                ctx,
                ref levels,
                event,
                id: _,
            } => return self.apply_scoped(ctx, levels, event),
            Action::ForgetHandle { h } => {
                self.handles[h].state = HState::Forgotten;
            }
            Action::ForgetAfter { a } => {
                let af = &mut self.afs[a];
                af.dropped = true;
                af.held = false;
                af.forgotten = true;
            }
            Action::ForgetFut { f } => {
                self.futs[f].leak = Leak::Kept;
            }
            Action::ForgetBorrowed { ctx, id } => {
                self.leaked_for_good = true;
                let w = WSpec { id, kind: WKind::Plain };
                let f = self.new_fut(self.ctxs[ctx].node, MFutKind::Done, w, Leak::Borrowed);
                let p = self.poll_done_part(f).expect("plain waker");
                return Outcome::Polls(vec![p]);
            }
            Action::ForgetScoped { ctx, level, ref ids } => {
                self.leaked_for_good = true;
                let node = self.level_node(self.ctxs[ctx].node, level);
                let mut polls = Vec::new();
                for &id in ids {
                    let w = WSpec { id, kind: WKind::Plain };
                    let f = self.new_fut(Some(node), MFutKind::Done, w, Leak::Scoped);
                    polls.push(self.poll_done_part(f).expect("plain waker"));
                }
                return Outcome::Polls(polls);
            }
            Action::Many { ctx, ref ws } => {
                let node = self.ctxs[ctx].node;
                let mut polls = Vec::new();
                for &w in ws {
                    let f = self.new_fut(node, MFutKind::Done, w, Leak::No);
                    match self.poll_done_part(f) {
                        Ok(p) => {
                            if p.is_ready() {
                                self.futs[f].terminated = true;
                            }
                            polls.push(p);
                        }
                        Err(()) => unreachable!("no clone panics in Many (its first poll is by the library)"),
                    }
                }
                return Outcome::Polls(polls);
            }
            Action::Task {
                ctx,
                n,
                drop_on_wake,
                deadline,
            } => {
                let level = match deadline {
                    None => ScopedLevel::New,
                    Some(at) => ScopedLevel::Deadline(at, None),
                };
                let node = self.level_node(self.ctxs[ctx].node, level);
                let ready = self.nodes[node].done.is_some();
                self.tasks.push(MTask {
                    node,
                    n,
                    drop_on_wake,
                    alive: !ready,
                    registered: !ready,
                    lo: 0,
                    hi: 0,
                });
                return Outcome::Task(ready);
            }
            Action::DropTask { t } => {
                let node = self.tasks[t].node;
                self.tasks[t].alive = false;
                self.tasks[t].registered = false;
                // The waiters go first (unlinked, unwoken), then the scope
                // ends: the owner cancels its node.
                self.cancel_call(node, Error::Canceled, None);
            }
        }
        Outcome::None
    }

    fn apply_poll(&mut self, f: usize, fresh: Option<WSpec>) -> Outcome {
        let done = self.done_of(self.futs[f].node);
        // A fresh waker: the old one (if registered) is replaced, and its
        // clone dropped, after the new one is registered.
        let mut old_drop_panics = false;
        if let Some(w) = fresh {
            if let WKind::Reenter(r) = w.kind {
                self.register_reentry(r);
            }
            let fut = &mut self.futs[f];
            old_drop_panics = fut.registered && fut.wk == WKind::PanicDrop && done.is_none();
            if old_drop_panics {
                self.booms.push(Boom::Waker(fut.id));
            }
            // The old waker is replaced (and dropped unwoken) by this poll,
            // or was already taken by the cancel.
            fut.wakes = 0;
            fut.registered = false;
            fut.id = w.id;
            fut.wk = w.kind;
            fut.clone_armed = false;
            // The new waker always needs a clone (it differs from the one
            // the waiter holds).
            fut.ever_registered = false;
        }
        let out = match self.futs[f].kind {
            MFutKind::Done => match self.poll_done_part(f) {
                Ok(pd) => {
                    if pd.is_ready() {
                        self.futs[f].terminated = true;
                    }
                    Outcome::Done(pd)
                }
                Err(()) => Outcome::Panicked,
            },
            MFutKind::Run { left, started, .. } => {
                let fut = &mut self.futs[f];
                let dead = MFutKind::Run {
                    left,
                    inner_alive: false,
                    started: true,
                };
                if fut.terminated {
                    Outcome::Run(Poll::Pending)
                } else if let (false, Some((e, _))) = (started, done) {
                    // Done before the first poll: the work never starts.
                    fut.terminated = true;
                    fut.kind = dead;
                    Outcome::Run(Poll::Ready(Err(e)))
                } else if left == 0 {
                    // The work first: its output wins over a cancel.
                    fut.terminated = true;
                    fut.kind = dead;
                    Outcome::Run(Poll::Ready(Ok(7)))
                } else {
                    fut.kind = MFutKind::Run {
                        left: left - 1,
                        inner_alive: true,
                        started: true,
                    };
                    match self.poll_done_part(f) {
                        Ok(Poll::Pending) => Outcome::Run(Poll::Pending),
                        Ok(Poll::Ready(e)) => {
                            let fut = &mut self.futs[f];
                            fut.terminated = true;
                            fut.kind = MFutKind::Run {
                                left: left - 1,
                                inner_alive: false,
                                started: true,
                            };
                            Outcome::Run(Poll::Ready(Err(e)))
                        }
                        Err(()) => Outcome::Panicked,
                    }
                }
            }
        };
        if old_drop_panics {
            Outcome::Panicked
        } else {
            out
        }
    }

    fn apply_scoped(&mut self, ctx: usize, levels: &[ScopedLevel], event: SEvent) -> Outcome {
        let mut chain: Vec<usize> = Vec::new();
        let mut parent = self.ctxs[ctx].node;
        for level in levels {
            let n = self.level_node(parent, *level);
            chain.push(n);
            parent = Some(n);
        }
        let before = self.snap_model(&chain);
        let deepest = *chain.last().expect("at least one level");
        let (first, reg) = self.poll_done(Some(deepest));
        match event {
            SEvent::Nothing => {}
            SEvent::CancelLevel(i, c) => self.cancel_call(chain[i], Error::Canceled, c),
            SEvent::CancelHandle(h, c) => self.cancel_call(self.handles[h].node, Error::Canceled, c),
            SEvent::Advance(d) => {
                let t = Instant::from_nanos(self.now).saturating_add(d).as_nanos();
                self.set_time(t);
            }
            SEvent::LeakChild(level, id) => {
                self.leaked_for_good = true;
                let node = self.level_node(Some(deepest), level);
                let w = WSpec { id, kind: WKind::Plain };
                let f = self.new_fut(Some(node), MFutKind::Done, w, Leak::Scoped);
                let _ = self.poll_done_part(f).expect("plain waker");
            }
        }
        let wakes = usize::from(reg && self.nodes[deepest].done.is_some());
        let after = self.snap_model(&chain);
        let (second, _) = self.poll_done(Some(deepest));
        // The scopes end, deepest first: each cancels its node.
        for &n in chain.iter().rev() {
            self.cancel_call(n, Error::Canceled, None);
        }
        Outcome::Scoped {
            before,
            first,
            wakes,
            after,
            second,
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
        assert_eq!(c.value(&K_P).map(|t| t.0), val(3), "value p of ctx {i}");
    }
    assert_eq!(real.handles.len(), m.handles.len());
    for (i, (h, mh)) in real.handles.iter().zip(&m.handles).enumerate() {
        match mh.state {
            HState::Live => assert_eq!(h.is_done(), m.nodes[mh.node].done.is_some(), "handle {i}"),
            HState::Dropped | HState::Forgotten => assert!(h.is_empty(), "handle {i} should be gone"),
            HState::Detached => {}
        }
    }
    assert_eq!(real.futs.len(), m.futs.len());
    let held = if m.futs.iter().any(|f| f.leak == Leak::Borrowed) {
        m.held()
    } else {
        Vec::new()
    };
    for (i, ((f, counter), mf)) in real.futs.iter().zip(&m.futs).enumerate() {
        let got = counter.count();
        if mf.leak == Leak::Borrowed && !mf.node.is_some_and(|n| held[n]) {
            // Its node may be gone (freed with the leaked waiter in it).
            assert!(
                got == mf.wakes || got == 0,
                "wakes of leaked future {i} ({mf:?}): {got}"
            );
        } else {
            assert_eq!(got, mf.wakes, "wakes of future {i} ({mf:?})");
        }
        match (f, &mf.kind) {
            (None, _) => assert_ne!(mf.leak, Leak::No, "future {i} forgotten"),
            (Some(RealFut::Done(d)), MFutKind::Done) => assert_eq!(d.is_terminated(), mf.terminated),
            (Some(RealFut::Run(r, alive)), MFutKind::Run { inner_alive, .. }) => {
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
        assert_eq!(a.handle.is_some(), ma.held, "after-func {i} handle");
    }
    assert_eq!(real.tasks.len(), m.tasks.len());
    for (i, (t, mt)) in real.tasks.iter().zip(&m.tasks).enumerate() {
        let w = t.st.wakes.load(Ordering::SeqCst);
        assert!((mt.lo..=mt.hi).contains(&w), "task {i} ({mt:?}) woken {w} times");
        assert_eq!(lock(&t.st.slot).is_some(), mt.alive, "task {i} ({mt:?}) alive");
    }
}

/// Whether `CTXCORE_FUZZ_TRACE` is set: every action and what it gave is
/// printed (to replay a finding: `CTXCORE_FUZZ_TRACE=1 cargo fuzz run ops
/// <input>`).
fn trace() -> bool {
    static TRACE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("CTXCORE_FUZZ_TRACE").is_some())
}

/// Things every input needs once per process before allocations can be
/// counted: lazily initialised state that is never freed.
fn warm_up() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The manual clock's map keeps its (empty) root node once used.
        let root = Context::with_timer(&CLOCK);
        let (_c, _h) = root.with_timeout(Duration::from_secs(1));
        // Armed by a first wait (node invariant 20).
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(std::pin::pin!(_c.done()).poll(&mut cx).is_pending());
        assert_eq!(CLOCK.armed(), 1);
        drop((_c, _h));
        // The blocking wait's thread handle; the std timer's clock.
        let (c, _h) = Context::background().with_cancel();
        assert_eq!(c.wait_blocking_timeout(Duration::ZERO), None);
        let _ = Instant::now();
        // The leak list's buffer.
        lock(&LEAKED).reserve(1 << 16);
        lock(&HANDED_OFF_BOOMS).reserve(64);
        ctxcore::set_after_func_spawner(run_handed_off);
    });
}

/// Runs `prog`, executing each real action through `exec` (which may move it
/// to another thread), checking after every step. Panics on any mismatch.
pub fn run_program(prog: &Program, exec: &mut dyn FnMut(usize, &mut Real, &Action) -> Exec) {
    install_hook();
    warm_up();
    let allocs_before = live_allocs();
    let armed_before = CLOCK.armed();
    assert_eq!(armed_before, 0, "a previous input left a deadline armed");
    let causes_before = PANIC_CAUSES_LIVE.load(Ordering::SeqCst);
    let leaked_for_good;
    {
        let mut real = Real::default();
        let mut m = Model::new();
        let mut adversarial = 0u64;
        let trace = trace();
        let mut step = |i: usize, real: &mut Real, m: &mut Model, a: Action| {
            let d0 = drop_panics();
            let mut ex = exec(i, real, &a);
            let drops = drop_panics() - d0;
            ex.caught.append(&mut lock(&HANDED_OFF_BOOMS));
            if trace {
                eprintln!("[{i}] {a:?}\n    -> {ex:?}, {drops} drop panics");
            }
            CAUGHT.fetch_add(ex.caught.len() as u64, Ordering::Relaxed);
            m.apply(&a, &ex, drops);
            check(real, m);
            if !CAUSE_DROP_IS_PANIC_SAFE {
                for k in m.stored_panics() {
                    PanicCause::disarm(k);
                }
            }
        };
        // Two roots to start from: background and a manual-clock root.
        step(0, &mut real, &mut m, Action::NewRoot { clock: false });
        step(0, &mut real, &mut m, Action::NewRoot { clock: true });
        let mut n = 0u64;
        for (i, op) in prog.ops.iter().enumerate() {
            if let Some(a) = m.plan(op) {
                adversarial += u64::from(a.adversarial());
                step(i, &mut real, &mut m, a);
                n += 1;
            }
        }
        // Teardown: drop and stop everything, still checking each step.
        let i = prog.ops.len();
        let drop_futs = |real: &mut Real, m: &mut Model, step: &mut dyn FnMut(usize, &mut Real, &mut Model, Action)| {
            let mut f = m.futs.len();
            while f > 0 {
                f -= 1;
                if f < m.futs.len() && m.futs[f].leak == Leak::No {
                    step(i, real, m, Action::DropFut { f });
                }
            }
        };
        if !prog.handles_first {
            drop_futs(&mut real, &mut m, &mut step);
        }
        for h in 0..m.handles.len() {
            let has = !real.handles[h].is_empty() || real.handles[h].is_aside();
            if m.handles[h].state != HState::Dropped && has {
                step(i, &mut real, &mut m, Action::DropHandle { h });
            }
        }
        if prog.handles_first {
            drop_futs(&mut real, &mut m, &mut step);
        }
        for t in 0..m.tasks.len() {
            if m.tasks[t].alive {
                step(i, &mut real, &mut m, Action::DropTask { t });
            }
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
        // Deadlines still armed belong to forgotten scoped contexts or to
        // contexts held by forgotten handles: let them fire.
        let last = (0..m.nodes.len())
            .filter(|&k| {
                let n = &m.nodes[k];
                n.done.is_none() && n.owns && n.timer == TimerKind::Clock
            })
            .map(|k| m.nodes[k].deadline)
            .max();
        if let Some(t) = last {
            step(
                i,
                &mut real,
                &mut m,
                Action::SetClock {
                    t: Instant::from_nanos(t),
                },
            );
        }
        // Teardown cancelled every context, except those that forgotten
        // handles keep live: their after-funcs run when the handles are
        // freed, after the last check.
        let forgotten_handles = m.handles.iter().any(|h| h.state == HState::Forgotten);
        for (k, af) in m.afs.iter().enumerate() {
            assert!(
                af.state != AfState::Pending || af.forgotten || forgotten_handles,
                "after-func {k} neither ran nor was stopped"
            );
        }
        OPS.fetch_add(n, Ordering::Relaxed);
        ADVERSARIAL.fetch_add(adversarial, Ordering::Relaxed);
        leaked_for_good = m.leaked_for_good;
        real.reclaim();
    }
    assert_eq!(CLOCK.armed(), 0, "deadline entries left armed");
    assert_eq!(TRACKED_LIVE.load(Ordering::Relaxed), 0, "stored values not dropped");
    assert_eq!(
        PANIC_VALUES_LIVE.load(Ordering::SeqCst),
        0,
        "panicking values not dropped"
    );
    if !leaked_for_good {
        assert_eq!(
            PANIC_CAUSES_LIVE.load(Ordering::SeqCst),
            causes_before,
            "panicking causes not dropped"
        );
        assert_eq!(live_allocs(), allocs_before, "allocations leaked by the input");
    }
    INPUTS.fetch_add(1, Ordering::Relaxed);
}

/// Prints the operation count when the process exits (libFuzzer ends with
/// `exit`, so `atexit` is the one hook that runs).
pub fn report_at_exit() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        extern "C" fn report() {
            eprintln!(
                "ctxcore-fuzz: {} operations ({} adversarial) over {} inputs checked against the model, \
                 {} deliberate panics caught where expected, 0 mismatches",
                OPS.load(Ordering::Relaxed),
                ADVERSARIAL.load(Ordering::Relaxed),
                INPUTS.load(Ordering::Relaxed),
                CAUGHT.load(Ordering::Relaxed),
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
