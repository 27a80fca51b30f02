//! sqlx (PostgreSQL) queries that really stop: when the context is done, the
//! server is told to cancel the statement, and the call returns the context's
//! error with its cause.
//!
//! sqlx has no cancel API of its own (the backend's process id and cancel key
//! it receives at start-up are private), so this module does it the way the
//! server allows from SQL: it reads the backend's pid once per [`Conn`]
//! (`SELECT pg_backend_pid()`, on the first query, together with the
//! connection's `statement_timeout`) and, when the context is
//! done while a query is in flight, runs `SELECT pg_cancel_backend(pid)` over a
//! small pool of its own (the *cancel pool*, at most two connections, opened
//! lazily with the same options): never over the pool the query came from,
//! which may be exhausted by the very queries that need cancelling.
//!
//! # Example
//!
//! ```no_run
//! use ctxcore::Context;
//! use ctxcore_sql::sqlx::Pool;
//! use sqlx::postgres::PgPoolOptions;
//! use sqlx::Row;
//! use std::time::Duration;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let pg = PgPoolOptions::new().max_connections(4).connect("postgres://postgres@127.0.0.1/app").await?;
//! let pool = Pool::new(pg);
//!
//! let (request, _cancel) = Context::background().with_timeout(Duration::from_millis(200));
//! let mut conn = pool.acquire(&request).await?;
//! match conn.fetch_one(&request, sqlx::query("SELECT pg_sleep(30), 1 AS one")).await {
//!     Ok(row) => println!("{}", row.get::<i32, _>("one")),
//!     // The server stopped the statement after 200 ms; the connection is fine.
//!     Err(e) if e.is_context() => assert!(e.context_error().unwrap().is_deadline_exceeded()),
//!     Err(e) => return Err(e.into()),
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Typed results go through [`Conn::run`], which hands the connection to a
//! closure:
//!
//! ```no_run
//! # use ctxcore::Context;
//! # async fn demo(pool: ctxcore_sql::sqlx::Pool, ctx: Context) -> Result<(), ctxcore_sql::Error<sqlx::Error>> {
//! let mut conn = pool.acquire(&ctx).await?;
//! let names: Vec<(i64, String)> = conn
//!     .run(&ctx, |c| Box::pin(sqlx::query_as("SELECT id, name FROM users").fetch_all(c)))
//!     .await?;
//! # Ok(())
//! # }
//! ```
//!
//! # What a call does
//!
//! 1. A context already done returns [`Error::Context`] at once: nothing is
//!    sent to the server.
//! 2. With a deadline, `statement_timeout` is set to the time left (rounded up
//!    to the millisecond) with `set_config(.., false)`, and the previous value
//!    is put back after the statement (see *statement_timeout* below; in a
//!    failed transaction, see *A failed transaction*).
//! 3. An after-func registered on the context starts the cancel (a task on
//!    the tokio runtime the [`Conn`] was acquired on) while the query is in
//!    flight.
//! 4. The query is awaited to its end in every case: the connection is never
//!    handed back while the server may still be running the statement.
//! 5. The after-func is stopped and waited for ([`ctxcore::AfterFunc::stop_wait`])
//!    and every `pg_cancel_backend` statement that was sent is awaited to its
//!    answer, before the call returns or the connection runs anything else.
//! 6. A `57014 query_canceled` error on a context that is done becomes
//!    [`Error::Context`] with the context's error and cause (a statement
//!    timeout on a context whose deadline has passed is `DeadlineExceeded`).
//!    Anything else, a syntax error or a constraint violation, is
//!    [`Error::Driver`], even if the context is done by then; a query that
//!    finished before the cancel landed returns its rows.
//!
//! # Pitfalls: why the naive ways fail
//!
//! - **Dropping the future does not stop the query.** `ctx.run(query)` or
//!   `tokio::time::timeout(query)` drop sqlx's future, but the statement keeps
//!   running on the server. sqlx only notices on the connection's next use
//!   (it drains the pending answer first), so a pooled connection comes back
//!   to the pool still busy for up to the statement's full length — or, since
//!   the pool pings it on release, the next user waits for it, or gets the
//!   abandoned statement's error. Here the cancel reaches the server and the
//!   answer is drained before the connection is used again.
//! - **`pg_cancel_backend` is asynchronous.** It sends SIGINT to the backend
//!   and returns; the backend acts on it at its next interrupt check. A cancel
//!   that is still on its way when the query ends could hit the *next*
//!   statement on that connection — another request's, once the connection is
//!   back in the pool. This module only ever sends a cancel while its own query
//!   is in flight, and awaits the cancel statement's answer before the
//!   connection runs anything else. When that answer arrives, `kill()` has
//!   been called, so the backend handles the signal before it can read the
//!   next command; a cancel that arrives while the backend is idle, reading a
//!   command, is ignored by PostgreSQL: `ProcessInterrupts` in
//!   `src/backend/tcop/postgres.c` ("If we are reading a command from the
//!   client, just ignore the cancel request") and `PostgresMain` step (5)
//!   ("Query cancel is supposed to be a no-op when there is no query in
//!   progress, so if a query cancel arrived while we were idle, just reset
//!   QueryCancelPending"). The 1,000-query test (`tests/sqlx_pool.rs`) checks
//!   it on a pool of four connections; with the await of the cancel statement
//!   removed, it fails every time (other requests' queries get `57014`).
//! - **The mirror image: a cancel too early is lost.** For the same reason a
//!   cancel that reaches the backend between the messages of an
//!   extended-protocol query (`Parse`, `Bind`, `Execute`, all read "idle")
//!   is ignored and the statement then runs to its end. The cancel is
//!   therefore sent again (after 5 ms, 10 ms, … at most every 500 ms) until
//!   the query has answered.
//! - **Cancelling over the query's own pool can deadlock**: with every
//!   connection busy with a statement to cancel, the cancel waits for a
//!   connection forever. Hence the separate cancel pool.
//! - **Waiting for a cancel connection must not hold the call.** With no
//!   cancel connection free (all busy, or the server refusing new ones), the
//!   acquire would only give up after the cancel pool's `acquire_timeout`
//!   (5 s for the built-in one, 30 s by sqlx's default). The cancel task
//!   therefore acquires its connection first, holding nothing; once the query
//!   has answered (at the latest when `statement_timeout` stops it at the
//!   deadline) a task still acquiring, or waiting to resend, is aborted, as it
//!   has sent nothing; only a `pg_cancel_backend` actually being sent is
//!   awaited. Without a deadline and with no cancel connection, the statement
//!   runs on until one is free.
//! - **`SET statement_timeout` leaks** to the next user of a pooled connection
//!   unless it is put back; and a cancel landing on the statement that puts it
//!   back would leave it set. The old value is restored only after every
//!   cancel has been answered; if that fails, the next call on the [`Conn`]
//!   tries again, and a [`Conn`] dropped with the setting still changed
//!   restores it (or closes the connection) before the pool gets it back. Inside
//!   a failed transaction the restore fails with `25P02`; it is kept and done
//!   after the statement that ends the transaction, since the rollback goes
//!   back to the value at `BEGIN`, which is a deadline's own when the `BEGIN`
//!   ran under one (a [`Conn`] dropped still in the failed transaction closes
//!   its connection). See also *A failed transaction* below.
//!
//! # A dropped future
//!
//! If the future of a call is dropped while its query is in flight, the query
//! is still cancelled: the drop starts the cancel (whatever the context's
//! state), and the [`Conn`] remembers it. Its next call (or [`Conn::settle`])
//! first waits for that cancel to be answered, then drains the abandoned
//! statement's answer (its `57014` is discarded) and puts `statement_timeout`
//! back. A statement dropped before sqlx even flushed it is still in sqlx's
//! write buffer, and the drain is what sends it: the drain therefore runs
//! under a cancel of its own, answered before anything else is sent; a [`Conn`] dropped in that state does the same in a task of its own
//! before its connection goes back to the pool (or closes it if that fails).
//!
//! A future that is *leaked* (`mem::forget`, or kept in a task that never
//! polls it again) never settles: its after-func stays registered on its
//! context. Its cancel must not hit whatever the connection runs next, so
//! every [`Conn`] keeps a generation number shared with its cancels: it is
//! bumped before each call sets anything up (and by [`Conn::settle`] and the
//! drop of the [`Conn`]), and a cancel sends `pg_cancel_backend` only while
//! the generation is still the one of its own query, under a lock that the
//! bump takes too. A bump thus waits for a cancel statement in flight to be
//! answered (after which the backend ignores it, as above), and no cancel of
//! an older query is sent after it.
//!
//! # A failed transaction
//!
//! In a failed transaction (`25P02`) the server refuses every statement but
//! `ROLLBACK` and `COMMIT` (and `ROLLBACK TO SAVEPOINT`), the module's own
//! included. When the `statement_timeout` set-up or the `pg_backend_pid()`
//! read fails with `25P02`, the call still runs the user's statement, without
//! `statement_timeout` (those statements are instant), so that a `ROLLBACK`
//! under a deadline gets the connection out of the transaction; any other
//! statement gets the server's `25P02` as [`Error::Driver`]. If the pid was
//! never read (a connection [attached](Pool::attach), or acquired, already in
//! a failed transaction), that statement **cannot be cancelled**: nothing
//! stops it but its own end, so do no more than end the transaction in such a
//! call (a `run` closure that rolls back to a savepoint and then runs a long
//! query would run it unguarded). The pid is read on the next call.
//!
//! # statement_timeout
//!
//! With a deadline, each call costs two more round trips: one to set
//! `statement_timeout` (it also reads the old value), one to put it back. The
//! server then stops the statement on its own at the deadline, with no cancel
//! round trip and even if the client stalls; the after-func cancel still runs
//! when the deadline passes on the client. A context without a deadline sets
//! nothing.
//!
//! # Cost
//!
//! One `pg_backend_pid()` round trip per [`Conn`] (keep a [`Conn`] for the
//! length of a request rather than acquiring one per query); per query without
//! a deadline, one after-func registration and its stop, plus two small
//! allocations: measured here (`benches/sqlx.rs`, 2 shared cores) at about
//! 0.5–1 µs of client-side work per call, lost in the noise of a loopback
//! `SELECT 1` (30–70 µs). A deadline adds the two `statement_timeout` round
//! trips. A cancel returns in about 0.3 ms at the median
//! (`examples/figures_sqlx.rs`).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ctxcore::{AfterFunc, Context};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions, PgQueryResult, PgRow, Postgres};
use sqlx::{Connection as _, Execute, Executor as _};
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use crate::Error;

