//! Validation of batch items straight from their JSON text, without building a
//! [`serde_json::Value`] tree of each whole message.
//!
//! [`super::validate::normalize`] parses a message into a `Value`, edits it and prints it
//! again: every string and key of every event is allocated, and the whole tree printed and
//! dropped. Here the message's top level is read as a map of borrowed raw values; only the
//! few fields the rules read are parsed (into a small object that the very same
//! [`super::validate::check`] runs over), and the stored body is written by copying each
//! part that is already canonical ([`super::canonical`]) and re-printing only the rest.
//!
//! The contract, pinned by tests: for any input, [`Prepared::normalize`] either gives
//! exactly what `normalize` gives — the same [`Event`], byte for byte the same body, the
//! same [`Rejection`] — or `None`, and the caller takes the `Value` path. It answers `None`
//! whenever it is not sure: the item is not an object, nests deeply, holds numbers or
//! escapes that only a full parse can judge.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::canonical;
use super::event::Event;
use super::validate::{Envelope, Rejection, check, format_ms};

/// The top-level fields [`check`] reads as values (besides the four object fields).
const PROBED_FIELDS: [&str; 12] = [
    "type",
    "messageId",
    "event",
    "name",
    "userId",
    "anonymousId",
    "previousId",
    "groupId",
    "originalTimestamp",
    "timestamp",
    "sentAt",
    "traits",
];

/// The `context` fields [`check`] reads (for identities and traits).
const PROBED_CONTEXT_FIELDS: [&str; 2] = ["traits", "externalIds"];

/// An object key as it appears in the text: borrowed unless it holds escapes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Key<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Key<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object key")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, text: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(text)))
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(text.to_owned())))
            }
            fn visit_string<E: serde::de::Error>(self, text: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(text)))
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

/// An object's members by key, the last of repeated keys winning (as in a `Value`).
type RawObject<'a> = BTreeMap<Key<'a>, &'a RawValue>;

/// One member's value in the body being written.
enum Piece<'a> {
    /// Text from the request, and whether it is canonical (else it is re-printed).
    Raw(&'a str, bool),
    /// Canonical JSON text made here.
    Text(Cow<'a, str>),
    /// An object made of pieces (a merged `context` or `integrations`).
    Object(BTreeMap<Key<'a>, Piece<'a>>),
}

/// What every item of one request shares, worked out once per request.
pub struct Prepared<'e> {
    /// The request's envelope.
    envelope: Envelope<'e>,
    /// The batch-level `context` reduced to the fields [`check`] reads.
    probe_context: Option<Map<String, Value>>,
    /// The batch-level `context`, each value as canonical text.
    context: Option<BTreeMap<String, String>>,
    /// The batch-level `integrations`, each value as canonical text.
    integrations: Option<BTreeMap<String, String>>,
    /// The batch-level `sentAt` as canonical text.
    sent_at: Option<String>,
    /// `receivedAt` as a JSON string.
    received_at: String,
}

