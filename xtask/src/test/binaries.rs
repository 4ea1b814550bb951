//! The test binaries of the workspace, run several at a time.
//!
//! `cargo test` runs one test binary after another. Ours spend most of their time waiting on
//! real processes (agents, etcd, PostgreSQL, SMTP servers in network namespaces), not on the
//! CPU, so running a few binaries side by side shortens the suite by minutes on two cores.
//! Every test already names its namespaces, interfaces and folders after its own process, so
//! binaries do not meet each other.

use std::{
    collections::VecDeque,
    path::{Path, PathBuf},
    process::Command,
    sync::{Mutex, mpsc},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::cmd;

/// One test binary cargo built: what it tests and where to run it from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestBinary {
    /// Like cargo's own "Running" line: `tests/agent.rs` or `unittests src/lib.rs`, with the
    /// package's name.
    pub label: String,
    pub executable: PathBuf,
    /// The package's folder: cargo runs a test binary from there, and tests find their data
    /// relative to it.
    pub package_dir: PathBuf,
    /// Integration tests (`tests/*.rs`) are the long ones: they start first.
    pub integration: bool,
}

/// The outcome of one binary.
pub struct Finished {
    pub binary: TestBinary,
    pub elapsed: Duration,
    pub success: bool,
    /// Its stdout and stderr, as one text.
    pub output: String,
}

/// Builds the test binaries with `build` (a `cargo test --no-run --message-format=json…`
/// command) and lists them.
pub fn build(build: &mut Command) -> Result<Vec<TestBinary>> {
    let mut binaries = Vec::new();
    // Only the JSON on stdout is ours; cargo's progress and rendered diagnostics go on to the
    // terminal through stderr.
    cmd::run_lines(build, |message| {
        if let Some(binary) = parse_artifact(message).with_context(|| {
            format!("cargo printed an artifact message we cannot read: {message}")
        })? {
            binaries.push(binary);
        }
        Ok(())
    })?;
    // Integration tests, the long ones, first: the last few minutes are not one long binary alone.
    binaries.sort_by_key(|binary| !binary.integration);
    Ok(binaries)
}

/// A test binary from one line of cargo's JSON messages; `None` for any other message.
fn parse_artifact(line: &str) -> Result<Option<TestBinary>> {
    let Ok(message) = serde_json::from_str::<Value>(line) else {
        // Build scripts' and rustc's own lines are not JSON.
        return Ok(None);
    };
    if message["reason"] != "compiler-artifact" || message["profile"]["test"] != true {
        return Ok(None);
    }
    let Some(executable) = message["executable"].as_str() else {
        return Ok(None);
    };
    let manifest = message["manifest_path"]
        .as_str()
        .context("no manifest_path")?;
    let package_dir = Path::new(manifest)
        .parent()
        .context("manifest_path has no folder")?;
    let target = &message["target"];
    let source = target["src_path"].as_str().context("no target.src_path")?;
    let source = Path::new(source)
        .strip_prefix(package_dir)
        .unwrap_or(Path::new(source));
    let integration = target["kind"]
        .as_array()
        .is_some_and(|kinds| kinds.iter().any(|kind| kind == "test"));
    let package = message["package_id"].as_str().unwrap_or_default();
    let package = package_name(package);
    let label = if integration {
        format!("{package}: {}", source.display())
    } else {
        format!("{package}: unittests {}", source.display())
    };
    Ok(Some(TestBinary {
        label,
        executable: PathBuf::from(executable),
        package_dir: package_dir.to_path_buf(),
        integration,
    }))
}

/// The name in a package id, in either of cargo's spellings
/// (`path+file:///w/smtpguard#0.1.0`, `smtpguard 0.1.0 (path+file:///w/smtpguard)`).
fn package_name(id: &str) -> &str {
    if let Some((name, _)) = id.split_once(' ') {
        return name;
    }
    let path = id.split('#').next().unwrap_or(id);
    let after_hash = id.split_once('#').map(|(_, rest)| rest).unwrap_or_default();
    // `…/tests#smtpguard-tests@0.1.0`: the name is spelled out when it differs from the folder.
    match after_hash.split_once('@') {
        Some((name, _)) => name,
        None => path.rsplit('/').next().unwrap_or(path),
    }
}

/// Runs `binaries`, `jobs` at a time, and hands each one's outcome to `report` as it finishes.
pub fn run(binaries: Vec<TestBinary>, jobs: usize, mut report: impl FnMut(Finished)) {
    let queue = Mutex::new(VecDeque::from(binaries));
    let (sender, receiver) = mpsc::channel();
    thread::scope(|scope| {
        for _ in 0..jobs.max(1) {
            let sender = sender.clone();
            let queue = &queue;
            scope.spawn(move || {
                loop {
                    // Its own statement: a guard in the `while let` would hold the lock,
                    // and so every other worker, for the whole run of the binary.
                    let next = queue.lock().expect("queue lock").pop_front();
                    let Some(binary) = next else { return };
                    let finished = run_one(binary);
                    if sender.send(finished).is_err() {
                        return;
                    }
                }
            });
        }
        drop(sender);
        for finished in receiver {
            report(finished);
        }
    });
}

