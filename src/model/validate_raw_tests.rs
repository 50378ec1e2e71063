//! The raw path gives exactly what the `Value` path gives, for every kind of input and
//! envelope, and takes the fast way for ordinary messages.

use serde_json::{Value, json};

use super::*;
use crate::model::event::MessageType;
use crate::model::identity::Blocklist;
use crate::model::validate::normalize;

const RECEIVED: i64 = 1_764_000_000_000;

/// Messages covering every rule, both key orders, whitespace, escapes and repeats.
const MESSAGES: &[&str] = &[
    r#"{"anonymousId":"a1","context":{"ip":"1.2.3.4","library":{"name":"analytics.js","version":"2.1"}},"event":"Order Completed","messageId":"m1","properties":{"price":12.99,"qty":2,"sku":"X"},"timestamp":"2025-11-24T10:00:00.000Z","type":"track","userId":"u1"}"#,
    r#"{"type":"track","userId":"u1","event":"Viewed","properties":{"z":1,"a":[1, 2],"m":{"y":1.50,"x":"\/"}},"messageId":"m2"}"#,
    r#"{ "type" : "identify", "userId" : 42, "traits" : { "email" : "Ada@Example.com", "plan" : "pro" } }"#,
    r#"{"type":"identify","anonymousId":"a9","context":{"traits":{"phone":"+1 555 0100","email":"x@y.z"},"externalIds":[{"id":"c-7","type":"Shopify_ID"}]},"traits":{"name":"N"}}"#,
    r#"{"type":"alias","userId":"u2","previousId":"a2","writeKey":"secret"}"#,
    r#"{"type":"group","userId":"u2","groupId":"g1","traits":{"industry":"x"}}"#,
    r#"{"type":"page","anonymousId":"a3","name":"Home","properties":null,"context":null,"integrations":{"All":false}}"#,
    r#"{"type":"screen","userId":"u\u00e9\"q","name":"S\tx","k\u0065y":"v","dup":1,"dup":2}"#,
    r#"{"type":"track","userId":"u1","event":"E","timestamp":"2025-11-24T10:59:30Z","sentAt":"2025-11-24T11:00:00Z"}"#,
    r#"{"type":"track","userId":"u1","event":"E","originalTimestamp":"2025-11-24T10:59:00Z","timestamp":"2025-11-24T10:00:00Z"}"#,
    r#"{"type":"track","userId":"u1","event":"E","timestamp":null,"sentAt":null}"#,
    r#"{"type":"track","userId":"u1","event":"E","properties":{"big":18446744073709551616,"neg":-0,"e":1e3}}"#,
    r#"{"type":"track","userId":"u1","event":"E","properties":{"emoji":"\ud83d\ude00"}}"#,
    r#"{"type":"track","userId":"u1","event":"E","properties":{"huge":1e400}}"#,
    r#"{"type":"track","event":"E","properties":{"huge":1e400}}"#,
    r#"{"type":"track","event":"E"}"#,
    r#"{"type":"track","userId":"null","event":"E"}"#,
    r#"{"type":"track","userId":{"a":1},"event":"E"}"#,
    r#"{"type":"track","userId":"u1"}"#,
    r#"{"type":"track","userId":"u1","event":7}"#,
    r#"{"type":"purchase","userId":"u1"}"#,
    r#"{"userId":"u1"}"#,
    r#"{"type":"page","userId":"u1","properties":[]}"#,
    r#"{"type":"page","userId":"u1","context":"ctx"}"#,
    r#"{"type":"page","userId":"u1","integrations":5}"#,
    r#"{"type":"page","userId":"u1","messageId":5}"#,
    r#"{"type":"page","userId":"u1","messageId":"  "}"#,
    r#"{"type":"page","userId":"u1","timestamp":"yesterday"}"#,
    r#"{"type":"page","userId":"u1","timestamp":"9999-12-31T23:59:59Z"}"#,
    r#"{"type":"alias","userId":"u","previousId":"null"}"#,
    r#"{"type":"group","userId":"u1"}"#,
    r#"["not","an","object"]"#,
    r#""text""#,
    r#"{"type":"track","userId":"u1","event":"E","properties":{"x":[[[[[[[[[[1]]]]]]]]]]}}"#,
];

