//! Event bodies, read back from the log where they live.
//!
//! An event's seq names its log entry and its position in that entry's block
//! ([`super::tables::seq_position`]). Reading one decodes the whole block, so decoded
//! blocks are kept in a bounded cache shared by every reader: a page of a profile's events
//! and the three services reading the same fresh entries each decode a block once. The
//! services want only some events' `properties`: a cached block parses each of those at
//! most once too, on first use, whichever service asks first ([`super::body`]).

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use quick_cache::Weighter;
use serde_json::Value;

use super::tables::{StoredEvent, seq_position};
use super::{Store, StoreError, entry};
use crate::model::block::Block;
use crate::model::command::Command;

/// What the cache weighs a block at, per byte of its bodies, on top of the block itself:
/// room for the `properties` trees parsed into it ([`super::body`]). A parsed tree takes a
/// few times its text, but properties are a part of each body and only the events the
/// services' definitions name are parsed.
const PROPERTIES_WEIGHT_PER_BODY_BYTE: usize = 2;

/// A decoded block, and the `properties` of those of its events someone asked about.
pub struct CachedBlock {
    /// The block.
    pub block: Block,
    /// Per event, its parsed `properties` once asked for ([`CachedBlock::properties`]).
    pub(super) properties: Box<[OnceLock<Option<Value>>]>,
    /// The cache's counters (properties parsed).
    pub(super) stats: Arc<BlockCacheStats>,
}

impl std::ops::Deref for CachedBlock {
    type Target = Block;
    fn deref(&self) -> &Block {
        &self.block
    }
}

/// How the block cache is used, counted since the node started.
#[derive(Debug, Default)]
pub struct BlockCacheStats {
    /// Blocks found in the cache.
    pub hits: AtomicU64,
    /// Blocks read from the log and decoded.
    pub misses: AtomicU64,
    /// Event `properties` parsed (at most once per event while its block stays cached).
    pub properties_parsed: AtomicU64,
}

/// Decoded blocks by log index, bounded by their approximate size.
pub struct BlockCache {
    cache: quick_cache::sync::Cache<u64, Arc<CachedBlock>, BlockWeight>,
    stats: Arc<BlockCacheStats>,
}

#[derive(Clone)]
struct BlockWeight;

impl Weighter<u64, Arc<CachedBlock>> for BlockWeight {
    fn weight(&self, _index: &u64, block: &Arc<CachedBlock>) -> u64 {
        // Room for parsed properties, counted in up front: the weight must not change
        // while the block is cached.
        let bodies = block.heap_bytes();
        (bodies + bodies * PROPERTIES_WEIGHT_PER_BODY_BYTE).max(1) as u64
    }
}

impl BlockCache {
    /// A cache of at most about `bytes` of decoded blocks.
    pub fn new(bytes: usize) -> BlockCache {
        BlockCache {
            cache: quick_cache::sync::Cache::with_weighter(
                (bytes / (64 << 10)).max(16),
                bytes as u64,
                BlockWeight,
            ),
            stats: Arc::default(),
        }
    }

    /// How the cache has been used.
    pub fn stats(&self) -> &BlockCacheStats {
        &self.stats
    }

    /// Approximate bytes held (the blocks' weights).
    pub fn bytes(&self) -> u64 {
        self.cache.weight()
    }

    /// Forgets every block (the log was replaced).
    pub fn clear(&self) {
        self.cache.clear();
    }
}

impl Store {
    /// The decoded block of log entry `log_index`, or `None` if that entry is not in the
    /// log (retention removed it, or it is not an ingest entry).
    pub fn block(&self, log_index: u64) -> Result<Option<Arc<CachedBlock>>, StoreError> {
        if let Some(block) = self.blocks.cache.get(&log_index) {
            self.blocks.stats.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(Some(block));
        }
        self.blocks.stats.misses.fetch_add(1, Ordering::Relaxed);
        let Some(record) = self.log.read(log_index)? else {
            return Ok(None);
        };
        let corrupt = |why: String| StoreError::Corrupt(format!("log entry {log_index}: {why}"));
        let Some(Command::Ingest(encoded)) = entry::command(&record).map_err(corrupt)? else {
            return Ok(None);
        };
        let block = encoded.decode().map_err(|e| corrupt(e.to_string()))?;
        let block = Arc::new(CachedBlock {
            properties: (0..block.len()).map(|_| OnceLock::new()).collect(),
            block,
            stats: Arc::clone(&self.blocks.stats),
        });
        self.blocks.cache.insert(log_index, Arc::clone(&block));
        Ok(Some(block))
    }

    /// The block cache: its counters and size, for the node's metrics.
    pub fn block_cache(&self) -> &BlockCache {
        &self.blocks
    }

    /// The command of log entry `log_index`, or `None` if that entry is not in the log or
    /// carries none (membership and blank entries).
    pub fn command(&self, log_index: u64) -> Result<Option<Command>, StoreError> {
        let Some(record) = self.log.read(log_index)? else {
            return Ok(None);
        };
        entry::command(&record)
            .map_err(|why| StoreError::Corrupt(format!("log entry {log_index}: {why}")))
    }

    /// The event with this seq, as landed on `profile_id`; `None` if its entry is gone.
    pub fn event(&self, seq: u64, profile_id: u64) -> Result<Option<StoredEvent>, StoreError> {
        let (log_index, ordinal) = seq_position(seq);
        let Some(block) = self.block(log_index)? else {
            return Ok(None);
        };
        Ok(stored_event(&block, ordinal, profile_id))
    }
}

/// Event `ordinal` of `block`, as landed on `profile_id`.
pub fn stored_event(block: &Block, ordinal: usize, profile_id: u64) -> Option<StoredEvent> {
    let meta = block.head.events.get(ordinal)?;
    let body = block.body(ordinal)?;
    Some(StoredEvent {
        profile_id,
        kind: meta.kind,
        name: meta.name.clone(),
        timestamp_ms: meta.timestamp_ms,
        stored_at_ms: block.head.time_ms,
        source: meta.source.clone(),
        message_id: meta.message_id.clone(),
        body_json: body.to_owned(),
    })
}
