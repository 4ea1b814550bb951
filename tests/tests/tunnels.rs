//! Subscriber traffic that enters the gateway's routing stack from a tunnel endpoint (issue
//! #13): a VXLAN device that decapsulates a subscriber's frames, and the TUN device of a VPN
//! server. Neither packet passes a listed subscriber-facing interface as what it is; only the
//! program on the tunnel device itself sees it. Real kernel, real namespaces.
//!
//! GRE, IPIP and WireGuard devices are not tested: their kernel modules are missing on the
//! test machines ("Unknown device type"). TUN has the same link type as WireGuard (none) and
//! gets the same entry point.

use std::{net::IpAddr, path::Path, time::Duration};

use aya::programs::XdpMode;
use smtpguard::{
    config::Config,
    dataplane::{Attach, AttachOutcome, Dataplane, TC_L3_PROGRAM, TC_PROGRAM},
    policy::DesiredPolicy,
};
use smtpguard_common::{REASON_COUNT, Reason};
use smtpguard_tests::lab::{
    self, Connect, GatewayLab, Netns, PinFolder, SUBSCRIBER_INTERFACE, Servers, Tun,
    VXLAN_INTERFACE, addr,
};

const CONFIG: &str = r#"
[[subscribers]]
prefix = "100.64.0.0/10"
[[subscribers]]
prefix = "2001:db8:1000::/36"
[capacity]
hosts = 4096
"#;

/// A blocked SYN never gets an answer: this is what each blocked attempt costs.
const BLOCKED: Duration = Duration::from_millis(500);
/// An open port answers within milliseconds; this only bounds a failure.
const OPEN: Duration = Duration::from_secs(3);

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn config() -> Config {
    Config::parse(CONFIG, Path::new("tests/tunnels.rs"))
        .unwrap_or_else(|e| panic!("parsing the test configuration: {e}"))
}

fn counter(dataplane: &Dataplane, reason: Reason) -> u64 {
    let counters: [u64; REASON_COUNT as usize] = dataplane.counters().unwrap();
    counters[reason as usize]
}

#[test]
fn vxlan_decapsulated_smtp_is_filtered_only_on_the_vxlan_device() {
    let lab = GatewayLab::new().unwrap_or_else(|e| panic!("building the lab: {e:#}"));
    lab.add_vxlan_tunnel()
        .unwrap_or_else(|e| panic!("building the VXLAN tunnel: {e:#}"));
    let _servers = Servers::start(&lab.internet, &[25, 587]).unwrap();
    let mx = ip(addr::MX_V4);
    // One tunnelled connection to MX:port, which must end as `expected`.
    let expect = |port: u16, expected: Connect, when: &str| {
        let timeout = if expected == Connect::TimedOut {
            BLOCKED
        } else {
            OPEN
        };
        let observed = lab::connect(&lab.subscriber, mx, port, timeout);
        assert_eq!(
            observed, expected,
            "{when}: tunnelled connection to MX:{port}: expected {expected:?}, observed \
             {observed:?}"
        );
    };

    let mut dataplane = Dataplane::with_policy(&config()).unwrap();
    let program = lab
        .gateway
        .run(|| dataplane.attach_tc(SUBSCRIBER_INTERFACE))
        .unwrap_or_else(|e| panic!("attaching to {SUBSCRIBER_INTERFACE}: {e}"));
    assert_eq!(program, TC_PROGRAM, "{SUBSCRIBER_INTERFACE} is Ethernet");

    // The gap: on the subscriber link the SYN is inside UDP to port 4789, which the program
    // passes as `other`; the gateway decapsulates it and routes it from vx0.
    let other_before = counter(&dataplane, Reason::Other);
    expect(
        25,
        Connect::Greeted,
        "attached to the subscriber veth only (the gap)",
    );
    let other_after = counter(&dataplane, Reason::Other);
    assert!(
        other_after > other_before,
        "expected the program on {SUBSCRIBER_INTERFACE} to see the tunnel's UDP as `other`; \
         the counter went from {other_before} to {other_after}"
    );
    assert_eq!(
        counter(&dataplane, Reason::Dropped),
        0,
        "nothing dropped yet"
    );

    // With the VXLAN device attached too, the decapsulated SYN is judged and dropped. Asked
    // for native XDP (the default), which VXLAN's driver lacks, it gets the Ethernet TC entry
    // point instead of refusing: a VXLAN device hands on Ethernet frames.
    let pins = PinFolder::new("vxlan");
    pins.0
        .prepare()
        .unwrap_or_else(|e| panic!("preparing the pin folder: {e}"));
    let attached = lab
        .gateway
        .run(|| dataplane.attach_pinned(&pins.0, VXLAN_INTERFACE, Attach::Xdp(XdpMode::Driver)))
        .unwrap_or_else(|e| panic!("attaching to {VXLAN_INTERFACE}: {e}"));
    assert_eq!(
        (attached.attach, attached.attach.program()),
        (Attach::Tc, TC_PROGRAM),
        "{VXLAN_INTERFACE} asked for native XDP"
    );
    let note = attached.note().unwrap_or_default();
    assert!(
        note.contains("no native XDP"),
        "expected the note to say why, observed {note:?}"
    );
    expect(25, Connect::TimedOut, "the VXLAN device attached too");
    let dropped = counter(&dataplane, Reason::Dropped);
    assert!(
        dropped >= 1,
        "expected the drop counted, observed {dropped}"
    );
    expect(587, Connect::Greeted, "the VXLAN device attached too");
}

/// One IP family of the VPN subscriber behind the TUN device.
struct Family {
    name: &'static str,
    subscriber: IpAddr,
    mx: IpAddr,
}

