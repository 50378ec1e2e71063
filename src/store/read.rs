//! Queries over a consistent snapshot of the state, and the state hash.
//!
//! A [`Reader`] wraps one redb read transaction: everything it returns is from the same
//! applied index, and it never blocks the writer.

use redb::{
    Key, ReadOnlyTable, ReadTransaction, ReadableTable, ReadableTableMetadata, TableDefinition,
    Value,
};

use super::StoreError;
use super::tables::*;
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
pub struct Reader {
    txn: ReadTransaction,
}

/// Counts of the main tables, for status output.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Counts {
    /// Events currently stored (after retention).
    pub events: u64,
    /// Live profiles.
    pub profiles: u64,
    /// Identities in the graph.
    pub identities: u64,
    /// messageIds in the dedup window.
    pub dedup_entries: u64,
}

impl Reader {
    pub(super) fn new(txn: ReadTransaction) -> Reader {
        Reader { txn }
    }

    fn meta(&self, key: &str) -> Result<u64, StoreError> {
        let table = self.txn.open_table(META)?;
        Ok(table.get(key)?.map_or(0, |v| v.value()))
    }

    /// The last log index applied to this snapshot.
    pub fn applied_index(&self) -> Result<u64, StoreError> {
        self.meta(META_APPLIED_INDEX)
    }

    /// The state clock (largest batch time applied), ms since the epoch.
    pub fn clock_ms(&self) -> Result<i64, StoreError> {
        Ok(self.meta(META_CLOCK_MS)? as i64)
    }

    /// The profile that owns `identity`, if any.
    pub fn profile_of(&self, identity: &Identity) -> Result<Option<Profile>, StoreError> {
        let identities = self.txn.open_table(IDENTITIES)?;
        let Some(id) = identities.get(identity.key().as_str())? else {
            return Ok(None);
        };
        self.profile(id.value()).map(Some)
    }

    /// The profile with internal id `id`.
    pub fn profile(&self, id: u64) -> Result<Profile, StoreError> {
        let profiles = self.txn.open_table(PROFILES)?;
        let bytes = profiles
            .get(id)?
            .ok_or_else(|| StoreError::Corrupt(format!("missing profile {id}")))?;
        decode(bytes.value(), "profiles")
    }

