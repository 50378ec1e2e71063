//! How trait values are held: numbers in fixed point, other values as canonical JSON.
//!
//! Numeric kinds (`sum`, `avg`, `min`, `max`) take JSON numbers **and numeric strings**
//! (`"19.99"`: form tools and some server libraries send money as text). A numeric
//! string is plain decimal text — digits, sign, `.`, exponent — so `"NaN"`, `"inf"` and
//! `" 1"` are not numbers. Numbers beyond ±[`NUMBER_ABS_MAX`] are ignored. Each accepted
//! number is rounded to a millionth and held as integer **micro-units**, so sums are
//! exact integer additions: the total does not depend on the order events were added or
//! merged (floating-point addition would), which is what makes merge exact.
//!
//! Value kinds (`first`, `last`, `most_frequent`, `unique`) take any JSON scalar —
//! string, number or boolean — held as a [`Scalar`]: canonical JSON text. Integral
//! numbers are written without a fraction (`5.0` and `5` are one value); strings are cut
//! at a character boundary so their JSON text holds at most [`VALUE_BYTES_MAX`] bytes
//! between the quotes. The string `"5"` and the number
//! `5` stay distinct. Scalars order by their JSON text, which is the deterministic order
//! used for tie-breaks and bounded sets (for plain strings: byte order).

use serde::{Deserialize, Serialize};
use serde_json::{Number, Value};

/// Longest string value kept: bytes of its JSON text between the quotes (escapes count);
/// longer strings are cut at a character boundary.
pub const VALUE_BYTES_MAX: usize = 128;

/// Largest magnitude a numeric trait accepts; larger numbers are ignored. At one
/// micro-unit resolution this fits an `i64`, and sums (in `i128`) cannot overflow.
pub const NUMBER_ABS_MAX: f64 = 1e12;

/// Micro-units per unit.
const MICROS_PER_UNIT: i64 = 1_000_000;

/// Integral floats below this are written as integers (exactly representable in `f64`).
const EXACT_INTEGER_MAX: f64 = 9_007_199_254_740_992.0;

/// A JSON scalar as canonical JSON text (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Scalar(String);

impl Scalar {
    /// The scalar for a JSON string, number or boolean; `None` for null, arrays, objects.
    pub fn from_json(value: &Value) -> Option<Scalar> {
        let text = match value {
            Value::String(text) => Value::String(cut(text).to_owned()).to_string(),
            Value::Number(number) => canonical_number(number),
            Value::Bool(flag) => flag.to_string(),
            Value::Null | Value::Array(_) | Value::Object(_) => return None,
        };
        Some(Scalar(text))
    }

    /// The value as JSON. The text was written by [`Scalar::from_json`]; should a
    /// corrupted record not parse, the value reads as null rather than failing the read.
    pub fn to_json(&self) -> Value {
        serde_json::from_str(&self.0).unwrap_or(Value::Null)
    }
}

/// `text` cut at a character boundary so that its JSON encoding (escapes included, quotes
/// excluded) takes at most [`VALUE_BYTES_MAX`] bytes.
fn cut(text: &str) -> &str {
    let mut used = 0;
    for (at, c) in text.char_indices() {
        let width = match c {
            '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
            c if u32::from(c) < 0x20 => 6,
            c => c.len_utf8(),
        };
        if used + width > VALUE_BYTES_MAX {
            return &text[..at];
        }
        used += width;
    }
    text
}

fn canonical_number(number: &Number) -> String {
    match number.as_f64() {
        Some(float)
            if !number.is_i64()
                && !number.is_u64()
                && float.fract() == 0.0
                && float.abs() < EXACT_INTEGER_MAX =>
        {
            // Integral, so the cast is exact.
            (float as i64).to_string()
        }
        _ => number.to_string(),
    }
}

/// The number a value stands for, in micro-units: a JSON number or numeric string within
/// ±[`NUMBER_ABS_MAX`]; `None` otherwise.
pub fn micros(value: &Value) -> Option<i64> {
    let float = match value {
        Value::Number(number) => number.as_f64()?,
        Value::String(text) => numeric_text(text)?,
        _ => return None,
    };
    if !float.is_finite() || float.abs() > NUMBER_ABS_MAX {
        return None;
    }
    // |float| ≤ 1e12, so |float × 1e6| ≤ 1e18 < i64::MAX: the cast is exact after rounding.
    Some((float * MICROS_PER_UNIT as f64).round() as i64)
}

