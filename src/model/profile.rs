//! The unified customer profile and the pure rules for folding events and other profiles
//! into it.
//!
//! Invariants:
//! - traits hold, per key, the value from the latest event by `(timestamp, seq)`: equal
//!   timestamps go to log order, the later event in the log wins — when events are
//!   observed and when two profiles merge alike (a value kept from before seqs were
//!   stored has seq 0 and loses every tie);
//! - `first_seen_ms <= last_seen_ms` once any event is observed;
//! - the number of trait keys is bounded by [`TRAITS_MAX`] on every path that adds keys.
//!   Keys held keep their place; new keys are taken in a fixed order until the profile is
//!   full — an event's in key order, a merged profile's newest first (by `(timestamp,
//!   seq)`, then key) — and the rest are dropped, counted in `audit.traits_dropped` and
//!   returned to the caller, which records the first drop in the audit trail;
//! - the number of identities is bounded by the merge limits (see [`super::resolve`]),
//!   and so is `merged_ids`, because every merged profile brought at least one identity.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::audit::Audit;
use super::block::EventMeta;
use super::event::MessageType;
use super::identity::{IdClass, Identity};

/// Most trait keys kept on one profile; keys beyond it are dropped, counted and reported
/// (documented limit).
pub const TRAITS_MAX: usize = 256;

/// One trait value and the event that set it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraitValue {
    /// The value as JSON text.
    pub json: String,
    /// Timestamp of the event that set it, ms since the epoch.
    pub timestamp_ms: i64,
    /// Seq of the event that set it (its place in the log), which breaks timestamp ties;
    /// 0 for a value stored before seqs were kept.
    pub seq: u64,
}

