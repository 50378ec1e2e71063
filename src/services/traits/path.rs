//! [`PropertyPath`]: where in an event's `properties` a trait reads its value.
//!
//! Grammar: keys separated by `.` (`revenue`, `shipping.city`); one key may end in `[]`
//! to step into an array and read the rest of the path from every element
//! (`products[].category` yields each product's category; `tags[]` yields each tag).
//! Keys are non-empty and contain no `.`, `[` or `]`.
//!
//! Extraction yields JSON scalars only (strings, numbers, booleans), in document order. A
//! missing key, a null, an object or array at the end of the path, or a non-array where
//! `[]` expects one yields nothing — use `[]` to read an array's items. At most
//! [`ARRAY_ITEMS_MAX`] items of the array are read.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::TraitError;

/// Longest path text, in characters.
pub const PATH_CHARS_MAX: usize = 256;
/// Most keys in a path.
pub const PATH_STEPS_MAX: usize = 8;
/// Most array items read at a `[]` step; later items are ignored (bounded work per event).
pub const ARRAY_ITEMS_MAX: usize = 256;

/// A parsed property path (see the module docs for the grammar).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PropertyPath {
    /// The path as written.
    text: String,
    /// The parsed keys, outermost first; at most one has `each` set.
    steps: Vec<Step>,
}

/// One key of a path.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Step {
    /// The object key.
    key: String,
    /// Whether the value under `key` is an array to step into (`key[]`).
    each: bool,
}

impl PropertyPath {
    /// Parses `text`; the error says what is wrong and how to write it.
    pub fn parse(text: &str) -> Result<PropertyPath, TraitError> {
        let fail = |reason: &str| TraitError::Path {
            path: text.to_owned(),
            reason: reason.to_owned(),
        };
        if text.is_empty() {
            return Err(fail("empty; write a key such as revenue"));
        }
        if text.chars().count() > PATH_CHARS_MAX {
            return Err(fail(&format!("longer than {PATH_CHARS_MAX} characters")));
        }
        let mut steps = Vec::new();
        for part in text.split('.') {
            let (key, each) = match part.strip_suffix("[]") {
                Some(key) => (key, true),
                None => (part, false),
            };
            if key.is_empty() {
                return Err(fail("has an empty key; write keys like shipping.city"));
            }
            if key.contains(['[', ']']) {
                return Err(fail("'[' and ']' may only appear as [] after a key"));
            }
            steps.push(Step {
                key: key.to_owned(),
                each,
            });
        }
        if steps.len() > PATH_STEPS_MAX {
            return Err(fail(&format!("more than {PATH_STEPS_MAX} keys")));
        }
        if steps.iter().filter(|step| step.each).count() > 1 {
            return Err(fail("more than one []; only one array level is supported"));
        }
        Ok(PropertyPath {
            text: text.to_owned(),
            steps,
        })
    }

    /// The path as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The scalars the path reaches in `properties`, in document order.
    pub fn extract<'a>(&self, properties: &'a Value) -> Vec<&'a Value> {
        let mut out = Vec::new();
        walk(properties, &self.steps, &mut out);
        out
    }
}

fn walk<'a>(value: &'a Value, steps: &[Step], out: &mut Vec<&'a Value>) {
    let Some((step, rest)) = steps.split_first() else {
        if !matches!(value, Value::Null | Value::Array(_) | Value::Object(_)) {
            out.push(value);
        }
        return;
    };
    let Some(inner) = value.get(step.key.as_str()) else {
        return;
    };
    if !step.each {
        walk(inner, rest, out);
    } else if let Value::Array(items) = inner {
        for item in items.iter().take(ARRAY_ITEMS_MAX) {
            walk(item, rest, out);
        }
    }
}

impl TryFrom<String> for PropertyPath {
    type Error = TraitError;

    fn try_from(text: String) -> Result<PropertyPath, TraitError> {
        PropertyPath::parse(&text)
    }
}

impl From<PropertyPath> for String {
    fn from(path: PropertyPath) -> String {
        path.text
    }
}

impl fmt::Display for PropertyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn order() -> Value {
        json!({
            "revenue": 42.5,
            "currency": "USD",
            "shipping": {"city": "Lyon", "address": {"zip": "69001"}},
            "products": [
                {"category": "Books", "price": 10, "tags": ["a"]},
                {"category": "Toys", "price": "5.5"},
                {"price": 3},
                "not an object",
                {"category": null},
                {"category": "Books"}
            ],
            "tags": ["new", 7, true, null, {"x": 1}],
            "coupon": null,
            "not_list": {"category": "Games"}
        })
    }

    #[test]
    fn extraction_table() {
        let order = order();
        let cases: &[(&str, Value)] = &[
            ("revenue", json!([42.5])),
            ("currency", json!(["USD"])),
            ("shipping.city", json!(["Lyon"])),
            ("shipping.address.zip", json!(["69001"])),
            ("shipping", json!([])),
            ("shipping.country", json!([])),
            ("missing", json!([])),
            ("coupon", json!([])),
            ("products", json!([])),
            ("products[].category", json!(["Books", "Toys", "Books"])),
            ("products[].price", json!([10, "5.5", 3])),
            ("products[].tags", json!([])),
            ("tags[]", json!(["new", 7, true])),
            ("not_list[].category", json!([])),
            ("revenue.amount", json!([])),
        ];
        for (text, expected) in cases {
            let path = PropertyPath::parse(text).expect("valid path");
            let got: Vec<Value> = path.extract(&order).into_iter().cloned().collect();
            assert_eq!(Value::Array(got), *expected, "{text}");
        }
    }

    #[test]
    fn array_reads_are_bounded() {
        let items: Vec<Value> = (0..ARRAY_ITEMS_MAX + 10).map(|i| json!(i)).collect();
        let properties = json!({ "ids": items });
        let path = PropertyPath::parse("ids[]").expect("valid path");
        assert_eq!(path.extract(&properties).len(), ARRAY_ITEMS_MAX);
    }

    #[test]
    fn malformed_paths_are_refused_with_a_reason() {
        let long = "a".repeat(PATH_CHARS_MAX + 1);
        let deep = ["a"; PATH_STEPS_MAX + 1].join(".");
        let cases = [
            ("", "empty"),
            ("a..b", "empty key"),
            (".a", "empty key"),
            ("a.", "empty key"),
            ("[]", "empty key"),
            ("a[0]", "'[' and ']'"),
            ("a]", "'[' and ']'"),
            ("a[].b[]", "more than one []"),
            (long.as_str(), "longer than"),
            (deep.as_str(), "more than 8 keys"),
        ];
        for (text, reason) in cases {
            let error = PropertyPath::parse(text).expect_err(text);
            assert!(error.to_string().contains(reason), "{text}: {error}");
        }
    }

    #[test]
    fn paths_round_trip_through_serde() {
        let path: PropertyPath =
            serde_json::from_value(json!("products[].category")).expect("parses");
        assert_eq!(path.as_str(), "products[].category");
        assert_eq!(
            serde_json::to_value(&path).ok(),
            Some(json!("products[].category"))
        );
        let bad = serde_json::from_value::<PropertyPath>(json!("a[1]"));
        assert!(bad.is_err());
    }
}
