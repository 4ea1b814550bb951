//! Policy values the kernel looks up: what a subscriber range does, which ports are enforced.

use crate::{host::HostMask, host_table::HostTableParams, maps::MAX_PORTS};

/// What happens to enforced-port traffic from a subscriber range.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Drop and count.
    Enforce = 1,
    /// Count and pass.
    Monitor = 2,
}

/// What an enforced host's segments to an enforced port get: a range's `action` (and the
/// action of a monitor-mode range's escalated hosts).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Drop silently: the sender waits for its timeout.
    Drop = 0,
    /// Answer a SYN with a TCP reset (RST+ACK), within the host's reply budget.
    Reset = 1,
    /// Answer a SYN with ICMP destination unreachable, administratively prohibited (code 13;
    /// ICMPv6 type 1 code 1), within the host's reply budget.
    IcmpProhibited = 2,
    /// Pass a host's SYNs up to its limit, drop those above it.
    RateLimit = 3,
}

impl Action {
    /// The action a stored discriminant names; anything unknown is `Drop` (fail closed: an
    /// unknown value never passes or answers anything).
    #[inline(always)]
    pub const fn from_u32(value: u32) -> Self {
        match value {
            1 => Action::Reset,
            2 => Action::IcmpProhibited,
            3 => Action::RateLimit,
            _ => Action::Drop,
        }
    }

    /// Whether the action answers SYNs instead of dropping them.
    #[inline(always)]
    pub const fn replies(self) -> bool {
        matches!(self, Action::Reset | Action::IcmpProhibited)
    }
}

/// A per-host token bucket's size: at most `rate` events per `per_secs` seconds, `rate` of
/// them at once. For `reject` the events are replies, for `ratelimit` passed SYNs.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Limit {
    pub rate: u32,
    pub per_secs: u32,
}

impl Limit {
    pub const NONE: Self = Self {
        rate: 0,
        per_secs: 0,
    };

    /// The limit as one word, as a host's statistics cache it next to its class.
    #[inline(always)]
    pub const fn to_word(self) -> u64 {
        ((self.per_secs as u64) << 32) | self.rate as u64
    }

    #[inline(always)]
    pub const fn from_word(word: u64) -> Self {
        Self {
            rate: word as u32,
            per_secs: (word >> 32) as u32,
        }
    }

    /// The generic cell rate algorithm, the token bucket in one timestamp: `tat` is the
    /// theoretical arrival time of the next event (0 for a full bucket). Returns the new
    /// `tat` when an event at `now_ns` fits, `None` when the bucket is empty. A zero rate
    /// admits nothing.
    #[inline(always)]
    pub const fn admit(self, tat: u64, now_ns: u64) -> Option<u64> {
        if self.rate == 0 {
            return None;
        }
        let interval = self.per_secs as u64 * 1_000_000_000 / self.rate as u64;
        // A rate above one event a nanosecond is one a nanosecond.
        let interval = if interval == 0 { 1 } else { interval };
        let start = if tat > now_ns { tat } else { now_ns };
        // `rate` events may arrive at once: the burst tolerance is `rate - 1` intervals.
        if start - now_ns > (self.rate as u64 - 1) * interval {
            return None;
        }
        Some(start + interval)
    }
}

/// The longest answer the kernel builds from the IP header on: an ICMPv6 error (IPv6 header,
/// ICMPv6 header, the SYN's first 48 bytes).
pub const REPLY_MAX_LEN: usize = 96;

/// The single per-CPU entry of `REPLY_ACTION`: the entry point leaves the action of the
/// host whose SYN it rejects and where the SYN's headers are, which its parser found, so the
/// reply program it tail-calls does not parse the frame again; the reply program builds the
/// answer in `bytes` (too large for the BPF stack).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplyScratch {
    /// An [`Action`] discriminant. The reply program sets it back to `Drop` once it has read
    /// the entry, so an entry is answered at most once.
    pub action: u32,
    /// Where the IP header starts, from the frame's first byte.
    pub ip_offset: u16,
    /// Where the PPPoE session header starts, or 0 without one (it never starts a frame).
    pub pppoe_offset: u16,
    /// Where the TCP header starts.
    pub tcp_offset: u16,
    /// [`ReplyScratch::IPV6`] and [`ReplyScratch::VJ`].
    pub flags: u16,
    pub reserved: u32,
    pub bytes: [u8; REPLY_MAX_LEN],
}

