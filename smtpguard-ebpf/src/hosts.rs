//! Finding a host's statistics: its slot in the host table (either of its pair; an inlined
//! array access), else its entry in the overflow LRU map (a helper call); and making one for
//! a new host.
//!
//! The judged path carries only the slot it found for the host into the class decision, not
//! an overflow entry's pointer: the verifier walks the decision once for each kind of
//! pointer it may carry, and the statistics update once for each kind it may reach, which
//! would have taken it past the instruction budget. An overflow host's entry is looked up
//! again for the update (a second helper call; hosts sharing a slot are a few percent).

use core::{
    intrinsics::{AtomicOrdering, atomic_cxchg, atomic_xadd},
    ptr::{null_mut, read_volatile, write_volatile},
};

use aya_ebpf::bindings::BPF_NOEXIST;
use smtpguard_common::{
    Action, CachedClass, HostKey, HostSlot, HostStats, HostTableParams, Limit, SourceClass,
};

use crate::{ENFORCEMENT, HOST_STATS, HOST_TABLE};

/// What the lookup found for a host.
pub struct Found {
    pub held: Held,
    /// The host's cached-class and cached-limit words, read while its entry was known to be
    /// the host's.
    class_word: u64,
    limit_word: u64,
    /// The host's key tag (see [`CachedClass`]).
    pub tag: u32,
}

/// The host's slot, when the host holds it, or null: all of the lookup that travels on to the
/// statistics update. A null pointer rather than an option: the judged path's stack is near
/// its limit, and every value carried through the decision is one more the verifier tells
/// states apart by.
#[derive(Clone, Copy)]
pub struct Held(*mut HostSlot);

impl Held {
    /// Whether the host has a slot of the host table (else it is in the overflow or new).
    #[inline(always)]
    pub fn in_table(self) -> bool {
        !self.0.is_null()
    }
}

impl Found {
    /// The host's class, action and limit, if cached in this policy generation.
    #[inline(always)]
    pub fn cached(&self, generation: u32) -> Option<(SourceClass, Action, Limit)> {
        let cached = CachedClass(self.class_word);
        let class = cached.get(generation, self.tag)?;
        Some((class, cached.action(), Limit::from_word(self.limit_word)))
    }
}

#[inline(always)]
pub fn find(params: &HostTableParams, key: &HostKey) -> Found {
    let folded = params.fold(key);
    let mut found = Found {
        held: Held(null_mut()),
        class_word: 0,
        limit_word: 0,
        tag: HostTableParams::tag(folded),
    };
    let [home, neighbour] = params.pair(folded);
    if let Some(slot) = held_slot(home, key).or_else(|| held_slot(neighbour, key)) {
        // SAFETY: a pointer into the array's value, valid for this program run; one word.
        found.class_word = unsafe { read_volatile(&raw const (*slot.0).stats.cached_class) };
        found.limit_word = unsafe { read_volatile(&raw const (*slot.0).stats.cached_limit) };
        // The slot may have been claimed while the class word was read: then it is not used.
        if unsafe { read_volatile(&raw const (*slot.0).claim) } == slot.1 {
            found.held = Held(slot.0);
            return found;
        }
        found.class_word = 0;
    }
    if let Some(stats) = HOST_STATS.get_ptr_mut(key) {
        // SAFETY: a pointer into the map's value, valid for this program run; one word.
        found.class_word = unsafe { read_volatile(&raw const (*stats).cached_class) };
        found.limit_word = unsafe { read_volatile(&raw const (*stats).cached_limit) };
    }
    found
}

/// The bench's floor of per-host accounting (`stage::COUNT_ONLY`): one attempt added to the
/// host's home slot, if the host holds it, as the statistics update adds it.
#[inline(always)]
pub fn count_attempt(params: &HostTableParams, key: &HostKey) {
    let [home, _] = params.pair(params.fold(key));
    if let Some((slot, _)) = held_slot(home, key) {
        // SAFETY: a pointer into the array's value, valid for this program run; the counter
        // is 8-byte aligned (layout test).
        unsafe {
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*slot).stats.attempts, 1)
        };
    }
}

/// The slot `index` with the claim word read, if it holds `key` and is published. The reads
/// are volatile so they happen in this order: a caller that reads the claim word again after
/// its own reads and finds the same value read one holder's values (every claim changes it).
#[inline(always)]
fn held_slot(index: u32, key: &HostKey) -> Option<(*mut HostSlot, u64)> {
    let slot = HOST_TABLE.get_ptr_mut(index)?;
    // SAFETY: a pointer into the array's value, valid for this program run.
    unsafe {
        let claim = read_volatile(&raw const (*slot).claim);
        // One branch for the whole test: each branch here is a path the verifier walks on.
        let differs = key_difference(slot, key) | (claim & 1);
        (claim != HostSlot::EMPTY && differs == 0).then_some((slot, claim))
    }
}

