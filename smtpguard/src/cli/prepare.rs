//! `smtpguard prepare --user smtpguard`: what an unprivileged agent cannot do for itself.

use anyhow::{Context as _, bail};
use clap::Args;
use nix::unistd::{Gid, Uid, User};

use crate::{config::Config, dataplane::PinLayout};

#[derive(Debug, Args)]
pub struct PrepareArgs {
    /// The user the agent runs as: a name (its primary group is used) or UID:GID, e.g.
    /// --user smtpguard
    #[arg(long)]
    user: String,
}

pub fn run(args: &PrepareArgs, config_file: &std::path::Path) -> anyhow::Result<()> {
    let config = Config::load(config_file).context("invalid configuration")?;
    let (uid, gid) = owner(&args.user)?;
    let pins = PinLayout::new(&config.agent.pin_dir);
    pins.hand_over(uid, gid)
        .context("preparing the pin folder (this needs root)")?;
    println!(
        "{}: ready for user {} ({uid}:{gid})",
        pins.root().display(),
        args.user
    );
    Ok(())
}

/// `NAME` (with its primary group) or `UID:GID`.
fn owner(user: &str) -> anyhow::Result<(Uid, Gid)> {
    if let Some((uid, gid)) = user.split_once(':') {
        let (Ok(uid), Ok(gid)) = (uid.parse(), gid.parse()) else {
            bail!("--user {user:?}: expected a user name or UID:GID such as 990:990");
        };
        return Ok((Uid::from_raw(uid), Gid::from_raw(gid)));
    }
    let found = User::from_name(user)
        .with_context(|| format!("looking up user {user:?}"))?
        .with_context(|| {
            format!("--user {user:?}: no such user; expected a user name or UID:GID")
        })?;
    Ok((found.uid, found.gid))
}
