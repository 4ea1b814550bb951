//! Every key of the config file, documented once: the source of `smtpguard.toml(5)`. A test
//! asks the parser itself which keys it accepts and compares them with this list, so neither
//! drifts from the other; another checks that the example config shows each of them.

/// One key of the config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    /// The table (`agent`), or the array of tables (`subscribers`), the key belongs to.
    pub table: &'static str,
    pub name: &'static str,
    /// What an absent key means.
    pub default: &'static str,
    pub doc: &'static str,
}

/// A table or an array of tables, in the order the manual page presents them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Table {
    pub name: &'static str,
    /// `[[name]]`: an entry per item.
    pub array: bool,
    pub doc: &'static str,
}

pub const TABLES: &[Table] = &[
    Table {
        name: "enforcement",
        array: false,
        doc: "What is enforced.",
    },
    Table {
        name: "subscribers",
        array: true,
        doc: "Subscriber source ranges; at least one. Ranges may overlap: the most specific \
              prefix decides. Start every range in monitor mode and enforce range by range.",
    },
    Table {
        name: "relays",
        array: true,
        doc: "The ISP's relays (smarthosts): destinations subscribers may always reach on the \
              enforced ports. No two may overlap.",
    },
    Table {
        name: "exemptions",
        array: true,
        doc: "Permanent exemptions: sources that may reach any destination on the enforced \
              ports. Each lies inside a subscriber range. Runtime exemptions are added with \
              `smtpguard exempt add`.",
    },
    Table {
        name: "capacity",
        array: false,
        doc: "Kernel map sizes. Prefix counts are per address family. Raise them only for very \
              large lists.",
    },
    Table {
        name: "agent",
        array: false,
        doc: "The long-running agent (`smtpguard run`) and how the CLI reaches it. Every path is \
              configurable, so that a test instance never touches a live installation.",
    },
    Table {
        name: "report",
        array: false,
        doc: "Snapshots of per-host statistics, their retention, and what makes a host a bot \
              (`smtpguard report`, `smtpguard events`).",
    },
    Table {
        name: "fleet",
        array: false,
        doc: "Fleet mode (see docs/fleet.md): the runtime exemptions and relays of every gateway \
              in etcd, and every gateway's report history in PostgreSQL. Absent, the gateway \
              runs on its own: this file and its SQLite store. Subscriber ranges, config relays \
              and config exemptions stay in each gateway's own file.",
    },
    Table {
        name: "radius",
        array: false,
        doc: "RADIUS accounting (RFC 2866) from the broadband gateways: Start and \
              Interim-Update bind the session's Framed-IP-Address, Framed-IPv6-Prefix and \
              Delegated-IPv6-Prefix to the customer identity, Stop ends the binding. Exempt \
              identities (`smtpguard exempt add --subscriber`) are exempt at the addresses they \
              hold. Absent, `smtpguard session` binds by hand.",
    },
];

