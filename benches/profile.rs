//! The scenarios of `benches/versus.rs` as a plain program, for instruction
//! counts under valgrind (no criterion, no timing):
//!
//! ```text
//! cargo bench --bench profile --no-run
//! valgrind --tool=callgrind --toggle-collect='*measured*' \
//!     <target>/release/deps/profile-<hash> SCENARIO LIB ITERS
//! ```
//!
//! `LIB` is `ctxcore` or `tokio_util`. Only the operation runs inside
//! [`measured`], so with `--toggle-collect` callgrind's total divided by
//! `ITERS` is the operation's instruction count (set-up and tear-down of
//! trees and waiters excluded). Run with no arguments (as `cargo bench`
//! does) it does nothing.

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context as TaskContext, Waker};
use std::time::Duration;

use ctxcore::Context;
use tokio_util::sync::CancellationToken;

fn poll_once<F: Future>(fut: std::pin::Pin<&mut F>) {
    let mut cx = TaskContext::from_waker(Waker::noop());
    assert!(fut.poll(&mut cx).is_pending());
}

/// Runs `iters` instances: `setup` builds one, `op` is the measured
/// operation, then the instance is dropped.
fn each<S>(iters: u64, mut setup: impl FnMut() -> S, mut op: impl FnMut(&S)) {
    for _ in 0..iters {
        let s = setup();
        measured(&mut op, &s);
        drop(black_box(s));
    }
}

/// The only code callgrind counts (`--toggle-collect='*measured*'`).
#[inline(never)]
fn measured<S>(op: &mut impl FnMut(&S), s: &S) {
    op(black_box(s));
}

fn ctxcore(scenario: &str, iters: u64) {
    let (parent, _ph) = Context::background().with_cancel();
    let (dead, dh) = Context::background().with_cancel();
    dh.cancel();
    let tree = |n: usize| {
        let (root, handle) = Context::background().with_cancel();
        let kids: Vec<_> = (0..n).map(|_| root.with_cancel()).collect();
        (handle, kids)
    };
    let chain = |n: usize| {
        let (root, handle) = Context::background().with_cancel();
        let mut all = Vec::with_capacity(n);
        let mut last = root;
        for _ in 0..n {
            let (c, h) = last.with_cancel();
            all.push((last, h));
            last = c;
        }
        (handle, all, last)
    };
    let waiters = |n: usize| {
        let (ctx, handle) = Context::background().with_cancel();
        let futs: Vec<_> = (0..n)
            .map(|_| {
                let mut f = Box::pin(ctx.done_owned());
                poll_once(f.as_mut());
                f
            })
            .collect();
        (handle, futs)
    };
    match scenario {
        "is_done" => each(
            iters,
            || (),
            |_| {
                black_box(black_box(&parent).is_done());
            },
        ),
        "child_create_drop" => each(iters, || (), |_| drop(black_box(parent.with_cancel()))),
        "child_create_cancel_drop" => each(
            iters,
            || (),
            |_| {
                let (c, h) = parent.with_cancel();
                h.cancel();
                drop(black_box((c, h)));
            },
        ),
        "child_of_cancelled" => each(iters, || (), |_| drop(black_box(dead.with_cancel()))),
        "cancel_flat_100" => each(iters, || tree(100), |(h, _)| h.cancel()),
        "cancel_chain_100" => each(iters, || chain(100), |(h, _, _)| h.cancel()),
        "waiter_register" => each(
            iters,
            || (),
            |_| {
                let f = pin!(parent.done());
                poll_once(f);
            },
        ),
        "wake_100" => each(iters, || waiters(100), |(h, _)| h.cancel()),
        "deadline_create_drop" => each(
            iters,
            || (),
            |_| drop(black_box(parent.with_timeout(Duration::from_secs(60)))),
        ),
        "per_request" => each(
            iters,
            || (),
            |_| {
                let (ctx, h) = parent.with_timeout(Duration::from_secs(5));
                poll_once(pin!(ctx.done()));
                drop(black_box(h));
                drop(black_box(ctx));
            },
        ),
        other => panic!("unknown scenario {other}"),
    }
}

fn tokio_util(scenario: &str, iters: u64) {
    let parent = CancellationToken::new();
    let dead = CancellationToken::new();
    dead.cancel();
    let tree = |n: usize| {
        let root = CancellationToken::new();
        let kids: Vec<_> = (0..n).map(|_| root.child_token()).collect();
        (root, kids)
    };
    let chain = |n: usize| {
        let root = CancellationToken::new();
        let mut all = Vec::with_capacity(n);
        let mut last = root.clone();
        for _ in 0..n {
            let c = last.child_token();
            all.push(last);
            last = c;
        }
        (root, all, last)
    };
    let waiters = |n: usize| {
        let token = CancellationToken::new();
        let futs: Vec<_> = (0..n)
            .map(|_| {
                let mut f = Box::pin(token.clone().cancelled_owned());
                poll_once(f.as_mut());
                f
            })
            .collect();
        (token, futs)
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _enter = rt.enter();
    match scenario {
        "is_done" => each(
            iters,
            || (),
            |_| {
                black_box(black_box(&parent).is_cancelled());
            },
        ),
        "child_create_drop" => each(iters, || (), |_| drop(black_box(parent.child_token()))),
        "child_create_cancel_drop" => each(
            iters,
            || (),
            |_| {
                let c = parent.child_token();
                c.cancel();
                drop(black_box(c));
            },
        ),
        "child_of_cancelled" => each(iters, || (), |_| drop(black_box(dead.child_token()))),
        "cancel_flat_100" => each(iters, || tree(100), |(t, _)| t.cancel()),
        "cancel_chain_100" => each(iters, || chain(100), |(t, _, _)| t.cancel()),
        "waiter_register" => each(
            iters,
            || (),
            |_| {
                let f = pin!(parent.cancelled());
                poll_once(f);
            },
        ),
        "wake_100" => each(iters, || waiters(100), |(t, _)| t.cancel()),
        "deadline_create_drop" => each(
            iters,
            || (),
            |_| {
                let c = parent.child_token();
                let sleep = pin!(tokio::time::sleep(Duration::from_secs(60)));
                poll_once(sleep);
                drop(black_box(c));
            },
        ),
        other => panic!("unknown scenario {other}"),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let [scenario, lib, iters, ..] = args.as_slice() else {
        return; // `cargo bench` runs every target: nothing to do here.
    };
    let iters: u64 = iters.parse().expect("ITERS must be a number");
    // Start the std timer thread before anything is counted.
    drop(Context::background().with_timeout(Duration::from_secs(60)));
    match lib.as_str() {
        "ctxcore" => ctxcore(scenario, iters),
        "tokio_util" => tokio_util(scenario, iters),
        other => panic!("unknown library {other}"),
    }
}
