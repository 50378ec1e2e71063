//! Queries over a consistent snapshot of the state, and the state hash.
//!
//! A [`Reader`] wraps one fjall snapshot: everything it returns is from the same applied
//! index, and it never blocks the writer.

use fjall::{Readable, Snapshot};

use super::tables::*;
use super::{Keyspaces, StoreError, meta_u64};
use crate::model::identity::Identity;
use crate::model::profile::Profile;

/// Most index entries examined for one page of a filtered event listing; a page may come
/// back short (with a cursor) when the filter matches rarely.
pub const EVENT_SCAN_MAX: usize = 10_000;
/// Largest page size of the listing endpoints.
pub const PAGE_LIMIT_MAX: usize = 1_000;

/// A page of results, newest first, with the cursor for the next page.
#[derive(Debug)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// Pass as `before` to get the next page; `None` when there is no more.
    pub next_before: Option<u64>,
}

/// A read-only snapshot of the state.
pub struct Reader<'a> {
    snapshot: Snapshot,
    ks: &'a Keyspaces,
}

/// Approximate sizes of the main keyspaces, for status output (exact counts would read
/// every key).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Counts {
    /// Events currently stored (after retention), approximately.
    pub events_approx: u64,
    /// Live profiles, approximately.
    pub profiles_approx: u64,
    /// Identities in the graph, approximately.
    pub identities_approx: u64,
    /// messageIds in the dedup window, approximately.
    pub dedup_entries_approx: u64,
}

