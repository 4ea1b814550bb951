//! `reject` end to end: a real client in the subscriber namespace connects through the
//! gateway namespace, where smtpguard is attached, to the MX's port 25, and its connect
//! fails at once with the error the reply means: "connection refused" for a TCP reset, "no
//! route to host" (ICMP code 13) or "permission denied" (ICMPv6 administratively
//! prohibited) for the ICMP answer. Not a timeout: the SYN is answered. Both families, at
//! XDP (the reply sent with `XDP_TX`; the lab's subscriber end runs a pass-all XDP program so
//! that veth delivers it, as a NIC would) and at TC. Needs root (namespaces, veth, bpf).

use std::{net::IpAddr, path::Path, time::Duration};

use aya::programs::XdpMode;
use smtpguard::{
    config::Config,
    dataplane::{Attach, Dataplane},
};
use smtpguard_tests::lab::{self, Connect, GatewayLab, Servers, addr};

/// Far longer than an answered SYN takes: only bounds a failure (a dropped SYN would time
/// out here).
const TIMEOUT: Duration = Duration::from_secs(3);
const SMTP: u16 = 25;

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// The lab's policy with `action = "reject"` and `reject_with` on both subscriber ranges.
fn config(reject_with: &str) -> Config {
    let text = lab::LAB_CONFIG.replace(
        "[[subscribers]]\n",
        &format!(
            "[[subscribers]]\naction = \"reject\"\nreject_with = \"{reject_with}\"\nrate = 5\n\
             per = \"1h\"\n"
        ),
    );
    Config::parse(&text, Path::new("tests/src/lab.rs"))
        .unwrap_or_else(|e| panic!("parsing the test configuration: {e}"))
}

fn refuses(attach: Attach, reject_with: &str, expected: [&str; 2]) {
    let lab = GatewayLab::new().unwrap_or_else(|e| panic!("building the lab: {e:#}"));
    let _servers = Servers::start(&lab.internet, &[SMTP])
        .unwrap_or_else(|e| panic!("starting the internet host's servers: {e:#}"));
    let mut dataplane = Dataplane::with_policy(&config(reject_with))
        .unwrap_or_else(|e| panic!("loading the dataplane: {e:#}"));
    lab.attach(&mut dataplane, attach)
        .unwrap_or_else(|e| panic!("{e:#}"));
    for (mx, expected) in [ip(addr::MX_V4), ip(addr::MX_V6)].into_iter().zip(expected) {
        let outcome = lab::connect(&lab.subscriber, mx, SMTP, TIMEOUT);
        assert!(
            matches!(&outcome, Connect::Failed(error) if error.contains(expected)),
            "{attach:?}, reject_with = {reject_with}: subscriber → {mx}:25: observed \
             {outcome:?}, expected a failure with {expected:?}"
        );
    }
}

const RESET: [&str; 2] = ["Connection refused", "Connection refused"];
/// Linux maps ICMP code 13 to EHOSTUNREACH and ICMPv6 administratively prohibited to EACCES
/// (`icmp_err_convert`, `icmpv6_err_convert`).
const ICMP: [&str; 2] = ["No route to host", "Permission denied"];

#[test]
fn xdp_reset_refuses_the_connection() {
    refuses(Attach::Xdp(XdpMode::Driver), "tcp-reset", RESET);
}

#[test]
fn xdp_icmp_makes_the_connect_fail_at_once() {
    refuses(Attach::Xdp(XdpMode::Driver), "icmp-admin-prohibited", ICMP);
}

#[test]
fn tc_reset_refuses_the_connection() {
    refuses(Attach::Tc, "tcp-reset", RESET);
}

#[test]
fn tc_icmp_makes_the_connect_fail_at_once() {
    refuses(Attach::Tc, "icmp-admin-prohibited", ICMP);
}
