//! Scenario tests of the store: the state machine applied through real fjall databases and
//! a real log, committed the way a leader commits (screen duplicates, encode a block,
//! append, apply) by [`super::direct`].

use serde_json::{Value, json};

use super::apply::ApplySettings;
use super::replicated::Committed;
use super::tables::{MergeAction, PROFILES, event_seq};
use super::*;
use crate::model::command::Command;
use crate::model::event::{Event, EventOutcome};
use crate::model::identity::{Blocklist, Identity};
use crate::model::resolve::MergeRules;

pub(super) const DAY_MS: i64 = 86_400_000;
pub(super) const T0: i64 = 1_764_000_000_000;

/// The settings these scenarios run with.
pub(super) fn settings() -> ApplySettings {
    ApplySettings {
        rules: MergeRules::default(),
        dedup_window_ms: DAY_MS,
        retention_ms: 30 * DAY_MS,
        audit_records_max: crate::model::audit::AUDIT_RECORDS_DEFAULT_MAX,
        // These scenarios leap days in one entry to exercise expiry; the step bound has
        // its own test (`bounds_tests`).
        clock_step_ms_max: 400 * DAY_MS,
    }
}

fn open(dir: &Path, name: &str) -> Store {
    open_with(dir, name, settings())
}

pub(super) fn open_with(dir: &Path, name: &str, settings: ApplySettings) -> Store {
    Store::open_in(&dir.join(name), 16 << 20, settings).expect("open store")
}

use crate::model::validate::test_event as event;

/// A group of events proposed at `time_ms`.
pub(super) struct Batch {
    pub(super) time_ms: i64,
    pub(super) events: Vec<Event>,
}

pub(super) fn batch(time_ms: i64, events: Vec<Value>) -> Batch {
    Batch {
        time_ms,
        events: events.into_iter().map(|raw| event(raw, time_ms)).collect(),
    }
}

/// Commits `batch` as the next log entry, as a leader would.
pub(super) fn commit(store: &Store, batch: &Batch) -> Vec<EventOutcome> {
    direct::commit_events(store, batch.events.clone(), batch.time_ms).expect("commit")
}

/// The leader's dedup verdict on each event of `batch`.
pub(super) fn screen(store: &Store, batch: &Batch) -> Vec<dedup::Seen> {
    store
        .screen(
            batch
                .events
                .iter()
                .map(|e| (e.source.as_str(), e.message_id.as_str())),
        )
        .expect("screen")
}

/// Installs `snapshot` (exported from `from`, which has not moved since) into `into`, as a
/// follower installs one: the state, then the log's segments, then the dedup index built
/// from both.
pub(super) fn install_snapshot(into: &Store, from: &Store, snapshot: &[u8]) {
    into.import(&mut &snapshot[..]).expect("import");
    let staging = tempfile::tempdir().expect("tempdir");
    let last = from.log().last_index().expect("a log entry");
    let files = from
        .log()
        .checkpoint_to(staging.path(), last)
        .expect("checkpoint the log");
    into.log().install(&files, last).expect("install the log");
    into.rebuild_dedup_index().expect("rebuild the dedup index");
}

pub(super) fn profile(store: &Store, key: &str) -> crate::model::profile::Profile {
    let identity = Identity::parse_key(key, &Blocklist::default()).expect("key");
    store
        .reader()
        .profile_of(&identity)
        .expect("read")
        .unwrap_or_else(|| panic!("no profile for {key}"))
}

