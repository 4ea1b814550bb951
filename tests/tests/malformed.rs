//! The rule that lets a frame pass as `malformed`: the gateway's own kernel discards it. Every
//! case of the parser's table (tests/src/cases.rs) that the program passes as `malformed` is
//! written onto a real gateway's subscriber link with nothing attached, and must not arrive as
//! TCP at the host behind it; the program's `malformed` returns cite the kernel function that
//! discards each shape (smtpguard-ebpf/src/parse.rs), and this shows it on the running kernel.
//!
//! What counts is what the gateway forwards (its IPv4 `ForwDatagrams` and IPv6
//! `Ip6OutForwDatagrams` counters), and that nothing arrives as TCP behind it. So that a frame
//! is discarded for its malformation and for nothing else, every VLAN tag is made a priority
//! tag (VID 0, TPID 0x8100 or 0x88a8), which Linux strips without any VLAN configuration. As a
//! control, the table's SYNs to port 25 that the program drops, tagged the same way, must be
//! forwarded. PPPoE frames never reach IP on this kernel (no PPPoE termination here), so the
//! PPPoE cases (`pppoe_rcv`'s length checks) are shown by the kernel test runs alone. Needs root.

use smtpguard_common::Reason;
use smtpguard_tests::{
    cases::{Case, all_cases},
    frames::{TPID_8021AD, TPID_8021Q, TPID_9100},
    lab::Netns,
    oracle::OracleLab,
};

/// Sentinel port of each batch: not in the table's policy, and nothing is attached anyway.
const SENTINEL_PORT: u16 = 587;
const ETH_P_PPPOE_SESSION: u16 = 0x8864;

/// The frame with every VLAN tag turned into a priority tag the kernel strips, and where its
/// ethertype after the tags is; `None` for a PPPoE frame or one cut inside its tags (left to
/// the kernel test runs).
fn priority_tagged(frame: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut frame = frame.to_vec();
    let mut at = 12;
    loop {
        let ethertype = u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]);
        match ethertype {
            TPID_8021Q | TPID_8021AD | TPID_9100 => {
                frame.get(at + 3)?;
                if ethertype == TPID_9100 {
                    frame[at..at + 2].copy_from_slice(&TPID_8021Q.to_be_bytes());
                }
                // PCP and DEI kept, VID 0.
                frame[at + 2] &= 0xf0;
                frame[at + 3] = 0;
                at += 4;
            }
            ETH_P_PPPOE_SESSION => return None,
            _ => return Some((frame, at)),
        }
    }
}

/// Datagrams the namespace's kernel has forwarded, IPv4 and IPv6 together.
fn forwarded(netns: &Netns) -> u64 {
    netns.run(|| {
        let counter = |file: &str, name: &str| -> u64 {
            let path = format!("/proc/thread-self/net/{file}");
            let text =
                std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
            if file == "snmp" {
                // Two lines: the field names, then the values.
                let mut lines = text.lines().filter(|line| line.starts_with("Ip: "));
                let (names, values) = (lines.next().unwrap(), lines.next().unwrap());
                let at = names.split_whitespace().position(|n| n == name).unwrap();
                values.split_whitespace().nth(at).unwrap().parse().unwrap()
            } else {
                text.lines()
                    .find_map(|line| line.strip_prefix(name))
                    .unwrap_or_else(|| panic!("no {name} in {path}"))
                    .trim()
                    .parse()
                    .unwrap()
            }
        };
        counter("snmp", "ForwDatagrams") + counter("snmp6", "Ip6OutForwDatagrams")
    })
}

/// What the gateway did with one case's frame.
struct Outcome {
    name: String,
    /// Datagrams it forwarded for the frame (the batch's two sentinels left out).
    forwarded: u64,
    /// TCP arrivals behind it.
    arrivals: Vec<String>,
}

/// Sends each case alone, each in a batch of its own.
fn outcomes(oracle: &mut OracleLab, cases: &[(String, Vec<u8>)]) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    for (name, frame) in cases {
        let before = forwarded(&oracle.lab.gateway);
        // A frame shorter than an Ethernet header is not even sent: nothing to forward.
        let sent = oracle.send(frame);
        let arrivals = oracle.sync(SENTINEL_PORT);
        let after = forwarded(&oracle.lab.gateway);
        outcomes.push(Outcome {
            name: if sent {
                name.clone()
            } else {
                format!("{name} (refused by the sender)")
            },
            forwarded: (after - before).saturating_sub(2),
            arrivals: arrivals.iter().map(ToString::to_string).collect(),
        });
    }
    outcomes
}

/// The cases of `expected`, priority-tagged. Among the dropped ones (the controls), an IPv4
/// total length of 0 is left out: it reads "as long as the skb" only for a GRO'd packet, so
/// the program judges it on the frame while an ordinary receive drops it.
fn tagged_cases(cases: &[Case], expected: Reason) -> Vec<(String, Vec<u8>)> {
    cases
        .iter()
        .filter(|case| case.expected == expected)
        .filter_map(|case| priority_tagged(&case.frame).map(|tagged| (case, tagged)))
        .filter(|(_, (frame, at))| {
            expected != Reason::Dropped
                || !(frame[*at..*at + 2] == [0x08, 0x00] && frame[*at + 4..*at + 6] == [0, 0])
        })
        .map(|(case, (frame, _))| (case.name.clone(), frame))
        .collect()
}

#[test]
fn every_malformed_case_is_discarded_by_the_gateways_kernel() {
    let mut oracle = OracleLab::new().unwrap_or_else(|e| panic!("building the lab: {e:#}"));
    let cases = all_cases();
    let malformed = tagged_cases(&cases, Reason::Malformed);
    let controls = tagged_cases(&cases, Reason::Dropped);
    assert!(
        malformed.len() >= 30 && controls.len() >= 100,
        "the case table shrank: {} malformed and {} dropped cases outside PPPoE",
        malformed.len(),
        controls.len()
    );

    let not_forwarded: Vec<String> = outcomes(&mut oracle, &controls)
        .into_iter()
        .filter(|outcome| outcome.forwarded == 0)
        .map(|outcome| outcome.name)
        .collect();
    assert!(
        not_forwarded.is_empty(),
        "observed {} of {} well-formed SYNs to port 25 not forwarded by the gateway with \
         nothing attached, expected every one forwarded (otherwise the lab, not the \
         malformation, discards frames): {not_forwarded:?}",
        not_forwarded.len(),
        controls.len()
    );

    let passed: Vec<String> = outcomes(&mut oracle, &malformed)
        .into_iter()
        .filter(|outcome| outcome.forwarded > 0 || !outcome.arrivals.is_empty())
        .map(|outcome| {
            format!(
                "{}: {} forwarded, arrivals {:?}",
                outcome.name, outcome.forwarded, outcome.arrivals
            )
        })
        .collect();
    assert!(
        passed.is_empty(),
        "observed {} of {} frames the program passes as malformed forwarded by the gateway \
         or arriving behind it, expected none (its kernel must discard every one):\n  {}",
        passed.len(),
        malformed.len(),
        passed.join("\n  ")
    );
}
