//! The client layer against real hyper servers on 127.0.0.1:0, through
//! hyper-util's legacy client, over HTTP/1 and HTTP/2.
#![cfg(feature = "client")]

mod client_common;

use bytes::Bytes;
use client_common::*;
use ctxcore::Context;
use ctxcore_http::client::{Error, PropagateDeadlineLayer, DEFAULT_MARGIN};
use ctxcore_http::grpc_timeout;
use http::{HeaderName, HeaderValue, Response};
use http_body_util::BodyExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tower::{Service, ServiceExt};

/// A server that answers with the `grpc-timeout` and `x-timeout-ms` headers it got.
async fn echo_headers(proto: Proto) -> Server {
    serve(proto, |req: http::Request<hyper::body::Incoming>| async move {
        let h = |name: &str| {
            req.headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default()
        };
        Response::new(text(format!("{}|{}", h("grpc-timeout"), h("x-timeout-ms"))))
    })
    .await
}

async fn body_text<B>(resp: Response<B>) -> String
where
    B: hyper::body::Body,
    B::Error: std::fmt::Debug,
{
    let bytes = bounded("the body", resp.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[tokio::test]
async fn header_is_set_from_time_left() {
    for proto in [Proto::Http1, Proto::Http2] {
        let server = echo_headers(proto).await;
        let mut client = tower::ServiceBuilder::new()
            .layer(PropagateDeadlineLayer::new().timeout_ms_header(HeaderName::from_static("x-timeout-ms")))
            .service(hyper_client(proto));
        let (ctx, _h) = Context::background().with_timeout(Duration::from_secs(2));
        let resp = bounded(
            "the call",
            client.ready().await.unwrap().call(get(&server.url("/"), Some(&ctx))),
        )
        .await
        .unwrap();
        let left_after = ctx.time_left().unwrap();
        let got = body_text(resp).await;
        let (grpc, ms) = got.split_once('|').unwrap();
        let grpc = grpc_timeout::parse(grpc).unwrap();
        eprintln!("{proto:?}: grpc-timeout {got}, parsed {grpc:?}");
        // The time left, less the margin for the way to the peer.
        assert!(grpc <= Duration::from_secs(2) - DEFAULT_MARGIN, "{grpc:?}");
        assert!(
            grpc + DEFAULT_MARGIN >= left_after,
            "sent {grpc:?}, yet {left_after:?} is left after the call"
        );
        let ms = Duration::from_millis(ms.parse().unwrap());
        assert!(ms <= grpc && ms + Duration::from_millis(1) > grpc, "{ms:?}");
    }
}

#[tokio::test]
async fn no_context_passes_through_unchanged() {
    let server = echo_headers(Proto::Http1).await;
    let mut client = client(Proto::Http1);
    let resp = bounded(
        "the call",
        client.ready().await.unwrap().call(get(&server.url("/"), None)),
    )
    .await
    .unwrap();
    assert!(resp.body().context().is_none());
    assert_eq!(body_text(resp).await, "|");
}

#[tokio::test]
async fn default_context_stands_in() {
    let server = echo_headers(Proto::Http1).await;
    let (default, _h) = Context::background().with_timeout(Duration::from_secs(3));
    let mut client = tower::ServiceBuilder::new()
        .layer(PropagateDeadlineLayer::new().default_context(default))
        .service(hyper_client(Proto::Http1));
    let resp = bounded(
        "the call",
        client.ready().await.unwrap().call(get(&server.url("/"), None)),
    )
    .await
    .unwrap();
    let got = body_text(resp).await;
    let sent = grpc_timeout::parse(got.trim_end_matches('|')).unwrap();
    assert!(
        sent <= Duration::from_secs(3) && sent > Duration::from_secs(2),
        "{sent:?}"
    );

    // A context in the request wins over the default.
    let (ctx, _h) = Context::background().with_timeout(Duration::from_millis(700));
    let resp = bounded(
        "the call",
        client.ready().await.unwrap().call(get(&server.url("/"), Some(&ctx))),
    )
    .await
    .unwrap();
    let sent = grpc_timeout::parse(body_text(resp).await.trim_end_matches('|')).unwrap();
    assert!(sent <= Duration::from_millis(700), "{sent:?}");
}

#[tokio::test]
async fn the_shorter_existing_header_is_kept() {
    let server = echo_headers(Proto::Http2).await;
    let mut client = client(Proto::Http2);
    let (ctx, _h) = Context::background().with_timeout(Duration::from_secs(2));

    let mut req = get(&server.url("/"), Some(&ctx));
    req.headers_mut()
        .insert("grpc-timeout", HeaderValue::from_static("100m"));
    let resp = bounded("the call", client.ready().await.unwrap().call(req))
        .await
        .unwrap();
    assert_eq!(body_text(resp).await, "100m|");

    // A longer one is replaced by the time left.
    let mut req = get(&server.url("/"), Some(&ctx));
    req.headers_mut()
        .insert("grpc-timeout", HeaderValue::from_static("10S"));
    let resp = bounded("the call", client.ready().await.unwrap().call(req))
        .await
        .unwrap();
    let got = body_text(resp).await;
    let sent = grpc_timeout::parse(got.trim_end_matches('|')).unwrap();
    assert!(sent <= Duration::from_secs(2), "{got}");

    // A malformed one too.
    let mut req = get(&server.url("/"), Some(&ctx));
    req.headers_mut()
        .insert("grpc-timeout", HeaderValue::from_static("+5S"));
    let resp = bounded("the call", client.ready().await.unwrap().call(req))
        .await
        .unwrap();
    let got = body_text(resp).await;
    assert!(
        grpc_timeout::parse(got.trim_end_matches('|')).unwrap() <= Duration::from_secs(2),
        "{got}"
    );
}

#[tokio::test]
async fn a_done_context_fails_at_once_without_sending() {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let server = serve(Proto::Http1, move |_req| {
        counter.fetch_add(1, Ordering::SeqCst);
        async { Response::new(text("ok")) }
    })
    .await;
    let mut client = client(Proto::Http1);

    let (ctx, h) = Context::background().with_cancel();
    h.cancel_with(UserLeft);
    let err = bounded(
        "the call",
        client.ready().await.unwrap().call(get(&server.url("/"), Some(&ctx))),
    )
    .await
    .unwrap_err();
    match &err {
        Error::Canceled(cause) => assert_eq!(cause.downcast_ref::<UserLeft>(), Some(&UserLeft)),
        other => panic!("{other:?}"),
    }
    assert_eq!(err.to_string(), "context canceled: user left");
    assert!(std::error::Error::source(&err).unwrap().is::<UserLeft>());

    let (late, _h) = Context::background().with_timeout(Duration::ZERO);
    let err = client
        .ready()
        .await
        .unwrap()
        .call(get(&server.url("/"), Some(&late)))
        .await
        .unwrap_err();
    assert!(err.is_deadline_exceeded(), "{err:?}");

    // Neither reached the server (nor even connected); a live call does.
    assert_eq!(server.accepted(), 0);
    let (ctx, _h) = Context::background().with_timeout(Duration::from_secs(5));
    let resp = bounded(
        "the call",
        client.ready().await.unwrap().call(get(&server.url("/"), Some(&ctx))),
    )
    .await
    .unwrap();
    assert_eq!(body_text(resp).await, "ok");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

/// A server whose handler reports that it started, then hangs until it is
/// dropped (reported by its guard).
async fn hanging(proto: Proto) -> (Server, mpsc::UnboundedReceiver<&'static str>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let server = serve(proto, move |_req| {
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
async fn cancel_mid_call_http1_closes_the_connection() {
    let (mut server, mut events) = hanging(Proto::Http1).await;
    let mut client = client(Proto::Http1);
    let (ctx, h) = Context::background().with_cancel();
    let call = client.ready().await.unwrap().call(get(&server.url("/"), Some(&ctx)));
    let call = tokio::spawn(call);
    assert_eq!(bounded("the handler to start", events.recv()).await, Some("started"));
    let cancelled_at = Instant::now();
    h.cancel_with(UserLeft);
    let err = bounded("the call to fail", call).await.unwrap().unwrap_err();
    assert!(matches!(&err, Error::Canceled(c) if c.is::<UserLeft>()), "{err:?}");
    assert_eq!(
        bounded("the handler to drop", events.recv()).await,
        Some("handler dropped")
    );
    bounded("the connection to close", server.closed.recv()).await.unwrap();
    eprintln!(
        "http1: cancel -> handler dropped and connection closed in {:?}",
        cancelled_at.elapsed()
    );
}

#[tokio::test]
async fn cancel_mid_call_http2_resets_the_stream() {
    let (mut server, mut events) = hanging(Proto::Http2).await;
    let mut client = client(Proto::Http2);
    let (ctx, h) = Context::background().with_cancel();
    let call = tokio::spawn(client.ready().await.unwrap().call(get(&server.url("/"), Some(&ctx))));
    assert_eq!(bounded("the handler to start", events.recv()).await, Some("started"));
    let cancelled_at = Instant::now();
    h.cancel_with(UserLeft);
    let err = bounded("the call to fail", call).await.unwrap().unwrap_err();
    assert!(matches!(&err, Error::Canceled(c) if c.is::<UserLeft>()), "{err:?}");
    assert_eq!(
        bounded("the handler to drop", events.recv()).await,
        Some("handler dropped")
    );
    eprintln!(
        "http2: cancel -> handler dropped (stream reset) in {:?}",
        cancelled_at.elapsed()
    );

    // Only the stream was reset: the connection is still open and serves
    // the next call.
    assert!(server.closed.try_recv().is_err());
    let (ctx2, h2) = Context::background().with_cancel();
    let call = tokio::spawn(client.ready().await.unwrap().call(get(&server.url("/"), Some(&ctx2))));
    assert_eq!(bounded("the second handler", events.recv()).await, Some("started"));
    h2.cancel();
    assert!(bounded("the second call", call)
        .await
        .unwrap()
        .unwrap_err()
        .is_canceled());
    assert_eq!(
        bounded("the handler to drop", events.recv()).await,
        Some("handler dropped")
    );
    assert_eq!(server.accepted(), 1);
    assert!(server.closed.try_recv().is_err());
}

#[tokio::test]
async fn deadline_mid_call_is_deadline_exceeded() {
    for proto in [Proto::Http1, Proto::Http2] {
        let (_server_keep, mut events) = hanging(proto).await;
        let mut client = client(proto);
        let budget = Duration::from_millis(150);
        // Before the context: a preemption in between must not shorten `took`.
        let start = Instant::now();
        let (ctx, _h) = Context::background().with_timeout_cause(budget, "downstream too slow");
        let err = bounded(
            "the call",
            client
                .ready()
                .await
                .unwrap()
                .call(get(&_server_keep.url("/"), Some(&ctx))),
        )
        .await
        .unwrap_err();
        let took = start.elapsed();
        eprintln!("{proto:?}: budget {budget:?}, call failed after {took:?}: {err}");
        assert!(err.is_deadline_exceeded(), "{err:?}");
        assert_eq!(err.cause().unwrap().as_str(), Some("downstream too slow"));
        assert_eq!(err.to_string(), "context deadline exceeded: downstream too slow");
        assert!(took >= budget - Duration::from_millis(1) && took < LIMIT, "{took:?}");
        assert_eq!(bounded("the handler to start", events.recv()).await, Some("started"));
        assert_eq!(
            bounded("the handler to drop", events.recv()).await,
            Some("handler dropped")
        );
    }
}

#[tokio::test]
async fn streaming_body_is_raced_too() {
    for proto in [Proto::Http1, Proto::Http2] {
        let (tx, mut events) = mpsc::unbounded_channel();
        let server = serve(proto, move |_req| {
            let tx = tx.clone();
            async move {
                let body = OneChunkThenHang {
                    sent: false,
                    _guard: DropGuard(Some(tx), "body dropped"),
                };
                Response::new(http_body_util::BodyExt::boxed(body))
            }
        })
        .await;
        let mut client = client(proto);
        let (ctx, h) = Context::background().with_cancel();
        let resp = bounded(
            "the headers",
            client.ready().await.unwrap().call(get(&server.url("/"), Some(&ctx))),
        )
        .await
        .unwrap();
        let mut body = resp.into_body();
        let first = bounded("the first chunk", body.frame()).await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), Bytes::from_static(b"first"));
        let next = tokio::spawn(async move {
            let r = body.frame().await;
            (r, body)
        });
        h.cancel_with(UserLeft);
        let (r, body) = bounded("the body to fail", next).await.unwrap();
        let err = r.unwrap().unwrap_err();
        assert!(matches!(&err, Error::Canceled(c) if c.is::<UserLeft>()), "{err:?}");
        assert!(body.get_ref().is_none(), "the inner body is dropped");
        assert!(hyper::body::Body::is_end_stream(&body));
        if proto == Proto::Http2 {
            // The stream was reset: the server drops the body it was sending.
            assert_eq!(
                bounded("the server body to drop", events.recv()).await,
                Some("body dropped")
            );
        }
    }
}

#[tokio::test]
async fn a_finished_body_reports_no_error_after_cancel() {
    let server = serve(Proto::Http2, |_req| async { Response::new(text("all of it")) }).await;
    let mut client = client(Proto::Http2);
    let (ctx, h) = Context::background().with_cancel();
    let resp = bounded(
        "the call",
        client.ready().await.unwrap().call(get(&server.url("/"), Some(&ctx))),
    )
    .await
    .unwrap();
    let mut body = resp.into_body();
    let mut got = Vec::new();
    while let Some(frame) = bounded("a frame", body.frame()).await {
        got.extend_from_slice(&frame.unwrap().into_data().unwrap());
    }
    h.cancel();
    assert_eq!(got, b"all of it");
    assert!(bounded("the end", body.frame()).await.is_none());
}

#[tokio::test]
async fn the_margin_is_configurable() {
    let server = echo_headers(Proto::Http1).await;
    for margin in [Duration::ZERO, Duration::from_millis(50)] {
        let mut client = tower::ServiceBuilder::new()
            .layer(PropagateDeadlineLayer::new().margin(margin))
            .service(hyper_client(Proto::Http1));
        let (ctx, _h) = Context::background().with_timeout(Duration::from_secs(1));
        let before = ctx.time_left().unwrap();
        let resp = bounded(
            "the call",
            client.ready().await.unwrap().call(get(&server.url("/"), Some(&ctx))),
        )
        .await
        .unwrap();
        let after = ctx.time_left().unwrap();
        let sent = grpc_timeout::parse(body_text(resp).await.trim_end_matches('|')).unwrap();
        assert!(
            sent + margin <= before && sent + margin >= after,
            "{margin:?}: {sent:?}"
        );
    }
    // A margin larger than the time left sends the smallest timeout.
    let mut client = tower::ServiceBuilder::new()
        .layer(PropagateDeadlineLayer::new().margin(Duration::from_secs(5)))
        .service(hyper_client(Proto::Http1));
    let (ctx, _h) = Context::background().with_timeout(Duration::from_secs(1));
    let resp = bounded(
        "the call",
        client.ready().await.unwrap().call(get(&server.url("/"), Some(&ctx))),
    )
    .await
    .unwrap();
    assert_eq!(body_text(resp).await, "1n|");
}
