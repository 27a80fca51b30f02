//! [`Pool`]: the query pool and the small pool that carries the cancels
//! (see the [module docs](super)).

use super::*;
/// A [`PgPool`] whose connections run queries under a context: the query
/// pool itself, and the small pool that carries the cancels.
///
/// See the [module docs](super).
///
/// ```no_run
/// use ctxcore::Context;
/// use ctxcore_sql::sqlx::Pool;
///
/// # async fn demo(pg: sqlx::PgPool) -> Result<(), ctxcore_sql::Error<sqlx::Error>> {
/// let pool = Pool::new(pg);
/// let ctx = Context::background();
/// let mut conn = pool.acquire(&ctx).await?;
/// conn.execute(&ctx, sqlx::query("SELECT 1")).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Pool {
    pool: PgPool,
    cancel: PgPool,
}

impl Pool {
    /// Wraps `pool`; the cancel pool (at most two connections, opened on the
    /// first cancel or by [`warm_up`](Self::warm_up), never reaped) uses the
    /// same connect options, hence the same role: `pg_cancel_backend` needs
    /// the role of the backend it cancels (or `pg_signal_backend`). Needs no
    /// runtime.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), sqlx::Error> {
    /// let pg = sqlx::postgres::PgPoolOptions::new().max_connections(8).connect("postgres://localhost/app").await?;
    /// let pool = ctxcore_sql::sqlx::Pool::new(pg);
    /// # Ok(())
    /// # }
    /// ```
    pub fn new(pool: PgPool) -> Self {
        let options = (*pool.connect_options()).clone();
        let cancel = PgPoolOptions::new()
            .max_connections(2)
            .min_connections(0)
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy_with(options);
        Pool { pool, cancel }
    }

    /// Wraps `pool` with a cancel pool of your own (e.g. with another role
    /// allowed to `pg_cancel_backend`, or pre-connected). It must reach the
    /// same server, and should not be `pool` itself (see the pitfalls in the
    /// [module docs](super)).
    ///
    /// ```no_run
    /// # async fn demo(pg: sqlx::PgPool) -> Result<(), sqlx::Error> {
    /// let cancel = sqlx::postgres::PgPoolOptions::new()
    ///     .max_connections(1)
    ///     .min_connections(1)
    ///     .connect("postgres://localhost/app")
    ///     .await?;
    /// let pool = ctxcore_sql::sqlx::Pool::with_cancel_pool(pg, cancel);
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_cancel_pool(pool: PgPool, cancel: PgPool) -> Self {
        Pool { pool, cancel }
    }

    /// Opens a connection of the cancel pool now, so that the first cancel
    /// does not pay for connecting (a few milliseconds, more under load).
    ///
    /// ```no_run
    /// # async fn demo(pool: ctxcore_sql::sqlx::Pool) -> Result<(), sqlx::Error> {
    /// pool.warm_up().await?;
    /// assert!(pool.cancel_pool().size() >= 1);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn warm_up(&self) -> Result<(), sqlx::Error> {
        let conn = self.cancel.acquire().await?;
        drop(conn);
        Ok(())
    }

    /// The query pool.
    ///
    /// ```no_run
    /// # fn demo(pool: ctxcore_sql::sqlx::Pool) {
    /// println!("{} connections", pool.get_ref().size());
    /// # }
    /// ```
    pub fn get_ref(&self) -> &PgPool {
        &self.pool
    }

    /// The pool that carries the cancels.
    ///
    /// ```no_run
    /// # fn demo(pool: ctxcore_sql::sqlx::Pool) {
    /// println!("{} cancel connections", pool.cancel_pool().size());
    /// # }
    /// ```
    pub fn cancel_pool(&self) -> &PgPool {
        &self.cancel
    }

    /// Takes a connection from the pool, waiting at most until the context
    /// is done (then [`Error::Context`]). Must be called on a tokio runtime
    /// (as sqlx itself); the cancels of the [`Conn`] run on that runtime.
    ///
    /// ```no_run
    /// use ctxcore::Context;
    /// use std::time::Duration;
    ///
    /// # async fn demo(pool: ctxcore_sql::sqlx::Pool) -> Result<(), ctxcore_sql::Error<sqlx::Error>> {
    /// let (ctx, _h) = Context::background().with_timeout(Duration::from_secs(1));
    /// let conn = pool.acquire(&ctx).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn acquire(&self, ctx: &Context) -> Result<Conn, Error<sqlx::Error>> {
        if let Some(e) = ctx.error() {
            return Err(Error::Context(e));
        }
        let rt = Handle::try_current().map_err(|e| Error::Driver(sqlx::Error::Io(std::io::Error::other(e))))?;
        match ctx.run(self.pool.acquire()).await {
            Ok(Ok(conn)) => Ok(Conn::with_runtime(conn, self.cancel.clone(), rt)),
            Ok(Err(e)) => Err(Error::Driver(e)),
            Err(kind) => Err(Error::Context(ctx.error().unwrap_or_else(|| kind.into()))),
        }
    }

    /// Wraps a connection already taken from the query pool. Must be called
    /// on a tokio runtime.
    ///
    /// ```no_run
    /// # async fn demo(pool: ctxcore_sql::sqlx::Pool) -> Result<(), sqlx::Error> {
    /// let raw = pool.get_ref().acquire().await?;
    /// let conn = pool.attach(raw)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn attach(&self, conn: PoolConnection<Postgres>) -> Result<Conn, sqlx::Error> {
        let rt = Handle::try_current().map_err(|e| sqlx::Error::Io(std::io::Error::other(e)))?;
        Ok(Conn::with_runtime(conn, self.cancel.clone(), rt))
    }
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("size", &self.pool.size())
            .field("idle", &self.pool.num_idle())
            .field("cancel_size", &self.cancel.size())
            .finish()
    }
}
