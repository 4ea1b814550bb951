//! Typed access to the kernel program's maps. Nothing else in user space touches them.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use aya::{
    Ebpf, Pod,
    maps::IterableMap as _,
    maps::{Array, HashMap, LpmTrie, MapData, MapError, PerCpuArray, lpm_trie::Key},
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use smtpguard_common::{
    EnforcementConfig, HostKey, HostMask, HostOverride, HostStats, PrefixOrigin, REASON_COUNT,
    Reason, RelayFilter, RelayMatch, SourcePolicy, SubscriberPolicy, maps as names,
};

use super::{DataplaneError, PinLayout, hosts::HostsRead};
use crate::policy::DesiredPolicy;

type Trie<'a, K, V> = LpmTrie<&'a mut MapData, K, V>;

/// One kind of prefix list, as the kernel holds it: an LPM trie per address family.
struct PrefixTries<'a, V: Pod> {
    v4: Trie<'a, [u8; 4], V>,
    v6: Trie<'a, [u8; 16], V>,
    names: [&'static str; 2],
}

impl<'a, V: Pod + PartialEq> PrefixTries<'a, V> {
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

    /// Makes the tries hold exactly `desired`: entries that are missing or differ are written
    /// first, stale ones removed last, so the tries are never emptier than either the old or
    /// the new policy while this runs.
    fn reconcile(
        &mut self,
        desired: &BTreeMap<IpNet, V>,
        report: &mut ReconcileReport,
    ) -> Result<(), DataplaneError> {
        let current = self.entries()?;
        self.apply(&current, desired, report)
    }

    /// Turns tries that hold `current` into ones that hold `desired`, in the order
    /// `reconcile` promises.
    fn apply(
        &mut self,
        current: &BTreeMap<IpNet, V>,
        desired: &BTreeMap<IpNet, V>,
        report: &mut ReconcileReport,
    ) -> Result<(), DataplaneError> {
        self.write_changed(current, desired, report)?;
        self.remove_stale(current, desired, report)
    }

    /// The first half of [`Self::apply`]: entries of `desired` that are missing or differ.
    fn write_changed(
        &mut self,
        current: &BTreeMap<IpNet, V>,
        desired: &BTreeMap<IpNet, V>,
        report: &mut ReconcileReport,
    ) -> Result<(), DataplaneError> {
        for (prefix, value) in desired {
            match current.get(prefix) {
                Some(existing) if existing == value => {}
                Some(_) => {
                    self.write(*prefix, *value)?;
                    report.updated += 1;
                }
                None => {
                    self.write(*prefix, *value)?;
                    report.added += 1;
                }
            }
        }
        Ok(())
    }

    /// The second half of [`Self::apply`]: entries `desired` no longer has.
    fn remove_stale(
        &mut self,
        current: &BTreeMap<IpNet, V>,
        desired: &BTreeMap<IpNet, V>,
        report: &mut ReconcileReport,
    ) -> Result<(), DataplaneError> {
        for prefix in current
            .keys()
            .filter(|prefix| !desired.contains_key(prefix))
        {
            self.remove(*prefix)?;
            report.removed += 1;
        }
        Ok(())
    }

    /// Every prefix in both tries with its value.
    fn entries(&self) -> Result<BTreeMap<IpNet, V>, DataplaneError> {
        let mut entries = BTreeMap::new();
        for entry in self.v4.iter() {
            let (key, value) = entry.map_err(|source| map_error(self.names[0], source))?;
            let net =
                Ipv4Net::new(Ipv4Addr::from(key.data()), key.prefix_len() as u8).map_err(|_| {
                    DataplaneError::CorruptKey {
                        map: self.names[0],
                        prefix_len: key.prefix_len(),
                    }
                })?;
            entries.insert(IpNet::V4(net), value);
        }
        for entry in self.v6.iter() {
            let (key, value) = entry.map_err(|source| map_error(self.names[1], source))?;
            let net =
                Ipv6Net::new(Ipv6Addr::from(key.data()), key.prefix_len() as u8).map_err(|_| {
                    DataplaneError::CorruptKey {
                        map: self.names[1],
                        prefix_len: key.prefix_len(),
                    }
                })?;
            entries.insert(IpNet::V6(net), value);
        }
        Ok(entries)
    }

