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

/// What became of one submitted event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "WireOutcome", into = "WireOutcome")]
pub enum EventOutcome {
    /// Stored with this sequence number (known at commit: its entry's log index and its
    /// ordinal in the block).
    Stored { seq: u64 },
    /// A previous event with the same source and messageId is within the dedup window
    /// (or earlier in the same group); nothing changed. `seq` is that earlier event's
    /// sequence number.
    Duplicate { seq: u64 },
}

/// [`EventOutcome`] as a leader sends it to a follower (`/internal/propose`), in the
/// layout of nodes that answered after apply and named the profile: the leader now
/// answers at commit, before the profile is known, and sends 0 there, which no node
/// reads. The layout stays so that nodes of both kinds decode each other's replies
/// during a rolling upgrade.
#[derive(Serialize, Deserialize)]
enum WireOutcome {
    Stored { seq: u64, profile_id: u64 },
    Duplicate { seq: u64 },
}

impl From<WireOutcome> for EventOutcome {
    fn from(wire: WireOutcome) -> EventOutcome {
        match wire {
            WireOutcome::Stored { seq, .. } => EventOutcome::Stored { seq },
            WireOutcome::Duplicate { seq } => EventOutcome::Duplicate { seq },
        }
    }
}

impl From<EventOutcome> for WireOutcome {
    fn from(outcome: EventOutcome) -> WireOutcome {
        match outcome {
            EventOutcome::Stored { seq } => WireOutcome::Stored { seq, profile_id: 0 },
            EventOutcome::Duplicate { seq } => WireOutcome::Duplicate { seq },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout nodes that answered after apply used, and may still send or expect
    /// during a rolling upgrade.
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    enum Before {
        Stored { seq: u64, profile_id: u64 },
        Duplicate { seq: u64 },
    }

    #[test]
    fn outcomes_keep_the_wire_layout_of_nodes_that_named_the_profile() {
        let now = vec![
            EventOutcome::Stored { seq: 5 << 16 },
            EventOutcome::Duplicate { seq: 3 },
        ];
        let bytes = postcard::to_stdvec(&now).expect("encode");
        let read_by_old: Vec<Before> = postcard::from_bytes(&bytes).expect("an old node decodes");
        assert_eq!(
            read_by_old,
            vec![
                Before::Stored {
                    seq: 5 << 16,
                    profile_id: 0
                },
                Before::Duplicate { seq: 3 },
            ]
        );
        let from_old = postcard::to_stdvec(&vec![
            Before::Stored {
                seq: 9,
                profile_id: 77,
            },
            Before::Duplicate { seq: 2 },
        ])
        .expect("encode");
        let read: Vec<EventOutcome> = postcard::from_bytes(&from_old).expect("decodes");
        assert_eq!(
            read,
            vec![
                EventOutcome::Stored { seq: 9 },
                EventOutcome::Duplicate { seq: 2 }
            ]
        );
    }
}
