//! Seeded generators of policies and frames for the differential tests: valid, evasive and
//! malformed frames, with addresses drawn from the policy's own ranges so that every branch
//! of the decision is reached. The RNG is PCG (a fixed algorithm), so a seed reproduces a
//! run on any machine.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnet::IpNet;
use rand::{RngExt, SeedableRng};
use rand_pcg::Pcg64Mcg;
use smtpguard::policy::DesiredPolicy;
use smtpguard_common::{
    Action, EnforcementConfig, HostMask, Limit, Mode, Origin, PrefixOrigin, SubscriberPolicy,
    UnparseableAction, relay::LISTED_RANGES,
};

use crate::frames::{
    Extension, FrameSpec, PPP_COMPRESSED_DATAGRAM, PPP_IPV4, PPP_IPV6, PPP_MULTILINK,
    PPP_VJ_COMPRESSED, PPP_VJ_UNCOMPRESSED, TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN,
    TPID_8021AD, TPID_8021Q, TPID_9100, Upper, Wrapper, arp, ethernet,
};

/// The generators' random source.
pub type Rng = Pcg64Mcg;

pub fn rng(seed: u64) -> Rng {
    Pcg64Mcg::seed_from_u64(seed)
}

const TPIDS: [u16; 3] = [TPID_8021Q, TPID_8021AD, TPID_9100];
const ETH_P_PPPOE_SESSION: u16 = 0x8864;
const ETH_P_PPPOE_DISCOVERY: u16 = 0x8863;
/// Ports that are not enforced unless a policy happens to pick them.
const OTHER_PORTS: [u16; 6] = [587, 465, 80, 443, 26, 40_000];

/// A policy for the kernel maps and the model, and the addresses its frames are drawn from.
#[derive(Clone, Debug)]
pub struct GeneratedPolicy {
    pub desired: DesiredPolicy,
    /// Hosts of monitor-mode ranges escalated to enforcement (the HOST_OVERRIDES map).
    pub escalated: BTreeSet<IpAddr>,
    /// Sources: hosts of every subscriber range and exemption, escalated hosts, outsiders.
    pub sources: Vec<IpAddr>,
    /// Destinations: relay hosts and other hosts.
    pub destinations: Vec<IpAddr>,
}

/// A frame and what the generator meant it to be.
#[derive(Clone, Debug)]
pub struct GeneratedFrame {
    pub bytes: Vec<u8>,
    pub description: String,
}

fn random_addr(rng: &mut Rng, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4(Ipv4Addr::from(rng.random::<u32>()))
    } else {
        // Global unicast space, so that ranges nest rather than scatter over all of it.
        IpAddr::V6(Ipv6Addr::from(
            (0x2001_0db8u128 << 96)
                | u128::from(rng.random::<u64>()) << 32
                | rng.random::<u128>() >> 96,
        ))
    }
}

/// A random host inside `prefix`.
pub fn host_in(rng: &mut Rng, prefix: IpNet) -> IpAddr {
    match prefix {
        IpNet::V4(net) => {
            let host_bits = u32::from(net.hostmask()) & rng.random::<u32>();
            IpAddr::V4(Ipv4Addr::from(u32::from(net.network()) | host_bits))
        }
        IpNet::V6(net) => {
            let host_bits = u128::from(net.hostmask()) & rng.random::<u128>();
            IpAddr::V6(Ipv6Addr::from(u128::from(net.network()) | host_bits))
        }
    }
}

fn prefix(addr: IpAddr, len: u8) -> IpNet {
    IpNet::new(addr, len)
        .expect("length within the family")
        .trunc()
}

/// A prefix nested inside `outer`, longer by 1 to 16 bits.
fn nested(rng: &mut Rng, outer: IpNet) -> IpNet {
    let len = (outer.prefix_len() + rng.random_range(1..=16)).min(outer.max_prefix_len());
    prefix(host_in(rng, outer), len)
}

fn mode(rng: &mut Rng) -> Mode {
    if rng.random_bool(0.3) {
        Mode::Monitor
    } else {
        Mode::Enforce
    }
}

