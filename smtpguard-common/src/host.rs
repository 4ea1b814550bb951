//! Per-host statistics: what the abuse-desk report reads for each subscriber host that
//! tried an enforced port.

use crate::{
    policy::Action,
    sketch::{EXACT_DESTINATIONS, SKETCH_REGISTERS},
};

/// Key of `HOST_TABLE`'s slots, `HOST_STATS` and `HOST_OVERRIDES`. IPv4 hosts are stored IPv4-mapped
/// (`::ffff:a.b.c.d`) so both families share one map and one capacity, and the family is kept
/// beside the address: an IPv6 source `::ffff:a.b.c.d` (which Linux forwards) is a host of its
/// own, never the IPv4 host a.b.c.d, so no subscriber can add attempts to another's statistics
/// or borrow its cached class with spoofed IPv6 packets. Aligned to 8 so the kernel program
/// copies the key for a map call in three word moves, not byte moves.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HostKey {
    pub addr: [u8; 16],
    /// [`HostKey::FAMILY_V4`] or [`HostKey::FAMILY_V6`].
    pub family: u32,
    /// Always zero: the kernel hashes the key's bytes.
    pub reserved: u32,
}

impl HostKey {
    pub const FAMILY_V4: u32 = 4;
    pub const FAMILY_V6: u32 = 6;

    #[inline(always)]
    pub const fn from_v4(addr: [u8; 4]) -> Self {
        Self::from_address_words(address_words(ipv4_mapped(addr)), Self::FAMILY_V4)
    }

    #[inline(always)]
    pub const fn from_v6(addr: [u8; 16]) -> Self {
        Self::from_address_words(address_words(addr), Self::FAMILY_V6)
    }

    /// The key of an address given as two native words. Built as three words, not field by
    /// field: the family and the reserved half written as two 32-bit stores and read back as
    /// one word (see [`HostKey::words`]) cannot be forwarded from the store buffer, and the
    /// kernel program waited for them on every judged segment (measured with perf).
    #[inline(always)]
    const fn from_address_words(addr: [u64; 2], family: u32) -> Self {
        let f = family.to_ne_bytes();
        let family_word = u64::from_ne_bytes([f[0], f[1], f[2], f[3], 0, 0, 0, 0]);
        // SAFETY: `#[repr(C, align(8))]`, 24 bytes without padding (layout test below), and
        // the third word holds `family` where the field is, `reserved` zero.
        unsafe { core::mem::transmute::<[u64; 3], Self>([addr[0], addr[1], family_word]) }
    }

    /// The key as the three words the kernel compares and hashes: a byte-array `==` becomes
    /// a call to `bcmp` in BPF.
    #[inline(always)]
    pub const fn words(&self) -> [u64; 3] {
        // SAFETY: `#[repr(C, align(8))]`, 24 bytes without padding (layout test below), every
        // bit pattern a valid `[u64; 3]`.
        unsafe { core::mem::transmute::<Self, [u64; 3]>(*self) }
    }

    /// The host's address in its own family.
    #[cfg(any(feature = "user", test))]
    pub fn address(&self) -> core::net::IpAddr {
        let v6 = core::net::Ipv6Addr::from(self.addr);
        match (self.family, v6.to_ipv4_mapped()) {
            (Self::FAMILY_V4, Some(v4)) => core::net::IpAddr::V4(v4),
            _ => core::net::IpAddr::V6(v6),
        }
    }
}

/// How much of a source address is one host, per family. A subscriber is given one IPv4
/// address (a NATed home is one host) but a whole IPv6 prefix, a /64 or a /56, and may use
/// any address inside it: keyed by the full address, a bot rotating addresses inside its /64
/// would start its counts over with each one and fill the host table. The masks are the
/// address bytes of the prefix, as native words: ANDed with the address read the same way.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostMask {
    pub v6: [u64; 2],
    pub v4: u32,
    /// Always zero.
    pub reserved: u32,
}

impl HostMask {
    /// A host is an IPv4 address, and an IPv6 /64.
    pub const DEFAULT_V4_PREFIX: u8 = 32;
    pub const DEFAULT_V6_PREFIX: u8 = 64;

