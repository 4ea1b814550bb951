//! `smtpguard generate-assets DIR` (hidden): the man pages and the shell completions, generated
//! from the clap definitions and the config's key list, for `cargo xtask package`; and
//! `smtpguard completions SHELL`. Living here keeps the agent out of xtask's build: xtask runs
//! the binary it packages.

use std::{fs, io::Write, path::Path};

use anyhow::Context as _;
use clap::{CommandFactory as _, ValueEnum};
use clap_complete::Shell;

use super::{
    Cli,
    client::{CONFIG_ENV, DEFAULT_CONFIG},
};
use crate::config::keys;

/// The shells `completions` writes a script for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

impl CompletionShell {
    fn shell(self) -> Shell {
        match self {
            CompletionShell::Bash => Shell::Bash,
            CompletionShell::Zsh => Shell::Zsh,
            CompletionShell::Fish => Shell::Fish,
        }
    }
}

/// Writes the completion script for `shell` to `out`.
pub fn completions(shell: CompletionShell, out: &mut dyn Write) {
    clap_complete::generate(shell.shell(), &mut Cli::command(), "smtpguard", out);
}

/// Writes into `dir`: `smtpguard.1`, `smtpguard-VERB.1` for every verb, `smtpguard.toml.5`,
/// and `smtpguard.bash`, `_smtpguard` (zsh) and `smtpguard.fish`.
pub fn run(dir: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, page) in manual_pages()? {
        write(&dir.join(name), &page)?;
    }
    for (shell, name) in [
        (CompletionShell::Bash, "smtpguard.bash"),
        (CompletionShell::Zsh, "_smtpguard"),
        (CompletionShell::Fish, "smtpguard.fish"),
    ] {
        let mut script = Vec::new();
        completions(shell, &mut script);
        write(&dir.join(name), &script)?;
    }
    Ok(())
}

/// Every manual page as (file name, roff): the command's, one per visible verb, and the config
/// file's.
pub fn manual_pages() -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let mut command = Cli::command().disable_help_subcommand(true);
    command.build();
    let verbs: Vec<String> = command
        .get_subcommands()
        .filter(|verb| !verb.is_hide_set())
        .map(|verb| format!("smtpguard-{}", verb.get_name()))
        .collect();
    let mut pages = vec![page(&command, &verbs)?];
    for verb in command.get_subcommands().filter(|verb| !verb.is_hide_set()) {
        pages.push(page(verb, &["smtpguard".to_owned()])?);
    }
    pages.push((
        "smtpguard.toml.5".to_owned(),
        keys::manual_page(env!("CARGO_PKG_VERSION")).into_bytes(),
    ));
    Ok(pages)
}

