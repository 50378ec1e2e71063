//! Randomized fault test: a seeded nemesis (`support/nemesis.rs`) kills, pauses,
//! partitions and demotes the nodes of a real three-process cluster while writers and
//! linearizable readers record a history with monotonic timestamps; then a liveness phase
//! heals everything, and a checker — pure functions over the history and what each node
//! stores — judges it:
//!
//! 1. every acknowledged messageId is stored exactly once on every node, nothing is stored
//!    that no writer sent, and each profile's `events_total` matches its stored events;
//! 2. no linearizable read is stale (it sees every write acknowledged before it was
//!    invoked) or from the future (it sees no write invoked after it completed);
//! 3. writes were acknowledged while faults were being inflicted, and after healing.
//!
//! Reproduce a failure: `TANDEM_TEST_SEED=N cargo test --test fault_random -- --nocapture`.
//! Longer: `TANDEM_FAULT_SECONDS=600 cargo test --release --test fault_random -- --nocapture`.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use support::cluster::TestCluster;
use support::history::{Acked, check_exactly_once};
use support::nemesis::{self, Nemesis};
use support::{ADMIN_KEY, WRITE_KEY};

/// Concurrent writers, one customer each.
const WRITERS: usize = 3;
/// Concurrent linearizable readers.
const READERS: usize = 2;
/// Events in one write (one `/v1/batch` request).
const EVENTS_PER_WRITE: usize = 8;
/// How long a writer retries one write on other nodes before recording it as unknown.
const WRITE_BUDGET: Duration = Duration::from_secs(20);
/// Timeout of one client request (a paused node never answers).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(4);
/// Fault-phase length when `TANDEM_FAULT_SECONDS` is unset.
const DEFAULT_FAULT_SECONDS: u64 = 20;
/// Deadlines of the liveness phase.
const ELECTION: Duration = Duration::from_secs(20);
const PROGRESS: Duration = Duration::from_secs(30);
const CONVERGE: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------
// The history.

/// How a write ended.
#[derive(Clone, Debug, PartialEq)]
enum Outcome {
    /// A node answered 200 with nothing rejected.
    Acked,
    /// The retry budget ran out; the events may or may not be stored.
    Unknown(String),
    /// A status a correct node never sends to this workload (e.g. 500, or 200 with
    /// rejected items).
    Refused(String),
}

/// One write: a batch of fresh messageIds for one customer.
#[derive(Clone, Debug)]
struct Write {
    customer: String,
    ids: Vec<String>,
    /// Since the test started, before the first attempt was sent.
    invoked: Duration,
    /// Since the test started, after the last answer arrived.
    completed: Duration,
    outcome: Outcome,
}

/// One linearizable profile read.
#[derive(Clone, Debug)]
struct Read {
    customer: String,
    node: u64,
    invoked: Duration,
    completed: Duration,
    /// `events_total` (0 for an unknown profile), or why the read failed.
    seen: Result<u64, String>,
}

#[derive(Debug, Default)]
struct History {
    writes: Vec<Write>,
    reads: Vec<Read>,
}

/// What one node stores, per customer: how often each messageId occurs among the
/// profile's events, and the profile's `events_total`.
#[derive(Debug, Default)]
struct Stored {
    counts: BTreeMap<String, BTreeMap<String, usize>>,
    totals: BTreeMap<String, u64>,
}

fn secs(at: Duration) -> String {
    format!("{:.3}s", at.as_secs_f64())
}

// ---------------------------------------------------------------------------------------
// The checker: pure functions over the history.

/// Every write got an answer a correct cluster may give; returns how many were acked.
fn check_writes(writes: &[Write]) -> Result<usize, String> {
    if let Some(write) = writes
        .iter()
        .find(|w| matches!(w.outcome, Outcome::Refused(_)))
    {
        return Err(format!(
            "write {} of {} (invoked {}, completed {}) was refused: {:?}",
            write.ids[0],
            write.customer,
            secs(write.invoked),
            secs(write.completed),
            write.outcome
        ));
    }
    Ok(writes
        .iter()
        .filter(|w| w.outcome == Outcome::Acked)
        .count())
}

