//! The Segment-compatible ingestion endpoints: `/v1/identify`, `/v1/track`, `/v1/page`,
//! `/v1/screen`, `/v1/group`, `/v1/alias` and `/v1/batch` (also `/v1/import`).
//!
//! Reply shape (documented in `docs/api.md`): `200 {"success": true, "accepted": n,
//! "duplicates": d, "rejected": [...], "position": {"index": i}}` only after every accepted
//! event is durable. `position.index` is the log index the request's events are committed
//! at (for a duplicate, its first copy's); a read with `?after=i` on any node sees them.
//! Segment answers 200 and silently drops invalid batch items; we accept the valid ones
//! and list each rejected item with its index, messageId, code and message. A client that
//! only looks at the status code keeps working; one that reads the body learns what was
//! dropped. When no item is valid the reply is 400 with the same `rejected` list.
//!
//! A write key in the `Authorization` header is checked before the body is read; a body
//! that has to be read to find its `writeKey` is held to the smaller
//! `auth.body_key_request_bytes_max` and may not be gzipped. Each accepted request is
//! charged to its source's quota ([`super::quota`]).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use super::AppState;
use super::auth::Source;
use super::body::{BodyReservation, read_json, read_json_keyless};
use super::error::ApiError;
use super::quota;
use crate::config::LimitsConfig;
use crate::model::event::{Event, EventOutcome, MessageType};
use crate::model::validate::{Envelope, Rejection, normalize};
use crate::node::now_ms;
use crate::store::tables::seq_position;

/// A rejected batch item, as reported to the client.
struct Rejected {
    index: usize,
    message_id: Option<String>,
    rejection: Rejection,
}

impl Rejected {
    fn to_json(&self) -> Value {
        json!({
            "index": self.index,
            "messageId": self.message_id,
            "code": self.rejection.code,
            "message": self.rejection.message,
        })
    }
}

/// `POST /v1/{identify,track,page,screen,group,alias}`.
pub async fn single(
    kind: MessageType,
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    refuse_if_shutting_down(&state)?;
    let limits = &state.config.limits;
    let keyed = state.keys.source_from_header(&headers)?;
    let (bytes, _reservation) = read_body(&state, &headers, body, keyed.is_some()).await?;
    if bytes.len() > limits.event_bytes_max {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "event_too_large",
            format!(
                "the event is {} bytes; the limit is {} bytes (limits.event_bytes_max)",
                bytes.len(),
                limits.event_bytes_max
            ),
        ));
    }
    let raw: Value = serde_json::from_slice(&bytes).map_err(invalid_json)?;
    let source = match keyed {
        Some(source) => source,
        None => state
            .keys
            .source_from_body(raw.get("writeKey").and_then(Value::as_str))?,
    };
    quota::charge(&source, 1)?;
    let envelope = Envelope {
        source: &source.name,
        received_at_ms: now_ms(),
        implied_type: Some(kind),
        context: None,
        integrations: None,
        sent_at: None,
        blocklist: &state.blocklist,
        timestamp_future_ms_max: limits.timestamp_future_ms_max,
    };
    let event = normalize(raw, &envelope, new_message_id).map_err(|rejection| {
        state.node.metrics().record_events(&source.name, 0, 0, 1);
        ApiError::bad_request(rejection.code, rejection.message)
    })?;
    if let Some(rejection) = too_large_after_merge(&event, limits.event_bytes_max) {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            rejection.code,
            rejection.message,
        ));
    }
    let outcomes = state.node.submit(vec![event]).await?;
    Ok(reply(&state, &source.name, &outcomes, &[]))
}

/// The `/v1/batch` body. Unknown top-level fields (`metadata`, …) are ignored.
#[derive(Deserialize)]
struct BatchBody<'a> {
    #[serde(borrow)]
    batch: Vec<&'a RawValue>,
    #[serde(default)]
    context: Option<Map<String, Value>>,
    #[serde(default)]
    integrations: Option<Map<String, Value>>,
    #[serde(default, rename = "sentAt")]
    sent_at: Option<Value>,
    #[serde(default, rename = "writeKey")]
    write_key: Option<String>,
}

/// `POST /v1/batch` and `POST /v1/import`. The body is parsed and validated in the ingest
/// pool ([`AppState::ingest_work`]), not on the async workers a read's request crosses.
pub async fn batch(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    refuse_if_shutting_down(&state)?;
    let keyed = state.keys.source_from_header(&headers)?;
    let (bytes, _reservation) = read_body(&state, &headers, body, keyed.is_some()).await?;
    let parsing = state.clone();
    let (source, events, rejected) = state
        .ingest_work(move || parse_batch(&parsing, keyed, &bytes))
        .await?;
    let outcomes = state.node.submit(events).await?;
    Ok(reply(&state, &source.name, &outcomes, &rejected))
}

/// A parsed batch: its source, its valid events and its rejected items.
type ParsedBatch = (Arc<Source>, Vec<Event>, Vec<Rejected>);