#[test]
fn anonymous_history_follows_the_customer_after_login() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), "a");
    commit(
        &store,
        &batch(
            T0,
            vec![
                json!({"type": "track", "messageId": "m1", "anonymousId": "a1", "event": "Product Viewed"}),
                json!({"type": "track", "messageId": "m2", "anonymousId": "a1", "event": "Product Added"}),
            ],
        ),
    );
    commit(
        &store,
        &batch(
            T0 + 1000,
            vec![
                json!({"type": "identify", "messageId": "m3", "userId": "u1", "anonymousId": "a1",
                        "traits": {"email": "ada@example.com", "name": "Ada"}}),
            ],
        ),
    );

    let by_user = profile(&store, "user_id:u1");
    assert_eq!(by_user, profile(&store, "anonymous_id:a1"));
    assert_eq!(by_user, profile(&store, "email:ada@example.com"));
    assert_eq!(by_user.event_count(), 3);
    assert_eq!(by_user.traits["name"].json, "\"Ada\"");
    let reader = store.reader();
    let page = reader.events(&by_user, None, 10, None).expect("events");
    let ids: Vec<&str> = page
        .items
        .iter()
        .map(|(_, e)| e.message_id.as_str())
        .collect();
    assert_eq!(ids, ["m3", "m2", "m1"], "newest first");
    let page = reader
        .events(&by_user, None, 10, Some("Product Added"))
        .expect("filtered");
    assert_eq!(page.items.len(), 1);
}

#[test]
fn merges_and_refusals_are_recorded_with_their_cause() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), "m");
    commit(
        &store,
        &batch(
            T0,
            vec![
                json!({"type": "page", "messageId": "p1", "anonymousId": "a1"}),
                json!({"type": "identify", "messageId": "i1", "userId": "u9", "traits": {"plan": "pro"}}),
                json!({"type": "identify", "messageId": "i2", "userId": "u9", "anonymousId": "a1"}),
                json!({"type": "identify", "messageId": "i3", "userId": "u2", "anonymousId": "a1"}),
            ],
        ),
    );
    let u9 = profile(&store, "user_id:u9");
    let u2 = profile(&store, "user_id:u2");
    assert_ne!(u9.id, u2.id, "a shared device never merges two known users");
    assert_eq!(u9.event_count(), 3);
    let reader = store.reader();
    let trail = reader.merges(&u9, None, 10).expect("merges").items;
    assert_eq!(trail.len(), 2, "one merge, one refusal: {trail:?}");
    assert!(
        matches!(&trail[0].1.action, MergeAction::Refused { rule, .. } if rule == "at most 1 user_id per profile")
    );
    assert_eq!(trail[0].1.message_id, "i3");
    assert!(matches!(&trail[1].1.action, MergeAction::Merged { into, .. } if *into == u9.id));
    assert_eq!(trail[1].1.message_id, "i2");
    let refused_on_other = reader.merges(&u2, None, 10).expect("merges").items;
    assert_eq!(
        refused_on_other.len(),
        1,
        "the refusal shows on both profiles"
    );
}

#[test]
fn duplicates_inside_the_window_are_skipped_and_expire_after_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), "d");
    let track = || json!({"type": "track", "messageId": "dup", "userId": "u1", "event": "E"});
    let first = commit(&store, &batch(T0, vec![track(), track()]));
    assert!(matches!(first[0], EventOutcome::Stored { .. }));
    assert!(
        matches!(first[1], EventOutcome::Duplicate { .. }),
        "same batch"
    );
    let retry = commit(&store, &batch(T0 + DAY_MS / 2, vec![track()]));
    assert!(
        matches!(retry[0], EventOutcome::Duplicate { .. }),
        "client retry"
    );
    // After the window, the messageId is forgotten (a filler batch advances the clock and
    // sweeps), so the same id is a new event.
    let filler = json!({"type": "track", "messageId": "f", "userId": "u2", "event": "E"});
    commit(&store, &batch(T0 + 2 * DAY_MS, vec![filler]));
    let later = commit(&store, &batch(T0 + 2 * DAY_MS, vec![track()]));
    assert!(matches!(later[0], EventOutcome::Stored { .. }));
    assert_eq!(profile(&store, "user_id:u1").event_count(), 2);
}

#[test]
fn retention_removes_old_events_but_keeps_profiles() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), "r");
    commit(
        &store,
        &batch(
            T0,
            vec![json!({"type": "track", "messageId": "old", "userId": "u1", "event": "E"})],
        ),
    );
    commit(
        &store,
        &batch(
            T0 + 31 * DAY_MS,
            vec![json!({"type": "track", "messageId": "new", "userId": "u1", "event": "E"})],
        ),
    );
    let profile = profile(&store, "user_id:u1");
    assert_eq!(profile.event_count(), 2, "lifetime counts stay");
    let page = store
        .reader()
        .events(&profile, None, 10, None)
        .expect("events");
    let ids: Vec<&str> = page
        .items
        .iter()
        .map(|(_, e)| e.message_id.as_str())
        .collect();
    assert_eq!(ids, ["new"]);
    assert_eq!(store.reader().counts().events_approx, 1);
}

