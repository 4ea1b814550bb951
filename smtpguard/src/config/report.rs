//! The `[report]` table: how often the agent snapshots per-host statistics, how long it keeps
//! them, and what makes a host a bot.

use std::{path::PathBuf, time::Duration};

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, Source};

#[derive(Debug, Clone, PartialEq)]
pub struct ReportConfig {
    /// Snapshot interval: the resolution of the history.
    pub interval: Duration,
    /// History older than this is pruned.
    pub retention: Duration,
    /// A host is a bot with at least this many distinct destinations within `bot_window`...
    pub bot_destinations: u64,
    /// ...or at least this many connection attempts within `bot_window`.
    pub bot_attempts: u64,
    pub bot_window: Duration,
    /// A host that is no bot but made at least this many attempts to one or two destinations
    /// is a misconfigured mail client.
    pub client_attempts: u64,
    /// A host classified as a bot in two windows at least this far apart is a reoffender.
    pub reoffense_gap: Duration,
    /// Switch bot-classified hosts of monitor-mode ranges to enforcement, each on its own.
    pub escalate: bool,
    /// How long a first escalation lasts; each reoffense doubles it.
    pub escalate_for: Duration,
    /// A program run for each newly classified bot, with the host's report row as JSON on
    /// its standard input (e.g. to open a ticket).
    pub on_bot: Option<PathBuf>,
}

impl Default for ReportConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(60),
            retention: Duration::from_secs(30 * 24 * 3600),
            bot_destinations: 20,
            bot_attempts: 60,
            bot_window: Duration::from_secs(600),
            client_attempts: 3,
            reoffense_gap: Duration::from_secs(24 * 3600),
            escalate: false,
            escalate_for: Duration::from_secs(24 * 3600),
            on_bot: None,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawReport {
    // Absent: 60s.
    interval: Option<Spanned<String>>,
    // Absent: 30d.
    retention: Option<Spanned<String>>,
    // Absent: 20.
    bot_destinations: Option<Spanned<i64>>,
    // Absent: 60.
    bot_attempts: Option<Spanned<i64>>,
    // Absent: 10m.
    bot_window: Option<Spanned<String>>,
    // Absent: 3.
    client_attempts: Option<Spanned<i64>>,
    // Absent: 24h.
    reoffense_gap: Option<Spanned<String>>,
    // Absent: false (monitor-mode ranges are only counted).
    escalate: bool,
    // Absent: 24h.
    escalate_for: Option<Spanned<String>>,
    // Absent: no program.
    on_bot: Option<Spanned<String>>,
}

fn count(
    src: &Source<'_>,
    key: &'static str,
    raw: Option<Spanned<i64>>,
    default: u64,
) -> Result<u64, ConfigError> {
    let Some(raw) = raw else {
        return Ok(default);
    };
    u64::try_from(*raw.get_ref())
        .ok()
        .filter(|value| *value >= 1)
        .ok_or_else(|| {
            src.invalid(
                "report",
                key,
                raw.span(),
                raw.get_ref(),
                "a whole number of at least 1",
            )
        })
}

pub(super) fn validate_report(
    src: &Source<'_>,
    raw: RawReport,
) -> Result<ReportConfig, ConfigError> {
    let defaults = ReportConfig::default();
    let second = Duration::from_secs(1);
    let interval = src.duration(
        "report",
        "interval",
        raw.interval,
        defaults.interval,
        second,
    )?;
    Ok(ReportConfig {
        interval,
        retention: src.duration(
            "report",
            "retention",
            raw.retention,
            defaults.retention,
            interval,
        )?,
        bot_destinations: count(
            src,
            "bot_destinations",
            raw.bot_destinations,
            defaults.bot_destinations,
        )?,
        bot_attempts: count(src, "bot_attempts", raw.bot_attempts, defaults.bot_attempts)?,
        bot_window: src.duration(
            "report",
            "bot_window",
            raw.bot_window,
            defaults.bot_window,
            interval,
        )?,
        client_attempts: count(
            src,
            "client_attempts",
            raw.client_attempts,
            defaults.client_attempts,
        )?,
        reoffense_gap: src.duration(
            "report",
            "reoffense_gap",
            raw.reoffense_gap,
            defaults.reoffense_gap,
            second,
        )?,
        escalate: raw.escalate,
        escalate_for: src.duration(
            "report",
            "escalate_for",
            raw.escalate_for,
            defaults.escalate_for,
            second,
        )?,
        on_bot: match raw.on_bot {
            None => None,
            Some(program) if PathBuf::from(program.get_ref()).is_absolute() => {
                Some(PathBuf::from(program.into_inner()))
            }
            Some(program) => {
                return Err(src.invalid(
                    "report",
                    "on_bot",
                    program.span(),
                    program.get_ref(),
                    "the absolute path of a program",
                ));
            }
        },
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    fn parse(report: &str) -> Result<Config, ConfigError> {
        let text = format!("[[subscribers]]\nprefix = \"100.64.0.0/10\"\n[report]\n{report}\n");
        Config::parse(&text, Path::new("report.toml"))
    }

    #[test]
    fn defaults_and_values() {
        assert_eq!(parse("").unwrap().report, ReportConfig::default());
        let report = parse("interval = \"5s\"\nretention = \"2d\"\nbot_destinations = 5\nbot_attempts = 9\nbot_window = \"1m\"\nclient_attempts = 2")
            .unwrap()
            .report;
        assert_eq!(report.interval, Duration::from_secs(5));
        assert_eq!(report.retention, Duration::from_secs(2 * 86_400));
        assert_eq!(
            (
                report.bot_destinations,
                report.bot_attempts,
                report.client_attempts
            ),
            (5, 9, 2)
        );
        assert_eq!(report.bot_window, Duration::from_secs(60));
        let report = parse("escalate = true\nescalate_for = \"2h\"\nreoffense_gap = \"6h\"\non_bot = \"/usr/local/bin/ticket\"")
            .unwrap()
            .report;
        assert!(report.escalate);
        assert_eq!(report.escalate_for, Duration::from_secs(7200));
        assert_eq!(report.reoffense_gap, Duration::from_secs(6 * 3600));
        assert_eq!(report.on_bot, Some(PathBuf::from("/usr/local/bin/ticket")));
    }

    #[test]
    fn bad_values_are_located() {
        for (text, expected) in [
            ("interval = \"0s\"", "report.interval"),
            ("interval = \"often\"", "\"often\""),
            ("bot_destinations = 0", "report.bot_destinations"),
            ("bot_attempts = -5", "\"-5\""),
            (
                "interval = \"2m\"\nbot_window = \"1m\"",
                "report.bot_window",
            ),
        ] {
            let message = parse(text).expect_err(text).to_string();
            assert!(
                message.contains("report.toml:4:") || message.contains("report.toml:5:"),
                "{message}"
            );
            assert!(
                message.contains(expected),
                "{expected:?} missing from {message}"
            );
        }
    }
}
