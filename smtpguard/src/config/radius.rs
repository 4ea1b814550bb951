//! The `[radius]` table: the RADIUS accounting listener that binds subscriber identities to
//! their addresses. Absent, bindings come from `smtpguard session` only.

use std::{net::SocketAddr, path::PathBuf};

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, Source};
use crate::identity::radius::IdentityAttribute;

#[derive(Debug, Clone, PartialEq)]
pub struct RadiusConfig {
    /// The UDP address accounting packets arrive on.
    pub listen: SocketAddr,
    /// The attribute naming the customer.
    pub identity: IdentityAttribute,
    /// The BNGs allowed to send accounting, each with the file holding its shared secret.
    pub clients: Vec<RadiusClientConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RadiusClientConfig {
    pub prefix: IpNet,
    /// Read when the agent starts (its first line), so that the secret stays out of the
    /// config file that `config check` and operators read.
    pub secret_file: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRadius {
    // Required once the table is there.
    listen: Option<Spanned<String>>,
    // Absent: user-name.
    identity: Option<Spanned<String>>,
    // Absent: no client (every packet is refused as from an unknown client).
    #[serde(default)]
    clients: Vec<Spanned<RawClient>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClient {
    address: Spanned<String>,
    secret_file: Spanned<String>,
}

pub(super) fn validate_radius(
    src: &Source<'_>,
    raw: Option<Spanned<RawRadius>>,
) -> Result<Option<RadiusConfig>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let span = raw.span();
    let raw = raw.into_inner();
    let listen = raw.listen.ok_or_else(|| {
        src.invalid(
            "radius",
            "listen",
            span.clone(),
            "(absent)",
            "the UDP address to receive accounting on, such as listen = \"0.0.0.0:1813\"",
        )
    })?;
    let listen = listen.get_ref().parse::<SocketAddr>().map_err(|_| {
        src.invalid(
            "radius",
            "listen",
            listen.span(),
            listen.get_ref(),
            "an address and port, such as \"0.0.0.0:1813\" or \"[::]:1813\"",
        )
    })?;
    let identity = match raw.identity {
        None => IdentityAttribute::default(),
        Some(raw) => IdentityAttribute::NAMES
            .iter()
            .find(|(name, _)| name == raw.get_ref())
            .map(|(_, attribute)| *attribute)
            .ok_or_else(|| {
                let names: Vec<String> = IdentityAttribute::NAMES
                    .iter()
                    .map(|(name, _)| format!("\"{name}\""))
                    .collect();
                src.invalid(
                    "radius",
                    "identity",
                    raw.span(),
                    raw.get_ref(),
                    format!("one of {}", names.join(", ")),
                )
            })?,
    };
    let mut clients = Vec::new();
    for client in raw.clients {
        let client = client.into_inner();
        let text = client.address.get_ref();
        let prefix = text
            .parse::<IpNet>()
            .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
            .ok()
            .filter(|prefix| prefix.trunc() == *prefix)
            .ok_or_else(|| {
                src.invalid(
                    "radius",
                    "clients",
                    client.address.span(),
                    text,
                    "a client's address or prefix without host bits, such as \"192.0.2.10\" \
                     or \"192.0.2.0/28\"",
                )
            })?;
        let secret_file = PathBuf::from(client.secret_file.get_ref());
        if !secret_file.is_absolute() {
            return Err(src.invalid(
                "radius",
                "clients",
                client.secret_file.span(),
                client.secret_file.get_ref(),
                "the absolute path of the file holding the client's shared secret",
            ));
        }
        clients.push(RadiusClientConfig {
            prefix,
            secret_file,
        });
    }
    Ok(Some(RadiusConfig {
        listen,
        identity,
        clients,
    }))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::Config;

    const BASE: &str = "[[subscribers]]\nprefix = \"100.64.0.0/10\"\n";

    fn parse(radius: &str) -> Result<Config, String> {
        Config::parse(
            &format!("{BASE}[radius]\n{radius}"),
            Path::new("/etc/sg.toml"),
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn a_full_table_parses() {
        let config = parse(
            "listen = \"127.0.0.1:1813\"\nidentity = \"class\"\nclients = [\
             { address = \"192.0.2.10\", secret_file = \"/etc/sg/bng1\" },\
             { address = \"2001:db8::/64\", secret_file = \"/etc/sg/bng2\" }]\n",
        )
        .unwrap();
        let radius = config.radius.unwrap();
        assert_eq!(radius.listen, "127.0.0.1:1813".parse().unwrap());
        assert_eq!(
            radius.identity,
            crate::identity::radius::IdentityAttribute::Class
        );
        let prefixes: Vec<String> = radius
            .clients
            .iter()
            .map(|c| c.prefix.to_string())
            .collect();
        assert_eq!(prefixes, ["192.0.2.10/32", "2001:db8::/64"]);
    }

    #[test]
    fn bad_values_are_named_with_their_place() {
        for (radius, expected) in [
            (
                "identity = \"class\"\n",
                "radius.listen = \"(absent)\" is invalid; expected the UDP address",
            ),
            (
                "listen = \"1813\"\n",
                "/etc/sg.toml:4:10: radius.listen = \"1813\" is invalid",
            ),
            (
                "listen = \"0.0.0.0:1813\"\nidentity = \"nas-port\"\n",
                "radius.identity = \"nas-port\" is invalid; expected one of \"user-name\", \"class\", \"calling-station-id\"",
            ),
            (
                "listen = \"0.0.0.0:1813\"\nclients = [{ address = \"192.0.2.1/24\", \
                 secret_file = \"/s\" }]\n",
                "radius.clients = \"192.0.2.1/24\" is invalid",
            ),
            (
                "listen = \"0.0.0.0:1813\"\nclients = [{ address = \"192.0.2.1\", \
                 secret_file = \"s\" }]\n",
                "the absolute path of the file holding the client's shared secret",
            ),
        ] {
            let err = parse(radius).unwrap_err();
            assert!(
                err.contains(expected),
                "{radius}: expected {expected:?} in {err}"
            );
        }
    }
}
