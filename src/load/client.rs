//! HTTP to a Tandem node: the client, authentication headers, and the retry policy.
//!
//! The retry policy is a pure function ([`retry_verdict`]) of what happened (a status code
//! or a network error), the `Retry-After` header, how many attempts were made and for how
//! long, so it is tested as a table. Its rules:
//! - 429 and 503 mean "busy, come back later": wait `Retry-After` seconds (at most
//!   [`RETRY_AFTER_MAX`]), or back off when the header is missing;
//! - network errors, timeouts, 408 and the other transient 5xx (500, 502, 504) back off
//!   exponentially from [`BACKOFF_BASE`] to [`BACKOFF_MAX`], with jitter so that many
//!   clients do not retry in lockstep;
//! - everything else (2xx, and 4xx such as 400, 401, 403, 413, 415) is final;
//! - no request is tried more than [`RETRY_ATTEMPTS_MAX`] times or retried after
//!   [`RETRY_ELAPSED_MAX`].
//!
//! Retrying is safe only because a retried request is byte-for-byte the same batch with
//! the same `messageId`s, which the server deduplicates.

use std::error::Error;
use std::time::{Duration, Instant};

use base64::Engine;
use rand::Rng;
use rand::rngs::StdRng;

use super::LoadError;

/// Longest wait for one request, connection included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait to establish a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Most attempts of one request, the first included.
pub const RETRY_ATTEMPTS_MAX: u32 = 50;
/// No retry starts later than this after the first attempt.
pub const RETRY_ELAPSED_MAX: Duration = Duration::from_secs(120);
/// Longest `Retry-After` honoured; longer values are shortened to this.
pub const RETRY_AFTER_MAX: Duration = Duration::from_secs(5);
/// First backoff delay (before jitter).
pub const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// Largest backoff delay (before jitter).
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Most characters of an error reply quoted in messages.
const ERROR_BODY_CHARS_MAX: usize = 300;

/// What went wrong with one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// The server answered with this status.
    Status(u16),
    /// No answer: connection refused or reset, timeout, truncated body.
    Network,
}

/// What to do after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The reply is final: success, or an error that retrying cannot fix.
    Final,
    /// Try again after this delay.
    Retry(Duration),
    /// Retryable, but the retry budget is spent.
    GiveUp,
}

/// Whether and when to retry. `attempts` counts the attempts made so far (≥ 1),
/// `elapsed` runs from the first attempt, and `jitter` is uniform in `[0, 1)`.
pub fn retry_verdict(
    attempt: Attempt,
    retry_after: Option<&str>,
    attempts: u32,
    elapsed: Duration,
    jitter: f64,
) -> Verdict {
    let delay = match attempt {
        Attempt::Status(429 | 503) => match retry_after.and_then(parse_retry_after) {
            // A little jitter on top, so clients told the same delay spread out.
            Some(delay) => delay.min(RETRY_AFTER_MAX) + BACKOFF_BASE.mul_f64(jitter),
            None => backoff(attempts, jitter),
        },
        Attempt::Status(408 | 500 | 502 | 504) | Attempt::Network => backoff(attempts, jitter),
        Attempt::Status(_) => return Verdict::Final,
    };
    if attempts >= RETRY_ATTEMPTS_MAX || elapsed + delay > RETRY_ELAPSED_MAX {
        return Verdict::GiveUp;
    }
    Verdict::Retry(delay)
}

/// Whether a reply with `status` ends the request (no retry whatever the budget).
pub fn is_final(status: u16) -> bool {
    retry_verdict(Attempt::Status(status), None, 1, Duration::ZERO, 0.0) == Verdict::Final
}

/// "Equal jitter" exponential backoff: half the exponential delay, plus up to the other
/// half at random.
fn backoff(attempts: u32, jitter: f64) -> Duration {
    let exponent = attempts.saturating_sub(1).min(16);
    let full = BACKOFF_BASE.saturating_mul(1 << exponent).min(BACKOFF_MAX);
    full / 2 + (full / 2).mul_f64(jitter.clamp(0.0, 1.0))
}

/// `Retry-After` as delay-seconds (integer or decimal). HTTP dates are not supported and
/// fall back to backoff.
fn parse_retry_after(value: &str) -> Option<Duration> {
    let seconds: f64 = value.trim().parse().ok()?;
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds.min(3600.0)))
}

/// The reply that ended a request.
#[derive(Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// The whole body.
    pub body: Vec<u8>,
    /// Time of the final attempt, from sending to the last byte of the body.
    pub latency: Duration,
}

