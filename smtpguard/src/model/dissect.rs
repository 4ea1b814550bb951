//! What the specification sees in a frame: the link layer peeled off, the IP addresses, and
//! what lies above IP as far as the TCP header.
//!
//! Written from the data-plane specification (issue #3 and the README's "How it decides"),
//! as a plain walk over a byte slice: every field is read with `slice::get`, so a frame that
//! ends early simply yields `None` at the point where it ends.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Link-layer type of a VLAN tag: 802.1Q, 802.1ad, and the older 0x9100 QinQ.
const VLAN_TPIDS: [u16; 3] = [0x8100, 0x88a8, 0x9100];
/// The gateway's stack strips at most two tags; a third makes the frame unroutable.
const MAX_TAGS: usize = 2;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERTYPE_PPPOE_SESSION: u16 = 0x8864;
const PPP_IPV4: u16 = 0x0021;
const PPP_IPV6: u16 = 0x0057;
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
    /// Ends (or is inconsistent) before both IP addresses are known: cut Ethernet, VLAN,
    /// PPPoE or IP header, an IP version that does not match the ethertype, three tags.
    Malformed,
    /// Not IP at all: ARP, PPPoE discovery or LCP, any other ethertype.
    NotIp,
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
    let Some((ethertype, ip_at)) = link_layer(frame) else {
        return Dissection::Malformed;
    };
    match ethertype {
        Some(ETHERTYPE_IPV4) => ipv4(frame, ip_at),
        Some(ETHERTYPE_IPV6) => ipv6(frame, ip_at),
        _ => Dissection::NotIp,
    }
}

/// Ethernet, up to two VLAN tags, an optional PPPoE session header. Returns the network
/// protocol as an ethertype (`None` for a PPP protocol other than IP) and where it starts;
/// `None` when the link layer itself is cut or has too many tags.
fn link_layer(frame: &[u8]) -> Option<(Option<u16>, usize)> {
    let mut at = 12;
    let mut ethertype = be16(frame, at)?;
    at += 2;
    let mut tags = 0;
    while VLAN_TPIDS.contains(&ethertype) {
        if tags == MAX_TAGS {
            return None;
        }
        ethertype = be16(frame, at + 2)?;
        at += 4;
        tags += 1;
    }
    if ethertype != ETHERTYPE_PPPOE_SESSION {
        return Some((Some(ethertype), at));
    }
    // PPP protocol field: one byte when compressed (RFC 1661 §6.5: a protocol's first byte
    // is even, its last odd, so an odd first byte is a whole one-byte field).
    let first = *frame.get(at + PPPOE_HEADER)?;
    let (protocol, len) = if first & 1 == 1 {
        (u16::from(first), 1)
    } else {
        (be16(frame, at + PPPOE_HEADER)?, 2)
    };
    let ethertype = match protocol {
        PPP_IPV4 => Some(ETHERTYPE_IPV4),
        PPP_IPV6 => Some(ETHERTYPE_IPV6),
        _ => None,
    };
    Some((ethertype, at + PPPOE_HEADER + len))
}

fn ipv4(frame: &[u8], at: usize) -> Dissection {
    let Some(header) = array::<20>(frame, at) else {
        return Dissection::Malformed;
    };
    if header[0] >> 4 != 4 {
        return Dissection::Malformed;
    }
    let header_len = usize::from(header[0] & 0x0f) * 4;
    let flags_offset = u16::from_be_bytes([header[6], header[7]]);
    let fragment_offset = flags_offset & 0x1fff;
    let more_fragments = flags_offset & 0x2000 != 0;
    let above = if header[9] != PROTO_TCP {
        AboveIp::NotTcp
    } else if fragment_offset == 1 {
        // RFC 1858 / RFC 3128: offset 1 overwrites the TCP flags and ports of fragment 0.
        AboveIp::EvasiveFragment
    } else if fragment_offset > 1 {
        AboveIp::NotTcp
    } else if header_len < 20 {
        // IHL below 5: the TCP header has no defined place.
        AboveIp::TcpOutOfReach
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
