//! A fault-injecting HTTP proxy for the S3 tests: it sits between Tandem and a real
//! S3-compatible server and, per request, by a seeded draw, passes it on or answers 503
//! (with or without `Retry-After`), drops the connection mid-request or mid-response
//! (after the server has acted on it), or answers slowly. One request per connection
//! (`Connection: close` both ways), so every fault hits exactly one request. Faulted
//! requests take the kinds in turn, so a short run still meets every kind; and the first
//! manifest upload always loses its reply after the server stored it (the case a
//! create-only write must recognise as its own on retry).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Largest request or response head read, bytes.
const HEAD_BYTES_MAX: usize = 64 << 10;
/// Longest a slow answer is held back, ms.
const SLOW_MS_MAX: u64 = 1_500;

/// What the proxy does to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Pass,
    Unavailable,
    UnavailableRetryAfter,
    DropMidRequest,
    DropMidResponse,
    Slow,
}

const KINDS: [Fault; 5] = [
    Fault::Unavailable,
    Fault::UnavailableRetryAfter,
    Fault::DropMidRequest,
    Fault::DropMidResponse,
    Fault::Slow,
];

/// How many requests met each fault, in [`KINDS`] order, and passed.
#[derive(Debug, Default)]
pub struct Counts {
    pub faults: [AtomicU64; 5],
    pub passed: AtomicU64,
}

/// A running proxy; stops when dropped.
pub struct FaultProxy {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    /// Faults inject only while this is set.
    pub enabled: Arc<AtomicBool>,
    /// What happened so far.
    pub counts: Arc<Counts>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultProxy {
    /// A proxy to `upstream` (`http://host:port`) faulting `rate` of the requests, drawn
    /// from `seed` in arrival order.
    pub async fn start(upstream: &str, seed: u64, rate: f64) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let upstream = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        let enabled = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Counts::default());
        let (on, seen) = (Arc::clone(&enabled), Arc::clone(&counts));
        let manifest_dropped = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut faulted = rng.random_range(0..KINDS.len());
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let fault = if on.load(Ordering::Relaxed) && rng.random_bool(rate) {
                    faulted += 1;
                    KINDS[faulted % KINDS.len()]
                } else {
                    Fault::Pass
                };
                let slow_ms = rng.random_range(100..=SLOW_MS_MAX);
                let (upstream, seen) = (upstream.clone(), Arc::clone(&seen));
                let (on, manifest_dropped) =
                    (on.load(Ordering::Relaxed), Arc::clone(&manifest_dropped));
                tokio::spawn(async move {
                    let _ = serve(
                        client,
                        &upstream,
                        fault,
                        slow_ms,
                        on.then_some(&manifest_dropped),
                        &seen,
                    )
                    .await;
                });
            }
        });
        FaultProxy {
            url,
            enabled,
            counts,
            task,
        }
    }

    /// Faults so far, by kind.
    pub fn summary(&self) -> String {
        let names = [
            "503",
            "503+Retry-After",
            "drop-request",
            "drop-response",
            "slow",
        ];
        let parts: Vec<String> = names
            .iter()
            .zip(&self.counts.faults)
            .map(|(n, c)| format!("{n}={}", c.load(Ordering::Relaxed)))
            .collect();
        format!(
            "{} passed, faults: {}",
            self.counts.passed.load(Ordering::Relaxed),
            parts.join(" ")
        )
    }

    /// Whether every kind of fault happened at least once.
    pub fn every_kind_seen(&self) -> bool {
        self.counts
            .faults
            .iter()
            .all(|c| c.load(Ordering::Relaxed) > 0)
    }
}

/// Reads an HTTP head (through the blank line) and returns it with whatever body bytes
/// came along.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<(Vec<u8>, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0_u8; 8192];
    loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let body = buf.split_off(at + 4);
            return Ok((buf, body));
        }
        if buf.len() > HEAD_BYTES_MAX {
            return Err(std::io::Error::other("head too large"));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The head with any `Connection` header replaced by `Connection: close`, and its
/// `Content-Length`.
fn closing(head: &[u8]) -> (Vec<u8>, usize) {
    let text = String::from_utf8_lossy(head);
    let mut out = String::new();
    let mut length = 0;
    for line in text.split("\r\n").filter(|l| !l.is_empty()) {
        let lower = line.to_ascii_lowercase();
        if lower.starts_with("connection:") {
            continue;
        }
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    (out.into_bytes(), length)
}

async fn serve(
    mut client: TcpStream,
    upstream: &str,
    fault: Fault,
    slow_ms: u64,
    manifest_dropped: Option<&AtomicBool>,
    seen: &Counts,
) -> std::io::Result<()> {
    let (head, mut body) = read_head(&mut client).await?;
    let manifest_put = head.starts_with(b"PUT ")
        && head
            .split(|b| *b == b'\r')
            .next()
            .is_some_and(|line| line.windows(11).any(|w| w == b"/manifests/"));
    let fault = match manifest_dropped {
        Some(dropped) if manifest_put && !dropped.swap(true, Ordering::Relaxed) => {
            Fault::DropMidResponse
        }
        _ => fault,
    };
    match KINDS.iter().position(|k| *k == fault) {
        Some(i) => seen.faults[i].fetch_add(1, Ordering::Relaxed),
        None => seen.passed.fetch_add(1, Ordering::Relaxed),
    };
    let (head, length) = closing(&head);
    if fault == Fault::DropMidRequest {
        // Whatever of the request arrived is dropped with the connection.
        return Ok(());
    }
    while body.len() < length {
        let mut chunk = vec![0_u8; (length - body.len()).min(64 << 10)];
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        body.extend_from_slice(&chunk[..n]);
    }
    let unavailable = |retry_after: bool| {
        let text = "<Error><Code>SlowDown</Code><Message>injected</Message></Error>";
        format!(
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\n{}Content-Length: {}\r\nConnection: close\r\n\r\n{text}",
            if retry_after {
                "Retry-After: 1\r\n"
            } else {
                ""
            },
            text.len()
        )
    };
    match fault {
        Fault::Unavailable | Fault::UnavailableRetryAfter => {
            let reply = unavailable(fault == Fault::UnavailableRetryAfter);
            client.write_all(reply.as_bytes()).await?;
            return client.shutdown().await;
        }
        Fault::Slow => tokio::time::sleep(Duration::from_millis(slow_ms)).await,
        _ => {}
    }
    let mut server = TcpStream::connect(upstream).await?;
    server.write_all(&head).await?;
    server.write_all(&body).await?;
    let (reply_head, mut reply) = read_head(&mut server).await?;
    server.read_to_end(&mut reply).await?;
    let (reply_head, _) = closing(&reply_head);
    let mut whole = reply_head;
    whole.extend_from_slice(&reply);
    if fault == Fault::DropMidResponse {
        // The server acted on the request; the client sees half a reply.
        client.write_all(&whole[..whole.len() / 2]).await?;
        return Ok(());
    }
    client.write_all(&whole).await?;
    client.shutdown().await
}
