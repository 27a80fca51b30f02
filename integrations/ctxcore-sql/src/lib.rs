//! Queries that really stop: run SQL under a [`ctxcore::Context`], and when
//! the context is done (cancelled, or past its deadline) the *engine* stops
//! the statement — not just the Rust future waiting for it — and the call
//! returns the context's error with its cause.
//!
//! | feature | module | how the statement is stopped |
//! | --- | --- | --- |
//! | `rusqlite` | [`rusqlite`](mod@crate::rusqlite) | `sqlite3_interrupt` from an after-func, plus a progress handler polling the context (SQLite drops an interrupt that lands between statements) |
//! | `tokio-postgres` | [`postgres`](mod@crate::postgres) | a PostgreSQL cancel request, and `statement_timeout` from the time left |
//! | `sqlx` | [`sqlx`](mod@crate::sqlx) | `pg_cancel_backend` over a cancel pool of its own, and `statement_timeout` from the time left |
//!
//! None is on by default; `full` turns on all three.
//!
//! # The contract, for every driver
//!
//! - A context already done when the call starts returns
//!   [`Error::Context`] at once: nothing is sent, the statement never runs.
//! - A statement that the context stopped returns [`Error::Context`] with the
//!   context's [`ContextError`](ctxcore::ContextError) (kind *and* cause); a
//!   server-side timeout set from the deadline counts as the context's
//!   `DeadlineExceeded` once that deadline has passed. The converse does not
//!   hold: when the context is done and the server does not answer within the
//!   driver's bound (tokio-postgres: `WithContext::answer_timeout`), the
//!   call also returns [`Error::Context`], and the statement may still
//!   complete (and commit) on the server.
//! - Any other failure (a syntax error, a constraint violation, a broken
//!   connection) is [`Error::Driver`], even if the context is done by then.
//! - The cancel is armed with an after-func that is stopped **and waited
//!   for** ([`AfterFunc::stop_and_wait`](ctxcore::AfterFunc::stop_and_wait),
//!   or the async [`stop_wait`](ctxcore::AfterFunc::stop_wait)) before the
//!   call returns, and the connection is kept until the statement has
//!   finished: a late cancel from a finished call never hits the next
//!   statement on a pooled connection. Each module's docs list the pitfalls
//!   of the naive ways.
//!
//! # SQLite (feature `rusqlite`)
//!
//! ```
//! # #[cfg(feature = "rusqlite")] {
//! use ctxcore::Context;
//! use ctxcore_sql::rusqlite::ConnectionExt;
//! use std::time::Duration;
//!
//! let mut conn = rusqlite::Connection::open_in_memory().unwrap();
//! let (ctx, cancel) = Context::background().with_timeout(Duration::from_secs(5));
//! let n: i64 = conn.query_row_ctx(&ctx, "SELECT 6 * 7", [], |r| r.get(0)).unwrap();
//! assert_eq!(n, 42);
//!
//! cancel.cancel_with("client went away");
//! let err = conn.query_row_ctx(&ctx, "SELECT 1", [], |r| r.get::<_, i64>(0)).unwrap_err();
//! assert_eq!(err.to_string(), "context canceled: client went away");
//! # }
//! ```
//!
//! # PostgreSQL with tokio-postgres (feature `tokio-postgres`)
//!
//! ```no_run
//! # #[cfg(feature = "tokio-postgres")]
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use ctxcore::Context;
//! use ctxcore_sql::postgres::{Canceller, ClientExt};
//! use std::time::Duration;
//!
//! let config: tokio_postgres::Config = "host=127.0.0.1 user=postgres".parse()?;
//! let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
//! tokio::spawn(connection);
//! let cancel = Canceller::new(&config);
//!
//! let (ctx, _h) = Context::background().with_timeout(Duration::from_millis(200));
//! let err = client.with_ctx(&ctx, &cancel).query("SELECT pg_sleep(30)", &[]).await.unwrap_err();
//! assert!(err.context_error().unwrap().is_deadline_exceeded());
//! # Ok(()) }
//! ```
//!
//! # PostgreSQL with sqlx (feature `sqlx`)
//!
//! ```no_run
//! # #[cfg(feature = "sqlx")]
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use ctxcore::Context;
//! use ctxcore_sql::sqlx::Pool;
//! use std::time::Duration;
//!
//! let pool = Pool::new(sqlx::PgPool::connect("postgres://postgres@127.0.0.1/app").await?);
//! let (ctx, _h) = Context::background().with_timeout(Duration::from_millis(200));
//! let mut conn = pool.acquire(&ctx).await?;
//! let err = conn.fetch_one(&ctx, sqlx::query("SELECT pg_sleep(30)")).await.unwrap_err();
//! assert!(err.context_error().unwrap().is_deadline_exceeded());
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod error;
pub use error::Error;

#[cfg(feature = "rusqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "rusqlite")))]
pub mod rusqlite;

#[cfg(feature = "tokio-postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio-postgres")))]
pub mod postgres;

#[cfg(feature = "sqlx")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlx")))]
pub mod sqlx;
