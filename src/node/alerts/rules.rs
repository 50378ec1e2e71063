//! The shipped rules: each a pure function from one evaluation's [`Inputs`] to the alerts
//! whose condition holds now, with its defaults (`for`, threshold), scope, severity and
//! runbook line. `deploy/prometheus/tandem.rules.yml` states the same rules over the
//! metrics, and `docs/monitoring.md` documents both.

use std::collections::BTreeMap;

use serde::Serialize;

use super::anomaly::Verdict;
use crate::config::AlertsConfig;

/// Where a rule is evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// On every node, about that node (labelled with `node`).
    Node,
    /// On the leader only, about the cluster; notifications are recorded in the replicated
    /// state so that a new leader does not repeat them.
    Cluster,
}

/// How urgent an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Look soon.
    Warning,
    /// Look now.
    Critical,
}

impl Severity {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// A follower as the leader sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Peer {
    /// Its node id.
    pub id: u64,
    /// Last log index known replicated to it.
    pub matched_index: u64,
    /// Time since it last acknowledged a heartbeat or append, ms; `None` if never.
    pub heartbeat_age_ms: Option<u64>,
}

/// A CDP service's health.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceHealth {
    /// Its name.
    pub name: String,
    /// Its status (`ok`, `slow`, `hung`, `crashed`, `lagging`…).
    pub status: String,
    /// Feed entries behind.
    pub lag: u64,
}

/// Continuous archiving as one node sees it (`crate::node::archive`).
#[derive(Debug, Clone, PartialEq)]
pub struct ArchiveHealth {
    /// Seconds committed entries have waited for the archive (the recovery point).
    pub unarchived_secs: f64,
    /// `backup.archive_interval_secs`.
    pub interval_secs: f64,
    /// Bytes of log held for the archive, and their bound.
    pub backlog_bytes: f64,
    pub backlog_limit_bytes: f64,
}

/// Everything one evaluation looks at, gathered by the node (see `inputs.rs`).
#[derive(Debug, Clone, PartialEq)]
pub struct Inputs {
    /// This node's id.
    pub node_id: u64,
    /// The leader this node knows, if any.
    pub leader: Option<u64>,
    /// This node's last log index (the leader's is what followers are measured against).
    pub last_log_index: u64,
    /// On the leader: its followers.
    pub peers: Vec<Peer>,
    /// The ingestion-rate detector's verdict.
    pub ingest: Verdict,
    /// Leader changes this node observed within the rate window.
    pub leader_changes: u64,
    /// Requests answered within the rate window: all, 4xx, 5xx.
    pub requests: [u64; 3],
    /// Log fsyncs within the rate window: count and total seconds.
    pub fsyncs: (u64, f64),
    /// Free share of the data dir's filesystem (0..1), if known.
    pub disk_free_ratio: Option<f64>,
    /// The CDP services.
    pub services: Vec<ServiceHealth>,
    /// Continuous archiving on this node, if on.
    pub archive: Option<ArchiveHealth>,
    /// Days left before each TLS listener's certificate (or the cluster CA) expires:
    /// (`client` or `peer`, days); empty without TLS.
    pub certificates: Vec<(&'static str, f64)>,
    /// Backups and their verification, from the backup metrics.
    pub backup: BackupHealth,
}

/// Backups as the node's metrics report them (seconds since the epoch; 0: never).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BackupHealth {
    /// The newest successful backup's finish (the repository's newest, or this node's own).
    pub last_success_s: u64,
    /// This node's last failed backup attempt.
    pub last_failure_s: u64,
    /// The schedule's period, seconds (0: no schedule).
    pub period_s: u64,
    /// On the leader with a schedule: seconds since the newest backup finished (or since
    /// it began leading over an empty repository); `None` elsewhere.
    pub stale_for_s: Option<u64>,
    /// The cluster's last successful and failed verifications by restore.
    pub verify_last_success_s: u64,
    pub verify_last_failure_s: u64,
}

/// One alert whose condition holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    /// Labels beyond `alertname`, `severity`, `scope` (and `node` for node rules).
    pub labels: BTreeMap<String, String>,
    /// The measured value (in the rule's unit).
    pub value: Option<f64>,
    /// What exactly is wrong, with numbers.
    pub description: String,
}

