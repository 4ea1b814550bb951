//! `smtpguard report`: the abuse desk's view, read from the agent's history (the agent need
//! not be running).

use std::{
    fs::File,
    io::{BufWriter, Write},
    path::{Path, PathBuf},
    time::SystemTime,
};

use anyhow::{Context as _, bail};
use clap::Args;
use ipnet::IpNet;

use crate::{
    config::Config,
    input,
    report::{
        self, Grouping, ReportOptions,
        render::{self, ReportFormat},
    },
    store::Store,
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
    /// Only hosts inside this prefix, e.g. --prefix 100.64.0.0/16
    #[arg(long)]
    prefix: Option<String>,
    /// One row per host, per IPv6 /64 or /56, or per subscriber range, e.g. --group /64
    #[arg(long, value_enum, default_value_t)]
    group: Grouping,
    /// table (for people), json or csv (for tools and spreadsheets), e.g. -o csv
    #[arg(short = 'o', long, value_enum, default_value_t)]
    format: ReportFormat,
    /// Write to this file instead of standard output, e.g. --output report.csv
    #[arg(long)]
    output: Option<PathBuf>,
    /// List reoffenders instead: hosts classified as bots in windows at least the config's
    /// reoffense_gap apart, with their history, e.g. --reoffenders --since 30d
    #[arg(long)]
    reoffenders: bool,
}

pub fn run(args: &ReportArgs, config_path: &Path) -> anyhow::Result<()> {
    let config = Config::load(config_path).context("invalid configuration")?;
    let now = SystemTime::now();
    let (from, to) = window(args, now)?;
    let prefix = args
        .prefix
        .as_deref()
        .map(|text| {
            text.parse::<IpNet>().with_context(|| {
                format!("--prefix {text:?} is not a prefix; expected one such as 100.64.0.0/16")
            })
        })
        .transpose()?;
    let store = Store::open(&config.agent.state_dir)?;
    let mut out: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(BufWriter::new(
            File::create(path).with_context(|| format!("creating {}", path.display()))?,
        )),
        None => Box::new(std::io::stdout().lock()),
    };
    if args.reoffenders {
        let events: Vec<_> = store
            .bot_events(from)?
            .into_iter()
            .filter(|e| e.at <= to)
            .collect();
        let rows = report::reoffenders(&events, config.report.reoffense_gap, |host| {
            store.escalations_of(host).unwrap_or_default()
        });
        return render::reoffenders(&rows, args.format, &mut out)
            .and_then(|()| out.flush())
            .context("writing the report");
    }
    let history = store.host_intervals(from, to)?;
    let rows = report::build(
        &history,
        &config,
        &ReportOptions {
            from,
            to,
            top: args.top,
            min_attempts: args.min_attempts,
            prefix,
            group: args.group,
        },
    );
    match args.format {
        ReportFormat::Table => render::table(&rows, &mut out),
        ReportFormat::Json => render::json(&rows, &mut out),
        ReportFormat::Csv => render::csv(&rows, &mut out),
    }
    .and_then(|()| out.flush())
    .context("writing the report")
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
