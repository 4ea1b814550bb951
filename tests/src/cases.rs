//! The parser's case table: frames with the reason the data plane must give them under
//! [`POLICY`], for every wrapper, family and evasion the parser knows. The kernel test runs
//! (tests/test_run.rs) check every case's verdict and counter; the forwarding test
//! (tests/malformed.rs) sends every `malformed` case through a real gateway to show that the
//! gateway's kernel discards it, which is what lets such frames pass.

use std::net::IpAddr;

use smtpguard_common::{Reason, maps::MAX_VLAN_TAGS};

use crate::frames::{
    Extension, FrameSpec, QINQ_PPPOE, TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN, TPID_8021AD,
    TPID_8021Q, TPID_9100, Upper, Wrapper, arp, ethernet,
};

/// The policy every case is judged under.
pub const POLICY: &str = r#"
[enforcement]
ports = [25, 2525]
unparseable = "drop"

[[subscribers]]
prefix = "100.64.0.0/10"
mode = "enforce"
[[subscribers]]
prefix = "100.127.0.0/16"
mode = "monitor"
[[subscribers]]
prefix = "2001:db8:1000::/36"
mode = "enforce"
[[subscribers]]
prefix = "2001:db8:1fff::/48"
mode = "monitor"

[[relays]]
prefix = "192.0.2.25/32"
[[relays]]
prefix = "2001:db8:25::25/128"

[[exemptions]]
prefix = "100.64.10.0/24"
reason = "business static block"
[[exemptions]]
prefix = "2001:db8:1000:10::/64"
reason = "business static block"

[capacity]
hosts = 4096
"#;

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// Addresses of one family for the roles a frame can play.
pub struct Hosts {
    pub subscriber: IpAddr,
    pub monitored: IpAddr,
    pub exempt: IpAddr,
    pub outsider: IpAddr,
    pub mx: IpAddr,
    pub relay: IpAddr,
}

pub const V4: fn() -> Hosts = || Hosts {
    subscriber: ip("100.64.0.2"),
    monitored: ip("100.127.3.4"),
    exempt: ip("100.64.10.5"),
    outsider: ip("203.0.113.9"),
    mx: ip("198.51.100.7"),
    relay: ip("192.0.2.25"),
};

pub const V6: fn() -> Hosts = || Hosts {
    subscriber: ip("2001:db8:1000::2"),
    monitored: ip("2001:db8:1fff::4"),
    exempt: ip("2001:db8:1000:10::5"),
    outsider: ip("2001:db8:9999::9"),
    mx: ip("2001:db8:ffff::7"),
    relay: ip("2001:db8:25::25"),
};

const WRAPPERS: &[(&str, &[Wrapper])] = &[
    ("plain", &[]),
    (
        "802.1Q",
        &[Wrapper::Vlan {
            tpid: TPID_8021Q,
            vid: 10,
        }],
    ),
    (
        "802.1ad",
        &[Wrapper::Vlan {
            tpid: TPID_8021AD,
            vid: 10,
        }],
    ),
    (
        "0x9100",
        &[Wrapper::Vlan {
            tpid: TPID_9100,
            vid: 10,
        }],
    ),
    (
        "QinQ 88a8+8100",
        &[
            Wrapper::Vlan {
                tpid: TPID_8021AD,
                vid: 100,
            },
            Wrapper::Vlan {
                tpid: TPID_8021Q,
                vid: 200,
            },
        ],
    ),
    (
        "QinQ 9100+9100",
        &[
            Wrapper::Vlan {
                tpid: TPID_9100,
                vid: 100,
            },
            Wrapper::Vlan {
                tpid: TPID_9100,
                vid: 200,
            },
        ],
    ),
    ("PPPoE", &[Wrapper::Pppoe { compressed: false }]),
    (
        "PPPoE, compressed protocol",
        &[Wrapper::Pppoe { compressed: true }],
    ),
    (
        "802.1Q + PPPoE",
        &[
            Wrapper::Vlan {
                tpid: TPID_8021Q,
                vid: 7,
            },
            Wrapper::Pppoe { compressed: false },
        ],
    ),
    ("QinQ + PPPoE", QINQ_PPPOE),
];

