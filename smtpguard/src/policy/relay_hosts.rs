//! Relay hostnames (`[[relays]] host = ...`) and the addresses they resolve to: the part of
//! the policy that DNS supplies. A name that stops resolving keeps its last known addresses
//! and is marked unresolved, with why and since when, so it is never silent.

use std::{collections::BTreeMap, fmt, net::IpAddr, time::SystemTime};

use serde::Serialize;
use tracing::warn;

use crate::config::Config;

/// Every relay hostname of the configuration with what its last lookup found.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(transparent)]
pub struct ResolvedRelays(BTreeMap<String, RelayHost>);

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RelayHost {
    /// The addresses allowlisted for it: the last lookup's, or the last known ones while it
    /// does not resolve. Sorted, without duplicates.
    pub addresses: Vec<IpAddr>,
    /// Set while lookups fail (or find no address).
    pub unresolved: Option<Unresolved>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Unresolved {
    /// What the resolver said.
    pub error: String,
    /// The first failed lookup of this run of failures.
    #[serde(serialize_with = "crate::store::serialize_time")]
    pub since: SystemTime,
}

impl ResolvedRelays {
    /// Every address of every hostname.
    pub fn addresses(&self) -> impl Iterator<Item = &IpAddr> {
        self.0.values().flat_map(|host| &host.addresses)
    }

    pub fn hosts(&self) -> impl Iterator<Item = (&str, &RelayHost)> {
        self.0.iter().map(|(name, host)| (name.as_str(), host))
    }

    /// The hostnames that do not resolve now, each with a warning for people.
    pub fn warnings(&self) -> impl Iterator<Item = UnresolvedWarning<'_>> {
        self.hosts().filter_map(|(name, host)| {
            host.unresolved
                .as_ref()
                .map(|unresolved| UnresolvedWarning {
                    name,
                    host,
                    unresolved,
                })
        })
    }
}

/// "relay host X does not resolve (...) since T; ..." for logs, CLI warnings and lists.
pub struct UnresolvedWarning<'a> {
    pub name: &'a str,
    pub host: &'a RelayHost,
    pub unresolved: &'a Unresolved,
}

impl fmt::Display for UnresolvedWarning<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "relay host {} does not resolve ({}) since {}; ",
            self.name,
            self.unresolved.error,
            humantime::format_rfc3339_seconds(self.unresolved.since)
        )?;
        if self.host.addresses.is_empty() {
            f.write_str("mail to it from subscribers is dropped")
        } else {
            let kept: Vec<String> = self.host.addresses.iter().map(|a| a.to_string()).collect();
            write!(
                f,
                "its last known addresses stay relays: {}",
                kept.join(", ")
            )
        }
    }
}

/// Resolves every relay hostname at `now`; a name that fails keeps its last known addresses
/// from `previous` and is marked unresolved (since its first failure).
pub fn resolve_relay_hosts(
    config: &Config,
    previous: &ResolvedRelays,
    now: SystemTime,
) -> ResolvedRelays {
    use std::net::ToSocketAddrs as _;
    let mut resolved = BTreeMap::new();
    for relay in &config.relay_hosts {
        let before = previous.0.get(&relay.host);
        let looked_up = (relay.host.as_str(), 0)
            .to_socket_addrs()
            .map(|found| {
                let mut addresses: Vec<IpAddr> = found.map(|a| a.ip()).collect();
                addresses.sort();
                addresses.dedup();
                addresses
            })
            .map_err(|error| error.to_string())
            .and_then(|addresses| {
                if addresses.is_empty() {
                    Err("no addresses".to_owned())
                } else {
                    Ok(addresses)
                }
            });
        let host = match looked_up {
            Ok(addresses) => RelayHost {
                addresses,
                unresolved: None,
            },
            Err(error) => {
                let kept = before.map(|b| b.addresses.clone()).unwrap_or_default();
                warn!(
                    host = relay.host,
                    error,
                    kept = kept.len(),
                    "relay lookup failed; keeping the last known addresses"
                );
                let since = before
                    .and_then(|b| b.unresolved.as_ref())
                    .map_or(now, |u| u.since);
                RelayHost {
                    addresses: kept,
                    unresolved: Some(Unresolved { error, since }),
                }
            }
        };
        resolved.insert(relay.host.clone(), host);
    }
    ResolvedRelays(resolved)
}

#[cfg(test)]
mod tests {
    use std::{path::Path, time::Duration};

    use super::*;

    fn config(relay_hosts: &[&str]) -> Config {
        let mut text = String::from("[[subscribers]]\nprefix = \"100.64.0.0/10\"\n");
        for host in relay_hosts {
            text.push_str(&format!("[[relays]]\nhost = \"{host}\"\n"));
        }
        Config::parse(&text, Path::new("relays.toml")).unwrap()
    }

    #[test]
    fn relay_hosts_resolve_to_their_addresses() {
        // localhost resolves from /etc/hosts, without any network.
        let resolved = resolve_relay_hosts(
            &config(&["localhost"]),
            &ResolvedRelays::default(),
            SystemTime::now(),
        );
        let addresses = &resolved.0["localhost"].addresses;
        assert!(
            addresses.contains(&IpAddr::from([127, 0, 0, 1])),
            "localhost resolved to {addresses:?}"
        );
        assert!(
            addresses.windows(2).all(|w| w[0] < w[1]),
            "sorted, no duplicates"
        );
        assert_eq!(resolved.warnings().count(), 0);
    }

    #[test]
    fn a_failing_name_keeps_its_addresses_and_the_time_it_first_failed() {
        // .invalid never resolves (RFC 6761).
        let name = "relay.smtpguard.invalid";
        let first = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let known = ResolvedRelays(BTreeMap::from([(
            name.to_owned(),
            RelayHost {
                addresses: vec![IpAddr::from([192, 0, 2, 25])],
                unresolved: None,
            },
        )]));
        let once = resolve_relay_hosts(&config(&[name]), &known, first);
        let again = resolve_relay_hosts(&config(&[name]), &once, first + Duration::from_secs(60));
        let host = &again.0[name];
        assert_eq!(host.addresses, [IpAddr::from([192, 0, 2, 25])]);
        assert_eq!(host.unresolved.as_ref().map(|u| u.since), Some(first));
        let warning = again.warnings().next().unwrap().to_string();
        assert!(
            warning.starts_with(&format!("relay host {name} does not resolve ("))
                && warning.ends_with(
                    "since 2027-01-15T08:00:00Z; its last known addresses stay relays: 192.0.2.25"
                ),
            "{warning}"
        );
    }
}
