//! Event bodies, read back from the log where they live.
//!
//! An event's seq names its log entry and its position in that entry's block
//! ([`super::tables::seq_position`]). Reading one decodes the whole block, so decoded
//! blocks are kept in a bounded cache shared by every reader: a page of a profile's events
//! and the three services reading the same fresh entries each decode a block once. The
//! services want each body as a JSON tree: a cached block parses its bodies at most once
//! too ([`CachedBlock::parsed`]), whichever service asks first.

use std::sync::Arc;

use std::sync::OnceLock;

use quick_cache::Weighter;
use serde_json::Value;

use super::tables::{StoredEvent, seq_position};
use super::{Store, StoreError, entry};
use crate::model::block::Block;
use crate::model::command::Command;

/// A decoded block, and its bodies parsed into JSON trees once someone asked.
pub struct CachedBlock {
    /// The block.
    pub block: Block,
    parsed: OnceLock<Vec<Arc<Value>>>,
}

impl CachedBlock {
    /// Every event's body as a JSON tree, parsed on first use and shared after. A body
    /// that does not parse (validation produced it, so only corruption could) is `null`.
    pub fn parsed(&self) -> &[Arc<Value>] {
        self.parsed.get_or_init(|| {
            (0..self.block.len())
                .map(|i| {
                    let body = self.block.body(i).unwrap_or("null");
                    Arc::new(serde_json::from_str(body).unwrap_or(Value::Null))
                })
                .collect()
        })
    }
}

impl std::ops::Deref for CachedBlock {
    type Target = Block;
    fn deref(&self) -> &Block {
        &self.block
    }
}

/// Decoded blocks by log index, bounded by their approximate size.
pub struct BlockCache {
    cache: quick_cache::sync::Cache<u64, Arc<CachedBlock>, BlockWeight>,
}

#[derive(Clone)]
struct BlockWeight;

impl Weighter<u64, Arc<CachedBlock>> for BlockWeight {
    fn weight(&self, _index: &u64, block: &Arc<CachedBlock>) -> u64 {
        // Parsed trees take a few times the text; count them in up front.
        (block.heap_bytes() * 4).max(1) as u64
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
        }
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
            return Ok(Some(block));
        }
        let Some(record) = self.log.read(log_index)? else {
            return Ok(None);
        };
        let corrupt = |why: String| StoreError::Corrupt(format!("log entry {log_index}: {why}"));
        let Some(Command::Ingest(encoded)) = entry::command(&record).map_err(corrupt)? else {
            return Ok(None);
        };
        let block = Arc::new(CachedBlock {
            block: encoded.decode().map_err(|e| corrupt(e.to_string()))?,
            parsed: OnceLock::new(),
        });
        self.blocks.cache.insert(log_index, Arc::clone(&block));
        Ok(Some(block))
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
