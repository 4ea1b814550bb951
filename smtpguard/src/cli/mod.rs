//! The command line: one module per verb.

mod config;
mod replay;

use clap::{Parser, Subcommand, ValueEnum};

/// smtpguard: stops direct-to-MX spam from subscriber lines at the ISP's border gateway.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
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
    let cli = Cli::parse();
    match cli.command {
        Command::Replay(args) => replay::run(&args),
        Command::Config(command) => config::run(&command),
    }
}