/// A random policy: 1 to 8 enforced ports (usually with 25), both `unparseable` actions,
/// nested subscriber ranges of both modes in both families, relays inside and outside
/// subscriber space, exemptions inside and outside subscriber ranges (with ranges inside
/// them), escalated monitor-mode hosts.
pub fn random_policy(rng: &mut Rng) -> GeneratedPolicy {
    let mut ports = BTreeSet::new();
    if rng.random_bool(0.9) {
        ports.insert(25);
    }
    while ports.is_empty() || (ports.len() < 8 && rng.random_bool(0.4)) {
        ports.insert(if rng.random_bool(0.5) {
            OTHER_PORTS[rng.random_range(0..OTHER_PORTS.len())]
        } else {
            rng.random_range(1..=u16::MAX)
        });
    }
    let ports: Vec<u16> = ports.into_iter().collect();
    let unparseable = if rng.random_bool(0.5) {
        UnparseableAction::Drop
    } else {
        UnparseableAction::Pass
    };

    let mut subscribers = BTreeMap::new();
    let mut exemptions = BTreeMap::new();
    let mut relays = BTreeMap::new();
    let mut sources = Vec::new();
    let mut destinations = Vec::new();
    let mut escalated = BTreeSet::new();
    let config = PrefixOrigin::new(Origin::Config);
    for v4 in [true, false] {
        let (short, long) = if v4 { (8, 24) } else { (40, 64) };
        for _ in 0..rng.random_range(1..=3) {
            let base = prefix(random_addr(rng, v4), rng.random_range(short..=long));
            subscribers.insert(base, mode(rng));
            for _ in 0..rng.random_range(0..=3) {
                let inner = nested(rng, base);
                subscribers.insert(inner, mode(rng));
                if rng.random_bool(0.5) {
                    exemptions.insert(nested(rng, inner), config);
                }
            }
            if rng.random_bool(0.5) {
                let exemption = nested(rng, base);
                exemptions.insert(exemption, config);
                if rng.random_bool(0.5) {
                    // A range inside an exemption: the kernel compiles both lists into one
                    // source trie, and the range's own entry must still say "exempt".
                    subscribers.insert(nested(rng, exemption), mode(rng));
                }
            }
            if rng.random_bool(0.2) {
                // A relay inside subscriber space (the ISP's own smarthost).
                relays.insert(nested(rng, base), config);
            }
        }
        if rng.random_bool(0.25) {
            // More outermost ranges than the relay filter lists: the subscriber-space trie
            // decides whether a relay's sender is a subscriber.
            for _ in 0..=LISTED_RANGES {
                subscribers.insert(prefix(random_addr(rng, v4), long), mode(rng));
            }
        }
        if rng.random_bool(0.3) {
            // An exemption outside subscriber space: it has an entry in the source trie but
            // makes nobody a subscriber.
            exemptions.insert(
                prefix(random_addr(rng, v4), if v4 { 24 } else { 64 }),
                config,
            );
        }
        for _ in 0..rng.random_range(1..=3) {
            let max = if v4 { 32 } else { 128 };
            let len = if rng.random_bool(0.6) { max } else { max - 8 };
            relays.insert(prefix(random_addr(rng, v4), len), config);
        }
        for _ in 0..4 {
            sources.push(random_addr(rng, v4));
            destinations.push(random_addr(rng, v4));
        }
    }
    for (range, mode) in &subscribers {
        for _ in 0..2 {
            let host = host_in(rng, *range);
            sources.push(host);
            if range.prefix_len() <= HostMask::DEFAULT_V6_PREFIX && host.is_ipv6() {
                // Another address of the same /64: one host where hosts are /64s.
                sources.push(host_in(rng, prefix(host, HostMask::DEFAULT_V6_PREFIX)));
            }
            if *mode == Mode::Monitor && rng.random_bool(0.3) {
                escalated.insert(host);
            }
        }
    }
    for range in exemptions.keys() {
        sources.push(host_in(rng, *range));
    }
    for range in relays.keys() {
        destinations.push(host_in(rng, *range));
    }
    GeneratedPolicy {
        desired: DesiredPolicy {
            enforcement: EnforcementConfig::new(
                &ports,
                unparseable,
                whole_hosts(subscribers.keys().chain(exemptions.keys())),
            ),
            subscribers: (0..)
                .zip(subscribers)
                .map(|(rule, (range, mode))| {
                    let (action, limit) = random_action(rng);
                    (
                        range,
                        SubscriberPolicy::with_action(mode, rule, action, limit),
                    )
                })
                .collect(),
            relays,
            exemptions,
        },
        escalated,
        sources,
        destinations,
    }
}

