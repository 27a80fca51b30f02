//! The cancel of one query: a [`Slot`] per call, whose task sends
//! `pg_cancel_backend(pid)` over the cancel pool (resent until the query
//! answers), only while the connection's generation is the one the call was
//! made in, and is awaited (or aborted, if nothing was sent) before the
//! connection is used again (see the [module docs](super)).

use super::*;
/// The cancel of one query.
pub(super) struct Slot {
    pub(super) pid: i32,
    pool: PgPool,
    rt: Handle,
    gen: Arc<Generation>,
    /// The generation this slot was made in: it sends only while it lasts.
    born: u64,
    inner: Mutex<SlotInner>,
}

struct SlotInner {
    /// The query has answered: a cancel must no longer start.
    finished: bool,
    /// A `pg_cancel_backend` is being sent: `finish` awaits it rather than
    /// aborting the task.
    sending: bool,
    task: Option<JoinHandle<()>>,
}

impl Slot {
    pub(super) fn new(pid: i32, pool: &PgPool, rt: &Handle, gen: &Arc<Generation>) -> Arc<Self> {
        Arc::new(Slot {
            pid,
            pool: pool.clone(),
            rt: rt.clone(),
            gen: gen.clone(),
            born: gen.current.load(Ordering::Acquire),
            inner: Mutex::new(SlotInner {
                finished: false,
                sending: false,
                task: None,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SlotInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the connection has moved on from this slot's query.
    fn retired(&self) -> bool {
        self.gen.current.load(Ordering::Acquire) != self.born
    }

    /// Starts the cancel (once), unless the query has already answered or
    /// the connection has moved on.
    pub(super) fn fire(self: &Arc<Self>) {
        let mut inner = self.lock();
        if inner.finished || inner.task.is_some() || self.retired() {
            return;
        }
        let me = self.clone();
        inner.task = Some(self.rt.spawn(async move { me.cancel_loop().await }));
    }

    /// Sends `pg_cancel_backend` until the query has answered (resending, as
    /// a cancel that arrives between protocol messages is ignored). The cancel
    /// connection is acquired first, with nothing held, so that `finish` may
    /// abort the task while it waits for one (nothing was sent); the send
    /// itself runs under the generation's lock, and only while the generation
    /// is this slot's.
    async fn cancel_loop(&self) {
        let mut wait = FIRST_RESEND;
        for _ in 0..MAX_CANCELS {
            if let Ok(mut cancel) = self.pool.acquire().await {
                {
                    let mut inner = self.lock();
                    if inner.finished {
                        return;
                    }
                    inner.sending = true;
                }
                let sent = {
                    let _sending = self.gen.send.lock().await;
                    if self.retired() {
                        false
                    } else {
                        CANCELS_SENT.fetch_add(1, Ordering::Relaxed);
                        let _ = sqlx::query("SELECT pg_cancel_backend($1)")
                            .bind(self.pid)
                            .execute(&mut *cancel)
                            .await;
                        true
                    }
                };
                drop(cancel);
                let mut inner = self.lock();
                inner.sending = false;
                if inner.finished || !sent {
                    return;
                }
            }
            // Between two sends (or after a failed acquire) `finish` aborts.
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(MAX_RESEND);
        }
    }

    /// The query has answered: no cancel starts any more; a task still
    /// acquiring a cancel connection or waiting to resend is aborted, and a
    /// cancel statement being sent is awaited to its answer.
    pub(super) async fn finish(&self) {
        let (task, sending) = {
            let mut inner = self.lock();
            inner.finished = true;
            (inner.task.take(), inner.sending)
        };
        if let Some(task) = task {
            if !sending {
                task.abort();
            }
            let _ = task.await;
        }
    }
}
