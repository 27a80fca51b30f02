//! reqwest support: send a request under a [`Context`].
//!
//! [`RequestBuilderExt::send_with_context`] (on `reqwest::RequestBuilder`):
//!
//! 1. fails at once, without sending, when the context is already done;
//! 2. sets `grpc-timeout` to the time left (on the context's own clock)
//!    less [`DEFAULT_MARGIN`](crate::client::DEFAULT_MARGIN) for the
//!    request's way to the peer (see
//!    [`PropagateDeadlineLayer::margin`](crate::client::PropagateDeadlineLayer::margin)),
//!    truncated, keeping a shorter value already in the request, and sets
//!    the request's reqwest timeout to the shorter of its own and the time
//!    left. Note that reqwest lets a request's timeout *replace* a
//!    client-wide `ClientBuilder::timeout`: a client-wide timeout shorter
//!    than the context's budget does not apply to this request (set it on
//!    the request, or give the context the shorter budget);
//! 3. races `send()` against the context: when the context ends first, the
//!    send is dropped (the connection is closed, or the HTTP/2 stream reset)
//!    and the error is [`Error::Canceled`] or [`Error::DeadlineExceeded`]
//!    with the cause. A reqwest timeout that fires because the deadline
//!    passed is reported as `DeadlineExceeded` too.
//!
//! The returned `reqwest::Response` is reqwest's own: reading its body is
//! bounded by the reqwest timeout (the time left) but not raced against a
//! cancel; race it with [`Context::run_with_cause`]
//! (`ctx.run_with_cause(resp.bytes()).await`).
//!
//! ```no_run
//! use ctxcore::Context;
//! use ctxcore_http::reqwest::RequestBuilderExt;
//! use std::time::Duration;
//!
//! # async fn f() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let client = reqwest::Client::new();
//! let (ctx, _h) = Context::background().with_timeout(Duration::from_millis(300));
//! let resp = client.get("http://127.0.0.1:8080/users").send_with_context(&ctx).await?;
//! let body = ctx.run_with_cause(resp.bytes()).await??;
//! # let _ = body; Ok(()) }
//! ```

pub use crate::client::Error;
use ctxcore::Context;
use http::header::{HeaderName, HeaderValue};
use std::future::Future;

/// Sends a `reqwest::RequestBuilder` under a [`Context`]; see the
/// [module docs](self).
///
/// ```
/// use ctxcore::Context;
/// use ctxcore_http::reqwest::RequestBuilderExt;
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let (ctx, h) = Context::background().with_cancel();
/// h.cancel_with("user left");
/// // Nothing listens there: a done context never sends.
/// let err = reqwest::Client::new().get("http://127.0.0.1:9").send_with_context(&ctx).await.unwrap_err();
/// assert!(err.is_canceled());
/// assert_eq!(err.to_string(), "context canceled: user left");
/// # });
/// ```
pub trait RequestBuilderExt: sealed::Sealed {
    /// Builds and sends the request, raced against `ctx`, with
    /// `grpc-timeout` and the reqwest timeout set from `ctx.time_left()`.
    ///
    /// ```no_run
    /// use ctxcore_http::reqwest::RequestBuilderExt;
    /// # async fn f(ctx: ctxcore::Context) {
    /// let resp = reqwest::Client::new().get("http://127.0.0.1:8080/").send_with_context(&ctx).await;
    /// # let _ = resp; }
    /// ```
    fn send_with_context(
        self,
        ctx: &Context,
    ) -> impl Future<Output = Result<::reqwest::Response, Error<::reqwest::Error>>> + Send + 'static;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for ::reqwest::RequestBuilder {}
}

/// The `grpc-timeout` header.
const GRPC_TIMEOUT: HeaderName = HeaderName::from_static(crate::grpc_timeout::GRPC_TIMEOUT);

impl RequestBuilderExt for ::reqwest::RequestBuilder {
    fn send_with_context(
        self,
        ctx: &Context,
    ) -> impl Future<Output = Result<::reqwest::Response, Error<::reqwest::Error>>> + Send + 'static {
        let ctx = ctx.clone();
        async move {
            if let Some(err) = ctx.error() {
                return Err(err.into());
            }
            let (client, req) = self.build_split();
            let mut req = req.map_err(Error::Inner)?;
            if let Some(left) = ctx.time_left() {
                let sent = left.saturating_sub(crate::client::DEFAULT_MARGIN);
                let headers = req.headers_mut();
                let keep = {
                    let mut there = headers.get_all(&GRPC_TIMEOUT).iter();
                    match (there.next(), there.next()) {
                        (Some(v), None) => crate::grpc_timeout::parse_bytes(v.as_bytes()).is_ok_and(|d| d <= sent),
                        _ => false,
                    }
                };
                if !keep {
                    let value: HeaderValue = crate::grpc_timeout::encode(sent).to_header_value();
                    headers.insert(GRPC_TIMEOUT, value);
                }
                let timeout = req.timeout_mut();
                *timeout = Some(timeout.map_or(left, |t| t.min(left)));
            }
            match ctx.run_with_cause(client.execute(req)).await {
                Ok(Ok(resp)) => Ok(resp),
                // reqwest's timeout (the time left) fired with the deadline.
                Ok(Err(e)) if e.is_timeout() => Err(ctx.error().map_or(Error::Inner(e), Error::from)),
                Ok(Err(e)) => Err(Error::Inner(e)),
                Err(err) => Err(err.into()),
            }
        }
    }
}
