//! `smtpguard session start|stop` (bindings by hand, for a BNG without RADIUS) and
//! `smtpguard who ADDRESS [--at TIME]`.

use std::{ffi::OsStr, ffi::OsString, time::SystemTime};

use clap::{Args, Subcommand};

use super::{Format, client::AgentArgs, table};
use crate::{agent::api::Request, input};

#[derive(Debug, Subcommand)]
pub enum SessionCommand {
    /// Bind an address or prefix to a customer identity from now on, as an accounting Start
    /// does; an address another identity held moves to this one.
    ///
    /// Example: smtpguard session start --subscriber cust-4711@isp.example --address 100.64.0.2
    Start(SessionArgs),
    /// End the binding of an address or prefix to a customer identity.
    ///
    /// Example: smtpguard session stop --subscriber cust-4711@isp.example --address 100.64.0.2
    Stop(SessionArgs),
}

#[derive(Debug, Args)]
pub struct SessionArgs {
    /// The customer identity (printable, at most 253 bytes), e.g. --subscriber
    /// cust-4711@isp.example
    #[arg(long)]
    subscriber: OsString,
    /// The address (its host) or prefix the session holds, e.g. --address 100.64.0.2 or
    /// --address 2001:db8:1000:100::/56
    #[arg(long)]
    address: OsString,
}

#[derive(Debug, Args)]
pub struct WhoArgs {
    /// The address asked about, e.g. 100.64.0.2
    address: OsString,
    /// When (default now): a duration back (2h), a date (2026-12-01), a local time
    /// (2026-12-01T08:00) or an RFC 3339 time, e.g. --at 2026-12-01T08:00:00Z
    #[arg(long)]
    at: Option<OsString>,
    /// table (for people) or json (for tools), e.g. -o json
    #[arg(short = 'o', long, value_enum, default_value_t)]
    format: Format,
}

/// A subscriber identity as typed, once it is one.
pub(super) fn subscriber(value: &OsStr) -> anyhow::Result<String> {
    let text = input::utf8("subscriber", value)?;
    input::check_subscriber(text)?;
    Ok(text.to_owned())
}

pub fn session(command: &SessionCommand, agent: &AgentArgs) -> anyhow::Result<()> {
    let (args, start) = match command {
        SessionCommand::Start(args) => (args, true),
        SessionCommand::Stop(args) => (args, false),
    };
    let subscriber = subscriber(&args.subscriber)?;
    let address = input::utf8("address", &args.address)?.to_owned();
    input::parse_prefix_or_host("address", &address)?;
    if start {
        let body = agent.call(&Request::SessionStart {
            subscriber,
            address,
        })?;
        let exempt = if body["exempt"] == true {
            " (exempt)"
        } else {
            ""
        };
        println!(
            "bound: {} to {}{exempt}",
            table::text(&body["prefix"]),
            table::text(&body["subscriber"])
        );
    } else {
        let body = agent.call(&Request::SessionStop {
            subscriber,
            address,
        })?;
        println!(
            "unbound: {} from {}",
            table::text(&body["prefix"]),
            table::text(&body["subscriber"])
        );
    }
    Ok(())
}

pub fn who(args: &WhoArgs, agent: &AgentArgs) -> anyhow::Result<()> {
    let address = input::utf8("address", &args.address)?;
    input::parse_address("address", address)?;
    let at = args
        .at
        .as_deref()
        .map(|at| {
            let at = input::utf8("--at", at)?;
            let at = input::parse_past("--at", at, SystemTime::now())?;
            Ok::<_, anyhow::Error>(humantime::format_rfc3339_millis(at).to_string())
        })
        .transpose()?;
    let body = agent.call(&Request::Who {
        address: address.to_owned(),
        at,
    })?;
    if args.format == Format::Json {
        return table::print_json(&body);
    }
    let columns = [
        "address",
        "at",
        "subscriber",
        "prefix",
        "started",
        "stopped",
    ];
    table::print(
        &[
            "ADDRESS",
            "AT",
            "SUBSCRIBER",
            "PREFIX",
            "STARTED",
            "STOPPED",
        ],
        vec![columns.iter().map(|c| table::text(&body[*c])).collect()],
    );
    Ok(())
}
