//! Counting: one per-CPU counter per reason for every frame, and per-host statistics for
//! subscriber hosts that reach the policy.

use core::intrinsics::{AtomicOrdering, atomic_cxchg, atomic_xadd};

use aya_ebpf::helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns};
use smtpguard_common::{
    Action, CachedClass, HostStats, InterfaceSlot, Limit, Reason, Verdict,
    host::{address_words, ipv4_mapped},
    interface::interface_counter,
    sketch,
    sketch::{EXACT_DESTINATIONS, SKETCH_REGISTERS},
};

use crate::{
    COUNTERS, INTERFACE_COUNTERS, INTERFACE_SLOTS, SKETCH_EPOCH, UNRECORDED_HOSTS,
    decide::TrackedHost,
    hosts,
    parse::{Addresses, Packet, Transport},
};

const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// Bit `reason` set for every reason whose frame is not forwarded (verdict drop or tx).
const NOT_PASSED: u64 = {
    let mut mask = 0;
    let mut i = 0;
    while i < Reason::ALL.len() {
        if !matches!(Reason::ALL[i].verdict(), Verdict::Pass) {
            mask |= 1 << i;
        }
        i += 1;
    }
    mask
};

#[inline(always)]
pub fn count(reason: Reason) {
    if let Some(counter) = COUNTERS.get_ptr_mut(reason as u32) {
        // SAFETY: a per-CPU slot, written only by this CPU with preemption off.
        unsafe { *counter += 1 };
    }
}

/// Counts a segment whose host's statistics could not be recorded.
#[inline(always)]
fn count_unrecorded() {
    if let Some(counter) = UNRECORDED_HOSTS.get_ptr_mut(0) {
        // SAFETY: a per-CPU slot, written only by this CPU with preemption off.
        unsafe { *counter += 1 };
    }
}

/// Counts a judged frame for the interface it arrived on: in the interface's slot when the
/// agent gave it one, else in the unattributed slot.
#[inline(always)]
pub fn count_interface(ifindex: u32, reason: Reason) {
    let entry = INTERFACE_SLOTS.get(InterfaceSlot::index(ifindex));
    let slot = InterfaceSlot::slot_of(entry, ifindex);
    if let Some(counter) = INTERFACE_COUNTERS.get_ptr_mut(interface_counter(slot, reason)) {
        // SAFETY: a per-CPU slot, written only by this CPU with preemption off.
        unsafe { *counter += 1 };
    }
}

/// Records the segment in its host's statistics and returns its final reason: a provisional
/// `Dropped` segment (see `decide::enforce`) gets its host's action.
#[inline(always)]
pub fn record_host(packet: &Packet, reason: Reason, host: TrackedHost) -> Reason {
    let dst = match packet.addresses {
        Addresses::V4 { dst, .. } => ipv4_mapped(dst),
        Addresses::V6 { dst, .. } => dst,
    };
    let (dst_port, attempt) = match packet.transport {
        Transport::Tcp {
            dst_port, flags, ..
        } => {
            // SYN set and ACK clear, without a comparison (see the counters below): 1 exactly
            // when the masked flags are SYN alone.
            let off = ((flags & (TCP_SYN | TCP_ACK)) ^ TCP_SYN) as u64;
            (dst_port, off.wrapping_sub(1) >> 63)
        }
        _ => (0, 0),
    };
    // SAFETY: a helper without arguments, which the verifier inlines into a load of
    // `jiffies`.
    let jiffies = unsafe { bpf_jiffies64() };
    let epoch = SKETCH_EPOCH.get(0).copied().unwrap_or(0);

    let first = || HostStats::first_seen(clock_ns(), jiffies, epoch);
    // Fail closed: without a bucket there is no reply and no SYN above a limit.
    let Some(stats) = hosts::entry(host.held, &host.key, first, epoch) else {
        count_unrecorded();
        return reason;
    };
    let segment = Segment {
        dst,
        jiffies,
        class: host.class.0,
        limit: host.limit.to_word(),
        epoch,
        dst_port,
        reason: reason as u16,
        attempt: attempt as u32,
    };
    // SAFETY: `stats` points into a map value, valid for this program run.
    if unsafe { update_repeated(stats, &segment) } {
        return reason;
    }
    // Only a `Dropped` segment's reason can change, and only into one of these.
    match update_host(stats, &segment) {
        final_reason if final_reason == Reason::Rejected as u32 => Reason::Rejected,
        final_reason if final_reason == Reason::WithinRate as u32 => Reason::WithinRate,
        final_reason if final_reason == Reason::RateLimited as u32 => Reason::RateLimited,
        _ => reason,
    }
}

/// What one segment adds to its host's statistics: the arguments of [`update_host`] beyond
/// the entry (a BPF call takes at most five registers).
#[repr(C)]
pub struct Segment {
    dst: [u8; 16],
    jiffies: u64,
    /// The host's [`CachedClass`] word, its action included.
    class: u64,
    /// The host's [`Limit`] word.
    limit: u64,
    epoch: u32,
    dst_port: u16,
    /// The provisional reason: a `Dropped` one gets the host's action.
    reason: u16,
    /// 1 for a connection attempt (SYN without ACK).
    attempt: u32,
}

