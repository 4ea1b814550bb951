//! docs/operations.md run as written (issue #14): the guide is read from top to bottom and
//! every command a lab can run is run, in its order, against a real agent on a forwarding
//! gateway in network namespaces, with the guide's own configuration. Each `$ ...` command
//! must succeed and print what the guide shows under it (up to the fields that differ from
//! run to run: times, durations, ids); the complete `smtpguard ...` commands in the prose must
//! succeed too. A command or block this test does not know fails it, so a new step in the
//! guide gets run here or an explicit reason why not.
//!
//! Paths: the lab's agent has its own config, socket, state and pin folders; they are put
//! into the commands where the guide names the installed ones, and the guide's names are put
//! back into what the commands print. The gateway's subscriber interface is renamed `eth1`,
//! as in the guide.

use std::{
    io::{Read as _, Write as _},
    path::Path,
    process::{Command, Output, Stdio},
    time::Duration,
};

use nix::sys::signal::Signal;
use pcap_file::{
    DataLink,
    pcap::{PcapHeader, PcapPacket, PcapWriter},
};
use regex::Regex;
use smtpguard_tests::{
    frames::{FrameSpec, TCP_SYN, arp},
    lab::{SUBSCRIBER_INTERFACE, VXLAN_INTERFACE},
};

mod harness;

use harness::*;

const GUIDE: &str = include_str!("../../docs/operations.md");
/// The guide's name for the gateway's subscriber interface.
const GUIDE_INTERFACE: &str = "eth1";

/// Sections whose commands need more than the lab has, and where they are run instead.
const SECTIONS_NOT_IN_LAB: &[(&str, &str)] = &[(
    "Fleet mode",
    "needs the guide's etcd cluster; smtpguard/tests/fleet.rs runs these verbs against real \
     etcd servers",
)];

/// A piece of the guide, in the guide's order.
#[derive(Debug)]
enum Piece {
    Heading(String),
    /// A fenced block: its info string and its lines.
    Block {
        info: String,
        lines: Vec<String>,
    },
    /// A code span in the prose, whitespace folded (a span may wrap across lines).
    Span(String),
}

fn pieces(text: &str) -> Vec<Piece> {
    fn spans(prose: &mut String, pieces: &mut Vec<Piece>) {
        let spans = prose
            .split('`')
            .skip(1)
            .step_by(2)
            .map(|span| span.split_whitespace().collect::<Vec<_>>().join(" "));
        pieces.extend(spans.map(Piece::Span));
        prose.clear();
    }
    let mut pieces = Vec::new();
    let mut prose = String::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if let Some(info) = trimmed.strip_prefix("```") {
            spans(&mut prose, &mut pieces);
            let indent = line.len() - trimmed.len();
            let lines = lines
                .by_ref()
                .take_while(|line| line.trim_start() != "```")
                .map(|line| line.get(indent..).unwrap_or(line.trim_start()).to_owned())
                .collect();
            pieces.push(Piece::Block {
                info: info.to_owned(),
                lines,
            });
        } else if trimmed.starts_with('#') {
            spans(&mut prose, &mut pieces);
            pieces.push(Piece::Heading(
                trimmed.trim_start_matches('#').trim().to_owned(),
            ));
        } else {
            prose.push_str(line);
            prose.push('\n');
        }
    }
    spans(&mut prose, &mut pieces);
    pieces
}

/// A command at a prompt (`$` or `#`) and the lines the guide shows under it.
struct Step<'a> {
    prompt: char,
    command: &'a str,
    shown: &'a [String],
}

fn steps(lines: &[String]) -> Vec<Step<'_>> {
    let starts: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].starts_with("$ ") || lines[i].starts_with("# "))
        .collect();
    starts
        .iter()
        .enumerate()
        .map(|(n, &start)| {
            let end = starts.get(n + 1).copied().unwrap_or(lines.len());
            Step {
                prompt: lines[start].chars().next().unwrap(),
                command: lines[start][2..].trim(),
                shown: &lines[start + 1..end],
            }
        })
        .collect()
}

