//! The unified customer profile and the pure rules for folding events and other profiles
//! into it.
//!
//! Invariants:
//! - traits hold, per key, the value from the event with the latest timestamp (ties keep
//!   the value already held, so the outcome never depends on merge direction alone);
//! - `first_seen_ms <= last_seen_ms` once any event is observed;
//! - the number of trait keys is bounded by [`TRAITS_MAX`]; the number of identities is
//!   bounded by the merge limits (see [`super::resolve`]), and so is `merged_ids`, because
//!   every merged profile brought at least one identity with it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::block::EventMeta;
use super::event::MessageType;
use super::identity::{IdClass, Identity};

/// Most trait keys kept on one profile; keys beyond it are dropped (documented limit).
pub const TRAITS_MAX: usize = 256;

/// One trait value and the time of the event that set it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraitValue {
    /// The value as JSON text.
    pub json: String,
    /// Timestamp of the event that set it, ms since the epoch.
    pub timestamp_ms: i64,
}

/// A unified customer profile, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    /// Internal id; stable while the profile exists, retired when it is merged away.
    pub id: u64,
    /// Every identity of the profile, in the order they were attached.
    pub identities: Vec<Identity>,
    /// Merged traits, latest by event timestamp.
    pub traits: BTreeMap<String, TraitValue>,
    /// Earliest event timestamp seen, ms since the epoch.
    pub first_seen_ms: i64,
    /// Latest event timestamp seen, ms since the epoch.
    pub last_seen_ms: i64,
    /// Lifetime event counts, indexed by [`MessageType::index`].
    pub counts: [u64; 6],
    /// Ids of profiles merged into this one (directly or transitively).
    pub merged_ids: Vec<u64>,
}

impl Profile {
    /// An empty profile with the given id and identities.
    pub fn new(id: u64, identities: Vec<Identity>) -> Profile {
        Profile {
            id,
            identities,
            traits: BTreeMap::new(),
            first_seen_ms: i64::MAX,
            last_seen_ms: i64::MIN,
            counts: [0; 6],
            merged_ids: Vec::new(),
        }
    }

    /// Folds one event into the profile: seen times, counters, traits.
    pub fn observe(&mut self, event: &EventMeta) {
        self.first_seen_ms = self.first_seen_ms.min(event.timestamp_ms);
        self.last_seen_ms = self.last_seen_ms.max(event.timestamp_ms);
        self.counts[event.kind.index()] += 1;
        let Some(traits) = event.traits_json.as_deref() else {
            return;
        };
        // The text was produced by validation from a JSON object, so it parses; a parse
        // failure here would mean a corrupted log entry, which we refuse to half-apply.
        let Ok(Value::Object(traits)) = serde_json::from_str::<Value>(traits) else {
            return;
        };
        for (key, value) in traits {
            self.set_trait(
                key,
                TraitValue {
                    json: value.to_string(),
                    timestamp_ms: event.timestamp_ms,
                },
            );
        }
    }

    fn set_trait(&mut self, key: String, value: TraitValue) {
        let room = self.traits.len() < TRAITS_MAX;
        match self.traits.get_mut(&key) {
            Some(current) if current.timestamp_ms < value.timestamp_ms => *current = value,
            Some(_) => {}
            None if room => {
                self.traits.insert(key, value);
            }
            None => {}
        }
    }

    /// Absorbs `other` into `self`: identities, traits (latest wins), seen times, counts.
    pub fn absorb(&mut self, other: Profile) {
        for identity in other.identities {
            if !self.identities.contains(&identity) {
                self.identities.push(identity);
            }
        }
        for (key, value) in other.traits {
            self.set_trait(key, value);
        }
        self.first_seen_ms = self.first_seen_ms.min(other.first_seen_ms);
        self.last_seen_ms = self.last_seen_ms.max(other.last_seen_ms);
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts) {
            *mine += theirs;
        }
        self.merged_ids.push(other.id);
        self.merged_ids.extend(other.merged_ids);
    }

    /// The identity that names the profile: the first identity of the highest-priority
    /// class present.
    pub fn canonical<'a>(&'a self, priority: &[IdClass]) -> Option<&'a Identity> {
        priority.iter().find_map(|class| {
            self.identities
                .iter()
                .find(|identity| identity.kind.class() == *class)
        })
    }

    /// Total events ever observed.
    pub fn event_count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Counts by message type name, omitting zeros.
    pub fn counts_by_type(&self) -> BTreeMap<&'static str, u64> {
        MessageType::ALL
            .into_iter()
            .filter(|kind| self.counts[kind.index()] > 0)
            .map(|kind| (kind.as_str(), self.counts[kind.index()]))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::identity::IdKind;

    fn identify(ts: i64, traits: &str) -> EventMeta {
        EventMeta {
            source: "s".into(),
            message_id: format!("m{ts}"),
            kind: MessageType::Identify,
            name: String::new(),
            timestamp_ms: ts,
            received_at_ms: ts,
            identities: vec![],
            previous_id: None,
            traits_json: Some(traits.into()),
        }
    }

    #[test]
    fn latest_trait_wins_regardless_of_arrival_order() {
        let mut profile = Profile::new(1, vec![]);
        profile.observe(&identify(20, r#"{"plan":"pro"}"#));
        profile.observe(&identify(10, r#"{"plan":"free","name":"Ada"}"#));
        assert_eq!(profile.traits["plan"].json, r#""pro""#);
        assert_eq!(profile.traits["name"].json, r#""Ada""#);
        assert_eq!((profile.first_seen_ms, profile.last_seen_ms), (10, 20));
        assert_eq!(profile.counts_by_type()["identify"], 2);
    }

    #[test]
    fn absorb_combines_everything() {
        let user = Identity {
            kind: IdKind::UserId,
            value: "u".into(),
        };
        let anon = Identity {
            kind: IdKind::AnonymousId,
            value: "a".into(),
        };
        let mut winner = Profile::new(1, vec![anon.clone()]);
        winner.observe(&identify(5, r#"{"plan":"free"}"#));
        let mut loser = Profile::new(2, vec![user.clone()]);
        loser.observe(&identify(9, r#"{"plan":"pro"}"#));
        loser.merged_ids.push(7);
        winner.absorb(loser);
        assert_eq!(winner.identities, vec![anon, user.clone()]);
        assert_eq!(winner.traits["plan"].json, r#""pro""#);
        assert_eq!(winner.event_count(), 2);
        assert_eq!(winner.merged_ids, vec![2, 7]);
        assert_eq!(
            winner.canonical(&[IdClass::UserId, IdClass::AnonymousId]),
            Some(&user)
        );
    }

    #[test]
    fn trait_keys_are_bounded() {
        let mut profile = Profile::new(1, vec![]);
        for i in 0..TRAITS_MAX + 10 {
            profile.observe(&identify(i as i64, &format!(r#"{{"k{i}":1}}"#)));
        }
        assert_eq!(profile.traits.len(), TRAITS_MAX);
    }
}