/// Node `node` stores every acknowledged messageId exactly once, no messageId twice, none
/// that no writer sent, and `events_total` equal to its stored events; returns how many
/// acknowledged messageIds were checked.
fn check_stored(node: u64, writes: &[Write], stored: &Stored) -> Result<usize, String> {
    let sent: BTreeSet<&str> = writes
        .iter()
        .flat_map(|w| w.ids.iter().map(String::as_str))
        .collect();
    let mut checked = 0;
    for write in writes.iter().filter(|w| w.outcome == Outcome::Acked) {
        let counts = stored.counts.get(&write.customer);
        for id in &write.ids {
            match counts.and_then(|c| c.get(id)).copied().unwrap_or(0) {
                1 => checked += 1,
                0 => {
                    return Err(format!(
                        "lost write: node {node} is missing acknowledged {id} of {} \
                         (invoked {}, acknowledged {})",
                        write.customer,
                        secs(write.invoked),
                        secs(write.completed)
                    ));
                }
                n => return Err(format!("node {node}: acknowledged {id} stored {n} times")),
            }
        }
    }
    for (customer, counts) in &stored.counts {
        for (id, n) in counts {
            if *n > 1 {
                return Err(format!("node {node}: {id} of {customer} stored {n} times"));
            }
            if !sent.contains(id.as_str()) {
                return Err(format!("node {node}: {id} of {customer} was never sent"));
            }
        }
        let total = stored.totals.get(customer).copied().unwrap_or(0);
        if total != counts.len() as u64 {
            return Err(format!(
                "node {node}: {customer} has events_total {total} but {} stored events",
                counts.len()
            ));
        }
    }
    Ok(checked)
}

/// Events of one customer's writes, as (time, cumulative events) sorted by time.
fn cumulative(times: &mut [(Duration, usize)]) -> Vec<(Duration, usize)> {
    times.sort();
    let mut sum = 0;
    times
        .iter()
        .map(|(at, events)| {
            sum += events;
            (*at, sum)
        })
        .collect()
}

/// Events among `steps` strictly before `at`.
fn events_before(steps: &[(Duration, usize)], at: Duration) -> usize {
    match steps.partition_point(|(t, _)| *t < at) {
        0 => 0,
        n => steps[n - 1].1,
    }
}

/// No successful read saw fewer events than were acknowledged before it was invoked, nor
/// more than were invoked before it completed. Reports the first violation (by invocation
/// time) with both timestamps; returns how many reads were checked.
fn check_reads(history: &History) -> Result<usize, String> {
    let mut acked: BTreeMap<&str, Vec<(Duration, usize)>> = BTreeMap::new();
    let mut invoked: BTreeMap<&str, Vec<(Duration, usize)>> = BTreeMap::new();
    for write in &history.writes {
        let customer = write.customer.as_str();
        let entry = (write.invoked, write.ids.len());
        invoked.entry(customer).or_default().push(entry);
        if write.outcome == Outcome::Acked {
            let entry = (write.completed, write.ids.len());
            acked.entry(customer).or_default().push(entry);
        }
    }
    let acked: BTreeMap<&str, _> = acked
        .into_iter()
        .map(|(c, mut t)| (c, cumulative(&mut t)))
        .collect();
    let invoked: BTreeMap<&str, _> = invoked
        .into_iter()
        .map(|(c, mut t)| (c, cumulative(&mut t)))
        .collect();
    let mut reads: Vec<(&Read, u64)> = history
        .reads
        .iter()
        .filter_map(|r| r.seen.as_ref().ok().map(|seen| (r, *seen)))
        .collect();
    reads.sort_by_key(|(r, _)| r.invoked);
    let none = Vec::new();
    for (read, seen) in &reads {
        let customer = read.customer.as_str();
        let acked = acked.get(customer).unwrap_or(&none);
        let must = events_before(acked, read.invoked) as u64;
        let may = events_before(invoked.get(customer).unwrap_or(&none), read.completed) as u64;
        let problem = if *seen < must {
            let last = acked[acked.partition_point(|(t, _)| *t < read.invoked) - 1].0;
            format!(
                "stale read: node {} answered events_total {seen} for {customer} to a read \
                 invoked at {} (completed {}), but {must} events were acknowledged before it \
                 was invoked (the last acknowledgment at {})",
                read.node,
                secs(read.invoked),
                secs(read.completed),
                secs(last)
            )
        } else if *seen > may {
            format!(
                "read from the future: node {} answered events_total {seen} for {customer} to \
                 a read invoked at {} and completed at {}, but only {may} events had been \
                 sent by then",
                read.node,
                secs(read.invoked),
                secs(read.completed)
            )
        } else {
            continue;
        };
        let from = read.invoked.saturating_sub(Duration::from_secs(2));
        let to = read.completed + Duration::from_millis(500);
        return Err(format!(
            "{problem}\nhistory of {customer}:\n{}",
            excerpt(history, customer, from, to)
        ));
    }
    Ok(reads.len())
}

