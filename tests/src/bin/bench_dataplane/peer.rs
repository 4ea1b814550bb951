//! The peer: Debian's xdp-filter, filtering TCP port 25, loaded the way an operator would
//! (`xdp-filter load`, `xdp-filter port 25 -p tcp`) on a veth of a namespace of our own, then
//! opened by program id so that the benchmark can test-run it like any other program.

use std::{os::fd::OwnedFd, process::Command};

use anyhow::{Context as _, Result, bail};
use smtpguard_tests::lab::Netns;

use crate::bpf;

/// xdp-filter loaded in a namespace; the namespace (with the veth, so the attachment) is
/// deleted on drop, and the program goes away with the last fd.
pub struct XdpFilter {
    pub program: OwnedFd,
    pub name: String,
    _netns: Netns,
}

/// xdp-filter's smallest variant that filters TCP ports (`-f tcp`, policy allow): the fastest
/// program it can load for this job, so the comparison favours the peer.
const FEATURES: &str = "tcp";

impl XdpFilter {
    pub fn load() -> Result<Self> {
        let netns = Netns::new("xdpfilter")?;
        netns.ip(&["link", "add", "pf0", "type", "veth", "peer", "name", "pf1"])?;
        netns.ip(&["link", "set", "pf0", "up"])?;
        netns.ip(&["link", "set", "pf1", "up"])?;
        // `ip netns exec` gives each command its own /sys, so bpffs (where xdp-filter keeps its
        // maps) is mounted and used within one shell.
        let script = format!(
            "mount -t bpf bpf /sys/fs/bpf && xdp-filter load -f {FEATURES} pf0 && \
             xdp-filter port 25 -p tcp && bpftool net -j"
        );
        let output = Command::new("ip")
            .args(["netns", "exec", netns.name(), "sh", "-c", &script])
            .output()
            .context("running xdp-filter (xdp-tools)")?;
        if !output.status.success() {
            bail!(
                "loading xdp-filter failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        let json = stdout
            .lines()
            .find(|line| line.starts_with('['))
            .with_context(|| format!("no `bpftool net -j` output in {stdout}"))?;
        let id = xdp_program_id(json, "pf0")?;
        let program = bpf::program_by_id(id)?;
        let name = program_name(id)?;
        Ok(Self {
            program,
            name,
            _netns: netns,
        })
    }
}

/// The id of the XDP program on `interface` in `bpftool net -j` output.
fn xdp_program_id(json: &str, interface: &str) -> Result<u32> {
    let value: serde_json::Value = serde_json::from_str(json).context("parsing bpftool net -j")?;
    value
        .get(0)
        .and_then(|net| net.get("xdp"))
        .and_then(|xdp| xdp.as_array())
        .into_iter()
        .flatten()
        .find(|entry| entry.get("devname").and_then(|name| name.as_str()) == Some(interface))
        .and_then(|entry| entry.get("id"))
        .and_then(|id| id.as_u64())
        .and_then(|id| u32::try_from(id).ok())
        .with_context(|| format!("no XDP program on {interface} in {json}"))
}

fn program_name(id: u32) -> Result<String> {
    let output = Command::new("bpftool")
        .args(["prog", "show", "id", &id.to_string(), "--json"])
        .output()
        .context("running bpftool")?;
    let value: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("parsing bpftool prog show --json")?;
    Ok(value
        .get("name")
        .and_then(|name| name.as_str())
        .unwrap_or("?")
        .to_owned())
}
