//! Starting and stopping `tandem node` child processes for `tandem up`.
//!
//! Each node is this same binary run as `tandem node …`; its first stdout line gives its
//! address, its log goes to `<data>/node-N/node.log`. Children are stopped with SIGTERM
//! (clean shutdown), then SIGKILL if they do not exit in time — always by their own pid.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a node may take to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a node may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// How to start one node.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// Node id.
    pub id: u64,
    /// Region label.
    pub region: String,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// `HOST:PORT` to listen on.
    pub listen: String,
    /// `HOST:PORT` of the peer listener.
    pub peer_listen: String,
    /// The node's certificate, key and the cluster CA for mutual TLS between nodes.
    pub tls: crate::tls::issue::NodeTlsFiles,
    /// Bootstrap a one-node cluster on first start (node 1 only).
    pub bootstrap: bool,
    /// The file holding the shared cluster secret (owner-only permissions).
    pub cluster_key_file: PathBuf,
    /// Write key of the demo source.
    pub write_key: String,
    /// Admin key.
    pub admin_key: String,
    /// The backup repository and its key file, if the cluster takes backups.
    pub backup: Option<(String, PathBuf)>,
}

/// A running child node.
pub struct ChildNode {
    /// Its spec.
    pub spec: NodeSpec,
    /// Its client URL.
    pub url: String,
    /// Its peer URL.
    pub peer_url: String,
    child: Child,
}

impl ChildNode {
    /// Starts the node and waits for its address.
    pub fn start(spec: NodeSpec) -> Result<ChildNode, String> {
        std::fs::create_dir_all(&spec.data_dir)
            .map_err(|e| format!("{}: {e}", spec.data_dir.display()))?;
        let log_path = spec.data_dir.join("node.log");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("{}: {e}", log_path.display()))?;
        let exe =
            std::env::current_exe().map_err(|e| format!("cannot find the tandem binary: {e}"))?;
        let mut command = Command::new(exe);
        command
            .arg("node")
            .args(["--data-dir", &spec.data_dir.display().to_string()])
            .args(["--listen", &spec.listen])
            .args(["--peer-listen", &spec.peer_listen])
            // Paths, not secrets; the environment keeps them out of `ps` all the same.
            .env("TANDEM_TLS__PEER_CERT_FILE", &spec.tls.cert)
            .env("TANDEM_TLS__PEER_KEY_FILE", &spec.tls.key)
            .env("TANDEM_TLS__PEER_CA_FILE", &spec.tls.ca)
            .args(["--node-id", &spec.id.to_string()])
            .args(["--region", &spec.region])
            .args([
                "--cluster-key-file",
                &spec.cluster_key_file.display().to_string(),
            ])
            .args(["--write-key", &spec.write_key])
            .args(["--admin-key", &spec.admin_key])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        if !spec.bootstrap {
            command.arg("--join");
        }
        if let Some((repo, key_file)) = &spec.backup {
            command
                .env("TANDEM_BACKUP__REPO", repo)
                .env("TANDEM_BACKUP__REPO_KEY_FILE", key_file);
        }
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot start node {}: {e}", spec.id))?;
        let (url, peer_url) = match read_address(&mut child) {
            Ok(urls) => urls,
            Err(error) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "node {} did not start: {error}; see {}",
                    spec.id,
                    log_path.display()
                ));
            }
        };
        Ok(ChildNode {
            spec,
            url,
            peer_url,
            child,
        })
    }

    /// Makes the spec name the addresses the node listens on, so a restart takes the same
    /// ones (a spec asking for port 0 would get new ports the cluster does not know).
    pub fn pin_addresses(&mut self) -> Result<(), String> {
        let address = |url: &str| {
            url.split_once("://")
                .map(|(_, rest)| rest.trim_end_matches('/').to_owned())
                .ok_or_else(|| format!("node {}: no address in {url:?}", self.spec.id))
        };
        let (listen, peer_listen) = (address(&self.url)?, address(&self.peer_url)?);
        self.spec.listen = listen;
        self.spec.peer_listen = peer_listen;
        Ok(())
    }

    /// Whether the process is still running; `Some(description)` if it exited.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(e) => Some(e.to_string()),
        }
    }

    /// SIGKILL: no chance to clean up (for failover measurements and drills).
    pub fn kill9(mut self) -> NodeSpec {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.spec
    }

    /// SIGTERM, wait for a clean exit, SIGKILL after [`STOP_TIMEOUT`].
    pub fn stop(mut self) {
        if self.exited().is_some() {
            return;
        }
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!(
            "node {} did not stop within {STOP_TIMEOUT:?}; killing it",
            self.spec.id
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads `tandem node peer listener on …` and `tandem node listening on …` from the
/// child's stdout, with a deadline: `(client URL, peer URL)`.
fn read_address(child: &mut Child) -> Result<(String, String), String> {
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (lines, received) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + START_TIMEOUT;
    let mut peer_url = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match received.recv_timeout(left) {
            Ok(line) => {
                if let Some(url) = line.strip_prefix("tandem node peer listener on ") {
                    peer_url = Some(url.trim().to_owned());
                }
                if let Some(url) = line.strip_prefix("tandem node listening on ") {
                    let peer_url = peer_url.ok_or("no peer address printed")?;
                    return Ok((url.trim().to_owned(), peer_url));
                }
            }
            Err(_) => return Err(format!("no address printed within {START_TIMEOUT:?}")),
        }
    }
}

/// The cluster key file `data_dir/cluster.key`, created on first use with owner-only
/// permissions, so a second `tandem up` rejoins the same cluster and no other user of the
/// machine can read the key (nor see it in `ps`: nodes are given the file, not the key).
pub fn cluster_key_file(data_dir: &Path) -> Result<PathBuf, String> {
    let path = data_dir.join("cluster.key");
    if crate::config::read_secret_file(&path).is_ok() {
        return Ok(path);
    }
    std::fs::create_dir_all(data_dir).map_err(|e| format!("{}: {e}", data_dir.display()))?;
    let key = format!("up-{}", uuid::Uuid::new_v4().simple());
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let written = options
        .open(&path)
        .and_then(|mut file| std::io::Write::write_all(&mut file, key.as_bytes()));
    written.map_err(|e| format!("{}: {e}", path.display()))?;
    // An older `tandem up` created the file world-readable; tighten it.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    crate::config::read_secret_file(&path)?;
    Ok(path)
}
