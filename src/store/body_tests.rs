//! The feed's event bodies: each event's `properties` parsed once per node however many
//! services read it, equal to what a whole-body parse gives, and parsed again (correctly)
//! by a reader that comes after its block left the cache.

use std::sync::atomic::Ordering;

use serde_json::{Value, json};

use super::tests::{T0, batch, commit, open_with, settings};

fn counts(store: &super::Store) -> (u64, u64, u64) {
    let stats = store.block_cache().stats();
    (
        stats.hits.load(Ordering::Relaxed),
        stats.misses.load(Ordering::Relaxed),
        stats.properties_parsed.load(Ordering::Relaxed),
    )
}

#[test]
fn services_share_one_parse_per_event_and_a_laggard_decodes_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_with(dir.path(), "bodies", settings());
    commit(
        &store,
        &batch(
            T0,
            vec![
                json!({"type": "track", "messageId": "a", "userId": "u1", "event": "Order Completed",
                       "properties": {"revenue": 12.5, "products": [{"product_id": "p1", "category": "Books"}]},
                       "context": {"ip": "10.0.0.1", "library": {"name": "analytics.js"}}}),
                json!({"type": "page", "messageId": "b", "userId": "u1", "name": "Home"}),
                json!({"type": "identify", "messageId": "c", "userId": "u2", "traits": {"email": "a@example.com"}}),
            ],
        ),
    );
    let traits = store.reader().feed_after(0, 100).expect("feed");
    assert_eq!(traits.len(), 3);
    assert_eq!(counts(&store), (0, 1, 0), "one decode, nothing parsed yet");
    // Every event's properties are what a whole-body parse of its stored body says.
    for item in &traits {
        let (super::tables::FeedRecord::Event { seq, profile }, Some(event)) =
            (&item.record, &item.event)
        else {
            panic!("an event record: {item:?}");
        };
        let stored = store.event(*seq, *profile).expect("read").expect("stored");
        let whole: Value = serde_json::from_str(&stored.body_json).expect("JSON body");
        assert_eq!(event.body.properties(), whole.get("properties"), "{whole}");
        assert_eq!(event.body.to_value(), whole);
    }
    assert_eq!(counts(&store).2, 3, "each event parsed once");
    // A second service reading the same entry finds the block and its parsed properties.
    let segments = store.reader().feed_after(0, 100).expect("feed");
    let body = &segments[0].event.as_ref().expect("event").body;
    assert_eq!(
        body.properties().expect("properties")["revenue"],
        json!(12.5)
    );
    let (hits, misses, parsed) = counts(&store);
    assert_eq!(
        (misses, parsed),
        (1, 3),
        "no second decode, no second parse"
    );
    assert!(hits >= 1, "the second reader hit the cache");
    // A laggard whose block was evicted decodes and parses again for itself; what the
    // first readers hold stays valid (they own their batch's blocks until they drop it).
    store.block_cache().clear();
    let laggard = store.reader().feed_after(0, 100).expect("feed");
    let again = &laggard[0].event.as_ref().expect("event").body;
    assert_eq!(again.properties(), body.properties());
    assert_eq!(counts(&store).1, misses + 1);
    assert_eq!(
        counts(&store).2,
        4,
        "the laggard parsed what it asked for, once"
    );
    assert_eq!(
        traits[0].event.as_ref().expect("event").body.properties(),
        again.properties()
    );
}
