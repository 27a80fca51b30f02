//! Reproducers from the adversarial review of the server layer, over real
//! sockets on 127.0.0.1:0 (hyper-util's auto builder, HTTP/1.1) with bounded
//! waits, each asserting the cause the exchange must end with; plus the
//! doubtful points that were settled (leaked bodies, duplicate timeout
//! headers, the client's poll after completion and body after an error).
#![cfg(feature = "server")]

use bytes::Bytes;
use ctxcore::{Cause, Context, Tracker};
use ctxcore_http::server::{ClientDisconnected, HandlerPanicked, ResponseComplete, SetRequestContextLayer};
use http::{Request, Response};
use http_body::Frame;
use http_body_util::{combinators::BoxBody, BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tower::{Service, ServiceBuilder, ServiceExt};

type Body = BoxBody<Bytes, Infallible>;
type Fut = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;
const LIMIT: Duration = Duration::from_secs(5);

async fn bounded<F: Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(LIMIT, f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

fn describe(c: &Option<Cause>) -> String {
    match c {
        Some(c) if c.is::<ResponseComplete>() => "ResponseComplete".into(),
        Some(c) if c.is::<ClientDisconnected>() => "ClientDisconnected".into(),
        Some(c) if c.is::<HandlerPanicked>() => "HandlerPanicked".into(),
        Some(c) => format!("other cause: {c:?}"),
        None => "none".into(),
    }
}

struct Server {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve<H>(layer: SetRequestContextLayer, handler: H) -> Server
where
    H: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let svc = ServiceBuilder::new().layer(layer).service(tower::service_fn(handler));
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let svc = TowerToHyperService::new(svc.clone());
            tokio::spawn(async move {
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Server { addr, task }
}

/// A handler that reports its context and answers with `make()`.
fn reporting(
    tx: mpsc::UnboundedSender<Context>,
    make: fn() -> Response<Body>,
) -> impl Fn(Request<Incoming>) -> Fut + Clone + Send + Sync {
    move |req| {
        let tx = tx.clone();
        Box::pin(async move {
            let _ = tx.send(req.extensions().get::<Context>().cloned().unwrap());
            Ok(make())
        })
    }
}

/// Reads from `s` until `needle` has been seen (bounded).
async fn read_until(s: &mut TcpStream, needle: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    bounded("the response", async {
        let mut buf = [0u8; 4096];
        while !got.windows(needle.len()).any(|w| w == needle) {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "server closed: {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    got
}

/// Sends `request` on a raw HTTP/1.1 connection, reads up to `end`, and
/// returns what was read and the request context once it has ended (the
/// connection still open).
async fn exchange(
    server: &Server,
    rx: &mut mpsc::UnboundedReceiver<Context>,
    request: &[u8],
    end: &[u8],
) -> (Vec<u8>, Context) {
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let got = read_until(&mut s, end).await;
    assert!(got.starts_with(b"HTTP/1.1 "), "{:?}", String::from_utf8_lossy(&got));
    let ctx = bounded("the context", rx.recv()).await.unwrap();
    bounded("the request context to end", ctx.done()).await;
    drop(s); // only now does the client go away
    (got, ctx)
}

/// A stream body like `StreamBody` / axum's `Body::from_stream`: frames, then
/// `None` (or pending forever with `stall`); `is_end_stream` and `size_hint`
/// are the trait's defaults.
struct Chunks {
    chunks: VecDeque<Bytes>,
    stall: bool,
}

impl Chunks {
    fn new(chunks: &[&'static str], stall: bool) -> Self {
        Chunks {
            chunks: chunks.iter().map(|c| Bytes::from_static(c.as_bytes())).collect(),
            stall,
        }
    }
}

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.chunks.pop_front() {
            Some(b) => Poll::Ready(Some(Ok(Frame::data(b)))),
            None if self.stall => Poll::Pending,
            None => Poll::Ready(None),
        }
    }
}

// D1: a complete response with no body on the wire (HEAD; 304, 204 with a
// body left in the response by the handler) over HTTP/1.1: hyper drops the
// body unpolled, and that drop is the end, not a disconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodyless_responses_complete() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let server = serve(SetRequestContextLayer::new(&Context::background()), move |req| {
        let tx = tx.clone();
        Box::pin(async move {
            let _ = tx.send(req.extensions().get::<Context>().cloned().unwrap());
            let status = match req.uri().path() {
                "/304" => 304,
                "/204" => 204,
                _ => 200,
            };
            let body = http_body_util::Full::new(Bytes::from("hello")).boxed();
            Ok(Response::builder().status(status).body(body).unwrap())
        }) as Fut
    })
    .await;
    for (request, status) in [
        (&b"HEAD / HTTP/1.1\r\nhost: t\r\n\r\n"[..], &b"HTTP/1.1 200"[..]),
        (b"GET /304 HTTP/1.1\r\nhost: t\r\n\r\n", b"HTTP/1.1 304"),
        (b"GET /204 HTTP/1.1\r\nhost: t\r\n\r\n", b"HTTP/1.1 204"),
    ] {
        let (head, ctx) = exchange(&server, &mut rx, request, b"\r\n\r\n").await;
        assert!(head.starts_with(status), "{:?}", String::from_utf8_lossy(&head));
        assert_eq!(
            describe(&ctx.cause()),
            "ResponseComplete",
            "{:?}",
            String::from_utf8_lossy(request)
        );
    }
}

// D2: a streamed body with a Content-Length, sent in full over HTTP/1.1:
// hyper's length encoder stops at the length and drops the body without
// polling it to `None`; the whole length yielded is the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_body_with_content_length_completes() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let server = serve(
        SetRequestContextLayer::new(&Context::background()),
        reporting(tx, || {
            Response::builder()
                .header("content-length", "5")
                .body(Chunks::new(&["hel", "lo"], false).boxed())
                .unwrap()
        }),
    )
    .await;
    let stream = TcpStream::connect(server.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = bounded(
        "the response",
        sender.send_request(Request::get("/").body(Empty::<Bytes>::new()).unwrap()),
    )
    .await
    .unwrap();
    let body = bounded("the body", resp.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(body, "hello");
    let ctx = bounded("the context", rx.recv()).await.unwrap();
    bounded("the request context to end", ctx.done()).await;
    assert_eq!(describe(&ctx.cause()), "ResponseComplete");
    drop(sender); // the client's connection was alive throughout
}

// D2's counterpart: a Content-Length body the client leaves half-way is
// still a disconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_body_cut_short_is_a_disconnect() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let server = serve(
        SetRequestContextLayer::new(&Context::background()),
        reporting(tx, || {
            Response::builder()
                .header("content-length", "5")
                .body(Chunks::new(&["hel"], true).boxed())
                .unwrap()
        }),
    )
    .await;
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n").await.unwrap();
    read_until(&mut s, b"hel").await;
    let ctx = bounded("the context", rx.recv()).await.unwrap();
    assert!(!ctx.is_done(), "3 of 5 bytes sent: not complete");
    drop(s);
    bounded("the request context to end", ctx.done()).await;
    assert_eq!(describe(&ctx.cause()), "ClientDisconnected");
}

// D3: a handler that panics under hyper/tokio: the server drops the future
// after the panic, and descendants read HandlerPanicked, not the client's
// disconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_panic_is_handler_panicked() {
    let (tx, mut rx) = mpsc::unbounded_channel::<Context>();
    let server = serve(SetRequestContextLayer::new(&Context::background()), move |req| {
        let tx = tx.clone();
        Box::pin(async move {
            let _ = tx.send(req.extensions().get::<Context>().cloned().unwrap());
            tokio::task::yield_now().await;
            if true {
                panic!("handler bug (expected by this test)");
            }
            Ok(Response::new(http_body_util::Full::new(Bytes::new()).boxed()))
        }) as Fut
    })
    .await;
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n").await.unwrap();
    let ctx = bounded("the context", rx.recv()).await.unwrap();
    bounded("the request context to end", ctx.done()).await;
    assert_eq!(describe(&ctx.cause()), "HandlerPanicked");
    drop(s);
}