/// The future a [`Conn::run`] closure returns: sqlx's own executor futures,
/// boxed (as sqlx's `Executor` methods already return them).
pub type QueryFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, sqlx::Error>> + Send + 'a>>;

/// The SQLSTATE of `query_canceled`: a cancel request or a statement timeout.
const QUERY_CANCELED: &str = "57014";
/// The SQLSTATE of `in_failed_sql_transaction`.
const IN_FAILED_TRANSACTION: &str = "25P02";
/// The first resend of a cancel that a query outlived; doubled each time.
const FIRST_RESEND: Duration = Duration::from_millis(5);
/// The longest wait between two cancels of the same query.
const MAX_RESEND: Duration = Duration::from_millis(500);
/// How many cancels one abandoned query gets at most (about 30 s of resends).
const MAX_CANCELS: u32 = 64;
/// How many abandoned answers a drain discards at most before giving up.
const MAX_DRAIN: usize = 8;

/// The body of every call: steps 1 to 6 of the [module docs](self), with the
/// query written inline so that it may borrow the connection for just as long
/// as it runs.
macro_rules! guarded {
    ($self:ident, $ctx:ident, |$c:ident| $query:expr) => {{
        let ctx: &Context = $ctx;
        let Conn { conn, state } = $self;
        let conn: &mut PgConnection = match conn.as_deref_mut() {
            Some(c) => c,
            None => return Err(Error::Driver(sqlx::Error::PoolClosed)),
        };
        let pending = state.arm(conn, ctx).await?;
        let mut guard = InFlight {
            state: &mut *state,
            pending: Some(pending),
            answered: false,
        };
        // 4. The query, to its end.
        let result = {
            let $c: &mut PgConnection = &mut *conn;
            $query.await
        };
        guard.answered = true;
        // 5. No cancel is running or on its way once this returns.
        if let Some(p) = &guard.pending {
            p.settle().await;
        }
        guard.pending = None;
        drop(guard);
        state.restore_timeout(conn).await;
        // 6. The error mapping.
        match result {
            Ok(v) => Ok(v),
            Err(e) => Err(map_error(ctx, e).await),
        }
    }};
}

