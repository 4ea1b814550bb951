//! `cargo xtask fuzz`: the long differential run. Builds and runs tests/src/bin/
//! differential_fuzz (as root: it loads the kernel program), which mutates generated frames
//! with proptest and compares the reference model with the kernel program on every input
//! until the time is up; disagreements are saved under tests/regressions/. Not part of
//! `cargo xtask test`, which replays those files and runs the shorter differential test.

use std::{path::Path, process::Command, time::Duration};

use anyhow::{Result, bail};

use crate::{bootstrap, cmd};

#[derive(Debug, clap::Args)]
pub struct FuzzArgs {
    /// How long to fuzz: seconds, minutes or hours, e.g. `--duration 10m`, `90s`, `2h`.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    duration: Duration,
    /// Seed of the inputs (the same seed tries the same inputs), e.g. `--seed 7`; random
    /// when not given, and printed either way.
    #[arg(long)]
    seed: Option<u64>,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (a number with s, m or h, e.g. 10m)"))?;
    let seconds = match unit {
        "" | "s" => number,
        "m" => number * 60,
        "h" => number * 3600,
        _ => return Err(format!("{text:?}: unit {unit:?} is not s, m or h")),
    };
    Ok(Duration::from_secs(seconds))
}

pub fn run(root: &Path, args: &FuzzArgs) -> Result<()> {
    bootstrap::run(root)?;
    // The debug build: the run's time goes into BPF_PROG_TEST_RUN syscalls, not host code,
    // and it shares the build `cargo xtask test` already made.
    cmd::run(Command::new("cargo").current_dir(root).args([
        "build",
        "-p",
        "smtpguard-tests",
        "--bin",
        "differential_fuzz",
    ]))?;
    let mut fuzz = Command::new(root.join("target/debug/differential_fuzz"));
    fuzz.current_dir(root)
        .arg("--duration")
        .arg(args.duration.as_secs().to_string());
    if let Some(seed) = args.seed {
        fuzz.arg("--seed").arg(seed.to_string());
    }
    if cmd::run(&mut fuzz).is_err() {
        bail!(
            "the kernel program and the model disagreed; the cases are saved under {} \
             (see the output above), and `cargo xtask test` replays them",
            root.join("tests/regressions").display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert!(
            parse_duration("10 minutes")
                .unwrap_err()
                .contains("10 minutes")
        );
        assert!(parse_duration("m").is_err());
    }
}
