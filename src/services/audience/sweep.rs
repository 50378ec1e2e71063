//! Work that is not driven by an event: backfills and refreshes (a sweep over every
//! profile the service knows, in id order) and removing a deleted segment's members.
//!
//! Sweeps advance a fixed amount per log entry — [`SWEEP_PER_ENTRY`] profiles, or
//! [`SWEEP_PER_TICK`] on a tick — each profile evaluated as of that entry. How much is
//! done where depends only on the log, so every replica sweeps the same profiles at the
//! same entries and records the same transitions; while a sweep is under way the service
//! asks for ticks (`Service::wants_ticks`) and the leader proposes them more often, so it
//! progresses when no events arrive.

use std::collections::BTreeSet;

use super::evaluate::Scope;
use super::keys::{self, SUBJECT, decode_subject, subject_id, subject_key};
use super::{Moment, Segments, SweepKind};
use crate::services::db::{ServiceDb, ServiceError, Writes};
use crate::store::read::Reader;

/// Profiles (or memberships of a deleted segment) one log entry advances sweeps by.
pub const SWEEP_PER_ENTRY: usize = 64;
/// Profiles (or memberships) one tick advances sweeps by: ticks are what move sweeps
/// while no events arrive.
pub const SWEEP_PER_TICK: usize = 2_048;

impl Segments {
    /// Spends up to `budget` profiles of sweep work at `moment`: deleted segments' members
    /// first, then sweeps in evaluation order (a backfilled segment before its dependents).
    pub(super) fn advance_sweeps(
        &mut self,
        db: &ServiceDb,
        state: &Reader<'_>,
        writes: &mut Writes,
        budget: usize,
        moment: Moment,
    ) -> Result<(), ServiceError> {
        let mut left = budget;
        let deleting: Vec<String> = self
            .segments
            .iter()
            .flat_map(|s| s.iter())
            .filter(|(_, s)| s.record.deleting)
            .map(|(id, _)| id.clone())
            .collect();
        for id in deleting {
            if left == 0 {
                return Ok(());
            }
            left -= self.delete_slice(db, writes, &id, left, moment)?;
        }
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
            if left == 0 {
                break;
            }
            left -= self.sweep_slice(db, state, writes, &id, left, moment)?;
        }
        Ok(())
    }

    /// Removes up to `limit` of deleted segment `id`'s memberships, each recorded as an
    /// exit; returns how many.
    fn delete_slice(
        &mut self,
        db: &ServiceDb,
        writes: &mut Writes,
        id: &str,
        limit: usize,
        moment: Moment,
    ) -> Result<usize, ServiceError> {
        let prefix = keys::member_prefix(id);
        let page = writes.scan(db, &prefix, None, limit)?;
        for (key, _) in &page {
            let profile = keys::decode_u64(&key[prefix.len()..], "member key")?;
            let mut memberships = keys::memberships(db, writes, profile)?;
            memberships.remove(id);
            keys::store_memberships(writes, profile, &memberships)?;
            self.record_change(writes, id, profile, false, ("deleted", moment));
        }
        if let Some(segment) = self.segments.as_mut().and_then(|s| s.get_mut(id)) {
            if page.len() < limit {
                // Everything listed is now removed: the count must end at zero.
                segment.record.members = 0;
            }
            segment.dirty = true;
        }
        Ok(page.len())
    }

    /// Evaluates up to `limit` more profiles of `id`'s sweep; returns how many.
    fn sweep_slice(
        &mut self,
        db: &ServiceDb,
        state: &Reader<'_>,
        writes: &mut Writes,
        id: &str,
        limit: usize,
        moment: Moment,
    ) -> Result<usize, ServiceError> {
        let Some(sweep) = self
            .segments
            .as_ref()
            .and_then(|s| s.get(id))
            .and_then(|s| s.record.sweep.clone())
        else {
            return Ok(0);
        };
        let page = writes.scan(db, &[SUBJECT], Some(&subject_key(sweep.after)), limit)?;
        let targets = BTreeSet::from([id.to_owned()]);
        let cause = match sweep.kind {
            SweepKind::Backfill => "backfill",
            SweepKind::Refresh => "refresh",
        };
        let mut last = sweep.after;
        for (key, bytes) in &page {
            last = subject_id(key)?;
            let subject = decode_subject(bytes)?;
            self.evaluate_profile(
                db,
                state,
                writes,
                last,
                Some(&subject),
                Scope::Targets(&targets),
                (cause, moment),
            )?;
        }
        let done = page.len() < limit;
        if let Some(segment) = self.segments.as_mut().and_then(|s| s.get_mut(id)) {
            segment.dirty = true;
            if done {
                segment.record.sweep = None;
                segment.record.last_sweep_ms = moment.at_ms;
            } else if let Some(sweep) = segment.record.sweep.as_mut() {
                sweep.after = last;
                sweep.scanned += page.len() as u64;
            }
        }
        Ok(page.len())
    }
}
