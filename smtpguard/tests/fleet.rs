//! Fleet mode end to end: three agents, each on a namespace gateway of its own with a
//! subscriber and an MX, share their runtime policy through a real etcd (Debian's
//! etcd-server, started by the test on a loopback port of its own) and real TCP shows what
//! each gateway enforces.

mod harness;

use std::{
    net::IpAddr,
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
        eventually(PROPAGATION, "every agent reaches etcd", || {
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
        eventually(PROPAGATION, "every agent reaches etcd", || {
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
