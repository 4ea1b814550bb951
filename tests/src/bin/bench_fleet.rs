//! The fleet half of `cargo xtask bench` (as root): how fast a fleet exemption reaches the
//! kernel maps of every other agent, how etcd fans a change out to 1,000 plain watchers, and
//! how fast PostgreSQL ingests a snapshot and answers the fleet report. Real etcd and
//! PostgreSQL from Debian's packages (tests/src/engines.rs), real agents on namespace
//! gateways. Writes its figures as JSON.
//!
//! Usage: bench_fleet --smtpguard BIN --out FILE [--quick] [--only reports]

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result, bail, ensure};
use aya::maps::lpm_trie::Key;
use serde::Serialize;
use smtpguard::{
    config::{Config, PostgresConfig, PostgresTls},
    fleet::postgres::Reports,
    report::{Grouping, ReportOptions},
    store::HostInterval,
};
use smtpguard_common::sketch::SKETCH_REGISTERS;
use smtpguard_tests::{
    bench_agent::{BenchAgent, quantile_ms},
    engines::{Etcd, Postgres},
};

#[derive(Debug, Default, Serialize)]
struct Results {
    agents: usize,
    adds: usize,
    /// From `exempt add` returning on one agent to the entry in every other agent's kernel map.
    propagation_ms_p50: f64,
    propagation_ms_p99: f64,
    propagation_ms_max: f64,
    /// From starting `exempt add` (a CLI process) on one agent to the entry in every agent's
    /// kernel map: the desk's whole wait.
    end_to_end_ms_p50: f64,
    end_to_end_ms_p99: f64,
    watchers: usize,
    puts: usize,
    /// From a put's answer to its event at each of the plain watchers.
    watch_ms_p50: f64,
    watch_ms_p99: f64,
    watch_ms_max: f64,
    ingest_hosts: usize,
    ingest_s: f64,
    /// The same snapshot sent again (a retry after a lost answer): it replaces, never adds.
    reingest_s: f64,
    report_rows: usize,
    /// `report --fleet --top 100`.
    report_s: f64,
    report_result_rows: usize,
    /// `report --fleet` without `--top`: every host's row.
    report_full_s: f64,
    report_full_result_rows: usize,
}

struct Args {
    smtpguard: PathBuf,
    out: PathBuf,
    quick: bool,
    /// Only the PostgreSQL reports (`--only reports`): the policy's figures stay 0.
    only_reports: bool,
}

fn args() -> Result<Args> {
    let mut smtpguard = None;
    let mut out = None;
    let mut quick = false;
    let mut only_reports = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--smtpguard" => smtpguard = args.next().map(PathBuf::from),
            "--out" => out = args.next().map(PathBuf::from),
            "--quick" => quick = true,
            "--only" => match args.next().as_deref() {
                Some("reports") => only_reports = true,
                other => bail!("--only {other:?}: expected --only reports"),
            },
            other => {
                bail!(
                    "unknown argument {other:?}; expected --smtpguard BIN --out FILE [--quick] \
                     [--only reports]"
                )
            }
        }
    }
    Ok(Args {
        smtpguard: smtpguard.context("--smtpguard BIN")?,
        out: out.context("--out FILE")?,
        quick,
        only_reports,
    })
}

fn main() -> Result<()> {
    let args = args()?;
    let mut results = Results::default();
    let (agents, adds, watchers, puts, hosts, gateways) = if args.quick {
        (3, 10, 100, 10, 100_000, 2)
    } else {
        (10, 100, 1_000, 100, 1_000_000, 10)
    };
    if !args.only_reports {
        policy(
            &args.smtpguard,
            (agents, adds),
            (watchers, puts),
            &mut results,
        )?;
    }
    reports(hosts, gateways, &mut results)?;
    println!(
        "fleet: ingest of a {hosts}-host snapshot {:.2} s (again: {:.2} s); report over {} rows: \
         top 100 {:.2} s, every row ({}) {:.2} s",
        results.ingest_s,
        results.reingest_s,
        results.report_rows,
        results.report_s,
        results.report_full_result_rows,
        results.report_full_s
    );
    std::fs::write(&args.out, serde_json::to_string_pretty(&results)?)
        .with_context(|| format!("writing {}", args.out.display()))?;
    Ok(())
}

