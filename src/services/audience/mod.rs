//! The segments service: real-time audience membership.
//!
//! It consumes the change feed like every service and keeps, in its own database (keys in
//! `keys.rs`): each segment's record (the replicated definition it evaluates, its member
//! count, the sweep in progress), memberships both ways, every entered/exited transition
//! (the newest [`TRANSITIONS_MAX`] kept), and its own copy of each profile — computed-trait
//! accumulators, profile traits and merged ids — so a rule over computed traits does not
//! depend on the traits service being healthy.
//!
//! **Deterministic.** The service acts at the end of each log entry, at that entry's time
//! (the state clock as of the entry, [`FeedItem::at_ms`]) and on the profile as of that
//! entry: its own copy, and the events the node's state indexed up to that entry. The
//! wall clock, how the supervisor cuts the feed into batches and how far the node's state
//! has moved on decide nothing, so every replica records the same memberships and the
//! same transitions, at the same times, in the same order (checked by the services hash).
//!
//! When membership changes:
//! - **an event or a merge** re-evaluates the profiles the entry touched against every
//!   segment whose inputs it changed (a segment after the segments it refers to);
//! - **a new or changed definition** starts a *backfill*: a sweep over every profile the
//!   service knows, in id order, advancing a fixed amount per log entry ([`sweep`]);
//! - **time passing**: a segment whose rule has a window (`.within(...)`) or reads a
//!   windowed computed trait is swept again once [`REFRESH_INTERVAL_MS`] of log time has
//!   passed since its last sweep finished, so members leave (and join) as events age out.
//!   When no events arrive, the leader's ticks (`Command::Tick`) move log time on;
//! - **a deleted definition** removes its memberships, a fixed amount per log entry, each
//!   recorded as an exit.
//!
//! Event conditions are answered from the node's state (the profile's event index, up to
//! the entry being processed), the last [`EVENT_SCAN_MAX`] events of a profile at most.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::db::{ServiceDb, ServiceError, Writes};
use super::event::ServiceEvent;
use super::supervisor::{Factory, Service};
use super::traits::TraitDef;
use crate::model::command::SegmentDef;
use crate::model::event::MessageType;
use crate::store::read::{FeedItem, Reader};
use crate::store::tables::{FeedRecord, event_seq};

mod catalog;
mod evaluate;
mod keys;
pub mod sweep;
#[cfg(test)]
mod tests;

use evaluate::{Scope, Touch};
pub use keys::{members, record, segments_of, transitions};

/// The service's name (in health, metrics and fault injection).
pub const NAME: &str = "segments";
/// Most recent events of a profile that event conditions look at.
pub const EVENT_SCAN_MAX: usize = 5_000;
/// A time-dependent segment is swept again once this much log time has passed since its
/// last sweep finished.
pub const REFRESH_INTERVAL_MS: i64 = 60_000;
/// Most segments a cluster holds (the API refuses more).
pub const SEGMENTS_MAX: usize = 1_000;
/// Transitions kept; older ones are dropped (activation reads them well before).
pub const TRANSITIONS_MAX: u64 = 1_000_000;
/// A batch stops after the log entry during which it passed this much time (it only
/// decides where commits fall, never what is derived), well under the supervisor's hang
/// timeout.
const BATCH_TIME_MAX: Duration = Duration::from_millis(500);
/// Layout of the records: 3 keeps a profile's segments in one record (layout 2 kept one
/// key per membership, read with a prefix scan); 2 keeps a [`keys::Subject`] per profile
/// (layout 1 kept computed traits only, and evaluated with the wall clock). A node that
/// finds another layout rebuilds the service's state from the feed.
const LAYOUT: u32 = 3;

/// A segment as the service knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentRecord {
    /// The replicated definition being evaluated.
    pub def: SegmentDef,
    /// Current members.
    pub members: u64,
    /// The sweep in progress.
    pub sweep: Option<Sweep>,
    /// When the last sweep finished (log time), ms since the epoch (0: never).
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
    /// When it started (log time), ms since the epoch.
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
    /// When (the log time of the entry that caused it), ms since the epoch.
    pub at_ms: i64,
    /// What caused it: `event`, `merge`, `backfill`, `refresh` or `deleted`.
    pub cause: String,
}

/// The point of the log the service evaluates at: the end of one log entry.
#[derive(Debug, Clone, Copy)]
struct Moment {
    /// The entry's time (the state clock as of the entry), ms since the epoch.
    at_ms: i64,
    /// Seqs of events in the entry or before it are below this.
    before_seq: u64,
}

impl Moment {
    fn of(item: &FeedItem) -> Moment {
        Moment {
            at_ms: item.at_ms,
            before_seq: event_seq(item.log_index.saturating_add(1), 0),
        }
    }
}

/// The service.
pub struct Segments {
    trait_defs: Arc<Vec<TraitDef>>,
    /// Windowed computed traits: reading one makes a rule time-dependent.
    windowed_traits: BTreeSet<String>,
    /// Loaded on first use (a fresh instance after a restart reloads).
    segments: Option<BTreeMap<String, catalog::Compiled>>,
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

