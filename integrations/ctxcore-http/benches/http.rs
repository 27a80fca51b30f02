//! What the server layer adds per request, and the grpc-timeout codec.
//!
//! `server/*`: the same in-process tower service (`service_fn` answering an
//! empty body), called and its body polled to the end, bare and behind
//! `SetRequestContextLayer` (with no deadline, with a `grpc-timeout` header
//! and a `max_timeout`). `grpc_timeout/*`: encode and parse.
//!
//! Run: `cargo bench -p ctxcore-http --bench http --features server`.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use ctxcore::Context;
use ctxcore_http::grpc_timeout;
use ctxcore_http::server::SetRequestContextLayer;
use http::{HeaderValue, Request, Response};
use http_body::Body;
use http_body_util::Empty;
use std::convert::Infallible;
use std::future::{ready, Future};
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::Duration;
use tower::{Layer, Service};

/// Calls `svc` and polls the future and the body to their ends (both are
/// ready at once: no executor needed).
fn exchange<S, B>(svc: &mut S, req: Request<()>)
where
    S: Service<Request<()>, Response = Response<B>, Error = Infallible>,
    B: Body,
{
    let mut cx = TaskContext::from_waker(Waker::noop());
    let fut = pin!(svc.call(req));
    let Poll::Ready(Ok(resp)) = fut.poll(&mut cx) else {
        panic!("the bench service is always ready")
    };
    let mut body = pin!(resp.into_body());
    loop {
        match body.as_mut().poll_frame(&mut cx) {
            Poll::Ready(None) => break,
            Poll::Ready(Some(frame)) => {
                black_box(frame.is_ok());
            }
            Poll::Pending => panic!("the bench body is always ready"),
        }
    }
}

fn empty(_req: Request<()>) -> std::future::Ready<Result<Response<Empty<Bytes>>, Infallible>> {
    ready(Ok(Response::new(Empty::new())))
}

fn server(c: &mut Criterion) {
    let mut g = c.benchmark_group("server");
    let (root, _shutdown) = Context::background().with_cancel();

    let mut bare = tower::service_fn(empty);
    g.bench_function("bare service", |b| b.iter(|| exchange(&mut bare, Request::new(()))));

    let mut layered = SetRequestContextLayer::new(&root).layer(tower::service_fn(empty));
    g.bench_function("layer, no deadline", |b| {
        b.iter(|| exchange(&mut layered, Request::new(())))
    });

    let mut limited = SetRequestContextLayer::new(&root)
        .max_timeout(Duration::from_secs(30))
        .layer(tower::service_fn(empty));
    let header = HeaderValue::from_static("200m");
    g.bench_function("layer, grpc-timeout + max_timeout", |b| {
        b.iter(|| {
            let mut req = Request::new(());
            req.headers_mut().insert("grpc-timeout", header.clone());
            exchange(&mut limited, req)
        })
    });
    g.bench_function("bare service, grpc-timeout header inserted", |b| {
        b.iter(|| {
            let mut req = Request::new(());
            req.headers_mut().insert("grpc-timeout", header.clone());
            exchange(&mut bare, req)
        })
    });
    // The floors the layer is made of, measured alone.
    let disconnected = ctxcore::Cause::from(ctxcore_http::server::ResponseComplete);
    g.bench_function("floor: core with_cancel + cancel_with", |b| {
        b.iter(|| {
            let (ctx, handle) = root.with_cancel();
            handle.cancel_with(disconnected.clone());
            black_box(ctx);
        })
    });
    g.bench_function("floor: core with_timeout + cancel_with", |b| {
        b.iter(|| {
            let (ctx, handle) = root.with_timeout(Duration::from_millis(200));
            handle.cancel_with(disconnected.clone());
            black_box(ctx);
        })
    });
    g.bench_function("floor: http Extensions insert Context", |b| {
        b.iter(|| {
            let mut req = Request::new(());
            req.extensions_mut().insert(root.clone());
            black_box(req);
        })
    });
    g.finish();
}

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("grpc_timeout");
    g.bench_function("encode 200ms", |b| {
        b.iter(|| grpc_timeout::encode(black_box(Duration::from_millis(200))))
    });
    g.bench_function("encode 3h (coarse unit)", |b| {
        b.iter(|| grpc_timeout::encode(black_box(Duration::from_secs(3 * 3600 + 7))))
    });
    g.bench_function("parse 200000u", |b| {
        b.iter(|| grpc_timeout::parse(black_box("200000u")))
    });
    g.bench_function("parse 99999999H", |b| {
        b.iter(|| grpc_timeout::parse(black_box("99999999H")))
    });
    g.bench_function("parse invalid +5S", |b| {
        b.iter(|| grpc_timeout::parse(black_box("+5S")))
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = server, codec
}
criterion_main!(benches);