/// A range's action: `drop` half the time, else `reject` (either answer) or `ratelimit`, all
/// with one bucket size, so a host's bucket means the same in every generated policy (the
/// kernel keeps it across policy changes), and one long enough that the model's bucket
/// without refill holds for a run.
fn random_action(rng: &mut Rng) -> (Action, Limit) {
    const LIMIT: Limit = Limit {
        rate: 3,
        per_secs: 3600,
    };
    match rng.random_range(0..8) {
        0..4 => (Action::Drop, Limit::NONE),
        4 => (Action::Reset, LIMIT),
        5 => (Action::IcmpProhibited, LIMIT),
        _ => (Action::RateLimit, LIMIT),
    }
}

/// Hosts as the configuration allows them for `sources` (the subscriber ranges and the
/// exemptions), which may not split a host: an IPv6 host is its /64 unless a longer source
/// prefix asks for longer hosts; an IPv4 host is its address.
pub fn whole_hosts<'a>(sources: impl Iterator<Item = &'a IpNet>) -> HostMask {
    let longest_v6 = sources
        .filter(|prefix| matches!(prefix, IpNet::V6(_)))
        .map(IpNet::prefix_len)
        .max()
        .unwrap_or(0);
    HostMask::new(32, longest_v6.max(HostMask::DEFAULT_V6_PREFIX))
}

fn pick<T: Copy>(rng: &mut Rng, items: &[T]) -> T {
    items[rng.random_range(0..items.len())]
}

/// Addresses of one family: mostly from the policy's pools, sometimes anywhere.
fn endpoints(rng: &mut Rng, policy: &GeneratedPolicy) -> (IpAddr, IpAddr) {
    let v4 = rng.random_bool(0.5);
    endpoints_of(rng, policy, v4)
}

/// Addresses of the given family. IPv6 sources are sometimes an IPv4 source of the policy
/// mapped into IPv6 (`::ffff:a.b.c.d`): another host than a.b.c.d, whatever a parser that
/// widens IPv4 into IPv6 space makes of it.
fn endpoints_of(rng: &mut Rng, policy: &GeneratedPolicy, v4: bool) -> (IpAddr, IpAddr) {
    let of_family = |pool: &[IpAddr]| -> Vec<IpAddr> {
        pool.iter().copied().filter(|a| a.is_ipv4() == v4).collect()
    };
    let sources = of_family(&policy.sources);
    let destinations = of_family(&policy.destinations);
    let src = if !v4 && rng.random_bool(0.03) {
        let v4_sources: Vec<IpAddr> = policy
            .sources
            .iter()
            .copied()
            .filter(IpAddr::is_ipv4)
            .collect();
        match pick(rng, &v4_sources) {
            IpAddr::V4(v4) => IpAddr::V6(v4.to_ipv6_mapped()),
            IpAddr::V6(_) => unreachable!("filtered to IPv4"),
        }
    } else if rng.random_bool(0.92) {
        pick(rng, &sources)
    } else {
        random_addr(rng, v4)
    };
    let dst = match rng.random_range(0..10) {
        0 => pick(rng, &sources),
        1 => random_addr(rng, v4),
        _ => pick(rng, &destinations),
    };
    (src, dst)
}

fn tcp_flags(rng: &mut Rng) -> u8 {
    match rng.random_range(0..8) {
        0..=2 => TCP_SYN,
        3 => TCP_SYN | TCP_ACK,
        4 => TCP_ACK,
        5 => TCP_PSH | TCP_ACK,
        6 => pick(rng, &[TCP_FIN | TCP_ACK, TCP_RST, 0]),
        _ => rng.random(),
    }
}

