//! [`TraitDef`]: one computed trait as configured, and the [`EventFilter`] choosing the
//! events it reads.
//!
//! Configuration shape (TOML, under `[[computed_traits]]`):
//!
//! ```toml
//! [[computed_traits]]
//! name = "lifetime_value"            # output key: [a-z0-9_]+, at most 64 characters
//! kind = "sum"                       # see TraitKind
//! event = "Order Completed"          # a name, a list of names, or "*" for any
//! property = "revenue"               # path into properties (see PropertyPath)
//! window_days = 30                   # optional: only the last 30 days (UTC days)
//!
//! [[computed_traits]]
//! name = "open_tickets"
//! kind = "net_count"                 # count(event) − count(minus_event)
//! event = "Ticket Opened"
//! minus_event = "Ticket Resolved"
//!
//! [[computed_traits]]
//! name = "category_pages"
//! kind = "count"
//! event = { names = ["Category"], type = "page" }   # restrict the message type
//! ```
//!
//! Names match [`ServiceEvent::name`] — the track `event`, or the page/screen `name` —
//! of any message type unless the table form gives `type`. Shape errors (an unknown kind
//! or type, a malformed path, an unknown key) are reported by the deserializer with their
//! key; rule violations by [`super::validate_defs`], all at once.

use serde::{Deserialize, Serialize};

use super::path::PropertyPath;
use crate::model::event::MessageType;
use crate::services::event::ServiceEvent;

/// What a trait computes from the events its filter matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TraitKind {
    /// Number of matching events.
    Count,
    /// Matching events minus events matching `minus_event` (may be negative).
    NetCount,
    /// Sum of the property's numbers.
    Sum,
    /// Mean of the property's numbers (over values, not events).
    Avg,
    /// Smallest of the property's numbers.
    Min,
    /// Largest of the property's numbers.
    Max,
    /// The property's value on the earliest matching event.
    First,
    /// The property's value on the latest matching event.
    Last,
    /// When the latest matching event happened (RFC 3339).
    LastAt,
    /// The property's most frequent value.
    MostFrequent,
    /// The property's distinct values.
    Unique,
}

impl TraitKind {
    /// The configuration spelling (`"most_frequent"`).
    pub fn as_str(self) -> &'static str {
        match self {
            TraitKind::Count => "count",
            TraitKind::NetCount => "net_count",
            TraitKind::Sum => "sum",
            TraitKind::Avg => "avg",
            TraitKind::Min => "min",
            TraitKind::Max => "max",
            TraitKind::First => "first",
            TraitKind::Last => "last",
            TraitKind::LastAt => "last_at",
            TraitKind::MostFrequent => "most_frequent",
            TraitKind::Unique => "unique",
        }
    }

    /// Whether the kind reads a property (the others count or time events).
    pub fn reads_property(self) -> bool {
        !matches!(
            self,
            TraitKind::Count | TraitKind::NetCount | TraitKind::LastAt
        )
    }

    /// Whether the kind keeps a table of distinct values.
    pub fn is_distinct(self) -> bool {
        matches!(self, TraitKind::MostFrequent | TraitKind::Unique)
    }
}

/// One computed trait. Use only definitions that passed [`super::validate_defs`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraitDef {
    /// Output key, unique: `[a-z0-9_]+`.
    pub name: String,
    /// What to compute.
    pub kind: TraitKind,
    /// The events read (for `net_count`, the ones counted up).
    pub event: EventFilter,
    /// For `net_count` only: the events counted down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minus_event: Option<EventFilter>,
    /// Where the value is, for the kinds that read one ([`TraitKind::reads_property`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub property: Option<PropertyPath>,
    /// Only events of the last `window_days` UTC days count, relative to the read time;
    /// `None` means all time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_days: Option<u32>,
}

impl TraitDef {
    /// A fingerprint of what the state means: kind, filters, property and whether it is
    /// windowed. State kept under another fingerprint is discarded, so editing a
    /// definition restarts it rather than mixing two meanings. A window's length is left
    /// out: shortening it stays exact, lengthening it fills in as days pass. Computed on
    /// every event, so it hashes in place (FNV-1a) without allocating.
    pub fn fingerprint(&self) -> u32 {
        let mut hash = Fnv::new();
        hash.text(self.kind.as_str());
        self.event.feed(&mut hash);
        match &self.minus_event {
            Some(minus) => minus.feed(&mut hash),
            None => hash.text("-"),
        }
        hash.text(self.property.as_ref().map_or("", PropertyPath::as_str));
        hash.text(if self.window_days.is_some() { "w" } else { "a" });
        let wide = hash.finish();
        (wide ^ (wide >> 32)) as u32
    }
}

/// FNV-1a, 64 bits: stable across builds and platforms (unlike `std`'s hasher).
struct Fnv(u64);

impl Fnv {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    fn new() -> Fnv {
        Fnv(Fnv::OFFSET)
    }

    /// Hashes `text` and a terminator, so `("ab", "c")` and `("a", "bc")` differ.
    fn text(&mut self, text: &str) {
        for byte in text.bytes().chain([0xff]) {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(Fnv::PRIME);
        }
    }

