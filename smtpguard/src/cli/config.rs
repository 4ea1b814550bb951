//! `smtpguard config check FILE [--against RUNNING] [--strict]`

use anyhow::{Context as _, bail};
use clap::Subcommand;

use crate::{
    agent::netns,
    config::{Config, danger},
    dataplane::interfaces::{self, UnlistedTunnel},
    policy,
};
use std::path::{Path, PathBuf};

use super::client::AgentArgs;

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a configuration file and summarise it; exit code 1 if it is invalid. Dangerous
    /// settings (which `reload` refuses without --force) are printed as warnings on stderr, and
    /// so are tunnel and L3 devices of this machine (in `[agent] netns` when set) that are up
    /// and not in `interfaces`: what they decapsulate is not filtered.
    ///
    /// Example: smtpguard config check new.toml --against /etc/smtpguard/smtpguard.toml
    Check {
        /// The configuration file to check [default: the --config file, $SMTPGUARD_CONFIG or
        /// /etc/smtpguard/smtpguard.toml]
        file: Option<PathBuf>,
        /// The config it would replace, to warn about dangerous changes too (relays dropped,
        /// enforcement switched off, subscriber ranges replaced), e.g.
        /// --against /etc/smtpguard/smtpguard.toml
        #[arg(long)]
        against: Option<PathBuf>,
        /// Exit with code 1 when there are warnings, e.g. in a deployment pipeline.
        #[arg(long)]
        strict: bool,
        /// Also reach the [fleet] servers (etcd, PostgreSQL) as the agent would and say what
        /// answered; exit code 1 if one does not, e.g. smtpguard config check --connect
        #[arg(long)]
        connect: bool,
    },
}

pub fn run(command: &ConfigCommand, agent: &AgentArgs) -> anyhow::Result<()> {
    match command {
        ConfigCommand::Check {
            file,
            against,
            strict,
            connect,
        } => {
            let file = match file {
                Some(file) => file,
                None => agent.needed_config_file()?,
            };
            let config = Config::load(file).context("invalid configuration")?;
            let running = against
                .as_deref()
                .map(|path| {
                    Config::load(path).with_context(|| {
                        format!("invalid configuration in --against {}", path.display())
                    })
                })
                .transpose()?;
            println!(
                "{}: ok ({} subscriber ranges, {} relays, {} exemptions; enforced ports {:?})",
                file.display(),
                config.subscribers.len(),
                config.relays.len() + config.relay_hosts.len(),
                config.exemptions.len(),
                config.enforcement.ports,
            );
            if let (Some(running), Some(path)) = (&running, against) {
                let changes = policy::changes(running, &config);
                match changes.len() {
                    0 => println!("no policy change against {}", path.display()),
                    1 => println!("1 policy change against {}:", path.display()),
                    n => println!("{n} policy changes against {}:", path.display()),
                }
                for change in changes {
                    println!("  {change}");
                }
            }
            if *connect {
                connect_fleet(&config, file)?;
            }
            let dangers = danger::dangers(running.as_ref(), &config);
            for danger in &dangers {
                eprintln!("warning: {}: {danger}", file.display());
            }
            let tunnels = unlisted_tunnels(&config, file);
            for tunnel in &tunnels {
                eprintln!("warning: {}: {tunnel}", file.display());
            }
            let resolved = policy::resolve_relay_hosts(
                &config,
                &policy::ResolvedRelays::default(),
                std::time::SystemTime::now(),
            );
            let unresolved: Vec<String> = resolved.warnings().map(|w| w.to_string()).collect();
            for warning in &unresolved {
                eprintln!("warning: {}: {warning}", file.display());
            }
            let warnings = dangers.len() + tunnels.len() + unresolved.len();
            if warnings == 0 {
                return Ok(());
            }
            let count = match warnings {
                1 => "1 warning".to_owned(),
                n => format!("{n} warnings"),
            };
            if *strict {
                bail!("{}: {count} (--strict)", file.display());
            }
            if dangers.is_empty() {
                eprintln!("{}: {count}", file.display());
            } else {
                eprintln!(
                    "{}: {count}; `smtpguard reload` refuses this file without --force",
                    file.display()
                );
            }
            Ok(())
        }
    }
}

/// `--connect`: every [fleet] server, each said reached or not; fails if one is not.
fn connect_fleet(config: &Config, file: &Path) -> anyhow::Result<()> {
    let Some(fleet) = &config.fleet else {
        println!(
            "{}: no [fleet] table: nothing to connect to",
            file.display()
        );
        return Ok(());
    };
    super::ignore_sigpipe();
    let mut failed = Vec::new();
    if let Some(etcd) = &fleet.etcd {
        match crate::policy::etcd::probe(etcd) {
            Ok(line) => println!("{line}"),
            Err(error) => failed.push(error.to_string()),
        }
    }
    if let Some(postgres) = &fleet.postgres {
        match crate::fleet::postgres::probe(postgres) {
            Ok(line) => println!("{line}"),
            Err(error) => failed.push(error.to_string()),
        }
    }
    if !failed.is_empty() {
        bail!("{}", failed.join("; "));
    }
    Ok(())
}

/// The tunnel and L3 devices of this machine (in `[agent] netns` when set) that are up and
/// not in `interfaces`. Looking needs the namespace (and CAP_SYS_ADMIN to enter it): when
/// that fails, a note says so and nothing is counted as a warning.
fn unlisted_tunnels(config: &Config, file: &Path) -> Vec<UnlistedTunnel> {
    let netns = config.agent.netns.as_deref();
    let found = netns::run_in(netns, || {
        interfaces::unlisted_tunnels(&config.agent.interfaces)
    })
    .and_then(|found| Ok(found?));
    found.unwrap_or_else(|error| {
        eprintln!(
            "note: {}: not checked for unlisted tunnel interfaces{}: {error:#}",
            file.display(),
            netns
                .map(|name| format!(" in network namespace {name}"))
                .unwrap_or_default()
        );
        Vec::new()
    })
}
