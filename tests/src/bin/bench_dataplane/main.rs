//! The measuring half of `cargo xtask bench`: times smtpguard's XDP program, a floor program
//! and xdp-filter on the same frames with `BPF_PROG_TEST_RUN`, at small and production map
//! sizes, times the control plane, drives a flood through a namespace gateway, and writes
//! every figure as JSON. xtask renders the table, the chart and docs/benchmarks.md from it.
//!
//! Usage: bench_dataplane [--quick] [--no-flood] [--stage NAME=OBJECT ...] --out FILE   (as root)

mod actions;
mod bpf;
mod flood;
mod multicore;
mod peer;
mod stages;

use std::{
    collections::{BTreeMap, HashSet},
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsFd as _, BorrowedFd},
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result, bail};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::Serialize;
use smtpguard::{
    config::{Capacity, Config},
    dataplane::{Dataplane, PinLayout},
    policy::DesiredPolicy,
    report::{Grouping, ReportOptions, snapshot::Snapshotter},
    store::Store,
};
use smtpguard_common::{
    HostKey, HostStats, Mode, Origin, PrefixOrigin, Reason, SubscriberPolicy, host::ipv4_mapped,
    sketch,
};
use smtpguard_tests::frames::{Extension, FrameSpec, QINQ_PPPOE, TCP_ACK, TCP_SYN};

/// The policy every smtpguard instance starts from: the lab's ranges (tests/src/lab.rs).
/// Both instances get the production capacities, so the small and large runs differ only in
/// how full the maps are.
const POLICY: &str = r#"
[enforcement]
ports = [25]
unparseable = "drop"

[[subscribers]]
prefix = "100.64.0.0/10"
mode = "enforce"
[[subscribers]]
prefix = "2001:db8:1000::/36"
mode = "enforce"

[[relays]]
prefix = "192.0.2.25/32"
[[relays]]
prefix = "2001:db8:25::25/128"

[[exemptions]]
prefix = "100.64.10.0/24"
reason = "business static block"

[capacity]
subscribers = 131072
exemptions = 131072
hosts = 1048576
"#;

/// The production-size run (issue 7): entries written through the real map API.
const SCALE_SUBSCRIBERS: u32 = 100_000;
const SCALE_EXEMPTIONS: u32 = 100_000;
const SCALE_HOSTS: u32 = 1_000_000;

struct Args {
    quick: bool,
    flood: bool,
    out: PathBuf,
    /// An earlier build of the kernel program, timed in the same rounds as "baseline".
    baseline: Option<PathBuf>,
    /// Only the enforcement actions' table (reject and ratelimit next to the drop path),
    /// written alone to `out`: a change to the reply programs measured in a minute.
    actions_only: bool,
    /// Builds of the kernel program that stop early (`NAME=OBJECT`), for the stage profile.
    stages: Vec<(String, PathBuf)>,
    /// Only the stage profile, written alone to `out`: a variant build of the drop path
    /// (`--stage NAME=OBJECT`) measured in a minute.
    stages_only: bool,
}

fn args() -> Result<Args> {
    let mut quick = false;
    let mut flood = true;
    let mut out = None;
    let mut baseline = None;
    let mut actions_only = false;
    let mut stages = Vec::new();
    let mut stages_only = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--no-flood" => flood = false,
            "--actions-only" => actions_only = true,
            "--stages-only" => stages_only = true,
            "--stage" => {
                let stage = args.next().context("--stage needs NAME=OBJECT")?;
                let (name, object) = stage
                    .split_once('=')
                    .with_context(|| format!("--stage {stage}: expected NAME=OBJECT"))?;
                stages.push((name.to_owned(), PathBuf::from(object)));
            }
            "--out" => out = Some(PathBuf::from(args.next().context("--out needs a file")?)),
            "--baseline" => {
                baseline = Some(PathBuf::from(
                    args.next().context("--baseline needs an ELF object")?,
                ));
            }
            other => bail!(
                "unknown argument {other}; usage: bench_dataplane [--quick] [--no-flood] \
                 [--baseline OBJECT] [--actions-only] [--stages-only] [--stage NAME=OBJECT ...] \
                 --out FILE"
            ),
        }
    }
    Ok(Args {
        quick,
        flood,
        out: out.context("--out FILE is required")?,
        baseline,
        actions_only,
        stages,
        stages_only,
    })
}

