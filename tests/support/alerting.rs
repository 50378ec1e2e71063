//! Alert receivers for tests: a real Alertmanager process (Debian's
//! `prometheus-alertmanager`) on a free port with its own config and storage, killed by
//! pid when dropped, and an in-test webhook server that records what it receives.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{client, http_status};

/// Finds an external tool, or says why the test cannot run: under `CI` that is a failure.
pub fn require_tool(names: &[&str]) -> Option<PathBuf> {
    for name in names {
        for dir in std::env::var("PATH")
            .unwrap_or_default()
            .split(':')
            .chain(["/usr/bin", "/usr/sbin"])
        {
            let path = Path::new(dir).join(name);
            if path.is_file() {
                return Some(path);
            }
        }
    }
    let reason =
        format!("none of {names:?} is installed (apt-get install -y prometheus-alertmanager)");
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must run this test: {reason}"
    );
    eprintln!("SKIPPED: {reason}");
    None
}

/// A free loopback port, for a tool that cannot report the port it bound to.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    listener.local_addr().expect("addr").port()
}

/// A real Alertmanager with its own config and storage, killed (by pid) when dropped.
pub struct Alertmanager {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    log: PathBuf,
}

impl Alertmanager {
    pub async fn start(binary: &Path, dir: &Path) -> Alertmanager {
        let config = dir.join("alertmanager.yml");
        std::fs::write(
            &config,
            "route:\n  receiver: blackhole\n  group_wait: 1s\nreceivers:\n  - name: blackhole\n",
        )
        .expect("write alertmanager config");
        let storage = dir.join("am-data");
        std::fs::create_dir_all(&storage).expect("storage dir");
        let log = dir.join("alertmanager.log");
        // The port is chosen free then handed over; a lost race is retried.
        for _ in 0..5 {
            let port = free_port();
            let child = Command::new(binary)
                .arg(format!("--config.file={}", config.display()))
                .arg(format!("--storage.path={}", storage.display()))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg("--cluster.listen-address=")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).expect("log file"))
                .spawn()
                .expect("spawn alertmanager");
            let mut am = Alertmanager {
                child,
                url: format!("http://127.0.0.1:{port}"),
                log: log.clone(),
            };
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if am.child.try_wait().ok().flatten().is_some() {
                    break;
                }
                if http_status(&format!("{}/-/ready", am.url)) == Some(200) {
                    return am;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let _ = am.child.kill();
            let _ = am.child.wait();
        }
        panic!(
            "alertmanager did not start; its log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// Alerts Alertmanager holds now.
    pub async fn alerts(&self) -> Vec<Value> {
        let reply = client()
            .get(format!("{}/api/v2/alerts", self.url))
            .send()
            .await
            .expect("GET alertmanager alerts");
        reply.json::<Vec<Value>>().await.unwrap_or_default()
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "alertmanager log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

/// What a webhook server received, with when.
pub type Received = Arc<Mutex<Vec<(Instant, Value)>>>;

/// A webhook receiver on a port-0 listener; `delay` holds each answer that long.
pub async fn webhook(delay: Duration) -> (String, Received) {
    let received: Received = Arc::default();
    let store = Arc::clone(&received);
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
            let store = Arc::clone(&store);
            async move {
                store.lock().expect("received").push((Instant::now(), body));
                tokio::time::sleep(delay).await;
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind webhook");
    let addr: SocketAddr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/hook"), received)
}
