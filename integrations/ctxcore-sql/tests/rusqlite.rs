//! SQLite statements under a context: they really stop, and nothing leaks
//! into the next statement on the connection.
#![cfg(feature = "rusqlite")]

use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use ctxcore::{Context, Error as Kind};
use ctxcore_sql::rusqlite::ConnectionExt;
use ctxcore_sql::Error;
use rusqlite::{Connection, ErrorCode};

/// Never ends on its own.
const RUNAWAY: &str = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c";

/// Counts to `?1`, one VM loop per row.
const COUNT_TO: &str =
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?1) SELECT count(*) FROM c";

/// The cause given to a cancel, carrying who cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stop(usize);

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "stop #{}", self.0)
    }
}

impl std::error::Error for Stop {}

/// Interrupts the connection with its own handle after `limit`, so that a
/// test whose cancel does not work fails instead of hanging. Dropping the
/// guard disarms it (and waits for its thread).
struct Watchdog {
    disarm: Option<mpsc::Sender<()>>,
    fired: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Watchdog {
    fn new(conn: &Connection, limit: Duration) -> Self {
        let handle = conn.get_interrupt_handle();
        let (tx, rx) = mpsc::channel::<()>();
        let fired = Arc::new(AtomicBool::new(false));
        let f = fired.clone();
        let thread = thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                f.store(true, Ordering::SeqCst);
                handle.interrupt();
            }
        });
        Watchdog {
            disarm: Some(tx),
            fired,
            thread: Some(thread),
        }
    }

    fn fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.disarm.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn count_to(conn: &Connection, n: i64) -> rusqlite::Result<i64> {
    conn.query_row(COUNT_TO, [n], |r| r.get(0))
}

fn table(conn: &Connection) {
    conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL UNIQUE)")
        .unwrap();
}

fn rows(conn: &Connection) -> i64 {
    conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap()
}

#[test]
fn runaway_statement_cancelled_100ms_in_returns_within_50ms_with_the_cause() {
    let mut conn = Connection::open_in_memory().unwrap();
    let (ctx, cancel) = Context::background().with_cancel();
    let (tx, rx) = mpsc::channel();
    let canceller = thread::spawn(move || {
        thread::sleep(Duration::from_millis(100));
        let at = Instant::now();
        cancel.cancel_with(Stop(1));
        tx.send(at).unwrap();
    });
    let dog = Watchdog::new(&conn, Duration::from_secs(10));
    let start = Instant::now();
    let res = conn.query_row_ctx(&ctx, RUNAWAY, [], |r| r.get::<_, i64>(0));
    let returned = Instant::now();
    assert!(!dog.fired(), "the cancel did not stop the statement; the watchdog did");
    drop(dog);
    let cancelled_at = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    canceller.join().unwrap();

    let err = res.unwrap_err();
    let ce = err.context_error().expect("the context's error");
    assert_eq!(ce.kind(), Kind::Canceled);
    assert_eq!(ce.cause().downcast_ref::<Stop>(), Some(&Stop(1)));
    let latency = returned.saturating_duration_since(cancelled_at);
    eprintln!(
        "runaway CTE: ran {:?}, cancel-to-return {:?}",
        returned - start,
        latency
    );
    assert!(latency < Duration::from_millis(50), "cancel-to-return {latency:?}");
    assert!(returned - start >= Duration::from_millis(100));
    // The statement is over, and the connection serves the next one.
    assert!(!conn.is_busy());
    assert_eq!(count_to(&conn, 100_000).unwrap(), 100_000);
}

