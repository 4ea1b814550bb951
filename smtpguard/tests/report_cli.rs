//! The abuse desk's verbs through the agent (issue #14): `report`, `pbl export` and
//! `escalations` for a member of `socket_group` who cannot read the state folder, a report of
//! 200,000 rows streamed to a slow reader without the agent holding it, errors before and
//! during a stream, and the state folder's modes whatever the umask; and the figures as what
//! they are: attempts per minute over the time a host was active, distinct destinations marked
//! as estimates, the mode a host was judged under at the time. The real agent in a lab,
//! with history written through the store's API before it starts. Needs root (namespaces,
//! veth, bpf, groupadd, setpriv).

mod harness;

use std::{
    collections::HashMap,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{IpAddr, Ipv4Addr},
    os::unix::{fs::PermissionsExt as _, net::UnixStream},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant, SystemTime},
};

use harness::*;
use serde_json::{Value, json};
use smtpguard::store::{HostInterval, SnapshotState, Store};
use smtpguard_common::{Reason, host::ipv4_mapped, sketch};

const NOBODY: u32 = 65534;

fn key(host: IpAddr) -> [u8; 16] {
    match host {
        IpAddr::V4(v4) => ipv4_mapped(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// One host's interval of a minute ending `ago` before `now`, with `attempts` SYNs spread over
/// `destinations` (IPv4 addresses as numbers).
fn interval(
    host: IpAddr,
    now: SystemTime,
    ago: Duration,
    attempts: u64,
    destinations: std::ops::Range<u32>,
) -> HostInterval {
    let (registers, exact_destinations) =
        sketch::recorded(destinations.map(|d| ipv4_mapped(d.to_be_bytes())));
    let end = now - ago;
    HostInterval {
        host: key(host),
        start: end - Duration::from_secs(60),
        end,
        first_seen: end - Duration::from_secs(50),
        last_seen: end - Duration::from_secs(10),
        attempts,
        segments: attempts,
        dropped: attempts,
        limited: 0,
        sketch: registers,
        exact_destinations,
        last_dst: ipv4_mapped([198, 51, 100, 7]),
        last_port: 25,
        last_reason: Reason::Dropped as u16,
    }
}

/// Writes `intervals` into the store of the fixture's state folder as one snapshot.
fn record(f: &Fixture, intervals: &[HostInterval], now: SystemTime) -> Store {
    let mut store = Store::open(&f.scratch.file("state")).unwrap();
    store
        .record_snapshot(
            intervals,
            &HashMap::new(),
            SnapshotState {
                epoch: 0,
                last: now,
            },
        )
        .unwrap();
    store
}

/// Whether user nobody (with the socket's group) can read `path`.
fn nobody_reads(path: &Path, gid: u32) -> bool {
    Command::new("setpriv")
        .args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            &format!("--groups={gid}"),
            "cat",
        ])
        .arg(path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

#[test]
fn the_abuse_desk_needs_only_the_socket() {
    let f = Fixture::new("desk");
    let group = TempGroup::new("desk");
    let extra = "[[exemptions]]\nprefix = \"100.64.10.0/24\"\nreason = \"business static block\"\n\
                 [report]\nreoffense_gap = \"1h\"\n";
    std::fs::write(
        &f.config,
        format!(
            "{}socket_group = \"{}\"\n",
            f.config_text(extra),
            group.name
        ),
    )
    .unwrap();
    let now = SystemTime::now();
    let minutes = |n: u64| Duration::from_secs(60 * n);
    let (bot, client, v6) = (ip("100.64.1.2"), ip("100.64.2.2"), ip("2001:db8:1001::2"));
    let mut intervals = Vec::new();
    for (n, ago) in [30, 31, 32].into_iter().enumerate() {
        let first = 0xC633_6400 + 10 * n as u32;
        intervals.push(interval(bot, now, minutes(ago), 10, first..first + 10));
    }
    intervals.push(interval(
        client,
        now,
        minutes(31),
        8,
        0xC633_6407..0xC633_6408,
    ));
    intervals.push(interval(v6, now, minutes(30), 2, 0xC633_6407..0xC633_6408));
    let mut store = record(&f, &intervals, now);
    // A reoffender (two classifications over an hour apart) and a live escalation.
    store
        .record_bot(bot, now - minutes(180), "bot", None)
        .unwrap();
    store
        .record_bot(bot, now - minutes(30), "bot", None)
        .unwrap();
    let escalated = ip("100.64.3.3");
    store
        .escalate(escalated, 0, now, now + minutes(60), "bot")
        .unwrap();
    drop(store);
    let _agent = f.start();
    let socket = f.scratch.file("sg.sock");

    // The desk's user cannot read the store: whatever it gets came through the agent.
    let db = f.scratch.file("state").join("smtpguard.db");
    assert!(
        !nobody_reads(&db, group.gid),
        "nobody can read {}",
        db.display()
    );
    let from = humantime::format_rfc3339_seconds(now - minutes(120)).to_string();
    let verbs: &[&[&str]] = &[
        &["report", "--since", "2h"],
        &["report", "--from", &from, "--to", "now", "-o", "json"],
        &["report", "--since", "2h", "-o", "csv", "--group", "/64"],
        &["report", "--reoffenders", "--since", "4h"],
        &["report", "--reoffenders", "--since", "4h", "-o", "json"],
        &["report", "--reoffenders", "--since", "4h", "-o", "csv"],
        &["pbl", "export"],
        &["pbl", "export", "-o", "spamhaus"],
        &["escalations"],
        &["escalations", "-o", "json"],
    ];
    let mut outputs = HashMap::new();
    for args in verbs {
        let desk = as_nobody(&socket, Some(group.gid), args);
        assert!(
            desk.status.success(),
            "smtpguard {} as nobody in the socket's group: expected exit 0, observed {}",
            args.join(" "),
            show(&desk)
        );
        let root = f.ok(args);
        assert_eq!(
            String::from_utf8_lossy(&desk.stdout),
            String::from_utf8_lossy(&root.stdout),
            "smtpguard {}: the desk's output (left) differs from root's (right)",
            args.join(" ")
        );
        outputs.insert(args.join(" "), String::from_utf8(desk.stdout).unwrap());
    }

    // What came through is the seeded history, not an empty shell.
    let rows: Value = serde_json::from_str(&outputs[&verbs[1].join(" ")]).unwrap();
    let summary: Vec<(&str, &str, u64)> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["host"].as_str().unwrap(),
                r["class"].as_str().unwrap(),
                r["attempts"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("100.64.1.2", "bot", 30),
            ("100.64.2.2", "misconfigured-client", 8),
            // Kept as one address, reported as the host it belongs to.
            ("2001:db8:1001::/64", "low", 2)
        ],
        "{rows:#}"
    );
    let table = &outputs[&verbs[0].join(" ")];
    assert!(
        table.lines().next().unwrap().contains("HOST")
            && table.contains("100.64.1.2")
            && table.trim_end().ends_with("3 rows"),
        "{table}"
    );
    let csv = &outputs[&verbs[2].join(" ")];
    assert!(
        csv.lines().any(|l| l.starts_with("2001:db8:1001::/64,1,")),
        "the /64 group in the CSV:\n{csv}"
    );
    let reoffenders: Value = serde_json::from_str(&outputs[&verbs[4].join(" ")]).unwrap();
    assert_eq!(
        (
            reoffenders[0]["host"].as_str(),
            reoffenders[0]["classifications"].as_u64()
        ),
        (Some("100.64.1.2"), Some(2)),
        "{reoffenders:#}"
    );
    let pbl = &outputs["pbl export"];
    assert!(
        pbl.lines().any(|l| l == "100.96.0.0/11") && !pbl.contains("100.64.10.0/24"),
        "the block list keeps 100.96.0.0/11 and leaves the exemption out:\n{pbl}"
    );
    let escalations: Value = serde_json::from_str(&outputs["escalations -o json"]).unwrap();
    assert_eq!(escalations[0]["host"], "100.64.3.3", "{escalations:#}");

    // --output: the desk's own file, the same bytes as standard output.
    let desk_dir = f.scratch.file("desk");
    std::fs::create_dir(&desk_dir).unwrap();
    std::os::unix::fs::chown(&desk_dir, Some(NOBODY), Some(NOBODY)).unwrap();
    let file = desk_dir.join("report.csv");
    let written = as_nobody(
        &socket,
        Some(group.gid),
        &[
            "report", "--since", "2h", "-o", "csv", "--group", "/64", "--output",
        ]
        .into_iter()
        .chain([file.to_str().unwrap()])
        .collect::<Vec<_>>(),
    );
    assert!(written.status.success(), "{}", show(&written));
    assert_eq!(&std::fs::read_to_string(&file).unwrap(), csv);
}

/// The agent's resident memory and its peak so far, in bytes.
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {name} in {status}"))
            * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// One line of the stream as JSON.
fn frame(reader: &mut impl std::io::BufRead) -> Value {
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
}

#[test]
fn a_large_report_streams_to_a_slow_reader() {
    const HOSTS: u32 = 200_000;
    let f = Fixture::new("stream");
    let now = SystemTime::now();
    // IPv6 hosts with all their groups written out, as a real subscriber's SLAAC address
    // would be, one /64 apart, all in 2001:db8:1000::/36.
    let base: u128 = 0x2001_0db8_1abc_0000_1234_5678_9abc_def0;
    let intervals: Vec<HostInterval> = (0..HOSTS)
        .map(|n| {
            let host = IpAddr::V6((base + (u128::from(n) << 64)).into());
            interval(host, now, Duration::from_secs(600), 1, n..n + 1)
        })
        .collect();
    drop(record(&f, &intervals, now));
    drop(intervals);
    let mut agent = f.start();
    let pid = agent.child.id();
    let (before, _) = memory(pid);

    // A client of its own speaking the protocol, reading one chunk, then pausing.
    let stream = UnixStream::connect(f.scratch.file("sg.sock")).unwrap();
    let request = json!({
        "op": "report",
        "from": humantime::format_rfc3339_seconds(now - Duration::from_secs(3600)).to_string(),
        "to": humantime::format_rfc3339_seconds(now).to_string(),
        "group": "host",
        "format": "json",
    });
    (&stream)
        .write_all(format!("{request}\n").as_bytes())
        .unwrap();
    let mut reader = BufReader::new(&stream);
    assert_eq!(frame(&mut reader), json!({"frame": "start"}));
    let first = frame(&mut reader);
    let mut received = first["text"].as_str().expect("a data frame").to_owned();
    // Long enough for the agent to have built the rows and filled every buffer on the way.
    std::thread::sleep(Duration::from_secs(3));
    let (paused, _) = memory(pid);
    // Another client is served meanwhile.
    let asked = Instant::now();
    let status = f.json(&["status", "--format", "json"]);
    assert!(
        status["version"].is_string() && asked.elapsed() < Duration::from_secs(5),
        "status took {:?} while a report was read slowly: {status}",
        asked.elapsed()
    );
    // Then the rest.
    let end = loop {
        let frame = frame(&mut reader);
        match frame["frame"].as_str() {
            Some("data") => received.push_str(frame["text"].as_str().unwrap()),
            Some("end") => break frame,
            _ => panic!("unexpected frame {frame}"),
        }
    };
    let (_, peak) = memory(pid);
    let bytes = received.len() as u64;
    let rows: Value = serde_json::from_str(&received).expect("the report is one JSON array");
    let rows = rows.as_array().unwrap();
    assert_eq!(
        (end["rows"].as_u64(), end["bytes"].as_u64(), rows.len()),
        (Some(u64::from(HOSTS)), Some(bytes), HOSTS as usize),
        "the end line's count, its bytes, the rows that arrived"
    );
    let mut hosts: Vec<&str> = rows.iter().map(|r| r["host"].as_str().unwrap()).collect();
    hosts.sort_unstable();
    hosts.dedup();
    assert_eq!(hosts.len(), HOSTS as usize, "every host once");
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    eprintln!(
        "report {:.1} MiB; agent RSS {:.1} MiB before, {:.1} MiB while paused, peak {:.1} MiB",
        mib(bytes),
        mib(before),
        mib(paused),
        mib(peak)
    );
    // While the client pauses the agent holds the rows (about 200 bytes each), never the
    // rendered report (about 550 bytes a row): the growth stays well below its size. An agent
    // that rendered ahead of the reader would hold the report on top of the rows.
    assert!(
        paused.saturating_sub(before) < bytes / 2,
        "while paused the agent grew by {:.1} MiB; the report is {:.1} MiB",
        mib(paused.saturating_sub(before)),
        mib(bytes)
    );
    // At its peak it held the window's history while it summarised it (as any report must:
    // about 190 bytes a host interval, plus the summaries), never the rendered report as well.
    assert!(
        peak.saturating_sub(before) < bytes,
        "the agent's peak grew by {:.1} MiB; the report is {:.1} MiB",
        mib(peak.saturating_sub(before)),
        mib(bytes)
    );
    drop(reader);
    drop(stream);

    // The agent stops in the middle of a stream: the CLI says the output is incomplete, with
    // exit code 2, as for any request the agent did not answer.
    let mut cli = Command::new(BIN)
        .args([
            "--config",
            f.config_str(),
            "report",
            "--since",
            "1h",
            "-o",
            "csv",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = cli.stdout.take().unwrap();
    let mut head = [0u8; 4096];
    out.read_exact(&mut head).unwrap();
    assert!(head.starts_with(b"host,hosts,"), "{:?}", &head[..64]);
    agent.signal(nix::sys::signal::Signal::SIGKILL);
    let _ = agent.wait_exit(Duration::from_secs(5));
    let mut rest = Vec::new();
    out.read_to_end(&mut rest).unwrap();
    let output = cli.wait_with_output().unwrap();
    let shown = format!("{output:?}");
    assert_eq!(output.status.code(), Some(2), "{shown}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("without its end line; the output is incomplete"),
        "{stderr}"
    );
    assert!(
        ((head.len() + rest.len()) as u64) < bytes,
        "the cut-off report is shorter"
    );
}

#[test]
fn report_errors_name_the_value() {
    let f = Fixture::new("report-errors");
    let _agent = f.start();
    // The CLI refuses a bad --group before it asks; a tool asking the agent directly gets the
    // same answer from it.
    assert_fails(
        &f.cli(&["report", "--group", "/65"]),
        1,
        &["/65", "host, /64, /56, subscriber-prefix"],
        "report --group /65",
    );
    let ask = |request: Value| {
        let mut stream = UnixStream::connect(f.scratch.file("sg.sock")).unwrap();
        stream.write_all(format!("{request}\n").as_bytes()).unwrap();
        let mut answer = String::new();
        BufReader::new(stream).read_line(&mut answer).unwrap();
        serde_json::from_str::<Value>(&answer).unwrap()
    };
    let window = json!({"op": "report", "from": "2026-01-01T00:00:00Z", "to": "2026-01-02T00:00:00Z",
                        "group": "host", "format": "json"});
    for (field, value, expected) in [
        ("group", "/65", "host, /64, /56, subscriber-prefix"),
        ("format", "xml", "table, json, csv"),
        (
            "from",
            "2026-01-03T00:00:00Z",
            "expected a window that starts before it ends",
        ),
        (
            "prefix",
            "100.64.0.1/10",
            "expected the network address 100.64.0.0/10",
        ),
    ] {
        let mut request = window.clone();
        request[field] = value.into();
        let answer = ask(request);
        let message = answer["message"].as_str().unwrap_or_default();
        assert!(
            answer["status"] == "error"
                && answer["kind"] == "bad-request"
                && message.contains(value)
                && message.contains(expected),
            "{field} {value}: {answer}"
        );
    }
    // From the CLI: exit code 1, the agent's message, and no --output file left behind.
    let file = f.scratch.file("report.json");
    assert_fails(
        &f.cli(&[
            "report",
            "--prefix",
            "100.64.0.1/10",
            "--output",
            file.to_str().unwrap(),
        ]),
        1,
        &[
            "100.64.0.1/10",
            "expected the network address 100.64.0.0/10",
        ],
        "report --prefix with host bits",
    );
    assert!(!file.exists(), "an incomplete --output file was left");
}

/// The state folder 0750 and its files 0640 whatever the agent's umask: the history in it is
/// per-subscriber abuse data.
#[test]
fn the_state_folder_is_private_whatever_the_umask() {
    let f = Fixture::new("umask");
    let state = f.scratch.file("state");
    for umask in ["000", "077"] {
        let _ = std::fs::remove_dir_all(&state);
        let mut command = Command::new("sh");
        command.args(["-c", &format!("umask {umask}; exec \"$@\""), "sh", BIN]);
        let mut agent = Agent::spawn(command, &f.config, &f.scratch.file("agent.log"));
        agent.wait_ready();
        f.ok(&[
            "exempt",
            "add",
            SUBSCRIBER,
            "--reason",
            "a write, so the WAL exists",
        ]);
        let mode = |name: &str| {
            std::fs::metadata(state.join(name))
                .unwrap_or_else(|e| panic!("{name}: {e}"))
                .permissions()
                .mode()
                & 0o7777
        };
        let modes: Vec<(&str, u32)> = [
            "",
            "smtpguard.db",
            "smtpguard.db-wal",
            "smtpguard.db-shm",
            "agent.lock",
        ]
        .into_iter()
        .map(|name| (name, mode(name)))
        .collect();
        assert_eq!(
            modes,
            [
                ("", 0o750),
                ("smtpguard.db", 0o640),
                ("smtpguard.db-wal", 0o640),
                ("smtpguard.db-shm", 0o640),
                ("agent.lock", 0o640)
            ],
            "with umask {umask}"
        );
        agent.terminate();
    }
}

/// Whole seconds, as the store keeps milliseconds.
fn whole_seconds(time: SystemTime) -> SystemTime {
    let since = time.duration_since(SystemTime::UNIX_EPOCH).unwrap();
    SystemTime::UNIX_EPOCH + Duration::from_secs(since.as_secs())
}

/// One interval of `host` from `start` to `end` (seconds after `base`), active from `first`
/// to `last`, with one segment (a SYN) to each of `destinations`, judged for `reason`.
fn timed_interval(
    base: SystemTime,
    host: Ipv4Addr,
    [start, first, last, end]: [u64; 4],
    destinations: &[Ipv4Addr],
    reason: Reason,
) -> HostInterval {
    let second = |s: u64| base + Duration::from_secs(s);
    let (registers, exact_destinations) =
        sketch::recorded(destinations.iter().map(|d| ipv4_mapped(d.octets())));
    let attempts = destinations.len() as u64;
    HostInterval {
        host: ipv4_mapped(host.octets()),
        start: second(start),
        end: second(end),
        first_seen: second(first),
        last_seen: second(last),
        attempts,
        segments: attempts,
        dropped: if reason == Reason::Dropped {
            attempts
        } else {
            0
        },
        limited: 0,
        sketch: registers,
        exact_destinations,
        last_dst: ipv4_mapped(destinations[0].octets()),
        last_port: 25,
        last_reason: reason as u16,
    }
}

fn mx(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 51, 100, n)
}

/// The fixture's state folder with the history of three hosts in the last half hour, and a
/// config that puts them in a range in monitor mode today; then its agent, which the report is
/// asked of.
fn agent_with_history(f: &Fixture) -> Agent {
    let base = whole_seconds(SystemTime::now() - Duration::from_secs(30 * 60));
    let (one, busy, switched) = (
        Ipv4Addr::new(100, 64, 0, 2),
        Ipv4Addr::new(100, 64, 0, 3),
        Ipv4Addr::new(100, 64, 0, 4),
    );
    // Enforced then (an escalation, or before the range went back to monitor), with a
    // `ratelimit` action: one of its two attempts was over the rate.
    let mut limited = timed_interval(
        base,
        switched,
        [0, 10, 40, 60],
        &[mx(10), mx(11)],
        Reason::Dropped,
    );
    limited.limited = 1;
    let snapshots = [
        vec![
            // Enforced then: one SYN in a 5-second interval (the first after a restart).
            timed_interval(base, one, [55, 57, 57, 60], &[mx(10)], Reason::Dropped),
            limited,
        ],
        vec![
            // Monitored: 12 SYNs to 6 MX hosts within 2 minutes of a 10-minute interval, more
            // destinations than the kernel's exact set holds.
            timed_interval(
                base,
                busy,
                [60, 300, 420, 660],
                &(10..16).map(mx).collect::<Vec<_>>().repeat(2),
                Reason::Monitored,
            ),
            timed_interval(
                base,
                switched,
                [60, 70, 70, 660],
                &[mx(12)],
                Reason::Monitored,
            ),
        ],
    ];
    let mut store = Store::open(&f.scratch.file("state")).unwrap();
    for (epoch, snapshot) in snapshots.iter().enumerate() {
        let last = snapshot[0].end;
        store
            .record_snapshot(
                snapshot,
                &HashMap::new(),
                SnapshotState {
                    epoch: epoch as u32 + 1,
                    last,
                },
            )
            .unwrap();
    }
    drop(store);
    let monitor = "[[subscribers]]\nprefix = \"100.64.0.0/16\"\nmode = \"monitor\"\n";
    std::fs::write(&f.config, f.config_text(monitor)).unwrap();
    f.start()
}

fn report(f: &Fixture, format: &str) -> String {
    let output = f.cli(&["report", "--since", "1h", "-o", format]);
    assert!(
        output.status.success(),
        "report -o {format}: expected exit 0, observed {}",
        show(&output)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn the_report_reads_as_what_its_figures_are() {
    let f = Fixture::new("figures");
    let _agent = agent_with_history(&f);

    let rows: Value = serde_json::from_str(&report(&f, "json")).unwrap();
    let shown: Vec<Value> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            serde_json::json!([
                row["host"],
                row["mode"],
                row["attempts"],
                row["attempts_per_minute_peak"],
                row["attempts_per_minute_avg"],
                row["distinct_destinations"],
                row["distinct_destinations_estimated"],
                row["limited"],
            ])
        })
        .collect();
    assert_eq!(
        serde_json::to_string_pretty(&shown).unwrap(),
        serde_json::to_string_pretty(&serde_json::json!([
            // 12 attempts in the 2 minutes it was active: 6 a minute; 6 destinations
            // outgrew the exact set: the sketch's estimate.
            ["100.64.0.3", "monitor", 12, 6.0, 6.0, 6, true, 0],
            // 3 attempts from 00:10 to 01:10: 3 a minute, also at the busiest; the two
            // intervals' exact sets hold its 3 destinations.
            ["100.64.0.4", "enforce,monitor", 3, 3.0, 3.0, 3, false, 1],
            // One SYN: one a minute, to exactly one destination.
            ["100.64.0.2", "enforce", 1, 1.0, 1.0, 1, false, 0],
        ]))
        .unwrap(),
        "[host, mode, attempts, peak/min, avg/min, destinations, estimated, limited]"
    );
    // Only the host that hit its limit.
    let output = f.cli(&["report", "--since", "1h", "--limited", "-o", "csv"]);
    assert!(
        output.status.success(),
        "report --limited: {}",
        show(&output)
    );
    let records = report_csv(&String::from_utf8(output.stdout).unwrap());
    let fields = smtpguard::report::render::FIELDS;
    let column = |name: &str| fields.iter().position(|h| *h == name).unwrap();
    let limited: Vec<[&str; 2]> = records
        .iter()
        .map(|r| [&r[column("host")], &r[column("limited")]])
        .collect();
    assert_eq!(limited, [["100.64.0.4", "1"]], "report --limited");

    let csv = report(&f, "csv");
    let records = report_csv(&csv);
    let cells: Vec<[&str; 4]> = records
        .iter()
        .map(|r| {
            [
                &r[column("host")],
                &r[column("mode")],
                &r[column("distinct_destinations")],
                &r[column("distinct_destinations_estimated")],
            ]
        })
        .collect();
    assert_eq!(
        cells,
        [
            ["100.64.0.3", "monitor", "6", "true"],
            ["100.64.0.4", "enforce,monitor", "3", "false"],
            ["100.64.0.2", "enforce", "1", "false"],
        ]
    );

    let table = report(&f, "table");
    let lines: Vec<Vec<&str>> = table
        .lines()
        .map(|line| line.split_whitespace().collect())
        .collect();
    assert_eq!(
        lines[0][..10],
        [
            "HOST",
            "SUBSCRIBER",
            "RANGE",
            "MODE",
            "ATTEMPTS",
            "PEAK/MIN",
            "AVG/MIN",
            "DESTINATIONS",
            "DROPPED",
            "LIMITED"
        ],
        "{table}"
    );
    let cells: Vec<&[&str]> = lines[1..4].iter().map(|cells| &cells[..7]).collect();
    assert_eq!(
        cells,
        [
            &[
                "100.64.0.3",
                "100.64.0.0/16",
                "monitor",
                "12",
                "6.0",
                "6.0",
                "~6"
            ][..],
            &[
                "100.64.0.4",
                "100.64.0.0/16",
                "enforce,monitor",
                "3",
                "3.0",
                "3.0",
                "3"
            ],
            &[
                "100.64.0.2",
                "100.64.0.0/16",
                "enforce",
                "1",
                "1.0",
                "1.0",
                "1"
            ],
        ],
        "{table}"
    );
}
