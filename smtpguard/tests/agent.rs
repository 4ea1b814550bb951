//! `smtpguard run` end to end, as an operator meets it: the real binary attached to the gateway
//! namespace of a real lab, driven through its CLI over the Unix socket, judged by real TCP
//! connections from the subscriber to the MX. Needs root (namespaces, veth, bpf).
//!
//! Every test has its own lab, pin folder, state folder, socket and metrics port, so they run
//! in parallel; guards remove all of it (and kill the agent) also when a test fails.

mod harness;

use std::{
    net::IpAddr,
    process::{Command, Output, Stdio},
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    thread,
    time::{Duration, Instant},
};

use harness::*;
use nix::sys::signal::Signal;
use serde_json::Value;
use smtpguard_tests::lab::{Connect, SUBSCRIBER_INTERFACE, addr};

#[test]
fn exempt_opens_port_25_until_removed_or_expired() {
    let f = Fixture::new("exempt");
    let _agent = f.start();
    f.assert_blocked("before any exemption");

    f.ok(&["exempt", "add", SUBSCRIBER, "--reason", "r"]);
    // `exempt add` returns once the kernel map holds the entry: no waiting.
    f.assert_open("right after exempt add");
    // The policy block list leaves the exempt host out, and only it.
    let pbl = String::from_utf8(f.ok(&["pbl", "export"]).stdout).unwrap();
    let listed: Vec<ipnet::IpNet> = pbl.lines().map(|l| l.parse().unwrap()).collect();
    let covered = |address: &str| listed.iter().any(|n| n.contains(&ip(address)));
    assert!(
        !covered("100.64.0.2"),
        "the exempt host is on the block list:\n{pbl}"
    );
    assert!(
        covered("100.64.0.1") && covered("100.64.0.3") && covered("2001:db8:1000::2"),
        "{pbl}"
    );

    f.ok(&["exempt", "rm", SUBSCRIBER]);
    f.assert_blocked("right after exempt rm");

    let added = Instant::now();
    f.ok(&[
        "exempt",
        "add",
        SUBSCRIBER,
        "--reason",
        "r",
        "--expires",
        "2s",
    ]);
    f.assert_open("right after exempt add --expires 2s");
    let deadline = added + Duration::from_secs(4);
    let mut last;
    loop {
        last = f.smtp(Duration::from_millis(300));
        if last == Connect::TimedOut {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "an exemption added with --expires 2s: expected port 25 blocked again within 4 s of \
             the add, observed {last:?} after {:?}; exempt list: {}; log:\n{}",
            added.elapsed(),
            show(&f.cli(&["exempt", "list"])),
            f.log()
        );
        thread::sleep(Duration::from_millis(100));
    }
    // Expired means gone from the list too.
    let list = f.json(&["exempt", "list", "--format", "json"]);
    assert_eq!(
        list.as_array().map(Vec::len),
        Some(0),
        "exempt list after expiry: expected empty, observed {list}"
    );

    let actions = f.audit_actions(SUBSCRIBER);
    assert_eq!(
        actions,
        [
            "exemption-added",
            "exemption-removed",
            "exemption-added",
            "exemption-expired"
        ],
        "audit actions for {SUBSCRIBER}: observed {actions:?}"
    );
}

#[test]
fn kill_9_leaves_no_gap_and_statistics_survive() {
    let f = Fixture::new("kill9");
    let agent = f.start();
    f.assert_blocked("with the first agent");
    let before = f.json(&["status", "--format", "json"]);
    let dropped_before = packets(&before, "dropped");
    assert!(
        dropped_before > 0,
        "after a blocked attempt: expected dropped packets > 0, observed {before}"
    );
    let accepted_before = f.servers.accepted();

    let attempts = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let outcomes = thread::scope(|scope| {
        let looping = scope.spawn(|| {
            let started = Instant::now();
            let mut outcomes = Vec::new();
            while !stop.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(5) {
                outcomes.push(f.smtp(Duration::from_millis(300)));
                attempts.fetch_add(1, Ordering::SeqCst);
            }
            outcomes
        });
        // Attempts land before the kill, while no agent runs, and after the restart.
        let wait_attempts = |n: usize| {
            let target = attempts.load(Ordering::SeqCst) + n;
            let deadline = Instant::now() + Duration::from_secs(3);
            while attempts.load(Ordering::SeqCst) < target && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(10));
            }
        };
        wait_attempts(1);
        agent.kill9();
        wait_attempts(1);
        let agent = f.start();
        wait_attempts(2);
        stop.store(true, Ordering::SeqCst);
        (looping.join().unwrap(), agent)
    });
    let (outcomes, _agent) = outcomes;

    assert!(
        outcomes.len() >= 3,
        "expected at least 3 attempts around the restart, observed {outcomes:?}"
    );
    assert!(
        outcomes.iter().all(|o| *o == Connect::TimedOut),
        "across kill -9 and restart: expected every attempt TimedOut, observed {outcomes:?}"
    );
    let accepted = f.servers.accepted();
    assert_eq!(
        accepted,
        accepted_before,
        "the MX accepted {} connection(s) across kill -9 and restart; expected none",
        accepted - accepted_before
    );

    let after = f.json(&["status", "--format", "json"]);
    // The blocked host holds a slot of the host table (occupied slots are its entries).
    let hosts = map_entries(&after, "HOST_TABLE");
    assert!(
        hosts.is_some_and(|h| h >= 1),
        "new agent: expected HOST_TABLE entries >= 1, observed {hosts:?} in {after}"
    );
    let dropped_after = packets(&after, "dropped");
    assert!(
        dropped_after >= dropped_before,
        "new agent: expected dropped packets >= {dropped_before} (from before the kill), \
         observed {dropped_after}: statistics did not survive; status {after}"
    );
    assert!(
        after["attached"].as_array().is_some_and(|a| !a.is_empty()),
        "new agent: expected an attachment, observed {after}"
    );
}