    /// Processes the records of one log entry, then evaluates at its end: the profiles it
    /// touched, refreshes that came due, and the entry's share of sweep work.
    fn process_entry(
        &mut self,
        db: &ServiceDb,
        state: &Reader<'_>,
        entry: &[FeedItem],
        writes: &mut Writes,
    ) -> Result<(), ServiceError> {
        let Some(first) = entry.first() else {
            return Ok(());
        };
        let moment = Moment::of(first);
        // Every profile the entry touched, as it stands after the entry (`None`: merged
        // away, or never seen): read once, folded in memory, written once below.
        let mut held: HashMap<u64, Option<keys::Subject>> = HashMap::new();
        // Per touched profile: what changed (`None`: a merge or a new profile — evaluate
        // everything).
        let mut touched: BTreeMap<u64, Option<Touch>> = BTreeMap::new();
        let mut merged: BTreeSet<u64> = BTreeSet::new();
        let mut tick = false;
        for item in entry {
            match (&item.record, &item.event) {
                (FeedRecord::Event { seq, profile }, Some(stored)) => {
                    let slot = hold(&mut held, db, writes, *profile)?;
                    if !touched.contains_key(profile) {
                        // A profile new to the service is evaluated against everything:
                        // rules such as `orders_count == 0` hold before any input changes.
                        let reads_values = self.reads_values();
                        let touch = slot.as_ref().map(|subject| {
                            Touch::new(if reads_values {
                                subject.computed.values(&self.trait_defs, moment.at_ms)
                            } else {
                                BTreeMap::new()
                            })
                        });
                        touched.insert(*profile, touch);
                    }
                    let event = ServiceEvent::from_feed(*seq, *profile, stored);
                    if let Some(Some(touch)) = touched.get_mut(profile) {
                        if !touch.events.contains(&event.name) {
                            touch.events.insert(event.name.clone());
                        }
                        // Only identify and group calls carry profile traits.
                        touch.traits_changed |= !matches!(
                            event.kind,
                            MessageType::Track | MessageType::Page | MessageType::Screen
                        );
                    }
                    slot.get_or_insert_with(|| keys::Subject::new(*profile))
                        .observe(&self.trait_defs, &event, stored.traits_json.as_deref());
                }
                (FeedRecord::Merged { into, from }, _) => {
                    let absorbed = hold(&mut held, db, writes, *from)?
                        .take()
                        .unwrap_or_else(|| keys::Subject::new(*from));
                    // (`into == from` never comes from the state; it leaves the profile
                    // deleted, as a read-modify-write per record would.)
                    if into != from {
                        hold(&mut held, db, writes, *into)?
                            .get_or_insert_with(|| keys::Subject::new(*into))
                            .absorb(absorbed, &self.trait_defs);
                    }
                    touched.insert(*into, None);
                    touched.insert(*from, None);
                    merged.insert(*into);
                    merged.insert(*from);
                }
                (FeedRecord::SegmentChanged { id }, _) => {
                    self.adopt(id, item.definition.as_ref(), moment);
                }
                (FeedRecord::Tick, _) => tick = true,
                // An event retention removed before we got to it.
                (FeedRecord::Event { .. }, None) => {}
            }
        }
        for (profile, subject) in &held {
            match subject {
                Some(subject) => keys::store_subject(writes, *profile, subject)?,
                None => writes.delete(keys::subject_key(*profile)),
            }
        }
        for (profile, touch) in touched {
            let (scope, cause) = match &touch {
                Some(touch) => (Scope::Changed(touch), "event"),
                None if merged.contains(&profile) => (Scope::All, "merge"),
                None => (Scope::All, "event"),
            };
            let subject = held.get(&profile).and_then(Option::as_ref);
            self.evaluate_profile(db, state, writes, profile, subject, scope, (cause, moment))?;
        }
        self.start_due_refreshes(moment);
        let budget = if tick {
            sweep::SWEEP_PER_TICK
        } else {
            sweep::SWEEP_PER_ENTRY
        };
        self.advance_sweeps(db, state, writes, budget, moment)
    }
}

/// The slot of `profile` in `held`, loaded from the service's records (staged writes
/// included) the first time the entry touches it.
fn hold<'a>(
    held: &'a mut HashMap<u64, Option<keys::Subject>>,
    db: &ServiceDb,
    writes: &Writes,
    profile: u64,
) -> Result<&'a mut Option<keys::Subject>, ServiceError> {
    Ok(match held.entry(profile) {
        Entry::Occupied(slot) => slot.into_mut(),
        Entry::Vacant(slot) => slot.insert(keys::load_subject(db, writes, profile)?),
    })
}

impl Service for Segments {
    fn process(
        &mut self,
        db: &ServiceDb,
        state: &Reader<'_>,
        items: &[FeedItem],
        writes: &mut Writes,
    ) -> Result<usize, ServiceError> {
        self.ensure_loaded(db)?;
        // Only to cut a long batch short; what is derived never depends on it.
        let started = Instant::now();
        if let Some(first) = items.first()
            && first.feed_seq > db.cursor()?.saturating_add(1)
        {
            tracing::warn!(
                service = NAME,
                first = first.feed_seq,
                "feed records expired before this service read them; adopting the \
                 current segment definitions"
            );
            self.reconcile_with_state(state, Moment::of(first))?;
        }
        let mut applied = 0;
        for entry in items.chunk_by(|a, b| a.log_index == b.log_index) {
            self.process_entry(db, state, entry, writes)?;
            applied += entry.len();
            if started.elapsed() >= BATCH_TIME_MAX {
                break;
            }
        }
        self.flush(writes)?;
        Ok(applied)
    }

    fn wants_ticks(&mut self, db: &ServiceDb) -> Result<bool, ServiceError> {
        self.ensure_loaded(db)?;
        Ok(self.sweeping())
    }

    fn layout(&self) -> u32 {
        LAYOUT
    }
}