    /// The masks of an IPv4 prefix length (at most 32) and an IPv6 one (at most 128).
    pub const fn new(v4_prefix: u8, v6_prefix: u8) -> Self {
        let v4 = prefix_bytes::<4>(v4_prefix);
        let v6 = prefix_bytes::<16>(v6_prefix);
        let (mut high, mut low) = ([0u8; 8], [0u8; 8]);
        let mut i = 0;
        while i < 8 {
            high[i] = v6[i];
            low[i] = v6[i + 8];
            i += 1;
        }
        Self {
            v6: [u64::from_ne_bytes(high), u64::from_ne_bytes(low)],
            v4: u32::from_ne_bytes(v4),
            reserved: 0,
        }
    }

    #[inline(always)]
    pub const fn key_v4(&self, addr: [u8; 4]) -> HostKey {
        HostKey::from_v4((u32::from_ne_bytes(addr) & self.v4).to_ne_bytes())
    }

    #[inline(always)]
    pub const fn key_v6(&self, addr: [u8; 16]) -> HostKey {
        let words = address_words(addr);
        HostKey::from_address_words(
            [words[0] & self.v6[0], words[1] & self.v6[1]],
            HostKey::FAMILY_V6,
        )
    }

    /// The key of the host `addr` belongs to.
    #[cfg(any(feature = "user", test))]
    pub fn key(&self, addr: core::net::IpAddr) -> HostKey {
        match addr {
            core::net::IpAddr::V4(v4) => self.key_v4(v4.octets()),
            core::net::IpAddr::V6(v6) => self.key_v6(v6.octets()),
        }
    }
}

/// The first `prefix` bits of `N` bytes set.
const fn prefix_bytes<const N: usize>(prefix: u8) -> [u8; N] {
    let mut bytes = [0u8; N];
    let mut i = 0;
    while i < N {
        let bits = prefix as i32 - 8 * i as i32;
        bytes[i] = if bits >= 8 {
            0xff
        } else if bits <= 0 {
            0
        } else {
            0xff << (8 - bits)
        };
        i += 1;
    }
    bytes
}

/// An IPv6 address (or an IPv4-mapped one) as two native words, in memory order.
#[inline(always)]
pub const fn address_words(addr: [u8; 16]) -> [u64; 2] {
    // SAFETY: `[u8; 16]` and `[u64; 2]` have the same size and every bit pattern is valid.
    unsafe { core::mem::transmute::<[u8; 16], [u64; 2]>(addr) }
}

/// `::ffff:a.b.c.d`, the IPv4-mapped IPv6 form used for IPv4 keys and destinations.
#[inline(always)]
pub const fn ipv4_mapped(v4: [u8; 4]) -> [u8; 16] {
    // Built from two 64-bit words rather than a byte array literal: for the BPF target LLVM
    // turns the literal's ten zero bytes into a call to `memset` (a BPF-to-BPF call, run on
    // every judged packet); two word stores cost two instructions. Native byte order both
    // ways, so the bytes are `::ffff:a.b.c.d` on any host.
    let high = u64::from_ne_bytes([0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3]]);
    // SAFETY: `[u64; 2]` and `[u8; 16]` have the same size and every bit pattern is valid.
    unsafe { core::mem::transmute::<[u64; 2], [u8; 16]>([0, high]) }
}

