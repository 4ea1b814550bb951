//! The differential harness: the real kernel program (both entry points, `BPF_PROG_TEST_RUN`)
//! and the reference model (`smtpguard::model`) judge the same frames under the same policy;
//! every action, every counter and every host's statistics must agree.

use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
};

use nix::{
    sched::{CpuSet, sched_getcpu, sched_setaffinity},
    unistd::Pid,
};
use smtpguard::{
    config::Capacity,
    dataplane::{Dataplane, DataplaneError, HostCount},
    model::{self, AboveIp, Dissection, HostRecord, Model, ModelPolicy, decide, dissect},
    policy::DesiredPolicy,
};
use smtpguard_common::{HostStats, REASON_COUNT, Reason};

use crate::{
    frames::{TCP_ACK, TCP_SYN},
    regression::hex,
    replies::{AnsweredSyn, ReplyBudget},
};

/// Hosts the host table holds: far more than a run creates, so that hosts rarely share a
/// slot and LRU eviction in the overflow map (which the model does not follow) never
/// happens.
pub const HOST_CAPACITY: u32 = 65_536;

/// One kernel program instance and the model, fed the same frames.
pub struct Harness {
    dataplane: Dataplane,
    pub model: Model,
    /// How often each reason occurred (in frames, whichever entry point).
    pub coverage: [u64; REASON_COUNT as usize],
    /// Replies each host got so far (XDP and TC), for the checks that hold whatever the
    /// model says.
    replies: ReplyBudget,
}

/// A frame as hex and as the model reads it.
pub fn describe(frame: &[u8]) -> String {
    format!(
        "frame ({} bytes) {}\n    model reads it as {:?}",
        frame.len(),
        hex(frame),
        dissect(frame)
    )
}

fn entry_error(entry: &str, error: DataplaneError) -> String {
    format!("{entry} test run failed: {error}")
}

impl Harness {
    pub fn new() -> Self {
        Self::with_host_capacity(HOST_CAPACITY)
    }

    /// A harness whose host table has `hosts` slots (rounded up to a power of two): a tiny
    /// one sends most hosts to the overflow map, through the claim's every outcome.
    ///
    /// The calling thread stays on one CPU from here on (see [`stay_on_one_cpu`]): the model
    /// keeps every host, and the overflow map evicts none only while a single CPU fills it.
    pub fn with_host_capacity(hosts: u32) -> Self {
        stay_on_one_cpu();
        let capacity = Capacity {
            hosts,
            ..Capacity::default()
        };
        let dataplane =
            Dataplane::load(&capacity).unwrap_or_else(|e| panic!("loading the program: {e:?}"));
        let empty = ModelPolicy {
            ports: Vec::new(),
            unparseable: smtpguard_common::UnparseableAction::Drop,
            subscribers: Vec::new(),
            actions: Default::default(),
            relays: Vec::new(),
            exemptions: Vec::new(),
            escalated: Default::default(),
            host_prefixes: (32, 128),
        };
        Self {
            dataplane,
            model: Model::new(empty),
            coverage: [0; REASON_COUNT as usize],
            replies: ReplyBudget::default(),
        }
    }

    /// Replaces the policy in the kernel maps (by reconcile, as the agent does) and in the
    /// model. Counters and host statistics carry on in both.
    pub fn install(&mut self, desired: &DesiredPolicy, escalated: &BTreeSet<IpAddr>) {
        install_policy(&mut self.dataplane, desired, escalated);
        self.model.policy = ModelPolicy::from_desired(desired, escalated.iter().copied().collect());
    }

    /// Takes the kernel's counters as the model's, so that the next frame is compared on
    /// its own even after a disagreement (the fuzzer's shrinking replays failing inputs).
    pub fn resync_counters(&mut self) {
        self.model.counters = self
            .dataplane
            .counters()
            .unwrap_or_else(|e| panic!("reading the counters: {e}"));
    }

    /// Runs `frame` through the XDP and then the TC entry point and the model twice; returns
    /// the reason, or what disagreed.
    pub fn judge(&mut self, frame: &[u8]) -> Result<Reason, String> {
        let expected = decide(&self.model.policy, &dissect(frame));
        match self.dataplane.run_xdp(frame) {
            Ok(outcome) => {
                let reason = self.model.judge(frame);
                let action = model::xdp_action(reason.verdict());
                if outcome.action != action || outcome.reason != Some(reason) {
                    return Err(format!(
                        "XDP: model says {reason:?} (action {action}), kernel returned action {} and moved counter {:?}",
                        outcome.action, outcome.reason
                    ));
                }
                if outcome.action == model::XDP_TX {
                    self.reply_allowed(frame, "XDP")?;
                }
                self.coverage[reason as usize] += 1;
            }
            // The kernel refuses frames shorter than an Ethernet header before any program
            // runs; there is nothing to compare then, but the model must call them malformed.
            Err(error) if error.is_refused_input() && frame.len() < 14 => {
                if expected != Reason::Malformed {
                    return Err(format!(
                        "the kernel refused a {}-byte frame the model judges {expected:?}",
                        frame.len()
                    ));
                }
                self.coverage[expected as usize] += 1;
                return Ok(expected);
            }
            Err(error) => return Err(entry_error("XDP", error)),
        }
        match self.dataplane.run_tc(frame) {
            Ok(action) => {
                let reason = self.model.judge(frame);
                let expected_action = model::tc_action(reason.verdict());
                if action != expected_action {
                    return Err(format!(
                        "TC: model says {reason:?} (action {expected_action}), kernel returned action {action}"
                    ));
                }
                if action == model::TC_ACT_REDIRECT {
                    self.reply_allowed(frame, "TC")?;
                }
            }
            // The skb test run also refuses untagged IP frames with a cut IP header.
            Err(error) if error.is_refused_input() && expected == Reason::Malformed => {}
            Err(error) => return Err(entry_error("TC", error)),
        }
        let counters = self
            .dataplane
            .counters()
            .map_err(|e| format!("reading the counters: {e}"))?;
        if counters != self.model.counters {
            return Err(format!(
                "counters (by reason index) differ: kernel {counters:?}, model {:?}",
                self.model.counters
            ));
        }
        Ok(expected)
    }

