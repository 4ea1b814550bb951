//! The operator's experience on an installed gateway (issue #14), through the real binary: the
//! default config path and SMTPGUARD_CONFIG, client verbs that need only the socket, forgiving
//! input (bare addresses, dates, journalctl's words), aliases and `-o`, completions, error
//! chains that say each cause once, and what a privilege error asks for. The tests with an
//! agent need root (namespaces, veth, bpf, setpriv).

use std::{
    path::Path,
    process::{Command, Output, Stdio},
};

use serde_json::Value;
use smtpguard_tests::lab::addr;

mod harness;

use harness::*;

/// The binary with `args`, `env` set and SMTPGUARD_CONFIG unset unless `env` sets it.
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new("timeout");
    command
        .args(["-s", "KILL", CLI_LIMIT_SECONDS, BIN])
        .args(args)
        .env_remove("SMTPGUARD_CONFIG")
        .stdin(Stdio::null());
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("running smtpguard")
}

/// Whether a JSON list holds an object whose `key` is `value`.
fn any(list: &Value, key: &str, value: &str) -> bool {
    list.as_array()
        .is_some_and(|items| items.iter().any(|item| item[key] == value))
}

#[track_caller]
fn assert_ok(output: &Output, what: &str) -> String {
    assert!(
        output.status.success(),
        "{what}: expected exit 0, observed {}",
        show(output)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A config of its own for the verbs that read one without an agent.
fn offline_config(scratch: &Scratch, name: &str) -> String {
    let path = scratch.file(name);
    std::fs::write(
        &path,
        format!(
            "[[subscribers]]\nprefix = \"100.64.0.0/10\"\nmode = \"monitor\"\n[agent]\n\
             state_dir = \"{}\"\nsocket = \"{}\"\n",
            scratch.file(&format!("{name}.state")).display(),
            scratch.file(&format!("{name}.sock")).display(),
        ),
    )
    .unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn the_config_file_is_the_flag_else_the_environment_else_the_installed_one() {
    let scratch = Scratch::new("operator-config");
    let default = "/etc/smtpguard/smtpguard.toml";
    assert!(
        !Path::new(default).exists(),
        "this test needs a machine without an installed {default}"
    );
    // Neither flag nor variable: every verb that needs a config reads the installed file,
    // and says so when it is missing.
    for args in [
        &["config", "check"][..],
        &["replay", "capture.pcap"],
        &["prepare", "--user", "0:0"],
    ] {
        let output = run(args, &[]);
        assert_fails(
            &output,
            1,
            &[
                "error: /etc/smtpguard/smtpguard.toml does not exist",
                "--config FILE or SMTPGUARD_CONFIG=FILE",
            ],
            &format!("smtpguard {}", args.join(" ")),
        );
    }

    // The abuse desk's verbs ask the agent: with no file to name another socket, the default
    // one (no agent runs here).
    for args in [&["report", "--since", "7d"][..], &["pbl", "export"]] {
        assert_fails(
            &run(args, &[]),
            2,
            &["cannot reach the smtpguard agent at /run/smtpguard/smtpguard.sock"],
            &format!("smtpguard {}", args.join(" ")),
        );
    }

    // The variable names it.
    let env_file = offline_config(&scratch, "env.toml");
    let env = [("SMTPGUARD_CONFIG", env_file.as_str())];
    let checked = assert_ok(
        &run(&["config", "check"], &env),
        "config check by the variable",
    );
    assert!(
        checked.starts_with(&format!("{env_file}: ok (1 subscriber ranges")),
        "config check read the variable's file: {checked}"
    );
    // As the guide writes it: the report is asked of the socket the variable's file names
    // (report_cli.rs runs it against a real agent).
    assert_fails(
        &run(&["report", "--since", "7d"], &env),
        2,
        &[&format!(
            "cannot reach the smtpguard agent at {}",
            scratch.file("env.toml.sock").display()
        )],
        "report --since 7d by the variable",
    );

    // The flag wins over the variable.
    let flag_file = offline_config(&scratch, "flag.toml");
    let checked = assert_ok(
        &run(&["--config", &flag_file, "config", "check"], &env),
        "config check by the flag",
    );
    assert!(
        checked.starts_with(&format!("{flag_file}: ok")),
        "{checked}"
    );
    let missing = scratch.file("missing.toml");
    let output = run(
        &["config", "check"],
        &[("SMTPGUARD_CONFIG", missing.to_str().unwrap())],
    );
    assert_fails(
        &output,
        1,
        &[&format!(
            "{}: cannot read the config file",
            missing.display()
        )],
        "a variable naming a missing file",
    );
}

#[test]
fn each_cause_is_said_once() {
    let output = run(&["config", "check", "/nonexistent/smtpguard.toml"], &[]);
    assert_fails(
        &output,
        1,
        &["/nonexistent/smtpguard.toml: cannot read the config file"],
        "config check of a missing file",
    );
    let text = stderr(&output);
    assert_eq!(
        text.matches("No such file or directory").count(),
        1,
        "the OS error is said once: {text}"
    );
}

#[test]
fn completions_for_each_shell() {
    let bash = assert_ok(&run(&["completions", "bash"], &[]), "completions bash");
    let scratch = Scratch::new("operator-completions");
    let script = scratch.file("smtpguard.bash");
    std::fs::write(&script, &bash).unwrap();
    for (word, expected) in [("ex", "exempt"), ("comp", "completions")] {
        let words = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "source {} && COMP_WORDS=(smtpguard {word}) COMP_CWORD=1 && _smtpguard smtpguard \
                 {word} smtpguard && echo \"${{COMPREPLY[@]}}\"",
                script.display()
            ))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&words.stdout).trim(),
            expected,
            "bash completion of `smtpguard {word}`: {}",
            show(&words)
        );
    }
    for shell in ["zsh", "fish"] {
        let script_text = assert_ok(&run(&["completions", shell], &[]), shell);
        assert!(script_text.contains("exempt"), "{shell}: {script_text}");
        let path = scratch.file(shell);
        std::fs::write(&path, &script_text).unwrap();
        match Command::new(shell).arg("-n").arg(&path).output() {
            Ok(parsed) => assert!(parsed.status.success(), "{shell} -n: {}", show(&parsed)),
            Err(_) => println!("{shell} is not installed: its completion is not parsed"),
        }
    }
    let output = run(&["completions", "tcsh"], &[]);
    assert_fails(
        &output,
        1,
        &["invalid value 'tcsh'", "bash", "zsh", "fish"],
        "completions tcsh",
    );
}

