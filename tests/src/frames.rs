//! A small frame builder for tests, the sample capture and benchmarks: Ethernet with VLAN,
//! QinQ and PPPoE wrappers, IPv4 with options and fragments, IPv6 with extension-header
//! chains and fragments, TCP/UDP/ICMP. Lengths and checksums are right unless a test asks
//! for them not to be (truncation happens after building: `build()[..n]`; IP length fields
//! that disagree with the bytes: `ip_length_delta`; bytes after the IP packet: `trailer`).

use std::net::IpAddr;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;

pub const TPID_8021Q: u16 = 0x8100;
pub const TPID_8021AD: u16 = 0x88a8;
pub const TPID_9100: u16 = 0x9100;

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_PPPOE_SESSION: u16 = 0x8864;

/// PPP protocol numbers (RFC 1661, RFC 1144, RFC 1962, RFC 1990).
pub const PPP_IPV4: u16 = 0x0021;
pub const PPP_IPV6: u16 = 0x0057;
/// Van Jacobson compressed TCP/IP: a VJ header (change mask, deltas), no IP header.
pub const PPP_VJ_COMPRESSED: u16 = 0x002d;
/// Van Jacobson uncompressed TCP/IP: a whole IPv4 + TCP header whose IP protocol byte holds
/// the VJ connection (slot) number instead of 6 (`FrameSpec::ipv4_protocol_field`).
pub const PPP_VJ_UNCOMPRESSED: u16 = 0x002f;
/// A multilink (MP) fragment: a piece of a PPP frame, not an IP packet.
pub const PPP_MULTILINK: u16 = 0x003d;
/// A datagram compressed by the method CCP negotiated.
pub const PPP_COMPRESSED_DATAGRAM: u16 = 0x00fd;

/// A link-layer wrapper, outermost first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wrapper {
    Vlan {
        tpid: u16,
        vid: u16,
    },
    /// A PPPoE session header; `compressed` uses the one-byte PPP protocol field.
    Pppoe {
        compressed: bool,
    },
    /// A PPPoE session header with an explicit PPP `protocol` whatever follows (VJ, CCP,
    /// multilink, or IP under its own number), `compressed` in the one-byte form (only for
    /// protocols below 0x100), and a PPPoE length field off from the right one by
    /// `length_delta` (0: right, the PPP protocol field plus the IP packet, no trailer).
    PppoeWith {
        protocol: u16,
        compressed: bool,
        length_delta: i16,
    },
}

impl Wrapper {
    /// A priority tag: a VLAN tag with VID 0 (and priority 0), which Linux strips without any
    /// VLAN configured, as many as are stacked.
    pub const fn priority_tag(tpid: u16) -> Self {
        Wrapper::Vlan { tpid, vid: 0 }
    }

    /// Bytes this wrapper adds to the frame.
    pub fn header_len(self) -> usize {
        match self {
            Wrapper::Vlan { .. } => 4,
            Wrapper::Pppoe { compressed } | Wrapper::PppoeWith { compressed, .. } => {
                if compressed {
                    7
                } else {
                    8
                }
            }
        }
    }
}

/// The deepest encapsulation a subscriber line has: an S-tag, a C-tag, then PPPoE.
pub const QINQ_PPPOE: &[Wrapper] = &[
    Wrapper::Vlan {
        tpid: TPID_8021AD,
        vid: 100,
    },
    Wrapper::Vlan {
        tpid: TPID_8021Q,
        vid: 200,
    },
    Wrapper::Pppoe { compressed: false },
];

/// An IPv6 extension header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extension {
    HopByHop {
        len_units: u8,
    },
    Routing {
        len_units: u8,
    },
    DestinationOptions {
        len_units: u8,
    },
    /// AH; `len_units` is the payload-length field (total = (len + 2) * 4 bytes).
    Authentication {
        len_units: u8,
    },
    Fragment {
        offset: u16,
        more: bool,
    },
    /// Any other header counted in 8-octet units (mobility 135, HIP 139, shim6 140, or a
    /// protocol that is not an extension header at all, which ends the chain).
    Other {
        protocol: u8,
        len_units: u8,
    },
}

