//! The agent's log: one line per event on standard error, read by people on a terminal and by
//! journald under systemd. Under journald (standard error is the stream `JOURNAL_STREAM`
//! names) each line starts with its sd-daemon priority (`<3>` error, `<4>` warning, `<6>`
//! info, `<7>` debug and trace) and carries no timestamp: journald records both. Field values
//! are written as text, never as Rust debug output: `interface=eth1`, not `interface="eth1"`.
//!
//! The level is `[agent] log_level`, unless `SMTPGUARD_LOG` or else `RUST_LOG` is set (a level,
//! or directives such as `smtpguard=debug`).

use std::{
    fmt::{self, Write as _},
    os::fd::AsFd as _,
    time::SystemTime,
};

use tracing::{
    Event, Level, Subscriber,
    field::{Field, Visit},
};
use tracing_subscriber::{
    EnvFilter,
    field::RecordFields,
    fmt::{FmtContext, FormatEvent, FormatFields, format::Writer},
    registry::LookupSpan,
};

use crate::config::LogLevel;

/// The environment variables that override `[agent] log_level`; the first one set wins.
pub const ENV_VARS: [&str; 2] = ["SMTPGUARD_LOG", "RUST_LOG"];

/// Whether standard error is the journal stream systemd connected it to: `JOURNAL_STREAM` holds
/// that stream's `DEVICE:INODE` (systemd.exec(5)). A program whose standard error was
/// redirected, or that inherited the variable from a service (a shell in a user session), does
/// not match and writes plain lines.
pub fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(stat) = nix::sys::stat::fstat(std::io::stderr().as_fd()) else {
        return false;
    };
    stream.to_str() == Some(&format!("{}:{}", stat.st_dev, stat.st_ino))
}

/// The sd-daemon(3) priority of a level.
fn priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// The `<N>` prefix of an error line written without the log (the CLI's last word), when
/// standard error is the journal; empty otherwise.
pub fn error_prefix() -> &'static str {
    if stderr_is_journal() { "<3>" } else { "" }
}

/// The filter of `[agent] log_level`: that level for smtpguard's own lines; the libraries it
/// uses (the eBPF loader's debug output) at most at info.
fn configured_filter(level: LogLevel) -> EnvFilter {
    match level {
        LogLevel::Debug | LogLevel::Trace => {
            EnvFilter::new(format!("info,smtpguard={}", level.name()))
        }
        _ => EnvFilter::new(level.name()),
    }
}

/// The filter of the first of [`ENV_VARS`] that `env` has, else of `configured`; and, when
/// that variable holds no filter, a warning that names it and what was expected.
fn filter(
    configured: LogLevel,
    env: impl Fn(&str) -> Option<String>,
) -> (EnvFilter, Option<String>) {
    for var in ENV_VARS {
        let value = match env(var) {
            Some(value) if !value.trim().is_empty() => value,
            _ => continue,
        };
        return match EnvFilter::try_new(&value) {
            Ok(filter) => (filter, None),
            Err(error) => (
                configured_filter(configured),
                Some(format!(
                    "{var}={value} is not a log filter ({error}); expected a level (error, warn, \
                     info, debug, trace) or directives such as smtpguard=debug; logging at \
                     [agent] log_level {} instead",
                    configured.name()
                )),
            ),
        };
    }
    (configured_filter(configured), None)
}

/// Sets up the agent's log on standard error at the configured level, unless the environment
/// says otherwise (see the module's documentation).
pub fn init(configured: LogLevel) {
    let (filter, warning) = filter(configured, |var| std::env::var(var).ok());
    let installed = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .fmt_fields(PlainFields)
        .event_format(Line {
            journal: stderr_is_journal(),
        })
        .try_init();
    if installed.is_ok()
        && let Some(warning) = warning
    {
        tracing::warn!("{warning}");
    }
}

/// One event as one line: `<N>` and the text under journald, else the time, the level and the
/// text.
pub struct Line {
    pub journal: bool,
}

impl<S, N> FormatEvent<S, N> for Line
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let level = *event.metadata().level();
        if self.journal {
            write!(writer, "<{}>", priority(level))?;
        } else {
            write!(
                writer,
                "{} {level:>5} ",
                humantime::format_rfc3339_millis(SystemTime::now())
            )?;
        }
        ctx.format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// Writes an event's fields as text: the message, then `name=value` for each other field, with
/// strings as they are (no quotes), line breaks as spaces and other control characters escaped,
/// so an event stays one line (and one journal entry with its priority).
pub struct PlainFields;

impl<'writer> FormatFields<'writer> for PlainFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut visitor = PlainVisitor {
            writer: OneLine(writer),
            first: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct PlainVisitor<'writer> {
    writer: OneLine<'writer>,
    first: bool,
    result: fmt::Result,
}

impl PlainVisitor<'_> {
    fn write(&mut self, field: &Field, value: fmt::Arguments<'_>) {
        // Fields the `log` bridge adds (log.target, log.file, ...) say nothing to an operator.
        if self.result.is_err() || field.name().starts_with("log.") {
            return;
        }
        let separator = if self.first { "" } else { " " };
        self.first = false;
        self.result = match field.name() {
            "message" => write!(self.writer, "{separator}{value}"),
            name => write!(self.writer, "{separator}{name}={value}"),
        };
    }
}