/// A batch body's source (from the header key, or else the body's `writeKey`), its valid
/// events and its rejected items; an error if nothing in it can be accepted.
fn parse_batch(
    state: &AppState,
    keyed: Option<Arc<Source>>,
    bytes: &[u8],
) -> Result<ParsedBatch, ApiError> {
    let limits = &state.config.limits;
    let parsed: BatchBody = serde_json::from_slice(bytes).map_err(|e| {
        if e.is_data() {
            ApiError::bad_request(
                "invalid_batch",
                format!("the body must be an object with a \"batch\" array of messages: {e}"),
            )
        } else {
            invalid_json(e)
        }
    })?;
    let source: Arc<Source> = match keyed {
        Some(source) => source,
        None => state.keys.source_from_body(parsed.write_key.as_deref())?,
    };
    if parsed.batch.len() > limits.batch_events_max {
        return Err(ApiError::bad_request(
            "batch_too_large",
            format!(
                "the batch has {} events; the limit is {} (limits.batch_events_max)",
                parsed.batch.len(),
                limits.batch_events_max
            ),
        ));
    }
    if parsed.batch.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_batch",
            "the \"batch\" array is empty",
        ));
    }
    check_batch_fields_size(&parsed, limits.event_bytes_max)?;
    quota::charge(&source, parsed.batch.len() as u64)?;
    let envelope = Envelope {
        source: &source.name,
        received_at_ms: now_ms(),
        implied_type: None,
        context: parsed.context.as_ref(),
        integrations: parsed.integrations.as_ref(),
        sent_at: parsed.sent_at.as_ref(),
        blocklist: &state.blocklist,
        timestamp_future_ms_max: limits.timestamp_future_ms_max,
    };
    let (events, rejected) = validate_items(&parsed.batch, &envelope, limits)?;
    if events.is_empty() {
        let metrics = state.node.metrics();
        metrics.record_events(&source.name, 0, 0, rejected.len() as u64);
        let mut error = ApiError::bad_request(
            "no_valid_events",
            format!(
                "all {} events were rejected; see \"rejected\" for each one's reason",
                rejected.len()
            ),
        );
        error.extra =
            Some(json!({"rejected": rejected.iter().map(Rejected::to_json).collect::<Vec<_>>()}));
        return Err(error);
    }
    Ok((source, events, rejected))
}

/// The body of a request whose key came in its headers (`keyed`) or is to be found inside,
/// with its reservation of the node's body budget (hold it until the reply).
async fn read_body(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    keyed: bool,
) -> Result<(axum::body::Bytes, BodyReservation), ApiError> {
    let limit = if keyed {
        state.config.limits.request_bytes_max
    } else {
        state
            .config
            .limits
            .request_bytes_max
            .min(state.config.auth.body_key_request_bytes_max)
    };
    let reservation = state.bodies.reserve(headers, limit)?;
    let bytes = if keyed {
        read_json(headers, body, limit).await?
    } else {
        read_json_keyless(headers, body, limit).await?
    };
    Ok((bytes, reservation))
}

/// Refuses a batch whose shared `context` and `integrations` alone exceed the event limit:
/// merged into every item they would make each one too large, so nothing could be
/// accepted, and building 2,500 oversized copies only to reject them is work a hostile
/// client should not be able to ask for.
fn check_batch_fields_size(batch: &BatchBody<'_>, event_bytes_max: usize) -> Result<(), ApiError> {
    let size = |map: &Option<Map<String, Value>>| {
        map.as_ref()
            .and_then(|m| serde_json::to_vec(m).ok())
            .map_or(0, |bytes| bytes.len())
    };
    let shared = size(&batch.context) + size(&batch.integrations);
    if shared <= event_bytes_max {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "request_too_large",
        format!(
            "the batch-level context and integrations come to {shared} bytes, more than an \
             event may hold ({event_bytes_max} bytes, limits.event_bytes_max); merged into \
             each item they would make every event too large"
        ),
    ))
}

