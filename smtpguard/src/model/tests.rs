//! The model's own edge cases, each from a sentence of the specification.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
};

use smtpguard_common::{Action, Limit, Mode, Reason, UnparseableAction};
use smtpguard_tests::frames::{
    Extension, FrameSpec, QINQ_PPPOE, TCP_ACK, TCP_SYN, TPID_8021Q, TPID_9100, Wrapper, arp,
    ethernet,
};

use super::*;

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn policy() -> ModelPolicy {
    ModelPolicy {
        ports: vec![25, 2525],
        unparseable: UnparseableAction::Drop,
        subscribers: vec![
            ("100.64.0.0/10".parse().unwrap(), Mode::Enforce),
            ("100.127.0.0/16".parse().unwrap(), Mode::Monitor),
            ("2001:db8:1000::/36".parse().unwrap(), Mode::Enforce),
        ],
        actions: HashMap::new(),
        relays: vec!["192.0.2.25/32".parse().unwrap()],
        exemptions: vec!["100.64.10.0/24".parse().unwrap()],
        escalated: HashSet::from([ip("100.127.9.9")]),
        host_prefixes: (32, 64),
    }
}

const SUB: &str = "100.64.0.2";
const MX: &str = "198.51.100.7";
const SUB6: &str = "2001:db8:1000::2";
const MX6: &str = "2001:db8:ffff::7";

fn syn(src: &str, dst: &str) -> FrameSpec {
    FrameSpec::tcp(ip(src), ip(dst), 25, TCP_SYN)
}

fn reason(frame: &[u8]) -> Reason {
    Model::new(policy()).judge(frame)
}

#[test]
fn ordered_rules() {
    assert_eq!(reason(&syn(SUB, MX).build()), Reason::Dropped);
    assert_eq!(
        reason(&syn("203.0.113.1", MX).build()),
        Reason::NotSubscriber
    );
    // A relay wins over an exemption, an exemption over monitor mode.
    assert_eq!(
        reason(&syn("100.64.10.1", "192.0.2.25").build()),
        Reason::Relayed
    );
    assert_eq!(reason(&syn("100.64.10.1", MX).build()), Reason::Exempt);
    // The most specific range decides: the monitor /16 inside the enforce /10.
    assert_eq!(reason(&syn("100.127.0.1", MX).build()), Reason::Monitored);
    // An escalated host of a monitor range is enforced on its own.
    assert_eq!(reason(&syn("100.127.9.9", MX).build()), Reason::Dropped);
    let submission = FrameSpec::tcp(ip(SUB), ip(MX), 587, TCP_SYN).build();
    assert_eq!(reason(&submission), Reason::Other);
    let udp = FrameSpec::udp(ip(SUB), ip(MX), 25).build();
    assert_eq!(reason(&udp), Reason::Other);
}

#[test]
fn link_layer_wrappers() {
    let two_tags = [
        Wrapper::Vlan {
            tpid: TPID_9100,
            vid: 1,
        },
        Wrapper::Vlan {
            tpid: TPID_8021Q,
            vid: 2,
        },
    ];
    assert_eq!(
        reason(&syn(SUB, MX).wrappers(&two_tags).build()),
        Reason::Dropped
    );
    let three_tags = syn(SUB, MX)
        .wrappers(&two_tags)
        .wrap(Wrapper::Vlan {
            tpid: TPID_8021Q,
            vid: 3,
        })
        .build();
    // Linux strips stacked tags, so they are walked; past four the IP packet is hidden.
    assert_eq!(reason(&three_tags), Reason::Dropped);
    let mut deep = syn(SUB, MX);
    for _ in 0..5 {
        deep = deep.wrap(Wrapper::Vlan {
            tpid: TPID_8021Q,
            vid: 0,
        });
    }
    assert_eq!(reason(&deep.build()), Reason::LinkUnparseableDropped);
    assert_eq!(
        reason(&syn(SUB6, MX6).wrappers(QINQ_PPPOE).build()),
        Reason::Dropped
    );
    let compressed = syn(SUB, MX)
        .wrap(Wrapper::Pppoe { compressed: true })
        .build();
    assert_eq!(reason(&compressed), Reason::Dropped);
    // PPPoE carrying LCP is not IP.
    let mut lcp = ethernet(&[], 0x8864, &[0x11, 0, 0, 1, 0, 6, 0xc0, 0x21, 1, 1, 0, 4]);
    lcp.resize(60, 0);
    assert_eq!(reason(&lcp), Reason::Other);
    assert_eq!(reason(&arp()), Reason::Other);
    let whole = syn(SUB, MX).build();
    assert_eq!(reason(&whole[..13]), Reason::Malformed);
    assert_eq!(reason(&whole[..14 + 19]), Reason::Malformed);
}

