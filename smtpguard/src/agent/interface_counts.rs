//! Judged frames by interface: which counter slot of the kernel's each configured interface
//! counts in. An interface keeps its slot for as long as it is configured: when it is
//! deleted and created again (a new ifindex), across agent restarts (the slot table is a
//! pinned map, read back at start) and across upgrades that keep the map. A slot given to
//! another interface starts from zero, so no series ever counts another interface's frames.

use std::collections::{BTreeMap, BTreeSet};

use smtpguard_common::{
    InterfaceSlot, REASON_COUNT,
    interface::{COUNTED_INTERFACES, UNATTRIBUTED_SLOT},
};
use tracing::warn;

use super::netns;
use crate::{
    config::AgentConfig,
    dataplane::{Dataplane, DataplaneError},
};

/// Per-reason counts (indexed by `Reason as usize`).
pub type Counts = [u64; REASON_COUNT as usize];

#[derive(Debug, Default)]
pub struct CountedInterfaces {
    /// Configured interfaces with a slot, with the ifindex the slot table attributes to it.
    slots: BTreeMap<String, InterfaceSlot>,
    /// Interfaces that found no slot of their own (warned about once each).
    unattributed: BTreeSet<String>,
}

impl CountedInterfaces {
    /// Takes over the slots the table gives configured interfaces (an earlier agent's), so
    /// their counts go on; entries of other interfaces are emptied.
    pub fn adopt(dataplane: &mut Dataplane, agent: &AgentConfig) -> Result<Self, DataplaneError> {
        let entries = dataplane.interface_slots()?;
        let names: Vec<Option<String>> = netns::run_in(agent.netns.as_deref(), || {
            entries
                .iter()
                .map(|entry| {
                    nix::net::if_::if_indextoname(entry.ifindex)
                        .ok()
                        .and_then(|name| name.into_string().ok())
                })
                .collect()
        })
        .unwrap_or_else(|error| {
            warn!(
                error = format!("{error:#}"),
                "naming the counted interfaces failed; their counts start over"
            );
            vec![None; entries.len()]
        });
        let mut counted = Self::default();
        for (entry, name) in entries.into_iter().zip(names) {
            match name.filter(|name| agent.interfaces.contains(name)) {
                Some(name) if !counted.slots.values().any(|e| e.slot == entry.slot) => {
                    counted.slots.insert(name, entry);
                }
                _ => dataplane.release_interface_slot(entry.ifindex)?,
            }
        }
        Ok(counted)
    }

    /// Gives `interface`, attached now as `ifindex`, its slot: the one it had (its counts go
    /// on), else a free one, whose counts start from zero. An interface without a slot (all
    /// taken, or another interface's ifindex shares its table entry) counts as unattributed.
    pub fn attached(&mut self, dataplane: &mut Dataplane, interface: &str, ifindex: u32) {
        if let Err(error) = self.attribute(dataplane, interface, ifindex) {
            warn!(
                interface,
                error = format!("{error:#}"),
                "counting judged frames by interface failed for this interface"
            );
        }
    }

    fn attribute(
        &mut self,
        dataplane: &mut Dataplane,
        interface: &str,
        ifindex: u32,
    ) -> Result<(), DataplaneError> {
        let previous = self.slots.get(interface).copied();
        if previous.is_some_and(|entry| entry.ifindex == ifindex) {
            return Ok(());
        }
        if let Some(entry) = previous {
            // Created again: the slot follows the interface to its new ifindex.
            dataplane.release_interface_slot(entry.ifindex)?;
            self.slots.remove(interface);
        }
        let shared = self.slots.iter().find(|(_, entry)| {
            InterfaceSlot::index(entry.ifindex) == InterfaceSlot::index(ifindex)
        });
        if let Some((other, _)) = shared {
            let why = format!("its ifindex {ifindex} shares a slot table entry with {other}'s");
            self.unattributed(interface, &why);
            return Ok(());
        }
        let (slot, fresh) = match previous {
            Some(entry) => (entry.slot, false),
            None => match (1..COUNTED_INTERFACES)
                .find(|slot| !self.slots.values().any(|entry| entry.slot == *slot))
            {
                Some(slot) => (slot, true),
                None => {
                    let why = format!(
                        "all {} interface counter slots are taken",
                        COUNTED_INTERFACES - 1
                    );
                    self.unattributed(interface, &why);
                    return Ok(());
                }
            },
        };
        let entry = InterfaceSlot { ifindex, slot };
        dataplane.assign_interface_slot(entry, fresh)?;
        self.slots.insert(interface.to_owned(), entry);
        self.unattributed.remove(interface);
        Ok(())
    }

