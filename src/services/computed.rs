//! The computed-traits service: keeps every profile's [`ProfileTraits`] up to date from the
//! change feed, in its own database, and answers the profile API's `computed_traits`.
//!
//! Merges in the feed move the merged-away profile's state into the survivor with
//! [`ProfileTraits::merge`], which is exact: the result is as if one profile had seen all
//! the events.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde_json::Value;

use super::db::{ServiceDb, ServiceError, Writes};
use super::event::ServiceEvent;
use super::supervisor::Service;
use super::traits::{ProfileTraits, TraitDef};
use crate::store::read::{FeedItem, Reader};
use crate::store::tables::FeedRecord;

/// The service's name (in health, metrics and fault injection).
pub const NAME: &str = "traits";

fn key(profile: u64) -> Vec<u8> {
    let mut key = b"p".to_vec();
    key.extend_from_slice(&profile.to_be_bytes());
    key
}

fn load(db: &ServiceDb, writes: &Writes, profile: u64) -> Result<ProfileTraits, ServiceError> {
    match writes.get(db, &key(profile))? {
        Some(bytes) => {
            postcard::from_bytes(&bytes).map_err(|e| ServiceError::Corrupt(e.to_string()))
        }
        None => Ok(ProfileTraits::new()),
    }
}

fn store(writes: &mut Writes, profile: u64, traits: &ProfileTraits) -> Result<(), ServiceError> {
    let bytes = postcard::to_stdvec(traits).map_err(|e| ServiceError::Corrupt(e.to_string()))?;
    writes.put(key(profile), bytes);
    Ok(())
}

/// The service.
pub struct ComputedTraits {
    defs: Arc<Vec<TraitDef>>,
}

impl ComputedTraits {
    /// A service computing `defs`.
    pub fn new(defs: Arc<Vec<TraitDef>>) -> ComputedTraits {
        ComputedTraits { defs }
    }
}

impl Service for ComputedTraits {
    /// Each profile the batch touches is read and decoded once, folded in memory through
    /// every event and merge of the batch in feed order, and written once at the end: the
    /// same operations in the same order as a read-modify-write per event, so the same
    /// state, at a fraction of the (de)serialization and lookups.
    fn process(
        &mut self,
        db: &ServiceDb,
        _state: &Reader<'_>,
        items: &[FeedItem],
        writes: &mut Writes,
    ) -> Result<usize, ServiceError> {
        // Every profile the batch touched, as it stands (`None`: merged away).
        let mut held: HashMap<u64, Option<ProfileTraits>> = HashMap::new();
        let fetch = |held: &mut HashMap<u64, Option<ProfileTraits>>, profile: u64| {
            if let std::collections::hash_map::Entry::Vacant(slot) = held.entry(profile) {
                slot.insert(Some(load(db, writes, profile)?));
            }
            Ok::<_, ServiceError>(())
        };
        for item in items {
            match (&item.record, &item.event) {
                (FeedRecord::Event { seq, profile }, Some(stored)) => {
                    fetch(&mut held, *profile)?;
                    let traits = held
                        .get_mut(profile)
                        .map(|slot| slot.get_or_insert_with(ProfileTraits::new));
                    if let Some(traits) = traits {
                        traits
                            .observe(&self.defs, &ServiceEvent::from_feed(*seq, *profile, stored));
                    }
                }
                // Never emitted by the state; mirrors what a read-modify-write would do.
                (FeedRecord::Merged { into, from }, _) if into == from => {
                    held.insert(*into, None);
                }
                (FeedRecord::Merged { into, from }, _) => {
                    fetch(&mut held, *from)?;
                    fetch(&mut held, *into)?;
                    let absorbed = held.insert(*from, None).flatten().unwrap_or_default();
                    if let Some(slot) = held.get_mut(into) {
                        slot.get_or_insert_with(ProfileTraits::new)
                            .merge(absorbed, &self.defs);
                    }
                }
                // An event removed by retention before we got to it, a segment change or
                // a tick.
                _ => {}
            }
        }
        for (profile, traits) in held {
            match traits {
                Some(traits) => store(writes, profile, &traits)?,
                None => writes.delete(key(profile)),
            }
        }
        Ok(items.len())
    }
}

/// The computed traits of `profile` at `now_ms` (empty if it has none yet).
pub fn values(
    db: &ServiceDb,
    defs: &[TraitDef],
    profile: u64,
    now_ms: i64,
) -> Result<BTreeMap<String, Value>, ServiceError> {
    let traits = load(db, &Writes::default(), profile)?;
    Ok(traits.values(defs, now_ms))
}

#[cfg(test)]
#[path = "computed_tests.rs"]
mod tests;
