//! The `[fleet]` table: one policy for every border gateway on etcd, and the reports of every
//! gateway in PostgreSQL. Absent, the gateway runs alone on its config file and SQLite store.

use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, Source};

/// Longest gateway id: it is part of every audit entry, report row and etcd audit key.
const MAX_GATEWAY_ID: usize = 64;

/// Where a gateway's fleet-wide policy and reports live.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetConfig {
    /// Unique per gateway; shown in reports and audit.
    pub gateway_id: String,
    /// The fleet policy's etcd cluster, when the policy is fleet-wide.
    pub etcd: Option<EtcdConfig>,
    /// The fleet reports' PostgreSQL database, when reports are shipped.
    pub postgres: Option<PostgresConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EtcdConfig {
    /// `http://host:port` or `https://host:port`, all of one scheme.
    pub endpoints: Vec<String>,
    /// Every key lives under it; starts and ends with `/`.
    pub prefix: String,
    pub tls: Option<EtcdTls>,
    /// etcd's own authentication: the user and the file holding its password.
    pub auth: Option<EtcdAuth>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EtcdTls {
    /// The CA that signed the servers' certificates.
    pub ca: PathBuf,
    /// A client certificate and its key, for servers that require one.
    pub identity: Option<(PathBuf, PathBuf)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EtcdAuth {
    pub user: String,
    pub password_file: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PostgresConfig {
    /// A libpq connection string or URL, without its password and without its `sslmode`
    /// (in `tls`: tokio-postgres does not know verify-ca and verify-full).
    pub url: String,
    pub password_file: Option<PathBuf>,
    pub tls: PostgresTls,
    /// A client certificate and its key, for servers that require one.
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// The connection string's `sslmode`, as libpq reads it.
#[derive(Debug, Clone, PartialEq)]
pub enum PostgresTls {
    /// `disable`: plain.
    Disable,
    /// `prefer`, libpq's default: TLS when the server offers it, plain otherwise; the
    /// server's certificate is not verified.
    Prefer,
    /// `require`: TLS, but the server's certificate is not verified.
    Require,
    /// `verify-ca`: TLS with a certificate signed by `ca`; `verify-full` (`host_name`): and
    /// issued for the host connected to.
    Verify { ca: PathBuf, host_name: bool },
}

/// The `sslmode` values accepted, for messages.
const SSL_MODES: &str = "disable, prefer, require, verify-ca or verify-full";

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFleet {
    // Required once the table is there.
    gateway_id: Option<Spanned<String>>,
    // Absent: the policy stays local.
    etcd: Option<Spanned<Vec<Spanned<String>>>>,
    // Absent: "/smtpguard/".
    prefix: Option<Spanned<String>>,
    // Absent: no TLS (http:// endpoints).
    etcd_ca: Option<Spanned<String>>,
    // Absent: no client certificate.
    etcd_cert: Option<Spanned<String>>,
    etcd_key: Option<Spanned<String>>,
    // Absent: no etcd authentication.
    etcd_user: Option<Spanned<String>>,
    etcd_password_file: Option<Spanned<String>>,
    // Absent: reports stay local.
    postgres: Option<Spanned<String>>,
    // Absent: no password (peer, certificate or trust authentication).
    postgres_password_file: Option<Spanned<String>>,
    // Required by sslmode=verify-ca and verify-full, refused otherwise.
    postgres_ca: Option<Spanned<String>>,
    // Absent: no client certificate.
    postgres_cert: Option<Spanned<String>>,
    postgres_key: Option<Spanned<String>>,
}

fn invalid(
    src: &Source<'_>,
    key: &'static str,
    raw: &Spanned<String>,
    expected: impl Into<String>,
) -> ConfigError {
    src.invalid("fleet", key, raw.span(), raw.get_ref(), expected)
}

fn path(src: &Source<'_>, key: &'static str, raw: Spanned<String>) -> Result<PathBuf, ConfigError> {
    let path = PathBuf::from(raw.get_ref());
    if !path.is_absolute() || raw.get_ref().chars().any(char::is_control) {
        return Err(invalid(src, key, &raw, "an absolute path"));
    }
    Ok(path)
}

/// Two keys that only mean something together: both or neither.
fn pair(
    src: &Source<'_>,
    (first, first_key): (Option<Spanned<String>>, &'static str),
    (second, second_key): (Option<Spanned<String>>, &'static str),
) -> Result<Option<(PathBuf, Spanned<String>)>, ConfigError> {
    match (first, second) {
        (None, None) => Ok(None),
        (Some(first), Some(second)) => Ok(Some((path(src, first_key, first)?, second))),
        (Some(lone), None) => Err(invalid(
            src,
            first_key,
            &lone,
            format!("{second_key} beside it (they go together)"),
        )),
        (None, Some(lone)) => Err(invalid(
            src,
            second_key,
            &lone,
            format!("{first_key} beside it (they go together)"),
        )),
    }
}

pub(super) fn validate_fleet(
    src: &Source<'_>,
    raw: Option<Spanned<RawFleet>>,
) -> Result<Option<FleetConfig>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let span = raw.span();
    let raw = raw.into_inner();
    let table = |expected: &str| {
        src.invalid(
            "fleet",
            "gateway_id",
            span.clone(),
            "(absent)",
            expected.to_owned(),
        )
    };
    let Some(gateway_id) = raw.gateway_id else {
        return Err(table(
            "a gateway id unique in the fleet, such as gateway_id = \"gw-par-1\"",
        ));
    };
    let well_formed = |id: &str| {
        (1..=MAX_GATEWAY_ID).contains(&id.len())
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    if !well_formed(gateway_id.get_ref()) {
        return Err(invalid(
            src,
            "gateway_id",
            &gateway_id,
            "1 to 64 letters, digits, '-', '_' or '.', such as \"gw-par-1\"",
        ));
    }
    let etcd = validate_etcd(src, &raw.prefix, raw.etcd)?;
    let etcd_only = [
        (&raw.prefix, "prefix"),
        (&raw.etcd_ca, "etcd_ca"),
        (&raw.etcd_cert, "etcd_cert"),
        (&raw.etcd_key, "etcd_key"),
        (&raw.etcd_user, "etcd_user"),
        (&raw.etcd_password_file, "etcd_password_file"),
    ];
    let etcd = match etcd {
        Some((endpoints, prefix, tls_scheme)) => {
            let identity = pair(
                src,
                (raw.etcd_cert, "etcd_cert"),
                (raw.etcd_key, "etcd_key"),
            )?
            .map(|(cert, key)| Ok((cert, path(src, "etcd_key", key)?)))
            .transpose()?;
            let ca = raw.etcd_ca.map(|ca| path(src, "etcd_ca", ca)).transpose()?;
            let tls = match (tls_scheme, ca) {
                (true, Some(ca)) => Some(EtcdTls { ca, identity }),
                (true, None) => {
                    return Err(table(
                        "etcd_ca (the CA of the etcd servers' certificates) with https:// \
                         endpoints",
                    ));
                }
                (false, None) if identity.is_none() => None,
                (false, _) => {
                    return Err(table(
                        "https:// endpoints with etcd_ca, etcd_cert and etcd_key (TLS settings \
                         with http:// endpoints would be ignored)",
                    ));
                }
            };
            let auth = pair(
                src,
                (raw.etcd_password_file, "etcd_password_file"),
                (raw.etcd_user, "etcd_user"),
            )?
            .map(|(password_file, user)| EtcdAuth {
                user: user.into_inner(),
                password_file,
            });
            Some(EtcdConfig {
                endpoints,
                prefix,
                tls,
                auth,
            })
        }
        None => {
            if let Some((Some(raw), key)) = etcd_only.into_iter().find(|(raw, _)| raw.is_some()) {
                return Err(invalid(
                    src,
                    key,
                    raw,
                    "etcd = [...] beside it (it configures the etcd connection)",
                ));
            }
            None
        }
    };
    let postgres = match raw.postgres {
        Some(url) => {
            let (rest, mode) = take_ssl_mode(url.get_ref());
            validate_postgres_url(src, &url, &rest)?;
            let ca = raw
                .postgres_ca
                .map(|ca| Ok((path(src, "postgres_ca", ca.clone())?, ca)))
                .transpose()?;
            let identity = pair(
                src,
                (raw.postgres_cert, "postgres_cert"),
                (raw.postgres_key, "postgres_key"),
            )?
            .map(|(cert, key)| Ok((cert, path(src, "postgres_key", key)?)))
            .transpose()?;
            let tls = postgres_tls(src, &url, mode.as_deref(), ca)?;
            if tls == PostgresTls::Disable && identity.is_some() {
                return Err(invalid(
                    src,
                    "postgres",
                    &url,
                    "an sslmode other than disable with postgres_cert and postgres_key",
                ));
            }
            Some(PostgresConfig {
                url: rest,
                password_file: raw
                    .postgres_password_file
                    .map(|file| path(src, "postgres_password_file", file))
                    .transpose()?,
                tls,
                identity,
            })
        }
        None => {
            let postgres_only = [
                (raw.postgres_password_file, "postgres_password_file"),
                (raw.postgres_ca, "postgres_ca"),
                (raw.postgres_cert, "postgres_cert"),
                (raw.postgres_key, "postgres_key"),
            ];
            if let Some((Some(lone), key)) =
                postgres_only.into_iter().find(|(raw, _)| raw.is_some())
            {
                return Err(invalid(src, key, &lone, "postgres = \"...\" beside it"));
            }
            None
        }
    };
    if etcd.is_none() && postgres.is_none() {
        return Err(table(
            "etcd = [...] (fleet policy), postgres = \"...\" (fleet reports) or both in [fleet]",
        ));
    }
    Ok(Some(FleetConfig {
        gateway_id: gateway_id.into_inner(),
        etcd,
        postgres,
    }))
}

/// The endpoints, the prefix and whether they use TLS.
fn validate_etcd(
    src: &Source<'_>,
    prefix: &Option<Spanned<String>>,
    raw: Option<Spanned<Vec<Spanned<String>>>>,
) -> Result<Option<(Vec<String>, String, bool)>, ConfigError> {
    let Some(list) = raw else {
        return Ok(None);
    };
    let span = list.span();
    let list = list.into_inner();
    if list.is_empty() {
        return Err(src.invalid(
            "fleet",
            "etcd",
            span,
            "[]",
            "at least one endpoint, such as [\"https://10.0.0.1:2379\"]",
        ));
    }
    let mut tls = None;
    let mut endpoints = Vec::new();
    for endpoint in list {
        let text = endpoint.get_ref();
        let (scheme_tls, rest) = match text.split_once("://") {
            Some(("https", rest)) => (true, rest),
            Some(("http", rest)) => (false, rest),
            _ => (false, ""),
        };
        let port = rest.rsplit_once(':').map(|(_, port)| port.parse::<u16>());
        if rest.is_empty() || rest.contains('/') || !matches!(port, Some(Ok(1..))) {
            return Err(invalid(
                src,
                "etcd",
                &endpoint,
                "an endpoint such as \"https://10.0.0.1:2379\" (http:// or https://, host, port)",
            ));
        }
        if *tls.get_or_insert(scheme_tls) != scheme_tls {
            return Err(invalid(
                src,
                "etcd",
                &endpoint,
                "endpoints of one scheme, all http:// or all https://",
            ));
        }
        if endpoints.contains(text) {
            return Err(invalid(src, "etcd", &endpoint, "each endpoint once"));
        }
        endpoints.push(endpoint.into_inner());
    }
    let prefix = match prefix {
        Some(prefix) => {
            let text = prefix.get_ref();
            if !(text.len() >= 2 && text.starts_with('/') && text.ends_with('/'))
                || text.chars().any(|c| c.is_control() || c.is_whitespace())
            {
                return Err(invalid(
                    src,
                    "prefix",
                    prefix,
                    "a key prefix that starts and ends with '/', such as \"/smtpguard/\"",
                ));
            }
            text.clone()
        }
        None => DEFAULT_PREFIX.to_owned(),
    };
    Ok(Some((endpoints, prefix, tls.unwrap_or(false))))
}

/// Where the fleet's keys live when `prefix` is not given.
pub const DEFAULT_PREFIX: &str = "/smtpguard/";

/// Takes `sslmode` out of a connection string (URL or key=value form): the rest and its value.
fn take_ssl_mode(url: &str) -> (String, Option<String>) {
    let mut mode = None;
    let mut keep = |pair: &&str| match pair.strip_prefix("sslmode=") {
        Some(value) => {
            mode = Some(value.to_owned());
            false
        }
        None => true,
    };
    let rest = if url.contains("://") {
        match url.split_once('?') {
            Some((base, query)) => {
                let query: Vec<&str> = query.split('&').filter(&mut keep).collect();
                if query.is_empty() {
                    base.to_owned()
                } else {
                    format!("{base}?{}", query.join("&"))
                }
            }
            None => url.to_owned(),
        }
    } else {
        let words: Vec<&str> = url.split_whitespace().filter(&mut keep).collect();
        words.join(" ")
    };
    (rest, mode)
}

/// The `sslmode` with `postgres_ca`, which only the verifying modes use.
fn postgres_tls(
    src: &Source<'_>,
    url: &Spanned<String>,
    mode: Option<&str>,
    ca: Option<(PathBuf, Spanned<String>)>,
) -> Result<PostgresTls, ConfigError> {
    let tls = match (mode.unwrap_or("prefer"), ca) {
        ("verify-ca" | "verify-full", None) => {
            return Err(invalid(
                src,
                "postgres",
                url,
                "postgres_ca beside it (the CA of the server's certificate, to verify it)",
            ));
        }
        ("verify-ca", Some((ca, _))) => PostgresTls::Verify {
            ca,
            host_name: false,
        },
        ("verify-full", Some((ca, _))) => PostgresTls::Verify {
            ca,
            host_name: true,
        },
        (mode @ ("disable" | "prefer" | "require"), Some((_, raw))) => {
            return Err(invalid(
                src,
                "postgres_ca",
                &raw,
                format!(
                    "sslmode=verify-full or verify-ca in postgres (sslmode={mode} would not \
                     verify the server's certificate)"
                ),
            ));
        }
        ("disable", None) => PostgresTls::Disable,
        ("prefer", None) => PostgresTls::Prefer,
        ("require", None) => PostgresTls::Require,
        // libpq's allow tries plain first, which tokio-postgres cannot.
        (other, _) => {
            return Err(src.invalid(
                "fleet",
                "postgres",
                url.span(),
                format!("sslmode={other}"),
                format!("sslmode {SSL_MODES}"),
            ));
        }
    };
    Ok(tls)
}

fn validate_postgres_url(
    src: &Source<'_>,
    url: &Spanned<String>,
    rest: &str,
) -> Result<(), ConfigError> {
    let parsed: tokio_postgres::Config = rest.parse().map_err(|error| {
        invalid(
            src,
            "postgres",
            url,
            format!(
                "a PostgreSQL connection string such as \
                 \"postgres://smtpguard@db.example/smtpguard\" ({error})"
            ),
        )
    })?;
    // Kept out of the config file, which many read: the password belongs in a file of its own.
    if parsed.get_password().is_some() {
        return Err(src.invalid(
            "fleet",
            "postgres",
            url.span(),
            "(a connection string with a password)",
            "no password in it; put the password in postgres_password_file",
        ));
    }
    if parsed.get_hosts().is_empty() || parsed.get_dbname().is_none() {
        return Err(invalid(
            src,
            "postgres",
            url,
            "a host and a database, such as \"postgres://smtpguard@db.example/smtpguard\"",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    fn parse(fleet: &str) -> Result<Config, ConfigError> {
        let text = format!("[[subscribers]]\nprefix = \"100.64.0.0/10\"\n[fleet]\n{fleet}\n");
        Config::parse(&text, Path::new("fleet.toml"))
    }

    #[track_caller]
    fn rejected(fleet: &str, expected: &[&str]) {
        let error = parse(fleet)
            .expect_err(&format!("{fleet:?} is refused"))
            .to_string();
        for part in expected {
            assert!(error.contains(part), "{fleet:?}: {error:?} names {part:?}");
        }
    }

    #[test]
    fn no_fleet_table_is_a_gateway_on_its_own() {
        let text = "[[subscribers]]\nprefix = \"100.64.0.0/10\"\n";
        assert_eq!(
            Config::parse(text, Path::new("a.toml")).unwrap().fleet,
            None
        );
    }

    #[test]
    fn a_full_fleet_table_is_read_key_for_key() {
        let config = parse(
            r#"gateway_id = "gw-par-1"
etcd = ["https://10.0.0.1:2379", "https://10.0.0.2:2379"]
prefix = "/isp/smtpguard/"
etcd_ca = "/etc/smtpguard/ca.pem"
etcd_cert = "/etc/smtpguard/client.pem"
etcd_key = "/etc/smtpguard/client.key"
etcd_user = "gw-par-1"
etcd_password_file = "/etc/smtpguard/etcd.password"
postgres = "postgres://smtpguard@db.example/smtpguard?sslmode=verify-full&application_name=gw"
postgres_password_file = "/etc/smtpguard/pg.password"
postgres_ca = "/etc/smtpguard/pg-ca.pem"
postgres_cert = "/etc/smtpguard/pg-client.pem"
postgres_key = "/etc/smtpguard/pg-client.key""#,
        )
        .unwrap();
        let path = PathBuf::from;
        assert_eq!(
            config.fleet,
            Some(FleetConfig {
                gateway_id: "gw-par-1".to_owned(),
                etcd: Some(EtcdConfig {
                    endpoints: vec![
                        "https://10.0.0.1:2379".to_owned(),
                        "https://10.0.0.2:2379".to_owned()
                    ],
                    prefix: "/isp/smtpguard/".to_owned(),
                    tls: Some(EtcdTls {
                        ca: path("/etc/smtpguard/ca.pem"),
                        identity: Some((
                            path("/etc/smtpguard/client.pem"),
                            path("/etc/smtpguard/client.key")
                        )),
                    }),
                    auth: Some(EtcdAuth {
                        user: "gw-par-1".to_owned(),
                        password_file: path("/etc/smtpguard/etcd.password"),
                    }),
                }),
                postgres: Some(PostgresConfig {
                    url: "postgres://smtpguard@db.example/smtpguard?application_name=gw".to_owned(),
                    password_file: Some(path("/etc/smtpguard/pg.password")),
                    tls: PostgresTls::Verify {
                        ca: path("/etc/smtpguard/pg-ca.pem"),
                        host_name: true,
                    },
                    identity: Some((
                        path("/etc/smtpguard/pg-client.pem"),
                        path("/etc/smtpguard/pg-client.key")
                    )),
                }),
            })
        );
        let etcd_only = parse("gateway_id = \"g\"\netcd = [\"http://127.0.0.1:2379\"]").unwrap();
        let fleet = etcd_only.fleet.unwrap();
        assert_eq!(fleet.etcd.unwrap().prefix, DEFAULT_PREFIX);
        assert_eq!(fleet.postgres, None);
        for (text, tls) in [
            ("postgres://u@db/x", PostgresTls::Prefer),
            ("postgres://u@db/x?sslmode=disable", PostgresTls::Disable),
            (
                "host=db user=u sslmode=require dbname=x",
                PostgresTls::Require,
            ),
        ] {
            let config = parse(&format!("gateway_id = \"g\"\npostgres = \"{text}\""))
                .unwrap()
                .fleet
                .unwrap()
                .postgres
                .unwrap();
            assert_eq!(config.tls, tls, "{text}");
            assert!(!config.url.contains("sslmode"), "{}", config.url);
        }
    }

    #[test]
    fn bad_fleet_values_name_key_line_and_value() {
        let etcd = "etcd = [\"http://127.0.0.1:2379\"]";
        rejected(etcd, &["fleet.toml:3:", "fleet.gateway_id", "gw-par-1"]);
        rejected(
            &format!("gateway_id = \"gw 1\"\n{etcd}"),
            &["fleet.toml:4:", "\"gw 1\"", "letters, digits"],
        );
        rejected("gateway_id = \"g\"", &["etcd = [...]", "postgres"]);
        rejected(
            "gateway_id = \"g\"\netcd = []",
            &["fleet.toml:5:", "fleet.etcd", "at least one endpoint"],
        );
        rejected(
            "gateway_id = \"g\"\netcd = [\"10.0.0.1:2379\"]",
            &["fleet.toml:5:", "\"10.0.0.1:2379\"", "http:// or https://"],
        );
        rejected(
            "gateway_id = \"g\"\netcd = [\"http://a:1\", \"https://b:2\"]",
            &["\"https://b:2\"", "one scheme"],
        );
        rejected(
            "gateway_id = \"g\"\netcd = [\"https://a:1\"]",
            &["etcd_ca", "https://"],
        );
        rejected(
            &format!("gateway_id = \"g\"\n{etcd}\nprefix = \"smtpguard\""),
            &["fleet.toml:6:", "fleet.prefix", "starts and ends with '/'"],
        );
        rejected(
            "gateway_id = \"g\"\netcd = [\"https://a:1\"]\netcd_ca = \"/ca\"\netcd_cert = \"/c\"",
            &["fleet.etcd_cert", "etcd_key beside it"],
        );
        rejected(
            &format!("gateway_id = \"g\"\n{etcd}\netcd_user = \"u\""),
            &["fleet.etcd_user", "etcd_password_file beside it"],
        );
        rejected(
            "gateway_id = \"g\"\netcd_ca = \"/ca\"\npostgres = \"postgres://u@db/x\"",
            &["fleet.etcd_ca", "etcd = [...] beside it"],
        );
        rejected(
            "gateway_id = \"g\"\npostgres = \"postgres://u:secret@db/x\"",
            &[
                "fleet.postgres",
                "no password in it",
                "postgres_password_file",
            ],
        );
        rejected(
            "gateway_id = \"g\"\npostgres = \"postgres://u@db/x?sslmode=verify-full\"",
            &["fleet.postgres", "postgres_ca beside it"],
        );
        rejected(
            "gateway_id = \"g\"\npostgres = \"postgres://u@db/x?sslmode=allow\"",
            &[
                "fleet.postgres",
                "sslmode=allow",
                "disable, prefer, require, verify-ca",
            ],
        );
        rejected(
            "gateway_id = \"g\"\npostgres = \"postgres://u@db/x?sslmode=require\"\n\
             postgres_ca = \"/ca\"",
            &["fleet.postgres_ca", "sslmode=require would not verify"],
        );
        rejected(
            "gateway_id = \"g\"\npostgres = \"postgres://u@db/x?sslmode=disable\"\n\
             postgres_cert = \"/c\"\npostgres_key = \"/k\"",
            &["fleet.postgres", "other than disable"],
        );
        rejected(
            "gateway_id = \"g\"\npostgres = \"postgres://u@db/x?sslmode=require\"\n\
             postgres_cert = \"/c\"",
            &["fleet.postgres_cert", "postgres_key beside it"],
        );
        rejected(
            "gateway_id = \"g\"\netcd = [\"http://a:1\"]\npostgres_ca = \"/ca\"",
            &["fleet.postgres_ca", "postgres = \"...\" beside it"],
        );
        rejected(
            "gateway_id = \"g\"\npostgres = \"postgres://u@db/x\"\npostgres_password_file = \"pw\"",
            &["fleet.postgres_password_file", "an absolute path"],
        );
        rejected(
            &format!("gateway_id = \"g\"\n{etcd}\netcd_endpoints = []"),
            &["unknown field `etcd_endpoints`"],
        );
    }
}
