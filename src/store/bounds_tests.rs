//! Scenario tests of the bounds the state keeps whatever the input: identities and audit
//! records per profile, trait keys, timestamp ties and the state clock — through real
//! fjall databases and a real log, as a leader commits.

use serde_json::{Value, json};

use super::apply::ApplySettings;
use super::tables::{
    MERGES, MergeAction, MergeRecord, encode_activity, encode_profile, is_current_layout,
    read_profile,
};
use super::tests::{DAY_MS, T0, batch, commit, open_with, profile, settings};
use crate::model::identity::{IdKind, Identity};
use crate::model::profile::{Profile, TRAITS_MAX, TraitValue};

/// One identify of `user` carrying 16 external ids of types never seen before.
fn explosive(user: &str, n: usize) -> Value {
    let ids: Vec<Value> = (0..16)
        .map(|k| json!({"type": format!("t{n}x{k}"), "id": format!("v{n}x{k}")}))
        .collect();
    json!({"type": "identify", "messageId": format!("x{n}"), "userId": user,
           "context": {"externalIds": ids}})
}

fn refusal_rules(trail: &[(u64, MergeRecord)]) -> Vec<&str> {
    trail
        .iter()
        .filter_map(|(_, record)| match &record.action {
            MergeAction::Refused { rule, .. } => Some(rule.as_str()),
            _ => None,
        })
        .collect()
}

#[test]
fn identity_explosion_stays_within_the_caps_with_one_refusal_recorded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_with(dir.path(), "x", settings());
    for round in 0..5 {
        let events = (0..20).map(|i| explosive("u1", round * 20 + i)).collect();
        commit(&store, &batch(T0 + round as i64, events));
    }
    let held = profile(&store, "user_id:u1");
    let types = held
        .identities
        .iter()
        .filter(|i| matches!(i.kind, IdKind::External(_)))
        .count();
    assert_eq!(types, 16, "the first event's 16 types fill the cap of 16");
    assert_eq!(held.identities.len(), 17);
    let trail = store
        .reader()
        .merges(&held, None, 1_000)
        .expect("merges")
        .items;
    assert_eq!(
        refusal_rules(&trail),
        ["at most 16 external id types per profile"],
        "one record for 99 events × 16 refusals"
    );
    assert_eq!(held.audit.refusals_unrecorded, 99 * 16 - 1);
}

#[test]
fn the_total_identity_cap_holds_across_classes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut tight = settings();
    tight.rules.identities_max = 10;
    let store = open_with(dir.path(), "t", tight);
    let events = (0..50)
        .map(|n| {
            json!({"type": "page", "messageId": format!("p{n}"), "userId": "u1",
                        "anonymousId": format!("device-{n}")})
        })
        .collect();
    commit(&store, &batch(T0, events));
    let held = profile(&store, "user_id:u1");
    assert_eq!(held.identities.len(), 10);
    assert_eq!(held.event_count(), 50, "events are kept, links are refused");
    let trail = store
        .reader()
        .merges(&held, None, 100)
        .expect("merges")
        .items;
    assert_eq!(refusal_rules(&trail), ["at most 10 identities per profile"]);
}

/// A shared device refused against many users: every (rule, other profile) pair is a kind
/// of its own, but the device's profile keeps only the last `audit_records_max` records.
#[test]
fn audit_records_per_profile_keep_the_last_and_count_the_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let capped = ApplySettings {
        audit_records_max: 3,
        ..settings()
    };
    let store = open_with(dir.path(), "a", capped);
    let mut events = vec![json!({"type": "page", "messageId": "u0", "userId": "u0",
                                 "anonymousId": "shared"})];
    for n in 1..=10 {
        for repeat in 0..3 {
            events.push(
                json!({"type": "page", "messageId": format!("u{n}r{repeat}"),
                               "userId": format!("u{n}"), "anonymousId": "shared"}),
            );
        }
    }
    commit(&store, &batch(T0, events));
    let owner = profile(&store, "anonymous_id:shared");
    let reader = store.reader();
    let trail = reader.merges(&owner, None, 100).expect("merges").items;
    assert_eq!(trail.len(), 3, "{trail:?}");
    let last: Vec<&str> = trail.iter().map(|(_, r)| r.message_id.as_str()).collect();
    assert_eq!(
        last,
        ["u10r0", "u9r0", "u8r0"],
        "the newest three, newest first"
    );
    assert_eq!(owner.audit.records_dropped, 7);
    assert_eq!(owner.audit.kept.len(), 3);
    assert_eq!(
        owner.audit.refusals_unrecorded, 20,
        "each user's two repeats"
    );
    // The merges keyspace really holds 3 records for the device's profile, and one for
    // each refused user (its first refusal; repeats counted).
    assert_eq!(reader.exact_len(MERGES).expect("len"), 3 + 10);
    let u5 = profile(&store, "user_id:u5");
    assert_eq!(
        reader.merges(&u5, None, 100).expect("merges").items.len(),
        1
    );
    assert_eq!(u5.audit.refusals_unrecorded, 2);
}

