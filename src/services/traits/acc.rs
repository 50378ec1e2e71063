//! [`Acc`]: one trait's accumulated value over a set of events — all time, or one day.
//!
//! Every event contributes an `Acc` of its own ([`contribution`]) and accumulators fold
//! with [`Acc::merge`], which is commutative and associative: integer addition,
//! min/max, and choice by a total order. That single property is what makes
//! observing, merging profiles and summing a window's days all agree exactly.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::def::{TraitDef, TraitKind};
use super::value::{self, Scalar};
use crate::model::validate::format_ms;
use crate::services::event::ServiceEvent;

/// Orders events in time: by timestamp, then by feed sequence (unique), so that ties
/// break the same way wherever the events were observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EventKey {
    /// Event time, ms since the epoch.
    pub timestamp_ms: i64,
    /// Feed sequence number.
    pub seq: u64,
}

/// A value and the event it came from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Stamped {
    /// The event.
    pub at: EventKey,
    /// Its value.
    pub value: Scalar,
}

/// How many times each value was seen, bounded to the smallest values.
///
/// Keeping the *smallest* `cap` values (rather than the first or most frequent seen)
/// makes truncation a property of the value set, not of arrival order: a value among the
/// `cap` smallest of all values is among the `cap` smallest of every subset, so its count
/// is exact however the events were split and merged.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    /// Occurrences per value.
    pub counts: BTreeMap<Scalar, u64>,
    /// Whether values beyond the kept ones were seen (and dropped).
    pub truncated: bool,
}

impl Tally {
    /// Adds `other`'s counts.
    fn absorb(&mut self, other: Tally) {
        for (value, count) in other.counts {
            let held = self.counts.entry(value).or_default();
            *held = held.saturating_add(count);
        }
        self.truncated |= other.truncated;
    }

    /// Keeps the `cap` smallest values, noting whether any was dropped.
    pub fn truncate(&mut self, cap: usize) {
        while self.counts.len() > cap {
            self.counts.pop_last();
            self.truncated = true;
        }
    }

    /// The most frequent value; ties go to the smallest value.
    fn mode(&self) -> Option<&Scalar> {
        let mut best: Option<(&Scalar, u64)> = None;
        for (value, &count) in &self.counts {
            if best.is_none_or(|(_, top)| count > top) {
                best = Some((value, count));
            }
        }
        best.map(|(value, _)| value)
    }

    /// `{"values": [...], "count": n, "truncated": bool}` with at most `cap` values, in
    /// value order.
    fn listing(&self, cap: usize) -> Value {
        let values: Vec<Value> = self.counts.keys().take(cap).map(Scalar::to_json).collect();
        let truncated = self.truncated || self.counts.len() > cap;
        json!({"values": values, "count": values.len(), "truncated": truncated})
    }
}

/// One trait's accumulated value; the variant follows the trait's kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Acc {
    /// `count`: matching events.
    Count(u64),
    /// `net_count`: events counted up minus events counted down.
    Net(i64),
    /// `sum`: total in micro-units.
    Sum(i128),
    /// `avg`: total in micro-units and how many numbers.
    Avg {
        /// Total, micro-units.
        sum: i128,
        /// Numbers added.
        n: u64,
    },
    /// `min`, micro-units.
    Min(i64),
    /// `max`, micro-units.
    Max(i64),
    /// `first`: the earliest event's value.
    First(Stamped),
    /// `last`: the latest event's value.
    Last(Stamped),
    /// `last_at`: the latest event.
    LastAt(EventKey),
    /// `most_frequent` and `unique`.
    Tally(Tally),
}

impl Acc {
    /// Folds `other` in. Both must come from the same definition; a mismatched variant
    /// (possible only in a corrupted record) leaves `self` unchanged.
    pub fn merge(&mut self, other: Acc) {
        match (self, other) {
            (Acc::Count(a), Acc::Count(b)) => *a = a.saturating_add(b),
            (Acc::Net(a), Acc::Net(b)) => *a = a.saturating_add(b),
            (Acc::Sum(a), Acc::Sum(b)) => *a = a.saturating_add(b),
            (Acc::Avg { sum, n }, Acc::Avg { sum: s, n: m }) => {
                *sum = sum.saturating_add(s);
                *n = n.saturating_add(m);
            }
            (Acc::Min(a), Acc::Min(b)) => *a = (*a).min(b),
            (Acc::Max(a), Acc::Max(b)) => *a = (*a).max(b),
            (Acc::First(a), Acc::First(b)) if b < *a => *a = b,
            (Acc::Last(a), Acc::Last(b)) if b > *a => *a = b,
            (Acc::LastAt(a), Acc::LastAt(b)) => *a = (*a).max(b),
            (Acc::Tally(a), Acc::Tally(b)) => a.absorb(b),
            _ => {}
        }
    }