pub struct Case {
    pub name: String,
    pub frame: Vec<u8>,
    pub expected: Reason,
}

fn case(name: impl Into<String>, frame: Vec<u8>, expected: Reason) -> Case {
    Case {
        name: name.into(),
        frame,
        expected,
    }
}

/// The policy's cases for one family inside one wrapper.
fn policy_cases(wrapper: &str, wrappers: &[Wrapper], family: &str, h: &Hosts) -> Vec<Case> {
    let tcp = |src, dst, port, flags| FrameSpec::tcp(src, dst, port, flags).wrappers(wrappers);
    let mut cases = vec![
        case(
            "SYN to 25",
            tcp(h.subscriber, h.mx, 25, TCP_SYN).build(),
            Reason::Dropped,
        ),
        case(
            "SYN to 2525 (second enforced port)",
            tcp(h.subscriber, h.mx, 2525, TCP_SYN).build(),
            Reason::Dropped,
        ),
        case(
            "SYN to 587",
            tcp(h.subscriber, h.mx, 587, TCP_SYN).build(),
            Reason::Other,
        ),
        case(
            "SYN to 465",
            tcp(h.subscriber, h.mx, 465, TCP_SYN).build(),
            Reason::Other,
        ),
        case(
            "SYN to the relay",
            tcp(h.subscriber, h.relay, 25, TCP_SYN).build(),
            Reason::Relayed,
        ),
        case(
            "SYN from an exempt host",
            tcp(h.exempt, h.mx, 25, TCP_SYN).build(),
            Reason::Exempt,
        ),
        case(
            "SYN from a monitor range",
            tcp(h.monitored, h.mx, 25, TCP_SYN).build(),
            Reason::Monitored,
        ),
        case(
            "SYN from outside",
            tcp(h.outsider, h.mx, 25, TCP_SYN).build(),
            Reason::NotSubscriber,
        ),
        case(
            "exempt host to the relay",
            tcp(h.exempt, h.relay, 25, TCP_SYN).build(),
            Reason::Relayed,
        ),
        case(
            "UDP to 25",
            FrameSpec::udp(h.subscriber, h.mx, 25)
                .wrappers(QINQ_PPPOE)
                .build(),
            Reason::Other,
        ),
        case(
            "ICMP echo",
            FrameSpec::icmp(h.subscriber, h.mx)
                .wrappers(QINQ_PPPOE)
                .build(),
            Reason::Other,
        ),
    ];
    for (flags_name, flags) in [
        ("ACK", TCP_ACK),
        ("PSH+ACK", TCP_PSH | TCP_ACK),
        ("FIN+ACK", TCP_FIN | TCP_ACK),
        ("RST", TCP_RST),
        ("SYN+ACK", TCP_SYN | TCP_ACK),
        ("no flags", 0),
    ] {
        cases.push(case(
            format!("{flags_name} to 25 (every segment counts)"),
            tcp(h.subscriber, h.mx, 25, flags).build(),
            Reason::Dropped,
        ));
    }
    // Replies: the MX answering from port 25, and a subscriber's server answering from 25.
    let mut reply =
        FrameSpec::tcp(h.mx, h.subscriber, 40_000, TCP_SYN | TCP_ACK).wrappers(wrappers);
    reply.upper = Upper::Tcp {
        src_port: 25,
        dst_port: 40_000,
        flags: TCP_SYN | TCP_ACK,
    };
    cases.push(case(
        "reply from an MX's port 25",
        reply.build(),
        Reason::Other,
    ));
    let mut own_server = FrameSpec::tcp(h.subscriber, h.mx, 40_000, TCP_ACK).wrappers(wrappers);
    own_server.upper = Upper::Tcp {
        src_port: 25,
        dst_port: 40_000,
        flags: TCP_ACK,
    };
    cases.push(case(
        "subscriber's own server answering from 25",
        own_server.build(),
        Reason::Other,
    ));

    // An unfragmented packet whose IP length ends inside the TCP header: the port may be
    // there but the header is not whole, so `unparseable` applies.
    for len in [19, 4] {
        cases.push(case(
            format!("TCP header cut at {len} bytes"),
            tcp(h.subscriber, h.mx, 25, TCP_SYN).upper_len(len).build(),
            Reason::UnparseableDropped,
        ));
    }
    cases.push(case(
        "outsider's TCP header cut",
        tcp(h.outsider, h.mx, 25, TCP_SYN).upper_len(10).build(),
        Reason::Other,
    ));
    // A frame shorter than its IP length: `ip_rcv_core` / `ip6_rcv_core` drop it.
    let whole = tcp(h.subscriber, h.mx, 25, TCP_SYN).build();
    cases.push(case(
        "frame cut inside the TCP header, IP length whole",
        whole[..whole.len() - 1].to_vec(),
        Reason::Malformed,
    ));
    // Bytes after the IP packet are trimmed by the kernel before it routes it: a TCP header
    // that only bytes past the IP length complete is not there.
    let mut short = tcp(h.subscriber, h.mx, 587, TCP_SYN).upper_len(4).build();
    short.extend_from_slice(&whole[whole.len() - 16..]);
    cases.push(case(
        "TCP header to 587 completed by bytes after the IP length",
        short,
        Reason::UnparseableDropped,
    ));
    let mut padded = whole.clone();
    padded.extend_from_slice(&[0xff; 16]);
    cases.push(case(
        "SYN to 25 with padding after the IP packet",
        padded,
        Reason::Dropped,
    ));
    let ip_header_len = if family == "IPv4" { 20 } else { 40 };
    cases.push(case(
        "IP header cut",
        whole[..whole.len() - 20 - ip_header_len / 2].to_vec(),
        Reason::Malformed,
    ));

    for case in &mut cases {
        case.name = format!("{wrapper} {family}: {}", case.name);
    }
    cases
}

