//! The policy as the kernel maps should hold it: built from the configuration, the runtime
//! exemptions and relays, and resolved relay hostnames. Reconciling writes the difference
//! between this and what the maps hold.

use std::{collections::BTreeMap, net::IpAddr};

use ipnet::IpNet;
use smtpguard_common::{
    EnforcementConfig, Origin, PrefixOrigin, RelayFilter, SourcePolicy, SubscriberPolicy,
};

use crate::config::Config;

#[derive(Clone, Debug, PartialEq)]
pub struct DesiredPolicy {
    pub enforcement: EnforcementConfig,
    pub subscribers: BTreeMap<IpNet, SubscriberPolicy>,
    pub relays: BTreeMap<IpNet, PrefixOrigin>,
    pub exemptions: BTreeMap<IpNet, PrefixOrigin>,
}

impl DesiredPolicy {
    /// The configuration's part. Subscriber entries carry their position in the file, so an
    /// explanation can name the rule.
    pub fn from_config(config: &Config) -> Self {
        let config_origin = PrefixOrigin::new(Origin::Config);
        Self {
            enforcement: EnforcementConfig::new(
                &config.enforcement.ports,
                config.enforcement.unparseable,
                config.enforcement.host_mask(),
            ),
            subscribers: (0..)
                .zip(&config.subscribers)
                .map(|(rule, range)| {
                    let (action, limit) = range.action.kernel();
                    let policy = SubscriberPolicy::with_action(range.mode, rule, action, limit);
                    (range.prefix, policy)
                })
                .collect(),
            relays: config
                .relays
                .iter()
                .map(|relay| (relay.prefix, config_origin))
                .collect(),
            exemptions: config
                .exemptions
                .iter()
                .map(|exemption| (exemption.prefix, config_origin))
                .collect(),
        }
    }

    /// Adds a relay prefix unless the configuration already has it (the file wins, so a
    /// runtime entry can be removed without touching the file's).
    pub fn add_relay(&mut self, prefix: IpNet, origin: Origin) {
        self.relays
            .entry(prefix)
            .or_insert(PrefixOrigin::new(origin));
    }

    /// Adds an exemption prefix unless the configuration already has it.
    pub fn add_exemption(&mut self, prefix: IpNet, origin: Origin) {
        self.exemptions
            .entry(prefix)
            .or_insert(PrefixOrigin::new(origin));
    }

    /// What the kernel's source tries hold: an entry for every subscriber range and every
    /// exemption, with the most specific range holding it and whether an exemption covers it.
    pub fn sources(&self) -> BTreeMap<IpNet, SourcePolicy> {
        let lengths = PrefixLengths::in_use(self.source_prefixes());
        self.source_prefixes()
            .map(|prefix| (*prefix, self.source(*prefix, &lengths)))
            .collect()
    }

    /// The source tries' keys: every subscriber range and every exemption, once each where
    /// both lists name the same prefix.
    pub fn source_prefixes(&self) -> impl Iterator<Item = &IpNet> {
        self.subscribers.keys().chain(
            self.exemptions
                .keys()
                .filter(|prefix| !self.subscribers.contains_key(prefix)),
        )
    }

    /// The source entries of `range` and of every prefix inside it: all that adding or
    /// removing the exemption `range` can change. Costs a lookup per prefix length up to each
    /// entry's own, however large the policy, so one `exempt add` stays one or a few map
    /// writes.
    pub fn sources_within(&self, range: IpNet) -> BTreeMap<IpNet, SourcePolicy> {
        let lengths = PrefixLengths::Every;
        within(&self.subscribers, range)
            .chain(within(&self.exemptions, range))
            .map(|prefix| (prefix, self.source(prefix, &lengths)))
            .collect()
    }

    /// The outermost subscriber ranges: those no other range holds. An address is in one of
    /// them exactly when some range holds it.
    pub fn subscriber_space(&self) -> BTreeMap<IpNet, SubscriberPolicy> {
        let mut outermost = BTreeMap::new();
        // In order of address, then length, a range comes after every range that holds it,
        // and since outermost ranges never overlap, only the last one so far can hold it.
        let mut last: Option<IpNet> = None;
        for (prefix, policy) in &self.subscribers {
            if last.is_some_and(|outer| outer.contains(prefix)) {
                continue;
            }
            last = Some(*prefix);
            outermost.insert(*prefix, *policy);
        }
        outermost
    }

