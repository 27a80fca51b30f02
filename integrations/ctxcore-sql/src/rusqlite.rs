//! SQLite statements that really stop: run work on a [`rusqlite::Connection`]
//! under a [`Context`], interrupted inside the SQLite VM when the context is
//! done.
//!
//! [`ConnectionExt::with_context`] runs a closure over the connection; the
//! convenience methods [`execute_ctx`](ConnectionExt::execute_ctx),
//! [`execute_batch_ctx`](ConnectionExt::execute_batch_ctx) and
//! [`query_row_ctx`](ConnectionExt::query_row_ctx) run one statement.
//!
//! ```
//! use ctxcore::{Context, Error as Kind};
//! use ctxcore_sql::rusqlite::ConnectionExt;
//! use rusqlite::Connection;
//! use std::time::Duration;
//!
//! let mut conn = Connection::open_in_memory()?;
//!
//! // A statement under a context that stays live runs as usual.
//! let (ctx, _cancel) = Context::background().with_timeout(Duration::from_secs(5));
//! let n: i64 = conn.query_row_ctx(&ctx, "SELECT 40 + 2", [], |row| row.get(0))?;
//! assert_eq!(n, 42);
//!
//! // A statement that would never end stops at the deadline, inside SQLite,
//! // with the context's error.
//! let (ctx, _cancel) = Context::background().with_timeout(Duration::from_millis(50));
//! let err = conn
//!     .query_row_ctx(
//!         &ctx,
//!         "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c",
//!         [],
//!         |row| row.get::<_, i64>(0),
//!     )
//!     .unwrap_err();
//! assert_eq!(err.context_error().unwrap().kind(), Kind::DeadlineExceeded);
//!
//! // The connection is ready for the next statement.
//! let n: i64 = conn.query_row("SELECT 1", [], |row| row.get(0))?;
//! assert_eq!(n, 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # How it works
//!
//! One call ([`with_context`](ConnectionExt::with_context)):
//!
//! 1. If the context is already done, the call returns its error at once;
//!    the closure never runs, so no statement reaches SQLite.
//! 2. It installs a progress handler that asks [`Context::is_done`] every
//!    [`PROGRESS_OPS`] virtual-machine instructions, and registers an
//!    after-func ([`Context::after_func`]) that calls the connection's
//!    [`InterruptHandle::interrupt`](rusqlite::InterruptHandle::interrupt).
//!    It then checks the context once more.
//! 3. It runs the closure (catching a panic, to clean up first).
//! 4. It stops the after-func **and waits for it** if it is running
//!    ([`AfterFunc::stop_and_wait`](ctxcore::AfterFunc::stop_and_wait)), then
//!    removes the progress handler.
//! 5. An error of code [`OperationInterrupted`](rusqlite::ErrorCode::OperationInterrupted)
//!    while the context is done becomes [`Error::Context`] (the context's
//!    kind and cause); every other error, and an interrupt the context did
//!    not cause, is [`Error::Driver`].
//!
//! # Pitfalls: why the naive way fails
//!
//! - **`sqlite3_interrupt` alone loses cancels.** It only sets a flag on the
//!   connection, and SQLite *clears* that flag whenever a statement is
//!   prepared or starts stepping while no other statement of the connection
//!   is running (so that an old interrupt cannot hit a new statement). A
//!   cancel that lands after the "is the context done?" check but before the
//!   first step is therefore forgotten, and the statement runs to its end
//!   — forever, for a runaway query. The progress handler closes that
//!   window: it polls the context itself every [`PROGRESS_OPS`] instructions,
//!   so a lost interrupt is caught a few microseconds later.
//! - **Dropping the after-func does not stop it** (as in Go), and merely
//!   *stopping* it is not enough either: a cancel that fired just before the
//!   statement finished may still be running the callback on another thread.
//!   If the call returned then, the late `interrupt()` could land while the
//!   *next* statement on the connection runs — someone else's query,
//!   failing with an interrupt nobody asked for. `stop_and_wait` returns only
//!   once the callback cannot run any more; an interrupt that already landed
//!   on an idle connection is cleared by SQLite when the next statement
//!   starts. The `&mut Connection` receiver guarantees that no other
//!   statement of the connection is mid-step outside the call, so the flag
//!   cannot survive into it.
//! - **Deadlines need no timer round trip.** `is_done` reads the clock on a
//!   context with a deadline, so the progress handler stops a statement at
//!   its deadline even before the timer thread's callback interrupts it.
//! - **Not every error after a cancel is the context's.** A syntax error or
//!   a constraint violation stays the driver's error even if the context is
//!   done by the time it is seen; only an interrupted statement is reported
//!   as the context's error.
//! - **Granularity.** A statement that was already running when the context
//!   became done stops at once (the interrupt). A statement that starts
//!   after the context is done (later in the same closure) runs at most
//!   [`PROGRESS_OPS`] instructions before the progress handler stops it; one
//!   shorter than that completes, and its result is returned.
//!
//! # The progress handler
//!
//! The connection's progress handler belongs to this module while a call
//! runs: one installed before the call is replaced, and none is installed
//! afterwards (rusqlite cannot read the previous one back). Do not install
//! your own inside the closure: that would disable the fallback. For the same
//! reason, a call nested inside another's closure (on the connection the
//! closure was given) removes the outer call's progress handler when it
//! returns: the outer call is then still interrupted by its after-func, but
//! without the fallback. Run the inner statements directly on the connection
//! instead: the outer context already covers them.
//!
//! [`Error::Context`]: crate::Error::Context
//! [`Error::Driver`]: crate::Error::Driver

