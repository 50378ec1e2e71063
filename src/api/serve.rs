//! A node's listeners — the client listener and the peer listener — accepting
//! connections, capping them, timing them, speaking TLS when configured, and shutting
//! down gracefully.
//!
//! Each accepted connection takes a permit of a semaphore of `http.connections_max`. With
//! none left, the new connection is answered `429 too_many_connections` (with
//! `Retry-After`) and closed at once, without a task of its own: nothing queues behind a
//! full node, and a flood beyond the cap costs one `accept` and one small write each.
//!
//! A connection is served by hyper (HTTP/1.1, or HTTP/2 with prior knowledge as peers
//! use) in its own task, which also applies [`super::watchdog`]'s header and idle limits
//! and wraps every request body in a [`DeadlineBody`].
//!
//! With a TLS configuration the task first completes the handshake (HTTP/2 or HTTP/1.1
//! by ALPN; on the peer listener the client's certificate is verified against the
//! cluster CA), within the header timeout; a client that does not speak TLS (plain HTTP
//! to an HTTPS port), or presents no or a wrong certificate, fails the handshake and its
//! connection is closed — the node carries on. The watchdog then sees the decrypted
//! stream, so every limit applies as on a plain listener. Over the cap, a TLS listener
//! closes the new connection without the plain-text 429 (which a TLS client could not
//! read).
//!
//! Shutdown: when the `shutdown` future completes the listener stops accepting, every
//! connection is told to finish (idle ones close at once, busy ones after their current
//! request), and [`serve`] returns once all have closed. Every connection is bounded by
//! the limits above, so this wait is too.

use std::convert::Infallible;
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Request, Version, header};
use axum::response::Response;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;
use tower::ServiceExt;

use super::error::RETRY_AFTER_SECS;
use super::watchdog::{Activity, Check, DeadlineBody, Expiry, Timeouts, Watched, next_check};
use crate::config::HttpConfig;

/// After an idle connection is asked to close, how long it may take before it is dropped
/// (an HTTP/2 GOAWAY, or a response still being written to a client that does not read).
pub const CLOSE_GRACE_MS: u64 = 1_000;

/// Pause after an `accept` error other than a failed handshake (out of file descriptors,
/// say), so the loop does not spin while the condition lasts.
pub const ACCEPT_ERROR_PAUSE_MS: u64 = 100;

/// Least time between two warnings about connections refused over the cap.
pub const REFUSAL_WARNING_INTERVAL_MS: u64 = 10_000;

/// Open files a node needs besides its client connections (log segments, store files,
/// peer connections), for the start-up check of the open-files limit.
pub const FILES_RESERVED: u64 = 1_024;

/// Serves `router` on `listener` under `http`'s limits — over TLS with `tls` — until
/// `shutdown` completes, then lets open connections finish (see the module doc).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    http: &HttpConfig,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    raise_open_files_limit(http.connections_max as u64 + FILES_RESERVED);
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    let timeouts = Timeouts::from_config(http);
    let permits = Arc::new(Semaphore::new(http.connections_max));
    let refusal = over_cap_response(http.connections_max);
    let (stop, stop_seen) = watch::channel(());
    let mut shutdown = pin!(shutdown);
    let mut refused_since_warning: u64 = 0;
    let mut last_warning: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(error) if is_handshake_error(&error) => continue,
            Err(error) => {
                tracing::warn!(%error, "accept failed; pausing");
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(Duration::from_millis(ACCEPT_ERROR_PAUSE_MS)) => continue,
                }
            }
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            if tls.is_none() {
                refuse(&stream, &refusal);
            }
            refused_since_warning += 1;
            let interval = Duration::from_millis(REFUSAL_WARNING_INTERVAL_MS);
            if last_warning.is_none_or(|at| at.elapsed() >= interval) {
                tracing::warn!(
                    refused = refused_since_warning,
                    connections_max = http.connections_max,
                    "connections refused: http.connections_max reached"
                );
                refused_since_warning = 0;
                last_warning = Some(Instant::now());
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (router, stop_seen) = (router.clone(), stop_seen.clone());
        match &tls {
            None => {
                tokio::spawn(connection(stream, permit, router, timeouts, stop_seen));
            }
            Some(acceptor) => {
                let handshake = acceptor.accept(stream);
                tokio::spawn(async move {
                    match tokio::time::timeout(timeouts.header, handshake).await {
                        Ok(Ok(stream)) => {
                            connection(stream, permit, router, timeouts, stop_seen).await;
                        }
                        Ok(Err(error)) => tracing::debug!(%error, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake too slow: connection closed"),
                    }
                });
            }
        }
    }
    drop(listener);
    drop(stop_seen);
    let _ = stop.send(());
    stop.closed().await;
    Ok(())
}

