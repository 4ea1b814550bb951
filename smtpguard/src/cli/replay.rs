//! `smtpguard replay --config FILE CAPTURE [--format table|json]`

use std::net::IpAddr;

use anyhow::Context as _;
use clap::Args;
use smtpguard_common::{HostStats, Reason};

use super::Format;
use crate::{
    config::Config,
    replay::{ReplayReport, replay},
    report::RowSubject,
};
use std::path::{Path, PathBuf};

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// A pcap or pcapng capture of Ethernet frames, e.g. edge.pcap
    capture: PathBuf,
    /// Output format: table (for people) or json (one object per frame, then a summary),
    /// e.g. -o json
    #[arg(short = 'o', long, value_enum, default_value_t)]
    format: Format,
    /// Writes the frames the program sent back (the replies to rejected SYNs, verdict `tx`)
    /// to a pcap file, one per rejected frame in capture order, e.g. --write-pcap replies.pcap
    #[arg(long, value_name = "FILE")]
    write_pcap: Option<PathBuf>,
}

pub fn run(args: &ReplayArgs, config: &Path) -> anyhow::Result<()> {
    let config = Config::load(config).context("invalid configuration")?;
    let report = replay(&config, &args.capture)?;
    if let Some(path) = &args.write_pcap {
        write_replies(&report, path)?;
    }
    match args.format {
        Format::Table => print_table(&report),
        Format::Json => print_json(&report)?,
    }
    Ok(())
}

/// The replies as a pcap file, each stamped with its frame's position in the capture as
/// milliseconds, so Wireshark's frame time names the frame it answers.
fn write_replies(report: &ReplayReport, path: &Path) -> anyhow::Result<()> {
    use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut writer = PcapWriter::with_header(std::io::BufWriter::new(file), PcapHeader::default())
        .with_context(|| format!("writing the pcap header to {}", path.display()))?;
    for row in &report.frames {
        let Some(reply) = &row.reply else { continue };
        let at = std::time::Duration::from_millis(row.frame as u64);
        writer
            .write_packet(&PcapPacket::new(at, reply.len() as u32, reply))
            .with_context(|| {
                format!(
                    "writing the reply to frame {} to {}",
                    row.frame,
                    path.display()
                )
            })?;
    }
    Ok(())
}

fn print_table(report: &ReplayReport) {
    println!("{:>7}  {:<8}  REASON", "FRAME", "VERDICT");
    for row in &report.frames {
        println!(
            "{:>7}  {:<8}  {}",
            row.frame,
            row.verdict,
            row.reason.name()
        );
    }
    println!();
    let dropped = report.frames.iter().filter(|r| r.verdict == "drop").count();
    let answered = report.frames.iter().filter(|r| r.verdict == "tx").count();
    let replies = match answered {
        0 => String::new(),
        n => format!(", {n} rejected with a reply (tx)"),
    };
    println!(
        "{} frames: {} passed, {} dropped{replies}",
        report.frames.len(),
        report.frames.len() - dropped - answered,
        dropped,
    );
    for reason in Reason::ALL {
        let count = report.counters[reason as usize];
        if count > 0 {
            println!("  {:<20} {count}", reason.name());
        }
    }
    if !report.hosts.is_empty() {
        println!();
        println!(
            "{:<40} {:>8} {:>8} {:>8} {:>8}  LAST DESTINATION",
            "SUBSCRIBER HOST", "ATTEMPTS", "SEGMENTS", "DROPPED", "DISTINCT"
        );
        for (host, stats) in sorted_hosts(report) {
            println!(
                "{:<40} {:>8} {:>8} {:>8} {:>8}  {}",
                host.to_string(),
                stats.attempts,
                stats.segments,
                stats.dropped,
                stats.sketch().estimate(),
                last_destination(stats),
            );
        }
    }
}

fn print_json(report: &ReplayReport) -> anyhow::Result<()> {
    for row in &report.frames {
        // The documented line format, byte for byte; names are fixed ASCII words.
        println!(
            r#"{{"frame": {}, "verdict": "{}", "reason": "{}"}}"#,
            row.frame,
            row.verdict,
            row.reason.name()
        );
    }
    let reasons: serde_json::Map<String, serde_json::Value> = Reason::ALL
        .into_iter()
        .map(|r| (r.name().to_owned(), report.counters[r as usize].into()))
        .collect();
    let hosts: Vec<serde_json::Value> = sorted_hosts(report)
        .into_iter()
        .map(|(host, stats)| {
            serde_json::json!({
                "host": host.to_string(),
                "attempts": stats.attempts,
                "segments": stats.segments,
                "dropped": stats.dropped,
                "replies": stats.replies,
                "limited": stats.limited,
                "distinct_destinations": stats.sketch().estimate(),
                "last_destination": last_destination(stats),
            })
        })
        .collect();
    let dropped = report.frames.iter().filter(|r| r.verdict == "drop").count();
    let answered = report.frames.iter().filter(|r| r.verdict == "tx").count();
    let summary = serde_json::json!({
        "summary": {
            "frames": report.frames.len(),
            "passed": report.frames.len() - dropped - answered,
            "dropped": dropped,
            "tx": answered,
            "reasons": reasons,
            "hosts": hosts,
        }
    });
    println!(
        "{}",
        serde_json::to_string(&summary).context("encoding the summary")?
    );
    Ok(())
}

fn sorted_hosts(report: &ReplayReport) -> Vec<(RowSubject, &HostStats)> {
    let mut hosts: Vec<_> = report.hosts.iter().map(|(h, s)| (*h, s)).collect();
    hosts.sort_by(|a, b| b.1.attempts.cmp(&a.1.attempts).then(a.0.cmp(&b.0)));
    hosts
}

/// `address:port`, or the address alone when the last segment's port was out of reach
/// (a fragment or an unparseable header, recorded with port 0).
fn last_destination(stats: &HostStats) -> String {
    let address = crate::dataplane::host_address(&stats.last_dst);
    match (address, stats.last_dst_port) {
        (address, 0) => address.to_string(),
        (IpAddr::V4(v4), port) => format!("{v4}:{port}"),
        (IpAddr::V6(v6), port) => format!("[{v6}]:{port}"),
    }
}