#[test]
fn client_verbs_reach_the_agent_whatever_else_the_file_says() {
    let f = Fixture::new("operator-lenient");
    let _agent = f.start();
    let good = std::fs::read_to_string(&f.config).unwrap();
    for (what, broken, agent_says) in [
        (
            "an unknown key",
            good.replace("hosts = 4096", "hosts = 4096\nhost = 4096"),
            "unknown field `host`",
        ),
        (
            "a bad value",
            good.replace("100.64.0.0/10", "100.64.0.1/10"),
            "has host bits set",
        ),
        (
            "broken TOML",
            format!("{good}[report\ninterval = 5s\n"),
            "smtpguard.toml:",
        ),
    ] {
        std::fs::write(&f.config, &broken).unwrap();
        let status = f.json(&["status", "-o", "json"]);
        assert_eq!(
            status["config"],
            f.config_str(),
            "status with {what} in the file: {status}"
        );
        f.ok(&["exempt", "list"]);
        // The variable instead of the flag: the same.
        assert_ok(
            &run(&["exempt", "ls"], &[("SMTPGUARD_CONFIG", f.config_str())]),
            &format!("exempt ls by SMTPGUARD_CONFIG with {what}"),
        );
        // reload reaches the agent, which judges the file and refuses it.
        let reload = f.cli(&["reload"]);
        assert_fails(
            &reload,
            1,
            &[
                "error: reload refused, the running policy stays as it was",
                agent_says,
            ],
            &format!("reload of a file with {what}"),
        );
        f.assert_blocked(&format!("after the refused reload of {what}"));
    }
    std::fs::write(&f.config, &good).unwrap();
    f.ok(&["reload"]);
}

