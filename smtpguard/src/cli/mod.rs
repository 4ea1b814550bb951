//! The command line: one module per verb.

mod client;
mod config;
mod detach;
mod escalations;
mod exempt;
mod generate;
mod pbl;
mod prepare;
mod relay;
mod replay;
mod report;
mod session;
mod status;
mod table;

use std::time::SystemTime;

use clap::{Parser, Subcommand, ValueEnum};

use self::client::AgentArgs;
pub use self::client::AgentRefused;
use crate::{agent::api::Request, input};

/// smtpguard: stops direct-to-MX spam from subscriber lines at the ISP's border gateway.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    agent: AgentArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the real kernel program over a capture and show each frame's verdict.
    ///
    /// Example: smtpguard replay --config /etc/smtpguard/smtpguard.toml edge.pcap
    Replay(replay::ReplayArgs),
    /// Configuration tools.
    #[command(subcommand)]
    Config(config::ConfigCommand),
    /// Run the agent: attach, keep the maps in sync, serve the CLI and metrics.
    ///
    /// Example: smtpguard run --config /etc/smtpguard/smtpguard.toml
    Run,
    /// Runtime exemptions (kept in the store, applied at once).
    #[command(subcommand)]
    Exempt(exempt::ExemptCommand),
    /// Bind addresses to customer identities by hand (a BNG without RADIUS accounting).
    #[command(subcommand)]
    Session(session::SessionCommand),
    /// Which customer identity held an address, now or at a time.
    ///
    /// Example: smtpguard who 100.64.0.2 --at 2026-12-01T08:00:00Z
    Who(session::WhoArgs),
    /// Runtime relays, on top of the config's.
    #[command(subcommand)]
    Relay(relay::RelayCommand),
    /// Where the program is attached, counters, map fill levels.
    ///
    /// Example: smtpguard status --format json
    Status(status::StatusArgs),
    /// Explain the live decision for TCP from SRC to DST.
    ///
    /// Example: smtpguard check 100.64.0.2 198.51.100.7 --port 25
    Check(status::CheckArgs),
    /// Changes to exemptions and relays, reloads and detaches.
    ///
    /// Example: smtpguard audit --since 24h
    Audit(status::AuditArgs),
    /// Which subscriber hosts tried to send mail straight to MX hosts, and which are bots.
    ///
    /// Example: smtpguard --config /etc/smtpguard/smtpguard.toml report --since 24h --top 50
    Report(report::ReportArgs),
    /// Hosts of monitor-mode ranges escalated to enforcement; `lift HOST` ends one.
    ///
    /// Example: smtpguard escalations lift 100.127.0.9
    Escalations(escalations::EscalationsArgs),
    /// Stream new bot classifications and escalations as they happen.
    ///
    /// Example: smtpguard events --format json
    Events(escalations::EventsArgs),
    /// Policy block list export.
    #[command(subcommand)]
    Pbl(pbl::PblCommand),
    /// As root, before `run` as an unprivileged user (the systemd unit's ExecStartPre):
    /// mounts bpffs if needed, lets the user reach the pin folder and hands it over.
    ///
    /// Example: smtpguard --config /etc/smtpguard/smtpguard.toml prepare --user smtpguard
    Prepare(prepare::PrepareArgs),
    /// Re-read the agent's config file; an invalid one changes nothing, and a dangerous one
    /// (see `config check`) only with --force.
    ///
    /// Example: smtpguard reload
    Reload {
        /// Apply the file even though `config check` warns about it (audited), e.g.
        /// smtpguard reload --force
        #[arg(long)]
        force: bool,
    },
    /// Remove enforcement from every interface on purpose, and stop the agent; asks first on
    /// a terminal. Without a running agent, the pinned links are removed directly.
    ///
    /// Example: smtpguard detach --yes
    Detach(detach::DetachArgs),
    /// Print the shell completion script for SHELL.
    ///
    /// Example: smtpguard completions bash > /etc/bash_completion.d/smtpguard
    Completions {
        /// bash, zsh or fish, e.g. smtpguard completions zsh
        #[arg(value_enum)]
        shell: generate::CompletionShell,
    },
    /// Write the man pages and shell completions into DIR (for packaging).
    #[command(hide = true)]
    GenerateAssets {
        /// The folder to write into, e.g. target/assets
        dir: std::path::PathBuf,
    },
}

