//! Bad input against the real agent: dangerous configs and entries (refused unless forced, the
//! old policy still enforcing for real), nasty CLI arguments and raw socket requests (clear
//! errors, nothing stored), and the socket itself (group permissions, malformed, oversized,
//! slow and too many clients). Needs root (namespaces, veth, bpf, groupadd, setpriv).
//!
//! Every test has its own lab, pin folder, state folder, socket and group, so they run in
//! parallel; guards remove all of it also when a test fails.

use std::{
    ffi::OsString,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    os::{
        fd::AsRawFd as _,
        unix::{ffi::OsStringExt as _, fs::MetadataExt as _, net::UnixStream},
    },
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use serde_json::{Value, json};
use smtpguard::agent::api::MAX_CONNECTIONS;

mod harness;

use harness::*;

/// What a refused change must leave as it was: the store's lists, the audit log and the
/// kernel maps' fill.
#[derive(Debug, PartialEq)]
struct Stored {
    exemptions: Value,
    relays: Value,
    audit: Value,
    maps: Value,
}

impl Stored {
    fn read(f: &Fixture) -> Self {
        Self {
            exemptions: f.json(&["exempt", "list", "--format", "json"]),
            relays: f.json(&["relay", "list", "--format", "json"]),
            audit: f.json(&["audit", "--format", "json"]),
            maps: f.json(&["status", "--format", "json"])["maps"].clone(),
        }
    }
}

/// Asserts that `text` holds no character a terminal would act on (newlines aside).
#[track_caller]
fn assert_printable(text: &str, what: &str) {
    let bad = text
        .char_indices()
        .find(|&(_, c)| c != '\n' && smtpguard::input::is_unprintable(c));
    assert_eq!(
        bad, None,
        "{what}: the message holds an unprintable character: {text:?}"
    );
}

/// Runs the CLI with raw (possibly non-UTF-8) arguments.
fn cli_os(f: &Fixture, args: &[OsString]) -> Output {
    Command::new("timeout")
        .args(["-s", "KILL", "15", BIN, "--config", f.config_str()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running smtpguard")
}

/// Exit code 1 (no signal, no panic), `error:` and every needle on stderr, nothing unprintable.
#[track_caller]
fn assert_refused(output: &Output, needles: &[&str], what: &str) {
    let needles: Vec<&str> = ["error:"].iter().chain(needles).copied().collect();
    assert_fails(output, 1, &needles, what);
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(
        !text.contains("panicked"),
        "{what}: the CLI panicked: {}",
        show(output)
    );
    assert_printable(&text, what);
}

fn socket_of(f: &Fixture) -> PathBuf {
    f.scratch.file("sg.sock")
}

/// Sends `bytes` on a fresh connection and returns the agent's one-line JSON answer. Writing
/// may fail (the agent stops reading an oversized request and closes): the answer is still
/// there to read.
fn raw(socket: &Path, bytes: &[u8]) -> Value {
    let mut stream = UnixStream::connect(socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let _ = stream.write_all(bytes);
    read_answer(stream)
}

fn read_answer(stream: UnixStream) -> Value {
    let mut line = String::new();
    let _ = BufReader::new(stream).read_line(&mut line);
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("answer {line:?} is not JSON: {e}"))
}

/// Asserts a bad-request answer whose message names `needle` and is safe to print.
#[track_caller]
fn assert_bad_request(answer: &Value, needle: &str, what: &str) {
    assert_eq!(
        (&answer["status"], &answer["kind"]),
        (&json!("error"), &json!("bad-request")),
        "{what}: expected a bad-request error, observed {answer}"
    );
    let message = answer["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(needle),
        "{what}: expected the message to name {needle:?}, observed {answer}"
    );
    assert_printable(message, what);
}

fn request_line(request: Value) -> Vec<u8> {
    let mut line = serde_json::to_vec(&request).unwrap();
    line.push(b'\n');
    line
}

#[test]
fn dangerous_changes_are_refused_unless_forced_and_the_old_policy_stays() {
    let f = Fixture::new("input-danger");
    let mut agent = f.start();
    f.assert_blocked("before any change");
    let good = f.config_text("");
    let running = f.scratch.file("running.toml");
    std::fs::write(&running, &good).unwrap();

    let whole_range = f
        .config_text("[[exemptions]]\nprefix = \"100.64.0.0/10\"\nreason = \"every subscriber\"\n");
    let whole_range_warning = "exemption 100.64.0.0/10 covers the whole enforced subscriber \
                               range 100.64.0.0/10";
    let cases = [
        (
            "a whole-range exemption",
            whole_range.clone(),
            whole_range_warning,
        ),
        (
            "no relays",
            good.replace("[[relays]]\nprefix = \"192.0.2.25/32\"\n", ""),
            "[[relays]] is empty but the running config has 1",
        ),
        (
            "every range in monitor mode",
            good.replace("/10\"\n", "/10\"\nmode = \"monitor\"\n")
                .replace("/36\"\n", "/36\"\nmode = \"monitor\"\n"),
            "every [[subscribers]] range is mode = \"monitor\"",
        ),
        (
            "a relay for the whole Internet",
            good.replace("192.0.2.25/32", "0.0.0.0/0"),
            "relay 0.0.0.0/0 covers a large part of the Internet",
        ),
        (
            "other subscriber ranges",
            good.replace("100.64.0.0/10", "10.0.0.0/8")
                .replace("2001:db8:1000::/36", "2001:db8:9000::/36"),
            "[[subscribers]] covers none of the running config's ranges",
        ),
    ];
    for (what, text, warning) in &cases {
        std::fs::write(&f.config, text).unwrap();
        let check = smtpguard(&[
            "config",
            "check",
            f.config_str(),
            "--against",
            running.to_str().unwrap(),
        ]);
        let stderr = String::from_utf8_lossy(&check.stderr);
        assert!(
            check.status.success()
                && stderr.contains(&format!("warning: {}: {warning}", f.config_str()))
                && stderr.contains("`smtpguard reload` refuses this file without --force"),
            "config check of {what}: expected exit 0 and the warning {warning:?}, observed {}",
            show(&check)
        );
        let strict = smtpguard(&[
            "config",
            "check",
            f.config_str(),
            "--against",
            running.to_str().unwrap(),
            "--strict",
        ]);
        assert_fails(&strict, 1, &["error:", "warning (--strict)"], what);

        let reload = f.cli(&["reload"]);
        assert_refused(
            &reload,
            &[
                "reload refused, the running policy stays as it was",
                warning,
                "`smtpguard reload --force` does it anyway",
            ],
            &format!("reload of {what}"),
        );
        f.assert_blocked(&format!("after the refused reload of {what}"));
    }
    // The dropped relay is still there.
    let relays = f.json(&["relay", "list", "--format", "json"]);
    assert_eq!(
        relays[0]["prefix"], "192.0.2.25/32",
        "relays after the refused reloads: {relays}"
    );

    // SIGHUP cannot carry --force: refused the same way, and logged.
    std::fs::write(&f.config, &whole_range).unwrap();
    let refusals = agent.log().matches("reload refused").count();
    agent.signal(Signal::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !agent.log().contains(whole_range_warning)
        || agent.log().matches("reload refused").count() <= refusals
    {
        assert!(
            Instant::now() < deadline && agent.running(),
            "SIGHUP with a dangerous config: expected \"reload refused\" naming the danger in \
             the log within 5 s; log:\n{}",
            agent.log()
        );
        thread::sleep(Duration::from_millis(20));
    }
    f.assert_blocked("after SIGHUP with a dangerous config");
    // One per refused reload (each case by the CLI, then SIGHUP); none as a change.
    let refusals = cases.len() + 1;
    assert_eq!(
        f.audit_actions(f.config_str()),
        vec!["config-refused"; refusals],
        "refused reloads change nothing and are audited as refused, not as changes"
    );

    // Forced: applied for real and audited, with the warning it overrode.
    f.ok(&["reload", "--force"]);
    f.assert_open("after reload --force of a whole-range exemption");
    assert_eq!(
        f.audit_actions(f.config_str())[refusals..],
        ["config-reloaded", "forced"],
        "audit of the forced reload"
    );
    let audit = f.json(&["audit", "--format", "json"]);
    let forced = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "forced")
        .unwrap();
    assert!(
        forced["detail"]
            .as_str()
            .is_some_and(|d| d.contains(whole_range_warning)),
        "the forced entry names what it overrode: {forced}"
    );

    // A danger already running is no change: the same file reloads without --force.
    f.ok(&["reload"]);
    f.assert_open("after reloading the forced file again");

    // Back to the good config (removing a danger is no danger).
    std::fs::write(&f.config, &good).unwrap();
    f.ok(&["reload"]);
    f.assert_blocked("after reloading the good config");

    // Runtime entries: a whole-range exemption and a relay for everything need --force too.
    let before = Stored::read(&f);
    let output = f.cli(&["exempt", "add", "100.64.0.0/10", "--reason", "oops"]);
    assert_refused(
        &output,
        &[whole_range_warning, "`smtpguard exempt add --force`"],
        "exempt add of a whole range",
    );
    let output = f.cli(&["relay", "add", "0.0.0.0/0"]);
    assert_refused(
        &output,
        &[
            "relay 0.0.0.0/0 covers a large part of the Internet",
            "`smtpguard relay add --force`",
        ],
        "relay add 0.0.0.0/0",
    );
    f.assert_blocked("after the refused exempt add and relay add");
    assert_eq!(Stored::read(&f), before, "the refused adds stored nothing");

    f.ok(&[
        "exempt",
        "add",
        "100.64.0.0/10",
        "--reason",
        "migration weekend",
        "--force",
    ]);
    f.assert_open("after exempt add --force of the whole range");
    assert_eq!(
        f.audit_actions("100.64.0.0/10"),
        ["exemption-added", "forced"],
        "audit of the forced exempt add"
    );
}

#[test]
fn nasty_input_is_refused_with_clear_errors_and_nothing_is_stored() {
    let f = Fixture::new("input-nasty");
    let _agent = f.start();
    f.ok(&[
        "exempt",
        "add",
        SUBSCRIBER,
        "--reason",
        "the one good entry",
    ]);
    let before = Stored::read(&f);

    let os = |s: &str| OsString::from(s);
    let add = |prefix: OsString, reason: OsString, extra: &[&str]| {
        let mut args = vec![os("exempt"), os("add"), prefix, os("--reason"), reason];
        args.extend(extra.iter().map(|s| os(s)));
        args
    };
    let huge = "7".repeat(100 * 1024);
    let cases: Vec<(Vec<OsString>, Vec<&str>)> = vec![
        (
            add(os("banana"), os("r"), &[]),
            vec!["prefix \"banana\" is not a prefix"],
        ),
        (
            add(os("100.64.0.1/10"), os("r"), &[]),
            vec!["100.64.0.1/10 has host bits set; expected the network address 100.64.0.0/10"],
        ),
        (
            add(os("100.64.0.0/33"), os("r"), &[]),
            vec!["\"100.64.0.0/33\" is not a prefix"],
        ),
        (
            add(os("2001:db8:1000::/129"), os("r"), &[]),
            vec!["\"2001:db8:1000::/129\" is not a prefix"],
        ),
        (
            add(os("100.64.0.8/32\n"), os("r"), &[]),
            vec!["\"100.64.0.8/32\\n\" is not a prefix"],
        ),
        (
            add(os(&huge), os("r"), &[]),
            vec!["is not a prefix", "(102400 bytes)"],
        ),
        (
            add(
                OsString::from_vec(b"100.64.0.\xff/32".to_vec()),
                os("r"),
                &[],
            ),
            vec!["prefix \"100.64.0.\\xff/32\" (13 bytes) is not valid UTF-8"],
        ),
        (
            add(os("100.64.0.8/32"), os("two\nlines"), &[]),
            vec!["reason \"two\\nlines\" contains the unprintable character U+000A at byte 3"],
        ),
        (
            add(os("100.64.0.8/32"), os("carriage\rreturn"), &[]),
            vec!["U+000D at byte 8"],
        ),
        (
            add(os("100.64.0.8/32"), os("\u{1b}[31mred\u{1b}[0m"), &[]),
            vec!["reason \"\\u{1b}[31mred\\u{1b}[0m\"", "U+001B at byte 0"],
        ),
        (
            add(os("100.64.0.8/32"), os("gpj.\u{202E}exe"), &[]),
            vec!["U+202E at byte 4"],
        ),
        (
            add(os("100.64.0.8/32"), os("   "), &[]),
            vec!["reason is empty"],
        ),
        (
            add(os("100.64.0.8/32"), os(&"r".repeat(513)), &[]),
            vec!["reason is 513 bytes long; expected at most 512 bytes"],
        ),
        (
            add(os("100.64.0.8/32"), os(&huge), &[]),
            vec!["reason is 102400 bytes long; expected at most 512 bytes"],
        ),
        (
            add(
                os("100.64.0.8/32"),
                OsString::from_vec(b"caf\xe9".to_vec()),
                &[],
            ),
            vec!["reason \"caf\\xe9\" (4 bytes) is not valid UTF-8"],
        ),
        (
            add(os("100.64.0.8/32"), os("r"), &["--ticket", "T-1\r\n"]),
            vec!["ticket \"T-1\\r\\n\" contains the unprintable character U+000D"],
        ),
        (
            add(
                os("100.64.0.8/32"),
                os("r"),
                &["--ticket", &"T".repeat(129)],
            ),
            vec!["ticket is 129 bytes long; expected at most 128 bytes"],
        ),
        (
            add(os("100.64.0.8/32"), os("r"), &["--expires=-5d"]),
            vec!["--expires \"-5d\" is neither a duration nor a time"],
        ),
        (
            add(os("100.64.0.8/32"), os("r"), &["--expires", ""]),
            vec!["--expires \"\" is neither a duration nor a time"],
        ),
        (
            add(os("100.64.0.8/32"), os("r"), &["--expires", "99999999999y"]),
            vec!["--expires \"99999999999y\" is more than 10 years ahead"],
        ),
        (
            add(
                os("100.64.0.8/32"),
                os("r"),
                &["--expires", "99999999999999999999999y"],
            ),
            vec!["is neither a duration nor a time"],
        ),
        (
            add(os("100.64.0.8/32"), os("r"), &["--expires", "0s"]),
            vec!["--expires \"0s\" is no time from now"],
        ),
        (
            add(
                os("100.64.0.8/32"),
                os("r"),
                &["--expires", "2020-01-01T00:00:00Z"],
            ),
            vec!["is not in the future"],
        ),
        (
            vec![
                os("exempt"),
                os("rm"),
                OsString::from_vec(b"\xfe\xff".to_vec()),
            ],
            vec!["prefix \"\\xfe\\xff\" (2 bytes) is not valid UTF-8"],
        ),
        (
            vec![
                os("relay"),
                os("add"),
                os("192.0.2.26/32"),
                os("--note"),
                os("\u{7}bell"),
            ],
            vec!["note \"\\u{7}bell\" contains the unprintable character U+0007"],
        ),
        (
            vec![os("relay"), os("add"), os(" 192.0.2.26/32")],
            vec!["prefix \" 192.0.2.26/32\" is not a prefix"],
        ),
        (
            vec![os("check"), os("\u{1b}]0;owned\u{7}"), os("198.51.100.7")],
            vec!["source \"\\u{1b}]0;owned\\u{7}\" is not an IP address"],
        ),
    ];
    for (args, needles) in &cases {
        let what = format!("smtpguard {args:?}");
        assert_refused(&cli_os(&f, args), needles, &what);
    }
    assert_eq!(
        Stored::read(&f),
        before,
        "the refused CLI calls stored nothing"
    );

    // A raw client gets no further than the CLI: the agent checks the same limits.
    let socket = socket_of(&f);
    let exempt = |reason: &str, ticket: Option<&str>, expires: Option<&str>| {
        request_line(
            json!({"op": "exempt-add", "prefix": "100.64.0.9/32", "reason": reason,
                            "ticket": ticket, "expires": expires}),
        )
    };
    let raw_cases: Vec<(Vec<u8>, &str)> = vec![
        (exempt("nul\0byte", None, None), "U+0000 at byte 3"),
        (exempt("\u{1b}[2J", None, None), "reason \"\\u{1b}[2J\""),
        (
            exempt(&"r".repeat(600), None, None),
            "reason is 600 bytes long",
        ),
        (exempt("r", Some("T\n1"), None), "ticket \"T\\n1\""),
        (exempt("", None, None), "reason is empty"),
        (
            exempt("r", None, Some("9999-12-31T23:59:59Z")),
            "is more than 10 years ahead",
        ),
        (
            exempt("r", None, Some("tomorrow")),
            "expires \"tomorrow\" is not a time",
        ),
        (
            request_line(
                json!({"op": "exempt-add", "prefix": "100.64.0.9/32\u{0}", "reason": "r"}),
            ),
            "\"100.64.0.9/32\\0\" is not a prefix",
        ),
        (
            request_line(json!({"op": "relay-add", "prefix": "::/129"})),
            "\"::/129\" is not a prefix",
        ),
        (
            request_line(json!({"op": "audit", "since": "\u{1b}[1m"})),
            "since \"\\u{1b}[1m\" is not a time",
        ),
        (
            exempt(&"r".repeat(1 << 20), None, None),
            "the request is longer than 65536 bytes",
        ),
        (
            b"{\"op\":\"exempt-add\",\"prefix\":\"100.64.0.9/32\",\"reason\":\"\xff\"}\n".to_vec(),
            "reading the request",
        ),
    ];
    for (bytes, needle) in &raw_cases {
        let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(120)]).into_owned();
        assert_bad_request(
            &raw(&socket, bytes),
            needle,
            &format!("raw request {shown:?}"),
        );
    }
    assert_eq!(
        Stored::read(&f),
        before,
        "the refused raw requests stored nothing"
    );
}

/// A connection that has had no answer yet (a read would block).
fn unanswered(stream: &UnixStream) -> bool {
    use nix::sys::socket::{MsgFlags, recv};
    let mut byte = [0u8; 1];
    let flags = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT;
    matches!(
        recv(stream.as_raw_fd(), &mut byte, flags),
        Err(nix::errno::Errno::EAGAIN)
    )
}

#[test]
fn the_socket_keeps_outsiders_and_bad_clients_from_stalling_the_agent() {
    let f = Fixture::new("input-socket");
    let group = TempGroup::new("in");
    std::fs::write(
        &f.config,
        format!("{}socket_group = \"{}\"\n", f.config_text(""), group.name),
    )
    .unwrap();
    let _agent = f.start();
    let socket = socket_of(&f);
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(
        (meta.mode() & 0o777, meta.gid()),
        (0o660, group.gid),
        "the socket's mode and group"
    );

    // Outside the group: refused by the kernel, explained by the CLI, exit code 3.
    let outsider = as_nobody(&socket, None, &["status"]);
    assert_fails(
        &outsider,
        3,
        &[
            "error: permission denied:",
            "is mode 0660, owner root, group",
            &format!("you need to be in group {} (or root)", group.name),
        ],
        "status as nobody outside the group",
    );
    // In the group: served, and the agent knows who it was.
    let insider = as_nobody(
        &socket,
        Some(group.gid),
        &[
            "exempt",
            "add",
            "100.64.0.7/32",
            "--reason",
            "a group member",
        ],
    );
    assert!(
        insider.status.success(),
        "exempt add as a group member: {}",
        show(&insider)
    );
    let list = f.json(&["exempt", "list", "--format", "json"]);
    let who = list[0]["who"].as_str().unwrap_or_default().to_owned();
    assert!(
        !who.is_empty() && who != "root",
        "the exemption names the group member (uid 65534), not root: {list}"
    );

    // Malformed requests each get an error naming the problem.
    for (bytes, needle) in [
        (&b"hello\n"[..], "malformed request"),
        (b"[1,2,3]\n", "malformed request"),
        (b"{\"op\":\"exempt-add\"}\n", "missing field `prefix`"),
        (
            b"{\"op\":\"format-disk\"}\n",
            "unknown variant `format-disk`",
        ),
        // A JSON escape: serde quotes the decoded ESC, the agent escapes it again.
        (b"{\"op\":\"\\u001b[2J\"}\n", "unknown variant `\\u{1b}[2J`"),
        (
            b"{\"op\":\"status\",\"extra\":1}\n",
            "unknown field `extra`",
        ),
        (b"\n", "malformed request"),
    ] {
        let what = format!("request {:?}", String::from_utf8_lossy(bytes));
        assert_bad_request(&raw(&socket, bytes), needle, &what);
    }
    let oversized = vec![b'x'; 70 * 1024];
    assert_bad_request(
        &raw(&socket, &oversized),
        "the request is longer than 65536 bytes",
        "a 70 KiB request",
    );

    // Many connections at once: 200 CLI calls all get their answer (the ones beyond the
    // agent's limit are told "busy" and try again).
    let outputs: Vec<Output> = thread::scope(|scope| {
        let calls: Vec<_> = (0..200)
            .map(|_| scope.spawn(|| f.cli(&["status", "--format", "json"])))
            .collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    });
    let failed: Vec<String> = outputs
        .iter()
        .filter(|o| !o.status.success())
        .map(show)
        .collect();
    assert!(
        failed.is_empty(),
        "200 concurrent status calls: {} failed, first: {:?}",
        failed.len(),
        failed.first()
    );
    // 200 idle connections held open: the agent serves its limit and answers the rest "busy"
    // at once, instead of running out of file descriptors.
    let held: Vec<UnixStream> = (0..200)
        .map(|_| UnixStream::connect(&socket).unwrap())
        .collect();
    let beyond = held.len() - MAX_CONNECTIONS;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let busy = held.iter().filter(|s| !unanswered(s)).count();
        // At least those beyond the limit (a slot of an earlier call may still be closing).
        if busy >= beyond {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "200 idle connections: expected at least {beyond} answered busy at once, observed \
             {busy}"
        );
        thread::sleep(Duration::from_millis(50));
    }
    let last = held.last().unwrap().try_clone().unwrap();
    let answer = read_answer(last);
    assert_eq!(
        (
            &answer["kind"],
            answer["message"]
                .as_str()
                .map(|m| m.contains(&format!("limit of {MAX_CONNECTIONS}")))
        ),
        (&json!("busy"), Some(true)),
        "the answer beyond the limit: {answer}"
    );
    // A CLI call while every slot is taken is answered "busy" and tries again: it gets its
    // answer once the held connections go (the pause only gives it time to be refused first).
    thread::scope(|scope| {
        let waiting = scope.spawn(|| f.cli(&["status"]));
        thread::sleep(Duration::from_millis(500));
        drop(held);
        let output = waiting.join().unwrap();
        assert!(
            output.status.success(),
            "status while the agent was busy: expected it to retry and succeed, observed {}",
            show(&output)
        );
    });

    // A client that sends half a request and then a byte now and then (never the end of the
    // line), and one that sends nothing: neither holds up the others, and both are cut off.
    let slow = UnixStream::connect(&socket).unwrap();
    let mut dripping = slow.try_clone().unwrap();
    let drip = thread::spawn(move || {
        dripping.write_all(b"{\"op\":\"status\"").unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        // JSON white space, until the agent closes the connection.
        while dripping.write_all(b" ").is_ok() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(200));
        }
    });
    let silent = UnixStream::connect(&socket).unwrap();
    f.ok(&["status"]);
    f.ok(&[
        "exempt",
        "add",
        "100.64.0.8/32",
        "--reason",
        "while others dawdle",
    ]);
    assert!(
        unanswered(&slow) && unanswered(&silent),
        "the slow clients were still waiting while the others were served"
    );
    for (stream, what) in [(slow, "half a request, slowly"), (silent, "nothing")] {
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut answer = String::new();
        let _ = (&stream).read_to_string(&mut answer);
        let answer: Value = serde_json::from_str(&answer)
            .unwrap_or_else(|e| panic!("a client that sent {what}: answer {answer:?}: {e}"));
        assert_bad_request(&answer, "no request within 10 seconds", what);
    }
    drip.join().unwrap();
    f.ok(&["status"]);
}
