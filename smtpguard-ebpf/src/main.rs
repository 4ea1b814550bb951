//! The smtpguard kernel program: maps and the two entry points. Both entry points hand the
//! frame to the same `judge`, so XDP and TC can never disagree on a verdict.
#![no_std]
#![no_main]
// Atomic adds on shared map values: the BPF target has no stable atomic RMW operations.
#![feature(core_intrinsics)]
#![expect(internal_features, reason = "atomic_xadd is unstable")]

mod decide;
mod parse;
mod stats;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT, xdp_action},
    macros::{classifier, map, xdp},
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
    programs::{TcContext, XdpContext},
};
use smtpguard_common::{
    EnforcementConfig, HostKey, HostOverride, HostStats, PrefixOrigin, REASON_COUNT, Reason,
    RelayFilter, SourcePolicy, SubscriberPolicy, Verdict,
    maps::{
        DEFAULT_EXEMPTION_CAPACITY, DEFAULT_HOST_CAPACITY, DEFAULT_OVERRIDE_CAPACITY,
        DEFAULT_RELAY_CAPACITY, DEFAULT_SUBSCRIBER_CAPACITY, source_capacity,
    },
};

use crate::parse::Frame;

// Capacities are defaults; the loader resizes each map from the configuration.
const DEFAULT_SOURCE_CAPACITY: u32 =
    source_capacity(DEFAULT_SUBSCRIBER_CAPACITY, DEFAULT_EXEMPTION_CAPACITY);
#[map]
static SOURCES_V4: LpmTrie<[u8; 4], SourcePolicy> =
    LpmTrie::with_max_entries(DEFAULT_SOURCE_CAPACITY, 0);
#[map]
static SOURCES_V6: LpmTrie<[u8; 16], SourcePolicy> =
    LpmTrie::with_max_entries(DEFAULT_SOURCE_CAPACITY, 0);
#[map]
static SUBSCRIBER_SPACE_V4: LpmTrie<[u8; 4], SubscriberPolicy> =
    LpmTrie::with_max_entries(DEFAULT_SUBSCRIBER_CAPACITY, 0);
#[map]
static SUBSCRIBER_SPACE_V6: LpmTrie<[u8; 16], SubscriberPolicy> =
    LpmTrie::with_max_entries(DEFAULT_SUBSCRIBER_CAPACITY, 0);
#[map]
static RELAYS_V4: LpmTrie<[u8; 4], PrefixOrigin> =
    LpmTrie::with_max_entries(DEFAULT_RELAY_CAPACITY, 0);
#[map]
static RELAYS_V6: LpmTrie<[u8; 16], PrefixOrigin> =
    LpmTrie::with_max_entries(DEFAULT_RELAY_CAPACITY, 0);
#[map]
static RELAY_FILTER: Array<RelayFilter> = Array::with_max_entries(1, 0);
#[map]
static ENFORCEMENT: Array<EnforcementConfig> = Array::with_max_entries(1, 0);
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(REASON_COUNT, 0);
#[map]
static HOST_STATS: LruHashMap<HostKey, HostStats> =
    LruHashMap::with_max_entries(DEFAULT_HOST_CAPACITY, 0);
#[map]
static SKETCH_EPOCH: Array<u32> = Array::with_max_entries(1, 0);
#[map]
static POLICY_GENERATION: Array<u32> = Array::with_max_entries(1, 0);
#[map]
static HOST_OVERRIDES: HashMap<HostKey, HostOverride> =
    HashMap::with_max_entries(DEFAULT_OVERRIDE_CAPACITY, 0);

/// How much of a non-linear skb the TC entry point pulls into the directly readable area:
/// enough for two VLAN tags, PPPoE, IPv6 with a long extension-header chain and TCP.
const TC_PULL_LEN: u32 = 512;

#[xdp]
pub fn smtpguard_xdp(ctx: XdpContext) -> u32 {
    match judge(Frame::new(ctx.data(), ctx.data_end())).verdict() {
        Verdict::Pass => xdp_action::XDP_PASS,
        Verdict::Drop => xdp_action::XDP_DROP,
    }
}

#[classifier]
pub fn smtpguard_tc(ctx: TcContext) -> i32 {
    let len = ctx.len();
    // A failed pull leaves the linear part as it was; the parser then treats headers beyond
    // it as unreachable, which the policy handles.
    let _ = ctx.pull_data(if len < TC_PULL_LEN { len } else { TC_PULL_LEN });
    match judge(Frame::new(ctx.data(), ctx.data_end())).verdict() {
        Verdict::Pass => TC_ACT_OK,
        Verdict::Drop => TC_ACT_SHOT,
    }
}

/// One entry, one exit: parse, decide, record, and return the reason the verdict follows from.
#[inline(always)]
fn judge(frame: Frame) -> Reason {
    let reason = match parse::parse(&frame) {
        parse::Parsed::Malformed => Reason::Malformed,
        parse::Parsed::NotIp => Reason::Other,
        parse::Parsed::Ip(packet) => {
            let decision = decide::decide(&packet);
            if let Some(host) = decision.host {
                stats::record_host(&packet, decision.reason, host);
            }
            decision.reason
        }
    };
    stats::count(reason);
    reason
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
