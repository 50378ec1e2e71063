//! Tests of [`super::scan`]: every text it calls canonical prints as itself after a
//! `Value` round trip, and the texts a round trip changes are never called canonical.

use serde_json::Value;

use super::*;

/// What a `Value` round trip prints, or `None` if serde_json refuses the text.
fn round_trip(text: &str) -> Option<String> {
    serde_json::from_str::<Value>(text).ok().map(|v| v.to_string())
}

#[test]
fn scan_table() {
    let cases: &[(&str, Result<bool, Bail>)] = &[
        (r#"{"a":1,"b":[true,false,null],"c":{"d":"e"}}"#, Ok(true)),
        (r#"{"b":1,"a":2}"#, Ok(false)),
        (r#"{"a":1,"a":2}"#, Ok(false)),
        (r#"{"a": 1}"#, Ok(false)),
        (r#"[1, 2]"#, Ok(false)),
        (r#"{"a\"b":1}"#, Ok(false)),
        (r#""tab\there \"q\" back\\slash""#, Ok(true)),
        (r#""slash\/""#, Ok(false)),
        (r#""\u00e9""#, Ok(false)),
        (r#""\u001f""#, Ok(false)),
        (r#""é ü 😀""#, Ok(true)),
        ("0", Ok(true)),
        ("-12", Ok(true)),
        ("-0", Ok(false)),
        // Not JSON (never reaches scan, which bails rather than guess).
        ("007", Err(Bail)),
        ("12.99", Ok(true)),
        ("1.0", Ok(true)),
        ("1.50", Ok(false)),
        ("1e5", Ok(false)),
        ("1E400", Err(Bail)),
        ("123456789012345678", Ok(true)),
        ("18446744073709551615", Ok(true)),
        ("18446744073709551616", Ok(false)),
        (r#""\ud83d\ude00""#, Err(Bail)),
        (r#""\udc00""#, Err(Bail)),
        (r#"{"z":{"b":1,"a":2}}"#, Ok(false)),
        (r#"[{"a":1},{"a":1}]"#, Ok(true)),
        (r#"{"a":[],"b":{},"c":""}"#, Ok(true)),
    ];
    for (text, want) in cases {
        assert_eq!(scan(text), *want, "{text}");
        if *want == Ok(true) {
            assert_eq!(round_trip(text).as_deref(), Some(*text), "{text}");
        }
    }
}

#[test]
fn nesting_past_the_limit_bails() {
    let deep = |levels: usize| format!("{}{}", "[".repeat(levels), "]".repeat(levels));
    assert_eq!(scan(&deep(DEPTH_MAX)), Ok(true));
    assert_eq!(scan(&deep(DEPTH_MAX + 1)), Err(Bail));
    assert_eq!(scan(&deep(10_000)), Err(Bail));
}

/// Texts generated from a seeded mix of the shapes that matter (key order, repeats,
/// escapes, numbers, whitespace): whenever scan says canonical, the round trip agrees.
#[test]
fn canonical_texts_survive_a_round_trip_unchanged() {
    let atoms = [
        "1", "-3", "0", "2.5", "1e3", "-0", "10.0", "true", "null", r#""x""#, r#""a\nb""#,
        r#""\/""#, r#""\u0041""#, "[]", "{}", r#"[1,"s"]"#, "[1, 2]",
    ];
    let keys = ["a", "b", "B", "aa", "é", "a b", r#"q\"k"#];
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    let mut checked = 0;
    for _ in 0..5_000 {
        let members = next(4);
        let mut text = String::from("{");
        for i in 0..members {
            if i > 0 {
                text.push(',');
            }
            text.push_str(&format!("\"{}\":{}", keys[next(keys.len())], atoms[next(atoms.len())]));
        }
        text.push('}');
        let Some(printed) = round_trip(&text) else {
            continue;
        };
        match scan(&text) {
            Ok(true) => {
                assert_eq!(printed, text);
                checked += 1;
            }
            Ok(false) => {}
            Err(Bail) => panic!("{text} bailed although it parses"),
        }
    }
    assert!(checked > 100, "only {checked} canonical texts generated");
}
