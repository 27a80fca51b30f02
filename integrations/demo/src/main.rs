//! The guide's three-tier service in one process, driven through every way a
//! request ends.
//!
//! ```text
//! driver ──HTTP──▶ orders (axum)                         ──HTTP──▶ pricing (axum)
//!                  SetRequestContextLayer (5 s budget)             SetRequestContextLayer
//!                  request-id middleware                           handler: a slow lookup
//!                  handler → OrderService
//!                            ├─ OrderRepository: SQLite (in memory), a slow query
//!                            └─ PricingClient: with_timeout(300 ms), grpc-timeout sent
//! ```
//!
//! Five scenarios: a normal request; a client that disconnects mid-query; a
//! request whose budget runs out; a downstream that is too slow; a graceful
//! shutdown with requests in flight. Each line the servers print says which
//! context ended, with what error and cause, and how long after the trigger
//! (the disconnect, the deadline, the shutdown). The demo checks what it
//! prints and exits non-zero when an outcome is not the expected one.
//!
//! Run it with `cargo run -p ctxcore-demo`.

use std::fmt::Display;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use ctxcore::{Context, ContextError, Error, Tracker};
use ctxcore_http::extract::RequestContext;
use ctxcore_http::server::{ClientDisconnected, SetRequestContextLayer};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

// ---------------------------------------------------------------------------
// The event log: what the servers print, timed from the scenario's trigger.

/// One thing a server saw, for the driver to check.
#[derive(Debug, Clone)]
struct Event {
    who: &'static str,
    request_id: Option<u64>,
    what: String,
    /// The context's error and cause, when the event is a context ending.
    error: Option<ContextErrorView>,
    at: Instant,
}

#[derive(Debug, Clone)]
struct ContextErrorView {
    kind: Error,
    cause: String,
    client_disconnected: bool,
}

impl ContextErrorView {
    fn of(err: &ContextError) -> Self {
        ContextErrorView {
            kind: err.kind(),
            cause: err.cause().to_string(),
            client_disconnected: err.cause().is::<ClientDisconnected>(),
        }
    }
}

struct Log {
    trigger: Mutex<Option<Instant>>,
    events: mpsc::UnboundedSender<Event>,
}

static LOG: OnceLock<Log> = OnceLock::new();

fn log(who: &'static str, ctx: &Context, what: impl Display, error: Option<&ContextError>) {
    let at = Instant::now();
    let request_id = request_id::get(ctx);
    let log = LOG.get().expect("log set up in main");
    let since = match *log.trigger.lock().unwrap() {
        Some(t) if at >= t => format!("+{:7.1} ms", (at - t).as_secs_f64() * 1e3),
        Some(t) => format!("-{:7.1} ms", (t - at).as_secs_f64() * 1e3),
        None => "          ".to_string(),
    };
    let id = request_id.map(|id| format!(" req {id}")).unwrap_or_default();
    let err = error.map(|e| format!(" -> {e}")).unwrap_or_default();
    println!("  [{since}] {who}{id}: {what}{err}");
    let _ = log.events.send(Event {
        who,
        request_id,
        what: what.to_string(),
        error: error.map(ContextErrorView::of),
        at,
    });
}

fn set_trigger(at: Option<Instant>) {
    *LOG.get().unwrap().trigger.lock().unwrap() = at;
}

// ---------------------------------------------------------------------------
// Request ids: a private key, set by a middleware, read in the repository.

mod request_id {
    use ctxcore::{Context, Key};

    static KEY: Key<u64> = Key::new("request_id");

    pub(crate) fn with(ctx: &Context, id: u64) -> Context {
        ctx.with_value(&KEY, id)
    }

    pub(crate) fn get(ctx: &Context) -> Option<u64> {
        ctx.value(&KEY).copied()
    }
}

