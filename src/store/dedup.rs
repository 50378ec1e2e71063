//! messageId dedup: compact hashed keys, checked by the leader before it proposes, expired
//! by time without a second keyspace.
//!
//! - **Where it is checked.** Only the leader looks events up, before it proposes them
//!   (`crate::node`), so a duplicate never enters the log and followers never consult
//!   the index: applying just hands each stored event's key to the index
//!   ([`super::dedup_index`]), which keeps it out of the state store (it derives it from
//!   the feed and the log). A filter of the keys within the window ([`super::recent`])
//!   answers most new keys without a lookup.
//!   Every replica keeps the index, so a new leader has it after a failover; it answers
//!   nothing before it has applied every entry of earlier terms.
//! - **Keys.** 16 bytes of blake3 over source and messageId ([`dedup_hash`]), with the
//!   event's seq and the state clock when it was stored.
//! - **Expiry.** An entry older than the dedup window (by the state clock, which every
//!   replica advances identically) is dead: [`Screen`] ignores it and the index deletes a
//!   run once every key in it is dead.
//! - **The old keyspace.** Before the index, apply wrote every key into [`DEDUP`]. Nothing
//!   writes it now; a store (or a snapshot) of that time still holds those keys, which
//!   the index finds again from the feed and the log. They stay in the state until they
//!   expire: the state hash and snapshots skip dead ones and compaction drops them
//!   ([`ExpiryFilter`]), so such a state hashes as one applied by this build once the
//!   window has passed. The filter reads the
//!   horizon from an atomic the store advances after each apply; the clock never goes
//!   back, so an entry dead once stays dead, and dropping it whenever compaction runs
//!   changes nothing anyone can observe.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use fjall::compaction::filter::{CompactionFilter, Context, Factory, ItemAccessor, Verdict};

use super::tables::{DEDUP, dedup_hash, read_dedup_value};
use super::{Store, StoreError};

/// The dedup horizon: entries stored before it are dead. Shared by the store and its
/// compaction filter.
#[derive(Debug, Clone, Default)]
pub struct Horizon(Arc<AtomicI64>);

impl Horizon {
    /// Entries stored before this time (ms) are dead.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Acquire)
    }

    /// Moves the horizon forward (never back).
    pub fn advance(&self, to_ms: i64) {
        self.0.fetch_max(to_ms, Ordering::AcqRel);
    }

    /// Whether an entry stored at `stored_at_ms` is still alive.
    pub fn alive(&self, stored_at_ms: i64) -> bool {
        stored_at_ms >= self.get()
    }
}

/// The compaction filter factory for [`DEDUP`].
pub struct ExpiryFactory {
    /// Shared with the store.
    pub horizon: Horizon,
}

impl Factory for ExpiryFactory {
    fn name(&self) -> &str {
        "tandem-dedup-expiry"
    }

    fn make_filter(&self, _ctx: &Context) -> Box<dyn CompactionFilter> {
        Box::new(ExpiryFilter {
            horizon_ms: self.horizon.get(),
        })
    }
}

/// Drops dedup entries stored before the horizon taken when the compaction started.
pub struct ExpiryFilter {
    horizon_ms: i64,
}

impl CompactionFilter for ExpiryFilter {
    fn filter_item(
        &mut self,
        item: ItemAccessor<'_>,
        _ctx: &Context,
    ) -> fjall::compaction::filter::CompactionFilterResult {
        let value = item.value()?;
        // A value that does not decode is left for the invariant checks to report.
        Ok(match read_dedup_value(&value) {
            Ok((stored_at_ms, _)) if stored_at_ms < self.horizon_ms => Verdict::Remove,
            _ => Verdict::Keep,
        })
    }
}

/// What the leader decided about one event of a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Not seen: propose it.
    New,
    /// Already stored with this seq.
    Stored(u64),
    /// Equal to the new event at this position earlier in the same group.
    Repeat(usize),
}

/// Screens events for duplicates against the applied state.
pub struct Screen<'a> {
    store: &'a Store,
}

impl<'a> Screen<'a> {
    /// Screens against `store`'s applied state.
    pub fn new(store: &'a Store) -> Screen<'a> {
        Screen { store }
    }

    /// For each `(source, messageId)`, whether it is new, stored (within the window), or a
    /// repeat of an earlier one in the same list.
    pub fn check<'k>(
        &self,
        keys: impl IntoIterator<Item = (&'k str, &'k str)>,
    ) -> Result<Vec<Seen>, StoreError> {
        self.check_hashes(
            keys.into_iter()
                .map(|(source, message_id)| dedup_hash(source, message_id)),
        )
    }

    /// [`Screen::check`] for keys already hashed with [`dedup_hash`] (the proposer has
    /// them from its in-flight screening, so they are not hashed twice).
    pub fn check_hashes(
        &self,
        hashes: impl IntoIterator<Item = [u8; 16]>,
    ) -> Result<Vec<Seen>, StoreError> {
        // Taken before the index is read: every key the filter holds, the index holds (apply
        // adds a batch's keys to both before the batch commits, see `super::recent`).
        // `None` while there is no ready filter.
        let filter = match self.store.recent()? {
            Some(filter) => filter.view()?,
            None => None,
        };
        let horizon = &self.store.horizon;
        let hashes = hashes.into_iter();
        let mut seen: KeyMap<usize> = KeyMap::default();
        seen.reserve(hashes.size_hint().0);
        let mut verdicts = Vec::with_capacity(hashes.size_hint().0);
        for (position, hash) in hashes.enumerate() {
            if let Some(&first) = seen.get(&hash) {
                verdicts.push(Seen::Repeat(first));
                continue;
            }
            seen.insert(hash, position);
            if let Some(filter) = &filter
                && !filter.may_hold(&hash)
            {
                verdicts.push(Seen::New);
                continue;
            }
            let stored = match self.store.dedup.get(&hash)? {
                Some((seq, stored_at_ms)) => horizon.alive(stored_at_ms).then_some(seq),
                None => None,
            };
            verdicts.push(stored.map_or(Seen::New, Seen::Stored));
        }
        Ok(verdicts)
    }
}

/// A hash map keyed by [`dedup_hash`] keys. It keeps the standard, randomly seeded
/// hasher: the keys are unkeyed blake3 of client-chosen messageIds, so a sender can search
/// offline for ids whose hashes share the bits a table indexes by, and a pass-through
/// hasher (tried: its saving was below what a benchmark here resolves) would let one batch
/// of such ids turn the in-flight map's lookups quadratic.
pub type KeyMap<V> = HashMap<[u8; 16], V>;

/// Whether a raw [`DEDUP`] record is alive at `horizon` (for the state hash and exports).
pub(crate) fn record_alive(value: &[u8], horizon: &Horizon) -> Result<bool, StoreError> {
    let (stored_at_ms, _) = read_dedup_value(value)?;
    Ok(horizon.alive(stored_at_ms))
}

/// The keyspace name the filter applies to.
pub(crate) const KEYSPACE: &str = DEDUP;
