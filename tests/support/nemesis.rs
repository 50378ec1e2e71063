//! The nemesis of the randomized fault test: a schedule of faults drawn from one seed, and
//! the code that inflicts them on a three-node [`TestCluster`] and undoes them.
//!
//! Invariant: at most one node is faulty — killed, paused (SIGSTOP) or partitioned — at
//! any moment, so a quorum always exists. Every fault is undone before the next one starts;
//! a leadership transfer is a request to the leader, not a fault of a node.
//!
//! The schedule (kinds, targets, hold times, quiet gaps) is a pure function of the seed.
//! "The leader" is resolved when a fault is applied, so a rerun with the same seed inflicts
//! the same sequence of faults, though not at exactly the same log positions.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use super::ADMIN_KEY;
use super::cluster::TestCluster;

/// Quiet time between two faults, in milliseconds.
const GAP_MS: std::ops::Range<u64> = 200..1_500;
/// How long a fault lasts before it is undone, in milliseconds.
const HOLD_MS: std::ops::Range<u64> = 500..4_000;
/// Probability that a node fault aims at the leader rather than at a random node (which
/// may be the leader too).
const LEADER_BIAS: f64 = 0.5;
/// Longest the nemesis looks for the current leader before picking a node at random.
const LEADER_LOOKUP: Duration = Duration::from_secs(5);
/// Timeout of the nemesis' own HTTP requests (a paused node never answers).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Which node a fault hits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Whichever node leads when the fault is applied.
    Leader,
    /// A fixed node id.
    Node(u64),
}

/// One fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL, then restart on the same port and data after the hold.
    Kill(Target),
    /// SIGSTOP, then SIGCONT after the hold: alive but silent.
    Pause(Target),
    /// Cut off from the other nodes in both directions, then healed after the hold.
    Partition(Target),
    /// Ask the leader to hand leadership to another voter; no hold.
    TransferLeader,
}

impl Fault {
    /// A short name for counting faults by kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Kill(_) => "kill",
            Fault::Pause(_) => "pause",
            Fault::Partition(_) => "partition",
            Fault::TransferLeader => "transfer",
        }
    }
}

/// One step of a schedule: wait `gap`, inflict `fault`, keep it for `hold`, undo it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    /// Quiet time before the fault.
    pub gap: Duration,
    /// What to do.
    pub fault: Fault,
    /// How long the fault lasts (zero for a transfer).
    pub hold: Duration,
}

/// Draws the steps whose gaps and holds add up to at most `length`, over nodes
/// `1..=nodes`.
pub fn schedule(seed: u64, nodes: u64, length: Duration) -> Vec<Step> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut steps = Vec::new();
    let mut total = Duration::ZERO;
    loop {
        let gap = Duration::from_millis(rng.random_range(GAP_MS));
        let kind = rng.random_range(0..100);
        let target = if rng.random_bool(LEADER_BIAS) {
            Target::Leader
        } else {
            Target::Node(rng.random_range(1..=nodes))
        };
        let fault = match kind {
            0..30 => Fault::Kill(target),
            30..55 => Fault::Pause(target),
            55..85 => Fault::Partition(target),
            _ => Fault::TransferLeader,
        };
        let hold = match fault {
            Fault::TransferLeader => Duration::ZERO,
            _ => Duration::from_millis(rng.random_range(HOLD_MS)),
        };
        total += gap + hold;
        if total > length {
            return steps;
        }
        steps.push(Step { gap, fault, hold });
    }
}

/// Inflicts a schedule on a cluster, logging every fault with its time since `started`.
pub struct Nemesis {
    started: Instant,
    rng: StdRng,
    http: reqwest::Client,
    /// Every fault and repair, as logged.
    pub log: Vec<String>,
    /// Faults inflicted, by kind.
    pub counts: BTreeMap<&'static str, usize>,
    /// When the first fault was inflicted and the last one undone.
    pub window: Option<(Duration, Duration)>,
    paused: BTreeSet<u64>,
}

impl Nemesis {
    /// A nemesis whose runtime choices (a random node when no leader is known, the target
    /// of a transfer) are drawn from `seed`.
    pub fn new(seed: u64, started: Instant) -> Nemesis {
        Nemesis {
            started,
            rng: StdRng::seed_from_u64(seed ^ 0x6e65_6d65_7369_7321),
            http: super::reqwest_builder()
                .timeout(REQUEST_TIMEOUT)
                .build()
                .expect("nemesis http client"),
            log: Vec::new(),
            counts: BTreeMap::new(),
            window: None,
            paused: BTreeSet::new(),
        }
    }

    /// Prints and records one line, stamped with the time since the test started.
    pub fn note(&mut self, what: &str) {
        let line = format!(
            "[{:>8.3}s] nemesis: {what}",
            self.started.elapsed().as_secs_f64()
        );
        println!("{line}");
        self.log.push(line);
    }

    /// Runs `steps` in order, each undone before the next; starts no step after `until`.
    pub async fn run(&mut self, cluster: &mut TestCluster, steps: &[Step], until: Instant) {
        for step in steps {
            tokio::time::sleep(step.gap).await;
            if Instant::now() >= until {
                break;
            }
            let first = self.started.elapsed();
            self.inflict(cluster, step).await;
            let last = self.started.elapsed();
            *self.counts.entry(step.fault.kind()).or_insert(0) += 1;
            self.window = Some(self.window.map_or((first, last), |(f, _)| (f, last)));
        }
    }

