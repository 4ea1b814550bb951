//! The operator's configuration file (TOML): which subscriber ranges are policed, which ports,
//! which destinations (relays) and sources (exemptions) are allowed through, and how large the
//! kernel maps are.
//!
//! The file is deserialized into private `Raw*` structs that mirror it key for key (unknown keys
//! are rejected) and keep the byte span of every value a later check may complain about. Each
//! section is then validated on its own into the public types. Every error names the file, the
//! 1-based line and column of the offending value, the value, and what was expected.
//!
//! Adding a section (such as `[agent]`) means: a `Raw*` struct, a field in [`RawConfig`], a
//! public struct, a field in [`Config`], a `validate_*` function called from [`Config::parse`],
//! and the error variants it needs.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::Deserialize;
use smtpguard_common::maps::{
    DEFAULT_EXEMPTION_CAPACITY, DEFAULT_HOST_CAPACITY, DEFAULT_RELAY_CAPACITY,
    DEFAULT_SUBSCRIBER_CAPACITY, MAX_PORTS,
};
use smtpguard_common::{Action, HostMask, Limit, Mode, UnparseableAction};
use std::time::Duration;
use toml::Spanned;

mod agent;
pub mod danger;
mod fleet;
pub mod keys;
mod radius;
mod report;

pub use self::agent::{AgentConfig, AttachKind, LogLevel, XdpMode};
use self::agent::{RawAgent, validate_agent};
pub use self::fleet::{EtcdAuth, EtcdConfig, EtcdTls, FleetConfig, PostgresConfig, PostgresTls};
use self::fleet::{RawFleet, validate_fleet};
pub use self::radius::{RadiusClientConfig, RadiusConfig};
use self::radius::{RawRadius, validate_radius};
pub use self::report::ReportConfig;
use self::report::{RawReport, validate_report};

/// The TCP destination port enforced when the file does not list any.
const DEFAULT_PORT: u16 = 25;

/// A validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub enforcement: Enforcement,
    /// Subscriber source ranges, in file order. They may overlap: the most specific wins.
    pub subscribers: Vec<SubscriberRange>,
    /// Allowlisted destinations (the ISP's smarthosts), in file order; no two overlap.
    pub relays: Vec<RelayRange>,
    /// Exempted sources, in file order; each lies inside some subscriber range.
    pub exemptions: Vec<ExemptionRange>,
    pub capacity: Capacity,
    /// Relays given by hostname, resolved by the agent at start and periodically.
    pub relay_hosts: Vec<RelayHost>,
    pub agent: AgentConfig,
    pub report: ReportConfig,
    /// Fleet mode: the policy in etcd and/or the reports in PostgreSQL; `None` for a gateway
    /// on its own.
    pub fleet: Option<FleetConfig>,
    /// The RADIUS accounting listener; `None`: bindings come from `smtpguard session` only.
    pub radius: Option<RadiusConfig>,
}

/// A `[[relays]]` entry given as `host = "smtp.isp.example"`.
#[derive(Debug, Clone, PartialEq)]
pub struct RelayHost {
    pub host: String,
}

/// The `[enforcement]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct Enforcement {
    /// Enforced TCP destination ports: 1 to [`MAX_PORTS`] distinct ports, in file order.
    pub ports: Vec<u16>,
    /// What to do with a subscriber packet whose TCP header cannot be parsed.
    pub unparseable: UnparseableAction,
    /// How many leading bits of a source address are one host, per family.
    pub ipv4_host_prefix: u8,
    pub ipv6_host_prefix: u8,
}

impl Default for Enforcement {
    fn default() -> Self {
        Self {
            ports: vec![DEFAULT_PORT],
            unparseable: UnparseableAction::Drop,
            ipv4_host_prefix: HostMask::DEFAULT_V4_PREFIX,
            ipv6_host_prefix: HostMask::DEFAULT_V6_PREFIX,
        }
    }
}

/// The shortest host prefix per family: a host wider than a /24 (IPv4) or a /48 (IPv6), the
/// widest an ISP hands one customer, would count many customers as one.
const SHORTEST_HOST_PREFIX: (u8, u8) = (24, 48);

impl Enforcement {
    pub fn host_mask(&self) -> HostMask {
        HostMask::new(self.ipv4_host_prefix, self.ipv6_host_prefix)
    }

    /// The length of one host in `prefix`'s family, and the key that sets it.
    pub fn host_prefix(&self, prefix: &IpNet) -> (u8, &'static str) {
        match prefix {
            IpNet::V4(_) => (self.ipv4_host_prefix, "ipv4_host_prefix"),
            IpNet::V6(_) => (self.ipv6_host_prefix, "ipv6_host_prefix"),
        }
    }

    /// The host `address` belongs to, as a prefix (`2001:db8:1:2::/64`, `100.64.0.2/32`).
    pub fn host_of(&self, address: IpAddr) -> IpNet {
        let (len, _) = self.host_prefix(&IpNet::from(address));
        IpNet::new(address, len).map_or(IpNet::from(address), |net| net.trunc())
    }

    /// Why a source prefix (a subscriber range, an exemption) cannot be one, if it is longer
    /// than a host: the kernel counts and judges a host as one, caching its class, so two
    /// policies inside one host cannot be told apart.
    pub fn splits_host(&self, prefix: &IpNet) -> Option<String> {
        let (host, key) = self.host_prefix(prefix);
        (prefix.prefix_len() > host).then(|| {
            let whole = self.host_of(prefix.addr());
            format!(
                "{prefix} is longer than one host, a /{host} ([enforcement] {key}): the data \
                 plane counts and judges each /{host} as one host; expected /{host} or shorter, \
                 such as {whole}"
            )
        })
    }
}

/// One `[[subscribers]]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct SubscriberRange {
    pub prefix: IpNet,
    pub mode: Mode,
    /// What enforcement does with the range's segments (also for escalated hosts of a
    /// monitor-mode range).
    pub action: EnforceAction,
}

/// A range's `action`, with the settings that go with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnforceAction {
    Drop,
    /// Answer SYNs, at most `limit` replies per host.
    Reject {
        with: RejectWith,
        limit: Limit,
    },
    /// Pass at most `limit` SYNs per host, drop the rest.
    RateLimit {
        limit: Limit,
    },
}

/// `reject_with`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RejectWith {
    TcpReset,
    IcmpAdminProhibited,
}

impl EnforceAction {
    /// A `reject` range's reply budget when it sets none: enough for a misconfigured client
    /// to see its error at once, too little for the gateway to be of use as a reflector.
    pub const DEFAULT_REPLY_LIMIT: Limit = Limit {
        rate: 10,
        per_secs: 60,
    };

    /// The action and bucket the kernel is given.
    pub fn kernel(&self) -> (Action, Limit) {
        match *self {
            EnforceAction::Drop => (Action::Drop, Limit::NONE),
            EnforceAction::Reject {
                with: RejectWith::TcpReset,
                limit,
            } => (Action::Reset, limit),
            EnforceAction::Reject {
                with: RejectWith::IcmpAdminProhibited,
                limit,
            } => (Action::IcmpProhibited, limit),
            EnforceAction::RateLimit { limit } => (Action::RateLimit, limit),
        }
    }

    /// In the configuration's words, such as `reject with tcp-reset (at most 10 replies per
    /// 1m per host)`.
    pub fn describe(&self) -> String {
        let per = |limit: Limit| {
            humantime::format_duration(Duration::from_secs(limit.per_secs.into())).to_string()
        };
        match *self {
            EnforceAction::Drop => "drop".to_owned(),
            EnforceAction::Reject { with, limit } => format!(
                "reject with {} (at most {} replies per {} per host, then drop)",
                match with {
                    RejectWith::TcpReset => "tcp-reset",
                    RejectWith::IcmpAdminProhibited => "icmp-admin-prohibited",
                },
                limit.rate,
                per(limit)
            ),
            EnforceAction::RateLimit { limit } => format!(
                "ratelimit (at most {} connection attempts per {} per host, then drop)",
                limit.rate,
                per(limit)
            ),
        }
    }
}

/// One `[[relays]]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct RelayRange {
    pub prefix: IpNet,
}

/// One `[[exemptions]]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct ExemptionRange {
    pub prefix: IpNet,
    /// Why the range is exempt, trimmed; never empty.
    pub reason: String,
}

/// The `[capacity]` table: kernel map sizes, all at least 1.
#[derive(Debug, Clone, PartialEq)]
pub struct Capacity {
    /// Subscriber prefixes per address family.
    pub subscribers: u32,
    /// Relay prefixes per address family.
    pub relays: u32,
    /// Exemption prefixes per address family.
    pub exemptions: u32,
    /// Tracked subscriber hosts.
    pub hosts: u32,
}

impl Default for Capacity {
    fn default() -> Self {
        Self {
            subscribers: DEFAULT_SUBSCRIBER_CAPACITY,
            relays: DEFAULT_RELAY_CAPACITY,
            exemptions: DEFAULT_EXEMPTION_CAPACITY,
            hosts: DEFAULT_HOST_CAPACITY,
        }
    }
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates `text`; `origin` is only used in error messages.
    pub fn parse(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        let src = Source { file: origin, text };
        let raw: RawConfig = toml::from_str(text).map_err(|err| ConfigError::Toml {
            file: src.file(),
            at: err.span().map_or(Location::START, |span| src.at(span)),
            message: toml_message(&err),
        })?;

        // Capacity first: the lists are checked against it.
        let capacity = validate_capacity(&src, raw.capacity)?;
        let enforcement = validate_enforcement(&src, raw.enforcement)?;
        let subscribers =
            validate_subscribers(&src, raw.subscribers, &enforcement, capacity.subscribers)?;
        let (relays, relay_hosts) = validate_relays(&src, raw.relays, capacity.relays)?;
        let exemptions = validate_exemptions(
            &src,
            raw.exemptions,
            &subscribers,
            &enforcement,
            capacity.exemptions,
        )?;

        Ok(Config {
            enforcement,
            subscribers,
            relays,
            exemptions,
            capacity,
            relay_hosts,
            agent: validate_agent(&src, raw.agent)?,
            report: validate_report(&src, raw.report)?,
            fleet: validate_fleet(&src, raw.fleet)?,
            radius: validate_radius(&src, raw.radius)?,
        })
    }
}