#[test]
fn bare_addresses_dates_and_aliases_through_the_agent() {
    let f = Fixture::new("operator-input");
    let _agent = f.start();
    f.assert_blocked("before any exemption");

    // A bare address is its host.
    let added = f.ok(&["exempt", "add", "100.64.0.2", "--reason", "bare address"]);
    assert_eq!(
        String::from_utf8_lossy(&added.stdout),
        "exempt: 100.64.0.2/32\n"
    );
    f.assert_open("after `exempt add 100.64.0.2`");
    let listed = f.json(&["exempt", "ls", "-o", "json"]);
    assert_eq!(listed[0]["prefix"], "100.64.0.2/32", "{listed}");
    let check = f.json(&["check", "100.64.0.2/32", "198.51.100.7", "-o", "json"]);
    assert_eq!(
        (&check["verdict"], &check["reason"]),
        (&Value::from("pass"), &Value::from("exempt")),
        "check with a /32 source: {check}"
    );
    let removed = f.ok(&["exempt", "del", "100.64.0.2"]);
    assert_eq!(
        String::from_utf8_lossy(&removed.stdout),
        "no longer exempt: 100.64.0.2/32\n"
    );
    f.assert_blocked("after `exempt del 100.64.0.2`");

    // An IPv6 host is its /64: a bare address exempts the subscriber's whole prefix, and a
    // prefix inside one host is refused with the host to exempt instead.
    let (v6, mx6) = (ip(addr::SUBSCRIBER_V6), ip(addr::MX_V6));
    assert!(!attempt_from(&f, v6, mx6, BLOCKED), "{v6} is blocked");
    let added = f.ok(&[
        "exempt",
        "add",
        addr::SUBSCRIBER_V6,
        "--reason",
        "bare IPv6",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&added.stdout),
        "exempt: 2001:db8:1000::/64\n"
    );
    assert!(
        attempt_from(&f, v6, mx6, OPEN),
        "{v6} delivers once its /64 is exempt"
    );
    f.ok(&["exempt", "rm", addr::SUBSCRIBER_V6]);
    assert_fails(
        &f.cli(&[
            "exempt",
            "add",
            "2001:db8:1000::2/128",
            "--reason",
            "one address",
        ]),
        1,
        &[
            "2001:db8:1000::2/128 is longer than one host, a /64",
            "such as 2001:db8:1000::/64",
        ],
        "exempt add of an address inside a /64 host",
    );
    assert!(!attempt_from(&f, v6, mx6, BLOCKED), "{v6} is blocked again");

    f.ok(&["relay", "add", "192.0.2.26"]);
    let relays = f.json(&["relay", "ls", "-o", "json"]);
    assert!(any(&relays, "prefix", "192.0.2.26/32"), "{relays}");
    f.ok(&["relay", "remove", "192.0.2.26"]);

    // A host prefix where a host is expected; a wider prefix is refused before the agent.
    let lift = f.cli(&["escalations", "lift", "100.64.0.9/32"]);
    let lift_text = stderr(&lift);
    assert!(
        lift.status.code() == Some(1)
            && lift_text.contains("100.64.0.9")
            && !lift_text.contains("not an IP address"),
        "escalations lift of a /32 reaches the agent: {}",
        show(&lift)
    );
    assert_fails(
        &f.cli(&["escalations", "lift", "100.64.0.0/24"]),
        1,
        &["host 100.64.0.0/24 is a range of addresses, not one host"],
        "escalations lift of a /24",
    );

    // Dates and local times are local wall-clock time (TZ), a date its midnight.
    for (tz, expires, prefix, stored) in [
        ("UTC0", "2030-12-31", "100.64.0.5", "2030-12-31T00:00:00Z"),
        // POSIX TZ: nine hours east of UTC.
        (
            "JST-9",
            "2030-12-31T09:00",
            "100.64.0.6",
            "2030-12-31T00:00:00Z",
        ),
        ("JST-9", "2030-12-31", "100.64.0.7", "2030-12-30T15:00:00Z"),
    ] {
        let mut args = vec!["--config", f.config_str()];
        args.extend([
            "exempt",
            "add",
            prefix,
            "--reason",
            "dated",
            "--expires",
            expires,
        ]);
        assert_ok(&run(&args, &[("TZ", tz)]), &format!("--expires {expires}"));
        let list = f.json(&["exempt", "list", "--format", "json"]);
        let entry = list
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["prefix"] == format!("{prefix}/32"))
            .unwrap_or_else(|| panic!("{prefix} in {list}"));
        assert_eq!(
            entry["expires"], stored,
            "TZ={tz} --expires {expires}: {entry}"
        );
    }
    let audit = f.json(&["audit", "--since", "today", "-o", "json"]);
    assert!(
        any(&audit, "subject", "100.64.0.2/32"),
        "audit --since today lists today's changes: {audit}"
    );
    for since in ["yesterday", "2026-01-01", "2026-01-01T08:00", "24h"] {
        f.ok(&["audit", "--since", since]);
    }
    assert_fails(
        &f.cli(&["audit", "--since", "tomorrow"]),
        1,
        &["--since \"tomorrow\" is in the future; expected a time before now"],
        "audit --since tomorrow",
    );
    assert_fails(
        &f.cli(&[
            "exempt",
            "add",
            "100.64.0.8",
            "--reason",
            "r",
            "--expires",
            "2030-02-30",
        ]),
        1,
        &["--expires \"2030-02-30\" is not a calendar date (no such day in that month)"],
        "--expires 2030-02-30",
    );
}

