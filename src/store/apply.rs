//! The state machine: applies committed log entries to the state tables.
//!
//! Invariants (checked by the determinism test, relied on by replication):
//! - applying depends only on the entries, their log indexes and the state before them —
//!   never on a clock, randomness, hash-map iteration order or the node it runs on;
//! - every entry of one [`Applier`] lands in one write batch, together with the new
//!   applied index, so a crash leaves either all of them or none;
//! - the state clock never goes backwards and moves forward by at most
//!   `clock_step_ms_max` per entry ([`next_clock_ms`]): a leader with a slow clock cannot
//!   un-expire dedup entries or resurrect retention, and one whose clock leapt ahead (or a
//!   forged entry) cannot expire the dedup window or retention early by more than a step
//!   per entry. The leader's stamps are bounded too (`crate::model::time::BatchClock`);
//! - every profile's audit trail is bounded: a refusal is recorded once per profile and
//!   kind, and at most `audit_records_max` records are kept per profile id (the oldest go,
//!   counted in the profile) — see [`crate::model::audit`].
//!
//! How it stays cheap (the write path's budget is a few microseconds per event): an entry
//! carries only new events (the leader screened duplicates, see [`super::dedup`]), so
//! applying one never reads the dedup index; it reads the identity graph and profiles from
//! one snapshot plus overlays of what this batch already changed, executes in memory, and
//! writes per event only the profile's event index entry, per touched profile one record,
//! and per log entry one feed record. The dedup keys are handed to
//! [`super::dedup_index`], which keeps them out of the state (it can find them again from
//! the feed and the log). The event body itself is never copied: it stays in the log.
//!
//! Background work (retention of old events and feed entries) is done a bounded amount per
//! entry, so one entry never stalls the writer for long; it catches up over the next ones.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use fjall::{Readable, Snapshot};

use super::batch::SortedBatch;
use super::dedup_index::EntryKeys;
use super::hot::{Changes, HotCache};
use super::known::KnownIdentities;
use super::recent;
use super::tables::*;
use super::{Keyspaces, StoreError, meta_u64};
use crate::model::audit::RefusalKind;
use crate::model::block::{EventMeta, Head};
use crate::model::command::SegmentDef;
use crate::model::event::EventOutcome;
use crate::model::identity::{IdKind, Identity};
use crate::model::profile::{Profile, TRAITS_MAX};
use crate::model::resolve::{self, IdentityGraph, MergeRules, Plan, Target};
use crate::model::time::next_clock_ms;

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
    /// Most audit (merge history) records kept under one profile id.
    pub audit_records_max: usize,
    /// Most one log entry may move the state clock forward, ms (see [`next_clock_ms`]).
    pub clock_step_ms_max: i64,
}

/// Most feed records examined for retention per entry, beyond two per applied event.
const SWEEP_SLACK: usize = 64;

/// The state counters, read when an applier opens and written when it finishes.
#[derive(Debug, Clone, Copy)]
struct Counters {
    applied_index: u64,
    clock_ms: i64,
    next_profile: u64,
    next_merge: u64,
    next_feed: u64,
    events_stored: u64,
    events_expired: u64,
    /// The key of the last feed entry retention removed (scans start after it, never
    /// wading through the tombstones of everything removed before).
    feed_tail: u64,
}

/// The filters an [`Applier`] keeps true: every key it writes is inserted before its
/// batch commits, so they never answer "absent" for a committed key.
#[derive(Default)]
pub struct Filters<'a> {
    /// Every identity key the committed state may hold, if there is such a filter.
    pub known: Option<&'a KnownIdentities>,
    /// The dedup keys stored within the window, if there is such a filter.
    pub recent: Option<recent::Writer<'a>>,
}

