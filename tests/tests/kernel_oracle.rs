//! The kernel as the oracle (tests/src/oracle.rs): generated frames through a real forwarding
//! gateway namespace to a host that takes every address, and every TCP packet that host's
//! kernel delivers (after reassembly) judged by the reference model. With smtpguard attached
//! (XDP in driver mode, TC) no arrival may be one the model drops, and every answer `reject`
//! sends back to the subscriber must answer a SYN the model rejects, within the host's bucket;
//! without it (the baseline, the same frames) there must be such arrivals, or the oracle could
//! not see a leak at all, and nothing the gateway's kernel sends back may pass for an answer
//! of smtpguard's, or the answers' check could be judging the wrong packets.
//!
//! A short fixed-seed run; `cargo xtask fuzz --oracle kernel` is the long one. Needs root.

use aya::programs::XdpMode;
use smtpguard::dataplane::Attach;
use smtpguard_tests::{
    differential::HOST_CAPACITY,
    oracle::{RoundConfig, RoundReport, run_round},
};

const SEED: u64 = 0x0_7ac1e;
/// Frames per round: enough for the generator's rarer shapes (deep priority-tag stacks,
/// straddling fragment pairs) to come up from enforced subscribers a few times.
const FRAMES: usize = 20_000;

fn round(attach: Option<Attach>, host_capacity: u32) -> RoundReport {
    let report = run_round(
        RoundConfig {
            seed: SEED,
            frames: FRAMES,
            attach,
            host_capacity,
        },
        |_| {},
    );
    eprintln!("{}", report.summary());
    for (link, stats) in &report.links {
        eprintln!("  {link}: {stats:?}");
    }
    if let Err(lost) = report.check_nothing_lost() {
        panic!("{lost}\n{}", report.summary());
    }
    report
}

#[test]
fn without_smtpguard_the_oracle_sees_what_it_must_stop() {
    let report = round(None, HOST_CAPACITY);
    assert!(
        report.arrivals > FRAMES / 20,
        "observed {} TCP arrivals for {} frames, expected more than {}: the lab does not \
         forward generated frames\n{}",
        report.arrivals,
        report.frames_sent,
        FRAMES / 20,
        report.summary()
    );
    assert!(
        report.leak_count > 0,
        "observed 0 arrivals the model drops without smtpguard, expected some: the oracle \
         could not see a leak\n{}",
        report.summary()
    );
    assert_eq!(
        report.replies,
        0,
        "observed {} packets without smtpguard that the oracle takes for its answers, expected \
         0\n{}",
        report.replies,
        report.details()
    );
}

fn no_leaks(attach: Attach, host_capacity: u32) {
    let report = round(Some(attach), host_capacity);
    assert!(
        report.arrivals > 0,
        "observed no TCP arrivals at all with {attach:?}, expected the ordinary traffic to \
         pass\n{}",
        report.summary()
    );
    assert_eq!(
        report.leak_count,
        0,
        "observed {} leaks (arrivals the model drops), expected 0\n{}",
        report.leak_count,
        report.details()
    );
    assert!(
        report.replies > 0,
        "observed no answers with {attach:?}, expected some: the generated policies reject \
         in a quarter of their ranges\n{}",
        report.summary()
    );
    assert_eq!(
        report.bad_reply_count,
        0,
        "observed {} answers the policy forbids or SYNs the model rejects left unanswered, \
         expected 0\n{}",
        report.bad_reply_count,
        report.details()
    );
}

#[test]
fn xdp_lets_nothing_through_that_the_model_drops() {
    no_leaks(Attach::Xdp(XdpMode::Driver), HOST_CAPACITY);
}

#[test]
fn tc_lets_nothing_through_that_the_model_drops() {
    no_leaks(Attach::Tc, HOST_CAPACITY);
}

/// A host table of 8 slots: most hosts, their statistics and their cached classes live in
/// the overflow map, and nothing gets through either.
#[test]
fn a_tiny_host_table_lets_nothing_through_that_the_model_drops() {
    no_leaks(Attach::Xdp(XdpMode::Driver), 8);
}
