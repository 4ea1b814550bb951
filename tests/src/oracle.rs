//! The real kernel as a second oracle. The differential test compares the kernel program with
//! the reference model, and both were written with the same idea of what a gateway forwards;
//! a frame both misread passes that test. Here generated frames go through a real forwarding
//! gateway (smtpguard on its subscriber-facing veth, or nothing for the baseline) to a host
//! that takes packets to any address, and what that host's kernel takes as TCP, after
//! reassembly, is judged: an arrival the reference model would drop
//! (`Reason::Dropped` for a clean frame with the arrival's addresses, ports and flags) is a
//! leak. No parser of ours decides what got through: the kernels did.
//!
//! ```text
//! subscriber: AF_PACKET writer -> gateway (sub0: smtpguard; forwarding) -> internet host
//!                                                          (AnyIP; raw TCP sockets)
//! ```
//!
//! What comes back matters as much: every answer smtpguard sends (`reject`: a TCP reset or an
//! ICMP administratively-prohibited error, told from what the gateway forwards by its hop
//! limit) is captured on the subscriber's wire and must answer a SYN the reference model
//! rejects, from a host within its reply bucket ([`crate::replies`]); and every SYN the model
//! rejects (judged frame by frame, with the buckets) must get its answer: an answer the
//! kernel program cannot build or send degrades `reject` to a silent drop.
//!
//! Generated policies get `unparseable = drop`: with `pass`, TCP the program cannot read
//! passes by the operator's choice, and its arrival would look like a leak.
//!
//! Frames go in batches; each batch ends with a sentinel segment per family (TCP to a port
//! the policy does not enforce) and is over when both sentinels arrived, so every arrival is
//! judged under the policy its frames were sent under. A lost arrival would hide a leak: the
//! receivers' drop count (`SO_RXQ_OVFL`) and the veths' drop counters are part of the report,
//! and `RoundReport::check_nothing_lost` fails a run where they moved.

use std::{
    collections::HashSet,
    fmt,
    net::IpAddr,
    time::{Duration, Instant},
};

use smtpguard::{
    config::Capacity,
    dataplane::{Attach, Dataplane},
    model::{Dissection, Model, ModelPolicy, decide, dissect},
};
use smtpguard_common::{Reason, UnparseableAction};

use crate::{
    differential::{describe, install_policy},
    frames::{FrameSpec, TCP_SYN, Upper},
    generate::{self, GeneratedFrame, GeneratedPolicy},
    lab::{GatewayLab, INTERNET_INTERFACE, LinkStats, SUBSCRIBER_INTERFACE},
    replies::{CapturedReply, ReplyBudget},
    wire::{Arrival, FrameCapture, PacketWriter, TcpArrivals},
};

/// Frames sent under one policy before the next is installed.
pub const FRAMES_PER_POLICY: usize = 2_000;
/// Frames per batch: below the 256 frames a veth's XDP ring holds, so a batch never
/// overflows it while the gateway catches up.
const BATCH: usize = 128;
/// How long a batch's sentinels may take: they are forwarded in microseconds; not seeing
/// them means the lab broke, and the run fails.
const SENTINEL_TIMEOUT: Duration = Duration::from_secs(5);
/// Leaks kept in full (with their suspect frames) in a report; the rest are counted.
const LEAKS_KEPT: usize = 20;
/// How long answers may trail the sentinels at the end of a policy: they take another path
/// (back out of the gateway's subscriber end) than the sentinels, and must be judged under
/// the policy they were sent under.
const REPLY_SETTLE: Duration = Duration::from_millis(20);

/// The sentinels' addresses: documentation space routed (by the default routes) to the
/// internet host like everything else.
const SENTINEL_V4: (&str, &str) = ("192.0.2.200", "203.0.113.200");
const SENTINEL_V6: (&str, &str) = ("2001:db8:5e47::1", "2001:db8:5e47::2");

/// A gateway lab set up as the oracle needs it: the gateway forwards everything to the
/// internet host, which takes every address as its own; frames are written raw onto the
/// subscriber's veth and TCP arrivals read on the internet host.
pub struct OracleLab {
    pub lab: GatewayLab,
    writer: PacketWriter,
    pub arrivals: TcpArrivals,
    /// What comes back to the subscriber's line.
    returned: FrameCapture,
    gateway_mac: [u8; 6],
    sentinel_token: u16,
}