/// Value of `HOST_STATS`. Counters are updated with atomic adds from every CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostStats {
    /// Connection attempts: segments with SYN set and ACK clear.
    pub attempts: u64,
    /// All segments that reached the policy (any TCP flags, fragments, unparseable ones).
    pub segments: u64,
    /// Segments dropped.
    pub dropped: u64,
    /// `CLOCK_MONOTONIC_COARSE` nanoseconds (`bpf_ktime_get_coarse_ns`, jiffy resolution) of
    /// the first and last segment.
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    /// Last destination address (IPv4-mapped for IPv4) and port (0 when unknown).
    pub last_dst: [u8; 16],
    pub last_dst_port: u16,
    /// The [`crate::Reason`] of the last segment.
    pub last_reason: u16,
    /// The `SKETCH_EPOCH` the registers below belong to: the kernel clears them when it first
    /// sees the host in a new epoch, so each snapshot interval gets its own sketch.
    pub sketch_epoch: u32,
    /// Distinct destinations of the epoch (HyperLogLog registers over destination addresses).
    pub dst_sketch: [u8; SKETCH_REGISTERS],
    /// The jiffy `last_seen_ns` was read in. The coarse clock only moves once a jiffy, so the
    /// kernel reads it again only when `bpf_jiffies64` (inlined: a plain load, no call) has
    /// moved on: a host sending thousands of segments a second costs one clock read a tick.
    pub last_seen_jiffies: u64,
    /// A [`CachedClass`]: what the policy made of this source when the kernel last looked it
    /// up, so the next segment needs no source lookup while the policy is unchanged.
    pub cached_class: u64,
    /// The epoch's first distinct destinations, each as its [`crate::sketch::exact_key`]
    /// (0: an empty slot), kept and cleared with the registers.
    pub dst_exact: [u32; EXACT_DESTINATIONS],
    /// How many slots of `dst_exact` hold a key, or [`crate::sketch::EXACT_OVERFLOWED`] once
    /// a destination found them full: the epoch's destinations are then only estimated.
    pub dst_exact_len: u32,
    /// The [`crate::Limit`] of the cached class's action ([`crate::Limit::to_word`]),
    /// written with `cached_class`.
    pub cached_limit: u64,
    /// The host's token bucket as the generic cell rate algorithm's theoretical arrival time
    /// (`CLOCK_MONOTONIC_COARSE` nanoseconds; 0: full), for `reject`'s replies or
    /// `ratelimit`'s SYNs.
    pub bucket_tat_ns: u64,
    /// SYNs the bucket refused: dropped above a `ratelimit`, or dropped unanswered beyond
    /// `reject`'s reply budget. 32 bits, like `replies`: the kernel program builds a new
    /// host's entry on its stack, which has no room to spare.
    pub limited: u32,
    /// Replies sent (`reject`).
    pub replies: u32,
}

/// The class of a source the policy decides on after the relay check, and the [`Action`] of
/// an enforced one, kept with the host's
/// statistics for as long as `POLICY_GENERATION` holds the generation it was looked up in.
/// The control plane moves the generation on after every change to the sources or the
/// escalations, which makes every cached class stale at once. One word, written and read
/// in one access: a reader never sees one writer's class with another's generation.
///
/// The word also carries a tag of the host's key ([`HostTableParams::tag`]): a slot of the
/// host table claimed by another host, or an LRU entry reused for another key, while a CPU
/// still holds its pointer, can show that CPU the new holder's class word, which its tag
/// then refuses (bits 0..32 generation, 32..40 class, 40..64 tag).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CachedClass(pub u64);

/// A subscriber source's class (see [`CachedClass`]). 0 is no class: an entry user space
/// wrote is looked up again.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceClass {
    Exempt = 1,
    /// In a monitor-mode range and not escalated.
    Monitored = 2,
    /// In an enforce-mode range, or escalated.
    Enforced = 3,
}

impl CachedClass {
    const CLASS_SHIFT: u32 = 32;
    /// The action in the class byte's upper half: classes and actions both fit in four bits.
    const ACTION_SHIFT: u32 = 36;
    const TAG_SHIFT: u32 = 40;

    #[inline(always)]
    pub const fn new(generation: u32, class: SourceClass, tag: u32, action: Action) -> Self {
        Self(
            Self::expected(generation, tag)
                | ((class as u64) << Self::CLASS_SHIFT)
                | ((action as u64) << Self::ACTION_SHIFT),
        )
    }

