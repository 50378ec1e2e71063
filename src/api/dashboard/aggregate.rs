//! The dashboard's one JSON document, put together from the membership this node knows
//! and each member's [`NodeReport`] (or why it could not be had). Pure: no I/O, tested
//! with hand-made reports.
//!
//! Rules:
//! - Every member of the membership appears, grouped by region, reachable or not; a
//!   member that did not answer keeps its place with `reachable: false` and the reason.
//! - The leader is the reachable node that says it leads with the highest term (a
//!   deposed leader cut off from the others may still believe it leads, in an older
//!   term); if none answers as leader, the serving node's belief.
//! - Replication lag and heartbeat age come from that leader's report: only the leader
//!   knows them.
//! - The ingest rate is the serving node's (taken from the replicated events counter, so
//!   cluster-wide); the latency series are one per reachable node.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::node::report::{NodeReport, ServiceHealth};

/// A member as the membership names it.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    /// Node id.
    pub id: u64,
    /// Its URL.
    pub url: String,
    /// Its region.
    pub region: String,
    /// `voter` or `learner`.
    pub role: String,
}

/// The whole dashboard document.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Dashboard {
    /// The node that answered.
    pub node: u64,
    /// When, ms since the epoch (that node's clock).
    pub generated_at_ms: i64,
    /// The leader, if one is known.
    pub leader: Option<u64>,
    /// The leader's term (or the serving node's, without a leader).
    pub term: u64,
    /// Events stored cluster-wide, as the serving node has applied them.
    pub events_stored: u64,
    /// Members reachable / members.
    pub reachable: usize,
    /// Members.
    pub members: usize,
    /// The members by region, regions and nodes sorted.
    pub regions: Vec<RegionView>,
    /// Cluster-wide ingest rate over the last hour, oldest first.
    pub ingest: Vec<IngestPoint>,
    /// Request latency over the last hour, per reachable node.
    pub latency: Vec<LatencySeries>,
    /// Each CDP service across the reachable nodes.
    pub services: Vec<ServiceView>,
    /// Pending and firing alerts of every reachable node (cluster-scoped ones from the
    /// leader), each with `reported_by`, firing first.
    pub alerts: Vec<serde_json::Value>,
}

/// One region and its members.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RegionView {
    /// The region label.
    pub region: String,
    /// Its members, by id.
    pub nodes: Vec<NodeView>,
}

/// One member.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeView {
    /// Node id.
    pub id: u64,
    /// Its URL.
    pub url: String,
    /// `voter` or `learner`.
    pub role: String,
    /// Whether it answered within the deadline.
    pub reachable: bool,
    /// Why it did not.
    pub error: Option<String>,
    /// Its Raft state as it reported it (`Leader`, `Follower`, …); `None` if unreachable.
    pub state: Option<String>,
    /// Whether it is the leader (as decided above).
    pub is_leader: bool,
    /// Its term, if reachable.
    pub term: Option<u64>,
    /// Its applied index, if reachable.
    pub applied_index: Option<u64>,
    /// Committed entries it has not applied, if reachable.
    pub apply_lag_entries: Option<u64>,
    /// Entries of the leader's log it lacks, per the leader.
    pub replication_lag_entries: Option<u64>,
    /// Time since it last acknowledged the leader, ms, per the leader.
    pub heartbeat_age_ms: Option<u64>,
}

/// One point of the ingest chart.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IngestPoint {
    /// ms since the epoch.
    pub at_ms: i64,
    /// Events stored per second.
    pub events_per_sec: f64,
}

/// One node's latency over time.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LatencySeries {
    /// Node id.
    pub node: u64,
    /// Its points, oldest first.
    pub points: Vec<LatencyPoint>,
}

/// One point of a latency chart.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LatencyPoint {
    /// ms since the epoch.
    pub at_ms: i64,
    /// Median, ms.
    pub p50_ms: Option<f64>,
    /// 99th percentile, ms.
    pub p99_ms: Option<f64>,
    /// Requests per second.
    pub requests_per_sec: f64,
}

/// One service across the nodes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceView {
    /// The service's name.
    pub name: String,
    /// `ok` when every reachable node reports it ok, else `degraded`.
    pub status: String,
    /// Per node.
    pub nodes: Vec<ServiceOnNode>,
}

/// A service on one node.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceOnNode {
    /// Node id.
    pub node: u64,
    /// Its health there.
    #[serde(flatten)]
    pub health: ServiceHealth,
}

