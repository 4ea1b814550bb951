//! The enforcement actions' per-packet cost (issue 17): `reject` (the reply built and sent back
//! with `XDP_TX`) and `ratelimit` (the host's bucket taken from, the SYN passed or dropped),
//! next to the drop path and xdp-filter's drop in the same rounds.
//!
//! A reply cannot be timed over repetitions of one test run: an ordinary run keeps the frame
//! the program rewrote for the next repetition, and so do live frames
//! (`BPF_F_TEST_XDP_LIVE_FRAMES`), whose page pool recycles a transmitted page with the reply
//! in it and resets only the context's pointers (measured: of 200,000 repetitions, the first
//! batch of 64 was rejected and the rest judged the recycled reply, passed into the stack).
//! So the cost is taken apart:
//! - build: ordinary test runs of one repetition each, every call from the SYN as given, timed
//!   by the kernel (its clock read around the one run, the same for every program): what
//!   judging and building the reply cost next to dropping, with no transmit (with
//!   `--baseline`, the earlier build's drop and reject in the same rounds);
//! - transmit: live frames out of a veth whose peer drops them with a 2-instruction XDP
//!   program (veth hands an XDP_TX frame over only to a peer running XDP), the tx floor
//!   (`XDP_TX` of an unchanged frame) against a drop floor, timed by the calling thread's CPU
//!   time over the call (the kernel reports no time in that mode);
//! - reject as sent: the drop path's live figure plus both differences.
//!
//! Passing frames cannot be timed with live frames either (they become skbs for the stack),
//! so the rate-limit's two outcomes are timed by the kernel over repetitions, beside the drop
//! path timed the same way. Every live repetition's verdict is checked by the counters.
//!
//! Every call gets a host of its own with a budget (rate 1,000,000 per hour) larger than the
//! call's repetitions, so no reply or passed SYN ever meets an empty bucket; the over-the-rate
//! case is one host with a budget of one, spent before timing.

use std::{
    os::fd::{AsFd as _, BorrowedFd, OwnedFd},
    path::Path,
};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;
use smtpguard::{config::Config, dataplane::Dataplane};
use smtpguard_common::Reason;
use smtpguard_tests::{
    bpf::{XDP_DROP, attach_xdp, load_constant},
    frames::{FrameSpec, TCP_SYN},
    lab::Netns,
};

use crate::{bpf, ip, median_u32};

/// The bench's policy with a range per action (the main policy's 100.64.0.0/10 drops).
const POLICY: &str = r#"
[enforcement]
ports = [25]

[[subscribers]]
prefix = "100.64.0.0/10"
[[subscribers]]
prefix = "10.1.0.0/16"
action = "reject"
rate = 1000000
per = "1h"
[[subscribers]]
prefix = "10.2.0.0/16"
action = "reject"
reject_with = "icmp-admin-prohibited"
rate = 1000000
per = "1h"
[[subscribers]]
prefix = "10.3.0.0/16"
action = "ratelimit"
rate = 1000000
per = "1h"
[[subscribers]]
prefix = "10.4.0.0/16"
action = "ratelimit"
rate = 1
per = "1h"

[capacity]
hosts = 65536
"#;

/// At most this many repetitions per call: below every per-host budget.
const MAX_REPEAT: u32 = 500_000;
/// Calls of one repetition per case and run for the build figures.
const FRESH_CALLS: u32 = 20_000;

#[derive(Serialize)]
pub struct Actions {
    pub repeat: u32,
    pub runs: u32,
    /// Timed by the thread's CPU time over live-frames test runs.
    pub live: Vec<ActionTiming>,
    /// Timed by the kernel, one repetition per call from the frame as given (mean over
    /// `fresh_calls` calls).
    pub fresh: Vec<ActionTiming>,
    pub fresh_calls: u32,
    /// Timed by the kernel (ordinary test runs).
    pub kernel: Vec<ActionTiming>,
    pub note: String,
}

#[derive(Serialize)]
pub struct ActionTiming {
    pub key: &'static str,
    pub description: &'static str,
    /// "xdp-filter", "smtpguard", "baseline", "tx floor" or "drop floor".
    pub program: &'static str,
    /// The verdict it gave (checked before timing).
    pub action: &'static str,
    /// Median ns per packet, and each run's.
    pub ns: u32,
    pub runs: Vec<u32>,
}

/// One timed case: which program, and the frame of run `n` (a fresh host per run where the
/// bucket matters).
struct Case {
    key: &'static str,
    description: &'static str,
    program: Program,
    expected: u32,
    frame: fn(u32) -> Vec<u8>,
}

