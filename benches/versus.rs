//! ctxcore side by side with tokio-util's `CancellationToken`, plus floors.
//!
//! Every scenario of issue 6 is one criterion group holding a `ctxcore` and a
//! `tokio_util` function (the floors are the group `floor`), so
//! `target/criterion/<scenario>/<lib>/new/estimates.json` is what
//! `ci/bench.sh` reads. Figures are nanoseconds per operation; for the
//! multi-thread scenarios, per operation *per thread* (every thread does
//! `iters` operations at once, and the slowest thread's time is reported).
//!
//! Scenarios whose set-up is much dearer than the operation (cancelling a
//! tree, waking waiters) build a batch of instances untimed and time only the
//! operation on each (see [`batched`]).
//!
//! Clock: wall time by default. With `BENCH_CLOCK=cpu` (Linux) the
//! single-thread scenarios are timed with the thread's own CPU clock instead,
//! so that on a loaded machine time spent descheduled is not charged to the
//! code under test; the thread-count scenarios (`*_1t`, `*_2t`, `*_4t`) always
//! use the wall clock (see [`parallel`]).

use std::future::Future;
use std::hint::black_box;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::task::{Context as TaskContext, Waker};
use std::thread;
use std::time::{Duration, Instant};

use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{criterion_group, criterion_main};
use ctxcore::{CancelHandle, Context};
use tokio_util::sync::CancellationToken;

/// The clock criterion times with: the wall clock, or (`BENCH_CLOCK=cpu`)
/// the calling thread's CPU clock.
struct Clock {
    cpu: bool,
    wall: WallTime,
}

type Criterion = criterion::Criterion<Clock>;

impl Clock {
    fn from_env() -> Clock {
        let cpu = std::env::var("BENCH_CLOCK").is_ok_and(|v| v == "cpu") && cfg!(target_os = "linux");
        Clock { cpu, wall: WallTime }
    }

    /// Now, on this clock.
    fn now(&self) -> Duration {
        if self.cpu {
            thread_cpu_time()
        } else {
            Clock::wall_now()
        }
    }

    /// Now on the wall clock, as a duration since a fixed instant.
    fn wall_now() -> Duration {
        static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        EPOCH.get_or_init(Instant::now).elapsed()
    }
}

/// CPU time consumed by the calling thread (user + system).
#[cfg(target_os = "linux")]
fn thread_cpu_time() -> Duration {
    #[repr(C)]
    struct Timespec {
        tv_sec: i64,
        tv_nsec: i64,
    }
    extern "C" {
        fn clock_gettime(clock: i32, tp: *mut Timespec) -> i32;
    }
    const CLOCK_THREAD_CPUTIME_ID: i32 = 3;
    let mut ts = Timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable `struct timespec` (two 64-bit fields
    // on 64-bit Linux), and the clock id is Linux's per-thread CPU clock.
    let rc = unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(not(target_os = "linux"))]
fn thread_cpu_time() -> Duration {
    unreachable!("BENCH_CLOCK=cpu is only honoured on Linux")
}

impl Measurement for Clock {
    type Intermediate = Duration;
    type Value = Duration;

    fn start(&self) -> Duration {
        self.now()
    }

    fn end(&self, start: Duration) -> Duration {
        self.now().saturating_sub(start)
    }

    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }

    fn zero(&self) -> Duration {
        Duration::ZERO
    }

    fn to_f64(&self, value: &Duration) -> f64 {
        value.as_nanos() as f64
    }

    fn formatter(&self) -> &dyn ValueFormatter {
        self.wall.formatter()
    }
}

/// A task context whose waker does nothing: waiting futures are polled once
/// to register, and waking costs only what the library does.
fn noop_cx() -> TaskContext<'static> {
    TaskContext::from_waker(Waker::noop())
}

/// Polls a future once; the scenarios need it to be pending (registered).
fn poll_once<F: Future>(fut: Pin<&mut F>, cx: &mut TaskContext<'_>) {
    let pending = fut.poll(cx).is_pending();
    assert!(pending, "the context under test must still be live");
}

