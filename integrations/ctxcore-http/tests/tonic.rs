//! tonic interop both ways, over real sockets on 127.0.0.1:0: a tonic
//! client's `set_timeout` reaches a handler behind `SetRequestContextLayer`
//! as its context deadline; a call through `PropagateDeadlineLayer` on a
//! `Channel` sends `grpc-timeout` to a plain tonic server and is cut off
//! with DEADLINE_EXCEEDED.
#![cfg(all(feature = "tonic", feature = "server"))]

use ctxcore::Context;
use ctxcore_http::client::{self, PropagateDeadlineLayer, DEFAULT_MARGIN};
use ctxcore_http::grpc_timeout;
use ctxcore_http::server::SetRequestContextLayer;
use ctxcore_http::tonic::{IntoStatusLayer, RequestExt};
use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tonic::codegen::tokio_stream;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Code, Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

const LIMIT: Duration = Duration::from_secs(5);

async fn bounded<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(LIMIT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// What a handler saw.
#[derive(Debug)]
enum Seen {
    /// Its request context's time left, and the `grpc-timeout` metadata.
    Context {
        time_left: Option<Duration>,
        header: Option<String>,
    },
    /// The `grpc-timeout` metadata of a plain tonic handler.
    Header(Option<String>),
    /// The slow handler was dropped.
    Dropped,
}

struct Guard(mpsc::UnboundedSender<Seen>);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.send(Seen::Dropped);
    }
}

/// Our own `Health` handler: `check` of service "slow" hangs (reporting
/// its drop); any other answers SERVING at once.
struct Handler {
    seen: mpsc::UnboundedSender<Seen>,
}

fn header<T>(req: &Request<T>) -> Option<String> {
    req.metadata()
        .get("grpc-timeout")
        .map(|v| v.to_str().unwrap().to_owned())
}

#[tonic::async_trait]
impl Health for Handler {
    async fn check(&self, req: Request<HealthCheckRequest>) -> Result<Response<HealthCheckResponse>, Status> {
        match req.context() {
            Some(ctx) => {
                let _ = self.seen.send(Seen::Context {
                    time_left: ctx.time_left(),
                    header: header(&req),
                });
            }
            None => {
                let _ = self.seen.send(Seen::Header(header(&req)));
            }
        }
        if req.get_ref().service == "slow" {
            let _guard = Guard(self.seen.clone());
            std::future::pending::<()>().await;
        }
        Ok(Response::new(HealthCheckResponse {
            status: ServingStatus::Serving as i32,
        }))
    }

    type WatchStream = tokio_stream::Empty<Result<HealthCheckResponse, Status>>;

    async fn watch(&self, _req: Request<HealthCheckRequest>) -> Result<Response<Self::WatchStream>, Status> {
        Err(Status::unimplemented("watch"))
    }
}

/// Serves `Handler` with tonic on 127.0.0.1:0, behind our server layer or not.
async fn serve(with_layer: bool) -> (SocketAddr, mpsc::UnboundedReceiver<Seen>) {
    let incoming = TcpIncoming::bind("127.0.0.1:0".parse().unwrap())
        .unwrap()
        .with_nodelay(Some(true));
    let addr = incoming.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let svc = HealthServer::new(Handler { seen: tx });
    if with_layer {
        let root = Context::background();
        let server = Server::builder()
            .layer(SetRequestContextLayer::new(&root))
            .add_service(svc);
        tokio::spawn(server.serve_with_incoming(incoming));
    } else {
        tokio::spawn(Server::builder().add_service(svc).serve_with_incoming(incoming));
    }
    (addr, rx)
}

async fn channel(addr: SocketAddr) -> Channel {
    bounded(
        "the channel",
        Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .tcp_nodelay(true)
            .connect(),
    )
    .await
    .unwrap()
}

fn check(service: &str) -> Request<HealthCheckRequest> {
    Request::new(HealthCheckRequest {
        service: service.to_owned(),
    })
}

