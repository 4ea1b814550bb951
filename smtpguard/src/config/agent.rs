//! The `[agent]` table: where the long-running agent attaches, where it keeps its state, and
//! how it is reached. Every path is configurable so that tests and second instances never
//! touch a live installation.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, Source};

/// Longest interface name the kernel accepts (IFNAMSIZ minus the terminating NUL).
const MAX_INTERFACE_NAME: usize = 15;
/// Re-resolving relay hostnames more often than this only loads the resolver.
const MIN_RELAY_REFRESH: Duration = Duration::from_secs(10);

/// Which entry point the agent attaches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachKind {
    /// XDP: the earliest and cheapest hook.
    #[default]
    Xdp,
    /// TC ingress, for drivers without XDP support.
    Tc,
}

/// XDP attachment mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// In the driver: fastest; needs driver support.
    #[default]
    Native,
    /// Generic XDP in the stack: works everywhere, slower.
    Skb,
}

/// The most detailed level the agent logs at.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    /// Startup, reloads, changes made through the CLI, bots found.
    #[default]
    Info,
    /// Also each statistics snapshot.
    Debug,
    Trace,
}

impl LogLevel {
    /// The level as the config file and `SMTPGUARD_LOG` spell it.
    pub fn name(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    /// Subscriber-facing interfaces.
    pub interfaces: Vec<String>,
    pub attach: AttachKind,
    pub xdp_mode: XdpMode,
    /// The network namespace (a name under /run/netns) the interfaces live in, when not the
    /// agent's own.
    pub netns: Option<String>,
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    /// Group that may use the socket (mode 0660); the agent's own group when absent.
    pub socket_group: Option<String>,
    pub metrics_listen: SocketAddr,
    /// bpffs folder holding the pinned maps and links.
    pub pin_dir: PathBuf,
    /// How often relay hostnames are resolved again.
    pub relay_refresh: Duration,
    /// The agent's log level, unless `SMTPGUARD_LOG` or `RUST_LOG` is set.
    pub log_level: LogLevel,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            interfaces: Vec::new(),
            attach: AttachKind::default(),
            xdp_mode: XdpMode::default(),
            netns: None,
            state_dir: PathBuf::from("/var/lib/smtpguard"),
            socket: PathBuf::from("/run/smtpguard/smtpguard.sock"),
            socket_group: None,
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 9725)),
            pin_dir: PathBuf::from("/sys/fs/bpf/smtpguard"),
            relay_refresh: Duration::from_secs(300),
            log_level: LogLevel::default(),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawAgent {
    // Absent: none; `smtpguard run` then refuses to start (it would enforce nothing).
    interfaces: Option<Spanned<Vec<Spanned<String>>>>,
    // Absent: xdp.
    attach: AttachKind,
    // Absent: native.
    xdp_mode: XdpMode,
    // Absent: the agent's own network namespace.
    netns: Option<Spanned<String>>,
    // Absent: /var/lib/smtpguard.
    state_dir: Option<Spanned<String>>,
    // Absent: /run/smtpguard/smtpguard.sock.
    socket: Option<Spanned<String>>,
    // Absent: the agent's own group.
    socket_group: Option<Spanned<String>>,
    // Absent: 127.0.0.1:9725 (loopback only: metrics are not for the world).
    metrics_listen: Option<Spanned<String>>,
    // Absent: /sys/fs/bpf/smtpguard.
    pin_dir: Option<Spanned<String>>,
    // Absent: 5m.
    relay_refresh: Option<Spanned<String>>,
    // Absent: info.
    log_level: LogLevel,
}

fn invalid(
    src: &Source<'_>,
    key: &'static str,
    value: &Spanned<String>,
    expected: &str,
) -> ConfigError {
    src.invalid("agent", key, value.span(), value.get_ref(), expected)
}

fn absolute_path(
    src: &Source<'_>,
    key: &'static str,
    raw: Option<Spanned<String>>,
    default: PathBuf,
) -> Result<PathBuf, ConfigError> {
    let Some(raw) = raw else {
        return Ok(default);
    };
    let path = PathBuf::from(raw.get_ref());
    if !path.is_absolute() || raw.get_ref().chars().any(char::is_control) {
        return Err(invalid(src, key, &raw, "an absolute path"));
    }
    Ok(path)
}

/// A name the kernel and `ip` accept for an interface or a network namespace.
fn is_plain_name(name: &str, max: usize) -> bool {
    !name.is_empty()
        && name.len() <= max
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
}

