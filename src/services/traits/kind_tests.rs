//! Table tests: each kind, all-time and windowed, on small scripted event lists.

use serde_json::{Value, json};

use super::test_support::{DAY_MS, EPOCH_MS, def, noon, page, track};
use super::{
    DISTINCT_DAY_VALUES_MAX, DISTINCT_VALUES_MAX, EventFilter, EventNames, ProfileTraits, TraitDef,
    TraitKind,
};
use crate::model::event::MessageType;

/// One scenario: a definition, events (observed in the order given), the read day, and
/// the expected value.
struct Case {
    what: &'static str,
    def: TraitDef,
    events: Vec<(&'static str, i64, Value)>,
    now_day: i64,
    expected: Value,
}

fn check(cases: Vec<Case>) {
    for case in cases {
        let mut profile = ProfileTraits::new();
        for (seq, (name, timestamp_ms, properties)) in case.events.into_iter().enumerate() {
            let event = track(seq as u64 + 1, name, timestamp_ms, properties);
            profile.observe(std::slice::from_ref(&case.def), &event);
        }
        let values = profile.values(std::slice::from_ref(&case.def), noon(case.now_day));
        assert_eq!(
            values.get(&case.def.name),
            Some(&case.expected),
            "{}",
            case.what
        );
        assert_eq!(values.len(), 1, "{}", case.what);
    }
}

fn order(revenue: Value) -> Value {
    json!({ "revenue": revenue })
}

fn orders_def(kind: TraitKind, property: Option<&str>, window: Option<u32>) -> TraitDef {
    def(
        "t",
        kind,
        EventFilter::named("Order Completed"),
        property,
        window,
    )
}

#[test]
fn counting_kinds() {
    let net = TraitDef {
        minus_event: Some(EventFilter::named("Ticket Resolved")),
        ..def(
            "t",
            TraitKind::NetCount,
            EventFilter::named("Ticket Opened"),
            None,
            None,
        )
    };
    let any_minus_logins = TraitDef {
        minus_event: Some(EventFilter::named("Logged In")),
        ..def("t", TraitKind::NetCount, any(), None, None)
    };
    let oc = "Order Completed";
    check(vec![
        Case {
            what: "count counts matching events only",
            def: orders_def(TraitKind::Count, None, None),
            events: vec![
                (oc, noon(0), json!({})),
                ("Cart Viewed", noon(0), json!({})),
                (oc, noon(1), json!({})),
                ("order completed", noon(1), json!({})),
            ],
            now_day: 5,
            expected: json!(2),
        },
        Case {
            what: "count with no event reads 0",
            def: orders_def(TraitKind::Count, None, None),
            events: vec![("Cart Viewed", noon(0), json!({}))],
            now_day: 5,
            expected: json!(0),
        },
        Case {
            what: "count over a list of names",
            def: def(
                "t",
                TraitKind::Count,
                EventFilter::any_of(&["Post Liked", "Post Shared"]),
                None,
                None,
            ),
            events: vec![
                ("Post Liked", noon(0), json!({})),
                ("Post Shared", noon(0), json!({})),
                ("Brand Mentioned", noon(0), json!({})),
            ],
            now_day: 1,
            expected: json!(2),
        },
        Case {
            what: "count of any event",
            def: def("t", TraitKind::Count, any(), None, None),
            events: vec![("A", noon(0), json!({})), ("B", noon(0), json!({}))],
            now_day: 1,
            expected: json!(2),
        },
        Case {
            what: "net_count: opened minus resolved",
            def: net.clone(),
            events: vec![
                ("Ticket Opened", noon(0), json!({})),
                ("Ticket Opened", noon(1), json!({})),
                ("Ticket Resolved", noon(2), json!({})),
                ("Ticket Opened", noon(3), json!({})),
                ("Ticket Updated", noon(3), json!({})),
            ],
            now_day: 4,
            expected: json!(2),
        },
        Case {
            what: "net_count goes negative when history starts mid-ticket",
            def: net,
            events: vec![("Ticket Resolved", noon(0), json!({}))],
            now_day: 1,
            expected: json!(-1),
        },
        Case {
            what: "net_count: an event matching both sides counts zero",
            def: any_minus_logins,
            events: vec![("Logged In", noon(0), json!({})), ("A", noon(0), json!({}))],
            now_day: 1,
            expected: json!(1),
        },
    ]);
}

fn any() -> EventFilter {
    EventFilter {
        names: EventNames::Any,
        message_type: None,
    }
}

#[test]
fn message_type_filters() {
    let pages = def(
        "t",
        TraitKind::Count,
        EventFilter {
            names: EventNames::Any,
            message_type: Some(MessageType::Page),
        },
        None,
        None,
    );
    let named_any_type = def(
        "u",
        TraitKind::Count,
        EventFilter::named("Category"),
        None,
        None,
    );
    let defs = [pages, named_any_type];
    let mut profile = ProfileTraits::new();
    profile.observe(&defs, &page(1, "Category", noon(0)));
    profile.observe(&defs, &page(2, "Home", noon(0)));
    profile.observe(&defs, &track(3, "Category", noon(0), json!({})));
    let values = profile.values(&defs, noon(1));
    assert_eq!(values["t"], json!(2), "pages of any name");
    assert_eq!(values["u"], json!(2), "the name, any type");
}

#[test]
fn numeric_kinds() {
    let oc = "Order Completed";
    let orders = || {
        vec![
            (oc, noon(0), order(json!(10))),
            (oc, noon(1), order(json!("20.5"))),
            (oc, noon(2), order(json!(-4.5))),
            (oc, noon(3), order(json!("abc"))),
            (oc, noon(3), json!({})),
            ("Checkout Started", noon(3), order(json!(1000))),
        ]
    };
    let basket = json!({"products": [{"price": 2.25}, {"price": 1}, {"price": "x"}]});
    check(vec![
        Case {
            what: "sum adds numbers and numeric strings, skips the rest",
            def: orders_def(TraitKind::Sum, Some("revenue"), None),
            events: orders(),
            now_day: 5,
            expected: json!(26),
        },
        Case {
            what: "sum with nothing reads 0",
            def: orders_def(TraitKind::Sum, Some("revenue"), None),
            events: vec![(oc, noon(0), json!({}))],
            now_day: 5,
            expected: json!(0),
        },
        Case {
            what: "sum over an array path adds every item",
            def: orders_def(TraitKind::Sum, Some("products[].price"), None),
            events: vec![(oc, noon(0), basket.clone()), (oc, noon(1), basket.clone())],
            now_day: 5,
            expected: json!(6.5),
        },
        Case {
            what: "avg over values, rounded to a millionth",
            def: orders_def(TraitKind::Avg, Some("revenue"), None),
            events: orders(),
            now_day: 5,
            expected: json!(8.666667),
        },
        Case {
            what: "avg over an array path averages items, not events",
            def: orders_def(TraitKind::Avg, Some("products[].price"), None),
            events: vec![(oc, noon(0), basket)],
            now_day: 5,
            expected: json!(1.625),
        },
        Case {
            what: "avg with nothing reads null",
            def: orders_def(TraitKind::Avg, Some("revenue"), None),
            events: vec![],
            now_day: 5,
            expected: Value::Null,
        },
        Case {
            what: "min",
            def: orders_def(TraitKind::Min, Some("revenue"), None),
            events: orders(),
            now_day: 5,
            expected: json!(-4.5),
        },
        Case {
            what: "max",
            def: orders_def(TraitKind::Max, Some("revenue"), None),
            events: orders(),
            now_day: 5,
            expected: json!(20.5),
        },
        Case {
            what: "max with nothing reads null",
            def: orders_def(TraitKind::Max, Some("revenue"), None),
            events: vec![(oc, noon(0), order(json!("n/a")))],
            now_day: 5,
            expected: Value::Null,
        },
    ]);
}

#[test]
fn time_ordered_kinds() {
    let rated = |rating: Value| json!({ "rating": rating });
    let sr = "Satisfaction Rated";
    // Observed out of order: day 2, day 0, day 1, then a second day-2 event (later seq).
    let ratings = || {
        vec![
            (sr, noon(2), rated(json!(3))),
            (sr, noon(0), rated(json!(5))),
            (sr, noon(1), rated(json!("good"))),
            (sr, noon(2), rated(json!(4))),
            (sr, noon(9), json!({})),
        ]
    };
    let by = |kind| def("t", kind, EventFilter::named(sr), Some("rating"), None);
    let oc = "Order Completed";
    let categories = json!({"products": [{"category": "Books"}, {"category": "Toys"}]});
    check(vec![
        Case {
            what: "first is the earliest event's value, whatever the arrival order",
            def: by(TraitKind::First),
            events: ratings(),
            now_day: 10,
            expected: json!(5),
        },
        Case {
            what: "last: same timestamp breaks by feed sequence",
            def: by(TraitKind::Last),
            events: ratings(),
            now_day: 10,
            expected: json!(4),
        },
        Case {
            what: "first of an array path is the event's first item",
            def: orders_def(TraitKind::First, Some("products[].category"), None),
            events: vec![(oc, noon(0), categories.clone())],
            now_day: 1,
            expected: json!("Books"),
        },
        Case {
            what: "last of an array path is the event's last item",
            def: orders_def(TraitKind::Last, Some("products[].category"), None),
            events: vec![(oc, noon(0), categories)],
            now_day: 1,
            expected: json!("Toys"),
        },
        Case {
            what: "last with nothing reads null",
            def: by(TraitKind::Last),
            events: vec![(sr, noon(0), json!({}))],
            now_day: 1,
            expected: Value::Null,
        },
        Case {
            what: "last_at is the latest matching event, RFC 3339",
            def: def("t", TraitKind::LastAt, EventFilter::named(sr), None, None),
            events: ratings(),
            now_day: 10,
            expected: json!("2025-01-10T12:00:00.000Z"),
        },
        Case {
            what: "last_at with nothing reads null",
            def: def("t", TraitKind::LastAt, EventFilter::named(sr), None, None),
            events: vec![],
            now_day: 10,
            expected: Value::Null,
        },
    ]);
}

fn products(categories: &[&str]) -> Value {
    let products: Vec<Value> = categories.iter().map(|c| json!({"category": c})).collect();
    json!({ "products": products })
}

#[test]
fn distinct_kinds() {
    let oc = "Order Completed";
    let path = Some("products[].category");
    let many: Vec<String> = (0..DISTINCT_VALUES_MAX + 5)
        .map(|i| format!("c{i:03}"))
        .collect();
    let many_refs: Vec<&str> = many.iter().map(String::as_str).collect();
    let first_hundred: Vec<&str> = many_refs[..DISTINCT_VALUES_MAX].to_vec();
    check(vec![
        Case {
            what: "most_frequent counts every line item",
            def: orders_def(TraitKind::MostFrequent, path, None),
            events: vec![
                (oc, noon(0), products(&["Toys", "Books", "Books"])),
                (oc, noon(1), products(&["Toys"])),
                (oc, noon(2), products(&["Games", "Books"])),
            ],
            now_day: 3,
            expected: json!("Books"),
        },
        Case {
            what: "most_frequent ties go to the smallest value",
            def: orders_def(TraitKind::MostFrequent, path, None),
            events: vec![
                (oc, noon(0), products(&["Toys", "Books"])),
                (oc, noon(1), products(&["Games", "Toys", "Books"])),
            ],
            now_day: 3,
            expected: json!("Books"),
        },
        Case {
            what: "most_frequent with nothing reads null",
            def: orders_def(TraitKind::MostFrequent, path, None),
            events: vec![(oc, noon(0), products(&[]))],
            now_day: 3,
            expected: Value::Null,
        },
        Case {
            what: "unique lists distinct values in value order",
            def: orders_def(TraitKind::Unique, path, None),
            events: vec![
                (oc, noon(0), products(&["Toys", "Books"])),
                (oc, noon(1), products(&["Books", "Games"])),
            ],
            now_day: 3,
            expected: json!({"values": ["Books", "Games", "Toys"], "count": 3, "truncated": false}),
        },
        Case {
            what: "unique keeps the smallest values past its bound",
            def: orders_def(TraitKind::Unique, path, None),
            events: vec![(oc, noon(0), products(&many_refs))],
            now_day: 3,
            expected: json!({"values": first_hundred, "count": DISTINCT_VALUES_MAX, "truncated": true}),
        },
        Case {
            what: "unique with nothing reads an empty listing",
            def: orders_def(TraitKind::Unique, path, None),
            events: vec![],
            now_day: 3,
            expected: json!({"values": [], "count": 0, "truncated": false}),
        },
    ]);
}

#[test]
fn windows_count_the_last_n_days_as_of_the_read_time() {
    let oc = "Order Completed";
    // One order a day on days 0..=9, observed newest first.
    let daily: Vec<(&str, i64, Value)> = (0..10).rev().map(|d| (oc, noon(d), json!({}))).collect();
    let window = |days| orders_def(TraitKind::Count, None, Some(days));
    let cases = [
        ("days 3..=9 of a 7-day window", 7, 9, json!(7)),
        ("the window slides as time passes", 7, 12, json!(4)),
        ("everything left the window", 7, 30, json!(0)),
        ("a 1-day window is today only", 1, 9, json!(1)),
        // Windows prune relative to the newest day held (day 9 keeps days 3..=9), so
        // reading as of day 5 counts days 3..=5: the later days do not count yet and
        // the pruned ones are gone for good.
        (
            "events after the read time do not count yet",
            7,
            5,
            json!(3),
        ),
        ("a window longer than the history", 365, 9, json!(10)),
    ];
    let cases = cases
        .into_iter()
        .map(|(what, days, now_day, expected)| Case {
            what,
            def: window(days),
            events: daily.clone(),
            now_day,
            expected,
        })
        .collect();
    check(cases);
}

#[test]
fn window_edges_and_late_events() {
    let oc = "Order Completed";
    let window7 = || orders_def(TraitKind::Count, None, Some(7));
    check(vec![
        Case {
            what: "day boundaries are UTC midnights",
            def: window7(),
            events: vec![
                (oc, EPOCH_MS + 3 * DAY_MS - 1, json!({})), // last ms of day 2
                (oc, EPOCH_MS + 3 * DAY_MS, json!({})),     // first ms of day 3
            ],
            now_day: 9,
            expected: json!(1),
        },
        Case {
            what: "a late event inside the window counts in its own day",
            def: window7(),
            events: vec![(oc, noon(9), json!({})), (oc, noon(4), json!({}))],
            now_day: 10,
            expected: json!(2),
        },
        Case {
            what: "a late event already outside the window is ignored",
            def: window7(),
            events: vec![(oc, noon(9), json!({})), (oc, noon(1), json!({}))],
            now_day: 9,
            expected: json!(1),
        },
        Case {
            what: "a newer event pushes old days out",
            def: window7(),
            events: vec![(oc, noon(0), json!({})), (oc, noon(20), json!({}))],
            now_day: 3,
            expected: json!(0),
        },
    ]);
}

#[test]
fn windowed_value_kinds() {
    let oc = "Order Completed";
    let orders = || {
        vec![
            (
                oc,
                noon(0),
                json!({"revenue": 100, "products": [{"category": "Old"}]}),
            ),
            (
                oc,
                noon(0),
                json!({"revenue": 100, "products": [{"category": "Old"}]}),
            ),
            (
                oc,
                noon(8),
                json!({"revenue": 10, "products": [{"category": "New"}]}),
            ),
            (
                oc,
                noon(9),
                json!({"revenue": 20, "products": [{"category": "Mid"}]}),
            ),
        ]
    };
    let w = |kind, property| orders_def(kind, Some(property), Some(5));
    let many: Vec<String> = (0..DISTINCT_DAY_VALUES_MAX + 3)
        .map(|i| format!("c{i:02}"))
        .collect();
    let many_refs: Vec<&str> = many.iter().map(String::as_str).collect();
    check(vec![
        Case {
            what: "windowed sum",
            def: w(TraitKind::Sum, "revenue"),
            events: orders(),
            now_day: 9,
            expected: json!(30),
        },
        Case {
            what: "windowed avg",
            def: w(TraitKind::Avg, "revenue"),
            events: orders(),
            now_day: 9,
            expected: json!(15),
        },
        Case {
            what: "windowed max ignores days that left",
            def: w(TraitKind::Max, "revenue"),
            events: orders(),
            now_day: 9,
            expected: json!(20),
        },
        Case {
            what: "windowed first is the earliest in the window",
            def: w(TraitKind::First, "revenue"),
            events: orders(),
            now_day: 9,
            expected: json!(10),
        },
        Case {
            what: "windowed last excludes days after the read time",
            def: w(TraitKind::Last, "revenue"),
            events: orders(),
            now_day: 8,
            expected: json!(10),
        },
        Case {
            what: "windowed most_frequent forgets old favourites",
            def: w(TraitKind::MostFrequent, "products[].category"),
            events: orders(),
            now_day: 9,
            expected: json!("Mid"),
        },
        Case {
            what: "windowed unique",
            def: w(TraitKind::Unique, "products[].category"),
            events: orders(),
            now_day: 9,
            expected: json!({"values": ["Mid", "New"], "count": 2, "truncated": false}),
        },
        Case {
            what: "a day's bucket keeps its smallest values",
            def: w(TraitKind::Unique, "products[].category"),
            events: vec![(oc, noon(0), products(&many_refs))],
            now_day: 0,
            expected: json!({
                "values": many_refs[..DISTINCT_DAY_VALUES_MAX].to_vec(),
                "count": DISTINCT_DAY_VALUES_MAX,
                "truncated": true,
            }),
        },
        Case {
            what: "windowed last_at",
            def: orders_def(TraitKind::LastAt, None, Some(5)),
            events: orders(),
            now_day: 30,
            expected: Value::Null,
        },
    ]);
}
