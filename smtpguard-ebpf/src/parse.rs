//! Header cursor: from the first byte of the frame to the TCP destination port.
//!
//! Every read is bounds-checked twice before it happens: against the end of the readable
//! data (what the verifier needs) and against the end of what the gateway's kernel keeps of
//! the frame. The kernel trims a frame to its PPPoE length and then to its IP length before
//! it routes the packet (`pppoe_rcv` in drivers/net/ppp/pppoe.c, `ip_rcv_core` in
//! net/ipv4/ip_input.c, `ip6_rcv_core` in net/ipv6/ip6_input.c, all `pskb_trim_rcsum`), so
//! bytes past those lengths are never forwarded and must never decide a verdict.
//!
//! Every step advances by the header's real length (IPv4 IHL, IPv6 extension header lengths),
//! and every loop is bounded by a named constant. What cannot be parsed is said so in the
//! result, never guessed: the policy decides what an unreachable TCP header means.
//!
//! `Parsed::Malformed` passes the frame untouched, so it is returned only where the Linux
//! receive path provably discards the frame; each such return names the kernel function that
//! does (read in the sources of the kernel these machines run, 6.18; tests/tests/malformed.rs
//! shows each case is not forwarded by a real gateway). Anything else the parser cannot see through is
//! `LinkUnparseable` or an unreachable TCP header, and follows the `unparseable` setting.

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
/// Van Jacobson TCP/IP header compression (RFC 1144): an uncompressed frame carries a whole
/// IPv4 + TCP header whose protocol byte holds the connection's slot number; the kernel's
/// `slhc_remember` restores it to 6 (TCP) and routes the segment, SYN included.
const PPP_VJ_UNCOMPRESSED: u16 = 0x002f;
/// Compressed datagrams (CCP, RFC 1962), per link or per bundle, and multilink fragments
/// (RFC 1990): `ppp_generic` turns them back into PPP frames of any protocol, IP included.
const PPP_COMPRESSED: u16 = 0x00fd;
const PPP_COMPRESSED_LINK: u16 = 0x00fb;
const PPP_MULTILINK: u16 = 0x003d;

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

/// The frame as the program context gives it: `[start, end)` readable, and `limit` bytes from
/// `start` that the kernel keeps (the frame's length at first, cut down to the PPPoE payload
/// and the IP packet as the parser learns them). At TC the readable part can be shorter than
/// the packet; what lies beyond it is unreachable, never absent.
#[derive(Clone, Copy)]
pub struct Frame {
    start: usize,
    end: usize,
    limit: usize,
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
    /// `len` is the packet's whole length from `start` (the skb's at TC, where only part of it
    /// may be readable).
    #[inline(always)]
    pub fn new(start: usize, end: usize, len: usize) -> Self {
        Self {
            start,
            end,
            limit: len,
        }
    }

    /// Every offset is a sum of bounded header lengths (at most four tags, PPPoE, an IPv4
    /// header of at most 60 bytes or ten IPv6 extension headers of at most 2,048 each), so the
    /// verifier knows it stays far below the 64 KiB it allows a packet pointer to move, and no
    /// test of the offset itself is needed.
    #[inline(always)]
    fn header(&self, offset: usize, len: usize) -> Option<Header> {
        let at = self.start + offset;
        // Needed by the verifier: the read stays below the packet's end pointer. It comes
        // first: at XDP the limit starts as `end - start`, and LLVM drops whichever of the two
        // tests the other implies, which must not be this one.
        if at + len > self.end {
            return None;
        }
        // What the kernel keeps: a header past it is never forwarded.
        if offset + len > self.limit {
            return None;
        }
        Some(Header(at as *const u8))
    }

