//! Scenarios for the recommender: what it learns from orders and views, what it
//! recommends to whom and why, its limits, determinism and persistence.

use std::collections::HashMap;

use serde_json::{Value, json};

use super::*;
use crate::model::event::MessageType;
use crate::services::event::ServiceEvent;

const T0: i64 = 1_764_000_000_000;
const MINUTE: i64 = 60_000;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;

/// The category and display name of a test product id such as `shoe-2`.
fn describe(id: &str) -> Value {
    let category = match id.split('-').next() {
        Some("shoe") => "Shoes",
        Some("cam") => "Cameras",
        Some("lens") | Some("bag") => "Accessories",
        _ => "Misc",
    };
    json!({"product_id": id, "name": format!("Item {id}"), "category": category})
}

fn track(profile_id: u64, name: &str, at_ms: i64, properties: Value) -> ServiceEvent {
    ServiceEvent {
        seq: 0,
        profile_id,
        kind: MessageType::Track,
        name: name.into(),
        timestamp_ms: at_ms,
        body: crate::store::body::EventBody::parsed(json!({ "properties": properties })),
    }
}

fn view(profile_id: u64, id: &str, at_ms: i64) -> ServiceEvent {
    track(profile_id, "Product Viewed", at_ms, describe(id))
}

fn order(profile_id: u64, ids: &[&str], at_ms: i64) -> ServiceEvent {
    let products: Vec<Value> = ids.iter().map(|id| describe(id)).collect();
    track(
        profile_id,
        "Order Completed",
        at_ms,
        json!({ "products": products }),
    )
}

/// A model and the histories of the profiles it has seen.
#[derive(Default)]
struct World {
    model: Recommender,
    histories: HashMap<u64, ProfileHistory>,
}

impl World {
    fn with(config: ModelConfig) -> World {
        World {
            model: Recommender::new(config).expect("valid config"),
            histories: HashMap::new(),
        }
    }

    fn feed(&mut self, events: &[ServiceEvent]) {
        for event in events {
            let history = self.histories.entry(event.profile_id).or_default();
            self.model.observe(event, history);
        }
    }

    fn history(&self, profile_id: u64) -> ProfileHistory {
        self.histories.get(&profile_id).cloned().unwrap_or_default()
    }

    /// `(product id, reason)` of the first `limit` recommendations.
    fn recommend(&self, profile_id: u64, limit: usize, now_ms: i64) -> Vec<(String, String)> {
        self.model
            .recommend(&self.history(profile_id), limit, now_ms)
            .into_iter()
            .map(|r| (r.product_id, r.reason))
            .collect()
    }
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected
        .iter()
        .map(|(id, reason)| (id.to_string(), reason.to_string()))
        .collect()
}

#[test]
fn products_bought_in_the_same_order_are_recommended_together() {
    let mut world = World::default();
    world.feed(&[
        order(1, &["cam-1", "lens-1"], T0),
        order(2, &["cam-1", "bag-1"], T0 + HOUR),
        order(3, &["cam-1", "lens-1"], T0 + 2 * HOUR),
        view(9, "cam-1", T0 + 3 * HOUR),
    ]);
    assert_eq!(
        world.recommend(9, 2, T0 + 4 * HOUR),
        pairs(&[
            ("lens-1", "bought together with Item cam-1"),
            ("bag-1", "bought together with Item cam-1"),
        ])
    );
}

#[test]
fn views_within_the_window_are_viewed_together() {
    // (gap between two views by one profile, linked?)
    let table = [
        (10 * MINUTE, true),
        (VIEW_WINDOW_MS, true),
        (VIEW_WINDOW_MS + 1, false),
        (3 * HOUR, false),
    ];
    for (gap, linked) in table {
        let mut world = World::default();
        world.feed(&[view(1, "shoe-1", T0), view(1, "shoe-2", T0 + gap)]);
        world.feed(&[view(2, "shoe-1", T0 + DAY)]);
        let first = world.recommend(2, 1, T0 + DAY);
        let expected = if linked {
            pairs(&[("shoe-2", "viewed together with Item shoe-1")])
        } else {
            pairs(&[("shoe-1", "popular in Shoes")])
        };
        assert_eq!(first, expected, "views {gap} ms apart");
    }
}

