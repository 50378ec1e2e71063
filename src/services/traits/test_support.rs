//! Builders shared by the computed-trait tests.

use figment::Figment;
use figment::providers::{Format, Toml};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{EventFilter, PropertyPath, TraitDef, TraitKind};
use crate::model::event::MessageType;
use crate::services::event::ServiceEvent;

/// Milliseconds in a day.
pub const DAY_MS: i64 = 86_400_000;

/// 2025-01-01T00:00:00Z: day 0 of the tests' calendar.
pub const EPOCH_MS: i64 = 1_735_689_600_000;

/// Noon of day `day` of the tests' calendar.
pub fn noon(day: i64) -> i64 {
    EPOCH_MS + day * DAY_MS + DAY_MS / 2
}

/// A track event.
pub fn track(seq: u64, name: &str, timestamp_ms: i64, properties: Value) -> ServiceEvent {
    ServiceEvent {
        seq,
        profile_id: 1,
        kind: MessageType::Track,
        name: name.to_owned(),
        timestamp_ms,
        body: crate::store::body::EventBody::parsed(
            json!({"type": "track", "event": name, "properties": properties}),
        ),
    }
}

/// A page event.
pub fn page(seq: u64, name: &str, timestamp_ms: i64) -> ServiceEvent {
    ServiceEvent {
        seq,
        profile_id: 1,
        kind: MessageType::Page,
        name: name.to_owned(),
        timestamp_ms,
        body: crate::store::body::EventBody::parsed(
            json!({"type": "page", "name": name, "properties": {}}),
        ),
    }
}

/// A definition built in code.
pub fn def(
    name: &str,
    kind: TraitKind,
    event: EventFilter,
    property: Option<&str>,
    window_days: Option<u32>,
) -> TraitDef {
    TraitDef {
        name: name.to_owned(),
        kind,
        event,
        minus_event: None,
        property: property.map(|text| PropertyPath::parse(text).expect("test path parses")),
        window_days,
    }
}

/// The `[[computed_traits]]` of a TOML document, read the way the node reads config.
pub fn from_toml(text: &str) -> Result<Vec<TraitDef>, String> {
    #[derive(Deserialize)]
    struct Doc {
        #[serde(default)]
        computed_traits: Vec<TraitDef>,
    }
    Figment::from(Toml::string(text))
        .extract::<Doc>()
        .map(|doc| doc.computed_traits)
        .map_err(|error| error.to_string())
}