#[test]
fn reload_with_a_broken_config_keeps_the_old_policy() {
    let f = Fixture::new("reload");
    let port = free_port();
    std::fs::write(&f.config, with_metrics_port(&f.config_text(""), port)).unwrap();
    let mut agent = f.start();
    f.assert_blocked("before the reload");
    let successful = || metric(port, "smtpguard_config_last_reload_successful");
    let reloaded_at = || metric(port, "smtpguard_config_last_reload_timestamp_seconds");
    assert_eq!(successful(), Some(1.0), "after the start");
    let started_at = reloaded_at().expect("a reload timestamp from the start");

    // An unknown key in the [agent] table, on a line of its own at the end.
    let good = with_metrics_port(&f.config_text(""), port);
    let broken = format!("{good}colour = \"blue\"\n");
    let broken_line = broken.lines().count();
    std::fs::write(&f.config, &broken).unwrap();

    let output = smtpguard(&[
        "--socket",
        f.scratch.file("sg.sock").to_str().unwrap(),
        "reload",
    ]);
    let at = format!("{}:{broken_line}", f.config.display());
    assert_fails(
        &output,
        1,
        &["error:", &at, "colour"],
        "reload of a broken file",
    );
    f.assert_blocked("after a refused reload");
    assert_eq!(successful(), Some(0.0), "after a refused reload");
    let refused_at = reloaded_at().unwrap();
    assert!(
        refused_at > started_at,
        "the refused reload's time: expected after the start ({started_at}), observed \
         {refused_at}"
    );

    agent.signal(Signal::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(3);
    while agent.log().matches("reload refused").count() < 2 {
        assert!(
            Instant::now() < deadline,
            "SIGHUP with a broken file: expected a second \"reload refused\" in the log within 3 \
             s; log:\n{}",
            agent.log()
        );
        assert!(
            agent.running(),
            "the agent died on SIGHUP; log:\n{}",
            agent.log()
        );
        thread::sleep(Duration::from_millis(20));
    }
    assert!(
        agent.running(),
        "SIGHUP with a broken file: expected the agent still running; log:\n{}",
        agent.log()
    );
    let status = smtpguard(&[
        "--socket",
        f.scratch.file("sg.sock").to_str().unwrap(),
        "status",
    ]);
    assert!(
        status.status.success(),
        "status after SIGHUP: {}",
        show(&status)
    );
    f.assert_blocked("after SIGHUP with a broken file");
    // The alert on it lasts as long as the file on disk is broken, not only a while after
    // the refusal.
    assert_eq!(successful(), Some(0.0), "after SIGHUP with a broken file");

    std::fs::write(
        &f.config,
        with_metrics_port(
            &f.config_text("[[exemptions]]\nprefix = \"100.64.0.2/32\"\nreason = \"fixed\"\n"),
            port,
        ),
    )
    .unwrap();
    f.ok(&["reload"]);
    assert_eq!(successful(), Some(1.0), "after a successful reload");
    f.assert_open("after reloading a config that exempts the subscriber");
    let list = f.json(&["exempt", "list", "--format", "json"]);
    assert!(
        list.as_array().is_some_and(|rows| rows
            .iter()
            .any(|r| r["prefix"] == SUBSCRIBER && r["source"] == "config")),
        "exempt list: expected {SUBSCRIBER} from the config, observed {list}"
    );
    let actions = f.audit_actions(f.config_str());
    assert_eq!(
        actions,
        ["config-refused", "config-refused", "config-reloaded"],
        "audit: expected both refusals (CLI, SIGHUP) and the reload, observed {actions:?}"
    );
    let refusals: Vec<(String, String)> = f
        .audit_entries("config-refused")
        .iter()
        .map(|e| (text(&e["who"]), text(&e["detail"])))
        .collect();
    for (who, detail) in &refusals {
        assert!(
            detail.contains(&at) && detail.contains("colour"),
            "audit of a refused reload: expected the detail to name {at} and the key, \
             observed {who}: {detail}"
        );
    }
    assert_eq!(
        refusals
            .iter()
            .map(|(who, _)| who.as_str())
            .collect::<Vec<_>>(),
        ["root", "SIGHUP"],
        "audit: who refused reloads are by"
    );
}

/// `config check --against` says before, and `reload` and its audit entry say after, what a
/// new file changes in policy terms; the change is real (the subscriber's range now only
/// monitors, so its connection passes).
#[test]
fn reload_and_config_check_name_the_policy_changes() {
    let f = Fixture::new("reload-changes");
    let _agent = f.start();
    f.assert_blocked("before the reload");
    let running = f.scratch.file("running.toml");
    std::fs::copy(&f.config, &running).unwrap();
    let edited = f
        .config_text("[[relays]]\nprefix = \"192.0.2.26/32\"\n")
        .replacen(
            "prefix = \"100.64.0.0/10\"\n",
            "prefix = \"100.64.0.0/10\"\nmode = \"monitor\"\n",
            1,
        );
    std::fs::write(&f.config, &edited).unwrap();
    let expected = [
        "100.64.0.0/10: enforce -> monitor",
        "relay 192.0.2.26/32 added",
    ];

    let check = f.ok(&[
        "config",
        "check",
        f.config_str(),
        "--against",
        running.to_str().unwrap(),
    ]);
    let printed = String::from_utf8_lossy(&check.stdout).into_owned();
    let header = format!("2 policy changes against {}:", running.display());
    for line in std::iter::once(header.as_str()).chain(expected) {
        assert!(
            printed.lines().any(|l| l.trim() == line),
            "config check --against: expected a line {line:?}, observed:\n{}",
            show(&check)
        );
    }

    let reload = f.ok(&["reload"]);
    let printed = String::from_utf8_lossy(&reload.stdout).into_owned();
    let lines: Vec<&str> = printed.lines().map(str::trim).skip(1).collect();
    assert_eq!(lines, expected, "reload: observed\n{}", show(&reload));
    f.assert_open("after reloading a file that only monitors the subscriber's range");

    let detail = f
        .audit_entries("config-reloaded")
        .last()
        .map(|e| text(&e["detail"]))
        .unwrap_or_default();
    for change in expected {
        assert!(
            detail.contains(change),
            "audit of the reload: expected {change:?} in the detail, observed {detail:?}"
        );
    }
}

/// A relay hostname that does not resolve (.invalid never does, RFC 6761) is named by `config
/// check`, `reload`, `relay list`, `status` and a metric; `status` shows every range with its
/// mode, the relay hosts, the namespace, socket and metrics address, in tables without a blank
/// first line or trailing spaces, numbers right-aligned.
#[test]
fn status_shows_ranges_and_relay_hosts_and_an_unresolved_one_is_not_silent() {
    const UNRESOLVED: &str = "relay.smtpguard.invalid";
    let f = Fixture::new("status-relay-hosts");
    let port = free_port();
    let extra = format!(
        "[[subscribers]]\nprefix = \"100.127.0.0/16\"\nmode = \"monitor\"\n[[relays]]\nhost = \
         \"localhost\"\n[[relays]]\nhost = \"{UNRESOLVED}\"\n[report]\ninterval = \"1s\"\n"
    );
    std::fs::write(&f.config, with_metrics_port(&f.config_text(&extra), port)).unwrap();
    let needle = format!("relay host {UNRESOLVED} does not resolve");

    let check = f.ok(&["config", "check", f.config_str()]);
    assert!(
        stderr(&check).contains(&needle),
        "config check: expected a warning {needle:?}, observed {}",
        show(&check)
    );
    let _agent = f.start();

    let status = f.json(&["status", "--format", "json"]);
    let ranges: Vec<(String, String)> = status["subscribers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (text(&r["prefix"]), text(&r["mode"])))
        .collect();
    assert_eq!(
        ranges,
        [
            ("100.64.0.0/10".to_owned(), "enforce".to_owned()),
            ("2001:db8:1000::/36".to_owned(), "enforce".to_owned()),
            ("100.127.0.0/16".to_owned(), "monitor".to_owned()),
        ],
        "status subscribers: observed {status}"
    );
    assert_eq!(
        status["ranges_by_mode"],
        serde_json::json!({"enforce": 2, "monitor": 1})
    );
    let hosts = status["relay_hosts"].as_array().unwrap();
    let host = |name: &str| hosts.iter().find(|h| h["host"] == name).cloned();
    let localhost = host("localhost").expect("localhost among the relay hosts");
    assert!(
        localhost["addresses"]
            .as_array()
            .unwrap()
            .contains(&"127.0.0.1".into())
            && localhost["unresolved"].is_null(),
        "localhost: observed {localhost}"
    );
    let unresolved = host(UNRESOLVED).expect("the unresolved host among the relay hosts");
    assert!(
        unresolved["addresses"].as_array().unwrap().is_empty()
            && unresolved["unresolved"]["since"].is_string()
            && !text(&unresolved["unresolved"]["error"]).is_empty(),
        "{UNRESOLVED}: expected no address, an error and since when, observed {unresolved}"
    );
    assert_eq!(
        (
            text(&status["netns"]),
            text(&status["socket"]),
            text(&status["metrics_listen"])
        ),
        (
            f.lab.gateway.name().to_owned(),
            f.scratch.file("sg.sock").display().to_string(),
            format!("127.0.0.1:{port}")
        )
    );

    let table = String::from_utf8(f.ok(&["status"]).stdout).unwrap();
    assert!(
        !table.starts_with('\n') && table.lines().all(|l| l == l.trim_end()),
        "status table: expected no blank first line and no trailing spaces, observed:\n{table:?}"
    );
    for expected in [
        "subscriber ranges  2 enforce, 1 monitor",
        "100.127.0.0/16      monitor",
        &format!("{UNRESOLVED} (UNRESOLVED since"),
        &format!("metrics            127.0.0.1:{port}"),
    ] {
        assert!(
            table.contains(expected),
            "status table: expected {expected:?}, observed:\n{table}"
        );
    }
    let packets: Vec<&str> = table
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("REASON"))
        .take_while(|l| !l.is_empty())
        .collect();
    assert!(
        packets.len() > 2 && packets.iter().all(|l| l.len() == packets[0].len()),
        "status: expected the packet counts right-aligned (every line as long), observed:\n{}",
        packets.join("\n")
    );

    let relays = f.json(&["relay", "list", "--format", "json"]);
    assert!(
        relays
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["host"] == UNRESOLVED
                && r["prefix"].is_null()
                && text(&r["note"]).starts_with("unresolved since")),
        "relay list: expected {UNRESOLVED} listed as unresolved, observed {relays}"
    );
    let reload = f.ok(&["reload"]);
    assert!(
        stderr(&reload).contains(&needle),
        "reload: expected the warning {needle:?}, observed {}",
        show(&reload)
    );

    assert_eq!(metric(port, "smtpguard_relay_hosts_unresolved"), Some(1.0));
    assert_eq!(
        metric(port, "smtpguard_subscriber_ranges{mode=\"monitor\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(port, "smtpguard_subscriber_ranges{mode=\"enforce\"}"),
        Some(2.0)
    );
    assert_eq!(metric(port, "smtpguard_escalated_hosts"), Some(0.0));
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let last = metric(port, "smtpguard_last_snapshot_timestamp_seconds").unwrap_or(0.0);
        if last >= before.floor() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "expected a snapshot within 5 s (interval 1s); last snapshot at {last}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// `exempt update` changes an exemption in place: the subscriber keeps getting through while
/// it changes, and the audit entry has the old and the new values. Runtime relays follow the
/// config's overlap rule, and a config relay is removed in the config file, as a config
/// exemption is.
#[test]
fn exempt_update_keeps_the_exemption_and_relays_follow_the_config_rules() {
    let f = Fixture::new("exempt-update");
    std::fs::write(
        &f.config,
        f.config_text("[[exemptions]]\nprefix = \"100.64.10.0/24\"\nreason = \"static\"\n"),
    )
    .unwrap();
    let _agent = f.start();
    f.ok(&[
        "exempt",
        "add",
        SUBSCRIBER,
        "--reason",
        "first",
        "--ticket",
        "T-1",
        "--expires",
        "1h",
    ]);
    f.assert_open("after exempt add");

    // Connections run all through the updates: none may be dropped.
    let stop = AtomicBool::new(false);
    let attempts = thread::scope(|scope| {
        let connecting = scope.spawn(|| {
            let mut observed = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                observed.push(f.smtp(OPEN));
            }
            observed
        });
        for round in 0..5 {
            let reason = format!("round {round}");
            f.ok(&["exempt", "update", SUBSCRIBER, "--reason", &reason]);
        }
        f.ok(&[
            "exempt",
            "update",
            SUBSCRIBER,
            "--ticket",
            "T-2",
            "--no-expiry",
        ]);
        stop.store(true, Ordering::Relaxed);
        connecting.join().unwrap()
    });
    assert!(
        !attempts.is_empty() && attempts.iter().all(|a| *a == Connect::Greeted),
        "during the updates: expected every connection greeted, observed {attempts:?}"
    );

    let list = f.json(&["exempt", "list", "--format", "json"]);
    let row = list
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["prefix"] == SUBSCRIBER)
        .cloned()
        .unwrap_or_else(|| panic!("exempt list: expected {SUBSCRIBER}, observed {list}"));
    assert_eq!(
        (
            text(&row["reason"]),
            text(&row["ticket"]),
            row["expires"].clone()
        ),
        ("round 4".to_owned(), "T-2".to_owned(), Value::Null),
        "exempt list after the updates: observed {row}"
    );
    let actions = f.audit_actions(SUBSCRIBER);
    assert_eq!(
        actions,
        [vec!["exemption-added"], vec!["exemption-updated"; 6]].concat(),
        "audit of {SUBSCRIBER}"
    );
    let last = f
        .audit_entries("exemption-updated")
        .last()
        .map(|e| text(&e["detail"]))
        .unwrap_or_default();
    assert!(
        last.contains("was: reason \"round 4\"; ticket \"T-1\"; expires 20")
            && last.contains("now: reason \"round 4\"; ticket \"T-2\"; expires never"),
        "the update's audit entry: expected the old and the new values, observed {last:?}"
    );

    let config = f.cli(&["exempt", "update", "100.64.10.0/24", "--reason", "x"]);
    assert_fails(
        &config,
        1,
        &[
            "100.64.10.0/24 is exempt in the config file",
            "change it there and reload",
        ],
        "exempt update of a config exemption",
    );
    let nothing = f.cli(&["exempt", "update", SUBSCRIBER]);
    assert_fails(
        &nothing,
        1,
        &["nothing to change for", "--no-expiry"],
        "an empty update",
    );

    let overlapping = f.cli(&["relay", "add", "192.0.2.0/24"]);
    assert_fails(
        &overlapping,
        1,
        &["192.0.2.0/24 overlaps the relay 192.0.2.25/32 (in the config file"],
        "relay add over a config relay",
    );
    f.ok(&["relay", "add", "198.18.0.0/16"]);
    let inside = f.cli(&["relay", "add", "198.18.7.0/24"]);
    assert_fails(
        &inside,
        1,
        &["198.18.7.0/24 overlaps the relay 198.18.0.0/16 (added at run time)"],
        "relay add inside a runtime relay",
    );
    let config_relay = f.cli(&["relay", "rm", "192.0.2.25/32"]);
    assert_fails(
        &config_relay,
        1,
        &[
            "192.0.2.25/32 is a relay in the config file",
            "remove it there and reload",
        ],
        "relay rm of a config relay",
    );
}

