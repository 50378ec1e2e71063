//! Queries over a consistent snapshot of the state, and the state hash.
//!
//! A [`Reader`] wraps one fjall snapshot: everything it returns is from the same applied
//! index, and it never blocks the writer. Event bodies come from the log through the
//! store's block cache; the log only ever grows at its head (committed entries never
//! change), so a body read after the snapshot was taken is the one the snapshot indexes.

use fjall::{Readable, Snapshot};

use super::tables::*;
use super::{Keyspaces, Store, StoreError, dedup, meta_u64};
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
    store: &'a Store,
}

/// Approximate sizes of the main keyspaces, for status output (exact counts would read
/// every key).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Counts {
    /// Events currently stored (after retention).
    pub events_approx: u64,
    /// Live profiles, approximately.
    pub profiles_approx: u64,
    /// Identities in the graph, approximately.
    pub identities_approx: u64,
    /// messageIds in the dedup index (including dead ones not yet compacted away),
    /// approximately.
    pub dedup_entries_approx: u64,
}

impl<'a> Reader<'a> {
    pub(super) fn new(snapshot: Snapshot, ks: &'a Keyspaces, store: &'a Store) -> Reader<'a> {
        Reader {
            snapshot,
            ks,
            store,
        }
    }

    /// One past the raft index of the last log entry applied to this snapshot (0 = none).
    pub fn applied_index(&self) -> Result<u64, StoreError> {
        meta_u64(&self.snapshot, &self.ks.meta, META_APPLIED_INDEX, META)
    }

    /// Events stored by every entry applied so far (the same on every replica at the
    /// same applied index; expired events stay counted).
    pub fn events_stored(&self) -> Result<u64, StoreError> {
        meta_u64(&self.snapshot, &self.ks.meta, META_EVENTS_STORED, META)
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
        self.find_profile(id)?
            .ok_or_else(|| StoreError::Corrupt(format!("missing profile {id}")))
    }

    /// The `(seq, value)` entries of a per-profile keyspace for `profile` and every
    /// profile merged into it, newest (highest seq) first, below `before`.
    fn newest_first<'r>(
        &'r self,
        keyspace: &'r fjall::Keyspace,
        name: &'static str,
        profile: &Profile,
        before: Option<u64>,
    ) -> impl Iterator<Item = Result<(u64, fjall::Slice), StoreError>> + 'r {
        let mut ids = vec![profile.id];
        ids.extend(&profile.merged_ids);
        self.newest_first_of(keyspace, name, ids, before)
    }

    /// [`Reader::newest_first`] over the entries of the profile ids `ids`.
    fn newest_first_of<'r>(
        &'r self,
        keyspace: &'r fjall::Keyspace,
        name: &'static str,
        ids: Vec<u64>,
        before: Option<u64>,
    ) -> impl Iterator<Item = Result<(u64, fjall::Slice), StoreError>> + 'r {
        let upper = before.unwrap_or(u64::MAX);
        let mut heads: Vec<_> = ids
            .into_iter()
            .map(|id| {
                self.snapshot
                    .range(keyspace, pair_key(id, 0)..pair_key(id, upper))
                    .rev()
                    .map(|guard| guard.into_inner())
                    .peekable()
            })
            .collect();
        std::iter::from_fn(move || {
            // The head with the highest seq goes next (keys are (profile, seq), so the
            // seq is the key's second half); an error goes first, to be reported.
            let mut best: Option<(usize, u64)> = None;
            for (at, head) in heads.iter_mut().enumerate() {
                let seq = match head.peek() {
                    None => continue,
                    Some(Ok((key, _))) => read_pair(key, name).map_or(u64::MAX, |(_, seq)| seq),
                    Some(Err(_)) => u64::MAX,
                };
                if best.is_none_or(|(_, top)| seq > top) {
                    best = Some((at, seq));
                }
            }
            let (at, _) = best?;
            let next = heads[at].next()?;
            Some(
                next.map_err(StoreError::from)
                    .and_then(|(key, value)| Ok((read_pair(&key, name)?.1, value))),
            )
        })
    }

    /// The profile's events (its own and those of every profile merged into it), newest
    /// first, optionally only those named `name`.
    pub fn events(
        &self,
        profile: &Profile,
        before: Option<u64>,
        limit: usize,
        name: Option<&str>,
    ) -> Result<Page<(u64, StoredEvent)>, StoreError> {
        let mut items = Vec::new();
        let mut last_seen = None;
        let mut exhausted = true;
        for (scanned, entry) in self
            .newest_first(&self.ks.profile_events, PROFILE_EVENTS, profile, before)
            .enumerate()
        {
            if items.len() >= limit || scanned >= EVENT_SCAN_MAX {
                exhausted = false;
                break;
            }
            let (seq, value) = entry?;
            last_seen = Some(seq);
            if name.is_some_and(|wanted| wanted.as_bytes() != read_index_value(&value).0) {
                continue;
            }
            // Retention removes the index entry before the log segment holding the event,
            // so a miss here would be corruption; skip rather than fail the whole page,
            // and say so.
            match self.store.event(seq, profile.id)? {
                Some(event) => items.push((seq, event)),
                None => tracing::warn!(
                    seq,
                    profile = profile.id,
                    "profile event index points at an event missing from the log"
                ),
            }
        }
        Ok(Page {
            items,
            next_before: if exhausted { None } else { last_seen },
        })
    }

    /// The profile's merge audit trail (with the trails of profiles merged into it),
    /// newest first.
    pub fn merges(
        &self,
        profile: &Profile,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Page<(u64, MergeRecord)>, StoreError> {
        let mut items = Vec::new();
        let mut more = false;
        for entry in self.newest_first(&self.ks.merges, MERGES, profile, before) {
            if items.len() >= limit {
                more = true;
                break;
            }
            let (seq, bytes) = entry?;
            items.push((seq, decode(&bytes, MERGES)?));
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
        Ok(
            match self.store.dedup.get(&dedup_hash(source, message_id))? {
                Some((seq, stored_at_ms)) => self.store.horizon.alive(stored_at_ms).then_some(seq),
                None => None,
            },
        )
    }

    /// Approximate sizes of the main keyspaces.
    pub fn counts(&self) -> Counts {
        let meta = |key| meta_u64(&self.snapshot, &self.ks.meta, key, META).unwrap_or(0);
        Counts {
            events_approx: meta(META_EVENTS_STORED).saturating_sub(meta(META_EVENTS_EXPIRED)),
            profiles_approx: self.ks.profiles.approximate_len() as u64,
            identities_approx: self.ks.identities.approximate_len() as u64,
            dedup_entries_approx: self.store.dedup.len().map_or(0, |(keys, _)| keys),
        }
    }

    /// Exact number of entries in a state keyspace (reads every key).
    pub fn exact_len(&self, name: &str) -> Result<u64, StoreError> {
        let Some((_, keyspace)) = self.ks.state().into_iter().find(|(n, _)| *n == name) else {
            return Ok(0);
        };
        Ok(self.snapshot.len(keyspace)? as u64)
    }

    /// A hash over every state keyspace, in key order (dedup entries past the window left
    /// out: when compaction drops them is each node's own business). Two stores that
    /// applied the same log up to the same index have the same hash; the log itself is not
    /// included.
    pub fn state_hash(&self) -> Result<String, StoreError> {
        let mut hasher = blake3::Hasher::new();
        for (id, (name, keyspace)) in self.ks.state().into_iter().enumerate() {
            let mut records = self.snapshot.iter(keyspace).peekable();
            if !hashed(id, u64::from(records.peek().is_some())) {
                continue;
            }
            hasher.update(name.as_bytes());
            let mut count = 0_u64;
            for guard in records {
                let (key, value) = guard.into_inner()?;
                if name == DEDUP && !dedup::record_alive(&value, &self.store.horizon)? {
                    continue;
                }
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
        let live = |id: u64| -> Result<Option<Profile>, Violation> { Ok(self.find_profile(id)?) };
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
            let activity = self
                .snapshot
                .get(&self.ks.profile_activity, u64_bytes(id))?;
            let profile = read_profile(&bytes, activity.as_deref())?;
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
        for guard in self.snapshot.iter(&self.ks.profile_activity) {
            let id = read_u64(&guard.key()?, PROFILE_ACTIVITY)?;
            if self
                .snapshot
                .get(&self.ks.profiles, u64_bytes(id))?
                .is_none()
            {
                return Err(Violation::Found(format!(
                    "profile {id} has an activity record but no profile record"
                )));
            }
        }
        for guard in self.snapshot.iter(&self.ks.profile_events) {
            let (profile, seq) = read_pair(&guard.key()?, PROFILE_EVENTS)?;
            let owner = self.current_owner(profile)?;
            if live(owner)?.is_none() {
                return Err(Violation::Found(format!(
                    "event {seq} is indexed under profile {profile}, which leads to no live profile"
                )));
            }
            if self.store.event(seq, profile)?.is_none() {
                return Err(Violation::Found(format!(
                    "profile {profile} indexes event {seq}, which is not in the log"
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

impl Reader<'_> {
    /// Follows merge redirects from `id` to the profile that holds its data now.
    pub fn current_owner(&self, mut id: u64) -> Result<u64, StoreError> {
        for _ in 0..1_000_000 {
            match self.snapshot.get(&self.ks.redirects, u64_bytes(id))? {
                Some(next) => id = read_u64(&next, REDIRECTS)?,
                None => return Ok(id),
            }
        }
        Err(StoreError::Corrupt(format!(
            "redirect loop through profile {id}"
        )))
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

/// One feed record with what a service needs of it.
#[derive(Debug, Clone)]
pub struct FeedItem {
    /// The feed sequence number (a service's cursor).
    pub feed_seq: u64,
    /// The log entry (its raft index) the record came from: records of one entry share it.
    pub log_index: u64,
    /// The state clock as of that entry, ms since the epoch: the time services evaluate
    /// at, identical on every replica (never a node's wall clock).
    pub at_ms: i64,
    /// What changed.
    pub record: FeedRecord,
    /// For [`FeedRecord::Event`]: the event (`None` if retention removed it).
    pub event: Option<FeedEvent>,
    /// For [`FeedRecord::SegmentChanged`]: the definition as that entry left it (`None`:
    /// deleted), read from the entry itself, so a later change does not show through.
    pub definition: Option<crate::model::command::SegmentDef>,
}

/// An event as the change feed hands it to services: its head decoded, its body's
/// `properties` parsed on first use, once per node, and shared by every service that reads
/// it ([`super::body`]).
#[derive(Debug, Clone)]
pub struct FeedEvent {
    /// Message type.
    pub kind: crate::model::event::MessageType,
    /// Track `event` or page/screen `name`; empty otherwise.
    pub name: String,
    /// Corrected event time, ms since the epoch.
    pub timestamp_ms: i64,
    /// Profile traits the event sets, as a JSON object text (what the profile folded in).
    pub traits_json: Option<String>,
    /// The normalised Segment event.
    pub body: super::body::EventBody,
}

impl Reader<'_> {
    /// Feed records after `cursor`, with their events: whole log entries (never part of
    /// one, so a consumer that acts at the end of each entry acts at the same places
    /// whatever its batches), stopping at the first entry boundary at or past `limit`
    /// records — so a batch holds at most `limit` records plus the rest of one entry.
    /// Only the first entry can come partly, when `cursor` is inside it.
    pub fn feed_after(&self, cursor: u64, limit: usize) -> Result<Vec<FeedItem>, StoreError> {
        let wanted = cursor.saturating_add(1);
        // The entry holding `wanted` starts at or before it.
        let start = match self
            .snapshot
            .range(&self.ks.feed, ..=u64_bytes(wanted))
            .next_back()
        {
            Some(guard) => read_u64(&guard.key()?, FEED)?,
            None => wanted,
        };
        let mut items = Vec::new();
        for guard in self.snapshot.range(&self.ks.feed, u64_bytes(start)..) {
            if items.len() >= limit {
                break;
            }
            let (key, value) = guard.into_inner()?;
            let first = read_u64(&key, FEED)?;
            let entry: FeedEntry = decode(&value, FEED)?;
            let block = match entry
                .records
                .iter()
                .any(|r| matches!(r, FeedRecord::Event { .. }))
            {
                true => self.store.block(entry.log_index)?,
                false => None,
            };
            for (offset, record) in entry.records.into_iter().enumerate() {
                let feed_seq = first + offset as u64;
                if feed_seq < wanted {
                    continue;
                }
                let event = match (&record, &block) {
                    (FeedRecord::Event { seq, .. }, Some(block)) => {
                        let ordinal = seq_position(*seq).1;
                        block.head.events.get(ordinal).map(|meta| FeedEvent {
                            kind: meta.kind,
                            name: meta.name.clone(),
                            timestamp_ms: meta.timestamp_ms,
                            traits_json: meta.traits_json.clone(),
                            body: super::body::EventBody::Block {
                                block: std::sync::Arc::clone(block),
                                ordinal,
                            },
                        })
                    }
                    _ => None,
                };
                let definition = match &record {
                    FeedRecord::SegmentChanged { id } => self.definition_at(entry.log_index, id)?,
                    _ => None,
                };
                items.push(FeedItem {
                    feed_seq,
                    log_index: entry.log_index,
                    at_ms: entry.at_ms,
                    record,
                    event,
                    definition,
                });
            }
        }
        Ok(items)
    }

    /// The definition of segment `id` as log entry `log_index` (a segment change) left it.
    /// The feed names the entry, so retention has kept it; if the log cannot produce it
    /// anyway, the definition held now stands in (and a warning says so).
    fn definition_at(
        &self,
        log_index: u64,
        id: &str,
    ) -> Result<Option<crate::model::command::SegmentDef>, StoreError> {
        use crate::model::command::Command;
        match self.store.command(log_index)? {
            Some(Command::PutSegment(def)) if def.id == id => Ok(Some(def)),
            Some(Command::DeleteSegment { id: deleted }) if deleted == id => Ok(None),
            other => {
                tracing::warn!(
                    log_index,
                    segment = id,
                    found = ?other.as_ref().map(ToString::to_string),
                    "a segment change's log entry is not readable; using the current definition"
                );
                let current = self.snapshot.get(&self.ks.segment_defs, id)?;
                current
                    .map(|bytes| decode(&bytes, SEGMENT_DEFS))
                    .transpose()
            }
        }
    }

    /// The raft index of the oldest log entry the state still names (the first feed
    /// entry's): every event the state indexes is in this entry or a later one. `None`
    /// when the feed is empty.
    pub fn first_fed_log_index(&self) -> Result<Option<u64>, StoreError> {
        match self.snapshot.first_key_value(&self.ks.feed) {
            Some(guard) => {
                let (_, value) = guard.into_inner()?;
                let entry: FeedEntry = decode(&value, FEED)?;
                Ok(Some(entry.log_index))
            }
            None => Ok(None),
        }
    }

    /// The feed sequence number of the first record applied at state-clock time `at_ms`
    /// or later (one past the head when there is none): records in `[t1, t2)` are
    /// `feed_seq_at(t2) - feed_seq_at(t1)`. Feed entries are in state-clock order (the clock
    /// never goes back), so this is a binary search over the feed's keys that decodes only
    /// each visited entry's prefix (time, log index, record count). The same on every
    /// replica at the same applied index.
    pub fn feed_seq_at(&self, at_ms: i64) -> Result<u64, StoreError> {
        let end = self.feed_head()?.saturating_add(1);
        let Some(first) = self.snapshot.first_key_value(&self.ks.feed) else {
            return Ok(end);
        };
        // Invariant: every record before `lo` was applied before `at_ms`; the answer is at
        // most `hi`. `lo` is always the first seq of an entry.
        let mut lo = read_u64(&first.key()?, FEED)?;
        let mut hi = end;
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let Some(guard) = self
                .snapshot
                .range(&self.ks.feed, ..=u64_bytes(mid))
                .next_back()
            else {
                return Err(StoreError::Corrupt(format!(
                    "feed: no entry holds seq {mid}"
                )));
            };
            let (key, value) = guard.into_inner()?;
            let start = read_u64(&key, FEED)?;
            let (entry_at_ms, records) = feed_entry_prefix(&value)?;
            if entry_at_ms >= at_ms {
                hi = start;
            } else {
                lo = start.saturating_add(records).max(mid + 1);
            }
        }
        Ok(lo)
    }

    /// The state-clock time of the oldest feed entry still held (where the stored history
    /// starts), `None` when the feed is empty.
    pub fn feed_start_ms(&self) -> Result<Option<i64>, StoreError> {
        match self.snapshot.first_key_value(&self.ks.feed) {
            Some(guard) => {
                let (_, value) = guard.into_inner()?;
                Ok(Some(feed_entry_prefix(&value)?.0))
            }
            None => Ok(None),
        }
    }

    /// The notification state of every cluster-scoped alert, by alert key.
    pub fn alert_notes(
        &self,
    ) -> Result<std::collections::BTreeMap<String, crate::model::command::AlertNote>, StoreError>
    {
        let mut notes = std::collections::BTreeMap::new();
        for guard in self.snapshot.prefix(&self.ks.meta, META_ALERT_NOTE_PREFIX) {
            let (_, value) = guard.into_inner()?;
            let note: crate::model::command::AlertNote = decode(&value, META)?;
            notes.insert(note.key.clone(), note);
        }
        Ok(notes)
    }

    /// The last feed sequence number (0 when nothing was ever fed).
    pub fn feed_head(&self) -> Result<u64, StoreError> {
        Ok(meta_u64(&self.snapshot, &self.ks.meta, META_NEXT_FEED, META)?.saturating_sub(1))
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
        Ok(stored_profile(&self.snapshot, self.ks, id)?.map(|(profile, _)| profile))
    }

    /// `(name, timestamp_ms)` of the events indexed under profile ids `ids` (a profile and
    /// those merged into it) whose name is in `names` (in no particular order), among no
    /// more than `scan_max` of their most recent events with a seq below `before` — the
    /// profile's events as of a point in the log, however far the state has moved since.
    pub fn event_times(
        &self,
        ids: &[u64],
        names: &std::collections::BTreeSet<String>,
        scan_max: usize,
        before: u64,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        let mut out = Vec::new();
        if let [id] = ids {
            // One profile: forward iteration is much cheaper than reverse in fjall's
            // memtables, and most profiles have fewer than `scan_max` events, so read
            // forwards and fall back to the newest `scan_max` only for the few that have
            // more.
            let range = || pair_key(*id, 0)..pair_key(*id, before);
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
            for guard in entries {
                let (_, value) = guard.into_inner()?;
                push_named(&mut out, &value, names);
            }
            return Ok(out);
        }
        for entry in self
            .newest_first_of(
                &self.ks.profile_events,
                PROFILE_EVENTS,
                ids.to_vec(),
                Some(before),
            )
            .take(scan_max)
        {
            let (_, value) = entry?;
            push_named(&mut out, &value, names);
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
            let (id, value) = guard.into_inner()?;
            let activity = self.snapshot.get(&self.ks.profile_activity, &id)?;
            out.push(read_profile(&value, activity.as_deref())?);
        }
        Ok(out)
    }
}

/// Profile `id` as of `snapshot` (its [`PROFILES`] and [`PROFILE_ACTIVITY`] records, see
/// [`read_profile`]), with its [`PROFILES`] record's bytes; `None` if there is none.
pub(super) fn stored_profile(
    snapshot: &Snapshot,
    ks: &Keyspaces,
    id: u64,
) -> Result<Option<(Profile, fjall::Slice)>, StoreError> {
    let Some(record) = snapshot.get(&ks.profiles, u64_bytes(id))? else {
        return Ok(None);
    };
    let activity = snapshot.get(&ks.profile_activity, u64_bytes(id))?;
    Ok(Some((read_profile(&record, activity.as_deref())?, record)))
}

/// Adds the name and time of an event index value if its name is one of `names`.
fn push_named(
    out: &mut Vec<(String, i64)>,
    value: &[u8],
    names: &std::collections::BTreeSet<String>,
) {
    let (name, timestamp) = read_index_value(value);
    let (Ok(name), Some(timestamp)) = (std::str::from_utf8(name), timestamp) else {
        return;
    };
    if names.contains(name) {
        out.push((name.to_owned(), timestamp));
    }
}

/// A feed entry's time and record count, decoded from the head of its postcard record
/// (`at_ms`, `log_index`, then the records' length prefix) without decoding the records.
fn feed_entry_prefix(value: &[u8]) -> Result<(i64, u64), StoreError> {
    let ((at_ms, _log_index, records), _): ((i64, u64, u64), _) = postcard::take_from_bytes(value)
        .map_err(|e| StoreError::Corrupt(format!("{FEED}: {e}")))?;
    Ok((at_ms, records))
}
