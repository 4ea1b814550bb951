//! `smtpguard replay`: the real kernel program over every frame of a capture, in private maps
//! filled from a config, so an operator sees what a policy would do before deploying it.

use std::{
    fs::File,
    io::{BufReader, Read},
    path::{Path, PathBuf},
};

use pcap_file::{
    DataLink,
    pcap::PcapReader,
    pcapng::{Block, PcapNgReader},
};
use smtpguard_common::{HostStats, REASON_COUNT, Reason};

use crate::{
    config::Config,
    dataplane::{Dataplane, DataplaneError},
    report::RowSubject,
};

/// The shortest frame the kernel's XDP test run accepts: an Ethernet header.
const MIN_FRAME_LEN: usize = 14;

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("cannot open capture {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} is not a pcap or pcapng capture (it starts with {magic}); expected a file written by tcpdump, tshark or Wireshark"
    )]
    NotACapture { path: PathBuf, magic: String },
    #[error("reading capture {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: pcap_file::PcapError,
    },
    #[error(
        "{path} has link type {link:?}; replay needs Ethernet frames (link type EN10MB), as captured on a subscriber-facing interface"
    )]
    LinkType { path: PathBuf, link: DataLink },
    #[error(
        "frame {frame} of {path} is {len} bytes long; an Ethernet frame has at least {MIN_FRAME_LEN}"
    )]
    Runt {
        path: PathBuf,
        frame: usize,
        len: usize,
    },
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error("frame {frame}: the program returned {action} without moving a reason counter")]
    Uncounted { frame: usize, action: u32 },
}

/// What the program did with one frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameVerdict {
    /// Position in the capture, from 1.
    pub frame: usize,
    pub verdict: &'static str,
    pub reason: Reason,
    /// The frame the program sent back (`tx`: the reply to a rejected SYN).
    pub reply: Option<Vec<u8>>,
}

pub struct ReplayReport {
    pub frames: Vec<FrameVerdict>,
    pub counters: [u64; REASON_COUNT as usize],
    /// Each host as the policy counts it (an IPv6 host is its /64 by default).
    pub hosts: Vec<(RowSubject, HostStats)>,
}

/// Loads the program with `config`'s policy and runs every frame of `capture` through the
/// XDP entry point, in order.
pub fn replay(config: &Config, capture: &Path) -> Result<ReplayReport, ReplayError> {
    let frames = read_ethernet_frames(capture)?;
    let mut dataplane = Dataplane::with_policy(config)?;
    let mut verdicts = Vec::with_capacity(frames.len());
    for (frame, data) in (1..).zip(&frames) {
        let (outcome, out) = dataplane.run_xdp_traced(data)?;
        let reason = outcome.reason.ok_or(ReplayError::Uncounted {
            frame,
            action: outcome.action,
        })?;
        let verdict = xdp_action_name(outcome.action);
        verdicts.push(FrameVerdict {
            frame,
            verdict,
            reason,
            reply: (verdict == "tx").then_some(out),
        });
    }
    Ok(ReplayReport {
        frames: verdicts,
        counters: dataplane.counters()?,
        hosts: dataplane
            .hosts()?
            .into_iter()
            .map(|(host, stats)| (RowSubject::new(config.enforcement.host_of(host)), stats))
            .collect(),
    })
}

/// The name of an XDP action (`xdp_action`), as replay and the bench show it.
pub fn xdp_action_name(action: u32) -> &'static str {
    match action {
        0 => "aborted",
        1 => "drop",
        2 => "pass",
        3 => "tx",
        4 => "redirect",
        _ => "unknown",
    }
}

/// Every frame of a pcap or pcapng file whose link type is Ethernet.
pub fn read_ethernet_frames(path: &Path) -> Result<Vec<Vec<u8>>, ReplayError> {
    let open = || {
        File::open(path).map_err(|source| ReplayError::Open {
            path: path.to_owned(),
            source,
        })
    };
    let mut magic = [0u8; 4];
    let read = open()?
        .read(&mut magic)
        .map_err(|source| ReplayError::Open {
            path: path.to_owned(),
            source,
        })?;
    let reader = BufReader::new(open()?);
    let read_error = |source| ReplayError::Read {
        path: path.to_owned(),
        source,
    };
    let frames = match u32::from_le_bytes(magic) {
        // Section header block type, the same in either byte order.
        0x0a0d_0d0a => read_pcapng(reader, path, read_error)?,
        // Microsecond and nanosecond pcap, in either byte order.
        0xa1b2_c3d4 | 0xd4c3_b2a1 | 0xa1b2_3c4d | 0x4d3c_b2a1 => {
            let mut pcap = PcapReader::new(reader).map_err(read_error)?;
            let link = pcap.header().datalink;
            if link != DataLink::ETHERNET {
                return Err(ReplayError::LinkType {
                    path: path.to_owned(),
                    link,
                });
            }
            let mut frames = Vec::new();
            while let Some(packet) = pcap.next_packet() {
                frames.push(packet.map_err(read_error)?.data.into_owned());
            }
            frames
        }
        _ => {
            return Err(ReplayError::NotACapture {
                path: path.to_owned(),
                magic: magic[..read]
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(" "),
            });
        }
    };
    if let Some((index, frame)) = frames
        .iter()
        .enumerate()
        .find(|(_, frame)| frame.len() < MIN_FRAME_LEN)
    {
        return Err(ReplayError::Runt {
            path: path.to_owned(),
            frame: index + 1,
            len: frame.len(),
        });
    }
    Ok(frames)
}

fn read_pcapng(
    reader: BufReader<File>,
    path: &Path,
    read_error: impl Fn(pcap_file::PcapError) -> ReplayError,
) -> Result<Vec<Vec<u8>>, ReplayError> {
    let mut pcapng = PcapNgReader::new(reader).map_err(&read_error)?;
    let mut links = Vec::new();
    let mut frames = Vec::new();
    while let Some(block) = pcapng.next_block() {
        let (interface, data) = match block.map_err(&read_error)? {
            Block::InterfaceDescription(interface) => {
                links.push(interface.linktype);
                continue;
            }
            Block::EnhancedPacket(packet) => (packet.interface_id as usize, packet.data),
            Block::SimplePacket(packet) => (0, packet.data),
            Block::Packet(packet) => (packet.interface_id as usize, packet.data),
            _ => continue,
        };
        let link = links.get(interface).copied().unwrap_or(DataLink::NULL);
        if link != DataLink::ETHERNET {
            return Err(ReplayError::LinkType {
                path: path.to_owned(),
                link,
            });
        }
        frames.push(data.into_owned());
    }
    Ok(frames)
}
