//! The gateway against stand-in nodes, over real HTTP on loopback.
//!
//! Each stand-in ("backend") is a small axum server on port 0 with a `/health/ready` that
//! can be flipped between 200 and 503 and a `POST /v1/batch` that counts what it got and
//! answers as told: 200, 503 or 429 with `Retry-After`, hold until released, or crash
//! while answering. A backend can also be killed: its listener closes and every open
//! connection fails on its next read or write, as when a process dies. The gateway runs
//! in-process through `tandem::gateway::serve`, except in the tests of the binary itself.
//! Nothing sleeps to let things settle: tests wait for a condition, with a deadline.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use tandem::gateway::{BODY_MAX_BYTES, GatewayError, GatewayOptions, serve};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, BufReader, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// How long any awaited condition may take.
const DEADLINE: Duration = Duration::from_secs(10);
/// Health-check interval of the gateways under test.
const HEALTH_INTERVAL_MS: u64 = 50;

// ---------------------------------------------------------------------------------------
// Stand-in nodes

/// How a backend answers `POST /v1/batch`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// 200 `{"success":true}`.
    Accept,
    /// 503 `not_leader` with `Retry-After: 2`.
    Unavailable,
    /// 429 `overloaded` with `Retry-After: 3`.
    Throttle,
    /// Wait until released, then 200.
    Hold,
    /// Die while answering: the request was received, the reply never leaves.
    Crash,
}

struct BackendState {
    /// What `/health/ready` says.
    ready: AtomicBool,
    /// How batches are answered.
    mode: Mutex<Mode>,
    /// Bodies of every batch received, in order.
    bodies: Mutex<Vec<Bytes>>,
    /// Headers of the last batch received.
    last_headers: Mutex<HeaderMap>,
    /// Batches being held.
    held: AtomicUsize,
    /// Set to true to release held batches.
    release: watch::Sender<bool>,
    /// When set, every connection fails on its next read or write.
    killed: Arc<AtomicBool>,
}

struct Backend {
    url: String,
    state: Arc<BackendState>,
    task: JoinHandle<()>,
}

impl Backend {
    async fn start() -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let state = Arc::new(BackendState {
            ready: AtomicBool::new(true),
            mode: Mutex::new(Mode::Accept),
            bodies: Mutex::new(Vec::new()),
            last_headers: Mutex::new(HeaderMap::new()),
            held: AtomicUsize::new(0),
            release: watch::Sender::new(false),
            killed: Arc::new(AtomicBool::new(false)),
        });
        let listener = KillableListener {
            inner: listener,
            killed: Arc::clone(&state.killed),
        };
        let app = Router::new()
            .route("/health/ready", get(backend_ready))
            .route("/v1/batch", post(backend_batch))
            .with_state(Arc::clone(&state));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Backend { url, state, task }
    }

    fn set_ready(&self, ready: bool) {
        self.state.ready.store(ready, Ordering::SeqCst);
    }

    fn set_mode(&self, mode: Mode) {
        *self.state.mode.lock().expect("mode") = mode;
    }

    fn batches(&self) -> usize {
        self.state.bodies.lock().expect("bodies").len()
    }

    fn bodies(&self) -> Vec<Bytes> {
        self.state.bodies.lock().expect("bodies").clone()
    }

    fn last_headers(&self) -> HeaderMap {
        self.state.last_headers.lock().expect("headers").clone()
    }

    fn held(&self) -> usize {
        self.state.held.load(Ordering::SeqCst)
    }

    fn release(&self) {
        self.state.release.send_replace(true);
    }

    /// Like a process dying: no new connections, open ones fail on next use.
    fn kill(&self) {
        self.state.killed.store(true, Ordering::SeqCst);
        self.task.abort();
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
        self.release();
    }
}

