//! What the specification sees in a frame: the link layer peeled off, the IP addresses, and
//! what lies above IP as far as the TCP header.
//!
//! Written from the data-plane specification (issue #3 and the README's "How it decides"),
//! as a plain walk over a byte slice: every field is read with `slice::get`, so a frame that
//! ends early simply yields `None` at the point where it ends.
//!
//! What the gateway's kernel keeps of a frame is what is judged: the slice is cut to the PPPoE
//! length and then to the IP packet's length before anything above is read, as Linux trims the
//! frame before it routes it. A frame is malformed only where Linux discards it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Link-layer type of a VLAN tag: 802.1Q, 802.1ad, and the older 0x9100 QinQ.
const VLAN_TPIDS: [u16; 3] = [0x8100, 0x88a8, 0x9100];
/// The most tags walked (Linux strips any number of priority tags, so more are not malformed
/// but unparseable).
const MAX_TAGS: usize = 4;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERTYPE_PPPOE_SESSION: u16 = 0x8864;
const PPP_IPV4: u16 = 0x0021;
const PPP_IPV6: u16 = 0x0057;
/// Van Jacobson uncompressed TCP: an IPv4 header whose protocol byte is a slot number.
const PPP_VJ_UNCOMPRESSED: u16 = 0x002f;
/// Compressed datagrams (bundle and link) and multilink fragments: any protocol inside.
const PPP_OPAQUE: [u16; 3] = [0x00fd, 0x00fb, 0x003d];
const PPPOE_HEADER: usize = 6;

const PROTO_TCP: u8 = 6;
/// IPv6 extension headers the specification names (RFC 8200 plus AH, mobility, HIP, shim6).
const HOP_BY_HOP: u8 = 0;
const ROUTING: u8 = 43;
const FRAGMENT: u8 = 44;
const AUTHENTICATION: u8 = 51;
const DESTINATION_OPTIONS: u8 = 60;
const MOBILITY: u8 = 135;
const HIP: u8 = 139;
const SHIM6: u8 = 140;
/// The longest extension-header chain walked (the README promises "up to 10 headers").
pub const MAX_EXTENSION_HEADERS: usize = 10;
/// TCP's fixed header: ports, sequence numbers, data offset, flags, window, checksum, urgent.
const TCP_BASE_HEADER: usize = 20;

/// The frame as the policy sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dissection {
    /// What the gateway's kernel discards: a cut Ethernet, VLAN, PPPoE or IP header, a PPPoE
    /// or IP length longer than the frame, an IP version that does not match the ethertype,
    /// an IPv4 header length below 20 or above the total length.
    Malformed,
    /// Not IP at all: ARP, PPPoE discovery or LCP, any other ethertype.
    NotIp,
    /// IP the kernel may route but the specification cannot see: more than four VLAN tags,
    /// a PPP compressed datagram or multilink fragment.
    LinkUnparseable,
    Ip {
        src: IpAddr,
        dst: IpAddr,
        above: AboveIp,
    },
}

/// What follows the IP header(s).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AboveIp {
    /// A whole TCP base header.
    Tcp { dst_port: u16, flags: u8 },
    /// Not TCP, or a later fragment (which carries no TCP header).
    NotTcp,
    /// TCP (or an extension chain that may lead to it) whose header cannot be reached.
    TcpOutOfReach,
    /// A fragment shaped to hide or overwrite the TCP header: IPv4 TCP at fragment offset 1,
    /// or a first fragment that does not hold the whole TCP header.
    EvasiveFragment,
}

fn be16(frame: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]))
}

fn array<const N: usize>(frame: &[u8], at: usize) -> Option<[u8; N]> {
    frame.get(at..at + N)?.try_into().ok()
}

pub fn dissect(frame: &[u8]) -> Dissection {
    let (network, frame, ip_at) = match link_layer(frame) {
        LinkLayer::Malformed => return Dissection::Malformed,
        LinkLayer::Unparseable => return Dissection::LinkUnparseable,
        LinkLayer::Network { network, frame, at } => (network, frame, at),
    };
    match network {
        Network::Ipv4 { vj_slot } => ipv4(frame, ip_at, vj_slot),
        Network::Ipv6 => ipv6(frame, ip_at),
        Network::Other => Dissection::NotIp,
    }
}