/// The policy's figures: propagation to the agents' kernel maps, and etcd's fan-out.
fn policy(
    binary: &Path,
    (agents, adds): (usize, usize),
    (watchers, puts): (usize, usize),
    results: &mut Results,
) -> Result<()> {
    propagation(binary, agents, adds, results)?;
    println!(
        "fleet: exempt add returning to {} other agents' kernel maps over {adds} adds: p50 {:.1} ms, \
         p99 {:.1} ms; from the start of exempt add: p50 {:.1} ms, p99 {:.1} ms",
        agents - 1,
        results.propagation_ms_p50,
        results.propagation_ms_p99,
        results.end_to_end_ms_p50,
        results.end_to_end_ms_p99
    );
    watch_fan_out(watchers, puts, results)?;
    println!(
        "fleet: one put to {watchers} plain etcd watchers over {puts} puts: p50 {:.1} ms, p99 {:.1} ms",
        results.watch_ms_p50, results.watch_ms_p99
    );
    Ok(())
}

/// One fleet agent, `n` of the fleet whose keys live under `prefix`.
fn fleet_agent(binary: &Path, n: usize, etcd: &Etcd, prefix: &str) -> Result<BenchAgent> {
    BenchAgent::start(binary, &format!("bench-fleet-{n}"), "127.0.0.1:0", |_| {
        Ok(format!(
            r#"[[subscribers]]
prefix = "100.64.0.0/10"
[fleet]
gateway_id = "bench-{n}"
etcd = ["{endpoint}"]
prefix = "{prefix}"
"#,
            endpoint = etcd.endpoint(),
        ))
    })
}