/// The property replication depends on: the same log applied to empty state gives the
/// same state, byte for byte.
#[test]
fn replaying_the_log_reproduces_the_state_hash() {
    const CUSTOMERS: u64 = 120;
    // The "log": every batch applied to the original, in order.
    let mut log = Vec::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let original = open(dir.path(), "original");
    let mut rng = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    for round in 0..40 {
        let mut events = Vec::new();
        for i in 0..50 {
            // A customer's own identities, in random subsets; sometimes a device shared
            // with another customer (the wrong-merge trap).
            let c = next(CUSTOMERS);
            let anon = if next(20) == 0 {
                format!("a{}-0", next(CUSTOMERS))
            } else {
                format!("a{c}-{}", next(3))
            };
            let mut raw = match next(5) {
                0 => json!({"type": "identify", "userId": format!("u{c}"), "anonymousId": anon,
                            "traits": {"email": format!("c{c}@x.io"), "n": i}}),
                1 => json!({"type": "track", "anonymousId": anon,
                            "event": "Product Viewed", "properties": {"sku": next(9)}}),
                2 => json!({"type": "alias", "userId": format!("u{c}"), "previousId": anon}),
                3 => json!({"type": "track", "userId": format!("u{c}"), "event": "Order Completed",
                            "context": {"externalIds": [{"id": format!("s{c}"), "type": "shop"}]}}),
                _ => json!({"type": "track", "event": "Ticket Opened", "anonymousId": anon,
                            "context": {"traits": {"email": format!("c{c}@x.io"),
                                                   "phone": format!("+1555{c:04}")},
                                        "externalIds": [{"id": format!("s{c}"), "type": "shop"}]}}),
            };
            // Some retries of earlier ids, to exercise dedup.
            raw["messageId"] = json!(format!("m{}", next(round * 50 + i + 1)));
            events.push(raw);
        }
        let entry = batch(T0 + round as i64 * 3_600_000, events);
        commit(&original, &entry);
        log.push(entry);
        let reader = original.reader();
        if let Err(violation) = reader.check_invariants() {
            panic!("after round {round}: {violation}");
        }
    }
    // The replica applies the same log in chunks of 7 entries, as a follower catching up
    // would; indexes are the same.
    let replica = open(dir.path(), "replica");
    let last = original.log().last_index().expect("entries");
    let first = original.log().first_index().expect("entries");
    let commands: Vec<(u64, Command)> = (first..=last)
        .map(|index| {
            let record = original.log().read(index).expect("read").expect("record");
            let command = entry::command(&record)
                .expect("decodes")
                .expect("a command");
            (index, command)
        })
        .collect();
    for chunk in commands.chunks(7) {
        let entries: Vec<Committed<'_>> = chunk
            .iter()
            .map(|(index, command)| Committed {
                log_index: *index,
                command: Some(command),
                raft_state: Vec::new(),
            })
            .collect();
        replica.apply_committed(&entries).expect("replay");
    }
    let hash = |store: &Store| store.reader().state_hash().expect("hash");
    assert_eq!(hash(&original), hash(&replica));
    let reader = original.reader();
    let (profiles, events) = (
        reader.exact_len(PROFILES).expect("len"),
        reader.counts().events_approx,
    );
    assert!(
        profiles > 10 && events > 1000,
        "{profiles} profiles, {events} events"
    );
    // And the hash notices a difference.
    let extra = batch(
        T0 + 99 * 3_600_000,
        vec![json!({"type": "page", "messageId": "x-new", "userId": "u1"})],
    );
    commit(&replica, &extra);
    assert_ne!(hash(&original), hash(&replica));
}

