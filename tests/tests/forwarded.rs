//! Regressions of issue #13 through a real forwarding gateway (the kernel oracle's lab,
//! tests/src/oracle.rs): what matters is what the gateway's kernel forwards, not what the
//! program thought it read. Crafted frames are written raw onto the subscriber's line; the
//! far host takes packets to any address and its raw TCP sockets see what arrives, after
//! reassembly. Each case runs with XDP (driver mode) and with TC; a control run without
//! smtpguard shows that the same frames do arrive, so "nothing arrived" is smtpguard's doing.
//!
//! 1. An IPv6 first fragment whose extension chain ends exactly at the payload end, with
//!    trailing bytes after the payload length that read as one more header ending the chain;
//!    the second fragment carries the SYN to port 25. The gateway trims the trailer and
//!    forwards both; the far host reassembles a SYN to port 25.
//! 2. Stacked VLAN priority tags (VID 0) in front of an IPv4 SYN to port 25: Linux strips any
//!    number of them; at TC ingress the outer one is already in the skb's metadata.
//! 3. An IPv6 source `::ffff:a.b.c.d` is another host than the IPv4 subscriber a.b.c.d: its
//!    segments must not move a.b.c.d's statistics.
//!
//! Needs root (namespaces, veth, bpf).

use std::{net::IpAddr, path::Path};

use aya::programs::XdpMode;
use smtpguard::{
    config::Config,
    dataplane::{Attach, Dataplane},
};
use smtpguard_common::HostStats;
use smtpguard_tests::{
    frames::{Extension, FrameSpec, TCP_SYN, TPID_8021AD, TPID_8021Q, Wrapper},
    lab::{LAB_CONFIG, addr},
    oracle::OracleLab,
    wire::Arrival,
};

const SMTP: u16 = 25;
/// Not enforced: the lab's batch sentinels go there.
const SENTINEL_PORT: u16 = 9;
const XDP: Attach = Attach::Xdp(XdpMode::Driver);

fn ip(text: &str) -> IpAddr {
    text.parse()
        .unwrap_or_else(|e| panic!("lab address {text}: {e}"))
}

/// A lab with smtpguard (`attach`, under the lab's policy) on the gateway, or nothing.
fn lab(attach: Option<Attach>) -> (OracleLab, Option<Dataplane>) {
    let lab = OracleLab::new().unwrap_or_else(|e| panic!("building the lab: {e:#}"));
    let dataplane = attach.map(|attach| {
        let config = Config::parse(LAB_CONFIG, Path::new("tests/src/lab.rs"))
            .unwrap_or_else(|e| panic!("parsing the test configuration: {e}"));
        let mut dataplane = Dataplane::with_policy(&config)
            .unwrap_or_else(|e| panic!("loading the dataplane: {e:#}"));
        lab.lab
            .attach(&mut dataplane, attach)
            .unwrap_or_else(|e| panic!("{e:#}"));
        dataplane
    });
    (lab, dataplane)
}

/// Sends the frames from the subscriber's line and returns what arrived at the far host.
fn send(lab: &mut OracleLab, frames: &[Vec<u8>]) -> Vec<Arrival> {
    for frame in frames {
        assert!(lab.send(frame), "the kernel refused to send {frame:02x?}");
    }
    let arrivals = lab.sync(SENTINEL_PORT);
    assert_eq!(
        lab.arrivals.overflows(),
        0,
        "the far host's raw sockets dropped packets: arrivals may be missing"
    );
    arrivals
}

/// The SYNs to port 25 from `src` among `arrivals`.
fn smtp_syns(arrivals: &[Arrival], src: IpAddr) -> Vec<&Arrival> {
    arrivals
        .iter()
        .filter(|a| a.src == src && a.dst_port() == Some(SMTP))
        .filter(|a| a.flags().is_some_and(|flags| flags & TCP_SYN != 0))
        .collect()
}

fn listing(arrivals: &[&Arrival]) -> String {
    arrivals
        .iter()
        .map(|arrival| format!("\n    {arrival}"))
        .collect()
}

/// Case 1: the IPv6 fragment pair, from an enforced subscriber to port 25.
fn ipv6_straddling_pair() -> Vec<Vec<u8>> {
    let datagram = FrameSpec::tcp(ip(addr::SUBSCRIBER_V6), ip(addr::MX_V6), SMTP, TCP_SYN)
        .extension(Extension::Fragment {
            offset: 0,
            more: false,
        })
        .extension(Extension::DestinationOptions { len_units: 0 })
        .extension(Extension::DestinationOptions { len_units: 0 });
    // The first fragment ends after the first destination-options header, whose next header
    // names another one; after the payload length, bytes that read as that header with
    // "no next header" (59): read up to the frame's end, the chain ends without TCP.
    let (first, second) = datagram.fragments(8);
    let trailer = Extension::DestinationOptions { len_units: 0 }.encode(59);
    vec![first.trailer(&trailer).build(), second.build()]
}

/// Case 2: an IPv4 SYN to port 25 behind `tags` priority tags (alternating 802.1ad and
/// 802.1Q TPIDs, both of which Linux strips).
fn priority_tagged_syn(tags: usize) -> Vec<u8> {
    let wrappers: Vec<Wrapper> = (0..tags)
        .map(|i| Wrapper::priority_tag(if i % 2 == 0 { TPID_8021AD } else { TPID_8021Q }))
        .collect();
    FrameSpec::tcp(ip(addr::SUBSCRIBER_V4), ip(addr::MX_V4), SMTP, TCP_SYN)
        .wrappers(&wrappers)
        .build()
}