#[test]
fn bought_together_outweighs_viewed_together() {
    let mut world = World::default();
    let mut events = vec![order(1, &["cam-1", "lens-1"], T0)];
    // Three co-views (0.75 of evidence) against one co-purchase (1).
    for profile in 2..5 {
        events.push(view(profile, "cam-1", T0));
        events.push(view(profile, "bag-1", T0 + MINUTE));
    }
    events.push(view(9, "cam-1", T0 + HOUR));
    world.feed(&events);
    assert_eq!(
        world.recommend(9, 2, T0 + HOUR),
        pairs(&[
            ("lens-1", "bought together with Item cam-1"),
            ("bag-1", "viewed together with Item cam-1"),
        ])
    );
}

#[test]
fn old_evidence_decays_behind_recent_evidence() {
    let mut world = World::default();
    let mut events = Vec::new();
    // Three co-purchases four half-lives ago are worth 3/16 of one today.
    for profile in 1..=3 {
        events.push(order(profile, &["cam-1", "lens-1"], T0));
    }
    let now = T0 + 4 * HALF_LIFE_MS;
    events.push(order(4, &["cam-1", "bag-1"], now - DAY));
    events.push(view(9, "cam-1", now));
    world.feed(&events);
    let ids: Vec<String> = world
        .recommend(9, 2, now)
        .into_iter()
        .map(|r| r.0)
        .collect();
    assert_eq!(ids, vec!["bag-1", "lens-1"]);
}

#[test]
fn purchased_products_are_never_recommended() {
    let mut world = World::default();
    world.feed(&[
        order(1, &["cam-1", "lens-1", "bag-1"], T0),
        order(2, &["cam-2"], T0),
        order(3, &["cam-1", "lens-1"], T0 + HOUR),
        view(3, "cam-1", T0 + 2 * HOUR),
    ]);
    let recommended = world.recommend(3, LIMIT_MAX, T0 + 3 * HOUR);
    let ids: Vec<&str> = recommended.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(ids, vec!["bag-1", "cam-2"], "bought cam-1 and lens-1");
    assert_eq!(recommended[0].1, "bought together with Item cam-1");
}

#[test]
fn a_new_customer_gets_what_is_popular_right_now() {
    let mut world = World::default();
    let now = T0 + 90 * DAY;
    world.feed(&[
        // Three purchases three half-lives before `now` are worth 3/8: less than one today.
        order(1, &["cam-1"], now - 3 * HALF_LIFE_MS),
        order(2, &["cam-1"], now - 3 * HALF_LIFE_MS),
        order(3, &["cam-1"], now - 3 * HALF_LIFE_MS),
        order(4, &["shoe-1"], now - DAY),
        order(5, &["bag-1"], now - DAY),
    ]);
    let expected = pairs(&[
        ("bag-1", "popular right now"),
        ("shoe-1", "popular right now"),
        ("cam-1", "popular right now"),
    ]);
    assert_eq!(world.recommend(99, 10, now), expected, "ties by product id");
    let scores: Vec<f64> = world
        .model
        .recommend(&ProfileHistory::new(), 10, now)
        .iter()
        .map(|r| r.score)
        .collect();
    assert!(
        (scores[0] - 0.5f64.powf(1.0 / 30.0)).abs() < 1e-9,
        "{scores:?}"
    );
    assert!((scores[2] - 3.0 / 8.0).abs() < 1e-9, "{scores:?}");
}

#[test]
fn a_favourite_category_comes_before_global_popularity() {
    let mut world = World::default();
    world.feed(&[
        order(1, &["cam-1"], T0),
        order(2, &["cam-1"], T0),
        order(3, &["shoe-1"], T0),
        order(4, &["shoe-2"], T0),
        order(5, &["shoe-2"], T0),
        // Shoes with no co-occurrence: only the category is known.
        view(9, "shoe-3", T0 + HOUR),
        track(8, "Product List Viewed", T0, json!({"category": "Shoes"})),
    ]);
    let expected = pairs(&[
        ("shoe-2", "popular in Shoes"),
        ("shoe-1", "popular in Shoes"),
        ("shoe-3", "popular in Shoes"),
        ("cam-1", "popular right now"),
    ]);
    assert_eq!(world.recommend(9, 4, T0 + HOUR), expected);
    assert_eq!(
        world.recommend(8, 4, T0 + HOUR),
        expected,
        "from a list view"
    );
}