impl OracleLab {
    pub fn new() -> anyhow::Result<Self> {
        let lab = GatewayLab::new()?;
        lab.forward_everything()?;
        let writer = PacketWriter::open(&lab.subscriber, "eth0")?;
        let arrivals = TcpArrivals::open(&lab.internet, "eth0")?;
        let returned = FrameCapture::open(&lab.subscriber, "eth0")?;
        let gateway_mac = lab.gateway.mac(SUBSCRIBER_INTERFACE)?;
        Ok(Self {
            lab,
            writer,
            arrivals,
            returned,
            gateway_mac,
            sentinel_token: 0,
        })
    }

    /// Sends `frame` from the subscriber's line, its destination MAC rewritten to the
    /// gateway's (so the gateway's kernel takes it as its own: PACKET_HOST). Returns false
    /// when the kernel refuses to send it (shorter than an Ethernet header).
    pub fn send(&self, frame: &[u8]) -> bool {
        let mut frame = frame.to_vec();
        if frame.len() >= 6 {
            frame[..6].copy_from_slice(&self.gateway_mac);
        }
        match self.writer.send(&frame) {
            Ok(()) => true,
            Err(nix::errno::Errno::EINVAL) if frame.len() < 14 => false,
            Err(error) => panic!("sending a {}-byte frame: {error}", frame.len()),
        }
    }

    /// Ends a batch: sends one sentinel segment per family to `port` (which must not be
    /// enforced, so that it passes) and takes the arrivals until both sentinels are in.
    /// Returns the arrivals before them, sentinels left out.
    pub fn sync(&mut self, port: u16) -> Vec<Arrival> {
        self.sentinel_token = self.sentinel_token.wrapping_add(1);
        let token = 1024 + self.sentinel_token % 60_000;
        let sentinels = [
            sentinel(SENTINEL_V4, token, port),
            sentinel(SENTINEL_V6, token, port),
        ];
        for sentinel in &sentinels {
            assert!(self.send(&sentinel.build()), "the sentinel was refused");
        }
        let mut missing: HashSet<IpAddr> = sentinels.iter().map(|s| s.src).collect();
        let (mut arrivals, met) = self.arrivals.receive_until(SENTINEL_TIMEOUT, |arrival| {
            if is_sentinel(arrival) && arrival.src_port() == Some(token) {
                missing.remove(&arrival.src);
            }
            missing.is_empty()
        });
        assert!(
            met,
            "the batch's sentinel segments (TCP to port {port}, source port {token}) did not \
             arrive within {SENTINEL_TIMEOUT:?}: missing from {missing:?}; the lab does not \
             forward (or lost them). {} arrivals before.",
            arrivals.len()
        );
        arrivals.retain(|arrival| !is_sentinel(arrival));
        arrivals
    }

    /// The answers of smtpguard's that came back to the subscriber's line since the last call
    /// (everything else that came back is left out).
    pub fn replies(&mut self) -> Vec<CapturedReply> {
        self.returned
            .drain()
            .iter()
            .filter_map(|frame| CapturedReply::parse(frame))
            .collect()
    }

