//! The load generator's seeded workload ([`crate::load::workload`]) as [`ServiceEvent`]s,
//! for the offline evaluation (`tandem bench-reco`) and tests.
//!
//! The generator produces Segment JSON; services see committed events with a profile id.
//! This bridges the two the simple way, without the store: an event's profile is its
//! `userId`; an event with only an `anonymousId` belongs to the `userId` that anonymous id
//! is ever seen with (the generator's identify and alias calls carry both), else to the
//! anonymous id itself. For this generator that is what identity resolution would
//! decide. Profile ids are numbered by first appearance, `seq` is the generation order,
//! and the body is the event without its `context` (which no recommendation reads).
//! Events the generator could not have produced (unparsable, no type or timestamp) are
//! skipped.

use std::collections::HashMap;

use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::load::workload::Workload;
use crate::model::event::MessageType;
use crate::services::event::ServiceEvent;

/// One generated event before its profile is known.
struct Parsed {
    kind: MessageType,
    name: String,
    timestamp_ms: i64,
    user_id: Option<String>,
    anonymous_id: Option<String>,
    body: Value,
}

/// `total` events of the workload seeded with `seed`, timestamps ending at `end_ms`.
pub fn events(seed: u64, total: u64, end_ms: i64) -> Vec<ServiceEvent> {
    let parsed: Vec<Parsed> = Workload::new(seed, total, end_ms)
        .filter_map(|generated| parse(&generated.json))
        .collect();
    let mut user_of_anonymous: HashMap<&str, &str> = HashMap::new();
    for event in &parsed {
        if let (Some(user), Some(anonymous)) = (&event.user_id, &event.anonymous_id) {
            user_of_anonymous.entry(anonymous).or_insert(user);
        }
    }
    let mut profile_ids: HashMap<String, u64> = HashMap::new();
    let mut profile_of = |event: &Parsed| {
        let key = match (&event.user_id, &event.anonymous_id) {
            (Some(user), _) => format!("u:{user}"),
            (None, Some(anonymous)) => match user_of_anonymous.get(anonymous.as_str()) {
                Some(user) => format!("u:{user}"),
                None => format!("a:{anonymous}"),
            },
            (None, None) => String::from("-"),
        };
        let next = profile_ids.len() as u64 + 1;
        *profile_ids.entry(key).or_insert(next)
    };
    let profiles: Vec<u64> = parsed.iter().map(&mut profile_of).collect();
    parsed
        .into_iter()
        .zip(profiles)
        .enumerate()
        .map(|(seq, (event, profile_id))| ServiceEvent {
            seq: seq as u64 + 1,
            profile_id,
            kind: event.kind,
            name: event.name,
            timestamp_ms: event.timestamp_ms,
            body: crate::store::body::EventBody::parsed(event.body),
        })
        .collect()
}

fn parse(json: &str) -> Option<Parsed> {
    let mut body: Value = serde_json::from_str(json).ok()?;
    let object = body.as_object_mut()?;
    object.remove("context");
    let kind = MessageType::parse(object.get("type")?.as_str()?)?;
    let name = ["event", "name"]
        .iter()
        .find_map(|field| object.get(*field).and_then(Value::as_str))
        .unwrap_or_default()
        .to_owned();
    let timestamp = OffsetDateTime::parse(object.get("timestamp")?.as_str()?, &Rfc3339).ok()?;
    let timestamp_ms = i64::try_from(timestamp.unix_timestamp_nanos() / 1_000_000).ok()?;
    let text = |field: &str| object.get(field).and_then(Value::as_str).map(str::to_owned);
    Some(Parsed {
        kind,
        name,
        timestamp_ms,
        user_id: text("userId"),
        anonymous_id: text("anonymousId"),
        body,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    const END_MS: i64 = 1_764_000_000_000;

    #[test]
    fn the_workload_becomes_service_events_of_known_profiles() {
        let events = events(5, 5_000, END_MS);
        assert_eq!(events.len(), 5_000);
        assert!(events.windows(2).all(|w| w[0].seq < w[1].seq));
        assert!(events.iter().all(|e| e.timestamp_ms < END_MS));
        assert!(
            events
                .iter()
                .all(|e| e.body.to_value().get("context").is_none())
        );
        let profiles: HashSet<u64> = events.iter().map(|e| e.profile_id).collect();
        // 500 customers; anonymous browsing folds into the customer who later identifies.
        assert!(profiles.len() <= 500, "{} profiles", profiles.len());
        let views = events.iter().filter(|e| e.name == "Product Viewed").count();
        let orders = events
            .iter()
            .filter(|e| e.name == "Order Completed")
            .count();
        assert!(views > 500 && orders > 20, "{views} views, {orders} orders");
    }
}
