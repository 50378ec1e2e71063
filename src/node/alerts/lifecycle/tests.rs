//! The lifecycle as scenarios: time is passed in, so `for` and repeat intervals are
//! tested without waiting.

use std::collections::BTreeMap;

use super::*;
use crate::config::{AlertsConfig, RuleOverride};
use crate::node::alerts::rules::{Rule, configured};

const T0: i64 = 1_764_000_000_000;
const REPEAT_MS: u64 = 3_600_000;

/// The default rules with `no_leader` (node) and `ingestion_drop` (cluster) given a `for`
/// of 30 s.
fn rules() -> Vec<Rule> {
    let mut config = AlertsConfig::default();
    for name in ["no_leader", "ingestion_drop"] {
        config.rules.insert(
            name.into(),
            RuleOverride {
                for_ms: Some(30_000),
                ..Default::default()
            },
        );
    }
    configured(&config).expect("rules")
}

fn hit(value: f64) -> Hit {
    Hit {
        labels: BTreeMap::new(),
        value: Some(value),
        description: "test".into(),
    }
}

/// One step where `names` hold (one hit each) and nothing else does.
fn step(
    evaluator: &mut Evaluator,
    rules: &[Rule],
    at_ms: i64,
    names: &[&str],
    leading: bool,
    notes: &BTreeMap<String, AlertNote>,
) -> Vec<Notification> {
    let hits = rules
        .iter()
        .map(|r| {
            let hits = if names.contains(&r.spec.name) {
                vec![hit(1.0)]
            } else {
                Vec::new()
            };
            (r, hits)
        })
        .collect();
    evaluator.step(at_ms, hits, leading, notes)
}

fn states(evaluator: &Evaluator) -> Vec<(String, State)> {
    evaluator
        .active()
        .map(|a| (a.name.clone(), a.state))
        .collect()
}

#[test]
fn pending_then_firing_after_for_then_repeat_then_resolved_into_history() {
    let rules = rules();
    let none = BTreeMap::new();
    let mut e = Evaluator::new(7, REPEAT_MS, 10);
    let held = ["no_leader"];

    assert!(step(&mut e, &rules, T0, &held, false, &none).is_empty());
    assert_eq!(states(&e), vec![("TandemNoLeader".into(), State::Pending)]);
    assert!(step(&mut e, &rules, T0 + 29_999, &held, false, &none).is_empty());

    let fired = step(&mut e, &rules, T0 + 30_000, &held, false, &none);
    assert_eq!(fired.len(), 1);
    let alert = &fired[0].alert;
    assert_eq!(alert.state, State::Firing);
    assert_eq!(alert.fired_ms, Some(T0 + 30_000));
    assert_eq!(alert.active_since_ms, T0);
    assert_eq!(alert.labels["node"], "7");
    assert_eq!(alert.labels["severity"], "critical");
    assert!(alert.annotations["runbook"].contains("/v1/admin/cluster"));
    assert_eq!(
        fired[0].note, None,
        "a node alert is not recorded in the log"
    );

    // Still firing: quiet until the repeat interval is up, then once again.
    let repeat = T0 + 30_000 + REPEAT_MS as i64;
    assert!(step(&mut e, &rules, repeat - 1, &held, false, &none).is_empty());
    let again = step(&mut e, &rules, repeat, &held, false, &none);
    assert_eq!(again.len(), 1);
    assert_eq!(
        again[0].alert.fired_ms,
        Some(T0 + 30_000),
        "startsAt is kept"
    );
    assert!(step(&mut e, &rules, repeat + 1, &held, false, &none).is_empty());

    let resolved = step(&mut e, &rules, repeat + 5_000, &[], false, &none);
    assert_eq!(resolved.len(), 1);
    assert_eq!(resolved[0].alert.state, State::Resolved);
    assert_eq!(resolved[0].alert.resolved_ms, Some(repeat + 5_000));
    assert!(states(&e).is_empty());
    let history: Vec<_> = e.history().collect();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].state, State::Resolved);
}

#[test]
fn a_condition_shorter_than_for_notifies_nothing() {
    let rules = rules();
    let none = BTreeMap::new();
    let mut e = Evaluator::new(1, REPEAT_MS, 10);
    assert!(step(&mut e, &rules, T0, &["no_leader"], false, &none).is_empty());
    assert!(step(&mut e, &rules, T0 + 10_000, &[], false, &none).is_empty());
    assert!(states(&e).is_empty());
    assert_eq!(e.history().count(), 0, "a pending alert leaves no history");
    // It starts over: `for` counts from the new start.
    assert!(step(&mut e, &rules, T0 + 20_000, &["no_leader"], false, &none).is_empty());
    assert!(step(&mut e, &rules, T0 + 40_000, &["no_leader"], false, &none).is_empty());
    assert_eq!(
        step(&mut e, &rules, T0 + 50_000, &["no_leader"], false, &none).len(),
        1
    );
}

