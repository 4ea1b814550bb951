//! Judged frames by interface: which counter slot an interface's frames go to, and where a
//! slot's per-reason counters sit in `INTERFACE_COUNTERS`. Only frames that reach the policy
//! (every reason but [`Reason::Other`]) are counted by interface, so the fast path pays
//! nothing for it.

use crate::{REASON_COUNT, Reason};

/// Entries of `INTERFACE_SLOTS`, indexed by `ifindex & (INTERFACE_TABLE_SIZE - 1)`: a
/// power of two, so the index is a mask and the lookup an array access.
pub const INTERFACE_TABLE_SIZE: u32 = 4096;

/// Counter slots. Slot [`UNATTRIBUTED_SLOT`] counts the frames of an interface without an
/// entry of its own (more interfaces than slots, or two whose ifindexes share a table
/// entry), so the agent can attribute up to `COUNTED_INTERFACES - 1` interfaces.
pub const COUNTED_INTERFACES: u32 = 64;

/// The slot of frames no entry attributes to an interface.
pub const UNATTRIBUTED_SLOT: u32 = 0;

/// Value of `INTERFACE_SLOTS`: the interface whose frames the entry attributes (an entry is
/// shared by every ifindex with the same low bits, so it names the one it is for) and its
/// counter slot. All zeros is an empty entry: no interface has ifindex 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InterfaceSlot {
    pub ifindex: u32,
    pub slot: u32,
}

impl InterfaceSlot {
    /// The entry of `ifindex` in `INTERFACE_SLOTS`.
    #[inline(always)]
    pub const fn index(ifindex: u32) -> u32 {
        ifindex & (INTERFACE_TABLE_SIZE - 1)
    }

    /// The counter slot of a frame received on `ifindex`, given the entry at its index.
    #[inline(always)]
    pub const fn slot_of(entry: Option<&InterfaceSlot>, ifindex: u32) -> u32 {
        match entry {
            Some(entry) if entry.ifindex == ifindex && entry.slot < COUNTED_INTERFACES => {
                entry.slot
            }
            _ => UNATTRIBUTED_SLOT,
        }
    }
}

/// The index in `INTERFACE_COUNTERS` of `reason`'s counter in `slot`.
#[inline(always)]
pub const fn interface_counter(slot: u32, reason: Reason) -> u32 {
    slot * REASON_COUNT + reason as u32
}

/// Entries of `INTERFACE_COUNTERS`: a counter per reason in every slot.
pub const INTERFACE_COUNTER_ENTRIES: u32 = COUNTED_INTERFACES * REASON_COUNT;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: two `u32`s, no padding (layout test below).
    unsafe impl aya::Pod for super::InterfaceSlot {}
}

#[cfg(test)]
mod tests {
    use core::mem::{align_of, offset_of, size_of};

    use super::*;

    #[test]
    fn layout() {
        assert_eq!(size_of::<InterfaceSlot>(), 8);
        assert_eq!(align_of::<InterfaceSlot>(), 4);
        assert_eq!(offset_of!(InterfaceSlot, ifindex), 0);
        assert_eq!(offset_of!(InterfaceSlot, slot), 4);
        assert!(INTERFACE_TABLE_SIZE.is_power_of_two());
    }

    #[test]
    fn only_the_entry_of_the_interface_itself_attributes_its_frames() {
        let entry = InterfaceSlot {
            ifindex: 7,
            slot: 3,
        };
        assert_eq!(InterfaceSlot::slot_of(Some(&entry), 7), 3);
        // Another interface with the same low bits shares the entry, not the slot.
        let sharing = 7 + INTERFACE_TABLE_SIZE;
        assert_eq!(InterfaceSlot::index(sharing), InterfaceSlot::index(7));
        assert_eq!(
            InterfaceSlot::slot_of(Some(&entry), sharing),
            UNATTRIBUTED_SLOT
        );
        assert_eq!(
            InterfaceSlot::slot_of(Some(&InterfaceSlot::default()), 7),
            UNATTRIBUTED_SLOT
        );
        assert_eq!(InterfaceSlot::slot_of(None, 7), UNATTRIBUTED_SLOT);
        let corrupt = InterfaceSlot {
            ifindex: 7,
            slot: COUNTED_INTERFACES,
        };
        assert_eq!(
            InterfaceSlot::slot_of(Some(&corrupt), 7),
            UNATTRIBUTED_SLOT,
            "a slot beyond the counters is never used"
        );
    }

    #[test]
    fn slots_do_not_overlap() {
        let last = interface_counter(COUNTED_INTERFACES - 1, Reason::ALL[Reason::ALL.len() - 1]);
        assert_eq!(last, INTERFACE_COUNTER_ENTRIES - 1);
        assert_eq!(
            interface_counter(1, Reason::Other),
            interface_counter(0, Reason::ALL[Reason::ALL.len() - 1]) + 1
        );
    }
}