/// The result of a request with its retries.
#[derive(Debug)]
pub struct Exchange {
    /// The final reply, or why the request was abandoned.
    pub result: Result<Reply, String>,
    /// How many times the request was retried.
    pub retries: u32,
}

/// Sends the request that `build` makes until the reply is final or the retry budget is
/// spent. `build` is called once per attempt and must make the same request each time.
pub async fn send_with_retries(
    mut build: impl FnMut() -> reqwest::RequestBuilder,
    jitter: &mut StdRng,
) -> Exchange {
    let started = Instant::now();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let sent = Instant::now();
        let (attempt, retry_after, problem) = match build().send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let retry_after = response
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                match response.bytes().await {
                    Ok(body) => {
                        let reply = Reply {
                            status,
                            body: body.to_vec(),
                            latency: sent.elapsed(),
                        };
                        if is_final(status) {
                            return Exchange {
                                result: Ok(reply),
                                retries: attempts - 1,
                            };
                        }
                        let problem = describe_reply(status, &reply.body);
                        (Attempt::Status(status), retry_after, problem)
                    }
                    Err(error) => (Attempt::Network, None, error_chain(&error)),
                }
            }
            Err(error) => (Attempt::Network, None, error_chain(&error)),
        };
        let verdict = retry_verdict(
            attempt,
            retry_after.as_deref(),
            attempts,
            started.elapsed(),
            jitter.random(),
        );
        match verdict {
            Verdict::Retry(delay) => {
                tracing::debug!(attempts, ?delay, %problem, "retrying");
                tokio::time::sleep(delay).await;
            }
            Verdict::Final | Verdict::GiveUp => {
                let message = format!(
                    "gave up after {attempts} attempts in {:.1} s; last: {problem}",
                    started.elapsed().as_secs_f64()
                );
                return Exchange {
                    result: Err(message),
                    retries: attempts - 1,
                };
            }
        }
    }
}

