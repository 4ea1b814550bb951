//! `cargo xtask test`: bootstrap, lint, build, test; stops at the first failure. CI runs this.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{bootstrap, cmd};

mod binaries;

/// The kernel program only builds for the BPF target with the nightly toolchain
/// (`#![feature]`, its own panic handler); smtpguard's build.rs compiles it for that target,
/// and the lint phase runs clippy on it for that target.
const EBPF_CRATE: &str = "smtpguard-ebpf";

#[derive(Debug, clap::Args)]
pub struct TestArgs {
    /// Test binaries run at the same time. Two by default: most of a test's time is waiting
    /// (timeouts of blocked connects, snapshot intervals, servers starting), so two keep CI's
    /// two cores busy; agents get 60 s to start, which a loaded machine needs (each loads and
    /// verifies the kernel program).
    #[arg(long, default_value_t = 2)]
    jobs: usize,
}

pub fn run(root: &Path, args: &TestArgs) -> Result<()> {
    let started = Instant::now();
    let mut tally = Tally::default();
    let result = phases(root, args.jobs, &mut tally);
    println!();
    match &result {
        Ok(()) => println!("all phases passed in {}", minutes(started.elapsed())),
        Err(_) => println!("failed after {}", minutes(started.elapsed())),
    }
    // The plain closing line comes last, after cargo's per-binary ones (the last of which is
    // often an empty doc-test run): the totals of the whole suite.
    println!(
        "tests: {} passed, {} failed, {} skipped",
        tally.passed, tally.failed, tally.ignored
    );
    result
}

fn phases(root: &Path, jobs: usize, tally: &mut Tally) -> Result<()> {
    phase("bootstrap", || bootstrap::run(root))?;
    phase("lint", || {
        cmd::run(cargo(root).args(["fmt", "--all", "--", "--check"]))?;
        cmd::run(
            cargo(root)
                .args([
                    "clippy",
                    "--workspace",
                    "--exclude",
                    EBPF_CRATE,
                    "--all-targets",
                ])
                .args(["--", "-D", "warnings"]),
        )?;
        cmd::run(
            cargo(root)
                .args(["+nightly", "clippy", "-p", EBPF_CRATE])
                .args([
                    "--target",
                    "bpfel-unknown-none",
                    "-Z",
                    "build-std=core",
                    "--release",
                ])
                .args(["--", "-D", "warnings"]),
        )
    })?;
    phase("build", || cmd::run(&mut build_command(root)))?;
    phase("test", || {
        let binaries = binaries::build(cargo(root).args([
            "test",
            "--workspace",
            "--exclude",
            EBPF_CRATE,
            "--no-run",
            "--message-format=json-render-diagnostics",
        ]))?;
        println!("running {} test binaries, {jobs} at a time", binaries.len());
        let mut failed = Vec::new();
        binaries::run(binaries, jobs, |finished| {
            let verdict = if finished.success { "ok" } else { "FAILED" };
            println!(
                "\n     Ran {} ({verdict} in {:.1}s)",
                finished.binary.label,
                finished.elapsed.as_secs_f64()
            );
            print!("{}", finished.output);
            for line in finished.output.lines() {
                tally.add(line);
            }
            if !finished.success {
                failed.push(finished.binary.label);
            }
        });
        // Doc tests are not binaries of their own: rustdoc builds and runs them.
        run_tests(
            cargo(root).args(["test", "--workspace", "--exclude", EBPF_CRATE, "--doc"]),
            tally,
        )?;
        binaries::verdict(&failed)?;
        if tally.passed == 0 {
            bail!("cargo test ran no test");
        }
        Ok(())
    })
}

/// Totals over every `test result:` line cargo's test binaries print.
#[derive(Debug, Default, PartialEq, Eq)]
struct Tally {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl Tally {
    /// Adds a line like `test result: ok. 37 passed; 0 failed; 2 ignored; 0 measured; ...`.
    fn add(&mut self, line: &str) {
        let Some(counts) = line.strip_prefix("test result: ") else {
            return;
        };
        for field in counts.split(';') {
            let mut words = field.split_whitespace().rev();
            let (Some(label), Some(number)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(number) = number.parse::<u64>() else {
                continue;
            };
            match label {
                "passed" => self.passed += number,
                "failed" => self.failed += number,
                "ignored" => self.ignored += number,
                _ => {}
            }
        }
    }
}

/// Runs `cargo test`, passing its output through while adding up the results.
fn run_tests(command: &mut Command, tally: &mut Tally) -> Result<()> {
    cmd::run_lines(command, |output| {
        println!("{output}");
        tally.add(output);
        Ok(())
    })
}

/// The build phase's command: every target of the host crates, so the test phase finds its
/// binaries built. All targets, not only the binaries: the tests' dev-dependencies change
/// which features some dependencies are built with, and a build without them would compile
/// those dependencies, and the crates above them, twice.
pub fn build_command(root: &Path) -> Command {
    let mut command = cargo(root);
    command.args([
        "build",
        "--workspace",
        "--exclude",
        EBPF_CRATE,
        "--all-targets",
    ]);
    command
}

fn cargo(root: &Path) -> Command {
    let mut command = Command::new("cargo");
    command.current_dir(root);
    // CI builds everything from a clean checkout once: incremental compilation's bookkeeping
    // is pure cost there. A developer's runs keep it for their rebuilds.
    if std::env::var_os("CI").is_some() {
        command.env("CARGO_INCREMENTAL", "0");
    }
    command
}

fn phase(name: &str, body: impl FnOnce() -> Result<()>) -> Result<()> {
    println!("\n========== {name} ==========");
    let started = Instant::now();
    body().with_context(|| format!("phase `{name}` failed"))?;
    println!("---------- {name}: ok in {}", minutes(started.elapsed()));
    Ok(())
}

fn minutes(elapsed: Duration) -> String {
    let seconds = elapsed.as_secs();
    format!("{}m{:02}s", seconds / 60, seconds % 60)
}

#[cfg(test)]
mod tests {
    use super::Tally;

    #[test]
    fn tally_adds_every_result_line() {
        let mut tally = Tally::default();
        for line in [
            "running 3 tests",
            "test result: ok. 37 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out; finished in 0.01s",
            "test result: FAILED. 1 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.20s",
            "test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s",
        ] {
            tally.add(line);
        }
        assert_eq!(
            tally,
            Tally {
                passed: 38,
                failed: 2,
                ignored: 2
            }
        );
    }
}