#[derive(Serialize)]
struct Results {
    machine: Machine,
    quick: bool,
    /// Runs of the program per `BPF_PROG_TEST_RUN` call.
    repeat: u32,
    /// Calls per (case, program); the median is reported.
    runs: u32,
    programs: Vec<ProgramInfo>,
    cases: Vec<CaseResult>,
    /// None on a machine with one CPU.
    two_cpus: Option<multicore::TwoCpus>,
    /// The drop path's stage profile; None when no stage builds were given.
    stages: Option<stages::Stages>,
    /// `reject` and `ratelimit` next to the drop path (issue 17).
    actions: Option<actions::Actions>,
    /// Why `actions` is missing, when it is.
    actions_error: Option<String>,
    scale: Scale,
    control_plane: ControlPlane,
    end_to_end: Option<flood::EndToEnd>,
    /// Why the end-to-end part is missing, when it is.
    end_to_end_error: Option<String>,
}

#[derive(Serialize)]
struct Machine {
    cpu_model: String,
    cores: usize,
    kernel: String,
}

#[derive(Serialize)]
struct ProgramInfo {
    key: &'static str,
    description: String,
    size: bpf::ProgramSize,
}

#[derive(Serialize)]
struct CaseResult {
    key: &'static str,
    description: &'static str,
    frame_bytes: usize,
    /// Program key -> timing.
    results: BTreeMap<&'static str, Timing>,
}

#[derive(Serialize)]
struct Timing {
    /// Median of the runs' mean ns per packet.
    ns: u32,
    runs: Vec<u32>,
    /// The program's verdict on this frame.
    action: &'static str,
}

#[derive(Serialize)]
struct Scale {
    subscribers: u32,
    exemptions: u32,
    hosts: u32,
    /// Hosts the host table and its overflow map hold after the fill (the overflow, an LRU
    /// map, may evict a few early).
    hosts_in_map: usize,
    /// Of them, the hosts holding a slot of the table (the rest are in the overflow).
    hosts_in_table: u64,
    fill_subscribers_s: f64,
    fill_exemptions_s: f64,
    fill_hosts_s: f64,
}

#[derive(Serialize)]
struct ControlPlane {
    /// One added exemption written into maps holding the small policy: milliseconds.
    exempt_add_small_ms: f64,
    /// The same into the production-size maps (100,000 exemptions, 100,000 subscriber
    /// prefixes): milliseconds, median of several.
    exempt_add_large_ms: f64,
    exempt_add_large_runs_ms: Vec<f64>,
    /// A full reconcile (start, reload) of one change into the production-size maps.
    full_reconcile_large_ms: f64,
    /// One statistics snapshot (kernel map read, deltas written to the store) of 1,000,000
    /// active hosts held in a pinned instance's statistics map: seconds.
    snapshot_1m_hosts_s: Option<f64>,
    /// The abuse-desk report over the 24 h that snapshot recorded (history read from the
    /// store, rows built, one per host): seconds.
    report_1m_hosts_s: Option<f64>,
    /// Intervals the snapshot wrote and rows the report built (both should be 1,000,000).
    report_1m_intervals: Option<usize>,
    report_1m_rows: Option<usize>,
    /// Writing those rows out as CSV (into a sink): the rest of `smtpguard report --format csv`.
    report_1m_csv_s: Option<f64>,
}

struct Case {
    key: &'static str,
    description: &'static str,
    frame: Vec<u8>,
    /// smtpguard's expected verdict.
    expected: u32,
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("a literal address")
}