async fn backend_ready(State(state): State<Arc<BackendState>>) -> Response {
    if state.ready.load(Ordering::SeqCst) {
        Json(json!({"status": "ready"})).into_response()
    } else {
        let body = json!({"status": "not_ready", "reason": "test_not_ready"});
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

async fn backend_batch(
    State(state): State<Arc<BackendState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    state.bodies.lock().expect("bodies").push(body);
    *state.last_headers.lock().expect("headers") = headers;
    let mode = *state.mode.lock().expect("mode");
    let refusal = |status: StatusCode, code: &str, retry_after: &'static str| {
        let body = json!({"code": code, "message": "stand-in refusal"});
        let mut response = (status, Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::RETRY_AFTER, retry_after.parse().expect("value"));
        response
    };
    match mode {
        Mode::Accept => accepted(),
        Mode::Unavailable => refusal(StatusCode::SERVICE_UNAVAILABLE, "not_leader", "2"),
        Mode::Throttle => refusal(StatusCode::TOO_MANY_REQUESTS, "overloaded", "3"),
        Mode::Hold => {
            state.held.fetch_add(1, Ordering::SeqCst);
            let mut released = state.release.subscribe();
            let _ = released.wait_for(|released| *released).await;
            accepted()
        }
        Mode::Crash => {
            state.killed.store(true, Ordering::SeqCst);
            accepted()
        }
    }
}

fn accepted() -> Response {
    let mut response = Json(json!({"success": true})).into_response();
    response
        .headers_mut()
        .insert("x-stand-in", "yes".parse().expect("value"));
    response
}

/// A listener whose connections can all be failed at once.
struct KillableListener {
    inner: TcpListener,
    killed: Arc<AtomicBool>,
}

impl axum::serve::Listener for KillableListener {
    type Io = KillableStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (KillableStream, SocketAddr) {
        loop {
            if let Ok((stream, addr)) = self.inner.accept().await {
                let killed = Arc::clone(&self.killed);
                return (KillableStream { stream, killed }, addr);
            }
            tokio::task::yield_now().await;
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

struct KillableStream {
    stream: TcpStream,
    killed: Arc<AtomicBool>,
}

impl KillableStream {
    fn check(&self) -> io::Result<()> {
        if self.killed.load(Ordering::SeqCst) {
            Err(io::ErrorKind::ConnectionReset.into())
        } else {
            Ok(())
        }
    }
}

impl AsyncRead for KillableStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check()?;
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for KillableStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check()?;
        Pin::new(&mut this.stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check()?;
        Pin::new(&mut this.stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

// ---------------------------------------------------------------------------------------
// The gateway, in-process

struct Gateway {
    url: String,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), GatewayError>>,
    http: reqwest::Client,
}

impl Gateway {
    /// A gateway in front of `backends`, with a fast health check and `tweak` applied.
    async fn start(backends: &[&Backend], tweak: impl FnOnce(&mut GatewayOptions)) -> Gateway {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let mut options = GatewayOptions::new(backends.iter().map(|b| b.url.clone()).collect());
        options.health_interval_ms = HEALTH_INTERVAL_MS;
        tweak(&mut options);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, options, async move {
            let _ = stopped.await;
        }));
        Gateway {
            url,
            stop: Some(stop),
            task,
            http: tandem::tls::plain_http_client(),
        }
    }

    async fn post_batch(&self, body: Bytes) -> Reply {
        let response = self
            .http
            .post(format!("{}/v1/batch", self.url))
            .header(header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .expect("the gateway answers");
        Reply::read(response).await
    }

    async fn get(&self, path: &str) -> Reply {
        let response = self
            .http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .expect("the gateway answers");
        Reply::read(response).await
    }

    /// The `/gateway/status` entry of a backend.
    async fn node_status(&self, backend: &Backend) -> Value {
        let status = self.get("/gateway/status").await;
        let nodes = status.body["nodes"].as_array().cloned().unwrap_or_default();
        nodes
            .into_iter()
            .find(|node| node["url"] == backend.url.as_str())
            .unwrap_or_else(|| panic!("{} missing from {}", backend.url, status.body))
    }

    async fn in_rotation(&self, backend: &Backend) -> bool {
        self.node_status(backend).await["in_rotation"] == true
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
    }
}

/// A response read whole.
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Reply {
    async fn read(response: reqwest::Response) -> Reply {
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.expect("body");
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            body,
        }
    }

    fn retry_after(&self) -> Option<&str> {
        self.headers
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
    }
}

/// A Segment batch with one event whose messageId is `id`.
fn batch(id: usize) -> Bytes {
    let body = json!({"batch": [{
        "type": "track", "event": "Viewed", "userId": "u1", "messageId": format!("m-{id}"),
    }]});
    Bytes::from(body.to_string())
}

/// Waits until `condition` holds, failing the test with `what` after [`DEADLINE`].
async fn wait_until<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + DEADLINE;
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------------------------------
// Scenarios

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_spread_over_every_healthy_node() {
    let nodes = [
        Backend::start().await,
        Backend::start().await,
        Backend::start().await,
    ];
    let gateway = Gateway::start(&[&nodes[0], &nodes[1], &nodes[2]], |_| {}).await;

    let ready = gateway.get("/health/ready").await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.body);
    assert_eq!(ready.body["nodes_in_rotation"], 3);

    for id in 0..60 {
        let reply = gateway.post_batch(batch(id)).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        assert_eq!(reply.body, json!({"success": true}));
        assert_eq!(reply.headers["x-stand-in"], "yes", "node headers relayed");
    }
    let counts: Vec<usize> = nodes.iter().map(Backend::batches).collect();
    assert_eq!(counts.iter().sum::<usize>(), 60, "{counts:?}");
    assert!(
        counts.iter().all(|&n| n > 0),
        "every node got some: {counts:?}"
    );
    let total: u64 = futures::future::join_all(nodes.iter().map(|n| gateway.node_status(n)))
        .await
        .iter()
        .map(|node| node["requests"].as_u64().expect("requests"))
        .sum();
    assert_eq!(total, 60, "status counts every attempt");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unhealthy_node_gets_no_requests_after_the_next_check() {
    let nodes = [
        Backend::start().await,
        Backend::start().await,
        Backend::start().await,
    ];
    let sick = &nodes[2];
    let gateway = Gateway::start(&[&nodes[0], &nodes[1], sick], |_| {}).await;

    sick.set_ready(false);
    wait_until("the sick node is out of rotation", || async {
        !gateway.in_rotation(sick).await
    })
    .await;
    let status = gateway.node_status(sick).await;
    assert_eq!(status["healthy"], false);
    assert_eq!(status["last_check"]["result"], "not_ready");
    assert_eq!(status["last_check"]["reason"], "test_not_ready");

    let before = sick.batches();
    for id in 0..30 {
        assert_eq!(gateway.post_batch(batch(id)).await.status, StatusCode::OK);
    }
    assert_eq!(
        sick.batches(),
        before,
        "no request reached the unhealthy node"
    );

    sick.set_ready(true);
    wait_until("the node is back in rotation", || async {
        gateway.in_rotation(sick).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_is_retried_on_another_node_with_the_same_bytes() {
    let refusing = Backend::start().await;
    let healthy = Backend::start().await;
    refusing.set_mode(Mode::Unavailable);
    let gateway = Gateway::start(&[&refusing, &healthy], |_| {}).await;

    // p2c picks at random; keep sending until the refusing node has been tried.
    let mut sent = 0;
    while refusing.batches() == 0 {
        assert!(sent < 200, "the refusing node was never picked");
        let reply = gateway.post_batch(batch(sent)).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        sent += 1;
    }
    assert_eq!(
        healthy.batches(),
        sent,
        "every request ends on the healthy node"
    );
    let retried = healthy.bodies();
    for body in refusing.bodies() {
        assert!(retried.contains(&body), "the retry carries identical bytes");
    }
    let status = gateway.node_status(&refusing).await;
    assert!(status["refusals"].as_u64() >= Some(1), "{status}");
    assert_eq!(
        status["in_rotation"], true,
        "a 503 penalises, it does not eject: {status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_is_ejected_by_the_first_failed_request_and_others_serve() {
    let nodes = [
        Backend::start().await,
        Backend::start().await,
        Backend::start().await,
    ];
    // Health checks only at start-up: whatever takes the node out is passive ejection.
    let gateway = Gateway::start(&[&nodes[0], &nodes[1], &nodes[2]], |options| {
        options.health_interval_ms = 60_000;
    })
    .await;
    // Warm the pool: the gateway holds open connections to every node.
    for id in 0..30 {
        assert_eq!(gateway.post_batch(batch(id)).await.status, StatusCode::OK);
    }
    let victim = &nodes[0];
    assert!(victim.batches() > 0);
    victim.kill();
    let before = victim.batches();

    let mut sent = 30;
    while gateway.in_rotation(victim).await {
        assert!(sent < 230, "the killed node was never picked");
        let reply = gateway.post_batch(batch(sent)).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        sent += 1;
    }
    for id in sent..sent + 30 {
        let reply = gateway.post_batch(batch(id)).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    }
    assert_eq!(victim.batches(), before, "a dead node stores nothing");
    assert_eq!(
        nodes[1].batches() + nodes[2].batches(),
        sent + 30 - before,
        "the survivors stored everything else"
    );
    let status = gateway.node_status(victim).await;
    assert_eq!(
        status["errors"], 1,
        "ejected at its first failure: {status}"
    );
    assert_eq!(
        status["last_check"]["result"], "ready",
        "no check since start-up"
    );
    assert!(status["ejected_for_ms"].as_u64() > Some(0), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_fails_its_health_checks() {
    let nodes = [Backend::start().await, Backend::start().await];
    let gateway = Gateway::start(&[&nodes[0], &nodes[1]], |_| {}).await;
    nodes[0].kill();
    wait_until("the killed node is out of rotation", || async {
        !gateway.in_rotation(&nodes[0]).await
    })
    .await;
    let status = gateway.node_status(&nodes[0]).await;
    assert_eq!(status["last_check"]["result"], "unreachable", "{status}");
    assert_eq!(gateway.post_batch(batch(1)).await.status, StatusCode::OK);
    assert_eq!(nodes[1].batches(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_dies_while_answering_is_retried_elsewhere() {
    let crashing = Backend::start().await;
    let healthy = Backend::start().await;
    crashing.set_mode(Mode::Crash);
    let gateway = Gateway::start(&[&crashing, &healthy], |_| {}).await;

    let mut sent = 0;
    while crashing.batches() == 0 {
        assert!(sent < 200, "the crashing node was never picked");
        let reply = gateway.post_batch(batch(sent)).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        sent += 1;
    }
    // The crashed node may have stored that batch before dying; the retry stored it again
    // elsewhere. Nodes' messageId dedup is what makes this safe.
    assert_eq!(healthy.batches(), sent);
    assert!(healthy.bodies().contains(&crashing.bodies()[0]));
    wait_until("the crashed node is out of rotation", || async {
        !gateway.in_rotation(&crashing).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_node_unhealthy_the_gateway_answers_503_no_healthy_nodes() {
    let nodes = [Backend::start().await, Backend::start().await];
    for node in &nodes {
        node.set_ready(false);
    }
    let gateway = Gateway::start(&[&nodes[0], &nodes[1]], |_| {}).await;

    let reply = gateway.post_batch(batch(1)).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.body["code"], "no_healthy_nodes", "{}", reply.body);
    assert_eq!(reply.retry_after(), Some("1"));
    let ready = gateway.get("/health/ready").await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.body["status"], "not_ready");
    assert_eq!(ready.body["nodes"].as_array().map(Vec::len), Some(2));
    assert_eq!(gateway.get("/health/live").await.status, StatusCode::OK);
    assert_eq!(nodes[0].batches() + nodes[1].batches(), 0);

    nodes[1].set_ready(true);
    wait_until("the gateway is ready again", || async {
        gateway.get("/health/ready").await.status == StatusCode::OK
    })
    .await;
    assert_eq!(gateway.post_batch(batch(2)).await.status, StatusCode::OK);
    assert_eq!(nodes[1].batches(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_node_answers_503_the_client_gets_the_last_one_as_is() {
    let nodes = [Backend::start().await, Backend::start().await];
    for node in &nodes {
        node.set_mode(Mode::Unavailable);
    }
    let gateway = Gateway::start(&[&nodes[0], &nodes[1]], |_| {}).await;

    let reply = gateway.post_batch(batch(1)).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.body["code"], "not_leader", "the node's own reply");
    assert_eq!(
        reply.retry_after(),
        Some("2"),
        "with the node's Retry-After"
    );
    // Every attempt was made (a 503 means "not now", e.g. no leader during an election),
    // over both nodes, and neither was ejected: when the election ends they serve at once.
    let (first, second) = (nodes[0].batches(), nodes[1].batches());
    assert_eq!(first + second, 3, "attempts_max attempts");
    assert!(
        first >= 1 && second >= 1,
        "both nodes tried: {first}, {second}"
    );

    let reply = gateway.post_batch(batch(2)).await;
    assert_eq!(reply.body["code"], "not_leader", "nodes stay in rotation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_node_answers_429_retries_go_to_other_nodes_then_the_last_is_relayed() {
    let nodes = [
        Backend::start().await,
        Backend::start().await,
        Backend::start().await,
    ];
    for node in &nodes {
        node.set_mode(Mode::Throttle);
    }
    let gateway = Gateway::start(&[&nodes[0], &nodes[1], &nodes[2]], |options| {
        options.attempts_max = 3;
    })
    .await;

    let reply = gateway.post_batch(batch(1)).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(reply.body["code"], "overloaded", "the node's own reply");
    assert_eq!(reply.retry_after(), Some("3"));
    let counts: Vec<usize> = nodes.iter().map(Backend::batches).collect();
    assert_eq!(
        counts.iter().sum::<usize>(),
        3,
        "attempts_max attempts: {counts:?}"
    );
    assert!(
        counts.iter().filter(|&&n| n > 0).count() >= 2,
        "the retry after a 429 went to another node: {counts:?}"
    );
    for node in &nodes {
        assert!(gateway.in_rotation(node).await, "a 429 does not eject");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_one_mib_is_refused_without_being_forwarded() {
    let node = Backend::start().await;
    let gateway = Gateway::start(&[&node], |_| {}).await;
    let too_large = vec![b' '; BODY_MAX_BYTES + 1];

    // Declared with Content-Length.
    let reply = gateway.post_batch(Bytes::from(too_large.clone())).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(reply.body["code"], "request_too_large");

    // Streamed in chunks, with no length declared.
    let chunks: Vec<Result<Vec<u8>, io::Error>> = too_large
        .chunks(64 * 1024)
        .map(|c| Ok(c.to_vec()))
        .collect();
    let response = tandem::tls::plain_http_client()
        .post(format!("{}/v1/batch", gateway.url))
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .expect("the gateway answers");
    let reply = Reply::read(response).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(reply.body["code"], "request_too_large");

    assert_eq!(node.batches(), 0, "nothing was forwarded");
    // Exactly at the limit is forwarded.
    let at_limit = gateway
        .post_batch(Bytes::from(vec![b' '; BODY_MAX_BYTES]))
        .await;
    assert_eq!(at_limit.status, StatusCode::OK);
    assert_eq!(node.batches(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_inflight_limit_requests_are_shed_at_once() {
    let node = Backend::start().await;
    node.set_mode(Mode::Hold);
    let gateway = Arc::new(
        Gateway::start(&[&node], |options| {
            options.inflight_max = 2;
        })
        .await,
    );
    let held: Vec<_> = (0..2)
        .map(|id| {
            let gateway = Arc::clone(&gateway);
            tokio::spawn(async move { gateway.post_batch(batch(id)).await.status })
        })
        .collect();
    wait_until("two requests are held by the node", || async {
        node.held() == 2
    })
    .await;
    assert_eq!(gateway.get("/gateway/status").await.body["inflight"], 2);

    let started = Instant::now();
    let shed = gateway.post_batch(batch(3)).await;
    assert_eq!(shed.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(shed.body["code"], "gateway_overloaded", "{}", shed.body);
    assert_eq!(shed.retry_after(), Some("1"));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "shed, not queued"
    );
    assert_eq!(node.batches(), 2, "the shed request was not forwarded");

    node.release();
    for request in held {
        assert_eq!(request.await.expect("task"), StatusCode::OK);
    }
    wait_until("permits are returned", || async {
        gateway.get("/gateway/status").await.body["inflight"] == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_end_to_end_headers_cross_and_the_client_address_is_forwarded() {
    let node = Backend::start().await;
    let gateway = Gateway::start(&[&node], |_| {}).await;
    let reply = tandem::tls::plain_http_client()
        .post(format!("{}/v1/batch?source=web", gateway.url))
        .header("authorization", "Basic d3JpdGU6")
        .header("x-request-id", "r-1")
        .header("proxy-authorization", "Basic c2VjcmV0")
        .header("x-forwarded-for", "203.0.113.9")
        .body(batch(1))
        .send()
        .await
        .expect("the gateway answers");
    assert_eq!(reply.status(), StatusCode::OK);
    let seen = node.last_headers();
    assert_eq!(seen["authorization"], "Basic d3JpdGU6");
    assert_eq!(seen["x-request-id"], "r-1");
    assert!(seen.get("proxy-authorization").is_none());
    assert_eq!(seen["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
}

// ---------------------------------------------------------------------------------------
// The binary

/// A `tandem gateway` process, killed when dropped.
struct GatewayProcess {
    child: tokio::process::Child,
    url: String,
}

impl GatewayProcess {
    async fn start(args: &[&str]) -> GatewayProcess {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
            .arg("gateway")
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn tandem gateway");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(DEADLINE, lines.next_line())
            .await
            .expect("the gateway prints its address in time")
            .expect("stdout readable")
            .expect("a first line");
        let url = line
            .strip_prefix("tandem gateway listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        GatewayProcess { child, url }
    }

    /// SIGTERM, then the exit code.
    async fn terminate(mut self) -> Option<i32> {
        let pid = self.child.id().expect("running").to_string();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(sent.success());
        let status = tokio::time::timeout(DEADLINE, self.child.wait())
            .await
            .expect("the gateway stops in time")
            .expect("wait");
        status.code()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_prints_its_address_proxies_and_stops_on_sigterm() {
    let node = Backend::start().await;
    let nodes = format!("{},http://127.0.0.1:1", node.url);
    let gateway = GatewayProcess::start(&[
        "--listen",
        "127.0.0.1:0",
        "--nodes",
        &nodes,
        "--health-interval-ms",
        "50",
    ])
    .await;
    let http = tandem::tls::plain_http_client();
    let reply = http
        .post(format!("{}/v1/batch", gateway.url))
        .body(batch(1))
        .send()
        .await
        .expect("the gateway answers");
    assert_eq!(reply.status(), StatusCode::OK);
    assert_eq!(node.batches(), 1);
    let status: Value = http
        .get(format!("{}/gateway/status", gateway.url))
        .send()
        .await
        .expect("status")
        .json()
        .await
        .expect("json");
    assert_eq!(status["nodes"][0]["url"], node.url.as_str());
    assert_eq!(status["nodes"][0]["in_rotation"], true);
    assert_eq!(status["nodes"][1]["in_rotation"], false, "port 1 is closed");
    assert_eq!(gateway.terminate().await, Some(0), "SIGTERM exits cleanly");
}

#[tokio::test]
async fn the_binary_refuses_unusable_flags_and_lists_every_problem() {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["gateway", "--listen", "127.0.0.1:0"])
        .args(["--nodes", "https://a:1,nowhere", "--attempts-max", "0"])
        .output()
        .await
        .expect("run");
    assert_eq!(output.status.code(), Some(2));
    assert!(output.stdout.is_empty(), "nothing printed on stdout");
    let stderr = String::from_utf8_lossy(&output.stderr);
    for needle in [
        "uses https",
        "\"nowhere\" is not a URL",
        "--attempts-max = 0",
    ] {
        assert!(stderr.contains(needle), "{needle:?} in {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_routes_are_never_forwarded() {
    let node = Backend::start().await;
    let gateway = Gateway::start(&[&node], |_| {}).await;
    for path in [
        "/internal/command",
        "/internal/raft/snapshot",
        "//internal/propose",
        "/INTERNAL/raft/append",
    ] {
        let response = gateway
            .http
            .post(format!("{}{path}", gateway.url))
            .header(header::AUTHORIZATION, "Bearer a-guessed-cluster-key")
            .body("x")
            .send()
            .await
            .expect("the gateway answers");
        let reply = Reply::read(response).await;
        assert_eq!(
            reply.status,
            StatusCode::NOT_FOUND,
            "{path}: {}",
            reply.body
        );
        assert_eq!(reply.body["code"], "not_found", "{path}: {}", reply.body);
        assert!(
            reply.body["message"]
                .as_str()
                .is_some_and(|m| m.contains("not served through the gateway")),
            "{path}: the gateway itself refused, not the node: {}",
            reply.body
        );
    }
    // Client routes still pass.
    let reply = gateway.post_batch(batch(1)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(node.batches(), 1);
}
