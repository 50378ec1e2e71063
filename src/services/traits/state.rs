//! [`TraitState`]: one trait's state on one profile — a single accumulator for all-time
//! traits, or daily buckets for windowed ones.
//!
//! Windows are kept as UTC-day buckets (`timestamp_ms` floor-divided by a day). On every
//! update the buckets older than `window_days` before the **newest bucket held** are
//! dropped, and an event older than that is ignored; so a trait holds at most
//! `window_days` buckets, and — because the newest day is the same however the events
//! were split — the buckets kept are exactly the days `[newest − window_days + 1,
//! newest]` with all their events, in any order of arrival or merging. Reads count the
//! buckets of the days `[today − window_days + 1, today]`, `today` being the day of the
//! read time: older days leave the window as time passes, and events dated after the
//! read time do not count yet.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::acc::{Acc, Tally};
use super::def::TraitDef;

/// Most distinct values an all-time `most_frequent`/`unique` trait keeps (the smallest
/// ones, see [`Tally`]); also the most a `unique` lists.
pub const DISTINCT_VALUES_MAX: usize = 100;

/// Most distinct values one day's bucket of a windowed `most_frequent`/`unique` keeps.
pub const DISTINCT_DAY_VALUES_MAX: usize = 20;

/// Milliseconds in a day.
const DAY_MS: i64 = 86_400_000;

/// The UTC day (days since the epoch) of a timestamp.
pub fn day_of(timestamp_ms: i64) -> i64 {
    timestamp_ms.div_euclid(DAY_MS)
}

/// One trait's state on one profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraitState {
    /// [`TraitDef::fingerprint`] of the definition the state was built for.
    fingerprint: u32,
    /// The accumulated values.
    body: Body,
}

/// All-time or windowed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Body {
    /// One accumulator over every contributing event.
    All(Acc),
    /// One accumulator per UTC day; never empty, at most `window_days` entries.
    Daily(BTreeMap<i64, Acc>),
}

impl TraitState {
    /// The state after one contribution dated `timestamp_ms`; `fingerprint` is `def`'s.
    pub fn new(def: &TraitDef, fingerprint: u32, timestamp_ms: i64, mut acc: Acc) -> TraitState {
        let body = match def.window_days {
            None => {
                truncate(&mut acc, DISTINCT_VALUES_MAX);
                Body::All(acc)
            }
            Some(_) => {
                truncate(&mut acc, DISTINCT_DAY_VALUES_MAX);
                Body::Daily(BTreeMap::from([(day_of(timestamp_ms), acc)]))
            }
        };
        TraitState { fingerprint, body }
    }

    /// Whether the state was built for `def`, whose fingerprint is `fingerprint` (else it
    /// is to be discarded).
    pub fn fits(&self, def: &TraitDef, fingerprint: u32) -> bool {
        let windowed = matches!(self.body, Body::Daily(_));
        self.fingerprint == fingerprint && windowed == def.window_days.is_some()
    }

    /// Folds in one contribution dated `timestamp_ms`. The state must fit `def`.
    pub fn add(&mut self, def: &TraitDef, timestamp_ms: i64, acc: Acc) {
        match &mut self.body {
            Body::All(held) => {
                held.merge(acc);
                truncate(held, DISTINCT_VALUES_MAX);
            }
            Body::Daily(days) => {
                add_day(days, day_of(timestamp_ms), acc);
                prune(days, def.window_days);
            }
        }
    }

    /// Folds in another profile's state for the same definition.
    pub fn merge(&mut self, def: &TraitDef, other: TraitState) {
        match (&mut self.body, other.body) {
            (Body::All(held), Body::All(acc)) => {
                held.merge(acc);
                truncate(held, DISTINCT_VALUES_MAX);
            }
            (Body::Daily(days), Body::Daily(others)) => {
                for (day, acc) in others {
                    add_day(days, day, acc);
                }
                prune(days, def.window_days);
            }
            // Mismatched shapes cannot both fit `def`; the caller checked `fits`.
            _ => {}
        }
    }

    /// The accumulated value as of `now_ms`: all of it, or the sum of the days in the
    /// window; `None` when nothing counts.
    pub fn read(&self, def: &TraitDef, now_ms: i64) -> Option<Acc> {
        match &self.body {
            Body::All(acc) => Some(acc.clone()),
            Body::Daily(days) => {
                let today = day_of(now_ms);
                let oldest = oldest_day(today, def.window_days);
                let mut in_window = days.range(oldest..=today).map(|(_, acc)| acc.clone());
                let mut total = in_window.next()?;
                for acc in in_window {
                    total.merge(acc);
                }
                Some(total)
            }
        }
    }

    /// Checks the size bounds; `Err` names the one broken.
    #[cfg(test)]
    pub fn check_bounds(&self, def: &TraitDef) -> Result<(), String> {
        let tally_len = |acc: &Acc| match acc {
            Acc::Tally(tally) => tally.counts.len(),
            _ => 0,
        };
        match &self.body {
            Body::All(acc) if tally_len(acc) > DISTINCT_VALUES_MAX => {
                Err(format!("{}: {} values", def.name, tally_len(acc)))
            }
            Body::Daily(days) => {
                let window = def.window_days.map_or(0, |days| days as usize);
                if days.len() > window {
                    return Err(format!("{}: {} buckets", def.name, days.len()));
                }
                match days.values().map(tally_len).max() {
                    Some(len) if len > DISTINCT_DAY_VALUES_MAX => {
                        Err(format!("{}: {len} values in a day", def.name))
                    }
                    _ => Ok(()),
                }
            }
            Body::All(_) => Ok(()),
        }
    }
}

/// Adds `acc` to `day`'s bucket.
fn add_day(days: &mut BTreeMap<i64, Acc>, day: i64, mut acc: Acc) {
    if let Some(held) = days.get_mut(&day) {
        held.merge(acc);
        truncate(held, DISTINCT_DAY_VALUES_MAX);
    } else {
        truncate(&mut acc, DISTINCT_DAY_VALUES_MAX);
        days.insert(day, acc);
    }
}

/// Drops the buckets before the window that ends at the newest bucket.
fn prune(days: &mut BTreeMap<i64, Acc>, window_days: Option<u32>) {
    let Some((&newest, _)) = days.last_key_value() else {
        return;
    };
    let oldest = oldest_day(newest, window_days);
    if days
        .first_key_value()
        .is_some_and(|(&first, _)| first < oldest)
    {
        *days = days.split_off(&oldest);
    }
}

/// The first day of the window ending on `last` (inclusive).
fn oldest_day(last: i64, window_days: Option<u32>) -> i64 {
    let span = i64::from(window_days.unwrap_or(1).max(1));
    last.saturating_sub(span - 1)
}

fn truncate(acc: &mut Acc, cap: usize) {
    if let Acc::Tally(tally) = acc {
        Tally::truncate(tally, cap);
    }
}