/// The middleware: replaces the request's context (put there by
/// `SetRequestContextLayer`) with a child that carries the request id.
async fn set_request_id(mut req: Request, next: Next) -> Response {
    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    if let Some(ctx) = req.extensions().get::<Context>().cloned() {
        req.extensions_mut().insert(request_id::with(&ctx, id));
    }
    let mut res = next.run(req).await;
    res.headers_mut().insert("x-request-id", id.into());
    res
}

// ---------------------------------------------------------------------------
// Tier 3: the repository, SQLite in memory.

/// A slow query: counts `rows` rows of a recursive CTE (about 5–10 M rows a
/// second), standing in for a table scan.
const SLOW_QUERY: &str = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?1) \
                          SELECT count(*) FROM c";

#[derive(Clone)]
struct OrderRepository {
    /// One connection per concurrent query; SQLite connections are used from
    /// one thread at a time.
    pool: Arc<Mutex<Vec<rusqlite::Connection>>>,
}

impl OrderRepository {
    fn new(connections: usize) -> Self {
        let pool = (0..connections)
            .map(|_| rusqlite::Connection::open_in_memory().expect("in-memory SQLite"))
            .collect();
        OrderRepository {
            pool: Arc::new(Mutex::new(pool)),
        }
    }

    async fn count_orders(&self, ctx: &Context, rows: u64) -> Result<u64, AppError> {
        log("repository", ctx, format_args!("counting {rows} rows"), None);
        let pool = self.pool.clone();
        let ctx = ctx.clone();
        // The query runs on a blocking thread. If the client hangs up, hyper
        // drops this future, but not that thread: the request context's
        // cancel (ClientDisconnected) interrupts the query there, and the
        // thread logs it.
        tokio::task::spawn_blocking(move || {
            let mut conn = pool.lock().unwrap().pop().expect("a free connection");
            let result = query_count(&ctx, &mut conn, rows);
            pool.lock().unwrap().push(conn);
            match &result {
                Ok(n) => log("repository", &ctx, format_args!("counted {n} rows"), None),
                Err(AppError::Context(e)) => log("repository", &ctx, "query interrupted", Some(e)),
                Err(e) => log("repository", &ctx, format_args!("query failed: {e}"), None),
            }
            result
        })
        .await
        .expect("the query thread")
    }
}

fn query_count(ctx: &Context, conn: &mut rusqlite::Connection, rows: u64) -> Result<u64, AppError> {
    use ctxcore_sql::rusqlite::ConnectionExt;
    let rows = i64::try_from(rows).unwrap_or(i64::MAX);
    conn.query_row_ctx(ctx, SLOW_QUERY, [rows], |row| row.get::<_, i64>(0))
        .map(|n| n as u64)
        .map_err(|e| match e {
            ctxcore_sql::Error::Context(e) => AppError::Context(e),
            other => AppError::Database(other.to_string()),
        })
}

// ---------------------------------------------------------------------------
// Tier 2: the service layer, and its downstream client.

#[derive(Clone)]
struct OrderService {
    repository: OrderRepository,
    pricing: PricingClient,
}

impl OrderService {
    async fn summary(&self, ctx: &Context, user: &str, rows: u64, pricing_delay: u64) -> Result<String, AppError> {
        let count = self.repository.count_orders(ctx, rows).await?;
        // Every outbound call gets its own, tighter timeout; the earlier of
        // it and the request's deadline wins.
        let price = match self.pricing.price(ctx, user, pricing_delay).await {
            Ok(price) => price,
            // A slow downstream degrades the answer instead of failing it,
            // unless the request itself is over.
            Err(AppError::Context(e)) if !ctx.is_done() => format!("unavailable ({e})"),
            Err(AppError::Downstream(e)) if !ctx.is_done() => format!("unavailable (pricing: {e})"),
            Err(e) => return Err(e),
        };
        Ok(format!("{user}: {count} orders, price {price}\n"))
    }
}

#[derive(Clone)]
struct PricingClient {
    http: reqwest::Client,
    base: String,
}

