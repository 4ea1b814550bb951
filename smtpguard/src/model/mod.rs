//! The reference model of the data plane: what the kernel program must do with a frame,
//! written from the specification (issue #3 and the README's "How it decides") and not from
//! the kernel code, so that the differential tests compare two independent readings.
//!
//! Given a frame and a policy, [`Model::judge`] returns the reason (and through it the
//! verdict of both entry points), moves the one per-reason counter, and updates the
//! statistics of the source host the way the abuse-desk report expects:
//!
//! - every frame moves exactly one counter, its reason's;
//! - a subscriber frame that reached the policy (reasons with `Reason::tracks_host`: exempt,
//!   monitored, dropped, fragment-dropped, unparseable-*) counts one segment for its source,
//!   an attempt if it is a SYN without ACK, a drop if dropped, and records its destination,
//!   destination port (0 when the TCP header was not seen), reason, and the destination in
//!   the distinct-destination sketch, and its first five distinct destinations exactly (as
//!   keys of the sketch's hash; a sixth distinct destination marks the set overflowed);
//!   relayed traffic is not a direct-to-MX attempt and is not tracked.
//!
//! Timestamps are the kernel's clock and are not modelled; the sketch's register function
//! is the shared `smtpguard_common::sketch::slot`, the exact set's key the shared
//! `sketch::exact_key` (the specification leaves the hash open).

pub mod decide;
pub mod dissect;

use std::{collections::HashMap, net::IpAddr};

use smtpguard_common::{
    REASON_COUNT, Reason, Verdict, sketch,
    sketch::{EXACT_DESTINATIONS, EXACT_OVERFLOWED, SKETCH_REGISTERS},
};

pub use decide::{ModelPolicy, decide};
pub use dissect::{AboveIp, Dissection, dissect, ip_packet};

const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// XDP's return codes (`enum xdp_action`).
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
/// TC's return codes (`TC_ACT_*`).
pub const TC_ACT_OK: i32 = 0;
pub const TC_ACT_SHOT: i32 = 2;
/// `bpf_redirect`'s return: the reply leaves through the ingress interface.
pub const TC_ACT_REDIRECT: i32 = 7;

/// The XDP action for a verdict.
pub fn xdp_action(verdict: Verdict) -> u32 {
    match verdict {
        Verdict::Pass => XDP_PASS,
        Verdict::Drop => XDP_DROP,
        Verdict::Tx => XDP_TX,
    }
}

/// The TC action for a verdict.
pub fn tc_action(verdict: Verdict) -> i32 {
    match verdict {
        Verdict::Pass => TC_ACT_OK,
        Verdict::Drop => TC_ACT_SHOT,
        Verdict::Tx => TC_ACT_REDIRECT,
    }
}

/// A host's statistics, without the kernel's timestamps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostRecord {
    pub attempts: u64,
    pub segments: u64,
    pub dropped: u64,
    pub last_dst: IpAddr,
    pub last_dst_port: u16,
    pub last_reason: Reason,
    pub dst_sketch: [u8; SKETCH_REGISTERS],
    /// The first distinct destinations' keys in the order they were first seen (0: unused).
    pub dst_exact: [u32; EXACT_DESTINATIONS],
    /// How many of `dst_exact` are used, or `EXACT_OVERFLOWED` after one more distinct one.
    pub dst_exact_len: u32,
    /// Tokens taken from the host's bucket: replies sent (`reject`) or attempts passed
    /// (`ratelimit`).
    pub tokens_taken: u64,
    /// Attempts the bucket refused.
    pub limited: u64,
}

/// The policy plus everything the data plane counts.
#[derive(Clone, Debug)]
pub struct Model {
    pub policy: ModelPolicy,
    /// Per-reason counters, indexed by `Reason as usize`.
    pub counters: [u64; REASON_COUNT as usize],
    /// Statistics by source host.
    pub hosts: HashMap<IpAddr, HostRecord>,
}

impl Model {
    pub fn new(policy: ModelPolicy) -> Self {
        Self {
            policy,
            counters: [0; REASON_COUNT as usize],
            hosts: HashMap::new(),
        }
    }

    /// Judges one frame through one entry point and records what it counts.
    pub fn judge(&mut self, frame: &[u8]) -> Reason {
        let dissection = dissect(frame);
        let mut reason = decide(&self.policy, &dissection);
        if let Dissection::Ip { src, dst, above } = dissection
            && reason.tracks_host()
        {
            reason = self.record_host(src, dst, above, reason);
        }
        self.counters[reason as usize] += 1;
        reason
    }

    /// Records the frame for its host and returns its final reason: an attempt that needs a
    /// token (`Rejected`, `WithinRate`) gets one while the bucket holds `rate` of them, then
    /// is `Dropped` or `RateLimited`. The bucket's refill is not modelled: a test's frames
    /// arrive within a small part of any period its limit names.
    fn record_host(&mut self, src: IpAddr, dst: IpAddr, above: AboveIp, reason: Reason) -> Reason {
        let (port, attempt) = match above {
            AboveIp::Tcp { dst_port, flags } => {
                (dst_port, flags & TCP_SYN != 0 && flags & TCP_ACK == 0)
            }
            _ => (0, false),
        };
        let (_, limit) = self.policy.action(src);
        let host = self
            .hosts
            .entry(self.policy.host(src))
            .or_insert(HostRecord {
                attempts: 0,
                segments: 0,
                dropped: 0,
                last_dst: dst,
                last_dst_port: 0,
                last_reason: reason,
                dst_sketch: [0; SKETCH_REGISTERS],
                dst_exact: [0; EXACT_DESTINATIONS],
                dst_exact_len: 0,
                tokens_taken: 0,
                limited: 0,
            });
        let reason = match reason {
            Reason::Rejected | Reason::WithinRate if attempt => {
                if host.tokens_taken < u64::from(limit.rate) {
                    host.tokens_taken += 1;
                    reason
                } else {
                    host.limited += 1;
                    if reason == Reason::Rejected {
                        Reason::Dropped
                    } else {
                        Reason::RateLimited
                    }
                }
            }
            other => other,
        };
        host.segments += 1;
        host.attempts += u64::from(attempt);
        host.dropped += u64::from(reason.verdict() != Verdict::Pass);
        host.last_dst = dst;
        host.last_dst_port = port;
        host.last_reason = reason;
        // Destinations are hashed in their 16-byte form, IPv4 as `::ffff:a.b.c.d`.
        let wide = match dst {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => v6.octets(),
        };
        let (index, rank) = sketch::slot(&wide);
        host.dst_sketch[index] = host.dst_sketch[index].max(rank);
        let key = sketch::exact_key(sketch::hash(&wide));
        let used = host.dst_exact_len as usize;
        if used <= EXACT_DESTINATIONS && !host.dst_exact[..used].contains(&key) {
            if used == EXACT_DESTINATIONS {
                host.dst_exact_len = EXACT_OVERFLOWED;
            } else {
                host.dst_exact[used] = key;
                host.dst_exact_len += 1;
            }
        }
        reason
    }
}

#[cfg(test)]
mod tests;
