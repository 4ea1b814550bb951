//! `cargo xtask bench`: builds and runs the measuring binary (tests/src/bin/bench_dataplane,
//! as root), then renders its JSON as a table, a chart and, for full runs, docs/benchmarks.md;
//! then the fleet section (tests/src/bin/bench_fleet: real agents, etcd and PostgreSQL),
//! whose figures docs/fleet.md quotes, and the RADIUS accounting section
//! (tests/src/bin/bench_radius: a real agent fed accounting over UDP).
//! Never part of `cargo xtask test`: it takes minutes and its figures depend on the machine.

#[path = "../../../smtpguard/kernel_flags.rs"]
mod kernel_flags;
mod render;
mod results;

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result};

use crate::{bootstrap, cmd};

/// Packages only the benchmark needs, beyond bootstrap's: trafgen (the AF_PACKET sender) and
/// ethtool (GRO on the gateway's veth, so frames redirected into it reach nftables).
const BENCH_PACKAGES: &[&str] = &["netsniff-ng", "ethtool"];

/// The builds of the kernel program for the drop path's stage profile, in path order, and
/// the floor of per-host accounting, `counted` (smtpguard-ebpf/src/stage.rs).
const STAGES: [&str; 4] = ["parse", "policy", "lookup", COUNTED];

/// The stage build that only counts one attempt in the host's slot: not a stage of the path
/// but what any drop that keeps per-host statistics costs at the least.
pub const COUNTED: &str = "counted";

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// A short run (fewer, shorter test runs; a smaller flood), e.g. `--quick` to check that
    /// everything works. Quick runs do not update docs/benchmarks.md.
    #[arg(long)]
    quick: bool,
    /// Also write the results as JSON to this file, e.g. `--json bench.json`.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Skip the end-to-end flood through the namespace gateway, e.g. `--no-flood`.
    #[arg(long)]
    no_flood: bool,
    /// Also time the kernel program as an earlier git revision builds it, in the same rounds,
    /// e.g. `--baseline HEAD~1` or `--baseline main`: what a change costs per packet.
    #[arg(long, value_name = "REV")]
    baseline: Option<String>,
    /// Skip the fleet section (etcd propagation to 10 agents, 1,000 watchers, PostgreSQL
    /// ingest and report), e.g. `--no-fleet`.
    #[arg(long)]
    no_fleet: bool,
    /// Skip the RADIUS accounting section (Starts, Interim-Updates and wrong-secret packets
    /// per second, Start to kernel map), e.g. `--no-radius`.
    #[arg(long)]
    no_radius: bool,
}

pub fn run(root: &Path, args: &BenchArgs) -> Result<()> {
    bootstrap::run(root)?;
    bootstrap::debian_packages(&root.join(".tools"), BENCH_PACKAGES)?;
    cmd::run(
        Command::new("cargo")
            .current_dir(root)
            .args(["build", "--release", "-p", "smtpguard-tests"])
            .args(["--bin", "bench_dataplane", "--bin", "bench_fleet"])
            .args(["--bin", "bench_radius"])
            .args(["-p", "smtpguard", "--bin", "smtpguard"]),
    )?;
    let out_dir = root.join("target").join("bench");
    fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let raw = out_dir.join("results.json");
    let mut bench = Command::new(root.join("target/release/bench_dataplane"));
    bench.current_dir(root).arg("--out").arg(&raw);
    for stage in STAGES {
        let object = out_dir.join(format!("stage-{stage}.o"));
        let target_dir = out_dir.join(format!("stage-{stage}-target"));
        let cfg = format!("smtpguard_stage=\"{stage}\"");
        build_kernel_object(root, &target_dir, Some(&cfg), &object)
            .with_context(|| format!("building the {stage} stage of the kernel program"))?;
        bench
            .arg("--stage")
            .arg(format!("{stage}={}", object.display()));
    }
    if args.quick {
        bench.arg("--quick");
    }
    if args.no_flood {
        bench.arg("--no-flood");
    }
    if let Some(rev) = &args.baseline {
        bench.arg("--baseline").arg(baseline_object(root, rev)?);
    }
    cmd::run(&mut bench)?;

    let text = fs::read_to_string(&raw).with_context(|| format!("reading {}", raw.display()))?;
    let results: results::Results =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", raw.display()))?;
    println!("\n{}", render::table(&results));
    if let Some(json) = &args.json {
        fs::write(json, &text).with_context(|| format!("writing {}", json.display()))?;
        println!("JSON: {}", json.display());
    }
    let chart = render::chart(&results);
    if args.quick {
        let path = out_dir.join("benchmarks.svg");
        fs::write(&path, chart).with_context(|| format!("writing {}", path.display()))?;
        println!("chart: {} (a quick run leaves docs/ alone)", path.display());
    } else {
        let docs = root.join("docs");
        let svg = docs.join("benchmarks.svg");
        fs::write(&svg, chart).with_context(|| format!("writing {}", svg.display()))?;
        let md = docs.join("benchmarks.md");
        fs::write(&md, render::markdown(&results))
            .with_context(|| format!("writing {}", md.display()))?;
        println!("wrote {} and {}", md.display(), svg.display());
    }
    if !args.no_fleet {
        section(root, &out_dir, "fleet", args.quick)?;
    }
    if !args.no_radius {
        section(root, &out_dir, "radius", args.quick)?;
    }
    Ok(())
}