/// Serves one connection until it closes, times out, or shutdown has let it finish.
async fn connection<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    stream: S,
    _permit: OwnedSemaphorePermit,
    router: Router,
    timeouts: Timeouts,
    mut stop: watch::Receiver<()>,
) {
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched::new(stream, Arc::clone(&activity)));
    let handler = Handler {
        router,
        activity: Arc::clone(&activity),
        timeouts,
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Header time is the watchdog's (hyper's own also counts idle keep-alive time).
    builder.http1().header_read_timeout(None);
    let mut conn = pin!(builder.serve_connection(io, handler));
    let mut closing = false;
    let mut drop_at: Option<Instant> = None;
    loop {
        let mut wake = match next_check(activity.state(), &timeouts, activity.now_ms()) {
            Check::At(ms) => activity.instant(ms),
            Check::Close(Expiry::Headers) => {
                tracing::debug!("request headers too slow: connection closed");
                return;
            }
            Check::Close(Expiry::Idle) => {
                if !closing {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
                *drop_at.get_or_insert_with(|| Instant::now() + grace())
            }
        };
        if let Some(at) = drop_at {
            wake = wake.min(at);
        }
        // A head may begin while we sleep (nothing wakes this task on a read): looking at
        // least once per header timeout still closes a slow head right at its deadline.
        wake = wake.min(Instant::now() + timeouts.header);
        tokio::select! {
            served = conn.as_mut() => {
                if let Err(error) = served {
                    tracing::debug!(%error, "connection ended with an error");
                }
                return;
            }
            _ = stop.changed(), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            () = tokio::time::sleep_until(wake) => {
                if drop_at.is_some_and(|at| Instant::now() >= at) {
                    return;
                }
            }
        }
    }
}

fn grace() -> Duration {
    Duration::from_millis(CLOSE_GRACE_MS)
}

/// Hands each request to the router, its body under a deadline, counted as in progress
/// until its response is ready.
#[derive(Clone)]
struct Handler {
    router: Router,
    activity: Arc<Activity>,
    timeouts: Timeouts,
}

impl hyper::service::Service<Request<Incoming>> for Handler {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let guard = self.activity.request();
        let timeouts = self.timeouts;
        let finished = Arc::new(AtomicBool::new(false));
        let http1 = request.version() < Version::HTTP_2;
        let body_finished = Arc::clone(&finished);
        let request =
            request.map(|body| Body::new(DeadlineBody::new(body, timeouts, body_finished)));
        let router = self.router.clone();
        Box::pin(async move {
            let mut response = router.oneshot(request).await?;
            // Answered before its body was read (an unknown key, a declared size over the
            // limit, a body too slow): the connection cannot carry another request, so say
            // so, and the client will not reuse it while the node lingers over the rest.
            if http1 && !finished.load(Ordering::Relaxed) {
                let close = HeaderValue::from_static("close");
                response.headers_mut().insert(header::CONNECTION, close);
            }
            drop(guard);
            Ok(response)
        })
    }
}

/// Errors of one failed handshake, which say nothing about the listener.
fn is_handshake_error(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(
        error.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}

/// The bytes answered to a connection over the cap.
fn over_cap_response(connections_max: usize) -> Vec<u8> {
    let body = serde_json::json!({
        "code": "too_many_connections",
        "message": format!(
            "this node has {connections_max} connections open (http.connections_max); retry \
             shortly, or reuse connections"
        ),
    })
    .to_string();
    format!(
        "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\n\
         retry-after: {RETRY_AFTER_SECS}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Answers a connection over the cap without waiting on it: whatever request bytes have
/// already arrived are read (so closing sends FIN, not RST, and the answer is seen), the
/// answer is written if the socket takes it now, and the socket is closed on return.
fn refuse(stream: &TcpStream, response: &[u8]) {
    let mut scratch = [0_u8; 4096];
    for _ in 0..4 {
        match stream.try_read(&mut scratch) {
            Ok(n) if n > 0 => continue,
            _ => break,
        }
    }
    let _ = stream.try_write(response);
}

/// Raises the soft open-files limit towards `wanted` (up to the hard limit), and warns
/// when it stays below: past it `accept` fails before `http.connections_max` is reached.
#[allow(clippy::unnecessary_cast)] // rlim_t is u64 on Linux, not on every unix
fn raise_open_files_limit(wanted: u64) {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit and setrlimit only read and write the struct passed.
        let read = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
        if read != 0 {
            return;
        }
        let soft = limit.rlim_cur as u64;
        if soft < wanted {
            let raised = libc::rlimit {
                rlim_cur: (wanted as libc::rlim_t).min(limit.rlim_max),
                rlim_max: limit.rlim_max,
            };
            // SAFETY: as above.
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
                limit = raised;
            }
        }
        if (limit.rlim_cur as u64) < wanted {
            tracing::warn!(
                open_files_limit = limit.rlim_cur as u64,
                wanted,
                "the open-files limit is below http.connections_max plus {FILES_RESERVED}; \
                 raise it (ulimit -n, LimitNOFILE=) or lower http.connections_max"
            );
        }
    }
    #[cfg(not(unix))]
    let _ = wanted;
}
