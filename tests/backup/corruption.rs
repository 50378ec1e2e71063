//! Damage to each kind of repository object: named by verify, refused by restore.

use std::path::PathBuf;

use crate::common::*;

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
