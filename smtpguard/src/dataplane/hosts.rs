//! The host table and its overflow map from user space: where the table's slots are (its
//! parameters in the enforcement entry), reading both as one set of hosts, counting and
//! filling them.

use std::hash::{BuildHasher as _, Hasher as _};

use aya::{
    Ebpf,
    maps::{Array, HashMap, IterableMap as _, MapData},
};
use smtpguard_common::{
    HostKey, HostSlot, HostStats, HostTableParams, maps as names,
    sketch::{self, EXACT_OVERFLOWED},
};

use super::{DataplaneError, batch, enforcement, mapped::MappedTable, maps::map_error};

/// One host as the kernel holds it.
#[derive(Clone, Copy, Debug)]
pub struct HostRecord {
    pub key: HostKey,
    /// The slot the host holds, or `None` for an overflow entry.
    pub slot: Option<u32>,
    /// Its entry: its slot's statistics, or its overflow entry when it holds no slot.
    pub stats: HostStats,
    /// An overflow entry of the same host beside its slot: a CPU that lost the race to claim
    /// the slot for the host's first segment recorded that segment there. Its counts belong
    /// to the host; [`HostsRead::removable`] lists it, so it is counted once.
    pub duplicate: Option<HostStats>,
}

impl HostRecord {
    /// The host's statistics with its duplicate's counts added in.
    pub fn merged(&self) -> HostStats {
        let Some(duplicate) = &self.duplicate else {
            return self.stats;
        };
        let mut merged = self.stats;
        merged.attempts += duplicate.attempts;
        merged.segments += duplicate.segments;
        merged.dropped += duplicate.dropped;
        merged.limited += duplicate.limited;
        merged.replies += duplicate.replies;
        merged.first_seen_ns = merged.first_seen_ns.min(duplicate.first_seen_ns);
        merged.last_seen_ns = merged.last_seen_ns.max(duplicate.last_seen_ns);
        if duplicate.sketch_epoch == merged.sketch_epoch {
            merged.dst_sketch = merged.sketch().union(&duplicate.dst_sketch);
            match duplicate.exact_destinations() {
                Some(keys) => {
                    let used = &keys[..duplicate.dst_exact_len as usize];
                    for key in used {
                        sketch::remember_exact(
                            &mut merged.dst_exact,
                            &mut merged.dst_exact_len,
                            *key,
                        );
                    }
                }
                None => merged.dst_exact_len = EXACT_OVERFLOWED,
            }
        }
        merged
    }
}

/// Every host of the table and the overflow map, read once.
#[derive(Debug, Default)]
pub struct HostsRead {
    pub hosts: Vec<HostRecord>,
    /// Overflow entries to remove once the read is recorded: duplicates of slot holders, and
    /// hosts idle for two epochs (their counts are stored; when they return, they may get a
    /// slot instead of a helper call per segment).
    pub removable: Vec<HostKey>,
}

/// Reads the published slots of `table` and every entry of `overflow`. `epoch` is the sketch
/// epoch now running.
pub(super) fn read(
    table: &MapData,
    overflow: &MapData,
    params: HostTableParams,
    epoch: u32,
) -> Result<HostsRead, DataplaneError> {
    let mut read = HostsRead::default();
    // (slot, index into `read.hosts`), in slot order as the batches come.
    let mut held: Vec<(u32, usize)> = Vec::new();
    MappedTable::new(table)?.for_each_published(|index, slot| {
        // Both slots of a pair holding one host: a claim raced the replacement of an idle
        // holder on another CPU (see the kernel's `create`). The kernel counts in the home
        // slot, which it looks in first; the other copy, a segment or so, is left out
        // rather than counted as a second host.
        if let Some((last, host)) = held.last_mut()
            && *last == index ^ 1
            && read.hosts[*host].key == slot.key
        {
            if params.pair(params.fold(&slot.key))[0] == index {
                *last = index;
                read.hosts[*host].slot = Some(index);
                read.hosts[*host].stats = slot.stats;
            }
            return;
        }
        held.push((index, read.hosts.len()));
        read.hosts.push(HostRecord {
            key: slot.key,
            slot: Some(index),
            stats: slot.stats,
            duplicate: None,
        });
    });
    batch::for_each::<HostKey, HostStats>(overflow, names::HOST_STATS, |key, stats| {
        let holder = params.pair(params.fold(&key)).into_iter().find_map(|slot| {
            held.binary_search_by_key(&slot, |(index, _)| *index)
                .ok()
                .map(|at| held[at].1)
                .filter(|host| read.hosts[*host].key == key)
        });
        match holder {
            Some(host) => {
                read.hosts[host].duplicate = Some(stats);
                read.removable.push(key);
            }
            None => {
                if HostSlot::is_idle(stats.sketch_epoch, epoch) {
                    read.removable.push(key);
                }
                read.hosts.push(HostRecord {
                    key,
                    slot: None,
                    stats,
                    duplicate: None,
                });
            }
        }
    })?;
    Ok(read)
}

