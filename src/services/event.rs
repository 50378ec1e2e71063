//! The event as services see it: a committed, stored event with its profile.

use serde_json::Value;

use crate::model::event::MessageType;
use crate::store::body::EventBody;

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
    /// The normalised Segment event (`properties`, `traits`, `context`, …); services read
    /// its [`EventBody::properties`], parsed once per node and shared by every service.
    pub body: EventBody,
}

impl ServiceEvent {
    /// The event of a feed entry, on `profile_id`.
    pub fn from_feed(
        seq: u64,
        profile_id: u64,
        event: &crate::store::read::FeedEvent,
    ) -> ServiceEvent {
        ServiceEvent {
            seq,
            profile_id,
            kind: event.kind,
            name: event.name.clone(),
            timestamp_ms: event.timestamp_ms,
            body: event.body.clone(),
        }
    }

    /// The feed entry at `feed_seq` carrying this event, as the store would hand it to a
    /// service (the inverse of [`ServiceEvent::from_feed`]; for benchmarks and tests that
    /// drive a service without a store): alone in its log entry (index `feed_seq`), applied
    /// at its own timestamp, with the body's `traits` as profile traits for identify and
    /// group calls.
    pub fn to_feed_item(&self, feed_seq: u64) -> crate::store::read::FeedItem {
        let sets_traits = matches!(self.kind, MessageType::Identify | MessageType::Group);
        let traits_json = match &self.body {
            EventBody::Block { block, ordinal } => block
                .head
                .events
                .get(*ordinal)
                .and_then(|meta| meta.traits_json.clone()),
            EventBody::Parsed(body) => body
                .get("traits")
                .filter(|traits| sets_traits && traits.is_object())
                .map(Value::to_string),
        };
        crate::store::read::FeedItem {
            feed_seq,
            log_index: feed_seq,
            at_ms: self.timestamp_ms,
            record: crate::store::tables::FeedRecord::Event {
                seq: self.seq,
                profile: self.profile_id,
            },
            event: Some(crate::store::read::FeedEvent {
                kind: self.kind,
                name: self.name.clone(),
                timestamp_ms: self.timestamp_ms,
                traits_json,
                body: self.body.clone(),
            }),
            definition: None,
        }
    }
}
