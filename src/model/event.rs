//! The event as validation produces it: validated, normalised and ready to propose.
//!
//! An [`Event`] is produced once, by validation on the node that received the request,
//! and from then on is immutable. Everything the state machine needs to apply it is
//! pre-extracted into typed fields (identities, traits, timestamp) so that applying is
//! cheap and — the property replication depends on — deterministic: applying never looks
//! at a clock, a random number or the node it runs on. The full normalised JSON body is
//! carried verbatim for storage and for the events API. In the log, a group of events
//! travels as one [`super::block::EncodedBlock`].

use serde::{Deserialize, Serialize};

use super::identity::Identity;

/// The Segment message types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum MessageType {
    Identify,
    Track,
    Page,
    Screen,
    Group,
    Alias,
}

impl MessageType {
    /// All types, in the order used for per-type counters.
    pub const ALL: [MessageType; 6] = [
        MessageType::Identify,
        MessageType::Track,
        MessageType::Page,
        MessageType::Screen,
        MessageType::Group,
        MessageType::Alias,
    ];

    /// The wire name (`"track"`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            MessageType::Identify => "identify",
            MessageType::Track => "track",
            MessageType::Page => "page",
            MessageType::Screen => "screen",
            MessageType::Group => "group",
            MessageType::Alias => "alias",
        }
    }

    /// Parses a wire name.
    pub fn parse(text: &str) -> Option<MessageType> {
        MessageType::ALL.into_iter().find(|t| t.as_str() == text)
    }

    /// Index into per-type counter arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// One validated, normalised event, before it is encoded into a block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// The name of the source (from configuration) whose write key sent it.
    pub source: String,
    /// `messageId`, given by the client or generated at validation.
    pub message_id: String,
    /// The Segment message type.
    pub kind: MessageType,
    /// `event` for track, `name` for page and screen, empty otherwise.
    pub name: String,
    /// The corrected event time, milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// When the receiving node got the request, milliseconds since the Unix epoch.
    pub received_at_ms: i64,
    /// The identities the event carries, normalised, junk removed, highest priority first.
    pub identities: Vec<Identity>,
    /// For alias: the identity named by `previousId` (as user id; resolution also tries it
    /// as an anonymous id).
    pub previous_id: Option<String>,
    /// Profile traits set by this event (identify `traits`), as a JSON object text.
    pub traits_json: Option<String>,
    /// The full normalised event as JSON text (what the events API returns).
    pub body_json: String,
}

/// What applying one event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventOutcome {
    /// Stored with this sequence number, on this profile.
    Stored { seq: u64, profile_id: u64 },
    /// A previous event with the same source and messageId is within the dedup window
    /// (or earlier in the same group); nothing changed. `seq` is that earlier event's
    /// sequence number.
    Duplicate { seq: u64 },
}
