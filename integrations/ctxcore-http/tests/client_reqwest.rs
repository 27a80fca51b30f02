//! `send_with_context` on reqwest against real hyper servers on 127.0.0.1:0.
#![cfg(feature = "reqwest")]

mod client_common;

use client_common::*;
use ctxcore::Context;
use ctxcore_http::client::Error;
use ctxcore_http::grpc_timeout;
use ctxcore_http::reqwest::RequestBuilderExt;
use http::Response;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

fn reqwest_client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().tcp_nodelay(true).build().unwrap()
}

async fn echo_header() -> Server {
    serve(Proto::Http1, |req: http::Request<hyper::body::Incoming>| async move {
        let h = req
            .headers()
            .get("grpc-timeout")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        Response::new(text(h))
    })
    .await
}

#[tokio::test]
async fn header_from_time_left_and_shorter_kept() {
    let server = echo_header().await;
    let client = reqwest_client();
    let (ctx, _h) = Context::background().with_timeout(Duration::from_secs(2));
    let resp = bounded("the call", client.get(server.url("/")).send_with_context(&ctx))
        .await
        .unwrap();
    let sent = grpc_timeout::parse(&resp.text().await.unwrap()).unwrap();
    eprintln!("reqwest: grpc-timeout sent {sent:?} for a 2 s budget");
    assert!(
        sent <= Duration::from_secs(2) && sent > Duration::from_secs(1),
        "{sent:?}"
    );

    let resp = bounded(
        "the call",
        client
            .get(server.url("/"))
            .header("grpc-timeout", "50m")
            .send_with_context(&ctx),
    )
    .await
    .unwrap();
    assert_eq!(resp.text().await.unwrap(), "50m");

    // Without a deadline: no header.
    let resp = bounded(
        "the call",
        client.get(server.url("/")).send_with_context(&Context::background()),
    )
    .await
    .unwrap();
    assert_eq!(resp.text().await.unwrap(), "");
}

#[tokio::test]
async fn done_context_never_sends() {
    let server = echo_header().await;
    let (ctx, h) = Context::background().with_cancel();
    h.cancel_with(UserLeft);
    let err = reqwest_client()
        .get(server.url("/"))
        .send_with_context(&ctx)
        .await
        .unwrap_err();
    assert!(matches!(&err, Error::Canceled(c) if c.is::<UserLeft>()), "{err:?}");
    assert_eq!(server.accepted(), 0);
}

async fn hanging() -> (Server, mpsc::UnboundedReceiver<&'static str>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let server = serve(Proto::Http1, move |_req| {
        let tx = tx.clone();
        async move {
            let _ = tx.send("started");
            let _guard = DropGuard(Some(tx), "handler dropped");
            std::future::pending::<()>().await;
            Response::new(text("never"))
        }
    })
    .await;
    (server, rx)
}

#[tokio::test]
async fn cancel_mid_call_drops_the_send() {
    let (mut server, mut events) = hanging().await;
    let (ctx, h) = Context::background().with_cancel();
    let call = tokio::spawn(reqwest_client().get(server.url("/")).send_with_context(&ctx));
    assert_eq!(bounded("the handler", events.recv()).await, Some("started"));
    let at = Instant::now();
    h.cancel_with(UserLeft);
    let err = bounded("the call", call).await.unwrap().unwrap_err();
    assert!(matches!(&err, Error::Canceled(c) if c.is::<UserLeft>()), "{err:?}");
    assert_eq!(
        bounded("the handler to drop", events.recv()).await,
        Some("handler dropped")
    );
    bounded("the connection to close", server.closed.recv()).await.unwrap();
    eprintln!(
        "reqwest: cancel -> server handler dropped, connection closed in {:?}",
        at.elapsed()
    );
}

#[tokio::test]
async fn deadline_mid_call_is_deadline_exceeded() {
    let (server, mut events) = hanging().await;
    let budget = Duration::from_millis(150);
    // Before the context: a preemption in between must not shorten `took`.
    let start = Instant::now();
    let (ctx, _h) = Context::background().with_timeout_cause(budget, "too slow");
    let err = bounded(
        "the call",
        reqwest_client().get(server.url("/")).send_with_context(&ctx),
    )
    .await
    .unwrap_err();
    let took = start.elapsed();
    eprintln!("reqwest: budget {budget:?}, failed after {took:?}: {err}");
    assert!(err.is_deadline_exceeded(), "{err:?}");
    assert_eq!(err.cause().unwrap().as_str(), Some("too slow"));
    assert!(took >= budget - Duration::from_millis(1), "{took:?}");
    assert_eq!(bounded("the handler", events.recv()).await, Some("started"));
    assert_eq!(
        bounded("the handler to drop", events.recv()).await,
        Some("handler dropped")
    );
}

#[tokio::test]
async fn inner_errors_stay_reqwest_errors() {
    // A port nothing listens on (bound, then closed).
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (ctx, _h) = Context::background().with_timeout(Duration::from_secs(2));
    let err = bounded(
        "the call",
        reqwest_client().get(format!("http://{addr}/")).send_with_context(&ctx),
    )
    .await
    .unwrap_err();
    match err {
        Error::Inner(e) => assert!(e.is_connect(), "{e:?}"),
        other => panic!("{other:?}"),
    }
}
