//! The per-host limits under a flood, end to end: one subscriber host writes a flood of SYNs
//! to the MX's port 25 onto its line, through the namespace gateway where smtpguard runs at
//! XDP or at TC. With `reject`, the replies that come back to the host are exactly its
//! bucket's (`rate`), and no SYN reaches the MX; with `ratelimit`, exactly `rate` SYNs reach
//! the MX. What is counted is what the subscriber's and the MX's kernels received (raw TCP
//! sockets), not what the program says it did. Needs root (namespaces, veth, bpf).

use std::{net::IpAddr, path::Path, time::Duration, time::Instant};

use aya::programs::XdpMode;
use smtpguard::{
    config::Config,
    dataplane::{Attach, Dataplane},
};
use smtpguard_common::Reason;
use smtpguard_tests::{
    frames::{FrameSpec, TCP_RST, TCP_SYN},
    lab::{self, GatewayLab, SUBSCRIBER_INTERFACE, addr},
    wire::{Arrival, PacketWriter, TcpArrivals},
};

/// SYNs in the flood, from as many source ports.
const FLOOD: u64 = 2_000;
/// Frames written before waiting for the gateway to have judged them: below the 256 frames
/// a veth's XDP ring holds, so none is lost before the program sees it.
const BATCH: u64 = 64;
/// The allowance: with `per = "1h"` the bucket does not refill during the test.
const RATE: u64 = 7;
const FIRST_PORT: u16 = 20_000;
/// Bounds a wait for something that takes microseconds; only reached when the lab broke.
const WAIT: Duration = Duration::from_secs(5);
/// The end marker: a SYN to a port the policy does not enforce, which the MX's kernel
/// answers with a reset. Its SYN arriving at the MX and its reset at the subscriber mean
/// everything the flood caused before it has arrived (one path, one receive queue).
const SENTINEL_PORT: u16 = 587;
const SENTINEL_SRC_PORT: u16 = 19_999;

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn config(action: &str) -> Config {
    let text = lab::LAB_CONFIG.replace(
        "[[subscribers]]\n",
        &format!("[[subscribers]]\naction = \"{action}\"\nrate = {RATE}\nper = \"1h\"\n"),
    );
    Config::parse(&text, Path::new("tests/src/lab.rs"))
        .unwrap_or_else(|e| panic!("parsing the test configuration: {e}"))
}

/// What the flood's host and the MX received.
struct Received {
    /// Resets from the MX's port 25 to one of the flood's source ports, at the subscriber.
    resets: usize,
    /// The flood's SYNs at the MX.
    syns: usize,
    /// The program's judgement of the flood: segments counted under each reason.
    judged: Vec<(Reason, u64)>,
}

