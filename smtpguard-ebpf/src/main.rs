//! The smtpguard kernel program: maps and the two entry points. Both entry points hand the
//! frame to the same `judge`, so XDP and TC can never disagree on a verdict.
#![no_std]
#![no_main]
// Atomic adds on shared map values: the BPF target has no stable atomic RMW operations.
#![feature(core_intrinsics)]
#![expect(
    internal_features,
    reason = "atomic_xadd and atomic_cxchg are unstable"
)]

mod decide;
mod hosts;
mod parse;
mod reply;
mod stage;
mod stats;

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, TC_ACT_OK, TC_ACT_SHOT, xdp_action},
    helpers::bpf_redirect,
    macros::{classifier, map, xdp},
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray},
    programs::{TcContext, XdpContext},
};
use smtpguard_common::{
    EnforcementConfig, HostKey, HostOverride, HostSlot, HostStats, InterfaceSlot, PrefixOrigin,
    REASON_COUNT, Reason, RelayFilter, ReplyScratch, SourcePolicy, SubscriberPolicy, Verdict,
    interface::{INTERFACE_COUNTER_ENTRIES, INTERFACE_TABLE_SIZE},
    maps::{
        DEFAULT_EXEMPTION_CAPACITY, DEFAULT_HOST_CAPACITY, DEFAULT_OVERRIDE_CAPACITY,
        DEFAULT_RELAY_CAPACITY, DEFAULT_SUBSCRIBER_CAPACITY, TC_REPLY_ETHERNET, TC_REPLY_L3,
        host_overflow_capacity, source_capacity,
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
static INTERFACE_SLOTS: Array<InterfaceSlot> = Array::with_max_entries(INTERFACE_TABLE_SIZE, 0);
#[map]
static INTERFACE_COUNTERS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(INTERFACE_COUNTER_ENTRIES, 0);
/// Mappable for its alignment: the kernel then starts the values on a page, so each slot's
/// cache lines are its own (see `HostSlot`).
#[map]
static HOST_TABLE: Array<HostSlot> = Array::with_max_entries(DEFAULT_HOST_CAPACITY, BPF_F_MMAPABLE);
#[map]
static HOST_STATS: LruHashMap<HostKey, HostStats> =
    LruHashMap::with_max_entries(host_overflow_capacity(DEFAULT_HOST_CAPACITY), 0);
#[map]
static UNRECORDED_HOSTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);
#[map]
static SKETCH_EPOCH: Array<u32> = Array::with_max_entries(1, 0);
#[map]
static POLICY_GENERATION: Array<u32> = Array::with_max_entries(1, 0);
#[map]
static HOST_OVERRIDES: HashMap<HostKey, HostOverride> =
    HashMap::with_max_entries(DEFAULT_OVERRIDE_CAPACITY, 0);

/// The reply programs (`reply.rs`), one slot each, filled by the loader: an empty slot makes
/// the tail call fail, and the entry point then drops.
#[map]
static XDP_REPLY: ProgramArray = ProgramArray::with_max_entries(1, 0);
#[map]
static TC_REPLY: ProgramArray = ProgramArray::with_max_entries(2, 0);
/// The action of the host whose SYN this CPU is answering, from the entry point to the reply
/// program it tail-calls.
#[map]
static REPLY_ACTION: PerCpuArray<ReplyScratch> = PerCpuArray::with_max_entries(1, 0);

/// How much of a non-linear skb the TC entry points pull into the directly readable area:
/// enough for the VLAN tags walked, PPPoE, IPv6 with a long extension-header chain and TCP.
const TC_PULL_LEN: u32 = 512;

#[xdp]
pub fn smtpguard_xdp(ctx: XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    // A VLAN tag a NIC stripped on receive (rx-vlan-offload) is not in the frame and is not
    // counted: it takes nothing from what the parser reads, which starts where the kernel's
    // own receive path continues after that tag.
    let link = parse::Link::Ethernet { offloaded_tags: 0 };
    // SAFETY: the context's `xdp_md`, valid for this program run.
    let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    match judge(Frame::new(start, end, end - start), link, ifindex).verdict() {
        Verdict::Pass => xdp_action::XDP_PASS,
        Verdict::Drop => xdp_action::XDP_DROP,
        Verdict::Tx => {
            // SAFETY: on success the reply program takes over and this one never returns.
            unsafe { XDP_REPLY.tail_call(&ctx, 0) };
            // Fail closed: no reply program, no reply.
            xdp_action::XDP_DROP
        }
    }
}

/// Rewrites a rejected SYN into its answer and sends it back out of the interface.
#[xdp]
pub fn smtpguard_xdp_reply(ctx: XdpContext) -> u32 {
    match reply::xdp(ctx.ctx, ctx.data(), ctx.data_end()) {
        Some(()) => xdp_action::XDP_TX,
        None => xdp_action::XDP_DROP,
    }
}

/// TC on an Ethernet device. At ingress the kernel has already moved the outer 802.1Q or
/// 802.1ad tag into the skb's metadata (`skb_vlan_untag`), so it counts toward the tag limit
/// as XDP would have counted it in the frame.
#[classifier]
pub fn smtpguard_tc(ctx: TcContext) -> i32 {
    // SAFETY: the context's `__sk_buff`, valid for this program run.
    let offloaded_tags = unsafe { (*ctx.skb.skb).vlan_present } as usize;
    tc_judge(
        &ctx,
        parse::Link::Ethernet { offloaded_tags },
        TC_REPLY_ETHERNET,
    )
}

/// TC on a device without a link-layer header (TUN, WireGuard, IPIP, GRE, SIT): the frame
/// starts with the IP header, the skb says which IP.
#[classifier]
pub fn smtpguard_tc_l3(ctx: TcContext) -> i32 {
    let ethertype = u16::from_be(ctx.skb.protocol() as u16);
    tc_judge(&ctx, parse::Link::Ip { ethertype }, TC_REPLY_L3)
}

#[classifier]
pub fn smtpguard_tc_reply(ctx: TcContext) -> i32 {
    tc_reply(&ctx, true)
}

#[classifier]
pub fn smtpguard_tc_l3_reply(ctx: TcContext) -> i32 {
    tc_reply(&ctx, false)
}

/// Sends the answer back out of the interface the SYN came in on (the egress of the
/// ingress interface; an outer VLAN tag held in the skb's metadata goes out with it).
#[inline(always)]
fn tc_reply(ctx: &TcContext, ethernet: bool) -> i32 {
    // SAFETY: the context's `__sk_buff`, valid for this program run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    match reply::tc(ctx.skb.skb, ethernet) {
        // SAFETY: a helper on plain values; it returns TC_ACT_REDIRECT.
        Some(()) => unsafe { bpf_redirect(ifindex, 0) as i32 },
        None => TC_ACT_SHOT,
    }
}

