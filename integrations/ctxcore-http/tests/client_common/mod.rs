//! Shared by the client tests: real hyper servers on 127.0.0.1:0, a
//! hyper-util client behind the client layer, drop guards, bounded waits.
#![allow(dead_code, unreachable_pub)]

use bytes::Bytes;
use ctxcore_http::client::{PropagateDeadline, PropagateDeadlineLayer};
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// Every wait in these tests is bounded by this.
pub const LIMIT: Duration = Duration::from_secs(5);

/// Awaits `fut` for at most [`LIMIT`].
pub async fn bounded<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(LIMIT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

pub type ResBody = BoxBody<Bytes, Infallible>;

pub fn text(s: impl Into<Bytes>) -> ResBody {
    Full::new(s.into()).boxed()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Http1,
    Http2,
}

pub struct Server {
    pub addr: SocketAddr,
    /// One message per connection the server has finished serving.
    pub closed: mpsc::UnboundedReceiver<()>,
    /// Connections accepted.
    pub accepted: Arc<AtomicUsize>,
}

impl Server {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// Serves `handler` with hyper on 127.0.0.1:0.
pub async fn serve<H, Fut>(proto: Proto, handler: H) -> Server
where
    H: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<ResBody>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (closed_tx, closed) = mpsc::unbounded_channel();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            count.fetch_add(1, Ordering::SeqCst);
            // No Nagle: small frames (a reset) go out at once.
            let _ = stream.set_nodelay(true);
            let handler = handler.clone();
            let closed_tx = closed_tx.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let fut = handler(req);
                    async move { Ok::<_, Infallible>(fut.await) }
                });
                let io = TokioIo::new(stream);
                let _ = match proto {
                    Proto::Http1 => {
                        hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, svc)
                            .await
                    }
                    Proto::Http2 => {
                        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, svc)
                            .await
                    }
                };
                let _ = closed_tx.send(());
            });
        }
    });
    Server { addr, closed, accepted }
}

pub type HyperClient = Client<HttpConnector, Empty<Bytes>>;

/// A hyper-util legacy client speaking `proto`.
pub fn hyper_client(proto: Proto) -> HyperClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .http2_only(proto == Proto::Http2)
        .build(connector)
}

/// That client behind the client layer.
pub fn client(proto: Proto) -> PropagateDeadline<HyperClient> {
    tower::ServiceBuilder::new()
        .layer(PropagateDeadlineLayer::new())
        .service(hyper_client(proto))
}

/// A GET of `url` carrying `ctx` (when given).
pub fn get(url: &str, ctx: Option<&ctxcore::Context>) -> Request<Empty<Bytes>> {
    let mut req = Request::get(url).body(Empty::new()).unwrap();
    if let Some(ctx) = ctx {
        req.extensions_mut().insert(ctx.clone());
    }
    req
}

/// Sends a message when dropped (a handler future, a body).
pub struct DropGuard(pub Option<mpsc::UnboundedSender<&'static str>>, pub &'static str);

impl Drop for DropGuard {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(self.1);
        }
    }
}

/// A body that yields one chunk, then never ends; reports its drop.
pub struct OneChunkThenHang {
    pub sent: bool,
    pub _guard: DropGuard,
}

impl Body for OneChunkThenHang {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.sent {
            Poll::Pending
        } else {
            self.sent = true;
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"first")))))
        }
    }
}

/// A cause with a type, to downcast.
#[derive(Debug, PartialEq, Eq)]
pub struct UserLeft;

impl std::fmt::Display for UserLeft {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("user left")
    }
}

impl std::error::Error for UserLeft {}