impl<'a> Reader<'a> {
    pub(super) fn new(snapshot: Snapshot, ks: &'a Keyspaces) -> Reader<'a> {
        Reader { snapshot, ks }
    }

    /// The last log index applied to this snapshot.
    pub fn applied_index(&self) -> Result<u64, StoreError> {
        meta_u64(&self.snapshot, &self.ks.meta, META_APPLIED_INDEX, META)
    }

    /// The state clock (largest batch time applied), ms since the epoch.
    pub fn clock_ms(&self) -> Result<i64, StoreError> {
        Ok(meta_u64(&self.snapshot, &self.ks.meta, META_CLOCK_MS, META)? as i64)
    }

    /// The profile that owns `identity`, if any.
    pub fn profile_of(&self, identity: &Identity) -> Result<Option<Profile>, StoreError> {
        let Some(id) = self.snapshot.get(&self.ks.identities, identity.key())? else {
            return Ok(None);
        };
        self.profile(read_u64(&id, IDENTITIES)?).map(Some)
    }

    /// The profile with internal id `id`.
    pub fn profile(&self, id: u64) -> Result<Profile, StoreError> {
        let bytes = self
            .snapshot
            .get(&self.ks.profiles, u64_bytes(id))?
            .ok_or_else(|| StoreError::Corrupt(format!("missing profile {id}")))?;
        decode(&bytes, PROFILES)
    }

    /// The profile's events, newest first, optionally only those named `name`.
    pub fn events(
        &self,
        profile: u64,
        before: Option<u64>,
        limit: usize,
        name: Option<&str>,
    ) -> Result<Page<(u64, StoredEvent)>, StoreError> {
        let upper = before.unwrap_or(u64::MAX);
        let range = pair_key(profile, 0)..pair_key(profile, upper);
        let mut items = Vec::new();
        let mut last_seen = None;
        let mut exhausted = true;
        for (scanned, guard) in self
            .snapshot
            .range(&self.ks.profile_events, range)
            .rev()
            .enumerate()
        {
            if items.len() >= limit || scanned >= EVENT_SCAN_MAX {
                exhausted = false;
                break;
            }
            let (key, event_name) = guard.into_inner()?;
            let seq = read_pair(&key, PROFILE_EVENTS)?.1;
            last_seen = Some(seq);
            if name.is_some_and(|wanted| wanted.as_bytes() != read_index_value(&event_name).0) {
                continue;
            }
            // Retention removes the event and its index entry together, so a miss here
            // would be corruption; skip rather than fail the whole page, and say so.
            match self.event(seq)? {
                Some(event) => items.push((seq, event)),
                None => {
                    tracing::warn!(
                        seq,
                        profile,
                        "profile event index points at a missing event"
                    )
                }
            }
        }
        Ok(Page {
            items,
            next_before: if exhausted { None } else { last_seen },
        })
    }

    /// The profile's merge audit trail, newest first.
    pub fn merges(
        &self,
        profile: u64,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Page<(u64, MergeRecord)>, StoreError> {
        let upper = before.unwrap_or(u64::MAX);
        let range = pair_key(profile, 0)..pair_key(profile, upper);
        let mut items = Vec::new();
        let mut more = false;
        for guard in self.snapshot.range(&self.ks.merges, range).rev() {
            if items.len() >= limit {
                more = true;
                break;
            }
            let (key, bytes) = guard.into_inner()?;
            items.push((read_pair(&key, MERGES)?.1, decode(&bytes, MERGES)?));
        }
        let next_before = if more {
            items.last().map(|(seq, _)| *seq)
        } else {
            None
        };
        Ok(Page { items, next_before })
    }

    /// Whether an event with this source and messageId is in the dedup window, and its seq.
    pub fn dedup_seq(&self, source: &str, message_id: &str) -> Result<Option<u64>, StoreError> {
        match self
            .snapshot
            .get(&self.ks.dedup, dedup_key(source, message_id))?
        {
            Some(bytes) => read_u64(&bytes, DEDUP).map(Some),
            None => Ok(None),
        }
    }

    /// The stored event with sequence number `seq`.
    pub fn event(&self, seq: u64) -> Result<Option<StoredEvent>, StoreError> {
        match self.snapshot.get(&self.ks.events, u64_bytes(seq))? {
            Some(bytes) => decode(&bytes, EVENTS).map(Some),
            None => Ok(None),
        }
    }

    /// Approximate sizes of the main keyspaces.
    pub fn counts(&self) -> Counts {
        Counts {
            events_approx: self.ks.events.approximate_len() as u64,
            profiles_approx: self.ks.profiles.approximate_len() as u64,
            identities_approx: self.ks.identities.approximate_len() as u64,
            dedup_entries_approx: self.ks.dedup.approximate_len() as u64,
        }
    }

    /// Exact number of entries in a state keyspace (reads every key).
    pub fn exact_len(&self, name: &str) -> Result<u64, StoreError> {
        let Some((_, keyspace)) = self.ks.state().into_iter().find(|(n, _)| *n == name) else {
            return Ok(0);
        };
        Ok(self.snapshot.len(keyspace)? as u64)
    }

    /// A hash over every state keyspace, in key order. Two stores that applied the same log
    /// up to the same index have the same hash; the log itself is not included.
    pub fn state_hash(&self) -> Result<String, StoreError> {
        let mut hasher = blake3::Hasher::new();
        for (name, keyspace) in self.ks.state() {
            hasher.update(name.as_bytes());
            let mut count = 0_u64;
            for guard in self.snapshot.iter(keyspace) {
                let (key, value) = guard.into_inner()?;
                hasher.update(&(key.len() as u64).to_le_bytes());
                hasher.update(&key);
                hasher.update(&(value.len() as u64).to_le_bytes());
                hasher.update(&value);
                count += 1;
            }
            hasher.update(&count.to_le_bytes());
        }
        Ok(hasher.finalize().to_hex().to_string())
    }

    /// Checks the identity graph's invariants over the whole state; returns the first
    /// violation found. Reads everything: for tests and drills, not hot paths.
    ///
    /// - every identity points at a live profile that lists it;
    /// - every identity a profile lists points back at that profile;
    /// - every per-profile event index entry belongs to a live profile and a stored event;
    /// - every redirect leads, eventually, to a live profile.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.check_graph().map_err(|e| match e {
            Violation::Found(text) => text,
            Violation::Store(error) => error.to_string(),
        })
    }

    fn check_graph(&self) -> Result<(), Violation> {
        let live = |id: u64| -> Result<Option<Profile>, Violation> {
            match self.snapshot.get(&self.ks.profiles, u64_bytes(id))? {
                Some(bytes) => Ok(Some(decode(&bytes, PROFILES)?)),
                None => Ok(None),
            }
        };
        for guard in self.snapshot.iter(&self.ks.identities) {
            let (key, owner) = guard.into_inner()?;
            let key = String::from_utf8_lossy(&key).into_owned();
            let owner = read_u64(&owner, IDENTITIES)?;
            let profile = live(owner)?.ok_or_else(|| {
                Violation::Found(format!("identity {key} points at missing profile {owner}"))
            })?;
            if !profile.identities.iter().any(|i| i.key() == key) {
                return Err(Violation::Found(format!(
                    "identity {key} points at profile {owner}, which does not list it"
                )));
            }
        }
        for guard in self.snapshot.iter(&self.ks.profiles) {
            let (id, bytes) = guard.into_inner()?;
            let id = read_u64(&id, PROFILES)?;
            let profile: Profile = decode(&bytes, PROFILES)?;
            for identity in &profile.identities {
                let owner = match self.snapshot.get(&self.ks.identities, identity.key())? {
                    Some(bytes) => Some(read_u64(&bytes, IDENTITIES)?),
                    None => None,
                };
                if owner != Some(id) {
                    return Err(Violation::Found(format!(
                        "profile {id} lists {identity} but it points at {owner:?}"
                    )));
                }
            }
        }
        for guard in self.snapshot.iter(&self.ks.profile_events) {
            let (profile, seq) = read_pair(&guard.key()?, PROFILE_EVENTS)?;
            if live(profile)?.is_none() {
                return Err(Violation::Found(format!(
                    "event {seq} is indexed under missing profile {profile}"
                )));
            }
            if self.event(seq)?.is_none() {
                return Err(Violation::Found(format!(
                    "profile {profile} indexes missing event {seq}"
                )));
            }
        }
        for guard in self.snapshot.iter(&self.ks.redirects) {
            let (from, mut to) = guard.into_inner()?;
            let from = read_u64(&from, REDIRECTS)?;
            let mut id = read_u64(&to, REDIRECTS)?;
            for _ in 0..1_000_000 {
                match self.snapshot.get(&self.ks.redirects, u64_bytes(id))? {
                    Some(next) => {
                        to = next;
                        id = read_u64(&to, REDIRECTS)?;
                    }
                    None => break,
                }
            }
            if live(id)?.is_none() {
                return Err(Violation::Found(format!(
                    "redirect chain from {from} ends at missing profile {id}"
                )));
            }
        }
        Ok(())
    }
}