/// A span that is a whole command, not a synopsis with placeholders (`FILE`, `[--port P]`).
fn complete_command(span: &str) -> Option<&str> {
    let args = span.strip_prefix("smtpguard ")?;
    let synopsis = args.contains("...")
        || args.contains('[')
        || args.contains('|')
        || args
            .split_whitespace()
            .any(|w| w.len() > 1 && w.chars().all(|c| c.is_ascii_uppercase() || c == '_'));
    (!synopsis).then_some(span)
}

/// Fields that differ from run to run, in the guide and in what a command printed.
struct Variable {
    rules: Vec<(Regex, &'static str)>,
    /// For commands other than smtpguard (`ip link`): ids, indexes and tags.
    numbers: Regex,
}

impl Variable {
    fn new() -> Self {
        let rule = |pattern, name| (Regex::new(pattern).unwrap(), name);
        Self {
            rules: vec![
                rule(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", "<time>"),
                rule(r"^(\s*uptime\s+)\S+", "${1}<duration>"),
                rule(r"\(\d+:\d+\)", "(<uid>:<gid>)"),
            ],
            numbers: Regex::new(r"[0-9a-f]{16}|\d+").unwrap(),
        }
    }

    fn normalize(&self, line: &str, numbers: bool) -> String {
        let mut line = line.replace('\r', "");
        for (pattern, name) in &self.rules {
            line = pattern.replace_all(&line, *name).into_owned();
        }
        if numbers {
            line = self.numbers.replace_all(&line, "<n>").into_owned();
        }
        line
    }
}

/// The words of `line`'s pieces between `...` (which stands for cut text).
fn pieces_of(line: &str) -> Vec<Vec<&str>> {
    line.split("...")
        .map(|piece| piece.split_whitespace().collect::<Vec<_>>())
        .filter(|words| !words.is_empty())
        .collect()
}

/// Whether `pieces` occur in `line`'s words in order, each piece as consecutive words.
fn line_shows(line: &str, pieces: &[Vec<&str>]) -> bool {
    let words: Vec<&str> = line.split_whitespace().collect();
    let mut at = 0;
    for piece in pieces {
        let Some(found) = (at..=words.len().saturating_sub(piece.len()))
            .find(|&i| words.get(i..i + piece.len()) == Some(piece.as_slice()))
        else {
            return false;
        };
        at = found + piece.len();
    }
    true
}

/// Every line the guide shows appears in `printed`, in the guide's order; else what is
/// missing.
fn shows(shown: &[String], printed: &str, what: &str) -> Result<(), String> {
    let printed: Vec<&str> = printed.lines().collect();
    let mut at = 0;
    for line in shown {
        let pieces = pieces_of(line);
        if pieces.is_empty() {
            continue;
        }
        match (at..printed.len()).find(|&i| line_shows(printed[i], &pieces)) {
            Some(found) => at = found + 1,
            None => {
                return Err(format!(
                    "{what}: the guide shows\n    {line}\nwhich is not printed (after line \
                     {at}):\n{}",
                    printed.join("\n")
                ));
            }
        }
    }
    Ok(())
}

/// The lab, the agent and what the run has met so far.
struct Run {
    fixture: Fixture,
    agent: Option<Agent>,
    variable: Variable,
    /// (the lab's path, the installed path the guide names)
    paths: Vec<(String, &'static str)>,
    heading: String,
    ran: Vec<String>,
    not_run: Vec<String>,
    /// The complete commands of the current section's prose.
    prose: Vec<String>,
    differences: Vec<String>,
}

impl Run {
    fn new() -> Self {
        let fixture = Fixture::new("guide");
        let gateway = &fixture.lab.gateway;
        for args in [
            &["link", "set", SUBSCRIBER_INTERFACE, "down"][..],
            &["link", "set", SUBSCRIBER_INTERFACE, "name", GUIDE_INTERFACE],
            &["link", "set", GUIDE_INTERFACE, "up"],
        ] {
            gateway.ip(args).unwrap();
        }
        let scratch = |name: &str| fixture.scratch.file(name).display().to_string();
        let paths = vec![
            (scratch("smtpguard.toml"), "/etc/smtpguard/smtpguard.toml"),
            (scratch("sg.sock"), "/run/smtpguard/smtpguard.sock"),
            (scratch("state"), "/var/lib/smtpguard"),
            (
                fixture.pins.0.root().display().to_string(),
                "/sys/fs/bpf/smtpguard",
            ),
        ];
        write_capture(&fixture.scratch.file("edge.pcap"));
        Self {
            fixture,
            agent: None,
            variable: Variable::new(),
            paths,
            heading: String::new(),
            ran: Vec::new(),
            not_run: Vec::new(),
            prose: Vec::new(),
            differences: Vec::new(),
        }
    }