/// The service of the in-process tests: records the request context.
fn recording(seen: &Arc<Mutex<Option<Context>>>) -> impl Fn(&Request<()>) + Clone {
    let seen = seen.clone();
    move |req| *seen.lock().unwrap() = req.extensions().get::<Context>().cloned()
}

// D3, in process: the response future's poll panics, then the future is
// dropped (as tokio does after catching the panic).
#[test]
fn future_poll_panic_is_handler_panicked() {
    let seen = Arc::new(Mutex::new(None));
    let record = recording(&seen);
    let mut svc = ServiceBuilder::new()
        .layer(SetRequestContextLayer::new(&Context::background()))
        .service_fn(move |req: Request<()>| {
            record(&req);
            async {
                if true {
                    panic!("handler bug (expected by this test)");
                }
                Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
            }
        });
    let mut fut = Box::pin(svc.call(Request::new(())));
    let waker = std::task::Waker::noop();
    let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = fut.as_mut().poll(&mut TaskContext::from_waker(waker));
    }));
    assert!(polled.is_err());
    let ctx = seen.lock().unwrap().take().unwrap();
    assert!(!ctx.is_done(), "the panic itself ends nothing; the drop does");
    drop(fut);
    assert_eq!(describe(&ctx.cause()), "HandlerPanicked");
}

