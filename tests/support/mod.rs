//! Test harness: real `tandem` processes on loopback, each in its own temporary data
//! directory, stopped by pid when the test ends (even when it fails).
#![allow(dead_code)]

pub mod alerting;
pub mod cluster;
pub mod history;
pub mod nemesis;
pub mod tools;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The write key every test node accepts.
pub const WRITE_KEY: &str = "test-write-key-not-secret";
/// The admin key every test node accepts.
pub const ADMIN_KEY: &str = "test-admin-key-not-secret";
/// How long a node may take to print its address.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// The path of the binary under test.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_tandem")
}

/// Environment every test node starts with unless the test's own overrides it: a peer
/// listener on a free port, and — for a node started without peer certificates — peer
/// traffic in plaintext, configured explicitly (a lone node has no peers; clusters use
/// mutual TLS, see [`cluster`]).
fn default_env(env: &[(&str, &str)]) -> Vec<(&'static str, &'static str)> {
    let mut defaults = vec![("TANDEM_NODE__PEER_LISTEN", "127.0.0.1:0")];
    if !env.iter().any(|(k, _)| *k == "TANDEM_TLS__PEER_CERT_FILE") {
        defaults.push(("TANDEM_TLS__PEER_PLAINTEXT", "true"));
    }
    defaults
}

/// A `reqwest` client builder whose TLS uses ring (no process-wide provider is installed
/// in test binaries).
pub fn reqwest_builder() -> reqwest::ClientBuilder {
    tandem::tls::http_client_builder(None).expect("a TLS configuration without roots")
}

/// A running `tandem node` process.
pub struct NodeProcess {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    /// The peer listener, `https://127.0.0.1:PORT` (`http://` in plaintext).
    pub peer_url: String,
    /// The node's data directory.
    pub data_dir: PathBuf,
    stderr_path: PathBuf,
}

impl NodeProcess {
    /// Starts a node on port 0 with `env` set, and waits until it is ready.
    pub fn start(data_dir: &Path, env: &[(&str, &str)]) -> NodeProcess {
        NodeProcess::start_with(data_dir, env, true, true)
    }

    /// Starts a node with `env` set (on port 0 if `port_zero`, else wherever `env` says),
    /// waits until it prints its address, and if `ready` until it answers ready.
    pub fn start_with(
        data_dir: &Path,
        env: &[(&str, &str)],
        port_zero: bool,
        ready: bool,
    ) -> NodeProcess {
        NodeProcess::start_with_args(data_dir, &[], env, port_zero, ready)
    }

