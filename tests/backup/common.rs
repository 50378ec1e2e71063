//! Helpers the backup tests share: a repository with its keys and the `tandem` commands
//! run against it, a node backing up into it, ingest and settled hashes, and a
//! `moto_server` (S3-compatible) started by pid.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::history::Writers;
pub use crate::support::settled_hashes;
use crate::support::{self, NodeProcess, binary, wait_for};

/// The shared cluster key: the same on the old cluster and the restored one, so that only
/// the cluster id keeps them apart.
pub const CLUSTER_KEY: &str = "backup-test-cluster-key-0123456789";

/// A repository in a temporary directory, with its keys.
pub struct Repo {
    pub url: String,
    pub key: PathBuf,
    pub identity: PathBuf,
    /// Environment of every process that uses it (S3 endpoint and credentials).
    pub env: Vec<(&'static str, String)>,
}

impl Repo {
    pub fn init(root: &Path) -> Repo {
        Repo::init_at(root, root.join("repo").display().to_string(), Vec::new())
    }

    pub fn init_at(root: &Path, url: String, env: Vec<(&'static str, String)>) -> Repo {
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
    pub fn tandem(&self, args: &[&str], extra: &[&str]) -> String {
        let (ok, stdout, stderr) = self.try_tandem(args, extra);
        assert!(ok, "tandem {args:?} failed:\n{stdout}\n{stderr}");
        stdout
    }

    /// Backup `id`'s manifest (`tandem backup show`).
    pub fn manifest(&self, id: &str) -> serde_json::Value {
        serde_json::from_str(&self.tandem(&["backup", "show", id], &[])).expect("manifest json")
    }

    /// Runs it; (success, stdout, stderr).
    pub fn try_tandem(&self, args: &[&str], extra: &[&str]) -> (bool, String, String) {
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
    pub fn node_env(&self) -> Vec<(&'static str, String)> {
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

    pub fn restore(&self, data_dir: &Path, extra: &[&str]) -> (bool, String, String) {
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

pub fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

pub fn start(data_dir: &Path, args: &[&str], env: &[(&'static str, String)]) -> NodeProcess {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    NodeProcess::start_with_args(data_dir, args, &env, true, true)
}

/// Ingests through `url` until at least `events` are acknowledged.
pub async fn ingest(url: &str, events: usize, tag: &str) -> support::history::Acked {
    let writers = Writers::start(vec![url.to_owned()], 4, tag);
    wait_for("events acknowledged", Duration::from_secs(60), || async {
        (writers.acked_count() >= events).then_some(())
    })
    .await;
    writers.stop().await
}

/// Asks the node for a backup and returns the new backup's id.
pub fn backup_now(repo: &Repo, node: &NodeProcess) -> String {
    backup_now_at(repo, &node.url)
}

/// Asks the node at `url` for a backup and returns the new backup's id.
pub fn backup_now_at(repo: &Repo, url: &str) -> String {
    let output = Command::new(binary())
        .envs(repo.env.iter().map(|(k, v)| (*k, v.as_str())))
        .args([
            "backup",
            "create",
            "--target",
            url,
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

/// Sends `events` through `url` in batches of 100; every batch must be acknowledged.
pub async fn send_events(url: &str, events: Vec<Value>) {
    for batch in events.chunks(100) {
        let reply = support::post(url, "/v1/batch", &json!({"batch": batch})).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
}

pub fn copy_dir(from: &Path, to: &Path) {
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
pub fn object(dir: &Path, prefix: &str) -> PathBuf {
    pub fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
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

/// A `moto_server` (PyPI `moto[server]`, an S3-compatible server) on a free port, killed by
/// pid when dropped.
pub struct Moto {
    child: std::process::Child,
    pub url: String,
}

impl Moto {
    /// Starts one, or says why it cannot (not installed).
    pub fn start() -> Result<Moto, String> {
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

/// Now, ms since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
