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
use crate::model::profile::{Profile, TraitValue};

/// State counters and positions (see the `META_*` keys) → u64.
pub const META: &str = "meta";
/// (profile id *when the event was applied*, event seq) → event name, `0xFF`, event
/// timestamp (8 bytes big-endian); the per-profile event index. See [`index_value`].
/// Entries are never moved: a merged profile's events stay under its old id, and reads
/// of a profile visit its id and every id in its `merged_ids`.
pub const PROFILE_EVENTS: &str = "profile_events";
/// Identity key (`kind:value`) → owning profile id.
pub const IDENTITIES: &str = "identities";
/// Profile id → a [`crate::model::profile::Profile`], see [`encode_profile`].
pub const PROFILES: &str = "profiles";
/// Merged-away profile id → the profile it was merged into.
pub const REDIRECTS: &str = "redirects";
/// (profile id, merge seq) → postcard [`MergeRecord`]; the audit trail of a profile (like
/// the event index, never moved by a merge), at most `identity.max_audit_records` per
/// profile id (see [`crate::model::audit`]).
pub const MERGES: &str = "merges";
/// 16-byte [`dedup_hash`] of (source, messageId) → state clock when stored (i64
/// big-endian) ++ the event's seq (u64 big-endian): the idempotency index of data format 3
/// and before. Nothing writes it any more (the index is derived from the feed and the log,
/// see `super::dedup_index`); a store or snapshot of that time still holds keys here, until
/// they expire: dead ones are left out of the state hash and snapshots, and compaction
/// drops them (see `super::dedup`).
pub const DEDUP: &str = "dedup";
/// First feed seq of a log entry → postcard [`FeedEntry`]: the ordered change feed
/// services consume, one record per log entry.
pub const FEED: &str = "feed";
/// Segment id → postcard [`crate::model::command::SegmentDef`].
pub const SEGMENT_DEFS: &str = "segment_defs";
/// Profile id → a profile's activity, see [`encode_activity`]: what every event changes
/// (seen times, counts), kept apart from the [`PROFILES`] record so that an event that
/// changes nothing else rewrites ~20 bytes instead of the whole profile (data format 5).
pub const PROFILE_ACTIVITY: &str = "profile_activity";

/// The state keyspaces, in the order the state hash covers them. Keyspaces are named by
/// their position in snapshots, so new ones are appended.
pub const STATE_KEYSPACES: [&str; 10] = [
    META,
    PROFILE_EVENTS,
    IDENTITIES,
    PROFILES,
    REDIRECTS,
    MERGES,
    DEDUP,
    FEED,
    SEGMENT_DEFS,
    PROFILE_ACTIVITY,
];

/// How many of [`STATE_KEYSPACES`] data format 4 had. The state hash covers a keyspace
/// added since only when it holds records, so the hash of a state that has none in them (a
/// format-4 state, or a backup of one) is what format 4 computed: backups keep verifying.
pub const STATE_KEYSPACES_FORMAT_4: usize = 9;

/// Whether the state hash covers keyspace number `id` holding `count` records.
pub fn hashed(id: usize, count: u64) -> bool {
    id < STATE_KEYSPACES_FORMAT_4 || count > 0
}

/// `META` key: index of the last log entry applied to the state, plus one (0 = none).
pub const META_APPLIED_INDEX: &str = "applied_index";
/// `META` key: the state clock, the largest batch time applied (ms since the epoch).
pub const META_CLOCK_MS: &str = "clock_ms";
/// `META` key: the next profile id.
pub const META_NEXT_PROFILE: &str = "next_profile";
/// `META` key: the next merge record sequence number.
pub const META_NEXT_MERGE: &str = "next_merge";
/// `META` key: the next feed sequence number.
pub const META_NEXT_FEED: &str = "next_feed";
/// `META` key: events ever stored.
pub const META_EVENTS_STORED: &str = "events_stored";
/// `META` key: events removed by retention.
pub const META_EVENTS_EXPIRED: &str = "events_expired";
/// `META` key prefix: `alert_note/` ++ alert key → postcard
/// [`crate::model::command::AlertNote`], the notification state of a cluster-scoped alert.
pub const META_ALERT_NOTE_PREFIX: &str = "alert_note/";
/// `META` key: the key of the last feed entry removed by retention (0 = none).
pub const META_FEED_TAIL: &str = "feed_tail";

/// Bits of an event seq that hold its position in its log entry's block: an event's seq
/// is `log index << SEQ_ORDINAL_BITS | position`, unique, increasing in log order, and
/// enough to find the event's body in the log.
pub const SEQ_ORDINAL_BITS: u32 = 16;

/// The seq of the event at `ordinal` in the block of log entry `log_index`.
pub fn event_seq(log_index: u64, ordinal: usize) -> u64 {
    (log_index << SEQ_ORDINAL_BITS) | ordinal as u64
}

/// The log index and position in its block of the event with this seq.
pub fn seq_position(seq: u64) -> (u64, usize) {
    (
        seq >> SEQ_ORDINAL_BITS,
        (seq & ((1 << SEQ_ORDINAL_BITS) - 1)) as usize,
    )
}

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