/// A 1-based line and column (in characters) in the config file; ordered by position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

impl Location {
    /// The start of the file: where errors about something missing point.
    pub const START: Location = Location { line: 1, column: 1 };
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// The lists of prefixes in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrefixList {
    Subscribers,
    Relays,
    Exemptions,
}

impl fmt::Display for PrefixList {
    /// The singular noun used in messages ("relay prefix ...").
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PrefixList::Subscribers => "subscriber",
            PrefixList::Relays => "relay",
            PrefixList::Exemptions => "exemption",
        })
    }
}

/// The keys of the `[capacity]` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapacityKey {
    Subscribers,
    Relays,
    Exemptions,
    Hosts,
}

impl fmt::Display for CapacityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CapacityKey::Subscribers => "subscribers",
            CapacityKey::Relays => "relays",
            CapacityKey::Exemptions => "exemptions",
            CapacityKey::Hosts => "hosts",
        })
    }
}

/// An IP address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn of(net: &IpNet) -> Family {
        match net {
            IpNet::V4(_) => Family::V4,
            IpNet::V6(_) => Family::V6,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// Why a string is not a CIDR prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrefixProblem {
    /// No `/length` after the address.
    MissingLength,
    /// The part before the `/` is not an IPv4 or IPv6 address.
    BadAddress,
    /// The part after the `/` is not a number.
    BadLength,
    /// The length exceeds the address's bits.
    LengthTooLong {
        length: u32,
        family: Family,
        max: u8,
    },
}

impl fmt::Display for PrefixProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PrefixProblem::MissingLength => f.write_str("it has no /length"),
            PrefixProblem::BadAddress => f.write_str("the part before the / is not an IP address"),
            PrefixProblem::BadLength => f.write_str("the part after the / is not a prefix length"),
            PrefixProblem::LengthTooLong {
                length,
                family,
                max,
            } => write!(
                f,
                "/{length} is longer than the {max} bits of an {family} address"
            ),
        }
    }
}

/// Why a config file was rejected. Every variant but [`ConfigError::Read`] carries the file and
/// the location of the offending value, and displays as `{file}:{line}:{column}: {message}`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read the config file: {source}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// TOML syntax errors and deserialization errors (unknown key, wrong type, unknown
    /// `mode` or `unparseable` value, missing key); `message` is toml's, without its snippet.
    #[error("{}:{at}: {message}", .file.display())]
    Toml {
        file: PathBuf,
        at: Location,
        message: String,
    },

    /// A value of the `[agent]` or `[report]` table that is not what its key takes.
    #[error("{}:{at}: {table}.{key} = {value:?} is invalid; expected {expected}", .file.display())]
    InvalidValue {
        file: PathBuf,
        at: Location,
        table: &'static str,
        key: &'static str,
        value: String,
        expected: String,
    },

    #[error(
        "{}:{at}: relay #{index} needs exactly one of `prefix` (such as \"192.0.2.25/32\") or \
         `host` (such as \"smtp.isp.example\")",
        .file.display()
    )]
    RelayEntry {
        file: PathBuf,
        at: Location,
        index: usize,
    },

    #[error(
        "{}:{at}: relay host {value:?} is not a DNS name; expected a name such as \"smtp.isp.example\"",
        .file.display()
    )]
    RelayHost {
        file: PathBuf,
        at: Location,
        value: String,
    },

    #[error(
        "{}:{at}: no [[subscribers]] entries; expected at least one subscriber range, such as \
         [[subscribers]] prefix = \"100.64.0.0/10\"",
        .file.display()
    )]
    NoSubscribers { file: PathBuf, at: Location },

    #[error(
        "{}:{at}: enforcement.ports is empty; expected 1 to {max} TCP ports, such as [25]",
        .file.display(),
        max = MAX_PORTS
    )]
    NoPorts { file: PathBuf, at: Location },

    #[error(
        "{}:{at}: enforcement.ports lists {} ports {ports:?}; expected at most {max}",
        .file.display(),
        .ports.len(),
        max = MAX_PORTS
    )]
    TooManyPorts {
        file: PathBuf,
        at: Location,
        ports: Vec<i64>,
    },

    #[error(
        "{}:{at}: port {value} is not a TCP port; expected a number from 1 to 65535",
        .file.display()
    )]
    PortOutOfRange {
        file: PathBuf,
        at: Location,
        value: i64,
    },

    #[error(
        "{}:{at}: port {port} is listed twice (first at line {}, column {}); expected each \
         port once",
        .file.display(),
        .first.line,
        .first.column
    )]
    DuplicatePort {
        file: PathBuf,
        at: Location,
        port: u16,
        first: Location,
    },

    #[error(
        "{}:{at}: {list} prefix {value:?} is not a CIDR prefix: {problem}; expected an address \
         and a prefix length such as \"100.64.0.0/10\" or \"2001:db8::/32\"",
        .file.display()
    )]
    InvalidPrefix {
        file: PathBuf,
        at: Location,
        list: PrefixList,
        value: String,
        problem: PrefixProblem,
    },

    #[error(
        "{}:{at}: subscribers prefix {value:?} holds IPv4-mapped IPv6 addresses (::ffff:0:0/96); \
         expected IPv6 subscriber ranges outside that block, and IPv4 subscribers listed as \
         IPv4 prefixes",
        .file.display()
    )]
    MappedSubscriberRange {
        file: PathBuf,
        at: Location,
        value: String,
    },

    #[error("{}:{at}: {list} prefix {problem}", .file.display())]
    SplitsHost {
        file: PathBuf,
        at: Location,
        list: PrefixList,
        problem: String,
    },

    #[error(
        "{}:{at}: enforcement.{key} = {value}; expected a prefix length from {min} to {max}",
        .file.display()
    )]
    HostPrefixOutOfRange {
        file: PathBuf,
        at: Location,
        key: &'static str,
        value: i64,
        min: u8,
        max: u8,
    },

    #[error(
        "{}:{at}: {list} prefix {value:?} has host bits set; expected a network address such \
         as \"{network}\"",
        .file.display()
    )]
    HostBitsSet {
        file: PathBuf,
        at: Location,
        list: PrefixList,
        value: String,
        network: IpNet,
    },

    #[error(
        "{}:{at}: {list} prefix {value:?} duplicates {first_value:?} at line {}; expected each \
         prefix once",
        .file.display(),
        .first.line
    )]
    DuplicatePrefix {
        file: PathBuf,
        at: Location,
        list: PrefixList,
        value: String,
        first_value: String,
        first: Location,
    },

    /// Two relays overlap; `at` is whichever of the two comes later in the file.
    #[error(
        "{}:{at}: relay prefix {narrower:?} (line {}) lies inside relay prefix {wider:?} (line \
         {}); expected relays that do not overlap, so keep only one of them",
        .file.display(),
        .narrower_at.line,
        .wider_at.line
    )]
    OverlappingRelays {
        file: PathBuf,
        at: Location,
        wider: String,
        wider_at: Location,
        narrower: String,
        narrower_at: Location,
    },

    #[error(
        "{}:{at}: exemption {prefix:?} has an empty reason {value:?}; expected a short note on \
         why the range is exempt",
        .file.display()
    )]
    EmptyReason {
        file: PathBuf,
        at: Location,
        prefix: String,
        value: String,
    },

    #[error(
        "{}:{at}: exemption prefix {value:?} is not inside any [[subscribers]] prefix, so it \
         would have no effect; expected a range within a subscriber range",
        .file.display()
    )]
    ExemptionOutsideSubscribers {
        file: PathBuf,
        at: Location,
        value: String,
    },

    #[error(
        "{}:{at}: capacity.{key} = {value}; expected a number from 1 to {max}",
        .file.display(),
        max = u32::MAX
    )]
    CapacityOutOfRange {
        file: PathBuf,
        at: Location,
        key: CapacityKey,
        value: i64,
    },

    /// A list holds more prefixes of one family than its map can; `at` is the first that does
    /// not fit.
    #[error(
        "{}:{at}: {list} prefix {value:?} does not fit: the file has {count} {family} {list} \
         prefixes but capacity.{key} is {capacity}; expected at most {capacity} per address \
         family (raise capacity.{key} or remove entries)",
        .file.display()
    )]
    CapacityExceeded {
        file: PathBuf,
        at: Location,
        list: PrefixList,
        key: CapacityKey,
        value: String,
        family: Family,
        count: usize,
        capacity: u32,
    },
}

