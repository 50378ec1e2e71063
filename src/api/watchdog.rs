//! Time limits of one client connection: what it may keep open, and for how long.
//!
//! - **Headers**: from a connection's start, or from the first byte of a later request
//!   (HTTP/1), to the request being handed to a handler, `http.header_timeout_ms`; a
//!   slower client is disconnected. A connection that never sends a byte is timed the
//!   same way.
//! - **Body**: a request body must arrive within `http.body_timeout_ms` plus the time its
//!   bytes so far take at `http.body_rate_min_bytes_per_sec` ([`DeadlineBody`]); one that
//!   falls behind fails with [`BodyTimedOut`], answered 408 `body_timeout`, and the
//!   connection closes because the rest of the body was never read. For a body of at most
//!   L bytes that bounds the wait at `body_timeout + L / rate`.
//! - **Idle**: a connection with no request in progress is closed after
//!   `http.idle_timeout_ms` without traffic (HTTP/1) or without a request (HTTP/2, whose
//!   pings and window updates are traffic that carries no work).
//!
//! A request in progress is not timed here: its body is, and handlers bound their own
//! waits (commits, read freshness). [`Activity`] is what the connection's IO wrapper
//! ([`Watched`]) and request guards record; [`next_check`] is the pure rule the
//! connection task applies to it.
//!
//! **Lingering close.** A reply sent before the body was read (401 for an unknown key, 413
//! by `Content-Length`, 408) would be lost if the socket were closed while the client is
//! still sending: unread bytes make the kernel reset the connection, and the client sees a
//! broken pipe instead of the reply. So when the server closes, [`Watched`] half-closes
//! (FIN after the reply), then reads and discards what still arrives — up to
//! [`LINGER_MS`] and [`LINGER_BYTES_MAX`] — before the socket is dropped.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::StatusCode;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::error::ApiError;
use crate::config::HttpConfig;

/// `head_started_ms` when no request head is being received.
const NO_HEAD: u64 = u64::MAX;

/// Longest a closing connection keeps reading what the client still sends, ms.
pub const LINGER_MS: u64 = 2_000;

/// Most bytes a closing connection reads and discards (discarding costs no memory; the
/// time limit is the real bound).
pub const LINGER_BYTES_MAX: u64 = 256 << 20;

/// The start of an HTTP/2 connection preface (`PRI * HTTP/2.0`).
const H2_PREFACE_START: &[u8] = b"PRI * HTTP/2.0";

/// The `[http]` time limits, as durations.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// From a request's first byte to its dispatch.
    pub header: Duration,
    /// A body's allowance on top of its bytes at `body_rate_min`.
    pub body: Duration,
    /// Slowest average body rate, bytes per second (at least 1).
    pub body_rate_min: u64,
    /// Longest quiet time with no request in progress.
    pub idle: Duration,
}

impl Timeouts {
    /// The limits of `config`.
    pub fn from_config(config: &HttpConfig) -> Timeouts {
        Timeouts {
            header: Duration::from_millis(config.header_timeout_ms),
            body: Duration::from_millis(config.body_timeout_ms),
            body_rate_min: config.body_rate_min_bytes_per_sec.max(1),
            idle: Duration::from_millis(config.idle_timeout_ms),
        }
    }

    /// When a body started at `started` with `received` bytes so far must have moved on.
    pub fn body_deadline(&self, started: Instant, received: u64) -> Instant {
        let earned = Duration::from_secs_f64(received as f64 / self.body_rate_min as f64);
        started + self.body + earned
    }
}

/// What one connection has been doing; shared by its IO wrapper, its requests and its task.
#[derive(Debug)]
pub struct Activity {
    /// The connection's start; the times below are ms after it.
    epoch: Instant,
    /// Last byte read or written.
    last_io_ms: AtomicU64,
    /// Last request started or finished.
    last_request_ms: AtomicU64,
    /// First byte of the request head being received, or [`NO_HEAD`].
    head_started_ms: AtomicU64,
    /// Requests dispatched and not yet answered.
    in_flight: AtomicU32,
    /// Whether any byte was read yet (the first ones tell HTTP/2 from HTTP/1).
    read_any: AtomicBool,
    /// HTTP/2: streams are multiplexed, so there is no "head in progress" to time.
    multiplexed: AtomicBool,
}