impl Extension {
    fn protocol(self) -> u8 {
        match self {
            Extension::HopByHop { .. } => 0,
            Extension::Routing { .. } => 43,
            Extension::DestinationOptions { .. } => 60,
            Extension::Authentication { .. } => 51,
            Extension::Fragment { .. } => 44,
            Extension::Other { protocol, .. } => protocol,
        }
    }

    /// The header's bytes with `next` as its next-header field (e.g. to append one as a
    /// trailer after the IP packet).
    pub fn encode(self, next: u8) -> Vec<u8> {
        match self {
            Extension::HopByHop { len_units }
            | Extension::Routing { len_units }
            | Extension::DestinationOptions { len_units } => {
                let mut bytes = vec![0u8; (len_units as usize + 1) * 8];
                bytes[0] = next;
                bytes[1] = len_units;
                if matches!(self, Extension::Routing { .. }) {
                    bytes[2] = 4; // segment routing type, segments left 0: nothing to process
                } else {
                    // PadN option filling the header (type 1, length).
                    bytes[2] = 1;
                    bytes[3] = (bytes.len() - 4) as u8;
                }
                bytes
            }
            Extension::Authentication { len_units } => {
                let mut bytes = vec![0u8; (len_units as usize + 2) * 4];
                bytes[0] = next;
                bytes[1] = len_units;
                bytes[4..8].copy_from_slice(&0x1000u32.to_be_bytes()); // SPI
                bytes
            }
            Extension::Other { len_units, .. } => {
                let mut bytes = vec![0u8; (len_units as usize + 1) * 8];
                bytes[0] = next;
                bytes[1] = len_units;
                bytes
            }
            Extension::Fragment { offset, more } => {
                let mut bytes = vec![0u8; 8];
                bytes[0] = next;
                let field = (offset << 3) | u16::from(more);
                bytes[2..4].copy_from_slice(&field.to_be_bytes());
                bytes[4..8].copy_from_slice(&0x5eed_u32.to_be_bytes());
                bytes
            }
        }
    }
}

/// The upper layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Upper {
    Tcp {
        src_port: u16,
        dst_port: u16,
        flags: u8,
    },
    Udp {
        src_port: u16,
        dst_port: u16,
    },
    Icmp,
    /// Any other protocol number with `len` bytes of zeros (GRE, SCTP, ...).
    Raw {
        protocol: u8,
        len: usize,
    },
}

/// A frame description; `build()` turns it into bytes.
#[derive(Clone, Debug)]
pub struct FrameSpec {
    pub wrappers: Vec<Wrapper>,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub upper: Upper,
    /// IPv4 options bytes (padded to a multiple of 4 with NOPs).
    pub ipv4_options: usize,
    /// IPv4 fragment offset (in 8-byte units) and more-fragments flag.
    pub ipv4_fragment: Option<(u16, bool)>,
    /// IPv6 extension headers, in order.
    pub extensions: Vec<Extension>,
    /// Keep only this many bytes of the upper-layer header and payload (lengths follow).
    pub upper_len: Option<usize>,
    /// Payload after the upper-layer header.
    pub payload: Vec<u8>,
    /// Bytes after the IP packet, outside every IP length (and outside the PPPoE length).
    pub trailer: Vec<u8>,
    /// Added to the IP length field (IPv4 total length, IPv6 payload length): positive claims
    /// bytes the frame does not have, negative leaves packet bytes beyond the IP end.
    pub ip_length_delta: i32,
    /// The IPv4 protocol byte as sent, when it is not the upper layer's (VJ uncompressed TCP
    /// puts its slot number there).
    pub ipv4_protocol_field: Option<u8>,
}

impl FrameSpec {
    pub fn tcp(src: IpAddr, dst: IpAddr, dst_port: u16, flags: u8) -> Self {
        Self::with_upper(
            src,
            dst,
            Upper::Tcp {
                src_port: 40_000,
                dst_port,
                flags,
            },
        )
    }

    pub fn udp(src: IpAddr, dst: IpAddr, dst_port: u16) -> Self {
        Self::with_upper(
            src,
            dst,
            Upper::Udp {
                src_port: 40_000,
                dst_port,
            },
        )
    }

    pub fn icmp(src: IpAddr, dst: IpAddr) -> Self {
        Self::with_upper(src, dst, Upper::Icmp)
    }