mod pool;
pub use pool::Pool;

/// A pooled connection that runs queries under a context, with its backend's
/// pid (read on the first query) and the cancel pool.
///
/// Dropping it (anywhere, even off the runtime) returns the connection to
/// the pool; if a query of it was
/// abandoned (its future dropped mid-query) or `statement_timeout` is still
/// changed, a task first waits for the cancel, drains the connection and
/// restores the setting (closing the connection if that fails). See the
/// [module docs](self).
///
/// ```no_run
/// use ctxcore::Context;
/// use sqlx::Row;
///
/// # async fn demo(pool: ctxcore_sql::sqlx::Pool) -> Result<(), ctxcore_sql::Error<sqlx::Error>> {
/// let ctx = Context::background();
/// let mut conn = pool.acquire(&ctx).await?;
/// let row = conn.fetch_one(&ctx, sqlx::query("SELECT $1::int4 + 1 AS n").bind(41)).await?;
/// assert_eq!(row.get::<i32, _>("n"), 42);
/// # Ok(())
/// # }
/// ```
pub struct Conn {
    /// `None` only inside `Drop`.
    conn: Option<PoolConnection<Postgres>>,
    state: State,
}

/// What a [`Conn`] remembers between queries.
struct State {
    pid: Option<i32>,
    cancel: PgPool,
    rt: Handle,
    /// The cancel of the last query, if one may still be in flight (a query
    /// abandoned mid-flight, or a call whose tail was dropped).
    pending: Option<Pending>,
    /// A query was abandoned mid-flight: its answer is still to be drained.
    abandoned: bool,
    /// The `statement_timeout` to put back, when it is changed.
    restore: Option<String>,
    /// The `statement_timeout` the connection had on the first call.
    baseline: Option<String>,
    /// The generation of this connection's cancels, shared with every
    /// [`Slot`] of it.
    gen: Arc<Generation>,
}