/// TCP to an enforced port of the policy (60 %), another well-known port or any port.
fn tcp_upper(rng: &mut Rng, policy: &GeneratedPolicy) -> Upper {
    let ports = &policy.desired.enforcement.ports[..policy.desired.enforcement.port_count as usize];
    let dst_port = match rng.random_range(0..10) {
        0..=5 => pick(rng, ports),
        6..=8 => pick(rng, &OTHER_PORTS),
        _ => rng.random(),
    };
    let src_port = if rng.random_bool(0.1) {
        25
    } else {
        rng.random_range(1024..=u16::MAX)
    };
    Upper::Tcp {
        src_port,
        dst_port,
        flags: tcp_flags(rng),
    }
}

fn upper(rng: &mut Rng, policy: &GeneratedPolicy, v4: bool) -> Upper {
    match rng.random_range(0..100) {
        0..=74 => tcp_upper(rng, policy),
        75..=82 => Upper::Udp {
            src_port: rng.random_range(1024..=u16::MAX),
            dst_port: pick(rng, &[25, 53, 587]),
        },
        83..=89 => Upper::Icmp,
        _ => Upper::Raw {
            // GRE, ESP, SCTP, UDP-Lite, "no next header", an experimental number, and
            // (IPv4 only) protocol numbers that are IPv6 extension headers elsewhere.
            protocol: if v4 {
                pick(rng, &[47, 50, 132, 136, 0, 43, 44, 60])
            } else {
                pick(rng, &[47, 50, 132, 136, 59, 253])
            },
            len: rng.random_range(0..32),
        },
    }
}

/// PPP protocols that do not carry a plain IP packet.
const PPP_NOT_IP: [u16; 4] = [
    PPP_VJ_UNCOMPRESSED,
    PPP_VJ_COMPRESSED,
    PPP_COMPRESSED_DATAGRAM,
    PPP_MULTILINK,
];

/// Link-layer wrappers for a frame of the given IP family: no, one or two tags (some of
/// them priority tags, VID 0), sometimes deep stacks (3 to 10 tags), half of them priority
/// tags only (which Linux strips however many there are); then sometimes PPPoE, now and
/// then with a PPP protocol other than IP's (VJ, CCP, multilink) or a wrong PPPoE length.
fn wrappers(rng: &mut Rng, v4: bool) -> Vec<Wrapper> {
    let mut wrappers = Vec::new();
    let tags = match rng.random_range(0..100) {
        0..=39 => 0,
        40..=69 => 1,
        70..=94 => 2,
        // More tags than the gateway's parser walks.
        _ => rng.random_range(3..=10),
    };
    let priority_stack = tags >= 3 && rng.random_bool(0.5);
    let tpids: &[u16] = if priority_stack && rng.random_bool(0.9) {
        // The TPIDs Linux strips (0x9100 it does not know).
        &TPIDS[..2]
    } else {
        &TPIDS
    };
    for _ in 0..tags {
        let vid = if priority_stack || rng.random_bool(0.15) {
            0
        } else {
            rng.random_range(1..4095)
        };
        wrappers.push(Wrapper::Vlan {
            tpid: pick(rng, tpids),
            vid,
        });
    }
    if rng.random_bool(0.3) {
        let compressed = rng.random_bool(0.5);
        wrappers.push(match rng.random_range(0..10) {
            0..=7 => Wrapper::Pppoe { compressed },
            8 => Wrapper::PppoeWith {
                protocol: pick(rng, &PPP_NOT_IP),
                compressed,
                length_delta: 0,
            },
            _ => Wrapper::PppoeWith {
                protocol: if v4 { PPP_IPV4 } else { PPP_IPV6 },
                compressed,
                length_delta: pick(rng, &[-40, -8, -1, 1, 2, 100]),
            },
        });
    }
    wrappers
}

fn extension(rng: &mut Rng) -> Extension {
    let len_units = rng.random_range(0..=4);
    match rng.random_range(0..12) {
        0..=1 => Extension::HopByHop { len_units },
        2..=3 => Extension::Routing { len_units },
        4..=5 => Extension::DestinationOptions { len_units },
        6..=7 => Extension::Authentication {
            len_units: rng.random_range(1..=6),
        },
        8..=9 => Extension::Fragment {
            offset: if rng.random_bool(0.7) {
                0
            } else {
                rng.random_range(1..8192)
            },
            more: rng.random_bool(0.6),
        },
        // Mobility, HIP, shim6.
        _ => Extension::Other {
            protocol: pick(rng, &[135, 139, 140]),
            len_units,
        },
    }
}

