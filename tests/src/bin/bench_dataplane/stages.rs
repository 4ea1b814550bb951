//! The drop path's stage profile: builds of the kernel program that stop after the parser,
//! after the policy checks and after the host lookup (smtpguard-ebpf/src/stage.rs), timed on
//! the drop case in the same rounds as the whole program and xdp-filter. What each stage
//! adds is the difference between neighbours: the cost of a part of the path measured on the
//! code itself, where a sampling profile (no hardware counters in these virtual machines,
//! only the timer, and its skid) spreads the time over the wrong instructions.
//!
//! Each build is loaded [`LOADS`] times and its loads' medians averaged: where the JIT puts
//! a program moves its time by up to 15 % here (one build loaded three times measured 80, 97
//! and 88 ns), more than some stages cost.

use std::{
    fs,
    os::fd::{AsFd as _, BorrowedFd},
    path::PathBuf,
};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;
use smtpguard::{config::Config, dataplane::Dataplane, policy::DesiredPolicy};

use crate::{bpf, median_u32};

pub const LOADS: usize = 3;

/// The host table of every instance here: the drop case needs one host, and twelve instances
/// with the production table (256 MiB each) would hold 3 GiB. The same for every build.
const HOSTS: u32 = 65_536;

#[derive(Serialize)]
pub struct Stages {
    pub loads: usize,
    /// The host table's size in every instance.
    pub hosts: u32,
    /// xdp-filter on the same frame, in the same rounds (ns/packet, median).
    pub peer_ns: u32,
    /// The test-run floor (`r0 = XDP_PASS; exit`), in the same rounds.
    pub floor_ns: u32,
    /// In path order, the whole program last (key "whole").
    pub stages: Vec<Stage>,
}

#[derive(Serialize)]
pub struct Stage {
    pub key: String,
    /// The mean of the loads' medians.
    pub ns: f64,
    /// Each load's median.
    pub loads: Vec<u32>,
}

/// `builds` are (stage, object) in path order; `frame` is a segment every stage drops.
pub fn measure(
    config: &Config,
    builds: &[(String, PathBuf)],
    peer: BorrowedFd<'_>,
    frame: &[u8],
    repeat: u32,
    runs: u32,
) -> Result<Stages> {
    let mut config = config.clone();
    config.capacity.hosts = HOSTS;
    let policy = DesiredPolicy::from_config(&config);
    let mut keys: Vec<String> = builds.iter().map(|(key, _)| key.clone()).collect();
    keys.push("whole".into());
    let mut instances = Vec::new();
    for _ in 0..LOADS {
        for (key, path) in builds {
            let object = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            let mut instance = Dataplane::load_object(&object, &config.capacity)
                .with_context(|| format!("loading the {key} stage ({})", path.display()))?;
            instance.policy_maps()?.reconcile(&policy)?;
            instances.push(instance);
        }
        instances.push(Dataplane::with_policy(&config)?);
    }
    let floor = bpf::load_floor()?;
    let mut programs = vec![floor.as_fd(), peer];
    for instance in &instances {
        programs.push(instance.xdp_program_fd()?);
    }
    for (index, program) in programs.iter().enumerate().skip(2) {
        // The warm-up also makes the host's entry, which the later runs find.
        bpf::test_run(*program, frame, repeat / 10, None)?;
        let action = bpf::test_run(*program, frame, 1, None)?.action;
        if action != bpf::XDP_DROP {
            let key = &keys[(index - 2) % keys.len()];
            bail!("the {key} stage returned {action} on the drop case, expected XDP_DROP");
        }
    }
    let mut samples = vec![Vec::new(); programs.len()];
    for _ in 0..runs {
        for (program, samples) in programs.iter().zip(&mut samples) {
            samples.push(bpf::test_run(*program, frame, repeat, None)?.ns);
        }
    }
    let medians: Vec<u32> = samples.iter().map(|runs| median_u32(runs)).collect();
    let stages = keys
        .iter()
        .enumerate()
        .map(|(k, key)| {
            let loads: Vec<u32> = (0..LOADS)
                .map(|l| medians[2 + l * keys.len() + k])
                .collect();
            Stage {
                key: key.clone(),
                ns: loads.iter().map(|ns| f64::from(*ns)).sum::<f64>() / LOADS as f64,
                loads,
            }
        })
        .collect();
    Ok(Stages {
        loads: LOADS,
        hosts: HOSTS,
        peer_ns: medians[1],
        floor_ns: medians[0],
        stages,
    })
}
