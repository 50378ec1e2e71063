//! `deploy/prometheus/tandem.rules.yml` passes `promtool check rules`, and its unit tests
//! (`tandem.rules.test.yml`: a steady load is quiet, a stopped one fires the drop alert,
//! a burst the spike alert, no leader the no-leader alert) pass `promtool test rules`.
//! Skips with a printed reason where promtool (Debian's `prometheus` package) is missing;
//! fails under `CI`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn promtool() -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/bin"])
        .map(|dir| Path::new(dir).join("promtool"))
        .find(|p| p.is_file());
    if found.is_none() {
        let reason = "promtool is not installed (apt-get install -y prometheus)";
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run this test: {reason}"
        );
        eprintln!("SKIPPED: {reason}");
    }
    found
}

fn run(promtool: &Path, args: &[&str]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus");
    let output = Command::new(promtool)
        .args(args)
        .current_dir(&dir)
        .output()
        .expect("run promtool");
    assert!(
        output.status.success(),
        "promtool {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_prometheus_rules_pass_promtool_check_and_their_unit_tests() {
    let Some(promtool) = promtool() else { return };
    run(&promtool, &["check", "rules", "tandem.rules.yml"]);
    run(&promtool, &["test", "rules", "tandem.rules.test.yml"]);
}

#[test]
fn every_built_in_rule_has_its_prometheus_form() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus/tandem.rules.yml"),
    )
    .expect("rules file")
    // Double-quoted YAML escapes quotes.
    .replace("\\\"", "\"");
    for spec in tandem::node::alerts::rules::CATALOGUE {
        assert!(
            text.contains(&format!("alert: {}\n", spec.alertname)),
            "{} is missing from tandem.rules.yml",
            spec.alertname
        );
        assert!(
            text.contains(spec.runbook),
            "{}'s runbook line differs between the built-in rule and tandem.rules.yml",
            spec.alertname
        );
    }
}
