//! Judged frames by interface: the table that gives each attached interface its counter slot
//! (`INTERFACE_SLOTS`) and the per-CPU counters of each slot (`INTERFACE_COUNTERS`). Which
//! interface gets which slot is the agent's business; this is the typed access.

use aya::{
    Ebpf,
    maps::{Array, MapData, MapError, PerCpuArray, PerCpuValues},
};
use smtpguard_common::{
    InterfaceSlot, REASON_COUNT, Reason,
    interface::{INTERFACE_TABLE_SIZE, interface_counter},
    maps as names,
};

use super::{
    DataplaneError,
    maps::{map_error, reason_totals, typed},
};

/// Every entry of the slot table that names an interface.
pub(super) fn slots(ebpf: &mut Ebpf) -> Result<Vec<InterfaceSlot>, DataplaneError> {
    let table = slot_table(ebpf)?;
    let mut entries = Vec::new();
    for index in 0..INTERFACE_TABLE_SIZE {
        let entry = table
            .get(&index, 0)
            .map_err(|source| map_error(names::INTERFACE_SLOTS, source))?;
        if entry.ifindex != 0 {
            entries.push(entry);
        }
    }
    Ok(entries)
}

/// Attributes the judged frames of `entry.ifindex` to `entry.slot`. A `fresh` slot's counters
/// are zeroed first: they may hold another interface's counts from before.
pub(super) fn assign(
    ebpf: &mut Ebpf,
    entry: InterfaceSlot,
    fresh: bool,
) -> Result<(), DataplaneError> {
    if fresh {
        let mut counters: PerCpuArray<&mut MapData, u64> = typed(
            ebpf.map_mut(names::INTERFACE_COUNTERS),
            names::INTERFACE_COUNTERS,
        )?;
        let io_error = |error| map_error(names::INTERFACE_COUNTERS, MapError::IoError(error));
        let cpus = aya::util::nr_cpus().map_err(|(_, error)| io_error(error))?;
        for reason in Reason::ALL {
            let zeros = PerCpuValues::try_from(vec![0u64; cpus]).map_err(io_error)?;
            counters
                .set(interface_counter(entry.slot, reason), zeros, 0)
                .map_err(|source| map_error(names::INTERFACE_COUNTERS, source))?;
        }
    }
    slot_table(ebpf)?
        .set(InterfaceSlot::index(entry.ifindex), entry, 0)
        .map_err(|source| map_error(names::INTERFACE_SLOTS, source))
}

/// Stops attributing the frames of `ifindex`: its entry is emptied if it still names it.
pub(super) fn release(ebpf: &mut Ebpf, ifindex: u32) -> Result<(), DataplaneError> {
    let mut table = slot_table(ebpf)?;
    let index = InterfaceSlot::index(ifindex);
    let entry = table
        .get(&index, 0)
        .map_err(|source| map_error(names::INTERFACE_SLOTS, source))?;
    if entry.ifindex == ifindex {
        table
            .set(index, InterfaceSlot::default(), 0)
            .map_err(|source| map_error(names::INTERFACE_SLOTS, source))?;
    }
    Ok(())
}

/// The judged frames of `slot` per reason (indexed by `Reason as usize`), summed over CPUs.
pub(super) fn counts(
    ebpf: &Ebpf,
    slot: u32,
) -> Result<[u64; REASON_COUNT as usize], DataplaneError> {
    reason_totals(ebpf, names::INTERFACE_COUNTERS, |reason| {
        interface_counter(slot, reason)
    })
}

fn slot_table(ebpf: &mut Ebpf) -> Result<Array<&mut MapData, InterfaceSlot>, DataplaneError> {
    typed(ebpf.map_mut(names::INTERFACE_SLOTS), names::INTERFACE_SLOTS)
}
