//! The segments service's records: how they are keyed and encoded, the service's own copy
//! of each profile (its [`Subject`]), and the reads the API makes.
//!
//! Keys (one byte of prefix, then the rest):
//! - `s` + segment id → [`SegmentRecord`];
//! - `m` + segment id + `\0` + profile → entered-at (ms), for paginated member lists;
//! - `p` + profile → [`Memberships`]: the profile's segments with when it entered each,
//!   one record read with a point lookup (a prefix scan over a large tree costs several
//!   times more) and written once per evaluation that changes it;
//! - `t` + profile → [`Subject`];
//! - `x` + sequence → [`Transition`];
//! - `n:transition` → the next transition's sequence.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{SegmentRecord, Transition};
use crate::model::profile::Profile;
use crate::services::db::{ServiceDb, ServiceError, Writes};
use crate::services::event::ServiceEvent;
use crate::services::traits::{ProfileTraits, TraitDef};

pub(super) const RECORD: u8 = b's';
const MEMBER: u8 = b'm';
const PROFILE: u8 = b'p';
pub(super) const SUBJECT: u8 = b't';
const TRANSITION: u8 = b'x';
pub(super) const NEXT_TRANSITION: &[u8] = b"n:transition";

/// What the service knows of one profile, as of the feed it has processed — its own copy,
/// so that evaluating at a log entry never sees the node's state from later entries.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Subject {
    /// Computed-trait accumulators (the service's own, so a broken traits service cannot
    /// freeze audiences).
    pub computed: ProfileTraits,
    /// The profile's traits and merged ids, folded by the same rules the state folds them
    /// with ([`Profile::observe_traits`], [`Profile::absorb`]); identities, counters and
    /// audit bookkeeping stay empty.
    pub profile: Profile,
}

impl Subject {
    /// A profile the service has not seen before.
    pub fn new(id: u64) -> Subject {
        Subject {
            computed: ProfileTraits::new(),
            profile: Profile::new(id, Vec::new()),
        }
    }

    /// Folds one event in (its profile traits are `traits_json`).
    pub fn observe(&mut self, defs: &[TraitDef], event: &ServiceEvent, traits_json: Option<&str>) {
        self.computed.observe(defs, event);
        self.profile
            .observe_traits(traits_json, event.timestamp_ms, event.seq);
    }

    /// Folds a merged-away profile in, as the state's merge does.
    pub fn absorb(&mut self, other: Subject, defs: &[TraitDef]) {
        self.computed.merge(other.computed, defs);
        // The audit cap only bounds refusal bookkeeping, which a subject does not keep.
        self.profile.absorb(other.profile, 0);
    }

    /// The profile's own id and those of every profile merged into it: where its events
    /// are indexed.
    pub fn ids(&self) -> Vec<u64> {
        let mut ids = vec![self.profile.id];
        ids.extend(&self.profile.merged_ids);
        ids
    }
}

pub(super) fn record_key(id: &str) -> Vec<u8> {
    let mut key = vec![RECORD];
    key.extend_from_slice(id.as_bytes());
    key
}

pub(super) fn member_prefix(id: &str) -> Vec<u8> {
    let mut key = vec![MEMBER];
    key.extend_from_slice(id.as_bytes());
    key.push(0);
    key
}

pub(super) fn member_key(id: &str, profile: u64) -> Vec<u8> {
    let mut key = member_prefix(id);
    key.extend_from_slice(&profile.to_be_bytes());
    key
}

/// A profile's segments, each with when it entered (log time, ms since the epoch).
pub(super) type Memberships = BTreeMap<String, i64>;

fn memberships_key(profile: u64) -> Vec<u8> {
    let mut key = vec![PROFILE];
    key.extend_from_slice(&profile.to_be_bytes());
    key
}

pub(super) fn subject_key(profile: u64) -> Vec<u8> {
    let mut key = vec![SUBJECT];
    key.extend_from_slice(&profile.to_be_bytes());
    key
}

pub(super) fn transition_key(seq: u64) -> Vec<u8> {
    let mut key = vec![TRANSITION];
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

pub(super) fn corrupt(what: &str, error: impl std::fmt::Display) -> ServiceError {
    ServiceError::Corrupt(format!("{what}: {error}"))
}

pub(super) fn decode_u64(bytes: &[u8], what: &str) -> Result<u64, ServiceError> {
    let array: [u8; 8] = bytes.try_into().map_err(|_| corrupt(what, "not 8 bytes"))?;
    Ok(u64::from_be_bytes(array))
}

/// The profile id in a subject key.
pub(super) fn subject_id(key: &[u8]) -> Result<u64, ServiceError> {
    decode_u64(key.get(1..).unwrap_or_default(), "subject key")
}

pub(super) fn decode_subject(bytes: &[u8]) -> Result<Subject, ServiceError> {
    postcard::from_bytes(bytes).map_err(|e| corrupt("subject", e))
}

/// The service's copy of `profile`, staged writes included; `None` if it has seen no event
/// of it (or it was merged away).
pub(super) fn load_subject(
    db: &ServiceDb,
    writes: &Writes,
    profile: u64,
) -> Result<Option<Subject>, ServiceError> {
    writes
        .get(db, &subject_key(profile))?
        .map(|bytes| decode_subject(&bytes))
        .transpose()
}

pub(super) fn store_subject(
    writes: &mut Writes,
    profile: u64,
    subject: &Subject,
) -> Result<(), ServiceError> {
    let bytes = postcard::to_stdvec(subject).map_err(|e| corrupt("subject", e))?;
    writes.put(subject_key(profile), bytes);
    Ok(())
}

/// The segments `profile` is a stored member of, staged writes included.
pub(super) fn memberships(
    db: &ServiceDb,
    writes: &Writes,
    profile: u64,
) -> Result<Memberships, ServiceError> {
    decode_memberships(writes.get(db, &memberships_key(profile))?.as_deref())
}

fn decode_memberships(bytes: Option<&[u8]>) -> Result<Memberships, ServiceError> {
    match bytes {
        Some(bytes) => postcard::from_bytes(bytes).map_err(|e| corrupt("memberships", e)),
        None => Ok(Memberships::new()),
    }
}

/// Stages `profile`'s memberships (none: the record is deleted).
pub(super) fn store_memberships(
    writes: &mut Writes,
    profile: u64,
    memberships: &Memberships,
) -> Result<(), ServiceError> {
    let key = memberships_key(profile);
    if memberships.is_empty() {
        writes.delete(key);
    } else {
        let bytes = postcard::to_stdvec(memberships).map_err(|e| corrupt("memberships", e))?;
        writes.put(key, bytes);
    }
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

/// The segments `profile` is a member of, with when it entered, in segment id order.
pub fn segments_of(db: &ServiceDb, profile: u64) -> Result<Vec<(String, i64)>, ServiceError> {
    Ok(
        decode_memberships(db.get(&memberships_key(profile))?.as_deref())?
            .into_iter()
            .collect(),
    )
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