    fn skip(&mut self, what: &str, why: &str) {
        self.not_run.push(format!("{what}: {why}"));
    }

    /// `command` run by sh in the gateway's network namespace, in the scratch folder, with
    /// `smtpguard` on PATH and the lab's paths in place of the installed ones.
    /// `answer` is a prompt to wait for and what to type there.
    fn shell(&self, command: &str, answer: Option<(&str, &str)>) -> Output {
        let mut command = command.to_owned();
        for (lab, installed) in &self.paths {
            command = command.replace(installed, lab);
        }
        let bin = Path::new(BIN).parent().unwrap();
        let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
        let mut child = Command::new("timeout")
            .args(["-s", "KILL", "30", "nsenter"])
            .arg(format!(
                "--net=/run/netns/{}",
                self.fixture.lab.gateway.name()
            ))
            .args(["--", "sh", "-c", &command])
            .current_dir(&self.fixture.scratch.0)
            .env("PATH", path)
            .env("SMTPGUARD_CONFIG", self.fixture.config_str())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let Some((prompt, answer)) = answer else {
            drop(stdin);
            return child.wait_with_output().unwrap();
        };
        // The answer goes in once the prompt is out, as a person types it, so the terminal's
        // echo of it follows the prompt.
        let mut stdout = child.stdout.take().unwrap();
        let mut printed = Vec::new();
        let mut chunk = [0; 4096];
        while !String::from_utf8_lossy(&printed).contains(prompt) {
            let n = stdout.read(&mut chunk).unwrap();
            assert!(n > 0, "`{command}` ended before asking {prompt:?}");
            printed.extend_from_slice(&chunk[..n]);
        }
        stdin.write_all(answer.as_bytes()).unwrap();
        drop(stdin);
        stdout.read_to_end(&mut printed).unwrap();
        let mut output = child.wait_with_output().unwrap();
        output.stdout = printed;
        output
    }

    /// What a command printed (standard output, then standard error), with the guide's
    /// paths in place of the lab's.
    fn printed(&self, output: &Output) -> String {
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        self.installed_paths(text)
    }

    /// `text` with the guide's installed paths in place of the lab's.
    fn installed_paths(&self, mut text: String) -> String {
        for (lab, installed) in &self.paths {
            text = text.replace(lab, installed);
        }
        text
    }

