//! tokio-postgres queries under a [`Context`]: when the context is done, the
//! server really stops the statement, and the connection is clean for the
//! next user.
//!
//! ```no_run
//! use ctxcore::Context;
//! use ctxcore_sql::postgres::{Canceller, ClientExt};
//! use std::time::Duration;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let config: tokio_postgres::Config = "host=127.0.0.1 user=postgres".parse()?;
//! let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
//! tokio::spawn(connection);
//! // Once per server (next to the pool): where to send cancel requests.
//! let cancel = Canceller::new(&config);
//!
//! let (ctx, _handle) = Context::background().with_timeout(Duration::from_millis(200));
//! let err = client.with_ctx(&ctx, &cancel).query("SELECT pg_sleep(30)", &[]).await.unwrap_err();
//! assert!(err.context_error().unwrap().is_deadline_exceeded());
//! // The server stopped the statement; the connection is ready for more.
//! let row = client.query_one("SELECT 1", &[]).await?;
//! # let _ = row; Ok(()) }
//! ```
//!
//! # What a call does
//!
//! [`WithContext::query`] (and `query_one`, `query_opt`, `execute`,
//! `batch_execute`):
//!
//! 1. returns [`Error::Context`] at once, sending nothing, if the context is
//!    already done;
//! 2. if the context has a deadline (and [`WithContext::statement_timeout`]
//!    is on, the default), pipelines a statement in front of its own that
//!    saves the connection's `statement_timeout` on the server and sets it to
//!    the time left in whole milliseconds, less one, so the server stops the
//!    statement by itself just before the deadline, with no extra round trip,
//!    and our after-func is stopped before it opens a cancel connection (a
//!    cancel request costs a new connection and a forked server process, the
//!    pipelined save and restore some 20–40 µs of server time per call: off
//!    with `statement_timeout(false)`); the server's `57014` then waits (at
//!    most a few milliseconds) for the context's own deadline, and the call
//!    returns `DeadlineExceeded` with the context's cause; afterwards a
//!    statement restoring the saved value is queued on the same connection,
//!    ahead of anything its next user sends (see "`statement_timeout` is
//!    saved and restored" below);
//! 3. registers an after-func on the context that sends the server a cancel
//!    request through the [`Canceller`] (a new connection, spawned on the tokio
//!    runtime) when the context is done;
//! 4. awaits the statement's answer: once the context is done it waits at most
//!    [`WithContext::answer_timeout`] for it (normally the server's `57014
//!    query_canceled`; past that bound the call returns `Error::Context`
//!    although the statement may still complete, and commit, on the server:
//!    see [`WithContext::answer_timeout`]); a cancel request can land in a gap where our backend
//!    is idle (between tokio-postgres' prepare round trip and the execute, or
//!    on the pipelined `SET`), where PostgreSQL discards it, so after 50 ms
//!    without an answer, and every 200 ms after that, another one is sent
//!    (only ever while our statement is unanswered, each awaited to its end);
//! 5. stops the after-func *and waits for it* ([`AfterFunc::stop_wait`]), and,
//!    if it ran, awaits the cancel request to its end (the server closing the
//!    cancel connection, see below), bounded by [`Canceller::timeout`];
//! 6. maps the result: `57014` (canceled by us, or the statement timeout once
//!    the context's deadline has passed) becomes `Error::Context` with the
//!    context's error and cause; every other failure is `Error::Driver`, even if
//!    the context is done by then; a statement that completed returns its rows.
//!
//! # Pitfalls (why the naive ways fail)
//!
//! - **Dropping a tokio-postgres future does not stop the server.** Wrapping
//!   `client.query(..)` in `ctx.run(..)`, `select!` or `tokio::time::timeout`
//!   drops the future, but the backend keeps running the statement and the
//!   connection stays busy: the next query on that pooled connection waits
//!   behind it. Only a cancel request (or `statement_timeout`) stops it.
//! - **A late cancel hits the next query.** PostgreSQL cancel requests name a
//!   backend, not a statement. `CancelToken::cancel_query` returns as soon as it
//!   has *written* the request; the postmaster signals the backend a little
//!   later. If the statement finished meanwhile and the connection went back to
//!   the pool, the signal cancels whatever its next user runs. The
//!   [`Canceller`] therefore opens the cancel connection itself and waits until
//!   the server *closes* it: the postmaster child closes it only after it has
//!   sent the signal. (It sends SIGINT twice, to the backend and to its process
//!   group: when the first has already stopped the statement, the second can
//!   stop whatever the backend runs next, if that is already queued. We
//!   observed exactly that in the drop test below.) A signal that reaches an
//!   idle backend (one waiting for its next command) is discarded by
//!   PostgreSQL, so once this call returns, nothing of ours can land on the
//!   next statement. The after-func is stopped with a wait, so a cancel cannot
//!   be *started* after we return either. `tests/postgres.rs` runs 1,000
//!   randomly cancelled queries on a pool of 4; with the wait for the server's
//!   close removed, some of the queries that were never cancelled fail with
//!   `57014` on every run.
//! - **`statement_timeout` leaks, or `RESET` wipes the user's own.** A `SET`
//!   left on a pooled connection limits every later user; a `RESET` after the
//!   call sets the role's or database's default back, losing a
//!   `statement_timeout` the user had set on the session (or with `SET LOCAL`
//!   in the transaction). See the next section.
//! - **A leaked call stays armed.** A call future that is leaked
//!   (`mem::forget`, or a reference cycle) runs neither to its end nor its
//!   `Drop`: its cancel stays registered on the context until the context is
//!   done or dropped, and cancelling that context later sends a cancel request
//!   for the connection's backend, which stops whatever statement it runs then
//!   (a pooled connection's next user, or another task's statement on a shared
//!   [`Client`]); no statement is cancelled if the backend is idle. There is no
//!   per-connection state to disarm it from; do not leak call futures (or
//!   leak their context with them). `tests/postgres.rs`
//!   (`known_limitation_a_forgotten_call_stays_armed`) shows it.
//! - **A cancel request names a backend, not a caller.** A [`Client`] shared
//!   by concurrent tasks pipelines their statements on one backend: a cancel
//!   stops whichever of them the backend is running. Likewise one call's
//!   pipelined `statement_timeout` also applies to the statements other tasks
//!   pipeline on that client between its save and its restore (with several
//!   calls overlapping, the latest call's setting stays in force until the
//!   last of them is restored; then the user's own value comes back). Give
//!   each task its own connection (a pool) when statements can be cancelled
//!   or have deadlines.
//! - **A cancelled statement is not the only `57014`.** The server's own
//!   `statement_timeout` uses the same code: it is the context's
//!   `DeadlineExceeded` only once the context's deadline has passed; otherwise
//!   (a timeout the user set) it stays the driver's error.
//!
//! # `statement_timeout` is saved and restored
//!
//! The statement pipelined before the call's own saves the current
//! `statement_timeout` in a custom setting of the session
//! (`ctxcore_sql.saved_statement_timeout`, unless another call of ours on the
//! connection is still unrestored: then the user's value is already saved),
//! adds the call's id to `ctxcore_sql.calls`, and sets the timeout; the one
//! queued after it (before the call returns, or from the future's `Drop`)
//! removes the id and, once no call of ours is left, sets the saved value
//! back. Both are `set_config` calls, so the save is only read on the server
//! (no extra round trip, and a dropped future can restore without having
//! seen any answer); the restore is a no-op if its save never ran (cancelled)
//! or it already ran. How far the settings reach:
//!
//! - on a [`Client`] (autocommit), `set_config(.., is_local => false)`, as
//!   `SET`: the user's session value, whatever it was, is back afterwards;
//! - on a [`Transaction`], `set_config(.., is_local => true)`, as `SET LOCAL`:
//!   inside the transaction the value in force before the call (the user's
//!   `SET LOCAL` or `SET`, or the session's) is back afterwards, and at its
//!   end PostgreSQL's own rules apply unchanged (a `SET LOCAL` ends with the
//!   transaction, a `SET` survives a commit); a rollback, or an aborted
//!   transaction (where the restore fails), undoes ours anyway;
//! - a transaction the user opened with a plain `BEGIN` on a [`Client`] is
//!   not seen as one: the session-level restore makes the value in force
//!   before the call (a `SET LOCAL` of that transaction included) the
//!   session's value after a commit. Use `client.transaction()` (a
//!   [`Transaction`]) for statements under a context in a transaction.
//!
//! # If the caller drops the future mid-statement
//!
//! The [`Drop`] of the call's future sends a cancel request (spawned on the
//! runtime) and queues, on the same connection, the `statement_timeout`
//! restore (if it was saved) and a guard statement `SELECT pg_sleep(<drop_guard>)` (100 ms by
//! default, [`WithContext::drop_guard`]). The guard keeps the backend busy
//! while the cancel request travels, so a cancel that arrives after the
//! statement finished (or the second SIGINT of the same request, see above)
//! hits the guard, not the next user's statement; the guard then ends early.
//! The remaining window, stated exactly: a cancel request that takes longer
//! than the guard to reach the server could still cancel the next statement
//! on that connection; and a future dropped while the cancel request is
//! already in flight after its statement finished queues the guard as well.
//! Awaiting the call to its end has no such window.
//!
//! # TLS
//!
//! The cancel connection uses the TLS connector given to
//! [`Canceller::with_tls`] (any `MakeTlsConnect<CancelStream>`, e.g.
//! postgres-native-tls or postgres-openssl's connectors) with the
//! connection's `sslmode`; [`Canceller::new`] uses [`NoTls`].