impl TraitValue {
    /// The order in which values replace each other: time, then log order.
    fn order(&self) -> (i64, u64) {
        (self.timestamp_ms, self.seq)
    }
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
    /// Bookkeeping that bounds the audit trail, and what limits left out.
    pub audit: Audit,
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
            audit: Audit::default(),
        }
    }

    /// Folds event `seq` into the profile: seen times, counters, traits. Returns the
    /// trait keys it could not add because the profile was full (in key order).
    pub fn observe(&mut self, event: &EventMeta, seq: u64) -> Vec<String> {
        self.first_seen_ms = self.first_seen_ms.min(event.timestamp_ms);
        self.last_seen_ms = self.last_seen_ms.max(event.timestamp_ms);
        self.counts[event.kind.index()] += 1;
        self.observe_traits(event.traits_json.as_deref(), event.timestamp_ms, seq)
    }

    /// Folds the profile traits an event sets (a JSON object text, as validation produced
    /// it) at `timestamp_ms` and `seq` into the profile — the traits part of
    /// [`Profile::observe`], for a copy of the profile that only keeps traits. Returns the
    /// keys it could not add because the profile was full (in key order).
    pub fn observe_traits(
        &mut self,
        traits_json: Option<&str>,
        timestamp_ms: i64,
        seq: u64,
    ) -> Vec<String> {
        let Some(traits) = traits_json else {
            return Vec::new();
        };
        // The text was produced by validation from a JSON object, so it parses; a parse
        // failure here would mean a corrupted log entry, which we refuse to half-apply.
        let Ok(Value::Object(traits)) = serde_json::from_str::<Value>(traits) else {
            return Vec::new();
        };
        let mut dropped = Vec::new();
        for (key, value) in traits {
            let value = TraitValue {
                json: value.to_string(),
                timestamp_ms,
                seq,
            };
            if let Some(key) = self.set_trait(key, value) {
                dropped.push(key);
            }
        }
        self.count_dropped(dropped.len());
        dropped
    }

    /// Sets `key` if `value` is later than the value held; returns the key if it is new
    /// and the profile has no room for it.
    fn set_trait(&mut self, key: String, value: TraitValue) -> Option<String> {
        let room = self.traits.len() < TRAITS_MAX;
        match self.traits.get_mut(&key) {
            Some(current) => {
                if value.order() > current.order() {
                    *current = value;
                }
                None
            }
            None if room => {
                self.traits.insert(key, value);
                None
            }
            None => Some(key),
        }
    }

    fn count_dropped(&mut self, dropped: usize) {
        self.audit.traits_dropped = self.audit.traits_dropped.saturating_add(dropped as u64);
    }

    /// Absorbs `other` into `self`: identities, traits (latest wins), seen times, counts,
    /// audit counters (remembering at most `audit_cap` refusal kinds). Returns the trait
    /// keys of `other` that did not fit.
    pub fn absorb(&mut self, other: Profile, audit_cap: usize) -> Vec<String> {
        for identity in other.identities {
            if !self.identities.contains(&identity) {
                self.identities.push(identity);
            }
        }
        let mut fresh = Vec::new();
        for (key, value) in other.traits {
            match self.traits.get_mut(&key) {
                Some(current) if value.order() > current.order() => *current = value,
                Some(_) => {}
                None => fresh.push((key, value)),
            }
        }
        // Newest first, so that a full profile keeps the most recently set of the rest.
        fresh.sort_by(|(a_key, a), (b_key, b)| {
            b.order().cmp(&a.order()).then_with(|| a_key.cmp(b_key))
        });
        let dropped: Vec<String> = fresh
            .into_iter()
            .filter_map(|(key, value)| self.set_trait(key, value))
            .collect();
        self.count_dropped(dropped.len());
        self.audit.absorb(other.audit, audit_cap);
        self.first_seen_ms = self.first_seen_ms.min(other.first_seen_ms);
        self.last_seen_ms = self.last_seen_ms.max(other.last_seen_ms);
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts) {
            *mine += theirs;
        }
        self.merged_ids.push(other.id);
        self.merged_ids.extend(other.merged_ids);
        dropped
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
        profile.observe(&identify(20, r#"{"plan":"pro"}"#), 1);
        profile.observe(&identify(10, r#"{"plan":"free","name":"Ada"}"#), 2);
        assert_eq!(profile.traits["plan"].json, r#""pro""#);
        assert_eq!(profile.traits["name"].json, r#""Ada""#);
        assert_eq!((profile.first_seen_ms, profile.last_seen_ms), (10, 20));
        assert_eq!(profile.counts_by_type()["identify"], 2);
    }

    /// Each row: events observed in log order as (timestamp, seq, plan), and the plan the
    /// profile ends with. Equal timestamps go to log order (the higher seq).
    #[test]
    fn timestamp_ties_go_to_log_order_table() {
        type Observed<'a> = &'a [(i64, u64, &'a str)];
        let cases: &[(&str, Observed, &str)] = &[
            ("later timestamp wins", &[(10, 1, "a"), (20, 2, "b")], "b"),
            (
                "earlier timestamp loses",
                &[(20, 1, "a"), (10, 2, "b")],
                "a",
            ),
            (
                "same timestamp: the later event wins",
                &[(10, 1, "a"), (10, 2, "b")],
                "b",
            ),
            (
                "same timestamp, three in one batch",
                &[(10, 7, "a"), (10, 8, "b"), (10, 9, "c")],
                "c",
            ),
            (
                "a value from before seqs (0) loses a tie",
                &[(10, 0, "a"), (10, 1, "b")],
                "b",
            ),
        ];
        for (name, events, want) in cases {
            let mut profile = Profile::new(1, vec![]);
            for (ts, seq, plan) in *events {
                profile.observe(&identify(*ts, &format!(r#"{{"plan":"{plan}"}}"#)), *seq);
            }
            assert_eq!(profile.traits["plan"].json, format!("\"{want}\""), "{name}");
        }
    }

    /// Merging two profiles whose values tie on timestamp keeps the later event's value,
    /// whichever profile absorbs the other.
    #[test]
    fn merge_ties_go_to_log_order_in_both_directions() {
        for (winner_seq, loser_seq, want) in [(1, 2, "loser"), (2, 1, "winner")] {
            let mut winner = Profile::new(1, vec![]);
            winner.observe(&identify(10, r#"{"plan":"winner"}"#), winner_seq);
            let mut loser = Profile::new(2, vec![]);
            loser.observe(&identify(10, r#"{"plan":"loser"}"#), loser_seq);
            winner.absorb(loser, 10);
            assert_eq!(winner.traits["plan"].json, format!("\"{want}\""));
        }
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
        winner.observe(&identify(5, r#"{"plan":"free"}"#), 1);
        let mut loser = Profile::new(2, vec![user.clone()]);
        loser.observe(&identify(9, r#"{"plan":"pro"}"#), 2);
        loser.merged_ids.push(7);
        loser.audit.traits_dropped = 4;
        assert!(winner.absorb(loser, 10).is_empty());
        assert_eq!(winner.identities, vec![anon, user.clone()]);
        assert_eq!(winner.traits["plan"].json, r#""pro""#);
        assert_eq!(winner.event_count(), 2);
        assert_eq!(winner.merged_ids, vec![2, 7]);
        assert_eq!(winner.audit.traits_dropped, 4);
        assert_eq!(
            winner.canonical(&[IdClass::UserId, IdClass::AnonymousId]),
            Some(&user)
        );
    }

    #[test]
    fn trait_keys_are_bounded_and_drops_reported() {
        let mut profile = Profile::new(1, vec![]);
        let mut dropped = Vec::new();
        for i in 0..TRAITS_MAX + 10 {
            let event = identify(i as i64, &format!(r#"{{"k{i:03}":1}}"#));
            dropped.extend(profile.observe(&event, i as u64 + 1));
        }
        assert_eq!(profile.traits.len(), TRAITS_MAX);
        assert_eq!(dropped.len(), 10);
        assert_eq!(
            dropped[0],
            format!("k{TRAITS_MAX:03}"),
            "the first key past the cap"
        );
        assert_eq!(profile.audit.traits_dropped, 10);
        // A key already held is still updated when the profile is full.
        profile.observe(&identify(10_000, r#"{"k000":2}"#), 10_000);
        assert_eq!(profile.traits["k000"].json, "2");
        assert_eq!(profile.audit.traits_dropped, 10);
    }

    /// One event with more new keys than there is room for: keys are taken in key order.
    #[test]
    fn an_event_past_the_trait_cap_keeps_its_first_keys_in_key_order() {
        let mut profile = Profile::new(1, vec![]);
        let full: Vec<String> = (0..TRAITS_MAX - 2)
            .map(|i| format!(r#""f{i:03}":1"#))
            .collect();
        profile.observe(&identify(1, &format!("{{{}}}", full.join(","))), 1);
        let dropped = profile.observe(&identify(2, r#"{"zz":1,"aa":1,"mm":1,"bb":1}"#), 2);
        assert_eq!(dropped, ["mm", "zz"]);
        assert!(profile.traits.contains_key("aa") && profile.traits.contains_key("bb"));
    }

    /// Merging two profiles whose keys together pass the cap: the survivor's keys stay, the
    /// absorbed profile's newest values fill the room, the rest are reported.
    #[test]
    fn a_merge_past_the_trait_cap_keeps_the_newest_and_reports_the_rest() {
        let mut winner = Profile::new(1, vec![]);
        let keys: Vec<String> = (0..TRAITS_MAX - 1)
            .map(|i| format!(r#""w{i:03}":1"#))
            .collect();
        winner.observe(&identify(1, &format!("{{{}}}", keys.join(","))), 1);
        let mut loser = Profile::new(2, vec![]);
        loser.observe(&identify(5, r#"{"old":1}"#), 2);
        loser.observe(&identify(9, r#"{"new":1}"#), 3);
        loser.observe(&identify(9, r#"{"newer":1}"#), 4);
        let dropped = winner.absorb(loser, 10);
        assert_eq!(winner.traits.len(), TRAITS_MAX);
        assert!(
            winner.traits.contains_key("newer"),
            "the latest (ts 9, seq 4) fits"
        );
        assert_eq!(dropped, ["new", "old"]);
        assert_eq!(winner.audit.traits_dropped, 2);
    }
}