pub const KEYS: &[Key] = &[
    Key {
        table: "enforcement",
        name: "ports",
        default: "[25]",
        doc: "Enforced TCP destination ports, 1 to 8 of them. Leave 587 (submission) and 465 \
              (submissions) open so that subscribers can send through any provider with \
              authentication.",
    },
    Key {
        table: "enforcement",
        name: "unparseable",
        default: "\"drop\"",
        doc: "What happens to a subscriber's segment whose TCP header cannot be reached (odd \
              encapsulation, fragments, too many IPv6 extension headers): \"drop\" (a bot cannot \
              evade the block by fragmenting) or \"pass\".",
    },
    Key {
        table: "enforcement",
        name: "ipv4_host_prefix",
        default: "32",
        doc: "How many leading bits of an IPv4 source are one host (24 to 32): what the \
              statistics count, the report lists and an escalation enforces. A subscriber \
              range or exemption may not be longer.",
    },
    Key {
        table: "enforcement",
        name: "ipv6_host_prefix",
        default: "64",
        doc: "How many leading bits of an IPv6 source are one host (48 to 128). A subscriber \
              owns its whole /64 (or /56) and may use any address in it, so a bot rotating \
              addresses inside it is still one host with one count and one table entry. A \
              subscriber range or exemption may not be longer; a bare address given to \
              `exempt` means its host.",
    },
    Key {
        table: "subscribers",
        name: "prefix",
        default: "required",
        doc: "A subscriber range, a network address with its length, such as \"100.64.0.0/10\" \
              or \"2001:db8:1000::/36\".",
    },
    Key {
        table: "subscribers",
        name: "mode",
        default: "\"enforce\"",
        doc: "\"enforce\" drops direct-to-MX traffic from the range; \"monitor\" counts what \
              would be dropped and lets it through.",
    },
    Key {
        table: "subscribers",
        name: "action",
        default: "\"drop\"",
        doc: "What enforcement does (in enforce mode, and for escalated hosts of a monitor-mode \
              range): \"drop\" silently; \"reject\" answers each connection attempt (SYN) at \
              once, so a misconfigured mail client fails fast, within a per-host reply budget \
              (rate per per), and drops the rest; \"ratelimit\" lets each host open at most \
              rate connections per per and drops the attempts above it.",
    },
    Key {
        table: "subscribers",
        name: "reject_with",
        default: "\"tcp-reset\"",
        doc: "With action = \"reject\": \"tcp-reset\" (the client sees \"connection refused\") \
              or \"icmp-admin-prohibited\" (ICMP destination unreachable, code 13; ICMPv6 \
              administratively prohibited).",
    },
    Key {
        table: "subscribers",
        name: "rate",
        default: "required with ratelimit; 10 with reject",
        doc: "With action = \"ratelimit\": connection attempts per host per `per`; with \
              \"reject\": replies per host per `per`. 1 to 1000000.",
    },
    Key {
        table: "subscribers",
        name: "per",
        default: "required with ratelimit; \"1m\" with reject",
        doc: "The period of `rate`, a duration from 1s to 7days, such as \"1h\".",
    },
    Key {
        table: "relays",
        name: "prefix",
        default: "one of prefix or host",
        doc: "A relay prefix, such as \"192.0.2.25/32\".",
    },
    Key {
        table: "relays",
        name: "host",
        default: "one of prefix or host",
        doc: "A relay's DNS name, such as \"smtp.isp.example\"; resolved at start and every \
              agent.relay_refresh.",
    },
    Key {
        table: "exemptions",
        name: "prefix",
        default: "required",
        doc: "The exempted source prefix, inside a subscriber range, such as \
              \"100.64.10.0/24\".",
    },
    Key {
        table: "exemptions",
        name: "reason",
        default: "required",
        doc: "Why it is exempt, for whoever reviews the file next.",
    },
    Key {
        table: "capacity",
        name: "subscribers",
        default: "65536",
        doc: "Subscriber prefixes per address family.",
    },
    Key {
        table: "capacity",
        name: "relays",
        default: "4096",
        doc: "Relay prefixes per address family.",
    },
    Key {
        table: "capacity",
        name: "exemptions",
        default: "131072",
        doc: "Exemption prefixes (config and runtime) per address family.",
    },
    Key {
        table: "capacity",
        name: "hosts",
        default: "1048576",
        doc: "Subscriber hosts whose attempts are tracked: the host table's slots, rounded up \
              to a power of two, plus an overflow map (LRU) a quarter of that size for hosts \
              whose slot another holds.",
    },
    Key {
        table: "agent",
        name: "interfaces",
        default: "none (`smtpguard run` refuses to start)",
        doc: "Subscriber-facing interfaces, where subscriber traffic enters the gateway, such \
              as [\"eth1\", \"bond0.100\"].",
    },
    Key {
        table: "agent",
        name: "attach",
        default: "\"xdp\"",
        doc: "\"xdp\" (earliest, cheapest) or \"tc\" (for drivers without XDP).",
    },
    Key {
        table: "agent",
        name: "xdp_mode",
        default: "\"native\"",
        doc: "\"native\" (in the driver) or \"skb\" (generic XDP: any interface, slower).",
    },
    Key {
        table: "agent",
        name: "netns",
        default: "the agent's own network namespace",
        doc: "The network namespace (a name under /run/netns) the interfaces live in. Entering \
              it needs CAP_SYS_ADMIN: see the systemd unit's header comment.",
    },
    Key {
        table: "agent",
        name: "state_dir",
        default: "\"/var/lib/smtpguard\"",
        doc: "The store (SQLite: runtime exemptions and relays, audit log, report history) and \
              the agent's lock. One agent per state folder.",
    },
    Key {
        table: "agent",
        name: "socket",
        default: "\"/run/smtpguard/smtpguard.sock\"",
        doc: "The Unix socket the CLI talks to the agent on (mode 0660). The CLI reads only \
              this key of the file, so a mistake elsewhere never keeps it from the agent.",
    },
    Key {
        table: "agent",
        name: "socket_group",
        default: "the agent's own group",
        doc: "The group that may use the socket, such as the abuse desk's.",
    },
    Key {
        table: "agent",
        name: "metrics_listen",
        default: "\"127.0.0.1:9725\"",
        doc: "ADDRESS:PORT of the Prometheus /metrics endpoint; loopback only by default.",
    },
    Key {
        table: "agent",
        name: "pin_dir",
        default: "\"/sys/fs/bpf/smtpguard\"",
        doc: "The bpffs folder of the pinned maps and links: enforcement lives here and \
              outlasts agent restarts.",
    },
    Key {
        table: "agent",
        name: "relay_refresh",
        default: "\"5m\"",
        doc: "How often relay host names are resolved again; at least 10s.",
    },
    Key {
        table: "agent",
        name: "log_level",
        default: "\"info\"",
        doc: "The most detailed level the agent logs at: \"error\", \"warn\", \"info\" \
              (startup, reloads, changes made through the CLI, bots found), \"debug\" (also \
              each statistics snapshot) or \"trace\". SMTPGUARD_LOG, else RUST_LOG, overrides \
              it (a level, or directives such as \"smtpguard=debug\"). Read at start: a reload \
              does not change it.",
    },
    Key {
        table: "report",
        name: "interval",
        default: "\"60s\"",
        doc: "How often per-host statistics are snapshotted: the resolution of reports.",
    },
    Key {
        table: "report",
        name: "retention",
        default: "\"30d\"",
        doc: "Snapshots older than this are pruned; at least the interval.",
    },
    Key {
        table: "report",
        name: "bot_destinations",
        default: "20",
        doc: "A host with at least this many distinct destinations within bot_window is a bot.",
    },
    Key {
        table: "report",
        name: "bot_attempts",
        default: "60",
        doc: "A host with at least this many connection attempts within bot_window is a bot.",
    },
    Key {
        table: "report",
        name: "bot_window",
        default: "\"10m\"",
        doc: "The window of the two bot thresholds; at least the interval.",
    },
    Key {
        table: "report",
        name: "client_attempts",
        default: "3",
        doc: "A host that is no bot but made at least this many attempts to one or two \
              destinations is a misconfigured mail client.",
    },
    Key {
        table: "report",
        name: "reoffense_gap",
        default: "\"24h\"",
        doc: "A host classified as a bot in two windows at least this far apart is a \
              reoffender (`smtpguard report --reoffenders`).",
    },
    Key {
        table: "report",
        name: "escalate",
        default: "false",
        doc: "Enforce bot-classified hosts of monitor-mode ranges, each on its own \
              (`smtpguard escalations`).",
    },
    Key {
        table: "report",
        name: "escalate_for",
        default: "\"24h\"",
        doc: "How long a first escalation lasts; each reoffense doubles it.",
    },
    Key {
        table: "report",
        name: "on_bot",
        default: "no program",
        doc: "The absolute path of a program run for each newly classified bot, with the \
              host's report row as JSON on its standard input (to open a ticket, say).",
    },
    Key {
        table: "fleet",
        name: "gateway_id",
        default: "(required in [fleet])",
        doc: "This gateway's name, unique in the fleet: 1 to 64 letters, digits, '-', '_' or \
              '.', such as \"gw-par-1\". Shown in reports, audit entries and exemption lists.",
    },
    Key {
        table: "fleet",
        name: "etcd",
        default: "(none: the policy stays local)",
        doc: "The etcd (v3 API) endpoints holding the fleet's runtime exemptions and relays, all \
              http:// or all https://, such as [\"https://10.0.0.1:2379\"].",
    },
    Key {
        table: "fleet",
        name: "prefix",
        default: "\"/smtpguard/\"",
        doc: "The key prefix every fleet key lives under; starts and ends with '/'.",
    },
    Key {
        table: "fleet",
        name: "etcd_ca",
        default: "(none)",
        doc: "The CA certificate (PEM) of the etcd servers; required with https:// endpoints.",
    },
    Key {
        table: "fleet",
        name: "etcd_cert",
        default: "(none)",
        doc: "This gateway's client certificate (PEM) for etcd, with etcd_key.",
    },
    Key {
        table: "fleet",
        name: "etcd_key",
        default: "(none)",
        doc: "The private key (PEM) of etcd_cert.",
    },
    Key {
        table: "fleet",
        name: "etcd_user",
        default: "(none)",
        doc: "The etcd user the agent authenticates as, with etcd_password_file.",
    },
    Key {
        table: "fleet",
        name: "etcd_password_file",
        default: "(none)",
        doc: "A file holding etcd_user's password (its first line), readable by the agent only.",
    },
    Key {
        table: "fleet",
        name: "postgres",
        default: "(none: reports stay local)",
        doc: "The PostgreSQL database every gateway ships its report history to, as a \
              connection string without a password, such as \
              \"postgres://smtpguard@db.example/smtpguard?sslmode=verify-full\". Its sslmode as \
              libpq's: disable, prefer (the default: TLS if offered), require (TLS without \
              verifying the server's certificate), verify-ca or verify-full (with postgres_ca; \
              verify-full also checks the host name); allow is refused.",
    },
    Key {
        table: "fleet",
        name: "postgres_password_file",
        default: "(none)",
        doc: "A file holding the PostgreSQL password (its first line).",
    },
    Key {
        table: "fleet",
        name: "postgres_ca",
        default: "(none)",
        doc: "The CA certificate (PEM) of the PostgreSQL server; required by \
              sslmode=verify-ca and verify-full, refused with the other modes.",
    },
    Key {
        table: "fleet",
        name: "postgres_cert",
        default: "(none)",
        doc: "This gateway's client certificate (PEM) for PostgreSQL, with postgres_key; not \
              with sslmode=disable.",
    },
    Key {
        table: "fleet",
        name: "postgres_key",
        default: "(none)",
        doc: "The private key (PEM) of postgres_cert.",
    },
    Key {
        table: "radius",
        name: "listen",
        default: "(required in [radius])",
        doc: "The UDP address accounting arrives on, such as \"0.0.0.0:1813\".",
    },
    Key {
        table: "radius",
        name: "identity",
        default: "\"user-name\"",
        doc: "The attribute naming the customer: \"user-name\", \"class\" (shown as text when \
              printable, else as 0x and hex) or \"calling-station-id\".",
    },
    Key {
        table: "radius",
        name: "clients",
        default: "[] (every packet is ignored as from an unknown client)",
        doc: "The BNGs that send accounting: a list of { address = \"192.0.2.10\", secret_file = \
              \"/etc/smtpguard/radius-bng1.secret\" }, address being an address or prefix, \
              secret_file an absolute path whose first line is the shared secret (read when the \
              agent starts). A packet from elsewhere, or whose Request Authenticator does not \
              match, is counted in smtpguard_radius_packets_total and ignored.",
    },
];

