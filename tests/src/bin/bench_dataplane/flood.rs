//! End to end: a SYN flood to port 25 from the subscriber side of the namespace gateway
//! (tests/src/lab.rs), addressed only to the lab's own hosts, bounded in count and time.
//!
//! Two senders, each against every filter:
//! - live frames: `BPF_PROG_TEST_RUN` with live frames running a 4-instruction program that
//!   redirects every frame out of the subscriber's veth, so the frames reach the gateway's XDP
//!   hook without an skb on the sending side, the way XDP traffic generators work;
//! - trafgen (netsniff-ng, AF_PACKET with a TX ring): the classic generator, whose own socket
//!   and skb path is the bottleneck here, so its figures show the sender more than the filter.
//!
//! The same flood meets, in turn, smtpguard's XDP program, an nftables rule set with the same
//! policy on the netdev ingress hook, and xdp-filter.
//!
//! Then smtpguard alone meets floods whose sources vary (trafgen's per-packet random bytes):
//! a new source per packet inside an IPv4 /16 of a subscriber range and inside one IPv6 /64
//! (every judged segment from a host the statistics map has not seen creates its entry), and a
//! bot mix, 10,240 sources each to 50 destinations, interleaved, into a map already holding
//! 1,000,000 hosts. Their gateway CPU per million drops stands next to the known host's.

use std::{fs, os::fd::AsFd as _, process::Command, time::Instant};

use anyhow::{Context as _, Result, bail};
use aya::programs::XdpMode;
use serde::Serialize;
use smtpguard::{config::Config, dataplane::Dataplane};
use smtpguard_common::{HostKey, HostStats};
use smtpguard_tests::{
    frames::{FrameSpec, TCP_SYN},
    lab::{GatewayLab, Netns, SUBSCRIBER_INTERFACE},
};

use crate::bpf;

#[derive(Serialize)]
pub struct EndToEnd {
    pub frames_per_filter: u64,
    pub filters: Vec<FloodResult>,
    /// The same filters with trafgen (AF_PACKET) as the sender.
    pub trafgen: Vec<FloodResult>,
    /// smtpguard with trafgen against floods whose sources vary ([`Mix`]).
    pub mixes: Vec<FloodResult>,
    pub cpu_note: String,
}

#[derive(Serialize)]
pub struct FloodResult {
    pub filter: String,
    pub sender: String,
    pub sent: u64,
    pub dropped: u64,
    pub seconds: f64,
    pub dropped_per_s: f64,
    pub cpu_s_per_mdrop: f64,
    /// Frames the subscriber's veth could not hand over (the gateway's ring was full).
    pub refused: u64,
    /// Frames an XDP filter judged and passed (none for this flood); not counted for
    /// nftables.
    pub passed: Option<u64>,
}

const CPU_NOTE: &str = "two senders: live frames (BPF_PROG_TEST_RUN + bpf_redirect into the \
    subscriber's veth, batches of 64) and trafgen (AF_PACKET TX ring, one CPU); dropped = the \
    filter's own drop count (veth XDP drop statistics for the XDP programs, the rule's counter \
    for nftables; \"nftables + per-host counters\" is the same rule set that also counts per \
    source address in a dynamic set, the accounting smtpguard does, shown for comparison: the \
    target is taken against nftables without it); refused by the veth = frames the subscriber's veth could not hand over \
    because the gateway's receive ring was full (the sender outran the filter; they never \
    reach it); passed = frames an XDP filter judged and did not drop: none of the flood (a \
    frame or two is the subscriber stack's own IPv6 neighbour discovery, which trafgen's sent \
    count, read from the interface, includes as well); gateway CPU = softirq time from /proc/stat over all CPUs during the flood \
    (the gateway's veth receive path, NAPI, runs in softirq; the live-frames sender's test run \
    is system time and is not included, trafgen's transmit path partly is)";

/// Frames per `BPF_PROG_TEST_RUN` call of the sender.
const CHUNK: u32 = 250_000;

/// How the flood is sent.
#[derive(Clone, Copy)]
enum Sender {
    LiveFrames,
    Trafgen,
}

impl Sender {
    const ALL: [Sender; 2] = [Sender::LiveFrames, Sender::Trafgen];

    fn name(self) -> &'static str {
        match self {
            Sender::LiveFrames => "live frames",
            Sender::Trafgen => "trafgen",
        }
    }
}