/// A snapshot of [`Activity`], ms after the connection's start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct State {
    /// Requests in progress.
    pub in_flight: u32,
    /// First byte of a request head not yet dispatched.
    pub head_started_ms: Option<u64>,
    /// Last byte read or written.
    pub last_io_ms: u64,
    /// Last request start or finish.
    pub last_request_ms: u64,
    /// HTTP/2.
    pub multiplexed: bool,
}

/// Why a connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// Request headers took longer than `http.header_timeout_ms`.
    Headers,
    /// No request and no traffic for `http.idle_timeout_ms`.
    Idle,
}

/// What the connection task should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Look again at this time (ms after the connection's start).
    At(u64),
    /// Close the connection.
    Close(Expiry),
}

/// The rule: given the connection's state at `now_ms`, close it or when to look again.
pub fn next_check(state: State, timeouts: &Timeouts, now_ms: u64) -> Check {
    let idle_ms = timeouts.idle.as_millis() as u64;
    if state.in_flight > 0 {
        return Check::At(now_ms + idle_ms);
    }
    let (due, expiry) = match state.head_started_ms {
        Some(started) if !state.multiplexed => (
            started + timeouts.header.as_millis() as u64,
            Expiry::Headers,
        ),
        _ if state.multiplexed => (state.last_request_ms + idle_ms, Expiry::Idle),
        _ => (state.last_io_ms + idle_ms, Expiry::Idle),
    };
    if now_ms >= due {
        Check::Close(expiry)
    } else {
        Check::At(due)
    }
}

impl Activity {
    /// A new connection's activity.
    pub fn new() -> Activity {
        Activity {
            epoch: Instant::now(),
            last_io_ms: AtomicU64::new(0),
            last_request_ms: AtomicU64::new(0),
            // The first request's head is awaited from the start.
            head_started_ms: AtomicU64::new(0),
            in_flight: AtomicU32::new(0),
            read_any: AtomicBool::new(false),
            multiplexed: AtomicBool::new(false),
        }
    }

    /// Ms since the connection started.
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The instant `ms` after the connection's start.
    pub fn instant(&self, ms: u64) -> Instant {
        self.epoch + Duration::from_millis(ms)
    }

    /// The current state.
    pub fn state(&self) -> State {
        let head = self.head_started_ms.load(Relaxed);
        State {
            in_flight: self.in_flight.load(Relaxed),
            head_started_ms: (head != NO_HEAD).then_some(head),
            last_io_ms: self.last_io_ms.load(Relaxed),
            last_request_ms: self.last_request_ms.load(Relaxed),
            multiplexed: self.multiplexed.load(Relaxed),
        }
    }

    fn on_read(&self, bytes: &[u8]) {
        let now = self.now_ms();
        self.last_io_ms.store(now, Relaxed);
        if !self.read_any.swap(true, Relaxed) {
            let n = bytes.len().min(H2_PREFACE_START.len());
            if n > 0 && bytes[..n] == H2_PREFACE_START[..n] {
                self.multiplexed.store(true, Relaxed);
            }
        }
        if self.in_flight.load(Relaxed) == 0 {
            // The first bytes since the last request ended: a new head begins. (Bytes
            // pipelined behind a request in progress fall to the idle limit instead.)
            let _ = self
                .head_started_ms
                .compare_exchange(NO_HEAD, now, Relaxed, Relaxed);
        }
    }

    fn on_write(&self) {
        self.last_io_ms.store(self.now_ms(), Relaxed);
    }

