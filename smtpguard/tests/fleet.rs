//! Fleet mode end to end: three agents, each on a namespace gateway of its own with a
//! subscriber and an MX, share their runtime policy through a real etcd (Debian's
//! etcd-server, started by the test on a loopback port of its own) and real TCP shows what
//! each gateway enforces.

mod harness;

use std::{
    net::IpAddr,
    path::Path,
    process::Output,
    thread,
    time::{Duration, Instant},
};

use harness::{
    Agent, BLOCKED, Fixture, OPEN, SUBSCRIBER, assert_fails, eventually, free_port, ip, metric,
    show, with_metrics_port,
};
use serde_json::Value;
use smtpguard_tests::{
    engines::{Certificates, Etcd},
    lab::{Connect, addr, connect},
};

/// How long a change may take to reach every gateway in these tests (the benchmark measures
/// how long it does take).
const PROPAGATION: Duration = Duration::from_secs(5);

/// The MX over IPv6: the subscriber's IPv6 host is never exempted here, so reaching it
/// shows that blocked stays blocked.
fn mx_v6() -> IpAddr {
    ip(addr::MX_V6)
}

/// One gateway of the fleet: its lab, its agent and its metrics port.
struct Gateway {
    fixture: Fixture,
    agent: Option<Agent>,
    metrics: u16,
}

impl Gateway {
    fn new(test: &str, id: &str, fleet: &str) -> Self {
        let fixture = Fixture::new(&format!("{test}-{id}"));
        let metrics = free_port();
        let config = fixture.config_text(&format!("[fleet]\ngateway_id = \"{id}\"\n{fleet}"));
        std::fs::write(&fixture.config, with_metrics_port(&config, metrics)).unwrap();
        let agent = Some(fixture.start());
        Self {
            fixture,
            agent,
            metrics,
        }
    }