    fn normalized(&self, text: &str, numbers: bool) -> String {
        text.lines()
            .map(|line| self.variable.normalize(line, numbers))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Compares what a command printed with what the guide shows; a difference is noted and
    /// the run goes on, so one run lists every difference.
    fn expect_shown(&mut self, shown: &[String], printed: &str, numbers: bool, what: &str) {
        let shown: Vec<String> = shown
            .iter()
            .map(|line| self.variable.normalize(line, numbers))
            .collect();
        if let Err(difference) = shows(&shown, &self.normalized(printed, numbers), what) {
            self.differences.push(difference);
        }
    }

    /// Runs a command at the guide's `$` prompt and compares what it printed.
    fn run_shown(&mut self, step: &Step) {
        let what = format!("`{}` ({})", step.command, self.heading);
        let (output, numbers) = match step.command {
            "journalctl -u smtpguard -o cat" => {
                let log = self.agent_log();
                self.expect_shown(step.shown, &log, false, &what);
                self.ran.push(step.command.to_owned());
                return;
            }
            // The one interactive verb: answered at its prompt on a terminal.
            "smtpguard detach" => (
                self.shell(
                    "script -qec 'smtpguard detach' /dev/null",
                    Some(("[y/N]", "y\n")),
                ),
                false,
            ),
            command if command.starts_with("smtpguard ") => (self.shell(command, None), false),
            command if command.starts_with("curl ") || command.starts_with("ip link show") => {
                (self.shell(command, None), true)
            }
            command => panic!("the guide runs `{command}`, which this test does not know"),
        };
        let printed = self.printed(&output);
        assert!(
            output.status.success(),
            "{what}: expected exit 0, observed {}:\n{printed}",
            output.status
        );
        self.expect_shown(step.shown, &printed, numbers, &what);
        self.ran.push(step.command.to_owned());
        // `detach` stops the agent after its last snapshot, which reads the whole host table:
        // the next section must not find it still stopping (it restarts a stopped one).
        if step.command == "smtpguard detach"
            && let Some(agent) = self.agent.as_mut()
        {
            let status = agent.wait_exit(Duration::from_secs(60));
            assert!(
                status.is_some(),
                "the agent still runs a minute after detach"
            );
        }
    }

    /// The guide's privileged steps: what systemd does, done as the lab can.
    fn run_privileged(&mut self, step: &Step) {
        match step.command {
            "systemctl enable --now smtpguard" => self.start_agent(),
            command if command.starts_with("systemctl stop smtpguard") => {
                let mut agent = self.agent.take().expect("an agent to stop");
                agent.signal(Signal::SIGTERM);
                let status = agent.wait_exit(Duration::from_secs(10));
                assert!(
                    status.is_some_and(|s| s.success()),
                    "after SIGTERM: {status:?}"
                );
                let log = agent.log();
                self.expect_shown(step.shown, &log, false, step.command);
            }
            command if command.starts_with("dpkg -i") => {
                return self.skip(
                    command,
                    "installs the package; the lab runs the built binary",
                );
            }
            "systemctl edit smtpguard" => {
                return self.skip(
                    "systemctl edit smtpguard",
                    "needs systemd as PID 1; SMTPGUARD_LOG is tested in logging.rs",
                );
            }
            command => panic!("the guide runs `# {command}`, which this test does not know"),
        }
        self.ran.push(format!("# {}", step.command));
    }

    fn start_agent(&mut self) {
        assert!(self.agent.is_none(), "the guide starts a running agent");
        let mut command = Command::new("nsenter");
        command
            .arg(format!(
                "--net=/run/netns/{}",
                self.fixture.lab.gateway.name()
            ))
            .args(["--", BIN]);
        let mut agent = Agent::spawn(
            command,
            &self.fixture.config,
            &self.fixture.scratch.file("agent.log"),
        );
        agent.wait_ready();
        self.agent = Some(agent);
    }

    fn agent_log(&self) -> String {
        self.installed_paths(
            std::fs::read_to_string(self.fixture.scratch.file("agent.log")).unwrap(),
        )
    }

    /// Why the current section's commands are not run, if they are not.
    fn not_in_lab(&self) -> Option<&'static str> {
        SECTIONS_NOT_IN_LAB
            .iter()
            .find(|(section, _)| *section == self.heading)
            .map(|(_, why)| *why)
    }

