//! A HyperLogLog sketch of a host's distinct destinations, 64 one-byte registers in the
//! host's map value. A bot fans out to many MX hosts; a misconfigured mail client hits one
//! or two. With 64 registers the estimate is exact-ish for small counts (linear counting)
//! and within about 13 % for large ones, which is all the classification needs.
//!
//! Beside the registers, each host keeps an exact set of its first [`EXACT_DESTINATIONS`]
//! destinations (32 bits of the same hash each): while a host's interval has not outgrown
//! it, its destinations are known exactly, up to hash collisions (nothing for the handful
//! the set holds), and the report counts them instead of estimating.
//!
//! The kernel calls [`hash`], [`register`], [`exact_key`] and [`remember_exact`]; user space
//! reads the registers back with [`DistinctSketch`].

pub const SKETCH_REGISTERS: usize = 64;
const INDEX_BITS: u32 = 6;
const INDEX_MASK: u64 = (SKETCH_REGISTERS as u64) - 1;
/// Rank of an all-zero remainder: the remainder has `64 - INDEX_BITS` bits.
const MAX_RANK: u8 = (64 - INDEX_BITS + 1) as u8;

/// Slots of a host's exact destination set.
pub const EXACT_DESTINATIONS: usize = 5;

/// The register a destination lands in and the rank to record there (register = max(rank)).
#[inline(always)]
pub fn slot(destination: &[u8; 16]) -> (usize, u8) {
    register(hash(destination))
}

/// [`slot`] of a destination already hashed.
#[inline(always)]
pub fn register(hash: u64) -> (usize, u8) {
    let index = (hash & INDEX_MASK) as usize;
    let rest = hash >> INDEX_BITS;
    let rank = if rest == 0 {
        MAX_RANK
    } else {
        trailing_zeros(rest) as u8 + 1
    };
    (index, rank)
}

/// A destination's key in the exact set: the hash's upper half, which the register index
/// and rank (read from the lower bits first) hardly depend on, with the lowest bit set so
/// that no key is 0, which marks an empty slot (31 bits of hash: for n destinations about
/// n² / 2³² collisions, nothing for the handful the set holds). Set, not branched on: a
/// branch would double the paths the kernel's verifier walks from here on.
#[inline(always)]
pub fn exact_key(hash: u64) -> u32 {
    (hash >> 32) as u32 | 1
}

/// The `len` of an exact set that a destination found full: its interval's destinations
/// are no longer known exactly.
pub const EXACT_OVERFLOWED: u32 = EXACT_DESTINATIONS as u32 + 1;

/// Adds `key` to a host's exact set, whose first `len` slots hold keys; a key that finds the
/// set full sets `len` to [`EXACT_OVERFLOWED`]. The membership test is arithmetic, not a
/// branch per slot: every branch here would multiply the paths the kernel's verifier walks
/// through the rest of the program.
#[inline(always)]
pub fn remember_exact(set: &mut [u32; EXACT_DESTINATIONS], len: &mut u32, key: u32) {
    // The top bit of `(slot ^ key) - 1`, computed in 64 bits, is set only where the 32-bit
    // slot equals the key.
    let present = set.iter().fold(0u64, |any, &slot| {
        any | u64::from(slot ^ key).wrapping_sub(1)
    });
    if present >> 63 != 0 {
        return;
    }
    match set.get_mut(*len as usize) {
        Some(slot) => {
            *slot = key;
            *len += 1;
        }
        // Once: a store of the same value would still take the cache line from other CPUs.
        None if *len != EXACT_OVERFLOWED => *len = EXACT_OVERFLOWED,
        None => {}
    }
}

/// SplitMix64's finaliser over the two halves of the address: cheap in BPF (shifts, xors,
/// two multiplies per half) and well mixed, so addresses in one subnet spread over registers.
#[inline(always)]
pub fn hash(destination: &[u8; 16]) -> u64 {
    let mut low = [0u8; 8];
    let mut high = [0u8; 8];
    low.copy_from_slice(&destination[..8]);
    high.copy_from_slice(&destination[8..]);
    mix(u64::from_le_bytes(low).wrapping_add(mix(u64::from_le_bytes(high))))
}