/// Which query of a [`Conn`] a cancel may still hit. Bumped (under `send`)
/// before the connection is set up for a new statement and before it goes
/// back to the pool; a [`Slot`] sends `pg_cancel_backend` only under `send`
/// and while the generation is the one it was made in. So a cancel whose call
/// was leaked (`mem::forget`, never settled) stops at the next call, and a
/// bump waits for a cancel statement in flight to be answered.
struct Generation {
    current: AtomicU64,
    send: tokio::sync::Mutex<()>,
}

impl Generation {
    /// Waits for a cancel statement in flight, then retires every slot made
    /// so far.
    async fn bump(&self) {
        let _sending = self.send.lock().await;
        self.current.fetch_add(1, Ordering::AcqRel);
    }
}

/// A cancel that must be settled before the connection runs anything else.
struct Pending {
    /// The after-func that starts the cancel when the context is done (none
    /// for the cancel of a drain, or without a pid).
    after: Option<AfterFunc>,
    /// None when the pid could not be read (a failed transaction on the
    /// connection's first call): nothing can cancel that statement.
    slot: Option<Arc<Slot>>,
}

/// How many `pg_cancel_backend` statements were sent, by every [`Conn`] of
/// this process (for tests and figures).
static CANCELS_SENT: AtomicU64 = AtomicU64::new(0);

/// How many `pg_cancel_backend` statements this process has sent so far.
///
/// ```
/// let before = ctxcore_sql::sqlx::cancels_sent();
/// assert!(ctxcore_sql::sqlx::cancels_sent() >= before);
/// ```
pub fn cancels_sent() -> u64 {
    CANCELS_SENT.load(Ordering::Relaxed)
}

