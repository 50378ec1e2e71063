//! Evaluation: is this profile in the audience? A pure function of a rule and [`Facts`].
//!
//! The semantics, which `docs/segments.md` explains to marketers:
//! - **Missing is null.** A value the profile does not have reads as JSON `null`: it
//!   equals `null` and nothing else; every other comparison with it (`>`, `in`,
//!   `contains`, `== "x"`…) is false.
//! - **`!=` is exactly `not ==`** (likewise `not in`, `not contains`), so a missing value
//!   *is* `!= "x"`. One law, no three-valued logic: `a != b` and `not (a == b)` always agree.
//! - **Numbers**: a number literal matches a JSON number, or a string that is a plain
//!   decimal in the rule language's own syntax (`"42"`, `"-3.5"`; not `"1e3"`, `" 4"`).
//!   Sources often send numeric traits as strings; the reverse does not hold — `== "42"`
//!   matches only the string `"42"`.
//! - **Strings** compare case-sensitively, by exact equality; `>`/`<` order them by bytes
//!   (which suits ISO dates such as `"2024-06-01"`).
//! - **Booleans** equal only JSON booleans. Different kinds never compare (`1 == true` is
//!   false).
//! - `contains`: in a string value, a case-sensitive substring (string needles only); in an
//!   array value, an element equal to the needle by the rules above; otherwise false.
//! - Event counts and segment membership come from the [`Facts`]; windows are handed over
//!   as milliseconds, and the implementor decides what "now" is.

use std::cmp::Ordering;

use serde_json::Value;

use super::ast::{CmpOp, Expr, Literal, Operand};

/// What evaluation may know about one profile. Implementations read precomputed state;
/// evaluation calls each method at most once per reference in the rule.
pub trait Facts {
    /// The value behind a bare name: the computed trait when the profile has one by that
    /// name (even if its value is `null`), otherwise the profile trait.
    fn value(&self, name: &str) -> Option<Value> {
        self.computed(name).or_else(|| self.profile_trait(name))
    }

    /// A profile trait (`trait("name")`), `None` when the profile has none.
    fn profile_trait(&self, name: &str) -> Option<Value>;

    /// A computed trait (`computed("name")`), `None` when the profile has none.
    fn computed(&self, name: &str) -> Option<Value>;

    /// How many events called `name` the profile has: within the last `within_ms`
    /// milliseconds, or ever when `None`.
    fn event_count(&self, name: &str, within_ms: Option<i64>) -> u64;

    /// Whether the profile is currently a member of segment `id` (false for an unknown id).
    fn in_segment(&self, id: &str) -> bool;
}

/// Whether the profile described by `facts` matches `rule`.
pub fn evaluate(rule: &Expr, facts: &impl Facts) -> bool {
    match rule {
        Expr::Or(items) => items.iter().any(|item| evaluate(item, facts)),
        Expr::And(items) => items.iter().all(|item| evaluate(item, facts)),
        Expr::Not(inner) => !evaluate(inner, facts),
        Expr::Compare { left, op, right } => compare(resolve(left, facts).as_ref(), *op, right),
        Expr::In { left, list } => {
            let value = resolve(left, facts);
            list.iter().any(|item| equals(value.as_ref(), item))
        }
        Expr::Contains { left, needle } => contains(resolve(left, facts).as_ref(), needle),
        Expr::EventExists { event, within } => facts.event_count(event, within.map(|w| w.ms())) > 0,
        Expr::InSegment { id } => facts.in_segment(id),
    }
}

/// Reads an operand; `None` when the profile lacks it.
fn resolve(operand: &Operand, facts: &impl Facts) -> Option<Value> {
    match operand {
        Operand::Named(name) => facts.value(name),
        Operand::Trait(name) => facts.profile_trait(name),
        Operand::Computed(name) => facts.computed(name),
        Operand::EventCount { event, within } => Some(Value::from(
            facts.event_count(event, within.map(|w| w.ms())),
        )),
    }
}

/// `value op literal` under the module's semantics.
pub(super) fn compare(value: Option<&Value>, op: CmpOp, literal: &Literal) -> bool {
    match op {
        CmpOp::Eq => equals(value, literal),
        CmpOp::Ne => !equals(value, literal),
        CmpOp::Gt => order(value, literal) == Some(Ordering::Greater),
        CmpOp::Ge => matches!(
            order(value, literal),
            Some(Ordering::Greater | Ordering::Equal)
        ),
        CmpOp::Lt => order(value, literal) == Some(Ordering::Less),
        CmpOp::Le => matches!(
            order(value, literal),
            Some(Ordering::Less | Ordering::Equal)
        ),
    }
}

/// Equality; a missing value is `null`.
fn equals(value: Option<&Value>, literal: &Literal) -> bool {
    match literal {
        Literal::Null => matches!(value, None | Some(Value::Null)),
        Literal::Bool(b) => value.and_then(Value::as_bool) == Some(*b),
        Literal::Number(n) => number(value) == Some(*n),
        Literal::String(s) => value.and_then(Value::as_str) == Some(s.as_str()),
        Literal::List(_) => false,
    }
}

/// Ordering of a number (numeric strings included) or string against the literal; `None`
/// when they are not comparable, which makes every ordering comparison false.
fn order(value: Option<&Value>, literal: &Literal) -> Option<Ordering> {
    match literal {
        Literal::Number(n) => number(value)?.partial_cmp(n),
        Literal::String(s) => Some(value?.as_str()?.cmp(s.as_str())),
        _ => None,
    }
}

fn contains(value: Option<&Value>, needle: &Literal) -> bool {
    match value {
        Some(Value::String(s)) => matches!(needle, Literal::String(n) if s.contains(n.as_str())),
        Some(Value::Array(items)) => items.iter().any(|item| equals(Some(item), needle)),
        _ => false,
    }
}

/// A JSON number, or a string holding a plain decimal (`-?digits(.digits)?`).
fn number(value: Option<&Value>) -> Option<f64> {
    match value? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) if is_plain_decimal(s) => s.parse().ok(),
        _ => None,
    }
}

fn is_plain_decimal(s: &str) -> bool {
    let digits = s.strip_prefix('-').unwrap_or(s);
    let (whole, fraction) = match digits.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (digits, None),
    };
    let all_digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
    all_digits(whole) && fraction.is_none_or(all_digits)
}