/// Times `op` over `iters` instances made by `setup`, built `batch` at a time
/// outside the timed region and dropped after it.
fn batched<S>(iters: u64, batch: usize, mut setup: impl FnMut() -> S, mut op: impl FnMut(&S)) -> Duration {
    let clock = Clock::from_env();
    let mut total = Duration::ZERO;
    let mut left = iters as usize;
    while left > 0 {
        let n = left.min(batch);
        left -= n;
        let items: Vec<S> = (0..n).map(|_| setup()).collect();
        let start = clock.start();
        for s in &items {
            op(s);
        }
        total += clock.end(start);
        drop(items);
    }
    total
}

/// Runs `work(iters)` on `threads` threads released together by a spin
/// barrier, and returns the slowest thread's own time: thread start-up is not
/// measured, and the figure is per operation per thread. Always the wall
/// clock, whatever `BENCH_CLOCK` says: a thread's CPU clock would not count
/// the time it sleeps on a contended mutex, which is what these scenarios
/// are about. (The 1-thread variants use this harness too, so that "flat as
/// threads are added" compares like with like.) As a diagnostic on a loaded
/// machine, `BENCH_THREAD_CLOCK=cpu` times each thread by its CPU clock: fair
/// for lock-free readers (ctxcore's `is_done`), flattering for anything that
/// sleeps on a lock.
fn parallel(threads: usize, iters: u64, work: &(dyn Fn(u64) + Sync)) -> Duration {
    let cpu = std::env::var("BENCH_THREAD_CLOCK").is_ok_and(|v| v == "cpu") && cfg!(target_os = "linux");
    let now = move || if cpu { thread_cpu_time() } else { Clock::wall_now() };
    let ready = AtomicUsize::new(0);
    thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let ready = &ready;
                s.spawn(move || {
                    ready.fetch_add(1, Ordering::AcqRel);
                    while ready.load(Ordering::Acquire) < threads {
                        // More threads than cores: let the others start.
                        thread::yield_now();
                    }
                    let start = now();
                    work(iters);
                    now().saturating_sub(start)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).max().unwrap()
    })
}

/// A live, cancellable parent for the child scenarios, and its handle.
fn ctx_parent() -> (Context, CancelHandle) {
    Context::background().with_cancel()
}

fn floors(c: &mut Criterion) {
    let mut g = c.benchmark_group("floor");
    let word = AtomicU32::new(0);
    g.bench_function("atomic_load", |b| b.iter(|| black_box(&word).load(Ordering::Acquire)));
    // What every lock, reference count and state change costs at least.
    g.bench_function("atomic_rmw", |b| {
        b.iter(|| black_box(&word).fetch_add(1, Ordering::AcqRel))
    });
    // The size of a context node in both crates is around 100 bytes; a bare
    // allocation of that size is what "one allocation per child" costs at least.
    g.bench_function("box_alloc", |b| b.iter(|| drop(black_box(Box::new([0u64; 16])))));
    // One read of the default timer's clock (`StdTimer::now`), which a
    // deadline context's `is_done` adds while it is live.
    let background = Context::background();
    g.bench_function("clock_now", |b| b.iter(|| black_box(&background).now()));
    g.bench_function("std_instant_now", |b| b.iter(Instant::now));
    // Independent work (a private atomic per thread, nothing shared) on 1 and
    // 2 threads: how well this machine scales right now. On a shared machine
    // whose second core is busy, 2 threads take twice as long per operation
    // whatever the code does; `ci/bench_table.py` divides the thread-count
    // checks by this ratio.
    for threads in [1usize, 2] {
        g.bench_function(format!("spin_{threads}t"), |b| {
            b.iter_custom(|iters| {
                parallel(threads, iters, &|n| {
                    let own = AtomicU32::new(0);
                    for _ in 0..n {
                        black_box(&own).load(Ordering::Acquire);
                    }
                })
            })
        });
    }
    g.finish();
}

