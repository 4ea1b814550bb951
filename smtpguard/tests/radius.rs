//! Exemptions that follow the customer: real RADIUS accounting from `radclient` (Debian's
//! freeradius-utils) to the real agent, judged by real port-25 connections from the lab's
//! subscriber through the gateway namespace. Needs root (namespaces, veth, bpf).

mod harness;

use std::{
    io::Write as _,
    net::IpAddr,
    process::{Command, Stdio},
};

use harness::*;
use smtpguard_tests::lab::addr;

const SECRET: &str = "bng-secret-1";

/// The lab with a RADIUS listener for 127.0.0.1 on `port` and metrics on `metrics`.
fn fixture(name: &str, port: u16, metrics: u16) -> Fixture {
    let f = Fixture::new(name);
    let secret = f.scratch.file("bng1.secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    let extra = format!(
        "[radius]\nlisten = \"127.0.0.1:{port}\"\nclients = [{{ address = \"127.0.0.1\", \
         secret_file = \"{}\" }}]\n",
        secret.display()
    );
    std::fs::write(
        &f.config,
        with_metrics_port(&f.config_text(&extra), metrics),
    )
    .unwrap();
    f
}

/// Sends one Accounting-Request with `attributes` (radclient's syntax) and `secret`; true
/// when the agent answered it (a packet it ignores times out).
fn accounting(port: u16, secret: &str, attributes: &[&str]) -> bool {
    let mut child = Command::new("radclient")
        .args([
            "-r",
            "1",
            "-t",
            "1",
            &format!("127.0.0.1:{port}"),
            "acct",
            secret,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running radclient (Debian's freeradius-utils)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{}\n", attributes.join("\n")).as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    output.status.success()
}

/// An authentic Start or Stop of `user`'s `session` at `address` (announced by the NAS at
/// `nas`, when given), which must be answered.
fn session(port: u16, status: &str, user: &str, session: &str, address: &str, nas: Option<&str>) {
    let mut attributes = vec![
        format!("Acct-Status-Type = {status}"),
        format!("User-Name = \"{user}\""),
        format!("Acct-Session-Id = \"{session}\""),
        format!("Framed-IP-Address = {address}"),
    ];
    attributes.extend(nas.map(|nas| format!("NAS-IP-Address = {nas}")));
    let attributes: Vec<&str> = attributes.iter().map(String::as_str).collect();
    assert!(
        accounting(port, SECRET, &attributes),
        "Accounting {status} of {user} at {address}: expected an Accounting-Response"
    );
}

fn start(port: u16, user: &str, id: &str, address: &str) {
    session(port, "Start", user, id, address, None);
}

fn stop(port: u16, user: &str, id: &str, address: &str) {
    session(port, "Stop", user, id, address, None);
}

fn who(f: &Fixture, address: &str) -> String {
    table_text(&f.json(&["who", address, "-o", "json"])["subscriber"])
}

fn table_text(value: &serde_json::Value) -> String {
    value.as_str().unwrap_or_default().to_owned()
}

/// Whether `src` (an address of the subscriber namespace) reaches the MX on port 25; a
/// blocked attempt costs [`BLOCKED`].
fn delivers(f: &Fixture, src: IpAddr) -> bool {
    attempt_from(f, src, mx(), BLOCKED)
}

#[test]
fn accounting_moves_a_customers_exemption_with_its_address() {
    let (port, metrics) = (free_udp_port(), free_port());
    let f = fixture("radius", port, metrics);
    let second = "100.64.0.3";
    f.lab
        .subscriber
        .ip(&["addr", "add", &format!("{second}/24"), "dev", "eth0"])
        .unwrap();
    let (first, second) = (ip(addr::SUBSCRIBER_V4), ip(second));
    let mut agent = f.start();

    f.ok(&[
        "exempt",
        "add",
        "--subscriber",
        "cust-a@isp",
        "--reason",
        "own mail server",
    ]);
    assert!(
        !delivers(&f, first),
        "exempt identity, no session yet: blocked"
    );

    start(port, "cust-a@isp", "s1", addr::SUBSCRIBER_V4);
    // The Accounting-Response comes once the kernel map holds the exemption: no waiting.
    assert!(delivers(&f, first), "right after cust-a's Start: open");
    assert_eq!(who(&f, addr::SUBSCRIBER_V4), "cust-a@isp");
    let list = f.json(&["exempt", "list", "-o", "json"]);
    let row = &list[0];
    assert_eq!(
        (row["subscriber"].as_str(), row["prefix"].as_str()),
        (Some("cust-a@isp"), Some("100.64.0.2/32")),
        "exempt list: {list}"
    );

    // A Stop with the wrong secret is ignored and counted: the customer stays open.
    let forged = [
        "Acct-Status-Type = Stop",
        "User-Name = \"cust-a@isp\"",
        "Acct-Session-Id = \"s1\"",
        "Framed-IP-Address = 100.64.0.2",
    ];
    assert!(
        !accounting(port, "not-the-secret", &forged),
        "a packet with the wrong secret is not answered"
    );
    assert!(delivers(&f, first), "after a forged Stop: still open");
    assert_eq!(
        metric(
            metrics,
            "smtpguard_radius_packets_total{result=\"bad-authenticator\"}"
        ),
        Some(1.0)
    );

    stop(port, "cust-a@isp", "s1", addr::SUBSCRIBER_V4);
    assert!(!delivers(&f, first), "right after cust-a's Stop: blocked");
    assert_eq!(who(&f, addr::SUBSCRIBER_V4), "");

    // A new session at another address: the exemption moves with the customer.
    start(port, "cust-a@isp", "s2", "100.64.0.3");
    assert!(delivers(&f, second), "cust-a's new address: open");
    assert!(!delivers(&f, first), "cust-a's old address: blocked");

    // Bindings and the identity exemption survive a restart of the agent.
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(agent.wait_exit(std::time::Duration::from_secs(5)).is_some());
    let _agent = f.start();
    assert!(delivers(&f, second), "after a restart: still open");
    assert_eq!(who(&f, "100.64.0.3"), "cust-a@isp");

    // The address passes to another customer: not exempt any more, at once.
    start(port, "cust-b@isp", "s3", "100.64.0.3");
    assert!(
        !delivers(&f, second),
        "100.64.0.3 now held by cust-b: blocked"
    );
    assert_eq!(who(&f, "100.64.0.3"), "cust-b@isp");
    assert_eq!(
        metric(
            metrics,
            "smtpguard_radius_packets_total{result=\"accepted\"}"
        ),
        Some(1.0),
        "the restarted agent counted cust-b's Start"
    );

    // Who held it before: the history keeps both.
    let then = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    f.ok(&[
        "session",
        "stop",
        "--subscriber",
        "cust-b@isp",
        "--address",
        "100.64.0.3",
    ]);
    assert_eq!(
        table_text(&f.json(&["who", "100.64.0.3", "--at", &then, "-o", "json"])["subscriber"]),
        "cust-b@isp"
    );

    // A BNG reboots: its Accounting-On (or -Off) ends every session it announced, and only
    // those.
    session(
        port,
        "Start",
        "cust-c@isp",
        "s5",
        "100.64.0.3",
        Some("192.0.2.11"),
    );
    for status in ["Accounting-On", "Accounting-Off"] {
        session(
            port,
            "Start",
            "cust-a@isp",
            "s4",
            addr::SUBSCRIBER_V4,
            Some("192.0.2.10"),
        );
        assert!(delivers(&f, first), "cust-a through BNG 1: open");
        assert!(
            accounting(
                port,
                SECRET,
                &[
                    &format!("Acct-Status-Type = {status}"),
                    "NAS-IP-Address = 192.0.2.10"
                ]
            ),
            "{status} of BNG 1: expected an Accounting-Response"
        );
        assert!(!delivers(&f, first), "after BNG 1's {status}: blocked");
        assert_eq!(who(&f, addr::SUBSCRIBER_V4), "", "after BNG 1's {status}");
        assert_eq!(
            who(&f, "100.64.0.3"),
            "cust-c@isp",
            "BNG 2's session outlives BNG 1's {status}"
        );
    }
}

#[test]
fn sessions_by_hand_and_bad_input_are_named() {
    let (port, metrics) = (free_udp_port(), free_port());
    let f = fixture("session", port, metrics);
    let _agent = f.start();
    let exempt = |extra: &[&str]| {
        let mut args = vec![
            "exempt",
            "add",
            "--subscriber",
            "biz-7",
            "--reason",
            "business",
        ];
        args.extend(extra);
        f.ok(&args);
    };
    exempt(&[]);
    let bound = f.ok(&[
        "session",
        "start",
        "--subscriber",
        "biz-7",
        "--address",
        addr::SUBSCRIBER_V4,
    ]);
    assert_eq!(
        String::from_utf8_lossy(&bound.stdout),
        "bound: 100.64.0.2/32 to biz-7 (exempt)\n"
    );
    assert!(delivers(&f, ip(addr::SUBSCRIBER_V4)), "bound by hand: open");
    // Removing the identity's exemption blocks what it holds at once.
    f.ok(&["exempt", "rm", "--subscriber", "biz-7"]);
    assert!(
        !delivers(&f, ip(addr::SUBSCRIBER_V4)),
        "exemption removed: blocked"
    );
    // An identity's exemption with an expiry: open until it lapses, audited when it does.
    exempt(&["--expires", "3s"]);
    assert!(
        delivers(&f, ip(addr::SUBSCRIBER_V4)),
        "until it lapses: open"
    );
    let listed = f.json(&["exempt", "list", "-o", "json"]);
    assert!(
        listed[0]["expires"].is_string(),
        "the list shows when it lapses: {listed}"
    );
    eventually(
        std::time::Duration::from_secs(10),
        "the identity's exemption lapsed",
        || f.json(&["exempt", "list", "-o", "json"]) == serde_json::json!([]),
    );
    assert!(
        !delivers(&f, ip(addr::SUBSCRIBER_V4)),
        "lapsed: blocked again"
    );
    let audit = f.json(&["audit", "-o", "json"]);
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "subscriber-exemption-expired" && e["subject"] == "biz-7"),
        "the audit trail names the lapse: {audit}"
    );

    for (args, needles) in [
        (
            vec![
                "session",
                "stop",
                "--subscriber",
                "biz-8",
                "--address",
                addr::SUBSCRIBER_V4,
            ],
            vec!["100.64.0.2/32 is not bound to \"biz-8\" (it is bound to \"biz-7\")"],
        ),
        (
            vec![
                "session",
                "start",
                "--subscriber",
                " ",
                "--address",
                addr::SUBSCRIBER_V4,
            ],
            vec!["subscriber is empty; expected the customer's identity"],
        ),
        (
            vec![
                "session",
                "start",
                "--subscriber",
                "biz-7",
                "--address",
                "100.64.0.2/24",
            ],
            vec!["address 100.64.0.2/24 has host bits set"],
        ),
        (
            vec!["exempt", "rm", "--subscriber", "nobody"],
            vec!["subscriber \"nobody\" is not exempt"],
        ),
        (
            vec!["who", "not-an-address"],
            vec!["address \"not-an-address\" is not an IP address"],
        ),
        (
            vec![
                "exempt",
                "add",
                "--subscriber",
                "x",
                "--reason",
                "r",
                "--expires",
                "0s",
            ],
            vec!["--expires \"0s\" is no time from now"],
        ),
    ] {
        let output = f.cli(&args);
        assert_fails(&output, 1, &needles, &args.join(" "));
    }
}

/// A UDP port of this test's own, picked free by the kernel.
fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|socket| socket.local_addr())
        .map(|address| address.port())
        .unwrap()
}