#[test]
fn deadline_of_200ms_stops_the_statement_with_deadline_exceeded() {
    let mut conn = Connection::open_in_memory().unwrap();
    let (ctx, _cancel) = Context::background().with_timeout(Duration::from_millis(200));
    let dog = Watchdog::new(&conn, Duration::from_secs(10));
    let start = Instant::now();
    let res = conn.query_row_ctx(&ctx, RUNAWAY, [], |r| r.get::<_, i64>(0));
    let took = start.elapsed();
    assert!(
        !dog.fired(),
        "the deadline did not stop the statement; the watchdog did"
    );
    drop(dog);
    eprintln!("runaway CTE under a 200 ms deadline returned after {took:?}");
    let err = res.unwrap_err();
    let ce = err.context_error().expect("the context's error");
    assert_eq!(ce.kind(), Kind::DeadlineExceeded);
    assert!(took >= Duration::from_millis(190), "{took:?}");
    assert!(took < Duration::from_millis(450), "{took:?}");
    assert!(!conn.is_busy());
    assert_eq!(count_to(&conn, 100_000).unwrap(), 100_000);
}

#[test]
fn context_done_before_the_call_returns_at_once_and_runs_nothing() {
    let mut conn = Connection::open_in_memory().unwrap();
    table(&conn);
    let (ctx, cancel) = Context::background().with_cancel();
    cancel.cancel_with(Stop(7));
    let mut called = false;
    let start = Instant::now();
    let res = conn.with_context(&ctx, |c| {
        called = true;
        c.execute("INSERT INTO t (v) VALUES ('nope')", [])
    });
    let took = start.elapsed();
    eprintln!("already-done context returned after {took:?}");
    let err = res.unwrap_err();
    assert_eq!(
        err.context_error().unwrap().cause().downcast_ref::<Stop>(),
        Some(&Stop(7))
    );
    assert!(!called, "the closure ran under a done context");
    assert_eq!(rows(&conn), 0, "the INSERT landed");
    assert!(took < Duration::from_millis(100), "{took:?}");

    // The same through the convenience methods.
    let err = conn
        .execute_ctx(&ctx, "INSERT INTO t (v) VALUES ('nope')", [])
        .unwrap_err();
    assert!(err.is_context());
    let err = conn
        .execute_batch_ctx(&ctx, "INSERT INTO t (v) VALUES ('nope')")
        .unwrap_err();
    assert!(err.is_context());
    assert_eq!(rows(&conn), 0, "the INSERT landed");

    // A deadline already passed is the same.
    let (late, _h) = Context::background().with_timeout(Duration::ZERO);
    let err = conn
        .execute_ctx(&late, "INSERT INTO t (v) VALUES ('nope')", [])
        .unwrap_err();
    assert_eq!(err.context_error().unwrap().kind(), Kind::DeadlineExceeded);
    assert_eq!(rows(&conn), 0, "the INSERT landed");
}

/// The window the progress handler closes: the cancel lands after the
/// call's check but before the statement's first step. `sqlite3_interrupt`
/// runs on an idle connection then, and SQLite clears its flag when the
/// statement starts: without the progress handler this would never end.
#[test]
fn cancel_between_check_and_first_step_is_not_lost() {
    let mut conn = Connection::open_in_memory().unwrap();
    let (ctx, cancel) = Context::background().with_cancel();
    let dog = Watchdog::new(&conn, Duration::from_secs(10));
    let start = Instant::now();
    let res = conn.with_context(&ctx, |c| {
        cancel.cancel_with(Stop(3)); // the interrupt fires now, on an idle connection
        c.query_row(RUNAWAY, [], |r| r.get::<_, i64>(0))
    });
    let took = start.elapsed();
    assert!(
        !dog.fired(),
        "the lost interrupt was not caught; the watchdog stopped it"
    );
    drop(dog);
    eprintln!("cancel in the window: statement stopped after {took:?}");
    let err = res.unwrap_err();
    assert_eq!(
        err.context_error().unwrap().cause().downcast_ref::<Stop>(),
        Some(&Stop(3))
    );
    assert!(took < Duration::from_millis(50), "{took:?}");
    assert_eq!(count_to(&conn, 100_000).unwrap(), 100_000);
}

