//! The agent as systemd runs it (deploy/systemd/smtpguard.service): the notifications of
//! `Type=notify`, and the agent as its own user with only the unit's capabilities. PID 1 is
//! not systemd on the test machines, so the test plays its part: it listens on the
//! NOTIFY_SOCKET, and starts the agent the way the unit would (setpriv with the unit's
//! capability set, after the unit's privileged ExecStartPre). Needs root.

use std::{
    os::unix::net::UnixDatagram,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use serde_json::Value;
use smtpguard_tests::lab::SUBSCRIBER_INTERFACE;

mod harness;

use harness::{Agent, BIN, Fixture, SUBSCRIBER, show};

/// Longest wait for one notification; only bounds a failure. The first comes once the kernel
/// program is loaded and verified, which a loaded machine takes long for: as long as
/// `harness::READY`.
const NOTIFICATION: Duration = harness::READY;

/// The systemd side of `Type=notify`: a datagram socket the agent's NOTIFY_SOCKET names.
struct Manager {
    socket: UnixDatagram,
    /// Every notification received so far, oldest first, for failure messages.
    seen: Vec<String>,
}

impl Manager {
    fn bind(path: &Path) -> Self {
        let socket = UnixDatagram::bind(path).unwrap();
        socket.set_read_timeout(Some(NOTIFICATION)).unwrap();
        Self {
            socket,
            seen: Vec::new(),
        }
    }

    /// The next notification other than a watchdog ping, or a panic after `NOTIFICATION`.
    fn next(&mut self, agent: &Agent) -> String {
        let deadline = Instant::now() + NOTIFICATION;
        let mut buffer = [0; 4096];
        while Instant::now() < deadline {
            let Ok(length) = self.socket.recv(&mut buffer) else {
                break;
            };
            let message = String::from_utf8_lossy(&buffer[..length]).into_owned();
            self.seen.push(message.clone());
            if message.trim() != "WATCHDOG=1" {
                return message;
            }
        }
        panic!(
            "no notification within {NOTIFICATION:?}; seen so far: {:?}; agent log:\n{}",
            self.seen,
            agent.log()
        );
    }

    /// Waits for a notification with every one of `lines`, and returns it.
    #[track_caller]
    fn expect(&mut self, agent: &Agent, lines: &[&str], what: &str) -> String {
        let message = self.next(agent);
        for line in lines {
            assert!(
                message.lines().any(|l| l.starts_with(line)),
                "{what}: expected a notification with {lines:?}, observed {message:?}; all: {:?}",
                self.seen
            );
        }
        message
    }

    fn pings(&self) -> usize {
        self.seen
            .iter()
            .filter(|m| m.trim() == "WATCHDOG=1")
            .count()
    }
}

#[test]
fn notifies_ready_once_the_cli_answers_then_reloads_pings_and_stopping() {
    let f = Fixture::new("notify");
    let mut manager = Manager::bind(&f.scratch.file("notify.sock"));
    let mut command = Command::new(BIN);
    command
        .env("NOTIFY_SOCKET", f.scratch.file("notify.sock"))
        // A ping every 100 ms.
        .env("WATCHDOG_USEC", "200000");
    let mut agent = Agent::spawn(command, &f.config, &f.scratch.file("agent.log"));

    let starting = manager.next(&agent);
    assert!(
        starting.starts_with("STATUS=") && !starting.contains("READY=1"),
        "expected a STATUS= line before READY=1, observed {starting:?}"
    );
    let ready = manager.expect(&agent, &["READY=1", "STATUS=enforcing on"], "startup");
    // No retry: at READY=1 the socket answers, and the program is attached.
    let status: Value = serde_json::from_slice(&f.ok(&["status", "--format", "json"]).stdout)
        .expect("status --format json prints JSON");
    assert_eq!(
        status["attached"].as_array().map(Vec::len),
        Some(1),
        "at READY=1 ({ready:?}): expected one attachment, observed {status}"
    );
    f.assert_blocked("at READY=1");

    agent.signal(Signal::SIGHUP);
    manager.expect(&agent, &["RELOADING=1", "MONOTONIC_USEC="], "SIGHUP");
    manager.expect(&agent, &["READY=1", "STATUS=reloaded"], "after the reload");

    std::fs::write(&f.config, "[agent\n").unwrap();
    agent.signal(Signal::SIGHUP);
    manager.expect(&agent, &["RELOADING=1"], "SIGHUP with a broken file");
    let refused = manager.expect(&agent, &["READY=1", "STATUS=reload refused"], "refused");
    assert!(refused.contains("stays as it was"), "{refused:?}");

    let deadline = Instant::now() + NOTIFICATION;
    while manager.pings() < 2 {
        assert!(
            Instant::now() < deadline,
            "expected watchdog pings every 100 ms, observed {:?}",
            manager.seen
        );
        let mut buffer = [0; 4096];
        if let Ok(length) = manager.socket.recv(&mut buffer) {
            manager
                .seen
                .push(String::from_utf8_lossy(&buffer[..length]).into_owned());
        }
    }

    agent.signal(Signal::SIGTERM);
    manager.expect(&agent, &["STOPPING=1"], "SIGTERM");
    let exit = agent.wait_exit(Duration::from_secs(10));
    assert!(
        exit.is_some_and(|s| s.success()),
        "after SIGTERM: expected exit 0, observed {exit:?}; log:\n{}",
        agent.log()
    );
    f.assert_blocked("after the agent stopped");
}

/// A user id of no account: what the unit's `User=smtpguard` amounts to for the kernel.
const AGENT_UID: u32 = 64_123;

/// The unit's capabilities as setpriv arguments (`-all,+bpf,...`), checked to be both the
/// ambient and the bounding set.
fn unit_capabilities() -> String {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd/smtpguard.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    let setting = |key: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(key))
            .unwrap_or_else(|| panic!("{}: no {key} line", unit.display()))
            .to_owned()
    };
    let ambient = setting("AmbientCapabilities=");
    assert_eq!(ambient, setting("CapabilityBoundingSet="));
    let mut caps = String::from("-all");
    for cap in ambient.split_whitespace() {
        let name = cap.strip_prefix("CAP_").expect("CAP_ names").to_lowercase();
        caps.push_str(&format!(",+{name}"));
    }
    caps
}

