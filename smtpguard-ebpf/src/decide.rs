//! The decision: is this frame enforced-port TCP from a subscriber, and if so, does a relay,
//! an exemption or monitor mode let it pass?

use aya_ebpf::maps::lpm_trie::Key;
use smtpguard_common::{EnforcementConfig, HostKey, Reason, SourcePolicy};

use crate::{
    ENFORCEMENT, HOST_OVERRIDES, RELAYS_V4, RELAYS_V6, SOURCES_V4, SOURCES_V6,
    parse::{Addresses, Packet, Transport},
};

/// What the policy is asked to judge.
enum Judged {
    /// TCP to an enforced port.
    Segment,
    /// TCP whose header is out of reach: the port is unknown.
    Unparseable,
    /// A fragment that hides or overwrites the TCP header.
    Fragment,
}

#[inline(always)]
pub fn decide(packet: &Packet) -> Reason {
    // The fast path: most traffic is not TCP and needs no map lookup at all.
    if let Transport::Other = packet.transport {
        return Reason::Other;
    }
    // An empty array slot reads as zeros: no enforced ports, so nothing is judged until the
    // loader has written the configuration.
    let Some(config) = ENFORCEMENT.get(0) else {
        return Reason::Other;
    };
    let judged = match packet.transport {
        Transport::Other => return Reason::Other,
        Transport::Tcp { dst_port, .. } if config.enforces(dst_port) => Judged::Segment,
        Transport::Tcp { .. } => return Reason::Other,
        Transport::Unreachable => Judged::Unparseable,
        Transport::EvasiveFragment => Judged::Fragment,
    };

    let Some(source) = source(&packet.addresses).filter(|s| s.subscriber.is_subscriber()) else {
        return match judged {
            Judged::Segment => Reason::NotSubscriber,
            Judged::Unparseable | Judged::Fragment => Reason::Other,
        };
    };
    if is_relay(&packet.addresses) {
        return Reason::Relayed;
    }
    if source.is_exempt() {
        return Reason::Exempt;
    }
    if source.subscriber.is_monitor() && !is_escalated(&packet.addresses) {
        return Reason::Monitored;
    }
    enforce(judged, config)
}

#[inline(always)]
fn enforce(judged: Judged, config: &EnforcementConfig) -> Reason {
    match judged {
        Judged::Segment => Reason::Dropped,
        Judged::Fragment => Reason::FragmentDropped,
        Judged::Unparseable if config.drops_unparseable() => Reason::UnparseableDropped,
        Judged::Unparseable => Reason::UnparseablePassed,
    }
}

/// The subscriber range and exemption state of the source, from one lookup.
#[inline(always)]
fn source(addresses: &Addresses) -> Option<SourcePolicy> {
    match addresses {
        Addresses::V4 { src, .. } => SOURCES_V4.get(Key::new(32, *src)).copied(),
        Addresses::V6 { src, .. } => SOURCES_V6.get(Key::new(128, *src)).copied(),
    }
}

#[inline(always)]
fn is_relay(addresses: &Addresses) -> bool {
    match addresses {
        Addresses::V4 { dst, .. } => RELAYS_V4.get(Key::new(32, *dst)).is_some(),
        Addresses::V6 { dst, .. } => RELAYS_V6.get(Key::new(128, *dst)).is_some(),
    }
}

/// A reoffending bot in a monitor-mode range, enforced on its own by the agent.
#[inline(always)]
fn is_escalated(addresses: &Addresses) -> bool {
    let key = match addresses {
        Addresses::V4 { src, .. } => HostKey::from_v4(*src),
        Addresses::V6 { src, .. } => HostKey::from_v6(*src),
    };
    // SAFETY: the value is only tested for presence.
    unsafe { HOST_OVERRIDES.get(key) }.is_some()
}
