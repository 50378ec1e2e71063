//! Valid rules: what they parse to (shown through the canonical text), and round trips.

use super::{assert_round_trip, rule};
use crate::services::segments::{CmpOp, Expr, Literal, Operand, Window, WindowUnit};

/// `(input, canonical text)`.
const CANONICAL: &[(&str, &str)] = &[
    // The brief's examples.
    (
        r#"lifetime_value > 500 and event("Order Completed").within(30d).count() >= 2 and not in_segment("churned")"#,
        r#"lifetime_value > 500 and event("Order Completed").within(30d).count() >= 2 and not in_segment("churned")"#,
    ),
    (
        r#"trait("plan") == "pro" or orders_count >= 3"#,
        r#"trait("plan") == "pro" or orders_count >= 3"#,
    ),
    (
        r#"event("Ticket Opened").within(7d).exists() and last_csat <= 2"#,
        r#"event("Ticket Opened").within(7d).exists() and last_csat <= 2"#,
    ),
    (
        r#"favorite_category in ["shoes", "bags"] and email_domain != "example.com""#,
        r#"favorite_category in ["shoes", "bags"] and email_domain != "example.com""#,
    ),
    // Keywords in any case; names keep theirs.
    (
        r#"Plan == "pro" AND Event("A").WITHIN(30d).Count() > 1 Or NOT In_Segment("x")"#,
        r#"Plan == "pro" and event("A").within(30d).count() > 1 or not in_segment("x")"#,
    ),
    (
        "x == TRUE or y == False or z == NULL",
        "x == true or y == false or z == null",
    ),
    // Whitespace and newlines are free.
    ("a>1\nand\tb<2", "a > 1 and b < 2"),
    (
        "event ( \"A\" ) . within ( 7d ) . exists ( )",
        r#"event("A").within(7d).exists()"#,
    ),
    // Precedence: not > and > or; parentheses kept only where they matter.
    ("a > 1 or b > 2 and c > 3", "a > 1 or b > 2 and c > 3"),
    ("(a > 1 or b > 2) and c > 3", "(a > 1 or b > 2) and c > 3"),
    ("(a > 1 and b > 2) or c > 3", "a > 1 and b > 2 or c > 3"),
    ("((a > 1))", "a > 1"),
    ("(a > 1 or b > 1) or c > 1", "(a > 1 or b > 1) or c > 1"),
    ("not (a == 1)", "not a == 1"),
    ("not not a == 1", "not not a == 1"),
    ("NOT (a == 1 AND b == 2)", "not (a == 1 and b == 2)"),
    // Operators and their negated forms.
    (
        "a != 1 and b >= 2 and c <= 3 and d < 4",
        "a != 1 and b >= 2 and c <= 3 and d < 4",
    ),
    ("x not in [1, 2,]", "x not in [1, 2]"),
    ("x in []", "x in []"),
    ("not x in [1]", "x not in [1]"),
    (r#"x NOT CONTAINS "a""#, r#"x not contains "a""#),
    (
        "tags contains 7 or flags contains true",
        "tags contains 7 or flags contains true",
    ),
    // Numbers.
    (
        "n == -0.50 or n == 007 or n > 12.25",
        "n == -0.5 or n == 7 or n > 12.25",
    ),
    // Strings and escapes.
    (
        r#"s == "tab\there \"q\" \\ \u{e9}\u{1F600}""#,
        "s == \"tab\\there \\\"q\\\" \\\\ \u{e9}\u{1F600}\"",
    ),
    (
        r#"s == "" or s == "Ünïcode""#,
        r#"s == "" or s == "Ünïcode""#,
    ),
    // Operands.
    (
        r#"computed("score") >= 0.75"#,
        r#"computed("score") >= 0.75"#,
    ),
    (
        r#"trait("first name") == "Ada""#,
        r#"trait("first name") == "Ada""#,
    ),
    ("event == 1 or trait == 2", "event == 1 or trait == 2"),
    ("_private_1 == 1", "_private_1 == 1"),
    (
        "android == 1 or order_total > 1",
        "android == 1 or order_total > 1",
    ),
    // Windows keep their unit.
    (
        r#"event("A").within(24h).count() < 5 or event("B").within(90m).exists()"#,
        r#"event("A").within(24h).count() < 5 or event("B").within(90m).exists()"#,
    ),
    (
        r#"event("A").within(400d).count() in [1, 2]"#,
        r#"event("A").within(400d).count() in [1, 2]"#,
    ),
    (r#"event("A").count() != 0"#, r#"event("A").count() != 0"#),
    (r#"in_segment("a \"b\"")"#, r#"in_segment("a \"b\"")"#),
];

#[test]
fn valid_rules_print_canonically() {
    for (input, canonical) in CANONICAL {
        assert_eq!(rule(input).to_string(), *canonical, "input: {input}");
    }
}

#[test]
fn valid_rules_round_trip_through_display_and_serde() {
    for (input, _) in CANONICAL {
        let expr = rule(input);
        assert_round_trip(&expr);
        let json = serde_json::to_string(&expr).expect("serialise");
        let back: Expr = serde_json::from_str(&json).expect("deserialise");
        assert_eq!(back, expr, "serde round trip of {input}");
    }
}

fn named(name: &str, op: CmpOp, n: f64) -> Expr {
    Expr::Compare {
        left: Operand::Named(name.to_string()),
        op,
        right: Literal::Number(n),
    }
}

#[test]
fn trees_have_the_documented_shape() {
    let a = || named("a", CmpOp::Gt, 1.0);
    let b = || named("b", CmpOp::Gt, 2.0);
    let c = || named("c", CmpOp::Gt, 3.0);
    let cases: Vec<(&str, Expr)> = vec![
        (
            "a > 1 or b > 2 and c > 3",
            Expr::Or(vec![a(), Expr::And(vec![b(), c()])]),
        ),
        (
            "(a > 1 or b > 2) and c > 3",
            Expr::And(vec![Expr::Or(vec![a(), b()]), c()]),
        ),
        (
            "not a > 1 and b > 2",
            Expr::And(vec![Expr::Not(Box::new(a())), b()]),
        ),
        (
            r#"x not in ["a"]"#,
            Expr::Not(Box::new(Expr::In {
                left: Operand::Named("x".into()),
                list: vec![Literal::String("a".into())],
            })),
        ),
        (
            r#"event("Order Completed").within(30d).count() >= 2"#,
            Expr::Compare {
                left: Operand::EventCount {
                    event: "Order Completed".into(),
                    within: Some(Window {
                        amount: 30,
                        unit: WindowUnit::Days,
                    }),
                },
                op: CmpOp::Ge,
                right: Literal::Number(2.0),
            },
        ),
        (
            r#"event("X").exists()"#,
            Expr::EventExists {
                event: "X".into(),
                within: None,
            },
        ),
        (
            r#"trait("p") == null"#,
            Expr::Compare {
                left: Operand::Trait("p".into()),
                op: CmpOp::Eq,
                right: Literal::Null,
            },
        ),
    ];
    for (input, expected) in cases {
        assert_eq!(rule(input), expected, "input: {input}");
    }
}

#[test]
fn hand_built_trees_round_trip() {
    let leaf = |n: f64| named("x", CmpOp::Eq, n);
    let cases = vec![
        Expr::Or(vec![Expr::Or(vec![leaf(1.0), leaf(2.0)]), leaf(3.0)]),
        Expr::And(vec![Expr::And(vec![leaf(1.0), leaf(2.0)]), leaf(3.0)]),
        Expr::Not(Box::new(Expr::Or(vec![leaf(1.0), leaf(2.0)]))),
        Expr::Not(Box::new(Expr::Not(Box::new(Expr::In {
            left: Operand::Computed("c".into()),
            list: vec![Literal::Bool(false), Literal::Null, Literal::Number(-1e-7)],
        })))),
        Expr::Compare {
            left: Operand::Named("big".into()),
            op: CmpOp::Lt,
            right: Literal::Number(1e300),
        },
        Expr::Contains {
            left: Operand::Trait("t".into()),
            needle: Literal::String("\u{1}\u{7f}\r\n\"\\".into()),
        },
    ];
    for expr in &cases {
        assert_round_trip(expr);
    }
}
