//! ctxcore_sql::sqlx against a real PostgreSQL: the defects an adversarial
//! review confirmed, kept as regression tests. A leaked call's cancel must
//! not hit later statements; a cancel pool with no free connection must not
//! hold the call past its deadline; a failed transaction must still be
//! rolled back under a deadline, whether or not the pid was read before.
#![cfg(feature = "sqlx")]

mod support;

use std::future::Future;
use std::time::{Duration, Instant};

use ctxcore::Context;
use ctxcore_sql::sqlx::Pool;
use sqlx::postgres::PgPoolOptions;
use sqlx::Row;
use support::pg::PgCluster;

/// Every wait of these tests is bounded by this.
const LIMIT: Duration = Duration::from_secs(20);

async fn bounded<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(LIMIT, f).await.expect("bounded wait")
}

/// A pool of two on a database of its own.
async fn raw(name: &'static str) -> sqlx::PgPool {
    let pg = PgCluster::shared();
    let db = tokio::task::spawn_blocking(move || pg.create_database(name))
        .await
        .unwrap();
    PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(LIMIT)
        .connect(&pg.url(&db))
        .await
        .unwrap()
}

fn sqlstate(e: &ctxcore_sql::Error<sqlx::Error>) -> Option<String> {
    match e {
        ctxcore_sql::Error::Driver(sqlx::Error::Database(db)) => db.code().map(|c| c.into_owned()),
        _ => None,
    }
}

/// A leaked (`mem::forget`) call keeps its after-func armed; when its context
/// is cancelled later, the cancel must not reach the statements that the
/// connection runs afterwards under a live context.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forgotten_call_cancel_hits_later_statements() {
    let pool = Pool::new(raw("rev_sqlx_forget").await);
    let bg = Context::background();
    let mut conn = bounded(pool.acquire(&bg)).await.unwrap();
    bounded(conn.execute(&bg, sqlx::query("SELECT 1"))).await.unwrap();
    let (ctx, h) = Context::background().with_cancel();
    {
        let mut fut = Box::pin(conn.execute(&ctx, sqlx::query("SELECT pg_sleep(0.05)")));
        // Poll until the statement is in flight, then leak the future.
        let _ = tokio::time::timeout(Duration::from_millis(20), fut.as_mut()).await;
        std::mem::forget(fut);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The leaked call's context is cancelled: its cancel task starts, with
    // the connection idle (the cancel is ignored there).
    h.cancel_with("a request that ended long ago");
    let mut failed = Vec::new();
    for i in 0..3 {
        // Unrelated work on the same connection, under a context nobody cancels.
        let r = bounded(conn.execute(&bg, sqlx::query("SELECT pg_sleep(0.6)"))).await;
        if let Err(e) = r {
            failed.push((i, e.to_string()));
        }
    }
    assert!(
        failed.is_empty(),
        "statements with a live context were cancelled: {failed:?}"
    );
    // Back in the pool, the connection is not hit either.
    drop(conn);
    let mut again = bounded(pool.get_ref().acquire()).await.unwrap();
    sqlx::query("SELECT pg_sleep(0.6)")
        .execute(&mut *again)
        .await
        .expect("a statement on the pooled connection was cancelled");
}

/// No cancel connection is free (here: the only one is held): the server
/// stops the statement at the deadline (statement_timeout), and the call
/// returns then, not when the cancel pool's acquire gives up (3 s here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_cancel_pool_delays_the_call_past_the_deadline() {
    let main = raw("rev_sqlx_unreach").await;
    let cancel = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(3))
        .connect_with((*main.connect_options()).clone())
        .await
        .unwrap();
    // Every cancel connection busy (e.g. other cancels stuck): none free.
    let held = cancel.acquire().await.unwrap();
    let pool = Pool::with_cancel_pool(main, cancel);
    let (ctx, _h) = Context::background().with_timeout(Duration::from_millis(200));
    let mut conn = bounded(pool.acquire(&ctx)).await.unwrap();
    let t = Instant::now();
    let err = bounded(conn.execute(&ctx, sqlx::query("SELECT pg_sleep(10)")))
        .await
        .unwrap_err();
    let took = t.elapsed();
    assert!(err.is_context(), "{err:?}");
    assert!(err.context_error().unwrap().is_deadline_exceeded(), "{err:?}");
    assert!(
        took < Duration::from_millis(1000),
        "returned {took:?} after the call started (deadline 200 ms)"
    );
    // The connection is fine, its statement_timeout put back.
    drop(held);
    let bg = Context::background();
    let row = bounded(conn.fetch_one(&bg, sqlx::query("SHOW statement_timeout")))
        .await
        .unwrap();
    assert_eq!(row.get::<String, _>(0), "0");
}