#[inline(always)]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Branch-light trailing-zero count of a non-zero value. BPF has no such instruction and
/// this keeps the generated code free of library calls the BPF linker could not resolve.
#[inline(always)]
fn trailing_zeros(mut x: u64) -> u32 {
    let mut n = 0;
    if x & 0xffff_ffff == 0 {
        n += 32;
        x >>= 32;
    }
    if x & 0xffff == 0 {
        n += 16;
        x >>= 16;
    }
    if x & 0xff == 0 {
        n += 8;
        x >>= 8;
    }
    if x & 0xf == 0 {
        n += 4;
        x >>= 4;
    }
    if x & 0x3 == 0 {
        n += 2;
        x >>= 2;
    }
    if x & 0x1 == 0 {
        n += 1;
    }
    n
}

/// The registers and the exact set (`None` once overflowed) that the kernel's recording of
/// `destinations` leaves, for user space that stands in for the kernel (tests, benchmarks).
#[cfg(any(feature = "user", test))]
pub fn recorded(
    destinations: impl IntoIterator<Item = [u8; 16]>,
) -> ([u8; SKETCH_REGISTERS], Option<[u32; EXACT_DESTINATIONS]>) {
    let mut registers = [0u8; SKETCH_REGISTERS];
    let (mut set, mut len) = ([0u32; EXACT_DESTINATIONS], 0);
    for destination in destinations {
        let hash = hash(&destination);
        let (index, rank) = register(hash);
        registers[index] = registers[index].max(rank);
        remember_exact(&mut set, &mut len, exact_key(hash));
    }
    (registers, (len != EXACT_OVERFLOWED).then_some(set))
}

/// Read-only view of a host's registers (user space).
#[cfg(any(feature = "user", test))]
pub struct DistinctSketch<'a> {
    registers: &'a [u8; SKETCH_REGISTERS],
}

#[cfg(any(feature = "user", test))]
impl<'a> DistinctSketch<'a> {
    pub fn new(registers: &'a [u8; SKETCH_REGISTERS]) -> Self {
        Self { registers }
    }

    /// Estimated number of distinct destinations (HyperLogLog with linear counting for
    /// small cardinalities, where it is nearly exact).
    pub fn estimate(&self) -> u64 {
        extern crate std;
        let m = SKETCH_REGISTERS as f64;
        let zeros = self.registers.iter().filter(|r| **r == 0).count();
        // The harmonic sum of 2^-r in fixed point (units of 2^-53) with integer adds, which
        // vectorise, where a float sum of 64 terms is a chain of dependent additions: reports
        // estimate a million sketches. 64 terms of at most 2^53 fit a u64; ranks above 53
        // (never seen below 2^50 destinations) count as zero, an error far below 2^-50.
        let fixed: u64 = self
            .registers
            .iter()
            .map(|r| (1u64 << 53) >> (*r).min(63))
            .sum();
        let harmonic = fixed as f64 / (1u64 << 53) as f64;
        let alpha = 0.709; // Flajolet et al.'s bias constant for 64 registers.
        let raw = alpha * m * m / harmonic;
        let estimate = if raw <= 2.5 * m && zeros > 0 {
            m * std::primitive::f64::ln(m / zeros as f64)
        } else {
            raw
        };
        estimate.round() as u64
    }

