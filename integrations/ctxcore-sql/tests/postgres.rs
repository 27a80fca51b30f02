//! tokio-postgres under a context, against a real PostgreSQL (a throwaway
//! cluster per test binary, a database per test).
#![cfg(feature = "tokio-postgres")]

mod support;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context as TaskCx, Poll};
use std::time::{Duration, Instant};

use ctxcore::{Context, Error as Kind};
use ctxcore_sql::postgres::{Canceller, ClientExt};
use ctxcore_sql::Error;
use support::pg::PgCluster;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Config, NoTls};

/// Every wait in these tests is bounded by this.
const LIMIT: Duration = Duration::from_secs(20);

/// Tests that time things, and the heavy ones, take turns (the others run
/// alongside).
static QUIET: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Db {
    pg: &'static PgCluster,
    name: String,
    config: Config,
    cancel: Canceller,
}

impl Db {
    fn new(name: &str) -> Db {
        let pg = PgCluster::shared();
        let name = pg.create_database(name);
        let config: Config = pg.config(&name).parse().unwrap();
        let cancel = Canceller::new(&config);
        Db {
            pg,
            name,
            config,
            cancel,
        }
    }

    async fn connect(&self) -> Client {
        let (client, conn) = bounded(self.config.connect(NoTls)).await.unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        client
    }

    /// The state and query of backend `pid`, seen from another connection.
    async fn activity(&self, pid: i32) -> (String, String) {
        let c = self.connect().await;
        let row = bounded(c.query_one(
            "SELECT coalesce(state, ''), coalesce(query, '') FROM pg_stat_activity WHERE pid = $1",
            &[&pid],
        ))
        .await
        .unwrap();
        (row.get(0), row.get(1))
    }
}

async fn bounded<F: Future>(f: F) -> F::Output {
    match tokio::time::timeout(LIMIT, f).await {
        Ok(v) => v,
        Err(_) => panic!("not done within {LIMIT:?}"),
    }
}

async fn pid(c: &Client) -> i32 {
    bounded(c.query_one("SELECT pg_backend_pid()", &[]))
        .await
        .unwrap()
        .get(0)
}