#[test]
fn failures_of_the_statement_stay_the_drivers_errors() {
    let mut conn = Connection::open_in_memory().unwrap();
    table(&conn);
    let (ctx, cancel) = Context::background().with_cancel();

    // Syntax error.
    let err = conn.execute_ctx(&ctx, "SELEKT 1", []).unwrap_err();
    assert!(
        matches!(err, Error::Driver(rusqlite::Error::SqlInputError { .. })),
        "{err:?}"
    );

    // Constraint violation.
    conn.execute_ctx(&ctx, "INSERT INTO t (v) VALUES ('a')", []).unwrap();
    let err = conn
        .execute_ctx(&ctx, "INSERT INTO t (v) VALUES ('a')", [])
        .unwrap_err();
    let code = err.driver_error().and_then(|e| e.sqlite_error_code());
    assert_eq!(code, Some(ErrorCode::ConstraintViolation), "{err:?}");

    // No rows.
    let err = conn
        .query_row_ctx(&ctx, "SELECT id FROM t WHERE v = 'zz'", [], |r| r.get::<_, i64>(0))
        .unwrap_err();
    assert!(
        matches!(err, Error::Driver(rusqlite::Error::QueryReturnedNoRows)),
        "{err:?}"
    );

    // An interrupt the context did not cause (the caller's own handle).
    let handle = conn.get_interrupt_handle();
    let (started_tx, started_rx) = mpsc::channel::<()>();
    let interrupter = thread::spawn(move || {
        started_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        thread::sleep(Duration::from_millis(20));
        handle.interrupt();
    });
    let dog = Watchdog::new(&conn, Duration::from_secs(10));
    let err = conn
        .with_context(&ctx, |c| {
            started_tx.send(()).unwrap();
            c.query_row(RUNAWAY, [], |r| r.get::<_, i64>(0))
        })
        .unwrap_err();
    drop(dog);
    interrupter.join().unwrap();
    let code = err.driver_error().and_then(|e| e.sqlite_error_code());
    assert_eq!(code, Some(ErrorCode::OperationInterrupted), "{err:?}");

    // Failures seen after the context is done are still the driver's.
    let err = conn
        .with_context(&ctx, |c| {
            cancel.cancel_with(Stop(5));
            c.execute("SELEKT 1", [])
        })
        .unwrap_err();
    assert!(
        matches!(err, Error::Driver(rusqlite::Error::SqlInputError { .. })),
        "{err:?}"
    );
    let (ctx, cancel) = Context::background().with_cancel();
    let err = conn
        .with_context(&ctx, |c| {
            cancel.cancel_with(Stop(6));
            c.execute("INSERT INTO t (v) VALUES ('a')", [])
        })
        .unwrap_err();
    let code = err.driver_error().and_then(|e| e.sqlite_error_code());
    assert_eq!(code, Some(ErrorCode::ConstraintViolation), "{err:?}");
    assert_eq!(rows(&conn), 1);
}

#[test]
fn panicking_closure_leaves_the_connection_usable() {
    let mut conn = Connection::open_in_memory().unwrap();
    let (ctx, cancel) = Context::background().with_cancel();
    let caught = panic::catch_unwind(AssertUnwindSafe(|| {
        let _ = conn.with_context(&ctx, |c| -> rusqlite::Result<()> {
            assert_eq!(count_to(c, 1000)?, 1000);
            panic!("boom");
        });
    }));
    assert!(caught.is_err(), "the panic was swallowed");
    // The context is done now: had the after-func or the progress handler
    // survived the panic, the next long statement would be interrupted.
    cancel.cancel_with(Stop(9));
    assert!(!conn.is_busy());
    assert_eq!(count_to(&conn, 500_000).unwrap(), 500_000);
    // And a new call runs normally.
    let (ctx, _c) = Context::background().with_cancel();
    assert_eq!(conn.with_context(&ctx, |c| count_to(c, 10)).unwrap(), 10);
}

