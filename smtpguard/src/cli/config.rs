//! `smtpguard config check FILE`

use anyhow::Context as _;
use clap::Subcommand;

use crate::config::Config;
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a configuration file and summarise it; exit code 1 if it is invalid.
    ///
    /// Example: smtpguard config check /etc/smtpguard/smtpguard.toml
    Check {
        /// The configuration file to check.
        file: PathBuf,
    },
}

pub fn run(command: &ConfigCommand) -> anyhow::Result<()> {
    match command {
        ConfigCommand::Check { file } => {
            let config = Config::load(file).context("invalid configuration")?;
            println!(
                "{}: ok ({} subscriber ranges, {} relays, {} exemptions; enforced ports {:?})",
                file.display(),
                config.subscribers.len(),
                config.relays.len(),
                config.exemptions.len(),
                config.enforcement.ports,
            );
            Ok(())
        }
    }
}
