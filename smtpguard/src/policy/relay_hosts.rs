//! Relay hostnames (`[[relays]] host = ...`) and the addresses they resolve to: the part of
//! the policy that DNS supplies.

use std::{collections::BTreeMap, net::IpAddr};

use tracing::warn;

use crate::config::Config;

/// Each relay hostname with the addresses it last resolved to, sorted, without duplicates.
pub type ResolvedRelays = BTreeMap<String, Vec<IpAddr>>;

/// Resolves every relay hostname; a name that fails keeps its last known addresses.
pub fn resolve_relay_hosts(config: &Config, previous: &ResolvedRelays) -> ResolvedRelays {
    use std::net::ToSocketAddrs as _;
    let mut resolved = BTreeMap::new();
    for relay in &config.relay_hosts {
        match (relay.host.as_str(), 0).to_socket_addrs() {
            Ok(addresses) => {
                let mut addresses: Vec<IpAddr> = addresses.map(|a| a.ip()).collect();
                addresses.sort();
                addresses.dedup();
                resolved.insert(relay.host.clone(), addresses);
            }
            Err(error) => {
                let kept = previous.get(&relay.host).cloned().unwrap_or_default();
                warn!(host = relay.host, %error, kept = kept.len(), "relay lookup failed; keeping the last known addresses");
                resolved.insert(relay.host.clone(), kept);
            }
        }
    }
    resolved
}

#[cfg(test)]
mod tests {
    use std::path::Path;

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
        let resolved = resolve_relay_hosts(&config(&["localhost"]), &BTreeMap::new());
        let addresses = &resolved["localhost"];
        assert!(
            addresses.contains(&IpAddr::from([127, 0, 0, 1])),
            "localhost resolved to {addresses:?}"
        );
        assert!(
            addresses.windows(2).all(|w| w[0] < w[1]),
            "sorted, no duplicates"
        );
    }
}