fn cases() -> Vec<Case> {
    let subscriber = ip("100.64.0.2");
    let mx = ip("198.51.100.7");
    let v6_ext = FrameSpec::tcp(ip("2001:db8:1000::2"), ip("2001:db8:ffff::7"), 25, TCP_SYN)
        .extension(Extension::HopByHop { len_units: 0 })
        .extension(Extension::DestinationOptions { len_units: 0 })
        .extension(Extension::Routing { len_units: 0 });
    vec![
        Case {
            key: "fast-path",
            description: "non-SMTP: subscriber TCP ACK to port 443",
            frame: FrameSpec::tcp(subscriber, mx, 443, TCP_ACK).build(),
            expected: bpf::XDP_PASS,
        },
        Case {
            key: "syn25-drop",
            description: "SYN to 25 from a subscriber (dropped)",
            frame: FrameSpec::tcp(subscriber, mx, 25, TCP_SYN).build(),
            expected: bpf::XDP_DROP,
        },
        Case {
            key: "syn25-relay",
            description: "SYN to 25 to the ISP relay (passed)",
            frame: FrameSpec::tcp(subscriber, ip("192.0.2.25"), 25, TCP_SYN).build(),
            expected: bpf::XDP_PASS,
        },
        Case {
            key: "syn25-exempt",
            description: "SYN to 25 from an exempt host (passed)",
            frame: FrameSpec::tcp(ip("100.64.10.5"), mx, 25, TCP_SYN).build(),
            expected: bpf::XDP_PASS,
        },
        Case {
            key: "ipv6-ext3",
            description: "IPv6 SYN to 25 behind 3 extension headers (dropped)",
            frame: v6_ext.build(),
            expected: bpf::XDP_DROP,
        },
        Case {
            key: "qinq-pppoe",
            description: "QinQ + PPPoE + IPv4 SYN to 25 (dropped)",
            frame: FrameSpec::tcp(ip("100.64.0.3"), mx, 25, TCP_SYN)
                .wrappers(QINQ_PPPOE)
                .build(),
            expected: bpf::XDP_DROP,
        },
    ]
}

