//! The executor matrix: one async suite (`tests/matrix/suite.rs`) run
//! unchanged on every executor ctxcore promises to work with. Each executor
//! is a module, so a failing test is named `<executor>::<test>` and its
//! assertion message starts with the executor's name.
//!
//! Rows: tokio current_thread and multi_thread, smol (async-executor),
//! futures' `block_on` and `ThreadPool`, embassy-executor on std, plain
//! threads with `wait_blocking`; with the `tokio` and `embassy-time`
//! features also tokio and embassy rows whose trees use `TokioTimer` and
//! `EmbassyTimer` instead of the default std timer.

#[path = "matrix/suite.rs"]
mod suite;

use ctxcore::{Context, Error};
use futures::channel::oneshot;
use std::future::Future;
use std::pin::Pin;
use std::sync::{mpsc, Arc};
use std::task::{Poll, Wake, Waker};
use std::time::Duration;

type BoxFut = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;
type SpawnFn = Arc<dyn Fn(BoxFut) + Send + Sync>;
type BlockOnFn = Box<dyn FnOnce(BoxFut) + Send>;

/// What a suite test may use: a name, a way to spawn, a root context, and
/// how to wait for a context.
#[derive(Clone)]
pub struct Env {
    /// The executor's name, first word of every assertion message.
    pub name: &'static str,
    spawner: SpawnFn,
    root: Context,
    /// Plain threads: wait with `wait_blocking` instead of `done().await`.
    blocking: bool,
}

impl Env {
    /// The root of this run's trees (on the row's timer).
    pub fn root(&self) -> Context {
        self.root.clone()
    }

    /// Spawns a detached task.
    pub fn spawn(&self, fut: impl Future<Output = ()> + Send + 'static) {
        (self.spawner)(Box::pin(fut))
    }

    /// Spawns a task and returns a receiver of its output.
    pub fn spawn_join<T: Send + 'static>(&self, fut: impl Future<Output = T> + Send + 'static) -> oneshot::Receiver<T> {
        let (tx, rx) = oneshot::channel();
        self.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx
    }

    /// Waits for `ctx` the way this row's code would.
    pub async fn wait(&self, ctx: &Context) -> Error {
        if self.blocking {
            ctx.wait_blocking()
        } else {
            ctx.done().await
        }
    }
}

/// One row of the matrix, made fresh for each test.
struct Exec {
    env: Env,
    block_on: BlockOnFn,
}

/// Runs one suite test on a fresh executor, on its own thread, with a hang
/// guard (a hang is reported with the executor's name, not as a stuck CI).
fn run_on(exec: Exec, test: &'static str, body: fn(Env) -> BoxFut) {
    let name = exec.env.name;
    let (tx, rx) = mpsc::channel();
    let thread = std::thread::Builder::new()
        .name(format!("{name}::{test}"))
        .spawn(move || {
            let Exec { env, block_on } = exec;
            block_on(body(env));
            let _ = tx.send(());
        })
        .expect("spawn test thread");
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(()) => thread.join().expect("test thread"),
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{name}: {test} hung (no result after 60 s)"),
        Err(mpsc::RecvTimeoutError::Disconnected) => match thread.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("{name}: {test} ended without a result"),
        },
    }
}

/// A minimal `block_on` for the plain-threads row: parks the thread between
/// polls (no executor crate involved).
fn park_block_on<F: Future>(fut: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park();
    }
}

mod execs {
    use super::*;

    pub fn tokio_current_thread() -> Exec {
        tokio_row("tokio_current_thread", current_thread(), false)
    }

    pub fn tokio_multi_thread() -> Exec {
        tokio_row("tokio_multi_thread", multi_thread(), false)
    }

    #[cfg(feature = "tokio")]
    pub fn tokio_current_thread_tokio_timer() -> Exec {
        tokio_row("tokio_current_thread_tokio_timer", current_thread(), true)
    }

    #[cfg(feature = "tokio")]
    pub fn tokio_multi_thread_tokio_timer() -> Exec {
        tokio_row("tokio_multi_thread_tokio_timer", multi_thread(), true)
    }

