//! Automation for smtpguard: `cargo xtask bootstrap | test | demo | bench | fuzz | package`
//! (the alias is in .cargo/config.toml).

mod bench;
mod bootstrap;
mod cmd;
mod demo;
mod fuzz;
mod package;
mod test;

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(about = "Build, bootstrap, test and demo automation for smtpguard")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install what building and testing need: rust-src for the nightly toolchain, bpf-linker
    /// (built against the nightly's LLVM, into .tools/) and the Debian packages the tests use.
    /// Idempotent.
    Bootstrap,
    /// Bootstrap, then lint (rustfmt, clippy for the host crates and the eBPF crate), build
    /// and run every test. This is what CI runs (.ci/run).
    Test(test::TestArgs),
    /// Bootstrap, build, then show smtpguard on a real ISP edge in network namespaces: a spam
    /// bot blocked, legitimate mail delivered, the CLI and the report. As root.
    Demo(demo::DemoArgs),
    /// Bootstrap, build, then measure the kernel program's cost per packet against a floor
    /// program and xdp-filter, at small and production map sizes, the control plane and a
    /// flood through a namespace gateway; writes docs/benchmarks.md (full runs). As root.
    Bench(bench::BenchArgs),
    /// Bootstrap, build, then compare the kernel program with the reference model on
    /// mutated generated frames for `--duration` (default 10m); disagreements are shrunk and
    /// saved under tests/regressions/. With `--oracle kernel`: send `--frames` generated
    /// frames (default 1,000,000 a round) through a real forwarding gateway without and with
    /// smtpguard (XDP, TC) and judge what arrives. As root.
    Fuzz(fuzz::FuzzArgs),
    /// Build the release binary and a Debian package of it (binary, systemd unit, sysusers.d
    /// entry, example config, man page, shell completions) in target/debian/.
    Package(package::PackageArgs),
}

/// The repository root: xtask lives one folder below it.
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask's manifest folder has a parent")
        .to_path_buf()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let root = repo_root();
    let result = match cli.command {
        Command::Bootstrap => bootstrap::run(&root),
        Command::Test(args) => test::run(&root, &args),
        Command::Demo(args) => demo::run(&root, &args),
        Command::Bench(args) => bench::run(&root, &args),
        Command::Fuzz(args) => fuzz::run(&root, &args),
        Command::Package(args) => package::run(&root, &args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