    fn with_upper(src: IpAddr, dst: IpAddr, upper: Upper) -> Self {
        assert_eq!(
            src.is_ipv4(),
            dst.is_ipv4(),
            "{src} and {dst} differ in family"
        );
        Self {
            wrappers: Vec::new(),
            src,
            dst,
            upper,
            ipv4_options: 0,
            ipv4_fragment: None,
            extensions: Vec::new(),
            upper_len: None,
            payload: Vec::new(),
            trailer: Vec::new(),
            ip_length_delta: 0,
            ipv4_protocol_field: None,
        }
    }

    pub fn wrap(mut self, wrapper: Wrapper) -> Self {
        self.wrappers.push(wrapper);
        self
    }

    pub fn wrappers(mut self, wrappers: &[Wrapper]) -> Self {
        self.wrappers.extend_from_slice(wrappers);
        self
    }

    pub fn ipv4_options(mut self, len: usize) -> Self {
        self.ipv4_options = len;
        self
    }

    pub fn ipv4_fragment(mut self, offset: u16, more: bool) -> Self {
        self.ipv4_fragment = Some((offset, more));
        self
    }

    pub fn extension(mut self, extension: Extension) -> Self {
        self.extensions.push(extension);
        self
    }

    pub fn upper_len(mut self, len: usize) -> Self {
        self.upper_len = Some(len);
        self
    }

    pub fn payload(mut self, payload: &[u8]) -> Self {
        self.payload = payload.to_vec();
        self
    }

    /// Appends `bytes` after the IP packet; the IP (and PPPoE) lengths do not count them.
    pub fn trailer(mut self, bytes: &[u8]) -> Self {
        self.trailer = bytes.to_vec();
        self
    }

    /// Makes the IP length field claim `delta` bytes more (or, negative, fewer) than the
    /// packet has; the bytes themselves stay as built.
    pub fn ip_length_delta(mut self, delta: i32) -> Self {
        self.ip_length_delta = delta;
        self
    }

    /// Sends `value` as the IPv4 protocol byte (the upper layer is built as it is).
    pub fn ipv4_protocol_field(mut self, value: u8) -> Self {
        self.ipv4_protocol_field = Some(value);
        self
    }

    /// The IP packet alone (from the IP header to the end of the IP length as built).
    pub fn ip_packet(&self) -> Vec<u8> {
        let upper = self.transport();
        match (self.src, self.dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => self.ipv4(src.octets(), dst.octets(), &upper),
            (IpAddr::V6(src), IpAddr::V6(dst)) => self.ipv6(src.octets(), dst.octets(), &upper),
            _ => unreachable!("families checked at construction"),
        }
    }

    /// The upper-layer header and payload with its checksum (cut to `upper_len`).
    pub fn transport(&self) -> Vec<u8> {
        let mut upper = self.upper_bytes();
        if let Some(len) = self.upper_len {
            upper.truncate(len);
        }
        upper
    }

    /// Splits the datagram into two fragments at `at` bytes of its fragmentable part (a
    /// multiple of 8): for IPv4 the upper layer, for IPv6 what follows the one
    /// `Extension::Fragment` in `extensions` (the headers before it are repeated in both).
    /// The first fragment has offset 0 and more-fragments set, the second offset `at / 8` and
    /// the original's more-fragments flag. Both are specs of their own (wrappers, trailer and
    /// length delta are copied; change them on either), reassembling into this datagram.
    pub fn fragments(&self, at: usize) -> (FrameSpec, FrameSpec) {
        assert_eq!(
            at % 8,
            0,
            "fragment boundaries are multiples of 8, not {at}"
        );
        let (carried, more, fragmentable, first_protocol) = if self.src.is_ipv4() {
            let more = self.ipv4_fragment.is_some_and(|(_, more)| more);
            (Vec::new(), more, self.transport(), self.protocol())
        } else {
            let position = self
                .extensions
                .iter()
                .position(|e| matches!(e, Extension::Fragment { .. }))
                .expect("an IPv6 datagram to split needs an Extension::Fragment");
            let more = matches!(
                self.extensions[position],
                Extension::Fragment { more: true, .. }
            );
            let (first_protocol, mut fragmentable) =
                self.ipv6_chain(&self.extensions[position + 1..]);
            fragmentable.extend(self.transport());
            (
                self.extensions[..position].to_vec(),
                more,
                fragmentable,
                first_protocol,
            )
        };
        assert!(
            at < fragmentable.len(),
            "splitting at {at} of {} fragmentable bytes leaves an empty fragment",
            fragmentable.len()
        );
        let piece = |offset: usize, more: bool, bytes: &[u8]| {
            let mut spec = self.clone();
            spec.upper = Upper::Raw {
                protocol: first_protocol,
                len: 0,
            };
            spec.upper_len = None;
            spec.payload = bytes.to_vec();
            let offset = (offset / 8) as u16;
            if spec.src.is_ipv4() {
                spec.ipv4_fragment = Some((offset, more));
            } else {
                spec.extensions = carried.clone();
                spec.extensions.push(Extension::Fragment { offset, more });
            }
            spec
        };
        (
            piece(0, true, &fragmentable[..at]),
            piece(at, more, &fragmentable[at..]),
        )
    }