/// `reply_slot` is the slot of `TC_REPLY` that answers this entry point's frames.
#[inline(always)]
fn tc_judge(ctx: &TcContext, link: parse::Link, reply_slot: u32) -> i32 {
    let len = ctx.len();
    // A failed pull leaves the linear part as it was; the parser then treats headers beyond
    // it as unreachable, which the policy handles.
    let _ = ctx.pull_data(if len < TC_PULL_LEN { len } else { TC_PULL_LEN });
    // SAFETY: the context's `__sk_buff`, valid for this program run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let frame = Frame::new(ctx.data(), ctx.data_end(), len as usize);
    match judge(frame, link, ifindex).verdict() {
        Verdict::Pass => TC_ACT_OK,
        Verdict::Drop => TC_ACT_SHOT,
        Verdict::Tx => {
            // SAFETY: on success the reply program takes over and this one never returns.
            unsafe { TC_REPLY.tail_call(ctx, reply_slot) };
            // Fail closed: no reply program, no reply.
            TC_ACT_SHOT
        }
    }
}

/// One entry, one exit: parse, decide, record, and return the reason the verdict follows from.
/// `ifindex` is the interface the frame arrived on.
#[inline(always)]
fn judge(frame: Frame, link: parse::Link, ifindex: u32) -> Reason {
    let reason = match parse::parse(frame, link) {
        parse::Parsed::Malformed => Reason::Malformed,
        parse::Parsed::NotIp => Reason::Other,
        parse::Parsed::LinkUnparseable => decide::link_unparseable(),
        parse::Parsed::Ip(packet) => {
            let decision = decide::decide(&packet);
            match decision.host {
                // The bench's stage profile (`stage`): a host found, nothing recorded.
                Some(host) if stage::ENDS_AT_LOOKUP && host.held.in_table() => decision.reason,
                Some(host) => {
                    let action = host.class.action();
                    let reason = stats::record_host(&packet, decision.reason, host);
                    if reason == Reason::Rejected {
                        reply::prepare(&packet, action);
                    }
                    reason
                }
                None => decision.reason,
            }
        }
    };
    stats::count(reason);
    // Most traffic is `Other`: only frames that reached the policy are counted by interface.
    if reason != Reason::Other {
        stats::count_interface(ifindex, reason);
    }
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