fn families() -> [Family; 2] {
    [
        Family {
            name: "IPv4",
            subscriber: ip(addr::VPN_SUBSCRIBER_V4),
            mx: ip(addr::MX_V4),
        },
        Family {
            name: "IPv6",
            subscriber: ip(addr::VPN_SUBSCRIBER_V6),
            mx: ip(addr::MX_V6),
        },
    ]
}

#[track_caller]
fn expect_answer(tun: &Tun, family: &Family, port: u16, expected: bool, when: &str) {
    let timeout = if expected { OPEN } else { BLOCKED };
    let observed = tun
        .syn_answered(family.subscriber, family.mx, port, timeout)
        .unwrap_or_else(|e| panic!("{when}: {} SYN to port {port}: {e:#}", family.name));
    assert_eq!(
        observed,
        expected,
        "{when}: {} SYN {} -> {}:{port} written into {}: expected {}, observed {}",
        family.name,
        family.subscriber,
        family.mx,
        tun.name,
        if expected {
            "a SYN-ACK from the MX"
        } else {
            "no answer (dropped)"
        },
        if observed {
            "a SYN-ACK"
        } else {
            "no answer within the timeout"
        },
    );
}

fn load_pinned(pins: &PinFolder) -> Dataplane {
    let config = config();
    let mut dataplane = Dataplane::load_pinned(&config.capacity, &pins.0)
        .unwrap_or_else(|e| panic!("loading with pins: {e}"));
    dataplane
        .policy_maps()
        .unwrap()
        .reconcile(&DesiredPolicy::from_config(&config))
        .unwrap();
    dataplane
}

#[test]
fn a_vpn_servers_tun_traffic_is_filtered_by_the_l3_entry_point() {
    let lab = GatewayLab::new().unwrap_or_else(|e| panic!("building the lab: {e:#}"));
    let _servers = Servers::start(&lab.internet, &[25, 587]).unwrap();
    let tun = Tun::open(&lab.gateway, "tun0").unwrap_or_else(|e| panic!("TUN device: {e:#}"));
    let pins = PinFolder::new("tun");

    // Without smtpguard on tun0 the gateway routes the VPN subscriber's SYNs to the MX.
    for family in families() {
        expect_answer(&tun, &family, 25, true, "before attaching");
    }

    // The configuration asks for XDP; a TUN device has no Ethernet header, so the L3 TC entry
    // point is attached instead, and said so.
    let mut first = load_pinned(&pins);
    let attached = lab
        .gateway
        .run(|| first.attach_pinned(&pins.0, &tun.name, Attach::Xdp(XdpMode::Driver)))
        .unwrap_or_else(|e| panic!("attaching to {}: {e}", tun.name));
    assert_eq!(
        (attached.outcome, attached.attach, attached.attach.program()),
        (AttachOutcome::Created, Attach::TcL3, TC_L3_PROGRAM),
        "xdp asked for on {}: expected a new TC L3 link, observed {attached:?}",
        tun.name
    );
    let note = attached.note().unwrap_or_default();
    assert!(
        note.contains("link type none") && note.contains(TC_L3_PROGRAM),
        "expected a note naming the link type and the program, observed {note:?}"
    );
    let pinned: Vec<(String, String)> = pins
        .0
        .attachments()
        .unwrap()
        .into_iter()
        .map(|a| (a.kind, a.interface))
        .collect();
    assert_eq!(
        pinned,
        [("tc-l3".to_owned(), tun.name.clone())],
        "pinned attachments"
    );

    for family in families() {
        expect_answer(&tun, &family, 25, false, "tc-l3 attached");
        expect_answer(&tun, &family, 587, true, "tc-l3 attached");
    }
    let dropped = counter(&first, Reason::Dropped);
    assert!(
        dropped >= 2,
        "expected both families' SYNs to MX:25 counted as dropped, observed {dropped}"
    );

    // An upgrade: a new instance swaps its program into the pinned link; no gap, still L3.
    drop(first);
    expect_answer(
        &tun,
        &families()[0],
        25,
        false,
        "no process holds the program",
    );
    let mut second = load_pinned(&pins);
    let attached = lab
        .gateway
        .run(|| second.attach_pinned(&pins.0, &tun.name, Attach::Tc))
        .unwrap_or_else(|e| panic!("attaching again to {}: {e}", tun.name));
    assert_eq!(
        (attached.outcome, attached.attach),
        (AttachOutcome::Updated, Attach::TcL3),
        "second instance: expected the pinned TC L3 link updated, observed {attached:?}"
    );
    for family in families() {
        expect_answer(&tun, &family, 25, false, "after the link update");
    }

    // Detaching ends it.
    for attachment in pins.0.attachments().unwrap() {
        pins.0.detach(&attachment).unwrap();
    }
    expect_answer(&tun, &families()[0], 25, true, "detached");
}

#[test]
fn xdp_is_refused_on_a_device_without_ethernet() {
    let gateway = Netns::new("tunonly").unwrap();
    let tun = Tun::open(&gateway, "tun0").unwrap_or_else(|e| panic!("TUN device: {e:#}"));
    let mut dataplane = Dataplane::with_policy(&config()).unwrap();
    let error = gateway
        .run(|| dataplane.attach_xdp(&tun.name, XdpMode::Skb))
        .expect_err("XDP on a TUN device must be refused");
    let message = error.to_string();
    assert!(
        message.contains("tun0") && message.contains("link type none"),
        "expected the error to name tun0 and its link type, observed {message:?}"
    );
    let program = gateway
        .run(|| dataplane.attach_tc(&tun.name))
        .unwrap_or_else(|e| panic!("TC on {}: {e}", tun.name));
    assert_eq!(program, TC_L3_PROGRAM, "TC on a TUN device");
}