#[test]
fn a_finished_call_leaves_nothing_armed() {
    let mut conn = Connection::open_in_memory().unwrap();
    let (ctx, cancel) = Context::background().with_cancel();
    assert_eq!(conn.with_context(&ctx, |c| count_to(c, 1000)).unwrap(), 1000);
    cancel.cancel_with(Stop(2));
    assert_eq!(count_to(&conn, 500_000).unwrap(), 500_000);
    // Nor after a cancelled one.
    let (ctx, cancel) = Context::background().with_cancel();
    let err = conn
        .with_context(&ctx, |c| {
            cancel.cancel();
            c.query_row(RUNAWAY, [], |r| r.get::<_, i64>(0))
        })
        .unwrap_err();
    assert!(err.is_context());
    assert_eq!(count_to(&conn, 500_000).unwrap(), 500_000);
}

/// The synchronous counterpart of dropping a query future after N polls:
/// the closure steps a runaway statement N rows, then drops it mid-run and
/// returns. The statement is reset, nothing stays armed, and the connection
/// serves the next statement even once the context is cancelled.
#[test]
fn statement_dropped_after_n_rows_leaves_the_connection_usable() {
    let mut conn = Connection::open_in_memory().unwrap();
    for rows_taken in [0usize, 1, 10, 10_000] {
        let (ctx, cancel) = Context::background().with_cancel();
        let last = conn
            .with_context(&ctx, |c| {
                let mut stmt =
                    c.prepare("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c")?;
                let mut rows = stmt.query([])?;
                let mut last = 0i64;
                for _ in 0..rows_taken {
                    last = rows.next()?.expect("a runaway statement has rows").get(0)?;
                }
                Ok(last) // `rows` and `stmt` drop here, mid-statement
            })
            .unwrap();
        assert_eq!(last, rows_taken as i64);
        assert!(!conn.is_busy(), "a statement stayed active after {rows_taken} rows");
        cancel.cancel_with(Stop(rows_taken));
        assert_eq!(count_to(&conn, 200_000).unwrap(), 200_000, "after {rows_taken} rows");
    }
    // A context that is never done works as the bare call does.
    let never = Context::background();
    assert_eq!(conn.with_context(&never, |c| count_to(c, 1000)).unwrap(), 1000);
}

/// Nothing of a call outlives it: the progress handler and the after-func
/// (each holding the context) are gone when it returns, whatever it returned.
#[test]
fn a_call_keeps_no_reference_to_its_context() {
    static MARK: ctxcore::Key<Arc<()>> = ctxcore::Key::new("mark");
    let mut conn = Connection::open_in_memory().unwrap();
    for outcome in ["ok", "driver error", "cancelled"] {
        let mark = Arc::new(());
        let (ctx, cancel) = Context::background().with_value(&MARK, mark.clone()).with_cancel();
        let res = conn.with_context(&ctx, |c| match outcome {
            "ok" => count_to(c, 10),
            "driver error" => c.query_row("SELEKT", [], |r| r.get(0)),
            _ => {
                cancel.cancel();
                c.query_row(RUNAWAY, [], |r| r.get(0))
            }
        });
        assert_eq!(res.is_ok(), outcome == "ok", "{outcome}: {res:?}");
        drop((ctx, cancel));
        assert_eq!(Arc::strong_count(&mark), 1, "{outcome}: the context was kept alive");
    }
}

/// xorshift64*: enough randomness for cancel moments, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Default, Debug)]
struct Tally {
    ok: usize,
    cancelled: usize,
    before: usize,
    late: usize,
    deadline: usize,
}