    fn longest_match(&self, address: IpAddr) -> Result<Option<V>, DataplaneError> {
        let found = match address {
            IpAddr::V4(v4) => self
                .v4
                .get(&Key::new(32, v4.octets()), 0)
                .map_err(|e| (0, e)),
            IpAddr::V6(v6) => self
                .v6
                .get(&Key::new(128, v6.octets()), 0)
                .map_err(|e| (1, e)),
        };
        match found {
            Ok(value) => Ok(Some(value)),
            Err((_, MapError::KeyNotFound)) => Ok(None),
            Err((family, source)) => Err(map_error(self.names[family], source)),
        }
    }

    fn write(&mut self, prefix: IpNet, value: V) -> Result<(), DataplaneError> {
        let len = u32::from(prefix.prefix_len());
        match prefix {
            IpNet::V4(net) => self
                .v4
                .insert(&Key::new(len, net.network().octets()), value, 0)
                .map_err(|source| map_error(self.names[0], source)),
            IpNet::V6(net) => self
                .v6
                .insert(&Key::new(len, net.network().octets()), value, 0)
                .map_err(|source| map_error(self.names[1], source)),
        }
    }

    fn remove(&mut self, prefix: IpNet) -> Result<(), DataplaneError> {
        let len = u32::from(prefix.prefix_len());
        match prefix {
            IpNet::V4(net) => self
                .v4
                .remove(&Key::new(len, net.network().octets()))
                .map_err(|source| map_error(self.names[0], source)),
            IpNet::V6(net) => self
                .v6
                .remove(&Key::new(len, net.network().octets()))
                .map_err(|source| map_error(self.names[1], source)),
        }
    }
}

pub(super) fn typed<'a, T>(
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

pub(super) fn map_error(map: &'static str, source: MapError) -> DataplaneError {
    DataplaneError::Map { map, source }
}

/// The maps that hold the policy: enforced ports, sources (subscriber ranges and exemptions,
/// compiled together) and relays.
pub struct PolicyMaps<'a> {
    /// Read and written as bytes (see `enforcement.rs`).
    enforcement: &'a mut MapData,
    sources: PrefixTries<'a, SourcePolicy>,
    subscriber_space: PrefixTries<'a, SubscriberPolicy>,
    relays: PrefixTries<'a, PrefixOrigin>,
    relay_filter: Array<&'a mut MapData, RelayFilter>,
    generation: Array<&'a mut MapData, u32>,
}

impl<'a> PolicyMaps<'a> {
    pub(super) fn new(ebpf: &'a mut Ebpf) -> Result<Self, DataplaneError> {
        let [
            enforcement,
            source4,
            source6,
            space4,
            space6,
            relay4,
            relay6,
            relay_filter,
            generation,
        ] = ebpf.maps_disjoint_mut([
            names::ENFORCEMENT,
            names::SOURCES_V4,
            names::SOURCES_V6,
            names::SUBSCRIBER_SPACE_V4,
            names::SUBSCRIBER_SPACE_V6,
            names::RELAYS_V4,
            names::RELAYS_V6,
            names::RELAY_FILTER,
            names::POLICY_GENERATION,
        ]);
        let enforcement = match enforcement {
            Some(aya::maps::Map::Array(data)) => data,
            _ => {
                return Err(DataplaneError::Missing {
                    kind: "map",
                    name: names::ENFORCEMENT,
                });
            }
        };
        Ok(Self {
            enforcement,
            sources: PrefixTries::new(source4, source6, [names::SOURCES_V4, names::SOURCES_V6])?,
            subscriber_space: PrefixTries::new(
                space4,
                space6,
                [names::SUBSCRIBER_SPACE_V4, names::SUBSCRIBER_SPACE_V6],
            )?,
            relays: PrefixTries::new(relay4, relay6, [names::RELAYS_V4, names::RELAYS_V6])?,
            relay_filter: typed(relay_filter, names::RELAY_FILTER)?,
            generation: typed(generation, names::POLICY_GENERATION)?,
        })
    }