    pub fn build(&self) -> Vec<u8> {
        let upper = self.transport();
        let (ethertype, ip) = match (self.src, self.dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                (ETH_P_IPV4, self.ipv4(src.octets(), dst.octets(), &upper))
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                (ETH_P_IPV6, self.ipv6(src.octets(), dst.octets(), &upper))
            }
            _ => unreachable!("families checked at construction"),
        };
        let mut frame = ethernet(&self.wrappers, ethertype, &ip);
        frame.extend_from_slice(&self.trailer);
        frame
    }

    /// The IP length field: `len` plus the delta, kept within 16 bits.
    fn length_field(&self, len: usize) -> u16 {
        (len as i64 + i64::from(self.ip_length_delta)).clamp(0, 0xffff) as u16
    }

    /// The same segment from another TCP source port (no effect on other protocols).
    pub fn src_port(mut self, port: u16) -> Self {
        if let Upper::Tcp { src_port, .. } = &mut self.upper {
            *src_port = port;
        }
        self
    }

    fn protocol(&self) -> u8 {
        match self.upper {
            Upper::Tcp { .. } => 6,
            Upper::Udp { .. } => 17,
            Upper::Icmp if self.src.is_ipv4() => 1,
            Upper::Icmp => 58,
            Upper::Raw { protocol, .. } => protocol,
        }
    }

    fn upper_bytes(&self) -> Vec<u8> {
        let mut bytes = match self.upper {
            Upper::Tcp {
                src_port,
                dst_port,
                flags,
            } => {
                let mut tcp = vec![0u8; 20];
                tcp[0..2].copy_from_slice(&src_port.to_be_bytes());
                tcp[2..4].copy_from_slice(&dst_port.to_be_bytes());
                tcp[4..8].copy_from_slice(&0x0100_0000u32.to_be_bytes());
                if flags & TCP_ACK != 0 {
                    tcp[8..12].copy_from_slice(&0x0200_0000u32.to_be_bytes());
                }
                tcp[12] = 5 << 4;
                tcp[13] = flags;
                tcp[14..16].copy_from_slice(&64_240u16.to_be_bytes());
                tcp
            }
            Upper::Udp { src_port, dst_port } => {
                let mut udp = vec![0u8; 8];
                udp[0..2].copy_from_slice(&src_port.to_be_bytes());
                udp[2..4].copy_from_slice(&dst_port.to_be_bytes());
                udp[4..6].copy_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
                udp
            }
            Upper::Icmp => {
                // Echo request.
                let mut icmp = vec![0u8; 8];
                icmp[0] = if self.src.is_ipv4() { 8 } else { 128 };
                icmp
            }
            Upper::Raw { len, .. } => vec![0u8; len],
        };
        bytes.extend_from_slice(&self.payload);
        let checksum_at = match self.upper {
            Upper::Tcp { .. } => 16,
            Upper::Udp { .. } => 6,
            Upper::Icmp => 2,
            // No checksum of ours to fill in.
            Upper::Raw { .. } => return bytes,
        };
        let pseudo = match (self.src, self.dst, &self.upper) {
            (IpAddr::V4(_), _, Upper::Icmp) => Vec::new(),
            (src, dst, _) => pseudo_header(src, dst, self.protocol(), bytes.len()),
        };
        let checksum = internet_checksum(&[&pseudo, &bytes]);
        bytes[checksum_at..checksum_at + 2].copy_from_slice(&checksum.to_be_bytes());
        bytes
    }

    fn ipv4(&self, src: [u8; 4], dst: [u8; 4], upper: &[u8]) -> Vec<u8> {
        let options = self.ipv4_options.div_ceil(4) * 4;
        let header_len = 20 + options;
        let mut ip = vec![0u8; header_len];
        ip[0] = 0x40 | (header_len / 4) as u8;
        ip[2..4].copy_from_slice(&self.length_field(header_len + upper.len()).to_be_bytes());
        ip[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
        let fragment = match self.ipv4_fragment {
            Some((offset, more)) => offset | if more { 0x2000 } else { 0 },
            None => 0x4000, // don't fragment
        };
        ip[6..8].copy_from_slice(&fragment.to_be_bytes());
        ip[8] = 64;
        ip[9] = self.ipv4_protocol_field.unwrap_or(self.protocol());
        ip[12..16].copy_from_slice(&src);
        ip[16..20].copy_from_slice(&dst);
        // Options: NOPs ending in End of Options List.
        for byte in &mut ip[20..] {
            *byte = 1;
        }
        if options > 0 {
            ip[header_len - 1] = 0;
        }
        let checksum = internet_checksum(&[&ip]);
        ip[10..12].copy_from_slice(&checksum.to_be_bytes());
        ip.extend_from_slice(upper);
        ip
    }

    /// `extensions` encoded as a chain ending in the upper layer; returns the chain's first
    /// protocol number (the upper layer's when there are none) and its bytes.
    fn ipv6_chain(&self, extensions: &[Extension]) -> (u8, Vec<u8>) {
        let mut chain = Vec::new();
        let protocols: Vec<u8> = extensions
            .iter()
            .map(|e| e.protocol())
            .chain([self.protocol()])
            .collect();
        for (extension, next) in extensions.iter().zip(&protocols[1..]) {
            chain.extend(extension.encode(*next));
        }
        (protocols[0], chain)
    }

    fn ipv6(&self, src: [u8; 16], dst: [u8; 16], upper: &[u8]) -> Vec<u8> {
        let (first_protocol, chain) = self.ipv6_chain(&self.extensions);
        let mut ip = vec![0u8; 40];
        ip[0] = 0x60;
        ip[4..6].copy_from_slice(&self.length_field(chain.len() + upper.len()).to_be_bytes());
        ip[6] = first_protocol;
        ip[7] = 64;
        ip[8..24].copy_from_slice(&src);
        ip[24..40].copy_from_slice(&dst);
        ip.extend(chain);
        ip.extend_from_slice(upper);
        ip
    }
}