use core::fmt;
use core::future::{poll_fn, Future};
use core::pin::{pin, Pin};
use core::task::{Context as TaskCx, Poll, Waker};
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ctxcore::{AfterFunc, Context, ContextError, Error as Kind};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::runtime::Handle;
use tokio_postgres::error::SqlState;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::types::ToSql;
use tokio_postgres::{CancelToken, Client, Config, GenericClient, NoTls, Row, ToStatement, Transaction};

/// The error of a query under a context: the context's error, or
/// [`tokio_postgres::Error`].
///
/// ```
/// let err: ctxcore_sql::postgres::Error =
///     ctxcore_sql::Error::Context(ctxcore::ContextError::from_error(ctxcore::Error::Canceled));
/// assert!(err.is_context());
/// ```
pub type Error = crate::Error<tokio_postgres::Error>;

const DEFAULT_CANCEL_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_DROP_GUARD: Duration = Duration::from_millis(100);
/// How long to wait for the context's own deadline to fire once the server's
/// statement timeout said it passed (clock skew between our timer and the
/// server's is at most a millisecond or so).
const DEADLINE_GRACE: Duration = Duration::from_millis(250);
/// How much earlier than the context's deadline the server's statement
/// timeout may fire (it is set a millisecond short, rounded down, when the
/// statement is sent) and still count as the context's deadline.
const STATEMENT_TIMEOUT_EARLY: Duration = Duration::from_millis(3);
/// Once the context is done, how long to wait for the server's answer before
/// sending another cancel request (a cancel request takes a few milliseconds,
/// the answer to a cancelled statement well under one)...
const RECANCEL_FIRST: Duration = Duration::from_millis(50);
/// ... and then between further ones.
const RECANCEL_AFTER: Duration = Duration::from_millis(200);
/// How many times the statement_timeout restore is sent when a late cancel
/// signal interrupts it (one signal per cancel request, and a call sends at
/// most a few).
const RESTORE_ATTEMPTS: usize = 4;