/// Output formats of the list verbs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum ListFormat {
    #[default]
    Table,
    Json,
    Csv,
}

/// Output formats shared by the verbs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    #[default]
    Table,
    /// One JSON object per line, stable for tools.
    Json,
}

/// Parses the command line and runs the verb; errors leave with exit code 1.
pub fn run() -> anyhow::Result<()> {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // Help and version go to stdout with exit code 0; a usage error is bad input like any
        // other, exit code 1, so that 2 keeps meaning "the agent cannot be reached".
        Err(error) if !error.use_stderr() => error.exit(),
        Err(error) => {
            let _ = error.print();
            std::process::exit(1);
        }
    };
    if !matches!(cli.command, Command::Run) {
        // A verb piped into `head` ends quietly when the pipe closes, as Unix tools do. The
        // agent keeps Rust's default (SIGPIPE ignored): a client that leaves early must not
        // kill it.
        // SAFETY: setting a signal's disposition to the default before any thread starts.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let agent = &cli.agent;
    match cli.command {
        Command::Replay(args) => replay::run(&args, agent.needed_config_file()?),
        Command::Config(command) => config::run(&command, agent),
        Command::Run => crate::agent::run(agent.needed_config_file()?).map_err(privilege_hint),
        Command::Exempt(command) => exempt::run(&command, agent),
        Command::Session(command) => session::session(&command, agent),
        Command::Who(args) => session::who(&args, agent),
        Command::Relay(command) => relay::run(&command, agent),
        Command::Status(args) => status::status(&args, agent),
        Command::Check(args) => status::check(&args, agent),
        Command::Audit(args) => status::audit(&args, agent),
        Command::Report(args) => report::run(&args, agent),
        Command::Escalations(args) => escalations::escalations(&args, agent),
        Command::Events(args) => escalations::events(&args, agent),
        Command::Pbl(command) => pbl::run(&command, agent),
        Command::Prepare(args) => prepare::run(&args, agent.needed_config_file()?),
        Command::Reload { force } => {
            let body = agent.call(&Request::Reload { force })?;
            println!(
                "reloaded: added {}, updated {}, removed {}",
                body["added"], body["updated"], body["removed"]
            );
            for change in body["changes"].as_array().into_iter().flatten() {
                println!("  {}", change.as_str().unwrap_or_default());
            }
            for warning in body["warnings"].as_array().into_iter().flatten() {
                eprintln!("warning: {}", warning.as_str().unwrap_or_default());
            }
            Ok(())
        }
        Command::GenerateAssets { dir } => generate::run(&dir),
        Command::Completions { shell } => {
            generate::completions(shell, &mut std::io::stdout().lock());
            Ok(())
        }
        Command::Detach(args) => detach::run(&args, agent),
    }
}

/// For a verb that talks to servers itself (`config check --connect`, `report --fleet`): a
/// server that closes its connection (a refused client certificate) must give an error, not
/// end the CLI by SIGPIPE as a closed stdout does.
pub(crate) fn ignore_sigpipe() {
    // SAFETY: setting a signal's disposition before the verb starts any thread.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
}

/// An error's cause chain on one line, `: ` between causes, each cause said once: a cause
/// whose text an outer error already shows (an error that prints its source and also returns
/// it from `source()`) is left out.
pub fn error_text(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let cause = cause.to_string();
        if text.contains(&cause) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&cause);
    }
    text
}

/// The agent's failure, with what it needs when the kernel refused it for want of privilege
/// (EPERM from bpf(), an attach or a mount).
fn privilege_hint(error: anyhow::Error) -> anyhow::Error {
    let refused = error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.raw_os_error() == Some(libc::EPERM))
            || cause.to_string().contains("Operation not permitted")
    });
    if !refused {
        return error;
    }
    anyhow::anyhow!(
        "{}; the agent needs root, or the capabilities CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON \
         (and CAP_SYS_ADMIN with [agent] netns): start it with `systemctl start smtpguard`, \
         whose unit grants them",
        error_text(&error)
    )
}

