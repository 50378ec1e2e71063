//! A write batch that hands its writes to fjall sorted by keyspace and key.
//!
//! Applying an entry writes random keys (profile ids, dedup hashes, `(profile, seq)` index
//! keys) into memtables that are skiplists of tens of thousands of entries. An insert walks
//! the skiplist from its top level down; in the order events come, every insert lands far
//! from the last one and misses the cache on most levels. Sorted, consecutive inserts share
//! most of their path. Writes to one key keep their order (the sort is stable), so the
//! last write of a key in a batch still wins, as it does in fjall's own batch.

use fjall::{Keyspace, OwnedWriteBatch as WriteBatch, Slice};

/// Writes collected for one fjall batch ([`SortedBatch::write_into`]).
#[derive(Default)]
pub struct SortedBatch {
    /// The keyspaces written, by their address in the caller's `Keyspaces` (a batch writes
    /// a handful).
    keyspaces: Vec<(usize, Keyspace)>,
    /// Per write: the keyspace's position in `keyspaces`, the key, the value (`None`: a
    /// removal).
    writes: Vec<(u8, Slice, Option<Slice>)>,
}

impl SortedBatch {
    /// Writes `value` at `key`.
    pub fn insert(&mut self, keyspace: &Keyspace, key: impl Into<Slice>, value: impl Into<Slice>) {
        let slot = self.slot(keyspace);
        self.writes.push((slot, key.into(), Some(value.into())));
    }

    /// Removes `key`.
    pub fn remove(&mut self, keyspace: &Keyspace, key: impl Into<Slice>) {
        let slot = self.slot(keyspace);
        self.writes.push((slot, key.into(), None));
    }

    /// Writes collected so far.
    pub fn len(&self) -> usize {
        self.writes.len()
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    fn slot(&mut self, keyspace: &Keyspace) -> u8 {
        let address = std::ptr::from_ref(keyspace) as usize;
        let slot = match self.keyspaces.iter().position(|(a, _)| *a == address) {
            Some(slot) => slot,
            None => {
                self.keyspaces.push((address, keyspace.clone()));
                self.keyspaces.len() - 1
            }
        };
        u8::try_from(slot).expect("a batch writes at most a few dozen keyspaces")
    }

    /// Moves every write into `batch`, sorted by keyspace and key.
    pub fn write_into(mut self, batch: &mut WriteBatch) {
        self.writes
            .sort_by(|(a_slot, a_key, _), (b_slot, b_key, _)| {
                (a_slot, a_key).cmp(&(b_slot, b_key))
            });
        for (slot, key, value) in self.writes {
            let keyspace = &self.keyspaces[usize::from(slot)].1;
            match value {
                Some(value) => batch.insert(keyspace, key, value),
                None => batch.remove(keyspace, key),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use fjall::{Database, KeyspaceCreateOptions, Readable};

    use super::*;

    #[test]
    fn writes_land_sorted_and_the_last_write_of_a_key_wins() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Database::builder(dir.path()).open().expect("open");
        let a = db.keyspace("a", KeyspaceCreateOptions::default).expect("a");
        let b = db.keyspace("b", KeyspaceCreateOptions::default).expect("b");
        let mut writes = SortedBatch::default();
        writes.insert(&a, "k2", "first");
        writes.insert(&b, "k1", "b");
        writes.insert(&a, "k1", "a");
        writes.insert(&a, "k2", "second");
        writes.insert(&a, "k3", "gone");
        writes.remove(&a, "k3");
        writes.remove(&b, "k9");
        writes.insert(&b, "k9", "back");
        assert_eq!(writes.len(), 8);
        let mut batch = db.batch();
        writes.write_into(&mut batch);
        batch.commit().expect("commit");

        let snapshot = db.snapshot();
        let read = |keyspace: &Keyspace, key: &str| {
            snapshot
                .get(keyspace, key)
                .expect("get")
                .map(|v| String::from_utf8(v.to_vec()).expect("utf-8"))
        };
        assert_eq!(read(&a, "k1").as_deref(), Some("a"));
        assert_eq!(read(&a, "k2").as_deref(), Some("second"));
        assert_eq!(read(&a, "k3"), None);
        assert_eq!(read(&b, "k1").as_deref(), Some("b"));
        assert_eq!(read(&b, "k9").as_deref(), Some("back"));
    }
}