    /// Records a request handed to a handler until the guard is dropped.
    pub fn request(self: &Arc<Self>) -> RequestGuard {
        let now = self.now_ms();
        self.in_flight.fetch_add(1, Relaxed);
        self.head_started_ms.store(NO_HEAD, Relaxed);
        self.last_request_ms.store(now, Relaxed);
        RequestGuard(Arc::clone(self))
    }
}

impl Default for Activity {
    fn default() -> Self {
        Activity::new()
    }
}

/// A request in progress on a connection (see [`Activity::request`]).
#[derive(Debug)]
pub struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let now = self.0.now_ms();
        self.0.last_request_ms.store(now, Relaxed);
        self.0.last_io_ms.store(now, Relaxed);
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

/// An IO stream that records its reads and writes in an [`Activity`] and closes lingering
/// (see the module doc).
#[derive(Debug)]
pub struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
    /// Set once our side is shut down: the end of lingering.
    linger_until: Option<Pin<Box<Sleep>>>,
    /// Bytes discarded while lingering.
    lingered_bytes: u64,
}

impl<S> Watched<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, activity: Arc<Activity>) -> Watched<S> {
        Watched {
            inner,
            activity,
            linger_until: None,
            lingered_bytes: 0,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Watched<S> {
    /// Reads and discards until the client closes, the linger time passes or the linger
    /// bytes are used up.
    fn poll_linger(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut scratch = [0_u8; 4096];
        while self.lingered_bytes < LINGER_BYTES_MAX {
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.inner).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                    self.lingered_bytes += buf.filled().len() as u64;
                }
                Poll::Ready(_) => return Poll::Ready(()),
                Poll::Pending => {
                    return match &mut self.linger_until {
                        Some(until) => until.as_mut().poll(cx),
                        None => Poll::Ready(()),
                    };
                }
            }
        }
        Poll::Ready(())
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.on_read(&buf.filled()[before..]);
        }
        polled
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.on_write();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.on_write();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.linger_until.is_none() {
            std::task::ready!(Pin::new(&mut this.inner).poll_shutdown(cx))?;
            let until = Instant::now() + Duration::from_millis(LINGER_MS);
            this.linger_until = Some(Box::pin(tokio::time::sleep_until(until)));
        }
        this.poll_linger(cx).map(Ok)
    }
}

/// A request body that fell behind its deadline.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
pub struct BodyTimedOut;

/// Whether `error` (or anything it wraps) is a [`BodyTimedOut`].
pub fn is_body_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(error) = current {
        if error.is::<BodyTimedOut>() {
            return true;
        }
        current = error.source();
    }
    false
}

/// 408 `body_timeout`.
pub fn body_timeout_error() -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "body_timeout",
        "the request body arrived too slowly (http.body_timeout_ms, then at least \
         http.body_rate_min_bytes_per_sec); the connection is closed",
    )
}

/// A request body held to [`Timeouts::body_deadline`].
pub struct DeadlineBody<B> {
    inner: B,
    timeouts: Timeouts,
    started: Instant,
    received: u64,
    timer: Pin<Box<Sleep>>,
    expired: bool,
    /// Set once the whole body has been read (or there was none).
    finished: Arc<AtomicBool>,
}

impl<B: HttpBody> DeadlineBody<B> {
    /// `inner`, timed from now; `finished` is set once it has been read to its end.
    pub fn new(inner: B, timeouts: Timeouts, finished: Arc<AtomicBool>) -> DeadlineBody<B> {
        let started = Instant::now();
        if inner.is_end_stream() {
            finished.store(true, Relaxed);
        }
        DeadlineBody {
            inner,
            timeouts,
            started,
            received: 0,
            timer: Box::pin(tokio::time::sleep_until(timeouts.body_deadline(started, 0))),
            expired: false,
            finished,
        }
    }
}