fn check_all(envelope: &Envelope<'_>) -> usize {
    let prepared = Prepared::new(envelope);
    let mut fast = 0;
    for text in MESSAGES {
        let Some((message_id, result)) = prepared.normalize(text, || "generated".into()) else {
            continue;
        };
        fast += 1;
        let value: Value = serde_json::from_str(text).expect("the fast path took an unparsable message");
        let want_id = value.get("messageId").and_then(Value::as_str).map(str::to_owned);
        let want = normalize(value, envelope, || "generated".into());
        assert_eq!(result, want, "{text}");
        match &result {
            Ok(event) => assert_eq!(message_id.as_deref(), Some(event.message_id.as_str())),
            Err(_) => assert_eq!(message_id, want_id, "{text}"),
        }
    }
    fast
}

fn envelope<'a>(
    blocklist: &'a Blocklist,
    context: Option<&'a Map<String, Value>>,
    integrations: Option<&'a Map<String, Value>>,
    sent_at: Option<&'a Value>,
    implied_type: Option<MessageType>,
) -> Envelope<'a> {
    Envelope {
        source: "web",
        received_at_ms: RECEIVED,
        implied_type,
        context,
        integrations,
        sent_at,
        blocklist,
        timestamp_future_ms_max: 24 * 3_600_000,
    }
}

#[test]
fn the_raw_path_agrees_with_the_value_path_without_batch_fields() {
    let blocklist = Blocklist::default();
    let fast = check_all(&envelope(&blocklist, None, None, None, None));
    // Only the non-objects, the out-of-range number, the surrogates fall back.
    assert!(fast >= MESSAGES.len() - 5, "{fast} of {}", MESSAGES.len());
    check_all(&envelope(&blocklist, None, None, None, Some(MessageType::Identify)));
}

#[test]
fn the_raw_path_agrees_with_the_value_path_with_batch_fields() {
    let blocklist = Blocklist::default();
    let context = json!({"library": {"name": "analytics-node"}, "ip": "9.9.9.9",
                         "traits": {"email": "batch@example.com"},
                         "externalIds": [{"id": "b-1", "type": "crm_id"}]});
    let integrations = json!({"All": true, "Mixpanel": false});
    let empty = json!({});
    let sent_at = json!("2025-11-24T11:00:00.000Z");
    let bad_sent_at = json!(17);
    let cases = [
        (Some(&context), Some(&integrations), Some(&sent_at)),
        (Some(&empty), Some(&empty), None),
        (None, None, Some(&bad_sent_at)),
        (Some(&context), None, Some(&Value::Null)),
    ];
    for (context, integrations, sent) in cases {
        let fast = check_all(&envelope(
            &blocklist,
            context.and_then(Value::as_object),
            integrations.and_then(Value::as_object),
            sent,
            None,
        ));
        assert!(fast > MESSAGES.len() / 2, "{fast}");
    }
}

#[test]
fn an_ordinary_message_is_copied_not_reprinted() {
    let blocklist = Blocklist::default();
    let envelope = envelope(&blocklist, None, None, None, None);
    let prepared = Prepared::new(&envelope);
    let (_, event) = prepared.normalize(MESSAGES[0], || unreachable!()).expect("fast path");
    let event = event.expect("valid");
    // The parts that arrived canonical are in the body verbatim.
    assert!(event.body_json.contains(r#""properties":{"price":12.99,"qty":2,"sku":"X"}"#));
    assert!(event.body_json.contains(r#""originalTimestamp":"2025-11-24T10:00:00.000Z""#));
}
