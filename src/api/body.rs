//! Reading request bodies within limits: content type, gzip, size, and the body deadline
//! of [`super::watchdog`] (408 `body_timeout`).
//!
//! Bodies in progress share a node-wide budget ([`BodyBudget`], `limits.body_bytes_max`):
//! a request reserves the most its body can become before reading it and holds the
//! reservation until its reply, so many connections each sending a large body cannot add
//! up to more memory than the budget; beyond it, 429 `body_budget_exhausted`.
//!
//! The size limit applies twice: to the bytes on the wire and to the body after
//! decompression. Decompression reads at most `limit + 1` bytes out of the gzip stream and
//! stops, so a decompression bomb costs at most `limit` bytes of memory before it is
//! refused; it is never inflated whole.

use std::io::Read;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode, header};
use flate2::read::GzDecoder;

use super::error::ApiError;
use crate::node::budget::{ByteBudget, Taken};

/// The node-wide budget of request bodies being read and validated.
#[derive(Clone)]
pub struct BodyBudget {
    bytes: ByteBudget,
}

/// A reservation of [`BodyBudget`]; released when dropped (after the reply).
pub struct BodyReservation {
    _taken: Taken,
}

impl BodyBudget {
    /// A budget of `bytes_max` bytes.
    pub fn new(bytes_max: usize) -> BodyBudget {
        BodyBudget {
            bytes: ByteBudget::new(bytes_max),
        }
    }

    /// Bytes reserved by bodies in progress now (in KiB steps).
    pub fn reserved_bytes(&self) -> usize {
        self.bytes.taken_bytes()
    }

    /// Reserves room for the body `headers` announce, at most `limit` bytes after
    /// decompression: `limit` for gzip or an undeclared length, else the declared length.
    /// Refuses at once (429) when the budget is spent, rather than queueing.
    pub fn reserve(&self, headers: &HeaderMap, limit: usize) -> Result<BodyReservation, ApiError> {
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        let gzip = content_encoding_is_gzip(headers).unwrap_or(true);
        let bytes = match declared {
            Some(length) if !gzip => length.min(limit),
            _ => limit,
        };
        self.bytes
            .try_take(bytes)
            .map(|taken| BodyReservation { _taken: taken })
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "body_budget_exhausted",
                    format!(
                        "the node is reading as many request bodies as it holds at once \
                         ({} bytes, limits.body_bytes_max); retry shortly",
                        self.bytes.bytes_max()
                    ),
                )
            })
    }
}

/// Reads a JSON request body of at most `limit` bytes (after decompression).
pub async fn read_json(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    check_content_type(headers)?;
    let gzip = content_encoding_is_gzip(headers)?;
    read_limited(headers, body, limit, gzip, too_large).await
}

/// Reads the JSON body of a request that carries no key in its headers (its `writeKey`
/// may be inside): at most `limit` bytes and never gzip, so a sender not yet known costs
/// little.
pub async fn read_json_keyless(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, ApiError> {
    check_content_type(headers)?;
    if content_encoding_is_gzip(headers)? {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_encoding",
            "gzip bodies are accepted only with the write key in the Authorization header \
             (HTTP Basic, the key as user name); send this body uncompressed or move the key",
        ));
    }
    let too_large = |limit| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
            format!(
                "a request with its write key in the body may be at most {limit} bytes \
                 (auth.body_key_request_bytes_max); send the key as HTTP Basic auth for \
                 larger requests"
            ),
        )
    };
    read_limited(headers, body, limit, false, too_large).await
}

async fn read_limited(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    gzip: bool,
    too_large: impl Fn(usize) -> ApiError,
) -> Result<Bytes, ApiError> {
    if let Some(length) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        && length > limit
    {
        return Err(too_large(limit));
    }
    let raw = axum::body::to_bytes(body, limit).await.map_err(|error| {
        if super::watchdog::is_body_timeout(&error) {
            super::watchdog::body_timeout_error()
        } else {
            too_large(limit)
        }
    })?;
    if !gzip {
        return Ok(raw);
    }
    let mut inflated = Vec::with_capacity(raw.len().saturating_mul(4).min(limit + 1));
    GzDecoder::new(raw.as_ref())
        .take(limit as u64 + 1)
        .read_to_end(&mut inflated)
        .map_err(|e| {
            ApiError::bad_request(
                "invalid_gzip",
                format!("Content-Encoding is gzip but the body does not decompress: {e}"),
            )
        })?;
    if inflated.len() > limit {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
            format!(
                "the decompressed body exceeds the limit of {limit} bytes (limits.request_bytes_max)"
            ),
        ));
    }
    Ok(Bytes::from(inflated))
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "request_too_large",
        format!(
            "the request body exceeds the limit of {limit} bytes (limits.request_bytes_max); split it into smaller batches"
        ),
    )
}

fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if mime == "application/json" {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        if content_type.is_empty() {
            "Content-Type is missing; send Content-Type: application/json".to_owned()
        } else {
            format!("Content-Type {content_type:?} is not supported; send application/json")
        },
    ))
}

fn content_encoding_is_gzip(headers: &HeaderMap) -> Result<bool, ApiError> {
    let Some(value) = headers.get(header::CONTENT_ENCODING) else {
        return Ok(false);
    };
    match value
        .to_str()
        .map(|v| v.trim().to_ascii_lowercase())
        .as_deref()
    {
        Ok("gzip") | Ok("x-gzip") => Ok(true),
        Ok("identity") | Ok("") => Ok(false),
        _ => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_encoding",
            format!("Content-Encoding {value:?} is not supported; use gzip or none"),
        )),
    }
}