/// The IP packet in a frame, the link layer peeled off as [`dissect`] peels it: for reading
/// what the gateway sends toward a subscriber (the kernel oracle reads `reject`'s answers with
/// it). `None` for a frame that carries no IP the specification can see.
pub fn ip_packet(frame: &[u8]) -> Option<&[u8]> {
    match link_layer(frame) {
        LinkLayer::Network {
            network: Network::Ipv4 { vj_slot: false } | Network::Ipv6,
            frame,
            at,
        } => frame.get(at..),
        _ => None,
    }
}

/// The network protocol a link layer carries.
enum Network {
    /// IPv4; `vj_slot` when the protocol byte holds a Van Jacobson slot, not the protocol.
    Ipv4 {
        vj_slot: bool,
    },
    Ipv6,
    Other,
}

enum LinkLayer<'a> {
    Malformed,
    Unparseable,
    /// The protocol, the frame as the kernel keeps it, and where the network header starts.
    Network {
        network: Network,
        frame: &'a [u8],
        at: usize,
    },
}

/// Ethernet, up to four VLAN tags, an optional PPPoE session header.
fn link_layer(frame: &[u8]) -> LinkLayer<'_> {
    let malformed = LinkLayer::Malformed;
    let mut at = 12;
    let Some(mut ethertype) = be16(frame, at) else {
        return malformed;
    };
    at += 2;
    let mut tags = 0;
    while VLAN_TPIDS.contains(&ethertype) {
        if tags == MAX_TAGS {
            return LinkLayer::Unparseable;
        }
        let Some(inner) = be16(frame, at + 2) else {
            return malformed;
        };
        ethertype = inner;
        at += 4;
        tags += 1;
    }
    let network = |ethertype| match ethertype {
        ETHERTYPE_IPV4 => Network::Ipv4 { vj_slot: false },
        ETHERTYPE_IPV6 => Network::Ipv6,
        _ => Network::Other,
    };
    if ethertype != ETHERTYPE_PPPOE_SESSION {
        return LinkLayer::Network {
            network: network(ethertype),
            frame,
            at,
        };
    }
    // The PPPoE length counts the PPP protocol and payload; the rest of the frame is cut off,
    // and a frame shorter than the length is dropped.
    let Some(length) = be16(frame, at + 4) else {
        return malformed;
    };
    let Some(frame) = frame.get(..at + PPPOE_HEADER + usize::from(length)) else {
        return malformed;
    };
    at += PPPOE_HEADER;
    // PPP protocol field: one byte when compressed (RFC 1661 §6.5: a protocol's first byte
    // is even, its last odd, so an odd first byte is a whole one-byte field).
    let Some(&first) = frame.get(at) else {
        return malformed;
    };
    let (protocol, len) = if first & 1 == 1 {
        (u16::from(first), 1)
    } else {
        match be16(frame, at) {
            Some(protocol) => (protocol, 2),
            None => return malformed,
        }
    };
    let network = match protocol {
        PPP_IPV4 => network(ETHERTYPE_IPV4),
        PPP_IPV6 => network(ETHERTYPE_IPV6),
        PPP_VJ_UNCOMPRESSED => Network::Ipv4 { vj_slot: true },
        _ if PPP_OPAQUE.contains(&protocol) => return LinkLayer::Unparseable,
        _ => Network::Other,
    };
    LinkLayer::Network {
        network,
        frame,
        at: at + len,
    }
}

fn ipv4(frame: &[u8], at: usize, vj_slot: bool) -> Dissection {
    let Some(header) = array::<20>(frame, at) else {
        return Dissection::Malformed;
    };
    let header_len = usize::from(header[0] & 0x0f) * 4;
    if header[0] >> 4 != 4 || header_len < 20 {
        return Dissection::Malformed;
    }
    // The total length cuts the frame; 0 leaves it whole (the kernel reads it as "the whole
    // packet" for its own large receive offload and drops it otherwise).
    let total_len = usize::from(u16::from_be_bytes([header[2], header[3]]));
    let frame = match total_len {
        0 => frame,
        _ if total_len < header_len => return Dissection::Malformed,
        _ => match frame.get(..at + total_len) {
            Some(kept) => kept,
            None => return Dissection::Malformed,
        },
    };
    let protocol = if vj_slot { PROTO_TCP } else { header[9] };
    let flags_offset = u16::from_be_bytes([header[6], header[7]]);
    let fragment_offset = flags_offset & 0x1fff;
    let more_fragments = flags_offset & 0x2000 != 0;
    let above = if protocol != PROTO_TCP {
        AboveIp::NotTcp
    } else if fragment_offset == 1 {
        // RFC 1858 / RFC 3128: offset 1 overwrites the TCP flags and ports of fragment 0.
        AboveIp::EvasiveFragment
    } else if fragment_offset > 1 {
        AboveIp::NotTcp
    } else {
        tcp(frame, at + header_len, more_fragments)
    };
    let src: [u8; 4] = header[12..16].try_into().expect("four bytes");
    let dst: [u8; 4] = header[16..20].try_into().expect("four bytes");
    Dissection::Ip {
        src: IpAddr::V4(Ipv4Addr::from(src)),
        dst: IpAddr::V4(Ipv4Addr::from(dst)),
        above,
    }
}