    async fn inflict(&mut self, cluster: &mut TestCluster, step: &Step) {
        let ms = step.hold.as_millis();
        match step.fault {
            Fault::Kill(target) => {
                let (id, how) = self.resolve(cluster, target).await;
                self.note(&format!("kill -9 node {id}{how} for {ms} ms"));
                cluster.kill9(id);
                tokio::time::sleep(step.hold).await;
                self.note(&format!("restart node {id}"));
                cluster.restart(id).await;
                self.note(&format!("node {id} ready"));
            }
            Fault::Pause(target) => {
                let (id, how) = self.resolve(cluster, target).await;
                self.note(&format!("SIGSTOP node {id}{how} for {ms} ms"));
                cluster.pause(id, true);
                self.paused.insert(id);
                tokio::time::sleep(step.hold).await;
                self.note(&format!("SIGCONT node {id}"));
                cluster.pause(id, false);
                self.paused.remove(&id);
            }
            Fault::Partition(target) => {
                let (id, how) = self.resolve(cluster, target).await;
                let others: Vec<u64> = cluster.urls.keys().copied().filter(|o| *o != id).collect();
                self.note(&format!(
                    "partition node {id}{how} from {others:?} for {ms} ms"
                ));
                cluster.partition(id, &others).await;
                for other in &others {
                    cluster.partition(*other, &[id]).await;
                }
                tokio::time::sleep(step.hold).await;
                self.note(&format!("heal partition of node {id}"));
                self.heal_partitions(cluster).await;
            }
            Fault::TransferLeader => self.transfer(cluster).await,
        }
    }

    /// The liveness phase's repair: restarts every killed node, resumes every paused one
    /// and heals every partition.
    pub async fn heal_all(&mut self, cluster: &mut TestCluster) {
        let down: Vec<u64> = cluster
            .urls
            .keys()
            .copied()
            .filter(|id| !cluster.nodes.contains_key(id))
            .collect();
        for id in down {
            self.note(&format!("liveness: restart node {id}"));
            cluster.restart(id).await;
        }
        for id in std::mem::take(&mut self.paused) {
            self.note(&format!("liveness: SIGCONT node {id}"));
            cluster.pause(id, false);
        }
        self.note("liveness: heal all partitions");
        self.heal_partitions(cluster).await;
    }

    async fn heal_partitions(&self, cluster: &TestCluster) {
        for id in cluster.urls.keys() {
            cluster.partition(*id, &[]).await;
        }
    }

    /// The node a target names, and how it was chosen (for the log).
    async fn resolve(&mut self, cluster: &TestCluster, target: Target) -> (u64, String) {
        match target {
            Target::Node(id) => {
                let leader = self.leader(cluster, Duration::ZERO).await;
                let how = if leader == Some(id) { " (leader)" } else { "" };
                (id, how.to_owned())
            }
            Target::Leader => match self.leader(cluster, LEADER_LOOKUP).await {
                Some(id) => (id, " (leader)".to_owned()),
                None => {
                    let ids: Vec<u64> = cluster.urls.keys().copied().collect();
                    let id = ids[self.rng.random_range(0..ids.len())];
                    (id, " (no leader known: random)".to_owned())
                }
            },
        }
    }

    /// The node that says it leads with the highest term, polling for up to `patience`.
    pub async fn leader(&self, cluster: &TestCluster, patience: Duration) -> Option<u64> {
        let end = Instant::now() + patience;
        loop {
            let mut best: Option<(u64, u64)> = None;
            for id in cluster.nodes.keys().filter(|id| !self.paused.contains(id)) {
                let url = format!("{}/health/ready", cluster.urls[id]);
                let Ok(response) = self.http.get(url).send().await else {
                    continue;
                };
                let Ok(body) = response.json::<Value>().await else {
                    continue;
                };
                let raft = &body["raft"];
                let term = raft["term"].as_u64().unwrap_or(0);
                if raft["state"] == "Leader" && best.is_none_or(|(_, t)| term > t) {
                    best = Some((*id, term));
                }
            }
            if best.is_some() || Instant::now() >= end {
                return best.map(|(id, _)| id);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Asks the leader to hand leadership to a random other voter; logs the answer.
    async fn transfer(&mut self, cluster: &TestCluster) {
        let Some(leader) = self.leader(cluster, LEADER_LOOKUP).await else {
            self.note("transfer leadership skipped: no leader known");
            return;
        };
        let others: Vec<u64> = cluster
            .urls
            .keys()
            .copied()
            .filter(|o| *o != leader)
            .collect();
        let to = others[self.rng.random_range(0..others.len())];
        let sent = self
            .http
            .post(format!(
                "{}/v1/admin/cluster/transfer-leader",
                cluster.urls[&leader]
            ))
            .bearer_auth(ADMIN_KEY)
            .json(&json!({ "to": to }))
            .send()
            .await;
        let answer = match sent {
            Ok(response) => response.status().as_u16().to_string(),
            Err(error) => format!("error: {error}"),
        };
        self.note(&format!("transfer leadership {leader} -> {to}: {answer}"));
    }
}