fn ipv4_cases() -> Vec<Case> {
    let h = V4();
    let tcp = |flags| FrameSpec::tcp(h.subscriber, h.mx, 25, flags);
    let mut cases = Vec::new();
    for options in [4, 8, 20, 40] {
        cases.push(case(
            format!("IPv4 with {options} bytes of options"),
            tcp(TCP_SYN).ipv4_options(options).build(),
            Reason::Dropped,
        ));
    }
    cases.push(case(
        "IPv4 with 40 bytes of options to 587",
        FrameSpec::tcp(h.subscriber, h.mx, 587, TCP_SYN)
            .ipv4_options(40)
            .build(),
        Reason::Other,
    ));
    // IHL below 5: `ip_rcv_core` drops the packet.
    for ihl in [0u8, 4] {
        let mut frame = tcp(TCP_SYN).build();
        frame[14] = 0x40 | ihl;
        cases.push(case(
            format!("IPv4 IHL {ihl} from a subscriber"),
            frame,
            Reason::Malformed,
        ));
    }
    // A total length below the header length: `ip_rcv_core` drops it. A total length of 0
    // (GRO's "the whole skb") is judged on the frame.
    let mut below_header = tcp(TCP_SYN).build();
    below_header[16..18].copy_from_slice(&19u16.to_be_bytes());
    cases.push(case(
        "IPv4 total length below the header length",
        below_header,
        Reason::Malformed,
    ));
    let mut zero_length = tcp(TCP_SYN).build();
    zero_length[16..18].copy_from_slice(&0u16.to_be_bytes());
    cases.push(case("IPv4 total length 0", zero_length, Reason::Dropped));
    let mut bad_version = tcp(TCP_SYN).build();
    bad_version[14] = 0x65;
    cases.push(case(
        "IPv4 ethertype with IP version 6",
        bad_version,
        Reason::Malformed,
    ));
    // Fragments.
    cases.push(case(
        "first fragment holding the TCP header",
        tcp(TCP_SYN).ipv4_fragment(0, true).build(),
        Reason::Dropped,
    ));
    cases.push(case(
        "first fragment holding 8 bytes of TCP",
        tcp(TCP_SYN).ipv4_fragment(0, true).upper_len(8).build(),
        Reason::FragmentDropped,
    ));
    cases.push(case(
        "offset-1 fragment from a subscriber (RFC 1858 overlap)",
        tcp(TCP_SYN).ipv4_fragment(1, true).upper_len(16).build(),
        Reason::FragmentDropped,
    ));
    cases.push(case(
        "offset-1 fragment from outside",
        FrameSpec::tcp(h.outsider, h.mx, 25, TCP_SYN)
            .ipv4_fragment(1, false)
            .upper_len(16)
            .build(),
        Reason::Other,
    ));
    cases.push(case(
        "offset-1 fragment from a monitor range",
        FrameSpec::tcp(h.monitored, h.mx, 25, TCP_SYN)
            .ipv4_fragment(1, false)
            .upper_len(16)
            .build(),
        Reason::Monitored,
    ));
    cases.push(case(
        "offset-1 UDP fragment from a subscriber",
        FrameSpec::udp(h.subscriber, h.mx, 25)
            .ipv4_fragment(1, false)
            .build(),
        Reason::Other,
    ));
    cases.push(case(
        "later fragment (offset 185)",
        tcp(TCP_SYN).ipv4_fragment(185, false).build(),
        Reason::Other,
    ));
    cases.push(case(
        "middle fragment (offset 2)",
        tcp(TCP_ACK).ipv4_fragment(2, true).build(),
        Reason::Other,
    ));
    cases
}