fn is_done(c: &mut Criterion) {
    let (ctx, _h) = ctx_parent();
    let token = CancellationToken::new();

    // One harness for every thread count (1 included), so "flat as threads
    // are added" compares like with like.
    for threads in [1usize, 2, 4] {
        let mut g = c.benchmark_group(format!("is_done_{threads}t"));
        g.bench_function("ctxcore", |b| {
            b.iter_custom(|iters| {
                parallel(threads, iters, &|n| {
                    for _ in 0..n {
                        black_box(black_box(&ctx).is_done());
                    }
                })
            })
        });
        g.bench_function("tokio_util", |b| {
            b.iter_custom(|iters| {
                parallel(threads, iters, &|n| {
                    for _ in 0..n {
                        black_box(black_box(&token).is_cancelled());
                    }
                })
            })
        });
        g.finish();
    }
}

fn children(c: &mut Criterion) {
    let (parent, _ph) = ctx_parent();
    let token = CancellationToken::new();

    // Plain use: dropping the handle cancels (Go's `defer cancel()`), then
    // the context goes; tokio-util's child token is simply dropped.
    let mut g = c.benchmark_group("child_create_drop");
    g.bench_function("ctxcore", |b| {
        b.iter(|| {
            let (child, handle) = black_box(&parent).with_cancel();
            drop(black_box(handle));
            drop(black_box(child));
        })
    });
    g.bench_function("tokio_util", |b| {
        b.iter(|| drop(black_box(black_box(&token).child_token())))
    });
    g.finish();

    let mut g = c.benchmark_group("child_create_cancel_drop");
    g.bench_function("ctxcore", |b| {
        b.iter(|| {
            let (child, handle) = black_box(&parent).with_cancel();
            handle.cancel();
            drop(black_box(handle));
            drop(black_box(child));
        })
    });
    g.bench_function("tokio_util", |b| {
        b.iter(|| {
            let child = black_box(&token).child_token();
            child.cancel();
            drop(black_box(child));
        })
    });
    g.finish();

    let (dead, dead_handle) = ctx_parent();
    dead_handle.cancel();
    let dead_token = CancellationToken::new();
    dead_token.cancel();
    let mut g = c.benchmark_group("child_of_cancelled");
    g.bench_function("ctxcore", |b| {
        b.iter(|| {
            let (child, handle) = black_box(&dead).with_cancel();
            debug_assert!(child.is_done());
            drop(black_box(handle));
            drop(black_box(child));
        })
    });
    g.bench_function("tokio_util", |b| {
        b.iter(|| drop(black_box(black_box(&dead_token).child_token())))
    });
    g.finish();
}

/// Instances per untimed set-up batch: about 10k nodes, whatever the size.
fn batch_for(n: usize) -> usize {
    (10_000 / n).max(1)
}

fn cancel_trees(c: &mut Criterion) {
    for n in [10usize, 100, 1000] {
        let mut g = c.benchmark_group(format!("cancel_flat_{n}"));
        g.bench_function("ctxcore", |b| {
            b.iter_custom(|iters| {
                batched(
                    iters,
                    batch_for(n),
                    || {
                        let (root, handle) = ctx_parent();
                        let kids: Vec<_> = (0..n).map(|_| root.with_cancel()).collect();
                        (handle, kids)
                    },
                    |(handle, _)| handle.cancel(),
                )
            })
        });
        g.bench_function("tokio_util", |b| {
            b.iter_custom(|iters| {
                batched(
                    iters,
                    batch_for(n),
                    || {
                        let root = CancellationToken::new();
                        let kids: Vec<_> = (0..n).map(|_| root.child_token()).collect();
                        (root, kids)
                    },
                    |(root, _)| root.cancel(),
                )
            })
        });
        g.finish();
    }

    for n in [10usize, 100, 1000] {
        let mut g = c.benchmark_group(format!("cancel_chain_{n}"));
        g.bench_function("ctxcore", |b| {
            b.iter_custom(|iters| {
                batched(
                    iters,
                    batch_for(n),
                    || {
                        let (root, handle) = ctx_parent();
                        let mut chain = Vec::with_capacity(n);
                        let mut last = root;
                        for _ in 0..n {
                            let (c, h) = last.with_cancel();
                            chain.push(h);
                            last = c;
                        }
                        (handle, chain, last)
                    },
                    |(handle, _, _)| handle.cancel(),
                )
            })
        });
        g.bench_function("tokio_util", |b| {
            b.iter_custom(|iters| {
                batched(
                    iters,
                    batch_for(n),
                    || {
                        let root = CancellationToken::new();
                        let mut chain = Vec::with_capacity(n);
                        let mut last = root.clone();
                        for _ in 0..n {
                            let c = last.child_token();
                            chain.push(last);
                            last = c;
                        }
                        (root, chain, last)
                    },
                    |(root, _, _)| root.cancel(),
                )
            })
        });
        g.finish();
    }
}