use std::panic::{self, AssertUnwindSafe};

use ctxcore::Context;
use rusqlite::{Connection, ErrorCode, Params, Row};

/// The error of a statement run under a context: the context's error with
/// its cause, or rusqlite's own error.
///
/// ```
/// use ctxcore_sql::rusqlite::Error;
///
/// let err: Error = ctxcore_sql::Error::Driver(rusqlite::Error::QueryReturnedNoRows);
/// assert!(!err.is_context());
/// ```
pub type Error = crate::Error<rusqlite::Error>;

/// The result of a statement run under a context.
///
/// ```
/// use ctxcore_sql::rusqlite::Result;
///
/// let ok: Result<i64> = Ok(1);
/// assert!(ok.is_ok());
/// ```
pub type Result<T, E = Error> = core::result::Result<T, E>;

/// How many SQLite virtual-machine instructions run between two calls of the
/// progress handler that polls the context.
///
/// The handler is the fallback for an interrupt that SQLite dropped (see the
/// [module docs](self)); it costs one atomic load (plus a clock read on a
/// context with a deadline) per call. Measured (`benches/rusqlite.rs`, a
/// recursive CTE counting to 100,000, release build, polling a deadline
/// context): every 100 instructions costs about 15% on a CPU-bound
/// statement, every 1,000 or 10,000 is within noise. At 1,000 a cancel that
/// SQLite dropped is caught about 10 µs later (p50; p99 17 µs, in
/// `examples/figures_rusqlite.rs`), against about 120 µs p50 for the interrupt
/// itself to land from another thread — so 1,000 keeps the fallback free
/// without making it the slow path.
///
/// ```
/// assert!(ctxcore_sql::rusqlite::PROGRESS_OPS > 0);
/// ```
pub const PROGRESS_OPS: i32 = 1000;

mod sealed {
    pub trait Sealed {}
    impl Sealed for rusqlite::Connection {}
}

/// Runs statements on a [`Connection`] under a [`Context`]. See the
/// [module docs](self).
///
/// ```
/// use ctxcore::Context;
/// use ctxcore_sql::rusqlite::ConnectionExt;
///
/// let mut conn = rusqlite::Connection::open_in_memory()?;
/// let (ctx, _cancel) = Context::background().with_cancel();
/// conn.execute_batch_ctx(&ctx, "CREATE TABLE t (x INTEGER)")?;
/// assert_eq!(conn.execute_ctx(&ctx, "INSERT INTO t VALUES (?1)", [7])?, 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait ConnectionExt: sealed::Sealed {
    /// Runs `f` over the connection under `ctx`: any statement it runs is
    /// interrupted inside SQLite when `ctx` is done.
    ///
    /// If `ctx` is already done, returns its error at once without calling
    /// `f`. An error of `f` that is SQLite's interrupt while `ctx` is done
    /// becomes [`Error::Context`](crate::Error::Context); any other error of
    /// `f` is [`Error::Driver`](crate::Error::Driver). When the call returns
    /// (or unwinds, if `f` panics), no interrupt of this call can reach the
    /// connection any more.
    ///
    /// ```
    /// use ctxcore::Context;
    /// use ctxcore_sql::rusqlite::ConnectionExt;
    ///
    /// let mut conn = rusqlite::Connection::open_in_memory()?;
    /// let (ctx, _cancel) = Context::background().with_cancel();
    /// let total: i64 = conn.with_context(&ctx, |conn| {
    ///     let tx = conn.transaction()?;
    ///     tx.execute_batch("CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (1), (2);")?;
    ///     let total = tx.query_row("SELECT sum(x) FROM t", [], |row| row.get(0))?;
    ///     tx.commit()?;
    ///     Ok(total)
    /// })?;
    /// assert_eq!(total, 3);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    fn with_context<T, F>(&mut self, ctx: &Context, f: F) -> Result<T>
    where
        F: FnOnce(&mut Connection) -> rusqlite::Result<T>;

    /// [`Connection::execute`] under `ctx`: the number of rows changed.
    ///
    /// ```
    /// use ctxcore::Context;
    /// use ctxcore_sql::rusqlite::ConnectionExt;
    ///
    /// let mut conn = rusqlite::Connection::open_in_memory()?;
    /// conn.execute_batch("CREATE TABLE t (x INTEGER)")?;
    /// let (ctx, cancel) = Context::background().with_cancel();
    /// cancel.cancel_with("request aborted");
    /// let err = conn.execute_ctx(&ctx, "INSERT INTO t VALUES (1)", []).unwrap_err();
    /// assert_eq!(err.to_string(), "context canceled: request aborted");
    /// // The INSERT never ran.
    /// let n: i64 = conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0))?;
    /// assert_eq!(n, 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    fn execute_ctx<P: Params>(&mut self, ctx: &Context, sql: &str, params: P) -> Result<usize>;

    /// [`Connection::execute_batch`] under `ctx`.
    ///
    /// ```
    /// use ctxcore::Context;
    /// use ctxcore_sql::rusqlite::ConnectionExt;
    ///
    /// let mut conn = rusqlite::Connection::open_in_memory()?;
    /// let (ctx, _cancel) = Context::background().with_cancel();
    /// conn.execute_batch_ctx(&ctx, "CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (1);")?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    fn execute_batch_ctx(&mut self, ctx: &Context, sql: &str) -> Result<()>;

    /// [`Connection::query_row`] under `ctx`.
    ///
    /// ```
    /// use ctxcore::Context;
    /// use ctxcore_sql::rusqlite::ConnectionExt;
    ///
    /// let mut conn = rusqlite::Connection::open_in_memory()?;
    /// let (ctx, _cancel) = Context::background().with_cancel();
    /// let s: String = conn.query_row_ctx(&ctx, "SELECT upper(?1)", ["abc"], |r| r.get(0))?;
    /// assert_eq!(s, "ABC");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    fn query_row_ctx<T, P, F>(&mut self, ctx: &Context, sql: &str, params: P, f: F) -> Result<T>
    where
        P: Params,
        F: FnOnce(&Row<'_>) -> rusqlite::Result<T>;
}

