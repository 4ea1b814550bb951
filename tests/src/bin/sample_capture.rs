//! Writes the sample capture that `cargo xtask demo` replays: a short story of what a border
//! gateway sees on a subscriber-facing link, told against deploy/smtpguard.example.toml
//! with its two broad subscriber ranges enforced (xtask's demo writes that config).
//!
//! Usage: sample_capture OUT.pcap

use std::{fs::File, io::BufWriter, net::IpAddr, path::PathBuf, time::Duration};

use anyhow::{Context as _, bail};
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use smtpguard_tests::frames::{self, Extension, FrameSpec, QINQ_PPPOE, TCP_ACK, TCP_SYN, Upper};

/// The capture starts at 2026-01-01T00:00:00Z; frames follow one millisecond apart.
const START: Duration = Duration::from_secs(1_767_225_600);

fn ip(address: &str) -> IpAddr {
    address.parse().expect("a literal address")
}

/// (what the frame is, what the example config makes of it, the frame).
fn story() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let subscriber = ip("100.64.0.2");
    let mx = ip("198.51.100.7");
    let subscriber6 = ip("2001:db8:1000::2");
    let mx6 = ip("2001:db8:ffff::7");
    vec![
        (
            "subscriber 100.64.0.2 -> MX 198.51.100.7:25, SYN",
            "dropped",
            FrameSpec::tcp(subscriber, mx, 25, TCP_SYN).build(),
        ),
        (
            "the same subscriber -> another MX 198.51.100.8:25, SYN",
            "dropped",
            FrameSpec::tcp(subscriber, ip("198.51.100.8"), 25, TCP_SYN).build(),
        ),
        (
            "the same subscriber -> the ISP relay 192.0.2.25:25, SYN",
            "relayed",
            FrameSpec::tcp(subscriber, ip("192.0.2.25"), 25, TCP_SYN).build(),
        ),
        (
            "the same subscriber -> 198.51.100.7:587 (submission), SYN",
            "other",
            FrameSpec::tcp(subscriber, mx, 587, TCP_SYN).build(),
        ),
        (
            "business customer 100.64.10.5 (exempt block) -> MX:25, SYN",
            "exempt",
            FrameSpec::tcp(ip("100.64.10.5"), mx, 25, TCP_SYN).build(),
        ),
        (
            "100.127.0.9 (monitor-mode region) -> MX:25, SYN",
            "monitored",
            FrameSpec::tcp(ip("100.127.0.9"), mx, 25, TCP_SYN).build(),
        ),
        (
            "203.0.113.9 (not a subscriber) -> MX:25, SYN",
            "not-subscriber",
            FrameSpec::tcp(ip("203.0.113.9"), mx, 25, TCP_SYN).build(),
        ),
        (
            "subscriber DNS query to 192.0.2.53:53 (UDP)",
            "other",
            FrameSpec::udp(subscriber, ip("192.0.2.53"), 53)
                .payload(&[0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0])
                .build(),
        ),
        ("an ARP request", "other", frames::arp()),
        (
            "subscriber's own mail server answering from port 25, SYN+ACK",
            "other",
            FrameSpec {
                upper: Upper::Tcp {
                    src_port: 25,
                    dst_port: 40_000,
                    flags: TCP_SYN | TCP_ACK,
                },
                ..FrameSpec::tcp(subscriber, mx, 40_000, TCP_SYN | TCP_ACK)
            }
            .build(),
        ),
        (
            "IPv6 subscriber 2001:db8:1000::2 -> [2001:db8:ffff::7]:25, SYN",
            "dropped",
            FrameSpec::tcp(subscriber6, mx6, 25, TCP_SYN).build(),
        ),
        (
            "IPv6 subscriber -> the ISP relay [2001:db8:25::25]:25, SYN",
            "relayed",
            FrameSpec::tcp(subscriber6, ip("2001:db8:25::25"), 25, TCP_SYN).build(),
        ),
        (
            "subscriber 100.64.0.3 behind QinQ (100/200) + PPPoE -> MX:25, SYN",
            "dropped",
            FrameSpec::tcp(ip("100.64.0.3"), mx, 25, TCP_SYN)
                .wrappers(QINQ_PPPOE)
                .build(),
        ),
        (
            "IPv6 subscriber -> MX:25 behind hop-by-hop, routing, dest-options headers",
            "dropped",
            FrameSpec::tcp(subscriber6, mx6, 25, TCP_SYN)
                .extension(Extension::HopByHop { len_units: 0 })
                .extension(Extension::Routing { len_units: 0 })
                .extension(Extension::DestinationOptions { len_units: 1 })
                .build(),
        ),
        (
            "subscriber IPv4 fragment at offset 1 (overwrites TCP flags, RFC 1858)",
            "fragment-dropped",
            FrameSpec::tcp(subscriber, mx, 25, TCP_SYN)
                .ipv4_fragment(1, false)
                .upper_len(12)
                .build(),
        ),
        (
            "IPv6 subscriber first fragment with only 8 bytes of TCP (RFC 7112)",
            "fragment-dropped",
            FrameSpec::tcp(subscriber6, mx6, 25, TCP_SYN)
                .extension(Extension::Fragment {
                    offset: 0,
                    more: true,
                })
                .upper_len(8)
                .build(),
        ),
    ]
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args_os().skip(1);
    let (Some(out), None) = (args.next(), args.next()) else {
        bail!("usage: sample_capture OUT.pcap");
    };
    let out = PathBuf::from(out);
    let file = File::create(&out).with_context(|| format!("creating {}", out.display()))?;
    let mut writer = PcapWriter::with_header(BufWriter::new(file), PcapHeader::default())
        .with_context(|| format!("writing the pcap header to {}", out.display()))?;
    let story = story();
    println!("{:>5}  {:<16}  CONTENT", "FRAME", "EXPECTED REASON");
    for ((number, (description, expected, frame)), ms) in (1..).zip(&story).zip(0..) {
        let len = u32::try_from(frame.len()).context("frame length")?;
        let timestamp = START + Duration::from_millis(ms);
        writer
            .write_packet(&PcapPacket::new(timestamp, len, frame))
            .with_context(|| format!("writing frame {number} to {}", out.display()))?;
        println!("{number:>5}  {expected:<16}  {description}");
    }
    writer
        .into_writer()
        .into_inner()
        .map_err(|error| error.into_error())
        .with_context(|| format!("writing {}", out.display()))?;
    // The expected reasons, one per line, so whoever replays the capture can check the result.
    let expected_path = out.with_extension("expected");
    let expected: String = story
        .iter()
        .map(|(_, reason, _)| format!("{reason}\n"))
        .collect();
    std::fs::write(&expected_path, expected)
        .with_context(|| format!("writing {}", expected_path.display()))?;
    println!(
        "wrote {} frames to {} (expected reasons in {})",
        story.len(),
        out.display(),
        expected_path.display()
    );
    Ok(())
}