#[test]
fn the_feed_records_events_merges_and_segment_changes_in_order() {
    use super::tables::FeedRecord;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), "feed");
    commit(
        &store,
        &batch(
            T0,
            vec![
                json!({"type": "page", "messageId": "a", "anonymousId": "anon-1"}),
                json!({"type": "identify", "messageId": "b", "userId": "u1"}),
                json!({"type": "identify", "messageId": "c", "userId": "u1", "anonymousId": "anon-1"}),
            ],
        ),
    );
    let reader = store.reader();
    let records: Vec<FeedRecord> = reader
        .feed_after(0, 100)
        .expect("feed")
        .into_iter()
        .map(|item| item.record)
        .collect();
    assert_eq!(
        records,
        [
            FeedRecord::Event {
                seq: event_seq(1, 0),
                profile: 1
            },
            FeedRecord::Event {
                seq: event_seq(1, 1),
                profile: 2
            },
            FeedRecord::Merged { into: 2, from: 1 },
            FeedRecord::Event {
                seq: event_seq(1, 2),
                profile: 2
            },
        ]
    );
    assert_eq!(reader.feed_head().expect("head"), 4);
    let after = reader.feed_after(2, 100).expect("feed");
    assert_eq!(after.len(), 2, "a cursor skips what was processed");
    assert!(after[1].event.is_some(), "event bodies come with the feed");
}

#[test]
fn ticks_move_the_clock_reach_the_feed_in_order_and_drive_retention() {
    use super::tables::FeedRecord;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), "ticks");
    commit(
        &store,
        &batch(
            T0,
            vec![
                json!({"type": "page", "messageId": "a", "anonymousId": "anon-1"}),
                json!({"type": "identify", "messageId": "b", "userId": "u1"}),
                json!({"type": "identify", "messageId": "c", "userId": "u1", "anonymousId": "anon-1"}),
            ],
        ),
    );
    let tick = |time_ms| direct::commit_command(&store, &Command::Tick { time_ms });
    tick(T0 + DAY_MS).expect("tick");
    let reader = store.reader();
    assert_eq!(reader.clock_ms().expect("clock"), T0 + DAY_MS);
    let first = reader.feed_after(0, 1).expect("feed");
    assert_eq!(
        first.len(),
        4,
        "a feed read never ends inside a log entry, whatever its limit"
    );
    assert!(
        first
            .iter()
            .all(|item| item.at_ms == T0 && item.log_index == 1)
    );
    let rest = reader.feed_after(4, 100).expect("feed");
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].record, FeedRecord::Tick);
    assert_eq!((rest[0].log_index, rest[0].at_ms), (2, T0 + DAY_MS));

    // Ticks alone carry the clock past retention (30 days here): the events expire with
    // no further event arriving.
    tick(T0 + 31 * DAY_MS).expect("tick");
    let reader = store.reader();
    assert_eq!(reader.counts().events_approx, 0, "retention ran on a tick");
    assert_eq!(
        reader.feed_after(0, 100).expect("feed")[0].record,
        FeedRecord::Tick
    );
}

#[test]
fn feed_seq_at_counts_records_per_time_window_and_alert_notes_round_trip() {
    use crate::model::command::AlertNote;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), "rate");
    assert_eq!(store.reader().feed_seq_at(T0).expect("empty"), 1);
    assert_eq!(store.reader().feed_start_ms().expect("empty"), None);
    // Entries of 3, 5 and 1 events (anonymous page views: no merges), a minute apart.
    let mut n = 0;
    for (minute, count) in [(0, 3), (1, 5), (2, 1)] {
        let events = (0..count)
            .map(|_| {
                n += 1;
                json!({"type": "page", "messageId": format!("m{n}"), "anonymousId": format!("a{n}")})
            })
            .collect();
        commit(&store, &batch(T0 + minute * 60_000, events));
    }
    let reader = store.reader();
    let at = |ms| reader.feed_seq_at(ms).expect("seq");
    assert_eq!(reader.feed_start_ms().expect("start"), Some(T0));
    assert_eq!(at(T0 - 1), 1, "everything is at or after T0");
    assert_eq!(at(T0 + 1) - at(T0), 3);
    assert_eq!(at(T0 + 60_001) - at(T0 + 1), 5);
    assert_eq!(at(T0 + 120_001) - at(T0 + 60_001), 1);
    assert_eq!(at(T0 + 999_999), 10, "one past the head");
    drop(reader);

    let note = AlertNote {
        key: "TandemIngestionDrop{}".into(),
        fired_ms: T0,
        notified_ms: T0 + 5,
    };
    direct::commit_command(&store, &Command::AlertNote(note.clone())).expect("note");
    let notes = store.reader().alert_notes().expect("notes");
    assert_eq!(notes.get(&note.key), Some(&note));
    assert_eq!(notes.len(), 1);
}

