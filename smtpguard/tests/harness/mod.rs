//! The harness the agent's end-to-end tests share: the real binary, its CLI, a lab per test
//! and guards that clean up also when a test fails.
//!
//! Each test crate (agent.rs, faults.rs, input.rs, service.rs) compiles this module on its own and uses a part of
//! it; what one of them leaves unused is not dead.
#![allow(dead_code)]

use std::{
    fs::File,
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde_json::Value;
use smtpguard_tests::lab::{
    Connect, GatewayLab, PinFolder, SUBSCRIBER_INTERFACE, Servers, addr, connect,
};

pub const BIN: &str = env!("CARGO_BIN_EXE_smtpguard");

/// A blocked connection's SYN never gets an answer: this is what each blocked attempt costs.
pub const BLOCKED: Duration = Duration::from_millis(500);
/// An open connection is greeted within milliseconds; this only bounds a failure.
pub const OPEN: Duration = Duration::from_secs(3);
/// Longest a CLI call may take before it is killed and the test fails.
pub const CLI_LIMIT_SECONDS: &str = "15";
/// Longest an agent may take to answer after `run`: only a failure waits this long. Starting
/// verifies a program of about 190k instructions, a few seconds of one CPU that a loaded
/// machine (other test binaries, builds) stretches past 15 s.
pub const READY: Duration = Duration::from_secs(60);

pub const SUBSCRIBER: &str = "100.64.0.2/32";

pub fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

pub fn mx() -> IpAddr {
    ip(addr::MX_V4)
}

/// Status, stdout and stderr of a command, for failure messages.
pub fn show(output: &Output) -> String {
    format!(
        "{}\n--- stdout ---\n{}--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs the binary with `args`, killed after `CLI_LIMIT_SECONDS` so a hung agent fails the test
/// instead of hanging it.
pub fn smtpguard(args: &[&str]) -> Output {
    Command::new("timeout")
        .args(["-s", "KILL", CLI_LIMIT_SECONDS, BIN])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running smtpguard")
}

/// The records of a CSV report, whose header must be the report's fields.
pub fn report_csv(csv: &str) -> Vec<csv::StringRecord> {
    let mut reader = csv::Reader::from_reader(csv.as_bytes());
    let header: Vec<String> = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_owned)
        .collect();
    assert_eq!(header, smtpguard::report::render::FIELDS, "the CSV header");
    reader.records().map(Result::unwrap).collect()
}

pub fn json(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "expected success: {}",
        show(output)
    );
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", show(output)))
}

/// Asserts exit code `code`, an `error:` line on stderr and that stderr names every one of
/// `needles`.
#[track_caller]
pub fn assert_fails(output: &Output, code: i32, needles: &[&str], what: &str) {
    let text = stderr(output);
    assert_eq!(
        output.status.code(),
        Some(code),
        "{what}: expected exit code {code}, observed {}",
        show(output)
    );
    for needle in needles {
        assert!(
            text.contains(needle),
            "{what}: expected stderr to name {needle:?}, observed {}",
            show(output)
        );
    }
}

/// A scratch folder of this test's own, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("smtpguard-agent-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One test's world: a lab with an MX on port 25, a pin folder, a scratch folder with the
/// agent's config file. Fields drop in order: servers, pins, lab, scratch.
pub struct Fixture {
    pub servers: Servers,
    pub pins: PinFolder,
    pub lab: GatewayLab,
    pub scratch: Scratch,
    pub config: PathBuf,
}

impl Fixture {
    pub fn new(name: &str) -> Self {
        let scratch = Scratch::new(name);
        let pins = PinFolder::new(&format!("agent-{name}"));
        let lab = GatewayLab::new().unwrap();
        let servers = Servers::start(&lab.internet, &[25]).unwrap();
        let config = scratch.file("smtpguard.toml");
        let fixture = Self {
            servers,
            pins,
            lab,
            scratch,
            config,
        };
        std::fs::write(&fixture.config, fixture.config_text("")).unwrap();
        fixture
    }

    /// The agent's config for this lab, with `extra` appended (top-level tables only, since it
    /// follows the `[agent]` table otherwise).
    pub fn config_text(&self, extra: &str) -> String {
        self.config_text_in(extra, Some(self.lab.gateway.name()))
    }

    /// Like `config_text`, with the interfaces looked up in network namespace `netns`, or in
    /// the agent's own with `None` (an agent started inside the gateway namespace).
    pub fn config_text_in(&self, extra: &str, netns: Option<&str>) -> String {
        self.config_text_listing(extra, netns, &[SUBSCRIBER_INTERFACE])
    }

    /// Like `config_text_in`, enforcing on `interfaces`.
    pub fn config_text_listing(
        &self,
        extra: &str,
        netns: Option<&str>,
        interfaces: &[&str],
    ) -> String {
        let interfaces = interfaces
            .iter()
            .map(|name| format!("\"{name}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let netns = netns
            .map(|name| format!("netns = \"{name}\"\n"))
            .unwrap_or_default();
        format!(
            r#"[[subscribers]]
prefix = "100.64.0.0/10"
[[subscribers]]
prefix = "2001:db8:1000::/36"
[[relays]]
prefix = "192.0.2.25/32"
[capacity]
hosts = 4096
{extra}
[agent]
interfaces = [{interfaces}]
{netns}state_dir = "{state}"
socket = "{socket}"
metrics_listen = "127.0.0.1:0"
pin_dir = "{pins}"
"#,
            state = self.scratch.file("state").display(),
            socket = self.scratch.file("sg.sock").display(),
            pins = self.pins.0.root().display(),
        )
    }

    /// What the unit does before an unprivileged agent starts: its state and runtime folders
    /// (StateDirectory=, RuntimeDirectory=; here both in the scratch folder) belong to
    /// `uid`:`uid`, and the privileged ExecStartPre hands it the pins (`prepare --user`).
    pub fn hand_over_to(&self, uid: u32) {
        let owner = format!("{uid}:{uid}");
        let chowned = Command::new("chown")
            .args(["-R", &owner])
            .arg(&self.scratch.0)
            .output()
            .unwrap();
        assert!(chowned.status.success(), "{}", show(&chowned));
        self.ok(&["prepare", "--user", &owner]);
    }

    pub fn config_str(&self) -> &str {
        self.config.to_str().unwrap()
    }

    pub fn start(&self) -> Agent {
        Agent::start(&self.config, &self.scratch.file("agent.log"))
    }

    /// `smtpguard --config <this config> args...`
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut full = vec!["--config", self.config_str()];
        full.extend_from_slice(args);
        smtpguard(&full)
    }

    /// Like `cli`, but it must succeed.
    #[track_caller]
    pub fn ok(&self, args: &[&str]) -> Output {
        let output = self.cli(args);
        assert!(
            output.status.success(),
            "smtpguard {}: expected exit 0, observed {}",
            args.join(" "),
            show(&output)
        );
        output
    }

    pub fn json(&self, args: &[&str]) -> Value {
        json(&self.ok(args))
    }

    /// One attempt from the subscriber to MX:25.
    pub fn smtp(&self, timeout: Duration) -> Connect {
        connect(&self.lab.subscriber, mx(), 25, timeout)
    }

    #[track_caller]
    pub fn assert_blocked(&self, what: &str) {
        self.assert_smtp(what, BLOCKED, Connect::TimedOut, "blocked");
    }

    #[track_caller]
    pub fn assert_open(&self, what: &str) {
        self.assert_smtp(what, OPEN, Connect::Greeted, "open");
    }

    #[track_caller]
    fn assert_smtp(&self, what: &str, timeout: Duration, expected: Connect, state: &str) {
        let observed = self.smtp(timeout);
        assert_eq!(
            observed,
            expected,
            "{what}: expected subscriber → MX:25 {state} ({expected:?}), observed {observed:?}; \
             agent log:\n{}",
            self.log()
        );
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.scratch.file("agent.log")).unwrap_or_default()
    }

    /// The whole audit log, oldest first.
    pub fn audit_log(&self) -> Vec<Value> {
        let mut entries: Vec<Value> = self
            .json(&["audit", "--format", "json"])
            .as_array()
            .cloned()
            .unwrap_or_default();
        entries.sort_by_key(|e| e["id"].as_i64());
        entries
    }

    /// The audit log's entries of `action`, oldest first.
    pub fn audit_entries(&self, action: &str) -> Vec<Value> {
        let mut entries = self.audit_log();
        entries.retain(|e| e["action"] == action);
        entries
    }

    /// The audit log's actions on `subject`, oldest first.
    pub fn audit_actions(&self, subject: &str) -> Vec<String> {
        self.audit_log()
            .iter()
            .filter(|e| e["subject"] == subject)
            .map(|e| e["action"].as_str().unwrap_or_default().to_owned())
            .collect()
    }
}

/// `packets.<reason>` of `status --format json`.
pub fn packets(status: &Value, reason: &str) -> u64 {
    status["packets"][reason].as_u64().unwrap_or(0)
}

/// `entries` of map `name` in `status --format json`.
pub fn map_entries(status: &Value, name: &str) -> Option<u64> {
    status["maps"]
        .as_array()?
        .iter()
        .find(|m| m["map"] == name)?["entries"]
        .as_u64()
}

/// A running `smtpguard run`, killed with SIGKILL on drop if it is still running.
pub struct Agent {
    pub child: Child,
    pub config: PathBuf,
    pub log: PathBuf,
}

impl Agent {
    /// Starts the agent (stderr appended to `log`) and waits until its socket answers.
    pub fn start(config: &Path, log: &Path) -> Self {
        let mut agent = Self::spawn(Command::new(BIN), config, log);
        agent.wait_ready();
        agent
    }

    /// Spawns `command` with `--config CONFIG run` appended, stdout and stderr appended to
    /// `log`, without waiting for anything. `command` is the binary, or a wrapper (setpriv,
    /// nsenter) whose last argument is the binary.
    pub fn spawn(mut command: Command, config: &Path, log: &Path) -> Self {
        let log_file = File::options().create(true).append(true).open(log).unwrap();
        let child = command
            .args(["--config", config.to_str().unwrap(), "run"])
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .expect("spawning smtpguard run");
        Self {
            child,
            config: config.to_owned(),
            log: log.to_owned(),
        }
    }

    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "smtpguard run exited with {status} before it was ready; log:\n{}",
                    self.log()
                );
            }
            let output = smtpguard(&["--config", self.config.to_str().unwrap(), "status"]);
            if output.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "smtpguard run did not answer `status` within {READY:?}; last: {}; log:\n{}",
                show(&output),
                self.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    pub fn signal(&self, signal: Signal) {
        kill(self.pid(), signal).unwrap();
    }

    /// Waits up to `limit` for the agent to exit by itself.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// SIGKILL, and reaped.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM; the agent must leave cleanly within a few seconds.
    pub fn terminate(mut self) {
        self.signal(Signal::SIGTERM);
        let status = self.wait_exit(Duration::from_secs(5));
        assert!(
            status.is_some_and(|s| s.success()),
            "after SIGTERM: expected the agent to exit 0 within 5 s, observed {status:?}; log:\n{}",
            self.log()
        );
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Polls `check` every 100 ms until it holds or `limit` passes.
pub fn eventually(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    eventually_observed(limit, what, &mut check, |held| *held);
}

/// Observes every 100 ms until `holds` accepts the observation, or `limit` passes: then the
/// failure shows the last observation. Returns the accepted one.
pub fn eventually_observed<T: std::fmt::Debug>(
    limit: Duration,
    what: &str,
    mut observe: impl FnMut() -> T,
    holds: impl Fn(&T) -> bool,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        let observed = observe();
        if holds(&observed) {
            return observed;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {limit:?}; last observed: {observed:?}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// One connection attempt from `src` (an address of the subscriber namespace) to `dst:25`;
/// true if it connected. The send timeout bounds the connect: a dropped SYN is sent once.
pub fn attempt_from(fixture: &Fixture, src: IpAddr, dst: IpAddr, timeout: Duration) -> bool {
    use nix::sys::{
        socket::{
            AddressFamily, SockFlag, SockType, SockaddrStorage, bind, connect, setsockopt, socket,
            sockopt,
        },
        time::TimeVal,
    };
    use std::os::fd::AsRawFd as _;
    fixture.lab.subscriber.run(|| {
        let family = if src.is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        let socket = socket(family, SockType::Stream, SockFlag::empty(), None).unwrap();
        let timeout = TimeVal::new(timeout.as_secs() as i64, i64::from(timeout.subsec_micros()));
        setsockopt(&socket, sockopt::SendTimeout, &timeout).unwrap();
        bind(
            socket.as_raw_fd(),
            &SockaddrStorage::from(std::net::SocketAddr::new(src, 0)),
        )
        .unwrap_or_else(|e| panic!("binding {src}: {e}"));
        connect(
            socket.as_raw_fd(),
            &SockaddrStorage::from(std::net::SocketAddr::new(dst, 25)),
        )
        .is_ok()
    })
}

/// A metrics port of this test's own, picked free by the kernel.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .unwrap()
}

/// The value of the unlabelled sample `name` on the agent's metrics endpoint.
pub fn metric(port: u16, name: &str) -> Option<f64> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(OPEN)).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .and_then(|value| value.trim().parse().ok())
}

