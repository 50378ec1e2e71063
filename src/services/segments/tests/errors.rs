//! Invalid rules: each error names the line, the column and what was wanted, in words;
//! and the limits on size and nesting.

use super::{assert_round_trip, rule};
use crate::services::segments::{NESTING_DEPTH_MAX, RULE_TEXT_BYTES_MAX, SegmentError, parse};

/// `(input, line, column, text the message must contain)`.
const INVALID: &[(&str, usize, usize, &str)] = &[
    // Syntax, reported by the grammar.
    (
        "lifetime_value 500",
        1,
        16,
        "expected a comparison operator (==, !=, >, >=, <, <=, in, contains)",
    ),
    ("is_vip", 1, 7, "expected a comparison operator"),
    ("a === 1", 1, 5, "expected a value"),
    ("", 1, 1, "expected a condition"),
    ("   ", 1, 4, "expected a condition"),
    ("a > 1 and", 1, 10, "expected a condition"),
    ("a > 1 and or b > 1", 1, 11, "expected a condition"),
    ("(a > 1", 1, 7, "`)`"),
    ("a > 1)", 1, 6, "the end of the rule"),
    (
        "a == 1 b == 2",
        1,
        8,
        "expected `and`, `or` or the end of the rule",
    ),
    ("a > ", 1, 5, "expected a value"),
    ("a >= plan", 1, 6, "expected a value"),
    ("a in 1", 1, 6, "a [list] of values"),
    ("x in [1, [2]]", 1, 10, "expected `]` or a value"),
    (r#"a == "abc"#, 1, 10, "closing \""),
    ("a == \"ab\ncd\"", 1, 9, "closing \""),
    (r#"a == "ab\qc""#, 1, 9, "an escape"),
    ("and > 5", 1, 1, "reserved word"),
    ("x > 1 or in == 2", 1, 10, "reserved word"),
    (r#"trait(plan) == 1"#, 1, 7, "a \"double-quoted string\""),
    (r#"in_segment(vip)"#, 1, 12, "a \"double-quoted string\""),
    ("a == 1e5", 1, 6, "expected a value"),
    ("a == 5d", 1, 6, "expected a value"),
    ("a == -", 1, 6, "expected a value"),
    (r#"event("X").count > 1"#, 1, 18, "`(`"),
    (r#"event("X").within("7d").exists()"#, 1, 19, "a duration"),
    ("a > 1 and\n  b <\n", 3, 1, "expected a value"),
    ("a > 1\r\nand ?", 2, 5, "expected a condition"),
    // Meaning, reported after parsing.
    (
        r#"event("X").within(30).count() > 1"#,
        1,
        19,
        "`30` is not a duration",
    ),
    (r#"event("X").within(0d).count() > 1"#, 1, 19, "at least 1m"),
    (
        r#"event("X").within(401d).exists()"#,
        1,
        19,
        "longest window, 400d",
    ),
    (
        r#"event("X").within(9601h).exists()"#,
        1,
        19,
        "longest window",
    ),
    (
        r#"event("X").within(99999999999d).exists()"#,
        1,
        19,
        "longest window",
    ),
    (r#"event("X").within(7D).exists()"#, 1, 19, "not a duration"),
    (r#"event("X").within().exists()"#, 1, 12, "needs a duration"),
    (
        r#"event("X").total() > 1"#,
        1,
        12,
        "unknown method .total()",
    ),
    (
        r#"event("X").count() == "a""#,
        1,
        23,
        "cannot be compared with the string \"a\"",
    ),
    (
        r#"event("X").count() > null"#,
        1,
        22,
        "cannot be compared with null",
    ),
    (
        r#"event("X").count() in [1, "2"]"#,
        1,
        23,
        "this list holds the string",
    ),
    (
        r#"event("X").count() contains 1"#,
        1,
        29,
        "`contains` looks inside",
    ),
    (
        r#"event("X").count()"#,
        1,
        1,
        ".count() is a number: compare it",
    ),
    (
        r#"event("X").exists() == true"#,
        1,
        21,
        "already a condition",
    ),
    (r#"event("X")"#, 1, 1, "must end with .count()"),
    (r#"event("X").within(7d)"#, 1, 1, "must end with .count()"),
    (
        r#"event("X").count().within(7d) > 1"#,
        1,
        20,
        "nothing can follow",
    ),
    (
        r#"event("X").within(7d).within(1d).exists()"#,
        1,
        23,
        "one .within",
    ),
    (r#"event("X").count(7d) > 1"#, 1, 18, "takes no argument"),
    (
        r#"event("").exists()"#,
        1,
        7,
        "an event name cannot be empty",
    ),
    (r#"trait("") == 1"#, 1, 7, "a trait name cannot be empty"),
    (r#"in_segment("")"#, 1, 12, "a segment id cannot be empty"),
    ("x == [1]", 1, 6, "to test membership write `in [...]`"),
    (
        "x > true",
        1,
        5,
        "orders numbers or strings, not the boolean true",
    ),
    ("x <= null", 1, 6, "orders numbers or strings, not null"),
    (
        "x contains null",
        1,
        12,
        "a string, number or boolean, not null",
    ),
    ("x contains [1]", 1, 12, "not a list"),
    (r#"a == "\u{d800}""#, 1, 7, "is not a Unicode character"),
    (r#"a == "\u{110000}""#, 1, 7, "is not a Unicode character"),
    ("é > 1", 1, 1, "expected a condition"),
    ("plan == \"é\" and é > 1", 1, 17, "expected a condition"),
];

#[test]
fn invalid_rules_say_where_and_what() {
    for (input, line, column, wanted) in INVALID {
        let error = match parse(input) {
            Ok(expr) => panic!("{input:?} should fail, parsed as {expr}"),
            Err(e) => e,
        };
        let message = error.to_string();
        let at = error.position().expect("a position");
        assert_eq!(
            (at.line, at.column),
            (*line, *column),
            "position for {input:?}:\n{message}"
        );
        assert!(
            message.contains(wanted),
            "{input:?}: wanted {wanted:?} in\n{message}"
        );
        assert!(
            message.starts_with(&format!("line {line}, column {column}: ")),
            "{message}"
        );
    }
}

#[test]
fn errors_show_a_caret_under_the_spot() {
    let error = parse("lifetime_value 500").expect_err("invalid");
    assert_eq!(
        error.to_string(),
        "line 1, column 16: expected a comparison operator (==, !=, >, >=, <, <=, in, \
         contains)\n  lifetime_value 500\n                 ^"
    );
    let error = parse("a > 1 and\n\tb <\n").expect_err("invalid");
    assert!(error.to_string().ends_with("\n  \n  ^"), "{error}");
    let error = parse("a > 1 and\n\tb < x").expect_err("invalid");
    assert!(
        error.to_string().ends_with("\n  \tb < x\n  \t    ^"),
        "{error}"
    );
}

#[test]
fn long_lines_are_cut_around_the_column() {
    let text = format!("{} and zz ?", vec!["a == 1"; 40].join(" and "));
    let error = parse(&text).expect_err("invalid");
    let excerpt = &error.position().expect("position").excerpt;
    let lines: Vec<&str> = excerpt.lines().collect();
    assert_eq!(lines.len(), 2, "{excerpt}");
    assert!(lines[0].starts_with("  …"), "{excerpt}");
    assert!(lines[0].chars().count() <= 2 + 1 + 72 + 1, "{excerpt}");
    let caret = lines[1].chars().count() - 1;
    // `zz` is a trait name; the operator it needs is missing where `?` stands.
    assert_eq!(lines[0].chars().nth(caret), Some('?'), "{excerpt}");
}

#[test]
fn messages_use_words_not_grammar_rule_names() {
    let internal = [
        "cmp_op",
        "comparison_tail",
        "rule_text",
        "kw_",
        "Rule::",
        "EOI",
    ];
    for (input, ..) in INVALID {
        let message = parse(input).expect_err("invalid").to_string();
        for name in internal {
            assert!(
                !message.contains(name),
                "{input:?} leaks {name}:\n{message}"
            );
        }
    }
}

#[test]
fn rule_text_is_at_most_4_kib() {
    let at_limit = format!("a == \"{}\"", "x".repeat(RULE_TEXT_BYTES_MAX - 7));
    assert_eq!(at_limit.len(), RULE_TEXT_BYTES_MAX);
    assert!(parse(&at_limit).is_ok());
    let over = format!("a == \"{}\"", "x".repeat(RULE_TEXT_BYTES_MAX - 6));
    assert_eq!(
        parse(&over),
        Err(SegmentError::TooLong {
            bytes: RULE_TEXT_BYTES_MAX + 1
        })
    );
    let message = parse(&over).expect_err("too long").to_string();
    assert!(
        message.contains("4096 bytes") && message.contains("in_segment"),
        "{message}"
    );
    // A long but shallow rule is fine.
    let wide = vec!["a == 1"; RULE_TEXT_BYTES_MAX / 12].join(" and ");
    assert!(wide.len() <= RULE_TEXT_BYTES_MAX);
    assert!(parse(&wide).is_ok());
}

/// `(rule at the limit, rule one deeper, column of the level too deep)`.
fn nested(depth: usize) -> Vec<(String, String, usize)> {
    let parens = |n: usize| format!("{}a == 1{}", "(".repeat(n), ")".repeat(n));
    let nots = |n: usize| format!("{}a == 1", "not ".repeat(n));
    let mixed = |n: usize| format!("{}a == 1{}", "not (".repeat(n / 2), ")".repeat(n / 2));
    vec![
        (parens(depth), parens(depth + 1), depth + 1),
        (nots(depth), nots(depth + 1), 4 * depth + 1),
        (mixed(depth), mixed(depth + 2), 5 * (depth / 2) + 1),
        // Call parentheses and the infix `not` do not count.
        (
            format!(
                "{}event(\"x\").exists() or b not in [1]{}",
                "(".repeat(depth),
                ")".repeat(depth)
            ),
            format!(
                "{}x not in [1]{}",
                "(".repeat(depth + 1),
                ")".repeat(depth + 1)
            ),
            depth + 1,
        ),
        // Siblings do not add up; `and`/`or` end a run of `not`s.
        (
            format!("{} and {}", parens(depth), parens(depth)),
            "(".repeat(depth + 1) + "a",
            depth + 1,
        ),
        (
            format!("{0}a == 1 or {0}b == 1", "not ".repeat(depth)),
            format!("{0}a == 1 or {0}not b == 1", "not ".repeat(depth)),
            4 * depth + 10 + 4 * depth + 1,
        ),
    ]
}

#[test]
fn nesting_is_at_most_32_deep() {
    for (at_limit, over, column) in nested(NESTING_DEPTH_MAX) {
        let _ = rule(&at_limit);
        match parse(&over) {
            Err(SegmentError::TooDeep { at }) => {
                assert_eq!((at.line, at.column), (1, column), "{over}")
            }
            other => panic!("{over}: expected TooDeep, got {other:?}"),
        }
    }
}

#[test]
fn rules_at_the_nesting_limit_round_trip() {
    for (at_limit, ..) in nested(NESTING_DEPTH_MAX) {
        assert_round_trip(&rule(&at_limit));
    }
}

#[test]
fn pathological_nesting_is_refused_without_recursing() {
    let inputs = [
        "(".repeat(RULE_TEXT_BYTES_MAX),
        "not ".repeat(RULE_TEXT_BYTES_MAX / 4),
        "not(".repeat(RULE_TEXT_BYTES_MAX / 4),
        format!("{}a == 1{}", "(".repeat(2000), ")".repeat(2000)),
    ];
    for input in inputs {
        let error = parse(&input).expect_err("too deep");
        assert!(matches!(error, SegmentError::TooDeep { .. }), "{error}");
    }
}
