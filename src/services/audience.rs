//! The segments service: real-time audience membership.
//!
//! It consumes the change feed like every service and keeps, in its own database:
//! - each segment's record (`s` + id): the replicated definition it evaluates, its member
//!   count, and the sweep in progress, if any;
//! - memberships both ways: `m` + id + `\0` + profile → entered-at, for paginated member
//!   lists, and `p` + profile + id → entered-at, for a profile's segments;
//! - every entered/exited transition (`x` + sequence), for activation to deliver, the
//!   newest [`TRANSITIONS_MAX`] kept;
//! - its own copy of each profile's computed traits (`t` + profile), so a rule over
//!   computed traits does not depend on the traits service being healthy.
//!
//! When membership changes:
//! - **an event or a merge** re-evaluates the profiles it touched against every segment,
//!   at the end of the batch (a segment after the segments it refers to);
//! - **a new or changed definition** starts a *backfill*: a sweep over every profile in id
//!   order, a bounded slice per [`Service::tick`], with progress in the record;
//! - **time passing**: a segment whose rule has a window (`.within(...)`) or reads a
//!   windowed computed trait is swept again once [`REFRESH_INTERVAL_MS`] has passed since
//!   its last sweep finished, so members leave (and join) as events age out;
//! - **a deleted definition** removes its memberships, a bounded slice per tick, each
//!   recorded as an exit.
//!
//! Event conditions are answered from the node's state (the profile's event index), the
//! last [`EVENT_SCAN_MAX`] events of a profile at most.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::db::{ServiceDb, ServiceError, Writes};
use super::event::ServiceEvent;
use super::segments::{self, Expr, Facts};
use super::supervisor::{Factory, Service};
use super::traits::{ProfileTraits, TraitDef};
use crate::model::command::SegmentDef;
use crate::model::event::MessageType;
use crate::model::profile::Profile;
use crate::store::read::{FeedItem, Reader};
use crate::store::tables::FeedRecord;

/// The service's name (in health, metrics and fault injection).
pub const NAME: &str = "segments";
/// Most recent events of a profile that event conditions look at.
pub const EVENT_SCAN_MAX: usize = 5_000;
/// A time-dependent segment is swept again this long after its last sweep finished.
pub const REFRESH_INTERVAL_MS: i64 = 60_000;
/// Most segments a cluster holds (the API refuses more).
pub const SEGMENTS_MAX: usize = 1_000;
/// Transitions kept; older ones are dropped (activation reads them well before).
pub const TRANSITIONS_MAX: u64 = 1_000_000;
/// Profiles one sweep slice evaluates.
const SWEEP_CHUNK: usize = 256;
/// Longest one `tick` keeps sweeping before handing back to the feed, ms.
const TICK_BUDGET_MS: u128 = 250;
/// Memberships one deletion slice removes.
const DELETE_CHUNK: usize = 2_000;

const RECORD: u8 = b's';
const MEMBER: u8 = b'm';
const PROFILE: u8 = b'p';
const TRAITS: u8 = b't';
const TRANSITION: u8 = b'x';
const NEXT_TRANSITION: &[u8] = b"n:transition";

/// A segment as the service knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentRecord {
    /// The replicated definition being evaluated.
    pub def: SegmentDef,
    /// Current members.
    pub members: u64,
    /// The sweep in progress.
    pub sweep: Option<Sweep>,
    /// When the last sweep finished, ms since the epoch (0: never).
    pub last_sweep_ms: i64,
    /// Set while the definition is deleted and its memberships are being removed.
    pub deleting: bool,
    /// Why the rule cannot be evaluated (it is then nobody's): a parse error of a
    /// definition written by an older version, or a cycle through `in_segment`.
    pub error: Option<String>,
}

/// A pass over every profile for one segment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sweep {
    /// Why: `backfill` (new or changed definition) or `refresh` (time passed).
    pub kind: SweepKind,
    /// Last profile id evaluated.
    pub after: u64,
    /// Profiles evaluated so far.
    pub scanned: u64,
    /// When it started, ms since the epoch.
    pub started_ms: i64,
}

