//! An event's body as the CDP services read it: only its `properties`, parsed on first
//! use, once per node, and shared by every service that asks.
//!
//! The services read nothing of a body but its `properties`, and only for the events
//! their definitions name (an order's revenue and products, a rating, a viewed product):
//! everything else they need — type, name, time, the traits the profile folded in —
//! travels in the block's head. So the change feed hands out an [`EventBody`] that points
//! into the cached block, and the first service to ask for an event's properties parses
//! just that member of just that body (the rest of the body — context, identifiers — is
//! skipped without building anything); the others find it parsed.
//!
//! Memory stays bounded: the parsed properties live in their [`CachedBlock`], which the
//! block cache weighs with room for them and evicts like any block. A service that falls
//! far behind finds its blocks evicted and decodes them again for itself (holding at most
//! the blocks of one batch), rather than the cache keeping them for it.
//!
//! Determinism: the properties parsed here are exactly the `properties` member of the
//! body's JSON (the last one, were a key repeated), whichever service parsed it first.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde_json::Value;

use super::events::CachedBlock;

/// The body of one event, for the services.
#[derive(Clone)]
pub enum EventBody {
    /// Event `ordinal` of a cached block: parsed on first use, shared with every other
    /// reader of that block.
    Block {
        /// The decoded block (held only while the batch that read it is processed).
        block: Arc<CachedBlock>,
        /// The event's position in the block.
        ordinal: usize,
    },
    /// A body parsed already (tests, benchmarks and the synthetic workload, which make
    /// events without a store).
    Parsed(Arc<Value>),
}

impl EventBody {
    /// A body already parsed.
    pub fn parsed(body: Value) -> EventBody {
        EventBody::Parsed(Arc::new(body))
    }

    /// The body's `properties`, if it has any.
    pub fn properties(&self) -> Option<&Value> {
        match self {
            EventBody::Block { block, ordinal } => block.properties(*ordinal),
            EventBody::Parsed(body) => body.get("properties"),
        }
    }

    /// The whole body as a JSON tree, parsed now (for tests and tools; services ask for
    /// [`EventBody::properties`]). `null` if the body is missing or does not parse.
    pub fn to_value(&self) -> Value {
        match self {
            EventBody::Block { block, ordinal } => block
                .body(*ordinal)
                .and_then(|text| serde_json::from_str(text).ok())
                .unwrap_or(Value::Null),
            EventBody::Parsed(body) => Value::clone(body),
        }
    }
}

impl PartialEq for EventBody {
    fn eq(&self, other: &EventBody) -> bool {
        self.to_value() == other.to_value()
    }
}

impl std::fmt::Debug for EventBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EventBody::Block { ordinal, .. } => write!(f, "EventBody::Block(#{ordinal})"),
            EventBody::Parsed(body) => write!(f, "EventBody::Parsed({body})"),
        }
    }
}

/// The `properties` member of a body's JSON text; `None` when it has none or the text is
/// not a JSON object (validation produced it, so only damage could make it so). Every
/// other member is skipped by the parser without being built; a repeated key keeps the
/// last value, as a whole-body parse does.
pub(super) fn parse_properties(text: &str) -> Option<Value> {
    let mut input = serde_json::Deserializer::from_str(text);
    let found = serde::Deserializer::deserialize_map(&mut input, PropertiesOnly).ok()?;
    input.end().ok()?;
    found
}

/// Visits a body's members, keeping only `properties`.
struct PropertiesOnly;

impl<'de> Visitor<'de> for PropertiesOnly {
    type Value = Option<Value>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an event body (a JSON object)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut members: A) -> Result<Option<Value>, A::Error> {
        let mut found = None;
        while let Some(is_properties) = members.next_key_seed(KeyIsProperties)? {
            if is_properties {
                found = Some(members.next_value::<Value>()?);
            } else {
                members.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

/// Reads a member's key as "is it `properties`?", without allocating it.
struct KeyIsProperties;

impl<'de> DeserializeSeed<'de> for KeyIsProperties {
    type Value = bool;

    fn deserialize<D: serde::Deserializer<'de>>(self, input: D) -> Result<bool, D::Error> {
        input.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeyIsProperties {
    type Value = bool;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a member name")
    }

    fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<bool, E> {
        Ok(key == "properties")
    }
}

impl CachedBlock {
    /// Event `ordinal`'s `properties`, parsed on first use and kept with the block.
    pub fn properties(&self, ordinal: usize) -> Option<&Value> {
        let slot = self.properties.get(ordinal)?;
        slot.get_or_init(|| {
            self.stats.properties_parsed.fetch_add(1, Ordering::Relaxed);
            self.block.body(ordinal).and_then(parse_properties)
        })
        .as_ref()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn only_properties_are_taken_and_they_match_a_full_parse() {
        let cases = [
            r#"{"type":"track","event":"A","properties":{"revenue":12.5,"products":[{"id":1}]},"context":{"ip":"1.2.3.4"}}"#,
            r#"{"type":"track","properties":null}"#,
            r#"{"type":"identify","traits":{"email":"a@b.c"}}"#,
            r#"{"properties":{"a":1},"properties":{"b":2}}"#,
            r#"{"properties":"text","x":[1,2,{"properties":3}]}"#,
            r#"not json"#,
            r#"[1,2]"#,
            r#"{"prop\u0065rties":{"escaped":true}}"#,
            r#"{"properties":{"a":1}} trailing"#,
            r#"{"properties":{"a":1}"#,
        ];
        for text in cases {
            let full: Value = serde_json::from_str(text).unwrap_or(Value::Null);
            assert_eq!(
                parse_properties(text).as_ref(),
                full.get("properties"),
                "{text}"
            );
        }
        assert_eq!(
            parse_properties(r#"{"properties":{"a":1},"properties":{"b":2}}"#),
            Some(json!({"b": 2}))
        );
    }

    #[test]
    fn a_parsed_body_answers_like_its_json() {
        let body = EventBody::parsed(json!({"properties": {"rating": 4}, "traits": {}}));
        assert_eq!(body.properties(), Some(&json!({"rating": 4})));
        assert_eq!(EventBody::parsed(json!({"traits": {}})).properties(), None);
        assert_eq!(body.to_value()["traits"], json!({}));
    }
}
