//! The relay path without the tries: the single entry of `RELAY_FILTER`.
//!
//! Relays are few and mostly single addresses (the ISP's smarthosts), and the ranges that
//! hold subscribers are few too. So the kernel settles most relay traffic from this one
//! array value, read inline: a filter bit rules most destinations out, a slot recognises a
//! single-address relay, and a short list of the outermost subscriber ranges tells a
//! subscriber's mail from a stranger's. Only what these cannot settle goes to the LPM tries,
//! each lookup a helper call: a relay prefix wider than one address, two relays sharing a
//! slot, more outermost ranges than the list holds.
//!
//! Every positive answer here is also the trie's answer (a slot only ever holds a relay, the
//! list only ranges that hold subscribers), so a filter the kernel reads while the agent
//! rewrites it can only send a lookup to the trie, or say what the trie says.

use crate::host::address_words;

/// Slots per family: one per filter bit.
pub const RELAY_SLOTS: usize = 64;
/// Outermost subscriber ranges per family the list holds; more are left to the trie.
pub const LISTED_RANGES: usize = 8;

/// What the filter makes of a destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelayMatch {
    /// No relay holds it.
    NotRelay,
    /// A single-address relay.
    Relay,
    /// Maybe a relay: the trie decides.
    AskTrie,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayFilter {
    /// Per family, bit n set: a relay address hashes to n. A relay prefix wider than one
    /// address sets every bit, since a filter of single addresses cannot name its addresses.
    pub v4: u64,
    pub v6: u64,
    /// Bit n set: slot n holds a single-address relay (when several hash to n, the last
    /// added; the others are found in the trie).
    pub v4_exact: u64,
    pub v6_exact: u64,
    /// Addresses as the kernel reads them from the packet (network order in memory), in words
    /// so that comparing one is a word compare, not a call to `bcmp`.
    pub v4_slots: [u32; RELAY_SLOTS],
    pub v6_slots: [[u64; 2]; RELAY_SLOTS],
    pub subscriber_space: ListedRanges,
}

impl Default for RelayFilter {
    /// Rules every destination out: an unwritten filter passes nothing as a relay.
    fn default() -> Self {
        Self {
            v4: 0,
            v6: 0,
            v4_exact: 0,
            v6_exact: 0,
            v4_slots: [0; RELAY_SLOTS],
            v6_slots: [[0; 2]; RELAY_SLOTS],
            subscriber_space: ListedRanges::default(),
        }
    }
}

impl RelayFilter {
    pub fn add_v4(&mut self, network: [u8; 4], prefix_len: u8) {
        if prefix_len < 32 {
            self.v4 = u64::MAX;
            return;
        }
        let index = v4_index(network);
        self.v4 |= 1 << index;
        self.v4_exact |= 1 << index;
        self.v4_slots[index] = u32::from_ne_bytes(network);
    }

    pub fn add_v6(&mut self, network: [u8; 16], prefix_len: u8) {
        if prefix_len < 128 {
            self.v6 = u64::MAX;
            return;
        }
        let index = v6_index(network);
        self.v6 |= 1 << index;
        self.v6_exact |= 1 << index;
        self.v6_slots[index] = address_words(network);
    }

    #[inline(always)]
    pub fn relay_v4(&self, addr: [u8; 4]) -> RelayMatch {
        let index = v4_index(addr);
        let bit = 1u64 << index;
        if self.v4 & bit == 0 {
            RelayMatch::NotRelay
        } else if self.v4_exact & bit != 0 && self.v4_slots[index] == u32::from_ne_bytes(addr) {
            RelayMatch::Relay
        } else {
            RelayMatch::AskTrie
        }
    }

    #[inline(always)]
    pub fn relay_v6(&self, addr: [u8; 16]) -> RelayMatch {
        let index = v6_index(addr);
        let bit = 1u64 << index;
        if self.v6 & bit == 0 {
            return RelayMatch::NotRelay;
        }
        let [high, low] = address_words(addr);
        let slot = self.v6_slots[index];
        if self.v6_exact & bit != 0 && slot[0] == high && slot[1] == low {
            RelayMatch::Relay
        } else {
            RelayMatch::AskTrie
        }
    }
}