/// The HTTP client used for every request of a run; it trusts the CA in `ca_file` for an
/// `https://` target.
pub fn http_client(ca_file: Option<&std::path::Path>) -> Result<reqwest::Client, LoadError> {
    crate::tls::http_client_builder(ca_file)
        .map_err(|e| LoadError::InvalidOptions(format!("--ca-file: {e}")))?
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(CONNECT_TIMEOUT)
        .user_agent(concat!("tandem-load/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| LoadError::Client(error_chain(&e)))
}

/// The base URL without a trailing slash: `http://` or `https://` (with `--ca-file`).
pub fn base_url(target: &str) -> Result<String, LoadError> {
    let trimmed = target.trim().trim_end_matches('/');
    let rest = trimmed
        .strip_prefix("http://")
        .or_else(|| trimmed.strip_prefix("https://"))
        .ok_or_else(|| {
            LoadError::InvalidOptions(format!(
                "--target {target:?} must be an http:// or https:// URL such as \
                 http://127.0.0.1:8080"
            ))
        })?;
    if rest.is_empty() || rest.contains(['?', '#']) {
        return Err(LoadError::InvalidOptions(format!(
            "--target {target:?} must be a base URL such as http://127.0.0.1:8080"
        )));
    }
    Ok(trimmed.to_owned())
}

/// `Authorization` for the Segment-style write API: Basic with the write key as user and
/// an empty password.
pub fn basic_auth(write_key: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{write_key}:"));
    format!("Basic {encoded}")
}

/// `Authorization` for the read and admin API.
pub fn bearer_auth(key: &str) -> String {
    format!("Bearer {key}")
}

/// Percent-encodes one path segment: everything but RFC 3986 unreserved characters and
/// `:` and `@` (both allowed in a segment, and common in identity keys).
pub fn encode_path_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b':' | b'@' => {
                out.push(char::from(byte));
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// A one-line description of an error reply: the status, and the server's `code` and
/// `message` when the body is the API's error JSON, else the start of the body.
pub fn describe_reply(status: u16, body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct ApiError {
        code: String,
        message: String,
    }
    match serde_json::from_slice::<ApiError>(body) {
        Ok(error) => format!("{status} {}: {}", error.code, error.message),
        Err(_) => {
            let text: String = String::from_utf8_lossy(body)
                .chars()
                .take(ERROR_BODY_CHARS_MAX)
                .collect();
            format!("{status}: {}", text.trim())
        }
    }
}

/// An error and its causes on one line (reqwest's own message hides "connection refused").
pub fn error_chain(error: &dyn Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn retry_policy_table() {
        use Attempt::*;
        use Verdict::*;
        let early = Duration::from_secs(1);
        // (what happened, Retry-After, attempts so far, elapsed, jitter, verdict)
        type Case = (Attempt, Option<&'static str>, u32, Duration, f64, Verdict);
        let cases: &[Case] = &[
            (Status(200), None, 1, early, 0.5, Final),
            (Status(400), None, 1, early, 0.5, Final),
            (Status(401), None, 1, early, 0.5, Final),
            (Status(403), None, 1, early, 0.5, Final),
            (Status(404), None, 1, early, 0.5, Final),
            (Status(413), None, 1, early, 0.5, Final),
            (Status(415), None, 1, early, 0.5, Final),
            // Busy: honour Retry-After (plus up to 100 ms of jitter), capped at 5 s.
            (Status(429), Some("1"), 1, early, 0.0, Retry(MS(1_000))),
            (Status(503), Some("2"), 3, early, 0.5, Retry(MS(2_050))),
            (Status(503), Some("0.25"), 1, early, 0.0, Retry(MS(250))),
            (Status(429), Some("3600"), 1, early, 0.0, Retry(MS(5_000))),
            // No usable Retry-After: back off as for a network error.
            (Status(429), None, 1, early, 0.0, Retry(MS(50))),
            (
                Status(503),
                Some("Wed, 21 Oct 2026 07:28:00 GMT"),
                2,
                early,
                0.0,
                Retry(MS(100)),
            ),
            // Backoff doubles from 100 ms up to 5 s, randomised in its upper half.
            (Network, None, 1, early, 0.0, Retry(MS(50))),
            (Network, None, 4, early, 0.0, Retry(MS(400))),
            (Status(500), None, 20, early, 0.0, Retry(MS(2_500))),
            (Status(502), None, 20, early, 1.0, Retry(MS(5_000))),
            (Status(504), None, 2, early, 0.0, Retry(MS(100))),
            (Status(408), None, 2, early, 0.0, Retry(MS(100))),
            // Budgets.
            (Network, None, RETRY_ATTEMPTS_MAX, early, 0.0, GiveUp),
            (
                Status(503),
                Some("1"),
                RETRY_ATTEMPTS_MAX - 1,
                early,
                0.0,
                Retry(MS(1_000)),
            ),
            (
                Status(503),
                Some("1"),
                2,
                Duration::from_secs(119),
                0.5,
                GiveUp,
            ),
            (Status(501), None, 1, early, 0.0, Final),
        ];
        for (attempt, retry_after, attempts, elapsed, jitter, want) in cases {
            let got = retry_verdict(*attempt, *retry_after, *attempts, *elapsed, *jitter);
            assert_eq!(
                got, *want,
                "{attempt:?} retry-after {retry_after:?} attempt {attempts}"
            );
        }
    }

    #[test]
    fn authorization_headers() {
        // base64("wk_123:") — the write key as user, empty password.
        assert_eq!(basic_auth("wk_123"), "Basic d2tfMTIzOg==");
        assert_eq!(bearer_auth("admin-key"), "Bearer admin-key");
    }

    #[test]
    fn targets_and_path_segments() {
        assert_eq!(
            base_url("http://127.0.0.1:8080/").ok().as_deref(),
            Some("http://127.0.0.1:8080")
        );
        assert_eq!(
            base_url(" http://node:80 ").ok().as_deref(),
            Some("http://node:80")
        );
        assert_eq!(
            base_url("https://node:8443").ok().as_deref(),
            Some("https://node:8443")
        );
        for bad in [
            "ftp://node",
            "node:8080",
            "http://",
            "https://",
            "http://node?x=1",
        ] {
            assert!(base_url(bad).is_err(), "{bad}");
        }
        let cases = [
            ("user_id:u-1", "user_id:u-1"),
            ("email:a@b.c", "email:a@b.c"),
            ("user_id:a/b c?d#e%", "user_id:a%2Fb%20c%3Fd%23e%25"),
            ("user_id:é", "user_id:%C3%A9"),
        ];
        for (raw, want) in cases {
            assert_eq!(encode_path_segment(raw), want);
        }
    }

    #[test]
    fn error_replies_are_described_in_one_line() {
        let api = br#"{"code":"unauthorized","message":"unknown write key"}"#;
        assert_eq!(
            describe_reply(401, api),
            "401 unauthorized: unknown write key"
        );
        assert_eq!(describe_reply(502, b" bad gateway\n"), "502: bad gateway");
        let long = vec![b'x'; 1_000];
        assert!(describe_reply(500, &long).len() < 320);
    }
}
