//! [`ProfileTraits`]: every computed trait's state on one profile, as stored.
//!
//! State is keyed by trait name and tagged with its definition's fingerprint. Whenever
//! the profile is updated, state whose definition was removed or changed is discarded, so
//! a changed definition starts again from the next event (recomputing it from history is
//! the caller's choice). A profile holds state only for traits some event contributed to.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::acc::{self, contribution};
use super::def::TraitDef;
use super::state::{DISTINCT_VALUES_MAX, TraitState};
use crate::services::event::ServiceEvent;

/// One profile's computed-trait state. Definitions passed in must have passed
/// [`super::validate_defs`] (in particular, names are unique).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileTraits {
    /// State per trait name.
    states: BTreeMap<String, TraitState>,
}

impl ProfileTraits {
    /// A profile no event has contributed to.
    pub fn new() -> ProfileTraits {
        ProfileTraits::default()
    }

    /// Whether no trait holds state.
    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }

    /// Folds one event of this profile into every trait it concerns. Events may arrive
    /// in any order; each must be observed once.
    pub fn observe(&mut self, defs: &[TraitDef], event: &ServiceEvent) {
        let mut fitting = 0;
        for def in defs {
            fitting += usize::from(self.observe_one(def, event));
        }
        // Every state fits a definition unless some definition was removed or renamed.
        if fitting < self.states.len() {
            self.forget_stale(defs);
        }
    }

    /// Folds `event` into `def`'s trait, discarding state built for an older version of
    /// `def`; returns whether `def` now holds state.
    fn observe_one(&mut self, def: &TraitDef, event: &ServiceEvent) -> bool {
        let contribution = contribution(def, event);
        if contribution.is_none() && !self.states.contains_key(&def.name) {
            return false;
        }
        let fingerprint = def.fingerprint();
        let timestamp_ms = event.timestamp_ms;
        match (self.states.get_mut(&def.name), contribution) {
            (Some(state), Some(acc)) if state.fits(def, fingerprint) => {
                state.add(def, timestamp_ms, acc);
                true
            }
            (Some(state), None) if state.fits(def, fingerprint) => true,
            (_, Some(acc)) => {
                let state = TraitState::new(def, fingerprint, timestamp_ms, acc);
                self.states.insert(def.name.clone(), state);
                true
            }
            (Some(_), None) => {
                self.states.remove(&def.name);
                false
            }
            (None, None) => false,
        }
    }

    /// Folds in the state of a profile merged into this one: the result is the state one
    /// profile would hold had it observed both profiles' events.
    pub fn merge(&mut self, other: ProfileTraits, defs: &[TraitDef]) {
        self.forget_stale(defs);
        let mut other = other.states;
        for def in defs {
            let Some(state) = other.remove(&def.name) else {
                continue;
            };
            if !state.fits(def, def.fingerprint()) {
                continue;
            }
            match self.states.get_mut(&def.name) {
                Some(held) => held.merge(def, state),
                None => {
                    self.states.insert(def.name.clone(), state);
                }
            }
        }
    }

    /// Every trait's value as of `now_ms`, keyed by name; every definition has a key. A
    /// trait nothing counts towards (no event, or none in its window) reads `0` for
    /// `count`, `net_count` and `sum`, `{"values": [], "count": 0, "truncated": false}`
    /// for `unique`, and null for the others.
    pub fn values(&self, defs: &[TraitDef], now_ms: i64) -> BTreeMap<String, Value> {
        defs.iter()
            .map(|def| {
                let acc = self
                    .states
                    .get(&def.name)
                    .filter(|state| state.fits(def, def.fingerprint()))
                    .and_then(|state| state.read(def, now_ms));
                let value = match acc {
                    Some(acc) => acc.render(def.kind, DISTINCT_VALUES_MAX),
                    None => acc::empty_value(def.kind),
                };
                (def.name.clone(), value)
            })
            .collect()
    }

    /// Drops state whose definition is gone or changed.
    fn forget_stale(&mut self, defs: &[TraitDef]) {
        self.states.retain(|name, state| {
            defs.iter()
                .any(|def| def.name == *name && state.fits(def, def.fingerprint()))
        });
    }

    /// Checks every trait's size bounds; `Err` names the one broken.
    #[cfg(test)]
    pub fn check_bounds(&self, defs: &[TraitDef]) -> Result<(), String> {
        for def in defs {
            if let Some(state) = self.states.get(&def.name) {
                state.check_bounds(def)?;
            }
        }
        Ok(())
    }
}