// D3 for the body: a body whose poll panics, dropped afterwards.
#[test]
fn body_poll_panic_is_handler_panicked() {
    struct Panicky;
    impl http_body::Body for Panicky {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(self: Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            panic!("body bug (expected by this test)")
        }
    }
    let seen = Arc::new(Mutex::new(None));
    let record = recording(&seen);
    let mut svc = ServiceBuilder::new()
        .layer(SetRequestContextLayer::new(&Context::background()))
        .service_fn(move |req: Request<()>| {
            record(&req);
            async { Ok::<_, Infallible>(Response::new(Panicky)) }
        });
    let waker = std::task::Waker::noop();
    let mut cx = TaskContext::from_waker(waker);
    let Poll::Ready(Ok(resp)) = Box::pin(svc.call(Request::new(()))).as_mut().poll(&mut cx) else {
        panic!("the handler is ready at once");
    };
    let mut body = Box::pin(resp.into_body());
    let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = http_body::Body::poll_frame(body.as_mut(), &mut cx);
    }));
    assert!(polled.is_err());
    drop(body);
    let ctx = seen.lock().unwrap().take().unwrap();
    assert_eq!(describe(&ctx.cause()), "HandlerPanicked");
}

// D4: an inner service whose `call` panics: the guard's drop cancels with
// HandlerPanicked (a cause, never a plain cancel).
#[test]
fn call_panic_is_handler_panicked() {
    struct PanickyCall(Arc<Mutex<Option<Context>>>);
    impl Service<Request<()>> for PanickyCall {
        type Response = Response<Empty<Bytes>>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Self::Response, Infallible>>;
        fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, req: Request<()>) -> Self::Future {
            *self.0.lock().unwrap() = req.extensions().get::<Context>().cloned();
            panic!("routing bug (expected by this test)");
        }
    }
    let seen = Arc::new(Mutex::new(None::<Context>));
    let mut svc = ServiceBuilder::new()
        .layer(SetRequestContextLayer::new(&Context::background()))
        .service(PanickyCall(seen.clone()));
    let called = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        drop(svc.call(Request::new(())));
    }));
    assert!(called.is_err());
    let ctx = seen.lock().unwrap().take().unwrap();
    assert!(ctx.is_done());
    assert!(ctx.error().unwrap().has_cause(), "plain cancel: {:?}", ctx.cause());
    assert_eq!(describe(&ctx.cause()), "HandlerPanicked");
}

// N1 (documented in "Graceful shutdown"): a leaked body keeps its context
// live without a tracker's drain; a drain cancels it but times out with it in
// flight.
#[tokio::test]
async fn forgotten_body_holds_the_drain_until_its_timeout() {
    let tracker = Arc::new(Tracker::new(&Context::background()));
    let seen = Arc::new(Mutex::new(None));
    let record = recording(&seen);
    let mut svc = ServiceBuilder::new()
        .layer(SetRequestContextLayer::with_tracker(tracker.clone()))
        .service_fn(move |req: Request<()>| {
            record(&req);
            async { Ok::<_, Infallible>(Response::new(http_body_util::Full::new(Bytes::from("x")))) }
        });
    let resp = svc.ready().await.unwrap().call(Request::new(())).await.unwrap();
    std::mem::forget(resp.into_body());
    let ctx = seen.lock().unwrap().take().unwrap();
    assert!(!ctx.is_done(), "live until the root or a deadline ends it");
    let r = tracker.drain("stop", Duration::from_millis(100)).await;
    assert!(r.is_err(), "the drain times out with the leaked body in flight: {r:?}");
    assert_eq!(tracker.in_flight(), 1);
    assert!(ctx.is_done(), "but the drain cancelled the context itself");
}

