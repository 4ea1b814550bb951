//! Header cursor: from the first byte of the Ethernet frame to the TCP destination port.
//!
//! Every read is bounds-checked against the end of the frame before it happens, every step
//! advances by the header's real length (IPv4 IHL, IPv6 extension header lengths), and every
//! loop is bounded by a named constant. What cannot be parsed is said so in the result, never
//! guessed: the policy decides what an unreachable TCP header means.

use smtpguard_common::maps::{MAX_IPV6_EXT_HEADERS, MAX_VLAN_TAGS};

const ETH_HEADER_LEN: usize = 14;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const ETH_P_QINQ_9100: u16 = 0x9100;
const ETH_P_PPPOE_SESSION: u16 = 0x8864;
const VLAN_TAG_LEN: usize = 4;
const PPPOE_HEADER_LEN: usize = 6;
const PPP_IPV4: u16 = 0x0021;
const PPP_IPV6: u16 = 0x0057;

const IPV4_MIN_HEADER_LEN: usize = 20;
const IPV4_MORE_FRAGMENTS: u16 = 0x2000;
const IPV4_OFFSET_MASK: u16 = 0x1fff;
const IPV6_HEADER_LEN: usize = 40;
const IPV6_FRAGMENT_HEADER_LEN: usize = 8;
const IPV6_OFFSET_MASK: u16 = 0xfff8;
const IPV6_MORE_FRAGMENTS: u16 = 0x0001;
const TCP_MIN_HEADER_LEN: usize = 20;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_DSTOPTS: u8 = 60;
const IPPROTO_MOBILITY: u8 = 135;
const IPPROTO_HIP: u8 = 139;
const IPPROTO_SHIM6: u8 = 140;

/// Furthest offset a header may start at. Keeps every offset small enough for the verifier's
/// packet-pointer arithmetic and bounds the work spent on absurd extension-header chains.
const MAX_HEADER_OFFSET: usize = 4096;

/// The readable bytes of a frame: `[start, end)` as the program context gives them.
pub struct Frame {
    start: usize,
    end: usize,
}

/// A bounds-checked window into the frame: `Frame::header` has proved that `len` bytes from
/// the pointer are readable, and every accessor below is called with constant offsets inside
/// the length it was checked for.
#[derive(Clone, Copy)]
struct Header(*const u8);

impl Header {
    #[inline(always)]
    fn u8(self, at: usize) -> u8 {
        // SAFETY: `at` is inside the length checked by `Frame::header` (see the type's comment).
        unsafe { *self.0.add(at) }
    }

    #[inline(always)]
    fn be16(self, at: usize) -> u16 {
        u16::from_be_bytes([self.u8(at), self.u8(at + 1)])
    }

    #[inline(always)]
    fn bytes<const N: usize>(self, at: usize) -> [u8; N] {
        // SAFETY: as for `u8`; packet memory may be unaligned, so read it as such.
        unsafe { core::ptr::read_unaligned(self.0.add(at) as *const [u8; N]) }
    }
}

impl Frame {
    #[inline(always)]
    pub fn new(start: usize, end: usize) -> Self {
        Self { start, end }
    }

    #[inline(always)]
    fn header(&self, offset: usize, len: usize) -> Option<Header> {
        // Needed by the verifier: an offset with a known upper bound.
        if offset > MAX_HEADER_OFFSET {
            return None;
        }
        let at = self.start + offset;
        if at + len > self.end {
            return None;
        }
        Some(Header(at as *const u8))
    }
}

/// Source and destination of an IP packet, in their family's width.
#[derive(Clone, Copy)]
pub enum Addresses {
    V4 { src: [u8; 4], dst: [u8; 4] },
    V6 { src: [u8; 16], dst: [u8; 16] },
}

