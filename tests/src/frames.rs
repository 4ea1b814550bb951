//! A small frame builder for tests, the sample capture and benchmarks: Ethernet with VLAN,
//! QinQ and PPPoE wrappers, IPv4 with options and fragments, IPv6 with extension-header
//! chains and fragments, TCP/UDP/ICMP. Lengths and checksums are right unless a test asks
//! for them not to be (truncation happens after building: `build()[..n]`).

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

    fn encode(self, next: u8) -> Vec<u8> {
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

    pub fn build(&self) -> Vec<u8> {
        let ethertype = if self.src.is_ipv4() {
            ETH_P_IPV4
        } else {
            ETH_P_IPV6
        };
        ethernet(&self.wrappers, ethertype, &self.build_ip())
    }

    /// The IP packet alone, without Ethernet or wrappers: what a device without a link-layer
    /// header (TUN, WireGuard, IPIP) carries.
    pub fn build_ip(&self) -> Vec<u8> {
        let mut upper = self.upper_bytes();
        if let Some(len) = self.upper_len {
            upper.truncate(len);
        }
        match (self.src, self.dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => self.ipv4(src.octets(), dst.octets(), &upper),
            (IpAddr::V6(src), IpAddr::V6(dst)) => self.ipv6(src.octets(), dst.octets(), &upper),
            _ => unreachable!("families checked at construction"),
        }
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
        ip[2..4].copy_from_slice(&((header_len + upper.len()) as u16).to_be_bytes());
        ip[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
        let fragment = match self.ipv4_fragment {
            Some((offset, more)) => offset | if more { 0x2000 } else { 0 },
            None => 0x4000, // don't fragment
        };
        ip[6..8].copy_from_slice(&fragment.to_be_bytes());
        ip[8] = 64;
        ip[9] = self.protocol();
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

    fn ipv6(&self, src: [u8; 16], dst: [u8; 16], upper: &[u8]) -> Vec<u8> {
        let mut chain = Vec::new();
        let protocols: Vec<u8> = self
            .extensions
            .iter()
            .map(|e| e.protocol())
            .chain([self.protocol()])
            .collect();
        for (extension, next) in self.extensions.iter().zip(&protocols[1..]) {
            chain.extend(extension.encode(*next));
        }
        let mut ip = vec![0u8; 40];
        ip[0] = 0x60;
        ip[4..6].copy_from_slice(&((chain.len() + upper.len()) as u16).to_be_bytes());
        ip[6] = protocols[0];
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
                    ETH_P_IPV4 => 0x0021,
                    ETH_P_IPV6 => 0x0057,
                    other => panic!("PPPoE cannot carry ethertype {other:#06x}"),
                };
                let ppp_len = if compressed { 1 } else { 2 };
                layer.extend_from_slice(&[0x11, 0x00, 0x00, 0x2a]);
                let length = (ppp_len + tail.len() + payload.len()) as u16;
                layer.extend_from_slice(&length.to_be_bytes());
                if compressed {
                    layer.push(protocol as u8);
                } else {
                    layer.extend_from_slice(&protocol.to_be_bytes());
                }
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
}