mod cancel;
pub use cancel::{CancelStream, Canceller};

mod sealed {
    pub trait Sealed {}
    impl Sealed for tokio_postgres::Client {}
    impl Sealed for tokio_postgres::Transaction<'_> {}
}

/// Runs statements of a [`Client`] or a [`Transaction`] (and so of a
/// `deadpool_postgres::Object` or its transactions, which deref to them)
/// under a [`Context`]. Sealed.
///
/// ```no_run
/// use ctxcore::Context;
/// use ctxcore_sql::postgres::{Canceller, ClientExt};
///
/// # async fn demo(client: &mut tokio_postgres::Client, cancel: &Canceller) -> Result<(), ctxcore_sql::postgres::Error> {
/// let (ctx, _h) = Context::background().with_timeout(std::time::Duration::from_secs(1));
/// let n = client.with_ctx(&ctx, cancel).execute("DELETE FROM jobs WHERE done", &[]).await?;
/// let tx = client.transaction().await.map_err(ctxcore_sql::Error::Driver)?;
/// tx.with_ctx(&ctx, cancel).execute("UPDATE jobs SET n = n + 1", &[]).await?;
/// tx.commit().await.map_err(ctxcore_sql::Error::Driver)?;
/// # let _ = n; Ok(()) }
/// ```
pub trait ClientExt: GenericClient + Sync + sealed::Sealed + Sized {
    /// The cancel token of the underlying connection.
    #[doc(hidden)]
    fn ctx_cancel_token(&self) -> CancelToken;

    /// Whether statements run inside a transaction block (a
    /// [`Transaction`]): the `statement_timeout` is then set with `SET LOCAL`
    /// semantics.
    #[doc(hidden)]
    fn ctx_in_transaction(&self) -> bool;

    /// Statements run under `ctx`, cancelled through `canceller`. See the
    /// [module docs](self).
    ///
    /// ```no_run
    /// # use ctxcore_sql::postgres::{Canceller, ClientExt};
    /// # async fn demo(client: &tokio_postgres::Client, cancel: &Canceller, ctx: &ctxcore::Context) {
    /// let rows = client.with_ctx(ctx, cancel).query("SELECT 1", &[]).await;
    /// # let _ = rows; }
    /// ```
    fn with_ctx<'a, T>(&'a self, ctx: &'a Context, canceller: &'a Canceller<T>) -> WithContext<'a, Self, T> {
        WithContext {
            client: self,
            ctx,
            canceller,
            statement_timeout: true,
            answer_timeout: DEFAULT_ANSWER_TIMEOUT,
            drop_guard: DEFAULT_DROP_GUARD,
        }
    }
}

