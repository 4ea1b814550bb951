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
    EnforcementConfig, Mode, Origin, PrefixOrigin, SubscriberPolicy, UnparseableAction,
};

use crate::frames::{
    Extension, FrameSpec, TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN, TPID_8021AD, TPID_8021Q,
    TPID_9100, Upper, Wrapper, arp, ethernet,
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
            enforcement: EnforcementConfig::new(&ports, unparseable),
            subscribers: (0..)
                .zip(subscribers)
                .map(|(rule, (range, mode))| (range, SubscriberPolicy::new(mode, rule)))
                .collect(),
            relays,
            exemptions,
        },
        escalated,
        sources,
        destinations,
    }
}

fn pick<T: Copy>(rng: &mut Rng, items: &[T]) -> T {
    items[rng.random_range(0..items.len())]
}

/// Addresses of one family: mostly from the policy's pools, sometimes anywhere.
fn endpoints(rng: &mut Rng, policy: &GeneratedPolicy) -> (IpAddr, IpAddr) {
    let v4 = rng.random_bool(0.5);
    let of_family = |pool: &[IpAddr]| -> Vec<IpAddr> {
        pool.iter().copied().filter(|a| a.is_ipv4() == v4).collect()
    };
    let sources = of_family(&policy.sources);
    let destinations = of_family(&policy.destinations);
    let src = if rng.random_bool(0.92) {
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

fn upper(rng: &mut Rng, policy: &GeneratedPolicy, v4: bool) -> Upper {
    match rng.random_range(0..100) {
        0..=74 => {
            let ports =
                &policy.desired.enforcement.ports[..policy.desired.enforcement.port_count as usize];
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

fn wrappers(rng: &mut Rng) -> Vec<Wrapper> {
    let mut wrappers = Vec::new();
    let tags = match rng.random_range(0..100) {
        0..=39 => 0,
        40..=69 => 1,
        70..=96 => 2,
        // More tags than the gateway strips.
        _ => 3,
    };
    for _ in 0..tags {
        wrappers.push(Wrapper::Vlan {
            tpid: pick(rng, &TPIDS),
            vid: rng.random_range(1..4095),
        });
    }
    if rng.random_bool(0.3) {
        wrappers.push(Wrapper::Pppoe {
            compressed: rng.random_bool(0.5),
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
    spec = spec.wrappers(&wrappers(rng));
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
    let mut bytes = spec.build();
    let mut description = format!(
        "{src} -> {dst} {:?} wrappers {:?} options {} fragment {:?} extensions {:?} payload {}",
        spec.upper,
        spec.wrappers,
        spec.ipv4_options,
        spec.ipv4_fragment,
        spec.extensions,
        spec.payload.len()
    );

    let link_len = 14 + spec.wrappers.iter().map(|w| w.header_len()).sum::<usize>();
    let upper_len = match spec.upper {
        Upper::Tcp { .. } => 20,
        Upper::Udp { .. } | Upper::Icmp => 8,
        Upper::Raw { len, .. } => len,
    } + spec.payload.len();
    let upper_at = bytes.len() - upper_len;

    if matches!(spec.upper, Upper::Tcp { .. }) {
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
}
