//! The demo's story on a real ISP edge: network namespaces wired through a border gateway that
//! runs `smtpguard run`, real SMTP servers (`smtp_sink`) on the internet side, and swaks as the
//! subscribers' mail software.
//!
//! std and serde_json only (both crates have it), so that `smtpguard/tests/demo.rs` includes this very file
//! and runs the same scenario as an end-to-end test.
//!
//! ```text
//!   bot   100.64.1.2  2001:db8:1001::2 ─┐                 ┌─ mx1    198.51.100.10-19, 2001:db8:ff01::10-14
//!   user  100.64.2.2  2001:db8:1002::2 ─┤   gw (XDP on    ├─ mx2    203.0.113.10-19,  2001:db8:ff02::10-14
//!   biz   100.64.10.5 (exempt)         ─┤   every sub-    ├─ mx3    2001:db8:ff03::10-19
//!   mon   100.127.0.9 (monitor mode)   ─┘   scriber link) └─ relay  192.0.2.25, 2001:db8:25::25 (25, 587 AUTH)
//! ```

use std::{
    collections::BTreeMap,
    fmt, fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

/// A failed step or a broken lab, in plain words.
#[derive(Debug)]
pub struct Error(pub String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

macro_rules! fail {
    ($($arg:tt)*) => {
        return Err(Error(format!($($arg)*)))
    };
}

/// What the scenario needs from its caller.
pub struct Options {
    /// The `smtpguard` binary.
    pub smtpguard: PathBuf,
    /// The `smtp_sink` binary.
    pub sink: PathBuf,
    /// A folder of this run's own (config, state, socket, logs); created, removed at the end.
    pub work: PathBuf,
    /// The agent's pin folder below /sys/fs/bpf; removed at the end.
    pub pin_dir: PathBuf,
    /// Prefix of the namespace names (`<prefix>-gw`, `<prefix>-bot`, ...).
    pub prefix: String,
    /// Leave the lab up at the end (and print how to use it) instead of removing it.
    pub keep: bool,
}

// ---------------------------------------------------------------------------------------------
// Cleanup: everything the lab creates is registered here, so that both the guard's Drop and a
// Ctrl-C handler can remove it.

#[derive(Default)]
struct Registry {
    pids: Vec<u32>,
    namespaces: Vec<String>,
    paths: Vec<PathBuf>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    pids: Vec::new(),
    namespaces: Vec::new(),
    paths: Vec::new(),
});

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

unsafe extern "C" {
    fn kill(pid: i32, signal: i32) -> i32;
    fn signal(signum: i32, handler: extern "C" fn(i32)) -> usize;
}

const SIGINT: i32 = 2;
const SIGKILL: i32 = 9;
const SIGTERM: i32 = 15;

fn kill9(pid: u32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        kill(pid as i32, SIGKILL);
    }
}

