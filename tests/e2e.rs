//! End to end with the real binary: `tandem load` sends a synthetic workload to a node,
//! `tandem verify` proves every acknowledged event is stored exactly once — and notices
//! when one is not.

mod support;

use std::process::Command;
use std::time::Duration;

use support::*;

fn tandem(args: &[&str]) -> (i32, String) {
    let output = Command::new(binary())
        .args(args)
        .output()
        .expect("run tandem");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().unwrap_or(-1), text)
}

#[test]
fn load_then_verify_proves_exactly_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = NodeProcess::start(&dir.path().join("node"), &[]);
    let acked = dir.path().join("acked.tsv");
    let acked_arg = acked.to_str().expect("utf-8 path");
    let (code, out) = tandem(&[
        "load",
        "--target",
        &node.url,
        "--write-key",
        WRITE_KEY,
        "--events",
        "3000",
        "--concurrency",
        "4",
        "--acked",
        acked_arg,
        "--seed",
        "7",
        "--quiet",
    ]);
    assert_eq!(code, 0, "load failed:\n{out}");
    assert!(out.contains("acknowledged    3000"), "{out}");

    let (code, out) = tandem(&[
        "verify", "--target", &node.url, "--acked", acked_arg, "--key", ADMIN_KEY, "--quiet",
    ]);
    assert_eq!(code, 0, "verify failed:\n{out}");

    // The same seed again: every event is a duplicate, and still stored only once.
    let (code, out) = tandem(&[
        "load",
        "--target",
        &node.url,
        "--write-key",
        WRITE_KEY,
        "--events",
        "3000",
        "--seed",
        "7",
        "--quiet",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("duplicates      3000"), "{out}");
    let (code, out) = tandem(&[
        "verify", "--target", &node.url, "--acked", acked_arg, "--key", ADMIN_KEY, "--quiet",
    ]);
    assert_eq!(code, 0, "verify after replay:\n{out}");

    // A claimed acknowledgement that the node never stored must be reported as lost.
    let mut text = std::fs::read_to_string(&acked).expect("acked file");
    let identity = text
        .lines()
        .next()
        .and_then(|l| l.split('\t').nth(1))
        .expect("a line")
        .to_owned();
    text.push_str(&format!("never-sent-message\t{identity}\n"));
    std::fs::write(&acked, text).expect("write");
    let (code, out) = tandem(&[
        "verify", "--target", &node.url, "--acked", acked_arg, "--key", ADMIN_KEY, "--quiet",
    ]);
    assert_eq!(code, 1, "verify must fail on a missing event:\n{out}");
    assert!(
        out.contains("never-sent-message"),
        "names the missing id:\n{out}"
    );
}

/// `tandem up` — the README's first command — as a newcomer runs it: a 3-node cluster, the
/// gateway and the demo workload; every acknowledged demo event is stored exactly once; a
/// node killed with `kill -9` does not stop writes; a backup lands in the local
/// repository; Ctrl-C (SIGINT) stops every process it started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tandem_up_runs_the_demo_survives_a_kill_and_stops_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("tandem-data");
    let mut up = Up::start(&data);

    let banner = up.wait_line("the banner", Duration::from_secs(90), |text| {
        text.contains("demo load")
    });
    let gateway = field_after(&banner, "API (gateway)");
    let nodes: Vec<String> = banner
        .lines()
        .filter(|l| l.starts_with("  node "))
        .filter_map(|l| l.split_whitespace().nth(2).map(str::to_owned))
        .collect();
    assert_eq!(nodes.len(), 3, "three node lines in the banner:\n{banner}");
    let children = wait_for("three node processes", Duration::from_secs(10), || {
        let children = up.children();
        async move { (children.len() == 3).then_some(children) }
    })
    .await;
    up.remember(&children);

    let out = up.wait_line("the demo's end", Duration::from_secs(120), |text| {
        text.contains("tandem verify --target")
    });
    assert!(out.contains("acknowledged    400"), "demo summary:\n{out}");
    let acked = out
        .lines()
        .find_map(|l| l.split("--acked ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the demo names its acked file")
        .to_owned();
    let admin = "demo-admin-key-not-secret";
    let (code, text) = tandem(&[
        "verify", "--target", &gateway, "--acked", &acked, "--key", admin, "--quiet",
    ]);
    assert_eq!(code, 0, "every demo event exactly once:\n{text}");
    let segments = client()
        .get(format!("{gateway}/v1/segments"))
        .bearer_auth(admin)
        .send()
        .await
        .expect("segments")
        .text()
        .await
        .expect("body");
    assert!(
        segments.contains("big-spenders"),
        "demo segments: {segments}"
    );

    // kill -9 one node: writes through the gateway carry on with the other two.
    let victim = children[2];
    kill(victim, "-KILL");
    let track = serde_json::json!({"userId": "up-test", "event": "Order Completed",
        "messageId": "up-test-after-kill", "properties": {"revenue": 42}});
    wait_for("a write after the kill", Duration::from_secs(30), || {
        let request = client()
            .post(format!("{gateway}/v1/track"))
            .basic_auth("demo-write-key-not-secret", Some(""))
            .json(&track);
        async move {
            request
                .send()
                .await
                .ok()?
                .status()
                .is_success()
                .then_some(())
        }
    })
    .await;
    up.wait_line("the exit report", Duration::from_secs(10), |text| {
        text.contains("exited (") && text.contains("the cluster continues with the others")
    });

    // A backup into the repository `tandem up` created.
    let live = nodes
        .iter()
        .find(|url| http_status(&format!("{url}/health")).is_some());
    let live = live.expect("a live node");
    let (code, text) = tandem(&["backup", "create", "--target", live, "--admin-key", admin]);
    assert_eq!(code, 0, "backup create:\n{text}");
    let repo = data.join("backups");
    let key = data.join("backup-keys/repo.key");
    let (code, text) = tandem(&[
        "backup",
        "list",
        "--repo",
        repo.to_str().expect("utf-8"),
        "--repo-key",
        key.to_str().expect("utf-8"),
        "--json",
    ]);
    assert_eq!(code, 0, "backup list:\n{text}");
    let listed: Vec<serde_json::Value> = serde_json::from_str(&text).expect("backup list --json");
    assert_eq!(listed.len(), 1, "one backup listed:\n{text}");
    assert!(listed[0]["log_index"].as_u64() > Some(0), "{text}");

    // ... and the log is archived continuously into the same repository.
    let status_url = format!("{live}/v1/admin/backups/status");
    wait_for("the log archived", Duration::from_secs(60), || {
        let request = client().get(&status_url).bearer_auth(admin);
        async move {
            let status: serde_json::Value = request.send().await.ok()?.json().await.ok()?;
            (status["archive"]["archived_index"].as_u64()? > 0).then_some(())
        }
    })
    .await;

    // Ctrl-C: the gateway and both remaining nodes stop, and `tandem up` exits 0.
    let code = up.interrupt(Duration::from_secs(60));
    assert_eq!(code, Some(0), "tandem up's exit:\n{}", up.output());
    for pid in &children {
        assert!(
            !alive(*pid),
            "node pid {pid} still runs after tandem up exited"
        );
    }
}

