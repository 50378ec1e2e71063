//! The shipped defaults on a scripted customer: orders, a support history, social
//! activity first seen on an anonymous profile that later merges into the customer.

use serde_json::{Value, json};

use super::test_support::{noon, page, track};
use super::{ProfileTraits, default_defs, validate_defs};
use crate::services::event::ServiceEvent;

/// The known customer's events (e-commerce and support), by day.
fn customer() -> Vec<ServiceEvent> {
    let product = |category: &str, price: f64| json!({"category": category, "price": price});
    let order = |revenue: Value, products: Vec<Value>| json!({"order_id": "o-1", "revenue": revenue, "currency": "USD", "products": products});
    let ticket = |id: &str| json!({"ticket_id": id, "channel": "email", "priority": "low"});
    vec![
        page(1, "Category", noon(2)),
        track(2, "Ticket Opened", noon(5), ticket("t-1")),
        track(3, "Ticket Updated", noon(6), ticket("t-1")),
        track(4, "Ticket Resolved", noon(7), ticket("t-1")),
        track(
            5,
            "Satisfaction Rated",
            noon(7),
            json!({"ticket_id": "t-1", "rating": 4}),
        ),
        track(
            6,
            "Order Completed",
            noon(10),
            order(
                json!(120),
                vec![product("Cameras", 100.0), product("Accessories", 20.0)],
            ),
        ),
        track(
            7,
            "Checkout Started",
            noon(39),
            order(json!(45.5), vec![product("Books", 20.0)]),
        ),
        track(
            8,
            "Order Completed",
            noon(40),
            order(
                json!(45.5),
                vec![product("Accessories", 25.5), product("Books", 20.0)],
            ),
        ),
        track(9, "Ticket Opened", noon(80), ticket("t-2")),
        track(10, "Ticket Opened", noon(90), ticket("t-3")),
        track(11, "Ticket Resolved", noon(91), ticket("t-3")),
        track(
            12,
            "Satisfaction Rated",
            noon(92),
            json!({"ticket_id": "t-3", "rating": 2}),
        ),
        track(
            13,
            "Order Completed",
            noon(95),
            order(json!("30"), vec![product("Accessories", 30.0)]),
        ),
    ]
}

/// Social activity seen on an anonymous profile, by day.
fn social() -> Vec<ServiceEvent> {
    let post = |id: &str| json!({"platform": "instagram", "post_id": id, "sentiment": "positive"});
    vec![
        track(14, "Post Liked", noon(50), post("post-0001")),
        track(15, "Post Shared", noon(75), post("post-0002")),
        track(16, "Brand Mentioned", noon(85), post("post-u-1")),
        track(17, "Account Followed", noon(99), post("post-0003")),
        track(18, "Post Liked", noon(99), post("post-0004")),
        track(19, "Product Viewed", noon(99), json!({"category": "Books"})),
    ]
}

#[test]
fn defaults_on_a_customer_journey() {
    let defs = default_defs();
    assert_eq!(validate_defs(&defs), Ok(()));
    let mut known = ProfileTraits::new();
    for event in customer() {
        known.observe(&defs, &event);
    }
    let mut anonymous = ProfileTraits::new();
    for event in social() {
        anonymous.observe(&defs, &event);
    }
    known.merge(anonymous, &defs);

    let day_100 = json!({
        "orders_count": 3,
        "lifetime_value": 195.5,
        "avg_order_value": 65.166667,
        "last_order_at": "2025-04-06T12:00:00.000Z",
        "favorite_category": "Accessories",
        "open_tickets": 1,
        "tickets_90d": 2,
        "last_csat": 2,
        "social_engagements_30d": 4,
    });
    let values = serde_json::to_value(known.values(&defs, noon(100))).unwrap_or_default();
    assert_eq!(values, day_100);

    // A month later the windows have moved on; all-time traits have not.
    let day_130 = known.values(&defs, noon(130));
    assert_eq!(day_130["tickets_90d"], json!(2));
    assert_eq!(day_130["social_engagements_30d"], json!(0));
    assert_eq!(day_130["orders_count"], json!(3));
    let day_175 = known.values(&defs, noon(175));
    assert_eq!(day_175["tickets_90d"], json!(1));
}

#[test]
fn a_new_profile_reads_neutral_values() {
    let defs = default_defs();
    let values = serde_json::to_value(ProfileTraits::new().values(&defs, noon(0)));
    let expected = json!({
        "orders_count": 0,
        "lifetime_value": 0,
        "avg_order_value": null,
        "last_order_at": null,
        "favorite_category": null,
        "open_tickets": 0,
        "tickets_90d": 0,
        "last_csat": null,
        "social_engagements_30d": 0,
    });
    assert_eq!(values.ok(), Some(expected));
}