/// Ethernet (with wrappers) around an IP packet or any payload.
pub fn ethernet(wrappers: &[Wrapper], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01];
    let mut tail = Vec::new();
    let mut inner = ethertype;
    // Innermost first, to know each layer's "next" type.
    for wrapper in wrappers.iter().rev() {
        let mut layer = Vec::new();
        match *wrapper {
            Wrapper::Vlan { tpid, vid } => {
                layer.extend_from_slice(&vid.to_be_bytes());
                layer.extend_from_slice(&inner.to_be_bytes());
                inner = tpid;
            }
            Wrapper::Pppoe { compressed } => {
                let protocol: u16 = match inner {
                    ETH_P_IPV4 => PPP_IPV4,
                    ETH_P_IPV6 => PPP_IPV6,
                    other => panic!("PPPoE cannot carry ethertype {other:#06x}"),
                };
                layer = pppoe(protocol, compressed, 0, tail.len() + payload.len());
                inner = ETH_P_PPPOE_SESSION;
            }
            Wrapper::PppoeWith {
                protocol,
                compressed,
                length_delta,
            } => {
                layer = pppoe(
                    protocol,
                    compressed,
                    length_delta,
                    tail.len() + payload.len(),
                );
                inner = ETH_P_PPPOE_SESSION;
            }
        }
        layer.extend(tail);
        tail = layer;
    }
    frame.extend_from_slice(&inner.to_be_bytes());
    frame.extend(tail);
    frame.extend_from_slice(payload);
    frame
}