    fn block(&mut self, info: &str, lines: &[String]) {
        if let Some(why) = self.not_in_lab() {
            for step in steps(lines) {
                self.skip(step.command, why);
            }
            return;
        }
        let text = lines.join("\n");
        match info {
            "toml" if self.heading == "First configuration" => {
                let agent = self
                    .fixture
                    .config_text_listing("", None, &[GUIDE_INTERFACE]);
                let (_, agent) = agent.split_once("[agent]\n").unwrap();
                // The metrics on the default address, which is the gateway namespace's own.
                let agent: String = agent
                    .lines()
                    .filter(|line| !line.starts_with("metrics_listen"))
                    .map(|line| format!("{line}\n"))
                    .collect();
                let text = text.replace(
                    &format!("[agent]\ninterfaces = [\"{GUIDE_INTERFACE}\"]"),
                    &format!("[agent]\n{agent}"),
                );
                std::fs::write(&self.fixture.config, text).unwrap();
            }
            // The rollout step: an edit of the running file, kept as running.toml first.
            "toml" if text.starts_with("# Rollout step") => {
                let running = std::fs::read_to_string(&self.fixture.config).unwrap();
                std::fs::write(self.fixture.scratch.file("running.toml"), &running).unwrap();
                std::fs::write(&self.fixture.config, format!("{text}\n{running}")).unwrap();
            }
            "" => {
                let steps = steps(lines);
                if steps.is_empty() {
                    self.log_block(lines);
                }
                for step in &steps {
                    match step.prompt {
                        '$' if step.command == "cargo xtask package" => self.skip(
                            step.command,
                            "builds the Debian package (minutes); the lab runs the built binary",
                        ),
                        '$' => self.run_shown(step),
                        _ => self.run_privileged(step),
                    }
                }
            }
            info => panic!(
                "a ```{info} block in {}: unknown to this test",
                self.heading
            ),
        }
    }

    /// A block of log lines: what the agent logs at this point of the guide.
    fn log_block(&mut self, lines: &[String]) {
        let first = lines.first().map(String::as_str).unwrap_or_default();
        if first.starts_with("INFO attached for a device without Ethernet") {
            return self.skip(
                first,
                "needs a TUN device; tests/tunnels.rs and agent.rs run it",
            );
        }
        if first.starts_with("WARN a map pinned by an earlier version") {
            return self.skip(first, "needs the pins of an older version; pins.rs runs it");
        }
        assert!(
            first.starts_with("INFO ") || first.starts_with("WARN "),
            "a block in {} that is neither commands nor log lines: {lines:?}",
            self.heading
        );
        // "A new agent reuses the pinned maps ...": the lines of its start.
        if self.agent.is_none() {
            self.start_agent();
        }
        let log = self.agent_log();
        self.expect_shown(lines, &log, false, &format!("the log in {}", self.heading));
        self.ran.push(format!("log: {first}"));
    }

    /// Runs a complete command of the prose. The prose names commands as alternatives to
    /// the steps of its blocks (`smtpguard reload` beside `systemctl reload`), so they run
    /// when their section ends, after its steps.
    fn span(&mut self, command: &str) {
        if let Some(why) = self.not_in_lab() {
            return self.skip(command, why);
        }
        match command {
            "smtpguard detach" => self.skip(command, "asks on a terminal: run in its block"),
            "smtpguard events" => self.skip(command, "follows the agent until it stops"),
            command => {
                let output = self.shell(command, None);
                assert!(
                    output.status.success(),
                    "`{command}` ({}): expected exit 0, observed {}:\n{}\nthe agent's log:\n{}",
                    self.heading,
                    output.status,
                    self.printed(&output),
                    self.agent_log()
                );
                self.ran.push(command.to_owned());
            }
        }
    }

