//! Which dedup keys the state may hold: Bloom filters of the keys stored within the dedup
//! window, so the leader's screen ([`super::dedup::Screen`]) skips the store lookup of a
//! new event's key.
//!
//! Nearly every key the leader screens is new, and a store lookup that finds nothing is the
//! store's dearest: it searches every memtable's skiplist before the tables' filters say no.
//! Those lookups were 5–6% of a node's CPU under ingest (docs/benchmarks.md, "Eighth
//! session").
//!
//! Invariant: once the filter is ready ([`RecentKeys::view`] answers), it holds every dedup
//! key committed to the state that is still alive (stored at or after the horizon), so
//! "absent" is authoritative and "maybe" sends the screen to the dedup index
//! ([`super::dedup_index`]). How it holds:
//! - it is installed in the store empty, before a builder thread reads every key the dedup
//!   index holds ([`build`]); every apply from then on inserts the keys it stores before
//!   its batch commits, and the index held every key committed before. Installing happens
//!   before anything applies, or under the store's writer lock. Until the read ends the
//!   filter is not ready and the screen looks every key up in the index;
//! - a snapshot install drops it and installs a new one when the state, the log and the
//!   index are complete;
//! - keys are grouped into epochs, one dedup window of state-clock time each, by when they
//!   were stored. An epoch that ended before the horizon holds only dead keys: dropped;
//! - each epoch has stages: when the last one holds as many keys as it was sized for, a
//!   stage four times larger is added. A query asks every stage of every live epoch, one
//!   cache line each ([`super::bloom`]);
//! - memory is bounded ([`BYTES_MAX`]): when a stage would not fit, none is added and its
//!   epoch is saturated: it answers "maybe" for every key, and the screen uses the index,
//!   as it did before this filter existed.
//!
//! The keys are already 16 bytes of blake3; the filter takes their first 8 bytes as the hash.
//! A client can grind messageIds whose keys share a block, but that only makes its own
//! keys answer "maybe" (an index lookup each), never a wrong "absent".

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::StoreError;
use super::bloom::Bloom;
use super::dedup::Horizon;
use super::dedup_index::DedupIndex;

/// Keys the first stage of an epoch is sized for (2 MiB of bits).
pub const STAGE_KEYS_MIN: u64 = 1 << 20;
/// How much larger each further stage of an epoch is than the one before.
const STAGE_GROWTH: u64 = 4;
/// Most bytes of bits held in all; past that, epochs saturate.
pub const BYTES_MAX: usize = 256 << 20;

/// The filter of recent dedup keys; inserts and queries from any thread.
pub struct RecentKeys {
    /// Length of an epoch: the dedup window, ms.
    epoch_ms: i64,
    horizon: Horizon,
    /// Most bytes of bits held in all ([`BYTES_MAX`]).
    bytes_max: usize,
    /// Replaced whole when an epoch or a stage is added or dropped; the blooms are shared.
    layout: Mutex<Arc<Layout>>,
    /// Set when the builder's scan is complete.
    ready: AtomicBool,
    /// Set when the store no longer wants it: the builder stops.
    abandoned: AtomicBool,
}

/// The epochs of a [`RecentKeys`], oldest first.
#[derive(Clone, Default)]
pub struct Layout {
    epochs: Vec<Epoch>,
}

#[derive(Clone)]
struct Epoch {
    number: i64,
    stages: Vec<Arc<Bloom>>,
    /// A stage did not fit in [`BYTES_MAX`]: answers "maybe" for any key.
    saturated: bool,
}

impl RecentKeys {
    /// An empty filter, not ready, for a dedup window of `window_ms` and the store's
    /// `horizon`.
    pub fn new(window_ms: i64, horizon: Horizon) -> RecentKeys {
        RecentKeys {
            epoch_ms: window_ms.max(1),
            horizon,
            bytes_max: BYTES_MAX,
            layout: Mutex::new(Arc::new(Layout::default())),
            ready: AtomicBool::new(false),
            abandoned: AtomicBool::new(false),
        }
    }

    /// The filter to query, or `None` while it is still being built.
    pub fn view(&self) -> Result<Option<View>, StoreError> {
        if !self.ready.load(Ordering::Acquire) {
            return Ok(None);
        }
        Ok(Some(View {
            layout: Arc::clone(&*self.lock()?),
            horizon_epoch: self.epoch_of(self.horizon.get()),
        }))
    }