/// Validates and normalises each item. Stops with 413 as soon as the normalised events
/// exceed `limits.request_events_bytes_max`, so the merged copies never pile up.
fn validate_items(
    items: &[&RawValue],
    envelope: &Envelope<'_>,
    limits: &LimitsConfig,
) -> Result<(Vec<Event>, Vec<Rejected>), ApiError> {
    let event_bytes_max = limits.event_bytes_max;
    let mut events = Vec::with_capacity(items.len());
    let mut rejected = Vec::new();
    let mut total_bytes = 0usize;
    for (index, item) in items.iter().enumerate() {
        let text = item.get();
        let parsed: Value = match serde_json::from_str(text) {
            Ok(value) => value,
            Err(e) => {
                // RawValue already checked the syntax; this only fails on limits such as
                // nesting depth.
                rejected.push(Rejected {
                    index,
                    message_id: None,
                    rejection: Rejection {
                        code: "invalid_message",
                        message: format!("the message does not parse: {e}"),
                    },
                });
                continue;
            }
        };
        let message_id = parsed
            .get("messageId")
            .and_then(Value::as_str)
            .map(str::to_owned);
        if text.len() > event_bytes_max {
            rejected.push(Rejected {
                index,
                message_id,
                rejection: Rejection {
                    code: "event_too_large",
                    message: format!(
                        "the event is {} bytes; the limit is {event_bytes_max} bytes (limits.event_bytes_max)",
                        text.len()
                    ),
                },
            });
            continue;
        }
        let normalized =
            normalize(parsed, envelope, new_message_id).and_then(
                |event| match too_large_after_merge(&event, event_bytes_max) {
                    Some(rejection) => Err(rejection),
                    None => Ok(event),
                },
            );
        match normalized {
            Ok(event) => {
                total_bytes += event.body_json.len();
                if total_bytes > limits.request_events_bytes_max {
                    return Err(request_events_too_large(
                        index + 1,
                        limits.request_events_bytes_max,
                    ));
                }
                events.push(event);
            }
            Err(rejection) => rejected.push(Rejected {
                index,
                message_id,
                rejection,
            }),
        }
    }
    Ok((events, rejected))
}

/// Bytes an event may grow by in normalisation beyond what the client sent: the fields
/// Tandem adds (`messageId` when missing, `type`, `receivedAt`, `timestamp`,
/// `originalTimestamp`, `sentAt`).
const NORMALIZED_FIELDS_BYTES_MAX: usize = 512;

/// An event over `event_bytes_max` once normalised: the item itself was within the limit
/// but the batch-level `context` and `integrations` merged into it were not.
fn too_large_after_merge(event: &Event, event_bytes_max: usize) -> Option<Rejection> {
    let size = event.body_json.len();
    (size > event_bytes_max + NORMALIZED_FIELDS_BYTES_MAX).then(|| Rejection {
        code: "event_too_large",
        message: format!(
            "with the batch-level context and integrations merged in, the event is {size} \
             bytes; the limit is {event_bytes_max} bytes (limits.event_bytes_max)"
        ),
    })
}

/// The refusal of a request whose events, with the batch-level fields merged into each,
/// passed `limit` bytes within its first `items` items: a few kilobytes of gzip must not
/// become gigabytes.
fn request_events_too_large(items: usize, limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "request_too_large",
        format!(
            "with the batch-level context and integrations merged into each item, the first \
             {items} events already exceed {limit} bytes (limits.request_events_bytes_max); \
             send a large shared context with fewer events per request"
        ),
    )
}

/// The reply to an ingest request, counting its outcomes in the source's metrics.
fn reply(
    state: &AppState,
    source: &str,
    outcomes: &[EventOutcome],
    rejected: &[Rejected],
) -> Response {
    let duplicates = outcomes
        .iter()
        .filter(|o| matches!(o, EventOutcome::Duplicate { .. }))
        .count();
    state.node.metrics().record_events(
        source,
        (outcomes.len() - duplicates) as u64,
        duplicates as u64,
        rejected.len() as u64,
    );
    let body = json!({
        "success": true,
        "accepted": outcomes.len() - duplicates,
        "duplicates": duplicates,
        "rejected": rejected.iter().map(Rejected::to_json).collect::<Vec<_>>(),
        "position": {"index": position(outcomes)},
    });
    (StatusCode::OK, axum::Json(body)).into_response()
}

/// The highest log index among the outcomes' events: once a node has applied it, it holds
/// every one of them (a duplicate's seq is its stored first copy's).
fn position(outcomes: &[EventOutcome]) -> Option<u64> {
    outcomes
        .iter()
        .map(|outcome| {
            let (EventOutcome::Stored { seq, .. } | EventOutcome::Duplicate { seq }) = outcome;
            seq_position(*seq).0
        })
        .max()
}

fn refuse_if_shutting_down(state: &AppState) -> Result<(), ApiError> {
    if state.node.is_shutting_down() {
        return Err(crate::node::SubmitError::ShuttingDown.into());
    }
    Ok(())
}

fn invalid_json(error: serde_json::Error) -> ApiError {
    ApiError::bad_request(
        "invalid_json",
        format!("the body is not valid JSON: {error}"),
    )
}

fn new_message_id() -> String {
    format!("tandem-{}", uuid::Uuid::new_v4())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_is_the_highest_log_index_of_the_outcomes() {
        let at = |index: u64, ordinal: u64| (index << 16) | ordinal;
        let outcomes = [
            EventOutcome::Stored { seq: at(9, 4) },
            // A duplicate of an event stored at a later index than this request's.
            EventOutcome::Duplicate { seq: at(12, 0) },
            EventOutcome::Stored { seq: at(9, 5) },
        ];
        assert_eq!(position(&outcomes), Some(12));
        assert_eq!(position(&outcomes[..1]), Some(9));
        assert_eq!(position(&[]), None);
    }
}