/// An `events` client whose agent goes away hears of it: exit code 2 and a message, or with
/// --follow a note, and it connects again when the agent is back.
#[test]
fn events_end_or_follow_when_the_agent_goes_away() {
    let f = Fixture::new("events-away");
    let agent = f.start();
    let events = |name: &str, follow: bool| {
        let stderr = f.scratch.file(name);
        let mut command = Command::new(BIN);
        command.args(["--config", f.config_str(), "events"]);
        if follow {
            command.arg("--follow");
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        (ChildGuard(child), stderr)
    };
    let (mut plain, plain_err) = events("plain.err", false);
    let (mut follow, follow_err) = events("follow.err", true);
    // Both are subscribed once the agent counts them among its connections; a second is
    // plenty on this machine, and a late one only makes the test wait, not pass.
    thread::sleep(Duration::from_secs(1));
    agent.terminate();

    let status = wait_exit(&mut plain.0, Duration::from_secs(5));
    let said = std::fs::read_to_string(&plain_err).unwrap();
    assert!(
        status.and_then(|s| s.code()) == Some(2) && said.contains("went away"),
        "events when the agent stops: expected exit code 2 and \"went away\", observed \
         {status:?}, stderr {said:?}"
    );
    let waiting = || std::fs::read_to_string(&follow_err).unwrap();
    eventually(Duration::from_secs(5), "events --follow waiting", || {
        waiting().contains("went away; waiting for it")
    });
    assert!(
        follow.0.try_wait().unwrap().is_none(),
        "events --follow ended when the agent stopped: {}",
        waiting()
    );
    let _agent = f.start();
    eventually(
        Duration::from_secs(5),
        "events --follow connected again",
        || waiting().contains("connected to the agent at"),
    );
}

/// `detach` asks first, and refuses without --yes where it cannot ask; with no agent running
/// it removes the pinned links itself (the package's prerm case), and `audit` reads the store
/// while the agent is stopped.
#[test]
fn detach_confirms_and_works_without_an_agent_and_audit_reads_a_stopped_agents_store() {
    let f = Fixture::new("detach-offline");
    let agent = f.start();
    let unconfirmed = f.cli(&["detach"]);
    assert_fails(
        &unconfirmed,
        1,
        &["error:", "--yes"],
        "detach without --yes off a terminal",
    );
    f.assert_blocked("after a detach that was not confirmed");

    agent.terminate();
    f.assert_blocked("after the agent stopped (the pinned links stay)");
    let detach = f.ok(&["detach", "--yes"]);
    assert!(
        stderr(&detach).contains("removing the pinned links without it"),
        "detach without an agent: expected a note, observed {}",
        show(&detach)
    );
    f.assert_open("after detach without an agent");
    assert!(
        f.pins.0.attachments().unwrap_or_default().is_empty(),
        "after detach without an agent: expected no pinned links, observed {:?}",
        f.pins.0.attachments()
    );
    let audit = f.cli(&["audit", "--format", "json"]);
    let entries = json(&audit);
    assert!(
        entries
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "detached"
                && e["subject"] == SUBSCRIBER_INTERFACE
                && e["who"] == "root"),
        "audit with the agent stopped: expected the detach by root, observed {}",
        show(&audit)
    );
}

