//! Why the kernel program gave a frame its verdict. Each reason has a per-CPU counter
//! (`COUNTERS[reason]`), and the verdict follows from the reason alone.

/// What happens to a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Drop,
    /// Not forwarded: the frame is rewritten into a reply and sent back out of the interface
    /// it came in on (`XDP_TX`, or a redirect at TC). If the reply cannot be built, dropped.
    Tx,
}

impl Verdict {
    /// Stable name, used in replay output, `check` and metrics labels.
    pub const fn name(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Drop => "drop",
            Verdict::Tx => "tx",
        }
    }
}

/// The reason behind a verdict; the discriminant is the index into `COUNTERS`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// Not TCP to an enforced port (UDP, ICMP, ARP, other ports, replies from port 25,
    /// non-first fragments): passed untouched. This is most traffic.
    Other = 0,
    /// TCP to an enforced port from a source outside every subscriber range.
    NotSubscriber = 1,
    /// TCP to an enforced port of an allowlisted relay.
    Relayed = 2,
    /// TCP to an enforced port from an exempted source.
    Exempt = 3,
    /// TCP to an enforced port from a monitor-mode range: counted, passed.
    Monitored = 4,
    /// TCP to an enforced port from an enforce-mode range: dropped.
    Dropped = 5,
    /// A fragment from a subscriber that hides or overwrites the TCP header (IPv4 offset 1,
    /// RFC 1858 / RFC 3128; an IPv4 or IPv6 first fragment without the whole TCP header,
    /// RFC 7112): dropped.
    FragmentDropped = 6,
    /// A subscriber packet whose TCP header the parser cannot reach, with `unparseable = "drop"`.
    UnparseableDropped = 7,
    /// The same with `unparseable = "pass"`.
    UnparseablePassed = 8,
    /// Broken in a way the gateway's own receive path provably discards (a truncated VLAN,
    /// PPPoE or IP header, a wrong IP version, IPv4 IHL below 5, an IP or PPPoE length longer
    /// than the frame): passed untouched, since the kernel drops it right after the program.
    /// Each such case cites the kernel function that discards it (smtpguard-ebpf/src/parse.rs).
    Malformed = 9,
    /// The link layer hides the IP packet from the parser while the gateway's kernel may still
    /// route it (more VLAN tags than the parser walks; a PPP compressed or multilink frame),
    /// with `unparseable = "drop"`: dropped whatever its source, which cannot be seen.
    LinkUnparseableDropped = 10,
    /// The same with `unparseable = "pass"`.
    LinkUnparseablePassed = 11,
    /// A SYN to an enforced port from a `reject` host, within its reply budget: answered
    /// with a TCP reset or ICMP administratively prohibited, not forwarded. (Its other
    /// segments, and SYNs beyond the budget, are `Dropped`.)
    Rejected = 12,
    /// A SYN to an enforced port from a `ratelimit` host above its limit: dropped.
    RateLimited = 13,
    /// TCP to an enforced port from a `ratelimit` host: a SYN within its limit, or a segment
    /// of a connection (no SYN): passed.
    WithinRate = 14,
}

pub const REASON_COUNT: u32 = 15;

impl Reason {
    pub const ALL: [Reason; REASON_COUNT as usize] = [
        Reason::Other,
        Reason::NotSubscriber,
        Reason::Relayed,
        Reason::Exempt,
        Reason::Monitored,
        Reason::Dropped,
        Reason::FragmentDropped,
        Reason::UnparseableDropped,
        Reason::UnparseablePassed,
        Reason::Malformed,
        Reason::LinkUnparseableDropped,
        Reason::LinkUnparseablePassed,
        Reason::Rejected,
        Reason::RateLimited,
        Reason::WithinRate,
    ];

    pub const fn verdict(self) -> Verdict {
        match self {
            Reason::Dropped
            | Reason::FragmentDropped
            | Reason::UnparseableDropped
            | Reason::LinkUnparseableDropped
            | Reason::RateLimited => Verdict::Drop,
            Reason::Rejected => Verdict::Tx,
            _ => Verdict::Pass,
        }
    }

    /// Whether the frame counts toward its source host's statistics: every subscriber packet
    /// that reached the policy, except traffic to a relay, which is not a direct-to-MX attempt.
    pub const fn tracks_host(self) -> bool {
        matches!(
            self,
            Reason::Exempt
                | Reason::Monitored
                | Reason::Dropped
                | Reason::FragmentDropped
                | Reason::UnparseableDropped
                | Reason::UnparseablePassed
                | Reason::Rejected
                | Reason::RateLimited
                | Reason::WithinRate
        )
    }

    /// Whether the frame was TCP to an enforced port, i.e. judged by the policy.
    pub const fn judged(self) -> bool {
        matches!(
            self,
            Reason::NotSubscriber
                | Reason::Relayed
                | Reason::Exempt
                | Reason::Monitored
                | Reason::Dropped
                | Reason::Rejected
                | Reason::RateLimited
                | Reason::WithinRate
        )
    }

    /// Stable name, used in replay output, metrics labels and reports.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::Other => "other",
            Reason::NotSubscriber => "not-subscriber",
            Reason::Relayed => "relayed",
            Reason::Exempt => "exempt",
            Reason::Monitored => "monitored",
            Reason::Dropped => "dropped",
            Reason::FragmentDropped => "fragment-dropped",
            Reason::UnparseableDropped => "unparseable-dropped",
            Reason::UnparseablePassed => "unparseable-passed",
            Reason::Malformed => "malformed",
            Reason::LinkUnparseableDropped => "link-unparseable-dropped",
            Reason::LinkUnparseablePassed => "link-unparseable-passed",
            Reason::Rejected => "rejected",
            Reason::RateLimited => "rate-limited",
            Reason::WithinRate => "within-rate",
        }
    }

    pub const fn from_index(index: u32) -> Option<Reason> {
        if index < REASON_COUNT {
            Some(Reason::ALL[index as usize])
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discriminants_are_counter_indices() {
        for (index, reason) in Reason::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, index);
            assert_eq!(Reason::from_index(index as u32), Some(*reason));
        }
        assert_eq!(Reason::from_index(REASON_COUNT), None);
    }

    #[test]
    fn names_are_unique() {
        for a in Reason::ALL {
            for b in Reason::ALL {
                assert!(
                    a == b || a.name() != b.name(),
                    "{a:?} and {b:?} share a name"
                );
            }
        }
    }

    #[test]
    fn only_drop_reasons_drop() {
        let dropping: Vec<_> = Reason::ALL
            .into_iter()
            .filter(|r| r.verdict() == Verdict::Drop)
            .collect();
        assert_eq!(
            dropping,
            [
                Reason::Dropped,
                Reason::FragmentDropped,
                Reason::UnparseableDropped,
                Reason::LinkUnparseableDropped,
                Reason::RateLimited,
            ]
        );
        let replying: Vec<_> = Reason::ALL
            .into_iter()
            .filter(|r| r.verdict() == Verdict::Tx)
            .collect();
        assert_eq!(replying, [Reason::Rejected]);
    }
}
