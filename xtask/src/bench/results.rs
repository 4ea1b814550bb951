//! The JSON bench_dataplane writes (tests/src/bin/bench_dataplane/main.rs), as far as the
//! renderer reads it.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
pub struct Results {
    pub machine: Machine,
    pub quick: bool,
    pub repeat: u32,
    pub runs: u32,
    pub programs: Vec<Program>,
    pub cases: Vec<Case>,
    #[serde(default)]
    pub two_cpus: Option<TwoCpus>,
    /// The drop path's stage profile; absent from runs before it.
    #[serde(default)]
    pub stages: Option<Stages>,
    /// `reject` and `ratelimit` next to the drop path; absent from runs before them.
    #[serde(default)]
    pub actions: Option<Actions>,
    #[serde(default)]
    pub actions_error: Option<String>,
    pub scale: Scale,
    pub control_plane: ControlPlane,
    pub end_to_end: Option<EndToEnd>,
    pub end_to_end_error: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct Machine {
    pub cpu_model: String,
    pub cores: usize,
    pub kernel: String,
}

#[derive(Debug, Deserialize)]
pub struct Program {
    pub key: String,
    pub description: String,
    pub size: ProgramSize,
}

#[derive(Debug, Deserialize)]
pub struct ProgramSize {
    pub verified_insns: u32,
    pub xlated_insns: u32,
    pub jited_bytes: u32,
}

#[derive(Debug, Deserialize)]
pub struct Case {
    pub key: String,
    pub description: String,
    pub frame_bytes: usize,
    pub results: BTreeMap<String, Timing>,
}

#[derive(Debug, Deserialize)]
pub struct Timing {
    pub ns: u32,
    pub action: String,
}

/// The enforcement actions' per-packet cost: live frames timed by the thread's CPU time,
/// single repetitions from the frame as given and ordinary test runs timed by the kernel.
#[derive(Debug, Deserialize)]
pub struct Actions {
    pub repeat: u32,
    pub runs: u32,
    pub live: Vec<ActionTiming>,
    pub fresh: Vec<ActionTiming>,
    pub fresh_calls: u32,
    pub kernel: Vec<ActionTiming>,
    pub note: String,
}

#[derive(Debug, Deserialize)]
pub struct ActionTiming {
    pub key: String,
    pub description: String,
    pub action: String,
    pub ns: u32,
}

impl Actions {
    /// The live-frames figure of `key`.
    pub fn live_ns(&self, key: &str) -> Option<f64> {
        find_ns(&self.live, key)
    }

    /// What the reject case `key` costs as sent, put together from its parts: the drop
    /// path's live figure, what judging and building the reply adds to it (single
    /// repetitions, no transmit) and what transmitting adds to dropping (the tx floor
    /// against the drop floor, live). Returns (total, build, transmit).
    pub fn reject_as_sent(&self, key: &str) -> Option<(f64, f64, f64)> {
        let build = find_ns(&self.fresh, key)? - find_ns(&self.fresh, "drop")?;
        let transmit = self.live_ns("tx-floor")? - self.live_ns("drop-floor")?;
        Some((self.live_ns("drop")? + build + transmit, build, transmit))
    }
}

/// The figure of `key` among `timings`.
pub fn find_ns(timings: &[ActionTiming], key: &str) -> Option<f64> {
    timings
        .iter()
        .find(|timing| timing.key == key)
        .map(|timing| f64::from(timing.ns))
}

/// Builds of the kernel program that stop early, timed on the drop case (ns/packet).
#[derive(Debug, Deserialize)]
pub struct Stages {
    pub loads: usize,
    pub hosts: u32,
    pub peer_ns: u32,
    pub floor_ns: u32,
    pub stages: Vec<Stage>,
}

impl Stages {
    /// The ns/packet of the build `key`.
    pub fn ns(&self, key: &str) -> Option<f64> {
        self.stages
            .iter()
            .find(|stage| stage.key == key)
            .map(|stage| stage.ns)
    }
}

#[derive(Debug, Deserialize)]
pub struct Stage {
    pub key: String,
    pub ns: f64,
    pub loads: Vec<u32>,
}

/// The drop path's ns/packet per CPU, alone and with both CPUs judging at once.
#[derive(Debug, Deserialize)]
pub struct TwoCpus {
    pub smtpguard_alone: u32,
    pub smtpguard_one_host: u32,
    pub smtpguard_two_hosts: u32,
    /// Missing from results written before it was measured.
    #[serde(default)]
    pub smtpguard_one_host_two_destinations: Option<u32>,
    pub peer_alone: u32,
    pub peer_both: u32,
}

#[derive(Debug, Deserialize)]
pub struct Scale {
    pub subscribers: u32,
    pub exemptions: u32,
    pub hosts: u32,
    pub hosts_in_map: usize,
    pub hosts_in_table: u64,
    pub fill_subscribers_s: f64,
    pub fill_exemptions_s: f64,
    pub fill_hosts_s: f64,
}

#[derive(Debug, Deserialize)]
pub struct ControlPlane {
    pub exempt_add_small_ms: f64,
    pub exempt_add_large_ms: f64,
    pub full_reconcile_large_ms: f64,
    /// One statistics snapshot of 1,000,000 active hosts (absent in results of older runs).
    #[serde(default)]
    pub snapshot_1m_hosts_s: Option<f64>,
    /// The abuse-desk report over the 24 h that snapshot recorded (read + build).
    pub report_1m_hosts_s: Option<f64>,
    #[serde(default)]
    pub report_1m_rows: Option<usize>,
    /// Those rows written out as CSV (into a sink), seconds.
    #[serde(default)]
    pub report_1m_csv_s: Option<f64>,
}

#[derive(Debug, Deserialize)]
pub struct EndToEnd {
    pub frames_per_filter: u64,
    pub filters: Vec<FloodResult>,
    pub trafgen: Vec<FloodResult>,
    /// smtpguard under floods whose sources vary (absent in results of older runs).
    #[serde(default)]
    pub mixes: Vec<FloodResult>,
    pub cpu_note: String,
}

#[derive(Debug, Deserialize)]
pub struct FloodResult {
    pub filter: String,
    pub sender: String,
    pub sent: u64,
    pub dropped: u64,
    pub seconds: f64,
    pub dropped_per_s: f64,
    /// Gateway CPU time (softirq + system, all CPUs) per million dropped frames, seconds.
    pub cpu_s_per_mdrop: f64,
    /// Frames the subscriber's veth could not hand to the gateway (its ring was full).
    #[serde(default)]
    pub refused: u64,
    /// Frames an XDP filter judged and passed; none for nftables.
    #[serde(default)]
    pub passed: Option<u64>,
}

impl Case {
    pub fn ns(&self, program: &str) -> Option<f64> {
        self.results.get(program).map(|timing| f64::from(timing.ns))
    }

    pub fn action(&self, program: &str) -> &str {
        self.results
            .get(program)
            .map_or("?", |timing| timing.action.as_str())
    }
}