/// Kills every registered process, deletes every registered namespace and removes every
/// registered path. Idempotent; what it removed is forgotten.
pub fn cleanup_registered() {
    let taken = std::mem::take(&mut *registry());
    for pid in &taken.pids {
        kill9(*pid);
    }
    for namespace in taken.namespaces.iter().rev() {
        let _ = Command::new("ip")
            .args(["netns", "del", namespace])
            .stderr(Stdio::null())
            .status();
    }
    for path in taken.paths.iter().rev() {
        let _ = fs::remove_dir_all(path);
    }
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// After Ctrl-C the watcher thread cleans up and ends the process: whoever else gets here
/// (a step failing because its processes were killed) waits for that instead of racing it.
fn park_if_interrupted() {
    if INTERRUPTED.load(Ordering::SeqCst) {
        loop {
            thread::park();
        }
    }
}

extern "C" fn on_signal(_: i32) {
    // Only an atomic store here: the watcher thread does the work.
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Makes Ctrl-C (SIGINT) and SIGTERM remove the lab before the process exits (status 130).
/// The handler only sets a flag; a watcher thread cleans up.
pub fn cleanup_on_interrupt() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        signal(SIGINT, on_signal);
        signal(SIGTERM, on_signal);
    }
    thread::spawn(|| {
        loop {
            if INTERRUPTED.load(Ordering::SeqCst) {
                eprintln!("\ninterrupted: removing the demo lab");
                cleanup_registered();
                std::process::exit(130);
            }
            thread::sleep(Duration::from_millis(50));
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Running programs.

fn line(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|w| w.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

fn output(command: &mut Command) -> Result<Output> {
    command
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error(format!("cannot start `{}`: {e}", line(command))))
}

/// Runs the command; fails with its stderr unless it succeeds.
fn check(command: &mut Command) -> Result<String> {
    let out = output(command)?;
    if !out.status.success() {
        fail!(
            "`{}` failed ({}): {}{}",
            line(command),
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> Result<String> {
    check(Command::new("ip").args(args))
}

// ---------------------------------------------------------------------------------------------
// The lab.

const BOT_V4: &str = "100.64.1.2";
const BOT_V6: &str = "2001:db8:1001::2";
/// The IPv6 bot's report row: an IPv6 host is its /64, as a subscriber's whole prefix.
const BOT_V6_ROW: &str = "2001:db8:1001::/64";
const USER_V4: &str = "100.64.2.2";
const BIZ_V4: &str = "100.64.10.5";
const MON_V4: &str = "100.127.0.9";
const RELAY_V4: &str = "192.0.2.25";
const AUTH_USER: &str = "alice";
const AUTH_PASSWORD: &str = "demo-password";

/// One host of the lab: a namespace with one veth to the gateway.
struct Host {
    role: &'static str,
    /// The gateway's end of the link (also the agent's interface for subscribers).
    gw_if: &'static str,
    /// The gateway's addresses on the link, with prefix length.
    gw_addresses: Vec<String>,
    /// The host's addresses, with prefix length.
    addresses: Vec<String>,
    subscriber: bool,
}

fn host(
    role: &'static str,
    gw_if: &'static str,
    gw_addresses: &[&str],
    addresses: Vec<String>,
    subscriber: bool,
) -> Host {
    Host {
        role,
        gw_if,
        gw_addresses: gw_addresses.iter().map(|a| (*a).to_owned()).collect(),
        addresses,
        subscriber,
    }
}

fn range(base: &str, from: u32, to: u32, length: u32) -> Vec<String> {
    (from..=to).map(|i| format!("{base}{i}/{length}")).collect()
}

fn hosts() -> Vec<Host> {
    let with = |mut a: Vec<String>, b: Vec<String>| {
        a.extend(b);
        a
    };
    vec![
        host(
            "bot",
            "bot0",
            &["100.64.1.1/24", "2001:db8:1001::1/64"],
            vec![format!("{BOT_V4}/24"), format!("{BOT_V6}/64")],
            true,
        ),
        host(
            "user",
            "user0",
            &["100.64.2.1/24", "2001:db8:1002::1/64"],
            vec![format!("{USER_V4}/24"), "2001:db8:1002::2/64".to_owned()],
            true,
        ),
        host(
            "biz",
            "biz0",
            &["100.64.10.1/24"],
            vec![format!("{BIZ_V4}/24")],
            true,
        ),
        host(
            "mon",
            "mon0",
            &["100.127.0.1/24"],
            vec![format!("{MON_V4}/24")],
            true,
        ),
        host(
            "mx1",
            "mx1",
            &["198.51.100.1/24", "2001:db8:ff01::1/64"],
            with(
                range("198.51.100.", 10, 19, 24),
                range("2001:db8:ff01::", 10, 14, 64),
            ),
            false,
        ),
        host(
            "mx2",
            "mx2",
            &["203.0.113.1/24", "2001:db8:ff02::1/64"],
            with(
                range("203.0.113.", 10, 19, 24),
                range("2001:db8:ff02::", 10, 14, 64),
            ),
            false,
        ),
        host(
            "mx3",
            "mx3",
            &["2001:db8:ff03::1/64"],
            range("2001:db8:ff03::", 10, 19, 64),
            false,
        ),
        host(
            "relay",
            "relay0",
            &["192.0.2.1/24", "2001:db8:25::1/64"],
            vec![format!("{RELAY_V4}/24"), "2001:db8:25::25/64".to_owned()],
            false,
        ),
    ]
}

/// Every MX address (without prefix length): the bot's targets.
fn mx_addresses(hosts: &[Host]) -> Vec<(String, String)> {
    hosts
        .iter()
        .filter(|h| h.role.starts_with("mx"))
        .flat_map(|h| {
            h.addresses.iter().map(|a| {
                let address = a.split('/').next().unwrap_or(a).to_owned();
                (h.role.to_owned(), address)
            })
        })
        .collect()
}

/// The running lab: namespaces, SMTP servers, the agent. Removed on drop unless kept.
pub struct Lab {
    options_work: PathBuf,
    prefix: String,
    smtpguard: PathBuf,
    sink: PathBuf,
    config: PathBuf,
    hosts: Vec<Host>,
    sinks: Vec<Child>,
    agent: Option<Child>,
    keep: bool,
}

impl Lab {
    fn ns(&self, role: &str) -> String {
        format!("{}-{role}", self.prefix)
    }

    fn build(options: &Options) -> Result<Self> {
        // Leftovers of an earlier run with the same names (a crash, a kill -9) go first.
        let _ = fs::remove_dir_all(&options.work);
        fs::create_dir_all(&options.work)
            .map_err(|e| Error(format!("creating {}: {e}", options.work.display())))?;
        registry().paths.push(options.work.clone());
        registry().paths.push(options.pin_dir.clone());
        let lab = Self {
            options_work: options.work.clone(),
            prefix: options.prefix.clone(),
            smtpguard: options.smtpguard.clone(),
            sink: options.sink.clone(),
            config: options.work.join("smtpguard.toml"),
            hosts: hosts(),
            sinks: Vec::new(),
            agent: None,
            keep: false,
        };
        let roles: Vec<&str> = std::iter::once("gw")
            .chain(lab.hosts.iter().map(|h| h.role))
            .collect();
        for role in &roles {
            let name = lab.ns(role);
            let _ = Command::new("ip")
                .args(["netns", "del", &name])
                .stderr(Stdio::null())
                .status();
            ip(&["netns", "add", &name])?;
            registry().namespaces.push(name.clone());
            // No duplicate address detection (set before the veths exist, so they inherit
            // it): IPv6 addresses are usable at once.
            check(
                Command::new("ip")
                    .args(["netns", "exec", &name, "sysctl", "-qw"])
                    .args([
                        "net.ipv6.conf.all.accept_dad=0",
                        "net.ipv6.conf.default.accept_dad=0",
                    ]),
            )?;
        }
        let gw = lab.ns("gw");
        check(
            Command::new("ip")
                .args(["netns", "exec", &gw, "sysctl", "-qw"])
                .args(["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"]),
        )?;
        let mut gw_batch = vec!["link set lo up".to_owned()];
        for host in &lab.hosts {
            let ns = lab.ns(host.role);
            gw_batch.push(format!(
                "link add {} type veth peer name eth0 netns {ns}",
                host.gw_if
            ));
            for address in &host.gw_addresses {
                let nodad = if address.contains(':') { " nodad" } else { "" };
                gw_batch.push(format!("addr add {address} dev {}{nodad}", host.gw_if));
            }
            gw_batch.push(format!("link set {} up", host.gw_if));
        }
        batch(&gw, &gw_batch)?;
        for host in &lab.hosts {
            let mut commands = vec!["link set lo up".to_owned()];
            for address in &host.addresses {
                let nodad = if address.contains(':') { " nodad" } else { "" };
                commands.push(format!("addr add {address} dev eth0{nodad}"));
            }
            commands.push("link set eth0 up".to_owned());
            for gw_address in &host.gw_addresses {
                let via = gw_address.split('/').next().unwrap_or(gw_address);
                let default = if via.contains(':') {
                    "::/0"
                } else {
                    "0.0.0.0/0"
                };
                commands.push(format!("route add {default} via {via}"));
            }
            batch(&lab.ns(host.role), &commands)?;
        }
        lab.wait_links()?;
        Ok(lab)
    }

    /// Waits until every veth end is up with a usable IPv6 link-local address (IPv6 neighbour
    /// discovery fails before that, and the first IPv6 connection would stall).
    fn wait_links(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut pending: Vec<(String, &str)> = Vec::new();
        for host in &self.hosts {
            pending.push((self.ns("gw"), host.gw_if));
            pending.push((self.ns(host.role), "eth0"));
        }
        while let Some((ns, interface)) = pending.last() {
            let link = ip(&["-n", ns, "-o", "link", "show", "dev", interface])?;
            let local = ip(&[
                "-n", ns, "-o", "-6", "addr", "show", "dev", interface, "scope", "link",
            ])?;
            if link.contains(" state UP ")
                && local.contains("fe80:")
                && !local.contains("tentative")
            {
                pending.pop();
                continue;
            }
            if Instant::now() > deadline {
                fail!("{interface} in {ns} did not come up: {link} {local}");
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    fn start_sinks(&mut self) -> Result<()> {
        for host in self.hosts.iter().filter(|h| !h.subscriber) {
            let log = self.sink_log(host.role);
            let mut command = Command::new("ip");
            command
                .args(["netns", "exec", &self.ns(host.role)])
                .arg(&self.sink)
                .args(["--name", &format!("{}.example", host.role), "--log"])
                .arg(&log)
                .args(["--port", "25"]);
            if host.role == "relay" {
                command.args([
                    "--port",
                    "587",
                    "--auth-port",
                    "587",
                    "--auth",
                    &format!("{AUTH_USER}:{AUTH_PASSWORD}"),
                ]);
            }
            let child = command
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| Error(format!("starting {}: {e}", line(&command))))?;
            registry().pids.push(child.id());
            self.sinks.push(child);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for host in self.hosts.iter().filter(|h| !h.subscriber) {
            while !fs::read_to_string(self.sink_log(host.role))
                .unwrap_or_default()
                .starts_with("ready")
            {
                if Instant::now() > deadline {
                    fail!("the SMTP server of {} did not start", host.role);
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    fn sink_log(&self, role: &str) -> PathBuf {
        self.options_work.join(format!("{role}.log"))
    }

    fn write_config(&self, pin_dir: &Path) -> Result<()> {
        let interfaces: Vec<String> = self
            .hosts
            .iter()
            .filter(|h| h.subscriber)
            .map(|h| format!("\"{}\"", h.gw_if))
            .collect();
        let text = format!(
            r#"# The demo's policy: subscribers may not reach port 25 except through the relay.
[enforcement]
ports = [25]

[[subscribers]]
prefix = "100.64.0.0/10"
mode = "enforce"

[[subscribers]]
prefix = "2001:db8:1000::/36"
mode = "enforce"

[[subscribers]]
prefix = "100.127.0.0/16"
mode = "monitor"

[[relays]]
prefix = "192.0.2.25/32"

[[relays]]
prefix = "2001:db8:25::25/128"

[[exemptions]]
prefix = "100.64.10.0/24"
reason = "business static block"

[capacity]
hosts = 4096

[report]
interval = "1s"

[agent]
interfaces = [{interfaces}]
netns = "{netns}"
xdp_mode = "native"
state_dir = "{work}/state"
socket = "{work}/smtpguard.sock"
metrics_listen = "127.0.0.1:0"
pin_dir = "{pins}"
"#,
            interfaces = interfaces.join(", "),
            netns = self.ns("gw"),
            work = self.options_work.display(),
            pins = pin_dir.display(),
        );
        fs::write(&self.config, text)
            .map_err(|e| Error(format!("writing {}: {e}", self.config.display())))
    }

    fn start_agent(&mut self) -> Result<()> {
        let log_path = self.options_work.join("agent.log");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| Error(format!("opening {}: {e}", log_path.display())))?;
        let stderr = log
            .try_clone()
            .map_err(|e| Error(format!("duplicating a handle: {e}")))?;
        let mut child = Command::new(&self.smtpguard)
            .arg("--config")
            .arg(&self.config)
            .arg("run")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .spawn()
            .map_err(|e| Error(format!("starting smtpguard run: {e}")))?;
        registry().pids.push(child.id());
        // Only bounds a failure: loading and verifying the kernel program takes seconds on a
        // busy machine.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                fail!(
                    "smtpguard run exited with {status} before it was ready; its log:\n{}",
                    fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
            if self.cli(&["status"])?.status.success() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                fail!(
                    "smtpguard run did not answer `status` within 60 s; its log:\n{}",
                    fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
        self.agent = Some(child);
        Ok(())
    }

    /// SIGKILL, as a crash or the OOM killer would.
    fn kill_agent(&mut self) -> Result<u32> {
        let Some(mut agent) = self.agent.take() else {
            fail!("the agent is not running");
        };
        let pid = agent.id();
        let _ = agent.kill();
        let _ = agent.wait();
        registry().pids.retain(|p| *p != pid);
        Ok(pid)
    }

    /// `smtpguard --config <demo config> args...`
    fn cli(&self, args: &[&str]) -> Result<Output> {
        output(
            Command::new("timeout")
                .args(["-s", "KILL", "15"])
                .arg(&self.smtpguard)
                .arg("--config")
                .arg(&self.config)
                .args(args),
        )
    }

    /// Like `cli`, but it must succeed; returns stdout.
    fn cli_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.cli(args)?;
        if !out.status.success() {
            fail!(
                "`smtpguard {}` failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// One message with swaks from `role` to `server`:`port`; true when it was delivered.
    fn send(&self, role: &str, server: &str, port: u16, timeout: u32, extra: &[&str]) -> bool {
        self.swaks(role, server, port, timeout, extra)
            .status()
            .is_ok_and(|s| s.success())
    }

    fn swaks(&self, role: &str, server: &str, port: u16, timeout: u32, extra: &[&str]) -> Command {
        let server = if server.contains(':') {
            format!("[{server}]:{port}")
        } else {
            format!("{server}:{port}")
        };
        let mut command = Command::new("ip");
        command
            .args([
                "netns",
                "exec",
                &self.ns(role),
                "swaks",
                "--server",
                &server,
            ])
            .args(["--from", &format!("{role}@subscriber.example")])
            .args(["--to", "postmaster@mx.example"])
            .args(["--timeout", &format!("{timeout}s")])
            .args(["--header", &format!("Subject: demo message from {role}")])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        command
    }

    /// What the SMTP servers logged, keyed by server role.
    fn seen(&self) -> BTreeMap<String, Seen> {
        self.hosts
            .iter()
            .filter(|h| !h.subscriber)
            .map(|h| {
                let text = fs::read_to_string(self.sink_log(h.role)).unwrap_or_default();
                (h.role.to_owned(), Seen::parse(&text))
            })
            .collect()
    }

    fn status_json(&self) -> Result<serde_json::Value> {
        let text = self.cli_ok(&["status", "--format", "json"])?;
        serde_json::from_str(&text).map_err(|e| Error(format!("status is not JSON ({e}): {text}")))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        park_if_interrupted();
        if self.keep {
            return;
        }
        cleanup_registered();
        for child in self.sinks.iter_mut().chain(self.agent.as_mut()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Connections and messages one SMTP server logged.
#[derive(Default, Clone)]
struct Seen {
    /// (peer, local address) per connection.
    connections: Vec<(String, String)>,
    /// (peer, auth user) per accepted message.
    messages: Vec<(String, String)>,
}

impl Seen {
    fn parse(text: &str) -> Self {
        let field = |line: &str, key: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .unwrap_or("")
                .to_owned()
        };
        let mut seen = Self::default();
        for line in text.lines() {
            if line.starts_with("connect ") {
                seen.connections
                    .push((field(line, "peer="), field(line, "local=")));
            } else if line.starts_with("message ") {
                seen.messages
                    .push((field(line, "peer="), field(line, "auth=")));
            }
        }
        seen
    }
}

/// Connections and messages from any of `peers`, summed over all servers.
fn from_peers(seen: &BTreeMap<String, Seen>, peers: &[&str]) -> (usize, usize) {
    let connections = seen
        .values()
        .flat_map(|s| &s.connections)
        .filter(|(p, _)| peers.contains(&p.as_str()))
        .count();
    let messages = seen
        .values()
        .flat_map(|s| &s.messages)
        .filter(|(p, _)| peers.contains(&p.as_str()))
        .count();
    (connections, messages)
}

fn messages_at(seen: &BTreeMap<String, Seen>, server: &str, peer: &str) -> usize {
    seen.get(server)
        .map_or(0, |s| s.messages.iter().filter(|(p, _)| p == peer).count())
}

/// Writes a shell-style command commands to `ip -n ns -batch -`.
fn batch(ns: &str, commands: &[String]) -> Result<()> {
    let mut child = Command::new("ip")
        .args(["-n", ns, "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error(format!("running ip -batch: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(commands.join("\n").as_bytes());
        let _ = stdin.write_all(b"\n");
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error(format!("waiting for ip -batch: {e}")))?;
    if !out.status.success() {
        fail!(
            "setting up namespace {ns} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// `packets.<reason>` from `status --format json`.
fn packets(status: &serde_json::Value, reason: &str) -> u64 {
    status["packets"][reason].as_u64().unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// The story.

struct Narrator {
    step: usize,
}

impl Narrator {
    fn step(&mut self, title: &str, explanation: &str) {
        self.step += 1;
        println!("\n── step {}: {title}", self.step);
        for line in explanation.lines() {
            println!("   {line}");
        }
    }
}

fn say(text: &str) {
    println!("   {text}");
}

fn ok(text: &str) {
    println!("   ✓ {text}");
}

/// Builds the lab, tells the story, checks every step. On success or failure the lab is removed
/// (unless `options.keep`); the error names the step that misbehaved.
pub fn run(options: &Options) -> Result<()> {
    let started = Instant::now();
    println!("Building the lab: a border gateway and 8 hosts in network namespaces ...");
    let mut lab = Lab::build(options)?;
    lab.start_sinks()?;
    print_topology(&lab);
    let result = story(&mut lab, options);
    park_if_interrupted();
    if options.keep {
        lab.keep = true;
        print_keep(&lab);
    }
    match &result {
        Ok(()) => println!(
            "\nall steps behaved as described ({:.0} s){}",
            started.elapsed().as_secs_f64(),
            if options.keep {
                "; the lab is still up"
            } else {
                "; removing the lab"
            }
        ),
        Err(error) => {
            let log = fs::read_to_string(options.work.join("agent.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            println!("\nthe agent's log, last lines:");
            for line in tail.iter().rev() {
                println!("  {line}");
            }
            println!("\nFAILED: {error}");
        }
    }
    drop(lab);
    result
}

fn print_topology(lab: &Lab) {
    let mxs = mx_addresses(&lab.hosts);
    let v6 = mxs.iter().filter(|(_, a)| a.contains(':')).count();
    println!(
        "
  subscriber side (gateway interfaces bot0 user0 biz0 mon0, where smtpguard attaches)
    bot    {BOT_V4}, {BOT_V6}   an infected home PC that sends spam
    user   {USER_V4}                     a home user with a mail client (account at the ISP's relay)
    biz    {BIZ_V4}                    a business customer, exempted (static block 100.64.10.0/24)
    mon    {MON_V4}                    a subscriber in a newly acquired region, monitor mode
  internet side
    mx1, mx2, mx3   three mail servers on port 25: {} addresses, {v6} of them IPv6
    relay  {RELAY_V4}, 2001:db8:25::25   the ISP's smarthost: port 25, and 587 with AUTH
  namespaces: {}-<name>; SMTP servers: smtp_sink; mail client: swaks",
        mxs.len(),
        lab.prefix
    );
}

fn print_keep(lab: &Lab) {
    let config = lab.config.display();
    let bin = lab.smtpguard.display();
    println!(
        "
The lab is up (--keep). Try it by hand:
  ip netns exec {p}-bot swaks --server 198.51.100.10 --from bot@subscriber.example --to a@mx.example --timeout 3s
  ip netns exec {p}-user swaks --server {RELAY_V4}:587 --auth PLAIN --auth-user {AUTH_USER} --auth-password {AUTH_PASSWORD} --from alice@subscriber.example --to a@mx.example
  ip netns exec {p}-bot bash           (a shell on the infected PC; also -user, -biz, -mon, -mx1, -relay, -gw)
  {bin} --config {config} status
  {bin} --config {config} report --since 1h
  {bin} --config {config} exempt add 100.64.1.2/32 --reason test     (then exempt rm)
  tail -f {work}/mx1.log              (what the mail server mx1 saw)
Remove it all: cargo xtask demo --clean",
        p = lab.prefix,
        work = lab.options_work.display(),
    );
}

fn story(lab: &mut Lab, options: &Options) -> Result<()> {
    let mut n = Narrator { step: 0 };
    let mxs = mx_addresses(&lab.hosts);
    let bot_peers = [BOT_V4, BOT_V6];

    println!("\n── before smtpguard: nothing stops the bot");
    if !lab.send("bot", "198.51.100.10", 25, 5, &[]) {
        fail!("the lab is broken: without smtpguard the bot could not reach mx1 at all");
    }
    if messages_at(&lab.seen(), "mx1", BOT_V4) != 1 {
        fail!("the lab is broken: mx1 did not log the bot's message");
    }
    say("the bot delivered a message straight to mx1 (198.51.100.10:25): mx1 logged it.");
    say("Now the operator starts smtpguard on the gateway:");
    lab.write_config(&options.pin_dir)?;
    say(&format!(
        "$ smtpguard --config {} run    (XDP on bot0 user0 biz0 mon0)",
        lab.config.display()
    ));
    lab.start_agent()?;
    ok("the agent is running and answers the CLI");

    // 1. The bot.
    n.step(
        "the bot tries to deliver spam directly to many mail servers",
        &format!(
            "It connects to port 25 of all {} MX addresses at once (IPv4 from {BOT_V4}, IPv6 from\n\
             {BOT_V6}), each swaks giving up after 3 s.",
            mxs.len()
        ),
    );
    let before = from_peers(&lab.seen(), &bot_peers);
    let mut children = Vec::new();
    for (_, address) in &mxs {
        let child = lab
            .swaks("bot", address, 25, 3, &[])
            .spawn()
            .map_err(|e| Error(format!("starting swaks: {e}")))?;
        registry().pids.push(child.id());
        children.push(child);
    }
    let mut delivered = 0;
    for mut child in children {
        let pid = child.id();
        if child.wait().is_ok_and(|s| s.success()) {
            delivered += 1;
        }
        registry().pids.retain(|p| *p != pid);
    }
    let after = from_peers(&lab.seen(), &bot_peers);
    let (connections, messages) = (after.0 - before.0, after.1 - before.1);
    say(&format!(
        "{} attempts: {delivered} delivered; the MX servers logged {connections} connections \
         and {messages} messages from the bot.",
        mxs.len()
    ));
    if delivered != 0 || connections != 0 || messages != 0 {
        fail!(
            "step 1: the bot got through ({delivered} delivered, {connections} connections seen)"
        );
    }
    ok("every attempt was dropped at the gateway; no MX ever saw the bot");

    // 2. The user, through the relay.
    n.step(
        "the home user sends mail the proper way: through the ISP's relay",
        &format!(
            "Her mail client submits on port 587 of the relay ({RELAY_V4}) with AUTH PLAIN as\n\
             {AUTH_USER}; port 587 is not enforced, and the relay is allowlisted anyway."
        ),
    );
    let relay_before = messages_at(&lab.seen(), "relay", USER_V4);
    let sent = lab.send(
        "user",
        RELAY_V4,
        587,
        5,
        &[
            "--auth",
            "PLAIN",
            "--auth-user",
            AUTH_USER,
            "--auth-password",
            AUTH_PASSWORD,
        ],
    );
    let relay_after = messages_at(&lab.seen(), "relay", USER_V4);
    let authenticated = lab.seen()["relay"]
        .messages
        .iter()
        .any(|(p, a)| p == USER_V4 && a == AUTH_USER);
    if !sent || relay_after != relay_before + 1 || !authenticated {
        fail!("step 2: the user's authenticated submission was not delivered to the relay");
    }
    ok(&format!(
        "delivered: the relay logged 1 message from {USER_V4}, authenticated as {AUTH_USER}"
    ));

    // 3. The business customer.
    n.step(
        "the business customer runs its own mail server and delivers directly",
        &format!(
            "{BIZ_V4} is in the exempted block 100.64.10.0/24; it sends to mx2 (203.0.113.10:25)."
        ),
    );
    let biz_before = messages_at(&lab.seen(), "mx2", BIZ_V4);
    let sent = lab.send("biz", "203.0.113.10", 25, 5, &[]);
    if !sent || messages_at(&lab.seen(), "mx2", BIZ_V4) != biz_before + 1 {
        fail!("step 3: the exempt business customer could not deliver directly");
    }
    ok("delivered: mx2 logged 1 message from the business customer");

    // 4. Monitor mode.
    n.step(
        "a subscriber in a monitor-mode range delivers directly",
        &format!(
            "{MON_V4} is in 100.127.0.0/16, a newly acquired region in monitor mode: smtpguard\n\
             counts what it would block there, but lets it through until the customers are told."
        ),
    );
    let monitored_before = packets(&lab.status_json()?, "monitored");
    let mon_before = messages_at(&lab.seen(), "mx1", MON_V4);
    let sent = lab.send("mon", "198.51.100.11", 25, 5, &[]);
    let monitored_after = packets(&lab.status_json()?, "monitored");
    if !sent || messages_at(&lab.seen(), "mx1", MON_V4) != mon_before + 1 {
        fail!("step 4: the monitor-mode subscriber could not deliver");
    }
    if monitored_after <= monitored_before {
        fail!(
            "step 4: the \"monitored\" counter did not move ({monitored_before} -> {monitored_after})"
        );
    }
    ok(&format!(
        "delivered: mx1 logged it, and the status counter \"monitored\" went from \
         {monitored_before} to {monitored_after} packets"
    ));

    // 5. An exemption by hand.
    n.step(
        "the operator exempts the home user's host with the CLI",
        "She wants to run her own mail server. First, without an exemption, direct delivery fails.",
    );
    let user_direct = |lab: &Lab| -> (bool, usize) {
        let before = messages_at(&lab.seen(), "mx1", USER_V4);
        let sent = lab.send("user", "198.51.100.12", 25, 2, &[]);
        (sent, messages_at(&lab.seen(), "mx1", USER_V4) - before)
    };
    if user_direct(lab) != (false, 0) {
        fail!("step 5: the user reached mx1 directly before being exempted");
    }
    ok("blocked: swaks gave up, mx1 logged nothing");
    let host = format!("{USER_V4}/32");
    say(&format!(
        "$ smtpguard exempt add {host} --reason \"customer runs her own mail server\""
    ));
    lab.cli_ok(&[
        "exempt",
        "add",
        &host,
        "--reason",
        "customer runs her own mail server",
    ])?;
    if user_direct(lab) != (true, 1) {
        fail!("step 5: the exempted user could not deliver directly");
    }
    ok("delivered directly to mx1 (198.51.100.12:25) right after `exempt add`");
    say(&format!("$ smtpguard exempt rm {host}"));
    lab.cli_ok(&["exempt", "rm", &host])?;
    if user_direct(lab) != (false, 0) {
        fail!("step 5: the user still reached mx1 after the exemption was removed");
    }
    ok("blocked again right after `exempt rm`");

    // 6. The abuse desk's view.
    n.step(
        "the abuse desk looks at the report",
        "The agent snapshots per-host statistics every second here (every minute by default).",
    );
    let report = wait_for_bot_report(lab)?;
    say("$ smtpguard report --since 1h");
    for line in report.lines() {
        say(&format!("  {}", line.trim_end()));
    }
    ok("the bot is on top, classified bot, with its attempts and distinct destinations");
    say("$ smtpguard status");
    for line in lab.cli_ok(&["status"])?.lines() {
        say(&format!("  {}", line.trim_end()));
    }
    let status = lab.status_json()?;
    let dropped = packets(&status, "dropped");
    if dropped == 0 || packets(&status, "exempt") == 0 || packets(&status, "monitored") == 0 {
        fail!("step 6: the status counters do not show drops, exempt and monitored traffic");
    }
    ok(&format!("{dropped} packets dropped so far"));

    // 7. A crash.
    n.step(
        "the agent is killed (kill -9) and restarted while the bot keeps trying",
        "Enforcement lives in the kernel (pinned program and link), not in the agent process.",
    );
    let stop = Arc::new(AtomicBool::new(false));
    let tried = Arc::new(AtomicUsize::new(0));
    let got_through = Arc::new(AtomicUsize::new(0));
    let before = from_peers(&lab.seen(), &bot_peers);
    let mut loops = Vec::new();
    for worker in 0..4 {
        let commands: Vec<Command> = mxs
            .iter()
            .skip(worker)
            .step_by(4)
            .map(|(_, address)| lab.swaks("bot", address, 25, 1, &[]))
            .collect();
        let (stop, tried, got_through) = (stop.clone(), tried.clone(), got_through.clone());
        loops.push(thread::spawn(move || {
            let mut commands = commands;
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let index = i % commands.len();
                if let Ok(mut child) = commands[index].spawn() {
                    let pid = child.id();
                    registry().pids.push(pid);
                    if child.wait().is_ok_and(|s| s.success()) {
                        got_through.fetch_add(1, Ordering::SeqCst);
                    }
                    registry().pids.retain(|p| *p != pid);
                    tried.fetch_add(1, Ordering::SeqCst);
                }
                i += 1;
            }
        }));
    }
    thread::sleep(Duration::from_millis(1500));
    let pid = lab.kill_agent()?;
    say(&format!("killed the agent (pid {pid}) with SIGKILL"));
    thread::sleep(Duration::from_millis(1500));
    let status_down = lab.cli(&["status"])?.status.code();
    say(&format!(
        "the CLI cannot reach it now (`smtpguard status` exits {})",
        status_down.map_or("by a signal".to_owned(), |c| c.to_string())
    ));
    lab.start_agent()?;
    say("restarted it: it reuses the pinned maps and swaps its program into the pinned link");
    thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::SeqCst);
    for handle in loops {
        let _ = handle.join();
    }
    let after = from_peers(&lab.seen(), &bot_peers);
    let (tried, got_through) = (
        tried.load(Ordering::SeqCst),
        got_through.load(Ordering::SeqCst),
    );
    let (connections, messages) = (after.0 - before.0, after.1 - before.1);
    say(&format!(
        "the bot made {tried} delivery attempts meanwhile: {got_through} delivered; the MX servers \
         logged {connections} connections and {messages} messages from it."
    ));
    if status_down == Some(0) {
        fail!("step 7: the killed agent still answered");
    }
    if tried == 0 || got_through != 0 || connections != 0 || messages != 0 {
        fail!(
            "step 7: the bot got through while the agent was down or restarting ({got_through} \
             delivered, {connections} connections seen, {tried} tried)"
        );
    }
    ok("blocked throughout: before, during and after the restart");
    Ok(())
}

/// Polls the JSON report until the bot is its first row, classified bot; returns the table.
fn wait_for_bot_report(lab: &Lab) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = lab.cli_ok(&["report", "--since", "1h", "--format", "json"])?;
        let rows: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error(format!("the report is not JSON ({e}): {text}")))?;
        let first = &rows[0];
        let host = first["host"].as_str().unwrap_or("");
        let class = first["class"].as_str().unwrap_or("");
        if (host == BOT_V4 || host == BOT_V6_ROW) && class == "bot" {
            let distinct = first["distinct_destinations"].as_u64().unwrap_or(0);
            let attempts = first["attempts"].as_u64().unwrap_or(0);
            if distinct < 15 || attempts < 20 {
                fail!(
                    "step 6: the bot's row shows too little: {attempts} attempts, {distinct} \
                     distinct destinations"
                );
            }
            return lab.cli_ok(&["report", "--since", "1h"]);
        }
        if Instant::now() > deadline {
            fail!(
                "step 6: the report does not show the bot on top, classified bot, within 15 s:\n{}",
                lab.cli_ok(&["report", "--since", "1h"])?
            );
        }
        thread::sleep(Duration::from_millis(250));
    }
}

/// The processes still registered (for `--keep`), one pid a line.
pub fn registered_pids() -> String {
    registry().pids.iter().map(|p| format!("{p}\n")).collect()
}
