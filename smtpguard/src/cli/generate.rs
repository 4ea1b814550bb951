//! `smtpguard generate-assets DIR` (hidden): the man page and the shell completions, generated
//! from the clap definitions, for `cargo xtask package`. Living here keeps the agent out of
//! xtask's build: xtask runs the binary it packages.

use std::{fs, path::Path};

use anyhow::Context as _;
use clap::CommandFactory as _;
use clap_complete::Shell;

use super::Cli;

/// Writes `smtpguard.1`, `smtpguard.bash`, `_smtpguard` (zsh) and `smtpguard.fish` into `dir`.
pub fn run(dir: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let command = Cli::command();
    let mut page = Vec::new();
    clap_mangen::Man::new(command.clone())
        .render(&mut page)
        .context("rendering the man page")?;
    write(&dir.join("smtpguard.1"), &page)?;
    for (shell, name) in [
        (Shell::Bash, "smtpguard.bash"),
        (Shell::Zsh, "_smtpguard"),
        (Shell::Fish, "smtpguard.fish"),
    ] {
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut command.clone(), "smtpguard", &mut script);
        write(&dir.join(name), &script)?;
    }
    Ok(())
}

fn write(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}