#[test]
fn ipv4_header_length_and_fragments() {
    // The kernel drops an IHL below 5 and a header longer than the total length.
    let mut short_ihl = syn(SUB, MX).build();
    short_ihl[14] = 0x44;
    assert_eq!(reason(&short_ihl), Reason::Malformed);
    let mut long_ihl = syn(SUB, MX).build();
    long_ihl[14] = 0x4f; // 60 bytes of header in a 40-byte packet
    assert_eq!(reason(&long_ihl), Reason::Malformed);
    // Bytes past the total length are not part of the packet.
    let mut trailer = syn(SUB, MX).upper_len(4).build();
    trailer.extend_from_slice(&syn(SUB, MX).build()[14 + 20 + 4..]);
    assert_eq!(reason(&trailer), Reason::UnparseableDropped);
    let mut wrong_version = syn(SUB, MX).build();
    wrong_version[14] = 0x65;
    assert_eq!(reason(&wrong_version), Reason::Malformed);

    let offset_one = syn(SUB, MX).ipv4_fragment(1, true).build();
    assert_eq!(reason(&offset_one), Reason::FragmentDropped);
    let outsider_offset_one = syn("203.0.113.1", MX).ipv4_fragment(1, false).build();
    assert_eq!(reason(&outsider_offset_one), Reason::Other);
    assert_eq!(
        reason(&syn(SUB, MX).ipv4_fragment(2, true).build()),
        Reason::Other
    );
    let udp_offset_one = FrameSpec::udp(ip(SUB), ip(MX), 25)
        .ipv4_fragment(1, true)
        .build();
    assert_eq!(reason(&udp_offset_one), Reason::Other);
    // A first fragment must hold the whole TCP header; an unfragmented packet that does not
    // is merely unparseable.
    let first = syn(SUB, MX).ipv4_fragment(0, true).upper_len(12).build();
    assert_eq!(reason(&first), Reason::FragmentDropped);
    let cut = syn(SUB, MX).upper_len(12).build();
    assert_eq!(reason(&cut), Reason::UnparseableDropped);
    // The same from a monitored range is counted, never dropped.
    let monitored = syn("100.127.0.1", MX).ipv4_fragment(1, true).build();
    assert_eq!(reason(&monitored), Reason::Monitored);
}

#[test]
fn ipv6_extension_chains() {
    let chain = |count: usize| {
        let mut spec = syn(SUB6, MX6);
        for _ in 0..count {
            spec = spec.extension(Extension::DestinationOptions { len_units: 0 });
        }
        spec.build()
    };
    assert_eq!(
        reason(&chain(dissect::MAX_EXTENSION_HEADERS)),
        Reason::Dropped
    );
    assert_eq!(
        reason(&chain(dissect::MAX_EXTENSION_HEADERS + 1)),
        Reason::UnparseableDropped
    );
    let later = syn(SUB6, MX6)
        .extension(Extension::Fragment {
            offset: 3,
            more: true,
        })
        .build();
    assert_eq!(reason(&later), Reason::Other);
    let first_cut = syn(SUB6, MX6)
        .extension(Extension::Fragment {
            offset: 0,
            more: true,
        })
        .upper_len(8)
        .build();
    assert_eq!(reason(&first_cut), Reason::FragmentDropped);
    let atomic_cut = syn(SUB6, MX6)
        .extension(Extension::Fragment {
            offset: 0,
            more: false,
        })
        .upper_len(8)
        .build();
    assert_eq!(reason(&atomic_cut), Reason::UnparseableDropped);
    let behind_ah = syn(SUB6, MX6)
        .extension(Extension::Authentication { len_units: 4 })
        .extension(Extension::HopByHop { len_units: 2 })
        .build();
    assert_eq!(reason(&behind_ah), Reason::Dropped);
}

#[test]
fn unparseable_action_and_outsiders() {
    let cut = syn(SUB, MX).upper_len(3).build();
    let mut model = Model::new(ModelPolicy {
        unparseable: UnparseableAction::Pass,
        ..policy()
    });
    assert_eq!(model.judge(&cut), Reason::UnparseablePassed);
    let outsider_cut = syn("203.0.113.1", MX).upper_len(3).build();
    assert_eq!(model.judge(&outsider_cut), Reason::Other);
}

#[test]
fn counters_and_host_statistics() {
    let mut model = Model::new(policy());
    model.judge(&syn(SUB, MX).build());
    model.judge(&syn(SUB, MX).build());
    model.judge(&FrameSpec::tcp(ip(SUB), ip(MX), 25, TCP_SYN | TCP_ACK).build());
    model.judge(&syn(SUB, "192.0.2.25").build());
    model.judge(&syn(SUB, MX).upper_len(5).build());
    model.judge(&syn("203.0.113.1", MX).build());

    let mut expected = [0u64; REASON_COUNT as usize];
    expected[Reason::Dropped as usize] = 3;
    expected[Reason::Relayed as usize] = 1;
    expected[Reason::UnparseableDropped as usize] = 1;
    expected[Reason::NotSubscriber as usize] = 1;
    assert_eq!(model.counters, expected);

    // The relayed segment and the outsider are not tracked.
    assert_eq!(model.hosts.len(), 1);
    let host = model.hosts[&ip(SUB)];
    assert_eq!((host.attempts, host.segments, host.dropped), (2, 4, 4));
    assert_eq!(host.last_dst, ip(MX));
    // The last segment's TCP header was not reachable: no port.
    assert_eq!(host.last_dst_port, 0);
    assert_eq!(host.last_reason, Reason::UnparseableDropped);
    assert_eq!(host.dst_sketch.iter().filter(|r| **r != 0).count(), 1);
}