impl<'e> Prepared<'e> {
    /// Prepares the shared parts of `envelope`.
    pub fn new(envelope: &Envelope<'e>) -> Prepared<'e> {
        let texts = |map: &Map<String, Value>| {
            map.iter()
                .map(|(key, value)| (key.clone(), value.to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        let probe_context = envelope.context.map(|context| {
            PROBED_CONTEXT_FIELDS
                .iter()
                .filter_map(|&field| Some((field.to_owned(), context.get(field)?.clone())))
                .collect()
        });
        Prepared {
            envelope: envelope.clone(),
            probe_context,
            context: envelope.context.map(texts),
            integrations: envelope.integrations.map(texts),
            sent_at: envelope.sent_at.map(Value::to_string),
            received_at: format!("\"{}\"", format_ms(envelope.received_at_ms)),
        }
    }

    /// Validates and normalises one item given as text: its `messageId` (for a rejection
    /// report) and the outcome, exactly as [`super::validate::normalize`] would give them;
    /// or `None` when the item must take the `Value` path.
    #[allow(clippy::type_complexity)]
    pub fn normalize(
        &self,
        text: &str,
        new_message_id: impl FnOnce() -> String,
    ) -> Option<(Option<String>, Result<Event, Rejection>)> {
        let top: RawObject<'_> = serde_json::from_str(text).ok()?;
        let mut pieces = BTreeMap::new();
        for (key, raw) in top {
            let canonical = canonical::scan(raw.get()).ok()?;
            pieces.insert(key, Piece::Raw(raw.get(), canonical));
        }
        let mut probe = self.probe(&pieces)?;
        let envelope = Envelope {
            context: self.probe_context.as_ref(),
            integrations: None,
            ..self.envelope.clone()
        };
        let checked = match check(&mut probe, &envelope, new_message_id) {
            Ok(checked) => checked,
            Err(rejection) => {
                let message_id = probe.get("messageId").and_then(Value::as_str);
                return Some((message_id.map(str::to_owned), Err(rejection)));
            }
        };
        self.merge(&mut pieces, "context", self.context.as_ref())?;
        self.merge(&mut pieces, "integrations", self.integrations.as_ref())?;
        pieces.remove(&key("writeKey"));
        let kind = format!("\"{}\"", checked.kind.as_str());
        pieces.insert(key("type"), Piece::Text(Cow::Owned(kind)));
        let message_id = serde_json::to_string(&checked.message_id).ok()?;
        pieces.insert(key("messageId"), Piece::Text(Cow::Owned(message_id)));
        if let Some(timestamp) = pieces.remove(&key("timestamp")) {
            pieces.entry(key("originalTimestamp")).or_insert(timestamp);
        }
        if let Some(sent_at) = &self.sent_at {
            let sent_at = Piece::Text(Cow::Borrowed(sent_at.as_str()));
            pieces.entry(key("sentAt")).or_insert(sent_at);
        }
        let received_at = Piece::Text(Cow::Borrowed(self.received_at.as_str()));
        pieces.insert(key("receivedAt"), received_at);
        let timestamp = format!("\"{}\"", format_ms(checked.timestamp_ms));
        pieces.insert(key("timestamp"), Piece::Text(Cow::Owned(timestamp)));
        let mut body = String::with_capacity(text.len() + 256);
        write_object(&pieces, &mut body)?;
        let message_id = Some(checked.message_id.clone());
        Some((message_id, Ok(checked.into_event(&self.envelope, body))))
    }

    /// The small object [`check`] runs over: the fields it reads, parsed; the object
    /// fields as empty objects when they are objects (their members are not read), except
    /// `context`, reduced to the members that are.
    fn probe(&self, pieces: &BTreeMap<Key<'_>, Piece<'_>>) -> Option<Map<String, Value>> {
        let mut probe = Map::new();
        for field in PROBED_FIELDS {
            if let Some(Piece::Raw(raw, _)) = pieces.get(&key(field)) {
                probe.insert(field.to_owned(), serde_json::from_str(raw).ok()?);
            }
        }
        for field in ["properties", "integrations", "context"] {
            let Some(Piece::Raw(raw, _)) = pieces.get(&key(field)) else {
                continue;
            };
            let value = if !raw.starts_with('{') {
                serde_json::from_str(raw).ok()?
            } else if field == "context" {
                let context: RawObject<'_> = serde_json::from_str(raw).ok()?;
                let mut reduced = Map::new();
                for member in PROBED_CONTEXT_FIELDS {
                    if let Some(raw) = context.get(&key(member)) {
                        reduced.insert(member.to_owned(), serde_json::from_str(raw.get()).ok()?);
                    }
                }
                Value::Object(reduced)
            } else {
                Value::Object(Map::new())
            };
            probe.insert(field.to_owned(), value);
        }
        Some(probe)
    }

    /// Merges a batch-level object into the item's `field` as
    /// `validate::merge_batch_object` does: the item's members win; an absent or null
    /// field becomes the batch object.
    fn merge<'a>(
        &'a self,
        pieces: &mut BTreeMap<Key<'a>, Piece<'a>>,
        field: &'static str,
        batch: Option<&'a BTreeMap<String, String>>,
    ) -> Option<()> {
        let Some(batch) = batch else {
            return Some(());
        };
        let mut merged = BTreeMap::new();
        match pieces.get(&key(field)) {
            None | Some(Piece::Raw("null", _)) => {}
            Some(Piece::Raw(raw, _)) if raw.starts_with('{') => {
                let item: RawObject<'a> = serde_json::from_str(raw).ok()?;
                for (member, raw) in item {
                    let canonical = canonical::scan(raw.get()).ok()?;
                    merged.insert(member, Piece::Raw(raw.get(), canonical));
                }
            }
            // `check` refused any other value.
            Some(_) => return None,
        }
        for (member, text) in batch {
            merged
                .entry(Key(Cow::Borrowed(member.as_str())))
                .or_insert(Piece::Text(Cow::Borrowed(text.as_str())));
        }
        pieces.insert(key(field), Piece::Object(merged));
        Some(())
    }
}

fn key(name: &'static str) -> Key<'static> {
    Key(Cow::Borrowed(name))
}

/// Writes an object of pieces as serde_json prints a `Value` object.
fn write_object(pieces: &BTreeMap<Key<'_>, Piece<'_>>, out: &mut String) -> Option<()> {
    out.push('{');
    for (at, (member, piece)) in pieces.iter().enumerate() {
        if at > 0 {
            out.push(',');
        }
        write_string(&member.0, out)?;
        out.push(':');
        match piece {
            Piece::Raw(raw, true) => out.push_str(raw),
            Piece::Raw(raw, false) => {
                let value: Value = serde_json::from_str(raw).ok()?;
                out.push_str(&serde_json::to_string(&value).ok()?);
            }
            Piece::Text(text) => out.push_str(text),
            Piece::Object(members) => write_object(members, out)?,
        }
    }
    out.push('}');
    Some(())
}

/// Writes a JSON string as serde_json escapes it.
fn write_string(text: &str, out: &mut String) -> Option<()> {
    if text.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push('"');
        out.push_str(text);
        out.push('"');
    } else {
        out.push_str(&serde_json::to_string(text).ok()?);
    }
    Some(())
}

#[cfg(test)]
#[path = "validate_raw_tests.rs"]
mod tests;
