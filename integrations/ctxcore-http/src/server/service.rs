use super::{ResponseBody, ResponseFuture, SetRequestContextLayer};
use ctxcore::Context;
use http::{Method, Request, Response};
use http_body::Body;
use std::{
    fmt,
    task::{Context as TaskContext, Poll},
};
use tower_service::Service;

/// Gives every request a child of the server's root context and cancels it
/// with a typed cause when the exchange ends. Built by
/// [`SetRequestContextLayer`]; see the [module docs](super).
///
/// ```
/// use ctxcore::Context;
/// use ctxcore_http::server::SetRequestContext;
/// use http::{Method, Request, Response};
/// use std::convert::Infallible;
/// use tower::{service_fn, Service, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let mut svc = SetRequestContext::new(
///     service_fn(|req: Request<()>| async move {
///         let ctx = req.extensions().get::<Context>().cloned().unwrap();
///         Ok::<_, Infallible>(Response::new(ctx.is_done().to_string()))
///     }),
///     &Context::background(),
/// );
/// let resp = svc.ready().await.unwrap().call(Request::new(())).await.unwrap();
/// assert_eq!(resp.body().get_ref(), "false");
/// # }
/// ```
#[derive(Clone)]
pub struct SetRequestContext<S> {
    inner: S,
    layer: SetRequestContextLayer,
}

impl<S> SetRequestContext<S> {
    /// Wraps `inner` with the default configuration of
    /// [`SetRequestContextLayer::new`]`(root)`.
    ///
    /// ```
    /// use ctxcore_http::server::SetRequestContext;
    /// let svc = SetRequestContext::new((), &ctxcore::Context::background());
    /// # drop(svc);
    /// ```
    pub fn new(inner: S, root: &Context) -> Self {
        Self::from_layer(inner, SetRequestContextLayer::new(root))
    }

    pub(crate) fn from_layer(inner: S, layer: SetRequestContextLayer) -> Self {
        SetRequestContext { inner, layer }
    }

    /// The inner service.
    ///
    /// ```
    /// use ctxcore_http::server::SetRequestContext;
    /// let svc = SetRequestContext::new(7, &ctxcore::Context::background());
    /// assert_eq!(*svc.get_ref(), 7);
    /// ```
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    ///
    /// ```
    /// use ctxcore_http::server::SetRequestContext;
    /// let mut svc = SetRequestContext::new(7, &ctxcore::Context::background());
    /// *svc.get_mut() += 1;
    /// assert_eq!(*svc.get_ref(), 8);
    /// ```
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, unwrapped.
    ///
    /// ```
    /// use ctxcore_http::server::SetRequestContext;
    /// let svc = SetRequestContext::new(7, &ctxcore::Context::background());
    /// assert_eq!(svc.into_inner(), 7);
    /// ```
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The layer (configuration) this service was built with.
    ///
    /// ```
    /// use ctxcore_http::server::SetRequestContext;
    /// let svc = SetRequestContext::new((), &ctxcore::Context::background());
    /// assert!(svc.layer().get_max_timeout().is_none());
    /// ```
    pub fn layer(&self) -> &SetRequestContextLayer {
        &self.layer
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for SetRequestContext<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let (ctx, guard) = self.layer.config.start(req.headers());
        req.extensions_mut().insert(ctx);
        let head = req.method() == Method::HEAD;
        // A panic in `call` drops `guard` un-ended: `HandlerPanicked`.
        let inner = self.inner.call(req);
        ResponseFuture::new(inner, guard, head)
    }
}

impl<S: fmt::Debug> fmt::Debug for SetRequestContext<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SetRequestContext")
            .field("inner", &self.inner)
            .field("layer", &self.layer)
            .finish()
    }
}