fn main() -> Result<()> {
    let args = args()?;
    let (repeat, runs) = if args.quick {
        (200_000, 3)
    } else {
        (2_000_000, 7)
    };
    if args.actions_only {
        let peer = peer::XdpFilter::load()?;
        let actions =
            actions::measure(peer.program.as_fd(), repeat, runs, args.baseline.as_deref())?;
        return write_json(&args.out, &actions);
    }
    let config = Config::parse(POLICY, Path::new("bench.toml")).context("the bench policy")?;
    if args.stages_only {
        let cases = cases();
        let peer = peer::XdpFilter::load()?;
        let stages = stages::measure(
            &config,
            &args.stages,
            peer.program.as_fd(),
            &cases[1].frame,
            repeat,
            runs,
        )?;
        return write_json(&args.out, &stages);
    }
    let capacity = config.capacity.clone();
    let base = DesiredPolicy::from_config(&config);

    eprintln!("loading smtpguard (small maps), the floor and xdp-filter");
    let mut small = Dataplane::with_policy(&config)?;
    let floor = bpf::load_floor()?;
    let peer = peer::XdpFilter::load()?;

    eprintln!(
        "filling a second smtpguard instance: {SCALE_SUBSCRIBERS} subscriber prefixes, \
         {SCALE_EXEMPTIONS} exemptions, {SCALE_HOSTS} hosts"
    );
    let cases = cases();
    let (mut large, scale, mut large_policy) = fill_large(&capacity, &base, &cases)?;

    let baseline = match &args.baseline {
        Some(path) => {
            eprintln!("loading the baseline build {}", path.display());
            let object = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            let mut baseline = Dataplane::load_object(&object, &config.capacity)
                .with_context(|| format!("loading {}", path.display()))?;
            baseline
                .policy_maps()?
                .reconcile(&DesiredPolicy::from_config(&config))?;
            Some(baseline)
        }
        None => None,
    };

    let mut programs: Vec<(&'static str, BorrowedFd<'_>)> = vec![
        ("floor", floor.as_fd()),
        ("xdp-filter", peer.program.as_fd()),
        ("smtpguard", small.xdp_program_fd()?),
        ("smtpguard-large", large.xdp_program_fd()?),
    ];
    let mut infos = vec![
        ProgramInfo {
            key: "floor",
            description: "r0 = XDP_PASS; exit (2 instructions)".into(),
            size: bpf::program_size(floor.as_fd())?,
        },
        ProgramInfo {
            key: "xdp-filter",
            description: format!(
                "xdp-tools xdp-filter `load -f tcp` + `port 25 -p tcp` ({})",
                peer.name
            ),
            size: bpf::program_size(peer.program.as_fd())?,
        },
        ProgramInfo {
            key: "smtpguard",
            description: "smtpguard_xdp, small maps".into(),
            size: bpf::program_size(small.xdp_program_fd()?)?,
        },
        ProgramInfo {
            key: "smtpguard-large",
            description: "smtpguard_xdp, production-size maps".into(),
            size: bpf::program_size(large.xdp_program_fd()?)?,
        },
    ];
    if let (Some(baseline), Some(path)) = (&baseline, &args.baseline) {
        programs.push(("baseline", baseline.xdp_program_fd()?));
        infos.push(ProgramInfo {
            key: "baseline",
            description: format!(
                "smtpguard_xdp of an earlier build ({}), small maps",
                path.display()
            ),
            size: bpf::program_size(baseline.xdp_program_fd()?)?,
        });
    }

    let verdicts = check_verdicts(&programs, &cases)?;
    eprintln!(
        "timing {} cases x {} programs: {runs} runs of {repeat}",
        cases.len(),
        programs.len()
    );
    let timings = time_cases(&programs, &cases, repeat, runs)?;
    let case_results = cases
        .iter()
        .enumerate()
        .map(|(c, case)| CaseResult {
            key: case.key,
            description: case.description,
            frame_bytes: case.frame.len(),
            results: programs
                .iter()
                .enumerate()
                .map(|(p, (key, _))| {
                    let runs = timings[c][p].clone();
                    (
                        *key,
                        Timing {
                            ns: median_u32(&runs),
                            runs,
                            action: smtpguard::replay::xdp_action_name(verdicts[c][p]),
                        },
                    )
                })
                .collect(),
        })
        .collect();
    drop(programs);

    let two_cpus = match std::thread::available_parallelism().map_or(1, usize::from) {
        1 => None,
        _ => {
            eprintln!("the drop path on two CPUs at once");
            let other_host = FrameSpec::tcp(ip("100.64.0.4"), ip("198.51.100.7"), 25, TCP_SYN);
            let other_destination =
                FrameSpec::tcp(ip("100.64.0.2"), ip("198.51.100.9"), 25, TCP_SYN);
            let segments = multicore::Segments {
                one_host: &cases[1].frame,
                other_host: &other_host.build(),
                other_destination: &other_destination.build(),
            };
            Some(multicore::measure(
                small.xdp_program_fd()?,
                peer.program.as_fd(),
                &segments,
                repeat,
                runs,
            )?)
        }
    };

    let stages = match args.stages.is_empty() {
        true => None,
        false => {
            eprintln!("the drop path's stages: builds of the program that stop early");
            Some(stages::measure(
                &config,
                &args.stages,
                peer.program.as_fd(),
                &cases[1].frame,
                repeat,
                runs,
            )?)
        }
    };

    eprintln!("enforcement actions: reject and ratelimit next to the drop path");
    let (actions, actions_error) =
        match actions::measure(peer.program.as_fd(), repeat, runs, args.baseline.as_deref()) {
            Ok(actions) => (Some(actions), None),
            Err(error) => {
                eprintln!("enforcement actions failed: {error:#}");
                (None, Some(format!("{error:#}")))
            }
        };

    eprintln!("control plane: one exemption written as the agent does, and a full reconcile");
    let mut control_plane =
        control_plane(&mut small, &mut base.clone(), &mut large, &mut large_policy)?;
    // The production-size instance has served its purpose: free its maps before the pinned
    // instance for the snapshot and report fills its own.
    drop(large);

    eprintln!("control plane: snapshot and report over {SCALE_HOSTS} active hosts");
    let report = snapshot_and_report(&config)?;
    control_plane.snapshot_1m_hosts_s = Some(report.snapshot_s);
    control_plane.report_1m_hosts_s = Some(report.report_s);
    control_plane.report_1m_intervals = Some(report.intervals);
    control_plane.report_1m_rows = Some(report.rows);
    control_plane.report_1m_csv_s = Some(report.csv_s);

    let (end_to_end, end_to_end_error) = if args.flood {
        eprintln!("end to end: flood through a namespace gateway");
        match flood::run(&config, args.quick, &cases[1].frame) {
            Ok(result) => (Some(result), None),
            Err(error) => {
                eprintln!("end to end failed: {error:#}");
                (None, Some(format!("{error:#}")))
            }
        }
    } else {
        (None, Some("skipped (--no-flood)".into()))
    };

    let results = Results {
        machine: machine(),
        quick: args.quick,
        repeat,
        runs,
        programs: infos,
        cases: case_results,
        two_cpus,
        stages,
        actions,
        actions_error,
        scale,
        control_plane,
        end_to_end,
        end_to_end_error,
    };
    write_json(&args.out, &results)
}