    /// Adds (`Some`) or removes (`None`) one relay in `desired` and in the relay maps, which
    /// held `desired` before: one trie write and the filter, without reading the whole map
    /// back as a full reconcile does. A new relay is in the trie before the filter admits
    /// it; a removed one leaves the filter before the trie, since the filter settles a
    /// single-address relay on its own.
    pub fn set_relay(
        &mut self,
        desired: &mut DesiredPolicy,
        prefix: IpNet,
        value: Option<PrefixOrigin>,
    ) -> Result<(), DataplaneError> {
        match value {
            Some(value) => {
                self.relays.write(prefix, value)?;
                desired.relays.insert(prefix, value);
                self.write_relay_filter(desired)
            }
            None => {
                let removed = desired.relays.remove(&prefix);
                if let Err(error) = self.write_relay_filter(desired) {
                    if let Some(removed) = removed {
                        desired.relays.insert(prefix, removed);
                    }
                    return Err(error);
                }
                self.relays.remove(prefix)
            }
        }
    }

    fn write_relay_filter(&mut self, desired: &DesiredPolicy) -> Result<(), DataplaneError> {
        self.relay_filter
            .set(0, desired.relay_filter(), 0)
            .map_err(|source| map_error(names::RELAY_FILTER, source))
    }

    /// Adds (`Some`) or removes (`None`) one exemption in `desired` and in the source tries,
    /// which held `desired` before: only the entries at and inside `prefix` can change, so
    /// only those are computed and written. On a failed write the entries already written
    /// are put back and `desired` is left as it was.
    pub fn set_exemption(
        &mut self,
        desired: &mut DesiredPolicy,
        prefix: IpNet,
        value: Option<PrefixOrigin>,
    ) -> Result<(), DataplaneError> {
        let before = desired.sources_within(prefix);
        let previous = match value {
            Some(value) => desired.exemptions.insert(prefix, value),
            None => desired.exemptions.remove(&prefix),
        };
        let after = desired.sources_within(prefix);
        let result = self
            .sources
            .apply(&before, &after, &mut ReconcileReport::default());
        if result.is_err() {
            match previous {
                Some(previous) => desired.exemptions.insert(prefix, previous),
                None => desired.exemptions.remove(&prefix),
            };
            // Best effort: the write that failed already says what is wrong.
            let _ = self
                .sources
                .apply(&after, &before, &mut ReconcileReport::default());
        }
        // Also after a failure: some entries may have changed and changed back.
        advance_generation(&mut self.generation)?;
        result
    }

    /// Looks `src` and `dst` up the way the program does (full-length keys).
    pub fn lookup(&self, src: IpAddr, dst: IpAddr) -> Result<KernelMatch, DataplaneError> {
        let source = self.sources.longest_match(src)?;
        let filter = self
            .relay_filter
            .get(&0, 0)
            .map_err(|source| map_error(names::RELAY_FILTER, source))?;
        let relay_match = match dst {
            IpAddr::V4(v4) => filter.relay_v4(v4.octets()),
            IpAddr::V6(v6) => filter.relay_v6(v6.octets()),
        };
        Ok(KernelMatch {
            subscriber: source
                .map(|s| s.subscriber)
                .filter(SubscriberPolicy::is_subscriber),
            // The trie for the origin `check` explains: the filter says `Relay` only of an
            // address the trie holds.
            relay: match relay_match {
                RelayMatch::NotRelay => None,
                RelayMatch::Relay | RelayMatch::AskTrie => self.relays.longest_match(dst)?,
            },
            exemption: source
                .filter(SourcePolicy::is_exempt)
                .map(|s| PrefixOrigin {
                    origin: s.exemption,
                }),
        })
    }

