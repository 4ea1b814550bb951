//! Faults the agent survives without losing anything, each with real traffic through a real
//! lab: kill -9 in the middle of CLI writes, a full or read-only state folder, pins removed
//! by hand, a second agent on the same pins or state, and the subscriber interface deleted
//! and created again (or missing at the start). Needs root (namespaces, veth, bpf, mount).
//!
//! Every test has its own lab, pin folder, state folder and socket (see the harness), so they
//! run in parallel with each other and with the agent tests.

mod harness;

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::atomic::{AtomicUsize, Ordering},
    thread,
    time::Duration,
};

use harness::*;
use nix::sys::signal::Signal;
use serde_json::Value;
use smtpguard_tests::lab::{SUBSCRIBER_INTERFACE, addr};

/// Longest the agent may take to repair something its once-a-second watch finds.
const REPAIRED: Duration = Duration::from_secs(5);

/// The runtime entries of `exempt list` or `relay list`, as prefixes.
fn runtime_prefixes(list: &Value) -> BTreeSet<String> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter(|row| row["source"] == "runtime")
        .map(|row| row["prefix"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// `check src dst` must find `reason` and the kernel maps agreeing with the agent's policy.
#[track_caller]
fn assert_check(f: &Fixture, src: &str, dst: &str, reason: &str, what: &str) {
    let check = f.json(&["check", src, dst, "--format", "json"]);
    assert!(
        check["reason"] == reason && check["kernel_agrees"] == true,
        "{what}: check {src} {dst}: expected reason {reason} with kernel_agrees true, observed \
         {check}"
    );
}

/// Adds `address/32` to the subscriber's eth0, so connections can come from it.
fn add_subscriber_address(f: &Fixture, address: &str) {
    f.lab
        .subscriber
        .ip(&["addr", "add", &format!("{address}/32"), "dev", "eth0"])
        .unwrap();
}

/// The status as JSON.
fn status(f: &Fixture) -> Value {
    f.json(&["status", "--format", "json"])
}

fn attached_interfaces(status: &Value) -> Vec<String> {
    status["attached"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| a["interface"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn detached_interfaces(status: &Value) -> Vec<String> {
    status["detached"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|name| name.as_str().unwrap_or_default().to_owned())
        .collect()
}

/// The host whose exemption the burst tries to add again.
const DUPLICATE: u32 = 150;

/// One CLI write of the burst and how the agent answered it.
struct Write {
    args: Vec<String>,
    output: Output,
}

impl Write {
    /// The prefix the write is about.
    fn prefix(&self) -> &str {
        &self.args[2]
    }

    fn answered_ok(&self) -> bool {
        self.output.status.success()
    }
}

#[test]
fn kill_9_during_a_burst_of_writes_loses_no_answered_write() {
    let f = Fixture::new("burst");
    let agent = f.start();
    // Ten exemptions the burst removes again, and one it tries to add again (a conflict).
    for n in 140..=DUPLICATE {
        f.ok(&[
            "exempt",
            "add",
            &format!("100.64.0.{n}/32"),
            "--reason",
            "old",
        ]);
    }
    let duplicate = format!("100.64.0.{DUPLICATE}/32");
    let mut writes: Vec<Vec<String>> = Vec::new();
    for n in 0..40u32 {
        let args = match n % 4 {
            3 if n % 8 == 7 => vec![
                "exempt".into(),
                "add".into(),
                duplicate.clone(),
                "--reason".into(),
                format!("burst {n}"),
            ],
            0 => vec![
                "exempt".into(),
                "rm".into(),
                format!("100.64.0.{}/32", 140 + n / 4),
            ],
            1 => vec![
                "relay".into(),
                "add".into(),
                format!("203.0.113.{n}/32"),
                "--note".into(),
                "burst".into(),
            ],
            _ => vec![
                "exempt".into(),
                "add".into(),
                format!("100.64.0.{}/32", 100 + n),
                "--reason".into(),
                format!("burst {n}"),
            ],
        };
        writes.push(args);
    }

    // 40 concurrent writers; the agent is killed once a quarter of them have their answer, so
    // some are answered, some are cut off mid-request and some find no agent.
    let answered = AtomicUsize::new(0);
    let results: Vec<Write> = thread::scope(|scope| {
        let handles: Vec<_> = writes
            .iter()
            .map(|args| {
                let (f, answered) = (&f, &answered);
                scope.spawn(move || {
                    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
                    let output = f.cli(&refs);
                    answered.fetch_add(1, Ordering::SeqCst);
                    Write {
                        args: args.clone(),
                        output,
                    }
                })
            })
            .collect();
        eventually(Duration::from_secs(15), "10 answers", || {
            answered.load(Ordering::SeqCst) >= 10
        });
        agent.signal(Signal::SIGKILL);
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    drop(agent);
    let ok = results.iter().filter(|w| w.answered_ok()).count();
    // A conflict is refused (1) or unanswered (2); every other write is done (0) or
    // unanswered (2).
    let unexpected: Vec<&Write> = results
        .iter()
        .filter(|w| {
            let code = w.output.status.code();
            if w.prefix() == duplicate {
                !matches!(code, Some(1 | 2))
            } else {
                !matches!(code, Some(0 | 2))
            }
        })
        .collect();
    assert!(
        ok >= 1,
        "expected at least one write answered before the kill, observed none"
    );
    assert!(
        unexpected.is_empty(),
        "expected exit 1 (refused) or 2 (no answer) for adding {duplicate} again and 0 (done) \
         or 2 for the others, observed: {}",
        unexpected
            .iter()
            .map(|w| format!("{}: {}", w.args.join(" "), show(&w.output)))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let exited = |code| {
        results
            .iter()
            .filter(|w| w.output.status.code() == Some(code))
            .count()
    };
    eprintln!(
        "burst: {ok} done, {} refused (conflicts), {} without an answer (agent killed)",
        exited(1),
        exited(2)
    );

    let _agent = f.start();
    let exemptions = runtime_prefixes(&f.json(&["exempt", "list", "--format", "json"]));
    let relays = runtime_prefixes(&f.json(&["relay", "list", "--format", "json"]));
    // The refused adds changed nothing: the exemption keeps its first reason.
    let list = f.json(&["exempt", "list", "--format", "json"]);
    let kept = list
        .as_array()
        .and_then(|rows| rows.iter().find(|row| row["prefix"] == duplicate.as_str()));
    assert!(
        kept.is_some_and(|row| row["reason"] == "old"),
        "after the restart: expected {duplicate} with its first reason \"old\", observed {kept:?}"
    );
    for write in &results {
        let prefix = write.prefix();
        let (present, verb) = match (write.args[0].as_str(), write.args[1].as_str()) {
            ("relay", _) => (relays.contains(prefix), "relay add"),
            (_, "add") => (exemptions.contains(prefix), "exempt add"),
            _ => (!exemptions.contains(prefix), "exempt rm"),
        };
        if write.answered_ok() {
            assert!(
                present,
                "{verb} {prefix} was answered with success before kill -9, but after the \
                 restart the store disagrees: exemptions {exemptions:?}, relays {relays:?}"
            );
        }
        // Answered or not, the kernel map holds what the store holds.
        let host = prefix.trim_end_matches("/32");
        let (src, dst, reason) = match write.args[0].as_str() {
            "relay" => (
                addr::SUBSCRIBER_V4,
                host,
                if relays.contains(prefix) {
                    "relayed"
                } else {
                    "dropped"
                },
            ),
            _ => (
                host,
                addr::MX_V4,
                if exemptions.contains(prefix) {
                    "exempt"
                } else {
                    "dropped"
                },
            ),
        };
        assert_check(
            &f,
            src,
            dst,
            reason,
            &format!("after the restart, {verb} {prefix}"),
        );
    }

    // Real TCP from a sample: an answered exemption opens port 25, an answered removal closes
    // it.
    let sample = |verb: &str| {
        results
            .iter()
            .find(|w| w.answered_ok() && w.args[0] == "exempt" && w.args[1] == verb)
            .map(|w| w.prefix().trim_end_matches("/32").to_owned())
    };
    for (verb, open) in [("add", true), ("rm", false)] {
        let Some(host) = sample(verb) else { continue };
        add_subscriber_address(&f, &host);
        let timeout = if open { OPEN } else { BLOCKED };
        let connected = attempt_from(&f, ip(&host), mx(), timeout);
        assert_eq!(
            connected,
            open,
            "after the restart, {host} (exempt {verb} answered ok): expected port 25 {}; log:\n{}",
            if open { "open" } else { "blocked" },
            f.log()
        );
    }
}

/// A small tmpfs mounted as a test's state folder; unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Self {
        std::fs::create_dir_all(path).unwrap();
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path));
        Self(path.to_owned())
    }

    /// Writes a file until the file system is full; returns its path.
    fn fill(&self) -> PathBuf {
        use std::io::Write as _;
        let path = self.0.join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let block = vec![0u8; 64 * 1024];
        loop {
            match file.write(&block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(error) if error.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(error) => panic!("filling {}: {error}", path.display()),
            }
        }
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[track_caller]
fn run(command: &mut Command) {
    let output = command.output().unwrap();
    assert!(output.status.success(), "{command:?}: {}", show(&output));
}

/// The host that stays exempt through a fault, a second address of the subscriber.
const EXEMPT_HOST: &str = "100.64.0.3";

/// Exempts `EXEMPT_HOST` and returns a check that the kernel still enforces: the subscriber
/// blocked, the exempt host open.
fn exempt_one_host(f: &Fixture) -> impl Fn(&str) + '_ {
    add_subscriber_address(f, EXEMPT_HOST);
    f.ok(&["exempt", "add", "100.64.0.3/32", "--reason", "before"]);
    let enforcing = move |what: &str| {
        f.assert_blocked(what);
        assert!(
            attempt_from(f, ip(EXEMPT_HOST), mx(), OPEN),
            "{what}: expected the exemption of {EXEMPT_HOST} to keep port 25 open; log:\n{}",
            f.log()
        );
    };
    enforcing("before the fault");
    enforcing
}

/// An ext4 file system in an image file, mounted as a test's state folder with
/// `errors=remount-ro`: what a gateway's state partition does when its disk fails. Unmounted
/// on drop.
struct Ext4 {
    image: PathBuf,
    mount_point: PathBuf,
}

impl Ext4 {
    fn mount(image: PathBuf, mount_point: &Path) -> Self {
        run(Command::new("truncate").args(["-s", "16M"]).arg(&image));
        run(Command::new("mkfs.ext4").arg("-q").arg(&image));
        std::fs::create_dir_all(mount_point).unwrap();
        let ext4 = Self {
            image,
            mount_point: mount_point.to_owned(),
        };
        ext4.mount_again();
        ext4
    }

    fn mount_again(&self) {
        run(Command::new("mount")
            .args(["-o", "loop,errors=remount-ro"])
            .arg(&self.image)
            .arg(&self.mount_point));
    }

    /// Makes the kernel see a file-system error: ext4 turns itself read-only at once, under
    /// the open files of the agent (a remount,ro is refused while files are open for writing).
    fn fail(&self) {
        let output = Command::new("findmnt")
            .args(["-n", "-o", "SOURCE"])
            .arg(&self.mount_point)
            .output()
            .unwrap();
        let device = String::from_utf8(output.stdout).unwrap();
        let device = Path::new(device.trim()).file_name().unwrap().to_owned();
        std::fs::write(
            Path::new("/sys/fs/ext4")
                .join(device)
                .join("trigger_fs_error"),
            "1",
        )
        .unwrap();
    }

    /// What an operator does: unmount, check, mount again.
    fn repair(&self) {
        run(Command::new("umount").arg(&self.mount_point));
        // The loop device detaches itself after the unmount, but not at once; `mount -o loop`
        // reuses a device still attached to the image, and that device's cached blocks
        // predate the check: it mounted read-only again (seen with two test binaries at once).
        eventually_observed(
            Duration::from_secs(10),
            "the image off its loop device after the unmount",
            || {
                let attached = Command::new("losetup")
                    .arg("-j")
                    .arg(&self.image)
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&attached.stdout).into_owned()
            },
            |attached| attached.is_empty(),
        );
        // 1: errors corrected.
        let status = Command::new("e2fsck")
            .arg("-fy")
            .arg(&self.image)
            .output()
            .unwrap();
        assert!(
            matches!(status.status.code(), Some(0 | 1)),
            "e2fsck: {}",
            show(&status)
        );
        self.mount_again();
    }
}

impl Drop for Ext4 {
    fn drop(&mut self) {
        // Lazy: the loop device goes once nothing uses the file system any more.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.mount_point)
            .status();
    }
}

/// When the agent last took a statistics snapshot successfully (the log says so only at
/// debug level).
fn last_snapshot(port: u16) -> f64 {
    metric(port, "smtpguard_last_snapshot_timestamp_seconds").unwrap_or(0.0)
}

#[test]
fn a_full_state_folder_fails_writes_clearly_and_recovers() {
    let f = Fixture::new("full");
    let port = free_port();
    let config = f.config_text("[report]\ninterval = \"1s\"\n");
    std::fs::write(&f.config, with_metrics_port(&config, port)).unwrap();
    let tmpfs = Tmpfs::mount(&f.scratch.file("state"), "2m");
    let mut agent = f.start();
    let enforcing = exempt_one_host(&f);

    // Full: writes are answered with a clear error (a write may still fit in space SQLite
    // holds already, so they go on until one fails), and nothing else breaks.
    let filler = tmpfs.fill();
    let mut kept = Vec::new();
    let mut failure = None;
    for n in 0..400 {
        let prefix = format!("100.64.{}.{}/32", 20 + n / 200, n % 200);
        let output = f.cli(&["exempt", "add", &prefix, "--reason", "while full"]);
        if output.status.success() {
            kept.push(prefix);
        } else {
            failure = Some((prefix, output));
            break;
        }
    }
    let (refused, output) = failure.expect("400 exemptions written to a full file system");
    assert_fails(
        &output,
        1,
        &["error:", "full", "expected free space"],
        "exempt add on a full state folder",
    );
    assert!(
        agent.running(),
        "the agent died of a full disk; log:\n{}",
        agent.log()
    );
    enforcing("with the state folder full");
    let before = last_snapshot(port);
    eventually(REPAIRED, "a failed snapshot in the log", || {
        f.log().contains("statistics snapshot failed")
    });
    assert!(
        agent.running(),
        "the agent died of a failed snapshot; log:\n{}",
        agent.log()
    );

    // Space returns: the next write succeeds and snapshots resume.
    std::fs::remove_file(filler).unwrap();
    f.ok(&[
        "exempt",
        "add",
        "100.64.0.4/32",
        "--reason",
        "space is back",
    ]);
    eventually(REPAIRED, "a snapshot after space returned", || {
        last_snapshot(port) > before
    });

    f.ok(&[
        "exempt",
        "add",
        "100.64.0.6/32",
        "--reason",
        "after the snapshot",
    ]);

    // Durable across a restart: every answered write, no refused one.
    agent.terminate();
    let _agent = f.start();
    let list = runtime_prefixes(&f.json(&["exempt", "list", "--format", "json"]));
    for prefix in ["100.64.0.3/32", "100.64.0.4/32", "100.64.0.6/32"]
        .into_iter()
        .chain(kept.iter().map(String::as_str))
    {
        assert!(
            list.contains(prefix),
            "after the restart: expected {prefix} in {list:?}"
        );
    }
    assert!(
        !list.contains(&refused),
        "after the restart: the refused {refused} is in {list:?}"
    );
    assert_check(
        &f,
        refused.trim_end_matches("/32"),
        addr::MX_V4,
        "dropped",
        "a refused exemption",
    );
    assert_check(
        &f,
        "100.64.0.6",
        addr::MX_V4,
        "exempt",
        "an exemption after recovery",
    );
    enforcing("after the restart");
}

#[test]
fn a_read_only_state_folder_fails_writes_clearly_and_keeps_enforcing() {
    let f = Fixture::new("rofs");
    std::fs::write(&f.config, f.config_text("[report]\ninterval = \"1s\"\n")).unwrap();
    let ext4 = Ext4::mount(f.scratch.file("state.img"), &f.scratch.file("state"));
    let mut agent = f.start();
    let enforcing = exempt_one_host(&f);
    f.ok(&["exempt", "add", "--subscriber", "cust-ro", "--reason", "r"]);

    ext4.fail();
    let output = f.cli(&["exempt", "add", "100.64.0.5/32", "--reason", "read-only"]);
    assert_fails(
        &output,
        1,
        &["error:", "read-only"],
        "exempt add on a read-only state folder",
    );
    // A binding is in the kernel before the store's commit: the refused commit takes it out
    // again, so the exempt customer's address is not left open.
    let output = f.cli(&[
        "session",
        "start",
        "--subscriber",
        "cust-ro",
        "--address",
        "100.64.0.5",
    ]);
    assert_fails(
        &output,
        1,
        &["error:", "read-only"],
        "session start on a read-only state folder",
    );
    assert_check(
        &f,
        "100.64.0.5",
        addr::MX_V4,
        "dropped",
        "the binding the store refused",
    );
    enforcing("with the state folder read-only");
    eventually(REPAIRED, "a failed snapshot in the log", || {
        f.log().contains("statistics snapshot failed")
    });
    assert!(
        agent.running(),
        "the agent died of a read-only folder; log:\n{}",
        agent.log()
    );
    f.ok(&["status"]);

    // The repair needs the file system unmounted: the agent stops (enforcement stays) and
    // starts again on the repaired folder, where the refused write is absent.
    agent.terminate();
    f.assert_blocked("while the agent is stopped for the repair");
    ext4.repair();
    let _agent = f.start();
    f.ok(&[
        "exempt",
        "add",
        "100.64.0.6/32",
        "--reason",
        "writable again",
    ]);
    let list = runtime_prefixes(&f.json(&["exempt", "list", "--format", "json"]));
    assert!(
        list.contains("100.64.0.3/32")
            && list.contains("100.64.0.6/32")
            && !list.contains("100.64.0.5/32"),
        "after the repair: expected 100.64.0.3/32 and 100.64.0.6/32 and not the refused \
         100.64.0.5/32, observed {list:?}"
    );
    assert_check(
        &f,
        "100.64.0.5",
        addr::MX_V4,
        "dropped",
        "the refused exemption",
    );
    enforcing("after the repair");
}

#[test]
fn pins_removed_by_hand_are_pinned_again_without_a_gap() {
    let f = Fixture::new("repin");
    let mut agent = f.start();
    f.assert_blocked("before the pins are removed");
    let dropped = packets(&status(&f), "dropped");
    let root = f.pins.0.root().to_owned();
    std::fs::remove_dir_all(&root).unwrap();
    // The agent holds the links: enforcement goes on with no pin at all.
    f.assert_blocked("right after rm -r of the pin folder");

    let link = root
        .join("links")
        .join(format!("xdp-{SUBSCRIBER_INTERFACE}"));
    let map = root.join("maps").join("SOURCES_V4");
    eventually(REPAIRED, "the link and maps pinned again", || {
        link.exists() && map.exists()
    });
    assert!(agent.running(), "log:\n{}", agent.log());
    assert!(
        agent.log().contains("pinned again"),
        "expected a warning about the removed pins; log:\n{}",
        agent.log()
    );
    let root_text = root.display().to_string();
    assert_eq!(f.audit_actions(&root_text), ["pins-restored"]);

    // CLI writes reach the kernel as before.
    f.ok(&["exempt", "add", SUBSCRIBER, "--reason", "after the repin"]);
    f.assert_open("exempt add after the repin");
    f.ok(&["exempt", "rm", SUBSCRIBER]);
    f.assert_blocked("exempt rm after the repin");
    f.ok(&["exempt", "add", "100.64.0.9/32", "--reason", "kept"]);

    // A restart finds the state in the pins made again: the same maps and link.
    agent.terminate();
    let _agent = f.start();
    f.assert_blocked("after a restart");
    assert_check(&f, "100.64.0.9", addr::MX_V4, "exempt", "after a restart");
    let after = packets(&status(&f), "dropped");
    assert!(
        after > dropped,
        "after a restart: expected the live counters (dropped > {dropped}), observed {after}"
    );
}

#[test]
fn a_second_agent_on_the_same_pins_or_state_is_refused() {
    let f = Fixture::new("second");
    let first = f.start();
    let pid = first.pid().to_string();
    let pins = f.pins.0.root().display().to_string();
    let state = f.scratch.file("state").display().to_string();
    let socket = f.scratch.file("sg.sock").display().to_string();
    let other_state = f.scratch.file("other-state").display().to_string();
    let other_socket = f.scratch.file("other.sock").display().to_string();

    for (name, config, folder) in [
        (
            "the same pins",
            f.config_text("")
                .replace(&state, &other_state)
                .replace(&socket, &other_socket),
            &pins,
        ),
        (
            "the same state",
            f.config_text("").replace(&socket, &other_socket),
            &state,
        ),
    ] {
        let path = f.scratch.file("second.toml");
        std::fs::write(&path, config).unwrap();
        let output = smtpguard(&["--config", path.to_str().unwrap(), "run"]);
        let pid_text = format!("pid {pid}");
        assert_fails(
            &output,
            1,
            &["error:", &pid_text, folder],
            &format!("a second agent on {name}"),
        );
    }

    // The first agent goes on as before.
    f.assert_blocked("the first agent after the refusals");
    f.ok(&["exempt", "add", SUBSCRIBER, "--reason", "first"]);
    f.assert_open("exempt add on the first agent");
    assert_eq!(attached_interfaces(&status(&f)), [SUBSCRIBER_INTERFACE]);
}

/// Deletes the subscriber interface under the running agent, checks it reports it detached
/// and stays up, creates it again and checks enforcement is back on the new interface.
fn delete_and_create_again(f: &Fixture, agent: &mut Agent, metrics_port: u16) {
    let reattachments = metric(metrics_port, "smtpguard_reattachments_total");
    f.lab.delete_subscriber_link().unwrap();
    eventually(
        REPAIRED,
        "status naming the deleted interface detached",
        || detached_interfaces(&status(f)) == [SUBSCRIBER_INTERFACE],
    );
    assert!(agent.running(), "log:\n{}", agent.log());
    assert!(attached_interfaces(&status(f)).is_empty());
    assert_eq!(
        metric(metrics_port, "smtpguard_detached_interfaces"),
        Some(1.0)
    );
    f.lab.create_subscriber_link().unwrap();
    wait_attached(f);
    assert_eq!(
        metric(metrics_port, "smtpguard_detached_interfaces"),
        Some(0.0)
    );
    assert_eq!(
        metric(metrics_port, "smtpguard_reattachments_total"),
        reattachments.map(|count| count + 1.0)
    );
    f.assert_blocked("on the interface created again");
    f.ok(&["exempt", "add", SUBSCRIBER, "--reason", "new interface"]);
    f.assert_open("exempt add on the interface created again");
    f.ok(&["exempt", "rm", SUBSCRIBER]);
    f.assert_blocked("exempt rm on the interface created again");
}

fn wait_attached(f: &Fixture) {
    eventually(
        REPAIRED,
        "status showing the interface attached again",
        || {
            let status = status(f);
            attached_interfaces(&status) == [SUBSCRIBER_INTERFACE]
                && detached_interfaces(&status).is_empty()
        },
    );
}

#[test]
fn an_interface_deleted_and_created_again_is_attached_again_xdp() {
    let f = Fixture::new("recreate-xdp");
    let port = free_port();
    std::fs::write(&f.config, with_metrics_port(&f.config_text(""), port)).unwrap();
    let mut agent = f.start();
    f.assert_blocked("before the interface is deleted");
    delete_and_create_again(&f, &mut agent, port);
    assert_eq!(
        f.audit_actions(SUBSCRIBER_INTERFACE),
        ["interface-detached", "interface-attached"]
    );
    // A restart updates the link of the new interface.
    agent.terminate();
    let agent = f.start();
    f.assert_blocked("after a restart");
    // Deleted and created again while no agent runs: the pinned link is left on the old
    // interface, so the next agent makes a new one instead of updating it.
    agent.terminate();
    f.lab.delete_subscriber_link().unwrap();
    f.lab.create_subscriber_link().unwrap();
    let _agent = f.start();
    assert_eq!(attached_interfaces(&status(&f)), [SUBSCRIBER_INTERFACE]);
    f.assert_blocked("an interface created again while no agent ran");
}

#[test]
fn an_interface_missing_at_start_is_attached_when_it_appears_tc() {
    let f = Fixture::new("recreate-tc");
    let port = free_port();
    let config = with_metrics_port(&f.config_text(""), port);
    std::fs::write(&f.config, format!("{config}attach = \"tc\"\n")).unwrap();
    f.lab.delete_subscriber_link().unwrap();
    let mut agent = f.start();
    let at_start = status(&f);
    assert_eq!(
        (
            detached_interfaces(&at_start),
            attached_interfaces(&at_start)
        ),
        (vec![SUBSCRIBER_INTERFACE.to_owned()], vec![]),
        "an agent started without its interface: expected it detached, observed {at_start}"
    );
    let table = String::from_utf8(f.ok(&["status"]).stdout).unwrap();
    assert!(
        table.contains(&format!("{SUBSCRIBER_INTERFACE}: interface missing")),
        "status table: expected the missing interface named, observed:\n{table}"
    );
    f.lab.create_subscriber_link().unwrap();
    wait_attached(&f);
    f.assert_blocked("once the interface appeared");
    delete_and_create_again(&f, &mut agent, port);
    assert_eq!(
        f.audit_actions(SUBSCRIBER_INTERFACE),
        [
            "interface-detached",
            "interface-attached",
            "interface-detached",
            "interface-attached"
        ]
    );
}