    /// An inserter that keeps the layout between keys (an applier's, for one batch).
    pub fn writer(&self) -> Result<Writer<'_>, StoreError> {
        Ok(Writer {
            layout: Arc::clone(&*self.lock()?),
            filter: self,
        })
    }

    /// Keys inserted (with repeats) and bytes of bits held, over every epoch.
    pub fn load(&self) -> Result<(u64, usize), StoreError> {
        let layout = Arc::clone(&*self.lock()?);
        let stages = layout.epochs.iter().flat_map(|e| &e.stages);
        Ok(stages.fold((0, 0), |(keys, bytes), stage| {
            (keys + stage.load().0, bytes + stage.bytes())
        }))
    }

    /// Tells the builder to stop.
    pub fn abandon(&self) {
        self.abandoned.store(true, Ordering::Release);
    }

    fn epoch_of(&self, at_ms: i64) -> i64 {
        at_ms.div_euclid(self.epoch_ms)
    }

    fn lock(&self) -> Result<MutexGuard<'_, Arc<Layout>>, StoreError> {
        self.layout
            .lock()
            .map_err(|_| StoreError::Corrupt("the dedup filter's lock is poisoned".into()))
    }

    /// The stage of `epoch` to insert into, adding the epoch or a stage as needed (and
    /// dropping dead epochs); `None` if the epoch is saturated.
    fn stage_for(&self, epoch: i64) -> Result<(Arc<Layout>, Option<Arc<Bloom>>), StoreError> {
        let mut guard = self.lock()?;
        if let Some(stage) = guard.writable(epoch) {
            return Ok((Arc::clone(&guard), stage));
        }
        let mut layout = Layout::clone(&guard);
        let horizon_epoch = self.epoch_of(self.horizon.get());
        layout.epochs.retain(|e| e.number >= horizon_epoch);
        let held: usize = layout.bytes();
        let previous_keys = layout.epochs.last().map_or(0, Epoch::keys);
        let position = match layout.epochs.iter().position(|e| e.number == epoch) {
            Some(position) => position,
            None => {
                layout.epochs.push(Epoch {
                    number: epoch,
                    stages: Vec::new(),
                    saturated: false,
                });
                layout.epochs.sort_by_key(|e| e.number);
                layout
                    .epochs
                    .iter()
                    .position(|e| e.number == epoch)
                    .expect("just added")
            }
        };
        let target = &mut layout.epochs[position];
        // A new epoch is sized like the last one was filled; a new stage grows.
        let keys = match target.stages.last() {
            Some(last) => last.load().1.saturating_mul(STAGE_GROWTH),
            None => previous_keys.max(STAGE_KEYS_MIN),
        };
        // Smaller stages while the bound allows (a saturated epoch is the last resort).
        let stage = std::iter::successors(Some(keys), |keys| Some(keys / 2))
            .take_while(|&keys| keys >= STAGE_KEYS_MIN)
            .find(|&keys| held + Bloom::bytes_for(keys) <= self.bytes_max)
            .map(Bloom::with_capacity);
        if let Some(stage) = stage {
            target.stages.push(Arc::new(stage));
        } else {
            target.saturated = true;
            tracing::warn!(
                epoch,
                held_bytes = held,
                "the dedup filter is at its memory bound; until this epoch ends, duplicates are screened in the store"
            );
        }
        *guard = Arc::new(layout);
        let stage = guard.writable(epoch).flatten();
        Ok((Arc::clone(&guard), stage))
    }
}

impl Layout {
    /// `Some(stage)` to insert into, `Some(None)` if the epoch is saturated, `None` if a
    /// stage must be added first.
    fn writable(&self, epoch: i64) -> Option<Option<Arc<Bloom>>> {
        let epoch = self.epochs.iter().find(|e| e.number == epoch)?;
        if epoch.saturated {
            return Some(None);
        }
        let last = epoch.stages.last()?;
        (!last.is_full()).then(|| Some(Arc::clone(last)))
    }

    fn bytes(&self) -> usize {
        let stages = self.epochs.iter().flat_map(|e| &e.stages);
        stages.map(|stage| stage.bytes()).sum()
    }
}

impl Epoch {
    fn keys(&self) -> u64 {
        self.stages.iter().map(|stage| stage.load().0).sum()
    }
}

/// Inserts keys, keeping the layout it last saw.
pub struct Writer<'a> {
    layout: Arc<Layout>,
    filter: &'a RecentKeys,
}

impl Writer<'_> {
    /// Records that the state may hold the dedup key `key`, stored at `stored_at_ms`.
    pub fn insert(&mut self, key: &[u8; 16], stored_at_ms: i64) -> Result<(), StoreError> {
        let epoch = self.filter.epoch_of(stored_at_ms);
        let stage = match self.layout.writable(epoch) {
            Some(stage) => stage,
            None => {
                let (layout, stage) = self.filter.stage_for(epoch)?;
                self.layout = layout;
                stage
            }
        };
        if let Some(stage) = stage {
            stage.insert(hash(key));
        }
        Ok(())
    }
}

/// A ready filter as of one moment.
pub struct View {
    layout: Arc<Layout>,
    horizon_epoch: i64,
}

impl View {
    /// False only if the state holds no live dedup entry with this key.
    pub fn may_hold(&self, key: &[u8; 16]) -> bool {
        let hash = hash(key);
        self.layout
            .epochs
            .iter()
            .filter(|e| e.number >= self.horizon_epoch)
            .any(|e| e.saturated || e.stages.iter().any(|stage| stage.may_hold(hash)))
    }
}

fn hash(key: &[u8; 16]) -> u64 {
    u64::from_le_bytes(key[..8].try_into().expect("8 bytes"))
}