impl PricingClient {
    async fn price(&self, ctx: &Context, user: &str, delay_ms: u64) -> Result<String, AppError> {
        use ctxcore_http::reqwest::RequestBuilderExt;
        let (call, _call_handle) = ctx.with_timeout(Duration::from_millis(300));
        log(
            "pricing client",
            &call,
            format_args!("calling pricing, {} left", ms(call.time_left().unwrap_or_default())),
            None,
        );
        let url = format!("{}/price/{user}?delay_ms={delay_ms}", self.base);
        let result = self.http.get(url).send_with_context(&call).await;
        match result {
            Ok(res) if res.status().is_success() => {
                Ok(res.text().await.map_err(|e| AppError::Downstream(e.to_string()))?)
            }
            Ok(res) => {
                // The downstream ran out of the budget we sent it (its
                // deadline is ours, never later): it answers 504 first.
                let status = res.status();
                log(
                    "pricing client",
                    &call,
                    format_args!("downstream answered {status}"),
                    None,
                );
                Err(AppError::Downstream(status.to_string()))
            }
            Err(e) => match e.context_error() {
                Some(err) => {
                    log("pricing client", &call, "call dropped", Some(&err));
                    Err(AppError::Context(err))
                }
                None => Err(AppError::Downstream(e.to_string())),
            },
        }
    }
}

// ---------------------------------------------------------------------------
// Tier 1: the handlers.

#[derive(Debug)]
enum AppError {
    Context(ContextError),
    Database(String),
    Downstream(String),
}

impl std::fmt::Display for AppError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AppError::Context(e) => write!(f, "{e}"),
            AppError::Database(e) => write!(f, "database: {e}"),
            AppError::Downstream(e) => write!(f, "downstream: {e}"),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        match self {
            // 504 for a deadline, 499 for a cancel; the body carries the
            // error's own text, never the cause (it may hold internals).
            AppError::Context(e) => ctxcore_http::response::ErrorResponse::new(e).into_response(),
            other => (http::StatusCode::INTERNAL_SERVER_ERROR, other.to_string()).into_response(),
        }
    }
}

#[derive(serde::Deserialize)]
struct OrdersQuery {
    rows: Option<u64>,
    pricing_delay_ms: Option<u64>,
}

async fn orders(
    State(service): State<OrderService>,
    RequestContext(ctx): RequestContext,
    Path(user): Path<String>,
    Query(q): Query<OrdersQuery>,
) -> Result<String, AppError> {
    log(
        "handler",
        &ctx,
        format_args!("GET /orders/{user}, {} left", ms(ctx.time_left().unwrap_or_default())),
        None,
    );
    // The request context ends when the response is sent (or the client is
    // gone): say so, with the cause.
    let watch = ctx.clone();
    ctx.after_func(move || {
        if let Some(err) = watch.error() {
            log("request", &watch, "context done", Some(&err));
        }
    });
    service
        .summary(&ctx, &user, q.rows.unwrap_or(10_000), q.pricing_delay_ms.unwrap_or(0))
        .await
}

async fn price(
    RequestContext(ctx): RequestContext,
    Path(user): Path<String>,
    Query(q): Query<PriceQuery>,
) -> Result<String, AppError> {
    log(
        "pricing",
        &ctx,
        format_args!("looking up {user}, {} left", ms(ctx.time_left().unwrap_or_default())),
        None,
    );
    // Whoever notices first ends this context: its own deadline (the
    // caller's, sent as grpc-timeout) or the caller dropping the call
    // (ClientDisconnected, and hyper drops this handler).
    let watch = ctx.clone();
    ctx.after_func(move || {
        if let Some(err) = watch.error() {
            log("pricing", &watch, "context done", Some(&err));
        }
    });
    match ctx
        .run_with_cause(tokio::time::sleep(Duration::from_millis(q.delay_ms.unwrap_or(0))))
        .await
    {
        Ok(()) => Ok("9.99".to_string()),
        Err(e) => Err(AppError::Context(e)),
    }
}

