//! `reject` and `ratelimit` in the real kernel program (`BPF_PROG_TEST_RUN`): the reply a
//! rejected SYN is rewritten into, parsed here field by field with checksums computed here,
//! through both entry points and every encapsulation; the per-host buckets; and that nothing
//! but an enforced host's SYN is ever answered.

use std::{net::IpAddr, path::Path};

use smtpguard::{
    config::Config,
    dataplane::Dataplane,
    model::{TC_ACT_REDIRECT, XDP_DROP, XDP_PASS, XDP_TX},
};
use smtpguard_common::{HostStats, Reason};
use smtpguard_tests::frames::{FrameSpec, QINQ_PPPOE, TCP_ACK, TCP_SYN, TPID_8021Q, Wrapper};

const POLICY: &str = r#"
[enforcement]
ports = [25]

[[subscribers]]
prefix = "100.64.0.0/16"
action = "reject"
rate = 3
per = "1h"
[[subscribers]]
prefix = "100.65.0.0/16"
action = "reject"
reject_with = "icmp-admin-prohibited"
rate = 3
per = "1h"
[[subscribers]]
prefix = "100.66.0.0/16"
action = "ratelimit"
rate = 2
per = "1h"
[[subscribers]]
prefix = "100.67.0.0/16"
mode = "monitor"
action = "reject"
[[subscribers]]
prefix = "2001:db8:1000::/36"
action = "reject"
[[subscribers]]
prefix = "2001:db8:2000::/36"
action = "reject"
reject_with = "icmp-admin-prohibited"

[capacity]
hosts = 4096
"#;

const MX4: &str = "198.51.100.7";
const MX6: &str = "2001:db8:ffff::7";

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn dataplane() -> Dataplane {
    let config = Config::parse(POLICY, Path::new("reject.toml")).expect("the policy is valid");
    Dataplane::with_policy(&config).unwrap_or_else(|e| panic!("loading the program: {e:?}"))
}

fn host_stats(dataplane: &Dataplane, host: IpAddr) -> HostStats {
    dataplane
        .hosts()
        .unwrap()
        .into_iter()
        .find(|(address, _)| *address == host)
        .expect("the host is tracked")
        .1
}

fn hex(frame: &[u8]) -> String {
    frame.iter().map(|b| format!("{b:02x}")).collect()
}

/// The encapsulations a subscriber line may have.
fn encapsulations() -> Vec<(&'static str, Vec<Wrapper>)> {
    vec![
        ("untagged", Vec::new()),
        (
            "vlan",
            vec![Wrapper::Vlan {
                tpid: TPID_8021Q,
                vid: 7,
            }],
        ),
        // QINQ_PPPOE's two tags without its PPPoE.
        ("qinq", QINQ_PPPOE[..2].to_vec()),
        ("pppoe", vec![Wrapper::Pppoe { compressed: false }]),
        (
            "pppoe-compressed",
            vec![Wrapper::Pppoe { compressed: true }],
        ),
        ("qinq-pppoe", QINQ_PPPOE.to_vec()),
    ]
}

/// The one's-complement sum of `bytes` in 16-bit words (an odd last byte padded).
fn ones_sum(bytes: &[u8]) -> u32 {
    bytes
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum()
}

/// Whether a checksummed region (its checksum field included) sums to all ones.
fn checksum_holds(sum: u32) -> bool {
    let mut sum = sum;
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum == 0xffff
}