/// The report rows of the last `since`, as JSON.
fn report_rows(f: &Fixture) -> Vec<serde_json::Value> {
    f.json(&["report", "--since", "1h", "-o", "json"])
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The customer the report names for `host` (None: no row yet).
fn reported_subscriber(f: &Fixture, host: &str) -> Option<String> {
    report_rows(f)
        .iter()
        .find(|row| row["host"] == host)
        .map(|row| table_text(&row["subscriber_id"]))
}

/// `smtpguard session VERB` of the bot's customer at `address`.
fn bind(f: &Fixture, verb: &str, address: &str) {
    f.ok(&[
        "session",
        verb,
        "--subscriber",
        "bot-cust",
        "--address",
        address,
    ]);
}

#[test]
fn a_bots_escalation_and_report_follow_the_customer_to_its_next_address() {
    let f = Fixture::new("reoffender");
    // The on_bot program keeps each row it is handed in a file of its own.
    let hook_dir = f.scratch.file("bots");
    std::fs::create_dir(&hook_dir).unwrap();
    let hook = f.scratch.file("on-bot.sh");
    std::fs::write(
        &hook,
        format!("#!/bin/sh\ncat > {}/bot-$$.json\n", hook_dir.display()),
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let extra = format!(
        "[[subscribers]]\nprefix = \"100.127.0.0/16\"\nmode = \"monitor\"\n[report]\n\
         interval = \"1s\"\nbot_window = \"2s\"\nescalate = true\nescalate_for = \"10m\"\n\
         reoffense_gap = \"1s\"\non_bot = \"{}\"\n",
        hook.display()
    );
    std::fs::write(&f.config, f.config_text(&extra)).unwrap();
    let (old, new) = ("100.127.0.9", "100.127.0.10");
    for address in [old, new] {
        f.lab
            .subscriber
            .ip(&["addr", "add", &format!("{address}/32"), "dev", "eth0"])
            .unwrap();
        f.lab
            .gateway
            .ip(&[
                "route",
                "add",
                &format!("{address}/32"),
                "via",
                addr::SUBSCRIBER_V4,
            ])
            .unwrap();
    }
    let _agent = f.start();
    bind(&f, "start", old);
    assert!(
        attempt_from(&f, ip(old), mx(), OPEN),
        "monitor mode lets port 25 through"
    );
    // It turns bot: 25 MX hosts at once, classified and escalated under its first address.
    let turn_bot = |address: &str| {
        std::thread::scope(|scope| {
            for n in 0..25u8 {
                let f = &f;
                scope.spawn(move || {
                    attempt_from(
                        f,
                        ip(address),
                        IpAddr::from([198, 51, 100, 10 + n]),
                        std::time::Duration::from_millis(200),
                    )
                });
            }
        })
    };
    turn_bot(old);
    let escalations = || f.json(&["escalations", "-o", "json"]);
    eventually(
        std::time::Duration::from_secs(15),
        "the bot escalated",
        || escalations()[0]["host"] == old,
    );
    assert_eq!(escalations()[0]["subscriber"], "bot-cust");
    assert!(!delivers(&f, ip(old)), "escalated: blocked for real");
    eventually(
        std::time::Duration::from_secs(10),
        "the report names the customer of the first address",
        || reported_subscriber(&f, old).as_deref() == Some("bot-cust"),
    );

    // The bot reconnects and gets another address: its escalation comes along at once.
    bind(&f, "stop", old);
    bind(&f, "start", new);
    assert!(
        !delivers(&f, ip(new)),
        "the customer's new address: still escalated, blocked"
    );
    let listed = escalations();
    assert_eq!(
        (listed[0]["host"].as_str(), listed[0]["subscriber"].as_str()),
        (Some(old), Some("bot-cust")),
        "escalations: {listed}"
    );
    eventually(
        std::time::Duration::from_secs(10),
        "the report names the customer of the second address",
        || reported_subscriber(&f, new).as_deref() == Some("bot-cust"),
    );
    // By customer: one row sums both addresses' attempts (read until two reports agree, as
    // a snapshot may land between them).
    let customer_row = || {
        let by_customer = f.json(&[
            "report",
            "--since",
            "1h",
            "--group",
            "subscriber-id",
            "-o",
            "json",
        ]);
        let rows: Vec<serde_json::Value> = by_customer
            .as_array()
            .unwrap()
            .iter()
            .filter(|row| row["subscriber_id"] == "bot-cust")
            .cloned()
            .collect();
        assert_eq!(rows.len(), 1, "one row for the customer: {by_customer}");
        rows[0].clone()
    };
    let summed = || {
        let hosts = report_rows(&f);
        let attempts = |host: &str| {
            hosts
                .iter()
                .find(|row| row["host"] == host)
                .and_then(|row| row["attempts"].as_u64())
                .unwrap_or(0)
        };
        attempts(old) + attempts(new)
    };
    eventually(
        std::time::Duration::from_secs(10),
        "the customer's row sums its addresses' rows",
        || {
            let before = summed();
            customer_row()["attempts"].as_u64() == Some(before) && summed() == before
        },
    );
    let customer = customer_row();
    assert_eq!(customer["hosts"], 2, "{customer}");
    assert_eq!(customer["class"], "bot", "{customer}");
    // Only now that the reports are checked (a row is named by whoever held its host at its
    // last attempt): the old address, nobody's, is judged by its range again.
    assert!(
        attempt_from(&f, ip(old), mx(), OPEN),
        "its old address, now nobody's: monitor mode again"
    );
    // The bot again, under its second address: the same reoffender, named by its customer,
    // and the on_bot program is told whose it is each time.
    turn_bot(new);
    let reoffenders = || f.json(&["report", "--reoffenders", "--since", "1h", "-o", "json"]);
    eventually(
        std::time::Duration::from_secs(15),
        "the customer is a reoffender",
        || reoffenders()[0]["classifications"] == 2,
    );
    let listed = reoffenders();
    let row = &listed[0];
    assert_eq!(
        (
            listed.as_array().unwrap().len(),
            row["subscriber_id"].as_str(),
            row["host"].as_str(),
            row["hosts"].clone(),
            row["escalations"].as_u64()
        ),
        (
            1,
            Some("bot-cust"),
            Some(new),
            serde_json::json!([old, new]),
            Some(1)
        ),
        "one reoffender, the customer, with both addresses and its one escalation: {listed}"
    );
    // The rows the program has written whole so far (it runs beside the agent).
    let hooked = || {
        let mut rows: Vec<(String, String)> = std::fs::read_dir(&hook_dir)
            .unwrap()
            .filter_map(|entry| {
                let text = std::fs::read(entry.unwrap().path()).unwrap();
                let row: serde_json::Value = serde_json::from_slice(&text).ok()?;
                Some((table_text(&row["host"]), table_text(&row["subscriber_id"])))
            })
            .collect();
        rows.sort();
        rows
    };
    eventually(
        std::time::Duration::from_secs(5),
        "the on_bot program ran twice",
        || hooked().len() == 2,
    );
    assert_eq!(
        hooked(),
        // Sorted as text.
        [
            (new.to_owned(), "bot-cust".to_owned()),
            (old.to_owned(), "bot-cust".to_owned())
        ],
        "the rows on_bot was handed"
    );

    // Lifting by the address the customer holds now ends the customer's escalation.
    f.ok(&["escalations", "lift", new]);
    assert!(
        attempt_from(&f, ip(new), mx(), OPEN),
        "lifted: monitor mode again"
    );
}

#[test]
fn fleet_subscriber_exemptions_reach_every_gateway_and_bindings_stay_local() {
    let etcd = smtpguard_tests::engines::Etcd::start().unwrap();
    let fleet = format!(
        "etcd = [\"{}\"]\nprefix = \"/sg-{}-subscribers/\"\n",
        etcd.endpoint(),
        std::process::id()
    );
    let gateway = |id: &str| {
        let f = Fixture::new(&format!("fleet-{id}"));
        let config = f.config_text(&format!("[fleet]\ngateway_id = \"{id}\"\n{fleet}"));
        std::fs::write(&f.config, config).unwrap();
        f
    };
    let (one, two) = (gateway("gw-1"), gateway("gw-2"));
    let (_agent_one, _agent_two) = (one.start(), two.start());
    // The customer is online behind gateway 2 only.
    two.ok(&[
        "session",
        "start",
        "--subscriber",
        "fleet-cust",
        "--address",
        addr::SUBSCRIBER_V4,
    ]);
    let subscriber = ip(addr::SUBSCRIBER_V4);
    assert!(
        !delivers(&two, subscriber),
        "bound, not exempt yet: blocked"
    );

    // Exempted on gateway 1: gateway 2 follows through etcd's watch.
    one.ok(&[
        "exempt",
        "add",
        "--subscriber",
        "fleet-cust",
        "--reason",
        "own MX",
    ]);
    eventually(
        std::time::Duration::from_secs(10),
        "gateway 2 exempts the customer's address",
        || delivers(&two, subscriber),
    );
    let listed = two.json(&["exempt", "list", "-o", "json"]);
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|row| row["subscriber"] == "fleet-cust"
                && row["gateway"] == "gw-1"
                && row["source"] == "fleet"),
        "exempt list on gw-2: {listed}"
    );
    // Bindings stay local: gateway 1's subscriber with the same address is nobody's there.
    assert!(!delivers(&one, subscriber), "unbound on gateway 1: blocked");
    assert_eq!(who(&one, addr::SUBSCRIBER_V4), "");

    // Removed on gateway 2: blocked there again.
    two.ok(&["exempt", "rm", "--subscriber", "fleet-cust"]);
    eventually(
        std::time::Duration::from_secs(10),
        "gateway 2 blocks the customer again",
        || !delivers(&two, subscriber),
    );
}