    fn current_thread() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime")
    }

    fn multi_thread() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_time()
            .build()
            .expect("runtime")
    }

    fn tokio_row(name: &'static str, rt: tokio::runtime::Runtime, tokio_timer: bool) -> Exec {
        let handle = rt.handle().clone();
        #[cfg(feature = "tokio")]
        let root = if tokio_timer {
            Context::with_timer(ctxcore::TokioTimer::new(handle.clone()))
        } else {
            Context::background()
        };
        #[cfg(not(feature = "tokio"))]
        let root = {
            let _ = tokio_timer;
            Context::background()
        };
        Exec {
            env: Env {
                name,
                spawner: Arc::new(move |f| drop(handle.spawn(f))),
                root,
                blocking: false,
            },
            block_on: Box::new(move |f| {
                rt.block_on(f);
                // Don't wait for leftover tasks (the suite leaves none that
                // matter); a runtime must not be dropped inside a task.
                rt.shutdown_background();
            }),
        }
    }

    pub fn smol() -> Exec {
        let ex = Arc::new(async_executor::Executor::new());
        // A second thread runs the executor too, so tasks really move
        // between threads; it stops when the test body is done.
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let helper = {
            let ex = ex.clone();
            std::thread::spawn(move || {
                futures_lite::future::block_on(ex.run(async {
                    let _ = stop_rx.await;
                }))
            })
        };
        let spawner = {
            let ex = ex.clone();
            Arc::new(move |f: BoxFut| ex.spawn(f).detach())
        };
        Exec {
            env: Env {
                name: "smol",
                spawner,
                root: Context::background(),
                blocking: false,
            },
            block_on: Box::new(move |f| {
                futures_lite::future::block_on(ex.run(f));
                let _ = stop_tx.send(());
                helper.join().expect("smol helper thread");
            }),
        }
    }

    pub fn futures_block_on() -> Exec {
        Exec {
            env: Env {
                name: "futures_block_on",
                // `block_on` has no spawner: each task gets a thread of its
                // own, driven by `futures::executor::block_on` too.
                spawner: Arc::new(|f| drop(std::thread::spawn(move || futures::executor::block_on(f)))),
                root: Context::background(),
                blocking: false,
            },
            block_on: Box::new(futures::executor::block_on),
        }
    }

    pub fn futures_thread_pool() -> Exec {
        let pool = futures::executor::ThreadPool::builder()
            .pool_size(2)
            .create()
            .expect("thread pool");
        let spawner = {
            let pool = pool.clone();
            Arc::new(move |f: BoxFut| pool.spawn_ok(f))
        };
        Exec {
            env: Env {
                name: "futures_thread_pool",
                spawner,
                root: Context::background(),
                blocking: false,
            },
            // The test body itself runs on the pool.
            block_on: Box::new(move |f| {
                let (tx, rx) = oneshot::channel();
                pool.spawn_ok(async move {
                    f.await;
                    let _ = tx.send(());
                });
                futures::executor::block_on(rx).expect("futures_thread_pool: test body panicked");
            }),
        }
    }

    pub fn threads() -> Exec {
        Exec {
            env: Env {
                name: "threads",
                spawner: Arc::new(|f| drop(std::thread::spawn(move || park_block_on(f)))),
                root: Context::background(),
                blocking: true,
            },
            block_on: Box::new(park_block_on),
        }
    }

    pub fn embassy() -> Exec {
        embassy_row("embassy", Context::background())
    }

    #[cfg(feature = "embassy-time")]
    pub fn embassy_embassy_timer() -> Exec {
        embassy_row("embassy_embassy_timer", Context::with_timer(&super::embassy::TIMER))
    }

    fn embassy_row(name: &'static str, root: Context) -> Exec {
        let spawner = super::embassy::spawner();
        Exec {
            env: Env {
                name,
                spawner: Arc::new(move |f| super::embassy::spawn(spawner, f)),
                root,
                blocking: false,
            },
            block_on: Box::new(move |f| {
                let (tx, rx) = mpsc::channel();
                super::embassy::spawn(
                    spawner,
                    Box::pin(async move {
                        f.await;
                        let _ = tx.send(());
                    }),
                );
                rx.recv().expect("embassy: test body panicked");
            }),
        }
    }
}

/// One embassy executor (`platform-std`) on a thread of its own for the whole
/// test binary; tests spawn onto it through a `SendSpawner`.
mod embassy {
    use super::BoxFut;
    use embassy_executor::{Executor, SendSpawner};
    use std::sync::OnceLock;

