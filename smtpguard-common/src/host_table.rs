//! The host table: a 2-way set-associative array of slots, each holding one host's key and
//! its statistics. A one-multiply hash of the key picks a pair of slots, and the host takes
//! either. A known host's lookup is an array access the verifier inlines, where a hash map's
//! is a helper call. A host whose pair is held by others goes to the `HOST_STATS` LRU map
//! (the overflow), so no host is untracked. The second way: at half the slots filled, a
//! direct-mapped table sends about 21 % of hosts to the overflow, a 2-way one 10 %.

use crate::{HostKey, HostStats};

/// Value of `HOST_TABLE`. `stats` is embedded whole, so fields added to [`HostStats`] need
/// nothing here.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostSlot {
    /// Who may read the slot: [`HostSlot::EMPTY`] (never held), odd while a CPU writes a new
    /// holder in, even once that holder is published. Every claim adds 2, so a reader that
    /// sees the same even value before and after reading the key and class read one holder's.
    pub claim: u64,
    pub key: HostKey,
    /// Always zero. Fills the first cache line, so the claim word and the key, which every
    /// lookup reads, share no line with the counters every segment adds to: when a host's
    /// segments are judged on two CPUs, only the counters' line moves between them (the
    /// table is page-aligned, `BPF_F_MMAPABLE`, and a slot is four whole lines).
    pub reserved: [u64; 4],
    pub stats: HostStats,
}

impl HostSlot {
    pub const EMPTY: u64 = 0;

    /// Whether `claim` names a published holder.
    #[inline(always)]
    pub const fn is_published(claim: u64) -> bool {
        claim != Self::EMPTY && claim & 1 == 0
    }

    /// Whether a slot's holder, last seen in sketch epoch `holder_epoch`, may give way to a
    /// new host in epoch `epoch`: it has been idle for two whole epochs, so the snapshot that
    /// ended the last one read its final counts (one epoch is not enough: a segment can land
    /// between a snapshot's read and its epoch change).
    #[inline(always)]
    pub const fn is_idle(holder_epoch: u32, epoch: u32) -> bool {
        epoch.wrapping_sub(holder_epoch) >= 2
    }
}

/// Where the kernel finds a host's slot: part of [`crate::EnforcementConfig`], which every
/// judged segment reads already. Zero (unwritten) means no table: every host goes to the
/// overflow map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostTableParams {
    /// Mixed into every key's hash, chosen at random when the table is made, so which hosts
    /// share a slot differs between gateways and cannot be planned from addresses alone. It
    /// stays with the table: a reused (pinned) table keeps its seed.
    pub seed: u64,
    /// 64 minus log2 of the slot count: the hash's top bits are the slot.
    pub shift: u32,
    pub reserved: u32,
}

/// The table's size for a host capacity: rounded up to a power of two, at least 2, at most
/// 2^31.
pub const fn table_slots(hosts: u32) -> u32 {
    match hosts.checked_next_power_of_two() {
        Some(0..=2) => 2,
        Some(slots) => slots,
        None => 1 << 31,
    }
}

/// 2^64 / the golden ratio: multiplying by it spreads keys that differ in any bits over the
/// product's top bits (Knuth's multiplicative, "Fibonacci", hashing).
const FIBONACCI: u64 = 0x9e37_79b9_7f4a_7c15;
/// A second odd constant for the key tag, so the tag and the slot come from different mixes.
const TAG_MULTIPLIER: u64 = 0xc2b2_ae3d_27d4_eb4f;

impl HostTableParams {
    /// Parameters of a table of `slots` slots (a power of two, at least 2: as
    /// [`table_slots`] gives; any other count is rounded down).
    pub const fn new(slots: u32, seed: u64) -> Self {
        let log2 = match slots {
            0..=2 => 1,
            _ => 31 - slots.leading_zeros(),
        };
        Self {
            seed,
            shift: 64 - log2,
            reserved: 0,
        }
    }

    /// Slots in the table (0: no table).
    pub const fn slots(&self) -> u32 {
        match self.shift {
            33..=63 => 1 << (64 - self.shift),
            _ => 0,
        }
    }

    /// The folded key: what both the slot and the tag are computed from.
    #[inline(always)]
    pub const fn fold(&self, key: &HostKey) -> u64 {
        let [a, b, c] = key.words();
        // The family word goes in rotated, so an IPv6 key and an IPv4-mapped one differ in
        // the high bits, which move the slot most.
        a ^ b ^ c.rotate_left(32) ^ self.seed
    }

    /// The two slots a folded key may hold, its home first: one multiply and a shift, and
    /// the home's neighbour in its aligned pair (one 512-byte block).
    #[inline(always)]
    pub const fn pair(&self, folded: u64) -> [u32; 2] {
        let home = (folded.wrapping_mul(FIBONACCI) >> self.shift) as u32;
        [home, home ^ 1]
    }