    fn id(&self) -> String {
        self.status()["fleet"]["gateway_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    fn status(&self) -> Value {
        self.fixture.json(&["status", "--format", "json"])
    }

    fn fleet_connected(&self) -> bool {
        self.status()["fleet"]["connected"] == true
    }

    /// The exempt IPv4 subscriber's attempt to MX:25 is greeted.
    fn open(&self) -> bool {
        self.fixture.smtp(OPEN) == Connect::Greeted
    }

    /// The never-exempt IPv6 subscriber's attempt times out.
    fn ipv6_blocked(&self) -> bool {
        connect(&self.fixture.lab.subscriber, mx_v6(), 25, BLOCKED) == Connect::TimedOut
    }

    fn log(&self) -> String {
        self.fixture.log()
    }
}

fn fleet_table(etcd: &Etcd, prefix: &str) -> String {
    format!("etcd = [\"{}\"]\nprefix = \"{prefix}\"\n", etcd.endpoint())
}

/// Every gateway comes to `open` (the exempt host greeted, or blocked) within
/// [`PROPAGATION`]; the IPv6 host stays blocked throughout.
#[track_caller]
fn converge(gateways: &[&Gateway], open: bool, what: &str) {
    for gateway in gateways {
        let deadline = Instant::now() + PROPAGATION;
        loop {
            let observed = if open {
                gateway.open()
            } else {
                gateway.fixture.smtp(BLOCKED) == Connect::TimedOut
            };
            if observed {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: expected {} on {} within {PROPAGATION:?}; agent log:\n{}",
                if open { "open" } else { "blocked" },
                gateway.id(),
                gateway.log()
            );
            thread::sleep(Duration::from_millis(100));
        }
        assert!(
            gateway.ipv6_blocked(),
            "{what}: the never-exempt IPv6 host is blocked on {}",
            gateway.id()
        );
    }
}

fn rows(output: &Output) -> Vec<Value> {
    harness::json(output)
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn one_policy_reaches_every_gateway() {
    let etcd = Etcd::start().unwrap();
    let prefix = format!("/sg-{}-shared/", std::process::id());
    let fleet = fleet_table(&etcd, &prefix);
    let gateways: Vec<Gateway> = (1..=3)
        .map(|n| Gateway::new("shared", &format!("gw-{n}"), &fleet))
        .collect();
    let [gw1, gw2, gw3] = [&gateways[0], &gateways[1], &gateways[2]];
    let all = [gw1, gw2, gw3];
    for gateway in all {
        // A connection, not a propagation: bounded as an agent's start is.
        eventually(harness::READY, "every agent reaches etcd", || {
            gateway.fleet_connected()
        });
    }
    converge(&all, false, "before any exemption");

    // Added on gateway 1: open on all three; listed with the gateway it was made on.
    gw1.fixture.ok(&[
        "exempt", "add", SUBSCRIBER, "--reason", "own MX", "--ticket", "T-1",
    ]);
    converge(&all, true, "after exempt add on gw-1");
    let listed = rows(&gw3.fixture.ok(&["exempt", "list", "--format", "json"]));
    assert!(
        listed.iter().any(|row| row["prefix"] == SUBSCRIBER
            && row["gateway"] == "gw-1"
            && row["source"] == "fleet"
            && row["ticket"] == "T-1"),
        "exempt list on gw-3 shows gw-1's exemption: {listed:?}"
    );
    let table = String::from_utf8(gw3.fixture.ok(&["exempt", "list"]).stdout).unwrap();
    assert!(
        table.contains("GATEWAY") && table.contains("gw-1"),
        "{table}"
    );
    // The same prefix again, on another gateway: already there.
    assert_fails(
        &gw2.fixture
            .cli(&["exempt", "add", SUBSCRIBER, "--reason", "again"]),
        1,
        &["already exists"],
        "exempt add of a fleet exemption on another gateway",
    );

    // Removed on gateway 2: blocked on all three.
    gw2.fixture.ok(&["exempt", "rm", SUBSCRIBER]);
    converge(&all, false, "after exempt rm on gw-2");

    // An expiry is etcd's lease: it ends once, everywhere.
    let added = Instant::now();
    gw3.fixture.ok(&[
        "exempt",
        "add",
        SUBSCRIBER,
        "--reason",
        "trial",
        "--expires",
        "3s",
    ]);
    converge(&all, true, "after exempt add --expires 3s on gw-3");
    for gateway in all {
        eventually(
            PROPAGATION + Duration::from_secs(3),
            "the lease ends",
            || gateway.fixture.smtp(BLOCKED) == Connect::TimedOut,
        );
    }
    assert!(
        added.elapsed() >= Duration::from_secs(2),
        "the exemption lasted about its 3 s, observed {:?}",
        added.elapsed()
    );

    // Two desks add one prefix at once on two gateways: one wins, the other is refused.
    let contested = "100.64.0.9/32";
    let (first, second) = thread::scope(|scope| {
        let one = scope.spawn(|| {
            gw1.fixture
                .cli(&["exempt", "add", contested, "--reason", "desk 1"])
        });
        let two = scope.spawn(|| {
            gw2.fixture
                .cli(&["exempt", "add", contested, "--reason", "desk 2"])
        });
        (one.join().unwrap(), two.join().unwrap())
    });
    let outcomes = [&first, &second];
    let won: Vec<_> = outcomes.iter().filter(|o| o.status.success()).collect();
    let lost: Vec<_> = outcomes.iter().filter(|o| !o.status.success()).collect();
    assert_eq!(
        (won.len(), lost.len()),
        (1, 1),
        "two concurrent adds: one success, one refusal; observed\n{}\n{}",
        show(&first),
        show(&second)
    );
    let refusal = harness::stderr(lost[0]);
    assert_eq!(lost[0].status.code(), Some(1), "{}", show(lost[0]));
    assert!(
        refusal.contains("changed meanwhile") || refusal.contains("already exists"),
        "the loser is told another desk was first: {refusal}"
    );
    let winner = if first.status.success() {
        "desk 1"
    } else {
        "desk 2"
    };
    for gateway in all {
        eventually(PROPAGATION, "the winner's exemption everywhere", || {
            rows(&gateway.fixture.ok(&["exempt", "list", "--format", "json"]))
                .iter()
                .any(|row| row["prefix"] == contested && row["reason"] == winner)
        });
    }

    // The fleet's audit: every change, with the gateway it was made on and who made it.
    let audit = rows(&gw3.fixture.ok(&["audit", "--fleet", "--format", "json"]));
    let made = |action: &str, gateway: &str| {
        audit.iter().any(|entry| {
            entry["action"] == action
                && entry["subject"] == SUBSCRIBER
                && entry["gateway"] == gateway
                && entry["who"] == "root"
        })
    };
    assert!(
        made("exemption-added", "gw-1") && made("exemption-removed", "gw-2"),
        "audit --fleet on gw-3: {audit:?}"
    );

    // A key someone else wrote badly is skipped, counted and never applied.
    let corrupt = format!("{prefix}policy/exemptions/100.64.0.2/32");
    etcd.put(&corrupt, b"{\"reason\": 42}").unwrap();
    for gateway in all {
        eventually(PROPAGATION, "the corrupt key is counted", || {
            gateway.status()["fleet"]["corrupt_keys"].as_u64() >= Some(1)
        });
        assert!(
            gateway.fixture.smtp(BLOCKED) == Connect::TimedOut,
            "{}: a corrupt exemption key opens nothing",
            gateway.id()
        );
        assert_eq!(
            metric(gateway.metrics, "smtpguard_fleet_connected"),
            Some(1.0)
        );
        assert!(metric(gateway.metrics, "smtpguard_fleet_corrupt_keys_total") >= Some(1.0));
        assert!(gateway.log().contains("skipping a corrupt fleet key"));
    }
}

#[test]
fn gateways_keep_enforcing_without_etcd_and_catch_up_after() {
    let mut etcd = Etcd::start().unwrap();
    let prefix = format!("/sg-{}-outage/", std::process::id());
    let fleet = fleet_table(&etcd, &prefix);
    let mut gateways: Vec<Gateway> = (1..=3)
        .map(|n| Gateway::new("outage", &format!("gw-{n}"), &fleet))
        .collect();
    for gateway in &gateways {
        // A connection, not a propagation: bounded as an agent's start is.
        eventually(harness::READY, "every agent reaches etcd", || {
            gateway.fleet_connected()
        });
    }
    gateways[0]
        .fixture
        .ok(&["exempt", "add", SUBSCRIBER, "--reason", "own MX"]);
    converge(
        &gateways.iter().collect::<Vec<_>>(),
        true,
        "before the outage",
    );

    etcd.stop();
    for gateway in &gateways {
        eventually(PROPAGATION, "status says disconnected", || {
            !gateway.fleet_connected()
        });
        assert_eq!(
            metric(gateway.metrics, "smtpguard_fleet_connected"),
            Some(0.0)
        );
    }
    let text = String::from_utf8(gateways[1].fixture.ok(&["status"]).stdout).unwrap();
    assert!(
        text.contains("gw-2 disconnected since") && text.contains("revision"),
        "status: {text}"
    );
    converge(&gateways.iter().collect::<Vec<_>>(), true, "etcd down");

    // A gateway restarted meanwhile enforces the fleet policy it cached, at once.
    gateways[2].agent.take().unwrap().terminate();
    gateways[2].agent = Some(gateways[2].fixture.start());
    assert!(
        gateways[2].open() && gateways[2].ipv6_blocked(),
        "restarted without etcd: the cached exemption holds; log:\n{}",
        gateways[2].log()
    );

    // A change is refused while etcd is away, and changes nothing.
    let refused = gateways[0].fixture.cli(&[
        "exempt",
        "add",
        "100.64.0.5/32",
        "--reason",
        "during outage",
    ]);
    assert_fails(
        &refused,
        2,
        &[&etcd.endpoint(), "unreachable", "nothing was changed"],
        "exempt add without etcd",
    );
    etcd.resume().unwrap();
    for gateway in &gateways {
        eventually(PROPAGATION * 3, "every agent reconnects by itself", || {
            gateway.fleet_connected()
        });
        let listed = rows(&gateway.fixture.ok(&["exempt", "list", "--format", "json"]));
        assert!(
            !listed.iter().any(|row| row["prefix"] == "100.64.0.5/32"),
            "the refused add changed nothing: {listed:?}"
        );
    }
    gateways[1].fixture.ok(&["exempt", "rm", SUBSCRIBER]);
    converge(
        &gateways.iter().collect::<Vec<_>>(),
        false,
        "a change after etcd returned",
    );

    // Compacted past a stopped agent's revision: it lists again and converges.
    let stopped_at = gateways[2].status()["fleet"]["revision"].as_i64().unwrap();
    gateways[2].agent.take().unwrap().terminate();
    gateways[0].fixture.ok(&[
        "exempt",
        "add",
        SUBSCRIBER,
        "--reason",
        "while gw-3 was away",
    ]);
    let compacted = etcd.compact().unwrap();
    assert!(compacted > stopped_at, "{compacted} > {stopped_at}");
    gateways[2].agent = Some(gateways[2].fixture.start());
    converge(
        &gateways.iter().collect::<Vec<_>>(),
        true,
        "after compaction",
    );
    assert!(gateways[2].status()["fleet"]["revision"].as_i64() >= Some(compacted));
}

#[test]
fn tls_client_certificates_are_required_and_named_when_wrong() {
    let certificates = Certificates::make().unwrap();
    let etcd = Etcd::start_tls(&certificates).unwrap();
    let prefix = format!("/sg-{}-tls/", std::process::id());
    let tls = |cert: &str| {
        format!(
            "{}etcd_ca = \"{}\"\netcd_cert = \"{}\"\netcd_key = \"{}\"\n",
            fleet_table(&etcd, &prefix),
            certificates.file("ca.pem").display(),
            certificates.file(&format!("{cert}.pem")).display(),
            certificates.file(&format!("{cert}.key")).display(),
        )
    };
    let gateway = Gateway::new("tls", "gw-tls", &tls("client"));
    eventually(PROPAGATION, "the agent reaches etcd over TLS", || {
        gateway.fleet_connected()
    });
    let reached = gateway.fixture.ok(&["config", "check", "--connect"]);
    let text = String::from_utf8_lossy(&reached.stdout);
    assert!(
        text.contains(&format!("etcd {} reached: version 3.", etcd.endpoint())),
        "{text}"
    );
    gateway
        .fixture
        .ok(&["exempt", "add", SUBSCRIBER, "--reason", "over TLS"]);
    assert!(gateway.open(), "log:\n{}", gateway.log());

    // The policy source is chosen at start: a reload that changes [fleet] is refused.
    let config = std::fs::read_to_string(&gateway.fixture.config).unwrap();
    std::fs::write(
        &gateway.fixture.config,
        config.replace("gateway_id = \"gw-tls\"", "gateway_id = \"gw-renamed\""),
    )
    .unwrap();
    assert_fails(
        &gateway.fixture.cli(&["reload"]),
        1,
        &["[fleet] table changed", "restart the agent"],
        "reload with another [fleet] table",
    );
    std::fs::write(&gateway.fixture.config, config).unwrap();

    // A certificate of another CA: `config check --connect` names the server and the cause.
    let stranger = gateway.fixture.scratch.file("stranger.toml");
    std::fs::write(
        &stranger,
        gateway.fixture.config_text(&format!(
            "[fleet]\ngateway_id = \"gw-x\"\n{}",
            tls("stranger")
        )),
    )
    .unwrap();
    let refused =
        gateway
            .fixture
            .cli(&["config", "check", "--connect", stranger.to_str().unwrap()]);
    assert_fails(
        &refused,
        1,
        &[&etcd.endpoint(), "unreachable"],
        "config check --connect with a client certificate of another CA",
    );
}

/// `report -o json` rows by host.
fn report_rows(gateway: &Gateway, args: &[&str]) -> std::collections::BTreeMap<String, Value> {
    let mut full = vec!["report", "--since", "1h", "-o", "json"];
    full.extend_from_slice(args);
    rows(&gateway.fixture.ok(&full))
        .into_iter()
        .map(|row| (row["host"].as_str().unwrap().to_owned(), row))
        .collect()
}

/// `count` blocked attempts from the subscriber's IPv4 and IPv6 hosts.
fn traffic(gateway: &Gateway, count: usize) {
    for _ in 0..count {
        assert!(!harness::attempt_from(
            &gateway.fixture,
            ip(addr::SUBSCRIBER_V4),
            ip(addr::MX_V4),
            Duration::from_millis(50)
        ));
        assert!(!harness::attempt_from(
            &gateway.fixture,
            ip(addr::SUBSCRIBER_V6),
            mx_v6(),
            Duration::from_millis(50)
        ));
    }
}

fn shipping(gateway: &Gateway) -> Value {
    gateway.status()["fleet_reports"].clone()
}

#[test]
fn reports_reach_postgres_through_an_outage_once_each() {
    let mut postgres = smtpguard_tests::engines::Postgres::start().unwrap();
    let fleet = format!(
        "postgres = \"{}\"\n[report]\ninterval = \"1s\"\n",
        postgres.url()
    );
    let gateways: Vec<Gateway> = (1..=3)
        .map(|n| Gateway::new("reports", &format!("gw-{n}"), &fleet))
        .collect();
    for (n, gateway) in gateways.iter().enumerate() {
        traffic(gateway, n + 2);
    }
    let shipped_all = |gateway: &Gateway| {
        let shipping = shipping(gateway);
        shipping["connected"] == true
            && shipping["backlog_intervals"] == 0
            && shipping["rows_shipped"].as_u64() > Some(0)
    };
    for gateway in &gateways {
        eventually(PROPAGATION, "the first intervals are shipped", || {
            shipped_all(gateway)
        });
    }

    // PostgreSQL away during traffic and snapshots: the backlog waits in the local stores.
    postgres.stop().unwrap();
    for gateway in &gateways {
        traffic(gateway, 3);
    }
    for gateway in &gateways {
        eventually(PROPAGATION, "a backlog while PostgreSQL is away", || {
            let shipping = shipping(gateway);
            shipping["connected"] == false && shipping["backlog_intervals"].as_u64() > Some(0)
        });
        let error = shipping(gateway)["last_error"].to_string();
        assert!(
            error.contains(&format!("127.0.0.1:{}/smtpguard", postgres.port)),
            "the error names the server: {error}"
        );
        assert!(metric(gateway.metrics, "smtpguard_fleet_report_backlog_intervals") > Some(0.0));
    }
    postgres.resume().unwrap();
    for gateway in &gateways {
        eventually(PROPAGATION * 2, "the backlog is shipped", || {
            shipped_all(gateway)
        });
    }
    // Traffic stopped: let the last snapshot (with the last attempts) be taken and shipped.
    thread::sleep(Duration::from_millis(2500));
    for gateway in &gateways {
        eventually(PROPAGATION, "everything is shipped", || {
            shipped_all(gateway)
        });
    }

    // The fleet report is the merge of the local ones: nothing lost, nothing counted twice.
    let locals: Vec<_> = gateways.iter().map(|g| report_rows(g, &[])).collect();
    let fleet_report = report_rows(&gateways[1], &["--fleet"]);
    let hosts: std::collections::BTreeSet<&String> =
        locals.iter().flat_map(|local| local.keys()).collect();
    assert_eq!(
        hosts,
        fleet_report.keys().collect(),
        "the fleet report has every host of the local reports"
    );
    for host in hosts {
        let sum = |field: &str| {
            locals
                .iter()
                .filter_map(|local| local.get(host))
                .map(|row| row[field].as_u64().unwrap())
                .sum::<u64>()
        };
        let row = &fleet_report[host];
        for field in ["attempts", "dropped", "segments"] {
            assert_eq!(
                row[field].as_u64(),
                Some(sum(field)),
                "{host} {field}: the fleet report {row} against the local ones {locals:?}"
            );
        }
        // One MX address each: the merged sketches count it once.
        assert_eq!(row["distinct_destinations"], 1, "{row}");
        assert_eq!(row["gateways"], 3, "{row}");
        let classes: Vec<&Value> = locals.iter().map(|local| &local[host]["class"]).collect();
        assert!(
            classes.iter().all(|class| **class == row["class"]),
            "{host}: the class merges as the local ones agree: {classes:?} vs {row}"
        );
    }
    let one = report_rows(&gateways[0], &["--fleet", "--gateway", "gw-3"]);
    let local = &locals[2];
    assert_eq!(
        one.values()
            .map(|row| row["attempts"].clone())
            .collect::<Vec<_>>(),
        local
            .values()
            .map(|row| row["attempts"].clone())
            .collect::<Vec<_>>(),
        "--gateway gw-3 is gw-3's own history"
    );
    assert!(one.values().all(|row| row["gateways"] == 1));
    // With `--top`, only the history of the rows' hosts is read: the rows are the whole
    // report's first ones, whatever the other options.
    let fleet_rows = |args: &[&str]| {
        let mut full = vec!["report", "--since", "1h", "-o", "json", "--fleet"];
        full.extend_from_slice(args);
        rows(&gateways[1].fixture.ok(&full))
    };
    for args in [
        &[][..],
        &["--group", "/56"],
        &["--gateway", "gw-2", "--min-attempts", "2"],
    ] {
        let whole = fleet_rows(args);
        assert!(!whole.is_empty(), "{args:?}");
        for top in [1, 2] {
            let cut = fleet_rows(&[args, &["--top", &top.to_string()]].concat());
            assert_eq!(
                cut,
                whole[..top.min(whole.len())],
                "--top {top} {args:?} against the whole report"
            );
        }
    }
    let text = String::from_utf8(gateways[0].fixture.ok(&["report", "--fleet"]).stdout).unwrap();
    assert!(text.lines().next().unwrap().ends_with("GATEWAYS"), "{text}");

    // A role without rights: the agent says which server refused what.
    postgres
        .psql("postgres", "CREATE ROLE reader LOGIN")
        .unwrap();
    let reader = postgres.url().replace("smtpguard@", "reader@");
    let config = gateways[0].fixture.scratch.file("reader.toml");
    std::fs::write(
        &config,
        gateways[0].fixture.config_text(&format!(
            "[fleet]\ngateway_id = \"gw-r\"\npostgres = \"{reader}\"\n"
        )),
    )
    .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let loaded = smtpguard::config::Config::load(&config).unwrap();
    let refused = runtime
        .block_on(smtpguard::fleet::postgres::Reports::open(
            loaded.fleet.unwrap().postgres.as_ref().unwrap(),
        ))
        .err()
        .expect("a role without rights is refused")
        .to_string();
    assert!(
        refused.contains(&format!("127.0.0.1:{}/smtpguard", postgres.port))
            && refused.contains("permission denied"),
        "{refused}"
    );
}

#[test]
fn reports_of_schema_version_2_move_into_chunks() {
    let postgres = smtpguard_tests::engines::Postgres::start().unwrap();
    // What the previous version left: schema version 2, one record of one gateway, as the
    // agents' role wrote it.
    postgres
        .psql(
            "smtpguard",
            "SET ROLE smtpguard;
             CREATE TABLE smtpguard_schema (id integer PRIMARY KEY, version integer NOT NULL);
             INSERT INTO smtpguard_schema VALUES (1, 2);
             CREATE TABLE host_intervals (gateway text, start_ms bigint, end_ms bigint,
                 host bytea, first_seen_ms bigint, last_seen_ms bigint, attempts bigint,
                 segments bigint, dropped bigint, sketch bytea, last_dst bytea,
                 last_port integer, last_reason integer, exact_destinations bytea,
                 PRIMARY KEY (gateway, start_ms, host));
             INSERT INTO host_intervals VALUES ('gw-old', 60000, 120000,
                 decode('00000000000000000000ffff64400002', 'hex'), 61000, 62000, 7, 9, 6,
                 decode(repeat('00', 63) || '05', 'hex'),
                 decode('00000000000000000000ffffc6336407', 'hex'), 25, 0,
                 decode('2a000000' || repeat('00', 16), 'hex'));",
        )
        .unwrap();
    let config = smtpguard::config::PostgresConfig {
        url: postgres.url(),
        password_file: None,
        tls: smtpguard::config::PostgresTls::Disable,
        identity: None,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let records = runtime
        .block_on(async {
            smtpguard::fleet::postgres::Reports::open(&config)
                .await?
                .intervals(
                    std::time::UNIX_EPOCH,
                    std::time::SystemTime::now(),
                    Some("gw-old"),
                )
                .await
        })
        .unwrap();
    assert_eq!(records.len(), 1, "{records:?}");
    let (gateway, record) = &records[0];
    assert_eq!(gateway, "gw-old");
    assert_eq!(record.host_address(), ip("100.64.0.2"));
    assert_eq!(record.last_destination(), ip("198.51.100.7"));
    assert_eq!(
        (
            record.attempts,
            record.segments,
            record.dropped,
            record.limited
        ),
        (7, 9, 6, 0)
    );
    assert_eq!(record.sketch[63], 5);
    assert_eq!(record.exact_destinations, Some([42, 0, 0, 0, 0]));
    assert_eq!(
        record
            .last_seen
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap(),
        Duration::from_secs(62)
    );
    assert_eq!(
        postgres
            .psql(
                "smtpguard",
                "SELECT version, to_regclass('host_intervals') IS NULL, \
                 (SELECT count(*) FROM host_chunks) FROM smtpguard_schema",
            )
            .unwrap()
            .trim(),
        "4|t|1",
        "version 4, the old table gone, one chunk"
    );
}

/// A host's limited attempts (its `ratelimit` or `reject` bucket refused them) reach the fleet
/// report as the local one keeps them: written with the records, read back by both reads of a
/// window (whole, and the chosen hosts' chunks only); a chunk written before schema version 4
/// (no limited column) reads as 0.
#[test]
fn limited_attempts_reach_postgres_with_their_records() {
    use smtpguard::store::HostInterval;
    use std::time::{SystemTime, UNIX_EPOCH};

    let postgres = smtpguard_tests::engines::Postgres::start().unwrap();
    let config = smtpguard::config::PostgresConfig {
        url: postgres.url(),
        password_file: None,
        tls: smtpguard::config::PostgresTls::Disable,
        identity: None,
    };
    let at = |secs: u64| UNIX_EPOCH + Duration::from_secs(secs);
    let interval = |host: u8, limited: u64| HostInterval {
        host: smtpguard_common::host::ipv4_mapped([100, 64, 0, host]),
        start: at(60),
        end: at(120),
        first_seen: at(61),
        last_seen: at(62),
        attempts: limited + 10,
        segments: limited + 10,
        dropped: limited + 10,
        limited,
        sketch: [0; smtpguard_common::sketch::SKETCH_REGISTERS],
        exact_destinations: None,
        last_dst: smtpguard_common::host::ipv4_mapped([198, 51, 100, 7]),
        last_port: 25,
        last_reason: 0,
    };
    let shipped = [
        interval(2, 7),
        interval(3, 0),
        interval(4, u64::from(u32::MAX)),
    ];
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let limited = |records: Vec<(String, HostInterval)>| -> Vec<(String, u64)> {
        records
            .into_iter()
            .map(|(_, record)| (record.host_address().to_string(), record.limited))
            .collect()
    };
    let read = |pick_one: bool| {
        runtime
            .block_on(async {
                let mut reports = smtpguard::fleet::postgres::Reports::open(&config).await?;
                if pick_one {
                    reports
                        .intervals_of(at(0), SystemTime::now(), None, |totals| vec![totals[0].0])
                        .await
                } else {
                    reports.intervals(at(0), SystemTime::now(), None).await
                }
            })
            .unwrap()
    };
    runtime
        .block_on(async {
            smtpguard::fleet::postgres::Reports::open(&config)
                .await?
                .ship("gw-1", &shipped)
                .await
        })
        .unwrap();
    assert_eq!(
        limited(read(false)),
        [
            ("100.64.0.2".to_owned(), 7),
            ("100.64.0.3".to_owned(), 0),
            ("100.64.0.4".to_owned(), u64::from(u32::MAX))
        ]
    );
    assert_eq!(limited(read(true)), [("100.64.0.2".to_owned(), 7)]);
    // What an agent of the previous version wrote: no limited attempts.
    postgres
        .psql("smtpguard", "UPDATE host_chunks SET limited = NULL")
        .unwrap();
    assert_eq!(limited(read(true)), [("100.64.0.2".to_owned(), 0)]);
}

/// TLS to PostgreSQL as libpq's sslmode means it, against a server that takes TLS only and a
/// client certificate from the agents' role: verify-full with the CA reaches it; the wrong CA,
/// a host name the certificate was not issued for, no client certificate and no TLS at all
/// are refused, each naming the server and the cause.
#[test]
fn reports_reach_postgres_over_verified_tls_only() {
    let certificates = Certificates::make().unwrap();
    let postgres = smtpguard_tests::engines::Postgres::start_tls(&certificates).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let file = |name: &str| certificates.file(name).display().to_string();
    let open = |host: &str, sslmode: &str, keys: &str| -> Result<(), String> {
        let text = format!(
            "[[subscribers]]\nprefix = \"100.64.0.0/10\"\n[fleet]\ngateway_id = \"gw-tls\"\n\
             postgres = \"postgres://smtpguard@{host}:{}/smtpguard?sslmode={sslmode}\"\n{keys}",
            postgres.port
        );
        let config = smtpguard::config::Config::parse(&text, Path::new("tls.toml"))
            .map_err(|error| error.to_string())?;
        let postgres = config.fleet.unwrap().postgres.unwrap();
        runtime
            .block_on(smtpguard::fleet::postgres::Reports::open(&postgres))
            .map(drop)
            .map_err(|error| error.to_string())
    };
    let client = format!(
        "postgres_cert = \"{}\"\npostgres_key = \"{}\"\n",
        file("client.pem"),
        file("client.key")
    );
    let ca = |name: &str| format!("postgres_ca = \"{}\"\n{client}", file(name));
    let server = format!("127.0.0.1:{}/smtpguard", postgres.port);

    open("127.0.0.1", "verify-full", &ca("ca.pem")).unwrap();
    assert_eq!(
        postgres
            .psql("smtpguard", "SELECT count(*) FROM smtpguard_schema")
            .unwrap()
            .trim(),
        "1",
        "the agent created its schema over TLS"
    );
    // The certificate names 127.0.0.1 only: verify-ca does not check the name, verify-full does.
    open("localhost", "verify-ca", &ca("ca.pem")).unwrap();
    let named = open("localhost", "verify-full", &ca("ca.pem")).unwrap_err();
    assert!(
        named.contains(&format!("localhost:{}/smtpguard", postgres.port))
            && named.contains("not valid for name"),
        "{named}"
    );
    for (sslmode, keys, cause) in [
        ("verify-full", ca("other-ca.pem"), "UnknownIssuer"),
        ("require", String::new(), "valid client certificate"),
        ("disable", String::new(), "no encryption"),
    ] {
        let refused = open("127.0.0.1", sslmode, &keys).unwrap_err();
        assert!(
            refused.contains(&server) && refused.contains(cause),
            "sslmode={sslmode}: {refused}"
        );
    }
    let garbage = certificates.file("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    for (path, cause) in [
        (Path::new("/nonexistent/ca.pem"), "No such file"),
        (garbage.as_path(), "no root trust anchors"),
    ] {
        let unusable = open(
            "127.0.0.1",
            "verify-full",
            &format!("postgres_ca = \"{}\"\n{client}", path.display()),
        )
        .unwrap_err();
        assert!(
            unusable.contains(&format!("postgres_ca {}", path.display()))
                && unusable.contains(cause),
            "{unusable}"
        );
    }
}
