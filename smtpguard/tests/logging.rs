//! The agent's log as journald and operators read it (issue #14), from the real binary: the
//! sd-daemon priority `<N>` on each line and no timestamp when standard error is the journal
//! stream (`JOURNAL_STREAM` names its device and inode, as systemd sets it), the level from
//! `[agent] log_level` and the environment over it, and text without Rust debug output. The
//! test with an agent needs root (namespaces, veth, bpf).

use std::{
    os::unix::fs::MetadataExt as _,
    path::Path,
    process::{Command, Stdio},
    thread,
    time::Duration,
};

mod harness;

use harness::*;
use smtpguard_tests::lab::SUBSCRIBER_INTERFACE;

/// The `DEVICE:INODE` of `path`: what systemd puts in JOURNAL_STREAM for the journal's stream.
fn stream_id(path: &Path) -> String {
    let meta = std::fs::metadata(path).unwrap();
    format!("{}:{}", meta.dev(), meta.ino())
}

/// Whether `text` holds a time as the terminal format writes it (`2026-11-24T10:00:00`).
fn has_timestamp(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.windows(19).any(|w| {
        w.iter().enumerate().all(|(i, b)| match i {
            4 | 7 => *b == b'-',
            10 => *b == b'T',
            13 | 16 => *b == b':',
            _ => b.is_ascii_digit(),
        })
    })
}

/// The lines of `log` that do not start with an sd-daemon priority of ours.
fn without_priority(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|line| {
            !["<3>", "<4>", "<6>", "<7>"]
                .iter()
                .any(|p| line.starts_with(p))
        })
        .collect()
}

#[test]
fn an_agent_that_cannot_start_says_so_with_priority_3_only_to_the_journal() {
    let scratch = Scratch::new("journal-error");
    let config = scratch.file("smtpguard.toml");
    std::fs::write(
        &config,
        format!(
            "[[subscribers]]\nprefix = \"100.64.0.0/10\"\n[agent]\nstate_dir = \"{}\"\n",
            scratch.file("state").display()
        ),
    )
    .unwrap();
    let run = |stream: &str| {
        let log = scratch.file(&format!("stderr-{}", stream.replace(':', "-")));
        let file = std::fs::File::create(&log).unwrap();
        // The variable names this file, as systemd names the journal's stream; or another.
        let stream = match stream {
            "this" => stream_id(&log),
            other => other.to_owned(),
        };
        let status = Command::new(BIN)
            .args(["--config", config.to_str().unwrap(), "run"])
            .env("JOURNAL_STREAM", &stream)
            .stdin(Stdio::null())
            .stderr(file)
            .status()
            .unwrap();
        assert_eq!(status.code(), Some(1), "smtpguard run without interfaces");
        std::fs::read_to_string(&log).unwrap()
    };
    let expected = format!(
        "error: {}: [agent] interfaces is empty; expected the subscriber-facing interfaces",
        config.display()
    );
    let journal = run("this");
    assert!(
        journal.starts_with(&format!("<3>{expected}")) && journal.lines().count() == 1,
        "standard error is the journal stream: expected one line <3>{expected}..., observed \
         {journal:?}"
    );
    // JOURNAL_STREAM inherited by a process whose standard error goes elsewhere.
    let elsewhere = run("1:2");
    assert!(
        elsewhere.starts_with(&expected),
        "standard error is not the journal stream: expected {expected}..., observed \
         {elsewhere:?}"
    );
}

/// Starts the fixture's agent with `env` set (and the log variables unset unless `env` sets
/// them), logging to `log`, with JOURNAL_STREAM naming `log` when `journal`; lets it take
/// snapshots for 2.5 s, stops it and returns its log.
fn run_agent(f: &Fixture, log: &str, journal: bool, env: &[(&str, &str)]) -> String {
    let log = f.scratch.file(log);
    std::fs::File::create(&log).unwrap();
    let mut command = Command::new(BIN);
    command.env_remove("SMTPGUARD_LOG").env_remove("RUST_LOG");
    if journal {
        command.env("JOURNAL_STREAM", stream_id(&log));
    } else {
        command.env_remove("JOURNAL_STREAM");
    }
    for (key, value) in env {
        command.env(key, value);
    }
    let mut agent = Agent::spawn(command, &f.config, &log);
    agent.wait_ready();
    thread::sleep(Duration::from_millis(2_500));
    agent.terminate();
    std::fs::read_to_string(&log).unwrap()
}