/// Plain decimal text as a number; rejects words Rust's parser accepts (`inf`, `NaN`).
fn numeric_text(text: &str) -> Option<f64> {
    let plain = text
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'+' | b'-' | b'.' | b'e' | b'E'));
    let has_digit = text.bytes().any(|b| b.is_ascii_digit());
    if !plain || !has_digit {
        return None;
    }
    text.parse().ok()
}

/// Micro-units as a JSON number: an integer when whole (`120`), else a float (`19.99`).
pub fn micros_to_json(micros: i128) -> Value {
    let whole = micros / i128::from(MICROS_PER_UNIT);
    if micros % i128::from(MICROS_PER_UNIT) == 0
        && let Ok(whole) = i64::try_from(whole)
    {
        return Value::from(whole);
    }
    Number::from_f64(micros as f64 / MICROS_PER_UNIT as f64).map_or(Value::Null, Value::Number)
}

/// `sum / n` rounded to the nearest micro-unit, halves away from zero. `n` must be > 0.
pub fn average_micros(sum: i128, n: u64) -> i128 {
    let n = i128::from(n.max(1));
    let half = n / 2;
    if sum >= 0 {
        (sum + half) / n
    } else {
        (sum - half) / n
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn numbers_and_numeric_strings_become_micros() {
        let cases = [
            (json!(19.99), Some(19_990_000)),
            (json!(5), Some(5_000_000)),
            (json!(-0.5), Some(-500_000)),
            (json!("12.50"), Some(12_500_000)),
            (json!("-3e2"), Some(-300_000_000)),
            (json!("NaN"), None),
            (json!("inf"), None),
            (json!(" 1"), None),
            (json!("1,000"), None),
            (json!(""), None),
            (json!("."), None),
            (json!(true), None),
            (json!(null), None),
            (json!(1e13), None),
            (json!(1e12), Some(1_000_000_000_000_000_000)),
        ];
        for (value, expected) in cases {
            assert_eq!(micros(&value), expected, "{value}");
        }
    }

    #[test]
    fn micros_render_as_integers_when_whole() {
        assert_eq!(micros_to_json(120_000_000), json!(120));
        assert_eq!(micros_to_json(19_990_000), json!(19.99));
        assert_eq!(micros_to_json(-1_500_000), json!(-1.5));
        assert_eq!(micros_to_json(0), json!(0));
        assert_eq!(average_micros(10, 4), 3); // 2.5 rounds away from zero
        assert_eq!(average_micros(-10, 4), -3);
        assert_eq!(average_micros(55_000_000, 3), 18_333_333);
    }

    #[test]
    fn scalars_are_canonical() {
        let cases = [
            (json!("Books"), Some("\"Books\"")),
            (json!(5), Some("5")),
            (json!(5.0), Some("5")),
            (json!(4.5), Some("4.5")),
            (json!(false), Some("false")),
            (json!(null), None),
            (json!([1]), None),
            (json!({"a": 1}), None),
        ];
        for (value, expected) in cases {
            let scalar = Scalar::from_json(&value);
            assert_eq!(scalar.as_ref().map(|s| s.0.as_str()), expected, "{value}");
        }
        assert_eq!(
            Scalar::from_json(&json!(5.0)).map(|s| s.to_json()),
            Some(json!(5))
        );
        let long = "é".repeat(VALUE_BYTES_MAX);
        let kept = Scalar::from_json(&json!(long)).map(|s| s.to_json());
        let Some(Value::String(kept)) = kept else {
            panic!("a string stays a string");
        };
        assert_eq!(kept.len(), VALUE_BYTES_MAX);
        let quotes = "\"".repeat(VALUE_BYTES_MAX);
        let kept = Scalar::from_json(&json!(quotes)).map(|s| s.0.len());
        assert_eq!(
            kept,
            Some(VALUE_BYTES_MAX + 2),
            "escapes count towards the bound"
        );
        let controls = "\u{1}".repeat(VALUE_BYTES_MAX);
        let kept = Scalar::from_json(&json!(controls)).map(|s| s.0.len());
        assert_eq!(kept, Some(VALUE_BYTES_MAX / 6 * 6 + 2));
    }
}