    /// As [`NodeProcess::start_with`], with `args` (`--config FILE`, say) after `node`.
    pub fn start_with_args(
        data_dir: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        port_zero: bool,
        ready: bool,
    ) -> NodeProcess {
        std::fs::create_dir_all(data_dir).expect("create data dir");
        let stderr_path = data_dir.join("node.stderr.log");
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stderr_path)
            .expect("open stderr log");
        let mut command = Command::new(binary());
        command.args(["node", "--write-key", WRITE_KEY]).args(args);
        if port_zero {
            command.args(["--listen", "127.0.0.1:0"]);
        }
        command
            .args(["--admin-key", ADMIN_KEY, "--data-dir"])
            .arg(data_dir)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr));
        for (key, value) in default_env(env) {
            command.env(key, value);
        }
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("spawn tandem node");
        let stdout = child.stdout.take().expect("stdout");
        let (lines, received) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        let mut node = NodeProcess {
            child: Some(child),
            url: String::new(),
            peer_url: String::new(),
            data_dir: data_dir.to_owned(),
            stderr_path,
        };
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match received.recv_timeout(left) {
                Ok(line) => {
                    if let Some(addr) = line.strip_prefix("tandem node peer listener on ") {
                        node.peer_url = addr.trim().to_owned();
                    }
                    if let Some(addr) = line.strip_prefix("tandem node listening on ") {
                        node.url = addr.trim().to_owned();
                        if ready {
                            node.wait_ready(deadline);
                        }
                        return node;
                    }
                }
                Err(_) => panic!(
                    "node did not report its address within {START_DEADLINE:?}; stderr:\n{}",
                    node.stderr()
                ),
            }
        }
    }

    /// Polls `/health/ready` until it answers 200 or `deadline` passes.
    pub fn wait_ready(&self, deadline: Instant) {
        let url = format!("{}/health/ready", self.url);
        loop {
            if http_status(&url) == Some(200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node at {} not ready in time; stderr:\n{}",
                self.url,
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process has exited (it crashed, or was told to stop).
    pub fn has_exited(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => child.try_wait().ok().flatten().is_some(),
            None => true,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// What the node wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns the exit status code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("node did not exit within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Runs `tandem node` with `env` and returns its exit code and stderr, killing it if it
/// is still running after `deadline` (then the code is `None`).
pub fn run_node_expecting_exit(
    dir: &Path,
    data_dir: &Path,
    env: &[(&str, &str)],
    deadline: Duration,
) -> (Option<i32>, String) {
    let stderr_path = dir.join("expected-exit.stderr.log");
    let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
    let mut command = Command::new(binary());
    command
        .args(["node", "--listen", "127.0.0.1:0", "--write-key", WRITE_KEY])
        .args(["--admin-key", ADMIN_KEY, "--data-dir"])
        .arg(data_dir)
        .stdout(Stdio::null())
        .stderr(stderr);
    for (key, value) in default_env(env) {
        command.env(key, value);
    }
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().expect("spawn");
    let end = Instant::now() + deadline;
    let code = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status.code();
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (
        code,
        std::fs::read_to_string(stderr_path).unwrap_or_default(),
    )
}

/// The status of a plain blocking `GET url` (HTTP/1.0 over loopback), `None` on any error.
pub fn http_status(url: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_owned()), |(h, p)| (h, format!("/{p}")));
    let mut stream = std::net::TcpStream::connect(host).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").ok()?;
    let mut head = [0_u8; 12];
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// An HTTP client for tests.
pub fn client() -> reqwest::Client {
    reqwest_builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// A reply: status, headers and the JSON body (`Value::Null` if not JSON).
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Reply {
    /// The `code` field of an error body.
    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("")
    }
}

async fn reply(response: reqwest::Response) -> Reply {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.expect("body");
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Reply {
        status,
        headers,
        body,
    }
}

/// POSTs JSON with the test write key as Basic auth.
pub async fn post(url: &str, path: &str, body: &Value) -> Reply {
    let response = client()
        .post(format!("{url}{path}"))
        .basic_auth(WRITE_KEY, Some(""))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("send");
    reply(response).await
}

/// Sends a prepared request and returns the reply.
pub async fn send(request: reqwest::RequestBuilder) -> Reply {
    reply(request.send().await.expect("send")).await
}

/// GETs with the admin key as a bearer token.
pub async fn get(url: &str, path: &str) -> Reply {
    let response = client()
        .get(format!("{url}{path}"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .expect("send");
    reply(response).await
}

/// Polls `check` until it returns `Some` or the deadline passes.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = Instant::now() + deadline;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < end,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The node's `GET /v1/admin/state-hash` report once it has applied every write
/// acknowledged before the call (writes are answered at commit, before apply) and every
/// service has processed the whole feed (so its services hash is final for that state).
pub async fn settled_hashes(url: &str) -> Value {
    wait_for("services to catch up", Duration::from_secs(30), || async {
        let body = get(url, "/v1/admin/state-hash?consistency=linearizable")
            .await
            .body;
        let head = body["feed_head"].as_u64()?;
        let caught_up = body["services"]
            .as_array()?
            .iter()
            .all(|s| s["cursor"].as_u64() == Some(head));
        caught_up.then_some(body)
    })
    .await
}

/// One sample of a node's `/metrics` (`series` as written, labels included), if present.
pub async fn metric(url: &str, series: &str) -> Option<f64> {
    let text = client()
        .get(format!("{url}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .filter_map(|line| line.rsplit_once(' '))
        .find(|(name, _)| *name == series)
        .and_then(|(_, value)| value.parse().ok())
}
