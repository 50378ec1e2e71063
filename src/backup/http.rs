//! object_store's HTTP client for S3-compatible repositories, over the reqwest client the
//! rest of Tandem uses, plain http only.
//!
//! Why not object_store's own reqwest client: its `reqwest` feature turns on reqwest's
//! default TLS, aws-lc-rs (cmake, a slow build). This client is the node's own reqwest.
//! Repositories on S3 are reached over plain http for now — a local MinIO/moto, or a
//! TLS-terminating proxy — and an https endpoint is refused with that explanation: the
//! process now has rustls with ring (the node's TLS), so allowing https here is a small
//! change, left until it can be tested against an https S3 endpoint.

use std::time::Duration;

use axum::body::Bytes;
use http_body_util::BodyExt;
use object_store::ClientOptions;
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpResponse,
    HttpResponseBody, HttpService,
};

/// Longest wait to connect to the S3 endpoint, ms.
pub const CONNECT_TIMEOUT_MS: u64 = 5_000;
/// Longest a whole request may take, sending and receiving included, ms: a chunk is at
/// most `chunker::CHUNK_BYTES_MAX` (a few MiB), so a minute allows for a slow link and
/// still turns a stalled server into a retry well within the repository's retry budget.
pub const REQUEST_TIMEOUT_MS: u64 = 60_000;
/// Longest `Retry-After` honoured, ms: a 503 or 429 that asks for longer waits this long
/// (then the repository's own backoff applies).
pub const RETRY_AFTER_MAX_MS: u64 = 10_000;

/// Builds [`PlainHttp`] clients.
#[derive(Debug, Default)]
pub struct PlainHttpConnector;

impl HttpConnector for PlainHttpConnector {
    fn connect(&self, _options: &ClientOptions) -> object_store::Result<HttpClient> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
            .timeout(Duration::from_millis(REQUEST_TIMEOUT_MS))
            .build()
            .map_err(|e| object_store::Error::Generic {
                store: "S3",
                source: Box::new(e),
            })?;
        Ok(HttpClient::new(PlainHttp(client)))
    }
}

/// One HTTP client.
#[derive(Debug)]
pub struct PlainHttp(reqwest::Client);

fn kind_of(error: &reqwest::Error) -> HttpErrorKind {
    if error.is_timeout() {
        HttpErrorKind::Timeout
    } else if error.is_connect() {
        HttpErrorKind::Connect
    } else if error.is_body() || error.is_decode() {
        HttpErrorKind::Interrupted
    } else {
        HttpErrorKind::Request
    }
}

#[async_trait::async_trait]
impl HttpService for PlainHttp {
    async fn call(&self, request: HttpRequest) -> Result<HttpResponse, HttpError> {
        let (parts, body) = request.into_parts();
        let body: Bytes = body.collect().await?.to_bytes();
        let url = parts.uri.to_string();
        let mut builder = self.0.request(parts.method, url);
        for (name, value) in &parts.headers {
            builder = builder.header(name, value);
        }
        let response = builder
            .body(body)
            .send()
            .await
            .map_err(|e| HttpError::new(kind_of(&e), e))?;
        let status = response.status();
        let headers = response.headers().clone();
        if let Some(wait) = retry_after(status, &headers) {
            // The caller retries this failure; the server asked it to wait first.
            tokio::time::sleep(wait).await;
        }
        let bytes = response
            .bytes()
            .await
            .map_err(|e| HttpError::new(HttpErrorKind::Interrupted, e))?;
        let mut out = axum::http::Response::new(HttpResponseBody::from(bytes));
        *out.status_mut() = status;
        *out.headers_mut() = headers;
        Ok(out)
    }
}

/// How long a 503 or 429 asks to wait (`Retry-After` in seconds), capped at
/// [`RETRY_AFTER_MAX_MS`]; `None` for any other reply or without the header.
pub fn retry_after(
    status: axum::http::StatusCode,
    headers: &axum::http::HeaderMap,
) -> Option<Duration> {
    use axum::http::StatusCode;
    if status != StatusCode::SERVICE_UNAVAILABLE && status != StatusCode::TOO_MANY_REQUESTS {
        return None;
    }
    let seconds: u64 = headers
        .get(axum::http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_millis(
        seconds.saturating_mul(1000).min(RETRY_AFTER_MAX_MS),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, HeaderValue, StatusCode, header};

    #[test]
    fn retry_after_is_honoured_on_503_and_429_only_and_capped() {
        let mut headers = HeaderMap::new();
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
        let two = Some(Duration::from_secs(2));
        assert_eq!(retry_after(StatusCode::SERVICE_UNAVAILABLE, &headers), two);
        assert_eq!(retry_after(StatusCode::TOO_MANY_REQUESTS, &headers), two);
        assert_eq!(
            retry_after(StatusCode::INTERNAL_SERVER_ERROR, &headers),
            None
        );
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("3600"));
        assert_eq!(
            retry_after(StatusCode::SERVICE_UNAVAILABLE, &headers),
            Some(Duration::from_millis(RETRY_AFTER_MAX_MS))
        );
        // An HTTP date is not understood: the backoff alone applies.
        headers.insert(
            header::RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(StatusCode::SERVICE_UNAVAILABLE, &headers), None);
        assert_eq!(
            retry_after(StatusCode::SERVICE_UNAVAILABLE, &HeaderMap::new()),
            None
        );
    }
}