/// Why a sweep runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SweepKind {
    /// A new or changed definition.
    Backfill,
    /// A time-dependent rule, re-evaluated as time passes.
    Refresh,
}

/// One membership change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    /// Position in the transition log.
    pub seq: u64,
    /// The segment.
    pub segment: String,
    /// The profile.
    pub profile_id: u64,
    /// Entered (true) or exited.
    pub entered: bool,
    /// When, ms since the epoch.
    pub at_ms: i64,
    /// What caused it: `event`, `merge`, `backfill`, `refresh` or `deleted`.
    pub cause: String,
}

fn record_key(id: &str) -> Vec<u8> {
    let mut key = vec![RECORD];
    key.extend_from_slice(id.as_bytes());
    key
}

fn member_prefix(id: &str) -> Vec<u8> {
    let mut key = vec![MEMBER];
    key.extend_from_slice(id.as_bytes());
    key.push(0);
    key
}

fn member_key(id: &str, profile: u64) -> Vec<u8> {
    let mut key = member_prefix(id);
    key.extend_from_slice(&profile.to_be_bytes());
    key
}

fn profile_prefix(profile: u64) -> Vec<u8> {
    let mut key = vec![PROFILE];
    key.extend_from_slice(&profile.to_be_bytes());
    key
}

fn profile_key(profile: u64, id: &str) -> Vec<u8> {
    let mut key = profile_prefix(profile);
    key.extend_from_slice(id.as_bytes());
    key
}

fn traits_key(profile: u64) -> Vec<u8> {
    let mut key = vec![TRAITS];
    key.extend_from_slice(&profile.to_be_bytes());
    key
}

