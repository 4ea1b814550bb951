//! `smtpguard exempt add|update|list|rm`

use std::{ffi::OsString, time::SystemTime};

use clap::Subcommand;

use super::{ListFormat, client::AgentArgs, table};
use crate::{agent::api::Request, input};

#[derive(Debug, Subcommand)]
pub enum ExemptCommand {
    /// Exempt a subscriber prefix, or a customer identity whatever address it holds; returns
    /// once the kernel map holds it.
    ///
    /// Example: smtpguard exempt add 100.64.10.0/24 --reason "static business block" --ticket T-4711 --expires 30d
    Add {
        /// The prefix to exempt, inside a subscriber range, e.g. 100.64.10.0/24; a bare
        /// address is that host alone (100.64.0.2 means 100.64.0.2/32)
        #[arg(required_unless_present = "subscriber", conflicts_with = "subscriber")]
        prefix: Option<OsString>,
        /// Exempt a customer identity instead (its RADIUS User-Name or configured attribute;
        /// printable, at most 253 bytes): the addresses bound to it are exempt for as long as
        /// they are (until --expires, when given), e.g. --subscriber cust-4711@isp.example
        #[arg(long, conflicts_with = "force")]
        subscriber: Option<OsString>,
        /// Why, for whoever reads the list next (printable, at most 512 bytes), e.g.
        /// --reason "customer's own MX"
        #[arg(long)]
        reason: OsString,
        /// The ticket or case that asked for it (printable, at most 128 bytes), e.g.
        /// --ticket T-4711
        #[arg(long)]
        ticket: Option<OsString>,
        /// When it lapses, at most 10 years ahead: a duration from now (30d, 12h), a date
        /// (2026-12-31: it lapses as that day begins, local time), a local time
        /// (2026-12-31T18:00), an RFC 3339 time (2026-12-31T23:59:59Z) or tomorrow
        #[arg(long)]
        expires: Option<OsString>,
        /// Exempt it even though it covers a whole enforced subscriber range (audited), e.g.
        /// smtpguard exempt add 100.64.0.0/10 --reason "migration" --force
        #[arg(long)]
        force: bool,
    },
    /// Change a runtime exemption's reason, ticket or expiry; it stays in force throughout
    /// (audited with the old and the new values).
    ///
    /// Example: smtpguard exempt update 100.64.10.0/24 --ticket T-4712 --expires 90d
    Update {
        /// The prefix as listed, e.g. 100.64.10.0/24; a bare address is that host alone
        prefix: OsString,
        /// The new reason (printable, at most 512 bytes), e.g. --reason "contract renewed"
        #[arg(long)]
        reason: Option<OsString>,
        /// The new ticket (printable, at most 128 bytes), e.g. --ticket T-4712
        #[arg(long)]
        ticket: Option<OsString>,
        /// The new expiry, as for `exempt add`, e.g. --expires 90d
        #[arg(long, conflicts_with = "no_expiry")]
        expires: Option<OsString>,
        /// It no longer expires, e.g. smtpguard exempt update 100.64.10.0/24 --no-expiry
        #[arg(long)]
        no_expiry: bool,
    },
    /// List exemptions from the config file and the store (alias: ls).
    ///
    /// Example: smtpguard exempt ls -o csv
    #[command(visible_alias = "ls")]
    List {
        /// table (for people), json or csv (for tools), e.g. -o json
        #[arg(short = 'o', long, value_enum, default_value_t)]
        format: ListFormat,
    },
    /// Remove a runtime exemption; port 25 is blocked again at once (aliases: remove, del).
    ///
    /// Example: smtpguard exempt rm 100.64.10.0/24
    #[command(visible_aliases = ["remove", "del"])]
    Rm {
        /// The prefix as listed, e.g. 100.64.10.0/24; a bare address is that host alone
        #[arg(required_unless_present = "subscriber", conflicts_with = "subscriber")]
        prefix: Option<OsString>,
        /// Remove a customer identity's exemption instead, e.g. --subscriber cust-4711@isp.example
        #[arg(long)]
        subscriber: Option<OsString>,
    },
}

