//! Continuous log archiving and point-in-time restore, end to end with real processes:
//! a restore `--at` a time lands on the state the live node had there (hashes equal a
//! later backup's), a lost cluster comes back with every event acknowledged before the
//! archived position exactly once, a leader killed mid-archiving leaves no gap and no
//! overlap, and a damaged archive object is named by `verify` and refused by restore.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use support::cluster::{TestCluster, admin_get, admin_post};
use support::{NodeProcess, binary, get, settled_hashes, wait_for};

/// A repository in a temporary directory, with its keys.
struct Repo {
    dir: PathBuf,
    key: PathBuf,
    identity: PathBuf,
}

impl Repo {
    fn init(root: &Path) -> Repo {
        let repo = Repo {
            dir: root.join("repo"),
            key: root.join("repo.key"),
            identity: root.join("identity.age"),
        };
        let out = repo.tandem(&["backup", "init", "--identity", path(&repo.identity)]);
        assert!(out.1.contains("repository created"), "{out:?}");
        repo
    }

    /// Runs `tandem <args> --repo … --repo-key …`: (success, stdout, stderr).
    fn tandem(&self, args: &[&str]) -> (bool, String, String) {
        let output = Command::new(binary())
            .args(args)
            .args(["--repo", path(&self.dir), "--repo-key", path(&self.key)])
            .env("RUST_LOG", "warn")
            .output()
            .expect("run tandem");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    fn node_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("TANDEM_BACKUP__REPO", path(&self.dir).to_owned()),
            ("TANDEM_BACKUP__REPO_KEY_FILE", path(&self.key).to_owned()),
            ("TANDEM_BACKUP__ARCHIVE_INTERVAL_SECS", "1".to_owned()),
            ("TANDEM_BACKUP__SCHEDULE", String::new()),
            // No ticks: the state moves only with ingest.
            ("TANDEM_CLUSTER__TICK_INTERVAL_MS", "3600000".to_owned()),
        ]
    }

    fn restore_at(&self, data_dir: &Path, at: &str) -> (bool, String, String) {
        self.tandem(&[
            "restore",
            "--identity",
            path(&self.identity),
            "--data-dir",
            path(data_dir),
            "--at",
            at,
        ])
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn start(data_dir: &Path, args: &[&str], env: &[(&'static str, String)]) -> NodeProcess {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    NodeProcess::start_with_args(data_dir, args, &env, true, true)
}

/// Sends `events` for `user` through `url`, 50 a batch, each acknowledged.
async fn send(url: &str, user: &str, events: usize) {
    let items: Vec<Value> = (0..events)
        .map(|i| {
            json!({"type": "track", "userId": user, "event": "Order Completed",
                        "messageId": format!("{user}-{i}"), "properties": {"revenue": i}})
        })
        .collect();
    for batch in items.chunks(50) {
        let reply = support::post(url, "/v1/batch", &json!({"batch": batch})).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
}

/// Takes a backup on `url` through the admin API; returns its summary.
async fn backup(url: &str) -> Value {
    let (status, body) = admin_post(url, "/v1/admin/backups", &json!({})).await;
    assert_eq!(status, 202, "{body}");
    let started = body["started_ms"].as_i64().expect("started_ms");
    wait_for("the backup to finish", Duration::from_secs(60), || async {
        let (_, status) = admin_get(url, "/v1/admin/backups/status").await;
        let last = &status["last"];
        let ours = last["summary"]["started_ms"].as_i64() >= Some(started);
        match last["result"].as_str() {
            Some("succeeded") if ours => Some(last["summary"].clone()),
            Some("failed") => panic!("backup failed: {last}"),
            _ => None,
        }
    })
    .await
}

/// Waits until the archive, as `url` reports it, holds log index `index`.
async fn archived_through(url: &str, index: u64) -> Value {
    wait_for(
        "the archive to catch up",
        Duration::from_secs(60),
        || async {
            let (_, status) = admin_get(url, "/v1/admin/backups/status").await;
            (status["archive"]["archived_index"].as_u64()? >= index)
                .then_some(status["archive"].clone())
        },
    )
    .await
}

fn restored_record(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("RESTORED")).expect("RESTORED")).expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn point_in_time_restore_lands_on_the_last_batch_at_or_before_the_time() {
    let root = tempfile::tempdir().expect("tempdir");
    let repo = Repo::init(root.path());
    let env = repo.node_env();
    let source = start(&root.path().join("source"), &[], &env);

    send(&source.url, "phase-a", 300).await;
    let b1 = backup(&source.url).await;
    send(&source.url, "phase-b1", 200).await;
    let mid = settled_hashes(&source.url).await;
    let t_mid = now_ms();
    wait_for("the clock to move on", Duration::from_secs(5), || async {
        (now_ms() > t_mid + 20).then_some(())
    })
    .await;
    send(&source.url, "phase-b2", 200).await;
    let at_b2 = settled_hashes(&source.url).await;
    let t_b_end = now_ms();
    // B2 starts strictly after the time restored to, so the restore must replay from B1.
    wait_for("the clock to move on", Duration::from_secs(5), || async {
        (now_ms() > t_b_end + 5).then_some(())
    })
    .await;
    let b2 = backup(&source.url).await;
    assert_eq!(
        b2["log_index"].as_u64().map(|i| i + 1),
        at_b2["applied_index"].as_u64()
    );
    send(&source.url, "phase-c", 200).await;
    let live = settled_hashes(&source.url).await;
    let last = live["applied_index"].as_u64().expect("applied") - 1;
    archived_through(&source.url, last).await;

    // At the end of phase B, from B1 and the archive: exactly B2's state.
    let dir = root.path().join("at-b2");
    let (ok, stdout, stderr) = repo.restore_at(&dir, &t_b_end.to_string());
    assert!(
        ok,
        "restore --at failed:\n{stdout}\n{stderr}\n{:?}",
        repo.tandem(&["backup", "list"])
    );
    let record = restored_record(&dir);
    assert_eq!(record["backup"], b1["id"], "{stdout}");
    assert_eq!(record["log_index"], b2["log_index"], "{stdout}");
    assert_eq!(record["state_hash"], b2["state_hash"]);
    let node_id = record["node_id"].as_u64().expect("node id").to_string();
    let mut restored = start(&dir, &["--node-id", &node_id], &env);
    // Started, its services catch up from B1's sections over the replayed feed to B2's
    // (the state hash moves on with the new cluster's own first entries).
    let after = settled_hashes(&restored.url).await;
    assert_eq!(after["services_hash"], b2["services_hash"], "{after}");
    let reply = get(
        &restored.url,
        "/v1/profiles/user_id:phase-c?consistency=local",
    )
    .await;
    assert_eq!(
        reply.status, 404,
        "phase C is after the time: {}",
        reply.body
    );
    restored.terminate();

    // Inside phase B: the last batch of its first half, nothing of the second.
    let dir = root.path().join("at-mid");
    let (ok, stdout, stderr) = repo.restore_at(&dir, &t_mid.to_string());
    assert!(ok, "restore --at failed:\n{stdout}\n{stderr}");
    let record = restored_record(&dir);
    assert_eq!(
        record["log_index"].as_u64().map(|i| i + 1),
        mid["applied_index"].as_u64()
    );
    assert_eq!(record["state_hash"], mid["state_hash"]);
    assert!(record["log_time_ms"].as_i64().expect("log time") <= t_mid);

    // Before every backup, and past what the archive holds: refused, saying why.
    let (ok, _, stderr) = repo.restore_at(&root.path().join("early"), "1000");
    assert!(!ok && stderr.contains("precedes every backup"), "{stderr}");
    let future = (now_ms() + 3_600_000).to_string();
    let (ok, _, stderr) = repo.restore_at(&root.path().join("late"), &future);
    assert!(!ok && stderr.contains("does not reach"), "{stderr}");
    assert!(
        stderr.contains(&format!("ends at index {last}")) || stderr.contains("ends at index"),
        "{stderr}"
    );
    assert!(
        !root.path().join("late").exists(),
        "a refused restore leaves nothing"
    );

    // The archive is intact and continuous; then one flipped byte is named and refused.
    let (ok, stdout, _) = repo.tandem(&["backup", "verify", "--identity", path(&repo.identity)]);
    assert!(ok && !stdout.contains("PROBLEM"), "{stdout}");
    let (ok, stdout, _) = repo.tandem(&["backup", "list"]);
    assert!(
        ok && stdout.contains("archive of cluster") && !stdout.contains("PROBLEM"),
        "{stdout}"
    );
    let victim = archive_object_holding(&repo.dir, b2["log_index"].as_u64().expect("index"));
    let mut bytes = std::fs::read(&victim).expect("read object");
    let at = bytes.len() - 10;
    bytes[at] ^= 0x01;
    std::fs::write(&victim, bytes).expect("write object");
    let name = victim
        .file_name()
        .and_then(|n| n.to_str())
        .expect("name")
        .to_owned();
    let (ok, stdout, _) = repo.tandem(&["backup", "verify", "--identity", path(&repo.identity)]);
    assert!(
        !ok && stdout.contains("PROBLEM") && stdout.contains(&name),
        "{stdout}"
    );
    let (ok, _, stderr) = repo.restore_at(&root.path().join("damaged"), &t_b_end.to_string());
    assert!(
        !ok && stderr.contains(&name) && stderr.contains("MAC"),
        "{stderr}"
    );
}

/// The archive object file whose range holds `index`.
fn archive_object_holding(repo: &Path, index: u64) -> PathBuf {
    let mut found = None;
    for cluster in std::fs::read_dir(repo.join("archive")).expect("archive dir") {
        for object in std::fs::read_dir(cluster.expect("entry").path()).expect("cluster dir") {
            let object = object.expect("entry").path();
            let name = object
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("")
                .to_owned();
            if let Some((first, last)) = name.split_once('-') {
                let (first, last): (u64, u64) =
                    (first.parse().unwrap_or(0), last.parse().unwrap_or(0));
                if first <= index && index <= last {
                    found = Some(object);
                }
            }
        }
    }
    found.unwrap_or_else(|| panic!("no archive object holds index {index}"))
}

/// Batches acknowledged, with when: (user, messageIds, ack time ms).
type Acks = Arc<Mutex<Vec<(String, Vec<String>, i64)>>>;

/// A writer per user, sending 10-event batches round the nodes and recording acks.
fn timed_writers(
    urls: Vec<String>,
    users: usize,
    stop: Arc<std::sync::atomic::AtomicBool>,
    acks: Acks,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..users)
        .map(|w| {
            let (urls, stop, acks) = (urls.clone(), Arc::clone(&stop), Arc::clone(&acks));
            tokio::spawn(async move {
                let user = format!("lost-{w}");
                let mut node = w;
                for n in 0.. {
                    if stop.load(std::sync::atomic::Ordering::Acquire) {
                        return;
                    }
                    let ids: Vec<String> = (0..10).map(|i| format!("{user}-{n}-{i}")).collect();
                    let batch: Vec<Value> = ids.iter().map(|id| json!({"type": "track", "userId": user, "event": "Order Completed", "messageId": id})).collect();
                    let url = &urls[node % urls.len()];
                    let status = support::client()
                        .post(format!("{url}/v1/batch"))
                        .basic_auth(support::WRITE_KEY, Some(""))
                        .timeout(Duration::from_secs(5))
                        .json(&json!({"batch": batch}))
                        .send()
                        .await
                        .map(|r| r.status().as_u16());
                    if status.ok() == Some(200) {
                        acks.lock().expect("acks").push((user.clone(), ids, now_ms()));
                    } else {
                        node += 1;
                    }
                }
            })
        })
        .collect()
}

/// The messageIds stored for `user` on `url`, with their counts.
async fn stored(url: &str, user: &str) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    let mut before: Option<u64> = None;
    loop {
        let cursor = before.map(|b| format!("&before={b}")).unwrap_or_default();
        let page = get(
            url,
            &format!("/v1/profiles/user_id:{user}/events?limit=1000&consistency=local{cursor}"),
        )
        .await;
        for event in page.body["events"].as_array().into_iter().flatten() {
            if let Some(id) = event["messageId"].as_str() {
                *counts.entry(id.to_owned()).or_insert(0) += 1;
            }
        }
        match page.body["next_before"].as_u64() {
            Some(next) => before = Some(next),
            None => return counts,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_cluster_comes_back_from_the_archive_across_a_leader_failover() {
    let root = tempfile::tempdir().expect("tempdir");
    let repo = Repo::init(root.path());
    let env = repo.node_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut cluster =
        TestCluster::start_with_env(&root.path().join("cluster"), &["r1", "r2", "r3"], &env).await;
    let leader = cluster.leader(Duration::from_secs(30)).await;
    backup(&cluster.urls[&leader]).await;

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acks: Acks = Arc::default();
    let urls: Vec<String> = cluster.urls.values().cloned().collect();
    let writers = timed_writers(urls, 4, Arc::clone(&stop), Arc::clone(&acks));
    let uploads = |status: &Value| status["uploads"].as_u64().unwrap_or(0);
    wait_for("the leader to archive", Duration::from_secs(60), || async {
        let (_, s) = admin_get(&cluster.urls[&leader], "/v1/admin/backups/status").await;
        (uploads(&s["archive"]) >= 3).then_some(())
    })
    .await;
    // Failover mid-archiving: the new leader continues from the highest archived range.
    cluster.kill9(leader);
    let new_leader = wait_for("a new leader", Duration::from_secs(30), || async {
        for (id, url) in &cluster.urls {
            if *id == leader {
                continue;
            }
            let (_, s) = admin_get(url, "/v1/admin/backups/status").await;
            if uploads(&s["archive"]) >= 3 {
                return Some(*id);
            }
        }
        None
    })
    .await;
    // The whole cluster is lost: every node killed, every data directory gone.
    let kill_ms = now_ms();
    for id in cluster.urls.keys().copied().collect::<Vec<_>>() {
        cluster.kill9(id);
    }
    stop.store(true, std::sync::atomic::Ordering::Release);
    for writer in writers {
        writer.abort();
    }
    std::fs::remove_dir_all(root.path().join("cluster")).expect("discard the data dirs");
    eprintln!(
        "killed node {leader} (leader), then all; node {new_leader} had taken over archiving"
    );

    let (ok, stdout, _) = repo.tandem(&["backup", "list"]);
    assert!(
        ok && !stdout.contains("PROBLEM"),
        "no gap, no overlap across the failover:\n{stdout}"
    );
    let (ok, stdout, _) = repo.tandem(&["backup", "verify", "--identity", path(&repo.identity)]);
    assert!(ok && !stdout.contains("PROBLEM"), "{stdout}");

    let dir = root.path().join("restored");
    let (ok, stdout, stderr) = repo.restore_at(&dir, "now");
    assert!(ok, "restore --at now failed:\n{stdout}\n{stderr}");
    let record = restored_record(&dir);
    let landed_ms = record["log_time_ms"].as_i64().expect("log time");
    let node_id = record["node_id"].as_u64().expect("node id").to_string();
    let plain_env = repo.node_env();
    let restored = start(&dir, &["--node-id", &node_id], &plain_env);
    let acks = acks.lock().expect("acks").clone();
    let users: std::collections::BTreeSet<String> = acks.iter().map(|a| a.0.clone()).collect();
    let mut counts = BTreeMap::new();
    for user in &users {
        counts.extend(stored(&restored.url, user).await);
    }
    assert!(counts.values().all(|c| *c == 1), "an event stored twice");
    let mut before = 0;
    for (user, ids, acked_ms) in &acks {
        if *acked_ms <= landed_ms {
            before += 1;
            for id in ids {
                assert_eq!(
                    counts.get(id),
                    Some(&1),
                    "{user}: {id}, acknowledged at {acked_ms} before the archived position {landed_ms}, is missing"
                );
            }
        }
    }
    assert!(
        before > 0,
        "nothing was acknowledged before the archived position"
    );
    let tail_ms = kill_ms - landed_ms;
    eprintln!(
        "missing tail: {tail_ms} ms of log (archive interval 1000 ms); {before} of {} batches before it",
        acks.len()
    );
    assert!(
        tail_ms <= 1_000 + 4_000,
        "the archive lagged {tail_ms} ms behind the lost cluster"
    );
}

/// The alert's view on `url`: the states of `TandemArchiveBehind` there.
async fn archive_alert_state(url: &str) -> Option<String> {
    let view = get(url, "/v1/admin/alerts").await.body;
    view["alerts"]
        .as_array()?
        .iter()
        .find(|a| a["name"] == "TandemArchiveBehind")
        .and_then(|a| a["state"].as_str().map(str::to_owned))
}

/// A repository that refuses uploads (its directory replaced by a file, which stops even
/// root) holds the recovery point back: `TandemArchiveBehind` fires and failures are
/// counted; once the repository is back, the archive catches up with no gap or overlap
/// (`verify`) and the alert resolves.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_archive_fires_its_alert_and_catches_up_without_a_gap() {
    let root = tempfile::tempdir().expect("tempdir");
    let repo = Repo::init(root.path());
    let mut env = repo.node_env();
    env.push(("TANDEM_ALERTS__EVALUATION_INTERVAL_MS", "250".to_owned()));
    env.push((
        "TANDEM_ALERTS__RULES__ARCHIVE_BEHIND__FOR_MS",
        "1000".to_owned(),
    ));
    let node = start(&root.path().join("node"), &[], &env);

    send(&node.url, "before", 100).await;
    let head = settled_hashes(&node.url).await["applied_index"]
        .as_u64()
        .expect("applied_index")
        - 1;
    archived_through(&node.url, head).await;
    assert_eq!(archive_alert_state(&node.url).await, None);

    let moved = root.path().join("repo.away");
    std::fs::rename(&repo.dir, &moved).expect("move the repository away");
    std::fs::write(&repo.dir, b"not a directory").expect("a file in its place");
    send(&node.url, "during", 100).await;
    wait_for(
        "TandemArchiveBehind to fire",
        Duration::from_secs(60),
        || async {
            (archive_alert_state(&node.url).await.as_deref() == Some("firing")).then_some(())
        },
    )
    .await;
    let (_, status) = admin_get(&node.url, "/v1/admin/backups/status").await;
    let archive = &status["archive"];
    assert!(archive["failures"].as_u64() > Some(0), "{archive}");
    assert!(archive["unarchived_secs"].as_u64() > Some(6), "{archive}");
    assert!(
        archive["archived_index"].as_u64() < Some(head + 1),
        "{archive}"
    );

    std::fs::remove_file(&repo.dir).expect("remove the file");
    std::fs::rename(&moved, &repo.dir).expect("put the repository back");
    let head = settled_hashes(&node.url).await["applied_index"]
        .as_u64()
        .expect("applied_index")
        - 1;
    archived_through(&node.url, head).await;
    wait_for("the alert to resolve", Duration::from_secs(60), || async {
        (archive_alert_state(&node.url).await.as_deref() != Some("firing")).then_some(())
    })
    .await;
    let (ok, out, err) = repo.tandem(&["backup", "verify", "--identity", path(&repo.identity)]);
    assert!(ok, "verify after the stall:\n{out}\n{err}");
}
