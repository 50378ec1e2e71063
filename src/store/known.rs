//! Which identity keys the state may hold: a Bloom filter over every identity key, so that
//! applying an event of a customer never seen skips the store lookup.
//!
//! About one identity lookup in six during replayed ingest is for an identity the state
//! does not hold (a new customer, a new device). [`super::hot::HotCache`] cannot answer
//! those — a miss there says nothing — so each went to the store, and a lookup that finds
//! nothing is the store's dearest: it searches every memtable's skiplist before the
//! tables' filters say no. That was ~5% of a node's CPU, ~8% of a follower's
//! (docs/benchmarks.md, "Seventh session").
//!
//! Invariant: the filter holds every identity key committed to the state — it never
//! answers "absent" for a key the state holds, so "absent" is authoritative and "maybe"
//! sends the caller to the store. How it holds:
//! - it is built from a full scan of the identities keyspace when the store opens and
//!   after a snapshot replaces the state ([`super::Store::import`]), before any applier
//!   can use it (both hold the store's writer lock, or run before there is one);
//! - the applier inserts every identity key it writes, before its batch commits (a batch
//!   that then fails leaves extra keys: a false "maybe", never a false "absent");
//! - keys are never removed: an identity that leaves the state only costs a store lookup.
//!
//! A blocked Bloom filter ([`super::bloom`]), sized for twice the identities found at the
//! build, at 10 bits per key (about 1% false "maybe"); past that it stays correct and only
//! answers "maybe" more often, until the next start or snapshot install sizes it afresh.
//! The build scans every identity key once: 455,614 in 0.33 s on this project's 2-core
//! machine, so a store of tens of millions of identities adds tens of seconds to a start
//! (logged as "built the filter of known identities"), and holds ~2.5 bytes per identity.

use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};

use super::bloom::Bloom;

/// Fewest keys the filter is sized for (2 MiB of bits).
pub const CAPACITY_MIN: u64 = 1 << 20;

/// A Bloom filter of identity keys; inserts and queries from any thread.
pub struct KnownIdentities {
    bloom: Bloom,
}

impl KnownIdentities {
    /// An empty filter sized for `keys` keys (at least [`CAPACITY_MIN`]).
    pub fn with_capacity(keys: u64) -> KnownIdentities {
        KnownIdentities {
            bloom: Bloom::with_capacity(keys.max(CAPACITY_MIN)),
        }
    }

    /// A filter holding `keys`, sized for twice as many; the first error ends the build.
    /// Only the keys' hashes are held meanwhile (8 bytes each), not the keys.
    pub fn build<K: AsRef<[u8]>, E>(
        keys: impl IntoIterator<Item = Result<K, E>>,
    ) -> Result<KnownIdentities, E> {
        let hashes = keys
            .into_iter()
            .map(|key| key.map(|key| hash(key.as_ref())))
            .collect::<Result<Vec<u64>, E>>()?;
        let known = KnownIdentities::with_capacity(hashes.len() as u64 * 2);
        for h in hashes {
            known.bloom.insert(h);
        }
        Ok(known)
    }

    /// Records that the state may hold `key`.
    pub fn insert(&self, key: &[u8]) {
        self.bloom.insert(hash(key));
    }

    /// False only if the state holds no identity with this key.
    pub fn may_hold(&self, key: &[u8]) -> bool {
        self.bloom.may_hold(hash(key))
    }

    /// Keys inserted so far (with repeats) against the number it was sized for.
    pub fn load(&self) -> (u64, u64) {
        self.bloom.load()
    }

    /// Bytes of bits held.
    pub fn bytes(&self) -> usize {
        self.bloom.bytes()
    }
}

/// The key's hash: the same on every run and platform (SipHash with fixed keys), though
/// nothing depends on that beyond one process.
fn hash(key: &[u8]) -> u64 {
    BuildHasherDefault::<DefaultHasher>::default().hash_one(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u64) -> String {
        format!("anonymous_id:{n:016x}")
    }

    #[test]
    fn every_inserted_key_may_be_held() {
        let built = KnownIdentities::build((0..50_000).map(|n| Ok::<_, ()>(key(n)))).unwrap();
        let grown = KnownIdentities::with_capacity(0);
        for n in 0..200_000 {
            grown.insert(key(n).as_bytes());
        }
        assert!((0..50_000).all(|n| built.may_hold(key(n).as_bytes())));
        assert!((0..200_000).all(|n| grown.may_hold(key(n).as_bytes())));
    }

    #[test]
    fn keys_never_inserted_are_mostly_absent() {
        // Sized for 2^20 keys, holding that many: ~1% false "maybe".
        let known = KnownIdentities::with_capacity(CAPACITY_MIN);
        for n in 0..CAPACITY_MIN {
            known.insert(key(n).as_bytes());
        }
        let others = 100_000;
        let maybe = (CAPACITY_MIN..CAPACITY_MIN + others)
            .filter(|&n| known.may_hold(key(n).as_bytes()))
            .count();
        assert!(
            maybe < 2_000,
            "{maybe} of {others} absent keys answered maybe"
        );
        assert_eq!(known.load(), (CAPACITY_MIN, CAPACITY_MIN));
    }

    #[test]
    fn past_its_capacity_it_still_holds_every_key() {
        let known = KnownIdentities::with_capacity(0);
        let keys = CAPACITY_MIN * 4;
        for n in 0..keys {
            known.insert(key(n).as_bytes());
        }
        assert!((0..keys).all(|n| known.may_hold(key(n).as_bytes())));
        assert_eq!(known.bytes(), 2 << 20);
    }
}