/// Waits (bounded) until backend `pid` is idle: its statement really stopped.
async fn assert_goes_idle(db: &Db, pid: i32) -> Duration {
    let t = Instant::now();
    loop {
        let (state, query) = db.activity(pid).await;
        if state == "idle" {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "backend {pid} still {state:?} running {query:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_sleep_cancelled_100ms_in_stops_on_the_server() {
    let _quiet = QUIET.lock().await;
    let db = Db::new("cancel");
    let client = db.connect().await;
    let backend = pid(&client).await;
    // Three samples: the bound is on the median (a 2-core machine shared
    // with builds can stall any single one), every one is printed.
    let mut latencies = Vec::new();
    for _ in 0..3 {
        let (ctx, handle) = Context::background().with_cancel();
        let cancelled_at = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            handle.cancel_with("client went away");
            Instant::now()
        });
        let t = Instant::now();
        let err = bounded(client.with_ctx(&ctx, &db.cancel).query("SELECT pg_sleep(30)", &[]))
            .await
            .unwrap_err();
        let returned = Instant::now();
        let cancelled_at = cancelled_at.await.unwrap();
        let latency = returned - cancelled_at;
        eprintln!(
            "pg_sleep(30) cancelled after {:?}: returned {latency:?} after the cancel",
            t.elapsed()
        );
        let ce = err.context_error().expect("the context's error");
        assert_eq!(ce.kind(), Kind::Canceled);
        assert_eq!(ce.cause().as_str(), Some("client went away"));
        assert!(
            latency < Duration::from_millis(500),
            "returned {latency:?} after the cancel"
        );
        latencies.push(latency);
        // The server stopped it (our call returns at the server's error
        // message; the backend reports idle a moment later, before its
        // ReadyForQuery).
        assert_goes_idle(&db, backend).await;
        // The connection is in sync and nothing late hits the next statements.
        let row = bounded(client.query_one("SELECT 41 + 1", &[])).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), 42);
        bounded(client.execute("SELECT pg_sleep(0.2)", &[])).await.unwrap();
    }
    latencies.sort();
    assert!(
        latencies[1] < Duration::from_millis(50),
        "median {:?} of {latencies:?}",
        latencies[1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_200ms_is_deadline_exceeded_and_stops_on_the_server() {
    let _quiet = QUIET.lock().await;
    let db = Db::new("deadline");
    let client = db.connect().await;
    let backend = pid(&client).await;
    for statement_timeout in [true, false] {
        let (ctx, _h) = Context::background().with_timeout_cause(Duration::from_millis(200), "slow report");
        let t = Instant::now();
        let err = bounded(
            client
                .with_ctx(&ctx, &db.cancel)
                .statement_timeout(statement_timeout)
                .query("SELECT pg_sleep(30)", &[]),
        )
        .await
        .unwrap_err();
        let took = t.elapsed();
        eprintln!("deadline 200 ms (statement_timeout {statement_timeout}): returned after {took:?}");
        let ce = err
            .context_error()
            .unwrap_or_else(|| panic!("context error, got {err:?}"));
        assert_eq!(ce.kind(), Kind::DeadlineExceeded);
        assert_eq!(ce.cause().as_str(), Some("slow report"));
        assert!(
            took >= Duration::from_millis(195) && took < Duration::from_millis(250 + 50),
            "{took:?}"
        );
        assert_goes_idle(&db, backend).await;
        // Who stopped it: with statement_timeout the server itself, just
        // before our deadline (so no cancel connection was needed); without,
        // our cancel request.
        let expect = if statement_timeout {
            "due to statement timeout"
        } else {
            "due to user request"
        };
        let log = db.pg.log();
        let last = log
            .lines()
            .rev()
            .find(|l| l.contains(&format!("[{backend}] ERROR:  canceling statement")))
            .unwrap_or_else(|| panic!("no cancel of backend {backend} in the server log"));
        assert!(last.contains(expect), "{last}");
        // statement_timeout did not leak to the connection's next user.
        let row = bounded(client.query_one("SHOW statement_timeout", &[])).await.unwrap();
        assert_eq!(row.get::<_, &str>(0), "0");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn already_done_returns_at_once_and_never_runs() {
    let db = Db::new("done");
    let client = db.connect().await;
    bounded(client.batch_execute("CREATE TABLE t (x int)")).await.unwrap();
    let (cancelled, h) = Context::background().with_cancel();
    h.cancel_with("gone");
    let (expired, _h) = Context::background().with_timeout(Duration::ZERO);
    for (ctx, kind) in [(&cancelled, Kind::Canceled), (&expired, Kind::DeadlineExceeded)] {
        let t = Instant::now();
        let err = bounded(
            client
                .with_ctx(ctx, &db.cancel)
                .execute("INSERT INTO t VALUES (1)", &[]),
        )
        .await
        .unwrap_err();
        let took = t.elapsed();
        assert_eq!(err.context_error().map(|e| e.kind()), Some(kind));
        assert!(took < Duration::from_millis(5), "{took:?}");
    }
    let n: i64 = bounded(client.query_one("SELECT count(*) FROM t", &[]))
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "the INSERT never ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_stays_the_drivers_error() {
    let db = Db::new("bad");
    let client = db.connect().await;
    bounded(client.batch_execute("CREATE TABLE u (x int PRIMARY KEY); INSERT INTO u VALUES (1)"))
        .await
        .unwrap();
    let (ctx, h) = Context::background().with_timeout(Duration::from_secs(10));
    let q = client.with_ctx(&ctx, &db.cancel);
    let err = bounded(q.query("SELEC 1", &[])).await.unwrap_err();
    assert_eq!(err.driver_error().and_then(|e| e.code()), Some(&SqlState::SYNTAX_ERROR));
    let err = bounded(q.execute("INSERT INTO u VALUES (1)", &[])).await.unwrap_err();
    assert_eq!(
        err.driver_error().and_then(|e| e.code()),
        Some(&SqlState::UNIQUE_VIOLATION)
    );
    // A statement timeout the user set (not the context's deadline) stays the driver's.
    let (no_deadline, _h2) = Context::background().with_cancel();
    bounded(client.batch_execute("SET statement_timeout = 50"))
        .await
        .unwrap();
    let err = bounded(
        client
            .with_ctx(&no_deadline, &db.cancel)
            .query("SELECT pg_sleep(5)", &[]),
    )
    .await
    .unwrap_err();
    assert_eq!(
        err.driver_error().and_then(|e| e.code()),
        Some(&SqlState::QUERY_CANCELED)
    );
    bounded(client.batch_execute("RESET statement_timeout")).await.unwrap();
    // A failure seen after the context is done is still the driver's: the
    // context is cancelled while a failing statement runs, and the cancel
    // request cannot reach the server (a canceller aimed at a closed port),
    // so the statement fails on its own.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dead = Canceller::new(&format!("host=127.0.0.1 port={closed} user=postgres").parse().unwrap());
    let cancel_soon = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        h.cancel();
    });
    let err = bounded(
        client
            .with_ctx(&ctx, &dead)
            .query("SELECT 1 / (SELECT 0 FROM pg_sleep(0.2))", &[]),
    )
    .await
    .unwrap_err();
    assert!(ctx.is_done());
    assert_eq!(
        err.driver_error().and_then(|e| e.code()),
        Some(&SqlState::DIVISION_BY_ZERO),
        "{err:?}"
    );
    cancel_soon.await.unwrap();
    let err = bounded(q.query("SELECT 1 / 0", &[])).await.unwrap_err();
    assert!(err.is_context(), "done before the call: never sent");
    let row = bounded(client.query_one("SELECT 1", &[])).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 1);
}

/// Polls the inner future `polls_left` times (waking itself so the polls
/// come at once), then drops it.
struct Cancellable<F> {
    inner: Option<Pin<Box<F>>>,
    polls_left: usize,
}

impl<F: Future> Future for Cancellable<F> {
    type Output = Option<F::Output>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskCx<'_>) -> Poll<Self::Output> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match inner.as_mut().poll(cx) {
            Poll::Ready(v) => Poll::Ready(Some(v)),
            Poll::Pending => {
                self.polls_left -= 1;
                if self.polls_left == 0 {
                    self.inner = None;
                    return Poll::Ready(None);
                }
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_after_n_polls_stops_the_server_and_the_connection_is_reusable() {
    let _quiet = QUIET.lock().await;
    let db = Db::new("drop");
    let client = db.connect().await;
    let backend = pid(&client).await;
    for polls in [1, 2, 3, 5, 10, 50] {
        for deadline in [false, true] {
            let (ctx, _h) = if deadline {
                Context::background().with_timeout(Duration::from_secs(60))
            } else {
                Context::background().with_cancel()
            };
            let fut = client.with_ctx(&ctx, &db.cancel).query("SELECT pg_sleep(30)", &[]);
            let out = bounded(Cancellable {
                inner: Some(Box::pin(fut)),
                polls_left: polls,
            })
            .await;
            assert!(out.is_none(), "pg_sleep(30) cannot finish in {polls} polls");
            let t = Instant::now();
            // The next statement on the connection runs soon: the server stopped pg_sleep(30).
            let row = bounded(client.query_one("SELECT 7", &[])).await.unwrap();
            assert_eq!(row.get::<_, i32>(0), 7);
            let took = t.elapsed();
            assert!(
                took < Duration::from_secs(2),
                "next statement waited {took:?} after {polls} polls"
            );
            assert_goes_idle(&db, backend).await;
            let row = bounded(client.query_one("SHOW statement_timeout", &[])).await.unwrap();
            assert_eq!(
                row.get::<_, &str>(0),
                "0",
                "statement_timeout leaked after {polls} polls"
            );
            // Nothing late lands on a later statement.
            bounded(client.execute("SELECT pg_sleep(0.15)", &[])).await.unwrap();
        }
    }
}

/// A small xorshift: random enough for picking moments, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_queries_random_cancels_on_a_pool_of_4() {
    let _quiet = QUIET.lock().await;
    let db = Db::new("pool");
    let mgr = deadpool_postgres::Manager::new(db.config.clone(), NoTls);
    let pool = deadpool_postgres::Pool::builder(mgr).max_size(4).build().unwrap();
    let cancel = db.cancel.clone();
    let finished = Arc::new(AtomicUsize::new(0));
    let cancelled = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    const WORKERS: u64 = 8;
    const TOTAL: u64 = 1000;
    for w in 0..WORKERS {
        let pool = pool.clone();
        let cancel = cancel.clone();
        let finished = finished.clone();
        let cancelled = cancelled.clone();
        workers.push(tokio::spawn(async move {
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (w + 1).wrapping_mul(0xA24B_AED4_963E_E407));
            for i in 0..TOTAL / WORKERS {
                let n = (w * 1000 + i) as i32;
                let obj = pool.get().await.unwrap();
                let (ctx, handle) = if rng.below(4) == 0 {
                    // Some with a deadline: the statement_timeout path.
                    Context::background().with_timeout(Duration::from_millis(2 + rng.below(4)))
                } else {
                    Context::background().with_cancel()
                };
                let moment = rng.below(3); // 0 before, 1 during, 2 after
                let sleep_us = rng.below(3000);
                let server_sleep = format!("{:.4}", rng.below(3) as f64 / 1000.0);
                let mut after = None;
                let canceller = if moment == 0 {
                    handle.cancel_with("before");
                    None
                } else if moment == 1 {
                    Some(tokio::spawn(async move {
                        // A random moment, not a synchronisation.
                        tokio::time::sleep(Duration::from_micros(sleep_us)).await;
                        handle.cancel_with("during");
                    }))
                } else {
                    after = Some(handle);
                    None
                };
                let res = obj
                    .with_ctx(&ctx, &cancel)
                    .query(
                        "SELECT $1::int4, pg_sleep($2::float8)",
                        &[&n, &server_sleep.parse::<f64>().unwrap()],
                    )
                    .await;
                match res {
                    Ok(rows) => {
                        assert_eq!(rows.len(), 1);
                        assert_eq!(rows[0].get::<_, i32>(0), n, "a finished query returns its rows");
                        finished.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(Error::Context(e)) => {
                        assert!(
                            moment != 2 || e.is_deadline_exceeded(),
                            "cancelled after it returned? {e}"
                        );
                        let own = ctx.error().expect("a context error only from a done context");
                        assert_eq!(own.kind(), e.kind());
                        cancelled.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => panic!("query {n} (moment {moment}) failed on its own: {e:?}"),
                }
                if let Some(h) = after {
                    h.cancel_with("after");
                }
                if let Some(c) = canceller {
                    c.await.unwrap();
                }
                // The connection goes back to the pool now: a late cancel
                // from this query would hit the next user's.
                drop(obj);
            }
        }));
    }
    for w in workers {
        bounded(w).await.unwrap();
    }
    let (f, c) = (finished.load(Ordering::Relaxed), cancelled.load(Ordering::Relaxed));
    eprintln!("1000 queries on a pool of 4: {f} finished with their rows, {c} cancelled");
    assert_eq!(f + c, TOTAL as usize);
    assert!(f > 100 && c > 100, "both outcomes exercised: {f} / {c}");
    let status = pool.status();
    assert_eq!(status.size, 4, "{status:?}");
    let mut held = Vec::new();
    for _ in 0..4 {
        let obj = bounded(pool.get()).await.unwrap();
        let row = bounded(obj.query_one("SELECT 1, current_setting('statement_timeout')", &[]))
            .await
            .unwrap();
        assert_eq!(row.get::<_, i32>(0), 1);
        assert_eq!(row.get::<_, &str>(1), "0", "statement_timeout leaked into the pool");
        held.push(obj);
    }
    // Every backend of this database goes idle (bounded: one may still be
    // between its error message and its ReadyForQuery).
    let t = Instant::now();
    loop {
        let n: i64 = bounded(held[0].query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND state <> 'idle' AND pid <> pg_backend_pid()",
            &[&db.name],
        ))
        .await
        .unwrap()
        .get(0);
        if n == 0 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(2), "{n} backends still busy");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = db.pg;
}

/// Cancels `handle` right after the inner future's first poll (which sends
/// the prepare round trip's request), then polls it to its end.
struct CancelAfterFirstPoll<F> {
    inner: Pin<Box<F>>,
    handle: Option<ctxcore::CancelHandle>,
}

impl<F: Future> Future for CancelAfterFirstPoll<F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskCx<'_>) -> Poll<F::Output> {
        let r = self.inner.as_mut().poll(cx);
        if let Some(h) = self.handle.take() {
            h.cancel_with("early");
        }
        r
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_landing_before_the_statement_runs_is_sent_again() {
    let _quiet = QUIET.lock().await;
    let db = Db::new("early");
    let client = db.connect().await;
    let backend = pid(&client).await;
    for round in 0..5 {
        let (ctx, handle) = Context::background().with_cancel();
        // A text statement: tokio-postgres prepares it first (a round trip),
        // so the first cancel may reach an idle backend and be discarded.
        let fut = client.with_ctx(&ctx, &db.cancel).query("SELECT pg_sleep(30)", &[]);
        let t = Instant::now();
        let err = bounded(CancelAfterFirstPoll {
            inner: Box::pin(fut),
            handle: Some(handle),
        })
        .await
        .unwrap_err();
        let took = t.elapsed();
        eprintln!("round {round}: cancelled at the first poll, returned after {took:?}");
        assert_eq!(
            err.context_error().map(|e| e.cause().as_str()),
            Some(Some("early")),
            "{err:?}"
        );
        assert!(took < Duration::from_millis(1500), "{took:?}");
        assert_goes_idle(&db, backend).await;
        bounded(client.execute("SELECT pg_sleep(0.1)", &[])).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_while_the_statement_runs_on_the_server() {
    let db = Db::new("dropmid");
    let client = db.connect().await;
    let backend = pid(&client).await;
    for deadline in [false, true] {
        let (ctx, _h) = if deadline {
            Context::background().with_timeout(Duration::from_secs(60))
        } else {
            Context::background().with_cancel()
        };
        {
            let fut = client.with_ctx(&ctx, &db.cancel).query("SELECT pg_sleep(30)", &[]);
            tokio::pin!(fut);
            let watch = async {
                // Until the server really runs it (each check bounded).
                let t = Instant::now();
                loop {
                    let (state, query) = db.activity(backend).await;
                    if state == "active" && query.contains("pg_sleep(30)") {
                        return;
                    }
                    assert!(t.elapsed() < Duration::from_secs(5), "never ran: {state} {query}");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            };
            tokio::select! {
                r = &mut fut => panic!("pg_sleep(30) returned: {r:?}"),
                () = watch => {}
            }
            // `fut` is dropped here, mid-statement.
        }
        let t = Instant::now();
        let row = bounded(client.query_one("SELECT current_setting('statement_timeout')", &[]))
            .await
            .unwrap();
        let took = t.elapsed();
        eprintln!("dropped mid-statement (deadline {deadline}): next statement answered after {took:?}");
        assert!(took < Duration::from_secs(2), "{took:?}");
        assert_eq!(row.get::<_, &str>(0), "0");
        assert_goes_idle(&db, backend).await;
        bounded(client.execute("SELECT pg_sleep(0.15)", &[])).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_transaction_statement_timeout_does_not_outlive_it() {
    let db = Db::new("tx");
    let mut client = db.connect().await;
    bounded(client.batch_execute("CREATE TABLE t (x int)")).await.unwrap();
    // Committed: the restore ran inside the transaction too.
    let tx = bounded(client.transaction()).await.unwrap();
    let (ctx, _h) = Context::background().with_timeout(Duration::from_secs(30));
    bounded(tx.with_ctx(&ctx, &db.cancel).execute("INSERT INTO t VALUES (1)", &[]))
        .await
        .unwrap();
    bounded(tx.commit()).await.unwrap();
    let row = bounded(client.query_one("SELECT current_setting('statement_timeout')", &[]))
        .await
        .unwrap();
    assert_eq!(row.get::<_, &str>(0), "0");
    // Stopped by the deadline: the transaction is aborted, ROLLBACK undoes the SET.
    let tx = bounded(client.transaction()).await.unwrap();
    let (ctx, _h) = Context::background().with_timeout(Duration::from_millis(100));
    let err = bounded(tx.with_ctx(&ctx, &db.cancel).query("SELECT pg_sleep(30)", &[]))
        .await
        .unwrap_err();
    assert!(err.context_error().is_some_and(|e| e.is_deadline_exceeded()), "{err:?}");
    bounded(tx.rollback()).await.unwrap();
    let row = bounded(client.query_one("SELECT current_setting('statement_timeout'), count(*) FROM t", &[]))
        .await
        .unwrap();
    assert_eq!(row.get::<_, &str>(0), "0");
    assert_eq!(row.get::<_, i64>(1), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_a_unix_socket_the_cancel_goes_there_too() {
    let db = Db::new("unix");
    let config: Config = format!(
        "host={} port={} user=postgres dbname={}",
        db.pg.dir().display(),
        db.pg.port(),
        db.name
    )
    .parse()
    .unwrap();
    let cancel = Canceller::new(&config);
    let (client, conn) = bounded(config.connect(NoTls)).await.unwrap();
    tokio::spawn(conn);
    let backend = pid(&client).await;
    let (ctx, handle) = Context::background().with_cancel();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        handle.cancel_with("unix");
    });
    let t = Instant::now();
    let err = bounded(
        client
            .with_ctx(&ctx, &cancel)
            .statement_timeout(false)
            .query("SELECT pg_sleep(30)", &[]),
    )
    .await
    .unwrap_err();
    assert_eq!(
        err.context_error().map(|e| e.cause().as_str()),
        Some(Some("unix")),
        "{err:?}"
    );
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    canceller.await.unwrap();
    assert_goes_idle(&db, backend).await;
}

// From the adversarial review: the call used to end with `RESET
// statement_timeout`, which wiped the user's own setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_own_statement_timeout_survives_a_call() {
    let db = Db::new("own_timeout");
    let client = db.connect().await;
    bounded(client.batch_execute("SET statement_timeout = '1234ms'"))
        .await
        .unwrap();
    let (ctx, _h) = Context::background().with_timeout(Duration::from_secs(10));
    bounded(client.with_ctx(&ctx, &db.cancel).query("SELECT 1", &[]))
        .await
        .unwrap();
    let row = bounded(client.query_one("SHOW statement_timeout", &[])).await.unwrap();
    assert_eq!(
        row.get::<_, &str>(0),
        "1234ms",
        "the user's own statement_timeout was lost"
    );
    // Also after a statement the deadline stopped (the server's own timeout).
    let (ctx, _h) = Context::background().with_timeout(Duration::from_millis(100));
    let err = bounded(client.with_ctx(&ctx, &db.cancel).query("SELECT pg_sleep(30)", &[]))
        .await
        .unwrap_err();
    assert!(err.context_error().is_some_and(|e| e.is_deadline_exceeded()), "{err:?}");
    let row = bounded(client.query_one("SHOW statement_timeout", &[])).await.unwrap();
    assert_eq!(row.get::<_, &str>(0), "1234ms");
    // Two calls interleaved on one shared Client (restores out of order):
    // the user's value comes back once both are done.
    let (long, _h1) = Context::background().with_timeout(Duration::from_secs(10));
    let (short, _h2) = Context::background().with_timeout(Duration::from_secs(5));
    let a = client.with_ctx(&long, &db.cancel).query("SELECT pg_sleep(0.2)", &[]);
    let b = client.with_ctx(&short, &db.cancel).query("SELECT 1", &[]);
    let (a, b) = bounded(async { tokio::join!(a, b) }).await;
    a.unwrap();
    b.unwrap();
    let row = bounded(client.query_one("SHOW statement_timeout", &[])).await.unwrap();
    assert_eq!(row.get::<_, &str>(0), "1234ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_own_statement_timeout_survives_a_call_in_a_transaction() {
    let db = Db::new("own_timeout_tx");
    let mut client = db.connect().await;
    bounded(client.batch_execute("SET statement_timeout = '1234ms'"))
        .await
        .unwrap();
    let show = "SELECT current_setting('statement_timeout')";
    for commit in [true, false] {
        // SET LOCAL: kept for the rest of the transaction, gone after it.
        let tx = bounded(client.transaction()).await.unwrap();
        bounded(tx.batch_execute("SET LOCAL statement_timeout = '4321ms'"))
            .await
            .unwrap();
        let (ctx, _h) = Context::background().with_timeout(Duration::from_secs(10));
        bounded(tx.with_ctx(&ctx, &db.cancel).query("SELECT 1", &[]))
            .await
            .unwrap();
        let row = bounded(tx.query_one(show, &[])).await.unwrap();
        assert_eq!(row.get::<_, &str>(0), "4321ms", "SET LOCAL lost in the transaction");
        if commit {
            bounded(tx.commit()).await.unwrap();
        } else {
            bounded(tx.rollback()).await.unwrap();
        }
        let row = bounded(client.query_one(show, &[])).await.unwrap();
        assert_eq!(
            row.get::<_, &str>(0),
            "1234ms",
            "the SET LOCAL outlived its transaction"
        );
        // A session-level SET inside the transaction survives its commit.
        let tx = bounded(client.transaction()).await.unwrap();
        bounded(tx.batch_execute("SET statement_timeout = '2222ms'"))
            .await
            .unwrap();
        bounded(tx.with_ctx(&ctx, &db.cancel).query("SELECT 1", &[]))
            .await
            .unwrap();
        let row = bounded(tx.query_one(show, &[])).await.unwrap();
        assert_eq!(row.get::<_, &str>(0), "2222ms");
        bounded(tx.commit()).await.unwrap();
        let row = bounded(client.query_one(show, &[])).await.unwrap();
        assert_eq!(row.get::<_, &str>(0), "2222ms");
        bounded(client.batch_execute("SET statement_timeout = '1234ms'"))
            .await
            .unwrap();
    }
}

// From the adversarial review: with failover, the cancel went to the first
// host only (here a refusing port) while the client was connected to the
// second: the statement kept running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_host_config_cancel_reaches_the_connected_server() {
    let db = Db::new("multihost");
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config: Config = format!(
        "host=127.0.0.1,127.0.0.1 port={closed},{} user=postgres dbname={} connect_timeout=10",
        db.pg.port(),
        db.name
    )
    .parse()
    .unwrap();
    let (client, conn) = bounded(config.connect(NoTls)).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let backend = pid(&client).await;
    let cancel = Canceller::new(&config);
    let (ctx, h) = Context::background().with_cancel();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        h.cancel_with("failover");
    });
    let t = Instant::now();
    let err = bounded(
        client
            .with_ctx(&ctx, &cancel)
            .answer_timeout(Duration::from_millis(500))
            .query("SELECT pg_sleep(3)", &[]),
    )
    .await
    .unwrap_err();
    assert_eq!(
        err.context_error().map(|e| e.cause().as_str()),
        Some(Some("failover")),
        "{err:?}"
    );
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "answer_timeout expired: {:?}",
        t.elapsed()
    );
    let t = Instant::now();
    bounded(client.query_one("SELECT 1", &[])).await.unwrap();
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "the cancelled statement kept running on the server: next statement waited {:?}",
        t.elapsed()
    );
    assert_goes_idle(&db, backend).await;
}

/// Polls `f` once.
async fn poll_once<F: Future + Unpin>(mut f: F) -> Option<F::Output> {
    std::future::poll_fn(|cx| {
        Poll::Ready(match Pin::new(&mut f).poll(cx) {
            Poll::Ready(v) => Some(v),
            Poll::Pending => None,
        })
    })
    .await
}

// From the adversarial review; a known limitation (module docs, "A leaked
// call"): a call future that is leaked (`mem::forget`) never disarms its
// cancel, so cancelling its context later cancels whatever the backend runs
// then. This asserts the documented behaviour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_limitation_a_forgotten_call_stays_armed() {
    let db = Db::new("forget");
    let client = Arc::new(db.connect().await);
    let (ctx, h) = Context::background().with_cancel();
    {
        let mut fut = Box::pin(client.with_ctx(&ctx, &db.cancel).query("SELECT 1", &[]));
        // Polled once: the statement is sent, the cancel armed.
        let _ = poll_once(fut.as_mut()).await;
        std::mem::forget(fut);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Another statement on the same connection, with no context at all.
    let other = tokio::spawn({
        let client = Arc::clone(&client);
        async move { client.query("SELECT pg_sleep(2)", &[]).await.map(|_| ()) }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    h.cancel_with("long-finished request");
    let r = bounded(other).await.unwrap();
    assert_eq!(
        r.as_ref().err().and_then(|e| e.code()),
        Some(&SqlState::QUERY_CANCELED),
        "the documented limitation: the leaked call's cancel hits the next statement: {r:?}"
    );
}