impl ReplyScratch {
    /// The SYN is IPv6 (else IPv4).
    pub const IPV6: u16 = 1;
    /// The SYN came as Van Jacobson uncompressed TCP over PPP.
    pub const VJ: u16 = 2;
}

/// What a subscriber range does: part of [`SourcePolicy`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubscriberPolicy {
    /// A [`Mode`] discriminant, or [`SubscriberPolicy::NONE`]'s 0 where no range holds the
    /// source. The kernel treats anything else but `Monitor` as `Enforce`, so a corrupt value
    /// fails closed.
    pub mode: u32,
    /// Opaque identifier of the rule that installed the prefix (user space uses it to
    /// explain a decision).
    pub rule: u32,
    /// An [`Action`] discriminant: what enforcement does with the range's segments.
    pub action: u32,
    /// The action's bucket: replies for `reject`, SYNs for `ratelimit`; unused for `drop`.
    pub limit: Limit,
}

impl SubscriberPolicy {
    pub const fn new(mode: Mode, rule: u32) -> Self {
        Self::with_action(mode, rule, Action::Drop, Limit::NONE)
    }

    pub const fn with_action(mode: Mode, rule: u32, action: Action, limit: Limit) -> Self {
        Self {
            mode: mode as u32,
            rule,
            action: action as u32,
            limit,
        }
    }

    /// No subscriber range holds the source.
    pub const NONE: Self = Self {
        mode: 0,
        rule: 0,
        action: Action::Drop as u32,
        limit: Limit::NONE,
    };

    pub const fn is_monitor(&self) -> bool {
        self.mode == Mode::Monitor as u32
    }

    pub const fn is_subscriber(&self) -> bool {
        self.mode != Self::NONE.mode
    }
}

/// Value of the source LPM tries. The control plane compiles the subscriber ranges and the
/// exemptions into one trie, an entry for every range and every exemption, so the kernel
/// learns both facts about a source from one lookup (a trie lookup is a helper call, the
/// dearest part of the drop path). For the longest prefix holding an address, `subscriber`
/// is the most specific range holding that prefix and `exemption` says whether an exemption
/// covers it: exactly what separate lookups in the two lists would give.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourcePolicy {
    /// [`SubscriberPolicy::NONE`] for an exemption outside every subscriber range.
    pub subscriber: SubscriberPolicy,
    /// The [`Origin`] discriminant of the most specific exemption covering the prefix, or
    /// [`SourcePolicy::NOT_EXEMPT`].
    pub exemption: u32,
}

impl SourcePolicy {
    pub const NOT_EXEMPT: u32 = 0;

    pub const fn is_exempt(&self) -> bool {
        self.exemption != Self::NOT_EXEMPT
    }
}

/// Where a relay or exemption prefix came from. Stable across reloads, so reconciling a
/// changed list rewrites only the entries that really changed.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Origin {
    /// The configuration file.
    Config = 1,
    /// Added at run time through the CLI (kept in the exemption store).
    Runtime = 2,
    /// An address a relay's hostname resolved to.
    Dns = 3,
    /// An address bound (RADIUS accounting, `smtpguard session`) to an exempt subscriber
    /// identity, for as long as the binding holds.
    Subscriber = 4,
}

/// Value of the relay LPM tries, and where an exemption came from: membership, plus the
/// prefix's origin (user space shows it when it explains a decision).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefixOrigin {
    /// An [`Origin`] discriminant.
    pub origin: u32,
}

impl PrefixOrigin {
    pub const fn new(origin: Origin) -> Self {
        Self {
            origin: origin as u32,
        }
    }
}

/// Value of `HOST_OVERRIDES`: a host of a monitor-mode range enforced on its own.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostOverride {
    /// A [`Mode`] discriminant; `Enforce` is the only one the agent writes.
    pub mode: u32,
}

/// What to do with a subscriber packet whose TCP header the parser cannot reach.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnparseableAction {
    Pass = 0,
    Drop = 1,
}

