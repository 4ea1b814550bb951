//! `smtpguard status`, `smtpguard check`, `smtpguard audit`: what the live agent is doing.

use clap::Args;
use serde_json::Value;

use super::{
    Format,
    client::{self, AgentArgs},
    table,
};
use crate::{agent::api::Request, input, store::Store};

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// table (for people) or json (for tools), e.g. -o json
    #[arg(short = 'o', long, value_enum, default_value_t)]
    format: Format,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Source address, e.g. 100.64.0.2 (or 100.64.0.2/32)
    src: String,
    /// Destination address, e.g. 198.51.100.7 (or 198.51.100.7/32)
    dst: String,
    /// Destination TCP port, e.g. --port 25
    #[arg(long, default_value_t = 25)]
    port: u16,
    /// table (for people) or json (for tools), e.g. -o json
    #[arg(short = 'o', long, value_enum, default_value_t)]
    format: Format,
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Only entries this recent: a duration (24h, 7d), a date (2026-11-01: from its
    /// midnight, local time), a local time (2026-11-01T08:00), an RFC 3339 time
    /// (2026-11-01T08:00:00Z), today or yesterday
    #[arg(long)]
    since: Option<String>,
    /// The whole fleet's changes of the shared policy (from etcd) instead of this gateway's
    /// trail, with the gateway each was made on, e.g. smtpguard audit --fleet --since 24h
    #[arg(long)]
    fleet: bool,
    /// table (for people) or json (for tools), e.g. -o json
    #[arg(short = 'o', long, value_enum, default_value_t)]
    format: Format,
}

pub fn status(args: &StatusArgs, agent: &AgentArgs) -> anyhow::Result<()> {
    let body = agent.call(&Request::Status {})?;
    if args.format == Format::Json {
        return table::print_json(&body);
    }
    let attached: Vec<String> = body["attached"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            format!(
                "{} ({})",
                table::text(&a["interface"]),
                table::text(&a["attach"])
            )
        })
        .collect();
    table::print(
        &["", ""],
        vec![
            row("version", &body["version"]),
            row(
                "uptime",
                &Value::String(format!("{}s", table::text(&body["uptime_seconds"]))),
            ),
            row("config", &body["config"]),
            row("attach", &body["attach"]),
            vec![
                "attached".to_owned(),
                if attached.is_empty() {
                    "NOTHING: not enforcing".to_owned()
                } else {
                    attached.join(", ")
                },
            ],
            listed_or_none(
                "detached",
                &body["detached"],
                table::text,
                "interface missing, not enforcing there",
            ),
            listed_or_none(
                "unlisted tunnels",
                &body["unlisted_tunnels"],
                |t| {
                    format!(
                        "{} ({})",
                        table::text(&t["interface"]),
                        table::text(&t["kind"])
                    )
                },
                "up, not filtered",
            ),
            row("enforced ports", &body["enforced_ports"]),
            vec![
                "subscriber ranges".to_owned(),
                format!(
                    "{} enforce, {} monitor",
                    table::text(&body["ranges_by_mode"]["enforce"]),
                    table::text(&body["ranges_by_mode"]["monitor"])
                ),
            ],
            listed_or_none("relay hosts", &body["relay_hosts"], relay_host, ""),
            row("exemptions", &body["exemptions"]),
            row("relays", &body["relays"]),
            vec![
                "unrecorded".to_owned(),
                format!(
                    "{} host segments",
                    table::text(&body["unrecorded_host_segments"])
                ),
            ],
            row("pin folder", &body["pin_dir"]),
            row("state folder", &body["state_dir"]),
            vec![
                "netns".to_owned(),
                match table::text(&body["netns"]) {
                    netns if netns.is_empty() => "none (the agent's own)".to_owned(),
                    netns => netns,
                },
            ],
            row("socket", &body["socket"]),
            row("metrics", &body["metrics_listen"]),
        ]
        .into_iter()
        .chain(fleet_row(&body["fleet"]))
        .collect(),
    );
    println!();
    table::print(
        &["RANGE", "MODE"],
        body["subscribers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|range| vec![table::text(&range["prefix"]), table::text(&range["mode"])])
            .collect(),
    );
    for tunnel in body["unlisted_tunnels"].as_array().into_iter().flatten() {
        eprintln!("warning: {}", table::text(&tunnel["warning"]));
    }
    println!();
    let packets = body["packets"].as_object().cloned().unwrap_or_default();
    table::print(
        &["REASON", "PACKETS"],
        packets
            .iter()
            .map(|(reason, count)| vec![reason.clone(), table::text(count)])
            .collect(),
    );
    println!();
    table::print(
        &["MAP", "ENTRIES", "CAPACITY"],
        body["maps"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| {
                vec![
                    table::text(&m["map"]),
                    table::text(&m["entries"]),
                    table::text(&m["capacity"]),
                ]
            })
            .collect(),
    );
    Ok(())
}

