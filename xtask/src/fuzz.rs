//! `cargo xtask fuzz`: the long runs, as root (they load the kernel program). Not part of
//! `cargo xtask test`, which runs shorter versions of both.
//!
//! - `--oracle model` (the default): tests/src/bin/differential_fuzz mutates generated frames
//!   with proptest and compares the reference model with the kernel program on every input
//!   until the time is up; disagreements are saved under tests/regressions/, which `cargo
//!   xtask test` replays.
//! - `--oracle kernel`: tests/src/bin/kernel_oracle sends `--frames` generated frames per
//!   round through a real forwarding gateway (nothing attached, then XDP, then TC) and judges
//!   every TCP packet the far host's kernel delivers; any leak fails the run.

use std::{path::Path, process::Command, time::Duration};

use anyhow::{Result, bail};

use crate::{bootstrap, cmd};

/// What judges the kernel program.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Oracle {
    /// The reference model, frame by frame (BPF_PROG_TEST_RUN).
    Model,
    /// The real kernel: what a forwarding gateway with smtpguard attached lets through.
    Kernel,
}

#[derive(Debug, clap::Args)]
pub struct FuzzArgs {
    /// What judges the program, e.g. `--oracle kernel`: `model` compares it with the reference
    /// model, `kernel` sends frames through a real forwarding gateway and judges what arrives.
    #[arg(long, value_enum, default_value = "model")]
    oracle: Oracle,
    /// Frames per round with `--oracle kernel`, e.g. `--frames 100000` (three rounds: nothing
    /// attached, XDP, TC).
    #[arg(long, default_value_t = 1_000_000)]
    frames: u64,
    /// How long to fuzz with `--oracle model`: seconds, minutes or hours, e.g.
    /// `--duration 10m`, `90s`, `2h`.
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
    let binary = match args.oracle {
        Oracle::Model => "differential_fuzz",
        Oracle::Kernel => "kernel_oracle",
    };
    // The debug build: the run's time goes into syscalls (BPF_PROG_TEST_RUN, sending frames),
    // not host code, and it shares the build `cargo xtask test` already made.
    cmd::run(Command::new("cargo").current_dir(root).args([
        "build",
        "-p",
        "smtpguard-tests",
        "--bin",
        binary,
    ]))?;
    let mut fuzz = Command::new(root.join("target/debug").join(binary));
    fuzz.current_dir(root);
    match args.oracle {
        Oracle::Model => fuzz
            .arg("--duration")
            .arg(args.duration.as_secs().to_string()),
        Oracle::Kernel => fuzz.arg("--frames").arg(args.frames.to_string()),
    };
    if let Some(seed) = args.seed {
        fuzz.arg("--seed").arg(seed.to_string());
    }
    if cmd::run(&mut fuzz).is_err() {
        match args.oracle {
            Oracle::Model => bail!(
                "the kernel program and the model disagreed; the cases are saved under {} \
                 (see the output above), and `cargo xtask test` replays them",
                root.join("tests/regressions").display()
            ),
            Oracle::Kernel => bail!(
                "the kernel oracle failed (see the output above: each leak is printed with \
                 the seed and the frames that may have carried it)"
            ),
        }
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
