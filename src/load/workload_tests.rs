//! Scenarios for the synthetic workload: reproducibility, validity against the server's
//! own Segment rules, event sizes, and the shape of customer journeys.

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use super::*;
use crate::load::acked::profile_key_of;
use crate::model::validate::test_event;

const START_MS: i64 = 1_764_000_000_000;
const SAMPLE: u64 = 20_000;

fn sample(seed: u64, events: u64) -> Vec<Generated> {
    Workload::new(seed, events, START_MS).collect()
}

fn parsed(events: &[Generated]) -> Vec<Value> {
    events
        .iter()
        .map(|e| serde_json::from_str(&e.json).expect("generated JSON parses"))
        .collect()
}

#[test]
fn the_same_seed_gives_the_same_events_and_another_seed_does_not() {
    let first = sample(42, 2_000);
    assert_eq!(first.len(), 2_000);
    assert_eq!(first, sample(42, 2_000), "same seed, same events");

    let other = sample(43, 2_000);
    let ids: HashSet<_> = first.iter().map(|e| &e.message_id).collect();
    assert!(other.iter().all(|e| !ids.contains(&e.message_id)));
    let identities: HashSet<_> = first.iter().map(|e| &e.identity).collect();
    assert!(
        other.iter().all(|e| !identities.contains(&e.identity)),
        "different seeds create different customers"
    );
}

#[test]
fn every_event_passes_the_servers_segment_validation() {
    let events = sample(7, SAMPLE);
    let mut message_ids = HashSet::new();
    for (event, json) in events.iter().zip(parsed(&events)) {
        assert!(
            message_ids.insert(event.message_id.clone()),
            "unique messageId"
        );
        assert!(json["type"].is_string(), "every item has a type: {json}");
        if json["type"] == "track" {
            assert!(json["event"].is_string(), "track has an event: {json}");
        }
        assert!(json["userId"].is_string() || json["anonymousId"].is_string());
        assert_eq!(json["messageId"], event.message_id.as_str());
        assert_eq!(
            profile_key_of(&json).as_deref(),
            Some(event.identity.as_str())
        );

        let normalized = test_event(json.clone(), START_MS);
        let keys: Vec<String> = normalized.identities.iter().map(|i| i.key()).collect();
        assert!(
            keys.contains(&event.identity),
            "{} in {keys:?}",
            event.identity
        );
    }
}

#[test]
fn events_are_a_few_hundred_bytes_and_never_near_the_limit() {
    let mut sizes: Vec<usize> = sample(11, SAMPLE).iter().map(|e| e.json.len()).collect();
    sizes.sort_unstable();
    let at = |q: f64| sizes[((sizes.len() - 1) as f64 * q) as usize];
    let (p10, median, p90, max) = (at(0.1), at(0.5), at(0.9), at(1.0));
    assert!((300..=500).contains(&median), "median {median} bytes");
    assert!(p10 >= 250 && p90 <= 800, "p10 {p10}, p90 {p90}");
    assert!(max < 32 * 1024, "largest event {max} bytes");
}

#[test]
fn all_three_families_send_their_spec_events() {
    let names: HashSet<String> = parsed(&sample(3, SAMPLE))
        .iter()
        .filter_map(|e| e["event"].as_str().map(str::to_owned))
        .collect();
    for name in [
        "Products Searched",
        "Product Viewed",
        "Product Added",
        "Cart Viewed",
        "Checkout Started",
        "Order Completed",
        "Ticket Opened",
        "Ticket Updated",
        "Ticket Resolved",
        "Satisfaction Rated",
        "Post Liked",
        "Post Shared",
        "Brand Mentioned",
        "Account Followed",
    ] {
        assert!(names.contains(name), "{name} missing from {names:?}");
    }
}