/// The single entry of the `ENFORCEMENT` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EnforcementConfig {
    /// Enforced TCP destination ports; only the first `port_count` are meaningful.
    pub ports: [u16; MAX_PORTS],
    pub port_count: u32,
    /// An [`UnparseableAction`] discriminant; anything but `Pass` drops (fail closed).
    pub unparseable: u32,
    /// Bit `port % 64` set for every enforced port: a port whose bit is clear is not
    /// enforced, which settles almost every segment of the fast path with one test instead
    /// of a scan of the list.
    pub port_filter: u64,
    /// What one host of the statistics and the escalations is.
    pub host_mask: HostMask,
    /// Where hosts' slots are: written by the loader from the table it made or reused, kept
    /// by every policy write.
    pub host_table: HostTableParams,
}

impl EnforcementConfig {
    /// Builds the entry; `ports` beyond [`MAX_PORTS`] are ignored (the config rejects them first).
    pub fn new(ports: &[u16], unparseable: UnparseableAction, host_mask: HostMask) -> Self {
        let mut entry = Self {
            ports: [0; MAX_PORTS],
            port_count: 0,
            unparseable: unparseable as u32,
            port_filter: 0,
            host_mask,
            host_table: HostTableParams::default(),
        };
        for (slot, port) in entry.ports.iter_mut().zip(ports) {
            *slot = *port;
            entry.port_count += 1;
            entry.port_filter |= filter_bit(*port);
        }
        entry
    }

    #[inline(always)]
    pub fn enforces(&self, port: u16) -> bool {
        if self.port_filter & filter_bit(port) == 0 {
            return false;
        }
        let mut i = 0;
        while i < MAX_PORTS {
            if i as u32 >= self.port_count {
                return false;
            }
            if self.ports[i] == port {
                return true;
            }
            i += 1;
        }
        false
    }

    pub const fn drops_unparseable(&self) -> bool {
        self.unparseable != UnparseableAction::Pass as u32
    }
}