impl Conn {
    fn with_runtime(conn: PoolConnection<Postgres>, cancel: PgPool, rt: Handle) -> Self {
        Conn {
            conn: Some(conn),
            state: State {
                pid: None,
                cancel,
                rt,
                pending: None,
                abandoned: false,
                restore: None,
                baseline: None,
                gen: Arc::new(Generation {
                    current: AtomicU64::new(0),
                    send: tokio::sync::Mutex::new(()),
                }),
            },
        }
    }

    /// The backend's pid, once the first query has read it.
    ///
    /// ```no_run
    /// # async fn demo(mut conn: ctxcore_sql::sqlx::Conn) -> Result<(), ctxcore_sql::Error<sqlx::Error>> {
    /// let ctx = ctxcore::Context::background();
    /// conn.execute(&ctx, sqlx::query("SELECT 1")).await?;
    /// println!("backend {}", conn.pid().unwrap());
    /// # Ok(())
    /// # }
    /// ```
    pub fn pid(&self) -> Option<i32> {
        self.state.pid
    }

    /// Runs `query` under `ctx` and returns what it did (rows affected).
    ///
    /// ```no_run
    /// # async fn demo(mut conn: ctxcore_sql::sqlx::Conn, ctx: ctxcore::Context) -> Result<(), ctxcore_sql::Error<sqlx::Error>> {
    /// let done = conn.execute(&ctx, sqlx::query("DELETE FROM sessions WHERE expired")).await?;
    /// println!("{} rows deleted", done.rows_affected());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn execute<'q, E>(&mut self, ctx: &Context, query: E) -> Result<PgQueryResult, Error<sqlx::Error>>
    where
        E: Execute<'q, Postgres> + 'q,
    {
        guarded!(self, ctx, |c| c.execute(query))
    }

    /// Runs `query` under `ctx` and returns all its rows.
    ///
    /// ```no_run
    /// # async fn demo(mut conn: ctxcore_sql::sqlx::Conn, ctx: ctxcore::Context) -> Result<(), ctxcore_sql::Error<sqlx::Error>> {
    /// let rows = conn.fetch_all(&ctx, sqlx::query("SELECT generate_series(1, 3)")).await?;
    /// assert_eq!(rows.len(), 3);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn fetch_all<'q, E>(&mut self, ctx: &Context, query: E) -> Result<Vec<PgRow>, Error<sqlx::Error>>
    where
        E: Execute<'q, Postgres> + 'q,
    {
        guarded!(self, ctx, |c| c.fetch_all(query))
    }

    /// Runs `query` under `ctx` and returns its one row (sqlx's `RowNotFound`
    /// as [`Error::Driver`] when there is none).
    ///
    /// ```no_run
    /// # async fn demo(mut conn: ctxcore_sql::sqlx::Conn, ctx: ctxcore::Context) -> Result<(), ctxcore_sql::Error<sqlx::Error>> {
    /// let row = conn.fetch_one(&ctx, sqlx::query("SELECT now()")).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn fetch_one<'q, E>(&mut self, ctx: &Context, query: E) -> Result<PgRow, Error<sqlx::Error>>
    where
        E: Execute<'q, Postgres> + 'q,
    {
        guarded!(self, ctx, |c| c.fetch_one(query))
    }

    /// Runs `query` under `ctx` and returns its first row, if any.
    ///
    /// ```no_run
    /// # async fn demo(mut conn: ctxcore_sql::sqlx::Conn, ctx: ctxcore::Context) -> Result<(), ctxcore_sql::Error<sqlx::Error>> {
    /// let row = conn.fetch_optional(&ctx, sqlx::query("SELECT 1 WHERE false")).await?;
    /// assert!(row.is_none());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn fetch_optional<'q, E>(&mut self, ctx: &Context, query: E) -> Result<Option<PgRow>, Error<sqlx::Error>>
    where
        E: Execute<'q, Postgres> + 'q,
    {
        guarded!(self, ctx, |c| c.fetch_optional(query))
    }