#[test]
fn the_state_hash_of_an_exported_snapshot_equals_the_live_state_hash() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), "hashed");
    let empty = {
        let mut out = Vec::new();
        store.export(&mut out).expect("export");
        Store::hash_snapshot_state(&mut out.as_slice()).expect("hash")
    };
    assert_eq!(empty, store.reader().state_hash().expect("hash"));
    commit(
        &store,
        &batch(
            T0,
            vec![
                json!({"type": "identify", "messageId": "a", "userId": "u1", "traits": {"email": "A@x.io"}}),
                json!({"type": "track", "messageId": "b", "userId": "u2", "event": "Order Completed"}),
            ],
        ),
    );
    let mut out = Vec::new();
    store.export(&mut out).expect("export");
    let from_stream = Store::hash_snapshot_state(&mut out.as_slice()).expect("hash");
    assert_eq!(from_stream, store.reader().state_hash().expect("hash"));
    assert_ne!(from_stream, empty);
    // A flipped byte is caught by the stream's checksum, not hashed into a wrong answer.
    out[20] ^= 1;
    assert!(Store::hash_snapshot_state(&mut out.as_slice()).is_err());
}

/// The filter of known identities (`super::known`) must never call a stored identity new:
/// if it did, a returning customer would get a second profile. It is rebuilt from the state
/// in the background on open and after a snapshot replaces the state; both are checked
/// here, once the filter is ready (until then every lookup goes to the store).
#[test]
fn returning_customers_keep_their_profiles_after_a_reopen_and_a_snapshot_install() {
    let dir = tempfile::tempdir().expect("tempdir");
    let users: Vec<String> = (0..50).map(|n| format!("u{n}")).collect();
    let visit = |time_ms: i64, tag: &str| {
        batch(
            time_ms,
            users
                .iter()
                .map(|u| json!({"type": "track", "messageId": format!("{tag}-{u}"), "userId": u, "anonymousId": format!("a-{u}"), "event": "Visit"}))
                .collect(),
        )
    };
    let ids = |store: &Store| -> Vec<u64> {
        users
            .iter()
            .map(|u| profile(store, &format!("user_id:{u}")).id)
            .collect()
    };
    let first = {
        let store = open(dir.path(), "a");
        commit(&store, &visit(T0, "first"));
        ids(&store)
    };
    // Reopened: the filter comes from a scan of the stored identities.
    let store = open(dir.path(), "a");
    wait_for_filters(&store);
    commit(&store, &visit(T0 + 1_000, "second"));
    assert_eq!(
        ids(&store),
        first,
        "a reopened store gave returning customers new profiles"
    );
    let newcomer = batch(
        T0 + 2_000,
        vec![
            json!({"type": "track", "messageId": "new-1", "userId": "newcomer", "event": "Visit"}),
        ],
    );
    commit(&store, &newcomer);
    let newcomer_id = profile(&store, "user_id:newcomer").id;
    assert!(!first.contains(&newcomer_id));
    let mut snapshot = Vec::new();
    store.export(&mut snapshot).expect("export");

    // Another store with customers of its own (and a longer log) takes the snapshot.
    let other = open(dir.path(), "b");
    for n in 0..5 {
        commit(
            &other,
            &batch(
                T0 + n,
                vec![
                    json!({"type": "track", "messageId": format!("v{n}"), "userId": format!("v{n}"), "event": "Visit"}),
                ],
            ),
        );
    }
    install_snapshot(&other, &store, &snapshot);
    wait_for_filters(&other);
    commit(&other, &visit(T0 + 3_000, "third"));
    assert_eq!(
        ids(&other),
        first,
        "after a snapshot install returning customers got new profiles"
    );
    for u in &users {
        let counts = profile(&other, &format!("user_id:{u}")).counts;
        assert_eq!(counts.iter().sum::<u64>(), 3, "{u}");
    }
    assert_eq!(profile(&other, "user_id:newcomer").id, newcomer_id);
}

