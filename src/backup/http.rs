//! object_store's HTTP client for S3-compatible repositories, over the reqwest client the
//! rest of Tandem uses, plain http only.
//!
//! Why not object_store's own reqwest client: its `reqwest` feature turns on reqwest's
//! default TLS, aws-lc-rs (cmake, a slow build). This client is the node's own reqwest.
//! Repositories on S3 are reached over plain http for now — a local MinIO/moto, or a
//! TLS-terminating proxy — and an https endpoint is refused with that explanation: the
//! process now has rustls with ring (the node's TLS), so allowing https here is a small
//! change, left until it can be tested against an https S3 endpoint.

use axum::body::Bytes;
use http_body_util::BodyExt;
use object_store::ClientOptions;
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpResponse,
    HttpResponseBody, HttpService,
};

/// Builds [`PlainHttp`] clients.
#[derive(Debug, Default)]
pub struct PlainHttpConnector;

impl HttpConnector for PlainHttpConnector {
    fn connect(&self, _options: &ClientOptions) -> object_store::Result<HttpClient> {
        let client = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(5))
            .timeout(std::time::Duration::from_secs(120))
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
