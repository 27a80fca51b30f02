//! What the bridge to tokio-util's `CancellationToken` costs (feature
//! `tokio-util`; `cargo bench --features tokio-util --bench bridge`).
//!
//! Each figure is one whole life: make the link, then end it (drop it, or
//! cancel through one side), so that nothing accumulates between
//! iterations. Floors beside them: a plain `with_cancel` child and a plain
//! tokio-util `child_token`, made and ended the same way.
//!
//! - `ctx_to_token/*`: `ctx.cancellation_token()` (a token plus an
//!   after-func entry on the context);
//! - `token_to_ctx/*`: `ctx.with_cancellation_token(&token)` (a child, the
//!   link, the token's `cancelled_owned()` future polled once with the
//!   link's own waker, and an after-func entry; no task).
//!
//! `BENCH_QUICK=1` shortens the measurement (as `ci/bench.sh` does).

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use ctxcore::Context;
use tokio_util::sync::CancellationToken;

fn bridge(c: &mut Criterion) {
    let (root, _root_handle) = Context::background().with_cancel();
    let root_token = CancellationToken::new();

    let mut g = c.benchmark_group("bridge_floor");
    g.bench_function("with_cancel_drop", |b| {
        b.iter(|| drop(black_box(root.with_cancel())));
    });
    g.bench_function("with_cancel_cancel", |b| {
        b.iter(|| {
            let (ctx, h) = root.with_cancel();
            h.cancel();
            black_box(ctx);
        });
    });
    g.bench_function("child_token_drop", |b| {
        b.iter(|| drop(black_box(root_token.child_token())));
    });
    g.bench_function("child_token_cancel", |b| {
        b.iter(|| {
            let t = root_token.child_token();
            t.cancel();
            black_box(t);
        });
    });
    g.finish();

    let mut g = c.benchmark_group("ctx_to_token");
    // A long-lived context hands out a token that is dropped unused.
    g.bench_function("create_drop", |b| {
        b.iter(|| drop(black_box(root.cancellation_token())));
    });
    // A context made, bridged, and cancelled: the token is cancelled by the
    // after-func on the cancelling thread.
    g.bench_function("create_cancel", |b| {
        b.iter(|| {
            let (ctx, h) = root.with_cancel();
            let token = ctx.cancellation_token();
            h.cancel();
            debug_assert!(token.is_cancelled());
            black_box(token);
        });
    });
    g.finish();

    let mut g = c.benchmark_group("token_to_ctx");
    // A context bridged from a long-lived token, dropped (its handle cancels
    // it, which closes the link).
    g.bench_function("create_drop", |b| {
        b.iter(|| drop(black_box(root.with_cancellation_token(&root_token))));
    });
    // A token made, bridged, and cancelled: the token's waker cancels the
    // context on the cancelling thread.
    g.bench_function("create_cancel", |b| {
        b.iter(|| {
            let token = CancellationToken::new();
            let (ctx, h) = root.with_cancellation_token(&token);
            token.cancel();
            debug_assert!(ctx.is_done());
            black_box((ctx, h));
        });
    });
    g.finish();
}

fn config() -> Criterion {
    let c = Criterion::default();
    if std::env::var_os("BENCH_QUICK").is_some() {
        c.warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(1))
            .sample_size(20)
    } else {
        c
    }
}

criterion_group! {
    name = benches;
    config = config();
    targets = bridge
}
criterion_main!(benches);