fn write_json(out: &Path, results: &impl Serialize) -> Result<()> {
    let json = serde_json::to_string_pretty(results)?;
    fs::write(out, json).with_context(|| format!("writing {}", out.display()))?;
    eprintln!("results in {}", out.display());
    Ok(())
}

/// Each program's verdict on each frame (one run). smtpguard must give the expected verdicts,
/// and xdp-filter must drop the plain port-25 SYN and pass the non-SMTP frame, or the
/// comparison would be meaningless; its other verdicts are reported as observed.
fn check_verdicts(
    programs: &[(&'static str, BorrowedFd<'_>)],
    cases: &[Case],
) -> Result<Vec<Vec<u32>>> {
    let mut verdicts = Vec::new();
    for case in cases {
        let mut row = Vec::new();
        for (key, fd) in programs {
            let action = bpf::test_run(*fd, &case.frame, 1, None)?.action;
            let expected = match *key {
                "floor" => Some(bpf::XDP_PASS),
                "smtpguard" | "smtpguard-large" | "baseline" => Some(case.expected),
                "xdp-filter" if case.key == "fast-path" => Some(bpf::XDP_PASS),
                "xdp-filter" if case.key == "syn25-drop" => Some(bpf::XDP_DROP),
                _ => None,
            };
            if let Some(expected) = expected
                && action != expected
            {
                bail!(
                    "{key} returned {} on {} ({}), expected {}",
                    smtpguard::replay::xdp_action_name(action),
                    case.key,
                    case.description,
                    smtpguard::replay::xdp_action_name(expected)
                );
            }
            row.push(action);
        }
        verdicts.push(row);
    }
    Ok(verdicts)
}

/// ns per packet for [case][program], `runs` each; the programs take turns within each
/// round, so noise on the machine hits all of them alike.
fn time_cases(
    programs: &[(&'static str, BorrowedFd<'_>)],
    cases: &[Case],
    repeat: u32,
    runs: u32,
) -> Result<Vec<Vec<Vec<u32>>>> {
    let mut timings = vec![vec![Vec::new(); programs.len()]; cases.len()];
    for (_, fd) in programs {
        for case in cases {
            bpf::test_run(*fd, &case.frame, repeat / 10, None)?; // warm up
        }
    }
    for _ in 0..runs {
        for (c, case) in cases.iter().enumerate() {
            for (p, (_, fd)) in programs.iter().enumerate() {
                timings[c][p].push(bpf::test_run(*fd, &case.frame, repeat, None)?.ns);
            }
        }
    }
    Ok(timings)
}

