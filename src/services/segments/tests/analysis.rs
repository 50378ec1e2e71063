//! What the service learns from a rule without evaluating it, and segment ordering.

use std::collections::{BTreeMap, BTreeSet};

use super::rule;
use crate::services::segments::check_cycles;

const DAY_MS: i64 = 86_400_000;

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// `(rule, segment refs, time dependent, event names, longest window)`.
type Case = (
    &'static str,
    &'static [&'static str],
    bool,
    &'static [&'static str],
    Option<i64>,
);

const CASES: &[Case] = &[
    ("plan == 1", &[], false, &[], None),
    (
        r#"lifetime_value > 500 and event("Order Completed").within(30d).count() >= 2 and not in_segment("churned")"#,
        &["churned"],
        true,
        &["Order Completed"],
        Some(30 * DAY_MS),
    ),
    (
        r#"event("A").exists() or event("B").count() > 2"#,
        &[],
        false,
        &["A", "B"],
        None,
    ),
    (
        r#"not (event("A").within(12h).exists() or in_segment("x")) and (in_segment("y") or event("A").within(90m).count() in [1]) and in_segment("x")"#,
        &["x", "y"],
        true,
        &["A"],
        Some(12 * 3_600_000),
    ),
    (
        r#"event("A").within(400d).count() > 1 or event("B").within(7d).exists() or event("A").count() > 9"#,
        &[],
        true,
        &["A", "B"],
        Some(400 * DAY_MS),
    ),
];

#[test]
fn static_facts_about_rules() {
    for (text, refs, timed, names, window) in CASES {
        let expr = rule(text);
        assert_eq!(expr.segment_refs(), set(refs), "refs of {text}");
        assert_eq!(
            expr.is_time_dependent(),
            *timed,
            "time dependence of {text}"
        );
        assert_eq!(expr.event_names(), set(names), "events of {text}");
        assert_eq!(expr.max_window_ms(), *window, "window of {text}");
    }
}

fn defs(items: &[(&str, &str)]) -> BTreeMap<String, crate::services::segments::Expr> {
    items
        .iter()
        .map(|(id, text)| (id.to_string(), rule(text)))
        .collect()
}

#[test]
fn value_names_say_which_traits_a_rule_reads() {
    let (names, profile_traits) = rule("a > 1 and computed(\"b\") == 2").value_names();
    assert_eq!(names.into_iter().collect::<Vec<_>>(), ["a", "b"]);
    assert!(profile_traits, "a bare name may be a profile trait");
    let (names, profile_traits) =
        rule("computed(\"b\") == 2 or event(\"X\").exists()").value_names();
    assert_eq!(names.into_iter().collect::<Vec<_>>(), ["b"]);
    assert!(!profile_traits);
    let (names, profile_traits) = rule("trait(\"plan\") in [\"pro\"]").value_names();
    assert!(names.is_empty());
    assert!(profile_traits);
}

#[test]
fn segments_are_ordered_after_what_they_use() {
    // (segment definitions as (id, rule), the evaluation order wanted)
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str]);
    let cases: &[Case] = &[
        (&[], &[]),
        (&[("a", "x == 1")], &["a"]),
        (
            &[
                ("c", r#"in_segment("b")"#),
                ("b", r#"in_segment("a")"#),
                ("a", "x == 1"),
            ],
            &["a", "b", "c"],
        ),
        // A diamond; ties go to the smallest id.
        (
            &[
                ("top", r#"in_segment("left") and in_segment("right")"#),
                ("left", r#"in_segment("base")"#),
                ("right", r#"in_segment("base")"#),
                ("base", "x == 1"),
                ("alone", "y == 1"),
            ],
            &["alone", "base", "left", "right", "top"],
        ),
        // Unknown ids are not dependencies.
        (&[("a", r#"in_segment("ghost")"#)], &["a"]),
    ];
    for (items, order) in cases {
        let got = check_cycles(&defs(items)).expect("no cycle");
        assert_eq!(got, *order, "defs {items:?}");
    }
}

#[test]
fn cycles_are_described() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("a", r#"in_segment("a")"#)], "segment cycle: a → a"),
        (
            &[
                ("a", r#"in_segment("b")"#),
                ("b", r#"x == 1 or in_segment("a")"#),
            ],
            "segment cycle: a → b → a",
        ),
        (
            &[
                ("a", r#"in_segment("b")"#),
                ("b", r#"in_segment("c")"#),
                ("c", r#"not in_segment("b")"#),
                ("d", "x == 1"),
                ("e", r#"in_segment("a")"#),
            ],
            "segment cycle: b → c → b",
        ),
    ];
    for (items, description) in cases {
        assert_eq!(
            check_cycles(&defs(items)),
            Err(description.to_string()),
            "defs {items:?}"
        );
    }
}

#[test]
fn long_chains_order_without_recursion() {
    let n = 5_000;
    let mut defs = BTreeMap::new();
    for i in 0..n {
        let text = if i == 0 {
            "x == 1".to_string()
        } else {
            format!(r#"in_segment("s{:05}")"#, i - 1)
        };
        defs.insert(format!("s{i:05}"), rule(&text));
    }
    let order = check_cycles(&defs).expect("a chain has no cycle");
    let expected: Vec<String> = (0..n).map(|i| format!("s{i:05}")).collect();
    assert_eq!(order, expected);
    defs.insert(
        "s00000".into(),
        rule(&format!(r#"in_segment("s{:05}")"#, n - 1)),
    );
    let cycle = check_cycles(&defs).expect_err("now a ring");
    // "a → b" reads "a uses b".
    let start = format!("segment cycle: s00000 → s{:05} → s{:05} → ", n - 1, n - 2);
    assert!(cycle.starts_with(&start), "{}", &cycle[..80]);
    assert!(cycle.ends_with("s00001 → s00000"));
}