/// Frames that are not IP: ARP, PPPoE discovery and LCP, unknown ethertypes.
fn not_ip(rng: &mut Rng) -> GeneratedFrame {
    let (bytes, description) = match rng.random_range(0..4) {
        0 => (arp(), "ARP".to_string()),
        1 => (
            ethernet(&[], ETH_P_PPPOE_DISCOVERY, &[0x11, 0x09, 0, 0, 0, 0]),
            "PPPoE discovery".to_string(),
        ),
        2 => {
            let compressed = rng.random_bool(0.5);
            // LCP (0xc021, never compressed), or multilink (0x003d) in its one-byte form.
            let ppp: &[u8] = if compressed { &[0x3d] } else { &[0xc0, 0x21] };
            let mut payload = vec![0x11, 0, 0, 1, 0, 8];
            payload.extend_from_slice(ppp);
            payload.extend_from_slice(&[1, 1, 0, 4]);
            (
                ethernet(&[], ETH_P_PPPOE_SESSION, &payload),
                format!("PPPoE session, non-IP PPP protocol {ppp:02x?}"),
            )
        }
        _ => {
            let ethertype = pick(rng, &[0x88cc, 0x8847, 0x0842, 0x22f0]);
            (
                ethernet(&[], ethertype, &[0u8; 46]),
                format!("ethertype {ethertype:#06x}"),
            )
        }
    };
    GeneratedFrame { bytes, description }
}