impl<B> HttpBody for DeadlineBody<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.expired {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.received += data.len() as u64;
                }
                if this.inner.is_end_stream() {
                    this.finished.store(true, Relaxed);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(error.into()))),
            Poll::Ready(None) => {
                this.finished.store(true, Relaxed);
                Poll::Ready(None)
            }
            Poll::Pending => {
                let deadline = this.timeouts.body_deadline(this.started, this.received);
                if this.timer.deadline() != deadline {
                    this.timer.as_mut().reset(deadline);
                }
                match this.timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        this.expired = true;
                        Poll::Ready(Some(Err(Box::new(BodyTimedOut))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.expired || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUTS: Timeouts = Timeouts {
        header: Duration::from_millis(100),
        body: Duration::from_millis(1000),
        body_rate_min: 1000,
        idle: Duration::from_millis(500),
    };

    fn state(in_flight: u32, head: Option<u64>, io: u64, request: u64, h2: bool) -> State {
        State {
            in_flight,
            head_started_ms: head,
            last_io_ms: io,
            last_request_ms: request,
            multiplexed: h2,
        }
    }

    #[test]
    fn the_rule_in_each_state() {
        let cases = [
            // in flight: never closed here, look again an idle period later
            (state(1, Some(0), 0, 0, false), 5_000, Check::At(5_500)),
            // a head begun at 10 ms: 100 ms to finish it
            (state(0, Some(10), 50, 0, false), 60, Check::At(110)),
            (
                state(0, Some(10), 50, 0, false),
                110,
                Check::Close(Expiry::Headers),
            ),
            // idle HTTP/1: quiet since the last byte
            (state(0, None, 200, 100, false), 300, Check::At(700)),
            (
                state(0, None, 200, 100, false),
                700,
                Check::Close(Expiry::Idle),
            ),
            // HTTP/2: pings are traffic but not work; heads are not timed
            (state(0, Some(10), 650, 100, true), 550, Check::At(600)),
            (
                state(0, Some(10), 650, 100, true),
                600,
                Check::Close(Expiry::Idle),
            ),
        ];
        for (state, now, expected) in cases {
            assert_eq!(
                next_check(state, &TIMEOUTS, now),
                expected,
                "{state:?} at {now}"
            );
        }
    }

    #[test]
    fn a_body_earns_time_by_arriving() {
        let start = Instant::now();
        assert_eq!(
            TIMEOUTS.body_deadline(start, 0),
            start + Duration::from_secs(1)
        );
        assert_eq!(
            TIMEOUTS.body_deadline(start, 2_500),
            start + Duration::from_millis(3_500)
        );
    }

    #[test]
    fn reads_start_a_head_only_between_requests_and_detect_http2() {
        let activity = Arc::new(Activity::new());
        activity.on_read(b"GET / HT");
        assert!(activity.state().head_started_ms.is_some());
        assert!(!activity.state().multiplexed);
        let guard = activity.request();
        assert_eq!(activity.state().head_started_ms, None);
        activity.on_read(b"body bytes");
        assert_eq!(activity.state().head_started_ms, None, "body, not a head");
        drop(guard);
        assert_eq!(activity.state().in_flight, 0);
        let h2 = Activity::new();
        h2.on_read(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        assert!(h2.state().multiplexed);
    }

    #[tokio::test]
    async fn a_stalled_body_fails_with_body_timed_out_at_its_deadline() {
        let timeouts = Timeouts {
            body: Duration::from_millis(100),
            body_rate_min: 10_000,
            ..TIMEOUTS
        };
        use futures::StreamExt;
        let first = futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from(vec![0; 500]))]);
        let body = axum::body::Body::from_stream(first.chain(futures::stream::pending()));
        let started = Instant::now();
        let finished = Arc::new(AtomicBool::new(false));
        let body = DeadlineBody::new(body, timeouts, Arc::clone(&finished));
        let error = axum::body::to_bytes(axum::body::Body::new(body), usize::MAX)
            .await
            .expect_err("stalled");
        assert!(is_body_timeout(&error), "{error}");
        assert!(!finished.load(Relaxed), "a timed-out body is not finished");
        let elapsed = started.elapsed();
        // 100 ms + 500 B at 10,000 B/s; the upper bound only guards against a hang.
        assert!(elapsed >= Duration::from_millis(150), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    }
}