/// `table.name` of every key, in the order of [`KEYS`].
pub fn dotted() -> impl Iterator<Item = String> {
    KEYS.iter().map(|key| format!("{}.{}", key.table, key.name))
}

/// `smtpguard.toml(5)` in roff, from [`TABLES`] and [`KEYS`].
pub fn manual_page(version: &str) -> String {
    let mut page = format!(
        ".TH SMTPGUARD.TOML 5 \"\" \"smtpguard {version}\" \"File Formats\"\n\
         .SH NAME\n\
         smtpguard.toml \\- configuration of the smtpguard agent and CLI\n\
         .SH SYNOPSIS\n\
         /etc/smtpguard/smtpguard.toml\n\
         .SH DESCRIPTION\n\
         One TOML file: the policy the agent enforces, where it attaches and keeps its state, \
         and how reports classify hosts. Unknown keys are refused. Every error names the file, \
         line and column, the bad value and what was expected; check a file with \
         \\fBsmtpguard config check\\fR \\fIFILE\\fR before \\fBsmtpguard reload\\fR. \
         Durations are written like \"90s\", \"10m\", \"24h\" or \"30d\"; prefixes are network \
         addresses with a length (\"100.64.0.0/10\", not \"100.64.0.1/10\"); IPv4 and IPv6 may \
         be mixed in every list.\n"
    );
    for table in TABLES {
        let header = if table.array {
            format!("[[{}]]", table.name)
        } else {
            format!("[{}]", table.name)
        };
        page.push_str(&format!(".SH \"{header}\"\n{}\n", escape(table.doc)));
        for key in KEYS.iter().filter(|key| key.table == table.name) {
            page.push_str(&format!(
                ".TP\n.B {}\n{}\nDefault: {}.\n",
                key.name,
                escape(key.doc),
                escape(key.default)
            ));
        }
    }
    page.push_str(
        ".SH FILES\n\
         .TP\n/etc/smtpguard/smtpguard.toml\n\
         The configuration the package installs (a conffile), with every key commented.\n\
         .SH ENVIRONMENT\n\
         .TP\n.B SMTPGUARD_CONFIG\n\
         The file the CLI reads when \\fB\\-\\-config\\fR is not given.\n\
         .TP\n.B SMTPGUARD_LOG, RUST_LOG\n\
         The agent's log level or filter directives, over \\fB[agent] log_level\\fR.\n\
         .SH \"SEE ALSO\"\n\
         \\fBsmtpguard\\fR(1), \\fBsmtpguard\\-config\\fR(1), \\fBsmtpguard\\-run\\fR(1)\n",
    );
    page
}

