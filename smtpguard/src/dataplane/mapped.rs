//! The host table read in place, through a read-only mapping of the kernel's array
//! (`BPF_F_MMAPABLE`): a snapshot looks at each slot's claim word and copies only the held
//! slots, where a batch read copied the whole table (256 MiB for 2^20 slots) out of the
//! kernel every interval.

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _},
    ptr::{NonNull, read_volatile},
    sync::atomic::{Ordering, fence},
};

use aya::maps::MapData;
use smtpguard_common::{HostSlot, maps as names};

use super::DataplaneError;

/// A read-only mapping of the host table, unmapped on drop.
pub(super) struct MappedTable {
    base: NonNull<HostSlot>,
    slots: u32,
    len: usize,
}

impl MappedTable {
    /// Maps `table`, an array of [`HostSlot`]s made with `BPF_F_MMAPABLE`.
    pub(super) fn new(table: &MapData) -> Result<Self, DataplaneError> {
        let error = |source: io::Error| DataplaneError::Mapping {
            map: names::HOST_TABLE,
            source,
        };
        let info = table
            .info()
            .map_err(|source| error(io::Error::other(source)))?;
        let slots = info.max_entries();
        if info.value_size() as usize != size_of::<HostSlot>() {
            return Err(error(io::Error::other(format!(
                "slots of {} bytes, expected {}",
                info.value_size(),
                size_of::<HostSlot>()
            ))));
        }
        let len = slots as usize * size_of::<HostSlot>();
        // SAFETY: a fresh shared read-only mapping of the map's fd; the kernel keeps the array
        // (and so the pages) alive while it is mapped, and checks the length against it.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                table.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(error(io::Error::last_os_error()));
        }
        let base = NonNull::new(base.cast::<HostSlot>())
            .ok_or_else(|| error(io::Error::other("mapped at address 0")))?;
        Ok(Self { base, slots, len })
    }

    /// Hands every published slot to `visit`, in index order. A slot is copied only if its
    /// claim word reads the same before and after the copy: a slot claimed meanwhile holds a
    /// new host, whose first segments the next snapshot reads (its earlier holder was idle
    /// for two epochs, so its counts are stored already).
    pub(super) fn for_each_published(&self, mut visit: impl FnMut(u32, HostSlot)) {
        for index in 0..self.slots {
            // SAFETY: `index` is below the slot count, so the slot lies in the mapping; the
            // kernel writes the slot while it is read, so every read is volatile, and any bit
            // pattern is a valid `HostSlot` (Pod).
            unsafe {
                let slot = self.base.as_ptr().add(index as usize);
                let claim = read_volatile(&raw const (*slot).claim);
                if !HostSlot::is_published(claim) {
                    continue;
                }
                let copy = read_volatile(slot);
                fence(Ordering::Acquire);
                if read_volatile(&raw const (*slot).claim) == claim && copy.claim == claim {
                    visit(index, copy);
                }
            }
        }
    }

    /// Slots held or being claimed: every claim word that is not [`HostSlot::EMPTY`].
    pub(super) fn used(&self) -> u64 {
        (0..self.slots as usize)
            // SAFETY: as in `for_each_published`.
            .filter(|index| unsafe {
                read_volatile(&raw const (*self.base.as_ptr().add(*index)).claim) != HostSlot::EMPTY
            })
            .count() as u64
    }
}

impl Drop for MappedTable {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, not used after this.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}
