//! End to end through a real kernel path: a subscriber namespace connects over TCP through a
//! gateway namespace, where smtpguard is attached to the subscriber-facing veth, to an internet
//! namespace that runs an MX (ports 25 and 587) and a relay (port 25).
//!
//! Each entry point (XDP in driver mode, TC) gets a fresh lab and must: block subscriber →
//! MX:25, leave MX:587 and relay:25 alone, count what it did, and stop enforcing once the
//! dataplane is dropped. Needs root (namespaces, veth, bpf).

use std::{
    fmt,
    net::IpAddr,
    path::Path,
    time::{Duration, Instant},
};

use aya::programs::XdpMode;
use smtpguard::{
    config::Config,
    dataplane::{Attach, Dataplane},
};
use smtpguard_common::{REASON_COUNT, Reason};
use smtpguard_tests::lab::{self, Connect, GatewayLab, Netns, Servers, addr};

/// How long a connection that should be blocked is given: its SYN never gets an answer, so
/// this is what the test spends per blocked attempt.
const BLOCKED_TIMEOUT: Duration = Duration::from_secs(1);
/// Connections that should go through answer within milliseconds; this only bounds a failure.
const OPEN_TIMEOUT: Duration = Duration::from_secs(3);

const SMTP: u16 = 25;
const SUBMISSION: u16 = 587;

#[derive(Clone, Copy, Debug)]
enum EntryPoint {
    XdpDriver,
    Tc,
}

#[test]
fn xdp_driver_mode_blocks_subscriber_smtp_in_a_real_network() {
    enforce_through(EntryPoint::XdpDriver);
}

#[test]
fn tc_blocks_subscriber_smtp_in_a_real_network() {
    enforce_through(EntryPoint::Tc);
}

/// One IP family's addresses in the lab.
struct Family {
    name: &'static str,
    subscriber: IpAddr,
    mx: IpAddr,
    relay: IpAddr,
}

fn families() -> [Family; 2] {
    [
        Family {
            name: "IPv4",
            subscriber: ip(addr::SUBSCRIBER_V4),
            mx: ip(addr::MX_V4),
            relay: ip(addr::RELAY_V4),
        },
        Family {
            name: "IPv6",
            subscriber: ip(addr::SUBSCRIBER_V6),
            mx: ip(addr::MX_V6),
            relay: ip(addr::RELAY_V6),
        },
    ]
}