fn median_u32(values: &[u32]) -> u32 {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    sorted[sorted.len() / 2]
}

fn median_f64(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

/// A second instance with production-size maps, filled through the real API: subscriber and
/// exemption prefixes by reconcile (as the agent writes them), hosts by map updates. The
/// cases' hosts send their first segment before the fill, as established subscribers of a
/// full table: the scale ratio compares one host's cost among large maps and small, not
/// whether the fill happened to leave its pair of slots free (then it would be an overflow
/// host, whose lookup is a helper call; the fill's share of those is reported).
fn fill_large(
    capacity: &Capacity,
    base: &DesiredPolicy,
    cases: &[Case],
) -> Result<(Dataplane, Scale, DesiredPolicy)> {
    let mut dataplane = Dataplane::load(capacity)?;
    let mut desired = base.clone();
    // Half IPv4 /27s inside 100.64.0.0/10, half IPv6 /56s inside 2001:db8:1000::/36: more
    // specific ranges under the ones the frames match, so lookups walk a deep, full trie.
    let half = SCALE_SUBSCRIBERS / 2;
    for i in 0..half {
        let v4 = Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 0)) + (i << 5));
        let v6 = Ipv6Addr::from(
            u128::from(Ipv6Addr::new(0x2001, 0xdb8, 0x1000, 0, 0, 0, 0, 0)) + (u128::from(i) << 72),
        );
        let rule = 2 + i;
        desired.subscribers.insert(
            IpNet::V4(Ipv4Net::new(v4, 27)?),
            SubscriberPolicy::new(Mode::Enforce, rule),
        );
        desired.subscribers.insert(
            IpNet::V6(Ipv6Net::new(v6, 56)?),
            SubscriberPolicy::new(Mode::Enforce, rule),
        );
    }
    let started = Instant::now();
    dataplane.policy_maps()?.reconcile(&desired)?;
    let fill_subscribers_s = started.elapsed().as_secs_f64();

    // Single hosts of business customers: /32s from 100.66.0.0 up, /64s in 2001:db8:1000:8000::.
    for i in 0..SCALE_EXEMPTIONS / 2 {
        let v4 = Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 66, 0, 0)) + i);
        let v6 = Ipv6Addr::from(
            u128::from(Ipv6Addr::new(0x2001, 0xdb8, 0x1000, 0x8000, 0, 0, 0, 0))
                + (u128::from(i) << 64),
        );
        desired.add_exemption(IpNet::V4(Ipv4Net::new(v4, 32)?), Origin::Runtime);
        desired.add_exemption(IpNet::V6(Ipv6Net::new(v6, 64)?), Origin::Runtime);
    }
    let started = Instant::now();
    dataplane.policy_maps()?.reconcile(&desired)?;
    let fill_exemptions_s = started.elapsed().as_secs_f64();

    for case in cases {
        dataplane.run_xdp(&case.frame)?;
    }
    let established: HashSet<HostKey> = dataplane
        .host_records()?
        .hosts
        .iter()
        .map(|record| record.key)
        .collect();
    // SCALE_HOSTS hosts besides the cases' own.
    let hosts = (0..)
        .map(|i| HostKey::from_v4((u32::from(Ipv4Addr::new(100, 64, 0, 0)) + i).to_be_bytes()))
        .filter(|key| !established.contains(key))
        .take(SCALE_HOSTS as usize)
        .map(|key| (key, HostStats::first_seen(0, 0, 0)));
    let started = Instant::now();
    dataplane.insert_hosts(hosts)?;
    let fill_hosts_s = started.elapsed().as_secs_f64();
    let count = dataplane.host_count()?;
    let hosts_in_map = count.hosts() as usize;
    eprintln!(
        "filled in {fill_subscribers_s:.2} s (subscribers) + {fill_exemptions_s:.2} s \
         (exemptions) + {fill_hosts_s:.2} s (hosts; {hosts_in_map} tracked, {} of them in \
         the table's {} slots)",
        count.slots_used, count.slots
    );
    Ok((
        dataplane,
        Scale {
            subscribers: SCALE_SUBSCRIBERS,
            exemptions: SCALE_EXEMPTIONS,
            hosts: SCALE_HOSTS,
            hosts_in_map,
            hosts_in_table: count.slots_used,
            fill_subscribers_s,
            fill_exemptions_s,
            fill_hosts_s,
        },
        desired,
    ))
}