fn ipv6_cases() -> Vec<Case> {
    let h = V6();
    let tcp = |port| FrameSpec::tcp(h.subscriber, h.mx, port, TCP_SYN);
    let options = |len_units| Extension::DestinationOptions { len_units };
    let mut cases = vec![
        case(
            "hop-by-hop",
            tcp(25)
                .extension(Extension::HopByHop { len_units: 0 })
                .build(),
            Reason::Dropped,
        ),
        case(
            "routing",
            tcp(25)
                .extension(Extension::Routing { len_units: 2 })
                .build(),
            Reason::Dropped,
        ),
        case(
            "destination options",
            tcp(25).extension(options(1)).build(),
            Reason::Dropped,
        ),
        case(
            "AH",
            tcp(25)
                .extension(Extension::Authentication { len_units: 4 })
                .build(),
            Reason::Dropped,
        ),
        case(
            "hop-by-hop, routing, destination options",
            tcp(25)
                .extension(Extension::HopByHop { len_units: 0 })
                .extension(Extension::Routing { len_units: 2 })
                .extension(options(0))
                .build(),
            Reason::Dropped,
        ),
        case(
            "the same chain to 587",
            tcp(587)
                .extension(Extension::HopByHop { len_units: 0 })
                .extension(Extension::Routing { len_units: 2 })
                .extension(options(0))
                .build(),
            Reason::Other,
        ),
        case(
            "first fragment with the whole TCP header",
            tcp(25)
                .extension(Extension::Fragment {
                    offset: 0,
                    more: true,
                })
                .build(),
            Reason::Dropped,
        ),
        case(
            "atomic fragment",
            tcp(25)
                .extension(Extension::Fragment {
                    offset: 0,
                    more: false,
                })
                .build(),
            Reason::Dropped,
        ),
        case(
            "first fragment with 8 bytes of TCP (RFC 7112)",
            tcp(25)
                .extension(Extension::Fragment {
                    offset: 0,
                    more: true,
                })
                .upper_len(8)
                .build(),
            Reason::FragmentDropped,
        ),
        case(
            "first fragment ending inside the extension chain",
            ipv6_cut_at(
                tcp(25)
                    .extension(Extension::Fragment {
                        offset: 0,
                        more: true,
                    })
                    .extension(options(3))
                    .upper_len(0)
                    .build(),
                8 + 16,
            ),
            Reason::FragmentDropped,
        ),
        case(
            "first fragment whose frame is cut inside the extension chain",
            tcp(25)
                .extension(Extension::Fragment {
                    offset: 0,
                    more: true,
                })
                .extension(options(3))
                .upper_len(0)
                .build()[..14 + 40 + 8 + 16]
                .to_vec(),
            Reason::Malformed,
        ),
        case(
            // The first leak of issue #13: the chain ends with the payload, and bytes after
            // the payload length read as a last header that ends the chain.
            "first fragment whose chain ends at the payload's end, trailer ending it",
            {
                let mut frame = ipv6_cut_at(
                    tcp(25)
                        .extension(Extension::Fragment {
                            offset: 0,
                            more: true,
                        })
                        .extension(options(0))
                        .upper_len(0)
                        .build(),
                    8 + 8,
                );
                // A destination-options header, next header 59 (none), padded to 8 bytes.
                frame.extend_from_slice(&[59, 0, 1, 4, 0, 0, 0, 0]);
                frame
            },
            Reason::FragmentDropped,
        ),
        case(
            "later fragment",
            tcp(25)
                .extension(Extension::Fragment {
                    offset: 100,
                    more: false,
                })
                .build(),
            Reason::Other,
        ),
        case(
            "first fragment from outside without the TCP header",
            FrameSpec::tcp(h.outsider, h.mx, 25, TCP_SYN)
                .extension(Extension::Fragment {
                    offset: 0,
                    more: true,
                })
                .upper_len(8)
                .build(),
            Reason::Other,
        ),
        case(
            "chain cut inside a destination-options header",
            ipv6_cut_at(tcp(25).extension(options(3)).build(), 16),
            Reason::UnparseableDropped,
        ),
        case(
            "frame cut inside a destination-options header",
            tcp(25).extension(options(3)).build()[..14 + 40 + 16].to_vec(),
            Reason::Malformed,
        ),
        case(
            "payload length 0 before hop-by-hop (jumbogram): judged on the frame",
            {
                let mut frame = tcp(25)
                    .extension(Extension::HopByHop { len_units: 0 })
                    .build();
                frame[14 + 4..14 + 6].copy_from_slice(&[0, 0]);
                frame
            },
            Reason::Dropped,
        ),
        case(
            "payload length 0 without hop-by-hop",
            {
                let mut frame = tcp(25).build();
                frame[14 + 4..14 + 6].copy_from_slice(&[0, 0]);
                frame
            },
            Reason::UnparseableDropped,
        ),
        case(
            "UDP behind hop-by-hop",
            FrameSpec::udp(h.subscriber, h.mx, 25)
                .extension(Extension::HopByHop { len_units: 0 })
                .build(),
            Reason::Other,
        ),
    ];
    // Chains of every length the parser walks, mixing header kinds.
    let kinds = [
        Extension::HopByHop { len_units: 0 },
        options(1),
        Extension::Routing { len_units: 0 },
        Extension::Authentication { len_units: 1 },
        options(0),
    ];
    for len in 1..=smtpguard_common::maps::MAX_IPV6_EXT_HEADERS {
        let mut spec = tcp(25);
        for i in 0..len {
            spec = spec.extension(kinds[i % kinds.len()]);
        }
        cases.push(case(
            format!("chain of {len} extension headers"),
            spec.build(),
            Reason::Dropped,
        ));
    }
    let mut too_long = tcp(25);
    for _ in 0..=smtpguard_common::maps::MAX_IPV6_EXT_HEADERS {
        too_long = too_long.extension(options(0));
    }
    cases.push(case(
        "chain one header longer than the parser walks",
        too_long.build(),
        Reason::UnparseableDropped,
    ));
    let mut bad_version = tcp(25).build();
    bad_version[14] = 0x45;
    cases.push(case(
        "IPv6 ethertype with IP version 4",
        bad_version,
        Reason::Malformed,
    ));
    for case in &mut cases {
        case.name = format!("IPv6: {}", case.name);
    }
    cases
}