    /// The frame as the kernel keeps it once it has trimmed it to `len` bytes from `start`;
    /// the caller has checked that `len` is not beyond the current limit.
    #[inline(always)]
    fn trimmed(self, len: usize) -> Self {
        Self { limit: len, ..self }
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
    /// A whole TCP base header (20 bytes) was reachable at `offset` from the frame's start.
    Tcp {
        dst_port: u16,
        flags: u8,
        offset: usize,
    },
    /// Not TCP, or a non-first fragment that carries no TCP header: nothing to judge.
    Other,
    /// TCP, or possibly TCP behind extension headers, whose header lies beyond the IP packet's
    /// end, beyond the readable data, or beyond the parser's bounds (a chain longer than the
    /// limit).
    Unreachable,
    /// A fragment built to hide or overwrite the TCP header: an IPv4 TCP fragment at offset
    /// 1 (RFC 1858, RFC 3128), or a first fragment that lacks the whole TCP header (RFC 7112).
    EvasiveFragment,
}

pub struct Packet {
    pub addresses: Addresses,
    pub transport: Transport,
    /// Where the IP header starts, and the PPPoE session header (0: none; it never starts a
    /// frame), and whether the IPv4 header came as Van Jacobson uncompressed TCP. Only a reply
    /// needs them: the decision leaves them unread.
    pub ip_offset: usize,
    pub pppoe_offset: usize,
    pub vj: bool,
}

pub enum Parsed {
    /// Broken in a way the gateway's kernel discards (each case cites where).
    Malformed,
    /// Not IPv4 or IPv6 (ARP, PPPoE discovery, LCP, other ethertypes).
    NotIp,
    /// The kernel may route an IP packet out of this frame, but the parser cannot see it:
    /// more VLAN tags than it walks, a PPP compressed or multilink frame.
    LinkUnparseable,
    Ip(Packet),
}

/// Where the frame starts.
#[derive(Clone, Copy)]
pub enum Link {
    /// An Ethernet header; `offloaded_tags` VLAN tags were already taken out of the frame into
    /// the skb's metadata (the outer tag at TC ingress) and count toward the tag limit.
    Ethernet { offloaded_tags: usize },
    /// The IP header itself, on a device without a link-layer header (TUN, WireGuard, IPIP,
    /// GRE): the protocol comes from the skb.
    Ip { ethertype: u16 },
}

#[inline(always)]
fn is_vlan(ethertype: u16) -> bool {
    ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD || ethertype == ETH_P_QINQ_9100
}

#[inline(always)]
pub fn parse(frame: Frame, link: Link) -> Parsed {
    match link {
        Link::Ethernet { offloaded_tags } => parse_ethernet(frame, offloaded_tags),
        Link::Ip { ethertype } => parse_network(frame, ethertype, 0),
    }
}

#[inline(always)]
fn parse_ethernet(frame: Frame, offloaded_tags: usize) -> Parsed {
    // `eth_type_trans` (net/ethernet/eth.c) reads the 14-byte header of every frame, and
    // veth's `__dev_forward_skb` and the drivers refuse shorter ones: nothing shorter is
    // received as IP.
    let Some(eth) = frame.header(0, ETH_HEADER_LEN) else {
        return Parsed::Malformed;
    };
    let mut ethertype = eth.be16(12);
    let mut offset = ETH_HEADER_LEN;

    // Linux strips any number of VID-0 (priority) tags of 802.1Q and 802.1ad without any VLAN
    // configuration (`__netif_receive_skb_core`, `check_vlan_id`, net/core/dev.c), and tags
    // of configured VLAN devices: every tag is walked, whatever its VID.
    let mut tags = offloaded_tags;
    for _ in 0..MAX_VLAN_TAGS {
        if !is_vlan(ethertype) {
            break;
        }
        // A tag cut short: `skb_vlan_untag` (net/core/skbuff.c) frees the frame; a 0x9100
        // tag is never untagged, and no protocol handler takes its ethertype.
        let Some(tag) = frame.header(offset, VLAN_TAG_LEN) else {
            return Parsed::Malformed;
        };
        ethertype = tag.be16(2);
        offset += VLAN_TAG_LEN;
        tags += 1;
    }
    if is_vlan(ethertype) || tags > MAX_VLAN_TAGS {
        // More tags than the parser walks, which the kernel may still strip.
        return Parsed::LinkUnparseable;
    }

    if ethertype != ETH_P_PPPOE_SESSION {
        return parse_network(frame, ethertype, offset);
    }
    // `pppoe_rcv` (drivers/net/ppp/pppoe.c) drops a frame without the whole 6-byte header or
    // shorter than its PPPoE length, and trims the rest to that length.
    let Some(pppoe) = frame.header(offset, PPPOE_HEADER_LEN) else {
        return Parsed::Malformed;
    };
    let pppoe_offset = offset;
    let payload_end = offset + PPPOE_HEADER_LEN + pppoe.be16(4) as usize;
    if payload_end > frame.limit {
        return Parsed::Malformed;
    }
    let frame = frame.trimmed(payload_end);
    offset += PPPOE_HEADER_LEN;
    // The PPP protocol field: two bytes, or one when the peer uses protocol-field compression
    // (RFC 1661: an odd first byte ends the field). `ppp_input` (ppp_generic.c,
    // `ppp_decompress_proto`) drops a payload too short to hold it.
    let Some(field) = frame.header(offset, 1) else {
        return Parsed::Malformed;
    };
    let first = field.u8(0);
    let protocol = if first & 1 == 1 {
        offset += 1;
        first as u16
    } else {
        let Some(field) = frame.header(offset, 2) else {
            return Parsed::Malformed;
        };
        offset += 2;
        field.be16(0)
    };
    match protocol {
        PPP_IPV4 => parse_ipv4(frame, offset, false, pppoe_offset),
        PPP_IPV6 => parse_ipv6(frame, offset, pppoe_offset),
        PPP_VJ_UNCOMPRESSED => parse_ipv4(frame, offset, true, pppoe_offset),
        PPP_COMPRESSED | PPP_COMPRESSED_LINK | PPP_MULTILINK => Parsed::LinkUnparseable,
        // Everything else `ppp_generic` hands to pppd (LCP, IPCP, ...) or drops. VJ-compressed
        // TCP (0x002d) included: it carries no ports, addresses or SYN of its own and only
        // continues a connection whose uncompressed header this program judged and passed
        // (`slhc_uncompress` takes them from the slot `slhc_remember` filled).
        _ => Parsed::NotIp,
    }
}

#[inline(always)]
fn parse_network(frame: Frame, ethertype: u16, offset: usize) -> Parsed {
    match ethertype {
        ETH_P_IPV4 => parse_ipv4(frame, offset, false, 0),
        ETH_P_IPV6 => parse_ipv6(frame, offset, 0),
        _ => Parsed::NotIp,
    }
}

/// An IPv4 header at `offset`; `vj_slot` when its protocol byte holds a Van Jacobson slot
/// number, which the kernel turns into TCP. `pppoe_offset`: where the PPPoE session header
/// starts, or 0.
#[inline(always)]
fn parse_ipv4(frame: Frame, offset: usize, vj_slot: bool, pppoe_offset: usize) -> Parsed {
    // `ip_rcv_core` (net/ipv4/ip_input.c) drops a packet shorter than the base header, of
    // another version, with an IHL below 5, shorter than its total length or with a total
    // length below its header length; it trims the rest to the total length.
    let Some(ip) = frame.header(offset, IPV4_MIN_HEADER_LEN) else {
        return Parsed::Malformed;
    };
    let version_ihl = ip.u8(0);
    if version_ihl >> 4 != 4 {
        return Parsed::Malformed;
    }
    let header_len = (version_ihl & 0x0f) as usize * 4;
    if header_len < IPV4_MIN_HEADER_LEN {
        return Parsed::Malformed;
    }
    let total_len = ip.be16(2) as usize;
    let frame = if total_len >= header_len {
        if offset + total_len > frame.limit {
            return Parsed::Malformed;
        }
        frame.trimmed(offset + total_len)
    } else if total_len == 0 {
        // How a GRO'd BIG TCP packet says "as long as the skb" (`iph_totlen`); the kernel
        // drops any other one, so judging it on the frame is safe.
        frame
    } else {
        return Parsed::Malformed;
    };
    let protocol = if vj_slot { IPPROTO_TCP } else { ip.u8(9) };
    let fragment = ip.be16(6);
    let fragment_offset = fragment & IPV4_OFFSET_MASK;
    let transport = if protocol != IPPROTO_TCP {
        Transport::Other
    } else if fragment_offset == 1 {
        Transport::EvasiveFragment
    } else if fragment_offset > 1 {
        Transport::Other
    } else {
        tcp(
            &frame,
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
        ip_offset: offset,
        pppoe_offset,
        vj: vj_slot,
    })
}

#[inline(always)]
fn parse_ipv6(frame: Frame, offset: usize, pppoe_offset: usize) -> Parsed {
    // `ip6_rcv_core` (net/ipv6/ip6_input.c) drops a packet shorter than the fixed header, of
    // another version, or shorter than 40 bytes plus its payload length, and trims the rest.
    let Some(ip) = frame.header(offset, IPV6_HEADER_LEN) else {
        return Parsed::Malformed;
    };
    if ip.u8(0) >> 4 != 6 {
        return Parsed::Malformed;
    }
    let payload_len = ip.be16(4) as usize;
    let next = ip.u8(6);
    // A payload length of 0 before a hop-by-hop header announces a jumbogram: the kernel trims
    // it only to a jumbo payload length above 65,535 (`ipv6_hop_jumbo`), far past any header
    // this parser reads, so the frame's own end is the bound.
    let frame = if payload_len == 0 && next == IPPROTO_HOPOPTS {
        frame
    } else if offset + IPV6_HEADER_LEN + payload_len > frame.limit {
        return Parsed::Malformed;
    } else {
        frame.trimmed(offset + IPV6_HEADER_LEN + payload_len)
    };
    Parsed::Ip(Packet {
        addresses: Addresses::V6 {
            src: ip.bytes(8),
            dst: ip.bytes(24),
        },
        transport: ipv6_transport(&frame, offset + IPV6_HEADER_LEN, next),
        ip_offset: offset,
        pppoe_offset,
        vj: false,
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
            offset,
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