impl ClientExt for Client {
    fn ctx_cancel_token(&self) -> CancelToken {
        self.cancel_token()
    }

    fn ctx_in_transaction(&self) -> bool {
        false
    }
}

impl ClientExt for Transaction<'_> {
    fn ctx_cancel_token(&self) -> CancelToken {
        self.cancel_token()
    }

    fn ctx_in_transaction(&self) -> bool {
        true
    }
}

/// A client's statements under a context; made by [`ClientExt::with_ctx`].
/// `Copy`: configure once, run many statements.
///
/// ```no_run
/// # use ctxcore_sql::postgres::{Canceller, ClientExt};
/// # async fn demo(client: &tokio_postgres::Client, cancel: &Canceller, ctx: &ctxcore::Context) {
/// let db = client.with_ctx(ctx, cancel).statement_timeout(false);
/// let one = db.query_one("SELECT 1::int4", &[]).await.unwrap().get::<_, i32>(0);
/// # let _ = one; }
/// ```
pub struct WithContext<'a, C, T = NoTls> {
    client: &'a C,
    ctx: &'a Context,
    canceller: &'a Canceller<T>,
    statement_timeout: bool,
    answer_timeout: Duration,
    drop_guard: Duration,
}

impl<C, T> Clone for WithContext<'_, C, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<C, T> Copy for WithContext<'_, C, T> {}

impl<C, T> fmt::Debug for WithContext<'_, C, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WithContext")
            .field("ctx", self.ctx)
            .field("canceller", self.canceller)
            .field("statement_timeout", &self.statement_timeout)
            .field("answer_timeout", &self.answer_timeout)
            .field("drop_guard", &self.drop_guard)
            .finish_non_exhaustive()
    }
}

/// What the statement's future resolved to, before mapping.
enum Answer<R> {
    Done(Result<R, tokio_postgres::Error>),
    /// The context was done and the server did not answer within the bound.
    NoAnswer,
}

