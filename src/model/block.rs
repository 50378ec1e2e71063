//! The block: how a group of validated events travels in one log entry, and how it is kept.
//!
//! The replicated log is the event store. The leader validates each event once, then
//! encodes the whole group commit as one [`EncodedBlock`]: opaque bytes that are
//! replicated, written to every replica's log segments and read back by the events API and
//! the CDP services — never re-encoded on the way, and never JSON-parsed by a follower.
//!
//! ```text
//! EncodedBlock = version u8 (= 1)
//!                head_len u32 LE, zstd(postcard(Head))      what applying needs
//!                zstd(bodies: every event's normalised JSON, concatenated)
//! Head         = { time_ms, events: [EventMeta], body_ends: [u32] }
//! ```
//!
//! The head is everything the state machine needs (identities, traits, timestamps), so
//! applying decompresses a few kilobytes and never touches the bodies; the bodies are
//! compressed together, so what one event repeats of the next (field names, context,
//! the library's user agent) is stored about once. `body_ends[i]` is where event `i`'s
//! body ends in the decompressed bodies.
//!
//! Invariants: at most [`BLOCK_EVENTS_MAX`] events (an event's position in its block is
//! the low 16 bits of its sequence number) and at most [`BLOCK_BODY_BYTES_MAX`]
//! decompressed bytes of bodies; decoding checks both, and every length, before it
//! allocates, so a damaged entry is an error, never a panic or an unbounded allocation.

use std::cell::RefCell;
use std::fmt;
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};

use super::event::{Event, MessageType};
use super::identity::Identity;

/// Most events in one block: an event's position in its block fits in 16 bits.
pub const BLOCK_EVENTS_MAX: usize = 1 << 16;
/// Most bytes of event bodies in one block, before compression.
pub const BLOCK_BODY_BYTES_MAX: usize = 64 << 20;
/// Most bytes of a block's head, before compression.
const HEAD_BYTES_MAX: usize = 64 << 20;
/// The block format written by this build.
const FORMAT_VERSION: u8 = 1;
/// zstd level: the fastest standard level. Bodies are JSON with much repetition inside a
/// block, so even level 1 compresses them several-fold; higher levels cost leader CPU on
/// the acknowledgement path for little more.
const ZSTD_LEVEL: i32 = 1;

/// Why a block could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    /// Too many events or too many body bytes for one block (a caller bug: the proposer
    /// cuts groups below these limits).
    #[error("block over its limits: {0}")]
    TooLarge(String),
    /// The bytes are not a block this build can read.
    #[error("damaged or unknown block: {0}")]
    Corrupt(String),
}

/// What applying needs of one event (its body stays compressed in the block).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventMeta {
    /// The source whose write key sent it.
    pub source: String,
    /// `messageId`, given by the client or generated at validation.
    pub message_id: String,
    /// The Segment message type.
    pub kind: MessageType,
    /// `event` for track, `name` for page and screen, empty otherwise.
    pub name: String,
    /// The corrected event time, ms since the Unix epoch.
    pub timestamp_ms: i64,
    /// When the receiving node got the request, ms since the Unix epoch.
    pub received_at_ms: i64,
    /// Identities, normalised, highest priority first.
    pub identities: Vec<Identity>,
    /// For alias: `previousId`.
    pub previous_id: Option<String>,
    /// Profile traits set by this event, as a JSON object text.
    pub traits_json: Option<String>,
}

impl EventMeta {
    /// The metadata of `event` (everything but its body).
    pub fn of(event: Event) -> (EventMeta, String) {
        let meta = EventMeta {
            source: event.source,
            message_id: event.message_id,
            kind: event.kind,
            name: event.name,
            timestamp_ms: event.timestamp_ms,
            received_at_ms: event.received_at_ms,
            identities: event.identities,
            previous_id: event.previous_id,
            traits_json: event.traits_json,
        };
        (meta, event.body_json)
    }
}

/// The decoded head of a block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Head {
    /// Proposal time, ms since the epoch; the state clock follows it.
    pub time_ms: i64,
    /// The events, in the order they are applied.
    pub events: Vec<EventMeta>,
    /// Where each event's body ends in the decompressed bodies.
    body_ends: Vec<u32>,
}

/// A block as bytes: what the log carries. Clones share the bytes and, once decoded by
/// any of them, the head (the leader's copy has it from encoding).
#[derive(Clone)]
pub struct EncodedBlock(Arc<Shared>);

