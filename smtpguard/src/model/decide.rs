//! The decision, rule by rule as the specification orders it.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
};

use ipnet::IpNet;
use smtpguard_common::{Action, Limit, Mode, Reason, UnparseableAction};

use super::dissect::{AboveIp, Dissection};
use crate::policy::DesiredPolicy;

/// A policy in the specification's words: plain lists, matched by `ipnet` containment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelPolicy {
    /// Enforced TCP destination ports.
    pub ports: Vec<u16>,
    pub unparseable: UnparseableAction,
    /// Subscriber ranges; the most specific range containing the source decides the mode.
    pub subscribers: Vec<(IpNet, Mode)>,
    /// The action and bucket of each range whose action is not `drop`.
    pub actions: HashMap<IpNet, (Action, Limit)>,
    /// Relay destinations: always pass.
    pub relays: Vec<IpNet>,
    /// Exempted sources: pass.
    pub exemptions: Vec<IpNet>,
    /// Hosts of monitor-mode ranges escalated to enforcement on their own (reoffending bots).
    pub escalated: HashSet<IpAddr>,
    /// How many leading bits of a source are one host: (IPv4, IPv6).
    pub host_prefixes: (u8, u8),
}

impl ModelPolicy {
    /// The policy the agent would write into the kernel maps for `desired`, with `escalated`
    /// hosts in the override map.
    pub fn from_desired(desired: &DesiredPolicy, escalated: HashSet<IpAddr>) -> Self {
        let enforcement = &desired.enforcement;
        let count = enforcement.port_count as usize;
        Self {
            ports: enforcement.ports[..count.min(enforcement.ports.len())].to_vec(),
            unparseable: if enforcement.unparseable == UnparseableAction::Pass as u32 {
                UnparseableAction::Pass
            } else {
                UnparseableAction::Drop
            },
            subscribers: desired
                .subscribers
                .iter()
                .map(|(prefix, policy)| {
                    let mode = if policy.is_monitor() {
                        Mode::Monitor
                    } else {
                        Mode::Enforce
                    };
                    (*prefix, mode)
                })
                .collect(),
            actions: desired
                .subscribers
                .iter()
                .filter(|(_, policy)| policy.action != Action::Drop as u32)
                .map(|(prefix, policy)| (*prefix, (Action::from_u32(policy.action), policy.limit)))
                .collect(),
            relays: desired.relays.keys().copied().collect(),
            exemptions: desired.exemptions.keys().copied().collect(),
            escalated: HashSet::new(),
            // The lengths the kernel's masks hold, counted bit by bit.
            host_prefixes: (
                enforcement.host_mask.v4.count_ones() as u8,
                enforcement
                    .host_mask
                    .v6
                    .iter()
                    .map(|w| w.count_ones())
                    .sum::<u32>() as u8,
            ),
        }
        .escalating(escalated)
    }

    /// With `hosts` escalated, each as the host it belongs to.
    fn escalating(mut self, hosts: HashSet<IpAddr>) -> Self {
        self.escalated = hosts.into_iter().map(|host| self.host(host)).collect();
        self
    }

    /// The host `src` belongs to: its first address.
    pub fn host(&self, src: IpAddr) -> IpAddr {
        let len = match src {
            IpAddr::V4(_) => self.host_prefixes.0,
            IpAddr::V6(_) => self.host_prefixes.1,
        };
        IpNet::new(src, len).map_or(src, |net| net.network())
    }

    /// The mode of the most specific subscriber range holding `src`, if any.
    pub fn subscriber_mode(&self, src: IpAddr) -> Option<Mode> {
        self.subscriber_range(src).map(|(_, mode)| mode)
    }

    fn subscriber_range(&self, src: IpAddr) -> Option<(IpNet, Mode)> {
        self.subscribers
            .iter()
            .filter(|(prefix, _)| prefix.contains(&src))
            .max_by_key(|(prefix, _)| prefix.prefix_len())
            .copied()
    }