/// What the parser found above the IP header.
#[derive(Clone, Copy)]
pub enum Transport {
    /// A whole TCP base header (20 bytes) was reachable.
    Tcp { dst_port: u16, flags: u8 },
    /// Not TCP, or a non-first fragment that carries no TCP header: nothing to judge.
    Other,
    /// TCP, or possibly TCP behind extension headers, whose header lies beyond the frame or
    /// beyond the parser's bounds (IPv4 IHL < 5, a chain longer than the limit, truncation).
    Unreachable,
    /// A fragment built to hide or overwrite the TCP header: an IPv4 TCP fragment at offset
    /// 1 (RFC 1858, RFC 3128), or a first fragment that lacks the whole TCP header (RFC 7112).
    EvasiveFragment,
}

pub struct Packet {
    pub addresses: Addresses,
    pub transport: Transport,
}

pub enum Parsed {
    /// The frame ends, or is inconsistent, before the IP addresses.
    Malformed,
    /// Not IPv4 or IPv6 (ARP, PPPoE discovery, LCP, other ethertypes).
    NotIp,
    Ip(Packet),
}

#[inline(always)]
fn is_vlan(ethertype: u16) -> bool {
    ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD || ethertype == ETH_P_QINQ_9100
}

#[inline(always)]
pub fn parse(frame: &Frame) -> Parsed {
    let Some(eth) = frame.header(0, ETH_HEADER_LEN) else {
        return Parsed::Malformed;
    };
    let mut ethertype = eth.be16(12);
    let mut offset = ETH_HEADER_LEN;

    for _ in 0..MAX_VLAN_TAGS {
        if !is_vlan(ethertype) {
            break;
        }
        let Some(tag) = frame.header(offset, VLAN_TAG_LEN) else {
            return Parsed::Malformed;
        };
        ethertype = tag.be16(2);
        offset += VLAN_TAG_LEN;
    }
    if is_vlan(ethertype) {
        // More tags than the gateway's stack would ever strip: it cannot route this frame.
        return Parsed::Malformed;
    }

    if ethertype == ETH_P_PPPOE_SESSION {
        // PPPoE header, then the PPP protocol field: two bytes, or one when the peer uses
        // protocol-field compression (RFC 1661: an odd first byte ends the field).
        // Only the field's real length is required: a frame that ends right after a
        // one-byte protocol is whole (found by the differential fuzzer, which once saw such
        // a frame called malformed).
        let Some(pppoe) = frame.header(offset, PPPOE_HEADER_LEN + 1) else {
            return Parsed::Malformed;
        };
        let first = pppoe.u8(PPPOE_HEADER_LEN);
        let protocol = if first & 1 == 1 {
            offset += PPPOE_HEADER_LEN + 1;
            first as u16
        } else {
            let Some(pppoe) = frame.header(offset, PPPOE_HEADER_LEN + 2) else {
                return Parsed::Malformed;
            };
            offset += PPPOE_HEADER_LEN + 2;
            pppoe.be16(PPPOE_HEADER_LEN)
        };
        ethertype = match protocol {
            PPP_IPV4 => ETH_P_IPV4,
            PPP_IPV6 => ETH_P_IPV6,
            _ => return Parsed::NotIp,
        };
    }

    match ethertype {
        ETH_P_IPV4 => parse_ipv4(frame, offset),
        ETH_P_IPV6 => parse_ipv6(frame, offset),
        _ => Parsed::NotIp,
    }
}

#[inline(always)]
fn parse_ipv4(frame: &Frame, offset: usize) -> Parsed {
    let Some(ip) = frame.header(offset, IPV4_MIN_HEADER_LEN) else {
        return Parsed::Malformed;
    };
    let version_ihl = ip.u8(0);
    if version_ihl >> 4 != 4 {
        return Parsed::Malformed;
    }
    let header_len = (version_ihl & 0x0f) as usize * 4;
    let fragment = ip.be16(6);
    let fragment_offset = fragment & IPV4_OFFSET_MASK;
    let transport = if ip.u8(9) != IPPROTO_TCP {
        Transport::Other
    } else if fragment_offset == 1 {
        Transport::EvasiveFragment
    } else if fragment_offset > 1 {
        Transport::Other
    } else if header_len < IPV4_MIN_HEADER_LEN {
        Transport::Unreachable
    } else {
        tcp(
            frame,
            offset + header_len,
            fragment & IPV4_MORE_FRAGMENTS != 0,
        )
    };
    Parsed::Ip(Packet {
        addresses: Addresses::V4 {
            src: ip.bytes(12),
            dst: ip.bytes(16),
        },
        transport,
    })
}