#[test]
fn limits_are_honoured() {
    let mut world = World::default();
    let products: Vec<String> = (0..150).map(|i| format!("shoe-{i:03}")).collect();
    for (i, id) in products.iter().enumerate() {
        world.feed(&[order(i as u64, &[id], T0)]);
    }
    assert!(world.recommend(999, 0, T0).is_empty());
    assert_eq!(world.recommend(999, 1_000, T0).len(), LIMIT_MAX);
    assert_eq!(world.model.popular(&ProfileHistory::new(), 7, T0).len(), 7);
}

#[test]
fn a_full_neighbour_list_keeps_its_strong_neighbours_and_admits_new_ones() {
    let config = ModelConfig {
        neighbours_max: 8,
        ..ModelConfig::default()
    };
    let mut world = World::with(config);
    let mut at = T0;
    let mut bought_with_camera = |world: &mut World, other: &str| {
        at += MINUTE;
        world.feed(&[order(1, &["cam-1", other], at)]);
    };
    // cam-1 is bought with shoe-0i i + 2 times, then with 100 one-off products.
    for i in 0..5 {
        for _ in 0..i + 2 {
            bought_with_camera(&mut world, &format!("shoe-0{i}"));
        }
    }
    for i in 0..100 {
        bought_with_camera(&mut world, &format!("lens-{i:03}"));
    }
    assert_eq!(world.model.neighbour_count("cam-1"), 8);
    let ids = |world: &World| -> Vec<String> {
        let history = {
            let mut history = ProfileHistory::new();
            history.observe(&view(2, "cam-1", T0 + DAY));
            history
        };
        let recommended = world.model.recommend(&history, 6, T0 + DAY);
        recommended.into_iter().map(|r| r.product_id).collect()
    };
    let strong = ["shoe-04", "shoe-03", "shoe-02", "shoe-01", "shoe-00"];
    assert_eq!(ids(&world)[..5], strong, "one-offs never displace them");
    // A newcomer that keeps coming back rises above them.
    for _ in 0..7 {
        bought_with_camera(&mut world, "bag-1");
    }
    assert_eq!(
        ids(&world)[..6],
        [
            "bag-1", strong[0], strong[1], strong[2], strong[3], strong[4]
        ]
    );
}

#[test]
fn eviction_keeps_the_most_popular_products() {
    let config = ModelConfig {
        items_max: 10,
        ..ModelConfig::default()
    };
    let mut world = World::with(config);
    for round in 0..5 {
        for i in 0..10 {
            world.feed(&[order(1, &[&format!("cam-{i}")], T0 + round)]);
        }
    }
    for i in 0..50 {
        world.feed(&[view(2, &format!("shoe-{i:02}"), T0 + 10 + i)]);
        assert!(world.model.len() <= 10);
    }
    let popular = world.model.popular(&ProfileHistory::new(), 10, T0 + DAY);
    let ids: Vec<&str> = popular.iter().map(|r| r.product_id.as_str()).collect();
    let cameras: Vec<String> = (0..9).map(|i| format!("cam-{i}")).collect();
    assert_eq!(
        &ids[..9],
        cameras.as_slice(),
        "evicted down to 90%, cameras kept"
    );
}

/// A deterministic stream of `count` events over a large catalogue: views and orders of
/// three products, from 10,000 profiles.
fn churn(count: u64) -> impl Iterator<Item = ServiceEvent> {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        state = crate::load::catalogue::mix(state);
        state
    };
    (0..count).map(move |i| {
        let profile = next() % 10_000;
        let at = T0 + i as i64 * 1_000;
        let product = |r: u64| format!("p{}", r % 1_000_000);
        if next() % 5 == 0 {
            let (a, b, c) = (product(next()), product(next()), product(next()));
            order(profile, &[&a, &b, &c], at)
        } else {
            view(profile, &product(next()), at)
        }
    })
}

