//! Seeded random inputs: raw bytes and soups of the language's own tokens. Nothing may
//! panic; whatever parses must print and parse back to itself, and evaluate; whatever
//! fails must say where, in words. A failure prints the seed and the case.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{MemFacts, assert_round_trip};
use crate::services::segments::{SegmentError, evaluate, parse};

const SEED: u64 = 0x5e6_3e47;
const CASES: usize = 3_000;

/// Tokens that make up plausible (and implausible) rules.
const TOKENS: &[&str] = &[
    "(",
    ")",
    "[",
    "]",
    ",",
    ".",
    "not",
    "NOT",
    "and",
    "And",
    "or",
    "OR",
    "in",
    "contains",
    "==",
    "!=",
    ">",
    ">=",
    "<",
    "<=",
    "=",
    "!",
    "x",
    "plan",
    "_a1",
    "event",
    "trait",
    "1",
    "-2.5",
    "0",
    "007",
    "1e5",
    "99999999999999999999999999999999999999",
    "\"s\"",
    "\"\"",
    "\"",
    "\"\\u{1F600}\"",
    "\"\\u{d800}\"",
    "\\",
    "\"a\\\"b\"",
    "true",
    "false",
    "null",
    "event(\"A\")",
    "event(\"\")",
    ".within(30d)",
    ".within(0d)",
    ".within(401d)",
    ".within(7)",
    ".within()",
    ".count()",
    ".exists()",
    ".foo()",
    "in_segment(\"v\")",
    "trait(\"t\")",
    "computed(\"c\")",
    "\n",
    "\t",
    "é",
    "\u{0}",
    "#",
    "'",
    "30d",
];

fn check(input: &str, seed: u64, case: usize) {
    let context = || format!("seed {seed:#x}, case {case}: {input:?}");
    match parse(input) {
        Ok(expr) => {
            assert_round_trip(&expr);
            let _ = evaluate(&expr, &MemFacts::default());
            let _ = (
                expr.segment_refs(),
                expr.event_names(),
                expr.max_window_ms(),
            );
        }
        Err(SegmentError::TooLong { .. }) => panic!("inputs here are short: {}", context()),
        Err(error) => {
            let at = error.position().expect("a position");
            assert!(at.line >= 1 && at.column >= 1, "{}", context());
            assert!(at.excerpt.contains('^'), "{}", context());
            let message = error.to_string();
            assert!(!message.contains("Rule::"), "{}: {message}", context());
        }
    }
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = StdRng::seed_from_u64(SEED);
    for case in 0..CASES {
        let len = rng.random_range(0..120);
        let bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        check(&String::from_utf8_lossy(&bytes), SEED, case);
        // Mostly printable ASCII reaches further into the grammar.
        let ascii: String = (0..len)
            .map(|_| char::from(rng.random_range(b' '..=b'~')))
            .collect();
        check(&ascii, SEED, case);
    }
}

#[test]
fn random_token_soups_never_panic() {
    let mut rng = StdRng::seed_from_u64(SEED + 1);
    let mut parsed = 0;
    for case in 0..CASES {
        let len = rng.random_range(0..24);
        let separator = if rng.random_bool(0.8) { " " } else { "" };
        let tokens: Vec<&str> = (0..len)
            .map(|_| TOKENS[rng.random_range(0..TOKENS.len())])
            .collect();
        let input = tokens.join(separator);
        check(&input, SEED + 1, case);
        parsed += usize::from(parse(&input).is_ok());
    }
    // The soup must sometimes be a rule, or the round-trip check above tests nothing.
    assert!(parsed > 0, "no token soup parsed");
}

/// Soups built to be valid rules most of the time: condition (op condition)*.
#[test]
fn random_valid_rules_round_trip() {
    const CONDITIONS: &[&str] = &[
        "plan == \"pro\"",
        "x != null",
        "n >= -1.5",
        "tags contains \"vip\"",
        "c not in [1, \"a\", true, null]",
        "event(\"A\").within(30d).count() > 1",
        "event(\"B\").exists()",
        "in_segment(\"s\")",
        "trait(\"t\") < \"m\"",
        "computed(\"c\") <= 3",
    ];
    let mut rng = StdRng::seed_from_u64(SEED + 2);
    for case in 0..CASES {
        let mut text = String::new();
        let mut open = 0;
        for i in 0..rng.random_range(1..12) {
            if i > 0 {
                text.push_str(if rng.random_bool(0.5) {
                    " and "
                } else {
                    " or "
                });
            }
            while rng.random_bool(0.3) && open < 8 {
                text.push_str(if rng.random_bool(0.5) { "(" } else { "not (" });
                open += 1;
            }
            if rng.random_bool(0.2) {
                text.push_str("not ");
            }
            text.push_str(CONDITIONS[rng.random_range(0..CONDITIONS.len())]);
            if open > 0 && rng.random_bool(0.3) {
                text.push(')');
                open -= 1;
            }
        }
        text.push_str(&")".repeat(open));
        match parse(&text) {
            Ok(expr) => assert_round_trip(&expr),
            Err(e) => panic!("seed {:#x}, case {case}: {text:?}\n{e}", SEED + 2),
        }
    }
}