    /// The class, if it was looked up in `generation` for a host of key tag `tag`.
    #[inline(always)]
    pub const fn get(self, generation: u32, tag: u32) -> Option<SourceClass> {
        let class_bits = 0xff << Self::CLASS_SHIFT;
        if (self.0 ^ Self::expected(generation, tag)) & !class_bits != 0 {
            return None;
        }
        match (self.0 >> Self::CLASS_SHIFT) as u8 & 0xf {
            1 => Some(SourceClass::Exempt),
            2 => Some(SourceClass::Monitored),
            3 => Some(SourceClass::Enforced),
            _ => None,
        }
    }

    /// The action cached with the class (unknown values: `Drop`).
    #[inline(always)]
    pub const fn action(self) -> Action {
        Action::from_u32(((self.0 >> Self::ACTION_SHIFT) & 0xf) as u32)
    }

    #[inline(always)]
    const fn expected(generation: u32, tag: u32) -> u64 {
        ((tag as u64) << Self::TAG_SHIFT) | generation as u64
    }
}

impl HostStats {
    pub const fn first_seen(now_ns: u64, now_jiffies: u64, epoch: u32) -> Self {
        Self {
            attempts: 0,
            segments: 0,
            dropped: 0,
            first_seen_ns: now_ns,
            last_seen_ns: now_ns,
            last_dst: [0; 16],
            last_dst_port: 0,
            last_reason: 0,
            sketch_epoch: epoch,
            dst_sketch: [0; SKETCH_REGISTERS],
            last_seen_jiffies: now_jiffies,
            cached_class: 0,
            dst_exact: [0; EXACT_DESTINATIONS],
            dst_exact_len: 0,
            cached_limit: 0,
            bucket_tat_ns: 0,
            limited: 0,
            replies: 0,
        }
    }

    #[cfg(any(feature = "user", test))]
    pub fn sketch(&self) -> crate::sketch::DistinctSketch<'_> {
        crate::sketch::DistinctSketch::new(&self.dst_sketch)
    }

    /// The epoch's distinct destinations as exact-set keys (0: an empty slot), or `None`
    /// once the set overflowed.
    #[cfg(any(feature = "user", test))]
    pub fn exact_destinations(&self) -> Option<[u32; EXACT_DESTINATIONS]> {
        (self.dst_exact_len as usize <= EXACT_DESTINATIONS).then_some(self.dst_exact)
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: `#[repr(C)]` integers and byte arrays without implicit padding (layout tests below).
    unsafe impl aya::Pod for super::HostKey {}
    unsafe impl aya::Pod for super::HostMask {}
    unsafe impl aya::Pod for super::HostStats {}
}

#[cfg(test)]
mod tests {
    use core::mem::{align_of, offset_of, size_of};

    use super::*;

    #[test]
    fn layouts() {
        assert_eq!(size_of::<HostKey>(), 24);
        assert_eq!(align_of::<HostKey>(), 8);
        assert_eq!(offset_of!(HostKey, addr), 0);
        assert_eq!(offset_of!(HostKey, family), 16);
        assert_eq!(offset_of!(HostKey, reserved), 20);
        assert_eq!(size_of::<HostMask>(), 24);
        assert_eq!(align_of::<HostMask>(), 8);
        assert_eq!(offset_of!(HostMask, v6), 0);
        assert_eq!(offset_of!(HostMask, v4), 16);
        assert_eq!(offset_of!(HostMask, reserved), 20);
        assert_eq!(size_of::<HostStats>(), 192);
        assert_eq!(align_of::<HostStats>(), 8);
        assert_eq!(offset_of!(HostStats, attempts), 0);
        assert_eq!(offset_of!(HostStats, segments), 8);
        assert_eq!(offset_of!(HostStats, dropped), 16);
        assert_eq!(offset_of!(HostStats, first_seen_ns), 24);
        assert_eq!(offset_of!(HostStats, last_seen_ns), 32);
        assert_eq!(offset_of!(HostStats, last_dst), 40);
        assert_eq!(offset_of!(HostStats, last_dst_port), 56);
        assert_eq!(offset_of!(HostStats, last_reason), 58);
        assert_eq!(offset_of!(HostStats, sketch_epoch), 60);
        assert_eq!(offset_of!(HostStats, dst_sketch), 64);
        assert_eq!(offset_of!(HostStats, last_seen_jiffies), 128);
        assert_eq!(offset_of!(HostStats, cached_class), 136);
        assert_eq!(offset_of!(HostStats, dst_exact), 144);
        assert_eq!(offset_of!(HostStats, dst_exact_len), 164);
        assert_eq!(offset_of!(HostStats, cached_limit), 168);
        assert_eq!(offset_of!(HostStats, bucket_tat_ns), 176);
        assert_eq!(offset_of!(HostStats, limited), 184);
        assert_eq!(offset_of!(HostStats, replies), 188);
    }

