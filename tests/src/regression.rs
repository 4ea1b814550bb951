//! Regression cases of the differential tests: a policy and the frames that once made the
//! kernel program and the reference model disagree, as a small line-based text file under
//! `tests/regressions/`, so a case reads (and can be written) by hand:
//!
//! ```text
//! # IPv4 TCP first fragment whose TCP header is cut (found by `cargo xtask fuzz`, seed 7)
//! port 25
//! unparseable drop
//! subscriber 100.64.0.0/10 enforce
//! relay 192.0.2.25/32
//! exempt 100.64.10.0/24
//! escalated 100.127.9.9
//! frame 020000000002020000000001080045...
//! ```

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
};

use ipnet::IpNet;
use smtpguard::policy::DesiredPolicy;
use smtpguard_common::{
    EnforcementConfig, Mode, Origin, PrefixOrigin, SubscriberPolicy, UnparseableAction,
    maps::MAX_PORTS,
};

#[derive(Clone, Debug, PartialEq)]
pub struct Regression {
    /// What the case is about (the `#` lines).
    pub comment: String,
    pub policy: DesiredPolicy,
    pub escalated: BTreeSet<IpAddr>,
    pub frames: Vec<Vec<u8>>,
}

#[derive(Debug, thiserror::Error)]
pub enum RegressionError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {problem} in {text:?}")]
    Syntax {
        path: PathBuf,
        line: usize,
        text: String,
        problem: String,
    },
    #[error("{path}: {problem}")]
    Incomplete { path: PathBuf, problem: String },
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Result<Vec<u8>, String> {
    if !text.len().is_multiple_of(2) {
        return Err("odd number of hex digits".to_string());
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&text[i..i + 2], 16)
                .map_err(|_| format!("{:?} is not a hex byte", &text[i..i + 2]))
        })
        .collect()
}

impl Regression {
    pub fn render(&self) -> String {
        let mut text = String::new();
        for line in self.comment.lines() {
            let _ = writeln!(text, "# {line}");
        }
        let enforcement = &self.policy.enforcement;
        for port in &enforcement.ports[..enforcement.port_count as usize] {
            let _ = writeln!(text, "port {port}");
        }
        let unparseable = if enforcement.drops_unparseable() {
            "drop"
        } else {
            "pass"
        };
        let _ = writeln!(text, "unparseable {unparseable}");
        for (prefix, policy) in &self.policy.subscribers {
            let mode = if policy.is_monitor() {
                "monitor"
            } else {
                "enforce"
            };
            let _ = writeln!(text, "subscriber {prefix} {mode}");
        }
        for prefix in self.policy.relays.keys() {
            let _ = writeln!(text, "relay {prefix}");
        }
        for prefix in self.policy.exemptions.keys() {
            let _ = writeln!(text, "exempt {prefix}");
        }
        for host in &self.escalated {
            let _ = writeln!(text, "escalated {host}");
        }
        for frame in &self.frames {
            let _ = writeln!(text, "frame {}", hex(frame));
        }
        text
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, RegressionError> {
        let mut comment = Vec::new();
        let mut ports = Vec::new();
        let mut unparseable = None;
        let mut subscribers = BTreeMap::new();
        let mut relays = BTreeMap::new();
        let mut exemptions = BTreeMap::new();
        let mut escalated = BTreeSet::new();
        let mut frames = Vec::new();
        let origin = PrefixOrigin::new(Origin::Config);
        for (index, line) in text.lines().enumerate() {
            let syntax = |problem: String| RegressionError::Syntax {
                path: path.to_path_buf(),
                line: index + 1,
                text: line.to_string(),
                problem,
            };
            let prefix = |text: &str| {
                text.parse::<IpNet>()
                    .map_err(|e| syntax(format!("{text:?} is not a prefix ({e})")))
            };
            let line = line.trim();
            if let Some(text) = line.strip_prefix('#') {
                comment.push(text.trim().to_string());
                continue;
            }
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                [] => {}
                ["port", port] => ports.push(port.parse::<u16>().map_err(|_| {
                    syntax(format!("{port:?} is not a port (1 to 65535 expected)"))
                })?),
                ["unparseable", "drop"] => unparseable = Some(UnparseableAction::Drop),
                ["unparseable", "pass"] => unparseable = Some(UnparseableAction::Pass),
                ["subscriber", range, mode] => {
                    let mode = match *mode {
                        "enforce" => Mode::Enforce,
                        "monitor" => Mode::Monitor,
                        other => {
                            return Err(syntax(format!(
                                "{other:?} is not a mode (enforce or monitor expected)"
                            )));
                        }
                    };
                    let rule = subscribers.len() as u32;
                    subscribers.insert(prefix(range)?, SubscriberPolicy::new(mode, rule));
                }
                ["relay", range] => {
                    relays.insert(prefix(range)?, origin);
                }
                ["exempt", range] => {
                    exemptions.insert(prefix(range)?, origin);
                }
                ["escalated", host] => {
                    escalated.insert(
                        host.parse::<IpAddr>()
                            .map_err(|_| syntax(format!("{host:?} is not an IP address")))?,
                    );
                }
                ["frame", bytes] => frames.push(unhex(bytes).map_err(syntax)?),
                _ => {
                    return Err(syntax(
                        "expected port, unparseable, subscriber, relay, exempt, escalated or frame"
                            .to_string(),
                    ));
                }
            }
        }
        let incomplete = |problem: &str| RegressionError::Incomplete {
            path: path.to_path_buf(),
            problem: problem.to_string(),
        };
        if ports.is_empty() || ports.len() > MAX_PORTS {
            return Err(incomplete("1 to 8 `port` lines expected"));
        }
        let unparseable = unparseable.ok_or_else(|| incomplete("no `unparseable` line"))?;
        if frames.is_empty() {
            return Err(incomplete("no `frame` line"));
        }
        Ok(Self {
            comment: comment.join("\n"),
            policy: DesiredPolicy {
                enforcement: EnforcementConfig::new(
                    &ports,
                    unparseable,
                    crate::generate::whole_hosts(subscribers.keys().chain(exemptions.keys())),
                ),
                subscribers,
                relays,
                exemptions,
            },
            escalated,
            frames,
        })
    }

    pub fn load(path: &Path) -> Result<Self, RegressionError> {
        let text = std::fs::read_to_string(path).map_err(|source| RegressionError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }
}

/// `tests/regressions/` of this repository.
pub fn folder() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("regressions")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_and_parse_round_trip() {
        let text = "# a case\nport 25\nport 2525\nunparseable pass\n\
                    subscriber 100.64.0.0/10 enforce\nsubscriber 2001:db8::/32 monitor\n\
                    relay 192.0.2.25/32\nexempt 100.64.10.0/24\nescalated 2001:db8::9\n\
                    frame 0102ff\n";
        let case = Regression::parse(text, Path::new("case.txt")).unwrap();
        assert_eq!(case.frames, [vec![1, 2, 0xff]]);
        assert!(!case.policy.enforcement.drops_unparseable());
        assert_eq!(case.render(), text);
    }

    #[test]
    fn errors_name_the_line_and_value() {
        let error = Regression::parse("port 25\nsubscriber 10.0.0.0/33 enforce\n", Path::new("x"))
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("x:2:"), "{error}");
        assert!(error.contains("10.0.0.0/33"), "{error}");
        let error = Regression::parse("port 25\nunparseable drop\nframe 0g\n", Path::new("x"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("\"0g\" is not a hex byte"), "{error}");
    }
}