fn propagation(binary: &Path, agents: usize, adds: usize, results: &mut Results) -> Result<()> {
    let etcd = Etcd::start()?;
    let prefix = format!("/bench-{}/", std::process::id());
    let fleet: Vec<BenchAgent> = (0..agents)
        .map(|n| fleet_agent(binary, n, &etcd, &prefix))
        .collect::<Result<_>>()?;
    let tries: Vec<_> = fleet
        .iter()
        .map(BenchAgent::sources)
        .collect::<Result<_>>()?;
    let mut samples = Vec::with_capacity(adds);
    let mut whole = Vec::with_capacity(adds);
    for i in 0..adds {
        let address = Ipv4Addr::new(100, 64, 1 + (i / 250) as u8, (i % 250) as u8);
        let prefix = format!("{address}/32");
        let origin = i % agents;
        let started = Instant::now();
        let added = fleet[origin].cli(&["exempt", "add", &prefix, "--reason", "bench"])?;
        ensure!(added.status.success(), "exempt add {prefix}: {added:?}");
        let returned = Instant::now();
        let key = Key::new(32, address.octets());
        for (n, trie) in tries.iter().enumerate().filter(|(n, _)| *n != origin) {
            let deadline = returned + Duration::from_secs(10);
            while !trie.get(&key, 0).is_ok_and(|policy| policy.is_exempt()) {
                ensure!(
                    Instant::now() < deadline,
                    "{prefix} never reached agent {n}"
                );
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        samples.push(returned.elapsed());
        whole.push(started.elapsed());
    }
    results.agents = agents;
    results.adds = adds;
    samples.sort();
    whole.sort();
    results.propagation_ms_p50 = quantile_ms(&samples, 0.5);
    results.propagation_ms_p99 = quantile_ms(&samples, 0.99);
    results.propagation_ms_max = quantile_ms(&samples, 1.0);
    results.end_to_end_ms_p50 = quantile_ms(&whole, 0.5);
    results.end_to_end_ms_p99 = quantile_ms(&whole, 0.99);
    Ok(())
}

fn watch_fan_out(watchers: usize, puts: usize, results: &mut Results) -> Result<()> {
    let etcd = Etcd::start()?;
    let endpoint = etcd.endpoint();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut samples = runtime.block_on(async move {
        // One connection per watcher, as 1,000 gateways would hold.
        let mut streams = Vec::with_capacity(watchers);
        for _ in 0..watchers {
            let mut client = etcd_client::Client::connect([&endpoint], None).await?;
            streams.push(
                client
                    .watch(
                        "/fan-out/",
                        Some(etcd_client::WatchOptions::new().with_prefix()),
                    )
                    .await?,
            );
        }
        let (sender, mut received) = tokio::sync::mpsc::unbounded_channel();
        for mut stream in streams {
            let sender = sender.clone();
            tokio::spawn(async move {
                while let Ok(Some(response)) = stream.message().await {
                    for _ in response.events() {
                        let _ = sender.send(Instant::now());
                    }
                }
            });
        }
        let mut writer = etcd_client::Client::connect([&endpoint], None).await?;
        let mut samples = Vec::with_capacity(watchers * puts);
        for i in 0..puts {
            writer.put(format!("/fan-out/{i}"), "x", None).await?;
            let put = Instant::now();
            for _ in 0..watchers {
                let at = received.recv().await.context("a watcher stopped")?;
                samples.push(at.saturating_duration_since(put));
            }
        }
        Ok::<_, anyhow::Error>(samples)
    })?;
    drop(etcd);
    results.watchers = watchers;
    results.puts = puts;
    samples.sort();
    results.watch_ms_p50 = quantile_ms(&samples, 0.5);
    results.watch_ms_p99 = quantile_ms(&samples, 0.99);
    results.watch_ms_max = quantile_ms(&samples, 1.0);
    Ok(())
}

/// A snapshot of `hosts` hosts for one interval.
fn snapshot(hosts: usize, start: SystemTime) -> Vec<HostInterval> {
    let end = start + Duration::from_secs(60);
    (0..hosts)
        .map(|n| {
            let host = Ipv4Addr::from(0x6440_0000 + n as u32)
                .to_ipv6_mapped()
                .octets();
            let mut sketch = [0u8; SKETCH_REGISTERS];
            sketch[n % SKETCH_REGISTERS] = 1 + (n % 7) as u8;
            HostInterval {
                host,
                start,
                end,
                first_seen: start,
                last_seen: end,
                attempts: 1 + (n % 90) as u64,
                segments: 2 + (n % 90) as u64,
                dropped: 1 + (n % 90) as u64,
                limited: 0,
                sketch,
                // Most hosts of a real snapshot tried a handful of destinations.
                exact_destinations: (n % 4 != 0).then_some([n as u32 | 1, 0, 0, 0, 0]),
                last_dst: Ipv4Addr::new(198, 51, 100, 7).to_ipv6_mapped().octets(),
                last_port: 25,
                last_reason: 0,
            }
        })
        .collect()
}

fn reports(hosts: usize, gateways: usize, results: &mut Results) -> Result<()> {
    let postgres = Postgres::start()?;
    let config = PostgresConfig {
        url: postgres.url(),
        password_file: None,
        tls: PostgresTls::Disable,
        identity: None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let start = SystemTime::now() - Duration::from_secs(3600);
    let records = snapshot(hosts, start);
    let (ingest, reingest) = runtime.block_on(async {
        let mut reports = Reports::open(&config).await?;
        let began = Instant::now();
        reports.ship("gateway-0", &records).await?;
        let ingest = began.elapsed();
        let began = Instant::now();
        reports.ship("gateway-0", &records).await?;
        let reingest = began.elapsed();
        // The other gateways' snapshots fill the table for the report.
        for gateway in 1..gateways {
            reports
                .ship(&format!("gateway-{gateway}"), &records)
                .await?;
        }
        Ok::<_, anyhow::Error>((ingest, reingest))
    })?;
    let policy = Config::parse(
        "[[subscribers]]\nprefix = \"100.64.0.0/10\"\n",
        Path::new("bench.toml"),
    )?;
    let options = ReportOptions {
        from: start - Duration::from_secs(23 * 3600),
        to: SystemTime::now(),
        top: Some(100),
        min_attempts: 0,
        prefix: None,
        group: Grouping::Host,
        limited_only: false,
    };
    let timed = |options: &ReportOptions| {
        let began = Instant::now();
        let rows = runtime.block_on(smtpguard::fleet::report::build(
            &config, &policy, options, None,
        ))?;
        Ok::<_, anyhow::Error>((rows, began.elapsed().as_secs_f64()))
    };
    let (rows, report_s) = timed(&options)?;
    let (all, report_full_s) = timed(&ReportOptions {
        top: None,
        ..options.clone()
    })?;
    ensure!(
        all.len() == hosts && rows[..] == all[..rows.len()],
        "the top 100 are not the first 100 of the whole report"
    );
    ensure!(
        rows.iter().all(|row| row.gateways == Some(gateways)),
        "every host was seen by every gateway"
    );
    results.report_s = report_s;
    results.report_full_s = report_full_s;
    results.report_full_result_rows = all.len();
    results.ingest_hosts = hosts;
    results.ingest_s = ingest.as_secs_f64();
    results.reingest_s = reingest.as_secs_f64();
    results.report_rows = hosts * gateways;
    results.report_result_rows = rows.len();
    Ok(())
}
