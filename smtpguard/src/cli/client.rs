//! Which config file a verb reads, and how the CLI reaches the agent: the socket named by
//! `--socket`, or the one in the `[agent]` table of the config file, or the default.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Args;
use serde_json::Value;

use crate::{
    agent::api::{self, ErrorKind, Request, Response},
    config::{AgentConfig, Config},
};

/// Where the package installs the configuration; used when neither `--config` nor
/// [`CONFIG_ENV`] names another file.
pub const DEFAULT_CONFIG: &str = "/etc/smtpguard/smtpguard.toml";
/// The environment variable naming the config file when `--config` is not given.
pub const CONFIG_ENV: &str = "SMTPGUARD_CONFIG";

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The agent's socket, e.g. --socket /run/smtpguard/smtpguard.sock (default: the config
    /// file's [agent] socket, else /run/smtpguard/smtpguard.sock)
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    /// The configuration file: the policy for `run`, `replay`, `prepare` and `config check`,
    /// and where the other verbs find the agent's socket, e.g.
    /// --config /srv/test/smtpguard.toml [default: /etc/smtpguard/smtpguard.toml]
    #[arg(long, global = true, env = CONFIG_ENV)]
    config: Option<PathBuf>,
}

/// The agent answered with an error: exit code 1, its message shown as it is.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct AgentRefused {
    pub kind: ErrorKind,
    pub message: String,
}

impl AgentArgs {
    /// The config file: `--config`, else `$SMTPGUARD_CONFIG`, else [`DEFAULT_CONFIG`].
    pub fn config_file(&self) -> &Path {
        self.config.as_deref().unwrap_or(Path::new(DEFAULT_CONFIG))
    }

    /// The config file of a verb that needs one: like [`Self::config_file`], and a missing
    /// default file is explained rather than reported as a bare "not found".
    pub fn needed_config_file(&self) -> anyhow::Result<&Path> {
        let path = self.config_file();
        if self.config.is_none() && !path.exists() {
            anyhow::bail!(
                "{} does not exist; expected the configuration there (the package installs \
                 it), or name another file with --config FILE or {CONFIG_ENV}=FILE",
                path.display()
            );
        }
        Ok(path)
    }

    /// The agent's socket: `--socket`, else the config file's `[agent] socket`, else the
    /// default. The file is read leniently: a client verb must reach a running agent even
    /// when the file on disk has a mistake in it (the agent judges the file on `reload`). A
    /// file named by `--config` or the environment must exist; the default one may not.
    pub fn socket(&self) -> anyhow::Result<PathBuf> {
        if let Some(socket) = &self.socket {
            return Ok(socket.clone());
        }
        let path = self.config_file();
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(_) if self.config.is_none() => String::new(),
            Err(error) => {
                return Err(error).with_context(|| {
                    format!(
                        "cannot read the config file {} to find the agent's socket; expected \
                         a readable file, or --socket PATH",
                        path.display()
                    )
                });
            }
        };
        Ok(socket_in(&text).unwrap_or_else(|| AgentConfig::default().socket))
    }

    /// The config file, read in full, by a verb that goes to the agent's files (`what`: "the
    /// pin folder") because no agent answers.
    pub fn config_without_agent(&self, what: &str) -> anyhow::Result<Config> {
        let path = self.config_file();
        Config::load(path).with_context(|| {
            format!(
                "no agent answers, and {what} is in the config file {}",
                path.display()
            )
        })
    }

    /// Checks `request` against the input limits, sends it and returns the body of a
    /// successful answer.
    pub fn call(&self, request: &Request) -> anyhow::Result<Value> {
        request.validate(std::time::SystemTime::now())?;
        match api::call(&self.socket()?, request)? {
            Response::Ok { body } => Ok(body),
            Response::Error { kind, message } => Err(AgentRefused { kind, message }.into()),
        }
    }
}

/// Whether `error` is the agent not answering at all (not running, or another socket): a
/// verb that can do without it (`audit`, `detach`) then goes to the files itself.
pub fn unreachable(error: &anyhow::Error) -> bool {
    matches!(
        error.downcast_ref::<api::ClientError>(),
        Some(api::ClientError::Unreachable { .. })
    )
}

/// The `[agent] socket` of a config file's text, found without judging the rest of the file:
/// a full TOML parse when the file is valid TOML, a line scan when it is not. `None` when the
/// file does not set it (or sets it to something other than a string).
pub fn socket_in(text: &str) -> Option<PathBuf> {
    if let Ok(table) = text.parse::<toml::Table>() {
        return table
            .get("agent")?
            .get("socket")?
            .as_str()
            .map(PathBuf::from);
    }
    // Not TOML: the `socket = "..."` line of the `[agent]` table, if any line reads so.
    let mut in_agent = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_agent = line.split('#').next().map(str::trim) == Some("[agent]");
            continue;
        }
        let dotted = line.strip_prefix("agent.").filter(|_| !in_agent);
        let Some(rest) = dotted.or(in_agent.then_some(line)) else {
            continue;
        };
        let Some((key, value)) = rest.split_once('=') else {
            continue;
        };
        if key.trim() != "socket" {
            continue;
        }
        let value = value.trim();
        let quote = value.chars().next().filter(|c| matches!(c, '"' | '\''))?;
        let end = value[1..].find(quote)?;
        return Some(PathBuf::from(&value[1..=end]));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_socket_is_found_in_broken_files_too() {
        let socket = Some(PathBuf::from("/run/sg/test.sock"));
        for text in [
            // Valid.
            "[agent]\nsocket = \"/run/sg/test.sock\"\n",
            // Valid TOML, invalid config: an unknown key, a bad value, no subscribers.
            "[agent]\nsocket = \"/run/sg/test.sock\"\ninterfacez = [\"eth1\"]\n",
            "[[subscribers]]\nprefix = \"100.64.0.1/10\"\n[agent]\nsocket = '/run/sg/test.sock'\n",
            // Not TOML at all: a missing quote elsewhere, a stray line.
            "[[subscribers]]\nprefix = \"100.64.0.0/10\n[agent]\nsocket = \"/run/sg/test.sock\" # the CLI's\n",
            "[agent] # the long-running part\ninterfaces = [\"eth1\"\n  socket=\"/run/sg/test.sock\"\n[report\n",
            "agent.socket = \"/run/sg/test.sock\"\nthis is not toml\n",
        ] {
            assert_eq!(socket_in(text), socket, "in {text:?}");
        }
        for text in [
            "",
            "[agent]\ninterfaces = [\"eth1\"]\n",
            // Another table's socket is not the agent's.
            "[report]\nsocket = \"/elsewhere\"\n",
            "[report]\nsocket = \"/elsewhere\"\nbroken = \n",
            "[agent]\nsocket = 42\n",
        ] {
            assert_eq!(socket_in(text), None, "in {text:?}");
        }
    }
}
