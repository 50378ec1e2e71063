//! Backups end to end, on real processes and real files: a node ingests, backs up into a
//! local repository, and `tandem restore` builds a new cluster from it — equal state and
//! services hashes at the backup's log position, every acknowledged event present
//! exactly once, and the old cluster and the restored one refusing each other's traffic.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use support::cluster::admin_post;
use support::history::{Writers, check_exactly_once};
use support::{NodeProcess, binary, get, wait_for};

/// The shared cluster key: the same on the old cluster and the restored one, so that only
/// the cluster id keeps them apart.
const CLUSTER_KEY: &str = "backup-test-cluster-key-0123456789";

/// A repository in a temporary directory, with its keys.
struct Repo {
    url: String,
    key: PathBuf,
    identity: PathBuf,
    /// Environment of every process that uses it (S3 endpoint and credentials).
    env: Vec<(&'static str, String)>,
}

impl Repo {
    fn init(root: &Path) -> Repo {
        Repo::init_at(root, root.join("repo").display().to_string(), Vec::new())
    }

    fn init_at(root: &Path, url: String, env: Vec<(&'static str, String)>) -> Repo {
        let repo = Repo {
            url,
            key: root.join("repo.key"),
            identity: root.join("identity.age"),
            env,
        };
        let out = repo.tandem(&["backup", "init", "--identity", path(&repo.identity)], &[]);
        assert!(out.contains("repository created"), "{out}");
        repo
    }

    /// Runs `tandem <args> --repo … --repo-key …` and returns its stdout; panics on failure.
    fn tandem(&self, args: &[&str], extra: &[&str]) -> String {
        let (ok, stdout, stderr) = self.try_tandem(args, extra);
        assert!(ok, "tandem {args:?} failed:\n{stdout}\n{stderr}");
        stdout
    }

    /// Runs it; (success, stdout, stderr).
    fn try_tandem(&self, args: &[&str], extra: &[&str]) -> (bool, String, String) {
        let output = Command::new(binary())
            .args(args)
            .args(["--repo", &self.url, "--repo-key", path(&self.key)])
            .args(extra)
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("RUST_LOG", "warn")
            .output()
            .expect("run tandem");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    /// The environment a node that backs up into this repository runs with.
    fn node_env(&self) -> Vec<(&'static str, String)> {
        let mut env = self.env.clone();
        env.extend([
            ("TANDEM_BACKUP__REPO", self.url.clone()),
            ("TANDEM_BACKUP__REPO_KEY_FILE", path(&self.key).to_owned()),
            ("TANDEM_CLUSTER__CLUSTER_KEY", CLUSTER_KEY.to_owned()),
            // No ticks while the test compares hashes: the state moves only with ingest.
            ("TANDEM_CLUSTER__TICK_INTERVAL_MS", "3600000".to_owned()),
        ]);
        env
    }

    fn restore(&self, data_dir: &Path, extra: &[&str]) -> (bool, String, String) {
        let mut args = vec![
            "restore",
            "--identity",
            path(&self.identity),
            "--data-dir",
            path(data_dir),
        ];
        args.extend_from_slice(extra);
        self.try_tandem(&args, &[])
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn start(data_dir: &Path, args: &[&str], env: &[(&'static str, String)]) -> NodeProcess {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    NodeProcess::start_with_args(data_dir, args, &env, true, true)
}

/// The node's state hash report once its services have processed the whole feed.
async fn settled_hashes(url: &str) -> Value {
    wait_for("services to catch up", Duration::from_secs(30), || async {
        let body = get(url, "/v1/admin/state-hash").await.body;
        let head = body["feed_head"].as_u64()?;
        let caught_up = body["services"]
            .as_array()?
            .iter()
            .all(|s| s["cursor"].as_u64() == Some(head));
        caught_up.then_some(body)
    })
    .await
}

/// Ingests through `url` until at least `events` are acknowledged.
async fn ingest(url: &str, events: usize, tag: &str) -> support::history::Acked {
    let writers = Writers::start(vec![url.to_owned()], 4, tag);
    wait_for("events acknowledged", Duration::from_secs(60), || async {
        (writers.acked_count() >= events).then_some(())
    })
    .await;
    writers.stop().await
}

/// Asks the node for a backup and returns the new backup's id.
fn backup_now(repo: &Repo, node: &NodeProcess) -> String {
    let output = Command::new(binary())
        .envs(repo.env.iter().map(|(k, v)| (*k, v.as_str())))
        .args([
            "backup",
            "create",
            "--target",
            &node.url,
            "--admin-key",
            support::ADMIN_KEY,
        ])
        .output()
        .expect("run tandem backup create");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "backup create failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let list: Value =
        serde_json::from_str(&repo.tandem(&["backup", "list", "--json"], &[])).expect("json");
    let id = list.as_array().and_then(|l| l.last()).expect("a backup")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    assert!(stdout.contains(&id), "{stdout}");
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restored_backup_is_a_new_cluster_with_the_same_state() {
    let root = tempfile::tempdir().expect("tempdir");
    let repo = Repo::init(root.path());
    let env = repo.node_env();
    let source = start(&root.path().join("source"), &[], &env);

    let acked = ingest(&source.url, 600, "r").await;
    let before = settled_hashes(&source.url).await;
    let id = backup_now(&repo, &source);
    let manifest: Value =
        serde_json::from_str(&repo.tandem(&["backup", "show", &id], &[])).expect("manifest");
    // Nothing was written after the hashes were read: the backup is at that position (the
    // state's applied index counts one past the last raft index).
    assert_eq!(
        manifest["log_index"].as_u64().map(|i| i + 1),
        before["applied_index"].as_u64()
    );
    assert_eq!(manifest["state_hash"], before["state_hash"]);
    assert_eq!(manifest["services_hash"], before["services_hash"]);

    let verified = repo.tandem(
        &["backup", "verify", "--identity", path(&repo.identity)],
        &[],
    );
    assert!(verified.contains("verified 1 backup(s)"), "{verified}");

    let restored_dir = root.path().join("restored");
    let (ok, stdout, stderr) = repo.restore(&restored_dir, &[]);
    assert!(ok, "restore failed:\n{stdout}\n{stderr}");
    let record: Value =
        serde_json::from_slice(&std::fs::read(restored_dir.join("RESTORED")).expect("RESTORED"))
            .expect("json");
    // The restored state, before the new cluster writes anything, is the source's at that
    // position.
    assert_eq!(record["state_hash"], before["state_hash"]);
    assert_eq!(record["services_hash"], before["services_hash"]);
    let node_id = record["node_id"].as_u64().expect("node id");
    assert_ne!(node_id, 1, "a restored cluster takes new node ids");

    // Started with the wrong id, it refuses and says which one to use.
    let (code, message) =
        support::run_node_expecting_exit(root.path(), &restored_dir, &[], Duration::from_secs(30));
    assert_ne!(code, Some(0));
    assert!(
        message.contains(&format!("--node-id {node_id}")),
        "{message}"
    );

    let node_id_arg = node_id.to_string();
    let restored = start(&restored_dir, &["--node-id", &node_id_arg], &env);
    // It leads its own new cluster, at its own address.
    wait_for(
        "the restored node to lead with its address",
        Duration::from_secs(30),
        || async {
            let body = get(&restored.url, "/v1/admin/cluster").await.body;
            let members = body["members"].as_array()?;
            let me = members.iter().find(|m| m["id"] == node_id)?;
            (body["leader"] == node_id && me["url"] == restored.url.as_str() && members.len() == 1)
                .then_some(())
        },
    )
    .await;
    // Its services took the backup's state; nothing the new cluster appended changed them.
    let after = settled_hashes(&restored.url).await;
    assert_eq!(after["services_hash"], before["services_hash"], "{after}");
    let checked = check_exactly_once(&restored.url, &acked)
        .await
        .expect("every acknowledged event exactly once");
    assert_eq!(checked, acked.values().map(|ids| ids.len()).sum::<usize>());
    // It takes writes as a cluster of its own.
    let reply = support::post(
        &restored.url,
        "/v1/track",
        &json!({"userId": "after-restore", "event": "Order Completed", "messageId": "after-1"}),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);

    // Another node joins the restored cluster as usual: it receives the restored snapshot
    // (and the segments) from the new leader and adopts the new cluster's id.
    let joiner_env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let joiner = NodeProcess::start_with_args(
        &root.path().join("joiner"),
        &["--node-id", "9", "--join"],
        &joiner_env,
        true,
        false,
    );
    let (status, body) = admin_post(
        &restored.url,
        "/v1/admin/cluster/learners",
        &json!({"node_id": 9, "url": joiner.url, "peer_url": joiner.peer_url, "region": "r2"}),
    )
    .await;
    assert!(status < 300, "{status} {body}");
    wait_for(
        "the joiner to hold every event",
        Duration::from_secs(60),
        || async { check_exactly_once(&joiner.url, &acked).await.ok() },
    )
    .await;
    assert_eq!(
        std::fs::read_to_string(root.path().join("joiner").join("CLUSTER"))
            .expect("the joiner recorded a cluster id")
            .trim(),
        record["cluster_id"].as_str().expect("cluster id")
    );

    // The old cluster and the new one never exchange Raft traffic, although they share
    // the cluster key: each refuses the other's cluster id.
    let (status, body) = admin_post(
        &source.url,
        "/v1/admin/cluster/learners",
        &json!({"node_id": 77, "url": restored.url, "peer_url": restored.peer_url, "region": "r2"}),
    )
    .await;
    assert!(status < 300, "{status} {body}");
    wait_for(
        "the restored node to refuse the old cluster",
        Duration::from_secs(30),
        || async {
            restored
                .stderr()
                .contains("refused a peer request from another cluster")
                .then_some(())
        },
    )
    .await;
    let (status, body) = admin_post(
        &restored.url,
        "/v1/admin/cluster/learners",
        &json!({"node_id": 78, "url": source.url, "peer_url": source.peer_url, "region": "r2"}),
    )
    .await;
    assert!(status < 300, "{status} {body}");
    wait_for(
        "the old cluster to refuse the restored one",
        Duration::from_secs(30),
        || async {
            source
                .stderr()
                .contains("refused a peer request from another cluster")
                .then_some(())
        },
    )
    .await;
    // Nothing crossed: the old cluster never replicated to the restored node, and never
    // saw what the new cluster wrote.
    let view = get(&source.url, "/v1/admin/cluster").await.body;
    let learner = view["members"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["id"] == 77))
        .cloned()
        .expect("learner 77 listed");
    assert_eq!(
        learner["matched_index"].as_u64().unwrap_or(0),
        0,
        "{learner}"
    );
    let reply = get(
        &source.url,
        "/v1/profiles/user_id:after-restore?consistency=local",
    )
    .await;
    assert_eq!(reply.status, 404, "{}", reply.body);
    check_exactly_once(&source.url, &acked)
        .await
        .expect("the old cluster still holds its events exactly once");
}

/// Sends `events` through `url` in batches of 100; every batch must be acknowledged.
async fn send_events(url: &str, events: Vec<Value>) {
    for batch in events.chunks(100) {
        let reply = support::post(url, "/v1/batch", &json!({"batch": batch})).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
}

/// `profiles` customers with a few orders each, then `generations` backups, each after
/// 1% of the customers changed, with a prune (keep the 3 newest) after every other one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn incremental_backups_upload_what_changed_and_gc_keeps_what_kept_backups_need() {
    const PROFILES: usize = 2_000;
    const GENERATIONS: usize = 10;
    let root = tempfile::tempdir().expect("tempdir");
    let repo = Repo::init(root.path());
    let env = repo.node_env();
    let source = start(&root.path().join("source"), &[], &env);
    // The history (event bodies, in the log) outweighs the state, as in a real CDP: each
    // order carries a note of varied text.
    let mut events = Vec::new();
    let mut noise = 0x2545_f491_4f6c_dd1d_u64;
    for p in 0..PROFILES {
        for o in 0..5 {
            let note: String = (0..40)
                .map(|_| {
                    noise ^= noise << 13;
                    noise ^= noise >> 7;
                    noise ^= noise << 17;
                    format!("{:x}", noise & 0xffff_ffff)
                })
                .collect();
            events.push(json!({
                "type": "track", "userId": format!("customer-{p}"), "event": "Order Completed",
                "messageId": format!("seed-{p}-{o}"),
                "properties": {"revenue": p % 97 + o, "note": note,
                               "products": [{"category": format!("c{}", p % 13)}]},
            }));
        }
    }
    send_events(&source.url, events).await;

    // Source hashes by backup id, to compare each restore with.
    let mut hashes: Vec<(String, Value)> = Vec::new();
    let mut uploaded = Vec::new();
    for generation in 0..GENERATIONS {
        if generation > 0 {
            // 1% of the customers change: a new trait on each.
            let changed: Vec<Value> = (0..PROFILES / 100)
                .map(|i| {
                    let p = (generation * 37 + i * 101) % PROFILES;
                    json!({"type": "identify", "userId": format!("customer-{p}"),
                           "messageId": format!("gen-{generation}-{p}"),
                           "traits": {"plan": format!("plan-{generation}")}})
                })
                .collect();
            send_events(&source.url, changed).await;
        }
        let before = settled_hashes(&source.url).await;
        let id = backup_now(&repo, &source);
        let manifest: Value =
            serde_json::from_str(&repo.tandem(&["backup", "show", &id], &[])).expect("json");
        assert_eq!(manifest["state_hash"], before["state_hash"]);
        let totals = &manifest["totals"];
        let (scanned, new, sent) = (
            totals["bytes_scanned"].as_u64().expect("scanned"),
            totals["bytes_new"].as_u64().expect("new"),
            totals["bytes_uploaded"].as_u64().expect("uploaded"),
        );
        println!(
            "generation {generation}: {scanned} bytes scanned, {new} new, {} uploaded",
            totals["bytes_uploaded"]
        );
        assert!(new <= scanned && (generation > 0 || new == scanned));
        uploaded.push(sent);
        hashes.push((id, before));
        if generation % 2 == 1 {
            repo.tandem(
                &[
                    "backup",
                    "prune",
                    "--keep-last",
                    "3",
                    "--keep-daily",
                    "0",
                    "--keep-weekly",
                    "0",
                    "--keep-monthly",
                    "0",
                    "--grace-secs",
                    "0",
                ],
                &[],
            );
        }
    }
    // After the first, a backup uploads a fraction of what the first (full) one did: the
    // log's chunks repeat; the state's, where 1% of customers changed, mostly do not.
    for (generation, sent) in uploaded.iter().enumerate().skip(1) {
        assert!(
            *sent * 3 < uploaded[0],
            "generation {generation} uploaded {sent} bytes, the full backup {}",
            uploaded[0]
        );
    }
    let list: Value =
        serde_json::from_str(&repo.tandem(&["backup", "list", "--json"], &[])).expect("json");
    let kept: Vec<String> = list
        .as_array()
        .expect("list")
        .iter()
        .map(|b| b["id"].as_str().expect("id").to_owned())
        .collect();
    // The last prune ran after generation 9: it kept 8 and 9; none ran after… every odd
    // generation prunes, so the survivors are the 3 newest at the last prune.
    let expected: Vec<String> = hashes[GENERATIONS - 3..]
        .iter()
        .map(|(id, _)| id.clone())
        .collect();
    assert_eq!(kept, expected);
    let verified = repo.tandem(
        &["backup", "verify", "--identity", path(&repo.identity)],
        &[],
    );
    assert!(verified.contains("verified 3 backup(s)"), "{verified}");
    // Every kept backup restores, to the state the source had when it was taken.
    for (id, before) in &hashes[GENERATIONS - 3..] {
        let dir = root.path().join(format!("restore-{id}"));
        let (ok, stdout, stderr) = repo.restore(&dir, &["--backup", id]);
        assert!(ok, "restore {id}:\n{stdout}\n{stderr}");
        let record: Value =
            serde_json::from_slice(&std::fs::read(dir.join("RESTORED")).expect("RESTORED"))
                .expect("json");
        assert_eq!(record["state_hash"], before["state_hash"], "{id}");
        assert_eq!(record["services_hash"], before["services_hash"], "{id}");
    }
    // A pruned backup is gone.
    let (ok, _, stderr) = repo.restore(&root.path().join("pruned"), &["--backup", &hashes[0].0]);
    assert!(!ok && stderr.contains("no such backup"), "{stderr}");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// One object of the repository in `dir` whose relative name starts with `prefix`.
fn object(dir: &Path, prefix: &str) -> PathBuf {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
            if entry.path().is_dir() {
                walk(&entry.path(), out);
            } else {
                out.push(entry.path());
            }
        }
    }
    let mut all = Vec::new();
    walk(dir, &mut all);
    all.sort();
    all.into_iter()
        .find(|p| p.strip_prefix(dir).is_ok_and(|r| r.starts_with(prefix)))
        .unwrap_or_else(|| panic!("no {prefix} object in {}", dir.display()))
}

/// Every kind of damage to every kind of object: verify names the object and the check
/// that failed, and restore refuses and leaves no data directory behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn damaged_objects_are_named_by_verify_and_refused_by_restore() {
    let root = tempfile::tempdir().expect("tempdir");
    let repo = Repo::init(root.path());
    let source = start(&root.path().join("source"), &[], &repo.node_env());
    ingest(&source.url, 200, "c").await;
    let id = backup_now(&repo, &source);
    let pristine = PathBuf::from(&repo.url);
    // (object, damage, what the report must say)
    let cases: [(&str, &str, &[&str]); 9] = [
        ("chunks", "flip", &["chunks/", "age"]),
        ("chunks", "truncate", &["chunks/", "age"]),
        ("chunks", "delete", &["chunks/", "presence"]),
        ("manifests", "flip", &["manifests/", "MAC"]),
        ("manifests", "truncate", &["manifests/", "MAC"]),
        ("manifests", "delete", &["manifests/", "no such backup"]),
        ("config", "flip", &["config", "MAC"]),
        ("config", "truncate", &["config", "MAC"]),
        ("config", "delete", &["no repository"]),
    ];
    for (n, (kind, damage, expected)) in cases.iter().enumerate() {
        let copy = root.path().join(format!("damaged-{n}"));
        copy_dir(&pristine, &copy);
        let victim = object(&copy, kind);
        let mut bytes = std::fs::read(&victim).expect("read");
        match *damage {
            "flip" => {
                let at = bytes.len() * 2 / 3;
                bytes[at] ^= 0x01;
                std::fs::write(&victim, &bytes).expect("write");
            }
            "truncate" => std::fs::write(&victim, &bytes[..bytes.len() - 7]).expect("write"),
            _ => std::fs::remove_file(&victim).expect("delete"),
        }
        let damaged = Repo {
            url: copy.display().to_string(),
            key: repo.key.clone(),
            identity: repo.identity.clone(),
            env: Vec::new(),
        };
        let (ok, stdout, stderr) = damaged.try_tandem(
            &[
                "backup",
                "verify",
                "--identity",
                path(&repo.identity),
                "--backup",
                &id,
            ],
            &[],
        );
        let report = format!("{stdout}{stderr}");
        assert!(!ok, "{kind} {damage}: verify passed:\n{report}");
        for needle in *expected {
            assert!(
                report.contains(needle),
                "{kind} {damage}: {needle:?} not in:\n{report}"
            );
        }
        let target = root.path().join(format!("restore-{n}"));
        let (ok, stdout, stderr) = damaged.restore(&target, &["--backup", &id]);
        assert!(!ok, "{kind} {damage}: restore succeeded:\n{stdout}");
        for needle in *expected {
            assert!(
                stderr.contains(needle),
                "{kind} {damage}: {needle:?} not in:\n{stderr}"
            );
        }
        assert!(
            !target.exists(),
            "{kind} {damage}: a refused restore left {}",
            target.display()
        );
    }
}

/// A `moto_server` (PyPI `moto[server]`, an S3-compatible server) on a free port, killed by
/// pid when dropped.
struct Moto {
    child: std::process::Child,
    url: String,
}

impl Moto {
    /// Starts one, or says why it cannot (not installed).
    fn start() -> Result<Moto, String> {
        use std::io::{BufRead, BufReader};
        let mut child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", "0"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("moto_server: {e} (pip install 'moto[server]')"))?;
        let stderr = child.stderr.take().expect("stderr");
        let (lines, received) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match received.recv_timeout(left) {
                Ok(line) => {
                    if let Some(at) = line.find("Running on http://") {
                        let url = line[at + "Running on ".len()..].trim().to_owned();
                        return Ok(Moto { child, url });
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err("moto_server did not report its address within 30 s".into());
                }
            }
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The same round trip through S3: a real S3-compatible server started here (moto).
/// Skipped with the reason when moto is not installed, except under CI (`CI` set), where
/// it must run (`.ci/run` installs it).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backups_round_trip_through_an_s3_compatible_server() {
    let moto = match Moto::start() {
        Ok(moto) => moto,
        Err(why) if std::env::var_os("CI").is_none() => {
            println!("SKIPPED backups_round_trip_through_an_s3_compatible_server: {why}");
            return;
        }
        Err(why) => panic!("CI is set and the S3 test cannot run: {why}"),
    };
    let bucket = "tandem-backups";
    let created = support::client()
        .put(format!("{}/{bucket}", moto.url))
        .send()
        .await
        .expect("create bucket");
    assert!(created.status().is_success(), "{}", created.status());
    let env = vec![
        ("AWS_ENDPOINT_URL", moto.url.clone()),
        ("AWS_ALLOW_HTTP", "true".to_owned()),
        ("AWS_ACCESS_KEY_ID", "test".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "test".to_owned()),
        ("AWS_REGION", "us-east-1".to_owned()),
    ];
    let root = tempfile::tempdir().expect("tempdir");
    let repo = Repo::init_at(root.path(), format!("s3://{bucket}/cluster-a"), env);
    let source = start(&root.path().join("source"), &[], &repo.node_env());
    let acked = ingest(&source.url, 300, "s3").await;
    let before = settled_hashes(&source.url).await;
    let id = backup_now(&repo, &source);
    let verified = repo.tandem(
        &["backup", "verify", "--identity", path(&repo.identity)],
        &[],
    );
    assert!(verified.contains("verified 1 backup(s)"), "{verified}");
    let dir = root.path().join("restored");
    let (ok, stdout, stderr) = repo.restore(&dir, &["--backup", &id]);
    assert!(ok, "restore:\n{stdout}\n{stderr}");
    let record: Value =
        serde_json::from_slice(&std::fs::read(dir.join("RESTORED")).expect("RESTORED"))
            .expect("json");
    assert_eq!(record["state_hash"], before["state_hash"]);
    assert_eq!(record["services_hash"], before["services_hash"]);
    let node_id = record["node_id"].as_u64().expect("id").to_string();
    let restored = start(&dir, &["--node-id", &node_id], &repo.node_env());
    check_exactly_once(&restored.url, &acked)
        .await
        .expect("every acknowledged event exactly once");
}

/// kill -9 (crash points: the process aborts there) during a backup, a GC and a restore:
/// nothing half-valid is left — no manifest for the cut backup, kept backups intact after
/// the cut GC, and a cut restore's directory refused by the node and by a second restore.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crashes_during_backup_gc_and_restore_leave_nothing_half_valid() {
    let root = tempfile::tempdir().expect("tempdir");
    let repo = Repo::init(root.path());
    let source_dir = root.path().join("source");
    let list = |repo: &Repo| -> Vec<String> {
        let list: Value =
            serde_json::from_str(&repo.tandem(&["backup", "list", "--json"], &[])).expect("json");
        list.as_array()
            .expect("list")
            .iter()
            .map(|b| b["id"].as_str().expect("id").to_owned())
            .collect()
    };

    // A backup cut after its chunks are stored, before its manifest.
    let mut env = repo.node_env();
    env.push(("TANDEM_CRASH_AT", "backup:before-manifest".to_owned()));
    let mut crashing = start(&source_dir, &[], &env);
    let acked = ingest(&crashing.url, 300, "k").await;
    let output = Command::new(binary())
        .args([
            "backup",
            "create",
            "--target",
            &crashing.url,
            "--admin-key",
            support::ADMIN_KEY,
        ])
        .output()
        .expect("backup create");
    assert!(!output.status.success(), "the node died mid-backup");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !crashing.has_exited() {
        assert!(
            std::time::Instant::now() < deadline,
            "the node did not die at the crash point"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(crashing.stderr().contains("backup:before-manifest"));
    drop(crashing);
    assert!(list(&repo).is_empty(), "a cut backup never happened");
    let chunks_dir = Path::new(&repo.url).join("chunks");
    assert!(chunks_dir.exists(), "its chunks were stored");

    // The node comes back; backups go on (its stale lock goes), GC removes the leftovers.
    let source = start(&source_dir, &[], &repo.node_env());
    let first = backup_now(&repo, &source);
    ingest(&source.url, 100, "k2").await;
    let second = backup_now(&repo, &source);
    assert_eq!(list(&repo), [first.clone(), second.clone()]);

    // A GC cut after its first chunk deletion: the kept backup is whole, a second run ends
    // the work.
    let (ok, _, stderr) = repo.try_tandem(
        &[
            "backup",
            "prune",
            "--keep-last",
            "1",
            "--keep-daily",
            "0",
            "--keep-weekly",
            "0",
            "--keep-monthly",
            "0",
            "--grace-secs",
            "0",
        ],
        &[],
    );
    assert!(ok, "{stderr}");
    ingest(&source.url, 100, "k3").await;
    let third = backup_now(&repo, &source);
    let output = Command::new(binary())
        .args([
            "backup",
            "prune",
            "--repo",
            &repo.url,
            "--repo-key",
            path(&repo.key),
        ])
        .args([
            "--keep-last",
            "1",
            "--keep-daily",
            "0",
            "--keep-weekly",
            "0",
        ])
        .args(["--keep-monthly", "0", "--grace-secs", "0"])
        .env("TANDEM_CRASH_AT", "gc:chunk-deleted")
        .output()
        .expect("prune");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("gc:chunk-deleted"));
    assert_eq!(list(&repo), [third]);
    let verified = repo.tandem(
        &["backup", "verify", "--identity", path(&repo.identity)],
        &[],
    );
    assert!(verified.contains("verified 1 backup(s)"), "{verified}");
    let out = repo.tandem(
        &[
            "backup",
            "prune",
            "--keep-last",
            "1",
            "--keep-daily",
            "0",
            "--keep-weekly",
            "0",
            "--keep-monthly",
            "0",
            "--grace-secs",
            "0",
        ],
        &[],
    );
    assert!(out.contains("kept 1 backup(s)"), "{out}");

    // A restore cut after its download: the node refuses the directory, so does a second
    // restore; once it is deleted, a restore succeeds.
    let dir = root.path().join("restored");
    let output = Command::new(binary())
        .args([
            "restore",
            "--repo",
            &repo.url,
            "--repo-key",
            path(&repo.key),
        ])
        .args(["--identity", path(&repo.identity), "--data-dir", path(&dir)])
        .env("TANDEM_CRASH_AT", "restore:downloaded")
        .output()
        .expect("restore");
    assert!(!output.status.success());
    assert!(dir.join("restore-incomplete").exists());
    let (code, message) =
        support::run_node_expecting_exit(root.path(), &dir, &[], Duration::from_secs(30));
    assert_ne!(code, Some(0));
    assert!(message.contains("interrupted restore"), "{message}");
    let (ok, _, stderr) = repo.restore(&dir, &[]);
    assert!(!ok && stderr.contains("not empty"), "{stderr}");
    std::fs::remove_dir_all(&dir).expect("remove");
    let (ok, stdout, stderr) = repo.restore(&dir, &[]);
    assert!(ok, "{stdout}\n{stderr}");
    let record: Value =
        serde_json::from_slice(&std::fs::read(dir.join("RESTORED")).expect("RESTORED"))
            .expect("json");
    let node_id = record["node_id"].as_u64().expect("id").to_string();
    let restored = start(&dir, &["--node-id", &node_id], &repo.node_env());
    check_exactly_once(&restored.url, &acked)
        .await
        .expect("the events acknowledged before the cut backup are all there, once");
}

/// A three-node cluster with a schedule every 2 seconds: only the leader takes the
/// backups, one per due time, and after the leader is killed the new one goes on without
/// repeating a run.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scheduled_backups_run_once_per_due_time_on_the_leader_across_a_failover() {
    let root = tempfile::tempdir().expect("tempdir");
    let repo = Repo::init(root.path());
    let key = path(&repo.key).to_owned();
    let env = [
        ("TANDEM_BACKUP__REPO", repo.url.as_str()),
        ("TANDEM_BACKUP__REPO_KEY_FILE", key.as_str()),
        ("TANDEM_BACKUP__SCHEDULE", "*/2 * * * * *"),
    ];
    let mut cluster = support::cluster::TestCluster::start_with_env(
        &root.path().join("cluster"),
        &["r1", "r2", "r3"],
        &env,
    )
    .await;
    let backups = |repo: &Repo| -> Vec<(u64, i64)> {
        let list: Value =
            serde_json::from_str(&repo.tandem(&["backup", "list", "--json"], &[])).expect("json");
        list.as_array()
            .expect("list")
            .iter()
            .map(|b| {
                (
                    b["node_id"].as_u64().expect("node"),
                    b["started_ms"].as_i64().expect("ms"),
                )
            })
            .collect()
    };
    let first_leader = cluster.leader(Duration::from_secs(30)).await;
    wait_for("two scheduled backups", Duration::from_secs(60), || async {
        (backups(&repo).len() >= 2).then_some(())
    })
    .await;
    assert!(
        backups(&repo).iter().all(|(node, _)| *node == first_leader),
        "only the leader runs the schedule: {:?}",
        backups(&repo)
    );
    cluster.kill9(first_leader);
    let second_leader = cluster.leader(Duration::from_secs(30)).await;
    assert_ne!(second_leader, first_leader);
    wait_for(
        "a scheduled backup by the new leader",
        Duration::from_secs(60),
        || async {
            backups(&repo)
                .iter()
                .any(|(node, _)| *node == second_leader)
                .then_some(())
        },
    )
    .await;
    let mut all = backups(&repo);
    all.sort_by_key(|(_, ms)| *ms);
    // The schedule falls due at every even second: between two runs there is always a
    // due time the first run did not cover.
    for pair in all.windows(2) {
        assert!(
            pair[1].1 / 2_000 > pair[0].1 / 2_000,
            "two runs for one due time: {all:?}"
        );
    }
}

/// A backup taken under other apply settings (here: another dedup window) is refused with
/// the setting named, unless forced; the forced restore says what it overrode.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restore_under_other_apply_settings_is_refused_unless_forced() {
    let root = tempfile::tempdir().expect("tempdir");
    let repo = Repo::init(root.path());
    let source = start(&root.path().join("source"), &[], &repo.node_env());
    ingest(&source.url, 100, "s").await;
    let id = backup_now(&repo, &source);
    let config = root.path().join("other.toml");
    std::fs::write(&config, "[ingest]\ndedup_window_hours = 48\n").expect("config");
    let (ok, _, stderr) = repo.restore(
        &root.path().join("refused"),
        &["--backup", &id, "--config", path(&config)],
    );
    assert!(!ok, "a restore under other settings must be refused");
    assert!(
        stderr.contains("ingest.dedup_window_hours") && stderr.contains("--force"),
        "{stderr}"
    );
    assert!(!root.path().join("refused").exists());
    let (ok, stdout, stderr) = repo.restore(
        &root.path().join("forced"),
        &["--backup", &id, "--config", path(&config), "--force"],
    );
    assert!(ok, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("FORCED") && stdout.contains("ingest.dedup_window_hours"),
        "{stdout}"
    );
}
