//! The state machine: applies committed batches to the state tables.
//!
//! Invariants (checked by the determinism test, relied on by replication):
//! - applying depends only on the batch, its log index and the state before it — never on a
//!   clock, randomness, hash-map iteration order or the node it runs on;
//! - a batch is applied entirely within the caller's write transaction, together with the
//!   new applied index, so a crash leaves either all of it or none of it;
//! - the state clock never goes backwards: it is `max(clock, batch.time_ms)`, so a leader
//!   with a slow clock cannot un-expire dedup entries or resurrect retention.
//!
//! Background work (dedup expiry, event retention) is done a bounded amount per batch, so
//! one batch never stalls the writer for long; it catches up over the next batches.

use std::collections::{BTreeMap, HashMap};

use fjall::{Readable, SingleWriterWriteTx};

use super::tables::*;
use super::{Keyspaces, StoreError, meta_u64};
use crate::model::command::SegmentDef;
use crate::model::event::{Batch, Event, EventOutcome};
use crate::model::identity::{IdKind, Identity};
use crate::model::profile::Profile;
use crate::model::resolve::{self, IdentityGraph, MergeRules, Plan, Target};

/// A change to a segment definition.
#[derive(Debug, Clone, Copy)]
pub enum SegmentChange<'a> {
    /// Create or replace.
    Put(&'a SegmentDef),
    /// Delete by id.
    Delete(&'a str),
}

/// Settings that change what applying does. They must be equal on every replica.
#[derive(Debug, Clone)]
pub struct ApplySettings {
    /// Merge limits and canonical-id priority.
    pub rules: MergeRules,
    /// How long a messageId is remembered for dedup, ms.
    pub dedup_window_ms: i64,
    /// How long events are kept, ms.
    pub retention_ms: i64,
}

/// Most expired dedup entries or events removed per batch, beyond two per applied event.
const SWEEP_SLACK: usize = 64;

/// The state counters, read at the start of a transaction and written at its end.
#[derive(Debug, Clone, Copy)]
struct Counters {
    applied_index: u64,
    clock_ms: i64,
    next_seq: u64,
    next_profile: u64,
    next_merge: u64,
    next_feed: u64,
}

/// Applies batches inside one write transaction. Call [`Applier::finish`] before commit.
pub struct Applier<'a, 'tx> {
    tx: &'a mut SingleWriterWriteTx<'tx>,
    ks: &'a Keyspaces,
    /// Profiles read or changed in this transaction; `None` = merged away.
    cache: BTreeMap<u64, Option<Profile>>,
    counters: Counters,
    settings: &'a ApplySettings,
}

impl<'a, 'tx> Applier<'a, 'tx> {
    /// Starts applying in `tx`.
    pub fn open(
        tx: &'a mut SingleWriterWriteTx<'tx>,
        ks: &'a Keyspaces,
        settings: &'a ApplySettings,
    ) -> Result<Applier<'a, 'tx>, StoreError> {
        let read = |key: &str| meta_u64(&*tx, &ks.meta, key, META);
        let counters = Counters {
            applied_index: read(META_APPLIED_INDEX)?,
            clock_ms: read(META_CLOCK_MS)? as i64,
            next_seq: read(META_NEXT_SEQ)?.max(1),
            next_profile: read(META_NEXT_PROFILE)?.max(1),
            next_merge: read(META_NEXT_MERGE)?.max(1),
            next_feed: read(META_NEXT_FEED)?.max(1),
        };
        Ok(Applier {
            tx,
            ks,
            cache: BTreeMap::new(),
            counters,
            settings,
        })
    }

    /// The index of the last batch applied.
    pub fn applied_index(&self) -> u64 {
        self.counters.applied_index
    }

    /// Applies the batch at log `index`, which must be above the last applied index.
    pub fn apply(&mut self, index: u64, batch: &Batch) -> Result<Vec<EventOutcome>, StoreError> {
        self.advance(index)?;
        self.counters.clock_ms = self.counters.clock_ms.max(batch.time_ms);
        let mut outcomes = Vec::with_capacity(batch.events.len());
        for event in &batch.events {
            outcomes.push(self.apply_event(event)?);
        }
        let budget = batch.events.len() * 2 + SWEEP_SLACK;
        self.expire_dedup(budget)?;
        self.expire_events(budget)?;
        self.expire_feed(budget)?;
        Ok(outcomes)
    }

    /// Records that log entry `index` was applied. Entries that carry no data (Raft's
    /// membership and blank entries) only advance the index; indexes only go up.
    pub fn advance(&mut self, index: u64) -> Result<(), StoreError> {
        if index <= self.counters.applied_index {
            return Err(StoreError::Corrupt(format!(
                "log entry {index} applied after {}: the log went backwards",
                self.counters.applied_index
            )));
        }
        self.counters.applied_index = index;
        Ok(())
    }

    /// Writes cached profiles and counters back. Must be called before the commit.
    pub fn finish(mut self) -> Result<(), StoreError> {
        let ks = self.ks;
        for (id, profile) in std::mem::take(&mut self.cache) {
            match profile {
                Some(profile) => self
                    .tx
                    .insert(&ks.profiles, u64_bytes(id), encode(&profile)),
                None => self.tx.remove(&ks.profiles, u64_bytes(id)),
            }
        }
        let c = self.counters;
        let clock = c.clock_ms.max(0) as u64;
        for (key, value) in [
            (META_APPLIED_INDEX, c.applied_index),
            (META_CLOCK_MS, clock),
            (META_NEXT_SEQ, c.next_seq),
            (META_NEXT_PROFILE, c.next_profile),
            (META_NEXT_MERGE, c.next_merge),
            (META_NEXT_FEED, c.next_feed),
        ] {
            self.tx.insert(&ks.meta, key, u64_bytes(value));
        }
        Ok(())
    }

    fn apply_event(&mut self, event: &Event) -> Result<EventOutcome, StoreError> {
        let ks = self.ks;
        let dedup_key = dedup_key(&event.source, &event.message_id);
        if let Some(seq) = self.tx.get(&ks.dedup, &dedup_key)? {
            return Ok(EventOutcome::Duplicate {
                seq: read_u64(&seq, DEDUP)?,
            });
        }
        let identities = self.event_identities(event)?;
        let graph = self.graph_for(&identities)?;
        let plan = resolve::resolve(&identities, &graph, &self.settings.rules);
        let profile_id = self.carry_out(&plan, event)?;

        let seq = self.counters.next_seq;
        self.counters.next_seq += 1;
        let profile = self.profile_mut(profile_id)?;
        profile.observe(event);
        let stored = StoredEvent {
            profile_id,
            kind: event.kind,
            name: event.name.clone(),
            timestamp_ms: event.timestamp_ms,
            stored_at_ms: self.counters.clock_ms,
            source: event.source.clone(),
            message_id: event.message_id.clone(),
            body_json: event.body_json.clone(),
        };
        self.tx.insert(&ks.events, u64_bytes(seq), encode(&stored));
        self.tx.insert(
            &ks.profile_events,
            pair_key(profile_id, seq),
            index_value(&event.name, event.timestamp_ms),
        );
        self.tx.insert(&ks.dedup, dedup_key, u64_bytes(seq));
        let expiry = DedupExpiry {
            stored_at_ms: self.counters.clock_ms,
            source: event.source.clone(),
            message_id: event.message_id.clone(),
        };
        self.tx
            .insert(&ks.dedup_expiry, u64_bytes(seq), encode(&expiry));
        self.feed(FeedRecord::Event {
            seq,
            profile: profile_id,
        });
        Ok(EventOutcome::Stored { seq, profile_id })
    }

    /// The event's identities, plus alias's `previousId`: as a user id if one exists with
    /// that value, otherwise as an anonymous id.
    fn event_identities(&self, event: &Event) -> Result<Vec<Identity>, StoreError> {
        let mut identities = event.identities.clone();
        if let Some(previous) = &event.previous_id {
            let as_user = Identity {
                kind: IdKind::UserId,
                value: previous.clone(),
            };
            let identity = if self.tx.get(&self.ks.identities, as_user.key())?.is_some() {
                as_user
            } else {
                Identity {
                    kind: IdKind::AnonymousId,
                    value: previous.clone(),
                }
            };
            if !identities.contains(&identity) {
                identities.push(identity);
            }
        }
        Ok(identities)
    }

    /// The part of the identity graph that resolution of `identities` can look at.
    fn graph_for(&mut self, identities: &[Identity]) -> Result<GraphView, StoreError> {
        let mut view = GraphView::default();
        for identity in identities {
            let owner = match self.tx.get(&self.ks.identities, identity.key())? {
                Some(bytes) => Some(read_u64(&bytes, IDENTITIES)?),
                None => None,
            };
            if let Some(owner) = owner {
                view.owners.insert(identity.clone(), owner);
                if let std::collections::hash_map::Entry::Vacant(slot) = view.members.entry(owner) {
                    slot.insert(self.profile_mut(owner)?.identities.clone());
                }
            }
        }
        Ok(view)
    }

    /// Carries out a resolution plan; returns the profile the event lands on.
    fn carry_out(&mut self, plan: &Plan, event: &Event) -> Result<u64, StoreError> {
        let target = match plan.target {
            Target::Existing(id) => id,
            Target::New => {
                let id = self.counters.next_profile;
                self.counters.next_profile += 1;
                self.cache.insert(id, Some(Profile::new(id, Vec::new())));
                id
            }
        };
        for &loser in &plan.merge {
            self.merge(target, loser, event)?;
        }
        for identity in &plan.attach {
            self.tx
                .insert(&self.ks.identities, identity.key(), u64_bytes(target));
            self.profile_mut(target)?.identities.push(identity.clone());
        }
        for refusal in &plan.refusals {
            let record = MergeAction::Refused {
                profile: target,
                identity: refusal.identity.clone(),
                other_profile: refusal.other_profile,
                rule: refusal.rule.clone(),
            };
            self.record(target, event, record.clone())?;
            if let Some(other) = refusal.other_profile {
                self.record(other, event, record)?;
            }
        }
        Ok(target)
    }

    fn merge(&mut self, target: u64, loser: u64, event: &Event) -> Result<(), StoreError> {
        let absorbed = match self.cache.insert(loser, None) {
            Some(Some(profile)) => profile,
            Some(None) => {
                return Err(StoreError::Corrupt(format!(
                    "profile {loser} merged twice in one batch"
                )));
            }
            None => self.load_profile(loser)?,
        };
        let ks = self.ks;
        for identity in &absorbed.identities {
            self.tx
                .insert(&ks.identities, identity.key(), u64_bytes(target));
        }
        self.tx
            .insert(&ks.redirects, u64_bytes(loser), u64_bytes(target));
        // The loser's event index and audit trail move to the target, keeping their
        // sequence numbers (globally unique, so nothing collides).
        for (keyspace, name) in [(&ks.profile_events, PROFILE_EVENTS), (&ks.merges, MERGES)] {
            let mut moved = Vec::new();
            for guard in self.tx.prefix(keyspace, u64_bytes(loser)) {
                let (key, value) = guard.into_inner()?;
                moved.push((read_pair(&key, name)?.1, value));
            }
            for (seq, value) in moved {
                self.tx.remove(keyspace, pair_key(loser, seq));
                self.tx.insert(keyspace, pair_key(target, seq), value);
            }
        }
        let linked_by = absorbed
            .identities
            .iter()
            .find(|identity| event_mentions(event, identity))
            .or(absorbed.identities.first())
            .cloned()
            .ok_or_else(|| StoreError::Corrupt(format!("profile {loser} has no identities")))?;
        let action = MergeAction::Merged {
            into: target,
            from: loser,
            linked_by,
            identities: absorbed.identities.clone(),
        };
        self.profile_mut(target)?.absorb(absorbed);
        self.feed(FeedRecord::Merged {
            into: target,
            from: loser,
        });
        self.record(target, event, action)
    }

    /// Appends to the change feed.
    fn feed(&mut self, record: FeedRecord) {
        let seq = self.counters.next_feed;
        self.counters.next_feed += 1;
        let entry = FeedEntry {
            at_ms: self.counters.clock_ms,
            record,
        };
        self.tx
            .insert(&self.ks.feed, u64_bytes(seq), encode(&entry));
    }

    /// Applies a segment definition change at log `index`.
    pub fn apply_segment(
        &mut self,
        index: u64,
        change: SegmentChange<'_>,
    ) -> Result<(), StoreError> {
        self.advance(index)?;
        let id = match change {
            SegmentChange::Put(def) => {
                self.tx
                    .insert(&self.ks.segment_defs, def.id.as_str(), encode(def));
                def.id.clone()
            }
            SegmentChange::Delete(id) => {
                self.tx.remove(&self.ks.segment_defs, id);
                id.to_owned()
            }
        };
        self.feed(FeedRecord::SegmentChanged { id });
        Ok(())
    }

    fn record(
        &mut self,
        profile: u64,
        event: &Event,
        action: MergeAction,
    ) -> Result<(), StoreError> {
        let seq = self.counters.next_merge;
        self.counters.next_merge += 1;
        let record = MergeRecord {
            at_ms: self.counters.clock_ms,
            message_id: event.message_id.clone(),
            source: event.source.clone(),
            action,
        };
        self.tx
            .insert(&self.ks.merges, pair_key(profile, seq), encode(&record));
        Ok(())
    }

    fn load_profile(&self, id: u64) -> Result<Profile, StoreError> {
        let bytes = self
            .tx
            .get(&self.ks.profiles, u64_bytes(id))?
            .ok_or_else(|| {
                StoreError::Corrupt(format!("identity points at missing profile {id}"))
            })?;
        decode(&bytes, PROFILES)
    }

    fn profile_mut(&mut self, id: u64) -> Result<&mut Profile, StoreError> {
        if !self.cache.contains_key(&id) {
            let profile = self.load_profile(id)?;
            self.cache.insert(id, Some(profile));
        }
        self.cache
            .get_mut(&id)
            .and_then(Option::as_mut)
            .ok_or_else(|| {
                StoreError::Corrupt(format!("profile {id} used after it was merged away"))
            })
    }

    /// The oldest entries of `keyspace` (in key order, at most `budget`) whose time, as
    /// `at` reads it, is more than `window_ms` before the state clock. Keyspaces swept this
    /// way are appended in time order, so the sweep stops at the first one still young.
    fn expired<T: serde::de::DeserializeOwned>(
        &self,
        keyspace: &fjall::SingleWriterTxKeyspace,
        name: &'static str,
        window_ms: i64,
        budget: usize,
        at: impl Fn(&T) -> i64,
    ) -> Result<Vec<(fjall::Slice, T)>, StoreError> {
        let horizon = self.counters.clock_ms.saturating_sub(window_ms);
        let mut expired = Vec::new();
        for guard in self.tx.iter(keyspace).take(budget) {
            let (key, value) = guard.into_inner()?;
            let item: T = decode(&value, name)?;
            if at(&item) >= horizon {
                break;
            }
            expired.push((key, item));
        }
        Ok(expired)
    }

    fn expire_dedup(&mut self, budget: usize) -> Result<(), StoreError> {
        let ks = self.ks;
        let window = self.settings.dedup_window_ms;
        let expired = self.expired(
            &ks.dedup_expiry,
            DEDUP_EXPIRY,
            window,
            budget,
            |e: &DedupExpiry| e.stored_at_ms,
        )?;
        for (key, expiry) in expired {
            self.tx.remove(&ks.dedup_expiry, key);
            self.tx
                .remove(&ks.dedup, dedup_key(&expiry.source, &expiry.message_id));
        }
        Ok(())
    }

    fn expire_feed(&mut self, budget: usize) -> Result<(), StoreError> {
        let ks = self.ks;
        let window = self.settings.retention_ms;
        let expired = self.expired(&ks.feed, FEED, window, budget, |e: &FeedEntry| e.at_ms)?;
        for (key, _) in expired {
            self.tx.remove(&ks.feed, key);
        }
        Ok(())
    }

    fn expire_events(&mut self, budget: usize) -> Result<(), StoreError> {
        let ks = self.ks;
        let window = self.settings.retention_ms;
        let expired = self.expired(&ks.events, EVENTS, window, budget, |e: &StoredEvent| {
            e.stored_at_ms
        })?;
        for (key, stored) in expired {
            let seq = read_u64(&key, EVENTS)?;
            self.tx.remove(&ks.events, u64_bytes(seq));
            let owner = self.current_owner(stored.profile_id)?;
            self.tx.remove(&ks.profile_events, pair_key(owner, seq));
        }
        Ok(())
    }

    /// Follows merge redirects to the profile that holds `id`'s data now.
    fn current_owner(&self, mut id: u64) -> Result<u64, StoreError> {
        while let Some(next) = self.tx.get(&self.ks.redirects, u64_bytes(id))? {
            id = read_u64(&next, REDIRECTS)?;
        }
        Ok(id)
    }
}

/// Whether the event carries `identity` (used to name the link that caused a merge).
fn event_mentions(event: &Event, identity: &Identity) -> bool {
    event.identities.contains(identity)
        || (event.previous_id.as_deref() == Some(identity.value.as_str())
            && matches!(identity.kind, IdKind::UserId | IdKind::AnonymousId))
}

/// A read-only slice of the identity graph, gathered before resolution.
#[derive(Default)]
struct GraphView {
    owners: HashMap<Identity, u64>,
    members: HashMap<u64, Vec<Identity>>,
}

impl IdentityGraph for GraphView {
    fn owner(&self, identity: &Identity) -> Option<u64> {
        self.owners.get(identity).copied()
    }
    fn identities_of(&self, id: u64) -> Vec<Identity> {
        self.members.get(&id).cloned().unwrap_or_default()
    }
}