/// The dedup key of a (source, messageId) pair: 16 bytes of blake3 over
/// `source 0x00 messageId` (source names cannot contain 0x00). A keyed-free cryptographic
/// hash, so nobody can make two messageIds collide on purpose.
pub fn dedup_hash(source: &str, message_id: &str) -> [u8; 16] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(source.as_bytes());
    hasher.update(&[0]);
    hasher.update(message_id.as_bytes());
    let mut key = [0_u8; 16];
    key.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
    key
}

/// A [`DEDUP`] value: when the entry was made and the event's seq.
pub fn dedup_value(stored_at_ms: i64, seq: u64) -> [u8; 16] {
    let mut value = [0_u8; 16];
    value[..8].copy_from_slice(&stored_at_ms.to_be_bytes());
    value[8..].copy_from_slice(&seq.to_be_bytes());
    value
}

/// Decodes a [`DEDUP`] value into (stored at, seq).
pub fn read_dedup_value(bytes: &[u8]) -> Result<(i64, u64), super::StoreError> {
    if bytes.len() != 16 {
        return Err(super::StoreError::Corrupt(format!(
            "{DEDUP}: expected a 16-byte value, found {}",
            bytes.len()
        )));
    }
    let mut at = [0_u8; 8];
    at.copy_from_slice(&bytes[..8]);
    Ok((i64::from_be_bytes(at), read_u64(&bytes[8..], DEDUP)?))
}

/// An event as read back from the log, with what the events API and services need.
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
    /// When its log entry was proposed (the entry's batch time), ms since the epoch.
    pub stored_at_ms: i64,
    /// Source name.
    pub source: String,
    /// The event's messageId.
    pub message_id: String,
    /// The normalised event, JSON text.
    pub body_json: String,
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
    /// `profile` was full, so trait keys were dropped: the first time, with some of the
    /// keys (at most [`DROPPED_KEYS_RECORDED_MAX`], each cut to
    /// [`DROPPED_KEY_BYTES_MAX`]); later drops are only counted on the profile.
    TraitsDropped {
        profile: u64,
        keys: Vec<String>,
        rule: String,
    },
}

/// Most dropped trait keys named in one [`MergeAction::TraitsDropped`] record.
pub const DROPPED_KEYS_RECORDED_MAX: usize = 8;
/// Longest dropped trait key named in a record, bytes (longer ones are cut).
pub const DROPPED_KEY_BYTES_MAX: usize = 64;

impl MergeAction {
    /// The record of `dropped` trait keys on `profile`, naming a bounded few of them.
    pub fn traits_dropped(profile: u64, dropped: &[String], rule: String) -> MergeAction {
        let keys = dropped
            .iter()
            .take(DROPPED_KEYS_RECORDED_MAX)
            .map(|key| {
                let mut end = key.len().min(DROPPED_KEY_BYTES_MAX);
                while !key.is_char_boundary(end) {
                    end -= 1;
                }
                key[..end].to_owned()
            })
            .collect();
        MergeAction::TraitsDropped {
            profile,
            keys,
            rule,
        }
    }
}

/// The first byte of a profile record in the current layout, followed by
/// [`PROFILE_LAYOUT`]. A record without it is in the first layout (no trait seqs, no audit
/// bookkeeping), which began with the profile id as a postcard varint: never 0, since
/// profile ids start at 1 — so the two cannot be confused.
const PROFILE_TAG: u8 = 0;
/// The second profile layout: trait values carry their event's seq, and the profile its
/// audit bookkeeping. Read, no longer written: its seen times and counts are the
/// profile's, unless a [`PROFILE_ACTIVITY`] record says otherwise.
const PROFILE_LAYOUT_2: u8 = 2;
/// The current profile layout (data format 5): as the second, but the seen times and
/// counts are left neutral (see [`encode_profile`]) — they live in the profile's
/// [`PROFILE_ACTIVITY`] record, which must exist.
const PROFILE_LAYOUT: u8 = 3;

/// Encodes a profile record without its activity (seen times and counts, written apart
/// with [`encode_activity`]): [`PROFILE_TAG`], [`PROFILE_LAYOUT`], then postcard of the
/// profile with those fields neutral. So the record's bytes change only when something
/// else in the profile does, and apply compares them to skip the rewrite.
pub fn encode_profile(profile: &mut Profile) -> Vec<u8> {
    let activity = Activity::take(profile);
    let mut bytes = vec![PROFILE_TAG, PROFILE_LAYOUT];
    bytes.extend(encode(&*profile));
    activity.put(profile);
    bytes
}