/// Text as roff shows it: backslashes and dashes escaped, no line read as a request.
fn escape(text: &str) -> String {
    let text = text.replace('\\', "\\e").replace('-', "\\-");
    match text.chars().next() {
        Some('.' | '\'') => format!("\\&{text}"),
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeSet, path::Path};

    use super::*;
    use crate::config::Config;

    /// The keys the parser names in its "unknown field" error for `text`, if it names any.
    fn fields_named(text: &str) -> Option<Vec<String>> {
        let message = Config::parse(text, Path::new("probe.toml"))
            .err()?
            .to_string();
        let (_, list) = message.split_once("unknown field `__probe`, expected ")?;
        let list = list.split(';').next().unwrap_or(list);
        Some(
            list.split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_owned)
                .collect(),
        )
    }

    /// Every `table.key` the parser accepts, asked of the parser itself: an unknown key at the
    /// top and in each table (or array of tables) it names is refused with the list of keys it
    /// takes there.
    fn accepted_keys() -> BTreeSet<String> {
        let top = fields_named("__probe = 1\n").expect("the top level names its tables");
        let mut keys = BTreeSet::new();
        for table in top {
            let inside = fields_named(&format!("[{table}]\n__probe = 1\n"))
                .or_else(|| fields_named(&format!("[[{table}]]\n__probe = 1\n")))
                .unwrap_or_else(|| panic!("{table}: neither a table nor an array of tables"));
            keys.extend(inside.into_iter().map(|key| format!("{table}.{key}")));
        }
        keys
    }

    #[test]
    fn the_list_holds_exactly_the_keys_the_parser_accepts() {
        let accepted = accepted_keys();
        assert!(
            accepted.len() > 20 && accepted.contains("agent.socket_group"),
            "the probe found the parser's keys: {accepted:?}"
        );
        let listed: BTreeSet<String> = dotted().collect();
        assert_eq!(
            listed.len(),
            KEYS.len(),
            "each key is listed once: {listed:?}"
        );
        let undocumented: Vec<_> = accepted.difference(&listed).collect();
        let unknown: Vec<_> = listed.difference(&accepted).collect();
        assert!(
            undocumented.is_empty() && unknown.is_empty(),
            "keys the parser accepts but config/keys.rs does not document: {undocumented:?}; \
             keys it documents that the parser refuses: {unknown:?}"
        );
        for key in KEYS {
            assert!(
                TABLES.iter().any(|table| table.name == key.table),
                "{}.{}: its table is in TABLES",
                key.table,
                key.name
            );
        }
    }

    #[test]
    fn the_manual_page_documents_every_key() {
        let page = manual_page("0.1.0");
        for table in TABLES {
            let header = if table.array {
                format!(".SH \"[[{}]]\"\n", table.name)
            } else {
                format!(".SH \"[{}]\"\n", table.name)
            };
            let at = page
                .find(&header)
                .unwrap_or_else(|| panic!("{header:?} in the page"));
            let section = &page[at + header.len()..];
            let section = &section[..section.find(".SH ").unwrap_or(section.len())];
            for key in accepted_keys()
                .iter()
                .filter_map(|k| k.strip_prefix(&format!("{}.", table.name)))
            {
                let entry = format!(".TP\n.B {}\n", escape(key));
                assert!(
                    section.contains(&entry),
                    "{}.{key} is documented in its section of smtpguard.toml(5)",
                    table.name
                );
            }
        }
        for section in ["NAME", "SYNOPSIS", "DESCRIPTION", "FILES", "ENVIRONMENT"] {
            assert!(page.contains(&format!(".SH {section}\n")), "{section}");
        }
    }

    /// The example config (the package's conffile) parses, starts every range in monitor
    /// mode, and shows every key the parser accepts, set or commented out.
    #[test]
    fn the_example_config_shows_every_key() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/smtpguard.example.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let config = Config::parse(&text, &path).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            config
                .subscribers
                .iter()
                .all(|s| s.mode == smtpguard_common::Mode::Monitor),
            "every subscriber range starts in monitor mode: {:?}",
            config.subscribers
        );
        // Each key as a line of its table: `key = ...` or `# key = ...`.
        let mut table = "";
        let mut shown = BTreeSet::new();
        for line in text.lines() {
            let line = line.trim_start_matches(['#', ' ']);
            if let Some(header) = line.strip_prefix('[') {
                table = header
                    .trim_matches(['[', ']'])
                    .split(']')
                    .next()
                    .unwrap_or("");
                continue;
            }
            if let Some((key, _)) = line.split_once(" = ") {
                shown.insert(format!("{table}.{key}"));
            }
        }
        let missing: Vec<_> = accepted_keys().difference(&shown).cloned().collect();
        assert!(
            missing.is_empty(),
            "keys the example config does not show (set or commented): {missing:?}"
        );
    }
}