// N2: the in-flight mark is held until the body (and its destructor) is
// gone, though the context ends at the last frame.
#[tokio::test]
async fn drain_waits_for_the_body_to_be_dropped() {
    struct Noisy(Option<Bytes>, Arc<AtomicBool>);
    impl Drop for Noisy {
        fn drop(&mut self) {
            self.1.store(true, Ordering::SeqCst);
        }
    }
    impl http_body::Body for Noisy {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut TaskContext<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Ready(self.0.take().map(|b| Ok(Frame::data(b))))
        }
    }
    let tracker = Arc::new(Tracker::new(&Context::background()));
    let dropped = Arc::new(AtomicBool::new(false));
    let d = dropped.clone();
    let seen = Arc::new(Mutex::new(None));
    let record = recording(&seen);
    let mut svc = ServiceBuilder::new()
        .layer(SetRequestContextLayer::with_tracker(tracker.clone()))
        .service_fn(move |req: Request<()>| {
            record(&req);
            let d = d.clone();
            async move { Ok::<_, Infallible>(Response::new(Noisy(Some(Bytes::from("x")), d))) }
        });
    let resp = svc.ready().await.unwrap().call(Request::new(())).await.unwrap();
    let mut body = resp.into_body();
    while body.frame().await.is_some() {}
    let ctx = seen.lock().unwrap().take().unwrap();
    assert_eq!(describe(&ctx.cause()), "ResponseComplete", "ended at the last frame");
    assert_eq!(tracker.in_flight(), 1, "but still in flight while the body is alive");
    let r = tracker.drain("stop", Duration::from_millis(100)).await;
    assert!(r.is_err(), "the drain waits for the body: {r:?}");
    assert!(!dropped.load(Ordering::SeqCst));
    drop(body);
    assert!(dropped.load(Ordering::SeqCst));
    assert_eq!(tracker.in_flight(), 0);
    tracker.drain("stop", Duration::from_secs(1)).await.unwrap();
}

// A closed tracker refuses with ShuttingDown (saturation, which is not
// reachable in a test, gives TrackerSaturated).
#[tokio::test]
async fn closed_tracker_is_shutting_down() {
    let tracker = Arc::new(Tracker::new(&Context::background()));
    tracker.close();
    let seen = Arc::new(Mutex::new(None));
    let record = recording(&seen);
    let mut svc = ServiceBuilder::new()
        .layer(SetRequestContextLayer::with_tracker(tracker.clone()))
        .service_fn(move |req: Request<()>| {
            record(&req);
            async { Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new())) }
        });
    let resp = svc.ready().await.unwrap().call(Request::new(())).await.unwrap();
    let ctx = seen.lock().unwrap().take().unwrap();
    assert!(ctx.cause().unwrap().is::<ctxcore_http::server::ShuttingDown>());
    drop(resp);
    assert!(ctx.cause().unwrap().is::<ctxcore_http::server::ShuttingDown>());
}

