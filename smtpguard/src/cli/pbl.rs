//! `smtpguard pbl export`: the ranges to publish on a policy block list, as the running agent
//! has them (config and runtime exemptions and relays).

use anyhow::Context as _;
use clap::{Subcommand, ValueEnum};
use ipnet::IpNet;

use super::client::AgentArgs;
use crate::{agent::api::Request, report::pbl};

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
    /// Example: smtpguard pbl export --format spamhaus
    Export {
        /// plain (CIDR per line) or spamhaus (first - last per line), e.g. -o spamhaus
        #[arg(short = 'o', long, value_enum, default_value_t)]
        format: PblFormat,
    },
}

pub fn run(command: &PblCommand, agent: &AgentArgs) -> anyhow::Result<()> {
    let PblCommand::Export { format } = command;
    let body = agent.call(&Request::PblExport {})?;
    for text in body["prefixes"].as_array().into_iter().flatten() {
        let text = text.as_str().unwrap_or_default();
        let net: IpNet = text
            .parse()
            .with_context(|| format!("the agent listed {text:?}; expected a prefix"))?;
        match format {
            PblFormat::Plain => println!("{net}"),
            PblFormat::Spamhaus => println!("{}", pbl::as_range(&net)),
        }
    }
    Ok(())
}