    /// Counters of the links a frame crosses: the subscriber's end (where the writer sends),
    /// the gateway's two ends, the internet host's end.
    pub fn link_stats(&self) -> [(&'static str, LinkStats); 4] {
        let stats = |netns: &crate::lab::Netns, interface: &str| {
            netns
                .link_stats(interface)
                .unwrap_or_else(|e| panic!("reading the counters of {interface}: {e:#}"))
        };
        [
            ("subscriber eth0", stats(&self.lab.subscriber, "eth0")),
            (
                "gateway sub0",
                stats(&self.lab.gateway, SUBSCRIBER_INTERFACE),
            ),
            (
                "gateway inet0",
                stats(&self.lab.gateway, INTERNET_INTERFACE),
            ),
            ("internet eth0", stats(&self.lab.internet, "eth0")),
        ]
    }
}

fn sentinel((src, dst): (&str, &str), token: u16, port: u16) -> FrameSpec {
    let mut spec = FrameSpec::tcp(parse(src), parse(dst), port, TCP_SYN);
    spec.upper = Upper::Tcp {
        src_port: token,
        dst_port: port,
        flags: TCP_SYN,
    };
    spec
}

fn is_sentinel(arrival: &Arrival) -> bool {
    [SENTINEL_V4, SENTINEL_V6]
        .iter()
        .any(|(src, dst)| arrival.src == parse(src) && arrival.dst == parse(dst))
}

fn parse(text: &str) -> IpAddr {
    text.parse()
        .unwrap_or_else(|e| panic!("address {text}: {e}"))
}

/// What the reference model decides for a clean frame (Ethernet, IP, a whole TCP header)
/// with the arrival's addresses, ports and flags. `Reason::Dropped` means smtpguard should
/// never have let it through. `None` for a segment too short to show its ports.
pub fn judge_arrival(policy: &ModelPolicy, arrival: &Arrival) -> Option<Reason> {
    let (src_port, dst_port) = (arrival.src_port()?, arrival.dst_port()?);
    let mut spec = FrameSpec::tcp(arrival.src, arrival.dst, dst_port, 0);
    spec.upper = Upper::Tcp {
        src_port,
        dst_port,
        flags: arrival.flags().unwrap_or(0),
    };
    Some(decide(policy, &dissect(&spec.build())))
}

/// `Err` saying why the policy never lets smtpguard send `reply`: [`ReplyBudget::check`], and
/// the model's verdict on a clean SYN with the answer's addresses and ports (when the answer
/// shows the port) must be `Rejected`.
pub fn judge_reply(
    policy: &ModelPolicy,
    budget: &mut ReplyBudget,
    reply: &CapturedReply,
) -> Result<(), String> {
    reply.check_addressed()?;
    budget.check(policy, &reply.syn)?;
    let Some(dst_port) = reply.syn.dst_port else {
        return Ok(());
    };
    let syn = FrameSpec::tcp(reply.syn.src, reply.syn.dst, dst_port, TCP_SYN);
    match decide(policy, &dissect(&syn.build())) {
        Reason::Rejected => Ok(()),
        reason => Err(format!("the model judges the SYN it answers {reason:?}")),
    }
}

/// A port the policy does not enforce, for the sentinels.
fn free_port(policy: &GeneratedPolicy) -> u16 {
    let enforcement = &policy.desired.enforcement;
    let enforced = &enforcement.ports[..enforcement.port_count as usize];
    (1..=u16::MAX)
        .rev()
        .find(|port| !enforced.contains(port))
        .expect("a policy enforces at most a few ports")
}

/// One run of generated frames through the lab.
#[derive(Clone, Copy, Debug)]
pub struct RoundConfig {
    pub seed: u64,
    /// Frames to send (fragment pairs count as two).
    pub frames: usize,
    /// smtpguard's entry point on the gateway; `None`: the baseline, nothing attached.
    pub attach: Option<Attach>,
    /// Slots of smtpguard's host table: a tiny table sends most hosts (and their cached
    /// classes) through the overflow map.
    pub host_capacity: u32,
}

/// An arrival the model would have dropped, with the frames that may have carried it.
pub struct Leak {
    pub arrival: Arrival,
    /// The policy it came under (the generated policy's index in the round).
    pub policy: usize,
    /// Frames sent under that policy whose bytes hold both the arrival's addresses, latest
    /// first (the arrival may be reassembled from several).
    pub suspects: Vec<GeneratedFrame>,
}

impl fmt::Display for Leak {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "arrived: {}", self.arrival)?;
        writeln!(
            f,
            "  under policy {} of the round; {} suspect frame(s), latest first:",
            self.policy,
            self.suspects.len()
        )?;
        for frame in &self.suspects {
            writeln!(f, "    generated as {}", frame.description)?;
            writeln!(f, "    {}", describe(&frame.bytes))?;
        }
        Ok(())
    }
}