/// `frame` (plain Ethernet, IPv6) with its IPv6 payload length set to `payload_len` and the
/// frame cut there: a packet whose own length ends where the frame does.
fn ipv6_cut_at(mut frame: Vec<u8>, payload_len: u16) -> Vec<u8> {
    frame[14 + 4..14 + 6].copy_from_slice(&payload_len.to_be_bytes());
    frame.truncate(14 + 40 + usize::from(payload_len));
    frame
}

/// A PPPoE session frame carrying `payload` under PPP `protocol`, with a PPPoE length of
/// `payload.len() + 2 + extra` (negative: shorter than the payload).
fn pppoe(protocol: u16, payload: &[u8], extra: isize) -> Vec<u8> {
    let length = (payload.len() as isize + 2 + extra) as u16;
    let mut session = vec![0x11, 0x00, 0x00, 0x2a];
    session.extend_from_slice(&length.to_be_bytes());
    session.extend_from_slice(&protocol.to_be_bytes());
    session.extend_from_slice(payload);
    ethernet(&[], 0x8864, &session)
}

/// `tags` VLAN tags of `tpid` with VID `vid` around `spec`.
fn tagged(spec: &FrameSpec, tags: usize, tpid: u16, vid: u16) -> Vec<u8> {
    let mut spec = spec.clone();
    for _ in 0..tags {
        spec = spec.wrap(Wrapper::Vlan { tpid, vid });
    }
    spec.build()
}