    fn unattributed(&mut self, interface: &str, why: &str) {
        if self.unattributed.insert(interface.to_owned()) {
            warn!(
                interface,
                why, "judged frames of this interface are counted as unattributed"
            );
        }
    }

    /// Lets the slots of interfaces no longer configured go.
    pub fn retain_configured(&mut self, dataplane: &mut Dataplane, configured: &[String]) {
        self.unattributed.retain(|name| configured.contains(name));
        let gone: Vec<String> = self
            .slots
            .keys()
            .filter(|name| !configured.contains(name))
            .cloned()
            .collect();
        for interface in gone {
            if let Some(entry) = self.slots.remove(&interface)
                && let Err(error) = dataplane.release_interface_slot(entry.ifindex)
            {
                warn!(
                    interface,
                    error = format!("{error:#}"),
                    "emptying the interface's counter slot failed"
                );
            }
        }
    }

    /// Each interface with a slot and its counts, and the unattributed counts.
    pub fn counts(
        &self,
        dataplane: &Dataplane,
    ) -> Result<(Vec<(String, Counts)>, Counts), DataplaneError> {
        let mut rows = Vec::with_capacity(self.slots.len());
        for (interface, entry) in &self.slots {
            rows.push((interface.clone(), dataplane.interface_counts(entry.slot)?));
        }
        Ok((rows, dataplane.interface_counts(UNATTRIBUTED_SLOT)?))
    }
}

#[cfg(test)]
mod tests {
    use smtpguard_common::interface::INTERFACE_TABLE_SIZE;

    use super::*;
    use crate::config::Capacity;

    fn table(dataplane: &mut Dataplane) -> Vec<(u32, u32)> {
        let mut entries: Vec<(u32, u32)> = dataplane
            .interface_slots()
            .unwrap()
            .into_iter()
            .map(|entry| (entry.ifindex, entry.slot))
            .collect();
        entries.sort();
        entries
    }

    /// Needs root: the slot table is the loaded program's map.
    #[test]
    fn slots_follow_their_interfaces_and_the_rest_count_as_unattributed() {
        let mut dataplane = Dataplane::load(&Capacity::default()).unwrap();
        let mut counted = CountedInterfaces::default();
        counted.attached(&mut dataplane, "a", 7);
        counted.attached(&mut dataplane, "b", 7 + INTERFACE_TABLE_SIZE);
        assert_eq!(table(&mut dataplane), [(7, 1)], "b shares a's entry");
        assert!(counted.unattributed.contains("b"));

        // a created again: its slot follows it to the new ifindex, and b's entry is free.
        counted.attached(&mut dataplane, "a", 9);
        counted.attached(&mut dataplane, "b", 7 + INTERFACE_TABLE_SIZE);
        assert_eq!(
            table(&mut dataplane),
            [(9, 1), (7 + INTERFACE_TABLE_SIZE, 2)]
        );
        assert!(counted.unattributed.is_empty());

        // Slots 3 to 63 go to the next 61 interfaces; the one after finds none.
        for n in 0..62 {
            counted.attached(&mut dataplane, &format!("if{n}"), 100 + n);
        }
        assert_eq!(table(&mut dataplane).len(), 63);
        assert_eq!(
            counted.unattributed.iter().collect::<Vec<_>>(),
            ["if61"],
            "beyond the slots"
        );

        counted.retain_configured(&mut dataplane, &["a".to_owned()]);
        assert_eq!(table(&mut dataplane), [(9, 1)]);
        let (rows, _) = counted.counts(&dataplane).unwrap();
        assert_eq!(
            rows.iter()
                .map(|(name, _)| name.as_str())
                .collect::<Vec<_>>(),
            ["a"]
        );
    }
}