/// Adds a segment to its host's entry and returns its final reason. A global BPF function
/// (exported, never inlined): the verifier checks it once, on its own, where inlined it was
/// walked again for every path that reaches it, and a host table slot and an overflow entry
/// are two kinds of pointer it cannot merge (XDP: 222,923 verified instructions inlined,
/// 166,279 as a call, before the actions).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn update_host(stats: *mut HostStats, segment: *const Segment) -> u32 {
    // For the verifier: it checks a global function for any caller, null pointers included.
    if stats.is_null() || segment.is_null() {
        return u32::MAX;
    }
    // SAFETY: checked for null above; the caller's `Segment`, valid during the call.
    let segment = unsafe { &*segment };
    let (dst, epoch, jiffies) = (segment.dst, segment.epoch, segment.jiffies);
    // SAFETY: `stats` points into the map value, valid for this program run. Counters are
    // shared between CPUs and added atomically; the last-seen fields are a last-writer-wins
    // snapshot, and a lost sketch update only lowers the estimate by one destination.
    unsafe {
        // The destination of the host's previous segment in this epoch is in the sketch
        // already, so the same one again cannot raise a register: a bot's retransmissions
        // and a client's segments of one connection skip the hash.
        let repeated = (*stats).segments != 0
            && (*stats).sketch_epoch == epoch
            && same_address(&(*stats).last_dst, &dst);
        add(&raw mut (*stats).segments, 1);
        if (*stats).last_seen_jiffies != jiffies {
            (*stats).last_seen_ns = clock_ns();
            (*stats).last_seen_jiffies = jiffies;
        }
        (*stats).last_dst = dst;
        (*stats).last_dst_port = segment.dst_port;
        // Stored only when they change: every lookup reads these two words, and a store of
        // an unchanged value still takes their cache line from the other CPUs (a bot's
        // segments to many destinations, spread over the CPUs by RSS, come this way).
        if (*stats).cached_class != segment.class {
            (*stats).cached_class = segment.class;
        }
        if (*stats).cached_limit != segment.limit {
            (*stats).cached_limit = segment.limit;
        }
        if (*stats).sketch_epoch != epoch {
            // A new snapshot interval: this host's sketch starts empty.
            clear_destinations(stats);
            (*stats).sketch_epoch = epoch;
        }
        if !repeated {
            let hash = sketch::hash(&dst);
            remember_exact(stats, sketch::exact_key(hash));
            let (index, rank) = sketch::register(hash);
            // The mask is for the verifier: the index is already below the register count.
            let register = &mut (*stats).dst_sketch[index & (SKETCH_REGISTERS - 1)];
            if *register < rank {
                *register = rank;
            }
        }
        // Last, what depends on the reason: the verifier walks the code after each branch on
        // it once per reason, and this part is short.
        let reason = if segment.reason == Reason::Dropped as u16 {
            act(
                stats,
                CachedClass(segment.class).action(),
                Limit::from_word(segment.limit),
                segment.attempt != 0,
            ) as u32
        } else {
            u32::from(segment.reason)
        };
        // In arithmetic, not comparisons: BPF has no instruction that turns a comparison into
        // a value, so each would be a branch, and the verifier would walk what follows once
        // more for each.
        add(&raw mut (*stats).attempts, u64::from(segment.attempt));
        add(&raw mut (*stats).dropped, (NOT_PASSED >> reason) & 1);
        if (*stats).last_reason != reason as u16 {
            (*stats).last_reason = reason as u16;
        }
        reason
    }
}

/// The common segment, inlined: one to the host's previous destination and port in the same
/// epoch, of an unchanged class and limit, whose reason its action cannot change. It adds to
/// the counters and writes nothing else that has not changed: the call to [`update_host`]
/// (a return through the return thunk on these machines, and the segment's fields through
/// the stack) cost about 10 ns a segment, and a store of an unchanged value still takes the
/// cache line from the other CPUs. Returns false, having written nothing, for any other
/// segment, which [`update_host`] then takes whole.
#[inline(always)]
unsafe fn update_repeated(stats: *mut HostStats, segment: &Segment) -> bool {
    // SAFETY: the caller passes a pointer into a map value, valid for this program run.
    unsafe {
        let fixed_reason = segment.reason != Reason::Dropped as u16
            || CachedClass(segment.class).action() == Action::Drop;
        let same = (*stats).segments != 0
            && (*stats).sketch_epoch == segment.epoch
            && (*stats).cached_class == segment.class
            && (*stats).cached_limit == segment.limit
            && (*stats).last_dst_port == segment.dst_port
            && same_address(&(*stats).last_dst, &segment.dst);
        if !(fixed_reason && same) {
            return false;
        }
        add(&raw mut (*stats).segments, 1);
        if (*stats).last_seen_jiffies != segment.jiffies {
            (*stats).last_seen_ns = clock_ns();
            (*stats).last_seen_jiffies = segment.jiffies;
        }
        add(&raw mut (*stats).attempts, u64::from(segment.attempt));
        add(
            &raw mut (*stats).dropped,
            (NOT_PASSED >> segment.reason) & 1,
        );
        if (*stats).last_reason != segment.reason {
            (*stats).last_reason = segment.reason;
        }
        true
    }
}