/// `--since TEXT` (see [`input::parse_since`]) as RFC 3339.
fn past_time(text: &str) -> anyhow::Result<String> {
    let at = input::parse_since("--since", text, SystemTime::now())?;
    Ok(humantime::format_rfc3339_seconds(at).to_string())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    fn parses(args: &[&str]) -> bool {
        Cli::try_parse_from(std::iter::once("smtpguard").chain(args.iter().copied())).is_ok()
    }

    /// Every `--format` of every verb, nested ones included, also answers to `-o`.
    #[test]
    fn every_format_flag_has_the_short_o() {
        fn walk(command: &clap::Command, path: &str, found: &mut Vec<String>) {
            for arg in command.get_arguments() {
                if arg.get_long() == Some("format") {
                    assert_eq!(arg.get_short(), Some('o'), "{path} --format has -o");
                    found.push(path.to_owned());
                }
            }
            for sub in command.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), found);
            }
        }
        let mut found = Vec::new();
        walk(&Cli::command(), "smtpguard", &mut found);
        assert!(
            found.len() >= 10,
            "the walk found the --format flags: {found:?}"
        );
        assert!(parses(&["status", "-o", "json"]));
        assert!(parses(&["exempt", "list", "-o", "csv"]));
    }

    /// The words of a command line as a shell splits them (double quotes only: the guides use
    /// no other quoting).
    fn words(line: &str) -> Vec<String> {
        let mut words = Vec::new();
        let (mut word, mut quoted, mut any) = (String::new(), false, false);
        for c in line.chars() {
            match c {
                '"' => (quoted, any) = (!quoted, true),
                c if c.is_whitespace() && !quoted => {
                    if any {
                        words.push(std::mem::take(&mut word));
                    }
                    any = false;
                }
                c => (any, word) = (true, word + &c.to_string()),
            }
        }
        if any {
            words.push(word);
        }
        words
    }

    /// Every complete `smtpguard ...` command the operations guide and the README show, at a
    /// prompt in a code block or in a code span, parses as the CLI defines it: a renamed verb
    /// or flag cannot leave the guides behind. Synopses (`PREFIX`, `[--port P]`, `...`) are
    /// left out; they are not commands to run.
    #[test]
    fn the_commands_in_the_guides_parse() {
        let mut commands = Vec::new();
        for (name, text) in [
            (
                "docs/operations.md",
                include_str!("../../../docs/operations.md"),
            ),
            ("README.md", include_str!("../../../README.md")),
        ] {
            // Commands at a prompt, and code spans (which may wrap across lines: a span is
            // every other piece between backticks of the whole text).
            let prompted = text
                .lines()
                .filter_map(|line| line.trim_start().strip_prefix("$ "))
                .map(str::to_owned);
            let spans = text
                .split('`')
                .skip(1)
                .step_by(2)
                .map(|span| span.split_whitespace().collect::<Vec<_>>().join(" "));
            for candidate in prompted.chain(spans) {
                let Some(args) = candidate.strip_prefix("smtpguard ") else {
                    continue;
                };
                let synopsis = args.contains("...")
                    || args.contains('[')
                    || args.contains('|')
                    || args.split_whitespace().any(|w| {
                        w.len() > 1 && w.chars().all(|c| c.is_ascii_uppercase() || c == '_')
                    });
                if !synopsis {
                    commands.push((name, args.to_owned()));
                }
            }
        }
        assert!(
            commands.len() >= 25,
            "found only {} commands in the guides: {commands:?}",
            commands.len()
        );
        let refused: Vec<String> = commands
            .iter()
            .filter_map(|(at, args)| {
                let argv = std::iter::once("smtpguard".to_owned()).chain(words(args));
                Cli::try_parse_from(argv)
                    .err()
                    .map(|error| format!("{at}: smtpguard {args}: {}", error.kind()))
            })
            .collect();
        assert!(
            refused.is_empty(),
            "commands in the guides the CLI refuses:\n  {}",
            refused.join("\n  ")
        );
    }

    #[test]
    fn list_and_remove_have_their_aliases() {
        for verb in ["exempt", "relay"] {
            for args in [
                vec![verb, "ls"],
                vec![verb, "list"],
                vec![verb, "ls", "-o", "json"],
                vec![verb, "rm", "100.64.0.2"],
                vec![verb, "remove", "100.64.0.2"],
                vec![verb, "del", "100.64.0.2"],
            ] {
                assert!(parses(&args), "smtpguard {}", args.join(" "));
            }
            assert!(!parses(&[verb, "lst"]), "{verb} lst is no verb");
        }
        assert!(parses(&["completions", "fish"]));
        assert!(!parses(&["completions", "tcsh"]));
    }
}
