//! `smtpguard escalations [lift HOST]` and `smtpguard events`.

use clap::{Args, Subcommand};

use super::{Format, client::AgentArgs, table};
use crate::{
    agent::api::{self, Request},
    input,
};

#[derive(Debug, Args)]
pub struct EscalationsArgs {
    #[command(subcommand)]
    action: Option<EscalationAction>,
    /// table (for people) or json (for tools), e.g. -o json
    #[arg(short = 'o', long, value_enum, default_value_t)]
    format: Format,
}

#[derive(Debug, Subcommand)]
enum EscalationAction {
    /// End a host's escalation now; its range's monitor mode applies again.
    ///
    /// Example: smtpguard escalations lift 100.127.0.9
    Lift {
        /// The escalated host, e.g. 100.127.0.9 (or 100.127.0.9/32)
        host: String,
    },
}

pub fn escalations(args: &EscalationsArgs, agent: &AgentArgs) -> anyhow::Result<()> {
    if let Some(EscalationAction::Lift { host }) = &args.action {
        let host = input::parse_host("host", host)?;
        agent.call(&Request::EscalationLift {
            host: host.to_string(),
        })?;
        println!("escalation of {host} lifted");
        return Ok(());
    }
    let body = agent.call(&Request::EscalationList {})?;
    if args.format == Format::Json {
        return table::print_json(&body);
    }
    let columns = ["host", "subscriber", "level", "started", "until"];
    table::print(
        &["HOST", "SUBSCRIBER", "LEVEL", "STARTED", "UNTIL"],
        body.as_array()
            .into_iter()
            .flatten()
            .map(|row| columns.iter().map(|c| table::text(&row[*c])).collect())
            .collect(),
    );
    Ok(())
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// table (one readable line per event) or json (the agent's JSON lines, for tools),
    /// e.g. -o json
    #[arg(short = 'o', long, value_enum, default_value_t)]
    format: Format,
    /// When the agent goes away (a restart, an upgrade), wait for it and go on; events
    /// while it was away are not replayed. Without it, `events` then ends with exit code 2.
    /// E.g. smtpguard events --follow -o json
    #[arg(long)]
    follow: bool,
}

/// How often `events --follow` tries to reach an agent that went away.
const FOLLOW_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

pub fn events(args: &EventsArgs, agent: &AgentArgs) -> anyhow::Result<()> {
    let socket = agent.socket()?;
    let mut away = false;
    loop {
        let streamed = api::stream_events(
            &socket,
            || {
                if away {
                    eprintln!("note: connected to the agent at {} again", socket.display());
                }
                away = false;
            },
            |line| print_event(args.format, line),
        );
        match streamed {
            Err(api::ClientError::Gone { .. } | api::ClientError::Unreachable { .. })
                if args.follow =>
            {
                if !away {
                    eprintln!(
                        "note: the agent at {} went away; waiting for it",
                        socket.display()
                    );
                }
                away = true;
                std::thread::sleep(FOLLOW_RETRY);
            }
            other => return Ok(other?),
        }
    }
}

fn print_event(format: Format, line: &str) {
    if format == Format::Json {
        println!("{line}");
        return;
    }
    let event: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
    let text = |key: &str| table::text(&event[key]);
    match event["event"].as_str().unwrap_or("") {
        "bot" => println!(
            "{} bot {} ({}; {} attempts)",
            text("at"),
            text("host"),
            text("class_reason"),
            text("attempts")
        ),
        "escalated" => println!(
            "{} escalated {} (level {}, until {})",
            text("at"),
            text("host"),
            text("level"),
            text("until")
        ),
        "escalation-ended" => println!(
            "{} escalation of {} ended ({})",
            text("at"),
            text("host"),
            if event["expired"] == true {
                "expired".to_owned()
            } else {
                format!("lifted by {}", text("by"))
            }
        ),
        _ => println!("{line}"),
    }
}