/// The outermost subscriber ranges per family, when they are few: whether a source is a
/// subscriber at all, without the subscriber-space trie.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListedRanges {
    /// Ranges listed, plus one; 0 when the list is not used (not written yet, or more ranges
    /// than it holds) and the trie decides.
    pub v4_listed: u32,
    pub v6_listed: u32,
    /// (network, mask) words, in the packet's byte order.
    pub v4: [[u32; 2]; LISTED_RANGES],
    /// (network high, network low, mask high, mask low) words.
    pub v6: [[u64; 4]; LISTED_RANGES],
}

impl ListedRanges {
    /// Lists `ranges` (network, prefix length) of one family, or leaves the family to the
    /// trie when there are more than fit.
    pub fn list_v4(&mut self, ranges: &[([u8; 4], u8)]) {
        self.v4_listed = 0;
        if ranges.len() > LISTED_RANGES {
            return;
        }
        for (slot, (network, len)) in self.v4.iter_mut().zip(ranges) {
            let mask = u32::MAX.checked_shl(32 - u32::from(*len)).unwrap_or(0);
            let mask = mask.to_be_bytes();
            *slot = [u32::from_ne_bytes(*network), u32::from_ne_bytes(mask)];
        }
        self.v4_listed = ranges.len() as u32 + 1;
    }

    pub fn list_v6(&mut self, ranges: &[([u8; 16], u8)]) {
        self.v6_listed = 0;
        if ranges.len() > LISTED_RANGES {
            return;
        }
        for (slot, (network, len)) in self.v6.iter_mut().zip(ranges) {
            let mask = u128::MAX.checked_shl(128 - u32::from(*len)).unwrap_or(0);
            let [network_high, network_low] = address_words(*network);
            let [mask_high, mask_low] = address_words(mask.to_be_bytes());
            *slot = [network_high, network_low, mask_high, mask_low];
        }
        self.v6_listed = ranges.len() as u32 + 1;
    }

    /// Whether a listed range holds `addr`; `None` when the trie must decide.
    #[inline(always)]
    pub fn holds_v4(&self, addr: [u8; 4]) -> Option<bool> {
        let listed = (self.v4_listed as usize).checked_sub(1)?;
        let addr = u32::from_ne_bytes(addr);
        for (n, [network, mask]) in self.v4.iter().enumerate() {
            if n >= listed {
                break;
            }
            if addr & mask == *network {
                return Some(true);
            }
        }
        Some(false)
    }

    #[inline(always)]
    pub fn holds_v6(&self, addr: [u8; 16]) -> Option<bool> {
        let listed = (self.v6_listed as usize).checked_sub(1)?;
        let [high, low] = address_words(addr);
        for (n, [network_high, network_low, mask_high, mask_low]) in self.v6.iter().enumerate() {
            if n >= listed {
                break;
            }
            if high & mask_high == *network_high && low & mask_low == *network_low {
                return Some(true);
            }
        }
        Some(false)
    }
}

/// Fibonacci hashing: the multiplication's top six bits pick the bit.
#[inline(always)]
fn v4_index(addr: [u8; 4]) -> usize {
    // The mask is for the verifier: the shift already leaves six bits.
    (u32::from_ne_bytes(addr).wrapping_mul(0x9e37_79b1) >> 26) as usize & (RELAY_SLOTS - 1)
}

