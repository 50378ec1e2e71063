//! Property tests on the two parsers hostile input reaches first: the ingest validator
//! (`model::validate::normalize`) and the segment rule parser (`services::segments::parse`).
//! Generated input must never panic them, and what they accept must respect the limits.
//!
//! A short run is part of `cargo test` (256 cases each). A long run:
//! `PROPTEST_CASES=200000 cargo test --release --test fuzz` (see docs/security.md).

use proptest::prelude::*;
use serde_json::{Map, Value, json};
use tandem::model::identity::Blocklist;
use tandem::model::time::{TIMESTAMP_FUTURE_DEFAULT_MS_MAX, TIMESTAMP_MIN_MS};
use tandem::model::validate::{
    EVENT_NAME_BYTES_MAX, EXTERNAL_IDS_MAX, Envelope, MESSAGE_ID_BYTES_MAX, normalize,
};

/// Any JSON value, up to a few levels deep, with strings that include the awkward cases.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,40}".prop_map(Value::String),
        prop_oneof![
            Just("".to_owned()),
            Just("undefined".to_owned()),
            Just("null".to_owned()),
            Just("9999-12-31T23:59:59Z".to_owned()),
            Just("0000-01-01T00:00:00Z".to_owned()),
            Just("2026-11-30T08:00:00.123456789+14:00".to_owned()),
            Just("\u{0}\u{202e}".to_owned()),
            "[a-z]{300}",
        ]
        .prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map(".{0,12}", inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A Segment-like message: the fields the validator looks at, each either plausible or
/// arbitrary, plus arbitrary extra fields.
fn message() -> impl Strategy<Value = Value> {
    let field = |name: &'static str, plausible: BoxedStrategy<Value>| {
        prop_oneof![
            3 => plausible.prop_map(move |v| Some((name, v))),
            1 => any_json().prop_map(move |v| Some((name, v))),
            1 => Just(None),
        ]
    };
    let kinds = prop_oneof![
        Just("track"),
        Just("identify"),
        Just("page"),
        Just("screen"),
        Just("group"),
        Just("alias"),
        Just("bogus"),
    ]
    .prop_map(|k| json!(k))
    .boxed();
    let ids = "[a-zA-Z0-9@._-]{0,20}".prop_map(Value::String).boxed();
    let times = prop_oneof![
        Just(json!("2026-11-30T08:00:00Z")),
        Just(json!("9999-12-31T23:59:59Z")),
        Just(json!("1970-01-01T00:00:00Z")),
        Just(json!("not a time")),
    ]
    .boxed();
    let external = prop::collection::vec(
        ("[a-z_]{0,10}", "[a-z0-9]{0,10}")
            .prop_map(|(t, id)| json!({"type": t, "id": id, "collection": "users"})),
        0..(EXTERNAL_IDS_MAX * 2),
    )
    .prop_map(|ids| json!({"externalIds": ids, "traits": {"email": "a@b.c"}}))
    .boxed();
    (
        field("type", kinds),
        field("userId", ids.clone()),
        field("anonymousId", ids.clone()),
        field("previousId", ids.clone()),
        field("groupId", ids.clone()),
        field("messageId", ids),
        field("event", ".{0,300}".prop_map(Value::String).boxed()),
        field("timestamp", times.clone()),
        field("sentAt", times),
        field("context", external),
        prop::collection::btree_map("[a-z]{1,8}", any_json(), 0..4),
    )
        .prop_map(|(a, b, c, d, e, f, g, h, i, j, extra)| {
            let mut body: Map<String, Value> = extra.into_iter().collect();
            for (name, value) in [a, b, c, d, e, f, g, h, i, j].into_iter().flatten() {
                body.insert(name.to_owned(), value);
            }
            Value::Object(body)
        })
}

