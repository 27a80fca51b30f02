//! What the client layer adds per call: the same in-process tower service (a
//! `service_fn` echo, ready at once) with and without `PropagateDeadline`,
//! driven by hand with a no-op waker (no runtime in the figures).
//!
//! - `bare`: the echo alone (the request carries the context too, unused);
//! - `layer/deadline`: through the layer with a context that has a deadline
//!   (time_left read, `grpc-timeout` encoded and inserted, the future raced);
//! - `layer/no_deadline`: a context without a deadline (no header);
//! - `layer/no_context`: no context in the request (passes through);
//!
//! each for the call alone and for the call plus reading the body to its end.
//!
//! `cargo bench -p ctxcore-http --features client --bench client`

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use ctxcore::Context;
use ctxcore_http::client::PropagateDeadlineLayer;
use http::{Request, Response};
use http_body::Body;
use http_body_util::Full;
use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::Duration;
use tower::{service_fn, Layer, Service};

/// Polls a future that must be ready at once.
fn now<F: Future>(fut: F) -> F::Output {
    let mut cx = TaskContext::from_waker(Waker::noop());
    match pin!(fut).poll(&mut cx) {
        Poll::Ready(v) => v,
        Poll::Pending => unreachable!("the echo is ready at once"),
    }
}

/// Reads a body that is ready at once to its end.
fn drain<B: Body>(body: B) -> usize {
    let mut cx = TaskContext::from_waker(Waker::noop());
    let mut body = pin!(body);
    let mut n = 0;
    while let Poll::Ready(Some(frame)) = body.as_mut().poll_frame(&mut cx) {
        if frame.is_ok() {
            n += 1;
        }
    }
    n
}

fn request(ctx: Option<&Context>) -> Request<()> {
    let mut req = Request::new(());
    if let Some(ctx) = ctx {
        req.extensions_mut().insert(ctx.clone());
    }
    req
}

fn echo() -> impl Service<Request<()>, Response = Response<Full<Bytes>>, Error = Infallible, Future: Send> + Clone {
    service_fn(|req: Request<()>| async move {
        black_box(req.headers().len());
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"echo"))))
    })
}

fn bench(c: &mut Criterion) {
    let (with_deadline, _h) = Context::background().with_timeout(Duration::from_secs(3600));
    let (no_deadline, _h2) = Context::background().with_cancel();

    let mut g = c.benchmark_group("client_call");
    let mut bare = echo();
    g.bench_function("bare", |b| {
        b.iter(|| now(bare.call(request(Some(&with_deadline)))).unwrap())
    });
    let mut layered = PropagateDeadlineLayer::new().layer(echo());
    g.bench_function("layer/deadline", |b| {
        b.iter(|| now(layered.call(request(Some(&with_deadline)))).unwrap())
    });
    g.bench_function("layer/no_deadline", |b| {
        b.iter(|| now(layered.call(request(Some(&no_deadline)))).unwrap())
    });
    g.bench_function("layer/no_context", |b| {
        b.iter(|| now(layered.call(request(None))).unwrap())
    });
    g.finish();

    let mut g = c.benchmark_group("client_call_and_body");
    g.bench_function("bare", |b| {
        b.iter(|| drain(now(bare.call(request(Some(&with_deadline)))).unwrap().into_body()))
    });
    g.bench_function("layer/deadline", |b| {
        b.iter(|| drain(now(layered.call(request(Some(&with_deadline)))).unwrap().into_body()))
    });
    g.bench_function("layer/no_context", |b| {
        b.iter(|| drain(now(layered.call(request(None))).unwrap().into_body()))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    targets = bench
}
criterion_main!(benches);
