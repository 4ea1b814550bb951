//! `smtpguard replay` as an operator runs it: the real binary, a real capture file, the real
//! kernel program; JSON output parsed line by line; every bad input with its message and exit
//! code 1.

use std::{
    fs::File,
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use pcap_file::{
    DataLink,
    pcap::{PcapHeader, PcapPacket, PcapWriter},
};
use smtpguard_tests::frames::{FrameSpec, TCP_ACK, TCP_SYN, TPID_8021Q, Wrapper, arp};

const POLICY: &str = r#"
[[subscribers]]
prefix = "100.64.0.0/10"
[[subscribers]]
prefix = "2001:db8:1000::/36"
[[relays]]
prefix = "192.0.2.25/32"
[capacity]
hosts = 1024
"#;

/// A scratch folder per test, removed afterwards.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("smtpguard-replay-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        std::fs::write(path.join("policy.toml"), POLICY).unwrap();
        Self(path)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn write_pcap(path: &Path, link: DataLink, frames: &[Vec<u8>]) {
    let header = PcapHeader {
        datalink: link,
        ..PcapHeader::default()
    };
    let mut writer = PcapWriter::with_header(File::create(path).unwrap(), header).unwrap();
    for (i, frame) in frames.iter().enumerate() {
        let packet = PcapPacket::new(Duration::from_millis(i as u64), frame.len() as u32, frame);
        writer.write_packet(&packet).unwrap();
    }
}

fn replay(args: &[&Path]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_smtpguard"))
        .arg("replay")
        .args(args)
        .output()
        .expect("running smtpguard")
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

#[test]
fn json_lines_name_each_frame_verdict_and_reason() {
    let scratch = Scratch::new("json");
    let (bot, mx) = (ip("100.64.0.2"), ip("198.51.100.7"));
    let frames = vec![
        FrameSpec::tcp(bot, mx, 25, TCP_SYN).build(),
        FrameSpec::tcp(bot, mx, 587, TCP_SYN).build(),
        FrameSpec::tcp(bot, ip("192.0.2.25"), 25, TCP_SYN).build(),
        arp(),
        FrameSpec::tcp(ip("2001:db8:1000::2"), ip("2001:db8:ffff::7"), 25, TCP_ACK)
            .wrap(Wrapper::Vlan {
                tpid: TPID_8021Q,
                vid: 4,
            })
            .build(),
        FrameSpec::tcp(ip("203.0.113.9"), mx, 25, TCP_SYN).build(),
    ];
    let capture = scratch.file("edge.pcap");
    write_pcap(&capture, DataLink::ETHERNET, &frames);
    let stdout = replayed(&[
        Path::new("--config"),
        &scratch.file("policy.toml"),
        &capture,
        Path::new("--format"),
        Path::new("json"),
    ]);

    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.len(),
        frames.len() + 1,
        "one line per frame and a summary:\n{stdout}"
    );
    let expected = [
        ("drop", "dropped"),
        ("pass", "other"),
        ("pass", "relayed"),
        ("pass", "other"),
        ("drop", "dropped"),
        ("pass", "not-subscriber"),
    ];
    for (n, (line, (verdict, reason))) in lines.iter().zip(expected).enumerate() {
        assert_eq!(
            *line,
            format!(
                r#"{{"frame": {}, "verdict": "{verdict}", "reason": "{reason}"}}"#,
                n + 1
            ),
            "frame {}",
            n + 1
        );
        let parsed: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(parsed["frame"], n + 1);
    }
    let summary: serde_json::Value = serde_json::from_str(lines[frames.len()]).unwrap();
    let summary = &summary["summary"];
    assert_eq!(summary["frames"], 6);
    assert_eq!(summary["dropped"], 2);
    assert_eq!(summary["reasons"]["dropped"], 2);
    assert_eq!(summary["reasons"]["relayed"], 1);
    let hosts = summary["hosts"].as_array().unwrap();
    let hosts: Vec<&str> = hosts.iter().map(|h| h["host"].as_str().unwrap()).collect();
    assert_eq!(
        hosts,
        ["100.64.0.2", "2001:db8:1000::/64"],
        "tracked hosts (an IPv6 host is its /64), by attempts"
    );
}

#[test]
fn table_output_has_a_row_per_frame_and_totals() {
    let scratch = Scratch::new("table");
    let frame = FrameSpec::tcp(ip("100.64.0.2"), ip("198.51.100.7"), 25, TCP_SYN).build();
    let capture = scratch.file("edge.pcap");
    write_pcap(&capture, DataLink::ETHERNET, &[frame.clone(), frame]);
    let stdout = replayed(&[
        Path::new("--config"),
        &scratch.file("policy.toml"),
        &capture,
    ]);
    assert_eq!(
        frame_rows(&stdout, 2),
        [["1", "drop", "dropped"], ["2", "drop", "dropped"]],
        "{stdout}"
    );
    assert!(stdout.contains("2 frames: 0 passed, 2 dropped"), "{stdout}");
    assert!(stdout.contains("100.64.0.2"), "host table: {stdout}");
}

/// Runs replay and expects exit code 1 with `expected` in the error message.
fn assert_fails(args: &[&Path], expected: &str) {
    let output = replay(args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "exit code; stderr: {stderr}");
    assert!(
        stderr.contains(expected),
        "expected {expected:?} in: {stderr}"
    );
    assert!(
        output.stdout.is_empty(),
        "no verdicts on failure: {}",
        String::from_utf8_lossy(&output.stdout)
    );
}

#[test]
fn bad_inputs_fail_with_a_clear_message() {
    let scratch = Scratch::new("errors");
    let policy = scratch.file("policy.toml");
    let config = Path::new("--config");

    let missing = scratch.file("missing.pcap");
    assert_fails(&[config, &policy, &missing], "cannot open capture");

    let text = scratch.file("notes.txt");
    std::fs::write(&text, "these are not packets\n").unwrap();
    assert_fails(&[config, &policy, &text], "is not a pcap or pcapng capture");

    let raw_ip = scratch.file("raw-ip.pcap");
    write_pcap(&raw_ip, DataLink::RAW, &[vec![0x45; 40]]);
    assert_fails(&[config, &policy, &raw_ip], "replay needs Ethernet frames");

    let runt = scratch.file("runt.pcap");
    write_pcap(&runt, DataLink::ETHERNET, &[arp(), vec![0xff; 9]]);
    assert_fails(&[config, &policy, &runt], "frame 2 of");

    let truncated = scratch.file("truncated.pcap");
    write_pcap(&truncated, DataLink::ETHERNET, &[arp()]);
    let bytes = std::fs::read(&truncated).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() - 10]).unwrap();
    assert_fails(&[config, &policy, &truncated], "reading capture");

    let bad_policy = scratch.file("bad.toml");
    std::fs::write(&bad_policy, "[[subscribers]]\nprefix = \"100.64.0.1/10\"\n").unwrap();
    assert_fails(&[config, &bad_policy, &raw_ip], "host bits");
}

