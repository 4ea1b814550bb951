//! The drop path on both CPUs at once: one `BPF_PROG_TEST_RUN` per CPU, run together, so the
//! programs judge in parallel as they do under a flood spread by RSS. A bot's segments on two
//! CPUs update one statistics entry, whose cache line then moves between the CPUs on every
//! segment; two bots on two CPUs each keep their own. A bot's connections to many MX hosts
//! are spread over the CPUs by RSS (it hashes the addresses and ports), so the host's
//! segments alternate destinations as well: each is a new last destination for its entry.
//! xdp-filter keeps no per-host state and shows what parallel runs cost without it.

use std::{os::fd::BorrowedFd, thread};

use anyhow::{Context as _, Result, anyhow};
use nix::{sched::CpuSet, unistd::Pid};
use serde::Serialize;

use crate::bpf;

/// ns/packet per CPU (the mean of the CPUs' figures, median over the runs).
#[derive(Serialize)]
pub struct TwoCpus {
    pub smtpguard_alone: u32,
    /// Both CPUs judge segments of the same host.
    pub smtpguard_one_host: u32,
    /// Each CPU judges segments of a host of its own.
    pub smtpguard_two_hosts: u32,
    /// Both CPUs judge segments of the same host, each CPU to a destination of its own.
    pub smtpguard_one_host_two_destinations: u32,
    pub peer_alone: u32,
    pub peer_both: u32,
}

/// Dropped segments: `one_host` and `other_host` of two hosts, `other_destination` of the
/// first host to another destination.
pub struct Segments<'a> {
    pub one_host: &'a [u8],
    pub other_host: &'a [u8],
    pub other_destination: &'a [u8],
}

pub fn measure(
    ours: BorrowedFd<'_>,
    peer: BorrowedFd<'_>,
    segments: &Segments<'_>,
    repeat: u32,
    runs: u32,
) -> Result<TwoCpus> {
    let Segments {
        one_host,
        other_host,
        other_destination,
    } = *segments;
    let mut samples: [Vec<u32>; 6] = Default::default();
    for _ in 0..runs {
        samples[0].push(on_cpus(&[(ours, one_host)], repeat)?);
        samples[1].push(on_cpus(&[(ours, one_host), (ours, one_host)], repeat)?);
        samples[2].push(on_cpus(&[(ours, one_host), (ours, other_host)], repeat)?);
        samples[3].push(on_cpus(&[(peer, one_host)], repeat)?);
        samples[4].push(on_cpus(&[(peer, one_host), (peer, one_host)], repeat)?);
        samples[5].push(on_cpus(
            &[(ours, one_host), (ours, other_destination)],
            repeat,
        )?);
    }
    let [alone, one, two, peer_alone, peer_both, split] = samples.map(|mut runs| {
        runs.sort_unstable();
        runs[runs.len() / 2]
    });
    Ok(TwoCpus {
        smtpguard_alone: alone,
        smtpguard_one_host: one,
        smtpguard_two_hosts: two,
        smtpguard_one_host_two_destinations: split,
        peer_alone,
        peer_both,
    })
}

/// Runs each (program, frame) on a CPU of its own (CPU 0, 1, ...), all at once: the mean of
/// their ns/packet.
fn on_cpus(runs: &[(BorrowedFd<'_>, &[u8])], repeat: u32) -> Result<u32> {
    let results: Vec<Result<u32>> = thread::scope(|scope| {
        let handles: Vec<_> = runs
            .iter()
            .enumerate()
            .map(|(cpu, (program, frame))| {
                scope.spawn(move || -> Result<u32> {
                    let mut set = CpuSet::new();
                    set.set(cpu).with_context(|| format!("CPU {cpu}"))?;
                    nix::sched::sched_setaffinity(Pid::from_raw(0), &set)
                        .with_context(|| format!("pinning a test run to CPU {cpu}"))?;
                    Ok(bpf::test_run(*program, frame, repeat, None)?.ns)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| {
                handle
                    .join()
                    .map_err(|_| anyhow!("a test-run thread panicked"))?
            })
            .collect()
    });
    let ns = results.into_iter().collect::<Result<Vec<u32>>>()?;
    Ok(ns.iter().sum::<u32>() / ns.len() as u32)
}