/// One frame for `policy`: a random mix of wrappers, IPv4 options and fragments, IPv6
/// extension chains, TCP/UDP/ICMP/other, then (sometimes) corrupted header fields, TCP data
/// offsets, random byte flips, or truncation near a layer boundary.
pub fn random_frame(rng: &mut Rng, policy: &GeneratedPolicy) -> GeneratedFrame {
    if rng.random_bool(0.03) {
        return not_ip(rng);
    }
    if rng.random_bool(0.02) {
        // Judged on its own here; `random_datagram` sends the fragment that completes it too.
        return straddling_fragments(rng, policy).swap_remove(0);
    }
    let (src, dst) = endpoints(rng, policy);
    let v4 = src.is_ipv4();
    let mut spec = match upper(rng, policy, v4) {
        Upper::Tcp {
            src_port,
            dst_port,
            flags,
        } => {
            let mut spec = FrameSpec::tcp(src, dst, dst_port, flags);
            spec.upper = Upper::Tcp {
                src_port,
                dst_port,
                flags,
            };
            spec
        }
        Upper::Udp { dst_port, .. } => FrameSpec::udp(src, dst, dst_port),
        Upper::Icmp => FrameSpec::icmp(src, dst),
        raw @ Upper::Raw { .. } => {
            let mut spec = FrameSpec::icmp(src, dst);
            spec.upper = raw;
            spec
        }
    };
    spec = spec.wrappers(&wrappers(rng, v4));
    let vj_uncompressed = spec.wrappers.iter().any(|w| {
        matches!(
            w,
            Wrapper::PppoeWith {
                protocol: PPP_VJ_UNCOMPRESSED,
                ..
            }
        )
    });
    if v4 && vj_uncompressed {
        // VJ uncompressed TCP: the IP protocol byte holds the connection's slot number.
        spec = spec.ipv4_protocol_field(if rng.random_bool(0.9) {
            rng.random_range(0..16)
        } else {
            rng.random()
        });
    }
    if v4 {
        if rng.random_bool(0.3) {
            spec = spec.ipv4_options(rng.random_range(1..=40));
        }
        spec.ipv4_fragment = match rng.random_range(0..100) {
            0..=69 => None,
            70..=79 => Some((0, true)),
            80..=87 => Some((1, rng.random_bool(0.5))),
            88..=94 => Some((rng.random_range(2..8192), rng.random_bool(0.5))),
            _ => Some((0, false)),
        };
    } else if rng.random_bool(0.6) {
        for _ in 0..rng.random_range(1..=12) {
            spec = spec.extension(extension(rng));
        }
    }
    if rng.random_bool(0.3) {
        let len = rng.random_range(0..=40);
        spec = spec.payload(&(0..len).map(|_| rng.random()).collect::<Vec<u8>>());
    }
    let beyond = if rng.random_bool(0.1) {
        beyond_ip_end(rng, &mut spec)
    } else {
        String::new()
    };
    let mut bytes = spec.build();
    let mut description = format!(
        "{src} -> {dst} {:?} wrappers {:?} options {} fragment {:?} extensions {:?} payload {}{beyond}",
        spec.upper,
        spec.wrappers,
        spec.ipv4_options,
        spec.ipv4_fragment,
        spec.extensions,
        spec.payload.len()
    );

    let link_len = 14 + spec.wrappers.iter().map(|w| w.header_len()).sum::<usize>();
    let upper_len = spec.transport().len();
    let upper_at = bytes.len() - spec.trailer.len() - upper_len;

    if matches!(spec.upper, Upper::Tcp { .. }) && upper_len >= 20 {
        let data_offset = if rng.random_bool(0.1) {
            // Bad data offsets (below 5, or past the segment): the port and flags are
            // still where they are.
            Some(rng.random_range(0..16u8))
        } else if spec.payload.len() >= 4 && rng.random_bool(0.5) {
            // The payload's first bytes as TCP options.
            Some(5 + (spec.payload.len() / 4).min(10) as u8)
        } else {
            None
        };
        if let Some(data_offset) = data_offset {
            bytes[upper_at + 12] = data_offset << 4;
            description += &format!(", TCP data offset {data_offset}");
        }
    }
    if v4 && rng.random_bool(0.05) {
        let ihl: u8 = rng.random_range(0..16);
        bytes[link_len] = 0x40 | ihl;
        description += &format!(", IHL {ihl}");
    }
    if rng.random_bool(0.02) {
        let version: u8 = rng.random_range(0..16);
        bytes[link_len] = (bytes[link_len] & 0x0f) | version << 4;
        description += &format!(", IP version {version}");
    }
    if rng.random_bool(0.05) {
        for _ in 0..rng.random_range(1..=3) {
            let at = rng.random_range(0..bytes.len());
            let bit = rng.random_range(0..8);
            bytes[at] ^= 1 << bit;
            description += &format!(", bit {bit} of byte {at} flipped");
        }
    }
    if rng.random_bool(0.2) {
        // Near a layer boundary (Ethernet, link layer, IPv4 and IPv6 base headers, the
        // upper layer, the end), or anywhere.
        let cut = if rng.random_bool(0.8) {
            let boundary = pick(
                rng,
                &[
                    14,
                    link_len,
                    link_len + 20,
                    link_len + 40,
                    upper_at,
                    bytes.len(),
                ],
            );
            (boundary + rng.random_range(0..24)).saturating_sub(4)
        } else {
            rng.random_range(0..=bytes.len())
        }
        .min(bytes.len());
        description += &format!(", cut at {cut} of {}", bytes.len());
        bytes.truncate(cut);
    }
    GeneratedFrame { bytes, description }
}