/// Tag counts tried: XDP sees every tag, TC all but the outermost (already in the skb's
/// metadata), so 3 leaked under XDP and 4 under TC.
const TAG_COUNTS: [usize; 3] = [3, 4, 8];

#[test]
fn without_smtpguard_the_crafted_frames_arrive() {
    let (mut lab, _) = lab(None);
    let arrivals = send(&mut lab, &ipv6_straddling_pair());
    let syns = smtp_syns(&arrivals, ip(addr::SUBSCRIBER_V6));
    assert_eq!(
        syns.len(),
        1,
        "without smtpguard: the IPv6 fragment pair (chain ending at the payload end, trailer \
         after it) should arrive reassembled as one SYN to port {SMTP}; observed:{}",
        listing(&arrivals.iter().collect::<Vec<_>>())
    );
    for tags in TAG_COUNTS {
        let arrivals = send(&mut lab, &[priority_tagged_syn(tags)]);
        let syns = smtp_syns(&arrivals, ip(addr::SUBSCRIBER_V4));
        assert_eq!(
            syns.len(),
            1,
            "without smtpguard: the SYN behind {tags} priority tags should arrive (Linux strips \
             VID-0 tags); observed:{}",
            listing(&arrivals.iter().collect::<Vec<_>>())
        );
    }
}

fn ipv6_pair_is_dropped(attach: Attach) {
    let (mut lab, _dataplane) = lab(Some(attach));
    let arrivals = send(&mut lab, &ipv6_straddling_pair());
    let syns = smtp_syns(&arrivals, ip(addr::SUBSCRIBER_V6));
    assert!(
        syns.is_empty(),
        "{attach:?}: observed {} SYN(s) to port {SMTP} from enforced subscriber {} at the far \
         host, expected none (the first fragment hides no TCP header in its packet: evasive, \
         dropped); arrived:{}",
        syns.len(),
        addr::SUBSCRIBER_V6,
        listing(&syns)
    );
}

#[test]
fn xdp_drops_an_ipv6_first_fragment_whose_chain_goes_on_after_the_ip_end() {
    ipv6_pair_is_dropped(XDP);
}

#[test]
fn tc_drops_an_ipv6_first_fragment_whose_chain_goes_on_after_the_ip_end() {
    ipv6_pair_is_dropped(Attach::Tc);
}

fn priority_tags_are_seen_through(attach: Attach) {
    let (mut lab, _dataplane) = lab(Some(attach));
    let mut leaked = Vec::new();
    for tags in TAG_COUNTS {
        let arrivals = send(&mut lab, &[priority_tagged_syn(tags)]);
        if !smtp_syns(&arrivals, ip(addr::SUBSCRIBER_V4)).is_empty() {
            leaked.push(tags);
        }
    }
    assert!(
        leaked.is_empty(),
        "{attach:?}: the SYN to port {SMTP} from enforced subscriber {} arrived behind {leaked:?} \
         priority tags (of {TAG_COUNTS:?} tried), expected it dropped behind any number",
        addr::SUBSCRIBER_V4
    );
}

#[test]
fn xdp_drops_smtp_behind_stacked_priority_tags() {
    priority_tags_are_seen_through(XDP);
}

#[test]
fn tc_drops_smtp_behind_stacked_priority_tags() {
    priority_tags_are_seen_through(Attach::Tc);
}

fn stats_of(dataplane: &Dataplane, host: IpAddr) -> HostStats {
    let hosts = dataplane
        .hosts()
        .unwrap_or_else(|e| panic!("reading the host statistics: {e:#}"));
    hosts
        .iter()
        .find(|(tracked, _)| *tracked == host)
        .map(|(_, stats)| *stats)
        .unwrap_or_else(|| {
            panic!(
                "{host} is not tracked; tracked: {:?}",
                hosts.iter().map(|(h, _)| h).collect::<Vec<_>>()
            )
        })
}

fn mapped_source_is_another_host(attach: Attach) {
    let (mut lab, dataplane) = lab(Some(attach));
    let dataplane = dataplane.expect("attached");
    let subscriber = ip(addr::SUBSCRIBER_V4);
    let IpAddr::V4(v4) = subscriber else {
        unreachable!("an IPv4 address")
    };
    let mapped = IpAddr::V6(v4.to_ipv6_mapped());
    send(
        &mut lab,
        &[FrameSpec::tcp(subscriber, ip(addr::MX_V4), SMTP, TCP_SYN).build()],
    );
    let before = stats_of(&dataplane, subscriber);
    assert_eq!(
        (before.attempts, before.segments),
        (1, 1),
        "{attach:?}: {subscriber} after its one SYN: {before:?}"
    );
    let mapped_syns: Vec<Vec<u8>> = (0..3)
        .map(|_| FrameSpec::tcp(mapped, ip(addr::MX_V6), SMTP, TCP_SYN).build())
        .collect();
    send(&mut lab, &mapped_syns);
    let after = stats_of(&dataplane, subscriber);
    assert_eq!(
        (
            after.attempts,
            after.segments,
            after.dropped,
            after.last_dst
        ),
        (
            before.attempts,
            before.segments,
            before.dropped,
            before.last_dst
        ),
        "{attach:?}: three IPv6 SYNs from {mapped} moved the statistics of the IPv4 host \
         {subscriber} (attempts, segments, dropped, last destination): observed {after:?}, \
         expected them as before {before:?}"
    );
}

#[test]
fn xdp_counts_an_ipv4_mapped_ipv6_source_apart_from_the_ipv4_host() {
    mapped_source_is_another_host(XDP);
}

#[test]
fn tc_counts_an_ipv4_mapped_ipv6_source_apart_from_the_ipv4_host() {
    mapped_source_is_another_host(Attach::Tc);
}