struct Shared {
    bytes: Vec<u8>,
    head: OnceLock<Arc<Head>>,
}

impl PartialEq for EncodedBlock {
    fn eq(&self, other: &Self) -> bool {
        self.0.bytes == other.0.bytes
    }
}

impl Eq for EncodedBlock {}

impl fmt::Debug for EncodedBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EncodedBlock({} bytes)", self.0.bytes.len())
    }
}

impl Serialize for EncodedBlock {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0.bytes)
    }
}

impl<'de> Deserialize<'de> for EncodedBlock {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = EncodedBlock;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an encoded block (bytes)")
            }
            fn visit_bytes<E: serde::de::Error>(self, bytes: &[u8]) -> Result<EncodedBlock, E> {
                Ok(EncodedBlock::from_bytes(bytes.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(
                self,
                bytes: Vec<u8>,
            ) -> Result<EncodedBlock, E> {
                Ok(EncodedBlock::from_bytes(bytes))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<EncodedBlock, A::Error> {
                let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
                while let Some(byte) = seq.next_element()? {
                    bytes.push(byte);
                }
                Ok(EncodedBlock::from_bytes(bytes))
            }
        }
        deserializer.deserialize_byte_buf(Visitor)
    }
}

impl EncodedBlock {
    /// Encodes `events` proposed at `time_ms`: the heads go in one compressed frame, the
    /// bodies in another.
    pub fn encode(time_ms: i64, events: Vec<Event>) -> Result<EncodedBlock, BlockError> {
        if events.len() > BLOCK_EVENTS_MAX {
            return Err(BlockError::TooLarge(format!(
                "{} events (at most {BLOCK_EVENTS_MAX})",
                events.len()
            )));
        }
        let body_bytes: usize = events.iter().map(|e| e.body_json.len()).sum();
        if body_bytes > BLOCK_BODY_BYTES_MAX {
            return Err(BlockError::TooLarge(format!(
                "{body_bytes} bytes of bodies (at most {BLOCK_BODY_BYTES_MAX})"
            )));
        }
        let mut bodies = Vec::with_capacity(body_bytes);
        let mut head = Head {
            time_ms,
            events: Vec::with_capacity(events.len()),
            body_ends: Vec::with_capacity(events.len()),
        };
        for event in events {
            let (meta, body) = EventMeta::of(event);
            bodies.extend_from_slice(body.as_bytes());
            // Below BLOCK_BODY_BYTES_MAX (checked above), so it fits in a u32.
            head.body_ends.push(bodies.len() as u32);
            head.events.push(meta);
        }
        let encoded_head = postcard::to_stdvec(&head)
            .map_err(|e| BlockError::TooLarge(format!("block head does not encode: {e}")))?;
        let encoded_head = compress(&encoded_head)?;
        let bodies = compress(&bodies)?;
        let mut out = Vec::with_capacity(5 + encoded_head.len() + bodies.len());
        out.push(FORMAT_VERSION);
        out.extend_from_slice(&(encoded_head.len() as u32).to_le_bytes());
        out.extend_from_slice(&encoded_head);
        out.extend_from_slice(&bodies);
        let block = EncodedBlock::from_bytes(out);
        let _ = block.0.head.set(Arc::new(head));
        Ok(block)
    }

    /// The encoded bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0.bytes
    }

    /// Wraps bytes read from the log (checked when decoded).
    pub fn from_bytes(bytes: Vec<u8>) -> EncodedBlock {
        EncodedBlock(Arc::new(Shared {
            bytes,
            head: OnceLock::new(),
        }))
    }

    /// Encoded size, bytes.
    pub fn len(&self) -> usize {
        self.0.bytes.len()
    }

    /// Whether the block has no bytes at all (never true of an encoded block).
    pub fn is_empty(&self) -> bool {
        self.0.bytes.is_empty()
    }

    fn split(&self) -> Result<(&[u8], &[u8]), BlockError> {
        let bytes = &self.0.bytes;
        if bytes.len() < 5 {
            return Err(BlockError::Corrupt(format!("{} bytes", bytes.len())));
        }
        if bytes[0] != FORMAT_VERSION {
            return Err(BlockError::Corrupt(format!(
                "block format {} (this build reads {FORMAT_VERSION})",
                bytes[0]
            )));
        }
        let head_len = u32::from_le_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
        let rest = &bytes[5..];
        if head_len > rest.len() {
            return Err(BlockError::Corrupt(format!(
                "head of {head_len} bytes in a block of {}",
                bytes.len()
            )));
        }
        Ok(rest.split_at(head_len))
    }

    /// The head: what applying needs (decoded once, then shared by every clone).
    pub fn head(&self) -> Result<Arc<Head>, BlockError> {
        if let Some(head) = self.0.head.get() {
            return Ok(Arc::clone(head));
        }
        let head = Arc::new(self.decode_head()?);
        let _ = self.0.head.set(Arc::clone(&head));
        Ok(head)
    }

    fn decode_head(&self) -> Result<Head, BlockError> {
        let (head, _) = self.split()?;
        let head = decompress(head, HEAD_BYTES_MAX)?;
        let head: Head = postcard::from_bytes(&head)
            .map_err(|e| BlockError::Corrupt(format!("block head: {e}")))?;
        if head.events.len() != head.body_ends.len() || head.events.len() > BLOCK_EVENTS_MAX {
            return Err(BlockError::Corrupt(format!(
                "{} events with {} body ends",
                head.events.len(),
                head.body_ends.len()
            )));
        }
        if head.body_ends.windows(2).any(|w| w[0] > w[1]) {
            return Err(BlockError::Corrupt("body ends go backwards".into()));
        }
        Ok(head)
    }

    /// Decodes head and bodies.
    pub fn decode(&self) -> Result<Block, BlockError> {
        let head = self.head()?;
        let (_, bodies) = self.split()?;
        let bodies = decompress(bodies, BLOCK_BODY_BYTES_MAX)?;
        let end = head.body_ends.last().copied().unwrap_or(0) as usize;
        if end != bodies.len() {
            return Err(BlockError::Corrupt(format!(
                "bodies hold {} bytes; the head says {end}",
                bodies.len()
            )));
        }
        if std::str::from_utf8(&bodies).is_err() {
            return Err(BlockError::Corrupt("bodies are not UTF-8".into()));
        }
        Ok(Block { head, bodies })
    }
}