    /// 24 bits of another mix of the folded key, for [`crate::CachedClass`].
    #[inline(always)]
    pub const fn tag(folded: u64) -> u32 {
        (folded.wrapping_mul(TAG_MULTIPLIER) >> 40) as u32
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: `#[repr(C)]` integers and Pod members without implicit padding (layout tests).
    unsafe impl aya::Pod for super::HostSlot {}
    unsafe impl aya::Pod for super::HostTableParams {}
}

#[cfg(test)]
mod tests {
    use core::mem::{align_of, offset_of, size_of};

    use super::*;

    #[test]
    fn layouts() {
        assert_eq!(align_of::<HostSlot>(), 8);
        assert_eq!(offset_of!(HostSlot, claim), 0);
        assert_eq!(offset_of!(HostSlot, key), 8);
        assert_eq!(offset_of!(HostSlot, reserved), 32);
        assert_eq!(offset_of!(HostSlot, stats), 64);
        assert_eq!(size_of::<HostSlot>(), 256);
        assert_eq!(size_of::<HostSlot>(), 64 + size_of::<HostStats>());
        assert_eq!(size_of::<HostTableParams>(), 16);
        assert_eq!(offset_of!(HostTableParams, seed), 0);
        assert_eq!(offset_of!(HostTableParams, shift), 8);
        assert_eq!(offset_of!(HostTableParams, reserved), 12);
    }

    #[test]
    fn slot_counts_round_up_to_a_power_of_two() {
        assert_eq!(table_slots(1_000_000), 1 << 20);
        assert_eq!(table_slots(1 << 20), 1 << 20);
        assert_eq!(table_slots(1), 2);
        assert_eq!(table_slots(5), 8);
        assert_eq!(table_slots(u32::MAX), 1 << 31);
        for slots in [2, 8, 1 << 20, 1 << 31] {
            assert_eq!(HostTableParams::new(slots, 0).slots(), slots);
        }
        // A table of another size (never made by the loader) is used only up to its largest
        // power of two.
        assert_eq!(HostTableParams::new(12, 0).slots(), 8);
        assert_eq!(HostTableParams::default().slots(), 0);
    }

    #[test]
    fn every_slot_is_in_the_table() {
        let params = HostTableParams::new(8, 0x1234_5678_9abc_def0);
        for i in 0..10_000u32 {
            let folded = params.fold(&HostKey::from_v4(i.to_be_bytes()));
            let [home, neighbour] = params.pair(folded);
            assert!(home < params.slots() && neighbour < params.slots());
            assert_eq!(home / 2, neighbour / 2, "one aligned pair");
        }
    }

    /// At a tenth of the table filled, few hosts share a slot (about 5 %, as for a random
    /// function), for consecutive IPv4 hosts and for IPv6 hosts of consecutive /64s alike.
    #[test]
    fn consecutive_hosts_spread_over_the_table() {
        let params = HostTableParams::new(1 << 16, 0x0123_4567_89ab_cdef);
        let families: [&dyn Fn(u32) -> HostKey; 2] = [
            &|i| HostKey::from_v4((0x6440_0000 + i).to_be_bytes()),
            &|i| {
                let mut addr = [0u8; 16];
                addr[..2].copy_from_slice(&[0x20, 0x01]);
                addr[4..8].copy_from_slice(&i.to_be_bytes());
                addr[15] = 2;
                HostKey::from_v6(addr)
            },
        ];
        for key in families {
            let mut taken = vec![false; params.slots() as usize];
            let mut shared = 0;
            for i in 0..params.slots() / 10 {
                let slot = params.pair(params.fold(&key(i)))[0] as usize;
                shared += usize::from(taken[slot]);
                taken[slot] = true;
            }
            assert!(shared < 6553 / 10, "{shared} of 6553 hosts share a slot");
        }
    }

    #[test]
    fn an_ipv6_key_and_its_ipv4_mapped_twin_hash_apart() {
        let params = HostTableParams::new(1 << 20, 0);
        let v4 = HostKey::from_v4([100, 64, 1, 2]);
        let v6 = HostKey::from_v6(v4.addr);
        assert_ne!(params.fold(&v4), params.fold(&v6));
    }

    #[test]
    fn a_holder_gives_way_after_two_idle_epochs() {
        assert!(!HostSlot::is_idle(7, 7));
        assert!(!HostSlot::is_idle(7, 8));
        assert!(HostSlot::is_idle(7, 9));
        assert!(HostSlot::is_idle(u32::MAX, 1));
        assert!(HostSlot::is_published(2));
        assert!(!HostSlot::is_published(HostSlot::EMPTY));
        assert!(!HostSlot::is_published(3));
    }
}