/// The fleet or radius section (target/release/bench_NAME against the release agent): it
/// prints its figures and writes them as JSON (NAME.json) beside the others.
fn section(root: &Path, out_dir: &Path, name: &str, quick: bool) -> Result<()> {
    let raw = out_dir.join(format!("{name}.json"));
    let mut bench = Command::new(root.join("target/release").join(format!("bench_{name}")));
    bench
        .current_dir(root)
        .arg("--smtpguard")
        .arg(root.join("target/release/smtpguard"))
        .arg("--out")
        .arg(&raw);
    if quick {
        bench.arg("--quick");
    }
    cmd::run(&mut bench)?;
    println!("{name} figures: {}", raw.display());
    Ok(())
}

/// Builds the kernel program of `rev` (in a worktree of its own below target/bench/, with this
/// checkout's bpf-linker) and returns the object's path.
fn baseline_object(root: &Path, rev: &str) -> Result<PathBuf> {
    let bench = root.join("target").join("bench");
    let source = bench.join("baseline-src");
    let remove_checkout = || {
        cmd::run(
            Command::new("git")
                .current_dir(root)
                .args(["worktree", "remove", "--force"])
                .arg(&source),
        )
    };
    if source.exists() {
        remove_checkout()?;
    }
    cmd::run(
        Command::new("git")
            .current_dir(root)
            .args(["worktree", "add", "--detach"])
            .arg(&source)
            .arg(rev),
    )
    .with_context(|| format!("checking out {rev:?} for the baseline"))?;
    let built = (|| {
        std::os::unix::fs::symlink(root.join(".tools"), source.join(".tools"))
            .context("linking .tools into the baseline checkout")?;
        let object = bench.join("baseline.o");
        build_kernel_object(&source, &bench.join("baseline-target"), None, &object)
            .with_context(|| format!("building the kernel program of {rev:?}"))?;
        Ok(object)
    })();
    remove_checkout()?;
    built
}

/// Builds smtpguard-ebpf in `source` into `object` with the flags smtpguard/build.rs gives
/// the program the agent embeds (smtpguard/kernel_flags.rs, with the list `source` has in
/// smtpguard-ebpf/rustflags), so that the bench times the same code; `cfg` adds one
/// (`name="value"`).
fn build_kernel_object(
    source: &Path,
    target_dir: &Path,
    cfg: Option<&str>,
    object: &Path,
) -> Result<()> {
    // A revision from before the file lists nothing more.
    let listed = fs::read_to_string(source.join("smtpguard-ebpf/rustflags")).unwrap_or_default();
    let mut flags = kernel_flags::kernel_rustflags(std::env::consts::ARCH, &listed);
    flags.extend(cfg.map(|cfg| format!("--cfg={cfg}")));
    cmd::run(
        Command::new("cargo")
            .current_dir(source)
            .env("CARGO_TARGET_DIR", target_dir)
            .env("CARGO_ENCODED_RUSTFLAGS", flags.join("\x1f"))
            .args([
                "+nightly",
                "build",
                "--release",
                "-p",
                "smtpguard-ebpf",
                "--bins",
            ])
            .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"]),
    )?;
    let built = target_dir.join("bpfel-unknown-none/release/smtpguard");
    fs::copy(&built, object).with_context(|| format!("copying {}", built.display()))?;
    Ok(())
}