#[test]
fn orders_carry_the_ecommerce_fields() {
    let events = parsed(&sample(5, SAMPLE));
    let orders: Vec<_> = events
        .iter()
        .filter(|e| e["event"] == "Order Completed")
        .collect();
    assert!(orders.len() > 50, "{} orders", orders.len());
    for order in orders {
        let p = &order["properties"];
        assert!(p["order_id"].is_string() && p["revenue"].is_number());
        assert_eq!(p["currency"], "USD");
        let products = p["products"].as_array().expect("products[]");
        assert!(!products.is_empty());
        let total: f64 = products
            .iter()
            .map(|x| x["price"].as_f64().unwrap_or(0.0) * x["quantity"].as_f64().unwrap_or(0.0))
            .sum();
        let revenue = p["revenue"].as_f64().unwrap_or(-1.0);
        assert!(
            (total - revenue).abs() < 0.01,
            "revenue {revenue} = Σ {total}"
        );
    }
    let ratings = events.iter().filter(|e| e["event"] == "Satisfaction Rated");
    for rated in ratings {
        let rating = rated["properties"]["rating"].as_u64().unwrap_or(0);
        assert!((1..=5).contains(&rating));
    }
}

/// Anonymous visitors later identify with the same anonymousId; email-only support
/// contacts later identify with a userId and that email; some shoppers are aliased.
#[test]
fn anonymous_and_email_only_customers_later_identify() {
    let events = parsed(&sample(9, SAMPLE));
    let mut anonymous_seen = HashSet::new();
    let mut email_only_seen = HashSet::new();
    let (mut anonymous_identified, mut email_identified, mut aliased) = (0, 0, 0);
    for event in &events {
        let user_id = event["userId"].as_str();
        let anonymous_id = event["anonymousId"].as_str();
        let email = event["traits"]["email"]
            .as_str()
            .or(event["context"]["traits"]["email"].as_str())
            .map(str::to_lowercase);
        match (user_id, event["type"].as_str()) {
            (None, _) => {
                match &email {
                    Some(email) => email_only_seen.insert(email.clone()),
                    None => anonymous_seen.insert(anonymous_id.map(str::to_owned)),
                };
            }
            (Some(_), Some("identify")) => {
                anonymous_identified +=
                    usize::from(anonymous_seen.contains(&anonymous_id.map(str::to_owned)));
                email_identified +=
                    usize::from(email.is_some_and(|e| email_only_seen.contains(&e)));
            }
            (Some(_), Some("alias")) => {
                let previous = event["previousId"].as_str().map(str::to_owned);
                assert_eq!(event["previousId"], event["anonymousId"]);
                aliased += usize::from(anonymous_seen.contains(&previous));
            }
            _ => {}
        }
    }
    assert!(
        anonymous_identified > 100,
        "{anonymous_identified} visitors identified"
    );
    assert!(
        email_identified > 50,
        "{email_identified} support contacts identified"
    );
    assert!(aliased > 10, "{aliased} visitors aliased");
}

#[test]
fn hot_customers_build_long_histories() {
    let events = sample(13, SAMPLE);
    let mut per_identity: HashMap<&str, usize> = HashMap::new();
    for event in &events {
        *per_identity.entry(event.identity.as_str()).or_default() += 1;
    }
    let longest = per_identity.values().max().copied().unwrap_or(0);
    assert!(
        longest >= 3 * EVENTS_PER_CUSTOMER as usize,
        "longest history {longest}"
    );
}

#[test]
fn the_population_follows_the_event_count_up_to_a_cap() {
    let cases = [
        (0, 1),
        (5, 1),
        (1_000, 100),
        (1_000_000, 100_000),
        (u64::MAX, CUSTOMERS_MAX),
    ];
    for (events, customers) in cases {
        assert_eq!(customers_for(events), customers, "{events} events");
    }
    assert_eq!(Workload::new(1, 0, START_MS).count(), 0);
    assert_eq!(Workload::new(1, 1_000, START_MS).population(), 100);
}

#[test]
fn timestamps_lie_in_the_week_before_the_start() {
    for event in parsed(&sample(17, 2_000)) {
        let text = event["timestamp"].as_str().expect("timestamp");
        let time =
            time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
                .expect("RFC 3339");
        let ms = (time.unix_timestamp_nanos() / 1_000_000) as i64;
        assert!((START_MS - HISTORY_MS..START_MS).contains(&ms), "{text}");
    }
}