    #[test]
    fn a_cached_class_holds_only_for_its_generation_and_its_host() {
        let tag = (1 << 24) - 1;
        for class in [
            SourceClass::Exempt,
            SourceClass::Monitored,
            SourceClass::Enforced,
        ] {
            let cached = CachedClass::new(u32::MAX, class, tag, Action::IcmpProhibited);
            assert_eq!(cached.get(u32::MAX, tag), Some(class));
            assert_eq!(cached.action(), Action::IcmpProhibited);
            assert_eq!(cached.get(0, tag), None);
            // Another host's class word (a slot claimed, an LRU entry reused under a reader).
            assert_eq!(cached.get(u32::MAX, tag - 1), None);
            assert_eq!(cached.get(u32::MAX, 0), None);
        }
        // What user space writes for a new entry is never a class, whatever the generation.
        assert_eq!(CachedClass(0).get(0, 0), None);
        assert_eq!(CachedClass(4 << 32).get(0, 0), None);
    }

    #[test]
    fn a_host_is_its_prefix() {
        let ip = |text: &str| text.parse::<std::net::IpAddr>().unwrap();
        let default = HostMask::new(HostMask::DEFAULT_V4_PREFIX, HostMask::DEFAULT_V6_PREFIX);
        let host = default.key(ip("2001:db8:1:2:a:b:c:d"));
        assert_eq!(host.address(), ip("2001:db8:1:2::"));
        assert_eq!(host, default.key(ip("2001:db8:1:2:ffff::1")));
        assert_ne!(host, default.key(ip("2001:db8:1:3::")));
        assert_eq!(default.key(ip("100.64.1.2")).address(), ip("100.64.1.2"));
        // Lengths that are not a whole byte, and the extremes.
        let odd = HostMask::new(30, 60);
        assert_eq!(odd.key(ip("100.64.1.7")).address(), ip("100.64.1.4"));
        assert_eq!(
            odd.key(ip("2001:db8:1:ffff::")).address(),
            ip("2001:db8:1:fff0::")
        );
        let full = HostMask::new(32, 128);
        assert_eq!(full.key(ip("2001:db8::1")).address(), ip("2001:db8::1"));
        assert_eq!(
            HostMask::new(0, 0).key(ip("2001:db8::1")).address(),
            ip("::")
        );
        // An IPv4 host stays apart from the IPv6 host of its mapped form.
        assert_ne!(
            default.key(ip("100.64.1.2")),
            default.key(ip("::ffff:100.64.1.2"))
        );
    }

    #[test]
    fn ipv4_keys_are_mapped() {
        let key = HostKey::from_v4([100, 64, 1, 2]);
        let expected: std::net::Ipv6Addr = "::ffff:100.64.1.2".parse().unwrap();
        assert_eq!(key.addr, expected.octets());
        assert_eq!(
            key.address(),
            "100.64.1.2".parse::<std::net::IpAddr>().unwrap()
        );
    }

    #[test]
    fn an_ipv4_mapped_ipv6_source_is_not_the_ipv4_host() {
        let mapped: std::net::Ipv6Addr = "::ffff:100.64.1.2".parse().unwrap();
        let v6 = HostKey::from_v6(mapped.octets());
        let v4 = HostKey::from_v4([100, 64, 1, 2]);
        assert_ne!(v6, v4);
        assert_eq!(v6.address(), std::net::IpAddr::V6(mapped));
    }
}