fn ipv6(frame: &[u8], at: usize) -> Dissection {
    let Some(header) = array::<40>(frame, at) else {
        return Dissection::Malformed;
    };
    if header[0] >> 4 != 6 {
        return Dissection::Malformed;
    }
    // The payload length cuts the frame, except 0 before a hop-by-hop header (a jumbogram,
    // whose real length is above 65,535 and so beyond anything read here).
    let payload_len = usize::from(u16::from_be_bytes([header[4], header[5]]));
    let frame = if payload_len == 0 && header[6] == HOP_BY_HOP {
        frame
    } else {
        match frame.get(..at + 40 + payload_len) {
            Some(kept) => kept,
            None => return Dissection::Malformed,
        }
    };
    let src: [u8; 16] = header[8..24].try_into().expect("sixteen bytes");
    let dst: [u8; 16] = header[24..40].try_into().expect("sixteen bytes");
    Dissection::Ip {
        src: IpAddr::V6(Ipv6Addr::from(src)),
        dst: IpAddr::V6(Ipv6Addr::from(dst)),
        above: ipv6_upper(frame, at + 40, header[6]),
    }
}

fn is_extension(next: u8) -> bool {
    matches!(
        next,
        HOP_BY_HOP
            | ROUTING
            | FRAGMENT
            | AUTHENTICATION
            | DESTINATION_OPTIONS
            | MOBILITY
            | HIP
            | SHIM6
    )
}

/// Follows the extension-header chain to TCP.
fn ipv6_upper(frame: &[u8], mut at: usize, mut next: u8) -> AboveIp {
    let mut first_fragment = false;
    let out_of_reach = |first_fragment| {
        if first_fragment {
            AboveIp::EvasiveFragment
        } else {
            AboveIp::TcpOutOfReach
        }
    };
    let mut walked = 0;
    while is_extension(next) {
        if walked == MAX_EXTENSION_HEADERS {
            return out_of_reach(first_fragment);
        }
        walked += 1;
        let (Some(&following), Some(&len_field)) = (frame.get(at), frame.get(at + 1)) else {
            return out_of_reach(first_fragment);
        };
        let len = match next {
            FRAGMENT => {
                let Some(field) = be16(frame, at + 2).filter(|_| frame.len() >= at + 8) else {
                    return out_of_reach(first_fragment);
                };
                if field >> 3 != 0 {
                    // A later fragment: its first fragment carried (and was judged by) the
                    // TCP header.
                    return AboveIp::NotTcp;
                }
                // Offset 0 with more fragments to come; offset 0 without is an atomic
                // fragment, a whole packet.
                first_fragment |= field & 1 == 1;
                8
            }
            // RFC 4302: AH's length is in 4-octet units, minus 2.
            AUTHENTICATION => (usize::from(len_field) + 2) * 4,
            // RFC 8200: 8-octet units, not counting the first 8 octets.
            _ => (usize::from(len_field) + 1) * 8,
        };
        next = following;
        at += len;
    }
    if next == PROTO_TCP {
        tcp(frame, at, first_fragment)
    } else {
        AboveIp::NotTcp
    }
}

/// The TCP base header at `at`; a first fragment without it is evasive (RFC 7112).
fn tcp(frame: &[u8], at: usize, first_fragment: bool) -> AboveIp {
    match frame.get(at..at + TCP_BASE_HEADER) {
        Some(header) => AboveIp::Tcp {
            dst_port: u16::from_be_bytes([header[2], header[3]]),
            flags: header[13],
        },
        None if first_fragment => AboveIp::EvasiveFragment,
        None => AboveIp::TcpOutOfReach,
    }
}