/// [`read`] on a loaded program's own maps.
pub(super) fn read_loaded(ebpf: &Ebpf) -> Result<HostsRead, DataplaneError> {
    let epoch: Array<&MapData, u32> = typed(ebpf, names::SKETCH_EPOCH)?;
    let epoch = epoch
        .get(&0, 0)
        .map_err(|source| map_error(names::SKETCH_EPOCH, source))?;
    read(
        map_data(ebpf, names::HOST_TABLE)?,
        map_data(ebpf, names::HOST_STATS)?,
        params(ebpf)?,
        epoch,
    )
}

/// Removes `keys` from the overflow map; a key already gone (evicted) is fine.
pub(super) fn remove(
    overflow: &mut HashMap<MapData, HostKey, HostStats>,
    keys: &[HostKey],
) -> Result<(), DataplaneError> {
    for key in keys {
        match overflow.remove(key) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
            Err(source) => return Err(map_error(names::HOST_STATS, source)),
        }
    }
    Ok(())
}

/// Points the kernel at the loaded program's host table: a table made at this load gets a
/// new random seed; a reused (pinned) one keeps the seed its hosts were placed with. A
/// program without a host table (an older build) is left as it is.
pub(super) fn place_table(ebpf: &mut Ebpf, made_now: bool) -> Result<(), DataplaneError> {
    let Some(table) = ebpf.map(names::HOST_TABLE) else {
        return Ok(());
    };
    let slots = Array::<&MapData, HostSlot>::try_from(table)
        .map_err(|source| map_error(names::HOST_TABLE, source))?
        .len();
    let enforcement = map_data(ebpf, names::ENFORCEMENT)?;
    let mut config = enforcement::read(enforcement)?;
    let keep = !made_now && config.host_table.slots() == slots && config.host_table.seed != 0;
    if !keep {
        config.host_table = HostTableParams::new(slots, random_seed());
        enforcement::write(enforcement, &config)?;
    }
    Ok(())
}

/// A seed no other table shares: std's per-process random hasher keys, from the OS.
fn random_seed() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(0);
    // Never zero: zero marks an unwritten seed.
    hasher.finish() | 1
}

/// The table's parameters as the kernel reads them.
pub(super) fn params(ebpf: &Ebpf) -> Result<HostTableParams, DataplaneError> {
    Ok(enforcement::read(map_data(ebpf, names::ENFORCEMENT)?)?.host_table)
}

/// Occupied slots and the overflow's entries, and each's capacity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostCount {
    pub slots_used: u64,
    pub slots: u64,
    pub overflow: u64,
    pub overflow_capacity: u64,
}

impl HostCount {
    /// Hosts tracked: occupied slots plus overflow entries.
    pub fn hosts(&self) -> u64 {
        self.slots_used + self.overflow
    }
}