/// The second leak of issue #13: Linux strips any number of VID-0 tags, so a deep stack is
/// judged (up to the tags walked) or follows `unparseable`, never passes as malformed.
fn vlan_stack_cases() -> Vec<Case> {
    let h = V4();
    let syn = FrameSpec::tcp(h.subscriber, h.mx, 25, TCP_SYN);
    let mut cases = Vec::new();
    for tpid in [TPID_8021Q, TPID_8021AD] {
        for tags in 1..=MAX_VLAN_TAGS {
            cases.push(case(
                format!("{tags} VID-0 tags {tpid:#06x}"),
                tagged(&syn, tags, tpid, 0),
                Reason::Dropped,
            ));
        }
        for tags in [MAX_VLAN_TAGS + 1, MAX_VLAN_TAGS + 4] {
            cases.push(case(
                format!("{tags} VID-0 tags {tpid:#06x}, more than walked"),
                tagged(&syn, tags, tpid, 0),
                Reason::LinkUnparseableDropped,
            ));
        }
    }
    let ipv6 = FrameSpec::tcp(V6().subscriber, V6().mx, 25, TCP_SYN);
    cases.push(case(
        "IPv6 behind more tags than walked",
        tagged(&ipv6, MAX_VLAN_TAGS + 1, TPID_8021Q, 0),
        Reason::LinkUnparseableDropped,
    ));
    cases.push(case(
        "ARP behind more tags than walked",
        {
            let mut frame = tagged(&syn, MAX_VLAN_TAGS + 1, TPID_8021Q, 0);
            let ip_at = 14 + 4 * (MAX_VLAN_TAGS + 1);
            frame[ip_at - 2..ip_at].copy_from_slice(&0x0806u16.to_be_bytes());
            frame
        },
        Reason::LinkUnparseableDropped,
    ));
    cases
}

