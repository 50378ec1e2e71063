//! Evaluation against one in-memory profile: missing values, numbers and strings,
//! `in`/`contains`, windows, precedence and nested segments.

use serde_json::{Value, json};

use super::{MemFacts, rule};
use crate::services::segments::evaluate;

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;

fn profile() -> MemFacts {
    let mut facts = MemFacts::default();
    let traits = [
        ("plan", json!("pro")),
        ("lifetime_value", json!(650.5)),
        ("orders_count", json!("3")),
        ("email_domain", json!("acme.com")),
        ("favorite_category", json!("shoes")),
        ("tags", json!(["vip", "beta", 7, "12"])),
        ("bio", json!("Loves Running shoes")),
        ("is_vip", json!(true)),
        ("nickname", Value::Null),
        ("signup", json!("2024-03-01")),
        ("zip", json!("02139")),
        ("odd_number", json!("1e3")),
        ("padded", json!(" 4")),
    ];
    for (name, value) in traits {
        facts.traits.insert(name.to_string(), value);
    }
    // A computed trait shadows the profile trait of the same name for bare names.
    facts.computed.insert("lifetime_value".into(), json!(700));
    facts.computed.insert("last_csat".into(), json!(2));
    facts.computed.insert("no_score".into(), Value::Null);
    facts.traits.insert("no_score".into(), json!(5));
    let events = [
        ("Order Completed", HOUR_MS),
        ("Order Completed", 10 * DAY_MS),
        ("Order Completed", 40 * DAY_MS),
        ("Ticket Opened", 3 * DAY_MS),
    ];
    for (name, age) in events {
        facts.events.push((name.to_string(), age));
    }
    let segments = [
        ("vip", "lifetime_value > 500"),
        (
            "churned",
            r#"event("Order Completed").within(30d).count() == 0"#,
        ),
        ("vip_pro", r#"in_segment("vip") and plan == "pro""#),
        (
            "vip_pro_active",
            r#"in_segment("vip_pro") and not in_segment("churned")"#,
        ),
    ];
    for (id, text) in segments {
        facts.segments.insert(id.to_string(), rule(text));
    }
    facts
}

/// `(rule, expected)` against [`profile`].
const CASES: &[(&str, bool)] = &[
    // The brief's examples.
    (
        r#"lifetime_value > 500 and event("Order Completed").within(30d).count() >= 2 and not in_segment("churned")"#,
        true,
    ),
    (r#"trait("plan") == "pro" or orders_count >= 3"#, true),
    (
        r#"event("Ticket Opened").within(7d).exists() and last_csat <= 2"#,
        true,
    ),
    (
        r#"favorite_category in ["shoes", "bags"] and email_domain != "example.com""#,
        true,
    ),
    // Bare names: computed first, then profile; explicit forms read one source.
    ("lifetime_value == 700", true),
    ("lifetime_value == 650.5", false),
    (r#"trait("lifetime_value") == 650.5"#, true),
    (r#"computed("lifetime_value") == 700"#, true),
    (r#"computed("plan") == "pro""#, false),
    (r#"trait("last_csat") == null"#, true),
    ("no_score == null", true),
    (r#"trait("no_score") == 5"#, true),
    // Strings: exact and case-sensitive; names are case-sensitive too.
    (r#"plan == "pro""#, true),
    (r#"plan == "Pro""#, false),
    (r#"PLAN == "pro""#, false),
    (r#"plan != "Pro""#, true),
    (r#"signup >= "2024-01-01" and signup < "2024-04""#, true),
    (r#"plan > "a""#, true),
    // Numbers, and numeric strings read as numbers.
    ("orders_count >= 3 and orders_count < 3.5", true),
    ("orders_count == 3.0", true),
    (r#"orders_count == "3""#, true),
    (r#"lifetime_value == "700""#, false),
    ("zip == 2139", true),
    (r#"zip == "2139""#, false),
    ("odd_number == 1000 or odd_number > 0", false),
    ("padded == 4", false),
    (
        "lifetime_value > -1 and last_csat >= 2 and last_csat <= 2",
        true,
    ),
    (r#"lifetime_value > "500""#, false),
    // Booleans equal only booleans.
    ("is_vip == true", true),
    ("is_vip != false", true),
    (r#"is_vip == "true""#, false),
    ("is_vip == 1", false),
    // Missing values and null: equal to null, false for everything else, `!=` true.
    ("missing == null", true),
    ("missing != null", false),
    ("nickname == null", true),
    ("plan != null", true),
    (r#"missing == "x""#, false),
    (r#"missing != "x""#, true),
    ("missing > 1", false),
    ("missing <= 1", false),
    (r#"missing >= """#, false),
    (r#"missing in ["a", 1]"#, false),
    (r#"missing not in ["a", 1]"#, true),
    ("missing in [null]", true),
    (r#"missing contains "a""#, false),
    (r#"missing not contains "a""#, true),
    (r#"nickname contains "a""#, false),
    // in
    (r#"favorite_category in ["bags", "shoes"]"#, true),
    (r#"favorite_category in ["Shoes"]"#, false),
    ("favorite_category in []", false),
    ("orders_count in [1, 2, 3]", true),
    (r#"tags in ["vip"]"#, false),
    // contains: substring of a string, element of an array.
    (r#"bio contains "Running""#, true),
    (r#"bio contains "running""#, false),
    (r#"bio contains """#, true),
    (r#"tags contains "vip""#, true),
    (r#"tags contains "VIP""#, false),
    ("tags contains 7", true),
    ("tags contains 12", true),
    ("tags contains true", false),
    ("zip contains 21", false),
    (r#"plan not contains "x""#, true),
    ("lifetime_value contains 7", false),
    // Events and windows.
    (r#"event("Order Completed").count() == 3"#, true),
    (r#"event("Order Completed").within(30d).count() == 2"#, true),
    (r#"event("Order Completed").within(2h).count() == 1"#, true),
    (r#"event("Order Completed").within(59m).count() == 0"#, true),
    (
        r#"event("Order Completed").within(400d).count() in [3, 4]"#,
        true,
    ),
    (r#"event("Order Completed").count() != 3"#, false),
    (r#"event("Ticket Opened").within(7d).exists()"#, true),
    (r#"event("Ticket Opened").within(72h).exists()"#, false),
    (r#"event("ticket opened").exists()"#, false),
    (r#"event("Never").exists()"#, false),
    (
        r#"event("Never").count() == 0 and event("Never").count() < 1"#,
        true,
    ),
    // Segments, nested through one another.
    (r#"in_segment("vip")"#, true),
    (r#"in_segment("churned")"#, false),
    (r#"in_segment("vip_pro")"#, true),
    (r#"in_segment("vip_pro_active")"#, true),
    (r#"in_segment("nobody_defined_this")"#, false),
    // Precedence: not > and > or.
    (
        r#"plan == "basic" and missing == null or is_vip == true"#,
        true,
    ),
    (
        r#"plan == "basic" and (missing == null or is_vip == true)"#,
        false,
    ),
    (r#"not plan == "pro" and is_vip == false"#, false),
    (r#"not (plan == "pro" and is_vip == false)"#, true),
    (r#"not not plan == "pro""#, true),
];

#[test]
fn evaluation_table() {
    let facts = profile();
    for (text, expected) in CASES {
        assert_eq!(evaluate(&rule(text), &facts), *expected, "rule: {text}");
    }
}

#[test]
fn not_equal_is_always_the_negation_of_equal() {
    let facts = profile();
    let operands = [
        "plan",
        "missing",
        "nickname",
        "orders_count",
        "lifetime_value",
        "tags",
        "is_vip",
        "zip",
        r#"trait("lifetime_value")"#,
    ];
    let literals = [
        "null", "true", "3", "700", "2139", r#""pro""#, r#""3""#, r#""""#,
    ];
    for operand in operands {
        for literal in literals {
            let eq = evaluate(&rule(&format!("{operand} == {literal}")), &facts);
            let ne = evaluate(&rule(&format!("{operand} != {literal}")), &facts);
            let not_eq = evaluate(&rule(&format!("not {operand} == {literal}")), &facts);
            assert_eq!(ne, !eq, "{operand} vs {literal}");
            assert_eq!(ne, not_eq, "{operand} vs {literal}");
        }
    }
}

#[test]
fn an_empty_profile_matches_only_negative_rules() {
    let empty = MemFacts::default();
    for (text, _) in CASES {
        // Must not panic; the answer is whatever the semantics say.
        let _ = evaluate(&rule(text), &empty);
    }
    assert!(evaluate(&rule("x != 1 and y == null"), &empty));
    assert!(!evaluate(&rule(r#"x == 1 or event("A").exists()"#), &empty));
}