/// Waits, up to 10 s, until the store's filter of recent dedup keys is ready.
/// Waits (up to 10 s) until the filters' builder has filled both filters.
fn wait_for_filters(store: &Store) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let ready = || {
        let known = store.known().expect("filter").is_some_and(|k| k.is_ready());
        let recent = store
            .recent()
            .expect("filter")
            .and_then(|filter| filter.view().expect("view"))
            .is_some();
        known && recent
    };
    while !ready() {
        assert!(
            std::time::Instant::now() < deadline,
            "the filters were not built within 10 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// The filter of recent dedup keys (`super::recent`) must never call a stored key new: a
/// retried batch would be stored twice. It is filled by a scan of the state after open and
/// after a snapshot install, and by apply afterwards; retries are screened after each, once
/// the filter is ready (before, the screen asks the store).
#[test]
fn retries_stay_duplicates_after_a_reopen_and_a_snapshot_install_with_the_dedup_filter() {
    let dir = tempfile::tempdir().expect("tempdir");
    let visit = |time_ms: i64, tag: &str| {
        batch(
            time_ms,
            (0..200)
                .map(|n| json!({"type": "track", "messageId": format!("{tag}-{n}"), "userId": format!("u{n}"), "event": "Visit"}))
                .collect(),
        )
    };
    let all_stored = |verdicts: Vec<dedup::Seen>| {
        verdicts
            .iter()
            .all(|seen| matches!(seen, dedup::Seen::Stored(_)))
    };
    let first = visit(T0, "first");
    {
        let store = open(dir.path(), "a");
        commit(&store, &first);
    }
    // Reopened: the filter comes from the builder's scan.
    let store = open(dir.path(), "a");
    wait_for_filters(&store);
    assert!(
        all_stored(screen(&store, &first)),
        "after a reopen a retry was screened as new"
    );
    // Applied after the filter was installed: apply inserted the keys.
    let second = visit(T0 + 1_000, "second");
    commit(&store, &second);
    assert!(all_stored(screen(&store, &second)));
    let fresh = screen(&store, &visit(T0 + 2_000, "fresh"));
    assert!(fresh.iter().all(|seen| *seen == dedup::Seen::New));
    let mut snapshot = Vec::new();
    store.export(&mut snapshot).expect("export");

    // Another store with keys of its own takes the snapshot.
    let other = open(dir.path(), "b");
    commit(&other, &visit(T0, "other"));
    wait_for_filters(&other);
    install_snapshot(&other, &store, &snapshot);
    wait_for_filters(&other);
    for batch in [&first, &second] {
        assert!(
            all_stored(screen(&other, batch)),
            "after a snapshot install a retry was screened as new"
        );
    }
    let (keys, _) = other.recent().unwrap().unwrap().load().unwrap();
    assert_eq!(
        keys, 400,
        "the install's filter holds the snapshot's keys only"
    );
}

/// A crash replays the whole journal before a node opens, so the journal is bounded even
/// when a small keyspace written with every batch (like `META`) never fills its memtable.
#[test]
fn the_journal_stays_bounded_while_a_small_keyspace_is_written_with_every_batch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = database_builder(dir.path(), 8 << 20)
        .expect("builder")
        .open()
        .expect("open");
    let big = db
        .keyspace("big", || {
            fjall::KeyspaceCreateOptions::default().max_memtable_size(8 << 20)
        })
        .expect("keyspace");
    let small = db
        .keyspace("small", fjall::KeyspaceCreateOptions::default)
        .expect("keyspace");
    let journals = || -> u64 {
        std::fs::read_dir(dir.path())
            .expect("read dir")
            .filter_map(Result::ok)
            .filter(|f| f.path().extension().is_some_and(|e| e == "jnl"))
            .map(|f| f.metadata().map_or(0, |m| m.len()))
            .sum()
    };
    // 4 × the bound of incompressible values, as one batch per value with a counter in
    // the small keyspace, the way apply writes `META`.
    let written = 4 * JOURNAL_BYTES_MAX;
    let value_bytes = 64 << 10;
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    let mut value = vec![0_u8; value_bytes];
    let mut largest = 0;
    for n in 0..written / value_bytes as u64 {
        for chunk in value.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
        }
        let mut batch = db.batch();
        batch.insert(&big, n.to_be_bytes(), value.as_slice());
        batch.insert(&small, "counter", n.to_be_bytes());
        batch.commit().expect("commit");
        largest = largest.max(journals());
    }
    // Two journal files of up to ~64 MB each (the one being written, and the one whose
    // stragglers are being flushed), and what is written before the next rotation.
    let bound = 3 * JOURNAL_BYTES_MAX;
    assert!(
        largest <= bound,
        "the journal reached {largest} bytes on disk (bound {bound}) after {written} bytes written"
    );
}