/// Fills `filter` from the dedup index's keys within the window, then marks it ready;
/// stops early if it is abandoned. Run on its own thread: a large window takes seconds to
/// read, and the screen looks every key up in the index meanwhile.
pub fn build(filter: &RecentKeys, index: &DedupIndex) {
    let started = std::time::Instant::now();
    match scan(filter, index) {
        Ok(Some(scanned)) => {
            filter.ready.store(true, Ordering::Release);
            let (_, bytes) = filter.load().unwrap_or_default();
            tracing::info!(
                keys = scanned,
                bytes,
                took_ms = started.elapsed().as_millis() as u64,
                "built the filter of recent dedup keys"
            );
        }
        Ok(None) => {}
        Err(error) => tracing::warn!(
            %error,
            "could not build the filter of recent dedup keys; duplicates are screened in the index"
        ),
    }
}

/// The live keys scanned, or `None` if abandoned.
fn scan(filter: &RecentKeys, index: &DedupIndex) -> Result<Option<u64>, StoreError> {
    let mut writer = filter.writer()?;
    index.visit(&filter.horizon, &filter.abandoned, |hash, stored_at_ms| {
        writer.insert(hash, stored_at_ms)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: i64 = 1_000;

    /// A well-spread 16-byte key (SplitMix64 of `n`, twice).
    fn key(n: u64) -> [u8; 16] {
        let mix = |mut x: u64| {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            x ^ (x >> 31)
        };
        let mut key = [0; 16];
        key[..8].copy_from_slice(&mix(n).to_le_bytes());
        key[8..].copy_from_slice(&mix(!n).to_le_bytes());
        key
    }

    fn ready(window: i64, horizon: &Horizon) -> RecentKeys {
        let filter = RecentKeys::new(window, horizon.clone());
        filter.ready.store(true, Ordering::Release);
        filter
    }

    #[test]
    fn every_key_inserted_may_be_held_across_epochs_and_stages() {
        let horizon = Horizon::default();
        let filter = ready(WINDOW, &horizon);
        let mut writer = filter.writer().unwrap();
        // Three epochs; the middle one past its first stage.
        let keys = STAGE_KEYS_MIN + 1_000;
        for n in 0..keys {
            let at = if n < 100 {
                10
            } else if n < keys - 100 {
                1_500
            } else {
                2_500
            };
            writer.insert(&key(n), at).unwrap();
        }
        let view = filter.view().unwrap().expect("ready");
        assert!((0..keys).all(|n| view.may_hold(&key(n))));
        let absent = (keys..keys + 50_000)
            .filter(|&n| view.may_hold(&key(n)))
            .count();
        assert!(
            absent < 2_500,
            "{absent} of 50,000 absent keys answered maybe"
        );
        let (inserted, bytes) = filter.load().unwrap();
        assert_eq!(inserted, keys);
        // Epoch 0 and 2: one 2 MiB stage each; epoch 1: 2 MiB + 8 MiB.
        assert_eq!(bytes, (2 + 2 + 8 + 2) << 20);
    }

    #[test]
    fn dead_epochs_are_ignored_then_dropped() {
        let horizon = Horizon::default();
        let filter = ready(WINDOW, &horizon);
        let mut writer = filter.writer().unwrap();
        writer.insert(&key(1), 500).unwrap();
        horizon.advance(1_200);
        assert!(
            !filter.view().unwrap().unwrap().may_hold(&key(1)),
            "epoch 0 is dead"
        );
        writer.insert(&key(2), 2_100).unwrap();
        let (_, bytes) = filter.load().unwrap();
        assert_eq!(bytes, 2 << 20, "epoch 0 dropped when epoch 2 was added");
        assert!(filter.view().unwrap().unwrap().may_hold(&key(2)));
    }

    #[test]
    fn not_ready_until_built() {
        let filter = RecentKeys::new(WINDOW, Horizon::default());
        assert!(filter.view().unwrap().is_none());
    }

    /// At its memory bound a stage shrinks to what fits, then the epoch saturates: every
    /// key, inserted or not, answers "maybe", and the bound is never passed.
    #[test]
    fn at_its_memory_bound_stages_shrink_then_the_epoch_says_maybe() {
        let horizon = Horizon::default();
        let mut filter = ready(WINDOW, &horizon);
        let stage_bytes = Bloom::bytes_for(STAGE_KEYS_MIN);
        filter.bytes_max = 2 * stage_bytes;
        let mut writer = filter.writer().unwrap();
        // The first stage, then a second shrunk from 4x to the minimum, then nothing.
        let keys = 3 * STAGE_KEYS_MIN;
        for n in 0..keys {
            writer.insert(&key(n), 10).unwrap();
        }
        let (inserted, bytes) = filter.load().unwrap();
        assert_eq!(bytes, 2 * stage_bytes, "held within the bound");
        assert_eq!(inserted, 2 * STAGE_KEYS_MIN, "the rest went to no stage");
        let view = filter.view().unwrap().expect("ready");
        assert!((0..keys).all(|n| view.may_hold(&key(n))));
        assert!(
            view.may_hold(&key(keys + 1)),
            "a saturated epoch says maybe"
        );
    }
}