/// What a reply must be for `syn`, checked field by field; `Err` names the first field that
/// is wrong. `icmp`: an ICMP error rather than a reset.
fn check_reply(syn: &FrameSpec, sent: &[u8], reply: &[u8], icmp: bool) -> Result<(), String> {
    let ip_packet = syn.ip_packet();
    let link_len = sent.len() - ip_packet.len() - syn.trailer.len();
    let v4 = syn.src.is_ipv4();
    let reply_ip_len = match (v4, icmp) {
        (true, false) => 40,
        (false, false) => 60,
        (true, true) => 20 + 8 + 28,
        (false, true) => 40 + 8 + 48,
    };
    let expect = |what: &str, ok: bool| if ok { Ok(()) } else { Err(what.to_owned()) };
    expect("frame length", reply.len() == link_len + reply_ip_len)?;
    // The link layer: MACs swapped, tags kept, the PPPoE length the reply's.
    expect("destination MAC", reply[0..6] == sent[6..12])?;
    expect("source MAC", reply[6..12] == sent[0..6])?;
    let pppoe = syn
        .wrappers
        .iter()
        .any(|w| matches!(w, Wrapper::Pppoe { .. } | Wrapper::PppoeWith { .. }));
    if pppoe {
        let tags = syn
            .wrappers
            .iter()
            .filter(|w| matches!(w, Wrapper::Vlan { .. }))
            .count();
        let at = 12 + 4 * tags + 2;
        expect(
            "link headers up to the PPPoE length",
            reply[12..at + 4] == sent[12..at + 4],
        )?;
        let length = u16::from_be_bytes([reply[at + 4], reply[at + 5]]) as usize;
        let ppp_field = link_len - (at + 6);
        expect("PPPoE length", length == ppp_field + reply_ip_len)?;
        expect(
            "PPP protocol field",
            reply[at + 6..link_len] == sent[at + 6..link_len],
        )?;
    } else {
        expect("link headers", reply[12..link_len] == sent[12..link_len])?;
    }
    let ip = &reply[link_len..];
    let (src, dst) = (syn.src, syn.dst);
    let octets = |addr: IpAddr| match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    // The network header, from the SYN's destination back to its source.
    let (header_len, protocol, pseudo) = if v4 {
        expect("IPv4 version and IHL", ip[0] == 0x45)?;
        expect(
            "IPv4 total length",
            usize::from(u16::from_be_bytes([ip[2], ip[3]])) == reply_ip_len,
        )?;
        expect("IPv4 TTL", ip[8] > 0)?;
        expect("IPv4 source", ip[12..16] == octets(dst)[..])?;
        expect("IPv4 destination", ip[16..20] == octets(src)[..])?;
        expect("IPv4 header checksum", checksum_holds(ones_sum(&ip[..20])))?;
        let protocol = ip[9];
        let pseudo = ones_sum(&ip[12..20]) + u32::from(protocol) + (reply_ip_len - 20) as u32;
        (20, protocol, pseudo)
    } else {
        expect("IPv6 version", ip[0] >> 4 == 6)?;
        expect(
            "IPv6 payload length",
            usize::from(u16::from_be_bytes([ip[4], ip[5]])) == reply_ip_len - 40,
        )?;
        expect("IPv6 hop limit", ip[7] > 0)?;
        expect("IPv6 source", ip[8..24] == octets(dst)[..])?;
        expect("IPv6 destination", ip[24..40] == octets(src)[..])?;
        let protocol = ip[6];
        let pseudo = ones_sum(&ip[8..40]) + u32::from(protocol) + (reply_ip_len - 40) as u32;
        (40, protocol, pseudo)
    };
    let upper = &ip[header_len..reply_ip_len];
    if icmp {
        if v4 {
            expect("ICMP protocol", protocol == 1)?;
            expect("ICMP type and code", upper[0] == 3 && upper[1] == 13)?;
            expect("ICMP checksum", checksum_holds(ones_sum(upper)))?;
        } else {
            expect("ICMPv6 next header", protocol == 58)?;
            expect("ICMPv6 type and code", upper[0] == 1 && upper[1] == 1)?;
            expect("ICMPv6 checksum", checksum_holds(pseudo + ones_sum(upper)))?;
        }
        expect("ICMP unused word", upper[4..8] == [0, 0, 0, 0])?;
        let quoted = &upper[8..];
        expect("quote of the SYN", quoted == &ip_packet[..quoted.len()])?;
    } else {
        let syn_tcp = &ip_packet[ip_packet.len() - 20..];
        expect("TCP protocol", protocol == 6)?;
        expect("TCP source port", upper[0..2] == syn_tcp[2..4])?;
        expect("TCP destination port", upper[2..4] == syn_tcp[0..2])?;
        expect("TCP sequence 0", upper[4..8] == [0, 0, 0, 0])?;
        let ack = u32::from_be_bytes(syn_tcp[4..8].try_into().unwrap()).wrapping_add(1);
        expect(
            "TCP acknowledgment = seq + 1",
            upper[8..12] == ack.to_be_bytes(),
        )?;
        expect("TCP data offset", upper[12] == 5 << 4)?;
        expect("TCP flags RST+ACK", upper[13] == 0x14)?;
        expect("TCP checksum", checksum_holds(pseudo + ones_sum(upper)))?;
    }
    Ok(())
}