#[test]
fn a_real_agent_logs_for_journald_at_the_configured_level_in_plain_text() {
    let f = Fixture::new("journal");
    let with_level = |level: &str| {
        f.config_text("[report]\ninterval = \"1s\"\n")
            .replace("[agent]\n", &format!("[agent]\nlog_level = \"{level}\"\n"))
    };
    std::fs::write(&f.config, with_level("debug")).unwrap();

    let log = run_agent(&f, "debug.log", true, &[]);
    let unprefixed = without_priority(&log);
    assert!(
        unprefixed.is_empty(),
        "under journald every line starts with <3>, <4>, <6> or <7>; these do not: \
         {unprefixed:?}\nlog:\n{log}"
    );
    assert!(
        !has_timestamp(&log),
        "journald adds the time; observed:\n{log}"
    );
    let startup = log
        .lines()
        .find(|line| line.starts_with("<6>smtpguard agent running: "))
        .unwrap_or_else(|| panic!("no <6> startup line in:\n{log}"));
    let socket = f.scratch.file("sg.sock");
    for part in [
        format!("port 25 enforced on {SUBSCRIBER_INTERFACE} (xdp, native)"),
        format!("in network namespace {}", f.lab.gateway.name()),
        "enforce: 100.64.0.0/10, 2001:db8:1000::/36; monitor: none".to_owned(),
        "0 exemptions, 1 relays".to_owned(),
        format!("CLI on {}", socket.display()),
        "metrics on 127.0.0.1:0".to_owned(),
    ] {
        assert!(
            startup.contains(&part),
            "the startup line says {part:?}; observed {startup:?}"
        );
    }
    for artifact in ["Some(", "None", "\""] {
        let found: Vec<&str> = log.lines().filter(|l| l.contains(artifact)).collect();
        assert!(
            found.is_empty(),
            "Rust debug output ({artifact}) in the agent's log: {found:?}"
        );
    }
    let snapshots = log
        .lines()
        .filter(|l| l.starts_with("<7>statistics snapshot "))
        .count();
    assert!(
        snapshots >= 2,
        "log_level = \"debug\": a <7> line per snapshot (every second); observed {snapshots} \
         in:\n{log}"
    );

    // The environment wins over the file.
    let log = run_agent(&f, "overridden.log", true, &[("SMTPGUARD_LOG", "info")]);
    assert!(
        log.contains("<6>smtpguard agent running: ") && !log.contains("<7>"),
        "SMTPGUARD_LOG=info over log_level = \"debug\": no debug lines; observed:\n{log}"
    );
    let log = run_agent(
        &f,
        "bad-variable.log",
        true,
        &[("SMTPGUARD_LOG", "smtpguard=loud")],
    );
    assert!(
        log.lines().any(|line| line
            .starts_with("<4>SMTPGUARD_LOG=smtpguard=loud is not a log filter")
            && line.contains("logging at [agent] log_level debug instead"))
            && log.contains("<7>statistics snapshot "),
        "a variable that is no filter is named, and the file's level used; observed:\n{log}"
    );

    // On a terminal: the time and the level, at the default level unless RUST_LOG says more.
    std::fs::write(&f.config, f.config_text("[report]\ninterval = \"1s\"\n")).unwrap();
    let log = run_agent(&f, "terminal.log", false, &[]);
    assert!(
        log.lines()
            .any(|l| l.contains(" INFO smtpguard agent running: "))
            && !log.contains("DEBUG")
            && without_priority(&log).len() == log.lines().count(),
        "the default level, info, with levels and no <N>; observed:\n{log}"
    );
    assert!(has_timestamp(&log), "a terminal line has its time:\n{log}");
    let log = run_agent(&f, "rust-log.log", false, &[("RUST_LOG", "debug")]);
    assert!(
        log.lines()
            .any(|l| l.contains("DEBUG statistics snapshot ")),
        "RUST_LOG=debug over the default level; observed:\n{log}"
    );
}