pub(super) fn validate_agent(src: &Source<'_>, raw: RawAgent) -> Result<AgentConfig, ConfigError> {
    let defaults = AgentConfig::default();
    let mut interfaces: Vec<String> = Vec::new();
    if let Some(list) = raw.interfaces {
        for name in list.into_inner() {
            if !is_plain_name(name.get_ref(), MAX_INTERFACE_NAME) {
                return Err(invalid(
                    src,
                    "interfaces",
                    &name,
                    "an interface name of 1 to 15 letters, digits, '-', '_', '.' or '@'",
                ));
            }
            if interfaces.contains(name.get_ref()) {
                return Err(invalid(src, "interfaces", &name, "each interface once"));
            }
            interfaces.push(name.into_inner());
        }
    }
    let netns = match raw.netns {
        Some(name) if !is_plain_name(name.get_ref(), 255) => {
            return Err(invalid(
                src,
                "netns",
                &name,
                "the name of a namespace under /run/netns",
            ));
        }
        name => name.map(Spanned::into_inner),
    };
    let socket_group = match raw.socket_group {
        Some(group) if !is_plain_name(group.get_ref(), 32) => {
            return Err(invalid(src, "socket_group", &group, "a group name"));
        }
        group => group.map(Spanned::into_inner),
    };
    let metrics_listen = match raw.metrics_listen {
        None => defaults.metrics_listen,
        Some(listen) => listen.get_ref().parse().map_err(|_| {
            invalid(
                src,
                "metrics_listen",
                &listen,
                "ADDRESS:PORT, such as 127.0.0.1:9725",
            )
        })?,
    };
    let relay_refresh = src.duration(
        "agent",
        "relay_refresh",
        raw.relay_refresh,
        defaults.relay_refresh,
        MIN_RELAY_REFRESH,
    )?;
    Ok(AgentConfig {
        interfaces,
        attach: raw.attach,
        xdp_mode: raw.xdp_mode,
        netns,
        state_dir: absolute_path(src, "state_dir", raw.state_dir, defaults.state_dir)?,
        socket: absolute_path(src, "socket", raw.socket, defaults.socket)?,
        socket_group,
        metrics_listen,
        pin_dir: absolute_path(src, "pin_dir", raw.pin_dir, defaults.pin_dir)?,
        relay_refresh,
        log_level: raw.log_level,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    fn parse(agent: &str) -> Result<Config, ConfigError> {
        let text = format!("[[subscribers]]\nprefix = \"100.64.0.0/10\"\n[agent]\n{agent}\n");
        Config::parse(&text, Path::new("agent.toml"))
    }

    fn rejected(agent: &str, expected: &[&str]) {
        let message = parse(agent).expect_err(agent).to_string();
        for part in expected {
            assert!(message.contains(part), "{part:?} missing from: {message}");
        }
    }

    #[test]
    fn absent_agent_table_takes_defaults() {
        let config = Config::parse(
            "[[subscribers]]\nprefix = \"100.64.0.0/10\"\n",
            Path::new("a.toml"),
        )
        .unwrap();
        assert_eq!(config.agent, AgentConfig::default());
    }

    #[test]
    fn full_agent_table_round_trips() {
        let config = parse(
            r#"interfaces = ["sub0", "bond0.100"]
attach = "tc"
xdp_mode = "skb"
netns = "gw"
state_dir = "/tmp/sg/state"
socket = "/tmp/sg/sock"
socket_group = "smtpguard"
metrics_listen = "[::1]:9999"
pin_dir = "/sys/fs/bpf/sg-test"
relay_refresh = "90s"
log_level = "debug""#,
        )
        .unwrap();
        let agent = config.agent;
        assert_eq!(agent.interfaces, ["sub0", "bond0.100"]);
        assert_eq!(agent.attach, AttachKind::Tc);
        assert_eq!(agent.xdp_mode, XdpMode::Skb);
        assert_eq!(agent.netns.as_deref(), Some("gw"));
        assert_eq!(agent.state_dir, PathBuf::from("/tmp/sg/state"));
        assert_eq!(agent.socket, PathBuf::from("/tmp/sg/sock"));
        assert_eq!(agent.socket_group.as_deref(), Some("smtpguard"));
        assert_eq!(agent.metrics_listen, "[::1]:9999".parse().unwrap());
        assert_eq!(agent.pin_dir, PathBuf::from("/sys/fs/bpf/sg-test"));
        assert_eq!(agent.relay_refresh, Duration::from_secs(90));
        assert_eq!(agent.log_level, LogLevel::Debug);
    }

    #[test]
    fn bad_values_name_key_line_and_value() {
        rejected(
            r#"interfaces = ["a-very-long-interface-name"]"#,
            &[
                "agent.toml:4:",
                "agent.interfaces",
                "a-very-long-interface-name",
            ],
        );
        rejected(
            r#"interfaces = ["eth0", "eth0"]"#,
            &["agent.toml:4:", "each interface once"],
        );
        rejected(r#"interfaces = ["eth 0"]"#, &["agent.toml:4:", "\"eth 0\""]);
        rejected(
            r#"state_dir = "var/lib/smtpguard""#,
            &["agent.toml:4:", "agent.state_dir", "an absolute path"],
        );
        rejected(
            r#"metrics_listen = "localhost""#,
            &["agent.toml:4:", "ADDRESS:PORT"],
        );
        rejected(
            r#"relay_refresh = "1s""#,
            &["agent.toml:4:", "at least 10s"],
        );
        rejected(r#"relay_refresh = "soon""#, &["agent.toml:4:", "\"soon\""]);
        rejected(r#"netns = "../etc""#, &["agent.toml:4:", "agent.netns"]);
        rejected(r#"attach = "ebpf""#, &["agent.toml:4:", "`xdp` or `tc`"]);
        rejected(
            r#"log_level = "verbose""#,
            &[
                "agent.toml:4:",
                "verbose",
                "`error`, `warn`, `info`, `debug`, `trace`",
            ],
        );
        rejected(
            r#"interface = ["eth0"]"#,
            &["agent.toml:4:", "unknown field `interface`"],
        );
    }
}
