//! Validation and normalisation of Segment messages, as the Segment HTTP Tracking API
//! specifies them.
//!
//! [`normalize`] turns one raw JSON message into an [`Event`] or a [`Rejection`] that
//! names the problem. It is pure: the receive time, the source and the batch-level fields
//! are passed in, so the same input always gives the same output (apart from a generated
//! `messageId` when the client sent none, which comes from the caller's generator).
//!
//! Rules, following the spec:
//! - `userId` or `anonymousId` is required (strings; numbers are accepted and turned into
//!   strings, as several client libraries send them); a placeholder value (see
//!   [`Blocklist`]) does not count.
//! - track needs `event`; alias needs `previousId` and `userId`; group needs `groupId`.
//! - `properties`, `traits`, `context` and `integrations` must be objects when present.
//! - timestamps are ISO-8601 / RFC 3339. When `sentAt` is known, the event time is
//!   corrected for the client's clock skew:
//!   `timestamp = receivedAt − (sentAt − originalTimestamp)`. The corrected time must lie
//!   between 2000-01-01 and the receive time plus `timestamp_future_ms_max`
//!   (`timestamp_out_of_range` otherwise; see [`super::time`] for why).
//! - batch-level `context` and `integrations` are merged into each item (item keys win).

use serde_json::{Map, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::event::{Event, MessageType};
use super::identity::{Blocklist, IdKind, Identity, valid_external_type};
use super::time::timestamp_problem;

/// Longest `messageId` accepted, in bytes.
pub const MESSAGE_ID_BYTES_MAX: usize = 256;
/// Longest `event` or `name`, in bytes.
pub const EVENT_NAME_BYTES_MAX: usize = 256;
/// Most entries of `context.externalIds` considered per event.
pub const EXTERNAL_IDS_MAX: usize = 16;

/// Why a message was not accepted. `code` is stable and documented in `docs/api.md`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Machine-readable code, e.g. `missing_identity`.
    pub code: &'static str,
    /// Human-readable explanation naming the field and the fix.
    pub message: String,
}

impl Rejection {
    fn new(code: &'static str, message: impl Into<String>) -> Rejection {
        Rejection {
            code,
            message: message.into(),
        }
    }
}

/// Everything about the request that is not in the message itself.
#[derive(Debug, Clone)]
pub struct Envelope<'a> {
    /// The source whose write key authenticated the request.
    pub source: &'a str,
    /// When the request arrived, ms since the epoch.
    pub received_at_ms: i64,
    /// The message type implied by the endpoint (`/v1/track` → track), or `None` for
    /// `/v1/batch`, where each item names its own `type`.
    pub implied_type: Option<MessageType>,
    /// Batch-level `context`, merged into each item.
    pub context: Option<&'a Map<String, Value>>,
    /// Batch-level `integrations`, merged into each item.
    pub integrations: Option<&'a Map<String, Value>>,
    /// Batch-level `sentAt`, used when the item has none.
    pub sent_at: Option<&'a Value>,
    /// Junk identity values.
    pub blocklist: &'a Blocklist,
    /// How far past `received_at_ms` the corrected event time may lie, ms
    /// (`limits.timestamp_future_ms_max`).
    pub timestamp_future_ms_max: i64,
}