impl<'a, C, T> WithContext<'a, C, T>
where
    C: ClientExt,
    T: MakeTlsConnect<CancelStream> + Clone + Send + Sync + 'static,
    T::Stream: Send,
    T::TlsConnect: Send,
    <T::TlsConnect as tokio_postgres::tls::TlsConnect<CancelStream>>::Future: Send,
{
    /// Whether a context deadline is also sent to the server as
    /// `statement_timeout` (default: on). Off, a deadline is enforced by a
    /// cancel request only.
    ///
    /// ```no_run
    /// # use ctxcore_sql::postgres::{Canceller, ClientExt};
    /// # fn demo(client: &tokio_postgres::Client, cancel: &Canceller, ctx: &ctxcore::Context) {
    /// let db = client.with_ctx(ctx, cancel).statement_timeout(false);
    /// # let _ = db; }
    /// ```
    pub fn statement_timeout(mut self, on: bool) -> Self {
        self.statement_timeout = on;
        self
    }

    /// How long to wait for the server's answer once the context is done and
    /// the cancel request sent (default 5 s). Past it the call returns the
    /// context's error ([`Error::Context`](crate::Error::Context)) while the
    /// statement may still be running: it is *not* known to be stopped, and it
    /// may still complete, and commit (a cancel that never reached its server,
    /// or a statement that does not check for interrupts). The connection stays
    /// usable; its next statement queues behind. Only an answer within the
    /// bound tells a stopped statement (the `57014`) from a finished one.
    ///
    /// ```no_run
    /// # use ctxcore_sql::postgres::{Canceller, ClientExt};
    /// # fn demo(client: &tokio_postgres::Client, cancel: &Canceller, ctx: &ctxcore::Context) {
    /// let db = client.with_ctx(ctx, cancel).answer_timeout(std::time::Duration::from_secs(1));
    /// # let _ = db; }
    /// ```
    pub fn answer_timeout(mut self, bound: Duration) -> Self {
        self.answer_timeout = bound;
        self
    }

    /// The guard statement's length when the call's future is dropped
    /// mid-statement (default 100 ms; see the [module docs](self)).
    ///
    /// ```no_run
    /// # use ctxcore_sql::postgres::{Canceller, ClientExt};
    /// # fn demo(client: &tokio_postgres::Client, cancel: &Canceller, ctx: &ctxcore::Context) {
    /// let db = client.with_ctx(ctx, cancel).drop_guard(std::time::Duration::from_millis(250));
    /// # let _ = db; }
    /// ```
    pub fn drop_guard(mut self, guard: Duration) -> Self {
        self.drop_guard = guard;
        self
    }

    /// Like [`Client::query`], under the context.
    ///
    /// ```no_run
    /// # use ctxcore_sql::postgres::{Canceller, ClientExt};
    /// # async fn demo(client: &tokio_postgres::Client, cancel: &Canceller, ctx: &ctxcore::Context) {
    /// let rows = client.with_ctx(ctx, cancel).query("SELECT $1::text", &[&"hi"]).await.unwrap();
    /// assert_eq!(rows[0].get::<_, &str>(0), "hi");
    /// # }
    /// ```
    pub async fn query<S>(self, statement: &S, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, Error>
    where
        S: ?Sized + ToStatement + Sync + Send,
    {
        self.run(|c| c.query(statement, params)).await
    }

    /// Like [`Client::query_one`], under the context.
    ///
    /// ```no_run
    /// # use ctxcore_sql::postgres::{Canceller, ClientExt};
    /// # async fn demo(client: &tokio_postgres::Client, cancel: &Canceller, ctx: &ctxcore::Context) {
    /// let row = client.with_ctx(ctx, cancel).query_one("SELECT 1::int4", &[]).await.unwrap();
    /// assert_eq!(row.get::<_, i32>(0), 1);
    /// # }
    /// ```
    pub async fn query_one<S>(self, statement: &S, params: &[&(dyn ToSql + Sync)]) -> Result<Row, Error>
    where
        S: ?Sized + ToStatement + Sync + Send,
    {
        self.run(|c| c.query_one(statement, params)).await
    }

    /// Like [`Client::query_opt`], under the context.
    ///
    /// ```no_run
    /// # use ctxcore_sql::postgres::{Canceller, ClientExt};
    /// # async fn demo(client: &tokio_postgres::Client, cancel: &Canceller, ctx: &ctxcore::Context) {
    /// let row = client.with_ctx(ctx, cancel).query_opt("SELECT 1 WHERE false", &[]).await.unwrap();
    /// assert!(row.is_none());
    /// # }
    /// ```
    pub async fn query_opt<S>(self, statement: &S, params: &[&(dyn ToSql + Sync)]) -> Result<Option<Row>, Error>
    where
        S: ?Sized + ToStatement + Sync + Send,
    {
        self.run(|c| c.query_opt(statement, params)).await
    }

    /// Like [`Client::execute`], under the context.
    ///
    /// ```no_run
    /// # use ctxcore_sql::postgres::{Canceller, ClientExt};
    /// # async fn demo(client: &tokio_postgres::Client, cancel: &Canceller, ctx: &ctxcore::Context) {
    /// let n = client.with_ctx(ctx, cancel).execute("UPDATE t SET x = x + 1", &[]).await.unwrap();
    /// # let _ = n; }
    /// ```
    pub async fn execute<S>(self, statement: &S, params: &[&(dyn ToSql + Sync)]) -> Result<u64, Error>
    where
        S: ?Sized + ToStatement + Sync + Send,
    {
        self.run(|c| c.execute(statement, params)).await
    }

    /// Like [`Client::batch_execute`] (simple query protocol, several
    /// statements), under the context.
    ///
    /// ```no_run
    /// # use ctxcore_sql::postgres::{Canceller, ClientExt};
    /// # async fn demo(client: &tokio_postgres::Client, cancel: &Canceller, ctx: &ctxcore::Context) {
    /// client.with_ctx(ctx, cancel).batch_execute("CREATE TABLE t (x int); INSERT INTO t VALUES (1)").await.unwrap();
    /// # }
    /// ```
    pub async fn batch_execute(self, statements: &str) -> Result<(), Error> {
        self.run(|c| c.batch_execute(statements)).await
    }

    /// Runs any tokio-postgres operation on this client under the context,
    /// with everything the other methods do (they are this with one call):
    /// `op` is given the client and must send its requests on it (the cancel
    /// request names this client's backend). The pipelined
    /// `SET statement_timeout` precedes `op`'s first request; an `op` of
    /// several statements is stopped as a whole, and counts as one statement
    /// for the timeout.
    ///
    /// ```no_run
    /// # use ctxcore_sql::postgres::{Canceller, ClientExt};
    /// # async fn demo(client: &tokio_postgres::Client, cancel: &Canceller, ctx: &ctxcore::Context) {
    /// use tokio_postgres::types::Type;
    /// let rows = client
    ///     .with_ctx(ctx, cancel)
    ///     .run(|c| c.query_typed("SELECT $1", &[(&7i32, Type::INT4)]))
    ///     .await
    ///     .unwrap();
    /// # let _ = rows; }
    /// ```
    pub async fn run<R, F, Fut>(self, op: F) -> Result<R, Error>
    where
        F: FnOnce(&'a C) -> Fut,
        Fut: Future<Output = Result<R, tokio_postgres::Error>>,
    {
        let ctx = self.ctx;
        if let Some(e) = ctx.error() {
            return Err(crate::Error::Context(e));
        }
        let rt = Handle::try_current().ok();
        let slot: Arc<Mutex<Option<Context>>> = Arc::new(Mutex::new(None));
        let after = {
            let slot = Arc::clone(&slot);
            let canceller = self.canceller.clone();
            let token = self.client.ctx_cancel_token();
            let rt = rt.clone();
            ctx.after_func(move || {
                let task = spawn_cancel(rt.as_ref(), &canceller, token);
                *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
            })
        };
        let mut guard = InFlight {
            client: self.client,
            canceller: self.canceller,
            spawn: spawn_cancel::<T>,
            rt,
            slot,
            after,
            drop_guard: self.drop_guard,
            call: NEXT_CALL.fetch_add(1, Ordering::Relaxed),
            local: self.client.ctx_in_transaction(),
            sent: false,
            answered: false,
            timeout_set: false,
            finished: false,
        };
        if ctx.is_done() {
            // Cancelled between the check and the registration: the
            // after-func may have started a cancel; nothing was sent, so it
            // lands on an idle backend. Wait for it and report.
            guard.settle().await;
            guard.finished = true;
            return Err(crate::Error::Context(
                ctx.error().unwrap_or(ContextError::from_error(Kind::Canceled)),
            ));
        }

        let timeout_ms = match (self.statement_timeout, ctx.deadline()) {
            // A millisecond short (rounded down): the server's timeout then
            // fires just before our timer, and we stop the after-func before
            // it can open a cancel connection.
            (true, Some(_)) => ctx
                .time_left()
                .map(|d| d.as_millis().saturating_sub(1).clamp(1, i32::MAX as u128) as u64),
            _ => None,
        };
        let set_sql;
        let mut set = match timeout_ms {
            Some(ms) => {
                set_sql = save_timeout_sql(guard.call, ms, guard.local);
                Some(self.client.batch_execute(&set_sql))
            }
            None => None,
        };
        let mut query = pin!(op(self.client));
        // The SET (if any) is polled first, so its request is queued before
        // the statement's.
        let answer = {
            let guard = &mut guard;
            let done = ctx.done();
            let mut done = pin!(done);
            let first = poll_fn(|cx| {
                if let Some(s) = set.as_mut() {
                    guard.timeout_set = true;
                    if s.as_mut().poll(cx).is_ready() {
                        set = None;
                    }
                }
                guard.sent = true;
                if let Poll::Ready(r) = query.as_mut().poll(cx) {
                    return Poll::Ready(Some(r));
                }
                if done.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(None);
                }
                Poll::Pending
            })
            .await;
            match first {
                Some(r) => Answer::Done(r),
                None => {
                    // The context is done: the after-func is sending the
                    // cancel. Await the server's answer, bounded. If none
                    // comes, the cancel may have hit our pipelined SET rather
                    // than the statement: cancel again (only ever while our
                    // statement is unanswered, each cancel awaited to its end).
                    let (bound, _h) = Context::background().with_timeout(self.answer_timeout);
                    let mut wait = RECANCEL_FIRST;
                    loop {
                        let (tick, _t) = bound.with_timeout(wait);
                        wait = RECANCEL_AFTER;
                        match first_of(query.as_mut(), tick.done()).await {
                            Either::Left(r) => break Answer::Done(r),
                            Either::Right(_) if bound.is_done() => break Answer::NoAnswer,
                            Either::Right(_) => guard.recancel(),
                        }
                    }
                }
            }
        };
        if let Answer::Done(_) = &answer {
            guard.answered = true;
        }
        // The SET's answer came before the statement's: nothing to wait for.
        drop(set.take());
        guard.settle().await;
        if guard.timeout_set {
            // Awaited, and sent again if a cancel hit it: PostgreSQL handles
            // a cancel's signal when the backend next runs, which can be this
            // restore, the first statement after ours. A restore lost that way
            // would leave our short statement_timeout on the session for the
            // next user of the connection (seen in the 1,000-query pool test).
            // Restoring is idempotent; a restore that fails otherwise (a
            // broken connection) is the connection's problem, not this call's.
            let restore = restore_timeout_sql(guard.call, guard.local);
            for _ in 0..RESTORE_ATTEMPTS {
                match self.client.batch_execute(&restore).await {
                    Err(e) if e.code() == Some(&SqlState::QUERY_CANCELED) => continue,
                    _ => break,
                }
            }
        }
        guard.finished = true;
        match answer {
            Answer::Done(Ok(r)) => Ok(r),
            Answer::Done(Err(e)) if e.code() == Some(&SqlState::QUERY_CANCELED) => match ctx.error() {
                Some(ce) => Err(crate::Error::Context(ce)),
                None => match ctx.deadline() {
                    // The server's statement timeout fired at most
                    // STATEMENT_TIMEOUT_EARLY before the deadline: let the
                    // context's own timer catch up, then report its error.
                    Some(_) if ctx.time_left().is_some_and(|l| l <= STATEMENT_TIMEOUT_EARLY) => {
                        let (grace, _h) = Context::background().with_timeout(DEADLINE_GRACE);
                        let _ = first_of(pin!(ctx.done()), grace.done()).await;
                        Err(crate::Error::Context(
                            ctx.error().unwrap_or(ContextError::from_error(Kind::DeadlineExceeded)),
                        ))
                    }
                    _ => Err(crate::Error::Driver(e)),
                },
            },
            Answer::Done(Err(e)) => Err(crate::Error::Driver(e)),
            Answer::NoAnswer => Err(crate::Error::Context(
                ctx.error().unwrap_or(ContextError::from_error(Kind::Canceled)),
            )),
        }
    }
}

/// The state of one call, and its `Drop` for a future dropped mid-statement.
struct InFlight<'a, C: ClientExt, T> {
    client: &'a C,
    canceller: &'a Canceller<T>,
    /// `spawn_cancel` for this `T` (its bounds checked where it was taken).
    spawn: SpawnCancel<T>,
    rt: Option<Handle>,
    /// Done once the cancel request the after-func started has finished.
    slot: Arc<Mutex<Option<Context>>>,
    after: AfterFunc,
    drop_guard: Duration,
    /// This call's id in the server-side list of calls that changed
    /// `statement_timeout` (see [`save_timeout_sql`]).
    call: u64,
    /// Inside a transaction block: `set_config(.., is_local => true)`.
    local: bool,
    /// The statement's request may have been queued on the connection.
    sent: bool,
    /// The server answered the statement.
    answered: bool,
    /// `SET statement_timeout` was queued.
    timeout_set: bool,
    /// The call ran to its end: nothing left for `Drop`.
    finished: bool,
}