/// Bytes after the IP packet, or an IP length that disagrees with the bytes: a gateway's
/// kernel trims a frame to its IP length before forwarding it, so nothing beyond may decide
/// the verdict. Changes `spec`; returns what it did, for the description.
fn beyond_ip_end(rng: &mut Rng, spec: &mut FrameSpec) -> String {
    let (src, dst) = (spec.src, spec.dst);
    let tcp_elsewhere = || FrameSpec::tcp(src, dst, OTHER_PORTS[0], TCP_SYN).transport();
    let upper_len = spec.transport().len() as i32;
    match rng.random_range(0..6) {
        0 => {
            let len = rng.random_range(1..=40);
            spec.trailer = (0..len).map(|_| rng.random()).collect();
            format!(", {len} random bytes after the IP end")
        }
        1 => {
            // The packet stops where its upper-layer header begins (or inside it); a TCP
            // header to another port follows the IP end.
            let kept = rng.random_range(0..=upper_len.min(12)) as usize;
            spec.upper_len = Some(kept);
            spec.trailer = tcp_elsewhere();
            format!(", upper layer cut to {kept} bytes, a TCP header after the IP end")
        }
        2 if src.is_ipv6() => {
            // The chain names one more extension header where the packet ends; the trailer
            // reads as it, ending the chain or leading to TCP to another port.
            let named = pick(rng, &[60, 43, 0]);
            spec.upper = Upper::Raw {
                protocol: named,
                len: 0,
            };
            spec.payload.clear();
            let ending = pick(rng, &[59, 17, 58, 6]);
            spec.trailer = Extension::DestinationOptions { len_units: 0 }.encode(ending);
            if ending == 6 {
                spec.trailer.extend(tcp_elsewhere());
            }
            format!(
                ", the chain ends naming header {named}; after the IP end a header naming {ending}"
            )
        }
        2 | 3 => {
            let delta = rng.random_range(1..=64);
            spec.ip_length_delta = delta;
            format!(", IP length {delta} more than the packet")
        }
        4 => {
            let delta = -rng.random_range(1..=upper_len.max(1));
            spec.ip_length_delta = delta;
            format!(", IP length {delta} (packet bytes after the IP end)")
        }
        _ => {
            let len = rng.random_range(1..=24usize);
            spec.trailer = (0..len).map(|_| rng.random()).collect();
            spec.ip_length_delta = rng.random_range(1..=len as i32);
            format!(
                ", {len} random bytes after the packet, {} of them inside the IP length",
                spec.ip_length_delta
            )
        }
    }
}

/// A TCP datagram in two fragments whose first one's headers straddle the IP end: its bytes
/// stop inside the TCP header (IPv4: 8 or 16 bytes of it) or where the IPv6 extension chain
/// names one more header, and a trailer after the IP length reads as the rest (a header
/// ending the chain, one leading to TCP to another port, a TCP header, the rest of a TCP
/// header, or noise). A gateway's kernel trims the trailer before forwarding; the second
/// fragment completes the datagram as built.
pub fn straddling_fragments(rng: &mut Rng, policy: &GeneratedPolicy) -> Vec<GeneratedFrame> {
    let v4 = rng.random_bool(0.4);
    let (src, dst) = endpoints_of(rng, policy, v4);
    let mut spec = FrameSpec::tcp(src, dst, 0, 0);
    spec.upper = tcp_upper(rng, policy);
    if rng.random_bool(0.2) {
        spec = spec.wrappers(&wrappers(rng, v4));
    }
    let tcp_elsewhere = FrameSpec::tcp(src, dst, pick(rng, &OTHER_PORTS), TCP_SYN).transport();
    let noise = |rng: &mut Rng| -> Vec<u8> {
        (0..rng.random_range(1..=24))
            .map(|_| rng.random())
            .collect()
    };
    let (at, trailer) = if v4 {
        let at = pick(rng, &[8, 16]);
        let trailer = match rng.random_range(0..3) {
            0 => tcp_elsewhere[at..].to_vec(),
            1 => spec.transport()[at..].to_vec(),
            _ => noise(rng),
        };
        (at, trailer)
    } else {
        if rng.random_bool(0.2) {
            spec = spec.extension(Extension::HopByHop { len_units: 0 });
        }
        spec = spec.extension(Extension::Fragment {
            offset: 0,
            more: false,
        });
        // Headers Linux's reassembly walks (it drops a first fragment whose chain visibly
        // stops short of the upper layer, but not one whose chain runs past its end).
        let mut lens = Vec::new();
        for _ in 0..rng.random_range(1..=3) {
            let len_units = rng.random_range(0..=1);
            spec = spec.extension(if rng.random_bool(0.7) {
                Extension::DestinationOptions { len_units }
            } else {
                Extension::Routing { len_units }
            });
            lens.push((usize::from(len_units) + 1) * 8);
        }
        let at = lens[..rng.random_range(1..=lens.len())].iter().sum();
        let trailer = match rng.random_range(0..5) {
            0 => Extension::DestinationOptions { len_units: 0 }.encode(pick(rng, &[59, 58])),
            1 => {
                let mut bytes = Extension::DestinationOptions { len_units: 0 }.encode(17);
                bytes.extend_from_slice(&[0x9c, 0x40, 0, 53, 0, 8, 0, 0]);
                bytes
            }
            2 => {
                let mut bytes = Extension::DestinationOptions { len_units: 0 }.encode(6);
                bytes.extend_from_slice(&tcp_elsewhere);
                bytes
            }
            3 => tcp_elsewhere.clone(),
            _ => noise(rng),
        };
        (at, trailer)
    };
    let (first, second) = spec.fragments(at);
    let first = first.trailer(&trailer);
    let whole = format!(
        "{src} -> {dst} {:?} wrappers {:?} extensions {:?}",
        spec.upper, spec.wrappers, spec.extensions
    );
    vec![
        GeneratedFrame {
            bytes: first.build(),
            description: format!(
                "first fragment ({at} bytes) of {whole}, {} bytes after the IP end: {trailer:02x?}",
                trailer.len()
            ),
        },
        GeneratedFrame {
            bytes: second.build(),
            description: format!("second fragment (from byte {at}) of {whole}"),
        },
    ]
}