/// A decoded block: heads and bodies.
#[derive(Debug, Clone)]
pub struct Block {
    /// Time and event metadata.
    pub head: Arc<Head>,
    /// Every body, concatenated; valid UTF-8 (checked when decoded).
    bodies: Vec<u8>,
}

impl Block {
    /// Number of events.
    pub fn len(&self) -> usize {
        self.head.events.len()
    }

    /// Whether the block holds no event.
    pub fn is_empty(&self) -> bool {
        self.head.events.is_empty()
    }

    /// Event `i`'s normalised JSON body.
    pub fn body(&self, i: usize) -> Option<&str> {
        let end = *self.head.body_ends.get(i)? as usize;
        let start = match i {
            0 => 0,
            _ => self.head.body_ends[i - 1] as usize,
        };
        let bytes = self.bodies.get(start..end)?;
        // The whole buffer is UTF-8 and every boundary came from a whole string.
        std::str::from_utf8(bytes).ok()
    }

    /// Approximate memory held, bytes (for caches).
    pub fn heap_bytes(&self) -> usize {
        self.bodies.len() + self.head.events.len() * 160
    }
}

thread_local! {
    /// This thread's zstd compression context, made on first use and kept: creating one
    /// per frame allocates and initialises its tables every time. The output is the same
    /// bytes a fresh context gives (zstd resets the session for each frame).
    static COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> =
        const { RefCell::new(None) };
    /// This thread's zstd decompression context, kept for the same reason.
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { RefCell::new(None) };
}

fn compress(bytes: &[u8]) -> Result<Vec<u8>, BlockError> {
    let error = |e: std::io::Error| BlockError::TooLarge(format!("zstd: {e}"));
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        let compressor = match &mut *slot {
            Some(compressor) => compressor,
            empty => empty.insert(zstd::bulk::Compressor::new(ZSTD_LEVEL).map_err(error)?),
        };
        compressor.compress(bytes).map_err(error)
    })
}