#[derive(Clone, Copy)]
enum Program {
    Smtpguard,
    /// smtpguard as an earlier build (`--baseline`) makes it.
    Baseline,
    XdpFilter,
    /// `r0 = XDP_TX; exit`: what sending a frame back costs the test run, with no work of a
    /// program's own.
    TxFloor,
    /// `r0 = XDP_DROP; exit`: the same without the transmit.
    DropFloor,
}

impl Program {
    fn name(self) -> &'static str {
        match self {
            Program::Smtpguard => "smtpguard",
            Program::Baseline => "baseline",
            Program::XdpFilter => "xdp-filter",
            Program::TxFloor => "tx floor",
            Program::DropFloor => "drop floor",
        }
    }
}

const XDP_TX: u32 = 3;

fn syn(src: String) -> Vec<u8> {
    FrameSpec::tcp(ip(&src), ip("198.51.100.7"), 25, TCP_SYN).build()
}

fn drop_frame(_: u32) -> Vec<u8> {
    syn("100.64.0.2".into())
}

/// The `n`th host of a /16 starting with `prefix` ("10.1").
fn host(prefix: &str, n: u32) -> String {
    format!("{prefix}.{}.{}", (n >> 8) & 0xff, (n & 0xff) + 1)
}

const XDP_FILTER_DROP: Case = Case {
    key: "xdp-filter-drop",
    description: "xdp-filter drops a SYN to 25",
    program: Program::XdpFilter,
    expected: XDP_DROP,
    frame: drop_frame,
};
const DROP: Case = Case {
    key: "drop",
    description: "smtpguard drops a subscriber's SYN to 25 (action drop)",
    program: Program::Smtpguard,
    expected: XDP_DROP,
    frame: drop_frame,
};
const RATELIMIT_OVER: Case = Case {
    key: "ratelimit-over",
    description: "ratelimit: a SYN over the host's rate, dropped",
    program: Program::Smtpguard,
    expected: XDP_DROP,
    // One host throughout: its one attempt was spent by the verdict check.
    frame: |_| syn(host("10.4", 0)),
};

const TX_FLOOR: Case = Case {
    key: "tx-floor",
    description: "r0 = XDP_TX; exit: the frame sent back as it came, no work of its own",
    program: Program::TxFloor,
    expected: XDP_TX,
    frame: drop_frame,
};
const DROP_FLOOR: Case = Case {
    key: "drop-floor",
    description: "r0 = XDP_DROP; exit: no work of its own, nothing sent",
    program: Program::DropFloor,
    expected: XDP_DROP,
    frame: drop_frame,
};

const REJECT_RESET: Case = Case {
    key: "reject-reset",
    description: "reject: the SYN rewritten into a TCP RST+ACK for XDP_TX (not sent)",
    program: Program::Smtpguard,
    expected: XDP_TX,
    frame: |n| syn(host("10.1", n)),
};
/// A SYN as long as the usual one with its options (20 bytes after the base TCP header): its
/// reset is shorter than it, so the frame is cut, where the 54-byte SYN's keeps its length.
const REJECT_RESET_LONG: Case = Case {
    key: "reject-reset-74",
    description: "reject: a 74-byte SYN rewritten into a TCP RST+ACK, the frame cut to 54 bytes (not sent)",
    frame: |n| {
        FrameSpec::tcp(ip(&host("10.1", n)), ip("198.51.100.7"), 25, TCP_SYN)
            .payload(&[0; 20])
            .build()
    },
    ..REJECT_RESET
};
const REJECT_ICMP: Case = Case {
    key: "reject-icmp",
    description: "reject: the SYN rewritten into ICMP administratively prohibited (not sent)",
    program: Program::Smtpguard,
    expected: XDP_TX,
    frame: |n| syn(host("10.2", n)),
};
const BASELINE_DROP: Case = Case {
    key: "baseline-drop",
    description: "the earlier build drops a subscriber's SYN to 25 (action drop)",
    program: Program::Baseline,
    ..DROP
};
const BASELINE_RESET: Case = Case {
    key: "baseline-reject-reset",
    description: "the earlier build's reject with a TCP RST+ACK",
    program: Program::Baseline,
    ..REJECT_RESET
};
const BASELINE_RESET_LONG: Case = Case {
    key: "baseline-reject-reset-74",
    description: "the earlier build's reject of a 74-byte SYN with a TCP RST+ACK",
    program: Program::Baseline,
    ..REJECT_RESET_LONG
};
const BASELINE_ICMP: Case = Case {
    key: "baseline-reject-icmp",
    description: "the earlier build's reject with ICMP administratively prohibited",
    program: Program::Baseline,
    ..REJECT_ICMP
};