/// An enforced segment's reason by its host's action. A connection attempt of a `reject` or
/// `ratelimit` host takes a token from the host's bucket: `Rejected` (answered) or
/// `WithinRate` (passed) with one, `Dropped` or `RateLimited` without. A `reject` host's other
/// segments are dropped (nothing else of a connection waits for an answer), a `ratelimit`
/// host's pass.
#[inline(always)]
unsafe fn act(stats: *mut HostStats, action: Action, limit: Limit, attempt: bool) -> Reason {
    match action {
        Action::Drop => Reason::Dropped,
        Action::RateLimit if !attempt => Reason::WithinRate,
        Action::Reset | Action::IcmpProhibited if !attempt => Reason::Dropped,
        // SAFETY: the caller passes a pointer into a map value, valid for this program run.
        _ => unsafe {
            let replies = action.replies();
            if take_token(stats, limit) {
                if replies {
                    add32(&raw mut (*stats).replies, 1);
                    Reason::Rejected
                } else {
                    Reason::WithinRate
                }
            } else {
                add32(&raw mut (*stats).limited, 1);
                if replies {
                    Reason::Dropped
                } else {
                    Reason::RateLimited
                }
            }
        },
    }
}

/// Takes a token from the host's bucket at the last-seen time (a jiffy's resolution). One
/// compare-and-exchange: a CPU that loses the race to another takes no token, so CPUs
/// together never take more than the bucket holds.
#[inline(always)]
unsafe fn take_token(stats: *mut HostStats, limit: Limit) -> bool {
    // SAFETY: the caller passes a pointer into a map value, 8-byte aligned by `HostStats`.
    unsafe {
        let tat = core::ptr::read_volatile(&raw const (*stats).bucket_tat_ns);
        let Some(next) = limit.admit(tat, (*stats).last_seen_ns) else {
            return false;
        };
        atomic_cxchg::<u64, { AtomicOrdering::Relaxed }, { AtomicOrdering::Relaxed }>(
            &raw mut (*stats).bucket_tat_ns,
            tat,
            next,
        )
        .1
    }
}

/// Empties the host's sketch registers and exact set, in word stores: LLVM turns a plain
/// array assignment into a call to `memset`, a byte loop the verifier walks again on every
/// path through it; volatile stores stay stores.
#[inline(always)]
unsafe fn clear_destinations(stats: *mut HostStats) {
    // SAFETY: the caller passes a pointer into a map value, valid for this program run; the
    // registers start 8-byte aligned in `HostStats` (layout test) and hold whole words.
    unsafe {
        let registers = (&raw mut (*stats).dst_sketch).cast::<u64>();
        for word in 0..SKETCH_REGISTERS / 8 {
            core::ptr::write_volatile(registers.add(word), 0);
        }
        for slot in 0..EXACT_DESTINATIONS {
            core::ptr::write_volatile(&raw mut (*stats).dst_exact[slot], 0);
        }
        core::ptr::write_volatile(&raw mut (*stats).dst_exact_len, 0);
    }
}

/// Adds a destination to the host's exact set (see `smtpguard_common::sketch`). Two CPUs
/// adding at once may lose one key, as a lost register update lowers the estimate by one.
#[inline(always)]
unsafe fn remember_exact(stats: *mut HostStats, key: u32) {
    // SAFETY: the caller passes a pointer into a map value, valid for this program run.
    unsafe { sketch::remember_exact(&mut (*stats).dst_exact, &mut (*stats).dst_exact_len, key) };
}

/// Two addresses compared as two words each: a byte-array `==` becomes a call to `bcmp`.
#[inline(always)]
fn same_address(a: &[u8; 16], b: &[u8; 16]) -> bool {
    let (a, b) = (address_words(*a), address_words(*b));
    a[0] == b[0] && a[1] == b[1]
}

/// `CLOCK_MONOTONIC_COARSE`: the timekeeper's last tick, no clocksource read (rdtsc through
/// an indirect call), which the boot-time clock costs. Still a helper call, which the callers
/// save where the jiffy has not moved.
#[inline(always)]
fn clock_ns() -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_ktime_get_coarse_ns() }
}

#[inline(always)]
unsafe fn add(counter: *mut u64, n: u64) {
    // SAFETY: the caller passes a pointer into a map value, 8-byte aligned by `HostStats`.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, n) };
}

#[inline(always)]
unsafe fn add32(counter: *mut u32, n: u32) {
    // SAFETY: the caller passes a pointer into a map value, 4-byte aligned by `HostStats`.
    unsafe { atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(counter, n) };
}