/// A running `tandem up` with its output collected; kills itself and its nodes on drop.
struct Up {
    child: std::process::Child,
    output: std::sync::Arc<std::sync::Mutex<String>>,
    nodes: Vec<u32>,
}

impl Up {
    fn start(data: &std::path::Path) -> Up {
        use std::io::Read;
        let mut child = Command::new(binary())
            .args([
                "up",
                "--port",
                "0",
                "--demo-events",
                "400",
                "--demo-rate",
                "400",
            ])
            .arg("--data-dir")
            .arg(data)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start tandem up");
        let output = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        for mut stream in [
            Box::new(child.stdout.take().expect("stdout")) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().expect("stderr")),
        ] {
            let output = std::sync::Arc::clone(&output);
            std::thread::spawn(move || {
                let mut buffer = [0u8; 4096];
                while let Ok(n @ 1..) = stream.read(&mut buffer) {
                    let text = String::from_utf8_lossy(&buffer[..n]);
                    output.lock().expect("output").push_str(&text);
                }
            });
        }
        Up {
            child,
            output,
            nodes: Vec::new(),
        }
    }

    fn output(&self) -> String {
        self.output.lock().expect("output").clone()
    }

    /// Waits until the output satisfies `done`, failing with all of it after `deadline`.
    fn wait_line(&mut self, what: &str, deadline: Duration, done: impl Fn(&str) -> bool) -> String {
        let end = std::time::Instant::now() + deadline;
        loop {
            let text = self.output();
            if done(&text) {
                return text;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("tandem up exited ({status}) before {what}:\n{text}");
            }
            assert!(
                std::time::Instant::now() < end,
                "no {what} within {deadline:?}:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The pids of `tandem up`'s child processes (its nodes).
    /// (Each thread lists the children it spawned, and `tandem up` spawns its nodes from
    /// blocking-pool threads, so every thread's list is read.)
    fn children(&self) -> Vec<u32> {
        let pid = self.child.id();
        let mut children: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
            .flat_map(|list| {
                list.split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect::<Vec<u32>>()
            })
            .collect();
        children.sort_unstable();
        children.dedup();
        children
    }

    fn remember(&mut self, nodes: &[u32]) {
        self.nodes = nodes.to_vec();
    }

    /// SIGINT, as Ctrl-C sends; the exit code, or `None` (after killing) past `deadline`.
    fn interrupt(&mut self, deadline: Duration) -> Option<i32> {
        kill(self.child.id(), "-INT");
        let end = std::time::Instant::now() + deadline;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            if std::time::Instant::now() > end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        // The nodes it has now as well as those seen before: a test that fails before
        // `remember` must not orphan them when `tandem up` itself is killed.
        let mut nodes = self.children();
        nodes.extend(&self.nodes);
        for pid in nodes {
            if alive(pid) {
                kill(pid, "-KILL");
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn kill(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status();
}

/// Whether `pid` is a live (not zombie) process.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            let state = stat.rsplit(')').next().unwrap_or("").trim_start();
            !state.starts_with('Z') && !state.starts_with('X')
        })
        .unwrap_or(false)
}

/// The first whitespace-separated word after `label` in `text`.
fn field_after(text: &str, label: &str) -> String {
    text.split(label)
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no {label:?} in:\n{text}"))
        .to_owned()
}
