//! `smtpguard pbl export`: the ranges to publish on a policy block list.

use std::path::Path;

use anyhow::Context as _;
use clap::{Subcommand, ValueEnum};
use ipnet::IpNet;

use crate::{config::Config, report::pbl, store::Store};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum PblFormat {
    /// One CIDR prefix per line.
    #[default]
    Plain,
    /// `first - last` per line, as the Spamhaus PBL ISP portal takes ranges.
    Spamhaus,
}

#[derive(Debug, Subcommand)]
pub enum PblCommand {
    /// The subscriber ranges minus exempted and relay ranges: never to send mail directly.
    ///
    /// Example: smtpguard --config /etc/smtpguard/smtpguard.toml pbl export --format spamhaus
    Export {
        /// plain (CIDR per line) or spamhaus (first - last per line), e.g. -o spamhaus
        #[arg(short = 'o', long, value_enum, default_value_t)]
        format: PblFormat,
    },
}

pub fn run(command: &PblCommand, config_path: &Path) -> anyhow::Result<()> {
    let PblCommand::Export { format } = command;
    let config = Config::load(config_path).context("invalid configuration")?;
    let store = Store::open(&config.agent.state_dir)?;
    let mut holes: Vec<IpNet> = config.exemptions.iter().map(|e| e.prefix).collect();
    holes.extend(config.relays.iter().map(|r| r.prefix));
    holes.extend(store.exemptions()?.into_iter().map(|e| e.prefix));
    holes.extend(store.relays()?.into_iter().map(|r| r.prefix));
    let ranges: Vec<IpNet> = config.subscribers.iter().map(|s| s.prefix).collect();
    for net in pbl::subtract(&ranges, &holes) {
        match format {
            PblFormat::Plain => println!("{net}"),
            PblFormat::Spamhaus => println!("{}", pbl::as_range(&net)),
        }
    }
    Ok(())
}