    /// Runs whatever `f` does with the connection under `ctx`: `query_as`,
    /// `query_scalar`, several statements. `f` is called once, after the
    /// context check and the `statement_timeout` set-up; everything its
    /// future sends is covered by the cancel. A transaction may be begun
    /// inside (it is rolled back when the future ends without a commit).
    ///
    /// Under a context with a deadline, the `statement_timeout` in force
    /// before the call is put back after it: a `SET statement_timeout` that
    /// `f` runs holds for the statements after it in `f` (in place of the
    /// deadline's) but does not outlive the call. To change it for good, run
    /// it under a context without a deadline (nothing is set or put back
    /// then), or on [`get_mut`](Self::get_mut) after [`settle`](Self::settle).
    ///
    /// ```no_run
    /// # async fn demo(mut conn: ctxcore_sql::sqlx::Conn, ctx: ctxcore::Context) -> Result<(), ctxcore_sql::Error<sqlx::Error>> {
    /// let n: i64 = conn
    ///     .run(&ctx, |c| Box::pin(sqlx::query_scalar("SELECT count(*) FROM users").fetch_one(c)))
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn run<T, F>(&mut self, ctx: &Context, f: F) -> Result<T, Error<sqlx::Error>>
    where
        F: for<'c> FnOnce(&'c mut PgConnection) -> QueryFuture<'c, T>,
    {
        guarded!(self, ctx, |c| f(c))
    }

    /// Waits for the cancel of an abandoned query, drains its answer and puts
    /// `statement_timeout` back: what the next call does first anyway. Use it
    /// before [`get_mut`](Self::get_mut) after a dropped call.
    ///
    /// ```no_run
    /// # async fn demo(mut conn: ctxcore_sql::sqlx::Conn) -> Result<(), sqlx::Error> {
    /// conn.settle().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn settle(&mut self) -> Result<(), sqlx::Error> {
        let Conn { conn, state } = self;
        match conn {
            Some(c) => {
                state.settle(c).await?;
                state.restore_timeout(c).await;
                Ok(())
            }
            None => Err(sqlx::Error::PoolClosed),
        }
    }

    /// The sqlx connection, for what needs no context. Nothing here guards
    /// it: after a dropped call, [`settle`](Self::settle) first.
    ///
    /// ```no_run
    /// use sqlx::Connection;
    /// # async fn demo(mut conn: ctxcore_sql::sqlx::Conn) -> Result<(), sqlx::Error> {
    /// conn.settle().await?;
    /// if let Some(c) = conn.get_mut() {
    ///     c.ping().await?;
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn get_mut(&mut self) -> Option<&mut PgConnection> {
        self.conn.as_deref_mut()
    }
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conn")
            .field("pid", &self.state.pid)
            .field("cancel_pending", &self.state.pending.is_some())
            .field("abandoned", &self.state.abandoned)
            .field("statement_timeout_changed", &self.state.restore.is_some())
            .finish()
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // sqlx's PoolConnection spawns its return to the pool on the current
        // runtime (and panics without one): give it the Conn's runtime, so a
        // Conn may be dropped anywhere.
        let rt = self.state.rt.clone();
        let _entered = rt.enter();
        let Some(mut conn) = self.conn.take() else { return };
        let state = &mut self.state;
        if state.pending.is_none() && !state.abandoned && state.restore.is_none() {
            // Back to the pool as it is, once no cancel of a leaked call can
            // reach it any more.
            let gen = state.gen.clone();
            let bumped = match gen.send.try_lock() {
                Ok(_sending) => {
                    gen.current.fetch_add(1, Ordering::AcqRel);
                    true
                }
                Err(_) => false,
            };
            if !bumped {
                // A cancel statement is in flight: the connection waits for
                // its answer.
                rt.spawn(async move {
                    gen.bump().await;
                    drop(conn);
                });
            }
            return;
        }
        let mut state = State {
            pid: state.pid,
            cancel: state.cancel.clone(),
            rt: state.rt.clone(),
            pending: state.pending.take(),
            abandoned: state.abandoned,
            restore: state.restore.take(),
            baseline: state.baseline.take(),
            gen: state.gen.clone(),
        };
        // The connection goes back to the pool only once nothing of the old
        // query can reach it; closed instead if that cannot be made sure.
        rt.spawn(async move {
            let settled = state.settle(&mut conn).await.is_ok() && {
                state.restore_timeout(&mut conn).await;
                state.restore.is_none()
            };
            if !settled {
                conn.close_on_drop();
            }
        });
    }
}

