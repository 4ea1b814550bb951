//! `report`: the abuse desk's report, built from the agent's own store and streamed to the
//! client (see [`crate::agent::stream`]), so that the desk needs only the socket, never read
//! access to the state folder. The agent renders: the one renderer (`report::render`) writes
//! into the stream as it would into a file, and the CLI copies the bytes out.

use std::time::SystemTime;

use ipnet::IpNet;

use crate::{
    agent::{
        api::{ErrorKind, Request},
        state::AgentState,
        stream::StreamWriter,
    },
    config::Config,
    input,
    report::{
        self, Grouping, ReportOptions,
        render::{self, ReportFormat},
    },
    store::Store,
};

type Refusal = (ErrorKind, String);

impl AgentState {
    /// What a report needs from the state, taken under its lock: the running config (ranges,
    /// thresholds, the state folder). The report is built and sent outside the lock, so that
    /// a large one never holds up the other verbs.
    pub(in crate::agent) fn report_config(&self) -> Config {
        self.config.clone()
    }
}

/// A report request, checked.
struct Query {
    from: SystemTime,
    to: SystemTime,
    options: ReportOptions,
    format: ReportFormat,
    reoffenders: bool,
    /// `Some` for a fleet report: of one gateway, or (`Some(None)`) of all.
    fleet: Option<Option<String>>,
}

fn bad(message: String) -> Refusal {
    (ErrorKind::BadRequest, message)
}

/// `value` as one of the `T` names, or an error naming the value and the names.
fn one_of<T: clap::ValueEnum>(field: &str, value: &str) -> Result<T, Refusal> {
    T::from_str(value, false).map_err(|_| {
        let names: Vec<String> = T::value_variants()
            .iter()
            .filter_map(|v| v.to_possible_value().map(|p| p.get_name().to_owned()))
            .collect();
        bad(format!(
            "{field} {} is not one of {}; expected one of those",
            input::shown(value),
            names.join(", ")
        ))
    })
}

fn query(request: Request) -> Result<Query, Refusal> {
    request
        .validate(SystemTime::now())
        .map_err(|error| bad(error.to_string()))?;
    let Request::Report {
        from,
        to,
        top,
        min_attempts,
        limited,
        prefix,
        group,
        format,
        reoffenders,
        fleet,
        gateway,
    } = request
    else {
        return Err(bad("not a report request".to_owned()));
    };
    let time = |field, text: &str| input::parse_time(field, text).map_err(|e| bad(e.to_string()));
    let (from, to) = (time("from", &from)?, time("to", &to)?);
    if from >= to {
        return Err(bad(format!(
            "from {} is not before to {}; expected a window that starts before it ends",
            humantime::format_rfc3339_seconds(from),
            humantime::format_rfc3339_seconds(to)
        )));
    }
    let prefix = prefix
        .map(|text| input::parse_prefix("prefix", &text).map_err(|e| bad(e.to_string())))
        .transpose()?;
    Ok(Query {
        from,
        to,
        options: ReportOptions {
            from,
            to,
            top,
            min_attempts,
            prefix,
            group: one_of::<Grouping>("group", &group)?,
            limited_only: limited,
        },
        format: one_of::<ReportFormat>("format", &format)?,
        reoffenders,
        fleet: fleet.then_some(gateway),
    })
}

/// Builds the report `request` asks for from the store in `config`'s state folder and writes
/// it into `out`; returns its rows. Refusals and store failures come before the start of the
/// stream; only the client going away can stop it after.
pub(in crate::agent) fn produce(
    request: Request,
    config: &Config,
    out: &mut StreamWriter,
) -> Result<u64, Refusal> {
    let query = query(request)?;
    let failed = |error: &dyn std::fmt::Display| (ErrorKind::Failed, error.to_string());
    if let Some(gateway) = &query.fleet {
        let Some(postgres) = config.fleet.as_ref().and_then(|f| f.postgres.as_ref()) else {
            return Err(bad(
                "this gateway has no [fleet] postgres: its own history is the only one it \
                 reports (`smtpguard report` without --fleet)"
                    .to_owned(),
            ));
        };
        // On the blocking pool, inside the agent's runtime: the query runs on it.
        let rows = tokio::runtime::Handle::current()
            .block_on(crate::fleet::report::build(
                postgres,
                config,
                &query.options,
                gateway.as_deref(),
            ))
            .map_err(|e| (ErrorKind::Unavailable, e.to_string()))?;
        return out
            .start()
            .and_then(|()| render::report(&rows, query.format, out))
            .map(|()| rows.len() as u64)
            .map_err(|error| failed(&format!("writing the report: {error}")));
    }
    // A connection of its own, read-only: the agent's writes go on meanwhile (WAL).
    let store = Store::open_read_only(&config.agent.state_dir).map_err(|e| failed(&e))?;
    let written = if query.reoffenders {
        let events: Vec<_> = store
            .bot_events(query.from)
            .map_err(|e| failed(&e))?
            .into_iter()
            .filter(|e| e.at <= query.to)
            .collect();
        // A customer's escalations: those of its hosts that began while it held them.
        let rows = report::reoffenders(&events, config.report.reoffense_gap, |host, customer| {
            let (length, _) = config.enforcement.host_prefix(&IpNet::from(host));
            let mut escalations = store.escalations_in(IpNet::from(host)).unwrap_or_default();
            if customer.is_some() {
                escalations.retain(|e| {
                    store
                        .identity_at(host, length, e.started)
                        .is_ok_and(|held| held.as_deref() == customer)
                });
            }
            escalations
        });
        out.start()
            .and_then(|()| render::reoffenders(&rows, query.format, out))
            .map(|()| rows.len())
    } else {
        let history = store
            .host_intervals(query.from, query.to)
            .map_err(|e| failed(&e))?;
        let bindings = store
            .bindings_between(query.from, query.to)
            .map_err(|e| failed(&e))?;
        drop(store);
        let by_customer = query.options.group == Grouping::SubscriberId;
        // Customers are summed from every host's row: top and the minimum apply after.
        let options = ReportOptions {
            top: query.options.top.filter(|_| !by_customer),
            min_attempts: if by_customer {
                0
            } else {
                query.options.min_attempts
            },
            ..query.options.clone()
        };
        let mut rows = report::build_owned(history, config, &options);
        report::name_subscribers(&mut rows, &bindings);
        if by_customer {
            rows = report::by_subscriber(rows, &query.options);
        }
        out.start()
            .and_then(|()| render::report(&rows, query.format, out))
            .map(|()| rows.len())
    };
    written
        .map(|rows| rows as u64)
        .map_err(|error| failed(&format!("writing the report: {error}")))
}