    /// What the lab sets up or takes down where a section of the guide begins.
    fn enter(&mut self, heading: &str) {
        for command in std::mem::take(&mut self.prose) {
            self.span(&command);
        }
        if self.heading == "The warning about unlisted tunnels" {
            self.fixture
                .lab
                .gateway
                .ip(&["link", "del", VXLAN_INTERFACE])
                .unwrap();
        }
        // Each section after the agent started assumes it runs: `detach` stops it, after its
        // last snapshot (which reads the whole host table), so it may still be stopping here.
        if self
            .ran
            .last()
            .is_some_and(|command| command == "smtpguard detach")
            && let Some(agent) = self.agent.as_mut()
        {
            let status = agent.wait_exit(Duration::from_secs(60));
            assert!(
                status.is_some(),
                "the agent still runs a minute after detach"
            );
        }
        if self.agent.as_mut().is_some_and(|agent| !agent.running()) && !heading.is_empty() {
            self.agent = None;
            self.start_agent();
        }
        if heading == "The warning about unlisted tunnels" {
            self.fixture.lab.add_vxlan_tunnel().unwrap();
        }
        self.heading = heading.to_owned();
    }
}

/// The system user the guide hands the pins to, made for the test when the machine has none.
struct SystemUser(Option<&'static str>);

impl SystemUser {
    fn named(name: &'static str) -> Self {
        if nix::unistd::User::from_name(name).unwrap().is_some() {
            return Self(None);
        }
        let output = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                name,
            ])
            .output()
            .unwrap();
        assert!(output.status.success(), "useradd {name}: {}", show(&output));
        Self(Some(name))
    }
}

impl Drop for SystemUser {
    fn drop(&mut self) {
        if let Some(name) = self.0 {
            let _ = Command::new("userdel").arg(name).output();
        }
    }
}

/// The capture of the rollout step: a bot's SYN in the range about to be enforced, a SYN to
/// the relay, an ARP frame, and two SYNs from the range that stays in monitor.
fn write_capture(path: &Path) {
    let (bot, monitored, mx, relay) = (
        ip("100.64.0.2"),
        ip("100.65.0.2"),
        ip("198.51.100.7"),
        ip("192.0.2.25"),
    );
    let frames = [
        FrameSpec::tcp(bot, mx, 25, TCP_SYN).build(),
        FrameSpec::tcp(bot, relay, 25, TCP_SYN).build(),
        arp(),
        FrameSpec::tcp(monitored, mx, 25, TCP_SYN).build(),
        FrameSpec::tcp(monitored, mx, 25, TCP_SYN)
            .src_port(40_001)
            .build(),
    ];
    let header = PcapHeader {
        datalink: DataLink::ETHERNET,
        ..PcapHeader::default()
    };
    let mut writer = PcapWriter::with_header(std::fs::File::create(path).unwrap(), header).unwrap();
    for (i, frame) in frames.iter().enumerate() {
        let at = Duration::from_millis(i as u64);
        writer
            .write_packet(&PcapPacket::new(at, frame.len() as u32, frame))
            .unwrap();
    }
}

#[test]
fn the_operations_guide_runs_as_written() {
    let _user = SystemUser::named("smtpguard");
    let mut run = Run::new();
    for piece in pieces(GUIDE) {
        match piece {
            Piece::Heading(heading) => run.enter(&heading),
            Piece::Block { info, lines } => run.block(&info, &lines),
            Piece::Span(span) => run.prose.extend(complete_command(&span).map(str::to_owned)),
        }
    }
    run.enter("");
    println!("ran {} commands of the guide:", run.ran.len());
    for command in &run.ran {
        println!("  {command}");
    }
    println!("not run:");
    for reason in &run.not_run {
        println!("  {reason}");
    }
    assert!(
        run.differences.is_empty(),
        "{} outputs differ from the guide:\n\n{}",
        run.differences.len(),
        run.differences.join("\n\n")
    );
    // The guide's tour: more than a handful of its commands, and the last one detaches.
    assert!(
        run.ran.len() >= 30,
        "only {} commands of the guide ran",
        run.ran.len()
    );
    assert!(run.ran.iter().any(|command| command == "smtpguard detach"));
}

/// The matcher the test stands on: it must refuse what the guide does not show.
#[test]
fn the_matcher_finds_shown_lines_in_order_and_refuses_others() {
    let printed = " A  1  x\n B  2  long text here\n C  3";
    let shown = |lines: &[&str]| lines.iter().map(|l| l.to_string()).collect::<Vec<_>>();
    assert_eq!(
        shows(&shown(&[" A 1", " B 2 long ...", "C"]), printed, "ok"),
        Ok(())
    );
    for bad in [&[" B 2", " A 1"][..], &[" A 2"], &[" B 2 long ... x"]] {
        assert!(
            shows(&shown(bad), printed, "bad").is_err(),
            "{bad:?} must not match"
        );
    }
}