impl ConnectionExt for Connection {
    fn with_context<T, F>(&mut self, ctx: &Context, f: F) -> Result<T>
    where
        F: FnOnce(&mut Connection) -> rusqlite::Result<T>,
    {
        run(self, ctx, f)
    }

    fn execute_ctx<P: Params>(&mut self, ctx: &Context, sql: &str, params: P) -> Result<usize> {
        run(self, ctx, |conn| conn.execute(sql, params))
    }

    fn execute_batch_ctx(&mut self, ctx: &Context, sql: &str) -> Result<()> {
        run(self, ctx, |conn| conn.execute_batch(sql))
    }

    fn query_row_ctx<T, P, F>(&mut self, ctx: &Context, sql: &str, params: P, f: F) -> Result<T>
    where
        P: Params,
        F: FnOnce(&Row<'_>) -> rusqlite::Result<T>,
    {
        run(self, ctx, |conn| conn.query_row(sql, params, f))
    }
}

fn run<T, F>(conn: &mut Connection, ctx: &Context, f: F) -> Result<T>
where
    F: FnOnce(&mut Connection) -> rusqlite::Result<T>,
{
    if let Some(e) = ctx.error() {
        return Err(crate::Error::Context(e));
    }
    // The fallback first, so that no moment is left uncovered: from here on
    // a statement that steps while the context is done is stopped within
    // PROGRESS_OPS instructions, interrupt or no interrupt.
    let polled = ctx.clone();
    conn.progress_handler(PROGRESS_OPS, Some(move || polled.is_done()))
        .map_err(crate::Error::Driver)?;
    let handle = conn.get_interrupt_handle();
    let interrupt = ctx.after_func(move || handle.interrupt());

    let outcome = if ctx.is_done() {
        None
    } else {
        Some(panic::catch_unwind(AssertUnwindSafe(|| f(conn))))
    };

    // No interrupt of this call may reach the connection after we return.
    interrupt.stop_and_wait();
    let removed = conn.progress_handler(0, None::<fn() -> bool>);

    let result = match outcome {
        None => return Err(context_error(ctx)),
        Some(Ok(result)) => result,
        Some(Err(panic)) => panic::resume_unwind(panic),
    };
    match result {
        Ok(v) => {
            removed.map_err(crate::Error::Driver)?;
            Ok(v)
        }
        Err(e) if e.sqlite_error_code() == Some(ErrorCode::OperationInterrupted) => match ctx.error() {
            Some(ce) => Err(crate::Error::Context(ce)),
            None => Err(crate::Error::Driver(e)),
        },
        Err(e) => Err(crate::Error::Driver(e)),
    }
}

/// The context's error; only called once `is_done` said true, which never
/// goes back.
fn context_error(ctx: &Context) -> Error {
    match ctx.error() {
        Some(e) => crate::Error::Context(e),
        // Unreachable by the core's contract; stay total all the same.
        None => crate::Error::Context(ctxcore::ContextError::from_error(ctxcore::Error::Canceled)),
    }
}