/// Segment rule text from the grammar's building blocks (docs/segments.md), nested.
fn rule_text() -> impl Strategy<Value = String> {
    let atom = prop_oneof![
        (
            prop_oneof![Just("=="), Just("!="), Just(">="), Just("<"), Just(">")],
            -1000i64..1000
        )
            .prop_map(|(op, n)| format!("orders_count {op} {n}")),
        "[a-z_]{1,10}".prop_map(|t| format!("trait(\"{t}\") == \"pro\"")),
        (1u32..400, 0u32..20).prop_map(|(days, k)| {
            format!("event(\"Order Completed\").within({days}d).count() >= {k}")
        }),
        "[a-z0-9_-]{1,12}".prop_map(|id| format!("in_segment(\"{id}\")")),
    ];
    atom.prop_recursive(4, 24, 2, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a} and {b}")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a}) or ({b})")),
            inner.clone().prop_map(|a| format!("not ({a})")),
        ]
    })
}

proptest! {
    #[test]
    fn the_validator_never_panics_and_what_it_accepts_is_within_the_limits(
        raw in prop_oneof![message(), any_json()],
        batch_context in proptest::option::of(prop::collection::btree_map("[a-z]{1,8}", any_json(), 0..4)),
    ) {
        let blocklist = Blocklist::new(&[]);
        let context: Option<Map<String, Value>> = batch_context.map(|m| m.into_iter().collect());
        let envelope = Envelope {
            source: "fuzz",
            received_at_ms: 1_795_000_000_000,
            implied_type: None,
            context: context.as_ref(),
            integrations: None,
            sent_at: None,
            blocklist: &blocklist,
            timestamp_future_ms_max: TIMESTAMP_FUTURE_DEFAULT_MS_MAX,
        };
        if let Ok(event) = normalize(raw, &envelope, || "generated-id".to_owned()) {
            prop_assert!(!event.message_id.is_empty());
            prop_assert!(event.timestamp_ms >= TIMESTAMP_MIN_MS);
            prop_assert!(event.timestamp_ms <= envelope.received_at_ms + TIMESTAMP_FUTURE_DEFAULT_MS_MAX);
            prop_assert!(event.message_id.len() <= MESSAGE_ID_BYTES_MAX);
            prop_assert!(event.name.len() <= EVENT_NAME_BYTES_MAX);
            prop_assert!(!event.identities.is_empty(), "an accepted event names someone");
            let body: Value = serde_json::from_str(&event.body_json).expect("the stored body is JSON");
            prop_assert_eq!(body["messageId"].as_str(), Some(event.message_id.as_str()));
            if let Some(traits) = &event.traits_json {
                prop_assert!(serde_json::from_str::<Value>(traits).is_ok_and(|t| t.is_object()));
            }
        }
    }

    #[test]
    fn the_segment_rule_parser_never_panics_and_round_trips_what_it_accepts(
        rule in rule_text(),
        damage in proptest::option::of((any::<prop::sample::Index>(), prop_oneof![
            Just(""), Just("("), Just(")"), Just("\""), Just(" and "), Just("not "),
            Just("=="), Just("1e999"), Just("\u{0}"), Just("é"), Just(".count()"),
        ])),
    ) {
        // A well-formed rule, or the same with a token inserted (or the rest cut off) at a
        // random character boundary.
        let text = match damage {
            None => rule,
            Some((at, token)) => {
                let bounds: Vec<usize> = rule.char_indices().map(|(i, _)| i).chain([rule.len()]).collect();
                let at = bounds[at.index(bounds.len())];
                if token.is_empty() { rule[..at].to_owned() } else { format!("{}{token}{}", &rule[..at], &rule[at..]) }
            }
        };
        if let Ok(expr) = tandem::services::segments::parse(&text) {
            let printed = expr.to_string();
            let again = tandem::services::segments::parse(&printed);
            prop_assert!(again.is_ok(), "{printed:?} (printed from {text:?}) does not parse: {again:?}");
            prop_assert_eq!(again.ok(), Some(expr));
        }
    }
}

#[test]
fn the_segment_rule_parser_refuses_deep_nesting_without_overflowing() {
    for depth in [100, 1_000, 4_000] {
        let text = format!("{}orders_count > 1{}", "(".repeat(depth), ")".repeat(depth));
        assert!(
            tandem::services::segments::parse(&text).is_err(),
            "depth {depth}"
        );
        let text = format!("{}orders_count > 1", "not ".repeat(depth));
        assert!(
            tandem::services::segments::parse(&text).is_err(),
            "not x {depth}"
        );
    }
}