#[inline(always)]
fn v6_index(addr: [u8; 16]) -> usize {
    let [high, low] = address_words(addr);
    ((high ^ low).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 58) as usize & (RELAY_SLOTS - 1)
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` integers without implicit padding (layout test below).
    unsafe impl aya::Pod for super::RelayFilter {}
}

#[cfg(test)]
mod tests {
    use core::mem::{offset_of, size_of};

    use super::*;

    const SMARTHOST: [u8; 4] = [192, 0, 2, 25];
    const SMARTHOST6: [u8; 16] = [
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x25,
    ];

    #[test]
    fn layout() {
        assert_eq!(offset_of!(RelayFilter, v4), 0);
        assert_eq!(offset_of!(RelayFilter, v6), 8);
        assert_eq!(offset_of!(RelayFilter, v4_exact), 16);
        assert_eq!(offset_of!(RelayFilter, v6_exact), 24);
        assert_eq!(offset_of!(RelayFilter, v4_slots), 32);
        assert_eq!(offset_of!(RelayFilter, v6_slots), 288);
        assert_eq!(offset_of!(RelayFilter, subscriber_space), 1312);
        assert_eq!(offset_of!(ListedRanges, v4), 8);
        assert_eq!(offset_of!(ListedRanges, v6), 72);
        assert_eq!(size_of::<ListedRanges>(), 328);
        assert_eq!(size_of::<RelayFilter>(), 1640);
    }

    #[test]
    fn single_address_relays_are_settled_without_the_trie() {
        let mut filter = RelayFilter::default();
        filter.add_v4(SMARTHOST, 32);
        filter.add_v6(SMARTHOST6, 128);
        assert_eq!(filter.relay_v4(SMARTHOST), RelayMatch::Relay);
        assert_eq!(filter.relay_v6(SMARTHOST6), RelayMatch::Relay);
        // Most other destinations are ruled out; the few sharing its bit go to the trie.
        let verdicts: Vec<_> = (0..=255u8)
            .map(|last| filter.relay_v4([198, 51, 100, last]))
            .collect();
        assert!(!verdicts.contains(&RelayMatch::Relay));
        let ruled_out = verdicts
            .iter()
            .filter(|m| **m == RelayMatch::NotRelay)
            .count();
        assert!(ruled_out > 200, "only {ruled_out} of 256 ruled out");
    }

    #[test]
    fn a_wide_prefix_sends_every_other_destination_to_the_trie() {
        let mut filter = RelayFilter::default();
        filter.add_v4(SMARTHOST, 32);
        filter.add_v4([198, 51, 100, 0], 24);
        assert_eq!(filter.relay_v4(SMARTHOST), RelayMatch::Relay);
        assert!(
            (0..=255u8).all(|last| filter.relay_v4([203, 0, 113, last]) == RelayMatch::AskTrie)
        );
        filter.add_v6(
            [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            64,
        );
        assert_eq!(filter.relay_v6(SMARTHOST6), RelayMatch::AskTrie);
    }

    #[test]
    fn relays_sharing_a_slot_leave_the_earlier_one_to_the_trie() {
        let mut filter = RelayFilter::default();
        let index = v4_index(SMARTHOST);
        let sibling = (0..=u32::MAX)
            .map(u32::to_be_bytes)
            .find(|addr| *addr != SMARTHOST && v4_index(*addr) == index)
            .unwrap();
        filter.add_v4(SMARTHOST, 32);
        filter.add_v4(sibling, 32);
        assert_eq!(filter.relay_v4(sibling), RelayMatch::Relay);
        assert_eq!(filter.relay_v4(SMARTHOST), RelayMatch::AskTrie);
    }

    #[test]
    fn listed_ranges_hold_their_addresses_and_too_many_go_to_the_trie() {
        let mut ranges = ListedRanges::default();
        assert_eq!(
            ranges.holds_v4([100, 64, 0, 1]),
            None,
            "unwritten: the trie decides"
        );
        ranges.list_v4(&[([100, 64, 0, 0], 10), ([192, 0, 2, 7], 32)]);
        ranges.list_v6(&[(
            [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            32,
        )]);
        assert_eq!(ranges.holds_v4([100, 127, 255, 255]), Some(true));
        assert_eq!(ranges.holds_v4([100, 128, 0, 0]), Some(false));
        assert_eq!(ranges.holds_v4([192, 0, 2, 7]), Some(true));
        assert_eq!(ranges.holds_v4([192, 0, 2, 8]), Some(false));
        assert_eq!(ranges.holds_v6(SMARTHOST6), Some(true));
        let mut other = SMARTHOST6;
        other[3] = 0xb9;
        assert_eq!(ranges.holds_v6(other), Some(false));
        // A /0 holds everything (its mask shift would overflow).
        ranges.list_v4(&[([0, 0, 0, 0], 0)]);
        assert_eq!(ranges.holds_v4([8, 8, 8, 8]), Some(true));
        let many: Vec<_> = (0..=LISTED_RANGES as u8)
            .map(|n| ([10, n, 0, 0], 16))
            .collect();
        ranges.list_v4(&many);
        assert_eq!(ranges.holds_v4([10, 0, 0, 1]), None);
        ranges.list_v4(&[]);
        assert_eq!(ranges.holds_v4([10, 0, 0, 1]), Some(false));
    }
}