/// How long one `exempt add` takes to reach the kernel map along the agent's path (the source
/// entries at and inside the prefix computed and the changed ones written; the maps already
/// equal the desired policy), then checked with a lookup; and, for
/// comparison, a full reconcile (what start and reload do: read every map, write the
/// difference) into the production-size maps.
fn control_plane(
    small: &mut Dataplane,
    small_policy: &mut DesiredPolicy,
    large: &mut Dataplane,
    large_policy: &mut DesiredPolicy,
) -> Result<ControlPlane> {
    let mx = ip("198.51.100.7");
    let add = |dataplane: &mut Dataplane, policy: &mut DesiredPolicy, host: Ipv4Addr| {
        let prefix = IpNet::V4(Ipv4Net::new(host, 32)?);
        let started = Instant::now();
        dataplane.policy_maps()?.set_exemption(
            policy,
            prefix,
            Some(PrefixOrigin::new(Origin::Runtime)),
        )?;
        let elapsed = started.elapsed().as_secs_f64() * 1e3;
        if dataplane
            .policy_maps()?
            .lookup(IpAddr::V4(host), mx)?
            .exemption
            .is_none()
        {
            bail!("exemption {host} not in the kernel map after the write");
        }
        anyhow::Ok(elapsed)
    };
    let exempt_add_small_ms = add(small, small_policy, Ipv4Addr::new(100, 90, 0, 1))?;
    let mut runs = Vec::new();
    for i in 0..5 {
        runs.push(add(large, large_policy, Ipv4Addr::new(100, 90, 1, i))?);
    }
    large_policy.add_exemption(
        IpNet::V4(Ipv4Net::new(Ipv4Addr::new(100, 90, 2, 1), 32)?),
        Origin::Runtime,
    );
    let started = Instant::now();
    let report = large.policy_maps()?.reconcile(large_policy)?;
    let full_reconcile_large_ms = started.elapsed().as_secs_f64() * 1e3;
    if report.added != 1 {
        bail!("the full reconcile wrote {report:?}; expected one addition");
    }
    Ok(ControlPlane {
        exempt_add_small_ms,
        exempt_add_large_ms: median_f64(&runs),
        exempt_add_large_runs_ms: runs,
        full_reconcile_large_ms,
        snapshot_1m_hosts_s: None,
        report_1m_hosts_s: None,
        report_1m_intervals: None,
        report_1m_rows: None,
        report_1m_csv_s: None,
    })
}

struct SnapshotAndReport {
    snapshot_s: f64,
    report_s: f64,
    csv_s: f64,
    intervals: usize,
    rows: usize,
}

/// Removes the bench's pin folder and state folder, also when a step fails.
struct Scratch {
    layout: PinLayout,
    state_dir: PathBuf,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(self.layout.root());
        let _ = fs::remove_dir_all(&self.state_dir);
    }
}

