//! How the CLI reaches the agent: the socket named by `--socket`, or the one in the
//! `[agent]` table of `--config`, or the default.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Args;
use serde_json::Value;

use crate::{
    agent::api::{self, ErrorKind, Request, Response},
    config::{AgentConfig, Config},
};

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The agent's socket, e.g. --socket /run/smtpguard/smtpguard.sock
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    /// The configuration file: the policy for `run` and `replay`, and where the other verbs
    /// find the agent's socket, e.g. --config /etc/smtpguard/smtpguard.toml
    #[arg(long, global = true)]
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
    /// The `--config` file, which `run` and `replay` need.
    pub fn config_file(&self) -> anyhow::Result<&Path> {
        self.config
            .as_deref()
            .context("--config FILE is needed, e.g. --config /etc/smtpguard/smtpguard.toml")
    }

    pub fn socket(&self) -> anyhow::Result<PathBuf> {
        if let Some(socket) = &self.socket {
            return Ok(socket.clone());
        }
        if let Some(path) = &self.config {
            let config = Config::load(path).context("invalid configuration")?;
            return Ok(config.agent.socket);
        }
        Ok(AgentConfig::default().socket)
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