/// One datagram as the frames that carry it: mostly one frame (`random_frame`), sometimes a
/// TCP datagram in two fragments whose first one straddles the IP end (the pair a kernel
/// oracle needs: reassembled, it shows what the gateway let through).
pub fn random_datagram(rng: &mut Rng, policy: &GeneratedPolicy) -> Vec<GeneratedFrame> {
    if rng.random_bool(0.03) {
        straddling_fragments(rng, policy)
    } else {
        vec![random_frame(rng, policy)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_reproduce() {
        let frames = |seed| {
            let mut rng = rng(seed);
            let policy = random_policy(&mut rng);
            (0..200)
                .map(|_| random_frame(&mut rng, &policy).bytes)
                .collect::<Vec<_>>()
        };
        assert_eq!(frames(7), frames(7));
        assert_ne!(frames(7), frames(8));
    }

    #[test]
    fn policies_cover_both_families_and_modes() {
        let mut rng = rng(1);
        for _ in 0..50 {
            let policy = random_policy(&mut rng);
            let subscribers = &policy.desired.subscribers;
            assert!(subscribers.keys().any(|p| matches!(p, IpNet::V4(_))));
            assert!(subscribers.keys().any(|p| matches!(p, IpNet::V6(_))));
            assert!(policy.desired.enforcement.port_count >= 1);
            // Every prefix is a network address (host bits clear), as the config demands.
            for prefix in subscribers.keys().chain(policy.desired.relays.keys()) {
                assert_eq!(*prefix, prefix.trunc(), "{prefix}");
            }
        }
    }

    #[test]
    fn frames_reach_beyond_the_ip_end_deep_stacks_and_odd_ppp() {
        let mut rng = rng(3);
        let mut descriptions = String::new();
        let mut pairs = 0;
        for _ in 0..20 {
            let policy = random_policy(&mut rng);
            for _ in 0..1_000 {
                let datagram = random_datagram(&mut rng, &policy);
                pairs += usize::from(datagram.len() == 2);
                for frame in datagram {
                    descriptions += &frame.description;
                    descriptions.push('\n');
                }
            }
        }
        let count = |needle: &str| descriptions.matches(needle).count();
        let deep_priority_stacks = descriptions
            .lines()
            .filter(|line| line.matches("vid: 0 }").count() >= 3)
            .count();
        let seen = [
            ("bytes after the IP end", count("after the IP end")),
            (
                "IP length larger than the packet",
                count("more than the packet"),
            ),
            (
                "packet bytes after the IP end",
                count("(packet bytes after"),
            ),
            ("IPv4-mapped IPv6 sources", count("::ffff:")),
            ("straddling fragment pairs", pairs),
            ("three or more priority tags", deep_priority_stacks),
            ("VJ uncompressed", count("PppoeWith { protocol: 47,")),
            ("VJ compressed", count("PppoeWith { protocol: 45,")),
            ("CCP datagrams", count("PppoeWith { protocol: 253,")),
            ("multilink", count("PppoeWith { protocol: 61,")),
            ("wrong PPPoE lengths", count("length_delta: -")),
        ];
        for (what, count) in seen {
            assert!(
                count >= 20,
                "{what}: {count} in 20,000 datagrams, expected at least 20"
            );
        }
    }
}