/// In a failed transaction (25P02) the wrapper's own `set_config` fails; the
/// user's ROLLBACK must still run (without statement_timeout) and succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_of_a_failed_transaction_under_a_deadline() {
    let pool = Pool::new(raw("rev_sqlx_rollback").await);
    let (ctx, _h) = Context::background().with_timeout(Duration::from_secs(10));
    let mut conn = bounded(pool.acquire(&ctx)).await.unwrap();
    bounded(conn.execute(&ctx, sqlx::query("BEGIN"))).await.unwrap();
    let e = bounded(conn.execute(&ctx, sqlx::query("SELECT 1/0")))
        .await
        .unwrap_err();
    assert!(!e.is_context());
    assert_eq!(sqlstate(&e).as_deref(), Some("22012"), "{e:?}");
    // Any other statement is the server's 25P02, a driver error.
    let e = bounded(conn.execute(&ctx, sqlx::query("SELECT 1"))).await.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("25P02"), "{e:?}");
    let r = bounded(conn.execute(&ctx, sqlx::query("ROLLBACK"))).await;
    assert!(r.is_ok(), "ROLLBACK of the failed transaction was not run: {r:?}");
    // Out of the transaction, with the setting as it was.
    let row = bounded(conn.fetch_one(
        &ctx,
        sqlx::query("SELECT pg_current_xact_id_if_assigned() IS NULL, current_setting('statement_timeout')"),
    ))
    .await
    .unwrap();
    assert!(row.get::<bool, _>(0));
    let bg = Context::background();
    let row = bounded(conn.fetch_one(&bg, sqlx::query("SHOW statement_timeout")))
        .await
        .unwrap();
    assert_eq!(row.get::<String, _>(0), "0");
}

/// A connection attached while already in a failed transaction: its pid
/// cannot be read (every query but ROLLBACK/COMMIT fails), yet a ROLLBACK
/// under a deadline runs; the pid is read on the next call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_on_an_attached_connection_in_a_failed_transaction() {
    let pool = Pool::new(raw("rev_sqlx_attach_aborted").await);
    let mut raw_conn = bounded(pool.get_ref().acquire()).await.unwrap();
    sqlx::query("BEGIN").execute(&mut *raw_conn).await.unwrap();
    sqlx::query("SELECT 1/0").execute(&mut *raw_conn).await.unwrap_err();
    let mut conn = pool.attach(raw_conn).unwrap();
    assert_eq!(conn.pid(), None);
    let (ctx, _h) = Context::background().with_timeout(Duration::from_secs(10));
    let e = bounded(conn.execute(&ctx, sqlx::query("SELECT 1"))).await.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("25P02"), "{e:?}");
    assert_eq!(conn.pid(), None);
    let r = bounded(conn.execute(&ctx, sqlx::query("ROLLBACK"))).await;
    assert!(r.is_ok(), "ROLLBACK of the failed transaction was not run: {r:?}");
    // Now the pid is read, and a deadline stops a statement on the server.
    bounded(conn.execute(&ctx, sqlx::query("SELECT 1"))).await.unwrap();
    assert!(conn.pid().is_some());
    let (short, _h) = Context::background().with_timeout(Duration::from_millis(200));
    let err = bounded(conn.execute(&short, sqlx::query("SELECT pg_sleep(10)")))
        .await
        .unwrap_err();
    assert!(err.context_error().unwrap().is_deadline_exceeded(), "{err:?}");
    let bg = Context::background();
    let row = bounded(conn.fetch_one(&bg, sqlx::query("SHOW statement_timeout")))
        .await
        .unwrap();
    assert_eq!(row.get::<String, _>(0), "0");
}

/// A [`Conn`](ctxcore_sql::sqlx::Conn) dropped inside a failed transaction
/// whose deadline's `statement_timeout` could not be put back: the pool never
/// hands out that connection with the setting (or the failed transaction)
/// left over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_in_a_failed_transaction_leaves_nothing_behind() {
    let pg = PgCluster::shared();
    let db = tokio::task::spawn_blocking(move || pg.create_database("rev_sqlx_drop_aborted"))
        .await
        .unwrap();
    let one = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(LIMIT)
        .connect(&pg.url(&db))
        .await
        .unwrap();
    let pool = Pool::new(one);
    let (ctx, _h) = Context::background().with_timeout(Duration::from_secs(10));
    let mut conn = bounded(pool.acquire(&ctx)).await.unwrap();
    bounded(conn.execute(&ctx, sqlx::query("BEGIN"))).await.unwrap();
    bounded(conn.execute(&ctx, sqlx::query("SELECT 1/0")))
        .await
        .unwrap_err();
    drop(conn);
    let mut next = bounded(pool.get_ref().acquire()).await.unwrap();
    let (timeout, in_tx): (String, bool) =
        sqlx::query_as("SELECT current_setting('statement_timeout'), pg_current_xact_id_if_assigned() IS NOT NULL")
            .fetch_one(&mut *next)
            .await
            .expect("the next user got a connection in a failed transaction");
    assert_eq!(timeout, "0");
    assert!(!in_tx);
}
