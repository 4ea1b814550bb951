//! A real `smtpguard run` for the benchmarks (tests/src/bin/bench_*): on a namespace gateway
//! of its own, with temporary state and pin folders, killed on drop (its pins go with its
//! folder); and how those benchmarks sum up their latencies ([`quantile_ms`]).

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Result, ensure};
use aya::maps::{LpmTrie, Map, MapData};
use smtpguard_common::{SourcePolicy, maps as names};

use crate::lab::{GatewayLab, PinFolder, SUBSCRIBER_INTERFACE};

/// The `q` quantile (0.5: the median, 1: the largest) of `sorted`, in milliseconds.
pub fn quantile_ms(sorted: &[Duration], q: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[index].as_secs_f64() * 1000.0
}

pub struct BenchAgent {
    child: Child,
    binary: PathBuf,
    pub pins: PinFolder,
    pub config: PathBuf,
    _lab: GatewayLab,
    _dir: tempfile::TempDir,
}

impl Drop for BenchAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl BenchAgent {
    /// Starts `binary` and waits until it answers. Its config is what `tables` writes (given
    /// the agent's temporary folder, for files such as secrets) followed by an `[agent]`
    /// table with the agent's own interfaces, folders and `metrics_listen`.
    pub fn start(
        binary: &Path,
        name: &str,
        metrics_listen: &str,
        tables: impl FnOnce(&Path) -> Result<String>,
    ) -> Result<Self> {
        let lab = GatewayLab::new()?;
        let dir = tempfile::tempdir()?;
        let pins = PinFolder::new(name);
        let config = dir.path().join("smtpguard.toml");
        let text = format!(
            r#"{tables}[agent]
interfaces = ["{SUBSCRIBER_INTERFACE}"]
netns = "{netns}"
state_dir = "{state}"
socket = "{socket}"
metrics_listen = "{metrics_listen}"
pin_dir = "{pins}"
log_level = "warn"
"#,
            tables = tables(dir.path())?,
            netns = lab.gateway.name(),
            state = dir.path().join("state").display(),
            socket = dir.path().join("sg.sock").display(),
            pins = pins.0.root().display(),
        );
        std::fs::write(&config, text)?;
        let child = Command::new(binary)
            .arg("--config")
            .arg(&config)
            .arg("run")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let agent = Self {
            child,
            binary: binary.to_owned(),
            pins,
            config,
            _lab: lab,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !agent.cli(&["status"])?.status.success() {
            ensure!(Instant::now() < deadline, "agent {name} did not answer");
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(agent)
    }

    /// `smtpguard --config CONFIG args...`
    pub fn cli(&self, args: &[&str]) -> Result<Output> {
        Ok(Command::new(&self.binary)
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .output()?)
    }

    /// This agent's IPv4 source trie, read from its pin.
    pub fn sources(&self) -> Result<LpmTrie<MapData, [u8; 4], SourcePolicy>> {
        let data = MapData::from_pin(self.pins.0.map(names::SOURCES_V4))?;
        Ok(LpmTrie::try_from(Map::LpmTrie(data))?)
    }
}