#[test]
fn an_ipv6_host_is_its_prefix() {
    let mut model = Model::new(policy());
    model.judge(&syn("2001:db8:1000:5::1", MX6).build());
    model.judge(&syn("2001:db8:1000:5:ffff::2", MX6).build());
    model.judge(&syn("2001:db8:1000:6::1", MX6).build());
    assert_eq!(model.hosts.len(), 2);
    assert_eq!(model.hosts[&ip("2001:db8:1000:5::")].attempts, 2);
    assert_eq!(model.hosts[&ip("2001:db8:1000:6::")].attempts, 1);

    // An escalation holds for every address of its host.
    let escalated = ModelPolicy {
        subscribers: vec![("2001:db8:1000::/36".parse().unwrap(), Mode::Monitor)],
        escalated: HashSet::from([ip("2001:db8:1000:5::")]),
        ..policy()
    };
    assert_eq!(
        decide(
            &escalated,
            &dissect(&syn("2001:db8:1000:5::9", MX6).build())
        ),
        Reason::Dropped
    );
    assert_eq!(
        decide(
            &escalated,
            &dissect(&syn("2001:db8:1000:7::9", MX6).build())
        ),
        Reason::Monitored
    );
}

#[test]
fn the_first_five_distinct_destinations_are_kept_exactly() {
    let mut model = Model::new(policy());
    let destinations: Vec<String> = (1..=6).map(|n| format!("198.51.100.{n}")).collect();
    let key = |dst: &str| {
        let wide = match ip(dst) {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => v6.octets(),
        };
        sketch::exact_key(sketch::hash(&wide))
    };
    for dst in &destinations[..5] {
        model.judge(&syn(SUB, dst).build());
        model.judge(&syn(SUB, &destinations[0]).build());
    }
    let host = model.hosts[&ip(SUB)];
    let expected: Vec<u32> = destinations[..5].iter().map(|d| key(d)).collect();
    assert_eq!(host.dst_exact.to_vec(), expected, "in order of first sight");
    assert_eq!(host.dst_exact_len, 5, "repeats are not counted again");

    model.judge(&syn(SUB, &destinations[5]).build());
    let host = model.hosts[&ip(SUB)];
    assert_eq!(
        host.dst_exact_len, EXACT_OVERFLOWED,
        "a sixth one overflows the set"
    );
    assert_eq!(host.dst_exact.to_vec(), expected, "the set itself stays");
}

#[test]
fn reject_answers_attempts_within_the_bucket_and_ratelimit_passes_within_its_limit() {
    let limit = Limit {
        rate: 2,
        per_secs: 3600,
    };
    let mut model = Model::new(ModelPolicy {
        subscribers: vec![
            ("100.64.0.0/10".parse().unwrap(), Mode::Enforce),
            ("100.64.1.0/24".parse().unwrap(), Mode::Enforce),
            ("100.127.0.0/16".parse().unwrap(), Mode::Monitor),
        ],
        actions: HashMap::from([
            ("100.64.0.0/10".parse().unwrap(), (Action::Reset, limit)),
            ("100.64.1.0/24".parse().unwrap(), (Action::RateLimit, limit)),
            (
                "100.127.0.0/16".parse().unwrap(),
                (Action::IcmpProhibited, limit),
            ),
        ]),
        ..policy()
    });
    let reasons = |model: &mut Model, frame: &[u8], n: usize| -> Vec<Reason> {
        (0..n).map(|_| model.judge(frame)).collect()
    };
    // Two replies, then drops; a segment that is no attempt is dropped unanswered.
    assert_eq!(
        reasons(&mut model, &syn(SUB, MX).build(), 3),
        [Reason::Rejected, Reason::Rejected, Reason::Dropped]
    );
    assert_eq!(
        model.judge(&FrameSpec::tcp(ip(SUB), ip(MX), 25, TCP_ACK).build()),
        Reason::Dropped
    );
    let host = model.hosts[&ip(SUB)];
    assert_eq!((host.tokens_taken, host.limited, host.dropped), (2, 1, 4));
    // The more specific range rate-limits: its connections' segments pass.
    assert_eq!(
        reasons(&mut model, &syn("100.64.1.9", MX).build(), 3),
        [Reason::WithinRate, Reason::WithinRate, Reason::RateLimited]
    );
    assert_eq!(
        model.judge(&FrameSpec::tcp(ip("100.64.1.9"), ip(MX), 25, TCP_ACK).build()),
        Reason::WithinRate
    );
    // Monitor mode passes; the escalated host of the monitor range is rejected.
    assert_eq!(
        model.judge(&syn("100.127.1.1", MX).build()),
        Reason::Monitored
    );
    assert_eq!(
        model.judge(&syn("100.127.9.9", MX).build()),
        Reason::Rejected
    );
    // Each host has its own bucket.
    assert_eq!(
        model.judge(&syn("100.64.0.3", MX).build()),
        Reason::Rejected
    );
}
