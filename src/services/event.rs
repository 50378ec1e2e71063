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