    #[cfg(feature = "embassy-time")]
    pub static TIMER: ctxcore::EmbassyTimer = ctxcore::EmbassyTimer::new();

    #[embassy_executor::task(pool_size = 1024)]
    async fn boxed(fut: BoxFut) {
        // A failing assertion must not take down the executor every other
        // embassy test shares; the panic message is printed all the same.
        let _ = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(fut)).await;
    }

    #[cfg(feature = "embassy-time")]
    #[embassy_executor::task]
    async fn timer_driver() {
        TIMER.run().await
    }

    pub fn spawner() -> SendSpawner {
        static SPAWNER: OnceLock<SendSpawner> = OnceLock::new();
        *SPAWNER.get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::Builder::new()
                .name("embassy-executor".into())
                .spawn(move || {
                    let executor: &'static mut Executor = Box::leak(Box::new(Executor::new()));
                    executor.run(move |spawner| {
                        #[cfg(feature = "embassy-time")]
                        spawner.spawn(timer_driver().expect("timer driver task"));
                        let _ = tx.send(spawner.make_send());
                    })
                })
                .expect("embassy thread");
            rx.recv().expect("embassy spawner")
        })
    }

    pub fn spawn(spawner: SendSpawner, fut: BoxFut) {
        spawner.spawn(boxed(fut).expect("embassy: task pool exhausted"));
    }
}

/// The suite's tests, instantiated for one executor row.
macro_rules! suite {
    ($exec:path) => {
        use super::*;
        suite!(@tests $exec;
            done_wakes, done_owned, run, deadlines, any, after_func,
            cancel_from_thread, many_waiters, bad_deadlines, drop_while_firing);
    };
    (@tests $exec:path; $($test:ident),*) => {
        $(
            #[test]
            fn $test() {
                run_on($exec(), stringify!($test), |env| Box::pin(suite::$test(env)));
            }
        )*
    };
}

mod tokio_current_thread {
    suite!(execs::tokio_current_thread);
}
mod tokio_multi_thread {
    suite!(execs::tokio_multi_thread);
}
#[cfg(feature = "tokio")]
mod tokio_current_thread_tokio_timer {
    suite!(execs::tokio_current_thread_tokio_timer);
}
#[cfg(feature = "tokio")]
mod tokio_multi_thread_tokio_timer {
    suite!(execs::tokio_multi_thread_tokio_timer);
}
mod smol {
    suite!(execs::smol);
}
mod futures_block_on {
    suite!(execs::futures_block_on);
}
mod futures_thread_pool {
    suite!(execs::futures_thread_pool);
}
mod embassy_std {
    suite!(execs::embassy);
}
#[cfg(feature = "embassy-time")]
mod embassy_std_embassy_timer {
    suite!(execs::embassy_embassy_timer);
}
mod threads {
    suite!(execs::threads);
}

/// `EmbassyTimer`'s unit conversions: ticks to nanoseconds and back, rounded
/// so that waking at the converted tick never fires a deadline early.
#[cfg(feature = "embassy-time")]
mod embassy_timer_units {
    use ctxcore::{EmbassyTimer, Instant};
    use embassy_time::{Instant as Tick, TICK_HZ};

    #[test]
    fn round_trip_and_rounding() {
        let ns_per_tick = 1_000_000_000 / TICK_HZ;
        assert_eq!(
            EmbassyTimer::to_instant(Tick::from_ticks(3)),
            Instant::from_nanos(3 * ns_per_tick)
        );
        assert_eq!(
            EmbassyTimer::to_embassy(Instant::from_nanos(3 * ns_per_tick)),
            Tick::from_ticks(3)
        );
        // Between ticks: round up, never down.
        assert_eq!(
            EmbassyTimer::to_embassy(Instant::from_nanos(3 * ns_per_tick + 1)),
            Tick::from_ticks(4)
        );
        let back = EmbassyTimer::to_instant(EmbassyTimer::to_embassy(Instant::from_nanos(12_345_678)));
        assert!(back >= Instant::from_nanos(12_345_678));
        // Saturation at both ends, no panic.
        assert_eq!(EmbassyTimer::to_instant(Tick::MAX), Instant::MAX);
        assert!(EmbassyTimer::to_embassy(Instant::MAX) <= Tick::MAX);
        assert_eq!(EmbassyTimer::to_embassy(Instant::ZERO), Tick::from_ticks(0));
    }
}