/// Validates and normalises one message. `new_message_id` is called only when the
/// message has no `messageId`.
pub fn normalize(
    raw: Value,
    envelope: &Envelope<'_>,
    new_message_id: impl FnOnce() -> String,
) -> Result<Event, Rejection> {
    let Value::Object(mut body) = raw else {
        return Err(Rejection::new(
            "invalid_message",
            "each message must be a JSON object",
        ));
    };
    let kind = message_type(&body, envelope.implied_type)?;
    for field in ["properties", "traits", "context", "integrations"] {
        if let Some(value) = body.get(field)
            && !value.is_object()
            && !value.is_null()
        {
            return Err(Rejection::new(
                "invalid_field",
                format!("`{field}` must be a JSON object"),
            ));
        }
    }
    merge_batch_object(&mut body, "context", envelope.context);
    merge_batch_object(&mut body, "integrations", envelope.integrations);

    let message_id = match body.get("messageId") {
        None | Some(Value::Null) => new_message_id(),
        Some(Value::String(id)) if !id.trim().is_empty() => {
            if id.len() > MESSAGE_ID_BYTES_MAX {
                return Err(Rejection::new(
                    "invalid_field",
                    format!("`messageId` is longer than {MESSAGE_ID_BYTES_MAX} bytes"),
                ));
            }
            id.clone()
        }
        Some(_) => {
            return Err(Rejection::new(
                "invalid_field",
                "`messageId` must be a non-empty string",
            ));
        }
    };

    let name = required_name(&body, kind)?;
    let (identities, previous_id) = identities(&body, kind, envelope.blocklist)?;
    let timestamp_ms = corrected_timestamp(&body, envelope)?;
    if let Some(problem) = timestamp_problem(
        timestamp_ms,
        envelope.received_at_ms,
        envelope.timestamp_future_ms_max,
    ) {
        return Err(Rejection::new("timestamp_out_of_range", problem));
    }
    let traits_json = profile_traits(&body, kind);

    body.remove("writeKey");
    body.insert("type".into(), Value::String(kind.as_str().into()));
    body.insert("messageId".into(), Value::String(message_id.clone()));
    if let Some(ts) = body.remove("timestamp")
        && !body.contains_key("originalTimestamp")
    {
        body.insert("originalTimestamp".into(), ts);
    }
    if !body.contains_key("sentAt")
        && let Some(sent_at) = envelope.sent_at
    {
        body.insert("sentAt".into(), sent_at.clone());
    }
    body.insert(
        "receivedAt".into(),
        Value::String(format_ms(envelope.received_at_ms)),
    );
    body.insert("timestamp".into(), Value::String(format_ms(timestamp_ms)));

    Ok(Event {
        source: envelope.source.to_owned(),
        message_id,
        kind,
        name,
        timestamp_ms,
        received_at_ms: envelope.received_at_ms,
        identities,
        previous_id,
        traits_json,
        body_json: to_json(Value::Object(body))?,
    })
}

/// The normalised body as JSON text. Written straight into a buffer: `Value`'s `Display`
/// goes through the formatting machinery fragment by fragment, ~28% of parsing a batch.
fn to_json(body: Value) -> Result<String, Rejection> {
    serde_json::to_string(&body).map_err(|e| {
        Rejection::new(
            "invalid_message",
            format!("the message does not serialize: {e}"),
        )
    })
}

fn message_type(
    body: &Map<String, Value>,
    implied: Option<MessageType>,
) -> Result<MessageType, Rejection> {
    if let Some(kind) = implied {
        return Ok(kind);
    }
    match body.get("type") {
        Some(Value::String(text)) => MessageType::parse(text).ok_or_else(|| {
            Rejection::new(
                "invalid_type",
                format!(
                    "`type` is {text:?}; expected identify, track, page, screen, group or alias"
                ),
            )
        }),
        _ => Err(Rejection::new(
            "missing_field",
            "`type` is required on each batch item (identify, track, page, screen, group or alias)",
        )),
    }
}

/// Fills keys of the batch-level object that the item does not set itself.
fn merge_batch_object(
    body: &mut Map<String, Value>,
    field: &str,
    batch: Option<&Map<String, Value>>,
) {
    let Some(batch) = batch else { return };
    let entry = body
        .entry(field)
        .or_insert_with(|| Value::Object(Map::new()));
    if entry.is_null() {
        *entry = Value::Object(Map::new());
    }
    if let Value::Object(item) = entry {
        for (key, value) in batch {
            item.entry(key.clone()).or_insert_with(|| value.clone());
        }
    }
}

fn required_name(body: &Map<String, Value>, kind: MessageType) -> Result<String, Rejection> {
    let (field, required) = match kind {
        MessageType::Track => ("event", true),
        MessageType::Page | MessageType::Screen => ("name", false),
        _ => return Ok(String::new()),
    };
    match body.get(field) {
        Some(Value::String(name)) if !name.trim().is_empty() => {
            if name.len() > EVENT_NAME_BYTES_MAX {
                return Err(Rejection::new(
                    "invalid_field",
                    format!("`{field}` is longer than {EVENT_NAME_BYTES_MAX} bytes"),
                ));
            }
            Ok(name.clone())
        }
        None | Some(Value::Null) if !required => Ok(String::new()),
        Some(Value::String(_)) | None | Some(Value::Null) => Err(Rejection::new(
            "missing_field",
            format!("`{field}` is required on {} calls", kind.as_str()),
        )),
        Some(_) => Err(Rejection::new(
            "invalid_field",
            format!("`{field}` must be a string"),
        )),
    }
}