fn run_one(binary: TestBinary) -> Finished {
    let started = Instant::now();
    let result = Command::new(&binary.executable)
        .current_dir(&binary.package_dir)
        .output();
    let (success, output) = match result {
        Ok(output) => {
            let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&output.stderr));
            (output.status.success(), text)
        }
        Err(error) => (
            false,
            format!("cannot start {}: {error}", binary.executable.display()),
        ),
    };
    Finished {
        binary,
        elapsed: started.elapsed(),
        success,
        output,
    }
}

/// Fails when any binary failed, naming them.
pub fn verdict(failed: &[String]) -> Result<()> {
    if failed.is_empty() {
        return Ok(());
    }
    bail!("test binaries failed: {}", failed.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTEGRATION: &str = r#"{"reason":"compiler-artifact","package_id":"path+file:///w/smtpguard#0.1.0","manifest_path":"/w/smtpguard/Cargo.toml","target":{"kind":["test"],"crate_types":["bin"],"name":"agent","src_path":"/w/smtpguard/tests/agent.rs","edition":"2024","doctest":false,"test":true},"profile":{"opt_level":"0","debuginfo":2,"debug_assertions":true,"overflow_checks":true,"test":true},"features":[],"filenames":["/w/target/debug/deps/agent-71af"],"executable":"/w/target/debug/deps/agent-71af","fresh":true}"#;

    #[test]
    fn an_integration_test_binary_is_read_from_cargos_message() {
        let binary = parse_artifact(INTEGRATION).unwrap().unwrap();
        assert_eq!(
            binary,
            TestBinary {
                label: "smtpguard: tests/agent.rs".to_owned(),
                executable: PathBuf::from("/w/target/debug/deps/agent-71af"),
                package_dir: PathBuf::from("/w/smtpguard"),
                integration: true,
            }
        );
    }

    #[test]
    fn libraries_and_other_messages_are_not_test_binaries() {
        let library = INTEGRATION
            .replace(r#""test":true},"features""#, r#""test":false},"features""#)
            .replace(
                r#""executable":"/w/target/debug/deps/agent-71af""#,
                r#""executable":null"#,
            );
        assert_eq!(parse_artifact(&library).unwrap(), None);
        assert_eq!(
            parse_artifact(r#"{"reason":"build-finished","success":true}"#).unwrap(),
            None
        );
        assert_eq!(parse_artifact("   Compiling libc v0.2.191").unwrap(), None);
    }

    #[test]
    fn a_unit_test_binary_is_labelled_like_cargo_does() {
        let unit = INTEGRATION
            .replace(r#""kind":["test"]"#, r#""kind":["lib"]"#)
            .replace("tests/agent.rs", "src/lib.rs")
            .replace(
                "path+file:///w/smtpguard#0.1.0",
                "path+file:///w/tests#smtpguard-tests@0.1.0",
            );
        let binary = parse_artifact(&unit).unwrap().unwrap();
        assert_eq!(binary.label, "smtpguard-tests: unittests src/lib.rs");
        assert!(!binary.integration);
    }

    #[test]
    fn package_names_come_from_either_id_spelling() {
        assert_eq!(package_name("path+file:///w/smtpguard#0.1.0"), "smtpguard");
        assert_eq!(
            package_name("path+file:///w/tests#smtpguard-tests@0.1.0"),
            "smtpguard-tests"
        );
        assert_eq!(
            package_name("smtpguard 0.1.0 (path+file:///w/smtpguard)"),
            "smtpguard"
        );
    }

    #[test]
    fn binaries_run_side_by_side() {
        // Each waits until the other has started: run one at a time, they would wait forever,
        // so each also gives up after 10 s and then fails.
        let scratch = tempfile::tempdir().unwrap();
        let script = scratch.path().join("meet.sh");
        std::fs::write(
            &script,
            "#!/bin/sh\ntouch \"$0.$$\"\nfor i in $(seq 100); do\n  \
             [ $(ls \"$0\".* | wc -l) -ge 2 ] && exit 0\n  sleep 0.1\ndone\nexit 1\n",
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let binary = |label: &str| TestBinary {
            label: label.to_owned(),
            executable: script.clone(),
            package_dir: scratch.path().to_path_buf(),
            integration: true,
        };
        let mut outcomes = Vec::new();
        run(vec![binary("one"), binary("two")], 2, |finished| {
            outcomes.push(finished.success)
        });
        assert_eq!(outcomes, [true, true]);
    }

    #[test]
    fn every_binary_runs_once_and_failures_are_reported() {
        let binary = |label: &str, program: &str| TestBinary {
            label: label.to_owned(),
            executable: PathBuf::from(program),
            package_dir: std::env::temp_dir(),
            integration: true,
        };
        let mut seen = Vec::new();
        run(
            vec![
                binary("passes", "/bin/true"),
                binary("fails", "/bin/false"),
                binary("missing", "/nonexistent/test-binary"),
            ],
            2,
            |finished| seen.push((finished.binary.label, finished.success)),
        );
        seen.sort();
        assert_eq!(
            seen,
            [
                ("fails".to_owned(), false),
                ("missing".to_owned(), false),
                ("passes".to_owned(), true)
            ]
        );
    }
}
