//! Tests of the segment rule language, as tables: parsing (`parsing.rs`), errors and limits
//! (`errors.rs`), evaluation (`eval.rs`), static analysis (`analysis.rs`), and seeded
//! random inputs that must never panic (`fuzz.rs`).

mod analysis;
mod errors;
mod eval;
mod fuzz;
mod parsing;

use std::collections::BTreeMap;

use serde_json::Value;

use super::{Expr, Facts, evaluate, parse};

/// Parses a rule the test knows to be valid, naming it on failure.
fn rule(text: &str) -> Expr {
    match parse(text) {
        Ok(expr) => expr,
        Err(e) => panic!("{text:?} should parse:\n{e}"),
    }
}

/// Asserts that the canonical text of `expr` parses back to `expr`.
fn assert_round_trip(expr: &Expr) {
    let text = expr.to_string();
    match parse(&text) {
        Ok(again) => assert_eq!(&again, expr, "round trip through {text:?}"),
        Err(e) => panic!("canonical text {text:?} does not parse:\n{e}"),
    }
}

/// An in-memory profile. Events are `(name, age in ms)`; segments are evaluated on
/// demand from their definitions, so `in_segment` nests the way the service's ordered
/// evaluation does.
#[derive(Default)]
struct MemFacts {
    traits: BTreeMap<String, Value>,
    computed: BTreeMap<String, Value>,
    events: Vec<(String, i64)>,
    segments: BTreeMap<String, Expr>,
}

impl Facts for MemFacts {
    fn profile_trait(&self, name: &str) -> Option<Value> {
        self.traits.get(name).cloned()
    }

    fn computed(&self, name: &str) -> Option<Value> {
        self.computed.get(name).cloned()
    }

    fn event_count(&self, name: &str, within_ms: Option<i64>) -> u64 {
        let in_window = |age_ms: i64| within_ms.is_none_or(|w| age_ms < w);
        let matching = self
            .events
            .iter()
            .filter(|(n, age)| n == name && in_window(*age));
        matching.count() as u64
    }

    fn in_segment(&self, id: &str) -> bool {
        self.segments.get(id).is_some_and(|def| evaluate(def, self))
    }
}