pub fn run(command: &ExemptCommand, agent: &AgentArgs) -> anyhow::Result<()> {
    match command {
        ExemptCommand::Add {
            prefix,
            subscriber,
            reason,
            ticket,
            expires,
            force,
        } => {
            let reason = input::utf8("reason", reason)?.to_owned();
            let ticket = ticket
                .as_deref()
                .map(|t| input::utf8("ticket", t).map(str::to_owned))
                .transpose()?;
            let body = match (subscriber, prefix) {
                (Some(subscriber), _) => agent.call(&Request::SubscriberExemptAdd {
                    subscriber: super::session::subscriber(subscriber)?,
                    reason,
                    ticket,
                    expires: expiry(expires.as_deref())?,
                })?,
                (None, prefix) => agent.call(&Request::ExemptAdd {
                    prefix: exempted(prefix.as_deref())?,
                    reason,
                    ticket,
                    expires: expiry(expires.as_deref())?,
                    force: *force,
                })?,
            };
            print_exempt("exempt", &body);
        }
        ExemptCommand::Update {
            prefix,
            reason,
            ticket,
            expires,
            no_expiry,
        } => {
            let text = |field, value: &Option<OsString>| {
                value
                    .as_deref()
                    .map(|v| input::utf8(field, v).map(str::to_owned))
                    .transpose()
            };
            let body = agent.call(&Request::ExemptUpdate {
                prefix: exempted(Some(prefix))?,
                reason: text("reason", reason)?,
                ticket: text("ticket", ticket)?,
                expires: expiry(expires.as_deref())?,
                no_expiry: *no_expiry,
            })?;
            println!("updated: {}", table::text(&body["prefix"]));
        }
        ExemptCommand::List { format } => {
            let body = agent.call(&Request::ExemptList {})?;
            // The SUBSCRIBER column only when an identity is exempt: a gateway without them
            // lists what it always did.
            let mut columns =
                table::with_present(&body, &[("prefix", "PREFIX")], ("subscriber", "SUBSCRIBER"));
            columns.extend_from_slice(&[
                ("source", "SOURCE"),
                ("reason", "REASON"),
                ("ticket", "TICKET"),
                ("who", "WHO"),
                ("created", "CREATED"),
                ("expires", "EXPIRES"),
            ]);
            table::print_list(*format, &body, &table::with_gateway(&body, &columns))?;
        }
        ExemptCommand::Rm { prefix, subscriber } => {
            let body = match subscriber {
                Some(subscriber) => agent.call(&Request::SubscriberExemptRemove {
                    subscriber: super::session::subscriber(subscriber)?,
                })?,
                None => agent.call(&Request::ExemptRemove {
                    prefix: exempted(prefix.as_deref())?,
                })?,
            };
            print_exempt("no longer exempt", &body);
        }
    }
    Ok(())
}

/// What `exempt add` and `exempt rm` say they did: the prefix, or the identity and what it
/// holds now.
fn print_exempt(done: &str, body: &serde_json::Value) {
    match body["subscriber"].as_str() {
        Some(subscriber) => println!(
            "{done}: subscriber {subscriber} (bound now: {})",
            match table::text(&body["prefix"]) {
                bound if bound.is_empty() => "nothing".to_owned(),
                bound => bound,
            }
        ),
        None => println!("{done}: {}", table::text(&body["prefix"])),
    }
}

/// `--expires` as the RFC 3339 time the agent takes.
fn expiry(expires: Option<&std::ffi::OsStr>) -> anyhow::Result<Option<String>> {
    Ok(expires
        .map(|text| {
            let text = input::utf8("--expires", text)?;
            let at = input::parse_expiry("--expires", text, SystemTime::now())?;
            Ok::<_, input::InputError>(humantime::format_rfc3339_seconds(at).to_string())
        })
        .transpose()?)
}

/// The prefix as typed, once it is one (or a bare address): the agent turns a bare address
/// into the host it belongs to, which only its config says (an IPv6 host is a /64 by
/// default).
fn exempted(prefix: Option<&std::ffi::OsStr>) -> anyhow::Result<String> {
    // clap requires the prefix without --subscriber.
    let text = input::utf8("prefix", prefix.unwrap_or_default())?;
    input::parse_prefix_or_host("prefix", text)?;
    Ok(text.to_owned())
}
