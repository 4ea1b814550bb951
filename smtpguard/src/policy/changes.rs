//! What replacing one configuration by another changes, in policy terms: subscriber ranges
//! and their modes, relays (prefixes and hostnames), exemptions, the enforced ports and what
//! happens to unparseable frames. `reload` answers and audits this; `config check --against`
//! prints it before anyone reloads.

use std::{collections::BTreeMap, fmt};

use ipnet::IpNet;
use smtpguard_common::{Mode, UnparseableAction};

use crate::config::Config;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyChange {
    RangeAdded {
        prefix: IpNet,
        mode: Mode,
    },
    RangeRemoved {
        prefix: IpNet,
        mode: Mode,
    },
    ModeChanged {
        prefix: IpNet,
        from: Mode,
        to: Mode,
    },
    RelayAdded(String),
    RelayRemoved(String),
    ExemptionAdded(IpNet),
    ExemptionRemoved(IpNet),
    /// The reason of a config exemption changed: the entry stays, the record differs.
    ExemptionReason {
        prefix: IpNet,
        from: String,
        to: String,
    },
    Ports {
        from: Vec<u16>,
        to: Vec<u16>,
    },
    Unparseable {
        from: UnparseableAction,
        to: UnparseableAction,
    },
}

pub fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Enforce => "enforce",
        Mode::Monitor => "monitor",
    }
}

fn unparseable_name(action: UnparseableAction) -> &'static str {
    match action {
        UnparseableAction::Pass => "pass",
        UnparseableAction::Drop => "drop",
    }
}

impl fmt::Display for PolicyChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicyChange::RangeAdded { prefix, mode } => {
                write!(f, "{prefix}: new subscriber range ({})", mode_name(*mode))
            }
            PolicyChange::RangeRemoved { prefix, mode } => write!(
                f,
                "{prefix}: no longer a subscriber range (was {})",
                mode_name(*mode)
            ),
            PolicyChange::ModeChanged { prefix, from, to } => {
                write!(f, "{prefix}: {} -> {}", mode_name(*from), mode_name(*to))
            }
            PolicyChange::RelayAdded(relay) => write!(f, "relay {relay} added"),
            PolicyChange::RelayRemoved(relay) => write!(f, "relay {relay} removed"),
            PolicyChange::ExemptionAdded(prefix) => write!(f, "exemption {prefix} added"),
            PolicyChange::ExemptionRemoved(prefix) => write!(f, "exemption {prefix} removed"),
            PolicyChange::ExemptionReason { prefix, from, to } => {
                write!(f, "exemption {prefix}: reason {from:?} -> {to:?}")
            }
            PolicyChange::Ports { from, to } => write!(f, "enforced ports {from:?} -> {to:?}"),
            PolicyChange::Unparseable { from, to } => write!(
                f,
                "unparseable {} -> {}",
                unparseable_name(*from),
                unparseable_name(*to)
            ),
        }
    }
}