/// Applies entries into one write batch. Call [`Applier::finish`] and commit the batch.
pub struct Applier<'a> {
    snapshot: Snapshot,
    batch: &'a mut SortedBatch,
    ks: &'a Keyspaces,
    /// Committed owners and profiles, consulted before the snapshot and taught what the
    /// snapshot answered (it is the latest committed state: appliers run one at a time).
    hot: &'a HotCache,
    /// Filters of what the committed state may hold, taught each key this batch writes.
    filters: Filters<'a>,
    /// Profiles read or changed in this batch; `None` = merged away.
    profiles: BTreeMap<u64, Option<Profile>>,
    /// The stored [`PROFILES`] record of each profile in `profiles` that was loaded and is
    /// in the current layout: a profile whose encoding still equals it is not rewritten.
    stored: HashMap<u64, fjall::Slice>,
    /// Identities (by key) pointed at a profile in this batch.
    identities: HashMap<String, u64>,
    counters: Counters,
    settings: &'a ApplySettings,
    /// Each applied entry's dedup keys, for the dedup index once [`Applier::finish`]ed.
    dedup: Vec<EntryKeys>,
}

/// What a finished [`Applier`] hands back for after its batch is built.
pub struct Finished {
    /// The state clock.
    pub clock_ms: i64,
    /// What the batch changed, for [`HotCache::remember`] once it is committed.
    pub changes: Changes,
    /// The dedup keys of the batch's entries, for the dedup index before it commits.
    pub dedup: Vec<EntryKeys>,
}

