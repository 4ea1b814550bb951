//! Typed access to the kernel program's maps. Nothing else in user space touches them.

use std::net::{IpAddr, Ipv6Addr};

use aya::{
    Ebpf, Pod,
    maps::{Array, HashMap, LpmTrie, MapData, MapError, PerCpuArray, lpm_trie::Key},
};
use ipnet::IpNet;
use smtpguard_common::{
    EnforcementConfig, HostKey, HostStats, PrefixRule, REASON_COUNT, SubscriberPolicy,
    maps as names,
};

use super::DataplaneError;
use crate::config::Config;

type Trie<'a, K, V> = LpmTrie<&'a mut MapData, K, V>;

/// One kind of prefix list, as the kernel holds it: an LPM trie per address family.
struct PrefixTries<'a, V: Pod> {
    v4: Trie<'a, [u8; 4], V>,
    v6: Trie<'a, [u8; 16], V>,
    names: [&'static str; 2],
}

impl<'a, V: Pod> PrefixTries<'a, V> {
    fn new(
        v4: Option<&'a mut aya::maps::Map>,
        v6: Option<&'a mut aya::maps::Map>,
        names: [&'static str; 2],
    ) -> Result<Self, DataplaneError> {
        Ok(Self {
            v4: typed(v4, names[0])?,
            v6: typed(v6, names[1])?,
            names,
        })
    }

    fn insert(&mut self, prefix: IpNet, value: V) -> Result<(), DataplaneError> {
        let len = u32::from(prefix.prefix_len());
        let (result, name) = match prefix {
            IpNet::V4(net) => (
                self.v4
                    .insert(&Key::new(len, net.network().octets()), value, 0),
                self.names[0],
            ),
            IpNet::V6(net) => (
                self.v6
                    .insert(&Key::new(len, net.network().octets()), value, 0),
                self.names[1],
            ),
        };
        result.map_err(|source| map_error(name, source))
    }
}

fn typed<'a, T>(
    map: Option<&'a mut aya::maps::Map>,
    name: &'static str,
) -> Result<T, DataplaneError>
where
    T: TryFrom<&'a mut aya::maps::Map, Error = MapError>,
{
    map.ok_or(DataplaneError::Missing { kind: "map", name })?
        .try_into()
        .map_err(|source| map_error(name, source))
}

fn map_error(map: &'static str, source: MapError) -> DataplaneError {
    DataplaneError::Map { map, source }
}

/// The maps that hold the policy: enforced ports, subscriber, relay and exemption prefixes.
pub struct PolicyMaps<'a> {
    enforcement: Array<&'a mut MapData, EnforcementConfig>,
    subscribers: PrefixTries<'a, SubscriberPolicy>,
    relays: PrefixTries<'a, PrefixRule>,
    exemptions: PrefixTries<'a, PrefixRule>,
}

impl<'a> PolicyMaps<'a> {
    pub(super) fn new(ebpf: &'a mut Ebpf) -> Result<Self, DataplaneError> {
        let [enforcement, sub4, sub6, relay4, relay6, exempt4, exempt6] = ebpf.maps_disjoint_mut([
            names::ENFORCEMENT,
            names::SUBSCRIBERS_V4,
            names::SUBSCRIBERS_V6,
            names::RELAYS_V4,
            names::RELAYS_V6,
            names::EXEMPTIONS_V4,
            names::EXEMPTIONS_V6,
        ]);
        Ok(Self {
            enforcement: typed(enforcement, names::ENFORCEMENT)?,
            subscribers: PrefixTries::new(
                sub4,
                sub6,
                [names::SUBSCRIBERS_V4, names::SUBSCRIBERS_V6],
            )?,
            relays: PrefixTries::new(relay4, relay6, [names::RELAYS_V4, names::RELAYS_V6])?,
            exemptions: PrefixTries::new(
                exempt4,
                exempt6,
                [names::EXEMPTIONS_V4, names::EXEMPTIONS_V6],
            )?,
        })
    }

    /// Writes the whole policy into empty maps. Prefixes go in before the enforced ports, so
    /// the program never judges traffic against half a policy. Rule identifiers are the
    /// entries' positions in the config.
    pub fn install(&mut self, config: &Config) -> Result<(), DataplaneError> {
        for (rule, range) in (0..).zip(&config.subscribers) {
            self.subscribers
                .insert(range.prefix, SubscriberPolicy::new(range.mode, rule))?;
        }
        for (rule, relay) in (0..).zip(&config.relays) {
            self.relays.insert(relay.prefix, PrefixRule { rule })?;
        }
        for (rule, exemption) in (0..).zip(&config.exemptions) {
            self.exemptions
                .insert(exemption.prefix, PrefixRule { rule })?;
        }
        let enforcement =
            EnforcementConfig::new(&config.enforcement.ports, config.enforcement.unparseable);
        self.enforcement
            .set(0, enforcement, 0)
            .map_err(|source| map_error(names::ENFORCEMENT, source))
    }
}

pub(super) fn read_counters(ebpf: &Ebpf) -> Result<[u64; REASON_COUNT as usize], DataplaneError> {
    let map = ebpf.map(names::COUNTERS).ok_or(DataplaneError::Missing {
        kind: "map",
        name: names::COUNTERS,
    })?;
    let counters: PerCpuArray<&MapData, u64> = map
        .try_into()
        .map_err(|source| map_error(names::COUNTERS, source))?;
    let mut totals = [0u64; REASON_COUNT as usize];
    for (index, total) in (0..).zip(totals.iter_mut()) {
        let per_cpu = counters
            .get(&index, 0)
            .map_err(|source| map_error(names::COUNTERS, source))?;
        *total = per_cpu.iter().sum();
    }
    Ok(totals)
}

pub(super) fn read_hosts(ebpf: &Ebpf) -> Result<Vec<(IpAddr, HostStats)>, DataplaneError> {
    let map = ebpf.map(names::HOST_STATS).ok_or(DataplaneError::Missing {
        kind: "map",
        name: names::HOST_STATS,
    })?;
    let hosts: HashMap<&MapData, HostKey, HostStats> = map
        .try_into()
        .map_err(|source| map_error(names::HOST_STATS, source))?;
    hosts
        .iter()
        .map(|entry| {
            let (key, stats) = entry.map_err(|source| map_error(names::HOST_STATS, source))?;
            Ok((host_address(&key.addr), stats))
        })
        .collect()
}

/// Undoes the IPv4 mapping of host keys and destinations.
pub fn host_address(addr: &[u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(*addr);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}