impl Visit for PlainVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.write(field, format_args!("{value}"));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.write(field, format_args!("{value}"));
    }

    /// Numbers, booleans, `%value` (Display) and the message (format arguments) read the same
    /// in their debug form; `?value` of a struct does not, and is not used in log messages.
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.write(field, format_args!("{value:?}"));
    }
}

/// A writer that turns line breaks into spaces and escapes other control characters (`\u{1b}`),
/// so that no value (a name a client sent, say) can split a line or steer a terminal.
struct OneLine<'writer>(Writer<'writer>);

impl fmt::Write for OneLine<'_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let mut rest = text;
        while let Some(at) = rest.find(char::is_control) {
            self.0.write_str(&rest[..at])?;
            let control = rest[at..].chars().next().expect("found at this index");
            match control {
                '\n' | '\r' => self.0.write_char(' ')?,
                other => write!(self.0, "{}", other.escape_unicode())?,
            }
            rest = &rest[at + control.len_utf8()..];
        }
        self.0.write_str(rest)
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io,
        sync::{Arc, Mutex},
    };

    use super::*;

    /// A writer into a shared buffer, as the subscriber's writer.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// What `events` log through the agent's format, at trace level.
    fn logged(journal: bool, events: impl FnOnce()) -> String {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(Level::TRACE)
            .with_writer(move || writer.clone())
            .fmt_fields(PlainFields)
            .event_format(Line { journal })
            .finish();
        tracing::subscriber::with_default(subscriber, events);
        String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap()
    }

    fn events() {
        let path = std::path::Path::new("/sys/fs/bpf/smtpguard");
        let error = io::Error::other("no space left");
        tracing::error!(%error, "writing the audit entry failed");
        tracing::warn!(
            interface = "eth1\u{1b}[2J",
            "interface missing:\nnot enforced"
        );
        tracing::info!(
            who = "SIGHUP",
            added = 1,
            pin_dir = %path.display(),
            "config reloaded"
        );
        tracing::debug!(hosts = 2, "statistics snapshot");
        tracing::trace!(forced = false, "details");
    }

    #[test]
    fn under_journald_each_line_starts_with_its_priority_and_has_no_time() {
        assert_eq!(
            logged(true, events),
            "<3>writing the audit entry failed error=no space left\n\
             <4>interface missing: not enforced interface=eth1\\u{1b}[2J\n\
             <6>config reloaded who=SIGHUP added=1 pin_dir=/sys/fs/bpf/smtpguard\n\
             <7>statistics snapshot hosts=2\n\
             <7>details forced=false\n"
        );
    }

    #[test]
    fn on_a_terminal_each_line_has_its_time_and_level() {
        let text = logged(false, events);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        for (line, (level, rest)) in lines.iter().zip([
            (
                "ERROR",
                "writing the audit entry failed error=no space left",
            ),
            (
                "WARN",
                "interface missing: not enforced interface=eth1\\u{1b}[2J",
            ),
            (
                "INFO",
                "config reloaded who=SIGHUP added=1 pin_dir=/sys/fs/bpf/smtpguard",
            ),
            ("DEBUG", "statistics snapshot hosts=2"),
            ("TRACE", "details forced=false"),
        ]) {
            let (time, after) = line
                .split_once(' ')
                .unwrap_or_else(|| panic!("no time in {line:?}"));
            humantime::parse_rfc3339(time)
                .unwrap_or_else(|e| panic!("{time:?} in {line:?} is not a time: {e}"));
            assert_eq!(after.trim_start(), format!("{level} {rest}"), "{line:?}");
        }
    }

    #[test]
    fn a_variable_without_a_filter_is_named_with_what_was_expected() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |var: &str| {
                pairs
                    .iter()
                    .find(|(name, _)| *name == var)
                    .map(|(_, value)| value.to_string())
            }
        };
        let (chosen, warning) = filter(
            LogLevel::Warn,
            env(&[("SMTPGUARD_LOG", "smtpguard=loud"), ("RUST_LOG", "trace")]),
        );
        assert_eq!(chosen.to_string(), "warn", "the configured level instead");
        let warning = warning.expect("a warning about the variable");
        assert!(
            warning.starts_with("SMTPGUARD_LOG=smtpguard=loud is not a log filter")
                && warning.contains("expected a level (error, warn, info, debug, trace)"),
            "{warning}"
        );
        for (vars, expected) in [
            (
                &[("SMTPGUARD_LOG", "debug"), ("RUST_LOG", "trace")][..],
                "debug",
            ),
            (&[("RUST_LOG", "smtpguard=trace")][..], "smtpguard=trace"),
            (&[("SMTPGUARD_LOG", " "), ("RUST_LOG", "info")][..], "info"),
            (&[][..], "warn"),
        ] {
            let (chosen, warning) = filter(LogLevel::Warn, env(vars));
            assert_eq!(
                (chosen.to_string(), warning),
                (expected.to_owned(), None),
                "{vars:?}"
            );
        }
        // Debug is for smtpguard's own lines: the libraries' stay at info.
        let debug = filter(LogLevel::Debug, env(&[])).0.to_string();
        let mut directives: Vec<&str> = debug.split(',').collect();
        directives.sort_unstable();
        assert_eq!(directives, ["info", "smtpguard=debug"], "{debug}");
    }
}