/// PPPoE lengths and the PPP protocols `ppp_generic` turns back into IP.
fn ppp_cases() -> Vec<Case> {
    let h = V4();
    let syn = FrameSpec::tcp(h.subscriber, h.mx, 25, TCP_SYN).build();
    let ip_packet = &syn[14..];
    let mut vj_slot = ip_packet.to_vec();
    vj_slot[9] = 3;
    let mut vj_to_587 = FrameSpec::tcp(h.subscriber, h.mx, 587, TCP_SYN).build()[14..].to_vec();
    vj_to_587[9] = 3;
    let mut short_ip = FrameSpec::tcp(h.subscriber, h.mx, 587, TCP_SYN)
        .upper_len(4)
        .build()[14..]
        .to_vec();
    short_ip.extend_from_slice(&ip_packet[ip_packet.len() - 16..]);
    vec![
        case(
            "PPPoE length covering the packet",
            pppoe(0x0021, ip_packet, 0),
            Reason::Dropped,
        ),
        case(
            "PPPoE length with padding after it",
            {
                let mut frame = pppoe(0x0021, ip_packet, 0);
                frame.extend_from_slice(&[0; 12]);
                frame
            },
            Reason::Dropped,
        ),
        case(
            "PPPoE length longer than the frame",
            pppoe(0x0021, ip_packet, 1),
            Reason::Malformed,
        ),
        case(
            "PPPoE length shorter than the IP length",
            pppoe(0x0021, ip_packet, -1),
            Reason::Malformed,
        ),
        case(
            "PPPoE length ending inside the PPP protocol",
            pppoe(0x0021, ip_packet, -(ip_packet.len() as isize) - 1),
            Reason::Malformed,
        ),
        case(
            "TCP to 587 completed to 25 by bytes after the IP length, in PPPoE",
            pppoe(0x0021, &short_ip, 0),
            Reason::UnparseableDropped,
        ),
        case(
            "VJ uncompressed TCP (slot 3) to 25",
            pppoe(0x002f, &vj_slot, 0),
            Reason::Dropped,
        ),
        case(
            "VJ uncompressed TCP (slot 3) to 587",
            pppoe(0x002f, &vj_to_587, 0),
            Reason::Other,
        ),
        case(
            "VJ compressed TCP",
            pppoe(0x002d, &[0x0f, 0x03, 0x12, 0x34, 0x01], 0),
            Reason::Other,
        ),
        case(
            "CCP compressed datagram",
            pppoe(0x00fd, &[0x00, 0x01, 0x55, 0xaa], 0),
            Reason::LinkUnparseableDropped,
        ),
        case(
            "link-compressed datagram",
            pppoe(0x00fb, &[0x00, 0x01, 0x55, 0xaa], 0),
            Reason::LinkUnparseableDropped,
        ),
        case(
            "multilink fragment",
            pppoe(0x003d, &[0xc0, 0x00, 0x00, 0x01, 0x00, 0x21], 0),
            Reason::LinkUnparseableDropped,
        ),
    ]
}

fn link_cases() -> Vec<Case> {
    let h = V4();
    let syn = FrameSpec::tcp(h.subscriber, h.mx, 25, TCP_SYN);
    let three_tags = syn
        .clone()
        .wrap(Wrapper::Vlan {
            tpid: TPID_8021AD,
            vid: 1,
        })
        .wrap(Wrapper::Vlan {
            tpid: TPID_8021Q,
            vid: 2,
        })
        .wrap(Wrapper::Vlan {
            tpid: TPID_8021Q,
            vid: 3,
        })
        .build();
    let vlan = syn
        .clone()
        .wrap(Wrapper::Vlan {
            tpid: TPID_8021Q,
            vid: 2,
        })
        .build();
    let pppoe = syn
        .clone()
        .wrap(Wrapper::Pppoe { compressed: false })
        .build();
    // PPPoE carrying LCP (0xc021): link control, not IP.
    let lcp = ethernet(
        &[],
        0x8864,
        &[
            0x11, 0x00, 0x00, 0x2a, 0x00, 0x06, 0xc0, 0x21, 0x01, 0x01, 0x00, 0x04,
        ],
    );
    vec![
        case("ARP", arp(), Reason::Other),
        case("PPPoE LCP", lcp, Reason::Other),
        case(
            "PPPoE discovery",
            ethernet(&[], 0x8863, &[0x11, 0x09, 0, 0, 0, 0]),
            Reason::Other,
        ),
        case("three VLAN tags", three_tags, Reason::Dropped),
        case(
            "Ethernet header only",
            syn.build()[..14].to_vec(),
            Reason::Malformed,
        ),
        case(
            "cut inside the VLAN tag",
            vlan[..16].to_vec(),
            Reason::Malformed,
        ),
        case(
            "cut inside the PPPoE header",
            pppoe[..18].to_vec(),
            Reason::Malformed,
        ),
        case(
            "IPv4 with nothing after the ethertype",
            syn.build()[..15].to_vec(),
            Reason::Malformed,
        ),
    ]
}

pub fn all_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for (wrapper, wrappers) in WRAPPERS {
        cases.extend(policy_cases(wrapper, wrappers, "IPv4", &V4()));
        cases.extend(policy_cases(wrapper, wrappers, "IPv6", &V6()));
    }
    cases.extend(ipv4_cases());
    cases.extend(ipv6_cases());
    cases.extend(link_cases());
    cases.extend(vlan_stack_cases());
    cases.extend(ppp_cases());
    cases
}