#[inline(always)]
const fn filter_bit(port: u16) -> u64 {
    1 << (port % 64)
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` integers without implicit padding (layout tests below).
    unsafe impl aya::Pod for super::SubscriberPolicy {}
    unsafe impl aya::Pod for super::Limit {}
    unsafe impl aya::Pod for super::ReplyScratch {}
    unsafe impl aya::Pod for super::SourcePolicy {}
    unsafe impl aya::Pod for super::PrefixOrigin {}
    unsafe impl aya::Pod for super::HostOverride {}
    unsafe impl aya::Pod for super::EnforcementConfig {}
}

#[cfg(test)]
mod tests {
    use core::mem::{align_of, offset_of, size_of};

    use super::*;

    const HOSTS: HostMask = HostMask::new(32, 64);

    #[test]
    fn layouts() {
        assert_eq!(size_of::<ReplyScratch>(), 112);
        assert_eq!(offset_of!(ReplyScratch, action), 0);
        assert_eq!(offset_of!(ReplyScratch, ip_offset), 4);
        assert_eq!(offset_of!(ReplyScratch, pppoe_offset), 6);
        assert_eq!(offset_of!(ReplyScratch, tcp_offset), 8);
        assert_eq!(offset_of!(ReplyScratch, flags), 10);
        assert_eq!(offset_of!(ReplyScratch, reserved), 12);
        assert_eq!(offset_of!(ReplyScratch, bytes), 16);
        assert_eq!(size_of::<Limit>(), 8);
        assert_eq!(offset_of!(Limit, rate), 0);
        assert_eq!(offset_of!(Limit, per_secs), 4);
        assert_eq!(size_of::<SubscriberPolicy>(), 20);
        assert_eq!(align_of::<SubscriberPolicy>(), 4);
        assert_eq!(offset_of!(SubscriberPolicy, mode), 0);
        assert_eq!(offset_of!(SubscriberPolicy, rule), 4);
        assert_eq!(offset_of!(SubscriberPolicy, action), 8);
        assert_eq!(offset_of!(SubscriberPolicy, limit), 12);
        assert_eq!(size_of::<SourcePolicy>(), 24);
        assert_eq!(offset_of!(SourcePolicy, subscriber), 0);
        assert_eq!(offset_of!(SourcePolicy, exemption), 20);
        assert_eq!(align_of::<SourcePolicy>(), 4);
        assert_eq!(size_of::<PrefixOrigin>(), 4);
        assert_eq!(offset_of!(PrefixOrigin, origin), 0);
        assert_eq!(size_of::<HostOverride>(), 4);
        assert_eq!(offset_of!(HostOverride, mode), 0);
        assert_eq!(size_of::<EnforcementConfig>(), 72);
        assert_eq!(offset_of!(EnforcementConfig, ports), 0);
        assert_eq!(offset_of!(EnforcementConfig, port_count), 16);
        assert_eq!(offset_of!(EnforcementConfig, unparseable), 20);
        assert_eq!(offset_of!(EnforcementConfig, port_filter), 24);
        assert_eq!(offset_of!(EnforcementConfig, host_mask), 32);
        assert_eq!(offset_of!(EnforcementConfig, host_table), 56);
        assert_eq!(align_of::<EnforcementConfig>(), 8);
    }

    #[test]
    fn enforces_only_listed_ports() {
        let config = EnforcementConfig::new(&[25, 2525], UnparseableAction::Drop, HOSTS);
        assert!(config.enforces(25));
        assert!(config.enforces(2525));
        assert!(!config.enforces(587));
        // Unused slots hold 0, which must not count as enforced.
        assert!(!config.enforces(0));
        assert!(config.drops_unparseable());
    }

    #[test]
    fn ports_sharing_a_filter_bit_are_told_apart() {
        // 25 and 89 (25 + 64) share a bit: the list decides.
        let config = EnforcementConfig::new(&[25], UnparseableAction::Drop, HOSTS);
        assert_eq!(config.port_filter, 1 << 25);
        assert!(config.enforces(25));
        assert!(!config.enforces(89));
        assert!(!config.enforces(443));
    }

    #[test]
    fn all_eight_slots_are_scanned() {
        let ports = [1, 2, 3, 4, 5, 6, 7, 25];
        let config = EnforcementConfig::new(&ports, UnparseableAction::Pass, HOSTS);
        assert_eq!(config.port_count, 8);
        assert!(config.enforces(25));
        assert!(!config.drops_unparseable());
    }

    #[test]
    fn a_bucket_admits_its_rate_at_once_then_one_an_interval() {
        let limit = Limit {
            rate: 3,
            per_secs: 3,
        };
        let now = 1_000_000_000_000;
        let mut tat = 0;
        for _ in 0..3 {
            tat = limit.admit(tat, now).expect("within the burst");
        }
        assert_eq!(limit.admit(tat, now), None);
        // A second later one token is back, and only one.
        let later = now + 1_000_000_000;
        tat = limit.admit(tat, later).expect("one token refilled");
        assert_eq!(limit.admit(tat, later), None);
        // A whole period later the bucket is full again.
        let full = later + 3_000_000_000;
        for _ in 0..3 {
            tat = limit.admit(tat, full).expect("refilled");
        }
        assert_eq!(limit.admit(tat, full), None);
        assert_eq!(Limit::NONE.admit(0, now), None);
        assert_eq!(Limit::from_word(limit.to_word()), limit);
    }

    #[test]
    fn unknown_values_fail_closed() {
        assert_eq!(Action::from_u32(9), Action::Drop);
        assert_eq!(
            Action::from_u32(Action::RateLimit as u32),
            Action::RateLimit
        );
        let policy = SubscriberPolicy {
            mode: 7,
            ..SubscriberPolicy::NONE
        };
        assert!(policy.is_subscriber());
        assert!(!policy.is_monitor());
        assert!(!SubscriberPolicy::NONE.is_subscriber());
        let source = SourcePolicy {
            subscriber: SubscriberPolicy::new(Mode::Enforce, 1),
            exemption: 9,
        };
        assert!(source.is_exempt());
        let config = EnforcementConfig {
            ports: [25, 0, 0, 0, 0, 0, 0, 0],
            port_count: 1,
            unparseable: 7,
            port_filter: filter_bit(25),
            host_mask: HostMask::new(32, 64),
            host_table: HostTableParams::default(),
        };
        assert!(config.drops_unparseable());
    }
}