/// A string-or-number id field: `Ok(None)` when absent or null.
fn id_field(body: &Map<String, Value>, field: &str) -> Result<Option<String>, Rejection> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(Value::Number(number)) => Ok(Some(number.to_string())),
        Some(_) => Err(Rejection::new(
            "invalid_field",
            format!("`{field}` must be a string or a number"),
        )),
    }
}

type Identities = (Vec<Identity>, Option<String>);

fn identities(
    body: &Map<String, Value>,
    kind: MessageType,
    blocklist: &Blocklist,
) -> Result<Identities, Rejection> {
    let mut found = Vec::new();
    let mut refused = Vec::new();
    let mut add = |kind: IdKind, field: &str, raw: Option<String>| -> bool {
        let Some(raw) = raw else { return false };
        match Identity::new(kind, &raw, blocklist) {
            Ok(identity) => {
                if !found.contains(&identity) {
                    found.push(identity);
                }
                true
            }
            Err(why) => {
                refused.push(format!("`{field}` {raw:?} was ignored: {why}"));
                false
            }
        }
    };
    let has_user = add(IdKind::UserId, "userId", id_field(body, "userId")?);
    let has_anonymous = add(
        IdKind::AnonymousId,
        "anonymousId",
        id_field(body, "anonymousId")?,
    );
    let has_user_or_anonymous = has_user || has_anonymous;

    let context = body.get("context").and_then(Value::as_object);
    let traits = body.get("traits").and_then(Value::as_object);
    let context_traits = context
        .and_then(|c| c.get("traits"))
        .and_then(Value::as_object);
    for source in [traits, context_traits].into_iter().flatten() {
        for (field, kind) in [("email", IdKind::Email), ("phone", IdKind::Phone)] {
            if let Some(Value::String(raw)) = source.get(field) {
                add(kind, field, Some(raw.clone()));
            }
        }
    }
    if let Some(Value::Array(external)) = context.and_then(|c| c.get("externalIds")) {
        for entry in external.iter().take(EXTERNAL_IDS_MAX) {
            let id_type = entry.get("type").and_then(Value::as_str).unwrap_or("");
            let id_type = id_type.trim().to_lowercase();
            if !valid_external_type(&id_type) {
                continue;
            }
            let value = match entry.get("id") {
                Some(Value::String(text)) => Some(text.clone()),
                Some(Value::Number(number)) => Some(number.to_string()),
                _ => None,
            };
            add(IdKind::External(id_type), "externalIds.id", value);
        }
    }

    let previous_id = if kind == MessageType::Alias {
        let raw = id_field(body, "previousId")?.ok_or_else(|| {
            Rejection::new("missing_field", "`previousId` is required on alias calls")
        })?;
        if id_field(body, "userId")?.is_none() {
            return Err(Rejection::new(
                "missing_field",
                "`userId` is required on alias calls",
            ));
        }
        match Identity::new(IdKind::UserId, &raw, blocklist) {
            Ok(identity) => Some(identity.value),
            Err(why) => {
                return Err(Rejection::new(
                    "invalid_identity",
                    format!("`previousId` {raw:?} is not usable: {why}"),
                ));
            }
        }
    } else {
        None
    };
    if kind == MessageType::Group && id_field(body, "groupId")?.is_none() {
        return Err(Rejection::new(
            "missing_field",
            "`groupId` is required on group calls",
        ));
    }
    if !has_user_or_anonymous {
        let mut message = "`userId` or `anonymousId` is required".to_owned();
        if !refused.is_empty() {
            message.push_str(" (");
            message.push_str(&refused.join("; "));
            message.push(')');
        }
        return Err(Rejection::new("missing_identity", message));
    }
    Ok((found, previous_id))
}

fn parse_time(value: &Value, field: &str) -> Result<i64, Rejection> {
    let bad = || {
        Rejection::new(
            "invalid_timestamp",
            format!("`{field}` must be an ISO-8601 date-time such as 2026-11-25T10:00:00.000Z"),
        )
    };
    let text = value.as_str().ok_or_else(bad)?;
    let parsed = OffsetDateTime::parse(text, &Rfc3339).map_err(|_| bad())?;
    i64::try_from(parsed.unix_timestamp_nanos() / 1_000_000).map_err(|_| bad())
}