impl State {
    /// Steps 1 to 3: the context check, the connection settled, the pid, the
    /// statement_timeout, and the cancel armed.
    async fn arm(&mut self, conn: &mut PgConnection, ctx: &Context) -> Result<Pending, Error<sqlx::Error>> {
        // 1. Done before the call: nothing reaches the server.
        if let Some(e) = ctx.error() {
            return Err(Error::Context(e));
        }
        self.settle(conn).await.map_err(Error::Driver)?;
        // A statement dropped before its answer leaves one to drain.
        self.abandoned = true;
        // In a failed transaction (25P02) every statement but ROLLBACK and
        // COMMIT fails: neither the pid nor statement_timeout can be had, and
        // the user's statement runs without them (see the module docs).
        let known = match (self.pid, &self.baseline) {
            (Some(pid), Some(baseline)) => Some((pid, baseline.clone())),
            _ => {
                let r: Result<(i32, String), sqlx::Error> =
                    sqlx::query_as("SELECT pg_backend_pid(), current_setting('statement_timeout')")
                        .fetch_one(&mut *conn)
                        .await;
                match r {
                    Ok((pid, baseline)) => {
                        self.pid = Some(pid);
                        self.baseline = Some(baseline.clone());
                        Some((pid, baseline))
                    }
                    Err(e) if has_sqlstate(&e, IN_FAILED_TRANSACTION) => None,
                    Err(e) => return Err(self.answered(e)),
                }
            }
        };
        // 2. The deadline reaches the server as statement_timeout.
        if let (Some(left), Some((_, baseline))) = (ctx.time_left(), &known) {
            if let Some(e) = ctx.error() {
                self.abandoned = false;
                return Err(Error::Context(e));
            }
            let ms = left.as_nanos().div_ceil(1_000_000).clamp(1, i32::MAX as u128);
            // Until the answer says what it was, the value to put back is the
            // one this connection had on its first call.
            let fresh = self.restore.is_none();
            if fresh {
                self.restore = Some(baseline.clone());
            }
            // The old value is read in a fenced subquery (OFFSET 0), before
            // the outer target list changes it.
            let r: Result<(String, String), sqlx::Error> = sqlx::query_as(
                "SELECT o.old, set_config('statement_timeout', $1, false) \
                 FROM (SELECT current_setting('statement_timeout') AS old OFFSET 0) AS o",
            )
            .bind(format!("{ms}ms"))
            .fetch_one(&mut *conn)
            .await;
            match r {
                Ok((old, _new)) => {
                    if fresh {
                        self.restore = Some(old);
                    }
                }
                // Nothing was changed: nothing to put back.
                Err(e) if has_sqlstate(&e, IN_FAILED_TRANSACTION) => {
                    if fresh {
                        self.restore = None;
                    }
                }
                Err(e) => return Err(self.answered(e)),
            }
        }
        self.abandoned = false;
        if let Some(e) = ctx.error() {
            self.restore_timeout(conn).await;
            return Err(Error::Context(e));
        }
        // 3. The cancel, armed for the time the query is in flight.
        let slot = known.map(|(pid, _)| Slot::new(pid, &self.cancel, &self.rt, &self.gen));
        let after = slot.as_ref().map(|slot| {
            let slot = slot.clone();
            ctx.after_func(move || slot.fire())
        });
        Ok(Pending { after, slot })
    }

    /// A set-up statement failed with an answer: nothing is left to drain.
    fn answered(&mut self, e: sqlx::Error) -> Error<sqlx::Error> {
        self.abandoned = false;
        Error::Driver(e)
    }