/// Builds the document served by node `serving` at `now_ms`, from its membership and
/// the reports (every member should have an entry; one without is shown unreachable).
pub fn aggregate(
    serving: &NodeReport,
    members: &[Member],
    reports: &BTreeMap<u64, Result<NodeReport, String>>,
    now_ms: i64,
) -> Dashboard {
    // A node not in its own membership (started with --join, not added yet) still shows
    // itself.
    let mut members = members.to_vec();
    if !members.iter().any(|m| m.id == serving.id) {
        members.push(Member {
            id: serving.id,
            url: serving.url.clone(),
            region: serving.region.clone(),
            role: "not a member".into(),
        });
    }
    let members = members.as_slice();
    let answered = |id: u64| -> Option<&NodeReport> {
        if id == serving.id {
            return Some(serving);
        }
        reports.get(&id).and_then(|r| r.as_ref().ok())
    };
    let leader_report = members
        .iter()
        .filter_map(|m| answered(m.id))
        .chain(std::iter::once(serving))
        .filter(|r| r.state == "Leader")
        .max_by_key(|r| (r.term, r.id));
    let leader = leader_report.map(|r| r.id).or(serving.leader);
    let term = leader_report.map_or(serving.term, |r| r.term);
    let progress = |id: u64| {
        leader_report.and_then(|l| {
            if l.id == id {
                return Some((Some(0), None));
            }
            l.followers
                .iter()
                .find(|f| f.id == id)
                .map(|f| (f.lag_entries, f.heartbeat_age_ms))
        })
    };
    let mut regions: BTreeMap<String, Vec<NodeView>> = BTreeMap::new();
    let mut reachable = 0;
    for member in members {
        let report = answered(member.id);
        reachable += usize::from(report.is_some());
        let error = match (report, reports.get(&member.id)) {
            (Some(_), _) => None,
            (None, Some(Err(why))) => Some(why.clone()),
            (None, _) => Some("not asked".to_owned()),
        };
        let (lag, heartbeat) = progress(member.id).unwrap_or((None, None));
        regions
            .entry(member.region.clone())
            .or_default()
            .push(NodeView {
                id: member.id,
                url: member.url.clone(),
                role: member.role.clone(),
                reachable: report.is_some(),
                error,
                state: report.map(|r| r.state.clone()),
                is_leader: leader == Some(member.id),
                term: report.map(|r| r.term),
                applied_index: report.map(|r| r.applied_index),
                apply_lag_entries: report.map(|r| r.apply_lag_entries),
                replication_lag_entries: lag,
                heartbeat_age_ms: heartbeat,
            });
    }
    let regions = regions
        .into_iter()
        .map(|(region, mut nodes)| {
            nodes.sort_by_key(|n| n.id);
            RegionView { region, nodes }
        })
        .collect();
    let answering: Vec<&NodeReport> = members.iter().filter_map(|m| answered(m.id)).collect();
    Dashboard {
        node: serving.id,
        generated_at_ms: now_ms,
        leader,
        term,
        events_stored: serving.events_stored,
        reachable,
        members: members.len(),
        regions,
        ingest: serving
            .samples
            .iter()
            .map(|s| IngestPoint {
                at_ms: s.at_ms,
                events_per_sec: s.events_per_sec,
            })
            .collect(),
        latency: answering
            .iter()
            .map(|r| LatencySeries {
                node: r.id,
                points: r
                    .samples
                    .iter()
                    .map(|s| LatencyPoint {
                        at_ms: s.at_ms,
                        p50_ms: s.latency_p50_ms,
                        p99_ms: s.latency_p99_ms,
                        requests_per_sec: s.requests_per_sec,
                    })
                    .collect(),
            })
            .collect(),
        services: services(&answering),
        alerts: alerts(&answering),
    }
}

/// Every reporting node's alerts, tagged with who reported them; an alert reported by two
/// nodes alike (a deposed leader's cluster alert not yet dropped) is shown once.
fn alerts(reports: &[&NodeReport]) -> Vec<serde_json::Value> {
    let mut seen = std::collections::BTreeSet::new();
    let mut all = Vec::new();
    for report in reports {
        for alert in &report.alerts {
            let null = serde_json::Value::Null;
            let key = format!(
                "{}|{}",
                alert.get("name").unwrap_or(&null),
                alert.get("labels").unwrap_or(&null)
            );
            if !seen.insert(key) {
                continue;
            }
            let mut alert = alert.clone();
            if let Some(fields) = alert.as_object_mut() {
                fields.insert("reported_by".into(), report.id.into());
            }
            all.push(alert);
        }
    }
    let rank = |a: &serde_json::Value| match a.get("state").and_then(|s| s.as_str()) {
        Some("firing") => 0,
        Some("pending") => 1,
        _ => 2,
    };
    all.sort_by_key(rank);
    all
}

