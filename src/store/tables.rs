//! The on-disk layout: every keyspace, how its keys are encoded, and the record types
//! stored in them.
//!
//! All keyspaces live in one fjall database (one shared journal, so a write transaction
//! spanning them is atomic). They hold the **state**, derived from the replicated log by
//! [`super::apply`] and covered by the state hash: nothing in it depends on which node
//! applied it. (The log itself lives in `crate::cluster::log_store`.)
//!
//! Keys are byte strings that sort the way the code scans them: integers big-endian,
//! compound keys concatenated (`profile ++ seq`), text keys as UTF-8 with a 0x00 separator
//! where two are joined (source names cannot contain 0x00). Records are encoded with
//! postcard (compact; fields may only be appended). JSON payloads inside records are
//! carried as text, never re-encoded.

use serde::{Deserialize, Serialize};

use crate::model::event::MessageType;
use crate::model::identity::Identity;

/// State counters and positions (see the `META_*` keys) → u64.
pub const META: &str = "meta";
/// Event sequence number → postcard [`StoredEvent`].
pub const EVENTS: &str = "events";
/// (profile id, event seq) → event name, `0xFF`, event timestamp (8 bytes big-endian); the
/// per-profile event index, newest = highest seq. See [`index_value`].
pub const PROFILE_EVENTS: &str = "profile_events";
/// Identity key (`kind:value`) → owning profile id.
pub const IDENTITIES: &str = "identities";
/// Profile id → postcard [`crate::model::profile::Profile`].
pub const PROFILES: &str = "profiles";
/// Merged-away profile id → the profile it was merged into.
pub const REDIRECTS: &str = "redirects";
/// (profile id, merge seq) → postcard [`MergeRecord`]; the audit trail of a profile.
pub const MERGES: &str = "merges";
/// source 0x00 messageId → seq of the event that used it; the idempotency index.
pub const DEDUP: &str = "dedup";
/// Event seq → postcard [`DedupExpiry`]; dedup entries in expiry order.
pub const DEDUP_EXPIRY: &str = "dedup_expiry";
/// Feed seq → postcard [`FeedRecord`]: the ordered change feed services consume.
pub const FEED: &str = "feed";
/// Segment id → postcard [`crate::model::command::SegmentDef`].
pub const SEGMENT_DEFS: &str = "segment_defs";

/// The state keyspaces, in the order the state hash covers them.
pub const STATE_KEYSPACES: [&str; 11] = [
    META,
    EVENTS,
    PROFILE_EVENTS,
    IDENTITIES,
    PROFILES,
    REDIRECTS,
    MERGES,
    DEDUP,
    DEDUP_EXPIRY,
    FEED,
    SEGMENT_DEFS,
];

/// `META` key: index of the last log entry applied to the state.
pub const META_APPLIED_INDEX: &str = "applied_index";
/// `META` key: the state clock, the largest batch time applied (ms since the epoch).
pub const META_CLOCK_MS: &str = "clock_ms";
/// `META` key: the next event sequence number.
pub const META_NEXT_SEQ: &str = "next_seq";
/// `META` key: the next profile id.
pub const META_NEXT_PROFILE: &str = "next_profile";
/// `META` key: the next merge record sequence number.
pub const META_NEXT_MERGE: &str = "next_merge";
/// `META` key: the next feed sequence number.
pub const META_NEXT_FEED: &str = "next_feed";

/// A [`PROFILE_EVENTS`] value: the name, then `0xFF` (never in UTF-8) and the timestamp,
/// so event conditions can count a profile's events by name and time from the index alone.
pub fn index_value(name: &str, timestamp_ms: i64) -> Vec<u8> {
    let mut value = Vec::with_capacity(name.len() + 9);
    value.extend_from_slice(name.as_bytes());
    value.push(0xFF);
    value.extend_from_slice(&timestamp_ms.to_be_bytes());
    value
}

/// Splits a [`PROFILE_EVENTS`] value into name bytes and timestamp (`None` for an index
/// entry written before timestamps were added: name only).
pub fn read_index_value(value: &[u8]) -> (&[u8], Option<i64>) {
    match value.len().checked_sub(9) {
        Some(at) if value[at] == 0xFF => {
            let mut ts = [0_u8; 8];
            ts.copy_from_slice(&value[at + 1..]);
            (&value[..at], Some(i64::from_be_bytes(ts)))
        }
        _ => (value, None),
    }
}