/// 1,000 short statements on 4 connections (one thread each), each under a
/// context cancelled from another thread at a random moment: before the
/// call, during it, or after it returned. Every statement that finished
/// returned its rows, every stopped one its own context's error, and no
/// statement — under a context or not — was interrupted by a late cancel of
/// an earlier call.
#[test]
fn thousand_statements_cancelled_at_random_moments() {
    const WORKERS: usize = 4;
    const PER_WORKER: usize = 250;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0x9E37_79B9_7F4A_7C15, |d| d.as_nanos() as u64)
        | 1;
    eprintln!("seed {seed:#x}");
    let started = Instant::now();
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let mut rng = Rng(seed.wrapping_add((w as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1);
            thread::spawn(move || {
                let (tx, rx) = mpsc::channel::<(Instant, ctxcore::CancelHandle, usize)>();
                let canceller = thread::spawn(move || {
                    let mut fired = Vec::new();
                    for (at, handle, id) in rx {
                        let now = Instant::now();
                        if at > now {
                            thread::sleep(at - now); // the random moment, not a synchronisation
                        }
                        handle.cancel_with(Stop(id));
                        fired.push((id, Instant::now()));
                    }
                    fired
                });
                let mut returned = Vec::with_capacity(PER_WORKER);
                let mut conn = Connection::open_in_memory().unwrap();
                let mut tally = Tally::default();
                for i in 0..PER_WORKER {
                    let id = w * PER_WORKER + i;
                    let n = 1 + rng.below(20_000) as i64;
                    // 1 in 5 cancelled before the call, 1 in 5 under a
                    // deadline of 0-4 ms (its timer hands the interrupt to
                    // a thread of its own, which may run late), the rest
                    // cancelled from the canceller thread 0-6 ms after the
                    // call starts (during it, or after it returned).
                    let mode = rng.below(5);
                    let before = mode == 0;
                    let deadline = mode == 1;
                    let (ctx, handle) = if deadline {
                        Context::background().with_timeout(Duration::from_micros(rng.below(4_000)))
                    } else {
                        Context::background().with_cancel()
                    };
                    let mut kept = None;
                    if before {
                        handle.cancel_with(Stop(id));
                        tally.before += 1;
                    } else if deadline {
                        kept = Some(handle);
                    } else {
                        let delay = Duration::from_micros(rng.below(6_000));
                        tx.send((Instant::now() + delay, handle, id)).unwrap();
                    }
                    let res = conn.with_context(&ctx, |c| count_to(c, n));
                    returned.push(Instant::now());
                    match res {
                        Ok(got) => {
                            assert_eq!(got, n, "statement {id} returned wrong rows");
                            assert!(!before, "statement {id} ran under a done context");
                            tally.ok += 1;
                        }
                        Err(Error::Context(e)) if deadline => {
                            assert_eq!(e.kind(), Kind::DeadlineExceeded, "statement {id}");
                            tally.deadline += 1;
                        }
                        Err(Error::Context(e)) => {
                            assert_eq!(e.cause().downcast_ref::<Stop>(), Some(&Stop(id)), "statement {id}");
                            assert!(ctx.is_done());
                            tally.cancelled += 1;
                        }
                        Err(e) => panic!("statement {id} failed on its own: {e:?}"),
                    }
                    drop(kept); // a late cancel of its own, too
                                // The next statement, with no context at all: a late
                                // interrupt of the call above would fail it.
                    assert!(!conn.is_busy());
                    let m = 1 + rng.below(5_000) as i64;
                    assert_eq!(count_to(&conn, m).unwrap(), m, "after statement {id}");
                }
                drop(tx);
                for (id, at) in canceller.join().unwrap() {
                    if at > returned[id - w * PER_WORKER] {
                        tally.late += 1;
                    }
                }
                // Every late cancel has fired now: the connection is healthy.
                assert_eq!(count_to(&conn, 100_000).unwrap(), 100_000);
                tally
            })
        })
        .collect();
    let mut total = Tally::default();
    for w in workers {
        let t = w.join().expect("a worker failed");
        total.ok += t.ok;
        total.cancelled += t.cancelled;
        total.before += t.before;
        total.late += t.late;
        total.deadline += t.deadline;
    }
    eprintln!(
        "1,000 statements in {:?}: {} returned rows, {} stopped by a cancel ({} before the call), {} by a deadline; \
         {} cancels landed after their call returned",
        started.elapsed(),
        total.ok,
        total.cancelled,
        total.before,
        total.deadline,
        total.late
    );
    assert_eq!(total.ok + total.cancelled + total.deadline, WORKERS * PER_WORKER);
    assert!(total.deadline > 0, "no deadline stopped a statement");
    assert!(total.late > 0, "no cancel landed after its call returned");
    assert!(total.cancelled > total.before, "no cancel landed during a statement");
    assert!(total.ok > 0, "no statement finished");
}