/// The agent's statistics path at production size: a third instance whose maps are pinned
/// (the snapshotter opens HOST_STATS by its pin, as the agent's does), 1,000,000 active hosts
/// written into it, then one snapshot into a fresh store and the abuse-desk report over the
/// last 24 h of that store. A separate instance, so the packet timings above keep measuring
/// the maps they always did.
fn snapshot_and_report(config: &Config) -> Result<SnapshotAndReport> {
    let pid = std::process::id();
    let scratch = Scratch {
        layout: PinLayout::new(format!("/sys/fs/bpf/smtpguard-bench-{pid}")),
        state_dir: PathBuf::from(format!("/tmp/smtpguard-bench-state-{pid}")),
    };
    let _ = fs::remove_dir_all(scratch.layout.root());
    let _ = fs::remove_dir_all(&scratch.state_dir);
    let mut dataplane = Dataplane::load_pinned(&config.capacity, &scratch.layout)?;

    let now_ns = u64::try_from(
        Duration::from(nix::time::clock_gettime(
            nix::time::ClockId::CLOCK_MONOTONIC_COARSE,
        )?)
        .as_nanos(),
    )?;
    // A few MX hosts each subscriber host tried: sketch registers as the kernel sets them.
    let destinations: Vec<[u8; 16]> = (0..8u8)
        .map(|d| ipv4_mapped([198, 51, 100, d + 1]))
        .collect();
    let hosts = (0..SCALE_HOSTS).map(|i| {
        let v4 = Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 0)) + i);
        let attempts = 1 + u64::from(i % 50);
        let mut stats = HostStats::first_seen(
            // First seen up to an hour ago, last seen within the last minute.
            now_ns.saturating_sub(u64::from(i % 3600) * 1_000_000_000),
            0,
            1,
        );
        stats.last_seen_ns = now_ns.saturating_sub(u64::from(i % 60) * 1_000_000_000);
        stats.attempts = attempts;
        stats.segments = attempts * 2;
        stats.dropped = attempts * 2;
        let tried = &destinations[..1 + (i % 8) as usize];
        for destination in tried {
            let (index, rank) = sketch::slot(destination);
            stats.dst_sketch[index] = stats.dst_sketch[index].max(rank);
        }
        stats.last_dst = tried[tried.len() - 1];
        stats.last_dst_port = 25;
        stats.last_reason = Reason::Dropped as u16;
        (HostKey::from_v4(v4.octets()), stats)
    });
    dataplane.insert_hosts(hosts)?;
    let in_map = dataplane.host_count()?.hosts() as usize;

    let mut snapshotter = Snapshotter::open(&scratch.layout, &scratch.state_dir)?;
    let now = SystemTime::now();
    let snapshot = snapshotter.take(now)?;
    drop(snapshotter);
    if snapshot.hosts_read != in_map || snapshot.intervals_written != in_map {
        bail!(
            "the snapshot read {} hosts and wrote {} intervals; the map holds {in_map}",
            snapshot.hosts_read,
            snapshot.intervals_written
        );
    }

    // The report runs afterwards, as the abuse desk would: over the 24 hours up to then.
    let report_time = SystemTime::now();
    let options = ReportOptions {
        from: report_time - Duration::from_secs(24 * 3600),
        to: report_time,
        top: None,
        min_attempts: 0,
        prefix: None,
        group: Grouping::Host,
        limited_only: false,
    };
    let started = Instant::now();
    let history = Store::open(&scratch.state_dir)?.host_intervals(options.from, options.to)?;
    let rows = smtpguard::report::build(&history, config, &options);
    let report_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    smtpguard::report::render::csv(&rows, &mut std::io::sink())?;
    let csv_s = started.elapsed().as_secs_f64();
    if rows.len() != in_map {
        bail!(
            "the report built {} rows from {} intervals; the map holds {in_map}",
            rows.len(),
            history.len()
        );
    }
    eprintln!(
        "snapshot of {} hosts: {:.2} s; report over {} intervals ({} rows): {report_s:.2} s",
        snapshot.hosts_read,
        snapshot.elapsed.as_secs_f64(),
        history.len(),
        rows.len()
    );
    drop(dataplane);
    drop(scratch);
    Ok(SnapshotAndReport {
        snapshot_s: snapshot.elapsed.as_secs_f64(),
        report_s,
        csv_s,
        intervals: snapshot.intervals_written,
        rows: rows.len(),
    })
}

fn machine() -> Machine {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .and_then(|rest| rest.split_once(':'))
        .map(|(_, model)| model.trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    Machine {
        cpu_model,
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|release| release.trim().to_owned())
            .unwrap_or_else(|_| "unknown".into()),
    }
}