/// A PPPoE session header and PPP protocol field in front of `carried` bytes.
fn pppoe(protocol: u16, compressed: bool, length_delta: i16, carried: usize) -> Vec<u8> {
    let ppp_len = if compressed { 1 } else { 2 };
    let mut layer = vec![0x11, 0x00, 0x00, 0x2a];
    let length = ((ppp_len + carried) as i64 + i64::from(length_delta)).clamp(0, 0xffff) as u16;
    layer.extend_from_slice(&length.to_be_bytes());
    if compressed {
        let byte = u8::try_from(protocol)
            .unwrap_or_else(|_| panic!("PPP protocol {protocol:#06x} has no one-byte form"));
        layer.push(byte);
    } else {
        layer.extend_from_slice(&protocol.to_be_bytes());
    }
    layer
}

/// An ARP request, for "untouched" cases.
pub fn arp() -> Vec<u8> {
    let mut arp = vec![0u8; 28];
    arp[0..2].copy_from_slice(&1u16.to_be_bytes());
    arp[2..4].copy_from_slice(&ETH_P_IPV4.to_be_bytes());
    arp[4] = 6;
    arp[5] = 4;
    arp[6..8].copy_from_slice(&1u16.to_be_bytes());
    ethernet(&[], ETH_P_ARP, &arp)
}

fn pseudo_header(src: IpAddr, dst: IpAddr, protocol: u8, len: usize) -> Vec<u8> {
    let mut pseudo = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&[0, protocol]);
            pseudo.extend_from_slice(&(len as u16).to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&(len as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, protocol]);
        }
        _ => unreachable!("families checked at construction"),
    }
    pseudo
}

