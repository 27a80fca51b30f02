//! ctxcore_sql::sqlx against a real PostgreSQL (a throwaway cluster started
//! by the tests): cancels and deadlines that stop the server, contexts done
//! before the call, driver errors, and futures dropped mid-query.
#![cfg(feature = "sqlx")]

mod support;

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use ctxcore::{Context, ManualClock};
use ctxcore_sql::sqlx::{Conn, Pool};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::Row;
use support::pg::PgCluster;

/// Every wait of these tests is bounded by this.
const LIMIT: Duration = Duration::from_secs(20);

#[derive(Debug, PartialEq)]
struct ClientGone;
impl std::fmt::Display for ClientGone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("client gone")
    }
}
impl std::error::Error for ClientGone {}

/// A database of its own, a pool of `size` on it wrapped in a [`Pool`], and
/// an observer pool for `pg_stat_activity` and checks.
async fn setup(name: &str, size: u32) -> (Pool, PgPool) {
    let pg = PgCluster::shared();
    let db = tokio::task::spawn_blocking({
        let name = name.to_string();
        move || pg.create_database(&name)
    })
    .await
    .unwrap();
    let url = pg.url(&db);
    let pool = PgPoolOptions::new()
        .max_connections(size)
        .acquire_timeout(LIMIT)
        .connect(&url)
        .await
        .unwrap();
    let observer = PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(LIMIT)
        .connect(&url)
        .await
        .unwrap();
    let pool = Pool::new(pool);
    pool.warm_up().await.unwrap();
    (pool, observer)
}

async fn backend_state(observer: &PgPool, pid: i32) -> Option<String> {
    sqlx::query_scalar("SELECT state FROM pg_stat_activity WHERE pid = $1")
        .bind(pid)
        .fetch_optional(observer)
        .await
        .unwrap()
        .flatten()
}

