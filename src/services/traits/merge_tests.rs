//! Merge is exact, state is bounded, definitions changes are handled: seeded randomized
//! tests over every kind, all-time and windowed.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use super::test_support::{DAY_MS, EPOCH_MS, def, noon, track};
use super::{
    DISTINCT_DAY_VALUES_MAX, DISTINCT_VALUES_MAX, EventFilter, EventNames, NAME_CHARS_MAX,
    ProfileTraits, TraitDef, TraitKind, VALUE_BYTES_MAX, default_defs, validate_defs,
};
use crate::services::event::ServiceEvent;

const NAMES: [&str; 7] = [
    "Order Completed",
    "Ticket Opened",
    "Ticket Resolved",
    "Satisfaction Rated",
    "Post Liked",
    "Brand Mentioned",
    "Product Viewed",
];

const KINDS: [TraitKind; 11] = [
    TraitKind::Count,
    TraitKind::NetCount,
    TraitKind::Sum,
    TraitKind::Avg,
    TraitKind::Min,
    TraitKind::Max,
    TraitKind::First,
    TraitKind::Last,
    TraitKind::LastAt,
    TraitKind::MostFrequent,
    TraitKind::Unique,
];

/// Every kind, all-time and over 1, 7 and 90 days (plus 3650 for the numeric kinds),
/// next to the shipped defaults.
fn all_kinds() -> Vec<TraitDef> {
    let mut defs = default_defs();
    for kind in KINDS {
        for window in [None, Some(1), Some(7), Some(90), Some(3650)] {
            if kind.is_distinct() && window == Some(3650) {
                continue;
            }
            let property = match kind {
                TraitKind::Sum | TraitKind::Avg | TraitKind::Min | TraitKind::Max => {
                    Some("products[].price")
                }
                TraitKind::First | TraitKind::Last => Some("v"),
                TraitKind::MostFrequent | TraitKind::Unique => Some("products[].category"),
                _ => None,
            };
            let name = format!("{}_{}", kind.as_str(), window.unwrap_or(0));
            let mut def = def(&name, kind, any(), property, window);
            if kind == TraitKind::NetCount {
                def.event = EventFilter::named("Ticket Opened");
                def.minus_event = Some(EventFilter::named("Ticket Resolved"));
            }
            defs.push(def);
        }
    }
    defs
}

fn any() -> EventFilter {
    EventFilter {
        names: EventNames::Any,
        message_type: None,
    }
}

/// A random scalar, number or numeric string, from a pool of `pool` values.
fn scalar(rng: &mut StdRng, pool: u32) -> Value {
    let n = rng.random_range(0..pool);
    match rng.random_range(0..5) {
        0 => json!(format!("s{n}")),
        1 => json!(n),
        2 => json!(f64::from(n) / 4.0),
        3 => json!(n.to_string()),
        _ => json!(n % 2 == 0),
    }
}

/// `count` random events over `span_days`, with unique sequence numbers.
fn random_events(rng: &mut StdRng, count: usize, span_days: i64, pool: u32) -> Vec<ServiceEvent> {
    let shared_ms = noon(rng.random_range(0..span_days));
    (0..count)
        .map(|i| {
            let name = NAMES[rng.random_range(0..NAMES.len())];
            let timestamp_ms = if rng.random_bool(0.1) {
                shared_ms // ties on timestamp, broken by seq
            } else {
                EPOCH_MS + rng.random_range(0..span_days * DAY_MS)
            };
            let products: Vec<Value> = (0..rng.random_range(0..4))
                .map(|_| {
                    json!({
                        "category": format!("cat{:03}", rng.random_range(0..pool)),
                        "price": scalar(rng, 1000),
                    })
                })
                .collect();
            let properties = json!({
                "v": scalar(rng, pool),
                "rating": rng.random_range(1..=5),
                "products": products,
            });
            track(i as u64 + 1, name, timestamp_ms, properties)
        })
        .collect()
}

fn observe_all(defs: &[TraitDef], events: &[ServiceEvent], rng: &mut StdRng) -> ProfileTraits {
    let mut order: Vec<&ServiceEvent> = events.iter().collect();
    order.shuffle(rng);
    let mut profile = ProfileTraits::new();
    for event in order {
        profile.observe(defs, event);
    }
    profile
}

/// Random events split among 1–4 profiles, each observed in its own random order, then
/// merged in a random order, equal the events observed (in another random order) by one
/// profile — the state itself, not only its values.
#[test]
fn merging_profiles_equals_observing_all_their_events() {
    let defs = all_kinds();
    assert_eq!(validate_defs(&defs), Ok(()));
    for seed in 0..300u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let span_days = [1, 3, 20, 120, 5000][rng.random_range(0..5)];
        let pool = [3, 30, 300][rng.random_range(0..3)];
        let count = rng.random_range(0..150);
        let events = random_events(&mut rng, count, span_days, pool);
        let together = observe_all(&defs, &events, &mut rng);

        let parts = rng.random_range(1..=4);
        let mut split: Vec<Vec<ServiceEvent>> = vec![Vec::new(); parts];
        for event in &events {
            split[rng.random_range(0..parts)].push(event.clone());
        }
        let mut profiles: Vec<ProfileTraits> = split
            .iter()
            .map(|part| observe_all(&defs, part, &mut rng))
            .collect();
        profiles.shuffle(&mut rng);
        let mut merged = profiles.pop().unwrap_or_default();
        for other in profiles {
            if rng.random_bool(0.5) {
                merged.merge(other, &defs);
            } else {
                let mut survivor = other;
                survivor.merge(merged, &defs);
                merged = survivor;
            }
        }
        assert_eq!(merged, together, "seed {seed}: state differs");
        for now_day in [0, span_days / 2, span_days, span_days + 40] {
            let now_ms = noon(now_day);
            assert_eq!(
                merged.values(&defs, now_ms),
                together.values(&defs, now_ms),
                "seed {seed}, day {now_day}"
            );
        }
    }
}