    /// Hashes `number` as its decimal text would be by [`Fnv::text`], without allocating
    /// it (fingerprints are computed on every event, and stored: the value must not move).
    fn decimal(&mut self, mut number: u64) {
        let mut digits = [0u8; 20];
        let mut start = digits.len();
        loop {
            start -= 1;
            digits[start] = b'0' + (number % 10) as u8;
            number /= 10;
            if number == 0 {
                break;
            }
        }
        for &byte in digits[start..].iter().chain(&[0xff]) {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(Fnv::PRIME);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Which events a trait reads: by name, optionally by message type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "FilterWire", into = "FilterWire")]
pub struct EventFilter {
    /// The names that match.
    pub names: EventNames,
    /// If set, only this message type matches.
    pub message_type: Option<MessageType>,
}

/// The event names a filter accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventNames {
    /// Any name, written `"*"`.
    Any,
    /// Exactly these names (case-sensitive, as sent).
    Only(Vec<String>),
}

impl EventFilter {
    /// A filter on one event name, any message type.
    pub fn named(name: &str) -> EventFilter {
        EventFilter {
            names: EventNames::Only(vec![name.to_owned()]),
            message_type: None,
        }
    }

    /// A filter on several event names, any message type.
    pub fn any_of(names: &[&str]) -> EventFilter {
        EventFilter {
            names: EventNames::Only(names.iter().map(|&name| name.to_owned()).collect()),
            message_type: None,
        }
    }

    /// Whether `event` passes the filter.
    pub fn matches(&self, event: &ServiceEvent) -> bool {
        if self.message_type.is_some_and(|kind| kind != event.kind) {
            return false;
        }
        match &self.names {
            EventNames::Any => true,
            EventNames::Only(names) => names.contains(&event.name),
        }
    }

    /// Feeds the filter to a fingerprint; the order of names does not matter.
    fn feed(&self, hash: &mut Fnv) {
        hash.text(self.message_type.map_or("*", MessageType::as_str));
        match &self.names {
            EventNames::Any => hash.text("*"),
            EventNames::Only(names) => {
                let mut set = 0u64;
                for name in names {
                    let mut one = Fnv::new();
                    one.text(name);
                    set = set.wrapping_add(one.finish());
                }
                hash.decimal(set);
            }
        }
    }
}

/// How a filter is written: `"Name"`, `["A", "B"]`, `"*"`, or
/// `{ names = "Name" | [...], type = "page" }` (both keys optional).
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
#[serde(
    expecting = "an event filter: an event name, a list of names, \"*\", or a table { names = [...], type = \"track\" }"
)]
enum FilterWire {
    Names(NamesWire),
    Table(FilterTable),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilterTable {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    names: Option<NamesWire>,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    message_type: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum NamesWire {
    One(String),
    Many(Vec<String>),
}

/// The wildcard name.
const ANY_NAME: &str = "*";

impl From<NamesWire> for EventNames {
    fn from(wire: NamesWire) -> EventNames {
        match wire {
            NamesWire::One(name) if name == ANY_NAME => EventNames::Any,
            NamesWire::One(name) => EventNames::Only(vec![name]),
            NamesWire::Many(names) => EventNames::Only(names),
        }
    }
}

impl From<EventNames> for NamesWire {
    fn from(names: EventNames) -> NamesWire {
        match names {
            EventNames::Any => NamesWire::One(ANY_NAME.to_owned()),
            EventNames::Only(mut names) if names.len() == 1 => {
                NamesWire::One(names.pop().unwrap_or_default())
            }
            EventNames::Only(names) => NamesWire::Many(names),
        }
    }
}

impl TryFrom<FilterWire> for EventFilter {
    type Error = String;

    fn try_from(wire: FilterWire) -> Result<EventFilter, String> {
        let (names, message_type) = match wire {
            FilterWire::Names(names) => (names.into(), None),
            FilterWire::Table(table) => {
                let names = table.names.map_or(EventNames::Any, EventNames::from);
                let kind = match table.message_type {
                    None => None,
                    Some(text) => Some(MessageType::parse(&text).ok_or_else(|| {
                        format!(
                            "unknown message type {text:?}: use identify, track, page, \
                             screen, group or alias"
                        )
                    })?),
                };
                (names, kind)
            }
        };
        Ok(EventFilter {
            names,
            message_type,
        })
    }
}

impl From<EventFilter> for FilterWire {
    fn from(filter: EventFilter) -> FilterWire {
        match filter.message_type {
            None => FilterWire::Names(filter.names.into()),
            Some(kind) => FilterWire::Table(FilterTable {
                names: match filter.names {
                    EventNames::Any => None,
                    names => Some(names.into()),
                },
                message_type: Some(kind.as_str().to_owned()),
            }),
        }
    }
}

#[cfg(test)]
mod fnv_tests {
    use super::Fnv;

    #[test]
    fn decimal_hashes_like_the_number_text() {
        for number in [0, 7, 10, 99, 1_000_000_007, 0x8000_0000_0000_0000, u64::MAX] {
            let (mut text, mut decimal) = (Fnv::new(), Fnv::new());
            text.text(&number.to_string());
            decimal.decimal(number);
            assert_eq!(text.finish(), decimal.finish(), "{number}");
        }
    }
}