    /// Merges another host's registers in (for grouped reports).
    pub fn union(&self, other: &[u8; SKETCH_REGISTERS]) -> [u8; SKETCH_REGISTERS] {
        let mut merged = *self.registers;
        for (mine, theirs) in merged.iter_mut().zip(other) {
            *mine = (*mine).max(*theirs);
        }
        merged
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sketch_of(count: u32) -> [u8; SKETCH_REGISTERS] {
        let mut registers = [0u8; SKETCH_REGISTERS];
        for i in 0..count {
            let mut addr = [0u8; 16];
            addr[10] = 0xff;
            addr[11] = 0xff;
            addr[12..].copy_from_slice(&(0xC633_6400u32 + i).to_be_bytes());
            let (index, rank) = slot(&addr);
            registers[index] = registers[index].max(rank);
        }
        registers
    }

    #[test]
    fn trailing_zeros_matches_core() {
        for shift in 0..64 {
            for low in [1u64, 3, 5, 0xff] {
                let x = low << shift;
                if x != 0 {
                    assert_eq!(trailing_zeros(x), x.trailing_zeros(), "{x:#x}");
                }
            }
        }
    }

    #[test]
    fn empty_and_single_destination() {
        assert_eq!(DistinctSketch::new(&[0; SKETCH_REGISTERS]).estimate(), 0);
        let one = sketch_of(1);
        assert_eq!(DistinctSketch::new(&one).estimate(), 1);
        // The same destination again changes nothing.
        let mut again = one;
        let (index, rank) = slot(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 198, 51, 100, 0]);
        again[index] = again[index].max(rank);
        assert_eq!(again, one);
    }

    #[test]
    fn small_counts_are_close() {
        for count in [2u32, 5, 20, 30] {
            let estimate = DistinctSketch::new(&sketch_of(count)).estimate() as f64;
            let error = (estimate - count as f64).abs() / count as f64;
            assert!(error <= 0.25, "{count} distinct estimated as {estimate}");
        }
    }

    #[test]
    fn large_counts_are_within_bounds() {
        for count in [1_000u32, 50_000] {
            let estimate = DistinctSketch::new(&sketch_of(count)).estimate() as f64;
            let error = (estimate - count as f64).abs() / count as f64;
            // Four standard errors (1.04 / sqrt(64) = 13 %).
            assert!(error <= 0.52, "{count} distinct estimated as {estimate}");
        }
    }

    #[test]
    fn the_exact_set_keeps_distinct_keys_until_it_overflows() {
        let (mut set, mut len) = ([0u32; EXACT_DESTINATIONS], 0);
        for key in [7, 9, 7, 7, 9] {
            remember_exact(&mut set, &mut len, key);
        }
        assert_eq!((set, len), ([7, 9, 0, 0, 0], 2), "repeats are kept once");
        for key in [3, 4, u32::MAX] {
            remember_exact(&mut set, &mut len, key);
        }
        assert_eq!(
            (set, len),
            ([7, 9, 3, 4, u32::MAX], 5),
            "full, not overflowed"
        );
        remember_exact(&mut set, &mut len, 9);
        assert_eq!(len, 5, "a key it holds does not overflow a full set");
        remember_exact(&mut set, &mut len, 11);
        assert_eq!(
            (set, len),
            ([7, 9, 3, 4, u32::MAX], EXACT_OVERFLOWED),
            "a sixth key"
        );
        remember_exact(&mut set, &mut len, 0xdead);
        assert_eq!(
            (set, len),
            ([7, 9, 3, 4, u32::MAX], EXACT_OVERFLOWED),
            "left alone once overflowed"
        );
    }

    #[test]
    fn exact_keys_are_never_zero_and_distinct_for_nearby_addresses() {
        assert_eq!(exact_key(0x0000_0000_ffff_ffff), 1);
        assert_eq!(exact_key(0x1234_5678_0000_0000), 0x1234_5679);
        let keys: std::collections::BTreeSet<u32> = (0..10_000u32)
            .map(|i| {
                let mut addr = [0u8; 16];
                addr[10] = 0xff;
                addr[11] = 0xff;
                addr[12..].copy_from_slice(&(0xC633_6400u32 + i).to_be_bytes());
                exact_key(hash(&addr))
            })
            .collect();
        assert_eq!(keys.len(), 10_000, "no collision among 10,000 neighbours");
    }

    #[test]
    fn union_counts_both() {
        let a = sketch_of(10);
        let b = sketch_of(10);
        assert_eq!(DistinctSketch::new(&a).union(&b), a);
    }
}