/// An integer key or value: 8 bytes big-endian, so keys sort numerically.
pub fn u64_bytes(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

/// A compound `(a, b)` key: all `b` of one `a` are adjacent, in order.
pub fn pair_key(a: u64, b: u64) -> [u8; 16] {
    let mut key = [0; 16];
    key[..8].copy_from_slice(&a.to_be_bytes());
    key[8..].copy_from_slice(&b.to_be_bytes());
    key
}

/// Decodes a [`u64_bytes`] value, naming the keyspace on failure.
pub fn read_u64(bytes: &[u8], keyspace: &'static str) -> Result<u64, super::StoreError> {
    let array: [u8; 8] = bytes.try_into().map_err(|_| {
        super::StoreError::Corrupt(format!(
            "{keyspace}: expected 8 bytes, found {}",
            bytes.len()
        ))
    })?;
    Ok(u64::from_be_bytes(array))
}

/// Decodes a [`pair_key`].
pub fn read_pair(bytes: &[u8], keyspace: &'static str) -> Result<(u64, u64), super::StoreError> {
    if bytes.len() != 16 {
        return Err(super::StoreError::Corrupt(format!(
            "{keyspace}: expected a 16-byte key, found {}",
            bytes.len()
        )));
    }
    Ok((
        read_u64(&bytes[..8], keyspace)?,
        read_u64(&bytes[8..], keyspace)?,
    ))
}

/// The dedup key of a (source, messageId) pair.
pub fn dedup_key(source: &str, message_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(source.len() + 1 + message_id.len());
    key.extend_from_slice(source.as_bytes());
    key.push(0);
    key.extend_from_slice(message_id.as_bytes());
    key
}

/// An event as stored, with what the events API and retention need.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredEvent {
    /// The profile the event landed on when applied (follow [`REDIRECTS`] for its owner now).
    pub profile_id: u64,
    /// Message type.
    pub kind: MessageType,
    /// Event name (track) or page/screen name.
    pub name: String,
    /// Corrected event time, ms since the epoch.
    pub timestamp_ms: i64,
    /// State clock when stored; retention counts from it.
    pub stored_at_ms: i64,
    /// Source name.
    pub source: String,
    /// The event's messageId.
    pub message_id: String,
    /// The normalised event, JSON text.
    pub body_json: String,
}

/// A dedup entry's expiry record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DedupExpiry {
    /// State clock when the entry was made.
    pub stored_at_ms: i64,
    /// Source name.
    pub source: String,
    /// The messageId.
    pub message_id: String,
}

/// One entry of a profile's merge audit trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergeRecord {
    /// State clock when it happened, ms since the epoch.
    pub at_ms: i64,
    /// messageId of the event that caused it.
    pub message_id: String,
    /// Source of that event.
    pub source: String,
    /// What happened.
    pub action: MergeAction,
}

/// A merge that happened or was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MergeAction {
    /// Profile `from` was merged into profile `into`, bringing `identities`; `linked_by`
    /// is the identity of the event that was found on `from`.
    Merged {
        into: u64,
        from: u64,
        linked_by: Identity,
        identities: Vec<Identity>,
    },
    /// Linking `identity` (owned by `other_profile`, if any) to `profile` was refused by `rule`.
    Refused {
        profile: u64,
        identity: Identity,
        other_profile: Option<u64>,
        rule: String,
    },
}

/// Encodes a record.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // postcard serialisation of our own plain structs cannot fail: no maps with
    // non-string keys, no unsized sequences; a failure would be a programming error.
    postcard::to_stdvec(value).expect("postcard encodes plain records")
}

/// Decodes a record, naming the table in the error.
pub fn decode<'a, T: Deserialize<'a>>(
    bytes: &'a [u8],
    table: &'static str,
) -> Result<T, super::StoreError> {
    postcard::from_bytes(bytes).map_err(|e| super::StoreError::Corrupt(format!("{table}: {e}")))
}

/// One entry of the change feed: what changed, in apply order. Services consume it from
/// their own cursor; event bodies are read from [`EVENTS`] by seq.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FeedRecord {
    /// An event was stored on a profile.
    Event {
        /// The event's seq in [`EVENTS`].
        seq: u64,
        /// The profile it landed on.
        profile: u64,
    },
    /// Profile `from` was merged into `into`.
    Merged {
        /// The surviving profile.
        into: u64,
        /// The profile merged away.
        from: u64,
    },
    /// A segment definition was created, replaced or deleted.
    SegmentChanged {
        /// The segment's id.
        id: String,
    },
}

/// A feed entry with the state clock when it was appended (for retention).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedEntry {
    /// State clock at append, ms since the epoch.
    pub at_ms: i64,
    /// What changed.
    pub record: FeedRecord,
}
