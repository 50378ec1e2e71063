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
//! Invariant: once the filter is ready, it holds every identity key committed to the
//! state — it never answers "absent" for a key the state holds, so "absent" is
//! authoritative and "maybe" sends the caller to the store. Until it is ready it answers
//! "maybe" to everything. How it holds:
//! - it is installed empty, not ready, when the store opens and after a snapshot replaces
//!   the state ([`super::Store::import`]), before any applier can use it (both hold the
//!   store's writer lock, or run before there is one);
//! - a background thread then scans a store snapshot taken after the installation and
//!   inserts every identity key in it, then marks the filter ready ([`KnownIdentities::fill`]);
//! - the applier inserts every identity key it writes, before its batch commits, from the
//!   installation on (a batch that then fails leaves extra keys: a false "maybe", never a
//!   false "absent"): so what commits after the snapshot is in the filter too;
//! - keys are never removed: an identity that leaves the state only costs a store lookup.
//!
//! A blocked Bloom filter ([`super::bloom`]), sized for twice the identities the keyspace
//! holds at installation (fjall's approximate count), at 10 bits per key (about 1% false
//! "maybe"); past that it stays correct and only answers "maybe" more often, until the
//! next start or snapshot install sizes it afresh. The scan reads every identity key once:
//! 455,614 in 0.33 s on this project's 2-core machine, 3.8 million in 1.6 s — which is why it
//! runs in the background rather than before the node opens (logged as "built the filter
//! of known identities"). The filter holds ~2.5 bytes per identity.

use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::sync::atomic::{AtomicBool, Ordering};

use super::bloom::Bloom;

/// Fewest keys the filter is sized for (2 MiB of bits).
pub const CAPACITY_MIN: u64 = 1 << 20;

/// How many keys the scan inserts between checks that the filter was abandoned.
const FILL_CHECK_EVERY: u64 = 4096;

/// A Bloom filter of identity keys; inserts and queries from any thread.
pub struct KnownIdentities {
    bloom: Bloom,
    /// Set once [`KnownIdentities::fill`] has inserted every key of its scan.
    ready: AtomicBool,
    /// Set when the store drops the filter: a scan still filling it stops.
    abandoned: AtomicBool,
}

impl KnownIdentities {
    /// An empty filter sized for `keys` keys (at least [`CAPACITY_MIN`]), not ready: it
    /// answers "maybe" until [`KnownIdentities::fill`] has run.
    pub fn with_capacity(keys: u64) -> KnownIdentities {
        KnownIdentities {
            bloom: Bloom::with_capacity(keys.max(CAPACITY_MIN)),
            ready: AtomicBool::new(false),
            abandoned: AtomicBool::new(false),
        }
    }

    /// Inserts every key of `keys` (the identity keys of a state snapshot taken after this
    /// filter was installed), then marks the filter ready. Returns how many keys it
    /// inserted, or `None` if the filter was abandoned first; the first error ends the
    /// scan and leaves the filter not ready (it then answers "maybe" for good).
    pub fn fill<K: AsRef<[u8]>, E>(
        &self,
        keys: impl IntoIterator<Item = Result<K, E>>,
    ) -> Result<Option<u64>, E> {
        let mut inserted = 0;
        for key in keys {
            self.insert(key?.as_ref());
            inserted += 1;
            if inserted % FILL_CHECK_EVERY == 0 && self.abandoned.load(Ordering::Acquire) {
                return Ok(None);
            }
        }
        self.ready.store(true, Ordering::Release);
        Ok(Some(inserted))
    }

    /// Stops a [`KnownIdentities::fill`] under way (the store no longer uses the filter).
    pub fn abandon(&self) {
        self.abandoned.store(true, Ordering::Release);
    }

    /// Whether the scan has filled the filter, so that it may answer "absent".
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Records that the state may hold `key`.
    pub fn insert(&self, key: &[u8]) {
        self.bloom.insert(hash(key));
    }

    /// False only if the state holds no identity with this key (never before the filter
    /// is ready).
    pub fn may_hold(&self, key: &[u8]) -> bool {
        !self.is_ready() || self.bloom.may_hold(hash(key))
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

    /// A filter marked ready with nothing scanned, for tests that insert keys themselves.
    fn ready(keys: u64) -> KnownIdentities {
        let known = KnownIdentities::with_capacity(keys);
        let scanned = known.fill(std::iter::empty::<Result<&[u8], ()>>());
        assert_eq!(scanned, Ok(Some(0)));
        known
    }

    #[test]
    fn every_inserted_key_may_be_held() {
        let filled = KnownIdentities::with_capacity(100_000);
        let scanned = filled.fill((0..50_000).map(|n| Ok::<_, ()>(key(n))));
        assert_eq!(scanned, Ok(Some(50_000)));
        let grown = ready(0);
        for n in 0..200_000 {
            grown.insert(key(n).as_bytes());
        }
        assert!((0..50_000).all(|n| filled.may_hold(key(n).as_bytes())));
        assert!((0..200_000).all(|n| grown.may_hold(key(n).as_bytes())));
    }

    #[test]
    fn it_answers_maybe_until_filled_and_an_abandoned_scan_leaves_it_so() {
        let known = KnownIdentities::with_capacity(0);
        known.insert(key(1).as_bytes());
        assert!(!known.is_ready());
        assert!(known.may_hold(key(2).as_bytes()), "not ready: maybe");

        let abandoned = KnownIdentities::with_capacity(0);
        abandoned.abandon();
        let scanned = abandoned.fill((0..2 * FILL_CHECK_EVERY).map(|n| Ok::<_, ()>(key(n))));
        assert_eq!(scanned, Ok(None));
        assert!(!abandoned.is_ready());
        assert!(abandoned.may_hold(key(u64::MAX).as_bytes()));

        let failed = KnownIdentities::with_capacity(0);
        let scanned = failed.fill([Ok(key(1)), Err("read error"), Ok(key(2))]);
        assert_eq!(scanned, Err("read error"));
        assert!(!failed.is_ready());

        assert_eq!(known.fill([Ok::<_, ()>(key(3))]), Ok(Some(1)));
        assert!(known.is_ready());
        assert!(
            known.may_hold(key(1).as_bytes()),
            "inserted before the scan"
        );
        assert!(known.may_hold(key(3).as_bytes()), "scanned");
        let absent = (1_000..2_000)
            .filter(|&n| !known.may_hold(key(n).as_bytes()))
            .count();
        assert!(
            absent > 900,
            "ready: most keys never inserted are absent ({absent})"
        );
    }

    #[test]
    fn keys_never_inserted_are_mostly_absent() {
        // Sized for 2^20 keys, holding that many: ~1% false "maybe".
        let known = ready(CAPACITY_MIN);
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
        assert_eq!(known.bloom.load(), (CAPACITY_MIN, CAPACITY_MIN));
    }

    #[test]
    fn past_its_capacity_it_still_holds_every_key() {
        let known = ready(0);
        let keys = CAPACITY_MIN * 4;
        for n in 0..keys {
            known.insert(key(n).as_bytes());
        }
        assert!((0..keys).all(|n| known.may_hold(key(n).as_bytes())));
        assert_eq!(known.bytes(), 2 << 20);
    }
}