#[test]
fn replies_are_built_field_by_field_through_both_entry_points() {
    let mut dataplane = dataplane();
    let families = [
        ("ipv4 reset", "100.64.0.", MX4, false),
        ("ipv4 icmp", "100.65.0.", MX4, true),
        ("ipv6 reset", "2001:db8:1000:", MX6, false),
        ("ipv6 icmp", "2001:db8:2000:", MX6, true),
    ];
    let mut failures = Vec::new();
    let mut host = 1;
    for (family, prefix, mx, icmp) in families {
        for (encapsulation, wrappers) in encapsulations() {
            // A host of its own for each frame: every reply is within its bucket.
            host += 1;
            let src = if prefix.ends_with('.') {
                ip(&format!("{prefix}{host}"))
            } else {
                ip(&format!("{prefix}{host:x}::1"))
            };
            let syn = FrameSpec::tcp(src, ip(mx), 25, TCP_SYN).wrappers(&wrappers);
            let sent = syn.build();
            let (action, reply) = dataplane.run_xdp_out(&sent).unwrap();
            let xdp = if action == XDP_TX {
                check_reply(&syn, &sent, &reply, icmp)
            } else {
                Err(format!("XDP action {action}, expected XDP_TX"))
            };
            let (action, reply) = dataplane.run_tc_out(&sent).unwrap();
            let tc = if action == TC_ACT_REDIRECT {
                check_reply(&syn, &sent, &reply, icmp)
            } else {
                Err(format!("TC action {action}, expected TC_ACT_REDIRECT"))
            };
            for (entry, result) in [("xdp", xdp), ("tc", tc)] {
                if let Err(field) = result {
                    failures.push(format!(
                        "{family} {encapsulation} ({entry}): {field}\n    sent  {}\n    reply {}",
                        hex(&sent),
                        hex(&reply)
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_reply_bucket_holds_and_only_attempts_are_answered() {
    let mut dataplane = dataplane();
    let host = ip("100.64.9.9");
    let syn = FrameSpec::tcp(host, ip(MX4), 25, TCP_SYN).build();
    let mut observed = Vec::new();
    for _ in 0..8 {
        let outcome = dataplane.run_xdp(&syn).unwrap();
        observed.push((outcome.action, outcome.reason));
    }
    let rejected = (XDP_TX, Some(Reason::Rejected));
    let dropped = (XDP_DROP, Some(Reason::Dropped));
    assert_eq!(
        observed,
        [vec![rejected; 3], vec![dropped; 5]].concat(),
        "three replies (rate = 3), then drops"
    );
    // A segment of a connection is never answered.
    let ack = FrameSpec::tcp(ip("100.64.9.10"), ip(MX4), 25, TCP_ACK).build();
    let outcome = dataplane.run_xdp(&ack).unwrap();
    assert_eq!((outcome.action, outcome.reason), dropped, "an ACK");
    let stats = host_stats(&dataplane, host);
    assert_eq!(
        (stats.replies, stats.limited, stats.attempts, stats.dropped),
        (3, 5, 8, 8),
        "replies, limited, attempts, dropped"
    );
}

#[test]
fn ratelimit_passes_its_rate_of_attempts_and_every_other_segment() {
    let mut dataplane = dataplane();
    let host = ip("100.66.1.1");
    let syn = FrameSpec::tcp(host, ip(MX4), 25, TCP_SYN).build();
    let reasons: Vec<_> = (0..5)
        .map(|_| {
            let outcome = dataplane.run_xdp(&syn).unwrap();
            (outcome.action, outcome.reason)
        })
        .collect();
    let within = (XDP_PASS, Some(Reason::WithinRate));
    let limited = (XDP_DROP, Some(Reason::RateLimited));
    assert_eq!(reasons, [within, within, limited, limited, limited]);
    let ack = FrameSpec::tcp(host, ip(MX4), 25, TCP_ACK).build();
    let outcome = dataplane.run_xdp(&ack).unwrap();
    assert_eq!(
        (outcome.action, outcome.reason),
        within,
        "a connection's ACK"
    );
    // The same through TC: the bucket is the host's, whichever entry point.
    assert_eq!(
        dataplane.run_tc(&syn).unwrap(),
        smtpguard::model::TC_ACT_SHOT
    );
    let stats = host_stats(&dataplane, host);
    assert_eq!((stats.limited, stats.replies), (4, 0));
}

#[test]
fn nothing_but_an_enforced_hosts_attempt_is_answered() {
    let mut dataplane = dataplane();
    let frames = [
        // A monitor-mode range whose action would be reject: monitored, passed.
        (
            FrameSpec::tcp(ip("100.67.0.1"), ip(MX4), 25, TCP_SYN),
            Reason::Monitored,
        ),
        // A stranger.
        (
            FrameSpec::tcp(ip("203.0.113.9"), ip(MX4), 25, TCP_SYN),
            Reason::NotSubscriber,
        ),
        // Another port.
        (
            FrameSpec::tcp(ip("100.64.0.1"), ip(MX4), 587, TCP_SYN),
            Reason::Other,
        ),
    ];
    for (spec, expected) in frames {
        let sent = spec.build();
        let (action, out) = dataplane.run_xdp_out(&sent).unwrap();
        assert_eq!(action, XDP_PASS, "{expected:?}: {}", hex(&sent));
        assert_eq!(out, sent, "{expected:?}: the frame is untouched");
        let outcome = dataplane.run_xdp(&sent).unwrap();
        assert_eq!(outcome.reason, Some(expected));
    }
}
