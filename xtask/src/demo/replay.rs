//! `cargo xtask demo --replay`: replays a generated sample capture through the real kernel
//! program with the example configuration.

use std::{fs, path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::cmd;

const EXPLANATION: &str = "\
The sample capture is one subscriber-facing link's traffic, judged by deploy/smtpguard.example.toml
after the first rollout step (its two broad subscriber ranges switched from monitor to enforce):
SYNs to port 25 from enforced, exempt, monitor-mode and outside sources, mail to the ISP's relays,
submission, DNS, ARP, and evasion attempts (QinQ+PPPoE, IPv6 extension headers, tiny fragments).";

/// Replays the sample capture; bootstrap and the build have run already.
pub fn run(root: &Path) -> Result<()> {
    let demo = root.join("target").join("demo");
    fs::create_dir_all(&demo).with_context(|| format!("creating {}", demo.display()))?;
    let capture = demo.join("sample.pcap");
    println!("\n{EXPLANATION}\n");
    cmd::run(
        Command::new("cargo")
            .current_dir(root)
            .args(["run", "-q", "-p", "smtpguard-tests"])
            .args(["--bin", "sample_capture", "--"])
            .arg(&capture),
    )?;
    println!();
    let config = demo.join("replay.toml");
    fs::write(
        &config,
        rolled_out(&root.join("deploy/smtpguard.example.toml"))?,
    )
    .with_context(|| format!("writing {}", config.display()))?;
    let smtpguard = root.join("target").join("debug").join("smtpguard");
    let replay = |format: &str| {
        let mut command = Command::new(&smtpguard);
        command
            .current_dir(root)
            .arg("replay")
            .arg("--config")
            .arg(&config)
            .arg(&capture)
            .args(["--format", format]);
        command
    };
    cmd::run(&mut replay("table")).context("replaying the sample capture")?;
    check_reasons(
        &cmd::output(&mut replay("json"))?,
        &capture.with_extension("expected"),
    )
}

/// The example config (every range in monitor mode, as a new deployment starts) with its two
/// broad ranges enforced, as an operator's first rollout step does.
fn rolled_out(example: &Path) -> Result<String> {
    let text =
        fs::read_to_string(example).with_context(|| format!("reading {}", example.display()))?;
    let mut rolled = text.clone();
    for prefix in ["100.64.0.0/10", "2001:db8:1000::/36"] {
        let monitored = format!("prefix = \"{prefix}\"\nmode = \"monitor\"\n");
        if !rolled.contains(&monitored) {
            bail!("{}: expected {monitored:?} in it", example.display());
        }
        rolled = rolled.replace(
            &monitored,
            &format!("prefix = \"{prefix}\"\nmode = \"enforce\"\n"),
        );
    }
    Ok(rolled)
}

/// Compares replay's JSON lines with the reasons the capture was written to produce.
fn check_reasons(json: &str, expected_path: &Path) -> Result<()> {
    let expected = fs::read_to_string(expected_path)
        .with_context(|| format!("reading {}", expected_path.display()))?;
    let observed: Vec<String> = json
        .lines()
        .filter(|line| line.starts_with(r#"{"frame""#))
        .map(|line| {
            let reason = line
                .rsplit_once(r#""reason": ""#)
                .and_then(|(_, rest)| rest.strip_suffix(r#""}"#));
            reason
                .map(str::to_owned)
                .with_context(|| format!("unexpected replay line {line}"))
        })
        .collect::<Result<_>>()?;
    let expected: Vec<&str> = expected.lines().collect();
    let mismatches: Vec<String> = (1..)
        .zip(expected.iter().zip(&observed))
        .filter(|(_, (want, got))| **want != got.as_str())
        .map(|(frame, (want, got))| format!("frame {frame}: expected {want}, replay said {got}"))
        .collect();
    if observed.len() != expected.len() || !mismatches.is_empty() {
        bail!(
            "the replay does not match the story ({} frames expected, {} replayed):\n{}",
            expected.len(),
            observed.len(),
            mismatches.join("\n")
        );
    }
    println!("\nall {} verdicts are as the story says", observed.len());
    Ok(())
}