/// The statistics entry of the host [`find`] looked up: its slot, its overflow entry, or a
/// new one. `None` only if the overflow map refused a new entry.
#[inline(always)]
pub fn entry(
    held: Held,
    key: &HostKey,
    first: impl FnOnce() -> HostStats,
    epoch: u32,
) -> Option<*mut HostStats> {
    if !held.0.is_null() {
        // SAFETY: the slot's pointer, valid for this program run.
        return Some(unsafe { &raw mut (*held.0).stats });
    }
    if let Some(stats) = HOST_STATS.get_ptr_mut(key) {
        return Some(stats);
    }
    create(key, &first(), epoch)
}

/// Whether `slot` holds a published host other than `key`.
#[inline(always)]
fn held_by_another(slot: *mut HostSlot, key: &HostKey) -> bool {
    // SAFETY: a pointer into the array's value, valid for this program run.
    unsafe {
        HostSlot::is_published(read_volatile(&raw const (*slot).claim))
            && key_difference(slot, key) != 0
    }
}

/// Zero if the slot's key is `key`: the words xored and ored together (a byte-array `==`
/// becomes a call to `bcmp`).
#[inline(always)]
unsafe fn key_difference(slot: *const HostSlot, key: &HostKey) -> u64 {
    let theirs = unsafe { &raw const (*slot).key } as *const [u64; 3];
    let [a, b, c] = key.words();
    // SAFETY: the caller's slot pointer; `HostKey` is three aligned words.
    unsafe {
        (read_volatile(&raw const (*theirs)[0]) ^ a)
            | (read_volatile(&raw const (*theirs)[1]) ^ b)
            | (read_volatile(&raw const (*theirs)[2]) ^ c)
    }
}

/// Makes the statistics entry of a new host: the first slot of its pair that is empty or whose
/// holder has been idle for two epochs (lossless: the snapshots have its counts), else an
/// overflow entry.
#[inline(always)]
fn create(key: &HostKey, first: &HostStats, epoch: u32) -> Option<*mut HostStats> {
    // The slot is computed again rather than carried from `find`: a value carried through
    // the decision is one more the verifier tells states apart by.
    let params = ENFORCEMENT.get(0).map(|config| config.host_table)?;
    let [home, neighbour] = params.pair(params.fold(key));
    if let Some(slot) = HOST_TABLE.get_ptr_mut(home) {
        if let Some(stats) = claim_slot(slot, key, first, epoch) {
            return Some(stats);
        }
        // The neighbour only while another host holds the home. A home being claimed, or
        // taken by this host since the lookup (its first segment on another CPU), would leave
        // the host in both slots; the overflow is where such a race's second copy goes, and
        // the snapshot merges it.
        if held_by_another(slot, key)
            && let Some(other) = HOST_TABLE.get_ptr_mut(neighbour)
            && let Some(stats) = claim_slot(other, key, first, epoch)
        {
            return Some(stats);
        }
    }
    // NOEXIST: when two CPUs see a new host at once, the first insert wins and the second CPU
    // adds to it instead of resetting it.
    let _ = HOST_STATS.insert(key, first, BPF_NOEXIST as u64);
    HOST_STATS.get_ptr_mut(key)
}

/// Claims `slot` for `key`: compare-and-swap its claim word to odd (other
/// CPUs then neither use nor claim it), write the key and first statistics, publish (even).
/// Another CPU's claim in between makes the swap fail: that CPU's host keeps the slot, and
/// this one goes to the overflow (if it was the same host, the snapshot merges the two).
#[inline(always)]
fn claim_slot(
    slot: *mut HostSlot,
    key: &HostKey,
    first: &HostStats,
    epoch: u32,
) -> Option<*mut HostStats> {
    // SAFETY: a pointer into the array's value, valid for this program run; the claim word
    // is 8-byte aligned (layout test).
    unsafe {
        let claim = read_volatile(&raw const (*slot).claim);
        let holder_epoch =
            |slot: *mut HostSlot| read_volatile(&raw const (*slot).stats.sketch_epoch);
        let claimable = claim == HostSlot::EMPTY
            || (HostSlot::is_published(claim) && HostSlot::is_idle(holder_epoch(slot), epoch));
        if !claimable {
            return None;
        }
        // A segment of the holder between the idle check and the swap is lost, or lands in
        // the new holder's counts: one segment, in a window of nanoseconds, of a host idle
        // for two epochs. Checking again after the swap would cost the verifier more than
        // its budget has left; the key tag keeps the holder's class word from the newcomer.
        let claiming = claim | 1;
        let (_, swapped) = atomic_cxchg::<
            u64,
            { AtomicOrdering::SeqCst },
            { AtomicOrdering::SeqCst },
        >(&raw mut (*slot).claim, claim, claiming);
        if !swapped {
            return None;
        }
        write_volatile(&raw mut (*slot).key, *key);
        write_volatile(&raw mut (*slot).stats, *first);
        // An atomic add publishes: neither the compiler nor the CPU moves the writes above
        // after it (a lock-prefixed add on x86, a full barrier).
        atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(&raw mut (*slot).claim, 1);
        Some(&raw mut (*slot).stats)
    }
}
