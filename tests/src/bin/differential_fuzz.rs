//! The long differential run behind `cargo xtask fuzz`: proptest mutates generated frames
//! (bit flips, byte overwrites, truncation, insertion), and every input runs through the
//! reference model and the kernel program's XDP and TC entry points until the time is up.
//! A disagreement is shrunk by proptest and saved as a regression case under
//! tests/regressions/, which the differential test replays from then on.
//!
//! Usage: differential_fuzz --duration SECONDS [--seed N]   (as root)

use std::{
    cell::RefCell,
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant},
};

use proptest::{
    prelude::*,
    sample::Index,
    test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner},
};
use smtpguard_tests::{
    differential::{Harness, describe},
    generate::{self, GeneratedPolicy},
    regression::{self, Regression},
};

/// Inputs per policy: then the host statistics are compared and the next policy installed.
const CASES_PER_ROUND: u32 = 2_000;

#[derive(Clone, Debug)]
enum Mutation {
    FlipBit { at: Index, bit: u8 },
    SetByte { at: Index, value: u8 },
    Truncate { at: Index },
    Insert { at: Index, bytes: Vec<u8> },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), 0u8..8).prop_map(|(at, bit)| Mutation::FlipBit { at, bit }),
        (any::<Index>(), any::<u8>()).prop_map(|(at, value)| Mutation::SetByte { at, value }),
        any::<Index>().prop_map(|at| Mutation::Truncate { at }),
        (any::<Index>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
    ]
}

fn mutate(frame: &mut Vec<u8>, mutations: &[Mutation]) {
    for mutation in mutations {
        let len = frame.len();
        match mutation {
            Mutation::FlipBit { at, bit } if len > 0 => frame[at.index(len)] ^= 1 << bit,
            Mutation::SetByte { at, value } if len > 0 => frame[at.index(len)] = *value,
            Mutation::Truncate { at } => frame.truncate(at.index(len + 1)),
            Mutation::Insert { at, bytes } => {
                let at = at.index(len + 1);
                frame.splice(at..at, bytes.iter().copied());
            }
            // Nothing to flip or overwrite in an empty frame.
            Mutation::FlipBit { .. } | Mutation::SetByte { .. } => {}
        }
    }
}

/// A generated frame (by its seed) with mutations on top.
fn input(policy: &GeneratedPolicy, frame_seed: u64, mutations: &[Mutation]) -> Vec<u8> {
    let mut frame = generate::random_frame(&mut generate::rng(frame_seed), policy).bytes;
    mutate(&mut frame, mutations);
    frame
}

struct Args {
    duration: Duration,
    seed: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut duration = None;
    let mut seed = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--duration" => {
                let seconds: u64 = value
                    .parse()
                    .map_err(|_| format!("--duration {value:?}: a number of seconds expected"))?;
                duration = Some(Duration::from_secs(seconds));
            }
            "--seed" => {
                seed = Some(
                    value
                        .parse()
                        .map_err(|_| format!("--seed {value:?}: a number expected"))?,
                );
            }
            other => return Err(format!("unknown argument {other:?} (--duration, --seed)")),
        }
    }
    Ok(Args {
        duration: duration.ok_or("--duration SECONDS is required")?,
        seed: seed.unwrap_or_else(rand::random),
    })
}

/// Saves a shrunk failing input; returns where.
fn save(case: &Regression, seed: u64, round: u64) -> PathBuf {
    let path = regression::folder().join(format!("fuzz-{seed}-{round}.txt"));
    std::fs::write(&path, case.render())
        .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    path
}

/// Replays a case on a fresh program instance: whether it still disagrees from a clean state.
fn reproduces(case: &Regression) -> bool {
    let mut harness = Harness::new();
    harness.install(&case.policy, &case.escalated);
    case.frames
        .iter()
        .any(|frame| harness.judge(frame).is_err())
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
        "differential fuzzing for {:?}, seed {} (--seed {} reproduces the inputs)",
        args.duration, args.seed, args.seed
    );
    let started = Instant::now();
    let harness = RefCell::new(Harness::new());
    let mut inputs = 0u64;
    let mut found = Vec::new();
    let mut round = 0u64;
    while started.elapsed() < args.duration {
        let seed = args.seed.wrapping_add(round);
        let policy = generate::random_policy(&mut generate::rng(seed));
        harness
            .borrow_mut()
            .install(&policy.desired, &policy.escalated);
        let mut rng_seed = [0u8; 32];
        rng_seed[..8].copy_from_slice(&seed.to_le_bytes());
        let config = Config {
            cases: CASES_PER_ROUND,
            failure_persistence: None,
            ..Config::default()
        };
        let mut runner =
            TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &rng_seed));
        let strategy = (any::<u64>(), prop::collection::vec(mutation(), 0..6));
        let result = runner.run(&strategy, |(frame_seed, mutations)| {
            let frame = input(&policy, frame_seed, &mutations);
            let mut harness = harness.borrow_mut();
            // Each input is judged on its own: a disagreement earlier (while shrinking) must
            // not make later inputs fail through the counters it left different.
            harness.resync_counters();
            harness
                .judge(&frame)
                .map(|_| ())
                .map_err(|what| TestCaseError::fail(format!("{what}\n    {}", describe(&frame))))
        });
        inputs += u64::from(CASES_PER_ROUND);
        match result {
            Ok(()) => {}
            Err(TestError::Fail(what, (frame_seed, mutations))) => {
                let case = Regression {
                    comment: format!(
                        "found by cargo xtask fuzz --seed {} (round {round}), shrunk by proptest:\n{what}",
                        args.seed
                    ),
                    policy: policy.desired.clone(),
                    escalated: policy.escalated.clone(),
                    frames: vec![input(&policy, frame_seed, &mutations)],
                };
                let path = save(&case, args.seed, round);
                let fresh = if reproduces(&case) {
                    "reproduces on a fresh instance"
                } else {
                    "does NOT reproduce on a fresh instance (depends on earlier state)"
                };
                println!(
                    "DISAGREEMENT ({fresh}), saved as {}:\n{what}",
                    path.display()
                );
                found.push(path.display().to_string());
                // Later inputs under a diverged model would disagree too: start afresh.
                *harness.borrow_mut() = Harness::new();
            }
            Err(TestError::Abort(why)) => {
                eprintln!("error: proptest aborted: {why}");
                return ExitCode::FAILURE;
            }
        }
        if let Err(differences) = harness.borrow().compare_hosts() {
            println!("host statistics differ after round {round} (seed {seed}): {differences:?}");
            found.push(format!(
                "round {round}: host statistics (not saved: no single input to blame)"
            ));
            *harness.borrow_mut() = Harness::new();
        }
        round += 1;
    }
    println!(
        "{inputs} inputs in {} rounds over {:?}: {} disagreement(s)",
        round,
        started.elapsed(),
        found.len()
    );
    for case in &found {
        println!("  {case}");
    }
    if found.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
