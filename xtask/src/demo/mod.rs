//! `cargo xtask demo`: a real ISP edge in network namespaces, with real mail (see
//! `scenario.rs`); `--replay` replays a sample capture through the kernel program instead.

mod replay;
pub mod scenario;

use std::{fs, path::Path, process::Command};

use anyhow::{Context as _, Result, anyhow};

use crate::{bootstrap, cmd};

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Leave the lab (namespaces, SMTP servers, agent) up at the end and print how to use it.
    #[arg(long, conflicts_with_all = ["clean", "replay"])]
    keep: bool,
    /// Remove what `--keep` left up: namespaces, processes, pins, run folders.
    #[arg(long, conflicts_with = "replay")]
    clean: bool,
    /// Replay a sample capture through the kernel program instead (no namespaces).
    #[arg(long)]
    replay: bool,
}

/// Namespace names start with this, followed by the process id.
const PREFIX: &str = "sgdemo";

pub fn run(root: &Path, args: &DemoArgs) -> Result<()> {
    let demo = root.join("target").join("demo");
    if args.clean {
        return clean(&demo);
    }
    bootstrap::run(root)?;
    cmd::run(Command::new("cargo").current_dir(root).args([
        "build",
        "-p",
        "smtpguard",
        "-p",
        "smtpguard-tests",
        "--bin",
        "smtpguard",
        "--bin",
        "smtp_sink",
    ]))?;
    fs::create_dir_all(&demo).with_context(|| format!("creating {}", demo.display()))?;
    if args.replay {
        return replay::run(root);
    }
    let pid = std::process::id();
    let bin = root.join("target").join("debug");
    let work = demo.join(format!("run-{pid}"));
    let options = scenario::Options {
        smtpguard: bin.join("smtpguard"),
        sink: bin.join("smtp_sink"),
        pin_dir: format!("/sys/fs/bpf/smtpguard-demo-{pid}").into(),
        prefix: format!("{PREFIX}{pid}"),
        keep: args.keep,
        work: work.clone(),
    };
    if args.keep {
        // The processes outlive this one: `--clean` finds them here.
        println!("(--keep: the lab stays up at the end; `cargo xtask demo --clean` removes it)");
    } else {
        scenario::cleanup_on_interrupt();
    }
    let result = scenario::run(&options);
    if args.keep {
        fs::write(work.join("pids"), scenario::registered_pids())
            .with_context(|| format!("writing {}", work.join("pids").display()))?;
    }
    result.map_err(|e| anyhow!("the demo failed: {e}"))
}

/// Removes every lab `--keep` left up (and any leftover of an interrupted run).
fn clean(demo: &Path) -> Result<()> {
    for entry in fs::read_dir(demo).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("run-") {
            continue;
        }
        let pids = fs::read_to_string(entry.path().join("pids")).unwrap_or_default();
        for pid in pids.split_whitespace() {
            // Only processes that still run one of the demo's programs.
            let exe = fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
            let exe = exe.to_string_lossy();
            let exe = exe.trim_end_matches(" (deleted)");
            if exe.ends_with("/smtpguard") || exe.ends_with("/smtp_sink") {
                println!("killing {exe} (pid {pid})");
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
        }
        if let Some(pid) = name.strip_prefix("run-") {
            let pins = format!("/sys/fs/bpf/smtpguard-demo-{pid}");
            if Path::new(&pins).exists() {
                println!("removing {pins}");
                let _ = fs::remove_dir_all(&pins);
            }
        }
        println!("removing {}", entry.path().display());
        let _ = fs::remove_dir_all(entry.path());
    }
    let namespaces = cmd::output(Command::new("ip").args(["netns", "list"]))?;
    for namespace in namespaces
        .lines()
        .filter_map(|l| l.split_whitespace().next())
    {
        if namespace.starts_with(PREFIX) {
            println!("removing namespace {namespace}");
            cmd::run(Command::new("ip").args(["netns", "del", namespace]))?;
        }
    }
    println!("the demo lab is gone");
    Ok(())
}