#[test]
fn runs_as_its_own_user_with_only_the_units_capabilities() {
    let f = Fixture::new("unprivileged");
    let caps = unit_capabilities();
    assert_eq!(caps, "-all,+bpf,+net_admin,+perfmon");
    // The agent runs inside the gateway namespace itself: entering one (the [agent] netns
    // setting) would need CAP_SYS_ADMIN.
    let config = f.config_text_in("", None);
    std::fs::write(&f.config, config).unwrap();
    let in_gateway = || {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/run/netns/{}", f.lab.gateway.name()))
            .arg("--");
        command
    };
    // An agent run as root before (an older installation) leaves pins that belong to root.
    let mut root_agent = in_gateway();
    root_agent.arg(BIN);
    let mut agent = Agent::spawn(root_agent, &f.config, &f.scratch.file("root.log"));
    agent.wait_ready();
    agent.terminate();
    // What systemd does for the unit, as root: the folders and the pins go to the user.
    f.hand_over_to(AGENT_UID);

    let mut command = in_gateway();
    command
        .arg("setpriv")
        .arg(format!("--reuid={AGENT_UID}"))
        .arg(format!("--regid={AGENT_UID}"))
        .arg("--clear-groups")
        .arg(format!("--inh-caps={caps}"))
        .arg(format!("--ambient-caps={caps}"))
        .arg(format!("--bounding-set={caps}"))
        .arg(BIN);
    let mut agent = Agent::spawn(command, &f.config, &f.scratch.file("agent.log"));
    agent.wait_ready();

    // It took over root's pins: the program was swapped into the existing link.
    assert!(
        agent.log().contains("outcome=pinned link updated in place"),
        "expected the pinned link reused; log:\n{}",
        agent.log()
    );
    let status: Value =
        serde_json::from_slice(&f.ok(&["status", "--format", "json"]).stdout).unwrap();
    assert_eq!(
        status["attached"],
        serde_json::json!([{"interface": SUBSCRIBER_INTERFACE, "attach": "xdp"}]),
        "{status}"
    );
    f.assert_blocked("unprivileged agent attached");
    f.ok(&["exempt", "add", SUBSCRIBER, "--reason", "unprivileged"]);
    f.assert_open("after exempt add through the unprivileged agent");
    let removed = f.cli(&["exempt", "rm", SUBSCRIBER]);
    assert!(removed.status.success(), "{}", show(&removed));
    f.assert_blocked("after exempt rm");

    // It is the agent itself, not a wrapper, that runs as the user.
    let agent_status = std::fs::read_to_string(format!("/proc/{}/status", agent.child.id()))
        .expect("the agent's /proc status");
    assert!(
        agent_status.contains(&format!("Uid:\t{AGENT_UID}")),
        "{agent_status}"
    );
    agent.terminate();
}
