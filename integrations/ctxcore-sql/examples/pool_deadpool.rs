//! A `deadpool-postgres` pool whose queries run under contexts. Starts its
//! own throwaway PostgreSQL cluster (the test harness), so it runs with no
//! setup beyond PostgreSQL's binaries being installed.
//!
//! `cargo run -p ctxcore-sql --features tokio-postgres --example pool_deadpool`

#[path = "../tests/support/pg.rs"]
mod pg;

use std::time::Duration;

use ctxcore::Context;
use ctxcore_sql::postgres::{Canceller, ClientExt};
use deadpool_postgres::{Manager, Pool};
use tokio_postgres::{Config, NoTls};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cluster = pg::PgCluster::start();
    let db = cluster.create_database("deadpool");
    let config: Config = cluster.config(&db).parse()?;

    // One canceller next to the pool: cancel requests go to the same server.
    let cancel = Canceller::new(&config);
    let pool = Pool::builder(Manager::new(config, NoTls)).max_size(4).build()?;

    // A request's context: 200 ms for everything it does.
    let (ctx, _h) = Context::background().with_timeout_cause(Duration::from_millis(200), "request budget");

    // `Object` derefs to `tokio_postgres::Client`, so `with_ctx` works on it.
    let conn = pool.get().await?;
    let row = conn.with_ctx(&ctx, &cancel).query_one("SELECT 40 + 2", &[]).await?;
    println!("answer: {}", row.get::<_, i32>(0));

    // Too slow for the budget: the server stops it, we get the context's error.
    let err = conn
        .with_ctx(&ctx, &cancel)
        .query("SELECT pg_sleep(30)", &[])
        .await
        .unwrap_err();
    println!("slow query: {err}");
    assert!(err.context_error().is_some_and(|e| e.is_deadline_exceeded()));
    drop(conn);

    // The connection went back to the pool clean: no statement_timeout left
    // on it, no late cancel waiting for its next user.
    let conn = pool.get().await?;
    let row = conn.query_one("SHOW statement_timeout", &[]).await?;
    println!(
        "statement_timeout on the pooled connection afterwards: {:?}",
        row.get::<_, &str>(0)
    );
    assert_eq!(row.get::<_, &str>(0), "0");
    // A fresh request's context on it works as before.
    let (fresh, _h) = Context::background().with_timeout(Duration::from_secs(5));
    let row = conn
        .with_ctx(&fresh, &cancel)
        .query_one("SELECT 'still fine'", &[])
        .await?;
    println!("{}", row.get::<_, &str>(0));
    println!("pool: {:?}", pool.status());
    drop(conn);
    drop(pool);
    drop(cluster);
    Ok(())
}