#[tokio::test]
async fn a_tonic_client_timeout_is_the_handler_context_deadline() {
    let (addr, mut seen) = serve(true).await;
    let mut client = HealthClient::new(channel(addr).await);
    let budget = Duration::from_millis(300);
    let mut req = check("");
    req.set_timeout(budget);
    let sent = Instant::now();
    let resp = bounded("the call", client.check(req)).await.unwrap();
    let elapsed = sent.elapsed();
    assert_eq!(resp.into_inner().status, ServingStatus::Serving as i32);
    match bounded("the handler", seen.recv()).await.unwrap() {
        Seen::Context { time_left, header } => {
            let left = time_left.expect("the handler's context has a deadline");
            eprintln!("tonic set_timeout({budget:?}) -> header {header:?}, handler time_left {left:?}");
            assert!(left <= budget, "{left:?}");
            assert!(left + elapsed >= budget, "{left:?} + {elapsed:?}");
            assert_eq!(grpc_timeout::parse(header.as_deref().unwrap()), Ok(budget));
        }
        other => panic!("{other:?}"),
    }

    // Without a timeout, the handler's context has no deadline (no
    // max_timeout on the layer).
    bounded("the call", client.check(check(""))).await.unwrap();
    match bounded("the handler", seen.recv()).await.unwrap() {
        Seen::Context { time_left, header } => assert_eq!((time_left, header), (None, None)),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn our_client_layer_cuts_off_a_slow_tonic_server() {
    let (addr, mut seen) = serve(false).await;
    let channel = tower::ServiceBuilder::new()
        .layer(IntoStatusLayer::new())
        .layer(PropagateDeadlineLayer::new())
        .service(channel(addr).await);
    let mut client = HealthClient::new(channel);

    // A fast call goes through and carries the header.
    let (ctx, _h) = Context::background().with_timeout(Duration::from_secs(2));
    let resp = bounded("the fast call", client.check(check("").with_context(&ctx)))
        .await
        .unwrap();
    assert_eq!(resp.into_inner().status, ServingStatus::Serving as i32);
    match bounded("the handler", seen.recv()).await.unwrap() {
        Seen::Header(Some(h)) => assert!(grpc_timeout::parse(&h).unwrap() <= Duration::from_secs(2), "{h}"),
        other => panic!("{other:?}"),
    }

    // A slow one is cut off at our budget.
    let budget = Duration::from_millis(200);
    // Before the context: a preemption in between must not shorten `took`.
    let start = Instant::now();
    let (ctx, _h) = Context::background().with_timeout_cause(budget, "health check too slow");
    let status = bounded("the slow call", client.check(check("slow").with_context(&ctx)))
        .await
        .unwrap_err();
    let took = start.elapsed();
    let got = match bounded("the handler", seen.recv()).await.unwrap() {
        Seen::Header(Some(h)) => grpc_timeout::parse(&h).unwrap(),
        other => panic!("{other:?}"),
    };
    assert!(matches!(
        bounded("the handler to drop", seen.recv()).await,
        Some(Seen::Dropped)
    ));
    let dropped = start.elapsed();
    eprintln!(
        "tonic server got grpc-timeout {got:?} for a {budget:?} budget; status {:?} ({:?}) after {took:?}; handler dropped after {dropped:?}",
        status.code(),
        status.message()
    );
    // Cut off by our deadline ("context deadline exceeded") or, just before
    // it, by the Channel enforcing the header we sent ("Timeout expired");
    // either way DEADLINE_EXCEEDED, and the cause stays in this process.
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(!status.message().contains("too slow"), "{status:?}");
    assert!(got <= budget - DEFAULT_MARGIN && got > budget / 2, "{got:?}");
    let earliest = budget - DEFAULT_MARGIN - Duration::from_millis(1);
    assert!(took >= earliest && took < LIMIT, "{took:?}");
}

#[tokio::test]
async fn without_into_status_the_layer_still_works_on_a_channel() {
    let (addr, mut seen) = serve(false).await;
    let channel = tower::ServiceBuilder::new()
        .layer(PropagateDeadlineLayer::new())
        .service(channel(addr).await);
    let mut client = HealthClient::new(channel);
    let (ctx, h) = Context::background().with_cancel();
    let call = tokio::spawn(async move { client.check(check("slow").with_context(&ctx)).await });
    assert!(matches!(
        bounded("the handler", seen.recv()).await,
        Some(Seen::Header(None))
    ));
    h.cancel_with("user left");
    let status = bounded("the call", call).await.unwrap().unwrap_err();
    // tonic reports a foreign error as UNKNOWN; ours is in the source chain.
    assert_eq!(status.code(), Code::Unknown);
    let ours = std::error::Error::source(&status)
        .and_then(|e| e.downcast_ref::<client::Error<tonic::transport::Error>>())
        .expect("the client layer's error");
    assert!(ours.is_canceled());
    assert_eq!(ours.cause().unwrap().as_str(), Some("user left"));
    // The stream was reset: the server drops the handler.
    assert!(matches!(
        bounded("the handler to drop", seen.recv()).await,
        Some(Seen::Dropped)
    ));
}

#[tokio::test]
async fn a_done_context_never_reaches_the_tonic_server() {
    let (addr, mut seen) = serve(false).await;
    let channel = tower::ServiceBuilder::new()
        .layer(IntoStatusLayer::new())
        .layer(PropagateDeadlineLayer::new())
        .service(channel(addr).await);
    let mut client = HealthClient::new(channel);
    let (ctx, h) = Context::background().with_cancel();
    h.cancel_with("shutting down");
    let status = bounded("the call", client.check(check("").with_context(&ctx)))
        .await
        .unwrap_err();
    assert_eq!((status.code(), status.message()), (Code::Cancelled, "context canceled"));
    assert!(seen.try_recv().is_err());
}