    /// Makes the connection ready for a new statement after an abandoned
    /// call: every cancel answered, the abandoned answer drained.
    async fn settle(&mut self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        // No cancel made before this point sends any more (a leaked call's
        // included), and none is in flight.
        self.gen.bump().await;
        if let Some(p) = &self.pending {
            p.settle().await;
            self.pending = None;
        }
        if self.abandoned {
            // The abandoned statement may still be in sqlx's write buffer, to
            // be flushed by the drain: keep cancelling until it has answered.
            if let Some(pid) = self.pid {
                let slot = Slot::new(pid, &self.cancel, &self.rt, &self.gen);
                slot.fire();
                self.pending = Some(Pending {
                    after: None,
                    slot: Some(slot),
                });
            }
            drain(conn).await?;
            self.abandoned = false;
            if let Some(p) = &self.pending {
                p.settle().await;
                self.pending = None;
            }
        }
        if self.restore.is_some() {
            self.restore_timeout(conn).await;
        }
        Ok(())
    }

    /// Puts `statement_timeout` back; keeps it to retry if that failed. In a
    /// failed transaction (25P02) it is kept too: the rollback goes back to
    /// the value at `BEGIN`, which may be a deadline's (a `BEGIN` run under
    /// one), so it is put back after the statement that ends the transaction.
    async fn restore_timeout(&mut self, conn: &mut PgConnection) {
        let Some(old) = self.restore.clone() else { return };
        // Kept until the answer: a call dropped here restores it next time.
        let r = sqlx::query("SELECT set_config('statement_timeout', $1, false)")
            .bind(old)
            .execute(&mut *conn)
            .await;
        if r.is_ok() {
            self.restore = None;
        }
    }
}

/// Discards the answers of abandoned statements (their errors included).
async fn drain(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    for _ in 0..MAX_DRAIN {
        match conn.ping().await {
            Ok(()) => return Ok(()),
            Err(sqlx::Error::Database(_)) => continue,
            Err(e) => return Err(e),
        }
    }
    conn.ping().await
}

/// The query in flight; dropped before its answer, it cancels the query and
/// leaves the cancel for the connection's next use.
struct InFlight<'a> {
    state: &'a mut State,
    pending: Option<Pending>,
    answered: bool,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let Some(p) = self.pending.take() else { return };
        if !self.answered {
            // Abandoned mid-query: the server must still stop it.
            if let Some(slot) = &p.slot {
                slot.fire();
            }
            self.state.abandoned = true;
        }
        self.state.pending = Some(p);
    }
}

impl Pending {
    /// Once this returns, the after-func will never run again, and every
    /// cancel statement that was sent has been answered.
    async fn settle(&self) {
        if let Some(after) = &self.after {
            after.stop_wait().await;
        }
        if let Some(slot) = &self.slot {
            slot.finish().await;
        }
    }
}

impl fmt::Debug for Pending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pending")
            .field("pid", &self.slot.as_ref().map(|s| s.pid))
            .finish()
    }
}

mod cancel;
use cancel::Slot;

/// Whether `e` is a database error with SQLSTATE `code`.
fn has_sqlstate(e: &sqlx::Error, code: &str) -> bool {
    match e {
        sqlx::Error::Database(db) => db.code().as_deref() == Some(code),
        _ => false,
    }
}

/// A `57014` is the context's error when the context is done (or its
/// deadline is a hair away: the server's clock may run ahead of ours);
/// everything else is the driver's.
async fn map_error(ctx: &Context, e: sqlx::Error) -> Error<sqlx::Error> {
    if !has_sqlstate(&e, QUERY_CANCELED) {
        return Error::Driver(e);
    }
    if let Some(c) = ctx.error() {
        return Error::Context(c);
    }
    if let Some(left) = ctx.time_left() {
        if left <= Duration::from_millis(10) {
            let _ = tokio::time::timeout(left + Duration::from_millis(2), ctx.done()).await;
            if let Some(c) = ctx.error() {
                return Error::Context(c);
            }
        }
    }
    Error::Driver(e)
}