fn transition_key(seq: u64) -> Vec<u8> {
    let mut key = vec![TRANSITION];
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn corrupt(what: &str, error: impl std::fmt::Display) -> ServiceError {
    ServiceError::Corrupt(format!("{what}: {error}"))
}

fn decode_u64(bytes: &[u8], what: &str) -> Result<u64, ServiceError> {
    let array: [u8; 8] = bytes.try_into().map_err(|_| corrupt(what, "not 8 bytes"))?;
    Ok(u64::from_be_bytes(array))
}

/// A segment ready to evaluate.
struct Compiled {
    record: SegmentRecord,
    rule: Option<Expr>,
    /// The segments the rule refers to.
    refs: BTreeSet<String>,
    /// The events the rule counts or tests.
    events: BTreeSet<String>,
    /// The computed-trait (or bare) names the rule reads.
    value_names: BTreeSet<String>,
    /// Whether the rule may read a profile trait (a bare name or `trait(...)`).
    reads_traits: bool,
    /// Whether membership can change as time passes.
    time_dependent: bool,
    /// Changed since it was loaded (to be written back).
    dirty: bool,
}

/// The service.
pub struct Segments {
    trait_defs: Arc<Vec<TraitDef>>,
    /// Windowed computed traits: reading one makes a rule time-dependent.
    windowed_traits: BTreeSet<String>,
    /// Loaded on first use (a fresh instance after a restart reloads).
    segments: Option<BTreeMap<String, Compiled>>,
    /// Evaluation order: a segment after those it refers to.
    order: Vec<String>,
    /// Event names any rule counts.
    event_names: BTreeSet<String>,
    /// Segments some rule refers to with `in_segment`.
    referenced: BTreeSet<String>,
    next_transition: u64,
    /// See [`REFRESH_INTERVAL_MS`]; `i64::MAX` turns refreshes off (benchmarks).
    refresh_interval_ms: i64,
}

impl Segments {
    /// A service evaluating rules over `trait_defs` computed traits.
    pub fn new(trait_defs: Arc<Vec<TraitDef>>) -> Segments {
        let windowed_traits = trait_defs
            .iter()
            .filter(|def| def.window_days.is_some())
            .map(|def| def.name.clone())
            .collect();
        Segments {
            trait_defs,
            windowed_traits,
            segments: None,
            order: Vec::new(),
            event_names: BTreeSet::new(),
            referenced: BTreeSet::new(),
            next_transition: 1,
            refresh_interval_ms: REFRESH_INTERVAL_MS,
        }
    }

    /// The same service without time refreshes, so a benchmark measures one thing at a
    /// time.
    pub fn without_refresh(mut self) -> Segments {
        self.refresh_interval_ms = i64::MAX;
        self
    }

    /// The factory the supervisor restarts it with.
    pub fn factory(trait_defs: Arc<Vec<TraitDef>>) -> Factory {
        Box::new(move || Box::new(Segments::new(Arc::clone(&trait_defs))))
    }

    fn compile(&self, record: SegmentRecord) -> Compiled {
        let rule = match segments::parse(&record.def.rule) {
            Ok(rule) => Some(rule),
            Err(error) => {
                tracing::warn!(segment = %record.def.id, %error, "segment rule does not parse");
                None
            }
        };
        let mut record = record;
        if rule.is_none() && record.error.is_none() {
            record.error = Some("the rule does not parse".into());
        }
        let refs = rule.as_ref().map(Expr::segment_refs).unwrap_or_default();
        let events = rule.as_ref().map(Expr::event_names).unwrap_or_default();
        let (value_names, reads_traits) = rule.as_ref().map(Expr::value_names).unwrap_or_default();
        // Windowed events, or a windowed computed trait (its value ages too).
        let time_dependent = rule.as_ref().is_some_and(Expr::is_time_dependent)
            || value_names.iter().any(|n| self.windowed_traits.contains(n));
        Compiled {
            record,
            rule,
            refs,
            events,
            value_names,
            reads_traits,
            time_dependent,
            dirty: false,
        }
    }

    /// Loads every record, once per instance.
    fn ensure_loaded(&mut self, db: &ServiceDb) -> Result<(), ServiceError> {
        if self.segments.is_some() {
            return Ok(());
        }
        let mut segments = BTreeMap::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = db.scan(&[RECORD], after.as_deref(), 1_000)?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            for (_, bytes) in &page {
                let record: SegmentRecord =
                    postcard::from_bytes(bytes).map_err(|e| corrupt("segment record", e))?;
                let compiled = self.compile(record);
                segments.insert(compiled.record.def.id.clone(), compiled);
            }
        }
        self.next_transition = match db.get(NEXT_TRANSITION)? {
            Some(bytes) => decode_u64(&bytes, "transition counter")?,
            None => 1,
        };
        self.segments = Some(segments);
        self.reorder();
        Ok(())
    }

    /// Recomputes the evaluation order and the event names; marks cycles.
    fn reorder(&mut self) {
        let Some(segments) = self.segments.as_mut() else {
            return;
        };
        let rules: BTreeMap<String, Expr> = segments
            .iter()
            .filter(|(_, s)| !s.record.deleting)
            .filter_map(|(id, s)| s.rule.clone().map(|rule| (id.clone(), rule)))
            .collect();
        self.event_names = rules.values().flat_map(|rule| rule.event_names()).collect();
        self.referenced = rules
            .values()
            .flat_map(|rule| rule.segment_refs())
            .collect();
        match segments::check_cycles(&rules) {
            Ok(order) => self.order = order,
            Err(cycle) => {
                // The API refuses cycles; two concurrent changes could still make one.
                // Evaluate in id order: `in_segment` of a segment not yet evaluated reads
                // its stored membership, so nothing loops.
                tracing::warn!(%cycle, "segment definitions form a cycle");
                self.order = rules.keys().cloned().collect();
                for id in &self.order {
                    if let Some(s) = segments.get_mut(id)
                        && s.record.error.as_deref() != Some(cycle.as_str())
                        && s.rule
                            .as_ref()
                            .is_some_and(|rule| !rule.segment_refs().is_empty())
                    {
                        s.record.error = Some(cycle.clone());
                        s.dirty = true;
                    }
                }
            }
        }
    }

    /// Brings the segments in line with the replicated definitions: a new or changed
    /// definition is adopted and backfilled, a deleted one starts losing its members.
    /// Runs on every definition change in the feed and on every tick, so a change whose
    /// feed entry was never seen (expired by retention while the service was behind) is
    /// still picked up.
    fn reconcile(&mut self, state: &Reader<'_>, now_ms: i64) -> Result<(), ServiceError> {
        let defs = state.segment_defs()?;
        let mut changed: Vec<Compiled> = Vec::new();
        let held = self.segments.as_ref();
        for def in &defs {
            let current = held.and_then(|s| s.get(&def.id));
            if current.is_some_and(|c| c.record.def == *def && !c.record.deleting) {
                continue;
            }
            let mut compiled = self.compile(SegmentRecord {
                def: def.clone(),
                members: current.map_or(0, |c| c.record.members),
                sweep: Some(Sweep {
                    kind: SweepKind::Backfill,
                    after: 0,
                    scanned: 0,
                    started_ms: now_ms,
                }),
                last_sweep_ms: 0,
                deleting: false,
                error: None,
            });
            compiled.dirty = true;
            changed.push(compiled);
        }
        for (id, segment) in held.into_iter().flatten() {
            if !segment.record.deleting && !defs.iter().any(|def| def.id == *id) {
                let mut record = segment.record.clone();
                record.deleting = true;
                record.sweep = None;
                let mut compiled = self.compile(record);
                compiled.dirty = true;
                changed.push(compiled);
            }
        }
        if changed.is_empty() {
            return Ok(());
        }
        if let Some(segments) = self.segments.as_mut() {
            for compiled in changed {
                tracing::info!(
                    segment = %compiled.record.def.id,
                    deleting = compiled.record.deleting,
                    "segment definition adopted"
                );
                segments.insert(compiled.record.def.id.clone(), compiled);
            }
        }
        self.reorder();
        Ok(())
    }

    /// Re-evaluates `profile` against the segments in `scope` and those that depend on a
    /// segment whose membership it changes, recording every change with its cause and time.
    fn evaluate_profile(
        &mut self,
        db: &ServiceDb,
        state: &Reader<'_>,
        writes: &mut Writes,
        profile_id: u64,
        scope: Scope<'_>,
        (cause, now_ms): (&str, i64),
    ) -> Result<(), ServiceError> {
        let targets = match scope {
            Scope::Targets(targets) => Some(targets),
            _ => None,
        };
        let Some(segments) = self.segments.as_ref() else {
            return Ok(());
        };
        let profile = state.find_profile(profile_id)?;
        let computed = match &profile {
            Some(_) => load_traits(db, writes, profile_id)?.values(&self.trait_defs, now_ms),
            None => BTreeMap::new(),
        };
        let event_times = match &profile {
            Some(profile) if !self.event_names.is_empty() => {
                state.event_times(profile, &self.event_names, EVENT_SCAN_MAX)?
            }
            _ => Vec::new(),
        };
        let stored = memberships(db, writes, profile_id)?;
        let mut facts = ProfileFacts {
            profile: profile.as_ref(),
            computed: &computed,
            event_times: &event_times,
            now_ms,
            decided: BTreeMap::new(),
            stored: &stored,
        };
        // Computed traits whose value the batch changed (for `Scope::Changed`).
        let changed_values: BTreeSet<&str> = match scope {
            Scope::Changed(touch) => computed
                .iter()
                .filter(|(name, value)| touch.before.get(*name) != Some(*value))
                .map(|(name, _)| name.as_str())
                .collect(),
            _ => BTreeSet::new(),
        };
        // Which segments to evaluate: all; the targets and what depends on them; or those
        // whose inputs changed and what depends on a changed membership. Segments not
        // re-evaluated keep their membership and answer `in_segment` from it.
        let mut affected: BTreeSet<&str> = targets
            .map(|t| t.iter().map(String::as_str).collect())
            .unwrap_or_default();
        let mut changed_ids: BTreeSet<&str> = BTreeSet::new();
        let mut changes = Vec::new();
        for id in &self.order {
            let Some(segment) = segments.get(id) else {
                continue;
            };
            let Some(rule) = segment.rule.as_ref() else {
                continue;
            };
            match scope {
                Scope::All => {}
                Scope::Targets(_) => {
                    let depends = segment.refs.iter().any(|r| affected.contains(r.as_str()));
                    if !affected.contains(id.as_str()) && !depends {
                        continue;
                    }
                    affected.insert(id.as_str());
                }
                Scope::Changed(touch) => {
                    let inputs_changed = segment.events.iter().any(|e| touch.events.contains(e))
                        || segment
                            .value_names
                            .iter()
                            .any(|n| changed_values.contains(n.as_str()))
                        || (touch.traits_changed && segment.reads_traits)
                        || segment
                            .refs
                            .iter()
                            .any(|r| changed_ids.contains(r.as_str()));
                    if !inputs_changed {
                        continue;
                    }
                }
            }
            let member = profile.is_some() && segments::evaluate(rule, &facts);
            if self.referenced.contains(id) {
                facts.decided.insert(id.as_str(), member);
            }
            if member != stored.contains(id.as_str()) {
                changed_ids.insert(id.as_str());
                changes.push((id.clone(), member));
            }
        }
        for (id, entered) in changes {
            self.record_change(writes, &id, profile_id, entered, cause, now_ms);
        }
        Ok(())
    }

    /// Applies one membership change: both indexes, the member count, the transition.
    fn record_change(
        &mut self,
        writes: &mut Writes,
        id: &str,
        profile_id: u64,
        entered: bool,
        cause: &str,
        now_ms: i64,
    ) {
        if entered {
            writes.put(member_key(id, profile_id), now_ms.to_be_bytes().to_vec());
            writes.put(profile_key(profile_id, id), now_ms.to_be_bytes().to_vec());
        } else {
            writes.delete(member_key(id, profile_id));
            writes.delete(profile_key(profile_id, id));
        }
        if let Some(segment) = self.segments.as_mut().and_then(|s| s.get_mut(id)) {
            let members = &mut segment.record.members;
            *members = if entered {
                members.saturating_add(1)
            } else {
                members.saturating_sub(1)
            };
            segment.dirty = true;
        }
        let seq = self.next_transition;
        self.next_transition += 1;
        let transition = Transition {
            seq,
            segment: id.to_owned(),
            profile_id,
            entered,
            at_ms: now_ms,
            cause: cause.to_owned(),
        };
        if let Ok(bytes) = postcard::to_stdvec(&transition) {
            writes.put(transition_key(seq), bytes);
        }
        if seq > TRANSITIONS_MAX {
            writes.delete(transition_key(seq - TRANSITIONS_MAX));
        }
    }

    /// Writes back every changed record (deleted ones once their members are gone).
    fn flush(&mut self, writes: &mut Writes) -> Result<(), ServiceError> {
        let Some(segments) = self.segments.as_mut() else {
            return Ok(());
        };
        writes.put(
            NEXT_TRANSITION.to_vec(),
            self.next_transition.to_be_bytes().to_vec(),
        );
        let mut gone = Vec::new();
        for (id, segment) in segments.iter_mut().filter(|(_, s)| s.dirty) {
            segment.dirty = false;
            if segment.record.deleting && segment.record.members == 0 {
                writes.delete(record_key(id));
                gone.push(id.clone());
                continue;
            }
            let bytes =
                postcard::to_stdvec(&segment.record).map_err(|e| corrupt("segment record", e))?;
            writes.put(record_key(id), bytes);
        }
        for id in gone {
            segments.remove(&id);
        }
        Ok(())
    }

    /// One slice of a deleted segment's member removal; returns whether more remain.
    fn delete_slice(
        &mut self,
        db: &ServiceDb,
        writes: &mut Writes,
        id: &str,
        now_ms: i64,
    ) -> Result<bool, ServiceError> {
        let page = db.scan(&member_prefix(id), None, DELETE_CHUNK)?;
        let prefix_len = member_prefix(id).len();
        for (key, _) in &page {
            let profile = decode_u64(&key[prefix_len..], "member key")?;
            self.record_change(writes, id, profile, false, "deleted", now_ms);
        }
        if let Some(segment) = self.segments.as_mut().and_then(|s| s.get_mut(id)) {
            if page.len() < DELETE_CHUNK {
                // Everything listed is now removed: the count must end at zero.
                segment.record.members = 0;
            }
            segment.dirty = true;
        }
        Ok(page.len() >= DELETE_CHUNK)
    }

    /// One slice of `id`'s sweep; returns whether the sweep goes on.
    fn sweep_slice(
        &mut self,
        db: &ServiceDb,
        state: &Reader<'_>,
        writes: &mut Writes,
        id: &str,
        now_ms: i64,
    ) -> Result<bool, ServiceError> {
        let Some(sweep) = self
            .segments
            .as_ref()
            .and_then(|s| s.get(id))
            .and_then(|s| s.record.sweep.clone())
        else {
            return Ok(false);
        };
        let profiles = state.profiles_after(sweep.after, SWEEP_CHUNK)?;
        let targets = BTreeSet::from([id.to_owned()]);
        let cause = match sweep.kind {
            SweepKind::Backfill => "backfill",
            SweepKind::Refresh => "refresh",
        };
        for profile in &profiles {
            self.evaluate_profile(
                db,
                state,
                writes,
                profile.id,
                Scope::Targets(&targets),
                (cause, now_ms),
            )?;
        }
        let done = profiles.len() < SWEEP_CHUNK;
        if let Some(segment) = self.segments.as_mut().and_then(|s| s.get_mut(id)) {
            segment.dirty = true;
            if done {
                segment.record.sweep = None;
                segment.record.last_sweep_ms = now_ms;
            } else if let Some(sweep) = segment.record.sweep.as_mut() {
                sweep.after = profiles.last().map_or(sweep.after, |p| p.id);
                sweep.scanned += profiles.len() as u64;
            }
        }
        Ok(!done)
    }
}