    /// The relay path's filter: the relays, and the outermost subscriber ranges when they
    /// are few (see [`RelayFilter`]).
    pub fn relay_filter(&self) -> RelayFilter {
        let mut filter = RelayFilter::default();
        for prefix in self.relays.keys() {
            match prefix {
                IpNet::V4(net) => filter.add_v4(net.network().octets(), net.prefix_len()),
                IpNet::V6(net) => filter.add_v6(net.network().octets(), net.prefix_len()),
            }
        }
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for range in self.subscriber_space().keys() {
            match range {
                IpNet::V4(net) => v4.push((net.network().octets(), net.prefix_len())),
                IpNet::V6(net) => v6.push((net.network().octets(), net.prefix_len())),
            }
        }
        filter.subscriber_space.list_v4(&v4);
        filter.subscriber_space.list_v6(&v6);
        filter
    }

    fn source(&self, prefix: IpNet, lengths: &PrefixLengths) -> SourcePolicy {
        SourcePolicy {
            subscriber: lengths
                .most_specific(&self.subscribers, prefix)
                .map_or(SubscriberPolicy::NONE, |(_, range)| *range),
            exemption: lengths
                .most_specific(&self.exemptions, prefix)
                .map_or(SourcePolicy::NOT_EXEMPT, |(_, origin)| origin.origin),
        }
    }
}

/// The most specific prefix in `map` that holds `address`.
pub fn most_specific<V>(map: &BTreeMap<IpNet, V>, address: IpAddr) -> Option<IpNet> {
    PrefixLengths::Every
        .most_specific(map, IpNet::from(address))
        .map(|(prefix, _)| prefix)
}

/// The keys of `map` inside `range`, `range` included. Keys order by address, then length,
/// so they lie between `range`'s first address at length 0 and its last at full length.
fn within<V>(map: &BTreeMap<IpNet, V>, range: IpNet) -> impl Iterator<Item = IpNet> + '_ {
    let first = IpNet::new(range.network(), 0).expect("length 0 is valid");
    let last = IpNet::new(range.broadcast(), range.max_prefix_len()).expect("full length");
    map.range(first..=last)
        .map(|(prefix, _)| *prefix)
        .filter(move |prefix| range.contains(prefix))
}

/// Which prefix lengths a longest-prefix search tries.
enum PrefixLengths {
    /// Every length up to the prefix's own: no setup, for a few searches.
    Every,
    /// Only those the policy uses (per family, longest first): set up once, for a search per
    /// entry of the whole policy.
    InUse { v4: Vec<u8>, v6: Vec<u8> },
}

