//! The kernel program against the reference model, on generated frames: 100,000 with a fixed
//! seed, 100,000 with a random one (printed; `SMTPGUARD_DIFF_SEED=N` reproduces it), and the
//! regression cases in tests/regressions/. Every XDP and TC action, every counter after every
//! frame and every host's statistics after every batch must agree.

use std::net::IpAddr;

use smtpguard::model::{Dissection, dissect};
use smtpguard_common::Reason;
use smtpguard_tests::{
    differential::{Harness, describe},
    generate::{self, GeneratedFrame, GeneratedPolicy},
    regression::{self, Regression},
};

const FIXED_SEED: u64 = 0x5eed_0008;
const FRAMES_PER_SEED: usize = 100_000;
/// Frames judged under one policy before the host statistics are compared and the next
/// policy is installed.
const FRAMES_PER_POLICY: usize = 1_000;

/// A ready-to-save regression case for a failing frame.
fn repro(policy: &GeneratedPolicy, frames: &[&GeneratedFrame], seed: u64) -> String {
    Regression {
        comment: format!("found by the differential test, seed {seed}"),
        policy: policy.desired.clone(),
        escalated: policy.escalated.clone(),
        frames: frames.iter().map(|f| f.bytes.clone()).collect(),
    }
    .render()
}

fn source(frame: &[u8]) -> Option<IpAddr> {
    match dissect(frame) {
        Dissection::Ip { src, .. } => Some(src),
        _ => None,
    }
}

/// Judges `count` generated frames in `harness`; returns it (how often each reason occurred
/// is its coverage).
fn run_seed(seed: u64, count: usize, mut harness: Harness) -> Harness {
    let mut rng = generate::rng(seed);
    let mut judged = 0;
    while judged < count {
        let policy = generate::random_policy(&mut rng);
        harness.install(&policy.desired, &policy.escalated);
        let mut batch = Vec::with_capacity(FRAMES_PER_POLICY);
        for _ in 0..FRAMES_PER_POLICY {
            let frame = generate::random_frame(&mut rng, &policy);
            if let Err(what) = harness.judge(&frame.bytes) {
                panic!(
                    "seed {seed}, frame {}: {what}\n    generated as {}\n    {}\n\
                     as a regression case (save under tests/regressions/):\n{}",
                    judged + batch.len(),
                    frame.description,
                    describe(&frame.bytes),
                    repro(&policy, &[&frame], seed)
                );
            }
            batch.push(frame);
        }
        if let Err(differences) = harness.compare_hosts() {
            let mut report = format!(
                "seed {seed}: host statistics differ after frames {judged}..{} (kernel holds {:?}, the model {} hosts)",
                judged + batch.len(),
                harness.host_count(),
                harness.model.hosts.len()
            );
            for (host, what) in differences.iter().take(5) {
                let frames: Vec<&GeneratedFrame> = batch
                    .iter()
                    .filter(|f| source(&f.bytes) == Some(*host))
                    .collect();
                report += &format!("\n  {host}: {what}\n  its frames in this batch:");
                for frame in frames.iter().take(10) {
                    report += &format!(
                        "\n    {}\n    {}",
                        frame.description,
                        describe(&frame.bytes)
                    );
                }
                report += &format!(
                    "\n  as a regression case:\n{}",
                    repro(&policy, &frames, seed)
                );
            }
            panic!("{report}");
        }
        judged += batch.len();
    }
    harness
}

#[test]
fn fixed_seed_agrees_and_reaches_every_reason() {
    let coverage = run_seed(FIXED_SEED, FRAMES_PER_SEED, Harness::new()).coverage;
    println!("seed {FIXED_SEED}: frames by reason:");
    for reason in Reason::ALL {
        println!("  {:>20} {}", reason.name(), coverage[reason as usize]);
    }
    let missing: Vec<&str> = Reason::ALL
        .into_iter()
        .filter(|r| coverage[*r as usize] == 0)
        .map(Reason::name)
        .collect();
    assert!(
        missing.is_empty(),
        "the generator never reached {missing:?}: {coverage:?}"
    );
}

#[test]
fn random_seed_agrees() {
    let seed = match std::env::var("SMTPGUARD_DIFF_SEED") {
        Ok(text) => text
            .parse()
            .unwrap_or_else(|_| panic!("SMTPGUARD_DIFF_SEED={text:?} is not a number")),
        Err(_) => rand::random(),
    };
    // Printed first, so that a failure (or a crash) can be reproduced.
    eprintln!("differential seed {seed} (SMTPGUARD_DIFF_SEED={seed} reproduces this run)");
    run_seed(seed, FRAMES_PER_SEED, Harness::new());
}

/// A host table of 8 slots: almost every host shares a slot, so most take the overflow map
/// (a claim that finds the slot held), and every host's counts must still agree with the
/// model, whichever of the two holds them.
#[test]
fn a_tiny_host_table_agrees_through_its_overflow() {
    let harness = run_seed(
        FIXED_SEED,
        FRAMES_PER_SEED / 5,
        Harness::with_host_capacity(8),
    );
    let count = harness.host_count();
    println!("hosts: {count:?}");
    assert_eq!(count.slots, 8);
    assert!(
        count.slots_used == 8 && count.overflow > 0,
        "the slots and the overflow both hold hosts: {count:?}"
    );
    assert!(
        count.overflow < count.overflow_capacity,
        "the overflow never evicted (the model keeps every host): {count:?}"
    );
}

#[test]
fn regression_cases_agree() {
    let folder = regression::folder();
    let mut paths: Vec<_> = std::fs::read_dir(&folder)
        .unwrap_or_else(|e| panic!("reading {}: {e}", folder.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "txt"))
        .collect();
    paths.sort();
    assert!(
        !paths.is_empty(),
        "no regression cases in {}",
        folder.display()
    );
    for path in paths {
        let case = Regression::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let mut harness = Harness::new();
        harness.install(&case.policy, &case.escalated);
        for frame in &case.frames {
            if let Err(what) = harness.judge(frame) {
                panic!("{}: {what}\n    {}", path.display(), describe(frame));
            }
        }
        if let Err(differences) = harness.compare_hosts() {
            panic!(
                "{}: host statistics differ: {differences:?}",
                path.display()
            );
        }
    }
}