fn enforce_through(entry: EntryPoint) {
    let started = Instant::now();
    let lab = GatewayLab::new().unwrap_or_else(|e| panic!("building the lab: {e:#}"));
    let servers = Servers::start(&lab.internet, &[SMTP, SUBMISSION])
        .unwrap_or_else(|e| panic!("starting the internet host's servers: {e:#}"));

    // 1. Without smtpguard the lab routes subscriber → MX:25, so a later failure to connect is
    //    smtpguard's doing and not the lab's.
    for family in families() {
        expect_connect(
            &lab.subscriber,
            family.mx,
            SMTP,
            Connect::Greeted,
            "before attaching",
            &family,
        );
    }
    let setup = started.elapsed();

    // 2. Attach and try every destination.
    let config = Config::parse(lab::LAB_CONFIG, Path::new("tests/src/lab.rs"))
        .unwrap_or_else(|e| panic!("parsing the test configuration: {e}"));
    let mut dataplane =
        Dataplane::with_policy(&config).unwrap_or_else(|e| panic!("loading the dataplane: {e:#}"));
    attach(&mut dataplane, &lab, entry);
    let attached = Instant::now();

    for family in families() {
        let context = format!("{entry:?} attached");

        // Subscriber → MX:25: dropped on the gateway, never reaches the MX.
        let accepted_before = servers.accepted();
        let counters_before = counters(&dataplane);
        let outcome = lab::connect(&lab.subscriber, family.mx, SMTP, BLOCKED_TIMEOUT);
        let dropped = delta(&counters_before, &counters(&dataplane), Reason::Dropped);
        assert_eq!(
            outcome,
            Connect::TimedOut,
            "{context}, {}: subscriber {} → MX {}:{SMTP}: observed {outcome:?}, expected TimedOut \
             (the SYN dropped at the gateway)",
            family.name,
            family.subscriber,
            family.mx,
        );
        assert_eq!(
            servers.accepted(),
            accepted_before,
            "{context}, {}: the MX accepted connections during the blocked attempt to {}:{SMTP} \
             (observed {} accepted, expected {accepted_before}, unchanged)",
            family.name,
            family.mx,
            servers.accepted(),
        );
        assert!(
            dropped >= 1,
            "{context}, {}: Reason::Dropped moved by {dropped} during the blocked attempt to \
             {}:{SMTP}, expected ≥ 1 (one per SYN, retransmissions included); counters now {}",
            family.name,
            family.mx,
            Counters(counters(&dataplane)),
        );

        // Subscriber → MX:587: not an enforced port.
        expect_connect(
            &lab.subscriber,
            family.mx,
            SUBMISSION,
            Connect::Greeted,
            &context,
            &family,
        );

        // Subscriber → relay:25: allowlisted, and counted as relayed.
        let counters_before = counters(&dataplane);
        expect_connect(
            &lab.subscriber,
            family.relay,
            SMTP,
            Connect::Greeted,
            &context,
            &family,
        );
        let relayed = delta(&counters_before, &counters(&dataplane), Reason::Relayed);
        assert!(
            relayed >= 1,
            "{context}, {}: Reason::Relayed moved by {relayed} during the connection to relay \
             {}:{SMTP}, expected ≥ 1; counters now {}",
            family.name,
            family.relay,
            Counters(counters(&dataplane)),
        );
    }

    // 3. Each subscriber host is tracked with its blocked attempts.
    let hosts = dataplane
        .hosts()
        .unwrap_or_else(|e| panic!("reading the host statistics: {e:#}"));
    for family in families() {
        // Kept as the host the address belongs to: an IPv6 subscriber's /64.
        let subscriber = config.enforcement.host_of(family.subscriber).network();
        let Some((_, stats)) = hosts.iter().find(|(host, _)| *host == subscriber) else {
            panic!(
                "{}: subscriber {} is not among the tracked hosts, expected it with attempts ≥ 1 \
                 and dropped ≥ 1; tracked: {:?}",
                family.name,
                subscriber,
                hosts.iter().map(|(host, _)| host).collect::<Vec<_>>(),
            );
        };
        assert!(
            stats.attempts >= 1 && stats.dropped >= 1,
            "{}: subscriber {}: observed attempts {} and dropped {}, expected both ≥ 1 ({stats:?})",
            family.name,
            family.subscriber,
            stats.attempts,
            stats.dropped,
        );
    }
    let enforced = attached.elapsed();

    // 4. Dropping the dataplane detaches it: MX:25 answers again.
    drop(dataplane);
    for family in families() {
        expect_connect(
            &lab.subscriber,
            family.mx,
            SMTP,
            Connect::Greeted,
            "after detaching",
            &family,
        );
    }

    eprintln!(
        "{entry:?}: lab and baseline {setup:.2?}, enforcement checks {enforced:.2?}, \
         total {:.2?}",
        started.elapsed()
    );
}

/// Attaches `entry` to the gateway's subscriber-facing interface.
fn attach(dataplane: &mut Dataplane, lab: &GatewayLab, entry: EntryPoint) {
    let attach = match entry {
        EntryPoint::XdpDriver => Attach::Xdp(XdpMode::Driver),
        EntryPoint::Tc => Attach::Tc,
    };
    lab.attach(dataplane, attach)
        .unwrap_or_else(|e| panic!("{e:#}"));
}

fn expect_connect(
    from: &Netns,
    dst: IpAddr,
    port: u16,
    expected: Connect,
    context: &str,
    family: &Family,
) {
    let timeout = if expected == Connect::TimedOut {
        BLOCKED_TIMEOUT
    } else {
        OPEN_TIMEOUT
    };
    let outcome = lab::connect(from, dst, port, timeout);
    assert_eq!(
        outcome, expected,
        "{context}, {}: subscriber {} → {dst}:{port}: observed {outcome:?}, expected {expected:?}",
        family.name, family.subscriber,
    );
}

fn counters(dataplane: &Dataplane) -> [u64; REASON_COUNT as usize] {
    dataplane
        .counters()
        .unwrap_or_else(|e| panic!("reading the counters: {e:#}"))
}

fn delta(
    before: &[u64; REASON_COUNT as usize],
    after: &[u64; REASON_COUNT as usize],
    reason: Reason,
) -> u64 {
    after[reason as usize] - before[reason as usize]
}

/// Non-zero counters by name, for failure messages.
struct Counters([u64; REASON_COUNT as usize]);

impl fmt::Display for Counters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let moved: Vec<String> = Reason::ALL
            .into_iter()
            .filter(|reason| self.0[*reason as usize] != 0)
            .map(|reason| format!("{reason:?}={}", self.0[reason as usize]))
            .collect();
        if moved.is_empty() {
            f.write_str("all zero")
        } else {
            f.write_str(&moved.join(" "))
        }
    }
}

fn ip(text: &str) -> IpAddr {
    text.parse()
        .unwrap_or_else(|e| panic!("lab address {text}: {e}"))
}