#[test]
fn memory_stays_bounded_after_a_million_events() {
    let config = ModelConfig {
        items_max: 2_000,
        neighbours_max: 20,
        categories_max: 3,
        ..ModelConfig::default()
    };
    let mut world = World::with(config.clone());
    for event in churn(1_000_000) {
        let history = world.histories.entry(event.profile_id).or_default();
        world.model.observe(&event, history);
    }
    let model = &world.model;
    assert!(model.len() <= config.items_max && model.len() > 1_000);
    assert!(model.category_count() <= 3);
    assert!(model.edge_count() <= config.items_max * config.neighbours_max);
    // ~250 bytes per product with full lists and short ids.
    let bound = config.items_max * (300 + 12 * config.neighbours_max);
    assert!(
        model.approx_bytes() <= bound,
        "{} > {bound}",
        model.approx_bytes()
    );
    let bytes = postcard::to_allocvec(model).expect("serializes");
    assert!(bytes.len() <= bound, "{} bytes persisted", bytes.len());
    for history in world.histories.values() {
        assert!(history.seeds().len() <= SEEDS_MAX);
        assert!(history.purchased_count() <= PURCHASED_MAX);
    }
}

#[test]
fn the_same_events_give_the_same_model_and_recommendations() {
    let events = synthetic::events(3, 20_000, T0);
    let run = || {
        let mut world = World::default();
        world.feed(&events);
        world
    };
    let (first, second) = (run(), run());
    let bytes = |world: &World| postcard::to_allocvec(&world.model).expect("serializes");
    assert_eq!(bytes(&first), bytes(&second));
    let mut profiles: Vec<u64> = first.histories.keys().copied().collect();
    profiles.sort_unstable();
    for profile in profiles {
        let a = first.model.recommend(&first.history(profile), 10, T0);
        let b = second.model.recommend(&second.history(profile), 10, T0);
        assert_eq!(a, b, "profile {profile}");
        assert_eq!(a.len(), 10);
    }
}

#[test]
fn merged_histories_hold_the_union_either_way_round() {
    let mut a = ProfileHistory::new();
    a.observe(&view(1, "cam-1", T0));
    a.observe(&order(1, &["lens-1"], T0 + 2));
    let mut b = ProfileHistory::new();
    b.observe(&view(2, "lens-1", T0 + 3));
    b.observe(&view(2, "shoe-1", T0 + 4));
    b.observe(&view(2, "shoe-2", T0 + 5));

    let mut ab = a.clone();
    ab.merge(&b);
    let mut ba = b.clone();
    ba.merge(&a);
    assert_eq!(ab, ba);

    let seeds: Vec<(&str, SeedKind, i64)> = ab
        .seeds()
        .iter()
        .map(|s| (s.product_id.as_str(), s.kind, s.at_ms - T0))
        .collect();
    assert_eq!(
        seeds,
        vec![
            ("shoe-2", SeedKind::Viewed, 5),
            ("shoe-1", SeedKind::Viewed, 4),
            ("lens-1", SeedKind::Purchased, 3),
            ("cam-1", SeedKind::Viewed, 0),
        ]
    );
    assert!(ab.has_purchased("lens-1") && !ab.has_purchased("cam-1"));
    // Shoes 0.5, Accessories 1 (a purchase), Cameras 0.25.
    assert_eq!(ab.favourite_category(), Some("Accessories"));

    let mut full = ProfileHistory::new();
    for i in 0..SEEDS_MAX as i64 * 2 {
        full.observe(&view(3, &format!("shoe-{i:02}"), T0 + i));
    }
    ab.merge(&full);
    assert_eq!(ab.seeds().len(), SEEDS_MAX);
    assert_eq!(ab.seeds()[0].product_id, "shoe-39");
}

#[test]
fn a_history_keeps_its_limits() {
    let mut history = ProfileHistory::new();
    for i in 0..PURCHASED_MAX as i64 + 10 {
        history.observe(&order(1, &[&format!("p{i:04}")], T0 + i));
    }
    assert_eq!(history.purchased_count(), PURCHASED_MAX);
    assert!(!history.has_purchased("p0000") && history.has_purchased("p0509"));
    assert_eq!(history.seeds().len(), SEEDS_MAX);

    let mut curious = ProfileHistory::new();
    for i in 0..INTERESTS_MAX + 3 {
        let properties = json!({"category": format!("c{i}")});
        curious.observe(&track(1, "Product List Viewed", T0, properties));
    }
    let properties = json!({"category": "c10"});
    curious.observe(&track(1, "Product List Viewed", T0, properties));
    assert_eq!(
        curious.favourite_category(),
        Some("c10"),
        "the latest stays"
    );
}