/// Decompresses a zstd frame of at most `max` bytes (the frame's own size field is
/// checked against `max` before anything is allocated).
fn decompress(bytes: &[u8], max: usize) -> Result<Vec<u8>, BlockError> {
    let size = zstd::zstd_safe::get_frame_content_size(bytes)
        .map_err(|_| BlockError::Corrupt("not a zstd frame".into()))?
        .ok_or_else(|| BlockError::Corrupt("zstd frame without a content size".into()))?;
    if size > max as u64 {
        return Err(BlockError::Corrupt(format!(
            "{size} bytes decompressed (at most {max})"
        )));
    }
    let error = |e: std::io::Error| BlockError::Corrupt(format!("zstd: {e}"));
    let out = DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        let decompressor = match &mut *slot {
            Some(decompressor) => decompressor,
            empty => empty.insert(zstd::bulk::Decompressor::new().map_err(error)?),
        };
        decompressor.decompress(bytes, size as usize).map_err(error)
    })?;
    if out.len() as u64 != size {
        return Err(BlockError::Corrupt(
            "zstd frame shorter than it says".into(),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::identity::IdKind;

    fn event(i: usize) -> Event {
        Event {
            source: "web".into(),
            message_id: format!("m-{i}"),
            kind: MessageType::Track,
            name: "Order Completed".into(),
            timestamp_ms: 1_700_000_000_000 + i as i64,
            received_at_ms: 1_700_000_000_500,
            identities: vec![Identity {
                kind: IdKind::UserId,
                value: format!("u{i}"),
            }],
            previous_id: None,
            traits_json: i
                .is_multiple_of(2)
                .then(|| format!("{{\"plan\":\"p{i}\"}}")),
            body_json: format!("{{\"type\":\"track\",\"event\":\"Order Completed\",\"i\":{i}}}"),
        }
    }

    #[test]
    fn a_block_round_trips_heads_and_bodies() {
        let events: Vec<Event> = (0..100).map(event).collect();
        let block = EncodedBlock::encode(42, events.clone()).unwrap();
        let bytes = postcard::to_stdvec(&block).unwrap();
        let back: EncodedBlock = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, block);
        let decoded = back.decode().unwrap();
        assert_eq!(decoded.head.time_ms, 42);
        assert_eq!(decoded.len(), 100);
        for (i, event) in events.into_iter().enumerate() {
            assert_eq!(decoded.body(i), Some(event.body_json.as_str()));
            let (meta, _) = EventMeta::of(event);
            assert_eq!(decoded.head.events[i], meta);
        }
        assert_eq!(decoded.body(100), None);
    }

    #[test]
    fn bodies_compress_well_inside_a_block() {
        let events: Vec<Event> = (0..100).map(event).collect();
        let raw: usize = events.iter().map(|e| e.body_json.len()).sum();
        let block = EncodedBlock::encode(1, events).unwrap();
        assert!(block.len() < raw, "{} >= {raw}", block.len());
    }

    #[test]
    fn damaged_blocks_are_errors_not_panics() {
        let block = EncodedBlock::encode(7, (0..10).map(event).collect()).unwrap();
        let bytes = block.as_bytes().to_vec();
        for cut in 0..bytes.len() {
            let _ = EncodedBlock::from_bytes(bytes[..cut].to_vec()).decode();
        }
        for at in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[at] ^= 0x5A;
            let _ = EncodedBlock::from_bytes(flipped).decode();
        }
        let mut wrong_version = bytes;
        wrong_version[0] = 9;
        assert!(matches!(
            EncodedBlock::from_bytes(wrong_version).decode(),
            Err(BlockError::Corrupt(_))
        ));
    }

    #[test]
    fn a_kept_compression_context_gives_the_bytes_of_a_fresh_one() {
        // Blocks of different sizes and contents through this thread's kept context, each
        // compared with a context made for it alone: the log's bytes must not depend on
        // which blocks a thread encoded before.
        for round in 0..3 {
            for size in [1, 10, 100, 7, 300] {
                let bodies: Vec<u8> = (0..size)
                    .flat_map(|i| event(i * (round + 1)).body_json.into_bytes())
                    .collect();
                let fresh = zstd::bulk::compress(&bodies, ZSTD_LEVEL).unwrap();
                assert_eq!(
                    compress(&bodies).unwrap(),
                    fresh,
                    "round {round}, {size} events"
                );
                assert_eq!(decompress(&fresh, bodies.len()).unwrap(), bodies);
            }
        }
        assert!(decompress(b"not zstd at all", 100).is_err());
        // A failed decompression leaves the kept context usable.
        let ok = compress(b"after an error").unwrap();
        assert_eq!(decompress(&ok, 100).unwrap(), b"after an error");
    }

    #[test]
    fn an_empty_block_is_valid() {
        let block = EncodedBlock::encode(5, Vec::new()).unwrap();
        let decoded = block.decode().unwrap();
        assert!(decoded.is_empty());
        assert_eq!(decoded.body(0), None);
    }
}