impl Service for Segments {
    fn process(
        &mut self,
        db: &ServiceDb,
        state: &Reader<'_>,
        items: &[FeedItem],
        writes: &mut Writes,
    ) -> Result<(), ServiceError> {
        self.ensure_loaded(db)?;
        let now_ms = crate::clock::now_ms();
        // Per touched profile: what changed (`None`: a merge or a new profile — evaluate
        // everything).
        let mut touched: BTreeMap<u64, Option<Touch>> = BTreeMap::new();
        let mut merged: BTreeSet<u64> = BTreeSet::new();
        for item in items {
            match (&item.record, &item.event) {
                (FeedRecord::Event { seq, profile }, Some(stored)) => {
                    let mut traits = load_traits(db, writes, *profile)?;
                    let event = ServiceEvent::from_feed(*seq, *profile, stored);
                    if !touched.contains_key(profile) {
                        // A profile new to the service is evaluated against everything:
                        // rules such as `orders_count == 0` hold before any input changes.
                        let seen = writes.get(db, &traits_key(*profile))?.is_some();
                        let touch =
                            seen.then(|| Touch::new(traits.values(&self.trait_defs, now_ms)));
                        touched.insert(*profile, touch);
                    }
                    if let Some(Some(touch)) = touched.get_mut(profile) {
                        touch.events.insert(event.name.clone());
                        // Only identify and group calls carry profile traits.
                        touch.traits_changed |= !matches!(
                            event.kind,
                            MessageType::Track | MessageType::Page | MessageType::Screen
                        );
                    }
                    traits.observe(&self.trait_defs, &event);
                    store_traits(writes, *profile, &traits)?;
                }
                (FeedRecord::Merged { into, from }, _) => {
                    let absorbed = load_traits(db, writes, *from)?;
                    let mut survivor = load_traits(db, writes, *into)?;
                    survivor.merge(absorbed, &self.trait_defs);
                    store_traits(writes, *into, &survivor)?;
                    writes.delete(traits_key(*from));
                    touched.insert(*into, None);
                    touched.insert(*from, None);
                    merged.insert(*into);
                    merged.insert(*from);
                }
                (FeedRecord::SegmentChanged { .. }, _) => self.reconcile(state, now_ms)?,
                // An event retention removed before we got to it.
                (FeedRecord::Event { .. }, None) => {}
            }
        }
        for (profile, touch) in touched {
            let (scope, cause) = match &touch {
                Some(touch) => (Scope::Changed(touch), "event"),
                None if merged.contains(&profile) => (Scope::All, "merge"),
                None => (Scope::All, "event"),
            };
            self.evaluate_profile(db, state, writes, profile, scope, (cause, now_ms))?;
        }
        self.flush(writes)
    }

