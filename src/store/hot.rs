//! The hot part of the state in memory: identity owners and decoded profiles that applying
//! looks up for nearly every event.
//!
//! A point read through fjall costs a few microseconds (memtable skiplists, then tables);
//! customers come back in sessions, so most lookups of a batch hit what a recent batch
//! touched. [`HotCache`] keeps those in memory, bounded.
//!
//! Invariants:
//! - it only ever holds what is **committed** to the state: the applier fills it after its
//!   batch committed ([`HotCache::remember`]), never from its own uncommitted overlays; a
//!   profile the applier takes out ([`HotCache::take_profile`]) comes back with the batch
//!   that changed it, or not at all if the batch fails;
//! - a hit is authoritative, a miss says nothing (the caller reads the store); a cached
//!   profile comes with its record as committed in the profiles keyspace, which apply
//!   compares with the profile's new encoding to skip rewriting an unchanged one;
//! - it is cleared whenever the state is replaced wholesale (a snapshot install) or an
//!   apply fails;
//! - bounded: two generations per map; when the young one reaches half the bound it
//!   becomes the old one and the previous old one is emptied (a cheap approximation of
//!   LRU: anything used within the last two generations stays). The tables keep their
//!   capacity across turns, so a full cache turns over without allocating.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;

use fjall::Slice;

use crate::model::profile::Profile;

/// Identities kept (each about 100 bytes with its key).
pub const IDENTITIES_MAX: usize = 1 << 20;
/// Profiles kept (each a few hundred bytes decoded).
pub const PROFILES_MAX: usize = 1 << 18;

/// A bounded map of two generations.
struct Generations<K, V> {
    young: HashMap<K, V>,
    old: HashMap<K, V>,
    /// Most entries per generation.
    half: usize,
}

impl<K: Hash + Eq + Clone, V: Clone> Generations<K, V> {
    fn new(max: usize) -> Self {
        Generations {
            young: HashMap::new(),
            old: HashMap::new(),
            half: (max / 2).max(1),
        }
    }

    fn get<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if let Some(value) = self.young.get(key) {
            return Some(value.clone());
        }
        let (key, value) = self.old.remove_entry(key)?;
        self.insert(key, value.clone());
        Some(value)
    }

    fn insert(&mut self, key: K, value: V) {
        if self.young.len() >= self.half && !self.young.contains_key(&key) {
            // The young generation becomes the old one; the previous old one's table is
            // emptied and kept as the new young one. Dropping it and growing a new table
            // from nothing rehashed every entry again at each doubling and, past a few
            // MiB, asked the OS for fresh pages each turn (zeroed on first touch).
            std::mem::swap(&mut self.old, &mut self.young);
            self.young.clear();
        }
        self.old.remove(&key);
        self.young.insert(key, value);
    }

    fn remove(&mut self, key: &K) -> Option<V> {
        let young = self.young.remove(key);
        let old = self.old.remove(key);
        young.or(old)
    }

    fn clear(&mut self) {
        self.young.clear();
        self.old.clear();
    }

    fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }
}

/// Committed identity owners and profiles, bounded.
pub struct HotCache {
    identities: Mutex<Generations<String, u64>>,
    profiles: Mutex<Generations<u64, (Profile, Slice)>>,
}

/// What one committed batch changed, for [`HotCache::remember`].
#[derive(Default)]
pub struct Changes {
    /// Identity key → its owner now.
    pub identities: Vec<(String, u64)>,
    /// Profile id → the profile now and its stored [`crate::store::tables::PROFILES`]
    /// record, or `None` if it was merged away.
    pub profiles: Vec<(u64, Option<(Profile, Slice)>)>,
}

impl Default for HotCache {
    fn default() -> Self {
        HotCache::new(IDENTITIES_MAX, PROFILES_MAX)
    }
}

impl HotCache {
    /// A cache of at most `identities` owners and `profiles` profiles.
    pub fn new(identities: usize, profiles: usize) -> HotCache {
        HotCache {
            identities: Mutex::new(Generations::new(identities)),
            profiles: Mutex::new(Generations::new(profiles)),
        }
    }

    /// The committed owner of the identity with this key, if cached.
    pub fn owner(&self, key: &str) -> Option<u64> {
        lock(&self.identities).get(key)
    }

    /// Takes the committed profile `id` and its stored record out of the cache, if it is
    /// there. The applier (the only user) gives it back changed, with
    /// [`HotCache::remember`], once its batch committed — so a profile is never copied on
    /// its way through a batch.
    pub fn take_profile(&self, id: u64) -> Option<(Profile, Slice)> {
        lock(&self.profiles).remove(&id)
    }

    /// Records what was read from the committed state (a miss the caller filled).
    pub fn learn_owner(&self, key: String, owner: u64) {
        lock(&self.identities).insert(key, owner);
    }

    /// Applies what a committed batch changed.
    pub fn remember(&self, changes: Changes) {
        {
            let mut identities = lock(&self.identities);
            for (key, owner) in changes.identities {
                identities.insert(key, owner);
            }
        }
        let mut profiles = lock(&self.profiles);
        for (id, profile) in changes.profiles {
            match profile {
                Some(profile) => profiles.insert(id, profile),
                None => {
                    profiles.remove(&id);
                }
            }
        }
    }

    /// Forgets everything (the state was replaced, or an apply failed).
    pub fn clear(&self) {
        lock(&self.identities).clear();
        lock(&self.profiles).clear();
    }

    /// Entries held: (identities, profiles).
    pub fn sizes(&self) -> (usize, usize) {
        (lock(&self.identities).len(), lock(&self.profiles).len())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_keep_recent_entries_within_the_bound() {
        let mut map = Generations::new(4);
        for i in 0..10_u64 {
            map.insert(i, i);
            assert!(map.len() <= 4, "{} entries", map.len());
        }
        assert_eq!(map.get(&9), Some(9));
        assert_eq!(map.get(&0), None, "the oldest were dropped");
        // A hit in the old generation is promoted and survives the next turn.
        map.insert(20, 20);
        map.insert(21, 21);
        assert_eq!(map.get(&9), Some(9));
    }

    #[test]
    fn a_turn_reuses_the_emptied_table() {
        let mut map = Generations::new(64);
        for i in 0..(32 * 3 + 1) as u64 {
            map.insert(i, i);
        }
        // Three turns so far; the last insert started a young generation.
        assert_eq!(map.young.len(), 1);
        assert!(
            map.young.capacity() >= 32,
            "the young generation's table was allocated anew: capacity {}",
            map.young.capacity()
        );
        assert_eq!(map.len(), 33);
    }

    #[test]
    fn remembered_changes_replace_and_remove() {
        let cache = HotCache::new(8, 8);
        cache.learn_owner("user_id:a".into(), 1);
        cache.remember(Changes {
            identities: Vec::new(),
            profiles: vec![(
                1,
                Some((Profile::new(1, Vec::new()), Slice::from(&b"1"[..]))),
            )],
        });
        cache.remember(Changes {
            identities: vec![("user_id:a".into(), 2)],
            profiles: vec![
                (1, None),
                (
                    2,
                    Some((Profile::new(2, Vec::new()), Slice::from(&b"2"[..]))),
                ),
            ],
        });
        assert_eq!(cache.owner("user_id:a"), Some(2));
        assert!(cache.take_profile(1).is_none());
        assert_eq!(cache.take_profile(2).map(|(p, _)| p.id), Some(2));
        assert!(cache.take_profile(2).is_none(), "taken out");
        cache.clear();
        assert_eq!(cache.sizes(), (0, 0));
    }
}