    /// Makes the maps hold exactly `desired`, writing only the difference. Additions and
    /// changes go in before the enforced ports are set and before anything is removed, so the
    /// program never judges traffic against half a policy and no map is emptied to be refilled.
    pub fn reconcile(
        &mut self,
        desired: &DesiredPolicy,
    ) -> Result<ReconcileReport, DataplaneError> {
        let mut report = ReconcileReport::default();
        self.sources.reconcile(&desired.sources(), &mut report)?;
        self.subscriber_space
            .reconcile(&desired.subscriber_space(), &mut report)?;
        // Around the filter, which settles single-address relays on its own: it admits a
        // relay only once the trie holds it, and drops one before the trie does.
        let relays = self.relays.entries()?;
        self.relays
            .write_changed(&relays, &desired.relays, &mut report)?;
        self.write_relay_filter(desired)?;
        self.relays
            .remove_stale(&relays, &desired.relays, &mut report)?;
        let current = super::enforcement::read(self.enforcement)?;
        // The host table's place is the loader's, not the policy's.
        let wanted = EnforcementConfig {
            host_table: current.host_table,
            ..desired.enforcement
        };
        if current != wanted {
            super::enforcement::write(self.enforcement, &wanted)?;
            report.updated += 1;
        }
        advance_generation(&mut self.generation)?;
        Ok(report)
    }
}

/// Moves the policy generation on, after the maps it stands for were written: the kernel
/// looks every host's class up again instead of trusting the class cached with its
/// statistics.
fn advance_generation(generation: &mut Array<&mut MapData, u32>) -> Result<(), DataplaneError> {
    let current = generation
        .get(&0, 0)
        .map_err(|source| map_error(names::POLICY_GENERATION, source))?;
    generation
        .set(0, current.wrapping_add(1), 0)
        .map_err(|source| map_error(names::POLICY_GENERATION, source))
}

/// [`advance_generation`] for writers outside [`PolicyMaps`] (the escalation map).
pub(super) fn advance_policy_generation(ebpf: &mut Ebpf) -> Result<(), DataplaneError> {
    advance_generation(&mut typed(
        ebpf.map_mut(names::POLICY_GENERATION),
        names::POLICY_GENERATION,
    )?)
}

/// What the kernel's tries hold for a source and destination: the value of the longest
/// matching prefix in each, as the program would look them up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelMatch {
    pub subscriber: Option<SubscriberPolicy>,
    pub relay: Option<PrefixOrigin>,
    pub exemption: Option<PrefixOrigin>,
}

/// What a reconcile changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    pub added: usize,
    pub updated: usize,
    pub removed: usize,
}

pub(super) fn read_counters(ebpf: &Ebpf) -> Result<[u64; REASON_COUNT as usize], DataplaneError> {
    reason_totals(ebpf, names::COUNTERS, |reason| reason as u32)
}

/// Judged segments whose host's statistics could not be recorded, summed over CPUs.
pub(super) fn read_unrecorded_hosts(ebpf: &Ebpf) -> Result<u64, DataplaneError> {
    let name = names::UNRECORDED_HOSTS;
    let map = ebpf
        .map(name)
        .ok_or(DataplaneError::Missing { kind: "map", name })?;
    let counter: PerCpuArray<&MapData, u64> =
        map.try_into().map_err(|source| map_error(name, source))?;
    let per_cpu = counter
        .get(&0, 0)
        .map_err(|source| map_error(name, source))?;
    Ok(per_cpu.iter().sum())
}

/// A counter per reason of the per-CPU array `name`, at `index_of(reason)`, summed over CPUs
/// (indexed by `Reason as usize`).
pub(super) fn reason_totals(
    ebpf: &Ebpf,
    name: &'static str,
    index_of: impl Fn(Reason) -> u32,
) -> Result<[u64; REASON_COUNT as usize], DataplaneError> {
    let map = ebpf
        .map(name)
        .ok_or(DataplaneError::Missing { kind: "map", name })?;
    let counters: PerCpuArray<&MapData, u64> =
        map.try_into().map_err(|source| map_error(name, source))?;
    let mut totals = [0u64; REASON_COUNT as usize];
    for (reason, total) in Reason::ALL.into_iter().zip(totals.iter_mut()) {
        let per_cpu = counters
            .get(&index_of(reason), 0)
            .map_err(|source| map_error(name, source))?;
        *total = per_cpu.iter().sum();
    }
    Ok(totals)
}

