//! The S3 path against a real S3-compatible server (moto) started by the test.

use serde_json::Value;

use crate::common::*;
use crate::support::history::check_exactly_once;
use crate::support::{self};

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