/// What a round saw.
pub struct RoundReport {
    pub config: RoundConfig,
    pub frames_sent: usize,
    /// Frames the kernel refused to send (shorter than an Ethernet header).
    pub frames_refused: usize,
    /// TCP arrivals at the internet host (sentinels left out).
    pub arrivals: usize,
    /// Arrivals the model would have dropped: leaks with smtpguard attached; in the
    /// baseline, what smtpguard is there to stop.
    pub leak_count: usize,
    /// The first leaks in full.
    pub leaks: Vec<Leak>,
    /// smtpguard's answers that came back to the subscriber.
    pub replies: usize,
    /// Answers the policy forbids, and SYNs the model rejects that got no answer (must be 0).
    pub bad_reply_count: usize,
    /// The first of them, described.
    pub bad_replies: Vec<String>,
    /// Packets the receivers' sockets dropped (must be 0).
    pub overflows: u32,
    /// Frames the capture on the subscriber's line missed (must be 0).
    pub capture_drops: u64,
    /// Link counters moved during the round (after minus before), by link.
    pub links: Vec<(&'static str, LinkStats)>,
    pub elapsed: Duration,
}

impl RoundReport {
    pub fn frames_per_second(&self) -> f64 {
        self.frames_sent as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The round's name: "baseline (nothing attached)", "smtpguard Xdp(Driver)", "smtpguard Tc".
    pub fn name(&self) -> String {
        match self.config.attach {
            None => "baseline (nothing attached)".to_string(),
            Some(attach) => format!("smtpguard {attach:?}"),
        }
    }

    fn note_bad_reply(&mut self, what: String) {
        self.bad_reply_count += 1;
        if self.bad_replies.len() < LEAKS_KEPT {
            self.bad_replies.push(what);
        }
    }

    /// One line of figures.
    pub fn summary(&self) -> String {
        format!(
            "{}: seed {}, {} frames sent ({} refused), {} TCP arrivals, {} leaks, {} answers \
             ({} wrong), {:.0} frames/s ({:.1?})",
            self.name(),
            self.config.seed,
            self.frames_sent,
            self.frames_refused,
            self.arrivals,
            self.leak_count,
            self.replies,
            self.bad_reply_count,
            self.frames_per_second(),
            self.elapsed
        )
    }

    /// The summary and the leaks kept, for a failure message.
    pub fn details(&self) -> String {
        let mut text = self.summary();
        for leak in &self.leaks {
            text += &format!("\nLEAK (seed {}) {leak}", self.config.seed);
        }
        if self.leak_count > self.leaks.len() {
            text += &format!("\n... and {} more", self.leak_count - self.leaks.len());
        }
        for reply in &self.bad_replies {
            text += &format!("\nWRONG ANSWER (seed {}) {reply}", self.config.seed);
        }
        if self.bad_reply_count > self.bad_replies.len() {
            text += &format!(
                "\n... and {} more",
                self.bad_reply_count - self.bad_replies.len()
            );
        }
        text
    }

    /// Fails when an arrival may have been lost: a receiver's socket dropped packets, or a
    /// veth dropped frames on their way (a frame the gateway never judged, or a forwarded
    /// packet the internet host never saw). The gateway's subscriber end transmits only
    /// toward the subscriber (its own ICMP errors, `reject`'s replies), never an arrival:
    /// what it drops on transmit (the subscriber's receive ring full during a batch) hides
    /// nothing.
    pub fn check_nothing_lost(&self) -> Result<(), String> {
        let lost: Vec<String> = self
            .links
            .iter()
            .filter(|(link, _)| *link != "gateway sub0")
            .filter(|(_, stats)| stats.tx_dropped > 0)
            .map(|(link, stats)| format!("{link} dropped {} on transmit", stats.tx_dropped))
            .collect();
        if self.overflows == 0 && self.capture_drops == 0 && lost.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{}: packets may have been lost: the receivers' sockets dropped {} (SO_RXQ_OVFL), \
                 the capture on the subscriber's line {} (PACKET_STATISTICS); {lost:?}",
                self.name(),
                self.overflows,
                self.capture_drops
            ))
        }
    }
}