/// Which sources and destinations a trafgen flood has.
#[derive(Clone, Copy)]
enum Mix {
    /// A new IPv4 source per packet: the last two bytes of the source random (100.64.0.0/16).
    NewSourceV4,
    /// A new IPv6 source per packet: the interface identifier random, one /64.
    NewSourceV6,
    /// 10,240 sources (100.64.0.0 to 100.64.39.255), each to 50 destinations (198.51.100.0
    /// to .49), interleaved (trafgen's runtime counters and random bytes), into a map already
    /// holding 1,000,000 other hosts.
    Bots,
}

impl Mix {
    const ALL: [Mix; 3] = [Mix::NewSourceV4, Mix::NewSourceV6, Mix::Bots];

    fn name(self) -> &'static str {
        match self {
            Mix::NewSourceV4 => "smtpguard, a new source per packet (IPv4 /16)",
            Mix::NewSourceV6 => "smtpguard, a new source per packet (IPv6 /64)",
            Mix::Bots => "smtpguard, 10,240 bots x 50 destinations, 1,000,000 hosts in the map",
        }
    }

    /// The frame as trafgen bytes, the varying ones as its runtime random functions.
    fn trafgen_bytes(self) -> Vec<String> {
        let ip = |text: &str| text.parse().expect("a literal address");
        let (frame, random): (Vec<u8>, &[(usize, &str)]) = match self {
            // Ethernet 14 + the IPv4 source at 12..16: bytes 28 and 29.
            Mix::NewSourceV4 => (
                FrameSpec::tcp(ip("100.64.0.2"), ip("198.51.100.7"), 25, TCP_SYN).build(),
                &[(28, "drnd()"), (29, "drnd()")],
            ),
            // The IPv6 source at 14 + 8..24: its interface identifier is bytes 30..38.
            Mix::NewSourceV6 => (
                FrameSpec::tcp(ip("2001:db8:1000::2"), ip("2001:db8:ffff::7"), 25, TCP_SYN).build(),
                &[
                    (30, "drnd()"),
                    (31, "drnd()"),
                    (32, "drnd()"),
                    (33, "drnd()"),
                    (34, "drnd()"),
                    (35, "drnd()"),
                    (36, "drnd()"),
                    (37, "drnd()"),
                ],
            ),
            // Source 100.64.(0..39, counting).(random), destination 198.51.100.(0..49,
            // counting): trafgen's byte lists take counters with a range, random bytes without.
            Mix::Bots => (
                FrameSpec::tcp(ip("100.64.0.2"), ip("198.51.100.7"), 25, TCP_SYN).build(),
                &[(28, "dinc(0, 39)"), (29, "drnd()"), (33, "dinc(0, 49)")],
            ),
        };
        frame
            .iter()
            .enumerate()
            .map(|(at, byte)| {
                random
                    .iter()
                    .find(|(random_at, _)| *random_at == at)
                    .map_or_else(|| format!("{byte:#04x}"), |(_, call)| (*call).to_owned())
            })
            .collect()
    }
}

/// The flood's sending side: the subscriber namespace with both senders ready.
struct Flood<'a> {
    lab: &'a GatewayLab,
    redirect: std::os::fd::OwnedFd,
    trafgen_config: tempfile::NamedTempFile,
    frame: &'a [u8],
    frames: u64,
    seconds: f64,
}

/// What one flood did: frames sent, seconds, gateway softirq seconds.
struct Sent {
    frames: u64,
    seconds: f64,
    softirq: f64,
}

impl Flood<'_> {
    fn send(&self, sender: Sender) -> Result<Sent> {
        self.send_with(sender, &self.trafgen_config)
    }

    /// Like [`send`](Self::send), with trafgen sending what `trafgen_config` describes.
    fn send_with(&self, sender: Sender, trafgen_config: &tempfile::NamedTempFile) -> Result<Sent> {
        let softirq_before = softirq_seconds()?;
        let started = Instant::now();
        let frames = match sender {
            Sender::LiveFrames => self.lab.subscriber.run(|| -> Result<u64> {
                let mut sent = 0u64;
                while sent < self.frames && started.elapsed().as_secs_f64() < self.seconds {
                    bpf::test_run(self.redirect.as_fd(), self.frame, CHUNK, Some(64))?;
                    sent += u64::from(CHUNK);
                }
                Ok(sent)
            })?,
            Sender::Trafgen => {
                let before = tx_packets(&self.lab.subscriber)?;
                // trafgen stops at the count or, on SIGINT from timeout, at the time bound. Its
                // exit status is not the measure: at the end it may fail to flush the last
                // of its TX ring ("Resource temporarily unavailable") after sending millions
                // of frames. The interface's own counter says what was sent.
                let script = format!(
                    "timeout -s INT {seconds} trafgen --dev eth0 --in {config} --num {frames} \
                     --cpus 1 --no-sock-mem --no-cpu-stats 2>&1 >/dev/null; true",
                    seconds = self.seconds,
                    config = trafgen_config.path().display(),
                    frames = self.frames,
                );
                let said = shell(&self.lab.subscriber, &script)?;
                let sent = tx_packets(&self.lab.subscriber)? - before;
                if sent == 0 {
                    bail!("trafgen sent nothing: {}", said.trim());
                }
                sent
            }
        };
        Ok(Sent {
            frames,
            seconds: started.elapsed().as_secs_f64(),
            softirq: softirq_seconds()? - softirq_before,
        })
    }
}

