//! deploy/prometheus: the alerting rules are valid (`promtool check rules`), their unit tests
//! pass (`promtool test rules`), and every smtpguard metric they name is one the agent
//! exports.

use std::{collections::BTreeSet, path::PathBuf, process::Command};

use smtpguard::metrics::{FleetMetrics, Format, MetricsSnapshot, render_as};

fn folder() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus")
}

fn promtool(args: &[&str]) {
    let output = Command::new("promtool")
        .args(args)
        .current_dir(folder())
        .output()
        .expect("running promtool (Debian package prometheus; cargo xtask bootstrap installs it)");
    assert!(
        output.status.success(),
        "promtool {}: {}\n{}{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn rules_are_valid_and_their_unit_tests_pass() {
    promtool(&["check", "rules", "smtpguard.rules.yml"]);
    promtool(&["test", "rules", "smtpguard.rules.test.yml"]);
}

#[test]
fn rules_name_only_metrics_the_agent_exports() {
    let rules = std::fs::read_to_string(folder().join("smtpguard.rules.yml")).unwrap();
    let named: BTreeSet<&str> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("smtpguard_"))
        .collect();
    assert!(named.len() >= 6, "{named:?}");
    // Every family is declared (# TYPE) even without samples.
    // A fleet-mode agent's: a gateway on its own exports the same minus the fleet families.
    let fleet = MetricsSnapshot {
        fleet: Some(FleetMetrics::default()),
        ..MetricsSnapshot::default()
    };
    let exposition = render_as(&fleet, Format::PrometheusText);
    let exported: BTreeSet<&str> = exposition
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    let unknown: Vec<&&str> = named.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "the rules name metrics the agent does not export: {unknown:?}; exported: {exported:?}"
    );
}

/// GitHub's anchor for a Markdown heading: lower case, spaces to hyphens, punctuation dropped.
fn anchor(heading: &str) -> String {
    heading
        .trim_start_matches('#')
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

#[test]
fn every_alert_has_a_runbook_in_the_operations_guide() {
    const GUIDE: &str = "file:///usr/share/doc/smtpguard/operations.md#";
    let rules = std::fs::read_to_string(folder().join("smtpguard.rules.yml")).unwrap();
    let guide = std::fs::read_to_string(folder().join("../../docs/operations.md")).unwrap();
    let sections: BTreeSet<String> = guide
        .lines()
        .filter(|line| line.starts_with("## ") || line.starts_with("### "))
        .map(anchor)
        .collect();
    let alerts = rules.matches("- alert: ").count();
    let runbooks: Vec<&str> = rules
        .lines()
        .filter_map(|line| line.trim().strip_prefix("runbook_url: "))
        .map(|url| url.trim_matches('"'))
        .collect();
    assert_eq!(
        runbooks.len(),
        alerts,
        "observed {} runbook_url annotations for {alerts} alerts, expected one each",
        runbooks.len()
    );
    for url in runbooks {
        let section = url.strip_prefix(GUIDE).unwrap_or_else(|| {
            panic!("runbook_url {url:?}: expected the installed guide, {GUIDE}SECTION")
        });
        assert!(
            sections.contains(section),
            "runbook_url {url:?}: docs/operations.md has no section {section:?}; it has \
             {sections:?}"
        );
    }
}