fn flood(attach: Attach, action: &str, reasons: [Reason; 2]) -> Received {
    let lab = GatewayLab::new().unwrap_or_else(|e| panic!("building the lab: {e:#}"));
    let mut dataplane = Dataplane::with_policy(&config(action))
        .unwrap_or_else(|e| panic!("loading the dataplane: {e:#}"));
    lab.attach(&mut dataplane, attach)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let writer = PacketWriter::open(&lab.subscriber, "eth0").unwrap();
    let mut at_subscriber = TcpArrivals::open(&lab.subscriber, "eth0").unwrap();
    let mut at_mx = TcpArrivals::open(&lab.internet, "eth0").unwrap();
    let (host_mac, gateway_mac) = (
        lab.subscriber.mac("eth0").unwrap(),
        lab.gateway.mac(SUBSCRIBER_INTERFACE).unwrap(),
    );
    let (host, mx) = (ip(addr::SUBSCRIBER_V4), ip(addr::MX_V4));
    let frame = |port: u16, src_port: u16| {
        let mut frame = FrameSpec::tcp(host, mx, port, TCP_SYN)
            .src_port(src_port)
            .build();
        // The subscriber's own line: the reply goes back to its MAC address.
        frame[..6].copy_from_slice(&gateway_mac);
        frame[6..12].copy_from_slice(&host_mac);
        frame
    };
    let judged = |dataplane: &Dataplane| -> u64 {
        let counters = dataplane.counters().unwrap();
        reasons
            .iter()
            .map(|reason| counters[*reason as usize])
            .sum()
    };
    let before = judged(&dataplane);
    let mut sent = 0;
    while sent < FLOOD {
        let batch = BATCH.min(FLOOD - sent);
        for i in sent..sent + batch {
            writer
                .send(&frame(25, FIRST_PORT + i as u16))
                .unwrap_or_else(|e| panic!("writing SYN {i} of the flood: {e}"));
        }
        sent += batch;
        let deadline = Instant::now() + WAIT;
        while judged(&dataplane) - before < sent {
            assert!(
                Instant::now() < deadline,
                "{attach:?}: the gateway judged {} of the {sent} SYNs sent",
                judged(&dataplane) - before
            );
            std::thread::yield_now();
        }
    }
    writer
        .send(&frame(SENTINEL_PORT, SENTINEL_SRC_PORT))
        .unwrap();
    let is_sentinel = |arrival: &Arrival| {
        arrival.src_port() == Some(SENTINEL_SRC_PORT)
            || arrival.dst_port() == Some(SENTINEL_SRC_PORT)
    };
    let (mut arrivals_mx, met_mx) = at_mx.receive_until(WAIT, is_sentinel);
    let (mut arrivals_host, met_host) = at_subscriber.receive_until(WAIT, is_sentinel);
    assert!(
        met_mx && met_host,
        "{attach:?}: the sentinel SYN to port {SENTINEL_PORT} (at the MX: {met_mx}) or its \
         reset (at the subscriber: {met_host}) did not arrive"
    );
    assert_eq!(
        (at_mx.overflows(), at_subscriber.overflows()),
        (0, 0),
        "the raw sockets lost packets"
    );
    let flood_port = |port: Option<u16>| {
        port.is_some_and(|port| (FIRST_PORT..FIRST_PORT + FLOOD as u16).contains(&port))
    };
    arrivals_host.retain(|a| {
        a.src == mx
            && a.src_port() == Some(25)
            && flood_port(a.dst_port())
            && a.flags().is_some_and(|flags| flags & TCP_RST != 0)
    });
    arrivals_mx.retain(|a| {
        a.src == host
            && a.dst_port() == Some(25)
            && flood_port(a.src_port())
            && a.flags() == Some(TCP_SYN)
    });
    let counters = dataplane.counters().unwrap();
    Received {
        resets: arrivals_host.len(),
        syns: arrivals_mx.len(),
        judged: reasons
            .iter()
            .map(|reason| (*reason, counters[*reason as usize]))
            .collect(),
    }
}

fn replies_stay_within_the_bucket(attach: Attach) {
    let received = flood(attach, "reject", [Reason::Rejected, Reason::Dropped]);
    assert_eq!(
        (received.resets, received.syns),
        (RATE as usize, 0),
        "{attach:?}: {FLOOD} SYNs with a bucket of {RATE}: resets at the host, SYNs at the MX \
         (judged: {:?})",
        received.judged
    );
    assert_eq!(
        received.judged,
        [(Reason::Rejected, RATE), (Reason::Dropped, FLOOD - RATE)]
    );
}

fn connections_stay_within_the_rate(attach: Attach) {
    let received = flood(
        attach,
        "ratelimit",
        [Reason::WithinRate, Reason::RateLimited],
    );
    assert_eq!(
        received.syns, RATE as usize,
        "{attach:?}: {FLOOD} SYNs at a rate of {RATE}: SYNs at the MX (judged: {:?})",
        received.judged
    );
    assert_eq!(
        received.judged,
        [
            (Reason::WithinRate, RATE),
            (Reason::RateLimited, FLOOD - RATE)
        ]
    );
}

#[test]
fn xdp_replies_stay_within_the_bucket() {
    replies_stay_within_the_bucket(Attach::Xdp(XdpMode::Driver));
}

#[test]
fn tc_replies_stay_within_the_bucket() {
    replies_stay_within_the_bucket(Attach::Tc);
}

#[test]
fn xdp_connections_stay_within_the_rate() {
    connections_stay_within_the_rate(Attach::Xdp(XdpMode::Driver));
}

#[test]
fn tc_connections_stay_within_the_rate() {
    connections_stay_within_the_rate(Attach::Tc);
}