#[test]
fn the_model_and_histories_survive_a_serde_round_trip() {
    let mut world = World::default();
    world.feed(&synthetic::events(4, 10_000, T0));
    let bytes = postcard::to_allocvec(&world.model).expect("serializes");
    let loaded: Recommender = postcard::from_bytes(&bytes).expect("deserializes");
    assert_eq!(loaded, world.model);
    for history in world.histories.values() {
        let bytes = postcard::to_allocvec(history).expect("serializes");
        let back: ProfileHistory = postcard::from_bytes(&bytes).expect("deserializes");
        assert_eq!(&back, history);
        assert_eq!(
            loaded.recommend(&back, 10, T0),
            world.model.recommend(history, 10, T0)
        );
    }
}

#[test]
fn a_corrupt_model_is_refused_with_the_reason() {
    let mut world = World::default();
    world.feed(&[order(1, &["cam-1", "lens-1"], T0)]);
    let good: Value = serde_json::to_value(&world.model).expect("serializes");
    type Corruption = (&'static str, fn(&mut Value));
    let corruptions: Vec<Corruption> = vec![
        ("duplicate product ids", |v| {
            v["items"][1]["product_id"] = json!("cam-1");
        }),
        ("is malformed", |v| {
            v["neighbours"][0]["edges"][0]["item"] = json!(7);
        }),
        ("is malformed", |v| {
            v["neighbours"][0]["edges"][0]["item"] = json!(0);
        }),
        ("neighbour lists", |v| {
            v["neighbours"] = json!([]);
        }),
        ("half_life_ms", |v| {
            v["config"]["half_life_ms"] = json!(0);
        }),
    ];
    for (expected, corrupt) in corruptions {
        let mut state = good.clone();
        corrupt(&mut state);
        let error = serde_json::from_value::<Recommender>(state)
            .expect_err("corrupt state is refused")
            .to_string();
        assert!(error.contains(expected), "{error}");
    }
}

#[test]
fn invalid_settings_are_named() {
    let table: Vec<(ModelConfig, &str)> = vec![
        (
            ModelConfig {
                half_life_ms: -1,
                ..ModelConfig::default()
            },
            "half_life_ms",
        ),
        (
            ModelConfig {
                neighbours_max: 0,
                ..ModelConfig::default()
            },
            "neighbours_max",
        ),
        (
            ModelConfig {
                items_max: usize::MAX,
                ..ModelConfig::default()
            },
            "items_max",
        ),
        (
            ModelConfig {
                view_weight: f64::NAN,
                ..ModelConfig::default()
            },
            "view_weight",
        ),
    ];
    for (config, setting) in table {
        let error = Recommender::new(config).expect_err(setting);
        assert!(error.to_string().contains(setting), "{error}");
        assert!(!error.is_retryable());
    }
    assert!(Recommender::new(ModelConfig::default()).is_ok());
}

#[test]
fn the_offline_evaluation_scores_both_lists_on_held_out_orders() {
    let events = synthetic::events(11, 30_000, T0);
    let report = evaluate(&events, 10);
    assert_eq!(report.events, 30_000);
    assert!(report.customers_evaluated > 100, "{report}");
    assert!(report.customers_with_seeds <= report.customers_evaluated);
    assert!(report.items > 0 && report.orders_trained > 0, "{report}");
    for rate in [report.hit_rate_recommender(), report.hit_rate_popularity()] {
        assert!((0.0..=1.0).contains(&rate), "{report}");
    }
    // The generator's baskets follow the product viewed last: neighbours find them.
    assert!(
        report.hit_rate_recommender() > report.hit_rate_popularity(),
        "{report}"
    );
    assert_eq!(
        evaluate(&events, 10).recommender_hits,
        report.recommender_hits
    );
}

#[test]
fn debug_round_trip() {
    let mut world = World::default();
    world.feed(&synthetic::events(4, 10_000, T0));
    let bytes = postcard::to_allocvec(&world.model).expect("serializes");
    let loaded: Recommender = postcard::from_bytes(&bytes).expect("deserializes");
    loaded.debug_diff(&world.model);
}