/// Waits (at most 2 s) until the backend `pid` is idle: the statement really
/// stopped on the server. (sqlx returns on the ErrorResponse; the backend
/// reports itself idle just before its ReadyForQuery, a moment later.)
async fn wait_idle(observer: &PgPool, pid: i32) {
    let start = Instant::now();
    loop {
        let state = backend_state(observer, pid).await;
        if state.as_deref() == Some("idle") {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "backend {pid} still {state:?}: the statement did not stop"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Waits (at most `limit`) until the backend `pid` is in `state` running a
/// query that contains `needle`.
async fn wait_for_state(observer: &PgPool, pid: i32, state: &str, needle: &str, limit: Duration) {
    let start = Instant::now();
    loop {
        let row: Option<(Option<String>, Option<String>)> =
            sqlx::query_as("SELECT state, query FROM pg_stat_activity WHERE pid = $1")
                .bind(pid)
                .fetch_optional(observer)
                .await
                .unwrap();
        if let Some((Some(s), Some(q))) = &row {
            if s == state && q.contains(needle) {
                return;
            }
        }
        assert!(
            start.elapsed() < limit,
            "backend {pid} never reached {state} on {needle:?}: {row:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A warmed-up connection (its pid read).
async fn warm(pool: &Pool) -> Conn {
    let bg = Context::background();
    let mut conn = pool.acquire(&bg).await.unwrap();
    conn.execute(&bg, sqlx::query("SELECT 1")).await.unwrap();
    assert!(conn.pid().is_some());
    conn
}

async fn statement_timeout(conn: &mut Conn) -> String {
    let bg = Context::background();
    let row = conn
        .fetch_one(&bg, sqlx::query("SHOW statement_timeout"))
        .await
        .unwrap();
    row.get::<String, _>(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_pg_sleep_on_the_server() {
    let (pool, observer) = setup("sqlx_cancel", 2).await;
    let mut conn = warm(&pool).await;
    let pid = conn.pid().unwrap();
    let (ctx, handle) = Context::background().with_cancel();
    let canceller = tokio::spawn({
        let observer = observer.clone();
        async move {
            wait_for_state(&observer, pid, "active", "pg_sleep", LIMIT).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            let at = Instant::now();
            handle.cancel_with(ClientGone);
            at
        }
    });
    let started = Instant::now();
    let res = tokio::time::timeout(LIMIT, conn.fetch_one(&ctx, sqlx::query("SELECT pg_sleep(30)")))
        .await
        .expect("the call returns");
    let returned = Instant::now();
    let cancelled_at = canceller.await.unwrap();
    let latency = returned.saturating_duration_since(cancelled_at);
    eprintln!(
        "sqlx: pg_sleep(30) cancelled after {:?}: returned {latency:?} after the cancel",
        cancelled_at - started
    );
    let err = res.unwrap_err();
    let ce = err.context_error().expect("the context's error");
    assert!(ce.is_canceled());
    assert!(ce.cause().is::<ClientGone>(), "the cause travels: {ce:?}");
    assert_eq!(err.to_string(), "context canceled: client gone");
    assert!(
        latency < Duration::from_millis(50),
        "returned {latency:?} after the cancel"
    );
    // The server really stopped: the backend is idle, and the connection works.
    wait_idle(&observer, pid).await;
    let bg = Context::background();
    let row = conn.fetch_one(&bg, sqlx::query("SELECT 7")).await.unwrap();
    assert_eq!(row.get::<i32, _>(0), 7);
    assert_eq!(conn.pid(), Some(pid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_is_deadline_exceeded_and_stopped_server_side() {
    let (pool, observer) = setup("sqlx_deadline", 2).await;
    let mut conn = warm(&pool).await;
    let pid = conn.pid().unwrap();
    let before = statement_timeout(&mut conn).await;
    let (ctx, _h) = Context::background().with_timeout(Duration::from_millis(200));
    let started = Instant::now();
    let res = tokio::time::timeout(LIMIT, conn.fetch_one(&ctx, sqlx::query("SELECT pg_sleep(30)")))
        .await
        .expect("the call returns");
    let took = started.elapsed();
    eprintln!("sqlx: 200 ms deadline on pg_sleep(30): returned after {took:?}");
    let err = res.unwrap_err();
    let ce = err.context_error().expect("the context's error");
    assert!(ce.is_deadline_exceeded(), "{ce:?}");
    assert!(
        took >= Duration::from_millis(195) && took < Duration::from_millis(1_000),
        "{took:?}"
    );
    wait_idle(&observer, pid).await;
    // statement_timeout did not leak, to this Conn or to the next user.
    assert_eq!(statement_timeout(&mut conn).await, before);
    drop(conn);
    let mut next = warm(&pool).await;
    assert_eq!(statement_timeout(&mut next).await, before);
}

/// On a tree whose clock does not move (a ManualClock), the context never
/// passes its deadline: only the server's statement_timeout, set from
/// `time_left()`, can stop the query — and then it is the driver's error,
/// since the context is not done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_timeout_reaches_the_server() {
    static CLOCK: ManualClock = ManualClock::new();
    let (pool, observer) = setup("sqlx_stmt_timeout", 2).await;
    let mut conn = warm(&pool).await;
    let pid = conn.pid().unwrap();
    let root = Context::with_timer(&CLOCK);
    let (ctx, _h) = root.with_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let res = tokio::time::timeout(LIMIT, conn.fetch_one(&ctx, sqlx::query("SELECT pg_sleep(30)")))
        .await
        .expect("the call returns");
    let took = started.elapsed();
    eprintln!("sqlx: statement_timeout from time_left() = 300 ms stopped pg_sleep(30) after {took:?}");
    let err = res.unwrap_err();
    let db = err.driver_error().expect("the context is not done: the driver's error");
    let db = db.as_database_error().expect("a database error");
    assert_eq!(db.code().as_deref(), Some("57014"));
    assert!(db.message().contains("statement timeout"), "{}", db.message());
    assert!(
        took >= Duration::from_millis(295) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert!(!ctx.is_done());
    wait_idle(&observer, pid).await;
    assert_eq!(statement_timeout(&mut conn).await, "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn done_before_the_call_never_reaches_the_server() {
    let (pool, observer) = setup("sqlx_done_before", 2).await;
    sqlx::query("CREATE TABLE t (x int)").execute(&observer).await.unwrap();
    let bg = Context::background();
    let (ctx, h) = bg.with_cancel();
    h.cancel_with(ClientGone);
    // Acquiring under a done context fails at once too.
    let err = pool.acquire(&ctx).await.unwrap_err();
    assert!(err.context_error().unwrap().cause().is::<ClientGone>());
    // A fresh Conn (pid not read yet) and a warm one: nothing is sent.
    let mut fresh = pool.acquire(&bg).await.unwrap();
    let mut warm = warm(&pool).await;
    for conn in [&mut fresh, &mut warm] {
        let started = Instant::now();
        let err = conn
            .execute(&ctx, sqlx::query("INSERT INTO t VALUES (1)"))
            .await
            .unwrap_err();
        let took = started.elapsed();
        assert!(took < Duration::from_millis(20), "returned at once: {took:?}");
        let ce = err.context_error().expect("the context's error");
        assert!(ce.is_canceled() && ce.cause().is::<ClientGone>());
    }
    assert_eq!(fresh.pid(), None, "not even the pid was read");
    // A deadline already passed: the same, DeadlineExceeded.
    let (late, _h) = bg.with_timeout(Duration::ZERO);
    let err = warm
        .execute(&late, sqlx::query("INSERT INTO t VALUES (2)"))
        .await
        .unwrap_err();
    assert!(err.context_error().unwrap().is_deadline_exceeded());
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM t")
        .fetch_one(&observer)
        .await
        .unwrap();
    assert_eq!(n, 0, "no INSERT landed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn driver_errors_stay_driver_errors() {
    let (pool, observer) = setup("sqlx_driver_errors", 2).await;
    sqlx::query("CREATE TABLE u (x int PRIMARY KEY)")
        .execute(&observer)
        .await
        .unwrap();
    let mut conn = warm(&pool).await;
    let (ctx, h) = Context::background().with_timeout(Duration::from_secs(30));

    let err = conn.execute(&ctx, sqlx::query("SELEC 1")).await.unwrap_err();
    let db = err.driver_error().expect("a syntax error is the driver's");
    assert_eq!(db.as_database_error().unwrap().code().as_deref(), Some("42601"));

    conn.execute(&ctx, sqlx::query("INSERT INTO u VALUES (1)"))
        .await
        .unwrap();
    let err = conn
        .execute(&ctx, sqlx::query("INSERT INTO u VALUES (1)"))
        .await
        .unwrap_err();
    let db = err.driver_error().expect("a constraint violation is the driver's");
    assert_eq!(db.as_database_error().unwrap().code().as_deref(), Some("23505"));

    let err = conn
        .fetch_one(&ctx, sqlx::query("SELECT 1 WHERE false"))
        .await
        .unwrap_err();
    assert!(matches!(err.driver_error(), Some(sqlx::Error::RowNotFound)));

    // The context is done by the time the error is seen: still the driver's.
    let err = conn
        .run(&ctx, move |c| {
            Box::pin(async move {
                let r = sqlx::query("SELEC 2").execute(&mut *c).await;
                h.cancel_with(ClientGone);
                r
            })
        })
        .await
        .unwrap_err();
    assert!(ctx.is_done());
    assert!(!err.is_context(), "{err:?}");
    assert_eq!(
        err.driver_error()
            .unwrap()
            .as_database_error()
            .unwrap()
            .code()
            .as_deref(),
        Some("42601")
    );
    // And the connection is fine, with statement_timeout put back.
    assert_eq!(statement_timeout(&mut conn).await, "0");
}

/// tokio-postgres' `Cancellable { polls_left }`: drops the future after
/// `polls_left` polls.
struct Cancellable<F> {
    fut: Pin<Box<F>>,
    polls_left: usize,
}

impl<F: Future> Future for Cancellable<F> {
    type Output = Option<F::Output>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        if self.polls_left == 0 {
            return Poll::Ready(None);
        }
        self.polls_left -= 1;
        self.fut.as_mut().poll(cx).map(Some)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_after_n_polls_still_cancels_and_the_connection_is_reused() {
    let (pool, observer) = setup("sqlx_dropped", 2).await;
    let mut conn = warm(&pool).await;
    let pid = conn.pid().unwrap();
    let bg = Context::background();
    let mut abandoned_mid_query = 0;
    for polls in 1..=6 {
        // With and without a deadline (so statement_timeout must be put back).
        for deadline in [false, true] {
            let (ctx, _h) = if deadline {
                bg.with_timeout(Duration::from_secs(60))
            } else {
                bg.with_cancel()
            };
            let fut = conn.fetch_one(&ctx, sqlx::query("SELECT pg_sleep(30)"));
            // Dropped after `polls` polls, or after 300 ms if the query waits
            // on the server with fewer (a drop either way).
            let out = tokio::time::timeout(
                Duration::from_millis(300),
                Cancellable {
                    fut: Box::pin(fut),
                    polls_left: polls,
                },
            )
            .await;
            assert!(!matches!(out, Ok(Some(_))), "pg_sleep(30) cannot finish");
            let abandoned = backend_state(&observer, pid).await.as_deref() == Some("active");
            abandoned_mid_query += abandoned as usize;
            // The connection is reused: the next call waits for the cancel,
            // drains the abandoned answer, and runs.
            let started = Instant::now();
            let row = tokio::time::timeout(LIMIT, conn.fetch_one(&bg, sqlx::query("SELECT 42")))
                .await
                .unwrap_or_else(|_| {
                    panic!("reuse after {polls} polls (deadline {deadline}, was active {abandoned}) hung")
                })
                .unwrap();
            let took = started.elapsed();
            assert_eq!(row.get::<i32, _>(0), 42);
            assert!(
                took < Duration::from_secs(5),
                "the abandoned pg_sleep(30) was cancelled: {took:?}"
            );
            wait_idle(&observer, pid).await;
            assert_eq!(
                statement_timeout(&mut conn).await,
                "0",
                "after {polls} polls, deadline {deadline}"
            );
        }
    }
    eprintln!("sqlx: {abandoned_mid_query} of 12 drops happened while pg_sleep was running");
    assert!(abandoned_mid_query > 0, "some drops were mid-query");

    // A Conn dropped with its query abandoned: the pool gets the connection
    // back only once it is settled, healthy and without statement_timeout.
    let (ctx, _h) = bg.with_timeout(Duration::from_secs(60));
    let fut = conn.fetch_one(&ctx, sqlx::query("SELECT pg_sleep(30)"));
    let mut fut = Box::pin(fut);
    let started = Instant::now();
    // Poll the query until the server runs it.
    loop {
        assert!(poll_once(&mut fut).await.is_pending());
        if backend_state(&observer, pid).await.as_deref() == Some("active") {
            break;
        }
        assert!(started.elapsed() < LIMIT, "the query never started");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    drop(fut);
    drop(conn);
    let pool_ref = pool.get_ref().clone();
    wait_until(LIMIT, || async { pool_ref.num_idle() == pool_ref.size() as usize }).await;
    let mut again = warm(&pool).await;
    assert_eq!(again.pid(), Some(pid), "the same connection came back");
    assert_eq!(statement_timeout(&mut again).await, "0");
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// Polls `fut` once.
async fn poll_once<F: Future + Unpin>(fut: &mut F) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *fut).poll(cx))).await
}

async fn wait_until<F, Fut>(limit: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !f().await {
        assert!(start.elapsed() < limit, "condition not reached within {limit:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A Conn dropped outside the runtime (where sqlx's own PoolConnection
/// would panic) goes back to its pool.
#[test]
fn conn_dropped_off_the_runtime_goes_back_to_the_pool() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (pool, _observer) = rt.block_on(setup("sqlx_drop_off_rt", 1));
    let conn = rt.block_on(warm(&pool));
    let pid = conn.pid();
    drop(conn); // not inside block_on
    rt.block_on(async {
        let bg = Context::background();
        let mut again = tokio::time::timeout(LIMIT, pool.acquire(&bg))
            .await
            .expect("the only connection came back")
            .unwrap();
        again.execute(&bg, sqlx::query("SELECT 1")).await.unwrap();
        assert_eq!(again.pid(), pid, "the same connection");
    });
}