impl<'a> Applier<'a> {
    /// Starts applying on `snapshot` (the state as last committed) into `batch`.
    pub fn open(
        snapshot: Snapshot,
        batch: &'a mut SortedBatch,
        ks: &'a Keyspaces,
        hot: &'a HotCache,
        filters: Filters<'a>,
        settings: &'a ApplySettings,
    ) -> Result<Applier<'a>, StoreError> {
        let read = |key: &str| meta_u64(&snapshot, &ks.meta, key, META);
        let counters = Counters {
            applied_index: read(META_APPLIED_INDEX)?,
            clock_ms: read(META_CLOCK_MS)? as i64,
            next_profile: read(META_NEXT_PROFILE)?.max(1),
            next_merge: read(META_NEXT_MERGE)?.max(1),
            next_feed: read(META_NEXT_FEED)?.max(1),
            events_stored: read(META_EVENTS_STORED)?,
            events_expired: read(META_EVENTS_EXPIRED)?,
            feed_tail: read(META_FEED_TAIL)?,
        };
        Ok(Applier {
            snapshot,
            batch,
            ks,
            hot,
            filters,
            profiles: BTreeMap::new(),
            stored: HashMap::new(),
            identities: HashMap::new(),
            counters,
            settings,
            dedup: Vec::new(),
        })
    }

    /// One past the raft index of the last entry applied (0 when none).
    pub fn applied_index(&self) -> u64 {
        self.counters.applied_index
    }

    /// The state clock.
    pub fn clock_ms(&self) -> i64 {
        self.counters.clock_ms
    }

    /// Applies the block head of the entry at raft index `log_index`: every event in it is
    /// new (the leader screened duplicates), so every outcome is `Stored`.
    pub fn apply_block(
        &mut self,
        log_index: u64,
        head: &Head,
    ) -> Result<Vec<EventOutcome>, StoreError> {
        self.advance(log_index)?;
        self.counters.clock_ms = next_clock_ms(
            self.counters.clock_ms,
            head.time_ms,
            self.settings.clock_step_ms_max,
        );
        let mut outcomes = Vec::with_capacity(head.events.len());
        let mut records = Vec::with_capacity(head.events.len());
        let mut hashes = Vec::with_capacity(head.events.len());
        for (ordinal, event) in head.events.iter().enumerate() {
            let seq = event_seq(log_index, ordinal);
            hashes.push(self.apply_event(seq, event, &mut records)?);
            outcomes.push(EventOutcome::Stored { seq });
        }
        if !hashes.is_empty() {
            self.dedup.push(EntryKeys {
                // The key `feed` gives this entry's feed entry.
                key: self.counters.next_feed,
                stored_at_ms: self.counters.clock_ms,
                first_seq: event_seq(log_index, 0),
                hashes,
            });
        }
        self.counters.events_stored += head.events.len() as u64;
        self.feed(log_index, records);
        self.expire(head.events.len() * 2 + SWEEP_SLACK)?;
        Ok(outcomes)
    }

    /// Records that raft entry `log_index` was applied. Entries that carry no data (Raft's
    /// membership and blank entries) only advance the index; indexes only go up.
    pub fn advance(&mut self, log_index: u64) -> Result<(), StoreError> {
        let index = log_index + 1;
        if index <= self.counters.applied_index {
            return Err(StoreError::Corrupt(format!(
                "log entry {log_index} applied after {}: the log went backwards",
                self.counters.applied_index - 1
            )));
        }
        self.counters.applied_index = index;
        Ok(())
    }

    /// Writes touched profiles and the counters into the batch; returns the state clock,
    /// what the batch changed and the entries' dedup keys. A touched profile's activity
    /// (seen times, counts) is always written; its [`PROFILES`] record only when its
    /// encoding differs from the stored one — most events change nothing else.
    pub fn finish(mut self) -> Finished {
        let ks = self.ks;
        let mut changes = Changes {
            identities: self.identities.into_iter().collect(),
            profiles: Vec::with_capacity(self.profiles.len()),
        };
        for (id, profile) in self.profiles {
            match profile {
                Some(mut profile) => {
                    let record = encode_profile(&mut profile);
                    let record = match self.stored.remove(&id) {
                        Some(stored) if *stored == *record => stored,
                        _ => {
                            let record = fjall::Slice::from(record);
                            self.batch
                                .insert(&ks.profiles, u64_bytes(id), record.clone());
                            record
                        }
                    };
                    self.batch.insert(
                        &ks.profile_activity,
                        u64_bytes(id),
                        encode_activity(&profile),
                    );
                    changes.profiles.push((id, Some((profile, record))));
                }
                None => {
                    self.batch.remove(&ks.profiles, u64_bytes(id));
                    self.batch.remove(&ks.profile_activity, u64_bytes(id));
                    changes.profiles.push((id, None));
                }
            }
        }
        let c = self.counters;
        for (key, value) in [
            (META_APPLIED_INDEX, c.applied_index),
            (META_CLOCK_MS, c.clock_ms.max(0) as u64),
            (META_NEXT_PROFILE, c.next_profile),
            (META_NEXT_MERGE, c.next_merge),
            (META_NEXT_FEED, c.next_feed),
            (META_EVENTS_STORED, c.events_stored),
            (META_EVENTS_EXPIRED, c.events_expired),
            (META_FEED_TAIL, c.feed_tail),
        ] {
            self.batch.insert(&ks.meta, key, u64_bytes(value));
        }
        Finished {
            clock_ms: c.clock_ms,
            changes,
            dedup: self.dedup,
        }
    }

    /// Applies one event; returns its dedup key.
    fn apply_event(
        &mut self,
        seq: u64,
        event: &EventMeta,
        records: &mut Vec<FeedRecord>,
    ) -> Result<[u8; 16], StoreError> {
        let identities = self.event_identities(event)?;
        let owners = self.graph_for(&identities)?;
        let graph = GraphView {
            owners: &owners,
            profiles: &self.profiles,
        };
        let plan = resolve::resolve(&identities, &graph, &self.settings.rules);
        let profile_id = self.carry_out(&plan, event, records)?;
        let dropped = self.profile_mut(profile_id)?.observe(event, seq);
        self.traits_dropped(profile_id, event, dropped)?;
        let ks = self.ks;
        self.batch.insert(
            &ks.profile_events,
            pair_key(profile_id, seq),
            index_value(&event.name, event.timestamp_ms),
        );
        let dedup_key = dedup_hash(&event.source, &event.message_id);
        if let Some(recent) = &mut self.filters.recent {
            recent.insert(&dedup_key, self.counters.clock_ms)?;
        }
        records.push(FeedRecord::Event {
            seq,
            profile: profile_id,
        });
        Ok(dedup_key)
    }

    /// The profile that owns `identity`, as of this batch.
    fn owner(&self, identity: &Identity) -> Result<Option<u64>, StoreError> {
        let key = identity.key();
        if let Some(&owner) = self.identities.get(&key) {
            return Ok(Some(owner));
        }
        if let Some(owner) = self.hot.owner(&key) {
            return Ok(Some(owner));
        }
        if let Some(known) = self.filters.known
            && !known.may_hold(key.as_bytes())
        {
            return Ok(None);
        }
        match self.snapshot.get(&self.ks.identities, key.as_str())? {
            Some(bytes) => {
                let owner = read_u64(&bytes, IDENTITIES)?;
                self.hot.learn_owner(key, owner);
                Ok(Some(owner))
            }
            None => Ok(None),
        }
    }

    fn set_owner(&mut self, identity: &Identity, owner: u64) {
        let key = identity.key();
        if let Some(known) = self.filters.known {
            known.insert(key.as_bytes());
        }
        self.batch
            .insert(&self.ks.identities, key.as_str(), u64_bytes(owner));
        self.identities.insert(key, owner);
    }

    /// The event's identities, plus alias's `previousId`: as a user id if one exists with
    /// that value, otherwise as an anonymous id.
    fn event_identities<'e>(
        &self,
        event: &'e EventMeta,
    ) -> Result<Cow<'e, [Identity]>, StoreError> {
        let mut identities = Cow::Borrowed(event.identities.as_slice());
        if let Some(previous) = &event.previous_id {
            let as_user = Identity {
                kind: IdKind::UserId,
                value: previous.clone(),
            };
            let identity = if self.owner(&as_user)?.is_some() {
                as_user
            } else {
                Identity {
                    kind: IdKind::AnonymousId,
                    value: previous.clone(),
                }
            };
            if !identities.contains(&identity) {
                identities.to_mut().push(identity);
            }
        }
        Ok(identities)
    }

    /// The owners of `identities` that resolution can look at, with their profiles loaded
    /// into the batch (where [`GraphView`] finds their identities).
    fn graph_for<'i>(
        &mut self,
        identities: &'i [Identity],
    ) -> Result<Vec<(&'i Identity, u64)>, StoreError> {
        let mut owners = Vec::with_capacity(identities.len());
        for identity in identities {
            if let Some(owner) = self.owner(identity)? {
                self.profile_mut(owner)?;
                owners.push((identity, owner));
            }
        }
        Ok(owners)
    }

    /// Carries out a resolution plan; returns the profile the event lands on.
    fn carry_out(
        &mut self,
        plan: &Plan,
        event: &EventMeta,
        records: &mut Vec<FeedRecord>,
    ) -> Result<u64, StoreError> {
        let target = match plan.target {
            Target::Existing(id) => id,
            Target::New => {
                let id = self.counters.next_profile;
                self.counters.next_profile += 1;
                self.profiles.insert(id, Some(Profile::new(id, Vec::new())));
                id
            }
        };
        for &loser in &plan.merge {
            self.merge(target, loser, event, records)?;
        }
        for identity in &plan.attach {
            self.set_owner(identity, target);
            self.profile_mut(target)?.identities.push(identity.clone());
        }
        for refusal in &plan.refusals {
            let record = MergeAction::Refused {
                profile: target,
                identity: refusal.identity.clone(),
                other_profile: refusal.other_profile,
                rule: refusal.rule.clone(),
            };
            let kind = |other| RefusalKind {
                rule: refusal.rule.clone(),
                other_profile: other,
            };
            if self.admit_refusal(target, kind(refusal.other_profile))? {
                self.record(target, event, record.clone())?;
            }
            if let Some(other) = refusal.other_profile
                && self.admit_refusal(other, kind(Some(target)))?
            {
                self.record(other, event, record)?;
            }
        }
        Ok(target)
    }

    /// Whether a refusal of `kind` is to be recorded on `profile` (the first of its kind).
    fn admit_refusal(&mut self, profile: u64, kind: RefusalKind) -> Result<bool, StoreError> {
        let cap = self.settings.audit_records_max;
        Ok(self.profile_mut(profile)?.audit.admit_refusal(kind, cap))
    }

    /// Records, once per profile, that trait keys were dropped because it was full.
    fn traits_dropped(
        &mut self,
        profile: u64,
        event: &EventMeta,
        dropped: Vec<String>,
    ) -> Result<(), StoreError> {
        if dropped.is_empty() {
            return Ok(());
        }
        let rule = format!("at most {TRAITS_MAX} trait keys per profile");
        let kind = RefusalKind {
            rule: rule.clone(),
            other_profile: None,
        };
        if !self.admit_refusal(profile, kind)? {
            return Ok(());
        }
        let action = MergeAction::traits_dropped(profile, &dropped, rule);
        self.record(profile, event, action)
    }

    /// Merges `loser` into `target`. The loser's event index and audit trail stay under
    /// its id (reads visit `merged_ids`), so a merge writes a handful of records however
    /// long the loser's history.
    fn merge(
        &mut self,
        target: u64,
        loser: u64,
        event: &EventMeta,
        records: &mut Vec<FeedRecord>,
    ) -> Result<(), StoreError> {
        let absorbed = match self.profiles.insert(loser, None) {
            Some(Some(profile)) => profile,
            Some(None) => {
                return Err(StoreError::Corrupt(format!(
                    "profile {loser} merged twice in one batch"
                )));
            }
            None => self.load_profile(loser)?.0,
        };
        for identity in &absorbed.identities {
            self.set_owner(identity, target);
        }
        self.batch
            .insert(&self.ks.redirects, u64_bytes(loser), u64_bytes(target));
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
        let cap = self.settings.audit_records_max;
        let dropped = self.profile_mut(target)?.absorb(absorbed, cap);
        records.push(FeedRecord::Merged {
            into: target,
            from: loser,
        });
        self.record(target, event, action)?;
        self.traits_dropped(target, event, dropped)
    }

    /// Appends an entry's records to the change feed (nothing for an entry without any).
    fn feed(&mut self, log_index: u64, records: Vec<FeedRecord>) {
        if records.is_empty() {
            return;
        }
        let first = self.counters.next_feed;
        self.counters.next_feed += records.len() as u64;
        let entry = FeedEntry {
            at_ms: self.counters.clock_ms,
            log_index,
            records,
        };
        self.batch
            .insert(&self.ks.feed, u64_bytes(first), encode(&entry));
    }

    /// Applies a segment definition change at raft index `log_index`.
    pub fn apply_segment(
        &mut self,
        log_index: u64,
        change: SegmentChange<'_>,
    ) -> Result<(), StoreError> {
        self.advance(log_index)?;
        let id = match change {
            SegmentChange::Put(def) => {
                self.batch
                    .insert(&self.ks.segment_defs, def.id.as_str(), encode(def));
                def.id.clone()
            }
            SegmentChange::Delete(id) => {
                self.batch.remove(&self.ks.segment_defs, id);
                id.to_owned()
            }
        };
        self.feed(log_index, vec![FeedRecord::SegmentChanged { id }]);
        Ok(())
    }

    /// Records a cluster-scoped alert's notification state at raft index `log_index` (no
    /// feed record: services have nothing to do with it). An over-long key is ignored
    /// rather than stored, so a forged entry cannot grow the state without bound.
    pub fn apply_alert_note(
        &mut self,
        log_index: u64,
        note: &crate::model::command::AlertNote,
    ) -> Result<(), StoreError> {
        self.advance(log_index)?;
        if note.key.len() <= crate::model::command::ALERT_KEY_BYTES_MAX {
            let key = format!("{META_ALERT_NOTE_PREFIX}{}", note.key);
            self.batch.insert(&self.ks.meta, key, encode(note));
        }
        Ok(())
    }

    /// Applies a tick (time passing, proposed by the leader) at raft index `log_index`:
    /// the state clock follows `time_ms` within its bounds, like a block's time, and the
    /// feed gets a [`FeedRecord::Tick`] so services see the new time in log order. Retention
    /// gets its usual slice, so it also progresses while no events arrive.
    pub fn apply_tick(&mut self, log_index: u64, time_ms: i64) -> Result<(), StoreError> {
        self.advance(log_index)?;
        self.counters.clock_ms = next_clock_ms(
            self.counters.clock_ms,
            time_ms,
            self.settings.clock_step_ms_max,
        );
        self.feed(log_index, vec![FeedRecord::Tick]);
        self.expire(SWEEP_SLACK)
    }

    /// Writes an audit record under `profile` and removes the oldest ones past the cap.
    fn record(
        &mut self,
        profile: u64,
        event: &EventMeta,
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
        let ks = self.ks;
        self.batch
            .insert(&ks.merges, pair_key(profile, seq), encode(&record));
        let cap = self.settings.audit_records_max;
        for old in self.profile_mut(profile)?.audit.keep(seq, cap) {
            self.batch.remove(&ks.merges, pair_key(profile, old));
        }
        Ok(())
    }

    /// The committed profile `id`, and its stored [`PROFILES`] record if that is in the
    /// current layout.
    fn load_profile(&self, id: u64) -> Result<(Profile, Option<fjall::Slice>), StoreError> {
        if let Some((profile, record)) = self.hot.take_profile(id) {
            return Ok((profile, Some(record)));
        }
        let (profile, record) = super::read::stored_profile(&self.snapshot, self.ks, id)?
            .ok_or_else(|| {
                StoreError::Corrupt(format!("identity points at missing profile {id}"))
            })?;
        // A copy: a value read from a table shares its whole block's buffer, which the hot
        // cache would otherwise keep alive with the record.
        let record = is_current_layout(&record).then(|| fjall::Slice::from(&*record));
        Ok((profile, record))
    }

    fn profile_mut(&mut self, id: u64) -> Result<&mut Profile, StoreError> {
        if !self.profiles.contains_key(&id) {
            let (profile, record) = self.load_profile(id)?;
            if let Some(record) = record {
                self.stored.insert(id, record);
            }
            self.profiles.insert(id, Some(profile));
        }
        self.profiles
            .get_mut(&id)
            .and_then(Option::as_mut)
            .ok_or_else(|| {
                StoreError::Corrupt(format!("profile {id} used after it was merged away"))
            })
    }

    /// Retention: removes feed entries (and the event index entries they name) older than
    /// the retention window, oldest first, examining at most `budget` records. Feed entries
    /// are appended in clock order, so the sweep stops at the first young one. The event
    /// bodies go with their log segments (`crate::node` deletes segments whose entries
    /// the feed no longer names).
    fn expire(&mut self, budget: usize) -> Result<(), StoreError> {
        let horizon = self
            .counters
            .clock_ms
            .saturating_sub(self.settings.retention_ms);
        let ks = self.ks;
        let mut examined = 0;
        let mut expired = Vec::new();
        for guard in self.snapshot.range(
            &ks.feed,
            u64_bytes(self.counters.feed_tail.saturating_add(1))..,
        ) {
            if examined >= budget {
                break;
            }
            let (key, value) = guard.into_inner()?;
            let entry: FeedEntry = decode(&value, FEED)?;
            if entry.at_ms >= horizon {
                break;
            }
            examined += entry.records.len().max(1);
            expired.push((read_u64(&key, FEED)?, entry));
        }
        for (key, entry) in expired {
            self.counters.feed_tail = key;
            self.batch.remove(&ks.feed, u64_bytes(key));
            for record in entry.records {
                if let FeedRecord::Event { seq, profile } = record {
                    self.batch
                        .remove(&ks.profile_events, pair_key(profile, seq));
                    self.counters.events_expired += 1;
                }
            }
        }
        Ok(())
    }
}

/// Whether the event carries `identity` (used to name the link that caused a merge).
fn event_mentions(event: &EventMeta, identity: &Identity) -> bool {
    event.identities.contains(identity)
        || (event.previous_id.as_deref() == Some(identity.value.as_str())
            && matches!(identity.kind, IdKind::UserId | IdKind::AnonymousId))
}

/// A read-only slice of the identity graph, gathered before resolution: the owners of an
/// event's identities (a handful, so a list), and the batch's profiles, borrowed.
struct GraphView<'g> {
    owners: &'g [(&'g Identity, u64)],
    profiles: &'g BTreeMap<u64, Option<Profile>>,
}

impl IdentityGraph for GraphView<'_> {
    fn owner(&self, identity: &Identity) -> Option<u64> {
        let found = self.owners.iter().find(|(held, _)| *held == identity);
        found.map(|&(_, owner)| owner)
    }
    fn identities_of(&self, id: u64) -> &[Identity] {
        let profile = self.profiles.get(&id).and_then(Option::as_ref);
        profile.map_or(&[], |profile| profile.identities.as_slice())
    }
}