fn result(filter: &str, sender: Sender, sent: &Sent, dropped: u64) -> FloodResult {
    FloodResult {
        filter: filter.into(),
        sender: sender.name().into(),
        sent: sent.frames,
        dropped,
        seconds: sent.seconds,
        dropped_per_s: dropped as f64 / sent.seconds,
        cpu_s_per_mdrop: if dropped == 0 {
            0.0
        } else {
            sent.softirq / (dropped as f64 / 1e6)
        },
        refused: 0,
        passed: None,
    }
}

/// One filter installed on the gateway: how to count its drops.
enum Counter {
    /// The veth's XDP drop statistics.
    Xdp,
    /// The nftables rules' counters (reset per flood by reloading the rules), with or without
    /// per-host accounting.
    Nft(Accounting),
}

/// Whether the nftables rules also count per host, as smtpguard does (a dynamic set with a
/// counter per source address): the same work, for comparison. The target is taken against
/// the rules without it, which is what the issue names.
#[derive(Clone, Copy)]
enum Accounting {
    PolicyOnly,
    PerHost,
}

pub fn run(config: &Config, quick: bool, frame: &[u8]) -> Result<EndToEnd> {
    let (frames, seconds) = if quick {
        (2_000_000, 3.0)
    } else {
        (20_000_000, 10.0)
    };
    let lab = GatewayLab::new()?;
    // veth delivers redirected frames only to a peer with NAPI: XDP attached or GRO on.
    ethtool(&lab.gateway, &["-K", SUBSCRIBER_INTERFACE, "gro", "on"])?;
    let ifindex = lab
        .subscriber
        .run(|| nix::net::if_::if_nametoindex("eth0"))
        .context("the subscriber's eth0")?;
    let flood = Flood {
        lab: &lab,
        redirect: bpf::load_redirect(ifindex)?,
        trafgen_config: trafgen_config(frame.iter().map(|byte| format!("{byte:#04x}")))?,
        frame,
        frames,
        seconds,
    };
    let (mut filters, mut trafgen) = (Vec::new(), Vec::new());
    let mut measure = |filter: &str, counter: Counter| -> Result<()> {
        for sender in Sender::ALL {
            let dropped_before = match counter {
                Counter::Xdp => xdp_drops(&lab.gateway)?,
                Counter::Nft(accounting) => {
                    nft(&lab.gateway, "flush ruleset netdev\n")?;
                    nft(&lab.gateway, &nft_ruleset(config, accounting))?;
                    0
                }
            };
            let judged_before = xdp_judged(&lab.gateway)?;
            let refused_before = veth_refused(&lab.subscriber)?;
            let sent = flood.send(sender)?;
            let dropped = match counter {
                Counter::Xdp => xdp_drops(&lab.gateway)?,
                Counter::Nft(_) => nft_drops(&lab.gateway)?,
            } - dropped_before;
            let mut row = result(filter, sender, &sent, dropped);
            row.refused = veth_refused(&lab.subscriber)? - refused_before;
            // What an XDP filter judged and did not drop went on to the stack: none may have.
            row.passed = match counter {
                Counter::Xdp => Some(xdp_judged(&lab.gateway)? - judged_before - dropped),
                Counter::Nft(_) => None,
            };
            eprintln!(
                "  {filter} ({}): {:.0} dropped/s",
                sender.name(),
                row.dropped_per_s
            );
            match sender {
                Sender::LiveFrames => filters.push(row),
                Sender::Trafgen => trafgen.push(row),
            }
        }
        Ok(())
    };

    let mut dataplane = Dataplane::with_policy(config)?;
    lab.gateway
        .run(|| dataplane.attach_xdp(SUBSCRIBER_INTERFACE, XdpMode::Driver))?;
    measure("smtpguard", Counter::Xdp)?;
    drop(dataplane);

    let mut mixes = Vec::new();
    for mix in Mix::ALL {
        // A fresh instance per mix, so one mix's hosts are not the next one's known hosts.
        let mut dataplane = Dataplane::with_policy(config)?;
        if let Mix::Bots = mix {
            // 1,000,000 other hosts (from 101.64.0.0, outside the bots' /18) already tracked.
            dataplane.insert_hosts((0..1_000_000u32).map(|i| {
                (
                    HostKey::from_v4((u32::from_be_bytes([101, 64, 0, 0]) + i).to_be_bytes()),
                    HostStats::first_seen(0, 0, 0),
                )
            }))?;
        }
        lab.gateway
            .run(|| dataplane.attach_xdp(SUBSCRIBER_INTERFACE, XdpMode::Driver))?;
        let dropped_before = xdp_drops(&lab.gateway)?;
        let sent = flood.send_with(
            Sender::Trafgen,
            &trafgen_config(mix.trafgen_bytes().into_iter())?,
        )?;
        let dropped = xdp_drops(&lab.gateway)? - dropped_before;
        let row = result(mix.name(), Sender::Trafgen, &sent, dropped);
        eprintln!(
            "  {}: {:.0} dropped/s, {:.3} gateway CPU s per M dropped, hosts tracked: {:?}",
            mix.name(),
            row.dropped_per_s,
            row.cpu_s_per_mdrop,
            dataplane.host_count()?
        );
        mixes.push(row);
        drop(dataplane);
    }

    measure("nftables", Counter::Nft(Accounting::PolicyOnly))?;
    measure(
        "nftables + per-host counters",
        Counter::Nft(Accounting::PerHost),
    )?;
    nft(&lab.gateway, "flush ruleset netdev\n")?;

    shell(
        &lab.gateway,
        &format!(
            "mount -t bpf bpf /sys/fs/bpf && xdp-filter load -f tcp {SUBSCRIBER_INTERFACE} && \
             xdp-filter port 25 -p tcp"
        ),
    )?;
    measure("xdp-filter", Counter::Xdp)?;
    lab.gateway
        .ip(&["link", "set", "dev", SUBSCRIBER_INTERFACE, "xdp", "off"])?;

    Ok(EndToEnd {
        frames_per_filter: frames,
        filters,
        trafgen,
        mixes,
        cpu_note: CPU_NOTE.into(),
    })
}