/// clap_mangen's page of `command` with the sections it does not write: EXIT STATUS, FILES,
/// ENVIRONMENT and SEE ALSO (`see_also`, the related pages of section 1).
fn page(command: &clap::Command, see_also: &[String]) -> anyhow::Result<(String, Vec<u8>)> {
    let man = clap_mangen::Man::new(command.clone());
    let mut page = Vec::new();
    man.render(&mut page).context("rendering a man page")?;
    let mut related: Vec<String> = see_also
        .iter()
        .map(|name| format!("\\fB{}\\fR(1)", name.replace('-', "\\-")))
        .collect();
    related.push("\\fBsmtpguard.toml\\fR(5)".to_owned());
    write!(
        page,
        ".SH \"EXIT STATUS\"\n\
         .TP\n0\nSuccess.\n\
         .TP\n1\nBad input, an invalid configuration, or a request the agent refused; nothing \
         has changed.\n\
         .TP\n2\nThe agent cannot be reached, or gave no answer (it died during the request, \
         which may or may not have been carried out: look before trying again).\n\
         .TP\n3\nThe agent's socket refuses this user: join its group (\\fBsocket_group\\fR in \
         the configuration) or run as root.\n\
         .SH FILES\n\
         .TP\n{config}\n\
         The configuration (\\fBsmtpguard.toml\\fR(5)): the policy of \\fBrun\\fR, \
         \\fBreplay\\fR, \\fBreport\\fR, \\fBpbl export\\fR, \\fBprepare\\fR and \\fBconfig \
         check\\fR. The verbs that talk to the agent read only its \\fB[agent] socket\\fR key, \
         and use it even when the rest of the file is invalid.\n\
         .TP\n/run/smtpguard/smtpguard.sock\n\
         The agent's socket, unless the configuration or \\fB\\-\\-socket\\fR names another.\n\
         .TP\n/var/lib/smtpguard\n\
         The agent's state: runtime exemptions and relays, the audit log, report history.\n\
         .TP\n/sys/fs/bpf/smtpguard\n\
         The pinned maps and links: enforcement outlasts the agent.\n\
         .SH ENVIRONMENT\n\
         .TP\n.B {CONFIG_ENV}\n\
         The configuration file when \\fB\\-\\-config\\fR is not given (default {config}).\n\
         .TP\n.B SMTPGUARD_LOG, RUST_LOG\n\
         The agent's log level or filter directives (\\fBrun\\fR), over \\fB[agent] \
         log_level\\fR.\n\
         .TP\n.B JOURNAL_STREAM\n\
         Set by systemd: when it names standard error, each log line starts with its journal \
         priority and has no timestamp.\n\
         .TP\n.B TZ\n\
         The time zone of dates and times written without one (\\fB2026\\-12\\-01\\fR, \
         \\fB2026\\-12\\-01T08:00\\fR) in \\fB\\-\\-since\\fR, \\fB\\-\\-from\\fR, \\fB\\-\\-to\\fR \
         and \\fB\\-\\-expires\\fR.\n\
         .SH \"SEE ALSO\"\n{}\n",
        related.join(", "),
        config = DEFAULT_CONFIG.replace('-', "\\-"),
    )
    .context("rendering a man page")?;
    Ok((man.get_filename(), page))
}

fn write(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_per_verb_with_exit_status_files_and_environment() {
        let pages = manual_pages().unwrap();
        let names: Vec<&str> = pages.iter().map(|(name, _)| name.as_str()).collect();
        for name in [
            "smtpguard.1",
            "smtpguard-exempt.1",
            "smtpguard-report.1",
            "smtpguard-completions.1",
            "smtpguard-config.1",
            "smtpguard.toml.5",
        ] {
            assert!(names.contains(&name), "{name} in {names:?}");
        }
        assert!(
            !names.contains(&"smtpguard-generate-assets.1"),
            "the hidden verb has no page: {names:?}"
        );
        let verbs = Cli::command()
            .get_subcommands()
            .filter(|verb| !verb.is_hide_set())
            .count();
        assert_eq!(pages.len(), verbs + 2, "{names:?}");
        for (name, page) in &pages {
            let page = String::from_utf8_lossy(page);
            for section in [
                ".SH NAME",
                ".SH FILES",
                ".SH ENVIRONMENT",
                ".SH \"SEE ALSO\"",
            ] {
                assert!(page.contains(section), "{section} in {name}");
            }
            if name.ends_with(".1") {
                assert!(
                    page.contains(".SH \"EXIT STATUS\""),
                    "EXIT STATUS in {name}"
                );
                assert!(page.contains("SMTPGUARD_CONFIG"), "the variable in {name}");
            }
        }
        let exempt = &pages
            .iter()
            .find(|(n, _)| n == "smtpguard-exempt.1")
            .unwrap()
            .1;
        let exempt = String::from_utf8_lossy(exempt);
        for needle in ["add", "list", "rm", "\\-\\-config"] {
            assert!(
                exempt.contains(needle),
                "{needle} in smtpguard-exempt.1:\n{exempt}"
            );
        }
    }
}
