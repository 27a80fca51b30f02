//! axum behind `SetRequestContextLayer` on 127.0.0.1:0: the extractor, the
//! missing-layer rejection, and the error mappings (HTTP and gRPC), with the
//! cause kept off the wire unless the layer opts in.
#![cfg(all(feature = "axum", feature = "grpc"))]

use axum::{routing::get, Router};
use bytes::Bytes;
use ctxcore::Context;
use ctxcore_http::extract::RequestContext;
use ctxcore_http::grpc::GrpcErrorResponse;
use ctxcore_http::response::{check, ErrorResponse};
use ctxcore_http::server::SetRequestContextLayer;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

const SECRET: &str = "db-7.internal: password expired";

async fn bounded<F: Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(Duration::from_secs(5), f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

fn routes() -> Router {
    Router::new()
        .route(
            "/ctx",
            get(|RequestContext(ctx): RequestContext| async move {
                format!("done={} deadline={}", ctx.is_done(), ctx.deadline().is_some())
            }),
        )
        .route(
            "/optional",
            get(|ctx: Option<RequestContext>| async move {
                match ctx {
                    Some(_) => "some",
                    None => "none",
                }
            }),
        )
        .route(
            "/deadline",
            get(|ctx: RequestContext| async move {
                let (child, _h) = ctx.with_timeout_cause(Duration::ZERO, SECRET);
                check(&child)?;
                Ok::<_, ErrorResponse>("unreachable")
            }),
        )
        .route(
            "/cancel",
            get(|ctx: RequestContext| async move {
                let (child, h) = ctx.with_cancel();
                h.cancel_with(SECRET);
                RequestContext(child).check()?;
                Ok::<_, ErrorResponse>("unreachable")
            }),
        )
        .route(
            "/grpc-deadline",
            get(|ctx: RequestContext| async move {
                let (child, _h) = ctx.with_timeout_cause(Duration::ZERO, SECRET);
                let err = ErrorResponse::from_context(&child).expect("done");
                Err::<&str, _>(GrpcErrorResponse::from(err))
            }),
        )
        .route(
            "/grpc-cancel",
            get(|ctx: RequestContext| async move {
                let (child, h) = ctx.with_cancel();
                h.cancel_with(SECRET);
                Err::<&str, _>(GrpcErrorResponse::from(child.error().expect("done")))
            }),
        )
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

async fn serve(app: Router) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Server { addr, task }
}

async fn call(addr: SocketAddr, path: &str) -> (StatusCode, HeaderMap, String) {
    let stream = bounded("connect", TcpStream::connect(addr)).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get(format!("http://{addr}{path}"))
        .header("host", "test")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = bounded("the response", sender.send_request(req)).await.unwrap();
    let (parts, body) = resp.into_parts();
    let body = bounded("the body", body.collect()).await.unwrap().to_bytes();
    (parts.status, parts.headers, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extractor_behind_the_layer() {
    let (root, _shutdown) = Context::background().with_cancel();
    let app = routes().layer(SetRequestContextLayer::new(&root).max_timeout(Duration::from_secs(10)));
    let server = serve(app).await;
    let (status, _, body) = call(server.addr, "/ctx").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "done=false deadline=true"));
    let (status, _, body) = call(server.addr, "/optional").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "some"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_layer_is_a_500_naming_it() {
    let server = serve(routes()).await;
    let (status, _, body) = call(server.addr, "/ctx").await;
    eprintln!("without the layer: {status} {body:?}");
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(body.contains("SetRequestContextLayer"), "{body}");
    let (status, _, body) = call(server.addr, "/optional").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "none"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_mapping_hides_the_cause_by_default() {
    let (root, _shutdown) = Context::background().with_cancel();
    let server = serve(routes().layer(SetRequestContextLayer::new(&root))).await;

    let (status, headers, body) = call(server.addr, "/deadline").await;
    eprintln!("/deadline: {status} {body:?}");
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(body, "context deadline exceeded");
    assert_eq!(headers["content-type"], "text/plain; charset=utf-8");

    let (status, _, body) = call(server.addr, "/cancel").await;
    eprintln!("/cancel: {status} {body:?}");
    assert_eq!(status.as_u16(), 499);
    assert_eq!(body, "context canceled");

    for (path, code, msg) in [
        ("/grpc-deadline", "4", "context deadline exceeded"),
        ("/grpc-cancel", "1", "context canceled"),
    ] {
        let (status, headers, body) = call(server.addr, path).await;
        eprintln!("{path}: {status} {headers:?}");
        assert_eq!(status, StatusCode::OK, "{path}: trailers-only is HTTP 200");
        assert_eq!(headers["content-type"], "application/grpc");
        assert_eq!(headers["grpc-status"], code);
        assert_eq!(headers["grpc-message"], msg);
        assert!(body.is_empty());
        assert!(!format!("{headers:?}").contains("db-7"), "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_mapping_shows_the_cause_when_the_layer_opts_in() {
    let (root, _shutdown) = Context::background().with_cancel();
    let server = serve(routes().layer(SetRequestContextLayer::new(&root).expose_cause(true))).await;

    let (status, _, body) = call(server.addr, "/deadline").await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(body, format!("context deadline exceeded: {SECRET}"));
    let (status, _, body) = call(server.addr, "/cancel").await;
    assert_eq!(status.as_u16(), 499);
    assert_eq!(body, format!("context canceled: {SECRET}"));

    let (_, headers, _) = call(server.addr, "/grpc-deadline").await;
    assert_eq!(headers["grpc-status"], "4");
    assert_eq!(
        headers["grpc-message"],
        "context deadline exceeded: db-7.internal: password expired"
    );
}