/// trafgen's packet configuration: one packet of these bytes (literal bytes or trafgen's
/// runtime functions).
fn trafgen_config(bytes: impl Iterator<Item = String>) -> Result<tempfile::NamedTempFile> {
    let bytes: Vec<String> = bytes.collect();
    let mut file = tempfile::NamedTempFile::new().context("creating trafgen's configuration")?;
    std::io::Write::write_all(
        &mut file,
        format!("{{ {} }}\n", bytes.join(", ")).as_bytes(),
    )
    .context("writing trafgen's configuration")?;
    Ok(file)
}

/// Frames the subscriber's eth0 has sent.
fn tx_packets(netns: &Netns) -> Result<u64> {
    shell(netns, "cat /sys/class/net/eth0/statistics/tx_packets")?
        .trim()
        .parse()
        .context("eth0's tx_packets")
}

/// The same policy as nftables would hold it: prefix sets, relay and exemption sets, one
/// drop rule per family, on the earliest hook (netdev ingress of the subscriber interface).
fn nft_ruleset(config: &Config, accounting: Accounting) -> String {
    let set = |prefixes: Vec<String>| {
        if prefixes.is_empty() {
            String::new()
        } else {
            format!("elements = {{ {} }}", prefixes.join(", "))
        }
    };
    let family = |v4: bool, list: &mut dyn Iterator<Item = ipnet::IpNet>| {
        set(list
            .filter(|prefix| matches!(prefix, ipnet::IpNet::V4(_)) == v4)
            .map(|prefix| prefix.to_string())
            .collect())
    };
    let enforced = || {
        config
            .subscribers
            .iter()
            .filter(|range| !matches!(range.mode, smtpguard_common::Mode::Monitor))
            .map(|range| range.prefix)
    };
    let relays = || config.relays.iter().map(|relay| relay.prefix);
    let exempt = || config.exemptions.iter().map(|exemption| exemption.prefix);
    let ports = config
        .enforcement
        .ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let (hosts, (count4, count6)) = match accounting {
        Accounting::PolicyOnly => (String::new(), (String::new(), String::new())),
        Accounting::PerHost => (
            format!(
                "  set hosts4 {{ type ipv4_addr; size {size}; flags dynamic; counter; }}
  set hosts6 {{ type ipv6_addr; size {size}; flags dynamic; counter; }}
",
                size = config.capacity.hosts
            ),
            (
                "update @hosts4 { ip saddr } ".to_owned(),
                "update @hosts6 { ip6 saddr } ".to_owned(),
            ),
        ),
    };
    format!(
        "table netdev smtpguard_bench {{
{hosts}  set sub4 {{ type ipv4_addr; flags interval; {} }}
  set sub6 {{ type ipv6_addr; flags interval; {} }}
  set relay4 {{ type ipv4_addr; flags interval; {} }}
  set relay6 {{ type ipv6_addr; flags interval; {} }}
  set exempt4 {{ type ipv4_addr; flags interval; {} }}
  set exempt6 {{ type ipv6_addr; flags interval; {} }}
  chain ingress {{
    type filter hook ingress device \"{SUBSCRIBER_INTERFACE}\" priority -500; policy accept;
    ip saddr @sub4 tcp dport {{ {ports} }} ip daddr != @relay4 ip saddr != @exempt4 {count4}counter drop
    ip6 saddr @sub6 tcp dport {{ {ports} }} ip6 daddr != @relay6 ip6 saddr != @exempt6 {count6}counter drop
  }}
}}
",
        family(true, &mut enforced()),
        family(false, &mut enforced()),
        family(true, &mut relays()),
        family(false, &mut relays()),
        family(true, &mut exempt()),
        family(false, &mut exempt()),
    )
}

