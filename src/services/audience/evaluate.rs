//! Evaluating one profile against the segments, at one point of the log, and recording
//! what changed.
//!
//! Everything a rule reads comes as of that point ([`Moment`]): the service's own copy of
//! the profile ([`Subject`]), computed traits read at the entry's time, and the profile's
//! events indexed in the node's state up to that entry — never the node's wall clock, and
//! never what later entries changed, however far the node's state has moved on.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::Value;

use super::keys::{self, Subject};
use super::{EVENT_SCAN_MAX, Moment, Segments, TRANSITIONS_MAX, Transition};
use crate::model::profile::Profile;
use crate::services::db::{ServiceDb, ServiceError, Writes};
use crate::services::segments::{self, Facts};
use crate::store::read::Reader;

/// Which segments an evaluation covers.
#[derive(Clone, Copy)]
pub(super) enum Scope<'a> {
    /// Every segment (merges, profiles new to the service).
    All,
    /// These segments and those that depend on them (sweeps).
    Targets(&'a BTreeSet<String>),
    /// The segments whose inputs a log entry's events changed (real time).
    Changed(&'a Touch),
}

/// What one log entry's events changed on one profile.
pub(super) struct Touch {
    /// Names of the events applied.
    pub events: BTreeSet<String>,
    /// Whether an event could change profile traits (identify, group, alias).
    pub traits_changed: bool,
    /// The computed traits before the entry.
    pub before: BTreeMap<String, Value>,
}

impl Touch {
    pub fn new(before: BTreeMap<String, Value>) -> Touch {
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
    /// Times of the profile's events, by name, ascending.
    event_times: &'a HashMap<String, Vec<i64>>,
    now_ms: i64,
    /// Memberships decided in this evaluation.
    decided: BTreeMap<&'b str, bool>,
    /// Stored memberships (before this evaluation).
    stored: &'a keys::Memberships,
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
        let Some(times) = self.event_times.get(name) else {
            return 0;
        };
        // Events strictly after `since` count.
        let older = match within_ms.map(|w| self.now_ms.saturating_sub(w)) {
            Some(since) => times.partition_point(|at| *at <= since),
            None => 0,
        };
        (times.len() - older) as u64
    }

    fn in_segment(&self, id: &str) -> bool {
        match self.decided.get(id) {
            Some(member) => *member,
            None => self.stored.contains_key(id),
        }
    }
}

/// What the segments an evaluation may cover read.
struct Needs {
    /// Computed-trait values (a rule reads one, or `Scope::Changed` compares them).
    values: bool,
    /// The profile's event index (a rule counts or tests events).
    events: bool,
}

impl Segments {
    /// Whether some rule reads a computed value (else a touch need not note the values
    /// before the entry).
    pub(super) fn reads_values(&self) -> bool {
        self.segments
            .iter()
            .flat_map(|s| s.values())
            .any(|s| s.rule.is_some() && !s.value_names.is_empty())
    }

    /// What evaluating in `scope` may read; `None` when no segment can be re-evaluated.
    /// Conservative: every segment the scope could reach counts, whether or not its
    /// inputs turn out to have changed.
    fn needs(&self, scope: Scope<'_>) -> Option<Needs> {
        let segments = self.segments.as_ref()?;
        let mut needs: Option<Needs> = None;
        for segment in segments.values().filter(|s| s.rule.is_some()) {
            let reachable = match scope {
                Scope::All | Scope::Targets(_) => true,
                // Its events happened, its traits may have changed, a computed value or a
                // membership it reads may have changed.
                Scope::Changed(touch) => {
                    segment.events.iter().any(|e| touch.events.contains(e))
                        || (touch.traits_changed && segment.reads_traits)
                        || !segment.value_names.is_empty()
                        || !segment.refs.is_empty()
                }
            };
            if reachable {
                let needs = needs.get_or_insert(Needs {
                    values: false,
                    events: false,
                });
                needs.values |= !segment.value_names.is_empty();
                needs.events |= !segment.events.is_empty();
            }
        }
        needs
    }

    /// Re-evaluates profile `profile_id` (the service's copy `subject`; `None` when it has
    /// none — merged away) against the segments in `scope` and those that depend on a
    /// segment whose membership it changes, at `moment`, recording every change with
    /// `cause`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn evaluate_profile(
        &mut self,
        db: &ServiceDb,
        state: &Reader<'_>,
        writes: &mut Writes,
        profile_id: u64,
        subject: Option<&Subject>,
        scope: Scope<'_>,
        (cause, moment): (&str, Moment),
    ) -> Result<(), ServiceError> {
        let targets = match scope {
            Scope::Targets(targets) => Some(targets),
            _ => None,
        };
        let Some(segments) = self.segments.as_ref() else {
            return Ok(());
        };
        // What the segments that may be re-evaluated read, decided before reading it: a
        // superset of what evaluation needs, so the outcome is the same as reading it all,
        // and a profile no rule can be re-evaluated for costs no reads.
        let Some(needs) = self.needs(scope) else {
            return Ok(());
        };
        let computed = match subject {
            Some(subject) if needs.values => {
                subject.computed.values(&self.trait_defs, moment.at_ms)
            }
            _ => BTreeMap::new(),
        };
        let mut event_times: HashMap<String, Vec<i64>> = HashMap::new();
        if let Some(subject) = subject.filter(|_| needs.events) {
            // Grouped by name and sorted once, so each event condition is a lookup and a
            // binary search rather than a pass over the whole history.
            let events = state.event_times(
                &subject.ids(),
                &self.event_names,
                EVENT_SCAN_MAX,
                moment.before_seq,
            )?;
            for (name, at) in events {
                event_times.entry(name).or_default().push(at);
            }
            event_times
                .values_mut()
                .for_each(|times| times.sort_unstable());
        }
        let stored = keys::memberships(db, writes, profile_id)?;
        let mut facts = ProfileFacts {
            profile: subject.map(|s| &s.profile),
            computed: &computed,
            event_times: &event_times,
            now_ms: moment.at_ms,
            decided: BTreeMap::new(),
            stored: &stored,
        };
        // Computed traits whose value the entry changed (for `Scope::Changed`).
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
            let member = subject.is_some() && segments::evaluate(rule, &facts);
            if self.referenced.contains(id) {
                facts.decided.insert(id.as_str(), member);
            }
            if member != stored.contains_key(id.as_str()) {
                changed_ids.insert(id.as_str());
                changes.push((id.clone(), member));
            }
        }
        if changes.is_empty() {
            return Ok(());
        }
        let mut memberships = stored.clone();
        for (id, entered) in changes {
            if entered {
                memberships.insert(id.clone(), moment.at_ms);
            } else {
                memberships.remove(&id);
            }
            self.record_change(writes, &id, profile_id, entered, (cause, moment));
        }
        keys::store_memberships(writes, profile_id, &memberships)
    }

    /// Applies one membership change to the segment's side — its member index, its
    /// member count — and records the transition, stamped with the entry's time. The
    /// caller updates the profile's [`keys::Memberships`], once for all its changes.
    pub(super) fn record_change(
        &mut self,
        writes: &mut Writes,
        id: &str,
        profile_id: u64,
        entered: bool,
        (cause, moment): (&str, Moment),
    ) {
        let at_ms = moment.at_ms;
        if entered {
            writes.put(
                keys::member_key(id, profile_id),
                at_ms.to_be_bytes().to_vec(),
            );
        } else {
            writes.delete(keys::member_key(id, profile_id));
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
            at_ms,
            cause: cause.to_owned(),
        };
        if let Ok(bytes) = postcard::to_stdvec(&transition) {
            writes.put(keys::transition_key(seq), bytes);
        }
        if seq > TRANSITIONS_MAX {
            writes.delete(keys::transition_key(seq - TRANSITIONS_MAX));
        }
    }
}
