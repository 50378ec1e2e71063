//! End to end with the real binary: `tandem load` sends a synthetic workload to a node,
//! `tandem verify` proves every acknowledged event is stored exactly once — and notices
//! when one is not.

mod support;

use std::process::Command;

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