/// Decodes a profile record in any layout (the first one upgraded on the way: trait seqs
/// 0, empty audit bookkeeping), and whether its activity must come from its
/// [`PROFILE_ACTIVITY`] record (the current layout) — see [`read_profile`].
fn decode_profile_record(bytes: &[u8]) -> Result<(Profile, bool), super::StoreError> {
    match bytes {
        [PROFILE_TAG, PROFILE_LAYOUT, rest @ ..] => Ok((decode(rest, PROFILES)?, true)),
        [PROFILE_TAG, PROFILE_LAYOUT_2, rest @ ..] => Ok((decode(rest, PROFILES)?, false)),
        [PROFILE_TAG, layout, ..] => Err(super::StoreError::Corrupt(format!(
            "{PROFILES}: unknown profile layout {layout} (this build reads up to {PROFILE_LAYOUT})"
        ))),
        _ => decode::<ProfileLayout1>(bytes, PROFILES).map(|old| (old.upgrade(), false)),
    }
}

/// Whether a profile record is in the current layout, as [`encode_profile`] writes it:
/// apply compares such a record's bytes with a profile's new encoding to skip rewriting an
/// unchanged one; a record of an older layout is always rewritten.
pub fn is_current_layout(bytes: &[u8]) -> bool {
    matches!(bytes, [PROFILE_TAG, PROFILE_LAYOUT, ..])
}

/// A profile from its [`PROFILES`] record and its [`PROFILE_ACTIVITY`] record (`None` if
/// it has none). The activity record, when there is one, is the profile's activity; a
/// record of the current layout without one is corrupt.
pub fn read_profile(record: &[u8], activity: Option<&[u8]>) -> Result<Profile, super::StoreError> {
    let (mut profile, needs_activity) = decode_profile_record(record)?;
    match activity {
        Some(bytes) => decode::<Activity>(bytes, PROFILE_ACTIVITY)?.put(&mut profile),
        None if needs_activity => {
            return Err(super::StoreError::Corrupt(format!(
                "{PROFILES}: profile {} has no {PROFILE_ACTIVITY} record",
                profile.id
            )));
        }
        None => {}
    }
    Ok(profile)
}

/// Encodes a [`PROFILE_ACTIVITY`] record: postcard of the profile's [`Activity`].
pub fn encode_activity(profile: &Profile) -> Vec<u8> {
    encode(&Activity {
        first_seen_ms: profile.first_seen_ms,
        last_seen_ms: profile.last_seen_ms,
        counts: profile.counts,
    })
}

/// A [`PROFILE_ACTIVITY`] record: the fields of a profile that every event changes.
#[derive(Debug, Serialize, Deserialize)]
struct Activity {
    first_seen_ms: i64,
    last_seen_ms: i64,
    counts: [u64; 6],
}

impl Activity {
    /// Moves the activity out of `profile`, leaving the fields neutral (zero).
    fn take(profile: &mut Profile) -> Activity {
        Activity {
            first_seen_ms: std::mem::take(&mut profile.first_seen_ms),
            last_seen_ms: std::mem::take(&mut profile.last_seen_ms),
            counts: std::mem::take(&mut profile.counts),
        }
    }

    /// Sets `profile`'s activity to this.
    fn put(self, profile: &mut Profile) {
        profile.first_seen_ms = self.first_seen_ms;
        profile.last_seen_ms = self.last_seen_ms;
        profile.counts = self.counts;
    }
}

/// The first profile layout, read from stores written before trait seqs and audit
/// bookkeeping (never written any more).
#[derive(Deserialize)]
struct ProfileLayout1 {
    id: u64,
    identities: Vec<Identity>,
    traits: std::collections::BTreeMap<String, TraitValueLayout1>,
    first_seen_ms: i64,
    last_seen_ms: i64,
    counts: [u64; 6],
    merged_ids: Vec<u64>,
}

/// A trait value of [`ProfileLayout1`].
#[derive(Deserialize)]
struct TraitValueLayout1 {
    json: String,
    timestamp_ms: i64,
}

impl ProfileLayout1 {
    fn upgrade(self) -> Profile {
        let mut profile = Profile::new(self.id, self.identities);
        profile.traits = self
            .traits
            .into_iter()
            .map(|(key, value)| {
                let value = TraitValue {
                    json: value.json,
                    timestamp_ms: value.timestamp_ms,
                    seq: 0,
                };
                (key, value)
            })
            .collect();
        profile.first_seen_ms = self.first_seen_ms;
        profile.last_seen_ms = self.last_seen_ms;
        profile.counts = self.counts;
        profile.merged_ids = self.merged_ids;
        profile
    }
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

/// One record of the change feed: what changed, in apply order. Services consume it from
/// their own cursor; event bodies are read from the log by seq.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FeedRecord {
    /// An event was stored on a profile.
    Event {
        /// The event's seq (see [`event_seq`]).
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
    /// Time passed (a [`crate::model::command::Command::Tick`] entry): the entry's
    /// `at_ms` is the new state clock. Appended last so older records still decode.
    Tick,
}

/// The feed records of one log entry, with the state clock when it was applied (for
/// retention). Record `i` has feed seq `key + i`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedEntry {
    /// State clock at apply, ms since the epoch.
    pub at_ms: i64,
    /// The log entry (its raft index) the records came from.
    pub log_index: u64,
    /// What changed, in apply order.
    pub records: Vec<FeedRecord>,
}
