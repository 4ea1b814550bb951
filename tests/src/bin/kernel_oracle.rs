//! The long kernel-oracle run behind `cargo xtask fuzz --oracle kernel` (tests/src/oracle.rs):
//! generated frames through a real forwarding gateway, first with nothing attached (the
//! baseline: what smtpguard is there to stop), then with smtpguard's XDP entry point (driver
//! mode), then with its TC entry point; every TCP arrival at the far host is judged by the
//! reference model, and every answer of `reject` checked. Prints frames sent, arrivals, leaks,
//! answers and frames/second per round, and every leak and wrong or missing answer (up to 20
//! each per round), a leak with the frames that may have carried it.
//!
//! Usage: kernel_oracle [--frames N] [--seed N]   (as root; default 1,000,000 frames a round)
//! Exit status 1 when a round with smtpguard attached let a leak through, an arrival may
//! have been lost, or the baseline saw nothing to stop (the oracle would be blind).

use std::process::ExitCode;

use aya::programs::XdpMode;
use smtpguard::dataplane::Attach;
use smtpguard_tests::oracle::{RoundConfig, run_round};

struct Args {
    frames: usize,
    seed: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut frames = 1_000_000;
    let mut seed = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = |what: &str| format!("{flag} {value:?}: {what} expected");
        match flag.as_str() {
            "--frames" => frames = value.parse().map_err(|_| number("a number of frames"))?,
            "--seed" => seed = Some(value.parse().map_err(|_| number("a number"))?),
            other => return Err(format!("unknown argument {other:?} (--frames, --seed)")),
        }
    }
    Ok(Args {
        frames,
        seed: seed.unwrap_or_else(rand::random),
    })
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(problem) => {
            eprintln!("error: {problem}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "kernel oracle: {} frames a round, seed {} (--seed {} sends the same frames)",
        args.frames, args.seed, args.seed
    );
    let mut failures = Vec::new();
    for attach in [None, Some(Attach::Xdp(XdpMode::Driver)), Some(Attach::Tc)] {
        let config = RoundConfig {
            seed: args.seed,
            frames: args.frames,
            attach,
            host_capacity: smtpguard_tests::differential::HOST_CAPACITY,
        };
        let mut next_progress = 100_000;
        let report = run_round(config, |report| {
            if report.frames_sent >= next_progress {
                println!("  ... {}", report.summary());
                next_progress += 100_000;
            }
        });
        println!("{}", report.details());
        if let Err(lost) = report.check_nothing_lost() {
            println!("LOST: {lost}");
            failures.push(lost);
        }
        match attach {
            None if report.leak_count == 0 => failures.push(format!(
                "{}: no arrival the model drops without smtpguard: the oracle is blind",
                report.name()
            )),
            Some(_) if report.leak_count > 0 => {
                failures.push(format!("{}: {} leaks", report.name(), report.leak_count))
            }
            _ => {}
        }
        match attach {
            None if report.replies > 0 => failures.push(format!(
                "{}: {} packets taken for smtpguard's answers without smtpguard",
                report.name(),
                report.replies
            )),
            Some(_) if report.bad_reply_count > 0 => failures.push(format!(
                "{}: {} wrong or missing answers",
                report.name(),
                report.bad_reply_count
            )),
            _ => {}
        }
    }
    if failures.is_empty() {
        println!("no leaks");
        ExitCode::SUCCESS
    } else {
        println!("FAILED: {}", failures.join("; "));
        ExitCode::FAILURE
    }
}
