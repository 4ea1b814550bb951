//! The decision: is this frame enforced-port TCP from a subscriber, and if so, does a relay,
//! an exemption or monitor mode let it pass?

use aya_ebpf::maps::{LpmTrie, lpm_trie::Key};
use smtpguard_common::{
    Action, CachedClass, EnforcementConfig, HostKey, Limit, Reason, RelayFilter, RelayMatch,
    SourceClass, SourcePolicy,
};

use crate::{
    ENFORCEMENT, HOST_OVERRIDES, POLICY_GENERATION, RELAY_FILTER, RELAYS_V4, RELAYS_V6, SOURCES_V4,
    SOURCES_V6, SUBSCRIBER_SPACE_V4, SUBSCRIBER_SPACE_V6, hosts,
    parse::{Addresses, Packet, Transport},
    stage,
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

/// The verdict's reason and, for a subscriber's segment that counts toward its host's
/// statistics, what recording it needs.
pub struct Decision {
    pub reason: Reason,
    pub host: Option<TrackedHost>,
}

/// The host a judged segment came from: its statistics entry, if it has one yet (looked up
/// once, for the cached class and the update both), its class and action in this
/// generation, and the limit of the action's bucket.
pub struct TrackedHost {
    pub key: HostKey,
    pub held: hosts::Held,
    pub class: CachedClass,
    pub limit: Limit,
}

impl Decision {
    const fn untracked(reason: Reason) -> Self {
        Self { reason, host: None }
    }
}

#[inline(always)]
pub fn decide(packet: &Packet) -> Decision {
    // The fast path: most traffic is not TCP and needs no map lookup at all.
    if let Transport::Other = packet.transport {
        return Decision::untracked(Reason::Other);
    }
    if stage::ENDS_AT_PARSE {
        return Decision::untracked(stage::dropped(packet));
    }
    // An empty array slot reads as zeros: no enforced ports, so nothing is judged until the
    // loader has written the configuration.
    let Some(config) = ENFORCEMENT.get(0) else {
        return Decision::untracked(Reason::Other);
    };
    let judged = match packet.transport {
        Transport::Other => return Decision::untracked(Reason::Other),
        Transport::Tcp { dst_port, .. } if config.enforces(dst_port) => Judged::Segment,
        Transport::Tcp { .. } => return Decision::untracked(Reason::Other),
        Transport::Unreachable => Judged::Unparseable,
        Transport::EvasiveFragment => Judged::Fragment,
    };

    if stage::COUNT_ONLY && matches!(judged, Judged::Segment) {
        hosts::count_attempt(&config.host_table, &host_key(config, &packet.addresses));
        return Decision::untracked(Reason::Dropped);
    }

    // Traffic to a relay is not an attempt and keeps no statistics, so it is settled first,
    // and a subscriber's mail told from a stranger's. An unwritten filter reads as zeros.
    if let Some(filter) = RELAY_FILTER.get(0)
        && is_relay(filter, &packet.addresses)
    {
        let reason = match in_subscriber_space(filter, &packet.addresses) {
            true => Reason::Relayed,
            false => not_subscriber(judged),
        };
        return Decision::untracked(reason);
    }

    if stage::ENDS_AT_POLICY && matches!(judged, Judged::Segment) {
        return Decision::untracked(stage::dropped(packet));
    }

    // A known host's class is cached in its statistics entry, which the segment updates
    // anyway: while the policy is unchanged, the source trie is not walked again.
    let generation = POLICY_GENERATION.get(0).copied().unwrap_or(0);
    let key = host_key(config, &packet.addresses);
    let found = hosts::find(&config.host_table, &key);
    let Some((class, action, limit)) = found
        .cached(generation)
        .or_else(|| classify(&packet.addresses, key))
    else {
        return Decision::untracked(not_subscriber(judged));
    };
    let reason = match class {
        SourceClass::Exempt => Reason::Exempt,
        SourceClass::Monitored => Reason::Monitored,
        SourceClass::Enforced => enforce(judged, config),
    };
    Decision {
        reason,
        host: Some(TrackedHost {
            key,
            class: CachedClass::new(generation, class, found.tag, action),
            held: found.held,
            limit,
        }),
    }
}

/// The statistics key of the segment's source: its address, an IPv6 one masked to the
/// configured prefix.
#[inline(always)]
fn host_key(config: &EnforcementConfig, addresses: &Addresses) -> HostKey {
    match addresses {
        Addresses::V4 { src, .. } => config.host_mask.key_v4(*src),
        Addresses::V6 { src, .. } => config.host_mask.key_v6(*src),
    }
}

/// A frame whose IP packet the parser cannot see: its source is unknown, so only the
/// `unparseable` setting decides. An unwritten configuration reads as `pass`.
#[inline(always)]
pub fn link_unparseable() -> Reason {
    match ENFORCEMENT.get(0) {
        Some(config) if config.drops_unparseable() => Reason::LinkUnparseableDropped,
        _ => Reason::LinkUnparseablePassed,
    }
}

#[inline(always)]
fn not_subscriber(judged: Judged) -> Reason {
    match judged {
        Judged::Segment => Reason::NotSubscriber,
        Judged::Unparseable | Judged::Fragment => Reason::Other,
    }
}

/// An enforced host's frame. A segment's `Dropped` is provisional for a `reject` or
/// `ratelimit` host: its action, the TCP flags and its bucket have the last word where its
/// statistics are recorded (`stats::record_host`). Not here: a branch on the action this
/// early would make the verifier walk all the statistics code once per outcome.
#[inline(always)]
fn enforce(judged: Judged, config: &EnforcementConfig) -> Reason {
    match judged {
        Judged::Segment => Reason::Dropped,
        Judged::Fragment => Reason::FragmentDropped,
        Judged::Unparseable if config.drops_unparseable() => Reason::UnparseableDropped,
        Judged::Unparseable => Reason::UnparseablePassed,
    }
}

/// What the policy makes of a source, with its range's action and limit: `None` outside
/// every subscriber range. An escalated host of a monitor-mode range takes its range's action.
#[inline(always)]
fn classify(addresses: &Addresses, key: HostKey) -> Option<(SourceClass, Action, Limit)> {
    let source = source(addresses).filter(|s| s.subscriber.is_subscriber())?;
    let class = if source.is_exempt() {
        SourceClass::Exempt
    } else if source.subscriber.is_monitor() && !is_escalated(key) {
        SourceClass::Monitored
    } else {
        SourceClass::Enforced
    };
    Some((
        class,
        Action::from_u32(source.subscriber.action),
        source.subscriber.limit,
    ))
}

/// The subscriber range and exemption state of the source, from one lookup.
#[inline(always)]
fn source(addresses: &Addresses) -> Option<SourcePolicy> {
    match addresses {
        Addresses::V4 { src, .. } => trie_get(&SOURCES_V4, 32, *src).copied(),
        Addresses::V6 { src, .. } => trie_get(&SOURCES_V6, 128, *src).copied(),
    }
}

/// Whether any subscriber range holds the source: from the filter's list of the outermost
/// ranges when they are few, else from the subscriber-space trie, which holds only the
/// outermost ranges and so stays shallow however many ranges nest inside them.
#[inline(always)]
fn in_subscriber_space(filter: &RelayFilter, addresses: &Addresses) -> bool {
    let space = &filter.subscriber_space;
    match addresses {
        Addresses::V4 { src, .. } => space
            .holds_v4(*src)
            .unwrap_or_else(|| trie_get(&SUBSCRIBER_SPACE_V4, 32, *src).is_some()),
        Addresses::V6 { src, .. } => space
            .holds_v6(*src)
            .unwrap_or_else(|| trie_get(&SUBSCRIBER_SPACE_V6, 128, *src).is_some()),
    }
}

/// The filter first: most destinations it rules out, a single-address relay it recognises;
/// only the rest is looked up in the trie. An unwritten filter (all zeros) rules every
/// destination out, so a relay passes only once the control plane has written both.
#[inline(always)]
fn is_relay(filter: &RelayFilter, addresses: &Addresses) -> bool {
    match addresses {
        Addresses::V4 { dst, .. } => match filter.relay_v4(*dst) {
            RelayMatch::NotRelay => false,
            RelayMatch::Relay => true,
            RelayMatch::AskTrie => trie_get(&RELAYS_V4, 32, *dst).is_some(),
        },
        Addresses::V6 { dst, .. } => match filter.relay_v6(*dst) {
            RelayMatch::NotRelay => false,
            RelayMatch::Relay => true,
            RelayMatch::AskTrie => trie_get(&RELAYS_V6, 128, *dst).is_some(),
        },
    }
}

/// A reoffending bot in a monitor-mode range, enforced on its own by the agent.
#[inline(always)]
fn is_escalated(key: HostKey) -> bool {
    // SAFETY: the value is only tested for presence.
    unsafe { HOST_OVERRIDES.get(key) }.is_some()
}

/// An LPM trie key whose address starts on an 8-byte boundary of the stack: the kernel's key
/// layout puts it 4 bytes after the prefix length, and the program is built to read and
/// write words at any alignment (`allows-misaligned-mem-access`), which the verifier allows
/// in packet data but not on the stack.
#[repr(C, align(8))]
struct AlignedKey<K> {
    _before: u32,
    key: Key<K>,
}

#[inline(always)]
fn trie_get<K, V>(trie: &LpmTrie<K, V>, prefix_len: u32, data: K) -> Option<&V> {
    let aligned = AlignedKey {
        _before: 0,
        key: Key::new(prefix_len, data),
    };
    trie.get(&aligned.key)
}