/// The state folder is 0750 and every file the agent makes in it 0640, under a umask that
/// would give everyone access (000) and one that would shut the group out (077).
#[test]
fn the_state_folder_and_its_files_have_their_modes_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt as _;
    let f = Fixture::new("state-modes");
    let state = f.scratch.file("state");
    for umask in ["000", "077"] {
        let _ = std::fs::remove_dir_all(&state);
        let mut wrapper = Command::new("sh");
        wrapper.args(["-c", &format!("umask {umask}; exec \"$0\" \"$@\""), BIN]);
        let mut agent = Agent::spawn(wrapper, &f.config, &f.scratch.file("agent.log"));
        agent.wait_ready();
        // A write, so the store's journal files exist too.
        f.ok(&["exempt", "add", SUBSCRIBER, "--reason", "modes"]);
        let mode =
            |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o7777;
        let mut observed = vec![("state".to_owned(), mode(&state))];
        let mut names: Vec<String> = std::fs::read_dir(&state)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        for name in &names {
            observed.push((name.clone(), mode(&state.join(name))));
        }
        let expected: Vec<(String, u32)> = std::iter::once(("state".to_owned(), 0o750))
            .chain(names.iter().map(|name| (name.clone(), 0o640)))
            .collect();
        assert!(
            names.iter().any(|n| n == "smtpguard.db") && names.iter().any(|n| n == "agent.lock"),
            "umask {umask}: expected the store and the lock in the state folder, observed {names:?}"
        );
        assert_eq!(
            observed
                .iter()
                .map(|(n, m)| format!("{n} {m:04o}"))
                .collect::<Vec<_>>(),
            expected
                .iter()
                .map(|(n, m)| format!("{n} {m:04o}"))
                .collect::<Vec<_>>(),
            "umask {umask}: modes in the state folder"
        );
        agent.terminate();
    }
}

