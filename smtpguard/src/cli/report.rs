//! `smtpguard report`: the abuse desk's view of the agent's history. The agent builds and
//! renders it from its own store and streams it over the socket, so the desk needs only the
//! socket's group, not the state folder.

use std::{
    fs::File,
    io::{BufWriter, Write},
    path::{Path, PathBuf},
    time::SystemTime,
};

use anyhow::{Context as _, bail};
use clap::{Args, ValueEnum};

use super::client::{AgentArgs, AgentRefused};
use crate::{
    agent::{
        api::Request,
        stream::{self, StreamError},
    },
    input,
    report::{Grouping, render::ReportFormat},
};

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The window up to now (default 24h): a duration (24h, 7d), a date (2026-11-22: from
    /// its midnight, local time), a local time (2026-11-22T08:00), an RFC 3339 time
    /// (2026-11-22T08:00:00Z), today or yesterday, e.g. --since 7d
    #[arg(long, conflicts_with_all = ["from", "to"])]
    since: Option<String>,
    /// Window start (with --to), as --since takes it, e.g. --from 2026-11-22 or --from 3d
    #[arg(long, requires = "to")]
    from: Option<String>,
    /// Window end (with --from), as --since takes it, e.g. --to 2026-11-23 or --to now
    #[arg(long, requires = "from")]
    to: Option<String>,
    /// Only the N rows with the most attempts, e.g. --top 50
    #[arg(long)]
    top: Option<usize>,
    /// Only rows with at least N connection attempts, e.g. --min-attempts 10
    #[arg(long, default_value_t = 0)]
    min_attempts: u64,
    /// Only hosts that hit their limit: attempts refused by their `ratelimit` rate or beyond
    /// their `reject` reply budget (the limited column), e.g. --limited --since 24h
    #[arg(long, conflicts_with_all = ["reoffenders", "fleet"])]
    limited: bool,
    /// Only hosts inside this prefix, e.g. --prefix 100.64.0.0/16
    #[arg(long)]
    prefix: Option<String>,
    /// One row per host, per IPv6 /64 or /56, per subscriber range, or per customer identity
    /// across its address changes (subscriber-id), e.g. --group /64
    #[arg(long, value_enum, default_value_t)]
    group: Grouping,
    /// table (for people), json or csv (for tools and spreadsheets), e.g. -o csv
    #[arg(short = 'o', long, value_enum, default_value_t)]
    format: ReportFormat,
    /// Write to this file instead of standard output, e.g. --output report.csv
    #[arg(long)]
    output: Option<PathBuf>,
    /// List reoffenders instead: hosts (or customer identities, under all their addresses)
    /// classified as bots in windows at least the config's reoffense_gap apart, with their
    /// history, e.g. --reoffenders --since 30d
    #[arg(long)]
    reoffenders: bool,
    /// Every gateway's history, from the fleet's PostgreSQL (the agent's [fleet] postgres),
    /// with a gateways column, e.g. smtpguard report --fleet --since 24h
    #[arg(long, conflicts_with = "reoffenders")]
    fleet: bool,
    /// With --fleet: one gateway's history only, e.g. --fleet --gateway gw-par-1
    #[arg(long, requires = "fleet")]
    gateway: Option<String>,
}

pub fn run(args: &ReportArgs, agent: &AgentArgs) -> anyhow::Result<()> {
    let now = SystemTime::now();
    let (from, to) = window(args, now)?;
    let request = Request::Report {
        from: humantime::format_rfc3339_millis(from).to_string(),
        to: humantime::format_rfc3339_millis(to).to_string(),
        top: args.top,
        min_attempts: args.min_attempts,
        limited: args.limited,
        prefix: args.prefix.clone(),
        group: name(args.group),
        format: name(args.format),
        reoffenders: args.reoffenders,
        fleet: args.fleet,
        gateway: args.gateway.clone(),
    };
    request.validate(now)?;
    let socket = agent.socket()?;
    let Some(path) = &args.output else {
        return receive(&socket, &request, &mut std::io::stdout().lock());
    };
    let mut file =
        BufWriter::new(File::create(path).with_context(|| format!("creating {}", path.display()))?);
    let received = receive(&socket, &request, &mut file).and_then(|()| {
        file.flush()
            .with_context(|| format!("writing {}", path.display()))
    });
    if received.is_err() {
        // An incomplete report must not pass for a whole one.
        drop(file);
        let _ = std::fs::remove_file(path);
    }
    received
}

/// The name a value has on the command line (and on the wire).
fn name(value: impl ValueEnum) -> String {
    value
        .to_possible_value()
        .map(|v| v.get_name().to_owned())
        .unwrap_or_default()
}

/// Copies the agent's report into `out`; errors keep the kinds that decide the exit code.
fn receive(socket: &Path, request: &Request, out: &mut dyn Write) -> anyhow::Result<()> {
    match stream::receive(socket, request, out) {
        Ok(_) => Ok(()),
        Err(StreamError::Client(error)) => Err(error.into()),
        Err(StreamError::Refused { kind, message }) => Err(AgentRefused { kind, message }.into()),
        Err(error @ StreamError::Output(_)) => Err(error.into()),
    }
}

fn window(args: &ReportArgs, now: SystemTime) -> anyhow::Result<(SystemTime, SystemTime)> {
    match (&args.since, &args.from, &args.to) {
        (_, Some(from), Some(to)) => {
            let (from, to) = (
                input::parse_past("--from", from, now)?,
                input::parse_past("--to", to, now)?,
            );
            if from >= to {
                bail!(
                    "--from {} is not before --to {}; expected a window that starts before it \
                     ends",
                    humantime::format_rfc3339_seconds(from),
                    humantime::format_rfc3339_seconds(to)
                );
            }
            Ok((from, to))
        }
        (since, _, _) => {
            let since = since.as_deref().unwrap_or("24h");
            Ok((input::parse_since("--since", since, now)?, now))
        }
    }
}