#[derive(serde::Deserialize)]
struct PriceQuery {
    delay_ms: Option<u64>,
}

// ---------------------------------------------------------------------------
// The servers.

struct Servers {
    orders: SocketAddr,
    orders_tracker: Arc<Tracker>,
    shutdown: Vec<tokio::task::JoinHandle<()>>,
    stop: Vec<tokio::sync::oneshot::Sender<()>>,
}

async fn serve(app: Router, listener: TcpListener) -> (tokio::task::JoinHandle<()>, tokio::sync::oneshot::Sender<()>) {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = rx.await;
            })
            .await
            .expect("serve");
    });
    (task, tx)
}

async fn start(process: &Context) -> Servers {
    // Pricing: its own server root, a 2 s maximum per request.
    let pricing_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let pricing_addr = pricing_listener.local_addr().unwrap();
    let pricing_app = Router::new()
        .route("/price/{user}", get(price))
        .layer(SetRequestContextLayer::new(process).max_timeout(Duration::from_secs(2)));
    let (pricing_task, pricing_stop) = serve(pricing_app, pricing_listener).await;

    // Orders: requests are tracked so a shutdown can drain them; 5 s budget.
    let orders_tracker = Arc::new(Tracker::new(process));
    let service = OrderService {
        repository: OrderRepository::new(8),
        pricing: PricingClient {
            http: reqwest::Client::new(),
            base: format!("http://{pricing_addr}"),
        },
    };
    let orders_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let orders_addr = orders_listener.local_addr().unwrap();
    let orders_app = Router::new()
        .route("/orders/{user}", get(orders))
        .with_state(service)
        .layer(middleware::from_fn(set_request_id))
        .layer(SetRequestContextLayer::with_tracker(orders_tracker.clone()).max_timeout(Duration::from_secs(5)));
    let (orders_task, orders_stop) = serve(orders_app, orders_listener).await;

    Servers {
        orders: orders_addr,
        orders_tracker,
        shutdown: vec![pricing_task, orders_task],
        stop: vec![pricing_stop, orders_stop],
    }
}

// ---------------------------------------------------------------------------
// The driver.

struct Checks {
    failures: Vec<String>,
}

impl Checks {
    fn check(&mut self, ok: bool, what: impl Display) {
        if ok {
            println!("  ok: {what}");
        } else {
            println!("  FAILED: {what}");
            self.failures.push(what.to_string());
        }
    }
}