#[test]
fn cluster_rules_run_only_on_the_leader_and_carry_the_note_to_commit() {
    let rules = rules();
    let none = BTreeMap::new();
    let mut follower = Evaluator::new(2, REPEAT_MS, 10);
    for t in [T0, T0 + 60_000] {
        assert!(step(&mut follower, &rules, t, &["ingestion_drop"], false, &none).is_empty());
    }
    assert!(states(&follower).is_empty());

    let mut leader = Evaluator::new(1, REPEAT_MS, 10);
    step(&mut leader, &rules, T0, &["ingestion_drop"], true, &none);
    let fired = step(
        &mut leader,
        &rules,
        T0 + 30_000,
        &["ingestion_drop"],
        true,
        &none,
    );
    assert_eq!(fired.len(), 1);
    assert!(!fired[0].alert.labels.contains_key("node"));
    assert_eq!(
        fired[0].note,
        Some(AlertNote {
            key: "TandemIngestionDrop{severity=\"critical\"}".into(),
            fired_ms: T0 + 30_000,
            notified_ms: T0 + 30_000,
        })
    );
    // Its note did not commit: the next evaluation notifies again.
    leader.unnotify(&fired[0].alert.key());
    assert_eq!(
        step(
            &mut leader,
            &rules,
            T0 + 45_000,
            &["ingestion_drop"],
            true,
            &none
        )
        .len(),
        1
    );
}

#[test]
fn after_a_failover_the_new_leader_neither_repeats_nor_forgets() {
    let rules = rules();
    let key = "TandemIngestionDrop{severity=\"critical\"}".to_owned();
    let notified_at = T0 + 30_000;
    let notes = BTreeMap::from([(
        key.clone(),
        AlertNote {
            key: key.clone(),
            fired_ms: notified_at,
            notified_ms: notified_at,
        },
    )]);

    // The condition still holds on the new leader: adopted as firing, not re-notified
    // until the repeat interval since the old leader's notification.
    let mut new_leader = Evaluator::new(2, REPEAT_MS, 10);
    let t = notified_at + 20_000;
    assert!(
        step(
            &mut new_leader,
            &rules,
            t,
            &["ingestion_drop"],
            true,
            &notes
        )
        .is_empty()
    );
    let adopted: Vec<_> = new_leader.active().collect();
    assert_eq!(adopted[0].state, State::Firing);
    assert_eq!(adopted[0].fired_ms, Some(notified_at));
    let due = notified_at + REPEAT_MS as i64;
    assert!(
        step(
            &mut new_leader,
            &rules,
            due - 1,
            &["ingestion_drop"],
            true,
            &notes
        )
        .is_empty()
    );
    let repeated = step(
        &mut new_leader,
        &rules,
        due,
        &["ingestion_drop"],
        true,
        &notes,
    );
    assert_eq!(repeated.len(), 1);
    assert_eq!(repeated[0].alert.fired_ms, Some(notified_at));

    // The condition ended with the old leader: the new one sends the resolution, once
    // its note is committed.
    let mut other = Evaluator::new(3, REPEAT_MS, 10);
    let resolved = step(&mut other, &rules, t, &[], true, &notes);
    assert_eq!(resolved.len(), 1);
    assert_eq!(resolved[0].alert.state, State::Resolved);
    assert_eq!(resolved[0].alert.key(), key);
    assert_eq!(resolved[0].note.as_ref().map(|n| n.notified_ms), Some(0));
    let committed = BTreeMap::from([(key.clone(), resolved[0].note.clone().expect("note"))]);
    assert!(step(&mut other, &rules, t + 15_000, &[], true, &committed).is_empty());

    // A follower never resolves what the leader owns.
    let mut follower = Evaluator::new(4, REPEAT_MS, 10);
    assert!(step(&mut follower, &rules, t, &[], false, &notes).is_empty());
}

#[test]
fn losing_leadership_hands_cluster_alerts_over_silently() {
    let rules = rules();
    let none = BTreeMap::new();
    let mut e = Evaluator::new(1, REPEAT_MS, 10);
    step(&mut e, &rules, T0, &["ingestion_drop"], true, &none);
    assert_eq!(
        step(
            &mut e,
            &rules,
            T0 + 30_000,
            &["ingestion_drop"],
            true,
            &none
        )
        .len(),
        1
    );
    assert!(
        step(
            &mut e,
            &rules,
            T0 + 45_000,
            &["ingestion_drop"],
            false,
            &none
        )
        .is_empty()
    );
    assert!(states(&e).is_empty());
    assert_eq!(e.history().count(), 0);
}

#[test]
fn history_is_bounded_newest_first() {
    let rules = rules();
    let none = BTreeMap::new();
    let mut e = Evaluator::new(1, REPEAT_MS, 3);
    let mut t = T0;
    for _ in 0..5 {
        step(&mut e, &rules, t, &["no_leader"], false, &none);
        step(&mut e, &rules, t + 30_000, &["no_leader"], false, &none);
        step(&mut e, &rules, t + 31_000, &[], false, &none);
        t += 100_000;
    }
    let resolved: Vec<_> = e.history().map(|a| a.resolved_ms).collect();
    assert_eq!(
        resolved,
        vec![
            Some(t - 100_000 + 31_000),
            Some(t - 200_000 + 31_000),
            Some(t - 300_000 + 31_000)
        ]
    );
}

#[test]
fn keys_name_the_alert_and_its_labels() {
    let labels = BTreeMap::from([
        ("alertname".to_owned(), "TandemNodeUnreachable".to_owned()),
        ("peer".to_owned(), "3".to_owned()),
        ("severity".to_owned(), "critical".to_owned()),
    ]);
    let key = alert_key(&labels);
    assert_eq!(
        key,
        "TandemNodeUnreachable{peer=\"3\",severity=\"critical\"}"
    );
    let mut parsed = parse_key_labels(&key);
    parsed.insert("alertname".into(), "TandemNodeUnreachable".into());
    assert_eq!(parsed, labels);
}