/// What `new` changes in the policy of `old`, in a stable order: enforcement, ranges,
/// relays, exemptions, each by address.
pub fn changes(old: &Config, new: &Config) -> Vec<PolicyChange> {
    let mut changes = Vec::new();
    if old.enforcement.ports != new.enforcement.ports {
        changes.push(PolicyChange::Ports {
            from: old.enforcement.ports.clone(),
            to: new.enforcement.ports.clone(),
        });
    }
    if old.enforcement.unparseable != new.enforcement.unparseable {
        changes.push(PolicyChange::Unparseable {
            from: old.enforcement.unparseable,
            to: new.enforcement.unparseable,
        });
    }
    let ranges = |config: &Config| -> BTreeMap<IpNet, Mode> {
        config
            .subscribers
            .iter()
            .map(|r| (r.prefix, r.mode))
            .collect()
    };
    for (prefix, change) in compare(&ranges(old), &ranges(new)) {
        changes.push(match change {
            Compared::Added(mode) => PolicyChange::RangeAdded { prefix, mode },
            Compared::Removed(mode) => PolicyChange::RangeRemoved { prefix, mode },
            Compared::Changed(from, to) => PolicyChange::ModeChanged { prefix, from, to },
        });
    }
    let relays = |config: &Config| -> BTreeMap<String, ()> {
        let prefixes = config.relays.iter().map(|r| r.prefix.to_string());
        let hosts = config.relay_hosts.iter().map(|r| r.host.clone());
        prefixes.chain(hosts).map(|relay| (relay, ())).collect()
    };
    for (relay, change) in compare(&relays(old), &relays(new)) {
        changes.push(match change {
            Compared::Added(()) => PolicyChange::RelayAdded(relay),
            Compared::Removed(()) | Compared::Changed(..) => PolicyChange::RelayRemoved(relay),
        });
    }
    let exemptions = |config: &Config| -> BTreeMap<IpNet, String> {
        config
            .exemptions
            .iter()
            .map(|e| (e.prefix, e.reason.clone()))
            .collect()
    };
    for (prefix, change) in compare(&exemptions(old), &exemptions(new)) {
        changes.push(match change {
            Compared::Added(_) => PolicyChange::ExemptionAdded(prefix),
            Compared::Removed(_) => PolicyChange::ExemptionRemoved(prefix),
            Compared::Changed(from, to) => PolicyChange::ExemptionReason { prefix, from, to },
        });
    }
    changes
}

enum Compared<V> {
    Added(V),
    Removed(V),
    Changed(V, V),
}

/// Every key whose value differs between `old` and `new`, in key order.
fn compare<K: Ord + Clone, V: PartialEq + Clone>(
    old: &BTreeMap<K, V>,
    new: &BTreeMap<K, V>,
) -> Vec<(K, Compared<V>)> {
    let mut keys: Vec<&K> = old.keys().chain(new.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter_map(|key| {
            let change = match (old.get(key), new.get(key)) {
                (None, Some(to)) => Compared::Added(to.clone()),
                (Some(from), None) => Compared::Removed(from.clone()),
                (Some(from), Some(to)) if from != to => Compared::Changed(from.clone(), to.clone()),
                _ => return None,
            };
            Some((key.clone(), change))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn config(text: &str) -> Config {
        Config::parse(text, Path::new("changes.toml")).unwrap()
    }

    #[test]
    fn changes_are_named_in_policy_terms() {
        let old = config(
            r#"[[subscribers]]
prefix = "100.64.0.0/10"
mode = "monitor"
[[subscribers]]
prefix = "2001:db8::/32"
[[relays]]
prefix = "192.0.2.25/32"
[[exemptions]]
prefix = "100.64.10.0/24"
reason = "business"
"#,
        );
        let new = config(
            r#"[enforcement]
ports = [25, 2525]
unparseable = "pass"
[[subscribers]]
prefix = "100.64.0.0/10"
mode = "enforce"
[[subscribers]]
prefix = "10.0.0.0/8"
mode = "monitor"
[[relays]]
prefix = "192.0.2.26/32"
[[relays]]
host = "localhost"
[[exemptions]]
prefix = "100.64.10.0/24"
reason = "business, renewed"
[[exemptions]]
prefix = "100.64.11.0/24"
reason = "another"
"#,
        );
        let lines: Vec<String> = changes(&old, &new).iter().map(|c| c.to_string()).collect();
        assert_eq!(
            lines,
            [
                "enforced ports [25] -> [25, 2525]",
                "unparseable drop -> pass",
                "10.0.0.0/8: new subscriber range (monitor)",
                "100.64.0.0/10: monitor -> enforce",
                "2001:db8::/32: no longer a subscriber range (was enforce)",
                "relay 192.0.2.25/32 removed",
                "relay 192.0.2.26/32 added",
                "relay localhost added",
                "exemption 100.64.10.0/24: reason \"business\" -> \"business, renewed\"",
                "exemption 100.64.11.0/24 added",
            ]
        );
        assert!(changes(&new, &new).is_empty());
    }
}