// Hostile timeout headers never panic and never outlive max_timeout; of
// repeated headers, the shortest valid value wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_and_repeated_timeout_headers() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let max = Duration::from_secs(20);
    let server = serve(
        SetRequestContextLayer::new(&Context::background())
            .max_timeout(max)
            .millis_header(http::HeaderName::from_static("x-ms")),
        reporting(tx, || Response::new(http_body_util::Full::new(Bytes::new()).boxed())),
    )
    .await;
    let cases: &[(&[u8], Duration)] = &[
        (b"grpc-timeout: 99999999H\r\n", max),
        (
            b"grpc-timeout: 99999999H\r\ngrpc-timeout: 2S\r\n",
            Duration::from_secs(2),
        ),
        (
            b"grpc-timeout: 3S\r\ngrpc-timeout: soon\r\ngrpc-timeout: 4S\r\n",
            Duration::from_secs(3),
        ),
        (b"grpc-timeout: \xff5S\r\n", max),
        (b"grpc-timeout:  5S \r\n", Duration::from_secs(5)),
        (b"grpc-timeout: 000000000000000001S\r\n", max),
        (
            b"x-ms: 9999999999\r\nx-ms: 99999999999999999999999\r\nx-ms: 1500\r\n",
            Duration::from_millis(1500),
        ),
        (b"x-ms: 18446744073709551616\r\n", max),
        (
            b"grpc-timeout: 4S\r\nx-ms: 4500\r\nx-ms: 3500\r\n",
            Duration::from_millis(3500),
        ),
    ];
    for (h, bound) in cases {
        let mut req = b"GET / HTTP/1.1\r\nhost: t\r\n".to_vec();
        req.extend_from_slice(h);
        req.extend_from_slice(b"\r\n");
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        s.write_all(&req).await.unwrap();
        let head = read_until(&mut s, b"\r\n\r\n").await;
        assert!(head.starts_with(b"HTTP/1.1 200"));
        let ctx = bounded("ctx", rx.recv()).await.unwrap();
        let left = ctx.time_left().expect("max_timeout always applies");
        let what = String::from_utf8_lossy(h);
        assert!(left <= *bound, "{what:?}: {left:?} > {bound:?}");
        assert!(
            left + Duration::from_secs(1) > *bound,
            "{what:?}: {left:?} far below {bound:?}"
        );
    }
}

#[test]
fn codec_property_many_random() {
    use ctxcore_http::grpc_timeout::{encode, parse, MAX};
    let mut s: u64 = 0xDEAD_BEEF_CAFE_F00D;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let check = |d: Duration| {
        let e = encode(d);
        let back = parse(e.as_str()).unwrap();
        assert!(!back.is_zero(), "{d:?} -> {e}: never a zero timeout");
        if d.is_zero() {
            return;
        }
        assert!(back <= d, "{d:?} -> {e} -> {back:?}");
        if d < MAX {
            let unit = match e.as_str().chars().last().unwrap() {
                'n' => 1u128,
                'u' => 1_000,
                'm' => 1_000_000,
                'S' => 1_000_000_000,
                'M' => 60_000_000_000,
                _ => 3_600_000_000_000,
            };
            assert!(d.as_nanos() - back.as_nanos() < unit, "{d:?} -> {e}");
            assert!(e.as_str().len() <= 9);
        }
    };
    for _ in 0..200_000 {
        let r = next();
        let shift = (next() % 64) as u32;
        check(Duration::new(r >> shift, (next() % 1_000_000_000) as u32));
        check(Duration::from_nanos(r >> shift));
    }
    for b in [
        99_999_999u64,
        100_000_000,
        99_999_999_999,
        100_000_000_000,
        99_999_999_999_999,
    ] {
        for d in [b - 1, b, b + 1] {
            check(Duration::from_nanos(d));
        }
    }
    check(Duration::ZERO);
    check(Duration::MAX);
    check(MAX - Duration::from_nanos(1));
    check(MAX + Duration::from_nanos(1));
}

#[allow(dead_code)]
fn send_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    fn assert_send<T: Send>() {}
    assert_send::<ctxcore_http::server::ResponseFuture<Fut>>();
    assert_send_sync::<ctxcore_http::server::ResponseBody<Body>>();
    assert_send_sync::<ctxcore_http::server::SetRequestContext<()>>();
    assert_send_sync::<SetRequestContextLayer>();
}