/// An invariant check's outcome other than success.
enum Violation {
    Found(String),
    Store(StoreError),
}

impl From<StoreError> for Violation {
    fn from(error: StoreError) -> Self {
        Violation::Store(error)
    }
}

impl From<fjall::Error> for Violation {
    fn from(error: fjall::Error) -> Self {
        Violation::Store(error.into())
    }
}

/// One feed entry with what a service needs of it.
#[derive(Debug, Clone)]
pub struct FeedItem {
    /// The feed sequence number (a service's cursor).
    pub feed_seq: u64,
    /// What changed.
    pub record: FeedRecord,
    /// For [`FeedRecord::Event`]: the stored event (`None` if retention removed it).
    pub event: Option<StoredEvent>,
}

impl Reader<'_> {
    /// Up to `limit` feed entries after `cursor`, with their events.
    pub fn feed_after(&self, cursor: u64, limit: usize) -> Result<Vec<FeedItem>, StoreError> {
        let mut items = Vec::new();
        for guard in self
            .snapshot
            .range(&self.ks.feed, u64_bytes(cursor.saturating_add(1))..)
            .take(limit)
        {
            let (key, value) = guard.into_inner()?;
            let entry: FeedEntry = decode(&value, FEED)?;
            let event = match &entry.record {
                FeedRecord::Event { seq, .. } => self.event(*seq)?,
                _ => None,
            };
            items.push(FeedItem {
                feed_seq: read_u64(&key, FEED)?,
                record: entry.record,
                event,
            });
        }
        Ok(items)
    }

    /// The last feed sequence number (0 when the feed is empty).
    pub fn feed_head(&self) -> Result<u64, StoreError> {
        match self.snapshot.last_key_value(&self.ks.feed) {
            Some(guard) => read_u64(&guard.key()?, FEED),
            None => Ok(0),
        }
    }

    /// Every segment definition, by id.
    pub fn segment_defs(&self) -> Result<Vec<crate::model::command::SegmentDef>, StoreError> {
        let mut defs = Vec::new();
        for guard in self.snapshot.iter(&self.ks.segment_defs) {
            let (_, value) = guard.into_inner()?;
            defs.push(decode(&value, SEGMENT_DEFS)?);
        }
        Ok(defs)
    }

    /// The profile with this id, or `None` if there is none (merged away or never made).
    pub fn find_profile(&self, id: u64) -> Result<Option<Profile>, StoreError> {
        match self.snapshot.get(&self.ks.profiles, u64_bytes(id))? {
            Some(bytes) => Ok(Some(decode(&bytes, PROFILES)?)),
            None => Ok(None),
        }
    }

    /// `(name, timestamp_ms)` of the profile's events whose name is in `names` (in no
    /// particular order), looking at no more than `scan_max` of its most recent events.
    pub fn event_times(
        &self,
        profile: u64,
        names: &std::collections::BTreeSet<String>,
        scan_max: usize,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        let range = || pair_key(profile, 0)..=pair_key(profile, u64::MAX);
        // Forward iteration is much cheaper than reverse in fjall's memtables; most
        // profiles have fewer than `scan_max` events, so read forwards and fall back to
        // the newest `scan_max` only for the few that have more.
        let forward: Vec<_> = self
            .snapshot
            .range(&self.ks.profile_events, range())
            .take(scan_max.saturating_add(1))
            .collect();
        let entries: Box<dyn Iterator<Item = fjall::Guard>> = if forward.len() <= scan_max {
            Box::new(forward.into_iter())
        } else {
            Box::new(
                self.snapshot
                    .range(&self.ks.profile_events, range())
                    .rev()
                    .take(scan_max),
            )
        };
        let mut out = Vec::new();
        for guard in entries {
            let (key, value) = guard.into_inner()?;
            let (name, timestamp) = read_index_value(&value);
            let Ok(name) = std::str::from_utf8(name) else {
                continue;
            };
            if !names.contains(name) {
                continue;
            }
            let timestamp = match timestamp {
                Some(timestamp) => Some(timestamp),
                None => {
                    let seq = read_pair(&key, PROFILE_EVENTS)?.1;
                    self.event(seq)?.map(|event| event.timestamp_ms)
                }
            };
            if let Some(timestamp) = timestamp {
                out.push((name.to_owned(), timestamp));
            }
        }
        Ok(out)
    }

    /// Visits every live profile in id order, starting after `after`, at most `limit`.
    pub fn profiles_after(&self, after: u64, limit: usize) -> Result<Vec<Profile>, StoreError> {
        let mut out = Vec::new();
        for guard in self
            .snapshot
            .range(&self.ks.profiles, u64_bytes(after.saturating_add(1))..)
            .take(limit)
        {
            let (_, value) = guard.into_inner()?;
            out.push(decode(&value, PROFILES)?);
        }
        Ok(out)
    }
}