fn row(label: &str, value: &Value) -> Vec<String> {
    vec![label.to_owned(), table::text(value)]
}

/// A row naming each item of the array `items` (`name` renders one) followed by `what`
/// ("eth1, eth2: interface missing, ..."), or "none".
fn listed_or_none(
    label: &str,
    items: &Value,
    name: impl Fn(&Value) -> String,
    what: &str,
) -> Vec<String> {
    let names: Vec<String> = items.as_array().into_iter().flatten().map(name).collect();
    let text = match (names.is_empty(), what) {
        (true, _) => "none".to_owned(),
        (false, "") => names.join(", "),
        (false, what) => format!("{}: {what}", names.join(", ")),
    };
    vec![label.to_owned(), text]
}

/// "smtp.isp.example (192.0.2.25)", or with why and since when it does not resolve.
fn relay_host(host: &Value) -> String {
    let addresses: Vec<String> = host["addresses"]
        .as_array()
        .into_iter()
        .flatten()
        .map(table::text)
        .collect();
    let addresses = if addresses.is_empty() {
        "no address".to_owned()
    } else {
        addresses.join(" ")
    };
    match &host["unresolved"] {
        Value::Null => format!("{} ({addresses})", table::text(&host["host"])),
        unresolved => format!(
            "{} (UNRESOLVED since {}: {}; {addresses})",
            table::text(&host["host"]),
            table::text(&unresolved["since"]),
            table::text(&unresolved["error"])
        ),
    }
}

pub fn check(args: &CheckArgs, agent: &AgentArgs) -> anyhow::Result<()> {
    let body = agent.call(&Request::Check {
        src: input::parse_host("source", &args.src)?.to_string(),
        dst: input::parse_host("destination", &args.dst)?.to_string(),
        port: args.port,
    })?;
    if args.format == Format::Json {
        return table::print_json(&body);
    }
    let or_none = |value: &Value| {
        if value.is_null() {
            "none".to_owned()
        } else {
            table::text(value)
        }
    };
    table::print(
        &["", ""],
        vec![
            vec![
                "verdict".to_owned(),
                format!(
                    "{} ({})",
                    table::text(&body["verdict"]),
                    table::text(&body["reason"])
                ),
            ],
            vec![
                "enforced port".to_owned(),
                format!(
                    "{} (enforced: {})",
                    table::text(&body["enforced_port"]),
                    table::text(&body["enforced_ports"])
                ),
            ],
            vec![
                "subscriber range".to_owned(),
                format!(
                    "{} {}",
                    or_none(&body["subscriber"]),
                    table::text(&body["subscriber_mode"])
                ),
            ],
            vec![
                "action".to_owned(),
                match (body["action"].as_str(), body["action_applies"].as_bool()) {
                    (Some(action), Some(true)) if body["escalated"] == true => {
                        format!("{action}: the host is escalated")
                    }
                    (Some(action), Some(true)) => format!("{action}: the range is enforced"),
                    (Some(action), _) => format!("{action} (not applied: see the verdict)"),
                    (None, _) => "none (not a subscriber)".to_owned(),
                },
            ],
            vec![
                "relay".to_owned(),
                format!(
                    "{} {}",
                    or_none(&body["relay"]),
                    table::text(&body["relay_source"])
                ),
            ],
            vec![
                "exemption".to_owned(),
                format!(
                    "{} {}",
                    or_none(&body["exemption"]),
                    table::text(&body["exemption_source"])
                ),
            ],
            vec![
                "kernel maps agree".to_owned(),
                table::text(&body["kernel_agrees"]),
            ],
        ],
    );
    Ok(())
}