    /// What holds of every reply the kernel sends, whatever the model says
    /// ([`ReplyBudget::check`]), for the frame it answered: a whole TCP SYN (no ACK).
    fn reply_allowed(&mut self, frame: &[u8], entry: &str) -> Result<(), String> {
        let refuse = |why: String| Err(format!("{entry}: {why}"));
        let Dissection::Ip {
            src,
            dst,
            above: AboveIp::Tcp { dst_port, flags },
        } = dissect(frame)
        else {
            return refuse("a reply to a frame that is not a whole TCP segment".into());
        };
        if flags & (TCP_SYN | TCP_ACK) != TCP_SYN {
            return refuse(format!(
                "a reply to a segment that is not a SYN (flags {flags:#04x})"
            ));
        }
        let syn = AnsweredSyn {
            src,
            dst,
            dst_port: Some(dst_port),
            answer: None,
        };
        self.replies.check(&self.model.policy, &syn).or_else(refuse)
    }

    /// What the host table and its overflow map hold.
    pub fn host_count(&self) -> HostCount {
        self.dataplane
            .host_count()
            .unwrap_or_else(|e| panic!("counting the hosts: {e}"))
    }

    /// Compares every host's statistics; returns the hosts that differ with both views.
    pub fn compare_hosts(&self) -> Result<(), Vec<(IpAddr, String)>> {
        let kernel: HashMap<IpAddr, HostStats> = self
            .dataplane
            .hosts()
            .unwrap_or_else(|e| panic!("reading the host statistics: {e}"))
            .into_iter()
            .collect();
        let mut differences = Vec::new();
        for (host, stats) in &kernel {
            match self.model.hosts.get(host) {
                None => differences.push((
                    *host,
                    format!("kernel tracks it ({stats:?}), the model does not"),
                )),
                Some(record) if !same(stats, record) => {
                    differences.push((*host, format!("kernel {stats:?}\n    model {record:?}")))
                }
                Some(_) => {}
            }
        }
        for (host, record) in &self.model.hosts {
            if !kernel.contains_key(host) {
                differences.push((
                    *host,
                    format!("the model tracks it ({record:?}), the kernel does not"),
                ));
            }
        }
        if differences.is_empty() {
            Ok(())
        } else {
            Err(differences)
        }
    }
}

/// Keeps the calling thread on the CPU it runs on, so that every test run (which runs the
/// program on the caller's CPU) takes the overflow map's entries from one CPU's free list.
/// The kernel's LRU hash hands out free entries through per-CPU lists, refilled 128 at a time
/// (`LOCAL_FREE_TARGET`, kernel/bpf/bpf_lru_list.c), and a CPU whose refill finds fewer free
/// in the shared list evicts the difference: with the thread moving between two CPUs, the
/// overflow evicted 128 hosts while it held 829 of its 1,024, a loss the model (which never
/// evicts) reported as hosts missing from the kernel. On one CPU the refills take the whole
/// map in batches before the first eviction. Each harness's thread stays where it is, so
/// tests running side by side still spread over the CPUs.
fn stay_on_one_cpu() {
    let cpu = sched_getcpu().unwrap_or_else(|e| panic!("finding this thread's CPU: {e}"));
    let mut one = CpuSet::new();
    one.set(cpu)
        .unwrap_or_else(|e| panic!("CPU {cpu} in a CPU set: {e}"));
    sched_setaffinity(Pid::from_raw(0), &one)
        .unwrap_or_else(|e| panic!("keeping this thread on CPU {cpu}: {e}"));
}

/// Writes `desired` into the program's policy maps (by reconcile, as the agent does) and
/// makes the escalations (the HOST_OVERRIDES map) `escalated`.
pub fn install_policy(
    dataplane: &mut Dataplane,
    desired: &DesiredPolicy,
    escalated: &BTreeSet<IpAddr>,
) {
    dataplane
        .policy_maps()
        .and_then(|mut maps| maps.reconcile(desired))
        .unwrap_or_else(|e| panic!("writing the policy: {e}"));
    let hosts: Vec<IpAddr> = escalated.iter().copied().collect();
    dataplane
        .sync_overrides(&hosts)
        .unwrap_or_else(|e| panic!("escalating {hosts:?}: {e}"));
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}

fn same(stats: &HostStats, record: &HostRecord) -> bool {
    let last_dst = match record.last_dst {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    };
    stats.attempts == record.attempts
        && stats.segments == record.segments
        && stats.dropped == record.dropped
        && stats.last_dst == last_dst
        && stats.last_dst_port == record.last_dst_port
        && stats.last_reason == record.last_reason as u16
        && stats.dst_sketch == record.dst_sketch
        && stats.dst_exact == record.dst_exact
        && stats.dst_exact_len == record.dst_exact_len
        && u64::from(stats.limited) == record.limited
        // Timestamps are the kernel's clock: only their order can be checked.
        && stats.first_seen_ns > 0
        && stats.first_seen_ns <= stats.last_seen_ns
}
