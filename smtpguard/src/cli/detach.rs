//! `smtpguard detach [--yes]`: enforcement removed on purpose, by the agent when it runs,
//! else from the pin folder directly, so removing the package never leaves the program
//! enforcing with nothing left to manage it.

use std::{
    io::{BufRead as _, IsTerminal as _, Write as _},
    time::SystemTime,
};

use anyhow::{Context as _, bail};
use clap::Args;

use super::client::{self, AgentArgs};
use crate::{
    agent::api::Request,
    config::Config,
    dataplane::PinLayout,
    store::{AuditAction, Store},
};

#[derive(Debug, Args)]
pub struct DetachArgs {
    /// Do not ask; needed when not on a terminal (scripts, package removal), e.g.
    /// smtpguard detach --yes
    #[arg(short = 'y', long)]
    yes: bool,
}

pub fn run(args: &DetachArgs, agent: &AgentArgs) -> anyhow::Result<()> {
    confirm(args.yes)?;
    let detached = match agent.call(&Request::Detach {}) {
        Ok(body) => body["detached"]
            .as_array()
            .into_iter()
            .flatten()
            .map(super::table::text)
            .collect(),
        Err(error) if client::unreachable(&error) => {
            eprintln!("note: {error}; removing the pinned links without it");
            detach_without_agent(agent)?
        }
        Err(error) => return Err(error),
    };
    println!("detached from {detached:?}; port 25 is no longer enforced");
    Ok(())
}

/// Asks on a terminal; elsewhere only `--yes` goes ahead.
fn confirm(yes: bool) -> anyhow::Result<()> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        bail!(
            "detach removes enforcement from every interface (port 25 is no longer blocked); \
             expected --yes when not run on a terminal"
        );
    }
    eprint!("Remove enforcement from every interface? Port 25 is then no longer blocked. [y/N] ");
    std::io::stderr().flush().ok();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .context("reading the answer")?;
    if !matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes") {
        bail!("detach cancelled; nothing changed");
    }
    Ok(())
}

/// Unpins every link in the config's pin folder: with no agent holding them, the kernel
/// detaches the program. Refused while an agent owns the folder (it would pin them again).
fn detach_without_agent(agent: &AgentArgs) -> anyhow::Result<Vec<String>> {
    let config = agent.config_without_agent("the pin folder")?;
    let pins = PinLayout::new(&config.agent.pin_dir);
    if !pins.root().exists() {
        return Ok(Vec::new());
    }
    let _lock = pins.lock().context(
        "an agent owns the pin folder but does not answer on its socket; stop it (systemctl \
         stop smtpguard) and detach again",
    )?;
    let mut detached = Vec::new();
    for attachment in pins.attachments()? {
        pins.detach(&attachment)?;
        detached.push(attachment.interface);
    }
    record(&config, &detached);
    Ok(detached)
}

/// Audits the detach in the agent's store when there is one; enforcement is gone either way,
/// so a store that cannot take the entry only gets a note.
fn record(config: &Config, detached: &[String]) {
    if !config.agent.state_dir.exists() {
        return;
    }
    let who = nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map_or_else(|| format!("uid {}", nix::unistd::getuid()), |u| u.name);
    let recorded = Store::open(&config.agent.state_dir).and_then(|mut store| {
        store.record(
            AuditAction::Detached,
            &detached.join(", "),
            &who,
            "enforcement removed (no agent was running)",
            SystemTime::now(),
        )
    });
    if let Err(error) = recorded {
        eprintln!("note: the detach is not in the audit log: {error}");
    }
}