/// A crash while fjall created a database (its first journal written, its `version` marker
/// not yet) must not leave a database that can never open.
#[test]
fn a_database_whose_creation_was_interrupted_is_created_anew() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("db");
    std::fs::create_dir_all(path.join("keyspaces")).expect("keyspaces folder");
    std::fs::write(path.join("lock"), b"").expect("lock");
    std::fs::write(path.join("0.jnl"), b"FJL\x03").expect("journal");
    let open = |path: &std::path::Path| {
        let db = database_builder(path, 8 << 20)
            .expect("builder")
            .open()
            .expect("open");
        let keyspace = db
            .keyspace("data", fjall::KeyspaceCreateOptions::default)
            .expect("keyspace");
        (db, keyspace)
    };
    let (db, keyspace) = open(&path);
    keyspace.insert("k", "v").expect("insert");
    db.persist(fjall::PersistMode::SyncAll).expect("persist");
    drop(keyspace);
    drop(db);

    // A database that exists is recovered, not cleared.
    let (_db, keyspace) = open(&path);
    assert_eq!(
        keyspace.get("k").expect("get").as_deref(),
        Some(b"v".as_slice())
    );

    // A directory without a marker that holds something else is left for the open to report.
    let other = dir.path().join("other");
    std::fs::create_dir_all(&other).expect("dir");
    std::fs::write(other.join("0.jnl"), b"").expect("journal");
    std::fs::write(other.join("precious"), b"data").expect("file");
    assert!(
        database_builder(&other, 8 << 20)
            .expect("builder")
            .open()
            .is_err()
    );
    assert!(other.join("precious").exists());
}

#[test]
fn tables_are_compressed_from_the_first_flush() {
    // Index entries as apply writes them: what fjall's default left uncompressed in levels
    // 0 and 1 (see `data_block_compression`).
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), "a");
    let keyspace = &store.ks.profile_events;
    let mut raw = 0;
    for seq in 0..20_000_u64 {
        let key = tables::pair_key(seq % 500, event_seq(seq, 0));
        let value = tables::index_value("Order Completed", T0 + seq as i64);
        raw += key.len() + value.len();
        keyspace.insert(key, value).expect("insert");
    }
    keyspace.rotate_memtable_and_wait().expect("flush");
    let on_disk = keyspace.disk_space();
    assert!(
        on_disk > 0 && (on_disk as f64) < raw as f64 * 0.6,
        "{on_disk} bytes on disk for {raw} bytes of keys and values"
    );
}

/// Versions of keys held by a keyspace (fjall counts every version in its memtables).
fn versions(keyspace: &fjall::Keyspace) -> usize {
    keyspace.approximate_len()
}