impl<C: ClientExt, T> InFlight<'_, C, T> {
    /// Sends another cancel request if the last one has finished (none if the
    /// after-func has not started one yet).
    fn recancel(&mut self) {
        let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        if slot.as_ref().is_some_and(Context::is_done) {
            *slot = Some((self.spawn)(
                self.rt.as_ref(),
                self.canceller,
                self.client.ctx_cancel_token(),
            ));
        }
    }

    /// Stops the after-func (waiting if it is running) and awaits the cancel
    /// request it started, if any.
    async fn settle(&mut self) {
        self.after.stop_wait().await;
        let task = self.slot.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            // The task is bounded by the canceller's own timeout; this bound
            // only matters if the runtime drops the task.
            let (bound, _h) = Context::background().with_timeout(self.canceller.request_timeout() * 2);
            let _ = first_of(pin!(task.done()), bound.done()).await;
        }
    }
}

impl<C: ClientExt, T> Drop for InFlight<'_, C, T> {
    fn drop(&mut self) {
        if self.finished || !self.sent {
            return;
        }
        // The caller dropped the call mid-way. The after-func does little
        // (it spawns), so waiting for it here is short.
        self.after.stop_and_wait();
        let pending = self
            .slot
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .is_some_and(|t| !t.is_done());
        let mut cancelling = pending;
        if !self.answered && !pending {
            let _ = (self.spawn)(self.rt.as_ref(), self.canceller, self.client.ctx_cancel_token());
            cancelling = true;
        }
        let restore = restore_timeout_sql(self.call, self.local);
        if self.timeout_set {
            send_only(self.client.batch_execute(&restore));
        }
        if cancelling {
            let guard = format!("SELECT pg_sleep({})", self.drop_guard.as_secs_f64());
            send_only(self.client.batch_execute(&guard));
            if self.timeout_set {
                // Again, in case the cancel landed on the first restore
                // (a restore is a no-op once it has run).
                send_only(self.client.batch_execute(&restore));
            }
        }
    }
}