const LIVE: [Case; 5] = [XDP_FILTER_DROP, DROP, DROP_FLOOR, TX_FLOOR, RATELIMIT_OVER];

const FRESH: [Case; 7] = [
    XDP_FILTER_DROP,
    DROP,
    DROP_FLOOR,
    TX_FLOOR,
    REJECT_RESET,
    REJECT_RESET_LONG,
    REJECT_ICMP,
];

/// The earlier build's cases, timed in the same rounds where `--baseline` gives one.
const BASELINE: [Case; 4] = [
    BASELINE_DROP,
    BASELINE_RESET,
    BASELINE_RESET_LONG,
    BASELINE_ICMP,
];

const KERNEL: [Case; 4] = [
    XDP_FILTER_DROP,
    DROP,
    Case {
        key: "ratelimit-within",
        description: "ratelimit: a SYN within the host's rate, passed",
        program: Program::Smtpguard,
        expected: bpf::XDP_PASS,
        frame: |n| syn(host("10.3", n)),
    },
    RATELIMIT_OVER,
];

const NOTE: &str = "live: BPF_PROG_TEST_RUN with live frames (batches of 64) as if the SYN \
    arrived on a veth whose peer drops what comes back with XDP; the thread's CPU time over \
    the call per repetition, every program alike, each repetition's verdict checked by the \
    counters; fresh: one repetition per call from the SYN as given (a reply cannot be repeated: \
    both modes hand the next repetition the rewritten frame), the kernel's time of the run, \
    the mean over the calls, no transmit; kernel: ordinary test runs, the kernel's own mean; \
    each call a host of its own whose budget outlasts it (ratelimit-over: a budget of one)";

/// A veth pair in a namespace of its own: the programs are run as if frames arrived on
/// `bench0`; `bench1`, its peer, drops whatever is sent back.
struct Wire {
    netns: Netns,
    ifindex: u32,
    _drop: (OwnedFd, OwnedFd),
}

impl Wire {
    fn new() -> Result<Self> {
        let netns = Netns::new("actions")?;
        netns.ip(&[
            "link", "add", "bench0", "type", "veth", "peer", "name", "bench1",
        ])?;
        netns.ip(&["link", "set", "bench0", "up"])?;
        netns.ip(&["link", "set", "bench1", "up"])?;
        let program = load_constant("bench_sink", XDP_DROP)?;
        let sink = netns.ifindex("bench1")?;
        let link = netns.run(|| attach_xdp(program.as_fd(), sink))?;
        let ifindex = netns.ifindex("bench0")?;
        Ok(Self {
            netns,
            ifindex,
            _drop: (program, link),
        })
    }
}