/// Upper bound on one trait's encoded state, from the named limits.
fn state_bytes_max(def: &TraitDef) -> usize {
    const VARINT_MAX: usize = 10;
    let scalar = VALUE_BYTES_MAX + 2 + VARINT_MAX;
    let key = 2 * VARINT_MAX;
    let fixed = NAME_CHARS_MAX + 2 * VARINT_MAX + 4;
    let acc = |cap: usize| (key + scalar).max(cap * (scalar + VARINT_MAX) + VARINT_MAX + 1) + 4;
    match def.window_days {
        None => fixed + acc(DISTINCT_VALUES_MAX),
        Some(days) => {
            fixed + days as usize * (VARINT_MAX + acc(DISTINCT_DAY_VALUES_MAX)) + VARINT_MAX
        }
    }
}

/// 100,000 events — long strings, ever new values, 20 years of days in random order —
/// leave every trait within its bounds.
#[test]
fn state_stays_bounded_whatever_the_event_count() {
    let defs = all_kinds();
    let mut rng = StdRng::seed_from_u64(7);
    let mut profile = ProfileTraits::new();
    for seq in 0..100_000u64 {
        let name = NAMES[rng.random_range(0..NAMES.len())];
        let day = rng.random_range(0..7300);
        let fresh = format!("{}{}", "x".repeat(rng.random_range(0..300)), seq);
        let properties = json!({
            "v": fresh,
            "products": [
                {"category": fresh, "price": rng.random_range(-1e9..1e9)},
                {"category": format!("c{}", seq % 1000), "price": "12.5"},
            ],
        });
        profile.observe(&defs, &track(seq, name, noon(day), properties));
        if seq % 10_000 == 0 {
            assert_eq!(profile.check_bounds(&defs), Ok(()), "after {seq} events");
        }
    }
    assert_eq!(profile.check_bounds(&defs), Ok(()));
    let bytes = postcard::to_stdvec(&profile)
        .map(|b| b.len())
        .unwrap_or(usize::MAX);
    let bound: usize = defs.iter().map(state_bytes_max).sum();
    assert!(bytes <= bound, "{bytes} bytes > bound {bound}");
}

#[test]
fn state_round_trips_through_postcard() {
    let defs = all_kinds();
    let mut rng = StdRng::seed_from_u64(11);
    let events = random_events(&mut rng, 200, 60, 30);
    let profile = observe_all(&defs, &events, &mut rng);
    let bytes = postcard::to_stdvec(&profile).expect("encodes");
    let back: ProfileTraits = postcard::from_bytes(&bytes).expect("decodes");
    assert_eq!(back, profile);
}

#[test]
fn changed_or_removed_definitions_restart() {
    let sum = def(
        "spend",
        TraitKind::Sum,
        EventFilter::named("Order Completed"),
        Some("revenue"),
        None,
    );
    let count = def(
        "orders",
        TraitKind::Count,
        EventFilter::named("Order Completed"),
        None,
        Some(30),
    );
    let order = |seq, revenue| track(seq, "Order Completed", noon(0), json!({"revenue": revenue}));
    let mut profile = ProfileTraits::new();
    let defs = [sum.clone(), count.clone()];
    profile.observe(&defs, &order(1, 10));
    profile.observe(&defs, &order(2, 5));

    // Same meaning, shorter window: kept.
    let shorter = TraitDef {
        window_days: Some(7),
        ..count.clone()
    };
    let values = profile.values(&[sum.clone(), shorter.clone()], noon(1));
    assert_eq!(values["orders"], json!(2));

    // Another property: the old state does not count, and is dropped at the next update.
    let changed = TraitDef {
        property: super::PropertyPath::parse("tax").ok(),
        ..sum.clone()
    };
    let defs = [changed.clone()];
    assert_eq!(profile.values(&defs, noon(1))["spend"], json!(0));
    profile.observe(
        &defs,
        &track(3, "Order Completed", noon(0), json!({"tax": 2})),
    );
    assert_eq!(profile.values(&defs, noon(1))["spend"], json!(2));
    assert_eq!(profile.values(&[shorter], noon(1))["orders"], json!(0));

    // Merging drops the other side's stale state too.
    let mut old = ProfileTraits::new();
    old.observe(&[sum], &order(4, 100));
    profile.merge(old, &defs);
    assert_eq!(profile.values(&defs, noon(1))["spend"], json!(2));
}