/// What one host is, as the program reads it from its configuration: escalations are keyed
/// the same way.
pub(super) fn host_mask(ebpf: &Ebpf) -> Result<HostMask, DataplaneError> {
    let map = ebpf
        .map(names::ENFORCEMENT)
        .ok_or(DataplaneError::Missing {
            kind: "map",
            name: names::ENFORCEMENT,
        })?;
    match map {
        aya::maps::Map::Array(data) => Ok(super::enforcement::read(data)?.host_mask),
        _ => Err(DataplaneError::Missing {
            kind: "map",
            name: names::ENFORCEMENT,
        }),
    }
}

pub(super) fn overrides(
    ebpf: &mut Ebpf,
) -> Result<HashMap<&mut MapData, HostKey, HostOverride>, DataplaneError> {
    let map = ebpf
        .map_mut(names::HOST_OVERRIDES)
        .ok_or(DataplaneError::Missing {
            kind: "map",
            name: names::HOST_OVERRIDES,
        })?;
    map.try_into()
        .map_err(|source| map_error(names::HOST_OVERRIDES, source))
}

/// The per-host statistics (host table, overflow map) and the sketch epoch, opened from
/// their pins: the snapshotter's own handles, so reading a million hosts never waits for (or
/// holds) the agent's state.
pub struct PinnedHostStats {
    table: MapData,
    overflow: HashMap<MapData, HostKey, HostStats>,
    enforcement: MapData,
    epoch: Array<MapData, u32>,
}

impl PinnedHostStats {
    pub fn open(layout: &PinLayout) -> Result<Self, DataplaneError> {
        let pinned =
            |name| MapData::from_pin(layout.map(name)).map_err(|source| map_error(name, source));
        Ok(Self {
            table: pinned(names::HOST_TABLE)?,
            overflow: open_pinned(layout, names::HOST_STATS)?,
            enforcement: pinned(names::ENFORCEMENT)?,
            epoch: open_pinned(layout, names::SKETCH_EPOCH)?,
        })
    }

    /// Every tracked host and its statistics, `epoch` being the sketch epoch now running.
    pub fn read_all(&self, epoch: u32) -> Result<HostsRead, DataplaneError> {
        let params = super::enforcement::read(&self.enforcement)?.host_table;
        super::hosts::read(&self.table, self.overflow.map(), params, epoch)
    }

    /// Removes overflow entries a read found removable, once it is recorded.
    pub fn remove_overflow(&mut self, keys: &[HostKey]) -> Result<(), DataplaneError> {
        super::hosts::remove(&mut self.overflow, keys)
    }

    /// Starts a new sketch epoch (see `HostStats::sketch_epoch`).
    pub fn set_epoch(&mut self, epoch: u32) -> Result<(), DataplaneError> {
        self.epoch
            .set(0, epoch, 0)
            .map_err(|source| map_error(names::SKETCH_EPOCH, source))
    }
}

fn open_pinned<T: TryFrom<aya::maps::Map, Error = MapError>>(
    layout: &PinLayout,
    name: &'static str,
) -> Result<T, DataplaneError> {
    let data = MapData::from_pin(layout.map(name)).map_err(|source| map_error(name, source))?;
    aya::maps::Map::from_map_data(data)
        .and_then(T::try_from)
        .map_err(|source| map_error(name, source))
}

/// Undoes the IPv4 mapping of destinations (and of the store's 16-byte hosts: no IPv6 source
/// in ::ffff:0:0/96 is ever a subscriber host, which the configuration makes sure of).
pub fn host_address(addr: &[u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(*addr);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}