#[test]
fn trait_overflow_is_dropped_counted_and_recorded_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_with(dir.path(), "o", settings());
    let mut events = Vec::new();
    for n in 0..3 {
        let traits: serde_json::Map<String, Value> = (0..TRAITS_MAX)
            .map(|k| (format!("e{n}k{k:03}"), json!(k)))
            .collect();
        events.push(
            json!({"type": "identify", "messageId": format!("t{n}"), "userId": "u1",
                           "traits": traits}),
        );
    }
    commit(&store, &batch(T0, events));
    let held = profile(&store, "user_id:u1");
    assert_eq!(held.traits.len(), TRAITS_MAX);
    assert!(
        held.traits.keys().all(|k| k.starts_with("e0")),
        "the first event's keys"
    );
    assert_eq!(held.audit.traits_dropped, 2 * TRAITS_MAX as u64);
    let trail = store
        .reader()
        .merges(&held, None, 100)
        .expect("merges")
        .items;
    assert_eq!(trail.len(), 1, "{trail:?}");
    let MergeAction::TraitsDropped { keys, rule, .. } = &trail[0].1.action else {
        panic!("expected a traits_dropped record: {trail:?}");
    };
    assert_eq!(
        rule,
        &format!("at most {TRAITS_MAX} trait keys per profile")
    );
    assert_eq!(keys.len(), 8);
    assert_eq!(keys[0], "e1k000");
}

#[test]
fn same_timestamp_identifies_in_one_batch_go_to_log_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_with(dir.path(), "s", settings());
    let at = "2025-11-24T10:00:00.000Z";
    let identify = |id: &str, plan: &str| {
        json!({"type": "identify", "messageId": id, "userId": "u1", "timestamp": at,
               "traits": {"plan": plan}})
    };
    commit(
        &store,
        &batch(T0, vec![identify("i1", "free"), identify("i2", "pro")]),
    );
    assert_eq!(profile(&store, "user_id:u1").traits["plan"].json, "\"pro\"");
    // And in the next entry, an equal timestamp again goes to the later event.
    commit(&store, &batch(T0 + 1, vec![identify("i3", "team")]));
    assert_eq!(
        profile(&store, "user_id:u1").traits["plan"].json,
        "\"team\""
    );
}

#[test]
fn one_entry_moves_the_state_clock_by_at_most_a_step() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hour = 3_600_000;
    let stepped = ApplySettings {
        clock_step_ms_max: hour,
        ..settings()
    };
    let store = open_with(dir.path(), "c", stepped);
    let track = |id: &str| json!({"type": "track", "messageId": id, "userId": "u1", "event": "E"});
    commit(&store, &batch(T0, vec![track("a")]));
    assert_eq!(store.reader().clock_ms().expect("clock"), T0);
    // A leader whose clock leapt a year: one step only, and the dedup entry of "a" (a day
    // window) is still alive.
    commit(&store, &batch(T0 + 365 * DAY_MS, vec![track("b")]));
    assert_eq!(store.reader().clock_ms().expect("clock"), T0 + hour);
    assert!(
        store
            .reader()
            .dedup_seq("web", "a")
            .expect("dedup")
            .is_some()
    );
    commit(&store, &batch(T0 + hour + 5, vec![track("c")]));
    assert_eq!(store.reader().clock_ms().expect("clock"), T0 + hour + 5);
}

/// A profile record written before trait seqs and audit bookkeeping still reads.
#[test]
fn profiles_in_the_first_layout_are_read_and_upgraded() {
    #[derive(serde::Serialize)]
    struct Layout1 {
        id: u64,
        identities: Vec<Identity>,
        traits: std::collections::BTreeMap<String, (String, i64)>,
        first_seen_ms: i64,
        last_seen_ms: i64,
        counts: [u64; 6],
        merged_ids: Vec<u64>,
    }
    for id in [1, 127, 128, 300, u64::MAX] {
        let old = Layout1 {
            id,
            identities: vec![Identity {
                kind: IdKind::UserId,
                value: "u1".into(),
            }],
            traits: [("plan".to_owned(), ("\"pro\"".to_owned(), 42))].into(),
            first_seen_ms: 1,
            last_seen_ms: 2,
            counts: [1, 0, 0, 0, 0, 0],
            merged_ids: vec![7],
        };
        let bytes = postcard::to_stdvec(&old).expect("encode");
        let read = read_profile(&bytes, None).expect("decode layout 1");
        assert!(!is_current_layout(&bytes), "rewritten at the next change");
        let mut want = Profile::new(id, old.identities.clone());
        want.traits.insert(
            "plan".into(),
            TraitValue {
                json: "\"pro\"".into(),
                timestamp_ms: 42,
                seq: 0,
            },
        );
        (want.first_seen_ms, want.last_seen_ms) = (1, 2);
        want.counts[0] = 1;
        want.merged_ids = vec![7];
        assert_eq!(read, want, "profile id {id}");
        let mut written = read.clone();
        let record = encode_profile(&mut written);
        assert_eq!(written, read, "encoding leaves the profile as it was");
        assert!(is_current_layout(&record));
        let activity = encode_activity(&read);
        assert_eq!(
            read_profile(&record, Some(&activity)).expect("round trip"),
            read
        );
        assert!(
            read_profile(&record, None).is_err(),
            "a current record without its activity is refused, not read with zero counts"
        );
    }
}

#[test]
fn a_traits_dropped_record_names_a_bounded_few_keys() {
    let long = "é".repeat(40); // 80 bytes, 2 per character
    let dropped: Vec<String> = std::iter::once(long)
        .chain((0..20).map(|k| format!("k{k}")))
        .collect();
    let MergeAction::TraitsDropped { keys, .. } =
        MergeAction::traits_dropped(1, &dropped, "rule".into())
    else {
        panic!("a traits_dropped action");
    };
    assert_eq!(keys.len(), super::tables::DROPPED_KEYS_RECORDED_MAX);
    assert_eq!(
        keys[0],
        "é".repeat(32),
        "cut at a character boundary within 64 bytes"
    );
    assert_eq!(keys[1], "k0");
}
