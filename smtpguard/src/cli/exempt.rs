//! `smtpguard exempt add|list|rm`

use std::time::SystemTime;

use anyhow::{Context as _, bail};
use clap::Subcommand;

use super::{ListFormat, client::AgentArgs, table};
use crate::agent::api::Request;

#[derive(Debug, Subcommand)]
pub enum ExemptCommand {
    /// Exempt a subscriber prefix; returns once the kernel map holds it.
    ///
    /// Example: smtpguard exempt add 100.64.10.0/24 --reason "static business block" --ticket T-4711 --expires 30d
    Add {
        /// The prefix to exempt, inside a subscriber range, e.g. 100.64.10.0/24
        prefix: String,
        /// Why, for whoever reads the list next, e.g. --reason "customer's own MX"
        #[arg(long)]
        reason: String,
        /// The ticket or case that asked for it, e.g. --ticket T-4711
        #[arg(long)]
        ticket: Option<String>,
        /// When it lapses: a duration from now (30d, 12h) or a time (2026-12-31T23:59:59Z)
        #[arg(long)]
        expires: Option<String>,
    },
    /// List exemptions from the config file and the store.
    ///
    /// Example: smtpguard exempt list --format csv
    List {
        /// table (for people), json or csv (for tools)
        #[arg(long, value_enum, default_value_t)]
        format: ListFormat,
    },
    /// Remove a runtime exemption; port 25 is blocked again at once.
    ///
    /// Example: smtpguard exempt rm 100.64.10.0/24
    Rm {
        /// The prefix exactly as listed, e.g. 100.64.10.0/24
        prefix: String,
    },
}

pub fn run(command: &ExemptCommand, agent: &AgentArgs) -> anyhow::Result<()> {
    match command {
        ExemptCommand::Add {
            prefix,
            reason,
            ticket,
            expires,
        } => {
            let expires = expires.as_deref().map(expiry).transpose()?;
            let body = agent.call(&Request::ExemptAdd {
                prefix: prefix.clone(),
                reason: reason.clone(),
                ticket: ticket.clone(),
                expires,
            })?;
            println!("exempt: {}", table::text(&body["prefix"]));
        }
        ExemptCommand::List { format } => {
            let body = agent.call(&Request::ExemptList {})?;
            let rows = body.as_array().cloned().unwrap_or_default();
            let columns = [
                "prefix", "source", "reason", "ticket", "who", "created", "expires",
            ];
            match format {
                ListFormat::Json => table::print_json(&body)?,
                ListFormat::Csv => table::print_csv(&columns, &rows)?,
                ListFormat::Table => table::print(
                    &[
                        "PREFIX", "SOURCE", "REASON", "TICKET", "WHO", "CREATED", "EXPIRES",
                    ],
                    rows.iter()
                        .map(|row| columns.iter().map(|c| table::text(&row[*c])).collect())
                        .collect(),
                ),
            }
        }
        ExemptCommand::Rm { prefix } => {
            agent.call(&Request::ExemptRemove {
                prefix: prefix.clone(),
            })?;
            println!("no longer exempt: {prefix}");
        }
    }
    Ok(())
}

/// `30d` or an RFC 3339 time, as RFC 3339.
fn expiry(text: &str) -> anyhow::Result<String> {
    if let Ok(duration) = humantime::parse_duration(text) {
        if duration.is_zero() {
            bail!("--expires {text:?} is no time from now; expected a duration such as 30d");
        }
        let at = SystemTime::now()
            .checked_add(duration)
            .with_context(|| format!("--expires {text:?} is too far in the future"))?;
        return Ok(humantime::format_rfc3339_seconds(at).to_string());
    }
    humantime::parse_rfc3339_weak(text)
        .map(|at| humantime::format_rfc3339_seconds(at).to_string())
        .map_err(|_| {
            anyhow::anyhow!(
                "--expires {text:?} is neither a duration nor a time; expected 30d, 12h or \
                 2026-12-31T23:59:59Z"
            )
        })
}