// ---------------------------------------------------------------------------------------------
// The file as written.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    // Absent: ports [25], unparseable = "drop".
    #[serde(default)]
    enforcement: RawEnforcement,
    // Absent: rejected by validation (at least one entry is required). Spanned so that an
    // empty `subscribers = []` can be pointed at.
    #[serde(default)]
    subscribers: Option<Spanned<Vec<RawSubscriber>>>,
    // Absent: no relays.
    #[serde(default)]
    relays: Vec<RawRelay>,
    // Absent: no exemptions.
    #[serde(default)]
    exemptions: Vec<RawExemption>,
    // Absent: every map at its default size.
    #[serde(default)]
    capacity: RawCapacity,
    // Absent: every agent setting at its default.
    #[serde(default)]
    agent: RawAgent,
    // Absent: every report setting at its default.
    #[serde(default)]
    report: RawReport,
    // Absent: a gateway on its own (local policy, local reports).
    #[serde(default)]
    fleet: Option<Spanned<RawFleet>>,
    // Absent: no RADIUS accounting listener.
    #[serde(default)]
    radius: Option<Spanned<RawRadius>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawEnforcement {
    // Absent: [DEFAULT_PORT]. Ports are i64 so that 0, -1 and 70000 reach our own message.
    ports: Option<Spanned<Vec<Spanned<i64>>>>,
    // Absent: drop (fail closed).
    unparseable: RawUnparseable,
    // Absent: 32 and 64.
    ipv4_host_prefix: Option<Spanned<i64>>,
    ipv6_host_prefix: Option<Spanned<i64>>,
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum RawUnparseable {
    Pass,
    #[default]
    Drop,
}

impl From<RawUnparseable> for UnparseableAction {
    fn from(raw: RawUnparseable) -> Self {
        match raw {
            RawUnparseable::Pass => UnparseableAction::Pass,
            RawUnparseable::Drop => UnparseableAction::Drop,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSubscriber {
    prefix: Spanned<String>,
    // Absent: enforce.
    #[serde(default)]
    mode: RawMode,
    // Absent: drop.
    #[serde(default)]
    action: Option<Spanned<RawAction>>,
    // Absent: tcp-reset (only with action = "reject").
    #[serde(default)]
    reject_with: Option<Spanned<RejectWith>>,
    // Absent: required with ratelimit, 10 per "1m" with reject. i64 so that 0 and negative
    // numbers reach our own message.
    #[serde(default)]
    rate: Option<Spanned<i64>>,
    #[serde(default)]
    per: Option<Spanned<String>>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum RawAction {
    Drop,
    Reject,
    Ratelimit,
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum RawMode {
    #[default]
    Enforce,
    Monitor,
}

impl From<RawMode> for Mode {
    fn from(raw: RawMode) -> Self {
        match raw {
            RawMode::Enforce => Mode::Enforce,
            RawMode::Monitor => Mode::Monitor,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRelay {
    // Exactly one of the two.
    prefix: Option<Spanned<String>>,
    host: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExemption {
    prefix: Spanned<String>,
    // Required: no default.
    reason: Spanned<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawCapacity {
    // Each absent value: the matching DEFAULT_*_CAPACITY. i64 so that 0 and negative numbers
    // reach our own message.
    subscribers: Option<Spanned<i64>>,
    relays: Option<Spanned<i64>>,
    exemptions: Option<Spanned<i64>>,
    hosts: Option<Spanned<i64>>,
}

// ---------------------------------------------------------------------------------------------
// Validation.

/// The text being parsed and where it came from.
struct Source<'a> {
    file: &'a Path,
    text: &'a str,
}

impl Source<'_> {
    fn file(&self) -> PathBuf {
        self.file.to_path_buf()
    }

    /// `table.key` at `span` holds `value`, which is not what the key takes.
    fn invalid(
        &self,
        table: &'static str,
        key: &'static str,
        span: Range<usize>,
        value: impl ToString,
        expected: impl Into<String>,
    ) -> ConfigError {
        ConfigError::InvalidValue {
            file: self.file(),
            at: self.at(span),
            table,
            key,
            value: value.to_string(),
            expected: expected.into(),
        }
    }

    /// A duration key such as "10m": `default` when absent, at least `min` when given.
    fn duration(
        &self,
        table: &'static str,
        key: &'static str,
        raw: Option<Spanned<String>>,
        default: Duration,
        min: Duration,
    ) -> Result<Duration, ConfigError> {
        let Some(raw) = raw else {
            return Ok(default);
        };
        match humantime::parse_duration(raw.get_ref()) {
            Ok(value) if value >= min => Ok(value),
            _ => Err(self.invalid(
                table,
                key,
                raw.span(),
                raw.get_ref(),
                format!(
                    "a duration of at least {}, such as \"10m\"",
                    humantime::format_duration(min)
                ),
            )),
        }
    }

    /// The 1-based line and column of the start of `span`.
    fn at(&self, span: Range<usize>) -> Location {
        let mut end = span.start.min(self.text.len());
        while !self.text.is_char_boundary(end) {
            end -= 1;
        }
        let before = &self.text[..end];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        Location {
            line: before.matches('\n').count() + 1,
            column: before[line_start..].chars().count() + 1,
        }
    }
}

/// toml's message without the snippet of the document its `Display` adds.
fn toml_message(err: &toml::de::Error) -> String {
    err.message()
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

fn validate_enforcement(src: &Source<'_>, raw: RawEnforcement) -> Result<Enforcement, ConfigError> {
    let defaults = Enforcement::default();
    let ports = match raw.ports {
        None => defaults.ports,
        Some(list) => {
            let list_at = src.at(list.span());
            let list = list.into_inner();
            if list.is_empty() {
                return Err(ConfigError::NoPorts {
                    file: src.file(),
                    at: list_at,
                });
            }
            if list.len() > MAX_PORTS {
                return Err(ConfigError::TooManyPorts {
                    file: src.file(),
                    at: list_at,
                    ports: list.iter().map(|port| *port.get_ref()).collect(),
                });
            }
            let mut ports: Vec<(u16, Location)> = Vec::with_capacity(list.len());
            for item in list {
                let at = src.at(item.span());
                let value = *item.get_ref();
                let port = match u16::try_from(value) {
                    Ok(port) if port != 0 => port,
                    _ => {
                        return Err(ConfigError::PortOutOfRange {
                            file: src.file(),
                            at,
                            value,
                        });
                    }
                };
                if let Some(&(_, first)) = ports.iter().find(|(seen, _)| *seen == port) {
                    return Err(ConfigError::DuplicatePort {
                        file: src.file(),
                        at,
                        port,
                        first,
                    });
                }
                ports.push((port, at));
            }
            ports.into_iter().map(|(port, _)| port).collect()
        }
    };
    let host_prefix = |raw: Option<Spanned<i64>>, key, min, max, default| match raw {
        None => Ok(default),
        Some(value) => match u8::try_from(*value.get_ref()) {
            Ok(len) if (min..=max).contains(&len) => Ok(len),
            _ => Err(ConfigError::HostPrefixOutOfRange {
                file: src.file(),
                at: src.at(value.span()),
                key,
                value: *value.get_ref(),
                min,
                max,
            }),
        },
    };
    Ok(Enforcement {
        ports,
        unparseable: raw.unparseable.into(),
        ipv4_host_prefix: host_prefix(
            raw.ipv4_host_prefix,
            "ipv4_host_prefix",
            SHORTEST_HOST_PREFIX.0,
            32,
            defaults.ipv4_host_prefix,
        )?,
        ipv6_host_prefix: host_prefix(
            raw.ipv6_host_prefix,
            "ipv6_host_prefix",
            SHORTEST_HOST_PREFIX.1,
            128,
            defaults.ipv6_host_prefix,
        )?,
    })
}

fn validate_capacity(src: &Source<'_>, raw: RawCapacity) -> Result<Capacity, ConfigError> {
    let value = |key: CapacityKey, raw: Option<Spanned<i64>>, default: u32| match raw {
        None => Ok(default),
        Some(raw) => match u32::try_from(*raw.get_ref()) {
            Ok(value) if value != 0 => Ok(value),
            _ => Err(ConfigError::CapacityOutOfRange {
                file: src.file(),
                at: src.at(raw.span()),
                key,
                value: *raw.get_ref(),
            }),
        },
    };
    let defaults = Capacity::default();
    Ok(Capacity {
        subscribers: value(
            CapacityKey::Subscribers,
            raw.subscribers,
            defaults.subscribers,
        )?,
        relays: value(CapacityKey::Relays, raw.relays, defaults.relays)?,
        exemptions: value(CapacityKey::Exemptions, raw.exemptions, defaults.exemptions)?,
        hosts: value(CapacityKey::Hosts, raw.hosts, defaults.hosts)?,
    })
}

/// A prefix that parsed, with what the operator wrote and where.
struct Entry {
    net: IpNet,
    text: String,
    at: Location,
}

/// Parses one prefix; rejects anything but a network address with a valid length.
fn parse_prefix(
    src: &Source<'_>,
    list: PrefixList,
    raw: Spanned<String>,
) -> Result<Entry, ConfigError> {
    let at = src.at(raw.span());
    let text = raw.into_inner();
    let net = match text.parse::<IpNet>() {
        Ok(net) => net,
        Err(_) => {
            return Err(ConfigError::InvalidPrefix {
                file: src.file(),
                at,
                list,
                problem: diagnose_prefix(&text),
                value: text,
            });
        }
    };
    if net.trunc() != net {
        return Err(ConfigError::HostBitsSet {
            file: src.file(),
            at,
            list,
            value: text,
            network: net.trunc(),
        });
    }
    Ok(Entry { net, text, at })
}

/// Says what is wrong with a string `IpNet` refused.
fn diagnose_prefix(text: &str) -> PrefixProblem {
    let Some((address, length)) = text.split_once('/') else {
        return PrefixProblem::MissingLength;
    };
    let (family, max) = match address.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(_)) => (Family::V4, 32),
        Ok(std::net::IpAddr::V6(_)) => (Family::V6, 128),
        Err(_) => return PrefixProblem::BadAddress,
    };
    if length.is_empty() || !length.bytes().all(|b| b.is_ascii_digit()) {
        return PrefixProblem::BadLength;
    }
    match length.parse::<u32>() {
        Ok(length) if length > u32::from(max) => PrefixProblem::LengthTooLong {
            length,
            family,
            max,
        },
        _ => PrefixProblem::BadLength,
    }
}

/// Rejects a prefix listed twice (compared as networks, so "2001:db8::/32" and
/// "2001:0db8::/32" are the same).
fn check_duplicates(
    src: &Source<'_>,
    list: PrefixList,
    entries: &[Entry],
) -> Result<(), ConfigError> {
    let mut seen: HashMap<IpNet, &Entry> = HashMap::with_capacity(entries.len());
    for entry in entries {
        if let Some(first) = seen.insert(entry.net, entry) {
            return Err(ConfigError::DuplicatePrefix {
                file: src.file(),
                at: entry.at,
                list,
                value: entry.text.clone(),
                first_value: first.text.clone(),
                first: first.at,
            });
        }
    }
    Ok(())
}

/// Rejects a list with more prefixes of one family than its map holds.
fn check_capacity(
    src: &Source<'_>,
    list: PrefixList,
    key: CapacityKey,
    entries: &[Entry],
    capacity: u32,
) -> Result<(), ConfigError> {
    for family in [Family::V4, Family::V6] {
        let mut of_family = entries.iter().filter(|e| Family::of(&e.net) == family);
        let count = of_family.clone().count();
        // usize is at least 32 bits on every target this runs on.
        if let Some(first_over) = of_family.nth(capacity as usize) {
            return Err(ConfigError::CapacityExceeded {
                file: src.file(),
                at: first_over.at,
                list,
                key,
                value: first_over.text.clone(),
                family,
                count,
                capacity,
            });
        }
    }
    Ok(())
}

fn validate_subscribers(
    src: &Source<'_>,
    raw: Option<Spanned<Vec<RawSubscriber>>>,
    enforcement: &Enforcement,
    capacity: u32,
) -> Result<Vec<SubscriberRange>, ConfigError> {
    let Some(raw) = raw else {
        return Err(ConfigError::NoSubscribers {
            file: src.file(),
            at: Location::START,
        });
    };
    let list_at = src.at(raw.span());
    let raw = raw.into_inner();
    if raw.is_empty() {
        return Err(ConfigError::NoSubscribers {
            file: src.file(),
            at: list_at,
        });
    }
    let mut entries = Vec::with_capacity(raw.len());
    let mut modes = Vec::with_capacity(raw.len());
    let mut actions = Vec::with_capacity(raw.len());
    for subscriber in raw {
        actions.push(validate_action(src, &subscriber)?);
        let entry = parse_prefix(src, PrefixList::Subscribers, subscriber.prefix)?;
        // The agent keeps hosts as 16-byte addresses with IPv4 mapped into ::ffff:0:0/96, so
        // an IPv6 source in that block must never be a subscriber host: its statistics would
        // be reported and escalated as the IPv4 host's.
        if holds_ipv4_mapped(&entry.net) {
            return Err(ConfigError::MappedSubscriberRange {
                file: src.file(),
                at: entry.at,
                value: entry.text,
            });
        }
        check_whole_hosts(src, PrefixList::Subscribers, &entry, enforcement)?;
        entries.push(entry);
        modes.push(Mode::from(subscriber.mode));
    }
    // Overlaps are fine (the most specific prefix wins); exact duplicates are a mistake.
    check_duplicates(src, PrefixList::Subscribers, &entries)?;
    check_capacity(
        src,
        PrefixList::Subscribers,
        CapacityKey::Subscribers,
        &entries,
        capacity,
    )?;
    Ok(entries
        .iter()
        .zip(modes)
        .zip(actions)
        .map(|((entry, mode), action)| SubscriberRange {
            prefix: entry.net,
            mode,
            action,
        })
        .collect())
}

/// Most events a bucket may allow per period: far beyond any sensible limit, and small
/// enough that the kernel's interval (period / rate) stays at least a microsecond.
const MAX_RATE: i64 = 1_000_000;
/// The longest `per`: a bucket period beyond a week protects nothing more.
const MAX_PER: Duration = Duration::from_secs(7 * 24 * 3600);

/// A subscriber entry's `action` with `reject_with`, `rate` and `per`: each setting only with
/// the action it belongs to, `ratelimit` with both of its own.
fn validate_action(
    src: &Source<'_>,
    subscriber: &RawSubscriber,
) -> Result<EnforceAction, ConfigError> {
    let (action, action_span) = match &subscriber.action {
        Some(action) => (*action.get_ref(), action.span()),
        None => (RawAction::Drop, subscriber.prefix.span()),
    };
    if action != RawAction::Reject
        && let Some(with) = &subscriber.reject_with
    {
        return Err(src.invalid(
            "subscribers",
            "reject_with",
            with.span(),
            format!("{:?}", with.get_ref()),
            "no reject_with unless action = \"reject\"",
        ));
    }
    if action == RawAction::Drop {
        for (key, span) in [
            ("rate", subscriber.rate.as_ref().map(Spanned::span)),
            ("per", subscriber.per.as_ref().map(Spanned::span)),
        ] {
            if let Some(span) = span {
                return Err(src.invalid(
                    "subscribers",
                    key,
                    span.clone(),
                    &src.text[span],
                    "no rate or per with action = \"drop\"; they bound \"reject\"'s replies \
                     or \"ratelimit\"'s connection attempts",
                ));
            }
        }
        return Ok(EnforceAction::Drop);
    }
    let default = EnforceAction::DEFAULT_REPLY_LIMIT;
    if action == RawAction::Ratelimit && (subscriber.rate.is_none() || subscriber.per.is_none()) {
        return Err(src.invalid(
            "subscribers",
            "action",
            action_span,
            "ratelimit",
            "rate and per with it, such as rate = 10 and per = \"1h\"",
        ));
    }
    let rate = match &subscriber.rate {
        None => default.rate,
        Some(rate) => match u32::try_from(*rate.get_ref()) {
            Ok(value) if (1..=MAX_RATE).contains(&i64::from(value)) => value,
            _ => {
                return Err(src.invalid(
                    "subscribers",
                    "rate",
                    rate.span(),
                    rate.get_ref(),
                    format!("a whole number of connection attempts or replies from 1 to {MAX_RATE}, such as 10"),
                ));
            }
        },
    };
    let per = src.duration(
        "subscribers",
        "per",
        subscriber.per.clone(),
        Duration::from_secs(default.per_secs.into()),
        Duration::from_secs(1),
    )?;
    if per > MAX_PER {
        let span = subscriber.per.as_ref().map_or(action_span, Spanned::span);
        return Err(src.invalid(
            "subscribers",
            "per",
            span.clone(),
            &src.text[span],
            "a duration from 1s to 7days, such as \"1h\"",
        ));
    }
    let limit = Limit {
        rate,
        per_secs: per.as_secs() as u32,
    };
    Ok(match action {
        RawAction::Ratelimit => EnforceAction::RateLimit { limit },
        _ => EnforceAction::Reject {
            with: subscriber
                .reject_with
                .as_ref()
                .map_or(RejectWith::TcpReset, |with| *with.get_ref()),
            limit,
        },
    })
}

/// Whether an IPv6 prefix overlaps ::ffff:0:0/96, the IPv4-mapped block.
fn holds_ipv4_mapped(net: &IpNet) -> bool {
    let IpNet::V6(net) = net else {
        return false;
    };
    let mapped: ipnet::Ipv6Net = "::ffff:0:0/96".parse().expect("a valid prefix");
    net.contains(&mapped) || mapped.contains(net)
}

fn validate_relays(
    src: &Source<'_>,
    raw: Vec<RawRelay>,
    capacity: u32,
) -> Result<(Vec<RelayRange>, Vec<RelayHost>), ConfigError> {
    let mut prefixes = Vec::new();
    let mut hosts: Vec<RelayHost> = Vec::new();
    for (index, relay) in raw.into_iter().enumerate() {
        match (relay.prefix, relay.host) {
            (Some(prefix), None) => prefixes.push(prefix),
            (None, Some(host)) => {
                if !is_hostname(host.get_ref()) {
                    return Err(ConfigError::RelayHost {
                        file: src.file(),
                        at: src.at(host.span()),
                        value: host.get_ref().clone(),
                    });
                }
                if !hosts.iter().any(|known| known.host == *host.get_ref()) {
                    hosts.push(RelayHost {
                        host: host.into_inner(),
                    });
                }
            }
            (prefix, host) => {
                let at = prefix
                    .map(|p| src.at(p.span()))
                    .or(host.map(|h| src.at(h.span())))
                    .unwrap_or(Location::START);
                return Err(ConfigError::RelayEntry {
                    file: src.file(),
                    at,
                    index: index + 1,
                });
            }
        }
    }
    let entries = prefixes
        .into_iter()
        .map(|prefix| parse_prefix(src, PrefixList::Relays, prefix))
        .collect::<Result<Vec<_>, _>>()?;
    check_duplicates(src, PrefixList::Relays, &entries)?;
    check_relay_overlaps(src, &entries)?;
    check_capacity(
        src,
        PrefixList::Relays,
        CapacityKey::Relays,
        &entries,
        capacity,
    )?;
    let ranges = entries
        .iter()
        .map(|entry| RelayRange { prefix: entry.net })
        .collect();
    Ok((ranges, hosts))
}

/// A DNS name: dot-separated labels of letters, digits and inner hyphens, at most 253 bytes.
fn is_hostname(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// Rejects a relay that contains another (duplicates are already gone). Sorted by network
/// address, then shortest prefix first, a prefix that contains others comes right before the
/// first of them, so checking neighbours finds an overlap if there is one. Of the overlaps
/// found, the one whose later entry comes first in the file is reported.
fn check_relay_overlaps(src: &Source<'_>, entries: &[Entry]) -> Result<(), ConfigError> {
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by_key(|&i| (entries[i].net.network(), entries[i].net.prefix_len()));
    let overlap = order
        .windows(2)
        .filter(|pair| entries[pair[0]].net.contains(&entries[pair[1]].net))
        .min_by_key(|pair| (pair[0].max(pair[1]), pair[0].min(pair[1])));
    let Some(&[wider, narrower]) = overlap else {
        return Ok(());
    };
    let (wider, narrower) = (&entries[wider], &entries[narrower]);
    Err(ConfigError::OverlappingRelays {
        file: src.file(),
        at: wider.at.max(narrower.at),
        wider: wider.text.clone(),
        wider_at: wider.at,
        narrower: narrower.text.clone(),
        narrower_at: narrower.at,
    })
}

/// A source prefix of `list` must hold whole hosts (see [`Enforcement::splits_host`]).
fn check_whole_hosts(
    src: &Source<'_>,
    list: PrefixList,
    entry: &Entry,
    enforcement: &Enforcement,
) -> Result<(), ConfigError> {
    match enforcement.splits_host(&entry.net) {
        None => Ok(()),
        Some(problem) => Err(ConfigError::SplitsHost {
            file: src.file(),
            at: entry.at,
            list,
            problem,
        }),
    }
}

fn validate_exemptions(
    src: &Source<'_>,
    raw: Vec<RawExemption>,
    subscribers: &[SubscriberRange],
    enforcement: &Enforcement,
    capacity: u32,
) -> Result<Vec<ExemptionRange>, ConfigError> {
    let mut entries = Vec::with_capacity(raw.len());
    let mut reasons = Vec::with_capacity(raw.len());
    for exemption in raw {
        let entry = parse_prefix(src, PrefixList::Exemptions, exemption.prefix)?;
        let reason_at = src.at(exemption.reason.span());
        let reason = exemption.reason.into_inner();
        if reason.trim().is_empty() {
            return Err(ConfigError::EmptyReason {
                file: src.file(),
                at: reason_at,
                prefix: entry.text,
                value: reason,
            });
        }
        check_whole_hosts(src, PrefixList::Exemptions, &entry, enforcement)?;
        reasons.push(reason.trim().to_owned());
        entries.push(entry);
    }
    check_duplicates(src, PrefixList::Exemptions, &entries)?;

    // An exemption outside every subscriber range is never consulted. Walking up the
    // exemption's supernets keeps this linear in the number of exemptions.
    let subscriber_nets: std::collections::HashSet<IpNet> =
        subscribers.iter().map(|s| s.prefix).collect();
    for entry in &entries {
        let covered = std::iter::successors(Some(entry.net), IpNet::supernet)
            .any(|net| subscriber_nets.contains(&net));
        if !covered {
            return Err(ConfigError::ExemptionOutsideSubscribers {
                file: src.file(),
                at: entry.at,
                value: entry.text.clone(),
            });
        }
    }

    check_capacity(
        src,
        PrefixList::Exemptions,
        CapacityKey::Exemptions,
        &entries,
        capacity,
    )?;
    Ok(entries
        .iter()
        .zip(reasons)
        .map(|(entry, reason)| ExemptionRange {
            prefix: entry.net,
            reason,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORIGIN: &str = "/etc/smtpguard/smtpguard.toml";

    /// Joins `lines` into a document; `lines[0]` is line 1.
    fn doc(lines: &[&str]) -> String {
        let mut text = lines.join("\n");
        text.push('\n');
        text
    }

    fn parse(lines: &[&str]) -> Result<Config, ConfigError> {
        Config::parse(&doc(lines), Path::new(ORIGIN))
    }

    fn reject(lines: &[&str]) -> ConfigError {
        match parse(lines) {
            Ok(config) => panic!("accepted {config:?}"),
            Err(err) => err,
        }
    }

    /// Asserts the message starts with `{ORIGIN}:{line}:{column}: ` and contains every needle.
    fn assert_message(err: &ConfigError, line: usize, column: usize, needles: &[&str]) {
        let message = err.to_string();
        let head = format!("{ORIGIN}:{line}:{column}: ");
        assert!(
            message.starts_with(&head),
            "{message:?} should start with {head:?}"
        );
        for needle in needles {
            assert!(
                message.contains(needle),
                "{message:?} should mention {needle:?}"
            );
        }
    }

    fn net(text: &str) -> IpNet {
        text.parse().unwrap()
    }

    // ---- positive ---------------------------------------------------------------------------

    #[test]
    fn full_config_round_trips() {
        let config = parse(&[
            "[enforcement]",
            "ports = [25, 2525]",
            "unparseable = \"pass\"",
            "ipv4_host_prefix = 30",
            "ipv6_host_prefix = 56",
            "",
            "[[subscribers]]",
            "prefix = \"100.64.0.0/10\"",
            "mode = \"enforce\"",
            "",
            "[[subscribers]]",
            "prefix = \"198.51.100.0/24\"",
            "mode = \"monitor\"",
            "",
            "[[relays]]",
            "prefix = \"192.0.2.25/32\"",
            "",
            "[[relays]]",
            "prefix = \"192.0.2.26/32\"",
            "",
            "[[exemptions]]",
            "prefix = \"100.64.10.0/24\"",
            "reason = \"  business static block \"",
            "",
            "[capacity]",
            "subscribers = 10",
            "relays = 20",
            "exemptions = 30",
            "hosts = 40",
        ])
        .unwrap();
        assert_eq!(
            config,
            Config {
                enforcement: Enforcement {
                    ports: vec![25, 2525],
                    unparseable: UnparseableAction::Pass,
                    ipv4_host_prefix: 30,
                    ipv6_host_prefix: 56,
                },
                subscribers: vec![
                    SubscriberRange {
                        prefix: net("100.64.0.0/10"),
                        mode: Mode::Enforce,
                        action: EnforceAction::Drop,
                    },
                    SubscriberRange {
                        prefix: net("198.51.100.0/24"),
                        mode: Mode::Monitor,
                        action: EnforceAction::Drop,
                    },
                ],
                relays: vec![
                    RelayRange {
                        prefix: net("192.0.2.25/32"),
                    },
                    RelayRange {
                        prefix: net("192.0.2.26/32"),
                    },
                ],
                exemptions: vec![ExemptionRange {
                    prefix: net("100.64.10.0/24"),
                    reason: "business static block".to_owned(),
                }],
                capacity: Capacity {
                    subscribers: 10,
                    relays: 20,
                    exemptions: 30,
                    hosts: 40,
                },
                relay_hosts: Vec::new(),
                agent: AgentConfig::default(),
                report: ReportConfig::default(),
                fleet: None,
                radius: None,
            }
        );
    }

    #[test]
    fn relay_hosts_are_kept_once_and_validated() {
        let config = parse(&[
            "[[subscribers]]",
            "prefix = \"100.64.0.0/10\"",
            "[[relays]]",
            "host = \"smtp.isp.example\"",
            "[[relays]]",
            "prefix = \"192.0.2.25/32\"",
            "[[relays]]",
            "host = \"smtp.isp.example\"",
        ])
        .unwrap();
        assert_eq!(
            config.relay_hosts,
            [RelayHost {
                host: "smtp.isp.example".to_owned()
            }]
        );
        assert_eq!(config.relays.len(), 1);

        let err = reject(&[
            "[[subscribers]]",
            "prefix = \"100.64.0.0/10\"",
            "[[relays]]",
            "host = \"smtp_isp..example\"",
        ]);
        assert!(matches!(err, ConfigError::RelayHost { .. }));
        assert_message(&err, 4, 8, &["\"smtp_isp..example\"", "not a DNS name"]);

        let err = reject(&[
            "[[subscribers]]",
            "prefix = \"100.64.0.0/10\"",
            "[[relays]]",
            "host = \"smtp.isp.example\"",
            "prefix = \"192.0.2.25/32\"",
        ]);
        assert!(matches!(err, ConfigError::RelayEntry { index: 1, .. }));
        assert_message(&err, 5, 10, &["relay #1", "exactly one of"]);
    }

    #[test]
    fn absent_sections_take_defaults() {
        let config = parse(&["[[subscribers]]", "prefix = \"100.64.0.0/10\""]).unwrap();
        assert_eq!(config.enforcement.ports, vec![25]);
        assert_eq!(config.enforcement.unparseable, UnparseableAction::Drop);
        assert_eq!(
            config.subscribers,
            vec![SubscriberRange {
                prefix: net("100.64.0.0/10"),
                mode: Mode::Enforce,
                action: EnforceAction::Drop,
            }]
        );
        assert!(config.relays.is_empty());
        assert!(config.exemptions.is_empty());
        assert_eq!(
            config.capacity,
            Capacity {
                subscribers: DEFAULT_SUBSCRIBER_CAPACITY,
                relays: DEFAULT_RELAY_CAPACITY,
                exemptions: DEFAULT_EXEMPTION_CAPACITY,
                hosts: DEFAULT_HOST_CAPACITY,
            }
        );
    }

    #[test]
    fn partial_tables_take_defaults_for_missing_keys() {
        let config = parse(&[
            "[enforcement]",
            "unparseable = \"pass\"",
            "[capacity]",
            "relays = 7",
            "[[subscribers]]",
            "prefix = \"100.64.0.0/10\"",
        ])
        .unwrap();
        assert_eq!(config.enforcement.ports, vec![25]);
        assert_eq!(config.enforcement.unparseable, UnparseableAction::Pass);
        assert_eq!(config.capacity.relays, 7);
        assert_eq!(config.capacity.subscribers, DEFAULT_SUBSCRIBER_CAPACITY);
        assert_eq!(config.capacity.hosts, DEFAULT_HOST_CAPACITY);
    }

    #[test]
    fn ipv6_and_mixed_entries_are_kept() {
        let config = parse(&[
            "[[subscribers]]",
            "prefix = \"2001:db8:1000::/36\"",
            "[[subscribers]]",
            "prefix = \"100.64.0.0/10\"",
            "mode = \"monitor\"",
            "[[relays]]",
            "prefix = \"2001:db8:25::25/128\"",
            "[[relays]]",
            "prefix = \"192.0.2.25/32\"",
            "[[exemptions]]",
            "prefix = \"2001:db8:1000:ff00::/56\"",
            "reason = \"lab\"",
        ])
        .unwrap();
        assert_eq!(
            config.subscribers,
            vec![
                SubscriberRange {
                    prefix: net("2001:db8:1000::/36"),
                    mode: Mode::Enforce,
                    action: EnforceAction::Drop,
                },
                SubscriberRange {
                    prefix: net("100.64.0.0/10"),
                    mode: Mode::Monitor,
                    action: EnforceAction::Drop,
                },
            ]
        );
        assert_eq!(
            config.relays,
            vec![
                RelayRange {
                    prefix: net("2001:db8:25::25/128"),
                },
                RelayRange {
                    prefix: net("192.0.2.25/32"),
                },
            ]
        );
        assert_eq!(config.exemptions[0].prefix, net("2001:db8:1000:ff00::/56"));
    }

    #[test]
    fn overlapping_subscribers_are_accepted() {
        let config = parse(&[
            "[[subscribers]]",
            "prefix = \"100.64.0.0/10\"",
            "[[subscribers]]",
            "prefix = \"100.127.0.0/16\"",
            "mode = \"monitor\"",
            "[[subscribers]]",
            "prefix = \"100.127.5.0/24\"",
        ])
        .unwrap();
        let modes: Vec<_> = config
            .subscribers
            .iter()
            .map(|s| (s.prefix, s.mode))
            .collect();
        assert_eq!(
            modes,
            vec![
                (net("100.64.0.0/10"), Mode::Enforce),
                (net("100.127.0.0/16"), Mode::Monitor),
                (net("100.127.5.0/24"), Mode::Enforce),
            ]
        );
    }

    #[test]
    fn same_relay_count_fits_per_address_family() {
        // Two IPv4 and two IPv6 relays fit in `relays = 2`: the capacity is per family.
        let config = parse(&[
            "[capacity]",
            "relays = 2",
            "[[subscribers]]",
            "prefix = \"100.64.0.0/10\"",
            "[[relays]]",
            "prefix = \"192.0.2.25/32\"",
            "[[relays]]",
            "prefix = \"192.0.2.26/32\"",
            "[[relays]]",
            "prefix = \"2001:db8:25::25/128\"",
            "[[relays]]",
            "prefix = \"2001:db8:25::26/128\"",
        ])
        .unwrap();
        assert_eq!(config.relays.len(), 4);
    }

    #[test]
    fn example_config_parses() {
        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/smtpguard.example.toml"
        ));
        let config = Config::load(path).unwrap();
        assert_eq!(config.enforcement, Enforcement::default());
        assert_eq!(
            config.subscribers,
            vec![
                SubscriberRange {
                    prefix: net("100.64.0.0/10"),
                    mode: Mode::Monitor,
                    action: EnforceAction::Drop,
                },
                SubscriberRange {
                    prefix: net("2001:db8:1000::/36"),
                    mode: Mode::Monitor,
                    action: EnforceAction::Drop,
                },
                SubscriberRange {
                    prefix: net("100.127.0.0/16"),
                    mode: Mode::Monitor,
                    action: EnforceAction::Drop,
                },
            ]
        );
        assert_eq!(
            config.relays,
            vec![
                RelayRange {
                    prefix: net("192.0.2.25/32"),
                },
                RelayRange {
                    prefix: net("2001:db8:25::25/128"),
                },
            ]
        );
        assert_eq!(
            config.exemptions,
            vec![ExemptionRange {
                prefix: net("100.64.10.0/24"),
                reason: "business static block".to_owned(),
            }]
        );
        assert_eq!(config.capacity, Capacity::default());
    }

    #[test]
    fn location_counts_lines_and_characters() {
        let src = Source {
            file: Path::new(ORIGIN),
            text: "a\n\u{e9}\u{e9}x\n",
        };
        assert_eq!(src.at(0..1), Location { line: 1, column: 1 });
        assert_eq!(src.at(2..3), Location { line: 2, column: 1 });
        // "é" is two bytes but one column.
        assert_eq!(src.at(6..7), Location { line: 2, column: 3 });
        assert_eq!(src.at(8..8), Location { line: 3, column: 1 });
    }

    // ---- files and TOML ----------------------------------------------------------------------

    #[test]
    fn missing_file_names_path_and_io_error() {
        let path = Path::new("/nonexistent/smtpguard/smtpguard.toml");
        let err = Config::load(path).unwrap_err();
        assert!(matches!(&err, ConfigError::Read { source, .. }
            if source.kind() == std::io::ErrorKind::NotFound));
        let message = err.to_string();
        assert!(
            message.starts_with("/nonexistent/smtpguard/smtpguard.toml: "),
            "{message}"
        );
        assert!(message.contains("No such file or directory"), "{message}");
    }

    #[test]
    fn syntax_error_is_located() {
        let err = reject(&[
            "[[subscribers]]",
            "prefix = \"100.64.0.0/10\"",
            "[enforcement",
            "ports = [25]",
        ]);
        assert!(matches!(err, ConfigError::Toml { .. }));
        assert_message(&err, 3, 13, &["unclosed table"]);
        // toml's own rendering of the document is not repeated.
        assert_eq!(err.to_string().lines().count(), 1, "{err}");
    }

    #[test]
    fn unknown_top_level_key_is_rejected() {
        let err = reject(&[
            "[[subscribers]]",
            "prefix = \"100.64.0.0/10\"",
            "[agnet]",
            "socket = \"/run/smtpguard.sock\"",
        ]);
        assert!(matches!(err, ConfigError::Toml { .. }));
        assert_message(&err, 3, 2, &["unknown field `agnet`"]);
    }

    #[test]
    fn unknown_nested_key_is_rejected() {
        let err = reject(&[
            "[enforcement]",
            "ports = [25]",
            "[[subscribers]]",
            "prefix = \"100.64.0.0/10\"",
            "mdoe = \"monitor\"",
        ]);
        assert!(matches!(err, ConfigError::Toml { .. }));
        assert_message(&err, 5, 1, &["unknown field `mdoe`", "`mode`"]);
    }

    #[test]
    fn wrong_type_is_rejected() {
        let err = reject(&["[[subscribers]]", "prefix = 100"]);
        assert!(matches!(err, ConfigError::Toml { .. }));
        assert_message(&err, 2, 10, &["integer `100`", "expected a string"]);

        let err = reject(&[
            "[enforcement]",
            "ports = 25",
            "[[subscribers]]",
            "prefix = \"100.64.0.0/10\"",
        ]);
        assert_message(&err, 2, 9, &["integer `25`", "expected a sequence"]);
    }

    #[test]
    fn unknown_mode_is_rejected() {
        let err = reject(&[
            "[[subscribers]]",
            "prefix = \"100.64.0.0/10\"",
            "mode = \"block\"",
        ]);
        assert!(matches!(err, ConfigError::Toml { .. }));
        assert_message(&err, 3, 8, &["`block`", "`enforce` or `monitor`"]);
    }

    #[test]
    fn actions_take_their_settings() {
        let config = parse(&[
            "[[subscribers]]",
            "prefix = \"100.64.0.0/10\"",
            "action = \"reject\"",
            "[[subscribers]]",
            "prefix = \"100.65.0.0/16\"",
            "action = \"reject\"",
            "reject_with = \"icmp-admin-prohibited\"",
            "rate = 3",
            "per = \"10s\"",
            "[[subscribers]]",
            "prefix = \"100.66.0.0/16\"",
            "mode = \"monitor\"",
            "action = \"ratelimit\"",
            "rate = 10",
            "per = \"1h\"",
            "[[subscribers]]",
            "prefix = \"100.67.0.0/16\"",
        ])
        .unwrap();
        let actions: Vec<_> = config.subscribers.iter().map(|s| s.action).collect();
        assert_eq!(
            actions,
            [
                EnforceAction::Reject {
                    with: RejectWith::TcpReset,
                    limit: EnforceAction::DEFAULT_REPLY_LIMIT,
                },
                EnforceAction::Reject {
                    with: RejectWith::IcmpAdminProhibited,
                    limit: Limit {
                        rate: 3,
                        per_secs: 10,
                    },
                },
                EnforceAction::RateLimit {
                    limit: Limit {
                        rate: 10,
                        per_secs: 3600,
                    },
                },
                EnforceAction::Drop,
            ]
        );
        assert_eq!(
            actions[1].kernel(),
            (
                Action::IcmpProhibited,
                Limit {
                    rate: 3,
                    per_secs: 10
                }
            )
        );
        assert_eq!(
            actions[2].describe(),
            "ratelimit (at most 10 connection attempts per 1h per host, then drop)"
        );
    }

    #[test]
    fn action_settings_are_checked_with_their_location() {
        let entry = |lines: &[&str]| {
            let mut all = vec!["[[subscribers]]", "prefix = \"100.64.0.0/10\""];
            all.extend_from_slice(lines);
            reject(&all)
        };
        let err = entry(&["action = \"block\""]);
        assert_message(&err, 3, 10, &["`block`", "`drop`, `reject`", "`ratelimit`"]);
        let err = entry(&["action = \"ratelimit\"", "rate = 10"]);
        assert_message(
            &err,
            3,
            10,
            &["subscribers.action", "\"ratelimit\"", "rate and per"],
        );
        let err = entry(&["action = \"ratelimit\"", "rate = 0", "per = \"1h\""]);
        assert_message(
            &err,
            4,
            8,
            &["subscribers.rate = \"0\"", "from 1 to 1000000"],
        );
        let err = entry(&["action = \"reject\"", "per = \"soon\""]);
        assert_message(&err, 4, 7, &["subscribers.per = \"soon\"", "a duration"]);
        let err = entry(&["action = \"reject\"", "per = \"30days\""]);
        assert_message(&err, 4, 7, &["subscribers.per", "30days", "1s to 7days"]);
        let err = entry(&["rate = 5"]);
        assert_message(
            &err,
            3,
            8,
            &[
                "subscribers.rate = \"5\"",
                "no rate or per with action = \"drop\"",
            ],
        );
        let err = entry(&["action = \"ratelimit\"", "reject_with = \"tcp-reset\""]);
        assert_message(
            &err,
            4,
            15,
            &["subscribers.reject_with", "unless action = \"reject\""],
        );
        let err = entry(&["action = \"reject\"", "reject_with = \"icmp\""]);
        assert_message(
            &err,
            4,
            15,
            &["`icmp`", "`tcp-reset`", "`icmp-admin-prohibited`"],
        );
    }

    #[test]
    fn unknown_unparseable_action_is_rejected() {
        let err = reject(&[
            "[enforcement]",
            "unparseable = \"Drop\"",
            "[[subscribers]]",
            "prefix = \"100.64.0.0/10\"",
        ]);
        assert!(matches!(err, ConfigError::Toml { .. }));
        assert_message(&err, 2, 15, &["`Drop`", "`pass` or `drop`"]);
    }

    // ---- enforcement ------------------------------------------------------------------------

    #[test]
    fn empty_ports_are_rejected() {
        let err = reject(&[
            "[[subscribers]]",
            "prefix = \"100.64.0.0/10\"",
            "[enforcement]",
            "ports = []",
        ]);
        assert!(matches!(err, ConfigError::NoPorts { .. }));
        assert_message(&err, 4, 9, &["enforcement.ports is empty", "1 to 8"]);
    }

    #[test]
    fn more_than_max_ports_are_rejected() {
        let err = reject(&[
            "[enforcement]",
            "ports = [25, 26, 27, 28, 29, 30, 31, 32, 33]",
            "[[subscribers]]",
            "prefix = \"100.64.0.0/10\"",
        ]);
        assert!(matches!(err, ConfigError::TooManyPorts { ref ports, .. } if ports.len() == 9));
        assert_message(&err, 2, 9, &["9 ports", "[25, 26,", "33]", "at most 8"]);
    }

    #[test]
    fn ports_outside_tcp_range_are_rejected() {
        for (value, column) in [("0", 14), ("-1", 14), ("70000", 14), ("65536", 14)] {
            let ports = format!("ports = [25, {value}]");
            let err = reject(&[
                "[enforcement]",
                &ports,
                "[[subscribers]]",
                "prefix = \"100.64.0.0/10\"",
            ]);
            let ConfigError::PortOutOfRange { value: got, .. } = err else {
                panic!("{err:?}");
            };
            assert_eq!(got.to_string(), value);
            assert_message(
                &err,
                2,
                column,
                &[&format!("port {value} is not a TCP port"), "1 to 65535"],
            );
        }
    }

    #[test]
    fn duplicate_ports_are_rejected() {
        let err = reject(&[
            "[enforcement]",
            "ports = [25,",
            "  587,",
            "  25]",
            "[[subscribers]]",
            "prefix = \"100.64.0.0/10\"",
        ]);
        assert!(matches!(err, ConfigError::DuplicatePort { port: 25, .. }));
        assert_message(
            &err,
            4,
            3,
            &["port 25 is listed twice", "line 2, column 10"],
        );
    }

    // ---- prefixes ---------------------------------------------------------------------------

    #[test]
    fn unparseable_prefixes_are_rejected() {
        let cases = [
            ("100.64.0.0", PrefixProblem::MissingLength),
            (
                "100.64.0.0/33",
                PrefixProblem::LengthTooLong {
                    length: 33,
                    family: Family::V4,
                    max: 32,
                },
            ),
            (
                "2001:db8::/129",
                PrefixProblem::LengthTooLong {
                    length: 129,
                    family: Family::V6,
                    max: 128,
                },
            ),
            ("banana", PrefixProblem::MissingLength),
            ("banana/8", PrefixProblem::BadAddress),
            ("100.64.0.0/", PrefixProblem::BadLength),
            ("100.64.0.0/+8", PrefixProblem::BadLength),
        ];
        for (value, expected) in cases {
            let line = format!("prefix = \"{value}\"");
            let err = reject(&["", "[[subscribers]]", &line]);
            let ConfigError::InvalidPrefix { problem, list, .. } = &err else {
                panic!("{value}: {err:?}");
            };
            assert_eq!(
                (*problem, *list),
                (expected, PrefixList::Subscribers),
                "{value}"
            );
            assert_message(
                &err,
                3,
                10,
                &[
                    &format!("subscriber prefix \"{value}\" is not a CIDR prefix"),
                    &expected.to_string(),
                    "expected an address and a prefix length",
                ],
            );
        }
    }

    #[test]
    fn unparseable_relay_and_exemption_prefixes_are_rejected() {
        let err = reject(&[
            "[[subscribers]]",
            "prefix = \"100.64.0.0/10\"",
            "[[relays]]",
            "prefix = \"192.0.2.25\"",
        ]);
        assert_message(&err, 4, 10, &["relay prefix \"192.0.2.25\"", "no /length"]);

        let err = reject(&[
            "[[subscribers]]",
            "prefix = \"100.64.0.0/10\"",
            "[[exemptions]]",
            "prefix = \"100.64.10.0/40\"",
            "reason = \"x\"",
        ]);
        assert_message(
            &err,
            4,
            10,
            &[
                "exemption prefix \"100.64.10.0/40\"",
                "/40 is longer than the 32 bits",
            ],
        );
    }

    #[test]
    fn subscriber_host_bits_are_rejected() {
        let err = reject(&[
            "[enforcement]",
            "ports = [25]",
            "",
            "[[subscribers]]",
            "prefix = \"100.64.0.0/10\"",
            "[[subscribers]]",
            "prefix = \"100.64.0.1/10\"",
        ]);
        assert!(matches!(err, ConfigError::HostBitsSet { network, .. }
            if network == net("100.64.0.0/10")));
        assert_eq!(
            err.to_string(),
            "/etc/smtpguard/smtpguard.toml:7:10: subscriber prefix \"100.64.0.1/10\" has host \
             bits set; expected a network address such as \"100.64.0.0/10\""
        );
    }

    #[test]
    fn subscriber_ranges_holding_ipv4_mapped_addresses_are_rejected() {
        for (prefix, column) in [
            ("::/0", 10),
            ("::ffff:0:0/96", 10),
            ("::ffff:6440:0/106", 10),
        ] {
            let err = reject(&[
                "[enforcement]",
                "ports = [25]",
                "",
                "[[subscribers]]",
                &format!("prefix = \"{prefix}\""),
            ]);
            assert!(
                matches!(err, ConfigError::MappedSubscriberRange { .. }),
                "{prefix}: {err}"
            );
            assert_eq!(
                err.to_string(),
                format!(
                    "/etc/smtpguard/smtpguard.toml:5:{column}: subscribers prefix \"{prefix}\" \
                     holds IPv4-mapped IPv6 addresses (::ffff:0:0/96); expected IPv6 subscriber \
                     ranges outside that block, and IPv4 subscribers listed as IPv4 prefixes"
                )
            );
        }
    }

    #[test]
    fn relay_and_exemption_host_bits_are_rejected() {
        let err = reject(&[
            "[[subscribers]]",
            "prefix = \"2001:db8:1000::/36\"",
            "[[relays]]",
            "prefix = \"2001:db8:25::25/64\"",
        ]);
        assert_message(
            &err,
            4,
            10,
            &[
                "relay prefix \"2001:db8:25::25/64\" has host bits set",
                "\"2001:db8:25::/64\"",
            ],
        );

        let err = reject(&[
            "[[subscribers]]",
            "prefix = \"100.64.0.0/10\"",
            "[[exemptions]]",
            "reason = \"x\"",
            "prefix = \"100.64.10.1/24\"",
        ]);
        assert_message(
            &err,
            5,
            10,
            &[
                "exemption prefix \"100.64.10.1/24\" has host bits set",
                "\"100.64.10.0/24\"",
            ],
        );
    }

    // ---- subscribers ------------------------------------------------------------------------

    #[test]
    fn missing_subscribers_are_rejected() {
        let err = reject(&["[enforcement]", "ports = [25]"]);
        assert!(matches!(err, ConfigError::NoSubscribers { .. }));
        assert_message(&err, 1, 1, &["no [[subscribers]] entries", "at least one"]);
    }

    #[test]
    fn empty_subscribers_are_rejected() {
        let err = reject(&["[enforcement]", "ports = [25]", "subscribers = []"]);
        // In TOML, that line belongs to [enforcement].
        assert_message(&err, 3, 1, &["unknown field `subscribers`"]);

        let err = reject(&["subscribers = []", "[enforcement]", "ports = [25]"]);
        assert!(matches!(err, ConfigError::NoSubscribers { .. }));
        assert_message(&err, 1, 15, &["no [[subscribers]] entries"]);
    }

    #[test]
    fn duplicate_subscribers_are_rejected() {
        let err = reject(&[
            "[[subscribers]]",
            "prefix = \"2001:db8:1000::/36\"",
            "[[subscribers]]",
            "prefix = \"100.64.0.0/10\"",
            "[[subscribers]]",
            "prefix = \"2001:0db8:1000::/36\"",
            "mode = \"monitor\"",
        ]);
        assert!(matches!(
            err,
            ConfigError::DuplicatePrefix {
                list: PrefixList::Subscribers,
                first: Location {
                    line: 2,
                    column: 10
                },
                ..
            }
        ));
        assert_message(
            &err,
            6,
            10,
            &[
                "subscriber prefix \"2001:0db8:1000::/36\" duplicates \"2001:db8:1000::/36\"",
                "at line 2",
            ],
        );
    }

    // ---- relays -----------------------------------------------------------------------------

    #[test]
    fn duplicate_relays_are_rejected() {
        let err = reject(&[
            "[[subscribers]]",
            "prefix = \"100.64.0.0/10\"",
            "[[relays]]",
            "prefix = \"192.0.2.25/32\"",
            "[[relays]]",
            "prefix = \"192.0.2.25/32\"",
        ]);
        assert!(matches!(
            err,
            ConfigError::DuplicatePrefix {
                list: PrefixList::Relays,
                ..
            }
        ));
        assert_message(
            &err,
            6,
            10,
            &["relay prefix \"192.0.2.25/32\" duplicates \"192.0.2.25/32\" at line 4"],
        );
    }

    #[test]
    fn overlapping_relays_are_rejected() {
        // Wider entry first.
        let err = reject(&[
            "[[subscribers]]",
            "prefix = \"100.64.0.0/10\"",
            "[[relays]]",
            "prefix = \"192.0.2.0/24\"",
            "[[relays]]",
            "prefix = \"2001:db8:25::25/128\"",
            "[[relays]]",
            "prefix = \"192.0.2.25/32\"",
        ]);
        assert!(matches!(err, ConfigError::OverlappingRelays { .. }));
        assert_message(
            &err,
            8,
            10,
            &[
                "relay prefix \"192.0.2.25/32\" (line 8)",
                "inside relay prefix \"192.0.2.0/24\" (line 4)",
                "do not overlap",
            ],
        );

        // Narrower entry first; the later (wider) entry is where the error points.
        let err = reject(&[
            "[[subscribers]]",
            "prefix = \"100.64.0.0/10\"",
            "[[relays]]",
            "prefix = \"2001:db8:25::25/128\"",
            "[[relays]]",
            "prefix = \"2001:db8::/32\"",
        ]);
        assert_message(
            &err,
            6,
            10,
            &[
                "relay prefix \"2001:db8:25::25/128\" (line 4)",
                "inside relay prefix \"2001:db8::/32\" (line 6)",
            ],
        );
    }

    #[test]
    fn first_relay_overlap_in_file_order_is_reported() {
        // Three overlapping pairs. Sorted by address the 192.0.2.0/24 pair is in the middle,
        // but it is the one complete earliest in the file (line 8).
        let err = reject(&[
            "[[subscribers]]",
            "prefix = \"100.64.0.0/10\"",
            "[[relays]]",
            "prefix = \"192.0.2.0/24\"",
            "[[relays]]",
            "prefix = \"10.0.0.0/8\"",
            "[[relays]]",
            "prefix = \"192.0.2.1/32\"",
            "[[relays]]",
            "prefix = \"10.9.0.0/16\"",
            "[[relays]]",
            "prefix = \"203.0.113.0/24\"",
            "[[relays]]",
            "prefix = \"203.0.113.5/32\"",
        ]);
        assert_message(
            &err,
            8,
            10,
            &[
                "\"192.0.2.1/32\" (line 8)",
                "inside relay prefix \"192.0.2.0/24\" (line 4)",
            ],
        );
    }

    #[test]
    fn relay_overlap_after_unrelated_relays_is_found() {
        let err = reject(&[
            "[[subscribers]]",
            "prefix = \"100.64.0.0/10\"",
            "[[relays]]",
            "prefix = \"192.0.2.25/32\"",
            "[[relays]]",
            "prefix = \"198.51.100.7/32\"",
            "[[relays]]",
            "prefix = \"198.51.100.0/24\"",
        ]);
        assert!(matches!(err, ConfigError::OverlappingRelays { .. }));
        assert_message(
            &err,
            8,
            10,
            &[
                "\"198.51.100.7/32\" (line 6)",
                "inside relay prefix \"198.51.100.0/24\" (line 8)",
            ],
        );
    }

    // ---- exemptions -------------------------------------------------------------------------

    #[test]
    fn duplicate_exemptions_are_rejected() {
        let err = reject(&[
            "[[subscribers]]",
            "prefix = \"100.64.0.0/10\"",
            "[[exemptions]]",
            "prefix = \"100.64.10.0/24\"",
            "reason = \"business static block\"",
            "[[exemptions]]",
            "prefix = \"100.64.10.0/24\"",
            "reason = \"again\"",
        ]);
        assert!(matches!(
            err,
            ConfigError::DuplicatePrefix {
                list: PrefixList::Exemptions,
                ..
            }
        ));
        assert_message(
            &err,
            7,
            10,
            &["exemption prefix \"100.64.10.0/24\" duplicates \"100.64.10.0/24\" at line 4"],
        );
    }

    #[test]
    fn empty_exemption_reason_is_rejected() {
        for reason in ["", "   ", "\\t"] {
            let line = format!("reason = \"{reason}\"");
            let err = reject(&[
                "[[subscribers]]",
                "prefix = \"100.64.0.0/10\"",
                "[[exemptions]]",
                "prefix = \"100.64.10.0/24\"",
                &line,
            ]);
            assert!(matches!(err, ConfigError::EmptyReason { .. }), "{err:?}");
            assert_message(
                &err,
                5,
                10,
                &[
                    "exemption \"100.64.10.0/24\" has an empty reason",
                    &format!("{:?}", reason.replace("\\t", "\t")),
                    "expected a short note",
                ],
            );
        }
    }

    #[test]
    fn missing_exemption_reason_is_rejected() {
        let err = reject(&[
            "[[subscribers]]",
            "prefix = \"100.64.0.0/10\"",
            "[[exemptions]]",
            "prefix = \"100.64.10.0/24\"",
        ]);
        assert!(matches!(err, ConfigError::Toml { .. }));
        assert_message(&err, 3, 1, &["missing field `reason`"]);
    }

    #[test]
    fn a_source_prefix_longer_than_a_host_is_rejected() {
        let exemption = reject(&[
            "[[subscribers]]",
            "prefix = \"2001:db8:1000::/36\"",
            "[[exemptions]]",
            "prefix = \"2001:db8:1000:1::5/128\"",
            "reason = \"one address of a /64\"",
        ]);
        assert!(matches!(exemption, ConfigError::SplitsHost { .. }));
        assert_message(
            &exemption,
            4,
            10,
            &[
                "exemption prefix 2001:db8:1000:1::5/128 is longer than one host, a /64",
                "[enforcement] ipv6_host_prefix",
                "such as 2001:db8:1000:1::/64",
            ],
        );
        let range = reject(&[
            "[enforcement]",
            "ipv4_host_prefix = 28",
            "[[subscribers]]",
            "prefix = \"100.64.0.0/30\"",
        ]);
        assert_message(
            &range,
            4,
            10,
            &[
                "subscriber prefix 100.64.0.0/30 is longer than one host, a /28",
                "ipv4_host_prefix",
            ],
        );
        // Longer hosts allow longer prefixes.
        parse(&[
            "[enforcement]",
            "ipv6_host_prefix = 128",
            "[[subscribers]]",
            "prefix = \"2001:db8:1000::/36\"",
            "[[exemptions]]",
            "prefix = \"2001:db8:1000:1::5/128\"",
            "reason = \"a host of its own\"",
        ])
        .unwrap();
    }

    #[test]
    fn host_prefixes_out_of_range_are_rejected() {
        for (line, value, expected) in [
            ("ipv4_host_prefix = 16", "16", "from 24 to 32"),
            ("ipv4_host_prefix = 33", "33", "from 24 to 32"),
            ("ipv6_host_prefix = 32", "32", "from 48 to 128"),
            ("ipv6_host_prefix = -1", "-1", "from 48 to 128"),
        ] {
            let err = reject(&[
                "[enforcement]",
                line,
                "[[subscribers]]",
                "prefix = \"10.0.0.0/8\"",
            ]);
            assert!(
                matches!(err, ConfigError::HostPrefixOutOfRange { .. }),
                "{line}"
            );
            assert_message(&err, 2, 20, &[&format!("= {value};"), expected]);
        }
    }

    #[test]
    fn exemption_outside_subscribers_is_rejected() {
        let err = reject(&[
            "[[subscribers]]",
            "prefix = \"100.64.0.0/10\"",
            "[[subscribers]]",
            "prefix = \"2001:db8:1000::/36\"",
            "[[exemptions]]",
            "prefix = \"100.64.10.0/24\"",
            "reason = \"inside\"",
            "[[exemptions]]",
            "prefix = \"198.51.100.0/24\"",
            "reason = \"outside\"",
        ]);
        assert!(matches!(
            err,
            ConfigError::ExemptionOutsideSubscribers { .. }
        ));
        assert_message(
            &err,
            9,
            10,
            &[
                "exemption prefix \"198.51.100.0/24\"",
                "would have no effect",
            ],
        );

        // Wider than the subscriber range it overlaps: not inside it either.
        let err = reject(&[
            "[[subscribers]]",
            "prefix = \"2001:db8:1000::/36\"",
            "[[exemptions]]",
            "prefix = \"2001:db8::/32\"",
            "reason = \"too wide\"",
        ]);
        assert_message(&err, 4, 10, &["\"2001:db8::/32\"", "no effect"]);
    }

    // ---- capacity ---------------------------------------------------------------------------

    #[test]
    fn zero_and_negative_capacities_are_rejected() {
        for (key, value) in [
            ("subscribers", "0"),
            ("relays", "0"),
            ("exemptions", "-5"),
            ("hosts", "0"),
            ("hosts", "4294967296"),
        ] {
            let line = format!("{key} = {value}");
            let err = reject(&[
                "[[subscribers]]",
                "prefix = \"100.64.0.0/10\"",
                "[capacity]",
                &line,
            ]);
            assert!(
                matches!(err, ConfigError::CapacityOutOfRange { .. }),
                "{err:?}"
            );
            assert_message(
                &err,
                4,
                key.len() + 4,
                &[&format!("capacity.{key} = {value}"), "1 to 4294967295"],
            );
        }
    }

    #[test]
    fn relays_beyond_capacity_are_rejected() {
        let err = reject(&[
            "[capacity]",
            "relays = 2",
            "[[subscribers]]",
            "prefix = \"100.64.0.0/10\"",
            "[[relays]]",
            "prefix = \"192.0.2.25/32\"",
            "[[relays]]",
            "prefix = \"2001:db8:25::25/128\"",
            "[[relays]]",
            "prefix = \"192.0.2.26/32\"",
            "[[relays]]",
            "prefix = \"192.0.2.27/32\"",
        ]);
        assert!(matches!(
            err,
            ConfigError::CapacityExceeded {
                family: Family::V4,
                count: 3,
                capacity: 2,
                ..
            }
        ));
        assert_message(
            &err,
            12,
            10,
            &[
                "relay prefix \"192.0.2.27/32\" does not fit",
                "3 IPv4 relay prefixes",
                "capacity.relays is 2",
            ],
        );
    }

    #[test]
    fn subscribers_and_exemptions_beyond_capacity_are_rejected() {
        let err = reject(&[
            "[capacity]",
            "subscribers = 1",
            "[[subscribers]]",
            "prefix = \"2001:db8:1000::/36\"",
            "[[subscribers]]",
            "prefix = \"2001:db8:2000::/36\"",
        ]);
        assert_message(
            &err,
            6,
            10,
            &[
                "subscriber prefix \"2001:db8:2000::/36\"",
                "2 IPv6 subscriber prefixes",
            ],
        );

        let err = reject(&[
            "[capacity]",
            "exemptions = 1",
            "[[subscribers]]",
            "prefix = \"100.64.0.0/10\"",
            "[[exemptions]]",
            "prefix = \"100.64.10.0/24\"",
            "reason = \"a\"",
            "[[exemptions]]",
            "prefix = \"100.64.11.0/24\"",
            "reason = \"b\"",
        ]);
        assert_message(
            &err,
            9,
            10,
            &[
                "exemption prefix \"100.64.11.0/24\"",
                "capacity.exemptions is 1",
            ],
        );
    }
}