impl PrefixLengths {
    fn in_use<'a>(prefixes: impl Iterator<Item = &'a IpNet>) -> Self {
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for prefix in prefixes {
            match prefix {
                IpNet::V4(net) => v4.push(net.prefix_len()),
                IpNet::V6(net) => v6.push(net.prefix_len()),
            }
        }
        for lengths in [&mut v4, &mut v6] {
            lengths.sort_unstable_by(|a, b| b.cmp(a));
            lengths.dedup();
        }
        Self::InUse { v4, v6 }
    }

    /// The longest prefix in `map` that holds `prefix` (itself included), with its value.
    /// The map's keys have no host bits (the config and the CLI refuse them).
    fn most_specific<'a, V>(
        &self,
        map: &'a BTreeMap<IpNet, V>,
        prefix: IpNet,
    ) -> Option<(IpNet, &'a V)> {
        let lookup = |len: u8| {
            let candidate = IpNet::new(prefix.network(), len).ok()?.trunc();
            map.get(&candidate).map(|value| (candidate, value))
        };
        match self {
            Self::Every => (0..=prefix.prefix_len()).rev().find_map(lookup),
            Self::InUse { v4, v6 } => {
                let lengths = if prefix.network().is_ipv4() { v4 } else { v6 };
                lengths
                    .iter()
                    .filter(|len| **len <= prefix.prefix_len())
                    .find_map(|len| lookup(*len))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use smtpguard_common::{HostMask, Mode, UnparseableAction};

    use super::*;

    fn net(text: &str) -> IpNet {
        text.parse().unwrap()
    }

    fn policy() -> DesiredPolicy {
        let runtime = PrefixOrigin::new(Origin::Runtime);
        let config = PrefixOrigin::new(Origin::Config);
        DesiredPolicy {
            enforcement: EnforcementConfig::new(
                &[25],
                UnparseableAction::Drop,
                HostMask::new(32, 64),
            ),
            subscribers: BTreeMap::from([
                (net("10.0.0.0/8"), SubscriberPolicy::new(Mode::Enforce, 0)),
                (net("10.1.2.0/24"), SubscriberPolicy::new(Mode::Monitor, 1)),
                (
                    net("2001:db8::/32"),
                    SubscriberPolicy::new(Mode::Enforce, 2),
                ),
            ]),
            relays: BTreeMap::new(),
            exemptions: BTreeMap::from([
                (net("10.1.0.0/16"), config),
                (net("10.1.2.3/32"), runtime),
                (net("192.0.2.0/24"), runtime),
            ]),
        }
    }

    fn source(mode: Option<(Mode, u32)>, exemption: Option<Origin>) -> SourcePolicy {
        SourcePolicy {
            subscriber: mode.map_or(SubscriberPolicy::NONE, |(mode, rule)| {
                SubscriberPolicy::new(mode, rule)
            }),
            exemption: exemption.map_or(SourcePolicy::NOT_EXEMPT, |origin| origin as u32),
        }
    }

    #[test]
    fn sources_hold_each_prefix_with_its_range_and_covering_exemption() {
        use Mode::{Enforce, Monitor};
        use Origin::{Config, Runtime};
        let expected = BTreeMap::from([
            (net("10.0.0.0/8"), source(Some((Enforce, 0)), None)),
            (net("10.1.0.0/16"), source(Some((Enforce, 0)), Some(Config))),
            // A range inside an exemption stays exempt.
            (net("10.1.2.0/24"), source(Some((Monitor, 1)), Some(Config))),
            // The most specific exemption names the origin.
            (
                net("10.1.2.3/32"),
                source(Some((Monitor, 1)), Some(Runtime)),
            ),
            // An exemption outside every range makes nobody a subscriber.
            (net("192.0.2.0/24"), source(None, Some(Runtime))),
            (net("2001:db8::/32"), source(Some((Enforce, 2)), None)),
        ]);
        assert_eq!(policy().sources(), expected);
    }

    #[test]
    fn most_specific_prefix_wins() {
        let mut map = BTreeMap::new();
        for prefix in ["100.64.0.0/10", "100.64.10.0/24", "100.64.10.128/25"] {
            map.insert(prefix.parse::<IpNet>().unwrap(), ());
        }
        let found =
            |address: &str| most_specific(&map, address.parse().unwrap()).map(|p| p.to_string());
        assert_eq!(found("100.64.10.200").as_deref(), Some("100.64.10.128/25"));
        assert_eq!(found("100.64.10.5").as_deref(), Some("100.64.10.0/24"));
        assert_eq!(found("100.70.0.1").as_deref(), Some("100.64.0.0/10"));
        assert_eq!(found("198.51.100.7"), None);
    }

    #[test]
    fn subscriber_space_is_the_outermost_ranges() {
        let mut policy = policy();
        for (prefix, rule) in [
            ("11.0.0.0/8", 3),
            ("10.200.0.0/16", 4),
            ("10.200.3.0/24", 5),
            ("192.168.1.0/24", 6),
            ("192.168.0.0/16", 7),
            ("2001:db8:1::/48", 8),
        ] {
            let range = SubscriberPolicy::new(Mode::Enforce, rule);
            policy.subscribers.insert(net(prefix), range);
        }
        let outermost: Vec<String> = policy
            .subscriber_space()
            .keys()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            outermost,
            [
                "10.0.0.0/8",
                "11.0.0.0/8",
                "192.168.0.0/16",
                "2001:db8::/32"
            ]
        );
        // An address is in the space exactly when some range holds it.
        for host in [
            "10.200.3.9",
            "11.1.1.1",
            "192.168.1.1",
            "172.16.0.1",
            "2001:db8:1::1",
        ] {
            let host: std::net::IpAddr = host.parse().unwrap();
            let in_any = policy.subscribers.keys().any(|range| range.contains(&host));
            let in_space = policy.subscriber_space().keys().any(|r| r.contains(&host));
            assert_eq!(in_space, in_any, "{host}");
        }
    }

    #[test]
    fn sources_within_a_range_are_those_of_the_whole_compile() {
        let policy = policy();
        let all = policy.sources();
        for range in [
            "10.1.0.0/16",
            "10.1.2.0/24",
            "10.0.0.0/8",
            "0.0.0.0/0",
            "::/0",
        ] {
            let range = net(range);
            let expected: BTreeMap<IpNet, SourcePolicy> = all
                .iter()
                .filter(|(prefix, _)| range.contains(*prefix))
                .map(|(prefix, source)| (*prefix, *source))
                .collect();
            assert_eq!(policy.sources_within(range), expected, "within {range}");
        }
        assert!(policy.sources_within(net("172.16.0.0/12")).is_empty());
    }
}