impl<C: ClientExt, T> fmt::Debug for InFlight<'_, C, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InFlight")
            .field("sent", &self.sent)
            .finish_non_exhaustive()
    }
}

/// Ids of calls, for the server-side list of calls that changed
/// `statement_timeout` on a connection.
static NEXT_CALL: AtomicU64 = AtomicU64::new(1);

/// The statement pipelined before call `call`'s own: it saves the session's
/// `statement_timeout` (unless an earlier call of ours on this connection,
/// still unrestored, already saved the user's value), adds `[call]` to the
/// list of our calls in progress, and sets `statement_timeout` to `ms`. All
/// three through `set_config(.., local)`: session-level on a [`Client`],
/// transaction-level (`SET LOCAL`) in a [`Transaction`] (see the module docs).
/// The `OFFSET 0` subqueries fix the order of evaluation. A statement that
/// fails (cancelled, or in an aborted transaction) changes nothing.
fn save_timeout_sql(call: u64, ms: u64, local: bool) -> String {
    format!(
        "SELECT set_config('statement_timeout', '{ms}', {local}) FROM (\
         SELECT set_config('ctxcore_sql.saved_statement_timeout', CASE WHEN s.calls = '' \
         THEN current_setting('statement_timeout') ELSE current_setting('ctxcore_sql.saved_statement_timeout') END, {local}), \
         set_config('ctxcore_sql.calls', s.calls || '[{call}]', {local}) \
         FROM (SELECT coalesce(current_setting('ctxcore_sql.calls', true), '') AS calls OFFSET 0) s OFFSET 0) t"
    )
}