fn waiters(c: &mut Criterion) {
    let (ctx, _h) = ctx_parent();
    let token = CancellationToken::new();
    let mut cx = noop_cx();

    let mut g = c.benchmark_group("waiter_register");
    g.bench_function("ctxcore", |b| {
        b.iter(|| {
            let fut = pin!(black_box(&ctx).done());
            poll_once(fut, &mut cx);
        })
    });
    g.bench_function("tokio_util", |b| {
        b.iter(|| {
            let fut = pin!(black_box(&token).cancelled());
            poll_once(fut, &mut cx);
        })
    });
    g.finish();

    for n in [1usize, 100, 1000] {
        let mut g = c.benchmark_group(format!("wake_{n}"));
        g.bench_function("ctxcore", |b| {
            let mut cx = noop_cx();
            b.iter_custom(|iters| {
                batched(
                    iters,
                    batch_for(n),
                    || {
                        let (ctx, handle) = ctx_parent();
                        let futs: Vec<_> = (0..n)
                            .map(|_| {
                                let mut f = Box::pin(ctx.done_owned());
                                poll_once(f.as_mut(), &mut cx);
                                f
                            })
                            .collect();
                        (handle, futs)
                    },
                    |(handle, _)| handle.cancel(),
                )
            })
        });
        g.bench_function("tokio_util", |b| {
            let mut cx = noop_cx();
            b.iter_custom(|iters| {
                batched(
                    iters,
                    batch_for(n),
                    || {
                        let token = CancellationToken::new();
                        let futs: Vec<_> = (0..n)
                            .map(|_| {
                                let mut f = Box::pin(token.clone().cancelled_owned());
                                poll_once(f.as_mut(), &mut cx);
                                f
                            })
                            .collect();
                        (token, futs)
                    },
                    |(token, _)| token.cancel(),
                )
            })
        });
        g.finish();
    }
}

fn churn(c: &mut Criterion) {
    let (parent, _ph) = ctx_parent();
    let token = CancellationToken::new();
    for threads in [1usize, 2] {
        let mut g = c.benchmark_group(format!("churn_{threads}t"));
        g.bench_function("ctxcore", |b| {
            b.iter_custom(|iters| {
                parallel(threads, iters, &|n| {
                    for _ in 0..n {
                        let (child, handle) = black_box(&parent).with_cancel();
                        handle.cancel();
                        drop(black_box(handle));
                        drop(black_box(child));
                    }
                })
            })
        });
        g.bench_function("tokio_util", |b| {
            b.iter_custom(|iters| {
                parallel(threads, iters, &|n| {
                    for _ in 0..n {
                        let child = black_box(&token).child_token();
                        child.cancel();
                        drop(black_box(child));
                    }
                })
            })
        });
        g.finish();
    }
}

fn deadlines(c: &mut Criterion) {
    // ctxcore: a timeout child of `background()` arms and disarms an entry on
    // the std timer thread. tokio-util has no deadlines: a child token plus a
    // tokio `sleep`, polled once so it is registered with the timer wheel.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _enter = rt.enter();
    let token = CancellationToken::new();
    let background = Context::background();
    let mut cx = noop_cx();
    let mut g = c.benchmark_group("deadline_create_drop");
    g.bench_function("ctxcore", |b| {
        b.iter(|| {
            let (child, handle) = black_box(&background).with_timeout(Duration::from_secs(60));
            drop(black_box(handle));
            drop(black_box(child));
        })
    });
    g.bench_function("tokio_util", |b| {
        b.iter(|| {
            let child = black_box(&token).child_token();
            let sleep = pin!(tokio::time::sleep(Duration::from_secs(60)));
            poll_once(sleep, &mut cx);
            drop(black_box(child));
        })
    });
    g.finish();
}

