//! The event as services see it: a committed, stored event with its profile.

use serde_json::Value;

use crate::model::event::MessageType;

/// One committed event, in feed order.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceEvent {
    /// The event's sequence number (the feed order; unique, increasing).
    pub seq: u64,
    /// The profile it belongs to now.
    pub profile_id: u64,
    /// Message type.
    pub kind: MessageType,
    /// Track `event` or page/screen `name`; empty otherwise.
    pub name: String,
    /// Corrected event time, ms since the epoch.
    pub timestamp_ms: i64,
    /// The normalised Segment event (`properties`, `traits`, `context`, …).
    pub body: Value,
}

impl ServiceEvent {
    /// The event of a feed entry, on `profile_id`. A body that does not parse (it was
    /// produced by validation, so only corruption could do that) becomes `null`.
    pub fn from_stored(
        seq: u64,
        profile_id: u64,
        stored: &crate::store::tables::StoredEvent,
    ) -> ServiceEvent {
        ServiceEvent {
            seq,
            profile_id,
            kind: stored.kind,
            name: stored.name.clone(),
            timestamp_ms: stored.timestamp_ms,
            body: serde_json::from_str(&stored.body_json).unwrap_or(Value::Null),
        }
    }

    /// The feed entry at `feed_seq` carrying this event, as the store would hand it to a
    /// service (the inverse of [`ServiceEvent::from_stored`]; for benchmarks and tests that
    /// drive a service without a store). `source` names where it came from.
    pub fn to_feed_item(&self, feed_seq: u64, source: &str) -> crate::store::read::FeedItem {
        crate::store::read::FeedItem {
            feed_seq,
            record: crate::store::tables::FeedRecord::Event {
                seq: self.seq,
                profile: self.profile_id,
            },
            event: Some(crate::store::tables::StoredEvent {
                profile_id: self.profile_id,
                kind: self.kind,
                name: self.name.clone(),
                timestamp_ms: self.timestamp_ms,
                stored_at_ms: self.timestamp_ms,
                source: source.to_owned(),
                message_id: format!("{source}-{}", self.seq),
                body_json: self.body.to_string(),
            }),
        }
    }
}