type Measure = fn(&Inputs, f64) -> Vec<Hit>;

/// One shipped rule and its defaults.
pub struct RuleSpec {
    /// The name in `[alerts.rules.NAME]`.
    pub name: &'static str,
    /// The `alertname` label.
    pub alertname: &'static str,
    /// Where it runs.
    pub scope: Scope,
    /// How urgent.
    pub severity: Severity,
    /// Default `for`, ms.
    pub for_ms: u64,
    /// Default threshold.
    pub threshold: f64,
    /// One line: what is wrong.
    pub summary: &'static str,
    /// One line: what to do first.
    pub runbook: &'static str,
    /// The condition.
    measure: Measure,
}

/// Minimum requests within the window before an error share is judged.
pub const ERROR_SHARE_REQUESTS_MIN: u64 = 20;

fn hit(value: f64, description: String) -> Hit {
    Hit {
        labels: BTreeMap::new(),
        value: Some(value),
        description,
    }
}

fn labelled(key: &str, value: String, hit: Hit) -> Hit {
    let mut hit = hit;
    hit.labels.insert(key.to_owned(), value);
    hit
}

/// Every shipped rule.
pub const CATALOGUE: &[RuleSpec] = &[
    RuleSpec {
        name: "no_leader",
        alertname: "TandemNoLeader",
        scope: Scope::Node,
        severity: Severity::Critical,
        for_ms: 30_000,
        threshold: 0.0,
        summary: "This node knows no Raft leader: writes through it answer 503",
        runbook: "Check GET /v1/admin/cluster on every node: a majority of voters must be up and reach each other (docs/operations.md); restart or replace the lost ones.",
        measure: |i, _| match i.leader {
            None => vec![hit(1.0, format!("node {} has known no leader", i.node_id))],
            Some(_) => Vec::new(),
        },
    },
    RuleSpec {
        name: "leader_churn",
        alertname: "TandemLeaderChurn",
        scope: Scope::Cluster,
        severity: Severity::Warning,
        for_ms: 0,
        threshold: 3.0,
        summary: "The Raft leader changes too often",
        runbook: "Look for a flapping node or network (node logs, tandem_raft_term); raise cluster.election_timeout_*_ms if heartbeats are lost under load.",
        measure: |i, threshold| {
            let changes = i.leader_changes as f64;
            if changes > threshold {
                vec![hit(
                    changes,
                    format!(
                        "{changes} leader changes within the rate window (more than {threshold})"
                    ),
                )]
            } else {
                Vec::new()
            }
        },
    },
    RuleSpec {
        name: "node_unreachable",
        alertname: "TandemNodeUnreachable",
        scope: Scope::Cluster,
        severity: Severity::Critical,
        for_ms: 30_000,
        threshold: 10_000.0,
        summary: "A cluster member does not answer the leader",
        runbook: "Is the node's process up (GET /health/live on it) and its network path to the leader open? Restart it, or replace it (tandem cluster replace-node) if its machine is lost.",
        measure: |i, threshold| {
            i.peers
                .iter()
                .filter_map(|peer| {
                    let age = peer.heartbeat_age_ms.map_or(f64::INFINITY, |a| a as f64);
                    (age > threshold).then(|| {
                        let shown = if age.is_finite() { age / 1000.0 } else { -1.0 };
                        let text = match peer.heartbeat_age_ms {
                            Some(a) => format!(
                                "node {} last answered the leader {:.1} s ago",
                                peer.id,
                                a as f64 / 1000.0
                            ),
                            None => format!("node {} has not answered this leader", peer.id),
                        };
                        labelled("peer", peer.id.to_string(), hit(shown, text))
                    })
                })
                .collect()
        },
    },
    RuleSpec {
        name: "follower_lag",
        alertname: "TandemFollowerLag",
        scope: Scope::Cluster,
        severity: Severity::Warning,
        for_ms: 60_000,
        threshold: 10_000.0,
        summary: "A follower is far behind the leader's log",
        runbook: "Check the follower's disk (tandem_log_fsync_duration_seconds) and CPU; a follower too far behind catches up by snapshot — if it never does, replace it.",
        measure: |i, threshold| {
            i.peers
                .iter()
                .filter_map(|peer| {
                    let lag = i.last_log_index.saturating_sub(peer.matched_index) as f64;
                    (lag > threshold).then(|| {
                        labelled("peer", peer.id.to_string(), hit(lag, format!("node {} is {lag} log entries behind the leader (more than {threshold})", peer.id)))
                    })
                })
                .collect()
        },
    },
    RuleSpec {
        name: "ingestion_drop",
        alertname: "TandemIngestionDrop",
        scope: Scope::Cluster,
        severity: Severity::Critical,
        for_ms: 120_000,
        threshold: 0.3,
        summary: "Ingestion fell far below its usual rate",
        runbook: "Are the sources still sending? Check tandem_http_requests_total{status=\"4xx\"} for rejected keys or quotas, the gateway/load balancer, and the sources' own error logs.",
        measure: |i, threshold| match i.ingest {
            Verdict::Judged {
                current_per_sec,
                baseline_per_sec,
            } if current_per_sec < threshold * baseline_per_sec => {
                vec![hit(
                    current_per_sec,
                    format!(
                        "{current_per_sec:.1} events/s against a baseline of {baseline_per_sec:.1} events/s (below {:.0}%)",
                        threshold * 100.0
                    ),
                )]
            }
            _ => Vec::new(),
        },
    },
    RuleSpec {
        name: "ingestion_spike",
        alertname: "TandemIngestionSpike",
        scope: Scope::Cluster,
        severity: Severity::Warning,
        for_ms: 120_000,
        threshold: 4.0,
        summary: "Ingestion rose far above its usual rate",
        runbook: "Find the source (tandem_ingest_events_total by source): a retry storm, a replayed backfill or abuse; tighten its quota ([[sources]] events_per_sec) if it threatens capacity.",
        measure: |i, threshold| match i.ingest {
            Verdict::Judged {
                current_per_sec,
                baseline_per_sec,
            } if current_per_sec > threshold * baseline_per_sec => {
                vec![hit(
                    current_per_sec,
                    format!(
                        "{current_per_sec:.1} events/s against a baseline of {baseline_per_sec:.1} events/s (more than {threshold}x)"
                    ),
                )]
            }
            _ => Vec::new(),
        },
    },
    RuleSpec {
        name: "server_errors",
        alertname: "TandemServerErrors",
        scope: Scope::Node,
        severity: Severity::Critical,
        for_ms: 120_000,
        threshold: 0.05,
        summary: "Many requests to this node fail with 5xx",
        runbook: "Read the node's log for the failing endpoint (tandem_http_requests_total{status=\"5xx\"}); 503s mean no leader or shutdown, 500s a bug or storage failure.",
        measure: |i, threshold| error_share(i.requests[0], i.requests[2], threshold, "5xx"),
    },
    RuleSpec {
        name: "client_errors",
        alertname: "TandemClientErrors",
        scope: Scope::Node,
        severity: Severity::Warning,
        for_ms: 600_000,
        threshold: 0.5,
        summary: "Most requests to this node are refused with 4xx",
        runbook: "A client sends bad keys, bad events or too much (429): check tandem_http_requests_total by endpoint and the rejected counts in replies; fix the client or its quota.",
        measure: |i, threshold| error_share(i.requests[0], i.requests[1], threshold, "4xx"),
    },
    RuleSpec {
        name: "fsync_slow",
        alertname: "TandemFsyncSlow",
        scope: Scope::Node,
        severity: Severity::Warning,
        for_ms: 300_000,
        threshold: 0.1,
        summary: "The Raft log's fsyncs are slow on this node",
        runbook: "The disk is saturated or failing: check iostat and the device's health; move the data dir to a faster disk or replace the node.",
        measure: |i, threshold| {
            let (count, seconds) = i.fsyncs;
            let mean = if count > 0 {
                seconds / count as f64
            } else {
                0.0
            };
            if count > 0 && mean > threshold {
                vec![hit(
                    mean,
                    format!(
                        "mean fsync {:.1} ms over {count} fsyncs (above {:.0} ms)",
                        mean * 1000.0,
                        threshold * 1000.0
                    ),
                )]
            } else {
                Vec::new()
            }
        },
    },
    RuleSpec {
        name: "disk_space_low",
        alertname: "TandemDiskSpaceLow",
        scope: Scope::Node,
        severity: Severity::Critical,
        for_ms: 300_000,
        threshold: 0.1,
        summary: "The data directory's filesystem is nearly full",
        runbook: "Free or grow the volume; check tandem_disk_usage_bytes by part (log segments held back by a lagging snapshot? ingest.retention_days too long?).",
        measure: |i, threshold| match i.disk_free_ratio {
            Some(free) if free < threshold => {
                vec![hit(
                    free,
                    format!(
                        "{:.1}% free (below {:.0}%)",
                        free * 100.0,
                        threshold * 100.0
                    ),
                )]
            }
            _ => Vec::new(),
        },
    },
    RuleSpec {
        name: "service_degraded",
        alertname: "TandemServiceDegraded",
        scope: Scope::Node,
        severity: Severity::Warning,
        for_ms: 60_000,
        threshold: 0.0,
        summary: "A CDP service on this node is degraded",
        runbook: "GET /v1/admin/services on the node says why (crashed, hung, lagging); its log has the error. Ingestion continues; the service catches up once fixed.",
        measure: |i, _| {
            i.services
                .iter()
                .filter(|s| s.status != "ok")
                .map(|s| {
                    labelled(
                        "service",
                        s.name.clone(),
                        hit(
                            s.lag as f64,
                            format!(
                                "service {} is {} ({} feed entries behind)",
                                s.name, s.status, s.lag
                            ),
                        ),
                    )
                })
                .collect()
        },
    },
    RuleSpec {
        name: "archive_behind",
        alertname: "TandemArchiveBehind",
        scope: Scope::Node,
        severity: Severity::Critical,
        for_ms: 60_000,
        threshold: 6.0,
        summary: "Continuous archiving is behind: the recovery point after a lost cluster grows",
        runbook: "The archive cannot keep up or the repository refuses uploads: check tandem_archive_failures_total and the leader's log (credentials, bucket, network); GET /v1/admin/backups/status shows the recovery point. Past backup.archive_backlog_mb_max retention deletes unarchived segments (docs/operations.md, \"Point-in-time restore\").",
        measure: |i, threshold| match &i.archive {
            Some(a) if a.unarchived_secs > threshold * a.interval_secs => vec![hit(
                a.unarchived_secs,
                format!(
                    "committed entries have waited {:.0} s for the archive (more than {threshold} x {:.0} s)",
                    a.unarchived_secs, a.interval_secs
                ),
            )],
            Some(a)
                if a.backlog_bytes
                    >= crate::node::archive::BACKLOG_ALERT_RATIO * a.backlog_limit_bytes =>
            {
                vec![hit(
                    a.unarchived_secs,
                    format!(
                        "{:.0} MB of log held for the archive, {:.0}% of backup.archive_backlog_mb_max",
                        a.backlog_bytes / 1e6,
                        100.0 * a.backlog_bytes / a.backlog_limit_bytes.max(1.0)
                    ),
                )]
            }
            _ => Vec::new(),
        },
    },
    RuleSpec {
        name: "certificate_expiry",
        alertname: "TandemCertificateExpiry",
        scope: Scope::Node,
        severity: Severity::Warning,
        for_ms: 0,
        threshold: 14.0,
        summary: "A TLS certificate of this node expires soon",
        runbook: "Issue a new certificate (tandem up reissues its own; docs/operations.md, \"TLS certificates\") and restart the node: it refuses to start with an expired one.",
        measure: |i, threshold| {
            i.certificates
                .iter()
                .filter(|(_, days)| *days < threshold)
                .map(|(listener, days)| {
                    labelled(
                        "listener",
                        (*listener).to_string(),
                        hit(
                            *days,
                            format!(
                                "the {listener} listener's certificate expires in {days:.1} days (under {threshold:.0})"
                            ),
                        ),
                    )
                })
                .collect()
        },
    },
    RuleSpec {
        name: "backup_failed",
        alertname: "TandemBackupFailed",
        scope: Scope::Node,
        severity: Severity::Warning,
        for_ms: 0,
        threshold: 0.0,
        summary: "This node's last backup attempt failed",
        runbook: "GET /v1/admin/backups/status on the node gives the error (repository unreachable, key file, disk); fix it and run `tandem backup create` (docs/operations.md, \"When a backup alert fires\").",
        measure: |i, _| {
            let b = &i.backup;
            if b.last_failure_s > b.last_success_s {
                vec![hit(
                    b.last_failure_s as f64,
                    format!(
                        "the last backup attempt on node {} failed at {} s since the epoch; the newest success is at {}",
                        i.node_id, b.last_failure_s, b.last_success_s
                    ),
                )]
            } else {
                Vec::new()
            }
        },
    },
    RuleSpec {
        name: "backup_stale",
        alertname: "TandemBackupStale",
        scope: Scope::Cluster,
        severity: Severity::Critical,
        for_ms: 0,
        threshold: 3_600.0,
        summary: "No successful backup within the schedule's period and a grace",
        runbook: "Is the schedule running (the leader's log, GET /v1/admin/backups/status)? Are backups failing (TandemBackupFailed)? Take one now with `tandem backup create` (docs/operations.md, \"When a backup alert fires\").",
        measure: |i, grace_s| {
            let b = &i.backup;
            match b.stale_for_s {
                Some(age) if b.period_s > 0 && age as f64 > b.period_s as f64 + grace_s => {
                    vec![hit(
                        age as f64,
                        format!(
                            "the newest backup is {age} s old; the schedule runs every {} s (grace {grace_s:.0} s)",
                            b.period_s
                        ),
                    )]
                }
                _ => Vec::new(),
            }
        },
    },
    RuleSpec {
        name: "backup_verify_failed",
        alertname: "TandemBackupVerifyFailed",
        scope: Scope::Cluster,
        severity: Severity::Critical,
        for_ms: 0,
        threshold: 0.0,
        summary: "The last verification by restore of the newest backup failed",
        runbook: "GET /v1/admin/backups/status (repository.verify_last_failure.error) names the object and the check; run `tandem backup verify` for every problem, then take a new full backup (docs/operations.md, \"When a backup alert fires\").",
        measure: |i, _| {
            let b = &i.backup;
            if b.verify_last_failure_s > b.verify_last_success_s {
                vec![hit(
                    b.verify_last_failure_s as f64,
                    format!(
                        "the verification that finished at {} s since the epoch failed; the last success is at {}",
                        b.verify_last_failure_s, b.verify_last_success_s
                    ),
                )]
            } else {
                Vec::new()
            }
        },
    },
];