/// A user id of no account, for the agent run without privileges.
const UNPRIVILEGED_UID: u32 = 64_124;

#[test]
fn an_agent_without_privileges_is_told_what_it_needs() {
    let f = Fixture::new("operator-eperm");
    std::fs::write(&f.config, f.config_text_in("", None)).unwrap();
    // The folders and the pins belong to the user, as the unit leaves them: only the
    // kernel's checks of bpf() remain.
    f.hand_over_to(UNPRIVILEGED_UID);

    let mut command = Command::new("nsenter");
    command
        .arg(format!("--net=/run/netns/{}", f.lab.gateway.name()))
        .args(["--", "setpriv"])
        .arg(format!("--reuid={UNPRIVILEGED_UID}"))
        .arg(format!("--regid={UNPRIVILEGED_UID}"))
        .args(["--clear-groups", "--inh-caps=-all", "--bounding-set=-all"])
        .arg(BIN);
    let mut agent = Agent::spawn(command, &f.config, &f.scratch.file("agent.log"));
    let exit = agent.wait_exit(std::time::Duration::from_secs(15));
    let log = agent.log();
    assert_eq!(
        exit.and_then(|status| status.code()),
        Some(1),
        "the agent without capabilities: expected exit 1; log:\n{log}"
    );
    let error = log
        .lines()
        .find(|line| line.starts_with("error: "))
        .unwrap_or_else(|| panic!("an error line in the log:\n{log}"));
    for needle in [
        "Operation not permitted",
        "the agent needs root, or the capabilities CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON",
        "systemctl start smtpguard",
    ] {
        assert!(error.contains(needle), "{needle:?} in {error:?}");
    }
    assert_eq!(
        error.matches("Operation not permitted").count(),
        1,
        "the cause is said once: {error}"
    );
}