/// Each service across the reporting nodes, by name.
fn services(reports: &[&NodeReport]) -> Vec<ServiceView> {
    let mut by_name: BTreeMap<String, Vec<ServiceOnNode>> = BTreeMap::new();
    for report in reports {
        for health in &report.services {
            by_name
                .entry(health.name.clone())
                .or_default()
                .push(ServiceOnNode {
                    node: report.id,
                    health: health.clone(),
                });
        }
    }
    by_name
        .into_iter()
        .map(|(name, nodes)| ServiceView {
            status: if nodes.iter().all(|n| n.health.status == "ok") {
                "ok".into()
            } else {
                "degraded".into()
            },
            name,
            nodes,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::report::FollowerProgress;
    use crate::node::samples::Sample;

    fn member(id: u64, region: &str) -> Member {
        Member {
            id,
            url: format!("http://127.0.0.1:{}", 9000 + id),
            region: region.into(),
            role: "voter".into(),
        }
    }

    fn report(id: u64, state: &str, term: u64, leader: Option<u64>) -> NodeReport {
        NodeReport {
            id,
            region: String::new(),
            url: String::new(),
            state: state.into(),
            leader,
            term,
            last_log_index: 100,
            applied_index: 100,
            apply_lag_entries: 0,
            events_stored: 5_000,
            followers: Vec::new(),
            services: vec![ServiceHealth {
                name: "segments".into(),
                status: "ok".into(),
                reason: None,
                lag: 0,
                restarts: 0,
            }],
            samples: vec![Sample {
                at_ms: 1_000,
                events_per_sec: 12.5,
                requests_per_sec: 3.0,
                latency_p50_ms: Some(1.0),
                latency_p99_ms: Some(8.0),
            }],
            alerts: Vec::new(),
        }
    }

    fn progress(id: u64, lag: u64, age_ms: u64) -> FollowerProgress {
        FollowerProgress {
            id,
            matched_index: Some(100 - lag),
            lag_entries: Some(lag),
            heartbeat_age_ms: Some(age_ms),
        }
    }

    fn node(d: &Dashboard, id: u64) -> &NodeView {
        d.regions
            .iter()
            .flat_map(|r| &r.nodes)
            .find(|n| n.id == id)
            .expect("node in the document")
    }

    #[test]
    fn a_healthy_cluster_by_region_with_the_leaders_view_of_lag() {
        let members = [member(3, "r2"), member(1, "r1"), member(2, "r1")];
        let mut leader = report(2, "Leader", 4, Some(2));
        leader.followers = vec![progress(1, 3, 40), progress(3, 0, 25)];
        let serving = report(1, "Follower", 4, Some(2));
        let reports = BTreeMap::from([(2, Ok(leader)), (3, Ok(report(3, "Follower", 4, Some(2))))]);
        let d = aggregate(&serving, &members, &reports, 7);
        assert_eq!((d.node, d.leader, d.term), (1, Some(2), 4));
        assert_eq!((d.reachable, d.members), (3, 3));
        let regions: Vec<(&str, Vec<u64>)> = d
            .regions
            .iter()
            .map(|r| (r.region.as_str(), r.nodes.iter().map(|n| n.id).collect()))
            .collect();
        assert_eq!(regions, vec![("r1", vec![1, 2]), ("r2", vec![3])]);
        assert!(node(&d, 2).is_leader && !node(&d, 1).is_leader);
        assert_eq!(node(&d, 1).replication_lag_entries, Some(3));
        assert_eq!(node(&d, 1).heartbeat_age_ms, Some(40));
        assert_eq!(node(&d, 2).replication_lag_entries, Some(0));
        assert_eq!(d.ingest.len(), 1);
        assert_eq!(d.ingest[0].events_per_sec, 12.5);
        assert_eq!(d.latency.len(), 3);
        assert_eq!(d.services.len(), 1);
        assert_eq!(d.services[0].status, "ok");
        assert_eq!(d.services[0].nodes.len(), 3);
    }

    #[test]
    fn an_unreachable_member_keeps_its_place_and_says_why() {
        let members = [member(1, "r1"), member(2, "r2"), member(3, "r3")];
        let serving = report(1, "Leader", 5, Some(1));
        let reports = BTreeMap::from([
            (2, Err("connection refused".to_owned())),
            (3, Ok(report(3, "Follower", 5, Some(1)))),
        ]);
        let d = aggregate(&serving, &members, &reports, 0);
        assert_eq!((d.reachable, d.members), (2, 3));
        let dead = node(&d, 2);
        assert!(!dead.reachable);
        assert_eq!(dead.error.as_deref(), Some("connection refused"));
        assert_eq!(dead.state, None);
        assert_eq!(d.leader, Some(1));
        assert_eq!(d.latency.len(), 2, "no series for the unreachable node");
    }

    #[test]
    fn the_leader_with_the_highest_term_wins_over_a_deposed_one() {
        let members = [member(1, "r1"), member(2, "r2"), member(3, "r3")];
        // Node 1 was cut off and still believes it leads in term 3; node 2 leads term 4.
        let serving = report(1, "Leader", 3, Some(1));
        let reports = BTreeMap::from([
            (2, Ok(report(2, "Leader", 4, Some(2)))),
            (3, Ok(report(3, "Follower", 4, Some(2)))),
        ]);
        let d = aggregate(&serving, &members, &reports, 0);
        assert_eq!((d.leader, d.term), (Some(2), 4));
        assert!(node(&d, 2).is_leader && !node(&d, 1).is_leader);
    }

    #[test]
    fn without_a_leader_answering_the_serving_nodes_belief_is_shown_and_no_lag() {
        let members = [member(1, "r1"), member(2, "r2")];
        let serving = report(1, "Follower", 6, Some(2));
        let reports = BTreeMap::from([(2, Err("timed out".to_owned()))]);
        let d = aggregate(&serving, &members, &reports, 0);
        assert_eq!(d.leader, Some(2));
        assert_eq!(node(&d, 1).replication_lag_entries, None);
        assert!(node(&d, 2).is_leader && !node(&d, 2).reachable);
    }

    #[test]
    fn a_node_outside_its_membership_still_shows_itself() {
        let mut serving = report(4, "Learner", 0, None);
        serving.region = "r9".into();
        let d = aggregate(&serving, &[], &BTreeMap::new(), 0);
        assert_eq!((d.reachable, d.members), (1, 1));
        assert_eq!(d.regions[0].region, "r9");
        assert_eq!(node(&d, 4).role, "not a member");
    }

    #[test]
    fn a_service_degraded_on_one_node_is_degraded() {
        let members = [member(1, "r1"), member(2, "r2")];
        let serving = report(1, "Leader", 1, Some(1));
        let mut other = report(2, "Follower", 1, Some(1));
        other.services[0].status = "degraded".into();
        other.services[0].reason = Some("hung".into());
        let reports = BTreeMap::from([(2, Ok(other))]);
        let d = aggregate(&serving, &members, &reports, 0);
        assert_eq!(d.services[0].status, "degraded");
        let on_two = &d.services[0].nodes[1];
        assert_eq!(
            (on_two.node, on_two.health.reason.as_deref()),
            (2, Some("hung"))
        );
    }

    #[test]
    fn every_nodes_alerts_are_shown_once_firing_first() {
        let alert = |name: &str, state: &str, node: &str| serde_json::json!({"name": name, "state": state, "labels": {"node": node}});
        let mut leader = report(1, "Leader", 3, Some(1));
        leader.alerts = vec![
            alert("TandemFsyncSlow", "pending", "1"),
            serde_json::json!({"name": "TandemIngestionDrop", "state": "firing", "labels": {}}),
        ];
        let mut follower = report(2, "Follower", 3, Some(1));
        follower.alerts = vec![alert("TandemDiskSpaceLow", "firing", "2")];
        let mut deposed = report(3, "Follower", 3, Some(1));
        deposed.alerts = vec![
            serde_json::json!({"name": "TandemIngestionDrop", "state": "firing", "labels": {}}),
        ];
        let reports = BTreeMap::from([(2, Ok(follower)), (3, Ok(deposed))]);
        let members = [member(1, "a"), member(2, "b"), member(3, "c")];
        let d = aggregate(&leader, &members, &reports, 2_000);
        let shown: Vec<(String, u64)> = d
            .alerts
            .iter()
            .map(|a| {
                (
                    a["name"].as_str().unwrap().to_owned(),
                    a["reported_by"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            shown,
            [
                ("TandemIngestionDrop".to_owned(), 1),
                ("TandemDiskSpaceLow".to_owned(), 2),
                ("TandemFsyncSlow".to_owned(), 1),
            ]
        );
    }
}