/// `config` with its metrics endpoint on `port` instead of a free one nobody knows.
pub fn with_metrics_port(config: &str, port: u16) -> String {
    config.replace(
        "metrics_listen = \"127.0.0.1:0\"",
        &format!("metrics_listen = \"127.0.0.1:{port}\""),
    )
}

/// A group of this test's own, deleted on drop.
pub struct TempGroup {
    pub name: String,
    pub gid: u32,
}

impl TempGroup {
    pub fn new(tag: &str) -> Self {
        let name = format!("sg{tag}{}", std::process::id());
        let _ = Command::new("groupdel").arg(&name).output();
        let output = Command::new("groupadd").arg(&name).output().unwrap();
        assert!(
            output.status.success(),
            "groupadd {name}: {}",
            show(&output)
        );
        let gid = nix::unistd::Group::from_name(&name)
            .unwrap()
            .expect("the new group")
            .gid
            .as_raw();
        Self { name, gid }
    }
}

impl Drop for TempGroup {
    fn drop(&mut self) {
        let _ = Command::new("groupdel").arg(&self.name).output();
    }
}

/// The CLI as user nobody, with `groups` as its only supplementary groups.
pub fn as_nobody(socket: &Path, groups: Option<u32>, args: &[&str]) -> Output {
    let mut command = Command::new("timeout");
    command.args([
        "-s",
        "KILL",
        "15",
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
    ]);
    match groups {
        Some(gid) => command.arg(format!("--groups={gid}")),
        None => command.arg("--clear-groups"),
    };
    command
        .args([BIN, "--socket", socket.to_str().unwrap()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running setpriv smtpguard")
}