    fn tick(
        &mut self,
        db: &ServiceDb,
        state: &Reader<'_>,
        writes: &mut Writes,
        now_ms: i64,
    ) -> Result<bool, ServiceError> {
        self.ensure_loaded(db)?;
        self.reconcile(state, now_ms)?;
        let started = Instant::now();
        let mut pending = false;
        // Start refreshes that are due.
        if let Some(segments) = self.segments.as_mut() {
            for segment in segments.values_mut() {
                let record = &mut segment.record;
                if segment.time_dependent
                    && !record.deleting
                    && record.sweep.is_none()
                    && now_ms.saturating_sub(record.last_sweep_ms) >= self.refresh_interval_ms
                {
                    record.sweep = Some(Sweep {
                        kind: SweepKind::Refresh,
                        after: 0,
                        scanned: 0,
                        started_ms: now_ms,
                    });
                    segment.dirty = true;
                }
            }
        }
        let deleting: Vec<String> = self
            .segments
            .iter()
            .flat_map(|s| s.iter())
            .filter(|(_, s)| s.record.deleting)
            .map(|(id, _)| id.clone())
            .collect();
        for id in deleting {
            pending |= self.delete_slice(db, writes, &id, now_ms)?;
        }
        // Sweep in evaluation order, so a backfilled segment's dependents see it.
        let sweeping: Vec<String> = self
            .order
            .iter()
            .filter(|id| {
                self.segments
                    .as_ref()
                    .and_then(|s| s.get(*id))
                    .is_some_and(|s| s.record.sweep.is_some())
            })
            .cloned()
            .collect();
        for id in sweeping {
            while started.elapsed().as_millis() < TICK_BUDGET_MS {
                if !self.sweep_slice(db, state, writes, &id, now_ms)? {
                    break;
                }
            }
            if started.elapsed().as_millis() >= TICK_BUDGET_MS {
                pending = true;
                break;
            }
        }
        self.flush(writes)?;
        Ok(pending)
    }
}