fn nft(netns: &Netns, script: &str) -> Result<()> {
    let path = std::env::temp_dir().join(format!("smtpguard-bench-{}.nft", std::process::id()));
    fs::write(&path, script).context("writing the nftables script")?;
    let outcome = shell(netns, &format!("nft -f {}", path.display()));
    let _ = fs::remove_file(&path);
    outcome.map(drop)
}

/// Packets the drop rules counted.
fn nft_drops(netns: &Netns) -> Result<u64> {
    let listing = shell(netns, "nft list chain netdev smtpguard_bench ingress")?;
    Ok(listing
        .split("counter packets ")
        .skip(1)
        .filter_map(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .sum())
}

/// The gateway veth's XDP drop count over its receive queues (`ethtool -S`).
fn xdp_drops(netns: &Netns) -> Result<u64> {
    veth_stat(netns, SUBSCRIBER_INTERFACE, "rx_queue_", "_xdp_drops")
}

/// Frames the gateway veth's XDP program judged, over its receive queues.
fn xdp_judged(netns: &Netns) -> Result<u64> {
    veth_stat(netns, SUBSCRIBER_INTERFACE, "rx_queue_", "_xdp_packets")
}

/// Frames the subscriber's veth could not hand to the gateway's (its receive ring was full:
/// the sender outran the filter). They never reach the filter, and never pass.
fn veth_refused(netns: &Netns) -> Result<u64> {
    veth_stat(netns, "eth0", "tx_queue_", "_xdp_xmit_errors")
}

/// The sum of a veth's per-queue statistic (`ethtool -S`).
fn veth_stat(netns: &Netns, interface: &str, queue: &str, name: &str) -> Result<u64> {
    let stats = ethtool(netns, &["-S", interface])?;
    Ok(stats
        .lines()
        .filter_map(|line| line.trim().split_once(':'))
        .filter(|(stat, _)| stat.starts_with(queue) && stat.ends_with(name))
        .filter_map(|(_, value)| value.trim().parse::<u64>().ok())
        .sum())
}

fn ethtool(netns: &Netns, args: &[&str]) -> Result<String> {
    let line = format!("ethtool {}", args.join(" "));
    shell(netns, &line)
}

fn shell(netns: &Netns, script: &str) -> Result<String> {
    let output = Command::new("ip")
        .args(["netns", "exec", netns.name(), "sh", "-c", script])
        .output()
        .with_context(|| format!("running {script}"))?;
    if !output.status.success() {
        bail!(
            "`{script}` in {} failed: {}",
            netns.name(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Softirq time of all CPUs so far, in seconds (/proc/stat, USER_HZ = 100).
fn softirq_seconds() -> Result<f64> {
    let stat = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat
        .lines()
        .find(|line| line.starts_with("cpu "))
        .context("no cpu line in /proc/stat")?;
    let softirq: u64 = line
        .split_whitespace()
        .nth(7)
        .and_then(|field| field.parse().ok())
        .context("no softirq field in /proc/stat")?;
    Ok(softirq as f64 / 100.0)
}