/// `fleet: gw-1 connected since ..., revision N` or `disconnected since ...`, with what
/// failed; nothing for a gateway on its own.
fn fleet_row(fleet: &Value) -> Option<Vec<String>> {
    if fleet.is_null() {
        return None;
    }
    let state = if fleet["connected"].as_bool() == Some(true) {
        "connected"
    } else {
        "disconnected"
    };
    let mut line = format!(
        "{} {state} since {}, revision {}, last sync {}",
        table::text(&fleet["gateway_id"]),
        table::text(&fleet["since"]),
        table::text(&fleet["revision"]),
        match table::text(&fleet["last_sync"]) {
            never if never.is_empty() => "never".to_owned(),
            at => at,
        },
    );
    if let Some(error) = fleet["last_error"].as_str() {
        line.push_str(&format!(" ({error})"));
    }
    if fleet["corrupt_keys"].as_u64().unwrap_or(0) > 0 {
        line.push_str(&format!(
            "; {} corrupt keys skipped",
            table::text(&fleet["corrupt_keys"])
        ));
    }
    Some(vec!["fleet".to_owned(), line])
}

pub fn audit(args: &AuditArgs, agent: &AgentArgs) -> anyhow::Result<()> {
    let since = args.since.as_deref().map(super::past_time).transpose()?;
    let body = match agent.call(&Request::Audit {
        since: since.clone(),
        fleet: args.fleet,
    }) {
        Ok(body) => body,
        // The fleet's audit lives in etcd, which the agent reaches: no store to fall back on.
        Err(error) if client::unreachable(&error) && !args.fleet => {
            eprintln!("note: {error}; reading its store instead");
            audit_from_store(agent, since.as_deref())?
        }
        Err(error) => return Err(error),
    };
    if args.format == Format::Json {
        return table::print_json(&body);
    }
    if args.fleet {
        let columns = ["action", "subject", "who", "gateway", "detail"];
        table::print(
            &["AT", "ACTION", "SUBJECT", "WHO", "GATEWAY", "DETAIL"],
            body.as_array()
                .into_iter()
                .flatten()
                .map(|entry| {
                    let at = entry["at_ms"]
                        .as_u64()
                        .map(|ms| {
                            humantime::format_rfc3339_millis(
                                std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms),
                            )
                            .to_string()
                        })
                        .unwrap_or_default();
                    std::iter::once(at)
                        .chain(columns.iter().map(|c| table::text(&entry[*c])))
                        .collect()
                })
                .collect(),
        );
        return Ok(());
    }
    let columns = ["at", "action", "subject", "who", "detail"];
    table::print(
        &["AT", "ACTION", "SUBJECT", "WHO", "DETAIL"],
        body.as_array()
            .into_iter()
            .flatten()
            .map(|entry| columns.iter().map(|c| table::text(&entry[*c])).collect())
            .collect(),
    );
    Ok(())
}

/// The audit log read from the store itself, read-only, for when no agent answers: who
/// changed what is most wanted when the agent is down.
fn audit_from_store(agent: &AgentArgs, since: Option<&str>) -> anyhow::Result<Value> {
    let config = agent.config_without_agent("its state folder")?;
    let since = since.map(|at| input::parse_time("since", at)).transpose()?;
    let store = Store::open_read_only(&config.agent.state_dir)?;
    Ok(serde_json::to_value(store.audit(since)?)?)
}