// D1/D2 under axum's Router (the layer applied with `Router::layer`): HEAD
// on a GET route, a 304 with a body, a streamed body with Content-Length.
#[cfg(feature = "axum")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_bodyless_and_content_length_complete() {
    use axum::{routing::get, Router};
    use ctxcore_http::extract::RequestContext;
    let (tx, mut rx) = mpsc::unbounded_channel::<Context>();
    let (t1, t2, t3) = (tx.clone(), tx.clone(), tx);
    let app: Router = Router::new()
        .route(
            "/head",
            get(move |RequestContext(c): RequestContext| async move {
                let _ = t1.send(c);
                "hello"
            }),
        )
        .route(
            "/304",
            get(move |RequestContext(c): RequestContext| async move {
                let _ = t2.send(c);
                (http::StatusCode::NOT_MODIFIED, "cached")
            }),
        )
        .route(
            "/file",
            get(move |RequestContext(c): RequestContext| async move {
                let _ = t3.send(c);
                Response::builder()
                    .header("content-length", "5")
                    .body(axum::body::Body::new(Chunks::new(&["hel", "lo"], false)))
                    .unwrap()
            }),
        )
        .layer(SetRequestContextLayer::new(&Context::background()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Server {
        addr,
        task: tokio::spawn(async move { axum::serve(listener, app).await.unwrap() }),
    };
    let mut out = Vec::new();
    for (req, end) in [
        (&b"HEAD /head HTTP/1.1\r\nhost: t\r\n\r\n"[..], &b"\r\n\r\n"[..]),
        (b"GET /304 HTTP/1.1\r\nhost: t\r\n\r\n", b"\r\n\r\n"),
        (b"GET /file HTTP/1.1\r\nhost: t\r\n\r\n", b"hello"),
    ] {
        let (_, ctx) = exchange(&server, &mut rx, req, end).await;
        out.push(describe(&ctx.cause()));
    }
    assert_eq!(out, ["ResponseComplete"; 3]);
}

#[cfg(feature = "client")]
mod client {
    use super::*;
    use ctxcore_http::client::{PropagateDeadline, PropagateDeadlineLayer, ResponseBody};
    use http_body::Body as _;

    // The client future polled after it resolved panics (documented) rather
    // than hanging with `Pending`.
    #[test]
    #[should_panic(expected = "polled after completion")]
    fn client_future_polled_after_completion_panics() {
        let mut svc = PropagateDeadline::new(tower::service_fn(|_req: Request<()>| async {
            Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
        }));
        let mut req = Request::new(());
        req.extensions_mut().insert(Context::background().with_cancel().0);
        let mut fut = Box::pin(svc.call(req));
        let mut cx = TaskContext::from_waker(std::task::Waker::noop());
        assert!(fut.as_mut().poll(&mut cx).is_ready());
        let _ = fut.as_mut().poll(&mut cx);
    }

    // After a context error the client body ends: `None`, `is_end_stream`,
    // the inner body dropped.
    #[test]
    fn client_body_ends_after_a_context_error() {
        let (ctx, handle) = Context::background().with_cancel();
        let mut body = Box::pin(ResponseBody::new(Chunks::new(&["a", "b"], true), Some(ctx)));
        let mut cx = TaskContext::from_waker(std::task::Waker::noop());
        assert!(matches!(body.as_mut().poll_frame(&mut cx), Poll::Ready(Some(Ok(_)))));
        handle.cancel_with("user left");
        match body.as_mut().poll_frame(&mut cx) {
            Poll::Ready(Some(Err(e))) => assert_eq!(e.cause().unwrap().as_str(), Some("user left")),
            _ => panic!("the context's error first"),
        }
        assert!(body.is_end_stream());
        assert!(body.get_ref().is_none());
        assert!(matches!(body.as_mut().poll_frame(&mut cx), Poll::Ready(None)));
    }

    // Of repeated grpc-timeout headers the shortest valid one is kept, alone
    // (the millisecond header's floor of 1 is a unit test of the codec).
    #[tokio::test]
    async fn client_keeps_the_shortest_repeated_header() {
        let (sent_tx, mut sent_rx) = mpsc::unbounded_channel::<http::HeaderMap>();
        let mut svc = ServiceBuilder::new()
            .layer(PropagateDeadlineLayer::new())
            .service(tower::service_fn(move |req: Request<()>| {
                let _ = sent_tx.send(req.headers().clone());
                async { Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new())) }
            }));
        let (ctx, _h) = Context::background().with_timeout(Duration::from_secs(30));
        let mut req = Request::new(());
        req.extensions_mut().insert(ctx);
        req.headers_mut()
            .append("grpc-timeout", http::HeaderValue::from_static("5S"));
        req.headers_mut()
            .append("grpc-timeout", http::HeaderValue::from_static("100n"));
        req.headers_mut()
            .append("grpc-timeout", http::HeaderValue::from_static("soon"));
        let _ = svc.ready().await.unwrap().call(req).await;
        let h = bounded("the request", sent_rx.recv()).await.unwrap();
        let all: Vec<_> = h.get_all("grpc-timeout").iter().collect();
        assert_eq!(all, ["100n"]);
    }
}
