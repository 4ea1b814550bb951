//! The command line: one module per verb.

mod client;
mod config;
mod escalations;
mod exempt;
mod generate;
mod pbl;
mod prepare;
mod relay;
mod replay;
mod report;
mod status;
mod table;

use std::time::SystemTime;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};

use self::client::AgentArgs;
pub use self::client::AgentRefused;
use crate::agent::api::Request;

/// smtpguard: stops direct-to-MX spam from subscriber lines at the ISP's border gateway.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    agent: AgentArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the real kernel program over a capture and show each frame's verdict.
    ///
    /// Example: smtpguard replay --config /etc/smtpguard/smtpguard.toml edge.pcap
    Replay(replay::ReplayArgs),
    /// Configuration tools.
    #[command(subcommand)]
    Config(config::ConfigCommand),
    /// Run the agent: attach, keep the maps in sync, serve the CLI and metrics.
    ///
    /// Example: smtpguard run --config /etc/smtpguard/smtpguard.toml
    Run,
    /// Runtime exemptions (kept in the store, applied at once).
    #[command(subcommand)]
    Exempt(exempt::ExemptCommand),
    /// Runtime relays, on top of the config's.
    #[command(subcommand)]
    Relay(relay::RelayCommand),
    /// Where the program is attached, counters, map fill levels.
    ///
    /// Example: smtpguard status --format json
    Status(status::StatusArgs),
    /// Explain the live decision for TCP from SRC to DST.
    ///
    /// Example: smtpguard check 100.64.0.2 198.51.100.7 --port 25
    Check(status::CheckArgs),
    /// Changes to exemptions and relays, reloads and detaches.
    ///
    /// Example: smtpguard audit --since 24h
    Audit(status::AuditArgs),
    /// Which subscriber hosts tried to send mail straight to MX hosts, and which are bots.
    ///
    /// Example: smtpguard --config /etc/smtpguard/smtpguard.toml report --since 24h --top 50
    Report(report::ReportArgs),
    /// Hosts of monitor-mode ranges escalated to enforcement; `lift HOST` ends one.
    ///
    /// Example: smtpguard escalations lift 100.127.0.9
    Escalations(escalations::EscalationsArgs),
    /// Stream new bot classifications and escalations as they happen.
    ///
    /// Example: smtpguard events --format json
    Events(escalations::EventsArgs),
    /// Policy block list export.
    #[command(subcommand)]
    Pbl(pbl::PblCommand),
    /// As root, before `run` as an unprivileged user (the systemd unit's ExecStartPre):
    /// mounts bpffs if needed, lets the user reach the pin folder and hands it over.
    ///
    /// Example: smtpguard --config /etc/smtpguard/smtpguard.toml prepare --user smtpguard
    Prepare(prepare::PrepareArgs),
    /// Re-read the agent's config file; an invalid one changes nothing, and a dangerous one
    /// (see `config check`) only with --force.
    ///
    /// Example: smtpguard reload
    Reload {
        /// Apply the file even though `config check` warns about it (audited), e.g.
        /// smtpguard reload --force
        #[arg(long)]
        force: bool,
    },
    /// Remove enforcement from every interface on purpose, and stop the agent.
    Detach,
    /// Write the man page and shell completions into DIR (for packaging).
    #[command(hide = true)]
    GenerateAssets {
        /// The folder to write into, e.g. target/assets
        dir: std::path::PathBuf,
    },
}

/// Output formats of the list verbs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum ListFormat {
    #[default]
    Table,
    Json,
    Csv,
}

/// Output formats shared by the verbs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    #[default]
    Table,
    /// One JSON object per line, stable for tools.
    Json,
}

/// Parses the command line and runs the verb; errors leave with exit code 1.
pub fn run() -> anyhow::Result<()> {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // Help and version go to stdout with exit code 0; a usage error is bad input like any
        // other, exit code 1, so that 2 keeps meaning "the agent cannot be reached".
        Err(error) if !error.use_stderr() => error.exit(),
        Err(error) => {
            let _ = error.print();
            std::process::exit(1);
        }
    };
    if !matches!(cli.command, Command::Run) {
        // A verb piped into `head` ends quietly when the pipe closes, as Unix tools do. The
        // agent keeps Rust's default (SIGPIPE ignored): a client that leaves early must not
        // kill it.
        // SAFETY: setting a signal's disposition to the default before any thread starts.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let agent = &cli.agent;
    match cli.command {
        Command::Replay(args) => replay::run(&args, agent.config_file()?),
        Command::Config(command) => config::run(&command),
        Command::Run => crate::agent::run(agent.config_file()?),
        Command::Exempt(command) => exempt::run(&command, agent),
        Command::Relay(command) => relay::run(&command, agent),
        Command::Status(args) => status::status(&args, agent),
        Command::Check(args) => status::check(&args, agent),
        Command::Audit(args) => status::audit(&args, agent),
        Command::Report(args) => report::run(&args, agent.config_file()?),
        Command::Escalations(args) => escalations::escalations(&args, agent),
        Command::Events(args) => escalations::events(&args, agent),
        Command::Pbl(command) => pbl::run(&command, agent.config_file()?),
        Command::Prepare(args) => prepare::run(&args, agent.config_file()?),
        Command::Reload { force } => {
            let body = agent.call(&Request::Reload { force })?;
            println!(
                "reloaded: added {}, updated {}, removed {}",
                body["added"], body["updated"], body["removed"]
            );
            for change in body["changes"].as_array().into_iter().flatten() {
                println!("  {}", change.as_str().unwrap_or_default());
            }
            Ok(())
        }
        Command::GenerateAssets { dir } => generate::run(&dir),
        Command::Detach => {
            let body = agent.call(&Request::Detach {})?;
            println!(
                "detached from {}; port 25 is no longer enforced",
                body["detached"]
            );
            Ok(())
        }
    }
}

/// `24h` (that long ago) or an RFC 3339 time, as RFC 3339.
fn past_time(text: &str) -> anyhow::Result<String> {
    if let Ok(duration) = humantime::parse_duration(text) {
        let at = SystemTime::now()
            .checked_sub(duration)
            .with_context(|| format!("--since {text:?} reaches before 1970"))?;
        return Ok(humantime::format_rfc3339_seconds(at).to_string());
    }
    humantime::parse_rfc3339_weak(text)
        .map(|at| humantime::format_rfc3339_seconds(at).to_string())
        .map_err(|_| anyhow::anyhow!("--since {text:?} is neither a duration nor a time; expected 24h or 2026-11-01T00:00:00Z"))
}