#[test]
fn fifty_concurrent_exempt_adds_are_all_kept() {
    let f = Fixture::new("fifty");
    let agent = f.start();
    let outputs: Vec<(usize, Output)> = thread::scope(|scope| {
        let handles: Vec<_> = (0..50)
            .map(|i| {
                let f = &f;
                scope.spawn(move || {
                    let prefix = format!("100.64.1.{i}/32");
                    let reason = format!("r{i}");
                    (i, f.cli(&["exempt", "add", &prefix, "--reason", &reason]))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let failed: Vec<String> = outputs
        .iter()
        .filter(|(_, o)| !o.status.success())
        .map(|(i, o)| format!("100.64.1.{i}/32: {}", show(o)))
        .collect();
    assert!(
        failed.is_empty(),
        "50 concurrent exempt adds: expected all exit 0, {} failed:\n{}",
        failed.len(),
        failed.join("\n")
    );

    let runtime_count = |list: &Value| {
        list.as_array()
            .map(|rows| rows.iter().filter(|r| r["source"] == "runtime").count())
    };
    let list = f.json(&["exempt", "list", "--format", "json"]);
    assert_eq!(
        runtime_count(&list),
        Some(50),
        "exempt list: expected 50 runtime entries, observed {list}"
    );
    for i in 0..50 {
        let prefix = format!("100.64.1.{i}/32");
        let row = list
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["prefix"] == prefix);
        assert!(
            row.is_some_and(|r| r["reason"] == format!("r{i}")),
            "exempt list: expected {prefix} with reason r{i}, observed {row:?}"
        );
    }
    let audit = f.json(&["audit", "--format", "json"]);
    let added = audit.as_array().map(|a| {
        a.iter()
            .filter(|e| e["action"] == "exemption-added")
            .count()
    });
    assert_eq!(
        added,
        Some(50),
        "audit: expected 50 exemption-added, observed {audit}"
    );
    for i in (0..50).step_by(10) {
        let src = format!("100.64.1.{i}");
        let check = f.json(&["check", &src, addr::MX_V4, "--format", "json"]);
        assert!(
            check["reason"] == "exempt" && check["kernel_agrees"] == true,
            "check {src} {}: expected reason exempt and kernel_agrees true, observed {check}",
            addr::MX_V4
        );
    }

    agent.terminate();
    let _agent = f.start();
    let list = f.json(&["exempt", "list", "--format", "json"]);
    assert_eq!(
        runtime_count(&list),
        Some(50),
        "after a restart: expected 50 runtime entries, observed {list}"
    );
    let status = f.json(&["status", "--format", "json"]);
    // The IPv4 source trie: the fixture's one IPv4 subscriber range and the 50 exemptions.
    assert_eq!(
        map_entries(&status, "SOURCES_V4"),
        Some(51),
        "after a restart: expected SOURCES_V4 entries 51, observed {status}"
    );
}

#[test]
fn cli_errors_have_clear_messages_and_exit_codes() {
    let f = Fixture::new("errors");
    let _agent = f.start();

    for (prefix, needle) in [
        ("banana", "\"banana\" is not a prefix"),
        ("100.64.0.1/10", "100.64.0.1/10 has host bits set"),
        ("10.0.0.0/8", "10.0.0.0/8 is outside every subscriber range"),
    ] {
        let output = f.cli(&["exempt", "add", prefix, "--reason", "r"]);
        assert_fails(
            &output,
            1,
            &["error:", needle],
            &format!("exempt add {prefix}"),
        );
    }

    f.ok(&["exempt", "add", SUBSCRIBER, "--reason", "r"]);
    let output = f.cli(&["exempt", "add", SUBSCRIBER, "--reason", "again"]);
    assert_fails(
        &output,
        1,
        &["error:", &format!("{SUBSCRIBER} already exists")],
        "duplicate exempt add",
    );

    // A usage error is bad input too: exit code 1 (2 means only "agent unreachable").
    let output = f.cli(&["exempt", "add", "100.64.0.8/32"]);
    assert_fails(
        &output,
        1,
        &["error:", "--reason"],
        "exempt add without --reason",
    );

    let output = f.cli(&["exempt", "rm", "100.64.0.4/32"]);
    assert_fails(
        &output,
        1,
        &["error:", "there is no exemption 100.64.0.4/32"],
        "exempt rm of an unknown prefix",
    );

    let output = f.cli(&["check", "banana", addr::MX_V4]);
    assert_fails(
        &output,
        1,
        &["error:", "\"banana\" is not an IP address"],
        "check banana",
    );
    let output = f.cli(&["check", addr::SUBSCRIBER_V4, "198.51.100.300"]);
    assert_fails(
        &output,
        1,
        &["error:", "198.51.100.300"],
        "check with a bad destination",
    );

    let output = f.cli(&[
        "exempt",
        "add",
        "100.64.0.8/32",
        "--reason",
        "r",
        "--expires",
        "soon",
    ]);
    assert_fails(
        &output,
        1,
        &["error:", "\"soon\""],
        "exempt add --expires soon",
    );

    // Nothing of the above changed the store.
    let list = f.json(&["exempt", "list", "--format", "json"]);
    let prefixes: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["prefix"].as_str())
        .collect();
    assert_eq!(
        prefixes,
        [SUBSCRIBER],
        "exempt list after the refused commands"
    );

    let missing = f.scratch.file("no-such-folder/sg.sock");
    let output = smtpguard(&["--socket", missing.to_str().unwrap(), "status"]);
    assert_fails(
        &output,
        2,
        &["error:", "cannot reach the smtpguard agent"],
        "status with no agent",
    );

    let empty = f.scratch.file("empty-interfaces.toml");
    let text = f
        .config_text("")
        .replace(&format!("[\"{SUBSCRIBER_INTERFACE}\"]"), "[]")
        .replace(
            f.scratch.file("state").to_str().unwrap(),
            f.scratch.file("state-empty").to_str().unwrap(),
        );
    std::fs::write(&empty, text).unwrap();
    let output = smtpguard(&["--config", empty.to_str().unwrap(), "run"]);
    assert_fails(
        &output,
        1,
        &["error:", empty.to_str().unwrap(), "interfaces"],
        "run with interfaces = []",
    );

    let output = f.cli(&["run"]);
    assert_fails(
        &output,
        1,
        &["error:", "already owns the state folder"],
        "a second run on the same state folder",
    );
    // The refused second agent left the first one alone.
    f.ok(&["status"]);
}

#[test]
fn detach_removes_enforcement_and_stops_the_agent() {
    let f = Fixture::new("detach");
    let mut agent = f.start();
    f.assert_blocked("attached");

    let output = f.ok(&["detach", "--yes"]);
    let status = agent.wait_exit(Duration::from_secs(5));
    assert!(
        status.is_some_and(|s| s.success()),
        "after detach: expected the agent to exit 0 by itself within 5 s, observed {status:?}; \
         detach said {}; log:\n{}",
        show(&output),
        agent.log()
    );
    assert!(
        f.pins.0.attachments().unwrap_or_default().is_empty(),
        "after detach: expected no pinned links, observed {:?}",
        f.pins.0.attachments()
    );
    f.assert_open("after detach");

    // A new agent reads the detach from the store's audit log (and enforces again).
    let _agent = f.start();
    let actions = f.audit_actions(SUBSCRIBER_INTERFACE);
    assert_eq!(
        actions,
        ["detached"],
        "audit after detach: expected one detached entry for {SUBSCRIBER_INTERFACE}, observed \
         {actions:?}"
    );
    f.assert_blocked("a new agent after detach");
}

/// The report as JSON rows keyed by host.
fn report_rows(fixture: &Fixture, args: &[&str]) -> Vec<Value> {
    let mut full = vec!["report", "--format", "json"];
    full.extend_from_slice(args);
    fixture
        .json(&full)
        .as_array()
        .cloned()
        .expect("the JSON report is an array")
}

fn row<'a>(rows: &'a [Value], host: &str) -> &'a Value {
    rows.iter().find(|r| r["host"] == host).unwrap_or_else(|| {
        panic!(
            "no row for {host} in {}",
            serde_json::to_string_pretty(rows).unwrap()
        )
    })
}

/// The host the three IPv6 addresses of `report_classifies_real_traffic...` belong to.
const IPV6_HOST: &str = "2001:db8:1000::/64";

#[test]
fn report_classifies_real_traffic_and_survives_a_restart() {
    let f = Fixture::new("report");
    let extra = "[[exemptions]]\nprefix = \"100.64.10.0/24\"\nreason = \"business static block\"\n[report]\ninterval = \"1s\"\n";
    std::fs::write(&f.config, f.config_text(extra)).unwrap();
    let (bot, client, business) = (ip("100.64.0.2"), ip("100.64.0.3"), ip("100.64.10.5"));
    let ipv6_hosts = [
        ip("2001:db8:1000::2"),
        ip("2001:db8:1000::3"),
        ip("2001:db8:1000::4"),
    ];
    for (address, len) in [
        ("100.64.0.3", "24"),
        ("100.64.10.5", "32"),
        ("2001:db8:1000::3", "64"),
        ("2001:db8:1000::4", "64"),
    ] {
        let mut args = vec!["addr", "add"];
        let with_len = format!("{address}/{len}");
        args.extend_from_slice(&[&with_len, "dev", "eth0"]);
        if address.contains(':') {
            args.push("nodad");
        }
        f.lab.subscriber.ip(&args).unwrap();
    }
    // Replies to the business host find their way back to the subscriber namespace.
    f.lab
        .gateway
        .ip(&["route", "add", "100.64.10.5/32", "via", addr::SUBSCRIBER_V4])
        .unwrap();
    let agent = f.start();
    let started =
        humantime::format_rfc3339_seconds(std::time::SystemTime::now() - Duration::from_secs(1))
            .to_string();

    // The bot: one attempt to each of 30 MX hosts, all at once. The client: 5 attempts to one
    // MX. The business: exempt, so it delivers. Three IPv6 addresses of one /64: 2 attempts
    // each.
    thread::scope(|scope| {
        for n in 0..30u8 {
            let f = &f;
            scope.spawn(move || {
                assert!(!attempt_from(
                    f,
                    bot,
                    IpAddr::from([198, 51, 100, 10 + n]),
                    BLOCKED
                ))
            });
        }
    });
    for _ in 0..5 {
        assert!(
            !attempt_from(&f, client, mx(), BLOCKED),
            "the client is blocked"
        );
    }
    assert!(
        attempt_from(&f, business, mx(), OPEN),
        "the exempt business host delivers"
    );
    for host in ipv6_hosts {
        for _ in 0..2 {
            assert!(
                !attempt_from(&f, host, ip(addr::MX_V6), BLOCKED),
                "{host} is blocked"
            );
        }
    }
    // Everything is in the history once a snapshot after the traffic has run (every second
    // here; later under load): wait for the counts to be whole, then check everything.
    let rows = eventually_observed(
        Duration::from_secs(20),
        "every attempt in the history",
        || report_rows(&f, &["--since", "1h"]),
        |rows| {
            let attempts = |host: &str| {
                rows.iter()
                    .find(|r| r["host"] == host)
                    .and_then(|r| r["attempts"].as_u64())
            };
            // At least: a SYN the kernel retransmits (after 1 s) while a loaded machine has
            // not yet closed the timed-out socket is an attempt too (see `sent_once`).
            attempts("100.64.0.2") >= Some(30)
                && attempts("100.64.0.3") >= Some(5)
                && attempts(IPV6_HOST) >= Some(6)
        },
    );
    let summary: Vec<(String, String, u64)> = rows
        .iter()
        .map(|r| {
            (
                r["host"].as_str().unwrap().to_owned(),
                r["class"].as_str().unwrap().to_owned(),
                r["attempts"].as_u64().unwrap(),
            )
        })
        .collect();
    // Each attempt's SYN, and at most one retransmission of it.
    let sent_once = |row: &Value, attempts: u64| {
        let counted = row["attempts"].as_u64().unwrap();
        assert!(
            (attempts..=2 * attempts).contains(&counted),
            "{attempts} attempts counted as {counted}: {row}"
        );
        counted
    };
    let bot_row = row(&rows, "100.64.0.2");
    let bot_attempts = sent_once(bot_row, 30);
    assert_eq!(
        summary
            .first()
            .map(|(host, class, _)| (host.as_str(), class.as_str())),
        Some(("100.64.0.2", "bot")),
        "the bot is on top: {summary:?}"
    );
    let distinct = bot_row["distinct_destinations"].as_u64().unwrap();
    assert!(
        (24..=36).contains(&distinct),
        "30 destinations estimated as {distinct}"
    );
    assert_eq!(bot_row["subscriber_prefix"], "100.64.0.0/10");
    assert_eq!(bot_row["mode"], "enforce");
    assert_eq!(bot_row["dropped"], bot_attempts);
    assert_eq!(row(&rows, "100.64.0.3")["class"], "misconfigured-client");
    sent_once(row(&rows, "100.64.0.3"), 5);
    assert_eq!(row(&rows, "100.64.10.5")["class"], "exempt-sender");
    assert_eq!(row(&rows, "100.64.10.5")["dropped"], 0);
    // Judged then: the exempt host as exempt (its range enforces), the bot's destinations
    // as the sketch's estimate.
    assert_eq!(row(&rows, "100.64.10.5")["mode"], "exempt");
    assert_eq!(bot_row["distinct_destinations_estimated"], true);
    // The three IPv6 addresses are one host, their /64: a subscriber's whole prefix.
    let lan = row(&rows, IPV6_HOST);
    assert_eq!(lan["hosts"].as_u64(), Some(1));
    sent_once(lan, 6);
    assert_eq!(lan["class"], "misconfigured-client", "6 attempts to one MX");
    assert!(
        ipv6_hosts
            .iter()
            .all(|h| !rows.iter().any(|r| r["host"] == h.to_string())),
        "no row for a single IPv6 address: {rows:?}"
    );
    // Grouped by /64, it is the same row.
    let grouped = report_rows(&f, &["--since", "1h", "--group", "/64"]);
    assert_eq!(row(&grouped, IPV6_HOST)["attempts"], lan["attempts"]);

    // CSV carries the same rows and fields.
    let csv =
        String::from_utf8(f.ok(&["report", "--since", "1h", "--format", "csv"]).stdout).unwrap();
    let records = report_csv(&csv);
    assert_eq!(records.len(), rows.len());
    assert_eq!(&records[0][0], "100.64.0.2");
    assert_eq!(records[0][4], bot_attempts.to_string());
    assert_eq!(&records[0][13], "bot");

    // A window before the traffic is empty.
    let before = report_rows(
        &f,
        &[
            "--from",
            "2020-01-01T00:00:00Z",
            "--to",
            "2020-01-02T00:00:00Z",
        ],
    );
    assert!(before.is_empty(), "{before:?}");

    // The same window reads the same after a restart (no interval counted twice).
    let until =
        humantime::format_rfc3339_seconds(std::time::SystemTime::now() + Duration::from_secs(3600))
            .to_string();
    let window = ["--from", started.as_str(), "--to", until.as_str()];
    // Once the history has stopped moving (a late retransmitted SYN lands in a later
    // snapshot): two reports a few snapshots apart agree.
    let mut first = report_rows(&f, &window);
    eventually(Duration::from_secs(20), "a settled history", || {
        thread::sleep(Duration::from_millis(2_500));
        let later = report_rows(&f, &window);
        std::mem::replace(&mut first, later) == first
    });
    agent.terminate();
    let agent = f.start();
    thread::sleep(Duration::from_millis(2_500));
    let again = report_rows(&f, &window);
    assert_eq!(again, first, "the report changed across a restart");

    // With a retention of one second, the history is pruned at the next snapshot.
    agent.terminate();
    let extra = format!("{extra}retention = \"1s\"\n");
    std::fs::write(&f.config, f.config_text(&extra)).unwrap();
    let _agent = f.start();
    thread::sleep(Duration::from_millis(2_500));
    let pruned = report_rows(&f, &["--since", "1h"]);
    assert!(
        pruned.is_empty(),
        "history older than the retention stays: {pruned:?}"
    );
}

#[test]
fn reoffending_bots_in_monitor_ranges_are_escalated_and_released() {
    let f = Fixture::new("escalate");
    let hook_out = f.scratch.file("hook.json");
    let hook = f.scratch.file("on-bot.sh");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\ncat >> {}\necho >> {}\n",
            hook_out.display(),
            hook_out.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let extra = format!(
        "[[subscribers]]\nprefix = \"100.127.0.0/16\"\nmode = \"monitor\"\n[report]\ninterval = \"1s\"\nbot_window = \"2s\"\nescalate = true\nescalate_for = \"2s\"\nreoffense_gap = \"1s\"\non_bot = \"{}\"\n",
        hook.display()
    );
    std::fs::write(&f.config, f.config_text(&extra)).unwrap();
    let monitored = ip("100.127.0.9");
    f.lab
        .subscriber
        .ip(&["addr", "add", "100.127.0.9/32", "dev", "eth0"])
        .unwrap();
    f.lab
        .gateway
        .ip(&["route", "add", "100.127.0.9/32", "via", addr::SUBSCRIBER_V4])
        .unwrap();
    let _agent = f.start();

    // Events as a tool sees them: `smtpguard events --format json`, line by line.
    let mut events = Command::new(BIN)
        .args(["--config", f.config_str(), "events", "--format", "json"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (sender, received) = std::sync::mpsc::channel::<Value>();
    let stdout = events.stdout.take().unwrap();
    thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = sender.send(serde_json::from_str(&line).unwrap_or(Value::Null));
        }
    });
    let mut seen: Vec<Value> = Vec::new();
    let mut wait_for = |kind: &str, limit: Duration| -> Value {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(event) = seen
                .iter()
                .find(|e| e["event"] == kind && e["host"] == "100.127.0.9")
                .cloned()
            {
                seen.retain(|e| e != &event);
                return event;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match received.recv_timeout(left) {
                Ok(event) => seen.push(event),
                Err(_) => panic!("no {kind} event within {limit:?}; saw {seen:?}"),
            }
        }
    };
    let burst = |first: u8| {
        thread::scope(|scope| {
            for n in 0..25u8 {
                let f = &f;
                scope.spawn(move || {
                    attempt_from(
                        f,
                        monitored,
                        IpAddr::from([198, 51, 100, first + n]),
                        Duration::from_millis(200),
                    )
                });
            }
        });
    };
    thread::sleep(Duration::from_millis(300)); // the events client is connected

    // Monitor mode: the host's mail passes, and it is counted.
    assert!(
        attempt_from(&f, monitored, mx(), OPEN),
        "monitor mode lets port 25 through"
    );
    // It turns bot: 25 MX hosts at once. Classified, escalated, announced, handed to on_bot.
    burst(10);
    let bot = wait_for("bot", Duration::from_secs(5));
    assert_eq!(bot["class"], "bot");
    let escalated = wait_for("escalated", Duration::from_secs(5));
    assert_eq!(escalated["level"], 0);
    assert!(
        !attempt_from(&f, monitored, mx(), BLOCKED),
        "escalated: blocked for real"
    );
    let listed = f.json(&["escalations", "--format", "json"]);
    assert_eq!(listed[0]["host"], "100.127.0.9", "{listed}");
    eventually(Duration::from_secs(5), "the on_bot program ran", || {
        std::fs::read_to_string(&hook_out)
            .is_ok_and(|text| text.contains("\"host\":\"100.127.0.9\""))
    });
    let hook_row: Value = serde_json::from_str(
        std::fs::read_to_string(&hook_out)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(hook_row["class"], "bot");

    // Lifted by hand: released at once.
    f.ok(&["escalations", "lift", "100.127.0.9"]);
    let ended = wait_for("escalation-ended", Duration::from_secs(2));
    assert_eq!(
        (ended["expired"].as_bool(), ended["by"].as_str()),
        (Some(false), Some("root"))
    );
    assert!(
        attempt_from(&f, monitored, mx(), OPEN),
        "lifted: port 25 passes again"
    );

    // It reoffends once the window has moved on: escalated again, twice as long, and it
    // expires by itself.
    thread::sleep(Duration::from_millis(2_200));
    burst(40);
    let again = wait_for("escalated", Duration::from_secs(6));
    assert_eq!(again["level"], 1, "{again}");
    let (started, until) = (
        humantime::parse_rfc3339(again["at"].as_str().unwrap()).unwrap(),
        humantime::parse_rfc3339(again["until"].as_str().unwrap()).unwrap(),
    );
    assert_eq!(
        until.duration_since(started).unwrap(),
        Duration::from_secs(4),
        "doubled"
    );
    assert!(
        !attempt_from(&f, monitored, mx(), BLOCKED),
        "escalated again"
    );
    let expired = wait_for("escalation-ended", Duration::from_secs(7));
    assert_eq!(expired["expired"], true);
    assert!(
        attempt_from(&f, monitored, mx(), OPEN),
        "released when the escalation ran out"
    );

    // The report names it a reoffender, with its history; the audit has every step.
    let reoffenders = f.json(&[
        "report",
        "--reoffenders",
        "--since",
        "1h",
        "--format",
        "json",
    ]);
    let row = &reoffenders[0];
    assert_eq!(row["host"], "100.127.0.9", "{reoffenders}");
    assert!(row["classifications"].as_u64().unwrap() >= 2);
    assert_eq!(
        (row["escalations"].as_u64(), row["highest_level"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(
        f.audit_actions("100.127.0.9"),
        [
            "escalated",
            "escalation-lifted",
            "escalated",
            "escalation-expired"
        ]
    );
    let _ = events.kill();
    let _ = events.wait();
}

/// The `unlisted_tunnels` of `status --format json` as (interface, kind) pairs.
fn unlisted_tunnels(f: &Fixture) -> Vec<(String, String)> {
    f.json(&["status", "--format", "json"])["unlisted_tunnels"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| (text(&t["interface"]), text(&t["kind"])))
        .collect()
}

fn text(value: &Value) -> String {
    value.as_str().unwrap_or_default().to_owned()
}

fn warning(interface: &str, kind: &str) -> String {
    format!(
        "interface {interface} ({kind}) is up and not in interfaces: traffic it decapsulates is \
         not filtered"
    )
}

#[test]
fn unlisted_tunnels_are_warned_about_and_a_listed_tun_gets_the_l3_entry_point() {
    use smtpguard_tests::lab::{Servers, Tun};
    let f = Fixture::new("tunnels");
    let _submission = Servers::start(&f.lab.internet, &[587]).unwrap();
    let gateway = &f.lab.gateway;
    gateway
        .ip(&[
            "link", "add", "vx9", "type", "vxlan", "id", "9", "dstport", "4789",
        ])
        .unwrap();
    gateway.ip(&["link", "set", "vx9", "up"]).unwrap();
    let tun = Tun::open(gateway, "tun0").unwrap_or_else(|e| panic!("TUN device: {e:#}"));
    let _agent = f.start();

    // Both devices are up and not listed: status (JSON and table) and config check say so.
    let both = [
        ("tun0".to_owned(), "tun".to_owned()),
        ("vx9".to_owned(), "vxlan".to_owned()),
    ];
    assert_eq!(unlisted_tunnels(&f), both, "status: unlisted tunnels");
    let table = f.ok(&["status"]);
    let check = smtpguard(&["config", "check", f.config_str()]);
    for (what, output) in [("status", &table), ("config check", &check)] {
        for (interface, kind) in &both {
            assert!(
                stderr(output).contains(&warning(interface, kind)),
                "{what}: expected the warning about {interface} ({kind}), observed {}",
                show(output)
            );
        }
    }
    assert!(
        check.status.success(),
        "config check: the warnings alone keep exit 0, observed {}",
        show(&check)
    );
    let strict = smtpguard(&["config", "check", f.config_str(), "--strict"]);
    assert_fails(
        &strict,
        1,
        &["2 warnings (--strict)"],
        "config check --strict",
    );

    // A device that is down decapsulates nothing.
    gateway.ip(&["link", "set", "vx9", "down"]).unwrap();
    assert_eq!(
        unlisted_tunnels(&f),
        both[..1],
        "status after vx9 went down"
    );

    // Listed with the default attach = "xdp": the TUN device gets the L3 TC entry point.
    let listed = f.config_text_listing("", Some(gateway.name()), &[SUBSCRIBER_INTERFACE, "tun0"]);
    std::fs::write(&f.config, listed).unwrap();
    f.ok(&["reload"]);
    let status = f.json(&["status", "--format", "json"]);
    let attached: Vec<(String, String)> = status["attached"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| (text(&a["interface"]), text(&a["attach"])))
        .collect();
    assert_eq!(
        attached,
        [
            (SUBSCRIBER_INTERFACE.to_owned(), "xdp".to_owned()),
            ("tun0".to_owned(), "tc-l3".to_owned()),
        ],
        "status after listing tun0 with attach = \"xdp\"; log:\n{}",
        f.log()
    );
    assert_eq!(
        status["unlisted_tunnels"].as_array().map(Vec::len),
        Some(0),
        "status after listing tun0: {status}"
    );
    assert!(
        f.log()
            .contains("no Ethernet header (link type none): smtpguard_tc_l3 at TC ingress"),
        "expected the agent to log why tun0 got the L3 entry point; log:\n{}",
        f.log()
    );
    let check = smtpguard(&["config", "check", f.config_str(), "--strict"]);
    assert!(
        check.status.success(),
        "config check --strict with tun0 listed and vx9 down: expected exit 0, observed {}",
        show(&check)
    );

    // And it filters what the VPN server writes into it.
    let (vpn, mx) = (ip(addr::VPN_SUBSCRIBER_V4), mx());
    for (port, expected) in [(25, false), (587, true)] {
        let timeout = if expected { OPEN } else { BLOCKED };
        let answered = tun
            .syn_answered(vpn, mx, port, timeout)
            .unwrap_or_else(|e| panic!("SYN to port {port} through tun0: {e:#}"));
        assert_eq!(
            answered,
            expected,
            "SYN {vpn} -> {mx}:{port} written into tun0: expected answered = {expected}, \
             observed {answered}; log:\n{}",
            f.log()
        );
    }
}

/// Kills a CLI process left running by a failed test.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_exit(child: &mut std::process::Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// `smtpguard_interface_packets_total{interface,reason}` of the agent at `port`.
fn interface_packets(port: u16, interface: &str, reason: &str) -> Option<f64> {
    metric(
        port,
        &format!(
            "smtpguard_interface_packets_total{{interface=\"{interface}\",reason=\"{reason}\"}}"
        ),
    )
}

/// Judged frames are counted by the interface they arrived on, each interface in its own
/// series, which goes on when the interface is created again and when the agent restarts.
/// Only sub0 sees the subscriber's attempts and only inet0 strangers' SYNs, so each of their
/// series equals the gateway-wide count of its reason, which the pinned counters keep.
#[test]
fn judged_frames_are_counted_by_interface() {
    use smtpguard_tests::lab::{INTERNET_INTERFACE, connect};
    let f = Fixture::new("ifcount");
    let port = free_port();
    let gateway = f.lab.gateway.name();
    let both = [SUBSCRIBER_INTERFACE, INTERNET_INTERFACE];
    let config = f.config_text_listing("", Some(gateway), &both);
    std::fs::write(&f.config, with_metrics_port(&config, port)).unwrap();
    let agent = f.start();
    let total = |reason: &str, verdict: &str| {
        let name = format!("smtpguard_packets_total{{reason=\"{reason}\",verdict=\"{verdict}\"}}");
        metric(port, &name)
    };
    let check = |what: &str| {
        let observed = [
            (SUBSCRIBER_INTERFACE, "dropped"),
            (SUBSCRIBER_INTERFACE, "not-subscriber"),
            (INTERNET_INTERFACE, "dropped"),
            (INTERNET_INTERFACE, "not-subscriber"),
        ]
        .map(|(interface, reason)| interface_packets(port, interface, reason));
        let dropped = total("dropped", "drop");
        let strangers = total("not-subscriber", "pass");
        assert_eq!(
            observed,
            [dropped, Some(0.0), Some(0.0), strangers],
            "{what}: sub0 dropped, sub0 not-subscriber, inet0 dropped, inet0 not-subscriber"
        );
        (dropped.unwrap(), strangers.unwrap())
    };
    assert_eq!(check("at start"), (0.0, 0.0));

    // The subscriber's attempts arrive on sub0 and are dropped there; a stranger's SYN to
    // port 25 of the subscriber arrives on inet0 and is judged as not a subscriber's.
    f.assert_blocked("subscriber to the MX");
    let subscriber = ip(addr::SUBSCRIBER_V4);
    let stranger = connect(&f.lab.internet, subscriber, 25, Duration::from_secs(1));
    assert!(
        !matches!(stranger, Connect::Greeted),
        "nothing listens on the subscriber's port 25: {stranger:?}"
    );
    let (dropped, strangers) = check("after both");
    assert!(dropped >= 1.0 && strangers >= 1.0, "{dropped} {strangers}");
    // `status` has the same figures.
    let status = f.json(&["status", "--format", "json"]);
    let by_interface = &status["judged_packets_by_interface"];
    assert_eq!(
        by_interface[SUBSCRIBER_INTERFACE]["dropped"], dropped as u64,
        "{status}"
    );
    assert_eq!(
        by_interface[INTERNET_INTERFACE]["not-subscriber"],
        strangers as u64
    );
    assert_eq!(status["judged_packets_unattributed"]["dropped"], 0);
    assert_eq!(
        metric(
            port,
            "smtpguard_interface_packets_unattributed_total{reason=\"dropped\"}"
        ),
        Some(0.0)
    );

    // Created again, sub0 has a new ifindex and keeps its series.
    f.lab.delete_subscriber_link().unwrap();
    f.lab.create_subscriber_link().unwrap();
    eventually(Duration::from_secs(10), "sub0 attached again", || {
        metric(port, "smtpguard_reattachments_total").is_some_and(|count| count >= 1.0)
    });
    f.assert_blocked("on sub0 created again");
    let (recreated, _) = check("after sub0 was created again");
    assert!(recreated > dropped, "{recreated} after {dropped}");

    // A restarted agent takes the slots over from the pinned table: the series go on.
    agent.terminate();
    let _agent = f.start();
    assert_eq!(check("after a restart"), (recreated, strangers));
    f.assert_blocked("after the restart");
    assert!(check("after a drop past the restart").0 > recreated);
}

/// `check` names the range's action and why it applies: the range is enforced, or the host
/// is escalated; for a monitored host, that it does not apply.
#[test]
fn check_explains_which_action_applies() {
    let f = Fixture::new("check-action");
    let config = f.config_text("").replacen(
        "prefix = \"100.64.0.0/10\"\n",
        "prefix = \"100.64.0.0/10\"\naction = \"reject\"\nreject_with = \"icmp-admin-prohibited\"\n",
        1,
    );
    std::fs::write(&f.config, config).unwrap();
    let _agent = f.start();
    let check = f.json(&[
        "check",
        addr::SUBSCRIBER_V4,
        addr::MX_V4,
        "--format",
        "json",
    ]);
    assert!(
        check["reason"] == "rejected"
            && check["verdict"] == "tx"
            && check["action_applies"] == true
            && check["escalated"] == false
            && text(&check["action"]).starts_with("reject with icmp-admin-prohibited (at most 10"),
        "check {}: expected the reject action to apply, observed {check}",
        addr::SUBSCRIBER_V4
    );
    let table = f.ok(&["check", addr::SUBSCRIBER_V4, addr::MX_V4]);
    let printed = String::from_utf8_lossy(&table.stdout).into_owned();
    assert!(
        printed
            .lines()
            .any(|l| l.contains("action") && l.contains("the range is enforced")),
        "check as a table: expected an action row, observed:\n{printed}"
    );
}