#[test]
fn rejected_frames_show_tx_and_their_replies_are_written_to_a_pcap() {
    let scratch = Scratch::new("reject");
    let policy = POLICY.replace(
        "prefix = \"100.64.0.0/10\"\n",
        "prefix = \"100.64.0.0/10\"\naction = \"reject\"\nrate = 1\nper = \"1h\"\n",
    );
    std::fs::write(scratch.file("policy.toml"), policy).unwrap();
    let syn = FrameSpec::tcp(ip("100.64.0.2"), ip("198.51.100.7"), 25, TCP_SYN).build();
    let capture = scratch.file("edge.pcap");
    write_pcap(&capture, DataLink::ETHERNET, &[syn.clone(), syn]);
    let replies = scratch.file("replies.pcap");
    let stdout = replayed(&[
        Path::new("--config"),
        &scratch.file("policy.toml"),
        &capture,
        Path::new("--write-pcap"),
        &replies,
    ]);
    // One reply (rate = 1), then the bucket is empty.
    assert_eq!(
        frame_rows(&stdout, 2),
        [["1", "tx", "rejected"], ["2", "drop", "dropped"]],
        "{stdout}"
    );
    let mut reader = pcap_file::pcap::PcapReader::new(File::open(&replies).unwrap()).unwrap();
    let reply = reader
        .next_packet()
        .expect("one reply")
        .unwrap()
        .into_owned();
    assert!(reader.next_packet().is_none(), "only one reply");
    assert_eq!(reply.timestamp, Duration::from_millis(1), "frame 1's reply");
    // A reset: Ethernet, IPv4 of 40 bytes from the MX back to the bot, TCP RST+ACK.
    let data = reply.data;
    assert_eq!(data.len(), 14 + 40);
    assert_eq!(&data[26..30], &[198, 51, 100, 7]);
    assert_eq!(&data[30..34], &[100, 64, 0, 2]);
    assert_eq!(data[14 + 20 + 13], 0x14, "RST+ACK");

    // The summary counts the reply, and the host its reply and the attempt the bucket refused.
    let output = replay(&[
        Path::new("--config"),
        &scratch.file("policy.toml"),
        &capture,
        Path::new("--format"),
        Path::new("json"),
    ]);
    let stdout = String::from_utf8(output.stdout).unwrap();
    let summary: serde_json::Value =
        serde_json::from_str(stdout.lines().last().expect("a summary")).unwrap();
    let summary = &summary["summary"];
    assert_eq!(
        (&summary["tx"], &summary["dropped"], &summary["passed"]),
        (&1.into(), &1.into(), &0.into()),
        "{stdout}"
    );
    let host = &summary["hosts"][0];
    assert_eq!(
        (&host["host"], &host["replies"], &host["limited"]),
        (&"100.64.0.2".into(), &1.into(), &1.into()),
        "{stdout}"
    );
}

/// A replay that must succeed: what it printed.
fn replayed(args: &[&Path]) -> String {
    let output = replay(args);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The first `n` frame rows of a replay's table, split into columns.
fn frame_rows(stdout: &str, n: usize) -> Vec<Vec<&str>> {
    stdout
        .lines()
        .skip(1)
        .take(n)
        .map(|l| l.split_whitespace().collect())
        .collect()
}