/// `timestamp = receivedAt − (sentAt − originalTimestamp)` when both client times are known;
/// otherwise the client's time as sent, or the receive time.
fn corrected_timestamp(
    body: &Map<String, Value>,
    envelope: &Envelope<'_>,
) -> Result<i64, Rejection> {
    let present = |field: &str| body.get(field).filter(|v| !v.is_null());
    let original = match (present("originalTimestamp"), present("timestamp")) {
        (Some(value), _) => Some(parse_time(value, "originalTimestamp")?),
        (None, Some(value)) => Some(parse_time(value, "timestamp")?),
        (None, None) => None,
    };
    let sent_at = match present("sentAt").or(envelope.sent_at.filter(|v| !v.is_null())) {
        Some(value) => Some(parse_time(value, "sentAt")?),
        None => None,
    };
    Ok(match (original, sent_at) {
        (Some(original), Some(sent)) => envelope
            .received_at_ms
            .saturating_sub(sent.saturating_sub(original)),
        (Some(original), None) => original,
        (None, _) => envelope.received_at_ms,
    })
}

/// The traits an event sets on its profile: identify's `context.traits` overlaid with its
/// `traits`. Other calls do not change profile traits.
fn profile_traits(body: &Map<String, Value>, kind: MessageType) -> Option<String> {
    if kind != MessageType::Identify {
        return None;
    }
    let mut merged = Map::new();
    let context_traits = body
        .get("context")
        .and_then(|c| c.get("traits"))
        .and_then(Value::as_object);
    let traits = body.get("traits").and_then(Value::as_object);
    for source in [context_traits, traits].into_iter().flatten() {
        for (key, value) in source {
            merged.insert(key.clone(), value.clone());
        }
    }
    (!merged.is_empty()).then(|| Value::Object(merged).to_string())
}

/// Formats epoch milliseconds as RFC 3339 with millisecond precision, in UTC.
///
/// Ingest formats two of these per event; the digits are written by hand for years
/// 0–9999 (the formatting machinery was ~9% of parsing a batch).
pub fn format_ms(ms: i64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    match OffsetDateTime::from_unix_timestamp_nanos(nanos) {
        Ok(time) if (0..=9999).contains(&time.year()) => {
            let mut out = *b"0000-00-00T00:00:00.000Z";
            let mut digits = |at: usize, width: usize, mut value: u32| {
                for slot in out[at..at + width].iter_mut().rev() {
                    *slot = b'0' + (value % 10) as u8;
                    value /= 10;
                }
            };
            digits(0, 4, time.year() as u32);
            digits(5, 2, u32::from(u8::from(time.month())));
            digits(8, 2, u32::from(time.day()));
            digits(11, 2, u32::from(time.hour()));
            digits(14, 2, u32::from(time.minute()));
            digits(17, 2, u32::from(time.second()));
            digits(20, 3, u32::from(time.millisecond()));
            String::from_utf8_lossy(&out).into_owned()
        }
        Ok(time) => format_with_machinery(time),
        Err(_) => ms.to_string(),
    }
}

/// [`format_ms`] through `format!`: for years outside 0–9999, and the reference its test
/// compares the hand-written digits with.
fn format_with_machinery(time: OffsetDateTime) -> String {
    let (year, month, day) = (time.year(), u8::from(time.month()), time.day());
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        time.hour(),
        time.minute(),
        time.second(),
        time.millisecond()
    )
}