/// Writes were acknowledged while faults were being inflicted (`from`..`to`); returns
/// how many.
fn check_progress(writes: &[Write], from: Duration, to: Duration) -> Result<usize, String> {
    let during = writes
        .iter()
        .filter(|w| w.outcome == Outcome::Acked && w.completed >= from && w.completed <= to)
        .count();
    if during == 0 {
        return Err(format!(
            "no progress: no write was acknowledged between {} and {} (the fault phase)",
            secs(from),
            secs(to)
        ));
    }
    Ok(during)
}

/// The operations on `customer` that overlap `from..to`, in invocation order.
fn excerpt(history: &History, customer: &str, from: Duration, to: Duration) -> String {
    let overlaps = |invoked: Duration, completed: Duration| completed >= from && invoked <= to;
    let mut lines: Vec<(Duration, String)> = Vec::new();
    for w in &history.writes {
        if w.customer == customer && overlaps(w.invoked, w.completed) {
            let line = format!(
                "  {:>9} .. {:>9}  write {} (+{} events)  {:?}",
                secs(w.invoked),
                secs(w.completed),
                w.ids[0],
                w.ids.len(),
                w.outcome
            );
            lines.push((w.invoked, line));
        }
    }
    for r in &history.reads {
        if r.customer == customer && overlaps(r.invoked, r.completed) {
            let line = format!(
                "  {:>9} .. {:>9}  read on node {}: {:?}",
                secs(r.invoked),
                secs(r.completed),
                r.node,
                r.seen
            );
            lines.push((r.invoked, line));
        }
    }
    lines.sort();
    let shown: Vec<String> = lines.into_iter().take(40).map(|(_, l)| l).collect();
    shown.join("\n")
}

// ---------------------------------------------------------------------------------------
// The clients.

/// Running writers and readers.
struct Clients {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
    writers: Vec<tokio::task::JoinHandle<Vec<Write>>>,
    readers: Vec<tokio::task::JoinHandle<Vec<Read>>>,
}

/// What every client task shares.
#[derive(Clone)]
struct Shared {
    nodes: Vec<(u64, String)>,
    customers: Vec<String>,
    started: Instant,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
    http: reqwest::Client,
}

fn customers() -> Vec<String> {
    (0..WRITERS).map(|w| format!("fr-w{w}")).collect()
}

impl Clients {
    fn start(nodes: Vec<(u64, String)>, seed: u64, started: Instant) -> Clients {
        let shared = Shared {
            nodes,
            customers: customers(),
            started,
            stop: Arc::new(AtomicBool::new(false)),
            acked: Arc::new(AtomicUsize::new(0)),
            http: support::reqwest_builder()
                .timeout(REQUEST_TIMEOUT)
                .connect_timeout(Duration::from_secs(1))
                .build()
                .expect("client"),
        };
        let rng = |n: usize| StdRng::seed_from_u64(seed.wrapping_add(1 + n as u64));
        let writers = (0..WRITERS)
            .map(|w| tokio::spawn(write_loop(shared.clone(), w, rng(w))))
            .collect();
        let readers = (0..READERS)
            .map(|r| tokio::spawn(read_loop(shared.clone(), rng(WRITERS + r))))
            .collect();
        Clients {
            stop: shared.stop,
            acked: shared.acked,
            writers,
            readers,
        }
    }

    /// Writes acknowledged so far.
    fn acked(&self) -> usize {
        self.acked.load(Ordering::Acquire)
    }

    /// Stops every client (a writer finishes its current write first) and returns the
    /// history.
    async fn stop(self) -> History {
        self.stop.store(true, Ordering::Release);
        let mut history = History::default();
        for writer in self.writers {
            history.writes.extend(writer.await.expect("writer task"));
        }
        for reader in self.readers {
            history.reads.extend(reader.await.expect("reader task"));
        }
        history
    }
}