/// Which segments an evaluation covers.
#[derive(Clone, Copy)]
enum Scope<'a> {
    /// Every segment (merges).
    All,
    /// These segments and those that depend on them (sweeps).
    Targets(&'a BTreeSet<String>),
    /// The segments whose inputs a batch of events changed (real time).
    Changed(&'a Touch),
}

/// What a batch of events changed on one profile.
struct Touch {
    /// Names of the events applied.
    events: BTreeSet<String>,
    /// Whether an event could change profile traits (identify, group, alias).
    traits_changed: bool,
    /// The computed traits before the batch.
    before: BTreeMap<String, Value>,
}

impl Touch {
    fn new(before: BTreeMap<String, Value>) -> Touch {
        Touch {
            events: BTreeSet::new(),
            traits_changed: false,
            before,
        }
    }
}

/// What a rule may know about one profile.
struct ProfileFacts<'a, 'b> {
    profile: Option<&'a Profile>,
    computed: &'a BTreeMap<String, Value>,
    event_times: &'a [(String, i64)],
    now_ms: i64,
    /// Memberships decided in this evaluation.
    decided: BTreeMap<&'b str, bool>,
    /// Stored memberships (before this evaluation).
    stored: &'a BTreeSet<String>,
}

impl Facts for ProfileFacts<'_, '_> {
    fn profile_trait(&self, name: &str) -> Option<Value> {
        let value = self.profile?.traits.get(name)?;
        serde_json::from_str(&value.json).ok()
    }

    fn computed(&self, name: &str) -> Option<Value> {
        self.computed.get(name).cloned()
    }

    fn event_count(&self, name: &str, within_ms: Option<i64>) -> u64 {
        let since = within_ms.map(|w| self.now_ms.saturating_sub(w));
        self.event_times
            .iter()
            .filter(|(n, at)| n == name && since.is_none_or(|since| *at > since))
            .count() as u64
    }

    fn in_segment(&self, id: &str) -> bool {
        match self.decided.get(id) {
            Some(member) => *member,
            None => self.stored.contains(id),
        }
    }
}

/// The segments `profile` is a stored member of, staged writes included: one prefix scan
/// rather than a lookup per segment.
fn memberships(
    db: &ServiceDb,
    writes: &Writes,
    profile: u64,
) -> Result<BTreeSet<String>, ServiceError> {
    let prefix = profile_prefix(profile);
    let id_of = |key: &[u8]| String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
    let mut ids: BTreeSet<String> = db
        .scan(&prefix, None, audience_limit())?
        .iter()
        .map(|(key, _)| id_of(key))
        .collect();
    for (key, value) in writes.staged_with_prefix(&prefix) {
        match value {
            Some(_) => ids.insert(id_of(key)),
            None => ids.remove(&id_of(key)),
        };
    }
    Ok(ids)
}

/// Most memberships one profile can hold: one per segment.
fn audience_limit() -> usize {
    SEGMENTS_MAX
}

fn load_traits(
    db: &ServiceDb,
    writes: &Writes,
    profile: u64,
) -> Result<ProfileTraits, ServiceError> {
    match writes.get(db, &traits_key(profile))? {
        Some(bytes) => postcard::from_bytes(&bytes).map_err(|e| corrupt("profile traits", e)),
        None => Ok(ProfileTraits::new()),
    }
}

fn store_traits(
    writes: &mut Writes,
    profile: u64,
    traits: &ProfileTraits,
) -> Result<(), ServiceError> {
    let bytes = postcard::to_stdvec(traits).map_err(|e| corrupt("profile traits", e))?;
    writes.put(traits_key(profile), bytes);
    Ok(())
}

// ---- reads (the API) ---------------------------------------------------------------------

/// The service's record of segment `id`, if it has processed its definition.
pub fn record(db: &ServiceDb, id: &str) -> Result<Option<SegmentRecord>, ServiceError> {
    match db.get(&record_key(id))? {
        Some(bytes) => Ok(Some(
            postcard::from_bytes(&bytes).map_err(|e| corrupt("segment record", e))?,
        )),
        None => Ok(None),
    }
}

/// Up to `limit` members of `id` after profile `after`, in profile id order, with when
/// they entered.
pub fn members(
    db: &ServiceDb,
    id: &str,
    after: Option<u64>,
    limit: usize,
) -> Result<Vec<(u64, i64)>, ServiceError> {
    let prefix = member_prefix(id);
    let after_key = after.map(|after| member_key(id, after));
    let page = db.scan(&prefix, after_key.as_deref(), limit)?;
    page.into_iter()
        .map(|(key, value)| {
            let profile = decode_u64(&key[prefix.len()..], "member key")?;
            let at = decode_u64(&value, "entered at")? as i64;
            Ok((profile, at))
        })
        .collect()
}

/// The segments `profile` is a member of, with when it entered.
pub fn segments_of(db: &ServiceDb, profile: u64) -> Result<Vec<(String, i64)>, ServiceError> {
    let prefix = profile_prefix(profile);
    let page = db.scan(&prefix, None, 10_000)?;
    page.into_iter()
        .map(|(key, value)| {
            let id = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
            let at = decode_u64(&value, "entered at")? as i64;
            Ok((id, at))
        })
        .collect()
}

/// Up to `limit` transitions after `after`, oldest first.
pub fn transitions(
    db: &ServiceDb,
    after: u64,
    limit: usize,
) -> Result<Vec<Transition>, ServiceError> {
    let page = db.scan(&[TRANSITION], Some(&transition_key(after)), limit)?;
    page.into_iter()
        .map(|(_, bytes)| postcard::from_bytes(&bytes).map_err(|e| corrupt("transition", e)))
        .collect()
}