#[inline(always)]
fn parse_ipv6(frame: &Frame, offset: usize) -> Parsed {
    let Some(ip) = frame.header(offset, IPV6_HEADER_LEN) else {
        return Parsed::Malformed;
    };
    if ip.u8(0) >> 4 != 6 {
        return Parsed::Malformed;
    }
    Parsed::Ip(Packet {
        addresses: Addresses::V6 {
            src: ip.bytes(8),
            dst: ip.bytes(24),
        },
        transport: ipv6_transport(frame, offset + IPV6_HEADER_LEN, ip.u8(6)),
    })
}

#[inline(always)]
fn is_ipv6_extension(next: u8) -> bool {
    matches!(
        next,
        IPPROTO_HOPOPTS
            | IPPROTO_ROUTING
            | IPPROTO_FRAGMENT
            | IPPROTO_AH
            | IPPROTO_DSTOPTS
            | IPPROTO_MOBILITY
            | IPPROTO_HIP
            | IPPROTO_SHIM6
    )
}

/// Walks the extension-header chain to the upper-layer header.
#[inline(always)]
fn ipv6_transport(frame: &Frame, mut offset: usize, mut next: u8) -> Transport {
    let mut first_fragment = false;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        if !is_ipv6_extension(next) {
            break;
        }
        let Some(extension) = frame.header(offset, 2) else {
            return unreachable(first_fragment);
        };
        let len = match next {
            IPPROTO_FRAGMENT => {
                let Some(fragment) = frame.header(offset, IPV6_FRAGMENT_HEADER_LEN) else {
                    return unreachable(first_fragment);
                };
                let offset_and_flags = fragment.be16(2);
                if offset_and_flags & IPV6_OFFSET_MASK != 0 {
                    // A later fragment: no TCP header here. Its first fragment was judged.
                    return Transport::Other;
                }
                first_fragment |= offset_and_flags & IPV6_MORE_FRAGMENTS != 0;
                IPV6_FRAGMENT_HEADER_LEN
            }
            // AH counts its length in 4-octet units, minus 2 (RFC 4302).
            IPPROTO_AH => (extension.u8(1) as usize + 2) * 4,
            // The others in 8-octet units, not counting the first (RFC 8200).
            _ => (extension.u8(1) as usize + 1) * 8,
        };
        next = extension.u8(0);
        offset += len;
    }
    if next == IPPROTO_TCP {
        tcp(frame, offset, first_fragment)
    } else if is_ipv6_extension(next) {
        // The chain is longer than the parser walks.
        unreachable(first_fragment)
    } else {
        Transport::Other
    }
}

#[inline(always)]
fn tcp(frame: &Frame, offset: usize, first_fragment: bool) -> Transport {
    match frame.header(offset, TCP_MIN_HEADER_LEN) {
        Some(tcp) => Transport::Tcp {
            dst_port: tcp.be16(2),
            flags: tcp.u8(13),
        },
        None => unreachable(first_fragment),
    }
}

/// A header beyond reach is evasion when the packet is a first fragment: RFC 7112 requires
/// the first fragment to hold the whole header chain, TCP header included.
#[inline(always)]
fn unreachable(first_fragment: bool) -> Transport {
    if first_fragment {
        Transport::EvasiveFragment
    } else {
        Transport::Unreachable
    }
}
