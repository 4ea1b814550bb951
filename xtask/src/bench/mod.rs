//! `cargo xtask bench`: builds and runs the measuring binary (tests/src/bin/bench_dataplane,
//! as root), then renders its JSON as a table, a chart and, for full runs, docs/benchmarks.md.
//! Never part of `cargo xtask test`: it takes minutes and its figures depend on the machine.

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
}

pub fn run(root: &Path, args: &BenchArgs) -> Result<()> {
    bootstrap::run(root)?;
    bootstrap::debian_packages(&root.join(".tools"), BENCH_PACKAGES)?;
    cmd::run(
        Command::new("cargo")
            .current_dir(root)
            .args(["build", "--release", "-p", "smtpguard-tests"])
            .args(["--bin", "bench_dataplane"]),
    )?;
    let out_dir = root.join("target").join("bench");
    fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let raw = out_dir.join("results.json");
    let mut bench = Command::new(root.join("target/release/bench_dataplane"));
    bench.current_dir(root).arg("--out").arg(&raw);
    if args.quick {
        bench.arg("--quick");
    }
    if args.no_flood {
        bench.arg("--no-flood");
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
    Ok(())
}