fn error_share(total: u64, errors: u64, threshold: f64, class: &str) -> Vec<Hit> {
    if total < ERROR_SHARE_REQUESTS_MIN {
        return Vec::new();
    }
    let share = errors as f64 / total as f64;
    if share > threshold {
        vec![hit(
            share,
            format!(
                "{:.1}% of {total} requests answered {class} within the rate window (above {:.0}%)",
                share * 100.0,
                threshold * 100.0
            ),
        )]
    } else {
        Vec::new()
    }
}

/// A rule as configured: the spec with its overrides applied.
pub struct Rule {
    /// The shipped rule.
    pub spec: &'static RuleSpec,
    /// `for`, ms.
    pub for_ms: u64,
    /// Threshold.
    pub threshold: f64,
}

impl Rule {
    /// The alerts whose condition holds in `inputs`.
    pub fn measure(&self, inputs: &Inputs) -> Vec<Hit> {
        (self.spec.measure)(inputs, self.threshold)
    }
}

/// The enabled rules, with `[alerts.rules]` applied. Unknown rule names are an error
/// naming the known ones.
pub fn configured(config: &AlertsConfig) -> Result<Vec<Rule>, String> {
    let unknown: Vec<&str> = config
        .rules
        .keys()
        .map(String::as_str)
        .filter(|name| !CATALOGUE.iter().any(|spec| spec.name == *name))
        .collect();
    if !unknown.is_empty() {
        let known: Vec<&str> = CATALOGUE.iter().map(|spec| spec.name).collect();
        return Err(format!(
            "alerts.rules: unknown rule(s) {}; the rules are {}",
            unknown.join(", "),
            known.join(", ")
        ));
    }
    Ok(CATALOGUE
        .iter()
        .filter_map(|spec| {
            let custom = config.rules.get(spec.name).cloned().unwrap_or_default();
            custom.enabled.unwrap_or(true).then(|| Rule {
                spec,
                for_ms: custom.for_ms.unwrap_or(spec.for_ms),
                threshold: custom.threshold.unwrap_or(spec.threshold),
            })
        })
        .collect())
}

#[cfg(test)]
mod tests;