/// Counts the table's occupied slots (a batch read: an array always looks full to the
/// kernel, and a slot once claimed stays held) and walks the overflow's keys.
pub(super) fn count(ebpf: &Ebpf) -> Result<HostCount, DataplaneError> {
    let overflow: HashMap<&MapData, HostKey, HostStats> = typed(ebpf, names::HOST_STATS)?;
    let mut entries = 0;
    for key in overflow.keys() {
        key.map_err(|source| map_error(names::HOST_STATS, source))?;
        entries += 1;
    }
    let overflow_capacity = map_data(ebpf, names::HOST_STATS)?
        .info()
        .map_err(|source| map_error(names::HOST_STATS, source))?
        .max_entries();
    let table: Array<&MapData, HostSlot> = typed(ebpf, names::HOST_TABLE)?;
    Ok(HostCount {
        slots_used: MappedTable::new(table.map())?.used(),
        slots: u64::from(table.len()),
        overflow: entries,
        overflow_capacity: u64::from(overflow_capacity),
    })
}

/// Writes hosts as the kernel would place them: into their slot when it is free, else into
/// the overflow map (benchmarks and tests fill the table this way). Returns how many were
/// written.
pub(super) fn insert(
    ebpf: &mut Ebpf,
    hosts: impl IntoIterator<Item = (HostKey, HostStats)>,
) -> Result<usize, DataplaneError> {
    let params = params(ebpf)?;
    let [table, overflow] = ebpf.maps_disjoint_mut([names::HOST_TABLE, names::HOST_STATS]);
    let missing = |name| DataplaneError::Missing { kind: "map", name };
    let mut table: Array<&mut MapData, HostSlot> = table
        .ok_or(missing(names::HOST_TABLE))?
        .try_into()
        .map_err(|source| map_error(names::HOST_TABLE, source))?;
    let mut overflow: HashMap<&mut MapData, HostKey, HostStats> = overflow
        .ok_or(missing(names::HOST_STATS))?
        .try_into()
        .map_err(|source| map_error(names::HOST_STATS, source))?;
    // The holder of each slot, as the kernel's claims would leave them.
    let mut taken: Vec<Option<HostKey>> = vec![None; table.len() as usize];
    batch::for_each::<u32, HostSlot>(table.map(), names::HOST_TABLE, |index, slot| {
        if slot.claim != HostSlot::EMPTY
            && let Some(taken) = taken.get_mut(index as usize)
        {
            *taken = Some(slot.key);
        }
    })?;
    let mut written = 0;
    for (key, stats) in hosts {
        written += 1;
        // As the kernel claims: the neighbour only while another host holds the home.
        let [home, neighbour] = params.pair(params.fold(&key));
        let free = match taken.get(home as usize) {
            Some(None) => Some(home),
            Some(Some(holder)) if *holder != key => {
                Some(neighbour).filter(|n| taken.get(*n as usize) == Some(&None))
            }
            _ => None,
        };
        match free {
            Some(slot) => {
                taken[slot as usize] = Some(key);
                let value = HostSlot {
                    claim: 2,
                    key,
                    reserved: [0; 4],
                    stats,
                };
                table
                    .set(slot, value, 0)
                    .map_err(|source| map_error(names::HOST_TABLE, source))?;
            }
            _ => overflow
                .insert(key, stats, 0)
                .map_err(|source| map_error(names::HOST_STATS, source))?,
        }
    }
    Ok(written)
}

fn typed<'a, T>(ebpf: &'a Ebpf, name: &'static str) -> Result<T, DataplaneError>
where
    T: TryFrom<&'a aya::maps::Map, Error = aya::maps::MapError>,
{
    ebpf.map(name)
        .ok_or(DataplaneError::Missing { kind: "map", name })?
        .try_into()
        .map_err(|source| map_error(name, source))
}

fn map_data<'a>(ebpf: &'a Ebpf, name: &'static str) -> Result<&'a MapData, DataplaneError> {
    match ebpf.map(name) {
        Some(
            aya::maps::Map::Array(data)
            | aya::maps::Map::HashMap(data)
            | aya::maps::Map::LruHashMap(data),
        ) => Ok(data),
        Some(_) | None => Err(DataplaneError::Missing { kind: "map", name }),
    }
}