/// `baseline`: an earlier build's object, whose drop and reject are timed in the same rounds.
pub fn measure(
    peer: BorrowedFd<'_>,
    repeat: u32,
    runs: u32,
    baseline: Option<&Path>,
) -> Result<Actions> {
    let repeat = repeat.min(MAX_REPEAT);
    let config =
        Config::parse(POLICY, Path::new("actions.toml")).context("the actions bench policy")?;
    let dataplane = Dataplane::with_policy(&config)?;
    let ours = dataplane.xdp_program_fd()?;
    let earlier = match baseline {
        Some(path) => {
            let object =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            let mut earlier = Dataplane::load_object(&object, &config.capacity)
                .with_context(|| format!("loading {}", path.display()))?;
            earlier
                .policy_maps()?
                .reconcile(&smtpguard::policy::DesiredPolicy::from_config(&config))?;
            Some(earlier)
        }
        None => None,
    };
    let tx_floor = load_constant("bench_tx_floor", XDP_TX)?;
    let drop_floor = load_constant("bench_dropflr", XDP_DROP)?;
    let program = |case: &Case| {
        anyhow::Ok(match case.program {
            Program::Smtpguard => ours,
            Program::Baseline => earlier
                .as_ref()
                .context("a baseline case without a baseline")?
                .xdp_program_fd()?,
            Program::XdpFilter => peer,
            Program::TxFloor => tx_floor.as_fd(),
            Program::DropFloor => drop_floor.as_fd(),
        })
    };
    // The instance whose counters check a case's verdicts (none for the other programs).
    let counted = |case: &Case| match case.program {
        Program::Smtpguard => Some(&dataplane),
        Program::Baseline => earlier.as_ref(),
        _ => None,
    };
    let counters = |case: &Case| -> Result<Vec<u64>> {
        Ok(match counted(case) {
            Some(instance) => instance.counters()?.to_vec(),
            None => Vec::new(),
        })
    };
    let fresh_cases: Vec<Case> = FRESH
        .into_iter()
        .chain(BASELINE.into_iter().filter(|_| earlier.is_some()))
        .collect();
    // Hosts are numbered across both tables and the verdict checks, so none is used twice.
    let mut next_host = 0u32;
    let mut frame = |case: &Case| {
        next_host += 1;
        (case.frame)(next_host)
    };
    // The second run of a frame is checked: the first spends a budget of one.
    for case in LIVE.iter().chain(&fresh_cases).chain(&KERNEL) {
        let frame = frame(case);
        bpf::test_run(program(case)?, &frame, 1, None)?;
        let action = bpf::test_run(program(case)?, &frame, 1, None)?.action;
        if action != case.expected {
            bail!(
                "{} ({}) returned {}, expected {}",
                case.key,
                case.description,
                smtpguard::replay::xdp_action_name(action),
                smtpguard::replay::xdp_action_name(case.expected)
            );
        }
    }
    let wire = Wire::new()?;
    let mut live = vec![Vec::new(); LIVE.len()];
    let mut fresh = vec![Vec::new(); fresh_cases.len()];
    let mut kernel = vec![Vec::new(); KERNEL.len()];
    // Rounds, each case once per round, so noise on the machine hits all of them alike.
    for _ in 0..runs {
        for (c, case) in LIVE.iter().enumerate() {
            let frame = frame(case);
            let before = counters(case)?;
            let program = program(case)?;
            let elapsed = wire
                .netns
                .run(|| bpf::test_run_live_on(program, &frame, repeat, wire.ifindex))?;
            check_live(case, repeat, &before, &counters(case)?)?;
            live[c].push((elapsed.as_nanos() / u128::from(repeat)) as u32);
        }
        for (c, case) in fresh_cases.iter().enumerate() {
            let frame = frame(case);
            let program = program(case)?;
            let mut total = 0u64;
            for _ in 0..FRESH_CALLS {
                total += u64::from(bpf::test_run(program, &frame, 1, None)?.ns);
            }
            fresh[c].push((total / u64::from(FRESH_CALLS)) as u32);
        }
        for (c, case) in KERNEL.iter().enumerate() {
            kernel[c].push(bpf::test_run(program(case)?, &frame(case), repeat, None)?.ns);
        }
    }
    let timings = |cases: &[Case], runs: Vec<Vec<u32>>| -> Vec<ActionTiming> {
        cases
            .iter()
            .zip(runs)
            .map(|(case, runs)| ActionTiming {
                key: case.key,
                description: case.description,
                program: case.program.name(),
                action: smtpguard::replay::xdp_action_name(case.expected),
                ns: median_u32(&runs),
                runs,
            })
            .collect()
    };
    Ok(Actions {
        repeat,
        runs,
        live: timings(&LIVE, live),
        fresh: timings(&fresh_cases, fresh),
        fresh_calls: FRESH_CALLS,
        kernel: timings(&KERNEL, kernel),
        note: NOTE.into(),
    })
}

/// Fails unless every repetition of a live run of smtpguard moved the counter of the verdict
/// the case times (a recycled page holding a rewritten frame would be judged otherwise).
fn check_live(case: &Case, repeat: u32, before: &[u64], after: &[u64]) -> Result<()> {
    if !matches!(case.program, Program::Smtpguard | Program::Baseline) {
        return Ok(());
    }
    let moved: Vec<(&str, u64)> = Reason::ALL
        .into_iter()
        .map(|reason| {
            (
                reason.name(),
                after[reason as usize] - before[reason as usize],
            )
        })
        .filter(|(_, count)| *count > 0)
        .collect();
    let judged_so = Reason::ALL
        .into_iter()
        .filter(|reason| smtpguard::model::xdp_action(reason.verdict()) == case.expected)
        .map(|reason| after[reason as usize] - before[reason as usize])
        .sum::<u64>();
    if judged_so != u64::from(repeat) {
        bail!(
            "{}: {repeat} live repetitions, {judged_so} judged {}; the counters moved by {moved:?}",
            case.key,
            smtpguard::replay::xdp_action_name(case.expected)
        );
    }
    Ok(())
}
