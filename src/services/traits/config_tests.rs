//! The `[[computed_traits]]` configuration: its TOML shape, shape errors from the
//! deserializer, and every rule of `validate_defs`.

use figment::Figment;
use figment::providers::Serialized;
use serde::{Deserialize, Serialize};

use super::test_support::{def, from_toml};
use super::{
    DEFS_MAX, EventFilter, EventNames, PropertyPath, TraitDef, TraitError, TraitKind, default_defs,
    validate_defs,
};
use crate::model::event::MessageType;

const EXAMPLE: &str = r#"
[[computed_traits]]
name = "lifetime_value"
kind = "sum"
event = "Order Completed"
property = "revenue"
window_days = 30

[[computed_traits]]
name = "social_30d"
kind = "count"
event = ["Post Liked", "Post Shared"]
window_days = 30

[[computed_traits]]
name = "open_tickets"
kind = "net_count"
event = "Ticket Opened"
minus_event = "Ticket Resolved"

[[computed_traits]]
name = "category_pages"
kind = "count"
event = { names = "Category", type = "page" }

[[computed_traits]]
name = "screens"
kind = "last_at"
event = { type = "screen" }

[[computed_traits]]
name = "platforms"
kind = "unique"
event = "*"
property = "products[].category"
"#;

#[test]
fn the_toml_shape() {
    let defs = from_toml(EXAMPLE).expect("example parses");
    let expected = vec![
        def(
            "lifetime_value",
            TraitKind::Sum,
            EventFilter::named("Order Completed"),
            Some("revenue"),
            Some(30),
        ),
        def(
            "social_30d",
            TraitKind::Count,
            EventFilter::any_of(&["Post Liked", "Post Shared"]),
            None,
            Some(30),
        ),
        TraitDef {
            minus_event: Some(EventFilter::named("Ticket Resolved")),
            ..def(
                "open_tickets",
                TraitKind::NetCount,
                EventFilter::named("Ticket Opened"),
                None,
                None,
            )
        },
        def(
            "category_pages",
            TraitKind::Count,
            EventFilter {
                names: EventNames::Only(vec!["Category".into()]),
                message_type: Some(MessageType::Page),
            },
            None,
            None,
        ),
        def(
            "screens",
            TraitKind::LastAt,
            EventFilter {
                names: EventNames::Any,
                message_type: Some(MessageType::Screen),
            },
            None,
            None,
        ),
        def(
            "platforms",
            TraitKind::Unique,
            EventFilter {
                names: EventNames::Any,
                message_type: None,
            },
            Some("products[].category"),
            None,
        ),
    ];
    assert_eq!(defs, expected);
    assert_eq!(validate_defs(&defs), Ok(()));
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Doc {
    computed_traits: Vec<TraitDef>,
}

/// The node's configuration layers defaults through figment's `Serialized` provider, so
/// the definitions must serialize back into the shape they parse from.
#[test]
fn definitions_round_trip_as_configuration_defaults() {
    let mut defs = default_defs();
    defs.extend(from_toml(EXAMPLE).expect("example parses"));
    let doc = Doc {
        computed_traits: defs,
    };
    let back: Doc = Figment::from(Serialized::defaults(&doc))
        .extract()
        .expect("round trip");
    assert_eq!(back, doc);
    let json = serde_json::to_value(&doc).expect("serializes");
    assert_eq!(json["computed_traits"][5]["minus_event"], "Ticket Resolved");
    assert_eq!(json["computed_traits"][8]["event"][1], "Post Shared");
    assert_eq!(json["computed_traits"][12]["event"]["type"], "page");
    assert_eq!(json["computed_traits"][13]["event"]["type"], "screen");
    assert_eq!(json["computed_traits"][14]["event"], "*");
}

#[test]
fn shape_errors_name_the_key() {
    let base = "[[computed_traits]]\nname = \"t\"\nevent = \"E\"\n";
    let cases = [
        ("kind = \"summ\"", "found `summ`"),
        ("kind = \"sum\"\nproperty = \"a[0]\"", "'[' and ']'"),
        (
            "kind = \"count\"\nevent = { type = \"trak\" }",
            "unknown message type \"trak\"",
        ),
        (
            "kind = \"count\"\nevent = { name = \"E\" }",
            "a table { names = [...], type = \"track\" }",
        ),
        ("kind = \"count\"\nwindows_days = 3", "windows_days"),
        ("kind = \"count\"\nwindow_days = -1", "window_days"),
    ];
    for (extra, expected) in cases {
        // A later `event` overrides the base one only through a fresh table.
        let text = if extra.contains("event =") {
            format!("[[computed_traits]]\nname = \"t\"\n{extra}\n")
        } else {
            format!("{base}{extra}\n")
        };
        let error = from_toml(&text).expect_err(&text);
        assert!(error.contains(expected), "{text}\n→ {error}");
    }
}

fn problems(defs: &[TraitDef]) -> Vec<String> {
    match validate_defs(defs) {
        Ok(()) => Vec::new(),
        Err(TraitError::Invalid(problems)) => problems,
        Err(other) => vec![other.to_string()],
    }
}

#[test]
fn every_rule_names_its_field() {
    let count = |name: &str| def(name, TraitKind::Count, EventFilter::named("E"), None, None);
    let with = |edit: fn(&mut TraitDef)| {
        let mut def = count("t");
        edit(&mut def);
        def
    };
    let cases: Vec<(TraitDef, &str)> = vec![
        (count(""), "computed_traits[0].name = \"\": use lower-case"),
        (count("Lifetime"), "computed_traits[0].name = \"Lifetime\""),
        (count("a-b"), "computed_traits[0].name = \"a-b\""),
        (count(&"a".repeat(65)), "longer than 64 characters"),
        (
            with(|d| d.kind = TraitKind::Sum),
            "computed_traits[0].property: kind = \"sum\" needs a property",
        ),
        (
            with(|d| d.kind = TraitKind::Unique),
            "kind = \"unique\" needs a property",
        ),
        (
            with(|d| d.property = PropertyPath::parse("revenue").ok()),
            "computed_traits[0].property: kind = \"count\" reads no property",
        ),
        (
            with(|d| d.kind = TraitKind::NetCount),
            "computed_traits[0].minus_event: kind = \"net_count\" needs",
        ),
        (
            with(|d| d.minus_event = Some(EventFilter::named("X"))),
            "only kind = \"net_count\" uses minus_event",
        ),
        (
            with(|d| {
                d.kind = TraitKind::NetCount;
                d.minus_event = Some(EventFilter::any_of(&[]));
            }),
            "computed_traits[0].minus_event lists no event names",
        ),
        (
            with(|d| d.window_days = Some(0)),
            "computed_traits[0].window_days = 0: use 1 to 3650 days",
        ),
        (
            with(|d| d.window_days = Some(3651)),
            "window_days = 3651: use 1 to 3650",
        ),
        (
            with(|d| {
                d.kind = TraitKind::MostFrequent;
                d.property = PropertyPath::parse("products[].category").ok();
                d.window_days = Some(91);
            }),
            "window_days = 91: kind = \"most_frequent\" keeps values per day",
        ),
        (
            with(|d| d.event = EventFilter::any_of(&[])),
            "computed_traits[0].event lists no event names",
        ),
        (
            with(|d| d.event = EventFilter::any_of(&["A", "*"])),
            "computed_traits[0].event has \"*\" in a list",
        ),
        (
            with(|d| d.event = EventFilter::any_of(&["A", ""])),
            "has an empty event name",
        ),
        (
            with(|d| d.event = EventFilter::named(&"E".repeat(201))),
            "a name longer than 200 characters",
        ),
    ];
    for (def, expected) in cases {
        let found = problems(&[def]);
        assert!(
            found.len() == 1 && found[0].contains(expected),
            "{expected}\n→ {found:?}"
        );
    }
    let names: Vec<String> = (0..=33).map(|i| format!("e{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let too_many = with(|d| d.event = EventFilter::any_of(&[]));
    let too_many = TraitDef {
        event: EventFilter::any_of(&names),
        ..too_many
    };
    assert!(problems(&[too_many])[0].contains("lists 34 names; at most 32"));
}

#[test]
fn all_problems_are_reported_at_once() {
    let defs = from_toml(
        r#"
[[computed_traits]]
name = "Spend"
kind = "sum"
event = "Order Completed"
window_days = 0

[[computed_traits]]
name = "twice"
kind = "count"
event = []

[[computed_traits]]
name = "twice"
kind = "last_at"
event = "E"
property = "x"
"#,
    )
    .expect("shape is fine");
    let found = problems(&defs);
    let expected = [
        "computed_traits[0].name = \"Spend\"",
        "computed_traits[0].property: kind = \"sum\" needs a property",
        "computed_traits[0].window_days = 0",
        "computed_traits[1].event lists no event names",
        "computed_traits[2].name = \"twice\" is used twice",
        "computed_traits[2].property: kind = \"last_at\" reads no property",
    ];
    assert_eq!(found.len(), expected.len(), "{found:#?}");
    for (problem, expected) in found.iter().zip(expected) {
        assert!(problem.contains(expected), "{problem}\n≠ {expected}");
    }
    let text = validate_defs(&defs).map_err(|e| e.to_string()).err();
    assert!(text.is_some_and(|t| t.starts_with("invalid computed traits:\n  - ")));
}

#[test]
fn at_most_defs_max_definitions() {
    let defs: Vec<TraitDef> = (0..=DEFS_MAX)
        .map(|i| {
            def(
                &format!("t{i}"),
                TraitKind::Count,
                EventFilter::named("E"),
                None,
                None,
            )
        })
        .collect();
    let found = problems(&defs);
    assert_eq!(found.len(), 1);
    assert!(found[0].contains("65 definitions; at most 64"), "{found:?}");
    assert_eq!(validate_defs(&defs[..DEFS_MAX]), Ok(()));
}

#[test]
fn the_defaults_are_valid_and_named_as_documented() {
    let defs = default_defs();
    assert_eq!(validate_defs(&defs), Ok(()));
    let names: Vec<&str> = defs.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "orders_count",
            "lifetime_value",
            "avg_order_value",
            "last_order_at",
            "favorite_category",
            "open_tickets",
            "tickets_90d",
            "last_csat",
            "social_engagements_30d",
        ]
    );
}