    /// The action and bucket of the most specific subscriber range holding `src`.
    pub fn action(&self, src: IpAddr) -> (Action, Limit) {
        self.subscriber_range(src)
            .and_then(|(prefix, _)| self.actions.get(&prefix).copied())
            .unwrap_or((Action::Drop, Limit::NONE))
    }

    /// Whether `dst` is inside an allowlisted relay.
    pub fn is_relay(&self, dst: IpAddr) -> bool {
        self.relays.iter().any(|prefix| prefix.contains(&dst))
    }

    /// Whether `src` is inside an exempted prefix.
    pub fn is_exempt(&self, src: IpAddr) -> bool {
        self.exemptions.iter().any(|prefix| prefix.contains(&src))
    }
}

/// What the policy is asked about.
enum Question {
    /// TCP to an enforced port; `attempt` for a SYN without ACK.
    EnforcedPort { attempt: bool },
    /// TCP whose header (and so its port) cannot be seen.
    Unparseable,
    /// A fragment that hides or overwrites the TCP header.
    EvasiveFragment,
}

/// The reason for a frame; the verdict follows from it (`Reason::verdict`).
pub fn decide(policy: &ModelPolicy, dissection: &Dissection) -> Reason {
    let (src, dst, above) = match *dissection {
        Dissection::Malformed => return Reason::Malformed,
        Dissection::NotIp => return Reason::Other,
        // The source is hidden: only the unparseable setting decides.
        Dissection::LinkUnparseable => {
            return match policy.unparseable {
                UnparseableAction::Drop => Reason::LinkUnparseableDropped,
                UnparseableAction::Pass => Reason::LinkUnparseablePassed,
            };
        }
        Dissection::Ip { src, dst, above } => (src, dst, above),
    };
    let question = match above {
        AboveIp::NotTcp => return Reason::Other,
        AboveIp::Tcp { dst_port, .. } if !policy.ports.contains(&dst_port) => {
            return Reason::Other;
        }
        AboveIp::Tcp { flags, .. } => Question::EnforcedPort {
            attempt: flags & 0x02 != 0 && flags & 0x10 == 0,
        },
        AboveIp::TcpOutOfReach => Question::Unparseable,
        AboveIp::EvasiveFragment => Question::EvasiveFragment,
    };
    // 1. Not from a subscriber: pass. Only a visible enforced port makes it a judged frame;
    //    an outsider's unreadable or fragmented TCP is simply other traffic.
    let Some(mode) = policy.subscriber_mode(src) else {
        return match question {
            Question::EnforcedPort { .. } => Reason::NotSubscriber,
            Question::Unparseable | Question::EvasiveFragment => Reason::Other,
        };
    };
    // 2. To a relay: pass.
    if policy.is_relay(dst) {
        return Reason::Relayed;
    }
    // 3. From an exempted source: pass.
    if policy.is_exempt(src) {
        return Reason::Exempt;
    }
    // 4. A monitor-mode range (unless this host was escalated): count and pass.
    if mode == Mode::Monitor && !policy.escalated.contains(&policy.host(src)) {
        return Reason::Monitored;
    }
    // 5. Enforce, by the range's action: `reject` answers a connection attempt and drops the
    //    rest, `ratelimit` passes a connection's segments and judges its attempt by the bucket.
    //    The host's bucket has the last word on `Rejected` and an attempt's `WithinRate`
    //    (`Model::judge`).
    match question {
        Question::EnforcedPort { attempt } => match policy.action(src).0 {
            Action::Drop => Reason::Dropped,
            Action::Reset | Action::IcmpProhibited if attempt => Reason::Rejected,
            Action::Reset | Action::IcmpProhibited => Reason::Dropped,
            Action::RateLimit => Reason::WithinRate,
        },
        Question::EvasiveFragment => Reason::FragmentDropped,
        Question::Unparseable => match policy.unparseable {
            UnparseableAction::Drop => Reason::UnparseableDropped,
            UnparseableAction::Pass => Reason::UnparseablePassed,
        },
    }
}
