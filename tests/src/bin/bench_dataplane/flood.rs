//! End to end: a SYN flood to port 25 from the subscriber side of the namespace gateway
//! (tests/src/lab.rs), addressed only to the lab's own hosts, bounded in count and time.
//!
//! The sender is `BPF_PROG_TEST_RUN` with live frames running a 4-instruction program that
//! redirects every frame out of the subscriber's veth: the frames reach the gateway's XDP
//! hook without an skb on the sending side, the way XDP traffic generators work. The same
//! flood meets, in turn, smtpguard's XDP program, an nftables rule set with the same policy
//! on the netdev ingress hook, and xdp-filter.

use std::{fs, os::fd::AsFd as _, process::Command, time::Instant};

use anyhow::{Context as _, Result, bail};
use aya::programs::XdpMode;
use serde::Serialize;
use smtpguard::{config::Config, dataplane::Dataplane};
use smtpguard_tests::lab::{GatewayLab, Netns, SUBSCRIBER_INTERFACE};

use crate::bpf;

#[derive(Serialize)]
pub struct EndToEnd {
    pub frames_per_filter: u64,
    pub filters: Vec<FloodResult>,
    /// trafgen (AF_PACKET) as the sender: not measured yet.
    pub trafgen: Vec<FloodResult>,
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
}

const CPU_NOTE: &str = "live-frames sender (BPF_PROG_TEST_RUN + bpf_redirect into the \
    subscriber's veth, batches of 64); dropped = the filter's own drop count (veth XDP drop \
    statistics for the XDP programs, the rule's counter for nftables); gateway CPU = softirq \
    time from /proc/stat over all CPUs during the flood (the gateway's veth receive path, NAPI, \
    runs in softirq; the sender's test run is system time and is not included)";

/// Frames per `BPF_PROG_TEST_RUN` call of the sender.
const CHUNK: u32 = 250_000;

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
    let sender = bpf::load_redirect(ifindex)?;
    let flood = |lab: &GatewayLab| -> Result<(u64, f64, f64)> {
        let softirq_before = softirq_seconds()?;
        let started = Instant::now();
        let sent = lab.subscriber.run(|| -> Result<u64> {
            let mut sent = 0u64;
            while sent < frames && started.elapsed().as_secs_f64() < seconds {
                bpf::test_run(sender.as_fd(), frame, CHUNK, Some(64))?;
                sent += u64::from(CHUNK);
            }
            Ok(sent)
        })?;
        let elapsed = started.elapsed().as_secs_f64();
        Ok((sent, elapsed, softirq_seconds()? - softirq_before))
    };
    let result = |filter: &str, (sent, seconds, cpu): (u64, f64, f64), dropped: u64| FloodResult {
        filter: filter.into(),
        sender: "live frames".into(),
        sent,
        dropped,
        seconds,
        dropped_per_s: dropped as f64 / seconds,
        cpu_s_per_mdrop: if dropped == 0 {
            0.0
        } else {
            cpu / (dropped as f64 / 1e6)
        },
    };
    let mut filters = Vec::new();

    // smtpguard
    let mut dataplane = Dataplane::with_policy(config)?;
    lab.gateway
        .run(|| dataplane.attach_xdp(SUBSCRIBER_INTERFACE, XdpMode::Driver))?;
    let before = xdp_drops(&lab.gateway)?;
    let run = flood(&lab)?;
    let dropped = xdp_drops(&lab.gateway)? - before;
    filters.push(result("smtpguard", run, dropped));
    drop(dataplane);
    eprintln!("  smtpguard: {:.0} dropped/s", filters[0].dropped_per_s);

    // nftables
    nft(&lab.gateway, &nft_ruleset(config))?;
    let run = flood(&lab)?;
    let dropped = nft_drops(&lab.gateway)?;
    nft(&lab.gateway, "delete table netdev smtpguard_bench\n")?;
    filters.push(result("nftables", run, dropped));
    eprintln!("  nftables: {:.0} dropped/s", filters[1].dropped_per_s);

    // xdp-filter
    shell(
        &lab.gateway,
        &format!(
            "mount -t bpf bpf /sys/fs/bpf && xdp-filter load -f tcp {SUBSCRIBER_INTERFACE} && \
             xdp-filter port 25 -p tcp"
        ),
    )?;
    let before = xdp_drops(&lab.gateway)?;
    let run = flood(&lab)?;
    let dropped = xdp_drops(&lab.gateway)? - before;
    lab.gateway
        .ip(&["link", "set", "dev", SUBSCRIBER_INTERFACE, "xdp", "off"])?;
    filters.push(result("xdp-filter", run, dropped));
    eprintln!("  xdp-filter: {:.0} dropped/s", filters[2].dropped_per_s);

    Ok(EndToEnd {
        frames_per_filter: frames,
        filters,
        trafgen: Vec::new(),
        cpu_note: CPU_NOTE.into(),
    })
}

/// The same policy as nftables would hold it: prefix sets, relay and exemption sets, one
/// drop rule per family, on the earliest hook (netdev ingress of the subscriber interface).
fn nft_ruleset(config: &Config) -> String {
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
    format!(
        "table netdev smtpguard_bench {{
  set sub4 {{ type ipv4_addr; flags interval; {} }}
  set sub6 {{ type ipv6_addr; flags interval; {} }}
  set relay4 {{ type ipv4_addr; flags interval; {} }}
  set relay6 {{ type ipv6_addr; flags interval; {} }}
  set exempt4 {{ type ipv4_addr; flags interval; {} }}
  set exempt6 {{ type ipv6_addr; flags interval; {} }}
  chain ingress {{
    type filter hook ingress device \"{SUBSCRIBER_INTERFACE}\" priority -500; policy accept;
    ip saddr @sub4 tcp dport {{ {ports} }} ip daddr != @relay4 ip saddr != @exempt4 counter drop
    ip6 saddr @sub6 tcp dport {{ {ports} }} ip6 daddr != @relay6 ip6 saddr != @exempt6 counter drop
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

/// The veth's XDP drop count over its receive queues (`ethtool -S`).
fn xdp_drops(netns: &Netns) -> Result<u64> {
    let stats = ethtool(netns, &["-S", SUBSCRIBER_INTERFACE])?;
    Ok(stats
        .lines()
        .filter_map(|line| line.trim().split_once(':'))
        .filter(|(name, _)| name.ends_with("xdp_drops") && name.starts_with("rx_queue_"))
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