/// Issue 15's scenario: the per-request deadline, as a server makes one per
/// request or outbound call. ctxcore: a 5 s `with_timeout` child of a live
/// cancellable parent, one wait registered on it (`done()` polled once),
/// then everything dropped long before it fires. tokio: what a tokio user
/// builds instead — a child token plus a `tokio::time::sleep` polled once
/// (tower's `Timeout` around a cancellable call). Both inside their
/// runtimes: the std timer thread for ctxcore, a 2-worker tokio runtime
/// entered on each thread for tokio.
fn per_request(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();
    let (parent, _ph) = ctx_parent();
    let token = CancellationToken::new();
    let ctxcore_op = |parent: &Context, cx: &mut TaskContext<'_>| {
        let (ctx, handle) = black_box(parent).with_timeout(Duration::from_secs(5));
        {
            let fut = pin!(ctx.done());
            poll_once(fut, cx);
        }
        drop(black_box(handle));
        drop(black_box(ctx));
    };
    let tokio_op = |token: &CancellationToken, cx: &mut TaskContext<'_>| {
        let child = black_box(token).child_token();
        {
            let sleep = pin!(tokio::time::sleep(Duration::from_secs(5)));
            poll_once(sleep, cx);
            let fut = pin!(child.cancelled());
            poll_once(fut, cx);
        }
        drop(black_box(child));
    };
    for threads in [1usize, 2] {
        let mut g = c.benchmark_group(format!("per_request_{threads}t"));
        g.bench_function("ctxcore", |b| {
            b.iter_custom(|iters| {
                parallel(threads, iters, &|n| {
                    let mut cx = noop_cx();
                    for _ in 0..n {
                        ctxcore_op(&parent, &mut cx);
                    }
                })
            })
        });
        g.bench_function("tokio_util", |b| {
            b.iter_custom(|iters| {
                parallel(threads, iters, &|n| {
                    let _enter = rt.handle().enter();
                    let mut cx = noop_cx();
                    for _ in 0..n {
                        tokio_op(&token, &mut cx);
                    }
                })
            })
        });
        g.finish();
    }
    // The same on 2 threads with a parent each (a connection's context, say):
    // the timer's own scaling, without the shared parent's lock that
    // `per_request_2t` (and `churn_2t`) contend on.
    let mut g = c.benchmark_group("per_request_own_parent_2t");
    g.bench_function("ctxcore", |b| {
        b.iter_custom(|iters| {
            parallel(2, iters, &|n| {
                let (own, _h) = ctx_parent();
                let mut cx = noop_cx();
                for _ in 0..n {
                    ctxcore_op(&own, &mut cx);
                }
            })
        })
    });
    g.bench_function("tokio_util", |b| {
        b.iter_custom(|iters| {
            parallel(2, iters, &|n| {
                let _enter = rt.handle().enter();
                let own = CancellationToken::new();
                let mut cx = noop_cx();
                for _ in 0..n {
                    tokio_op(&own, &mut cx);
                }
            })
        })
    });
    g.finish();

    // The moonshot: a cancellable deadline that propagates to a whole
    // subtree, against a bare tokio `sleep` timeout (tower's `Timeout`: one
    // sleep polled once, no cancel tree).
    let mut g = c.benchmark_group("timeout_vs_sleep");
    g.bench_function("ctxcore", |b| {
        let mut cx = noop_cx();
        b.iter(|| ctxcore_op(&parent, &mut cx))
    });
    g.bench_function("tokio_util", |b| {
        let _enter = rt.handle().enter();
        let mut cx = noop_cx();
        b.iter(|| {
            let sleep = pin!(tokio::time::sleep(Duration::from_secs(5)));
            poll_once(sleep, &mut cx);
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = criterion::Criterion::default().with_measurement(Clock::from_env());
    targets = floors, is_done, children, cancel_trees, waiters, churn, deadlines, per_request
}
criterion_main!(benches);