#[test]
fn an_event_that_changes_only_activity_rewrites_the_activity_record_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let visit = |n: i64| {
        batch(
            T0 + n * 1_000,
            vec![
                json!({"type": "track", "messageId": format!("v{n}"), "userId": "u1", "event": "Visit"}),
            ],
        )
    };
    {
        let store = open(dir.path(), "a");
        commit(
            &store,
            &batch(
                T0,
                vec![
                    json!({"type": "identify", "messageId": "i1", "userId": "u1", "traits": {"plan": "pro"}}),
                ],
            ),
        );
        assert_eq!(
            (
                versions(&store.ks.profiles),
                versions(&store.ks.profile_activity)
            ),
            (1, 1)
        );
        // From the hot cache: seen times and counts change, nothing else.
        for n in 1..=3 {
            commit(&store, &visit(n));
        }
        assert_eq!(
            versions(&store.ks.profiles),
            1,
            "the profile record was rewritten"
        );
        assert_eq!(versions(&store.ks.profile_activity), 4);
        // A change to the traits rewrites the record.
        commit(
            &store,
            &batch(
                T0 + 10_000,
                vec![
                    json!({"type": "identify", "messageId": "i2", "userId": "u1", "traits": {"plan": "max"}}),
                ],
            ),
        );
        assert_eq!(versions(&store.ks.profiles), 2);
        store.reader().check_invariants().expect("invariants");
    }
    // Reopened: the profile comes from the store, not the hot cache, and still is not
    // rewritten by an event that changes only its activity.
    let store = open(dir.path(), "a");
    let before = versions(&store.ks.profiles);
    commit(&store, &visit(20));
    assert_eq!(versions(&store.ks.profiles), before);
    let read = profile(&store, "user_id:u1");
    assert_eq!(read.event_count(), 6);
    assert_eq!(read.last_seen_ms, T0 + 20_000);
    assert_eq!(read.traits["plan"].json, "\"max\"");
    store.reader().check_invariants().expect("invariants");
}

#[test]
fn a_profile_record_of_data_format_4_is_read_and_rewritten_in_the_current_layout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), "a");
    commit(
        &store,
        &batch(
            T0,
            vec![
                json!({"type": "identify", "messageId": "i1", "userId": "u1", "traits": {"plan": "pro"}}),
                json!({"type": "track", "messageId": "t1", "userId": "u1", "event": "Visit"}),
            ],
        ),
    );
    let current = profile(&store, "user_id:u1");
    let hash_before = store.reader().state_hash().expect("hash");
    // What format 4 stored: the whole profile (activity included) in layout 2, and no
    // activity record.
    let mut layout_2 = vec![0_u8, 2];
    layout_2.extend(tables::encode(&current));
    let key = tables::u64_bytes(current.id);
    store.ks.profiles.insert(key, layout_2).expect("insert");
    store.ks.profile_activity.remove(key).expect("remove");
    drop(store);

    let store = open(dir.path(), "a");
    assert_eq!(
        profile(&store, "user_id:u1"),
        current,
        "read as format 4 wrote it"
    );
    assert_ne!(store.reader().state_hash().expect("hash"), hash_before);
    commit(
        &store,
        &batch(
            T0 + 1_000,
            vec![json!({"type": "track", "messageId": "t2", "userId": "u1", "event": "Visit"})],
        ),
    );
    let record = store.ks.profiles.get(key).expect("get").expect("record");
    assert!(
        tables::is_current_layout(&record),
        "rewritten at its next change"
    );
    let read = profile(&store, "user_id:u1");
    assert_eq!(read.event_count(), 3);
    assert_eq!(read.first_seen_ms, current.first_seen_ms);
    assert_eq!(read.last_seen_ms, T0 + 1_000);
    store.reader().check_invariants().expect("invariants");
}

#[test]
fn a_state_without_activity_records_hashes_as_format_4_did() {
    // The state hash of an empty store, as data format 4 computed it: each of its nine
    // keyspaces' name and a zero count. Backups of format 4 record such hashes, and a
    // restore compares them with the state it imported.
    let mut hasher = blake3::Hasher::new();
    for name in &tables::STATE_KEYSPACES[..tables::STATE_KEYSPACES_FORMAT_4] {
        hasher.update(name.as_bytes());
        hasher.update(&0_u64.to_le_bytes());
    }
    let format_4 = hasher.finalize().to_hex().to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), "a");
    assert_eq!(store.reader().state_hash().expect("hash"), format_4);
    let mut snapshot = Vec::new();
    store.export(&mut snapshot).expect("export");
    let from_stream =
        Store::hash_snapshot_state(&mut snapshot.as_slice()).expect("hash the stream");
    assert_eq!(from_stream, format_4);
}