/// A test event from web at `received_at_ms`, with the default limits: for tests in any
/// layer that need a valid [`Event`] without an envelope of their own.
#[cfg(test)]
pub(crate) fn test_event(raw: Value, received_at_ms: i64) -> Event {
    let blocklist = Blocklist::default();
    let envelope = Envelope {
        source: "web",
        received_at_ms,
        implied_type: None,
        context: None,
        integrations: None,
        sent_at: None,
        blocklist: &blocklist,
        timestamp_future_ms_max: crate::model::time::TIMESTAMP_FUTURE_DEFAULT_MS_MAX,
    };
    normalize(raw, &envelope, || unreachable!("tests give messageIds")).expect("valid event")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn timestamps_format_as_the_formatting_machinery_would() {
        let reference = |ms: i64| {
            format_with_machinery(
                OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
                    .expect("in range"),
            )
        };
        let year_0 = -62_167_219_200_000;
        let year_9999_end = 253_402_300_799_999;
        let mut cases = vec![0, 1, 999, 1_000, -1, year_0, year_9999_end, 951_782_400_000];
        let mut x: i64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            cases.push(x.rem_euclid(year_9999_end - year_0) + year_0);
        }
        for ms in cases {
            assert_eq!(format_ms(ms), reference(ms), "{ms}");
        }
        assert_eq!(format_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(format_ms(year_0 - 1), "-001-12-31T23:59:59.999Z");
    }

    const RECEIVED: i64 = 1_764_000_000_000;
    const HOUR_MS: i64 = 3_600_000;

    fn run(raw: Value, implied: Option<MessageType>) -> Result<Event, Rejection> {
        let blocklist = Blocklist::default();
        let envelope = Envelope {
            source: "web",
            received_at_ms: RECEIVED,
            implied_type: implied,
            context: None,
            integrations: None,
            sent_at: None,
            blocklist: &blocklist,
            timestamp_future_ms_max: HOUR_MS,
        };
        normalize(raw, &envelope, || "generated".into())
    }

    fn code(raw: Value, implied: Option<MessageType>) -> &'static str {
        match run(raw, implied) {
            Ok(_) => "ok",
            Err(rejection) => rejection.code,
        }
    }

    #[test]
    fn spec_requirements_table() {
        use MessageType::*;
        let cases: Vec<(Value, Option<MessageType>, &str)> = vec![
            (json!({"userId": "u1", "event": "E"}), Some(Track), "ok"),
            (
                json!({"anonymousId": "a1", "event": "E"}),
                Some(Track),
                "ok",
            ),
            (json!({"userId": 42, "event": "E"}), Some(Track), "ok"),
            (json!({"event": "E"}), Some(Track), "missing_identity"),
            (
                json!({"userId": "null", "event": "E"}),
                Some(Track),
                "missing_identity",
            ),
            (
                json!({"userId": {"a": 1}, "event": "E"}),
                Some(Track),
                "invalid_field",
            ),
            (json!({"userId": "u1"}), Some(Track), "missing_field"),
            (
                json!({"userId": "u1", "event": ""}),
                Some(Track),
                "missing_field",
            ),
            (
                json!({"userId": "u1", "event": 7}),
                Some(Track),
                "invalid_field",
            ),
            (json!({"userId": "u1"}), Some(Identify), "ok"),
            (json!({"userId": "u1"}), Some(Page), "ok"),
            (json!({"userId": "u1"}), Some(Screen), "ok"),
            (json!({"userId": "u1"}), Some(Group), "missing_field"),
            (json!({"userId": "u1", "groupId": "g"}), Some(Group), "ok"),
            (json!({"userId": "u1"}), Some(Alias), "missing_field"),
            (
                json!({"userId": "u1", "previousId": "a"}),
                Some(Alias),
                "ok",
            ),
            (
                json!({"previousId": "a", "anonymousId": "b"}),
                Some(Alias),
                "missing_field",
            ),
            (
                json!({"userId": "u", "previousId": "null"}),
                Some(Alias),
                "invalid_identity",
            ),
            (
                json!({"userId": "u1", "type": "track", "event": "E"}),
                None,
                "ok",
            ),
            (json!({"userId": "u1"}), None, "missing_field"),
            (
                json!({"userId": "u1", "type": "purchase"}),
                None,
                "invalid_type",
            ),
            (
                json!({"userId": "u1", "properties": []}),
                Some(Page),
                "invalid_field",
            ),
            (
                json!({"userId": "u1", "messageId": 5}),
                Some(Page),
                "invalid_field",
            ),
            (
                json!({"userId": "u1", "timestamp": "yesterday"}),
                Some(Page),
                "invalid_timestamp",
            ),
            (
                json!({"userId": "u1", "sentAt": 17}),
                Some(Page),
                "invalid_timestamp",
            ),
            (
                json!({"userId": "u1", "timestamp": "9999-12-31T23:59:59Z"}),
                Some(Identify),
                "timestamp_out_of_range",
            ),
            (
                json!({"userId": "u1", "timestamp": "1970-01-01T00:00:00Z"}),
                Some(Identify),
                "timestamp_out_of_range",
            ),
            (
                // The client's clock is a year ahead, but sentAt corrects it.
                json!({"userId": "u1", "timestamp": "2026-11-24T15:59:00Z",
                       "sentAt": "2026-11-24T16:00:00Z"}),
                Some(Identify),
                "ok",
            ),
            (
                // Dated 2 h after its sentAt: corrected, still past the 1 h allowance.
                json!({"userId": "u1", "timestamp": "2025-11-24T18:00:00Z",
                       "sentAt": "2025-11-24T16:00:00Z"}),
                Some(Identify),
                "timestamp_out_of_range",
            ),
            (
                json!(["not", "an", "object"]),
                Some(Page),
                "invalid_message",
            ),
        ];
        for (raw, implied, want) in cases {
            assert_eq!(code(raw.clone(), implied), want, "{raw}");
        }
    }

    #[test]
    fn timestamp_is_corrected_for_client_clock_skew() {
        // The client's clock is 1 hour fast: it says it sent at 11:00 an event from 10:59:30.
        let event = run(
            json!({
                "userId": "u1", "event": "E",
                "timestamp": "2025-11-24T10:59:30.000Z",
                "sentAt": "2025-11-24T11:00:00.000Z"
            }),
            Some(MessageType::Track),
        )
        .expect("valid");
        assert_eq!(event.timestamp_ms, RECEIVED - 30_000);
        let body: Value = serde_json::from_str(&event.body_json).expect("json");
        assert_eq!(body["originalTimestamp"], "2025-11-24T10:59:30.000Z");
        assert_eq!(body["receivedAt"], format_ms(RECEIVED));
        assert_eq!(body["timestamp"], format_ms(RECEIVED - 30_000));

        // No sentAt: the client's timestamp is taken as is.
        let event = run(
            json!({"userId": "u1", "event": "E", "timestamp": "2025-11-24T10:59:30Z"}),
            Some(MessageType::Track),
        )
        .expect("valid");
        assert_eq!(format_ms(event.timestamp_ms), "2025-11-24T10:59:30.000Z");

        // No client time at all: the receive time.
        let event = run(
            json!({"userId": "u1", "event": "E"}),
            Some(MessageType::Track),
        )
        .expect("valid");
        assert_eq!(event.timestamp_ms, RECEIVED);
    }

    #[test]
    fn batch_context_merges_and_identities_are_extracted() {
        let blocklist = Blocklist::default();
        let context = json!({"library": {"name": "analytics-node"}, "ip": "1.2.3.4"});
        let envelope = Envelope {
            source: "web",
            received_at_ms: RECEIVED,
            implied_type: None,
            context: context.as_object(),
            integrations: None,
            sent_at: None,
            blocklist: &blocklist,
            timestamp_future_ms_max: HOUR_MS,
        };
        let raw = json!({
            "type": "identify", "userId": "u1", "anonymousId": "undefined",
            "writeKey": "secret",
            "traits": {"email": "Ada@Example.com", "plan": "pro"},
            "context": {"ip": "9.9.9.9", "traits": {"phone": "+1 555 0100"},
                        "externalIds": [{"id": "c-7", "type": "Shopify_ID"}, {"id": "x"}]}
        });
        let event = normalize(raw, &envelope, || "generated".into()).expect("valid");
        let keys: Vec<String> = event.identities.iter().map(Identity::key).collect();
        assert_eq!(
            keys,
            [
                "user_id:u1",
                "email:ada@example.com",
                "phone:+15550100",
                "ext.shopify_id:c-7"
            ]
        );
        assert_eq!(event.message_id, "generated");
        let body: Value = serde_json::from_str(&event.body_json).expect("json");
        assert_eq!(body["context"]["ip"], "9.9.9.9", "item keys win");
        assert_eq!(body["context"]["library"]["name"], "analytics-node");
        assert!(
            body.get("writeKey").is_none(),
            "the write key is never stored"
        );
        let traits: Value =
            serde_json::from_str(event.traits_json.as_deref().expect("traits")).expect("json");
        assert_eq!(traits["plan"], "pro");
        assert_eq!(traits["phone"], "+1 555 0100");
    }
}