/// Waits for the next event that `pick` accepts, up to `within`.
async fn next_event(
    events: &mut mpsc::UnboundedReceiver<Event>,
    within: Duration,
    mut pick: impl FnMut(&Event) -> bool,
) -> Option<Event> {
    let until = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(until, events.recv()).await {
            Ok(Some(e)) if pick(&e) => return Some(e),
            Ok(Some(_)) => continue,
            _ => return None,
        }
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

async fn get_text(client: &reqwest::Client, url: String, header: Option<(&str, &str)>) -> (u16, String) {
    let mut req = client.get(url);
    if let Some((k, v)) = header {
        req = req.header(k, v);
    }
    match req.send().await {
        Ok(res) => {
            let status = res.status().as_u16();
            (status, res.text().await.unwrap_or_default())
        }
        Err(e) => (0, e.to_string()),
    }
}

async fn drive(servers: Servers, mut events: mpsc::UnboundedReceiver<Event>) -> Checks {
    let mut checks = Checks { failures: Vec::new() };
    let client = reqwest::Client::new();
    let base = format!("http://{}", servers.orders);
    let far = Duration::from_secs(10);

    println!("\n1. A normal request");
    let (status, body) = get_text(&client, format!("{base}/orders/alice?rows=20000"), None).await;
    println!("  client got {status}: {}", body.trim());
    checks.check(
        status == 200 && body.contains("20000 orders") && body.contains("9.99"),
        "200 with the count and the price",
    );
    let done = next_event(&mut events, far, |e| e.who == "request").await;
    checks.check(
        done.as_ref().is_some_and(|e| e.request_id.is_some()),
        "the request id set by the middleware reached every tier",
    );
    checks.check(
        done.as_ref()
            .and_then(|e| e.error.as_ref())
            .is_some_and(|e| e.kind == Error::Canceled && !e.client_disconnected),
        "the request context ended when the response was sent, not with ClientDisconnected",
    );

    set_trigger(None);
    println!("\n2. A client that disconnects mid-query");
    let mut stream = TcpStream::connect(servers.orders).await.unwrap();
    stream
        .write_all(b"GET /orders/bob?rows=1000000000 HTTP/1.1\r\nhost: demo\r\n\r\n")
        .await
        .unwrap();
    let started = next_event(&mut events, far, |e| {
        e.who == "repository" && e.what.starts_with("counting")
    })
    .await;
    checks.check(started.is_some(), "the query started");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let trigger = Instant::now();
    set_trigger(Some(trigger));
    println!("  [+    0.0 ms] driver: client hangs up");
    drop(stream);
    let stopped = next_event(&mut events, far, |e| {
        e.who == "repository" && e.what == "query interrupted"
    })
    .await;
    match stopped {
        Some(e) => {
            let err = e.error.unwrap();
            checks.check(
                err.client_disconnected,
                format_args!("the query saw the typed cause ClientDisconnected ({})", err.cause),
            );
            checks.check(
                e.at - trigger < Duration::from_millis(100),
                format_args!("the query stopped {} after the disconnect", ms(e.at - trigger)),
            );
        }
        None => checks.check(false, "the query was interrupted"),
    }

    set_trigger(None);
    println!("\n3. A request whose budget runs out (grpc-timeout: 250m)");
    let sent = Instant::now();
    set_trigger(Some(sent + Duration::from_millis(250)));
    let (status, body) = get_text(
        &client,
        format!("{base}/orders/carol?rows=1000000000"),
        Some(("grpc-timeout", "250m")),
    )
    .await;
    println!("  client got {status}: {}", body.trim());
    checks.check(status == 504, "504 Gateway Timeout");
    checks.check(
        !body.contains("ClientDisconnected"),
        "the body carries the error's own text only",
    );
    // The query's event came before the response.
    let stopped = next_event(&mut events, Duration::from_millis(500), |e| {
        e.who == "repository" && e.what == "query interrupted"
    })
    .await;
    match stopped {
        Some(e) => {
            let err = e.error.unwrap();
            checks.check(err.kind == Error::DeadlineExceeded, "the query saw DeadlineExceeded");
            let late = e.at.saturating_duration_since(sent + Duration::from_millis(250));
            checks.check(
                late < Duration::from_millis(100),
                format_args!("the query stopped {} after the deadline", ms(late)),
            );
        }
        None => checks.check(false, "the query was interrupted"),
    }

    set_trigger(None);
    println!("\n4. A downstream that is too slow (pricing takes 2 s, the call has 300 ms)");
    let sent = Instant::now();
    set_trigger(Some(sent + Duration::from_millis(300)));
    let (status, body) = get_text(
        &client,
        format!("{base}/orders/dave?rows=1000&pricing_delay_ms=2000"),
        None,
    )
    .await;
    println!("  client got {status}: {}", body.trim());
    checks.check(
        status == 200 && body.contains("unavailable"),
        "200, with the price degraded",
    );
    let mut pricing_gave_up = None;
    let mut call_ended = None;
    for _ in 0..8 {
        let pick = |e: &Event| {
            (e.who == "pricing" && e.what == "context done")
                || e.what == "call dropped"
                || e.what.starts_with("downstream answered")
        };
        match next_event(&mut events, Duration::from_millis(500), pick).await {
            Some(e) if e.who == "pricing" => pricing_gave_up = Some(e),
            Some(e) => call_ended = Some(e),
            None => break,
        }
        if pricing_gave_up.is_some() && call_ended.is_some() {
            break;
        }
    }
    // Either side may notice first: our 300 ms timer drops the call
    // (DeadlineExceeded), or pricing's copy of that deadline (sent as
    // grpc-timeout, truncated, so never later) answers 504 a hair before.
    checks.check(
        call_ended.as_ref().is_some_and(|e| {
            e.error.as_ref().is_some_and(|e| e.kind == Error::DeadlineExceeded) || e.what.contains("504")
        }),
        "the outbound call ended at its deadline (dropped with DeadlineExceeded, or pricing's own 504)",
    );
    match pricing_gave_up {
        Some(e) => {
            let err = e.error.unwrap();
            checks.check(
                err.kind == Error::DeadlineExceeded || err.client_disconnected,
                format_args!("pricing's own context ended too ({:?}, {})", err.kind, err.cause),
            );
            let late = e.at.saturating_duration_since(sent + Duration::from_millis(300));
            checks.check(
                late < Duration::from_millis(100),
                format_args!("pricing gave up {} after the caller's deadline", ms(late)),
            );
        }
        None => checks.check(false, "pricing's context ended"),
    }

    set_trigger(None);
    println!("\n5. A graceful shutdown with three requests in flight");
    let mut in_flight = Vec::new();
    for user in ["erin", "frank", "grace"] {
        let client = client.clone();
        let url = format!("{base}/orders/{user}?rows=1000000000");
        in_flight.push(tokio::spawn(async move { get_text(&client, url, None).await }));
    }
    let mut started = 0;
    while started < 3 {
        if next_event(&mut events, far, |e| {
            e.who == "repository" && e.what.starts_with("counting")
        })
        .await
        .is_none()
        {
            break;
        }
        started += 1;
    }
    checks.check(started == 3, "three queries running");
    checks.check(
        servers.orders_tracker.in_flight() == 3,
        format_args!("{} requests in flight", servers.orders_tracker.in_flight()),
    );
    let trigger = Instant::now();
    set_trigger(Some(trigger));
    println!("  [+    0.0 ms] driver: SIGTERM, draining with a 2 s grace");
    let drained = servers
        .orders_tracker
        .drain("shutting down", Duration::from_secs(2))
        .await;
    println!(
        "  [+{:7.1} ms] driver: drain returned {drained:?}",
        trigger.elapsed().as_secs_f64() * 1e3
    );
    checks.check(drained.is_ok(), "every request drained");
    let mut interrupted = 0;
    while let Some(e) = next_event(&mut events, Duration::from_millis(200), |e| {
        e.who == "repository" && e.what == "query interrupted"
    })
    .await
    {
        if e.error.is_some_and(|err| err.cause == "shutting down") {
            interrupted += 1;
        }
    }
    checks.check(
        interrupted == 3,
        format_args!("{interrupted} queries stopped with the cause \"shutting down\""),
    );
    for r in in_flight {
        let (status, body) = r.await.unwrap();
        println!("  client got {status}: {}", body.trim());
    }
    checks.check(
        servers.orders_tracker.track().is_none(),
        "new requests are refused after the drain",
    );
    for stop in servers.stop {
        let _ = stop.send(());
    }
    for task in servers.shutdown {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    checks
}

fn main() -> ExitCode {
    let (tx, rx) = mpsc::unbounded_channel();
    let _ = LOG.set(Log {
        trigger: Mutex::new(None),
        events: tx,
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let checks = runtime.block_on(async {
        let (process, _process_handle) = Context::background().with_cancel();
        let servers = start(&process).await;
        println!("orders on http://{}, pricing behind it", servers.orders);
        drive(servers, rx).await
    });
    println!();
    if checks.failures.is_empty() {
        println!("all outcomes as expected");
        ExitCode::SUCCESS
    } else {
        println!("{} outcome(s) not as expected:", checks.failures.len());
        for f in &checks.failures {
            println!("  - {f}");
        }
        ExitCode::FAILURE
    }
}
