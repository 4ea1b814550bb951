//! `smtpguard relay add|list|rm`: runtime relays, on top of the config's.

use std::ffi::OsString;

use clap::Subcommand;

use super::{ListFormat, client::AgentArgs, table};
use crate::{agent::api::Request, input};

#[derive(Debug, Subcommand)]
pub enum RelayCommand {
    /// Allow subscribers to reach a relay prefix on the enforced ports.
    ///
    /// Example: smtpguard relay add 192.0.2.26/32 --note "second smarthost"
    Add {
        /// The relay prefix, e.g. 192.0.2.26/28; a bare address is that host alone
        /// (192.0.2.26 means 192.0.2.26/32)
        prefix: OsString,
        /// A note for the list (printable, at most 512 bytes), e.g. --note "second smarthost"
        #[arg(long)]
        note: Option<OsString>,
        /// Add it even though it is shorter than /8 (IPv4) or /16 (IPv6) (audited), e.g.
        /// smtpguard relay add 0.0.0.0/0 --force
        #[arg(long)]
        force: bool,
    },
    /// List relays from the config file, DNS and the store (alias: ls).
    ///
    /// Example: smtpguard relay ls -o json
    #[command(visible_alias = "ls")]
    List {
        /// table (for people), json or csv (for tools), e.g. -o json
        #[arg(short = 'o', long, value_enum, default_value_t)]
        format: ListFormat,
    },
    /// Remove a runtime relay (aliases: remove, del).
    ///
    /// Example: smtpguard relay rm 192.0.2.26
    #[command(visible_aliases = ["remove", "del"])]
    Rm {
        /// The prefix as listed, e.g. 192.0.2.26/32; a bare address is that host alone
        prefix: OsString,
    },
}

pub fn run(command: &RelayCommand, agent: &AgentArgs) -> anyhow::Result<()> {
    match command {
        RelayCommand::Add {
            prefix,
            note,
            force,
        } => {
            let body = agent.call(&Request::RelayAdd {
                prefix: input::parse_prefix_or_host("prefix", input::utf8("prefix", prefix)?)?
                    .to_string(),
                note: note
                    .as_deref()
                    .map(|n| input::utf8("note", n).map(str::to_owned))
                    .transpose()?,
                force: *force,
            })?;
            println!("relay: {}", table::text(&body["prefix"]));
        }
        RelayCommand::List { format } => {
            let body = agent.call(&Request::RelayList {})?;
            table::print_list(
                *format,
                &body,
                &table::with_gateway(
                    &body,
                    &[
                        ("prefix", "PREFIX"),
                        ("source", "SOURCE"),
                        ("host", "HOST"),
                        ("note", "NOTE"),
                        ("who", "WHO"),
                        ("created", "CREATED"),
                    ],
                ),
            )?;
        }
        RelayCommand::Rm { prefix } => {
            let prefix = input::parse_prefix_or_host("prefix", input::utf8("prefix", prefix)?)?;
            agent.call(&Request::RelayRemove {
                prefix: prefix.to_string(),
            })?;
            println!("no longer a relay: {prefix}");
        }
    }
    Ok(())
}
