//! Reading request bodies within limits: content type, gzip, size, and the body deadline
//! of [`super::watchdog`] (408 `body_timeout`).
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