/// A node other than `nodes[current]`, at random.
fn other_node(rng: &mut StdRng, nodes: usize, current: usize) -> usize {
    (current + rng.random_range(1..nodes)) % nodes
}

async fn write_loop(shared: Shared, writer: usize, mut rng: StdRng) -> Vec<Write> {
    let customer = shared.customers[writer].clone();
    let mut history = Vec::new();
    for n in 0.. {
        if shared.stop.load(Ordering::Acquire) {
            break;
        }
        let ids: Vec<String> = (0..EVENTS_PER_WRITE)
            .map(|i| format!("{customer}-{n}-{i}"))
            .collect();
        let items: Vec<Value> = ids
            .iter()
            .map(|id| {
                json!({"type": "track", "userId": customer, "event": "Order Completed",
                       "messageId": id, "properties": {"revenue": 10}})
            })
            .collect();
        let body = json!({ "batch": items }).to_string();
        let invoked = shared.started.elapsed();
        let mut node = rng.random_range(0..shared.nodes.len());
        let outcome = loop {
            let (id, url) = &shared.nodes[node];
            let answer = send_write(&shared.http, url, &body).await;
            match answer {
                Ok(()) => break Outcome::Acked,
                Err(Outcome::Unknown(why)) => {
                    if shared.started.elapsed() - invoked > WRITE_BUDGET {
                        break Outcome::Unknown(format!("node {id}: {why}"));
                    }
                }
                Err(refused) => break refused,
            }
            node = other_node(&mut rng, shared.nodes.len(), node);
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        if outcome == Outcome::Acked {
            shared.acked.fetch_add(1, Ordering::AcqRel);
        }
        history.push(Write {
            customer: customer.clone(),
            ids,
            invoked,
            completed: shared.started.elapsed(),
            outcome,
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    history
}

/// One attempt: `Ok` on an acknowledgment, `Unknown` when it may be retried, `Refused`
/// when a correct node would never answer so.
async fn send_write(http: &reqwest::Client, url: &str, body: &str) -> Result<(), Outcome> {
    let sent = http
        .post(format!("{url}/v1/batch"))
        .basic_auth(WRITE_KEY, Some(""))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .map_err(|e| Outcome::Unknown(network(&e)))?;
    let status = sent.status().as_u16();
    let reply: Value = match sent.json().await {
        Ok(reply) => reply,
        Err(e) if status == 200 => return Err(Outcome::Unknown(format!("200, body: {e}"))),
        Err(_) => Value::Null,
    };
    match status {
        200 if reply["rejected"].as_array().is_none_or(Vec::is_empty) => Ok(()),
        429 | 502 | 503 | 504 => Err(Outcome::Unknown(format!("{status} {}", reply["code"]))),
        _ => Err(Outcome::Refused(format!("{status} {reply}"))),
    }
}

async fn read_loop(shared: Shared, mut rng: StdRng) -> Vec<Read> {
    let mut history = Vec::new();
    while !shared.stop.load(Ordering::Acquire) {
        let customer = &shared.customers[rng.random_range(0..shared.customers.len())];
        let (node, url) = &shared.nodes[rng.random_range(0..shared.nodes.len())];
        let invoked = shared.started.elapsed();
        let seen = read_total(&shared.http, url, customer).await;
        history.push(Read {
            customer: customer.clone(),
            node: *node,
            invoked,
            completed: shared.started.elapsed(),
            seen,
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    history
}

/// A network error, by kind (the full text names a random port).
fn network(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        "timeout".to_owned()
    } else if error.is_connect() {
        "connect error".to_owned()
    } else {
        "network error".to_owned()
    }
}

/// How many failed reads gave each kind of reason: the status, the code and the start of
/// the detail in parentheses, with node ids masked.
fn read_failures(reads: &[Read]) -> BTreeMap<String, usize> {
    let mut reasons = BTreeMap::new();
    for why in reads.iter().filter_map(|r| r.seen.as_ref().err()) {
        let (head, detail) = why.split_once(": \"").unwrap_or((why, ""));
        let detail = detail.split_once('(').map_or("", |(_, d)| d);
        let detail = detail.split([':', ';', ')']).next().unwrap_or("");
        let detail = detail.replace(|c: char| c.is_ascii_digit(), "N");
        let class = format!("{} {detail}", head.replace('"', ""));
        let class = class.trim().to_owned();
        *reasons.entry(class).or_insert(0) += 1;
    }
    reasons
}

/// A linearizable read of `events_total` (0 when no profile has the identity yet).
async fn read_total(http: &reqwest::Client, url: &str, customer: &str) -> Result<u64, String> {
    let sent = http
        .get(format!("{url}/v1/profiles/user_id:{customer}"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .map_err(|e| network(&e))?;
    let status = sent.status().as_u16();
    let body: Value = sent.json().await.map_err(|e| network(&e))?;
    match status {
        200 if body["read"]["consistency"] == "linearizable" => body["events_total"]
            .as_u64()
            .ok_or_else(|| format!("no events_total in {body}")),
        404 if body["code"] == "profile_not_found" => Ok(0),
        _ => Err(format!("{status} {}: {}", body["code"], body["message"])),
    }
}

// ---------------------------------------------------------------------------------------
// The liveness phase's reads of each node.

/// What the node at `url` stores for `customers` (local reads: run after convergence).
async fn stored_on(
    http: &reqwest::Client,
    url: &str,
    customers: &[String],
) -> Result<Stored, String> {
    let mut stored = Stored::default();
    for customer in customers {
        let profile = format!("{url}/v1/profiles/user_id:{customer}");
        let mut counts = BTreeMap::new();
        let mut before: Option<u64> = None;
        loop {
            let cursor = before.map(|b| format!("&before={b}")).unwrap_or_default();
            let page = admin_get(
                http,
                &format!("{profile}/events?limit=1000&consistency=local{cursor}"),
            )
            .await?;
            if page.0 == 404 {
                break;
            }
            for event in page.1["events"].as_array().into_iter().flatten() {
                let id = event["messageId"].as_str().unwrap_or("").to_owned();
                *counts.entry(id).or_insert(0) += 1;
            }
            match page.1["next_before"].as_u64() {
                Some(next) => before = Some(next),
                None => break,
            }
        }
        let (status, body) = admin_get(http, &format!("{profile}?consistency=local")).await?;
        let total = if status == 404 {
            0
        } else {
            body["events_total"].as_u64().unwrap_or(0)
        };
        stored.counts.insert(customer.clone(), counts);
        stored.totals.insert(customer.clone(), total);
    }
    Ok(stored)
}

/// GET with the admin key: (status, body) of a 200 or 404, else an error.
async fn admin_get(http: &reqwest::Client, url: &str) -> Result<(u16, Value), String> {
    let sent = http
        .get(url)
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let status = sent.status().as_u16();
    let body: Value = sent.json().await.map_err(|e| format!("{url}: {e}"))?;
    match status {
        200 | 404 => Ok((status, body)),
        _ => Err(format!("{url}: {status} {body}")),
    }
}

/// One successful linearizable read of every customer on every node, retried until
/// `PROGRESS` passes (a node that never answers is a stuck node).
async fn final_reads(
    cluster: &TestCluster,
    http: &reqwest::Client,
    started: Instant,
) -> Result<Vec<Read>, String> {
    let mut reads = Vec::new();
    for (node, url) in &cluster.urls {
        for customer in customers() {
            let end = Instant::now() + PROGRESS;
            loop {
                let invoked = started.elapsed();
                let seen = read_total(http, url, &customer).await;
                let ok = seen.is_ok();
                let last = format!("{seen:?}");
                reads.push(Read {
                    customer: customer.clone(),
                    node: *node,
                    invoked,
                    completed: started.elapsed(),
                    seen,
                });
                if ok {
                    break;
                }
                if Instant::now() > end {
                    return Err(format!(
                        "stuck: node {node} gave no linearizable read of {customer} in \
                         {PROGRESS:?} after healing; last answer {last}"
                    ));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    Ok(reads)
}

// ---------------------------------------------------------------------------------------
// The test.

/// The test's settings: `TANDEM_TEST_SEED` (else from the clock) and
/// `TANDEM_FAULT_SECONDS`.
///
/// Both are removed from the environment once read: nodes inherit the test's environment,
/// and a node refuses to start on a `TANDEM_*` variable that is not a setting.
fn settings() -> (u64, Duration) {
    let read = |name: &str| {
        let value = std::env::var(name).ok();
        // SAFETY: called before this test starts any thread; the other tests of this
        // binary are pure functions that do not touch the environment.
        unsafe { std::env::remove_var(name) };
        value.map(|v| {
            v.parse::<u64>()
                .unwrap_or_else(|_| panic!("{name}={v:?} is not a whole number"))
        })
    };
    let seed = read("TANDEM_TEST_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64 % 1_000_000_000_000)
    });
    let seconds = read("TANDEM_FAULT_SECONDS").unwrap_or(DEFAULT_FAULT_SECONDS);
    (seed, Duration::from_secs(seconds))
}

#[test]
fn random_faults_lose_no_acknowledged_write_and_serve_no_stale_read() {
    let (seed, length) = settings();
    println!("fault test seed: {seed} (rerun with TANDEM_TEST_SEED={seed})");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    // A panic anywhere (ours, or a harness deadline) unwinds through `run`, which drops
    // the cluster (killing every node by pid); then it is raised again with the seed, and
    // the nodes' data and logs are kept as evidence.
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
        runtime.block_on(run(seed, length, dir.path()));
    }));
    if let Err(panic) = outcome {
        let why = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("(no message)");
        let kept = dir.keep();
        panic!(
            "fault test seed {seed} failed (rerun with TANDEM_TEST_SEED={seed}): {why}\n\
             node logs: {}/node-*/node.stderr.log",
            kept.display()
        );
    }
}

async fn run(seed: u64, length: Duration, dir: &std::path::Path) {
    let started = Instant::now();
    let mut cluster = TestCluster::start(dir, &["r1", "r2", "r3"]).await;
    println!("[{:>8}] cluster of 3 formed", secs(started.elapsed()));
    define_segments(&cluster).await;
    let nodes: Vec<(u64, String)> = cluster.urls.iter().map(|(i, u)| (*i, u.clone())).collect();
    let clients = Clients::start(nodes, seed, started);

    // Safety phase: faults while the clients run.
    let steps = nemesis::schedule(seed, 3, length);
    let mut nemesis = Nemesis::new(seed, started);
    let faults_from = started.elapsed();
    nemesis
        .run(&mut cluster, &steps, Instant::now() + length)
        .await;
    let faults_to = started.elapsed();

    // Liveness phase: heal everything; the cluster must take writes and answer reads.
    nemesis.heal_all(&mut cluster).await;
    cluster.leader(ELECTION).await;
    let before = clients.acked();
    cluster
        .wait("a write acknowledged after healing", PROGRESS, |_| {
            let done = clients.acked() > before;
            async move { done.then_some(()) }
        })
        .await;
    let mut history = clients.stop().await;
    let http = support::reqwest_builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("client");
    let reads = final_reads(&cluster, &http, started).await;
    history
        .reads
        .extend(reads.unwrap_or_else(|e| fail(&cluster, &e)));
    cluster.converged_hash(CONVERGE).await;
    // Derived state too: every node's services at the feed head with equal hashes.
    cluster.converged_services_hash(CONVERGE).await;

    // The checks.
    let acked_writes = check_writes(&history.writes).unwrap_or_else(|e| fail(&cluster, &e));
    let mut acked = Acked::new();
    for write in history
        .writes
        .iter()
        .filter(|w| w.outcome == Outcome::Acked)
    {
        acked
            .entry(write.customer.clone())
            .or_default()
            .extend(write.ids.iter().cloned());
    }
    let mut checked = 0;
    for (node, url) in &cluster.urls {
        check_exactly_once(url, &acked)
            .await
            .unwrap_or_else(|e| fail(&cluster, &format!("node {node}: {e}")));
        let stored = stored_on(&http, url, &customers())
            .await
            .unwrap_or_else(|e| fail(&cluster, &e));
        checked =
            check_stored(*node, &history.writes, &stored).unwrap_or_else(|e| fail(&cluster, &e));
    }
    let reads_checked = check_reads(&history).unwrap_or_else(|e| fail(&cluster, &e));
    let during = check_progress(&history.writes, faults_from, faults_to)
        .unwrap_or_else(|e| fail(&cluster, &e));

    let unknown = history.writes.len() - acked_writes;
    let failed_reads = history.reads.len() - reads_checked;
    println!(
        "fault test seed {seed}: {:.0} s of faults {:?}; writes: {} invoked, {acked_writes} \
         acked ({during} during faults), {unknown} unknown; {checked} acked events on each of \
         3 nodes exactly once; reads: {reads_checked} checked, {failed_reads} failed {:?}; total {:.0} s",
        (faults_to - faults_from).as_secs_f64(),
        nemesis.counts,
        history.writes.len(),
        read_failures(&history.reads),
        started.elapsed().as_secs_f64()
    );
}

/// Segments whose memberships change as the clients' orders accumulate, so the services
/// hashes compared at the end cover transitions as well as traits.
async fn define_segments(cluster: &TestCluster) {
    let leader = cluster.urls[&cluster.leader(ELECTION).await].clone();
    for (id, rule) in [
        ("regular", "orders_count >= 20"),
        (
            "recent",
            r#"event("Order Completed").within(5m).count() >= 40"#,
        ),
    ] {
        let (code, body) =
            support::cluster::admin_post(&leader, "/v1/segments", &json!({"id": id, "rule": rule}))
                .await;
        assert_eq!(code, 201, "define segment {id}: {body}");
    }
}

/// Panics with `why` and the tail of every node's log.
fn fail(cluster: &TestCluster, why: &str) -> ! {
    let logs: Vec<String> = cluster
        .nodes
        .iter()
        .map(|(id, node)| format!("--- node {id} log (tail) ---\n{}", log_tail(&node.stderr())))
        .collect();
    panic!("{why}\n{}", logs.join("\n"));
}

/// The last lines of a node's log without colours or heartbeat failures (which repeat
/// every 50 ms while a peer is away).
fn log_tail(log: &str) -> String {
    let lines: Vec<String> = log
        .lines()
        .filter(|line| !line.contains("HeartbeatWorker"))
        .map(|line| {
            let mut plain = String::new();
            let mut escape = false;
            for c in line.chars() {
                match (escape, c) {
                    (false, '\u{1b}') => escape = true,
                    (true, 'm') => escape = false,
                    (false, c) => plain.push(c),
                    (true, _) => {}
                }
            }
            plain
        })
        .collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

// ---------------------------------------------------------------------------------------
// The checker must catch what it exists to catch.

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Write number `n` of `customer` (two events), invoked and completed at these ms.
fn write(customer: &str, n: u64, invoked: u64, completed: u64, outcome: Outcome) -> Write {
    Write {
        customer: customer.to_owned(),
        ids: (0..2).map(|i| format!("{customer}-{n}-{i}")).collect(),
        invoked: ms(invoked),
        completed: ms(completed),
        outcome,
    }
}

fn read(customer: &str, invoked: u64, completed: u64, seen: u64) -> Read {
    Read {
        customer: customer.to_owned(),
        node: 1,
        invoked: ms(invoked),
        completed: ms(completed),
        seen: Ok(seen),
    }
}

/// What a node stores when it has each id of `writes` once.
fn storing(writes: &[&Write]) -> Stored {
    let mut stored = Stored::default();
    for w in writes {
        let counts = stored.counts.entry(w.customer.clone()).or_default();
        counts.extend(w.ids.iter().map(|id| (id.clone(), 1)));
        let total = counts.len() as u64;
        stored.totals.insert(w.customer.clone(), total);
    }
    stored
}

fn unknown() -> Outcome {
    Outcome::Unknown("timeout".into())
}

#[test]
fn checker_accepts_a_linearizable_history() {
    let w0 = write("a", 0, 0, 10, Outcome::Acked);
    let w1 = write("a", 1, 15, 60, unknown());
    let history = History {
        writes: vec![w0.clone(), w1.clone()],
        // Before w0, during w0, after w0, concurrent with w1 (either answer is fine).
        reads: vec![
            read("a", 1, 5, 0),
            read("a", 5, 12, 2),
            read("a", 11, 14, 2),
            read("a", 20, 30, 4),
            read("a", 20, 30, 2),
        ],
    };
    assert_eq!(check_reads(&history), Ok(5));
    assert_eq!(check_writes(&history.writes), Ok(1));
    assert_eq!(
        check_stored(1, &history.writes, &storing(&[&w0, &w1])),
        Ok(2)
    );
    assert_eq!(check_stored(1, &history.writes, &storing(&[&w0])), Ok(2));
    assert_eq!(check_progress(&history.writes, ms(5), ms(20)), Ok(1));
}

#[test]
fn checker_finds_a_lost_write() {
    let w0 = write("a", 0, 0, 10, Outcome::Acked);
    let w1 = write("a", 1, 20, 30, Outcome::Acked);
    let error = check_stored(2, &[w0.clone(), w1], &storing(&[&w0])).unwrap_err();
    assert!(
        error.contains("lost write: node 2 is missing acknowledged a-1-0"),
        "{error}"
    );
}

#[test]
fn checker_finds_a_duplicated_write() {
    let w0 = write("a", 0, 0, 10, Outcome::Acked);
    let mut stored = storing(&[&w0]);
    stored
        .counts
        .get_mut("a")
        .expect("a")
        .insert("a-0-1".into(), 2);
    let error = check_stored(3, std::slice::from_ref(&w0), &stored).unwrap_err();
    assert!(error.contains("a-0-1 stored 2 times"), "{error}");
    // Also when the duplicate is of a write that was never acknowledged.
    let w1 = write("a", 1, 20, 30, unknown());
    let mut stored = storing(&[&w0, &w1]);
    stored
        .counts
        .get_mut("a")
        .expect("a")
        .insert("a-1-0".into(), 2);
    let error = check_stored(3, &[w0, w1], &stored).unwrap_err();
    assert!(error.contains("a-1-0 of a stored 2 times"), "{error}");
}

#[test]
fn checker_finds_an_event_nobody_sent_and_a_wrong_total() {
    let w0 = write("a", 0, 0, 10, Outcome::Acked);
    let mut stored = storing(&[&w0]);
    stored
        .counts
        .get_mut("a")
        .expect("a")
        .insert("a-9-9".into(), 1);
    let error = check_stored(1, std::slice::from_ref(&w0), &stored).unwrap_err();
    assert!(error.contains("a-9-9 of a was never sent"), "{error}");
    let mut stored = storing(&[&w0]);
    stored.totals.insert("a".into(), 3);
    let error = check_stored(1, &[w0], &stored).unwrap_err();
    assert!(
        error.contains("events_total 3 but 2 stored events"),
        "{error}"
    );
}

#[test]
fn checker_finds_a_stale_read() {
    let history = History {
        writes: vec![
            write("a", 0, 0, 10, Outcome::Acked),
            write("a", 1, 12, 18, Outcome::Acked),
            write("b", 0, 0, 5, Outcome::Acked),
        ],
        reads: vec![
            read("b", 6, 7, 2),
            read("a", 11, 25, 2),
            read("a", 20, 25, 2),
        ],
    };
    let error = check_reads(&history).unwrap_err();
    assert!(error.starts_with("stale read"), "{error}");
    assert!(
        error.contains("invoked at 0.020s (completed 0.025s), but 4 events"),
        "{error}"
    );
    assert!(
        error.contains("the last acknowledgment at 0.018s"),
        "{error}"
    );
    assert!(
        error.contains("write a-1-0"),
        "the excerpt shows the write: {error}"
    );
}

#[test]
fn checker_finds_a_read_from_the_future() {
    let history = History {
        writes: vec![write("a", 0, 30, 40, unknown())],
        reads: vec![read("a", 10, 20, 2)],
    };
    let error = check_reads(&history).unwrap_err();
    assert!(error.starts_with("read from the future"), "{error}");
}

#[test]
fn checker_finds_refused_writes_and_no_progress() {
    let refused = write("a", 0, 0, 10, Outcome::Refused("500 internal".into()));
    let error = check_writes(&[refused]).unwrap_err();
    assert!(error.contains("500 internal"), "{error}");
    let late = write("a", 0, 0, 100, Outcome::Acked);
    assert!(check_progress(&[late], ms(10), ms(90)).is_err());
}

#[test]
fn the_schedule_is_a_function_of_the_seed() {
    let length = Duration::from_secs(600);
    let steps = nemesis::schedule(7, 3, length);
    assert_eq!(steps, nemesis::schedule(7, 3, length));
    assert_ne!(steps, nemesis::schedule(8, 3, length));
    let total: Duration = steps.iter().map(|s| s.gap + s.hold).sum();
    assert!(
        total <= length && steps.len() > 100,
        "{} steps",
        steps.len()
    );
    for kind in ["kill", "pause", "partition", "transfer"] {
        assert!(steps.iter().any(|s| s.fault.kind() == kind), "no {kind}");
    }
}
