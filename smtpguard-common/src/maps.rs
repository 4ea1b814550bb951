//! Names and default capacities of the kernel program's maps, shared so that the loader
//! addresses exactly the maps the program declares.

/// Subscriber ranges and exemptions, compiled into one trie per family.
pub const SOURCES_V4: &str = "SOURCES_V4";
pub const SOURCES_V6: &str = "SOURCES_V6";
/// The outermost subscriber ranges alone (none inside another, no exemptions): whether a
/// source is a subscriber at all, from a trie as shallow as the ISP's aggregates.
pub const SUBSCRIBER_SPACE_V4: &str = "SUBSCRIBER_SPACE_V4";
pub const SUBSCRIBER_SPACE_V6: &str = "SUBSCRIBER_SPACE_V6";
pub const RELAYS_V4: &str = "RELAYS_V4";
pub const RELAYS_V6: &str = "RELAYS_V6";
/// One [`crate::RelayFilter`]: which destinations may be relays, settled before the tries.
pub const RELAY_FILTER: &str = "RELAY_FILTER";
pub const ENFORCEMENT: &str = "ENFORCEMENT";
pub const COUNTERS: &str = "COUNTERS";
/// [`crate::InterfaceSlot`]s: which counter slot each attached interface's judged frames go
/// to; the agent writes an entry when it attaches to an interface.
pub const INTERFACE_SLOTS: &str = "INTERFACE_SLOTS";
/// Per-CPU counters of judged frames by interface slot and reason
/// ([`crate::interface::interface_counter`]).
pub const INTERFACE_COUNTERS: &str = "INTERFACE_COUNTERS";
/// The host table's slots ([`crate::HostSlot`]), one array entry per slot.
pub const HOST_TABLE: &str = "HOST_TABLE";
/// The host table's overflow: hosts whose slot another holds (LRU).
pub const HOST_STATS: &str = "HOST_STATS";
/// One per-CPU `u64`: judged segments of a host that neither a table slot nor an overflow
/// entry could record (the overflow map refused the insert). The segment was judged all the
/// same: enforcement never waits on statistics.
pub const UNRECORDED_HOSTS: &str = "UNRECORDED_HOSTS";
/// Hosts in monitor-mode ranges escalated to enforcement for themselves alone (reoffending
/// bots); the agent adds and removes entries.
pub const HOST_OVERRIDES: &str = "HOST_OVERRIDES";
/// Default number of escalated hosts.
pub const DEFAULT_OVERRIDE_CAPACITY: u32 = 65_536;
/// One `u32`: the current sketch epoch, advanced by the agent at each statistics snapshot.
pub const SKETCH_EPOCH: &str = "SKETCH_EPOCH";
/// One `u32`: the policy generation, moved on by the control plane after every change to the
/// sources or the escalations; a host's cached class holds only within its generation.
pub const POLICY_GENERATION: &str = "POLICY_GENERATION";

/// Program arrays of the reply programs (`BPF_MAP_TYPE_PROG_ARRAY`), which the entry points
/// tail-call to answer a rejected SYN: one slot for XDP, and for TC one per entry point.
pub const XDP_REPLY: &str = "XDP_REPLY";
pub const TC_REPLY: &str = "TC_REPLY";
pub const TC_REPLY_ETHERNET: u32 = 0;
pub const TC_REPLY_L3: u32 = 1;
/// The per-CPU action of the SYN being answered, from an entry point to its reply program.
pub const REPLY_ACTION: &str = "REPLY_ACTION";

/// Default number of subscriber ranges per address family.
pub const DEFAULT_SUBSCRIBER_CAPACITY: u32 = 65_536;
/// Default number of prefixes in each relay LPM trie.
pub const DEFAULT_RELAY_CAPACITY: u32 = 4_096;
/// Default number of exemptions per address family.
pub const DEFAULT_EXEMPTION_CAPACITY: u32 = 131_072;
/// A source trie holds at most one entry per subscriber range and per exemption.
pub const fn source_capacity(subscribers: u32, exemptions: u32) -> u32 {
    subscribers.saturating_add(exemptions)
}
/// Default number of subscriber hosts whose attempts are tracked: the host table's slots
/// (rounded up to a power of two).
pub const DEFAULT_HOST_CAPACITY: u32 = 1_048_576;
/// The overflow map's size for a host capacity: a quarter of it, at least 1,024. A table a
/// tenth full has about 5 % of its hosts sharing a slot; a full one about 37 %.
pub const fn host_overflow_capacity(hosts: u32) -> u32 {
    let quarter = hosts / 4;
    if quarter < 1024 { 1024 } else { quarter }
}

/// Most enforced TCP destination ports (the kernel scans them linearly).
pub const MAX_PORTS: usize = 8;
/// Most VLAN tags (802.1Q / 802.1ad / 0x9100) walked in front of the IP or PPPoE header,
/// counting one the NIC or the stack already moved into the skb's metadata. Access networks
/// use two (QinQ); Linux strips any number of priority tags, so a frame with more is not
/// malformed: it follows `unparseable` (`Reason::LinkUnparseable*`).
pub const MAX_VLAN_TAGS: usize = 4;
/// Most IPv6 extension headers walked before the upper-layer header is declared unreachable.
pub const MAX_IPV6_EXT_HEADERS: usize = 10;
