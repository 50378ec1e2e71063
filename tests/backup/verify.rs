//! Scheduled verification by restore and the backup alerts, on a real node: the leader
//! restores the newest backup into its scratch directory on schedule and records the
//! result (status, metrics, dashboard); a damaged chunk turns the next run into a named
//! failure and fires TandemBackupVerifyFailed; a failed backup attempt fires
//! TandemBackupFailed until one succeeds; a crashed run's scratch directory is gone once
//! the node starts again.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::common::*;
use crate::support::cluster::admin_post;
use crate::support::{get, metric, wait_for};

/// The node's backup status.
async fn status(url: &str) -> Value {
    let reply = get(url, "/v1/admin/backups/status").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body
}

/// The names of the alerts firing on the node.
async fn firing(url: &str) -> Vec<String> {
    let reply = get(url, "/v1/admin/alerts").await;
    reply.body["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["state"] == "firing")
        .filter_map(|a| a["name"].as_str().map(str::to_owned))
        .collect()
}

/// Waits for a verification record of backup `id` with outcome `ok` newer than `after_ms`.
async fn verified(url: &str, id: &str, ok: bool, after_ms: i64) -> Value {
    wait_for("a verification record", Duration::from_secs(90), || async {
        let last = status(url).await["repository"]["verify_last"].clone();
        (last["backup"] == id && last["ok"] == ok && last["started_ms"].as_i64()? > after_ms)
            .then_some(last)
    })
    .await
}

fn flip_a_byte(file: &Path) {
    let mut bytes = std::fs::read(file).expect("read chunk");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(file, bytes).expect("write chunk");
}

fn node_env(repo: &Repo, verify_schedule: &str) -> Vec<(&'static str, String)> {
    let mut env = repo.node_env();
    env.extend([
        ("TANDEM_BACKUP__VERIFY_SCHEDULE", verify_schedule.to_owned()),
        (
            "TANDEM_BACKUP__VERIFY_IDENTITY_FILE",
            path(&repo.identity).to_owned(),
        ),
        // Yearly: no scheduled backup during the test, but a period for staleness.
        ("TANDEM_BACKUP__SCHEDULE", "0 2 1 1 *".to_owned()),
        ("TANDEM_ALERTS__EVALUATION_INTERVAL_MS", "200".to_owned()),
    ]);
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scheduled_verification_restores_the_newest_backup_and_reports_what_fails() {
    let root = tempfile::tempdir().expect("tempdir");
    let repo = Repo::init(root.path());
    let data = root.path().join("source");
    let mut node = start(&data, &[], &node_env(&repo, "*/2 * * * * *"));
    ingest(&node.url, 200, "verify").await;
    let id = backup_now(&repo, &node);

    // The schedule restores it; the record, the metrics and the dashboard say so.
    let record = verified(&node.url, &id, true, 0).await;
    let manifest: Value = repo.manifest(&id);
    assert_eq!(record["state_hash"], manifest["state_hash"]);
    assert_eq!(record["services_hash"], manifest["services_hash"]);
    assert!(
        metric(
            &node.url,
            "tandem_backup_verify_last_success_timestamp_seconds"
        )
        .await
        .is_some_and(|s| s * 1000.0 >= record["started_ms"].as_f64().expect("ms") - 1000.0),
        "the success time is exported"
    );
    let period = metric(&node.url, "tandem_backup_schedule_period_seconds").await;
    assert!(period.is_some_and(|p| p >= 365.0 * 86_400.0), "{period:?}");
    let since = metric(&node.url, "tandem_backup_stale_since_timestamp_seconds").await;
    let finished_s = (manifest["finished_ms"].as_f64().expect("ms") / 1000.0).floor();
    assert_eq!(
        since,
        Some(finished_s),
        "the leader measures staleness from the newest backup"
    );
    let dashboard = get(&node.url, "/v1/admin/dashboard").await.body;
    let panel = &dashboard["backups"];
    assert_eq!(panel["configured"], true, "{panel}");
    assert_eq!(panel["repository"]["newest"]["id"], id.as_str(), "{panel}");
    assert!(
        panel["repository"]["verify_last"]["ok"].is_boolean(),
        "{panel}"
    );
    // Between runs the scratch directory is gone (a run that kept it would hold it forever).
    let scratch = data.join("verify-scratch");
    wait_for(
        "the scratch directory removed",
        Duration::from_secs(30),
        || async {
            let idle = status(&node.url).await["verifying"].is_null();
            (idle && !scratch.exists()).then_some(())
        },
    )
    .await;

    // A flipped byte in a chunk: the next run fails, naming it; the alert fires.
    let failures_before = metric(&node.url, "tandem_backup_verify_failures_total")
        .await
        .unwrap_or(0.0);
    let damaged_at = crate::common::now_ms();
    flip_a_byte(&object(Path::new(&repo.url), "chunks"));
    let failed = verified(&node.url, &id, false, damaged_at).await;
    let error = failed["error"].as_str().expect("error");
    assert!(error.contains("chunks/"), "names the chunk: {error}");
    wait_for(
        "TandemBackupVerifyFailed firing",
        Duration::from_secs(30),
        || async {
            firing(&node.url)
                .await
                .contains(&"TandemBackupVerifyFailed".to_owned())
                .then_some(())
        },
    )
    .await;
    let failures = metric(&node.url, "tandem_backup_verify_failures_total").await;
    assert!(
        failures.is_some_and(|f| f > failures_before),
        "{failures:?}"
    );
    let dashboard = get(&node.url, "/v1/admin/dashboard").await.body;
    assert_eq!(
        dashboard["backups"]["repository"]["verify_last"]["ok"], false,
        "{dashboard}"
    );

    // A crashed run's scratch directory: gone once the node starts again, even with the
    // schedule off.
    node.kill9();
    let leftover = scratch.join("crashed-run").join("store");
    std::fs::create_dir_all(&leftover).expect("mkdir");
    std::fs::write(leftover.join("half"), b"half a restore").expect("write");
    let node = start(&data, &[], &node_env(&repo, ""));
    wait_for(
        "the stale scratch removed",
        Duration::from_secs(30),
        || async { (!scratch.exists()).then_some(()) },
    )
    .await;
    let (code, body) = admin_post(&node.url, "/v1/admin/backups/verify", &Value::Null).await;
    assert_eq!(code, 202, "a verification on demand: {body}");
    drop(node);
}

/// A backup attempt that fails (a fresh GC lock holds the repository) fires
/// TandemBackupFailed on the node; the next successful backup clears it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_backup_fires_its_alert_until_one_succeeds() {
    let root = tempfile::tempdir().expect("tempdir");
    let repo = Repo::init(root.path());
    let node = start(&root.path().join("source"), &[], &node_env(&repo, ""));
    ingest(&node.url, 50, "failed").await;
    let lock = Path::new(&repo.url)
        .join("locks")
        .join("gc-held-by-the-test");
    std::fs::create_dir_all(lock.parent().expect("dir")).expect("mkdir");
    std::fs::write(&lock, br#"{"kind":"gc","started_ms":0}"#).expect("lock");
    let (code, body) = admin_post(&node.url, "/v1/admin/backups", &Value::Null).await;
    assert_eq!(code, 202, "{body}");
    let outcome = wait_for("the attempt to end", Duration::from_secs(60), || async {
        let s = status(&node.url).await;
        (s["running"].is_null() && !s["last"].is_null()).then_some(s["last"].clone())
    })
    .await;
    assert_eq!(outcome["result"], "failed", "{outcome}");
    assert!(
        outcome["error"]
            .as_str()
            .is_some_and(|e| e.contains("busy")),
        "{outcome}"
    );
    wait_for(
        "TandemBackupFailed firing",
        Duration::from_secs(30),
        || async {
            firing(&node.url)
                .await
                .contains(&"TandemBackupFailed".to_owned())
                .then_some(())
        },
    )
    .await;
    std::fs::remove_file(&lock).expect("unlock");
    backup_now(&repo, &node);
    wait_for(
        "TandemBackupFailed resolved",
        Duration::from_secs(30),
        || async {
            (!firing(&node.url)
                .await
                .contains(&"TandemBackupFailed".to_owned()))
            .then_some(())
        },
    )
    .await;
}