    /// The profile's events, newest first, optionally only those named `name`.
    pub fn events(
        &self,
        profile: u64,
        before: Option<u64>,
        limit: usize,
        name: Option<&str>,
    ) -> Result<Page<(u64, StoredEvent)>, StoreError> {
        let index = self.txn.open_table(PROFILE_EVENTS)?;
        let events = self.txn.open_table(EVENTS)?;
        let upper = before.unwrap_or(u64::MAX);
        let mut items = Vec::new();
        let mut last_seen = None;
        let mut exhausted = true;
        for (scanned, entry) in index
            .range((profile, 0)..(profile, upper))?
            .rev()
            .enumerate()
        {
            if items.len() >= limit || scanned >= EVENT_SCAN_MAX {
                exhausted = false;
                break;
            }
            let (key, event_name) = entry?;
            let seq = key.value().1;
            last_seen = Some(seq);
            if name.is_some_and(|wanted| wanted != event_name.value()) {
                continue;
            }
            // Retention removes the event and its index entry together, so a miss here
            // would be corruption; skip rather than fail the whole page, and say so.
            match events.get(seq)? {
                Some(bytes) => items.push((seq, decode(bytes.value(), "events")?)),
                None => tracing::warn!(
                    seq,
                    profile,
                    "profile event index points at a missing event"
                ),
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
        let merges = self.txn.open_table(MERGES)?;
        let upper = before.unwrap_or(u64::MAX);
        let mut items = Vec::new();
        let mut more = false;
        for entry in merges.range((profile, 0)..(profile, upper))?.rev() {
            if items.len() >= limit {
                more = true;
                break;
            }
            let (key, bytes) = entry?;
            items.push((key.value().1, decode(bytes.value(), "merges")?));
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
        let dedup = self.txn.open_table(DEDUP)?;
        Ok(dedup.get((source, message_id))?.map(|v| v.value()))
    }

    /// The stored event with sequence number `seq`.
    pub fn event(&self, seq: u64) -> Result<Option<StoredEvent>, StoreError> {
        let events = self.txn.open_table(EVENTS)?;
        events
            .get(seq)?
            .map(|bytes| decode(bytes.value(), "events"))
            .transpose()
    }

    /// Sizes of the main tables.
    pub fn counts(&self) -> Result<Counts, StoreError> {
        Ok(Counts {
            events: self.txn.open_table(EVENTS)?.len()?,
            profiles: self.txn.open_table(PROFILES)?.len()?,
            identities: self.txn.open_table(IDENTITIES)?.len()?,
            dedup_entries: self.txn.open_table(DEDUP)?.len()?,
        })
    }

    /// Checks the identity graph's invariants over the whole state; returns the first
    /// violation found. Reads everything: for tests, drills and `--check` runs, not hot paths.
    ///
    /// - every identity points at a live profile that lists it;
    /// - every identity a profile lists points back at that profile;
    /// - every per-profile event index entry belongs to a live profile and a stored event;
    /// - every redirect leads, eventually, to a live profile.
    pub fn check_invariants(&self) -> Result<(), String> {
        let fail = |e: StoreError| e.to_string();
        let identities = self.txn.open_table(IDENTITIES).map_err(|e| e.to_string())?;
        let profiles = self.txn.open_table(PROFILES).map_err(|e| e.to_string())?;
        let live = |id: u64| -> Result<Option<Profile>, String> {
            match profiles.get(id).map_err(|e| e.to_string())? {
                Some(bytes) => decode(bytes.value(), "profiles").map(Some).map_err(fail),
                None => Ok(None),
            }
        };
        for entry in identities.iter().map_err(|e| e.to_string())? {
            let (key, owner) = entry.map_err(|e| e.to_string())?;
            let (key, owner) = (key.value().to_owned(), owner.value());
            let profile =
                live(owner)?.ok_or(format!("identity {key} points at missing profile {owner}"))?;
            if !profile.identities.iter().any(|i| i.key() == key) {
                return Err(format!(
                    "identity {key} points at profile {owner}, which does not list it"
                ));
            }
        }
        for entry in profiles.iter().map_err(|e| e.to_string())? {
            let (id, bytes) = entry.map_err(|e| e.to_string())?;
            let profile: Profile = decode(bytes.value(), "profiles").map_err(fail)?;
            for identity in &profile.identities {
                let owner = identities
                    .get(identity.key().as_str())
                    .map_err(|e| e.to_string())?
                    .map(|v| v.value());
                if owner != Some(id.value()) {
                    return Err(format!(
                        "profile {} lists {identity} but it points at {owner:?}",
                        id.value()
                    ));
                }
            }
        }
        let index = self
            .txn
            .open_table(PROFILE_EVENTS)
            .map_err(|e| e.to_string())?;
        let events = self.txn.open_table(EVENTS).map_err(|e| e.to_string())?;
        for entry in index.iter().map_err(|e| e.to_string())? {
            let (key, _) = entry.map_err(|e| e.to_string())?;
            let (profile, seq) = key.value();
            if live(profile)?.is_none() {
                return Err(format!(
                    "event {seq} is indexed under missing profile {profile}"
                ));
            }
            if events.get(seq).map_err(|e| e.to_string())?.is_none() {
                return Err(format!("profile {profile} indexes missing event {seq}"));
            }
        }
        let redirects = self.txn.open_table(REDIRECTS).map_err(|e| e.to_string())?;
        for entry in redirects.iter().map_err(|e| e.to_string())? {
            let (from, _) = entry.map_err(|e| e.to_string())?;
            let mut id = from.value();
            for _ in 0..=redirects.len().map_err(|e| e.to_string())? {
                match redirects.get(id).map_err(|e| e.to_string())? {
                    Some(next) => id = next.value(),
                    None => break,
                }
            }
            if live(id)?.is_none() {
                return Err(format!(
                    "redirect chain from {} ends at missing profile {id}",
                    from.value()
                ));
            }
        }
        Ok(())
    }

    /// A hash over every state table, in key order. Two stores that applied the same log
    /// up to the same index have the same hash; the log itself is not included.
    pub fn state_hash(&self) -> Result<String, StoreError> {
        let mut hasher = blake3::Hasher::new();
        hash_table(&mut hasher, &self.txn, META)?;
        hash_table(&mut hasher, &self.txn, EVENTS)?;
        hash_table(&mut hasher, &self.txn, PROFILE_EVENTS)?;
        hash_table(&mut hasher, &self.txn, IDENTITIES)?;
        hash_table(&mut hasher, &self.txn, PROFILES)?;
        hash_table(&mut hasher, &self.txn, REDIRECTS)?;
        hash_table(&mut hasher, &self.txn, MERGES)?;
        hash_table(&mut hasher, &self.txn, DEDUP)?;
        hash_table(&mut hasher, &self.txn, DEDUP_EXPIRY)?;
        Ok(hasher.finalize().to_hex().to_string())
    }
}

fn hash_table<K: Key + 'static, V: Value + 'static>(
    hasher: &mut blake3::Hasher,
    txn: &ReadTransaction,
    definition: TableDefinition<K, V>,
) -> Result<(), StoreError> {
    use redb::TableHandle;
    let table: ReadOnlyTable<K, V> = txn.open_table(definition)?;
    hasher.update(definition.name().as_bytes());
    hasher.update(&table.len()?.to_le_bytes());
    for entry in table.iter()? {
        let (key, value) = entry?;
        let (key, value) = (key.value(), value.value());
        let (key_bytes, value_bytes) = (K::as_bytes(&key), V::as_bytes(&value));
        let (key_bytes, value_bytes) = (key_bytes.as_ref(), value_bytes.as_ref());
        hasher.update(&(key_bytes.len() as u64).to_le_bytes());
        hasher.update(key_bytes);
        hasher.update(&(value_bytes.len() as u64).to_le_bytes());
        hasher.update(value_bytes);
    }
    Ok(())
}
