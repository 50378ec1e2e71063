//! The built-in rules against hand-made inputs: each fires on what it names and stays
//! quiet otherwise.

use super::*;

fn quiet() -> Inputs {
    Inputs {
        node_id: 1,
        leader: Some(1),
        last_log_index: 100,
        peers: vec![Peer {
            id: 2,
            matched_index: 100,
            heartbeat_age_ms: Some(50),
        }],
        ingest: Verdict::Judged {
            current_per_sec: 100.0,
            baseline_per_sec: 100.0,
        },
        leader_changes: 0,
        requests: [1000, 10, 0],
        fsyncs: (100, 0.1),
        disk_free_ratio: Some(0.5),
        services: vec![ServiceHealth {
            name: "traits".into(),
            status: "ok".into(),
            lag: 0,
        }],
        certificates: vec![("peer", 300.0)],
        archive: None,
        backup: BackupHealth {
            last_success_s: 1_000,
            last_failure_s: 500,
            period_s: 86_400,
            stale_for_s: Some(3_600),
            verify_last_success_s: 900,
            verify_last_failure_s: 0,
        },
    }
}

fn firing(inputs: &Inputs) -> Vec<&'static str> {
    let rules = configured(&AlertsConfig::default()).expect("defaults");
    rules
        .iter()
        .filter(|rule| !rule.measure(inputs).is_empty())
        .map(|rule| rule.spec.name)
        .collect()
}

#[test]
fn a_healthy_node_trips_no_rule_and_each_fault_trips_its_own() {
    assert_eq!(firing(&quiet()), Vec::<&str>::new());
    type Fault = fn(&mut Inputs);
    let cases: [(&str, Fault); 15] = [
        ("no_leader", |i| i.leader = None),
        ("leader_churn", |i| i.leader_changes = 4),
        ("node_unreachable", |i| i.peers[0].heartbeat_age_ms = None),
        ("follower_lag", |i| i.last_log_index = 50_000),
        ("ingestion_drop", |i| {
            i.ingest = Verdict::Judged {
                current_per_sec: 10.0,
                baseline_per_sec: 100.0,
            }
        }),
        ("ingestion_spike", |i| {
            i.ingest = Verdict::Judged {
                current_per_sec: 500.0,
                baseline_per_sec: 100.0,
            }
        }),
        ("server_errors", |i| i.requests = [1000, 0, 60]),
        ("client_errors", |i| i.requests = [1000, 600, 0]),
        ("fsync_slow", |i| i.fsyncs = (10, 2.0)),
        ("disk_space_low", |i| i.disk_free_ratio = Some(0.05)),
        ("service_degraded", |i| i.services[0].status = "hung".into()),
        ("certificate_expiry", |i| i.certificates[0].1 = 3.5),
        ("backup_failed", |i| i.backup.last_failure_s = 1_001),
        ("backup_stale", |i| {
            i.backup.stale_for_s = Some(86_400 + 3_601)
        }),
        ("backup_verify_failed", |i| {
            i.backup.verify_last_failure_s = 950
        }),
    ];
    for (rule, fault) in cases {
        let mut inputs = quiet();
        fault(&mut inputs);
        assert_eq!(firing(&inputs), vec![rule], "{rule}");
    }
}

#[test]
fn overrides_change_thresholds_and_unknown_names_are_refused() {
    let mut config = AlertsConfig::default();
    config.rules.insert(
        "disk_space_low".into(),
        crate::config::RuleOverride {
            threshold: Some(0.9),
            ..Default::default()
        },
    );
    config.rules.insert(
        "no_leader".into(),
        crate::config::RuleOverride {
            enabled: Some(false),
            ..Default::default()
        },
    );
    let rules = configured(&config).expect("known names");
    assert!(rules.iter().all(|r| r.spec.name != "no_leader"));
    let mut inputs = quiet();
    inputs.leader = None;
    assert_eq!(firing_with(&rules, &inputs), vec!["disk_space_low"]);
    config
        .rules
        .insert("no_such_rule".into(), Default::default());
    let error = configured(&config).err().expect("refused");
    assert!(
        error.contains("no_such_rule") && error.contains("ingestion_drop"),
        "{error}"
    );
}

fn firing_with(rules: &[Rule], inputs: &Inputs) -> Vec<&'static str> {
    rules
        .iter()
        .filter(|rule| !rule.measure(inputs).is_empty())
        .map(|rule| rule.spec.name)
        .collect()
}

#[test]
fn backup_staleness_counts_only_on_the_leader_with_a_schedule() {
    let mut inputs = quiet();
    inputs.backup.stale_for_s = Some(86_400 + 3_599);
    assert!(firing(&inputs).is_empty(), "within the grace");
    inputs.backup.stale_for_s = None;
    assert!(firing(&inputs).is_empty(), "not the leader");
    inputs.backup.stale_for_s = Some(10 * 86_400);
    inputs.backup.period_s = 0;
    assert!(firing(&inputs).is_empty(), "no schedule");
}

#[test]
fn too_few_requests_are_not_an_error_share() {
    let mut inputs = quiet();
    inputs.requests = [10, 0, 10];
    assert!(firing(&inputs).is_empty());
}
