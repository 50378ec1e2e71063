//! The computed-traits service gives the same state whether each feed record is read,
//! folded and written on its own or a whole batch is folded in memory (each profile read
//! and written once): events and merges of the same profiles interleave within one batch
//! here, including events after a merge on both sides of it.

use std::sync::Arc;

use serde_json::{Value, json};

use super::ComputedTraits;
use crate::model::block::EncodedBlock;
use crate::model::command::Command;
use crate::model::event::Event;
use crate::model::resolve::MergeRules;
use crate::services::db::{ServiceDb, Writes};
use crate::services::supervisor::{BATCH_MAX, Service};
use crate::services::traits::default_defs;
use crate::store::Store;
use crate::store::apply::ApplySettings;
use crate::store::direct::commit_command;
use crate::store::tables::FeedRecord;

const T0: i64 = 1_764_000_000_000;
const DAY_MS: i64 = 86_400_000;

fn event(raw: Value) -> Event {
    crate::model::validate::test_event(raw, T0)
}

fn order(id: &str, who: (&str, &str), revenue: u64, category: &str) -> Value {
    json!({"type": "track", "messageId": id, "userId": who.0, "anonymousId": who.1,
           "event": "Order Completed",
           "properties": {"revenue": revenue, "category": category}})
}

/// One entry where anonymous visitors order, then are identified as known customers
/// (merges), then order again under both ids; and a second entry that merges two customers.
fn log() -> Vec<Command> {
    let mut first = Vec::new();
    for n in 0..20 {
        let anon = format!("anon-{n}");
        first.push(order(&format!("a{n}"), ("", &anon), 10 + n, "Books"));
        first.push(order(&format!("b{n}"), (&format!("u{n}"), ""), 30, "Audio"));
        // Ties the anonymous profile to the customer: a merge in the middle of the entry.
        first.push(json!({"type": "identify", "messageId": format!("i{n}"),
                          "userId": format!("u{n}"), "anonymousId": anon}));
        first.push(order(
            &format!("c{n}"),
            (&format!("u{n}"), ""),
            5 * n,
            "Toys",
        ));
    }
    let second = vec![
        json!({"type": "alias", "messageId": "al1", "userId": "u1", "previousId": "u2"}),
        order("d1", ("u1", ""), 99, "Books"),
        order("d2", ("u2", ""), 1, "Kitchen"),
    ];
    [first, second]
        .into_iter()
        .enumerate()
        .map(|(at, raws)| {
            let events = raws.into_iter().map(event).collect();
            let time_ms = T0 + at as i64 * DAY_MS;
            Command::Ingest(EncodedBlock::encode(time_ms, events).expect("block"))
        })
        .collect()
}

/// The service's state hash and record count after running over the whole log in batches
/// of `limit` feed records.
fn run(limit: usize) -> (String, u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = ApplySettings {
        rules: MergeRules::default(),
        dedup_window_ms: DAY_MS,
        retention_ms: 30 * DAY_MS,
        audit_records_max: crate::model::audit::AUDIT_RECORDS_DEFAULT_MAX,
        clock_step_ms_max: 10 * DAY_MS,
    };
    let store = Store::open_in(&dir.path().join("node"), 16 << 20, settings).expect("store");
    for command in log() {
        commit_command(&store, &command).expect("commit");
    }
    let db = ServiceDb::open(&dir.path().join("traits")).expect("service db");
    let defs = Arc::new(default_defs());
    let mut service = ComputedTraits::new(Arc::clone(&defs));
    let mut merges = 0;
    let reader = store.reader();
    let items = reader.feed_after(0, usize::MAX).expect("feed");
    for chunk in items.chunks(limit) {
        merges += chunk
            .iter()
            .filter(|item| matches!(item.record, FeedRecord::Merged { .. }))
            .count();
        let mut writes = Writes::default();
        let applied = service
            .process(&db, &reader, chunk, &mut writes)
            .expect("process");
        assert_eq!(applied, chunk.len(), "the service takes whole batches");
        db.commit(writes, chunk[applied - 1].feed_seq)
            .expect("commit");
    }
    assert!(merges >= 20, "the log merges profiles ({merges} merges)");
    let (records, hash) = db.export_view().hash().expect("hash");
    (hash, records)
}

#[test]
fn folding_a_batch_in_memory_gives_the_state_of_one_record_at_a_time() {
    let (one_by_one, records) = run(1);
    assert!(
        records >= 19,
        "a profile per customer, merged ones gone: {records}"
    );
    let (batched, batched_records) = run(BATCH_MAX);
    assert_eq!(
        (batched, batched_records),
        (one_by_one, records),
        "the same state either way"
    );
}
