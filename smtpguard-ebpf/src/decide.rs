//! The decision: is this frame enforced-port TCP from a subscriber, and if so, does a relay,
//! an exemption or monitor mode let it pass?

use aya_ebpf::maps::lpm_trie::Key;
use smtpguard_common::{EnforcementConfig, HostKey, Reason, SubscriberPolicy};

use crate::{
    ENFORCEMENT, EXEMPTIONS_V4, EXEMPTIONS_V6, HOST_OVERRIDES, RELAYS_V4, RELAYS_V6,
    SUBSCRIBERS_V4, SUBSCRIBERS_V6,
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

    let Some(policy) = subscriber(&packet.addresses) else {
        return match judged {
            Judged::Segment => Reason::NotSubscriber,
            Judged::Unparseable | Judged::Fragment => Reason::Other,
        };
    };
    if is_relay(&packet.addresses) {
        return Reason::Relayed;
    }
    if is_exempt(&packet.addresses) {
        return Reason::Exempt;
    }
    if policy.is_monitor() && !is_escalated(&packet.addresses) {
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

#[inline(always)]
fn subscriber(addresses: &Addresses) -> Option<SubscriberPolicy> {
    match addresses {
        Addresses::V4 { src, .. } => SUBSCRIBERS_V4.get(Key::new(32, *src)).copied(),
        Addresses::V6 { src, .. } => SUBSCRIBERS_V6.get(Key::new(128, *src)).copied(),
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

#[inline(always)]
fn is_exempt(addresses: &Addresses) -> bool {
    match addresses {
        // `black_box` (an empty asm statement) keeps the two arms' code different after the
        // lookup: otherwise LLVM sinks both lookups into one call site that sees two maps,
        // and the verifier can then not turn it into a direct `trie_lookup_elem` call: it
        // stays the generic helper, an indirect call through a retpoline on every packet.
        Addresses::V4 { src, .. } => {
            core::hint::black_box(EXEMPTIONS_V4.get(Key::new(32, *src)).is_some())
        }
        Addresses::V6 { src, .. } => EXEMPTIONS_V6.get(Key::new(128, *src)).is_some(),
    }
}
