//! [`default_defs`]: the computed traits the scenario ships with, over the workload's
//! e-commerce, support and social events (see `src/load/events.rs`).

use super::def::{EventFilter, TraitDef, TraitKind};
use super::path::PropertyPath;

/// The social events counted as engagement.
const SOCIAL_EVENTS: [&str; 4] = [
    "Post Liked",
    "Post Shared",
    "Brand Mentioned",
    "Account Followed",
];

/// The shipped definitions (they pass [`super::validate_defs`]; a test holds them to it).
pub fn default_defs() -> Vec<TraitDef> {
    let order = || EventFilter::named("Order Completed");
    vec![
        def("orders_count", TraitKind::Count, order(), None),
        def("lifetime_value", TraitKind::Sum, order(), Some("revenue")),
        def("avg_order_value", TraitKind::Avg, order(), Some("revenue")),
        def("last_order_at", TraitKind::LastAt, order(), None),
        def(
            "favorite_category",
            TraitKind::MostFrequent,
            order(),
            Some("products[].category"),
        ),
        TraitDef {
            minus_event: Some(EventFilter::named("Ticket Resolved")),
            ..def(
                "open_tickets",
                TraitKind::NetCount,
                EventFilter::named("Ticket Opened"),
                None,
            )
        },
        TraitDef {
            window_days: Some(90),
            ..def(
                "tickets_90d",
                TraitKind::Count,
                EventFilter::named("Ticket Opened"),
                None,
            )
        },
        def(
            "last_csat",
            TraitKind::Last,
            EventFilter::named("Satisfaction Rated"),
            Some("rating"),
        ),
        TraitDef {
            window_days: Some(30),
            ..def(
                "social_engagements_30d",
                TraitKind::Count,
                EventFilter::any_of(&SOCIAL_EVENTS),
                None,
            )
        },
    ]
}

/// An all-time definition. A path that failed to parse would leave `property` empty,
/// which validation reports, so no literal here can panic.
fn def(name: &str, kind: TraitKind, event: EventFilter, property: Option<&str>) -> TraitDef {
    TraitDef {
        name: name.to_owned(),
        kind,
        event,
        minus_event: None,
        property: property.and_then(|text| PropertyPath::parse(text).ok()),
        window_days: None,
    }
}