fn internet_checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for byte_pair in parts.iter().flat_map(|part| part.chunks(2)) {
        let word = match byte_pair {
            [high, low] => u16::from_be_bytes([*high, *low]),
            [high] => u16::from_be_bytes([*high, 0]),
            _ => 0,
        };
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn plain_tcp_layout() {
        let frame = FrameSpec::tcp(ip("100.64.0.2"), ip("198.51.100.7"), 25, TCP_SYN).build();
        assert_eq!(frame.len(), 14 + 20 + 20);
        assert_eq!(&frame[12..14], &[0x08, 0x00]);
        assert_eq!(&frame[14 + 12..14 + 16], &[100, 64, 0, 2]);
        assert_eq!(&frame[34 + 2..34 + 4], &25u16.to_be_bytes());
        assert_eq!(frame[34 + 13], TCP_SYN);
        // A correct IPv4 header checksum sums to 0xffff, i.e. checks to zero.
        assert_eq!(internet_checksum(&[&frame[14..34]]), 0);
    }

    #[test]
    fn qinq_pppoe_layout() {
        let frame = FrameSpec::tcp(ip("100.64.0.2"), ip("198.51.100.7"), 25, TCP_SYN)
            .wrappers(QINQ_PPPOE)
            .build();
        assert_eq!(&frame[12..14], &TPID_8021AD.to_be_bytes());
        assert_eq!(&frame[16..18], &TPID_8021Q.to_be_bytes());
        assert_eq!(&frame[20..22], &ETH_P_PPPOE_SESSION.to_be_bytes());
        assert_eq!(&frame[22..24], &[0x11, 0x00]);
        assert_eq!(u16::from_be_bytes([frame[26], frame[27]]), 2 + 40);
        assert_eq!(&frame[28..30], &[0x00, 0x21]);
        assert_eq!(frame[30] >> 4, 4);
    }

    #[test]
    fn ipv6_chain_layout() {
        let frame = FrameSpec::tcp(ip("2001:db8::1"), ip("2001:db8:ffff::25"), 25, TCP_SYN)
            .extension(Extension::HopByHop { len_units: 0 })
            .extension(Extension::Fragment {
                offset: 0,
                more: true,
            })
            .build();
        assert_eq!(frame[14 + 6], 0); // first: hop-by-hop
        assert_eq!(frame[54], 44); // hop-by-hop's next: fragment
        assert_eq!(frame[62], 6); // fragment's next: TCP
        assert_eq!(&frame[70 + 2..70 + 4], &25u16.to_be_bytes());
    }

    #[test]
    fn trailer_and_length_delta_leave_the_packet_as_built() {
        let spec = FrameSpec::tcp(ip("100.64.0.2"), ip("198.51.100.7"), 25, TCP_SYN);
        let plain = spec.build();
        let trailed = spec.clone().trailer(&[0xaa; 6]).build();
        assert_eq!(&trailed[..plain.len()], &plain[..]);
        assert_eq!(&trailed[plain.len()..], &[0xaa; 6]);

        let longer = spec.clone().ip_length_delta(8).build();
        assert_eq!(longer.len(), plain.len());
        assert_eq!(u16::from_be_bytes([longer[16], longer[17]]), 40 + 8);
        assert_eq!(internet_checksum(&[&longer[14..34]]), 0, "checksum follows");

        let v6 = FrameSpec::tcp(ip("2001:db8::1"), ip("2001:db8::2"), 25, TCP_SYN)
            .ip_length_delta(-12)
            .build();
        assert_eq!(v6.len(), 14 + 40 + 20);
        assert_eq!(u16::from_be_bytes([v6[18], v6[19]]), 20 - 12);
    }

    #[test]
    fn pppoe_with_an_explicit_protocol() {
        let frame = FrameSpec::tcp(ip("100.64.0.2"), ip("198.51.100.7"), 25, TCP_SYN)
            .wrap(Wrapper::PppoeWith {
                protocol: PPP_VJ_UNCOMPRESSED,
                compressed: true,
                length_delta: 0,
            })
            .ipv4_protocol_field(3)
            .trailer(&[0; 4])
            .build();
        assert_eq!(&frame[12..14], &ETH_P_PPPOE_SESSION.to_be_bytes());
        // PPPoE length: the one-byte protocol and the IP packet, not the trailer.
        assert_eq!(u16::from_be_bytes([frame[18], frame[19]]), 1 + 40);
        assert_eq!(frame[20], 0x2f);
        assert_eq!(frame[21 + 9], 3, "the slot number in the protocol byte");
        assert_eq!(internet_checksum(&[&frame[21..41]]), 0);

        let wrong = FrameSpec::tcp(ip("2001:db8::1"), ip("2001:db8::2"), 25, TCP_SYN)
            .wrap(Wrapper::PppoeWith {
                protocol: PPP_IPV6,
                compressed: false,
                length_delta: -3,
            })
            .build();
        assert_eq!(u16::from_be_bytes([wrong[18], wrong[19]]), 2 + 60 - 3);
        assert_eq!(&wrong[20..22], &PPP_IPV6.to_be_bytes());
    }

    #[test]
    fn fragments_reassemble_into_the_datagram() {
        let spec = FrameSpec::tcp(ip("2001:db8::1"), ip("2001:db8::2"), 25, TCP_SYN)
            .extension(Extension::HopByHop { len_units: 0 })
            .extension(Extension::Fragment {
                offset: 0,
                more: false,
            })
            .extension(Extension::DestinationOptions { len_units: 0 })
            .extension(Extension::DestinationOptions { len_units: 0 });
        let whole = spec.build();
        let (first, second) = spec.fragments(8);
        let (first, second) = (first.build(), second.build());
        // Unfragmentable part: Ethernet, IPv6, hop-by-hop; then the fragment header (8).
        let fragmentable_at = 14 + 40 + 8 + 8;
        assert_eq!(first.len(), fragmentable_at + 8);
        assert_eq!(&first[fragmentable_at..], &whole[fragmentable_at..][..8]);
        assert_eq!(&second[fragmentable_at..], &whole[fragmentable_at + 8..]);
        // Each fragment header names the first fragmentable header (destination options).
        assert_eq!(first[14 + 40 + 8], 60);
        assert_eq!(second[14 + 40 + 8], 60);
        let field = |frame: &[u8]| u16::from_be_bytes([frame[64], frame[65]]);
        assert_eq!(field(&first), 1, "offset 0, more fragments");
        assert_eq!(field(&second), 1 << 3, "offset 1, the last");
        assert_eq!(u16::from_be_bytes([first[18], first[19]]), 8 + 8 + 8);

        let v4 = FrameSpec::tcp(ip("100.64.0.2"), ip("198.51.100.7"), 25, TCP_SYN);
        let (first, second) = v4.fragments(8);
        let (first, second) = (first.build(), second.build());
        assert_eq!(&first[34..], &v4.build()[34..42]);
        assert_eq!(&second[34..], &v4.build()[42..]);
        assert_eq!(first[23], 6);
        assert_eq!(u16::from_be_bytes([first[20], first[21]]), 0x2000);
        assert_eq!(u16::from_be_bytes([second[20], second[21]]), 1);
    }
}