/// Sends `config.frames` generated frames (policies and frames from `config.seed`: the same
/// seed sends the same frames whatever is attached) through a fresh lab and judges every TCP
/// arrival. `progress` sees the report so far after each policy.
pub fn run_round(config: RoundConfig, mut progress: impl FnMut(&RoundReport)) -> RoundReport {
    let mut lab = OracleLab::new().unwrap_or_else(|e| panic!("building the oracle lab: {e:#}"));
    let mut dataplane = config.attach.map(|attach| {
        let capacity = Capacity {
            hosts: config.host_capacity,
            ..Capacity::default()
        };
        let mut dataplane =
            Dataplane::load(&capacity).unwrap_or_else(|e| panic!("loading the program: {e}"));
        lab.lab
            .attach(&mut dataplane, attach)
            .unwrap_or_else(|e| panic!("{e:#}"));
        dataplane
    });
    let links_before = lab.link_stats();
    let started = Instant::now();
    let mut report = RoundReport {
        config,
        frames_sent: 0,
        frames_refused: 0,
        arrivals: 0,
        leak_count: 0,
        leaks: Vec::new(),
        replies: 0,
        bad_reply_count: 0,
        bad_replies: Vec::new(),
        overflows: 0,
        capture_drops: 0,
        links: Vec::new(),
        elapsed: Duration::ZERO,
    };
    let mut rng = generate::rng(config.seed);
    let mut budget = ReplyBudget::default();
    // The reference model judging every frame sent, with the host buckets the kernel keeps
    // across policies: which SYNs must be answered.
    let mut answering: Option<Model> = None;
    let mut policy_index = 0;
    while report.frames_sent < config.frames {
        let mut policy = generate::random_policy(&mut rng);
        policy.desired.enforcement.unparseable = UnparseableAction::Drop as u32;
        if let Some(dataplane) = dataplane.as_mut() {
            install_policy(dataplane, &policy.desired, &policy.escalated);
        }
        let model =
            ModelPolicy::from_desired(&policy.desired, policy.escalated.iter().copied().collect());
        let port = free_port(&policy);
        if dataplane.is_some() {
            match answering.as_mut() {
                Some(answering) => answering.policy = model.clone(),
                None => answering = Some(Model::new(model.clone())),
            }
        }
        // The SYNs the model rejects under this policy (source, destination) and not yet
        // answered.
        let mut unanswered: Vec<(IpAddr, IpAddr)> = Vec::new();
        let mut window: Vec<GeneratedFrame> = Vec::new();
        let policy_end = (report.frames_sent + FRAMES_PER_POLICY).min(config.frames);
        while report.frames_sent < policy_end {
            let batch_end = (report.frames_sent + BATCH).min(policy_end);
            while report.frames_sent < batch_end {
                for frame in generate::random_datagram(&mut rng, &policy) {
                    report.frames_sent += 1;
                    if !lab.send(&frame.bytes) {
                        report.frames_refused += 1;
                    } else if let Some(model) = answering.as_mut()
                        && model.judge(&frame.bytes) == Reason::Rejected
                        && let Dissection::Ip { src, dst, .. } = dissect(&frame.bytes)
                    {
                        unanswered.push((src, dst));
                    }
                    window.push(frame);
                }
            }
            for arrival in lab.sync(port) {
                report.arrivals += 1;
                if judge_arrival(&model, &arrival) != Some(Reason::Dropped) {
                    continue;
                }
                report.leak_count += 1;
                if report.leaks.len() < LEAKS_KEPT {
                    let suspects = suspects(&window, &arrival);
                    report.leaks.push(Leak {
                        arrival,
                        policy: policy_index,
                        suspects,
                    });
                }
            }
            let last_batch = report.frames_sent == policy_end;
            if last_batch {
                std::thread::sleep(REPLY_SETTLE);
            }
            for reply in lab.replies() {
                report.replies += 1;
                let answers = (reply.syn.src, reply.syn.dst);
                let judged = judge_reply(&model, &mut budget, &reply).and_then(|()| {
                    let expected = unanswered.iter().position(|syn| *syn == answers);
                    let expected = expected.ok_or("an answer to no SYN the model rejects")?;
                    unanswered.swap_remove(expected);
                    Ok(())
                });
                if let Err(why) = judged {
                    report.note_bad_reply(format!("{reply:?} under policy {policy_index}: {why}"));
                }
            }
        }
        for (src, dst) in unanswered {
            report.note_bad_reply(format!(
                "no answer to a SYN from {src} to {dst} that the model rejects, under policy \
                 {policy_index}"
            ));
        }
        policy_index += 1;
        report.elapsed = started.elapsed();
        progress(&report);
    }
    report.elapsed = started.elapsed();
    report.overflows = lab.arrivals.overflows();
    report.capture_drops = lab.returned.drops();
    report.links = lab
        .link_stats()
        .into_iter()
        .zip(links_before)
        .map(|((link, after), (_, before))| {
            (
                link,
                LinkStats {
                    rx_packets: after.rx_packets - before.rx_packets,
                    rx_dropped: after.rx_dropped - before.rx_dropped,
                    tx_packets: after.tx_packets - before.tx_packets,
                    tx_dropped: after.tx_dropped - before.tx_dropped,
                },
            )
        })
        .collect();
    report
}

/// The frames of `window` that hold both of the arrival's addresses: those that also hold
/// its port pair first, then the rest, latest first each (at most 6).
fn suspects(window: &[GeneratedFrame], arrival: &Arrival) -> Vec<GeneratedFrame> {
    let octets = |address: IpAddr| match address {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    let (src, dst) = (octets(arrival.src), octets(arrival.dst));
    let ports = arrival.tcp.get(..4).unwrap_or(&[]);
    let holds = |frame: &[u8], needle: &[u8]| frame.windows(needle.len()).any(|w| w == needle);
    let mut found: Vec<&GeneratedFrame> = window
        .iter()
        .rev()
        .filter(|frame| holds(&frame.bytes, &src) && holds(&frame.bytes, &dst))
        .collect();
    // A stable sort keeps the latest first within each group.
    found.sort_by_key(|frame| !holds(&frame.bytes, ports));
    found.into_iter().take(6).cloned().collect()
}
