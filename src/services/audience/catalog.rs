//! The segments the service evaluates: loading their records, compiling rules, adopting
//! definition changes from the feed, evaluation order, starting refreshes, writing records
//! back.
//!
//! A definition is adopted at the feed record of the log entry that changed it, with the
//! definition that entry carried (not the one the node holds now, which a later entry may
//! have changed again), so every replica adopts the same definitions at the same places.
//! Only when the feed lost records before the service read them (it fell further behind
//! than retention) does it fall back to the node's current definitions.

use std::collections::BTreeMap;

use super::keys::{self, RECORD, corrupt, decode_u64};
use super::{Moment, SegmentRecord, Segments, Sweep, SweepKind};
use crate::model::command::SegmentDef;
use crate::services::db::{ServiceDb, ServiceError, Writes};
use crate::services::segments::{self, Expr};
use crate::store::read::Reader;

/// A segment ready to evaluate.
pub(super) struct Compiled {
    pub record: SegmentRecord,
    pub rule: Option<Expr>,
    /// The segments the rule refers to.
    pub refs: std::collections::BTreeSet<String>,
    /// The events the rule counts or tests.
    pub events: std::collections::BTreeSet<String>,
    /// The computed-trait (or bare) names the rule reads.
    pub value_names: std::collections::BTreeSet<String>,
    /// Whether the rule may read a profile trait (a bare name or `trait(...)`).
    pub reads_traits: bool,
    /// Whether membership can change as time passes.
    pub time_dependent: bool,
    /// Changed since it was loaded (to be written back).
    pub dirty: bool,
}

impl Segments {
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
    pub(super) fn ensure_loaded(&mut self, db: &ServiceDb) -> Result<(), ServiceError> {
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
        self.next_transition = match db.get(keys::NEXT_TRANSITION)? {
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

    /// Adopts segment `id`'s definition as a log entry left it at `moment`: a new or
    /// changed one is evaluated from now on and backfilled; `None` (deleted) starts
    /// removing its members.
    pub(super) fn adopt(&mut self, id: &str, def: Option<&SegmentDef>, moment: Moment) {
        let current = self.segments.as_ref().and_then(|s| s.get(id));
        let record = match def {
            Some(def) => {
                if current.is_some_and(|c| c.record.def == *def && !c.record.deleting) {
                    return;
                }
                SegmentRecord {
                    def: def.clone(),
                    members: current.map_or(0, |c| c.record.members),
                    sweep: Some(Sweep {
                        kind: SweepKind::Backfill,
                        after: 0,
                        scanned: 0,
                        started_ms: moment.at_ms,
                    }),
                    last_sweep_ms: 0,
                    deleting: false,
                    error: None,
                }
            }
            None => {
                let Some(current) = current.filter(|c| !c.record.deleting) else {
                    return;
                };
                let mut record = current.record.clone();
                record.deleting = true;
                record.sweep = None;
                record
            }
        };
        let mut compiled = self.compile(record);
        compiled.dirty = true;
        tracing::info!(
            segment = %compiled.record.def.id,
            deleting = compiled.record.deleting,
            "segment definition adopted"
        );
        if let Some(segments) = self.segments.as_mut() {
            segments.insert(id.to_owned(), compiled);
        }
        self.reorder();
    }

    /// Brings the segments in line with the node's current definitions: only after the
    /// feed lost records this service never read, when the changes they carried are gone.
    pub(super) fn reconcile_with_state(
        &mut self,
        state: &Reader<'_>,
        moment: Moment,
    ) -> Result<(), ServiceError> {
        let defs = state.segment_defs()?;
        for def in &defs {
            self.adopt(&def.id, Some(def), moment);
        }
        let gone: Vec<String> = self
            .segments
            .iter()
            .flat_map(|s| s.keys())
            .filter(|id| !defs.iter().any(|def| def.id == **id))
            .cloned()
            .collect();
        for id in gone {
            self.adopt(&id, None, moment);
        }
        Ok(())
    }

    /// Starts a refresh of every time-dependent segment whose last sweep finished at least
    /// the refresh interval before `moment`, so members leave (and join) as events age.
    pub(super) fn start_due_refreshes(&mut self, moment: Moment) {
        let interval = self.refresh_interval_ms;
        for segment in self.segments.iter_mut().flat_map(|s| s.values_mut()) {
            let record = &mut segment.record;
            if segment.time_dependent
                && !record.deleting
                && record.sweep.is_none()
                && moment.at_ms.saturating_sub(record.last_sweep_ms) >= interval
            {
                record.sweep = Some(Sweep {
                    kind: SweepKind::Refresh,
                    after: 0,
                    scanned: 0,
                    started_ms: moment.at_ms,
                });
                segment.dirty = true;
            }
        }
    }

    /// Whether a sweep or a deletion is under way (it advances with every log entry).
    pub(super) fn sweeping(&self) -> bool {
        self.segments
            .iter()
            .flat_map(|s| s.values())
            .any(|s| s.record.sweep.is_some() || s.record.deleting)
    }

    /// Writes back every changed record (deleted ones once their members are gone).
    pub(super) fn flush(&mut self, writes: &mut Writes) -> Result<(), ServiceError> {
        let Some(segments) = self.segments.as_mut() else {
            return Ok(());
        };
        writes.put(
            keys::NEXT_TRANSITION.to_vec(),
            self.next_transition.to_be_bytes().to_vec(),
        );
        let mut gone = Vec::new();
        for (id, segment) in segments.iter_mut().filter(|(_, s)| s.dirty) {
            segment.dirty = false;
            if segment.record.deleting && segment.record.members == 0 {
                writes.delete(keys::record_key(id));
                gone.push(id.clone());
                continue;
            }
            let bytes =
                postcard::to_stdvec(&segment.record).map_err(|e| corrupt("segment record", e))?;
            writes.put(keys::record_key(id), bytes);
        }
        for id in gone {
            segments.remove(&id);
        }
        Ok(())
    }
}