/// The statement queued after call `call`: if `[call]` is in the list (its
/// save ran and it is not restored yet), it is removed, and if no other call
/// of ours is left in progress, the saved `statement_timeout` is set back.
/// Idempotent: once it has run (or if the save never ran), a no-op.
fn restore_timeout_sql(call: u64, local: bool) -> String {
    format!(
        "SELECT set_config('ctxcore_sql.calls', r.rest, {local}), CASE WHEN r.rest = '' THEN \
         set_config('statement_timeout', current_setting('ctxcore_sql.saved_statement_timeout'), {local}) END \
         FROM (SELECT replace(s.calls, '[{call}]', '') AS rest, strpos(s.calls, '[{call}]') > 0 AS mine \
         FROM (SELECT coalesce(current_setting('ctxcore_sql.calls', true), '') AS calls OFFSET 0) s OFFSET 0) r \
         WHERE r.mine"
    )
}

type SpawnCancel<T> = fn(Option<&Handle>, &Canceller<T>, CancelToken) -> Context;

/// Starts a cancel request on the runtime (or, outside one, on a thread of
/// its own with a small runtime). The context returned is done once the
/// request has finished (or its task was dropped).
fn spawn_cancel<T>(rt: Option<&Handle>, canceller: &Canceller<T>, token: CancelToken) -> Context
where
    T: MakeTlsConnect<CancelStream> + Clone + Send + Sync + 'static,
    T::Stream: Send,
    T::TlsConnect: Send,
    <T::TlsConnect as tokio_postgres::tls::TlsConnect<CancelStream>>::Future: Send,
{
    let (finished, handle) = Context::background().with_cancel();
    let canceller = canceller.clone();
    let fut = async move {
        let _ = canceller.cancel(token).await;
        handle.cancel();
    };
    match rt {
        Some(rt) => drop(rt.spawn(fut)),
        None => {
            // Dropping `fut` unrun drops the handle, which cancels `finished`.
            let _ = std::thread::Builder::new()
                .name("ctxcore-sql-cancel".into())
                .spawn(move || {
                    if let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_io().build() {
                        rt.block_on(fut);
                    }
                });
        }
    }
    finished
}

/// Queues a tokio-postgres request without waiting for its answer: the first
/// poll of its future hands the request to the connection; the answer is
/// discarded when the future is dropped.
fn send_only<F: Future>(f: F) {
    let mut f = pin!(f);
    let _ = f.as_mut().poll(&mut TaskCx::from_waker(Waker::noop()));
}

enum Either<A, B> {
    Left(A),
    Right(B),
}

/// Polls `a` then `b`; the first ready wins.
async fn first_of<A: Future + Unpin, B: Future>(a: A, b: B) -> Either<A::Output, B::Output> {
    first(a, pin!(b)).await
}

async fn first<A: Future + Unpin, B: Future + Unpin>(mut a: A, mut b: B) -> Either<A::Output, B::Output> {
    poll_fn(|cx| {
        if let Poll::Ready(r) = Pin::new(&mut a).poll(cx) {
            return Poll::Ready(Either::Left(r));
        }
        if let Poll::Ready(r) = Pin::new(&mut b).poll(cx) {
            return Poll::Ready(Either::Right(r));
        }
        Poll::Pending
    })
    .await
}