    /// The trait's value (see [`empty_value`] when there is no accumulator).
    /// `listing_cap` bounds the values a `unique` lists.
    pub fn render(&self, kind: TraitKind, listing_cap: usize) -> Value {
        match self {
            Acc::Count(n) => json!(n),
            Acc::Net(n) => json!(n),
            Acc::Sum(micros) => value::micros_to_json(*micros),
            Acc::Avg { sum, n } => value::micros_to_json(value::average_micros(*sum, *n)),
            Acc::Min(micros) | Acc::Max(micros) => value::micros_to_json(i128::from(*micros)),
            Acc::First(stamped) | Acc::Last(stamped) => stamped.value.to_json(),
            Acc::LastAt(key) => json!(format_ms(key.timestamp_ms)),
            Acc::Tally(tally) if kind == TraitKind::Unique => tally.listing(listing_cap),
            Acc::Tally(tally) => tally.mode().map_or(Value::Null, Scalar::to_json),
        }
    }
}

/// The value of a trait no event has contributed to: `0` for `count`, `net_count` and
/// `sum`; an empty listing for `unique`; null for the rest.
pub fn empty_value(kind: TraitKind) -> Value {
    match kind {
        TraitKind::Count | TraitKind::NetCount | TraitKind::Sum => json!(0),
        TraitKind::Unique => Tally::default().listing(0),
        _ => Value::Null,
    }
}

/// What one event adds to `def`'s trait; `None` when it adds nothing (not matched, or
/// the property yields no usable value).
pub fn contribution(def: &TraitDef, event: &ServiceEvent) -> Option<Acc> {
    let at = EventKey {
        timestamp_ms: event.timestamp_ms,
        seq: event.seq,
    };
    if def.kind == TraitKind::NetCount {
        let up = i64::from(def.event.matches(event));
        let down = i64::from(def.minus_event.as_ref().is_some_and(|f| f.matches(event)));
        return (up + down > 0).then_some(Acc::Net(up - down));
    }
    if !def.event.matches(event) {
        return None;
    }
    match def.kind {
        TraitKind::Count => return Some(Acc::Count(1)),
        TraitKind::LastAt => return Some(Acc::LastAt(at)),
        _ => {}
    }
    let properties = event.body.properties()?;
    let found = def.property.as_ref()?.extract(properties);
    if def.kind.is_distinct() || matches!(def.kind, TraitKind::First | TraitKind::Last) {
        from_scalars(
            def.kind,
            at,
            found.into_iter().filter_map(Scalar::from_json),
        )
    } else {
        from_numbers(def.kind, found.into_iter().filter_map(value::micros))
    }
}

fn from_numbers(kind: TraitKind, numbers: impl Iterator<Item = i64>) -> Option<Acc> {
    let numbers: Vec<i64> = numbers.collect();
    let sum: i128 = numbers.iter().map(|&n| i128::from(n)).sum();
    match kind {
        _ if numbers.is_empty() => None,
        TraitKind::Sum => Some(Acc::Sum(sum)),
        TraitKind::Avg => Some(Acc::Avg {
            sum,
            n: numbers.len() as u64,
        }),
        TraitKind::Min => numbers.iter().min().map(|&n| Acc::Min(n)),
        TraitKind::Max => numbers.iter().max().map(|&n| Acc::Max(n)),
        _ => None,
    }
}

/// An event's values for the value kinds: `first` takes the event's first value, `last`
/// its last, the distinct kinds all of them (each occurrence counts).
fn from_scalars(
    kind: TraitKind,
    at: EventKey,
    mut scalars: impl Iterator<Item = Scalar>,
) -> Option<Acc> {
    match kind {
        TraitKind::First => scalars
            .next()
            .map(|value| Acc::First(Stamped { at, value })),
        TraitKind::Last => scalars.last().map(|value| Acc::Last(Stamped { at, value })),
        _ => {
            let mut tally = Tally::default();
            for value in scalars {
                *tally.counts.entry(value).or_default() += 1;
            }
            (!tally.counts.is_empty()).then_some(Acc::Tally(tally))
        }
    }
}
