//! Pinned enforcement outlives the process that attached it: maps and links stay on bpffs, a
//! new instance reuses the maps (statistics survive) and swaps its program into the pinned
//! link atomically, and detaching on purpose is what ends enforcement. Real kernel, real
//! namespaces, real TCP.

use std::{net::IpAddr, path::Path, time::Duration};

use aya::programs::XdpMode;
use smtpguard::{
    config::Config,
    dataplane::{Attach, AttachOutcome, Dataplane, PinLayout},
    policy::DesiredPolicy,
};
use smtpguard_common::Origin;
use smtpguard_tests::lab::{
    Connect, GatewayLab, PinFolder, SUBSCRIBER_INTERFACE, Servers, addr, connect,
};

const CONFIG: &str = r#"
[[subscribers]]
prefix = "100.64.0.0/10"
[[relays]]
prefix = "192.0.2.25/32"
[capacity]
hosts = 4096
"#;

const BLOCKED: Duration = Duration::from_secs(1);
const OPEN: Duration = Duration::from_secs(3);

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn load(pins: &PinLayout, desired: &DesiredPolicy) -> Dataplane {
    let config = Config::parse(CONFIG, Path::new("pins.toml")).unwrap();
    let mut dataplane =
        Dataplane::load_pinned(&config.capacity, pins).unwrap_or_else(|e| panic!("load: {e}"));
    dataplane.policy_maps().unwrap().reconcile(desired).unwrap();
    dataplane
}

#[test]
fn enforcement_outlives_the_process_and_survives_a_restart() {
    let lab = GatewayLab::new().unwrap();
    let _servers = Servers::start(&lab.internet, &[25]).unwrap();
    let pins = PinFolder::new("restart");
    let config = Config::parse(CONFIG, Path::new("pins.toml")).unwrap();
    let desired = DesiredPolicy::from_config(&config);
    let mx = ip(addr::MX_V4);
    let subscriber = ip(addr::SUBSCRIBER_V4);
    let blocked = || connect(&lab.subscriber, mx, 25, BLOCKED);

    assert_eq!(
        blocked(),
        Connect::Greeted,
        "the lab routes port 25 before attaching"
    );

    // First instance: creates maps and a pinned link.
    let mut first = load(&pins.0, &desired);
    let outcome = lab
        .gateway
        .run(|| first.attach_pinned(&pins.0, SUBSCRIBER_INTERFACE, Attach::Xdp(XdpMode::Driver)));
    assert_eq!(outcome.unwrap().outcome, AttachOutcome::Created);
    assert_eq!(blocked(), Connect::TimedOut, "attached: port 25 is blocked");
    let attempts_before = first
        .hosts()
        .unwrap()
        .into_iter()
        .find(|(h, _)| *h == subscriber);
    let attempts_before = attempts_before
        .expect("the subscriber is tracked")
        .1
        .attempts;

    // The process goes away: the pinned link keeps the program on the interface.
    drop(first);
    assert_eq!(
        blocked(),
        Connect::TimedOut,
        "still blocked with no process holding the program"
    );

    // A new instance reuses the pinned maps and updates the link in place.
    let mut second = load(&pins.0, &desired);
    let hosts = second.hosts().unwrap();
    let stats = hosts
        .iter()
        .find(|(h, _)| *h == subscriber)
        .map(|(_, s)| *s);
    let stats = stats.expect("per-host statistics survived the restart");
    assert!(
        stats.attempts >= attempts_before,
        "attempts went from {attempts_before} to {}",
        stats.attempts
    );
    let outcome = lab
        .gateway
        .run(|| second.attach_pinned(&pins.0, SUBSCRIBER_INTERFACE, Attach::Xdp(XdpMode::Driver)));
    assert_eq!(outcome.unwrap().outcome, AttachOutcome::Updated);
    assert_eq!(
        blocked(),
        Connect::TimedOut,
        "blocked after the link update"
    );
    // The reused host table kept its seed: the new program finds the subscriber's slot and
    // adds to it, rather than placing it anew.
    let records = second.host_records().unwrap();
    let entries: Vec<_> = records
        .hosts
        .iter()
        .filter(|record| record.key.address() == subscriber)
        .collect();
    assert_eq!(entries.len(), 1, "one entry of the subscriber: {entries:?}");
    assert!(
        entries[0].duplicate.is_none() && entries[0].stats.attempts > stats.attempts,
        "the subscriber's entry went on counting: {entries:?} after {stats:?}"
    );

    // The new instance's maps are the live ones: exempting the subscriber opens port 25.
    let mut exempted = desired.clone();
    exempted.add_exemption("100.64.0.2/32".parse().unwrap(), Origin::Runtime);
    let report = second.policy_maps().unwrap().reconcile(&exempted).unwrap();
    assert_eq!((report.added, report.updated, report.removed), (1, 0, 0));
    assert_eq!(
        connect(&lab.subscriber, mx, 25, OPEN),
        Connect::Greeted,
        "exempt now"
    );
    let report = second.policy_maps().unwrap().reconcile(&desired).unwrap();
    assert_eq!((report.added, report.updated, report.removed), (0, 0, 1));
    assert_eq!(
        blocked(),
        Connect::TimedOut,
        "blocked again once the exemption is gone"
    );

    // Switching to TC puts the new link in place before the XDP one is removed.
    let outcome = lab
        .gateway
        .run(|| second.attach_pinned(&pins.0, SUBSCRIBER_INTERFACE, Attach::Tc));
    assert_eq!(outcome.unwrap().outcome, AttachOutcome::Created);
    let kinds: Vec<String> = pins
        .0
        .attachments()
        .unwrap()
        .into_iter()
        .map(|a| a.kind)
        .collect();
    assert_eq!(kinds, ["tc"]);
    assert_eq!(blocked(), Connect::TimedOut, "blocked by TC");

    // Detaching on purpose ends enforcement, even with the program still loaded here.
    for attachment in pins.0.attachments().unwrap() {
        pins.0.detach(&attachment).unwrap();
    }
    assert_eq!(
        connect(&lab.subscriber, mx, 25, OPEN),
        Connect::Greeted,
        "detached"
    );
    drop(second);
}

#[test]
fn snapshots_within_one_millisecond_are_recorded() {
    // The store keeps milliseconds: two snapshots inside the same millisecond must still form
    // an interval that ends after it starts.
    use smtpguard_tests::frames::{FrameSpec, TCP_SYN};
    use std::time::{SystemTime, UNIX_EPOCH};
    let pins = PinFolder::new("snapshots");
    let config = Config::parse(CONFIG, Path::new("pins.toml")).unwrap();
    let mut dataplane = load(&pins.0, &DesiredPolicy::from_config(&config));
    let state = std::env::temp_dir().join(format!("smtpguard-snapshots-{}", std::process::id()));
    let mut snapshotter = smtpguard::report::snapshot::Snapshotter::open(&pins.0, &state).unwrap();
    let syn = FrameSpec::tcp(ip("100.64.0.2"), ip("198.51.100.7"), 25, TCP_SYN).build();
    let millisecond = UNIX_EPOCH
        + Duration::from_millis(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64
                + 1_000,
        );
    for offset_us in [100, 400, 700] {
        dataplane.run_xdp(&syn).unwrap();
        let report = snapshotter
            .take(millisecond + Duration::from_micros(offset_us))
            .unwrap_or_else(|e| panic!("snapshot at +{offset_us} us: {e}"));
        assert_eq!(
            report.intervals_written, 1,
            "the host's new segment is recorded"
        );
    }
    drop(snapshotter);
    std::fs::remove_dir_all(&state).unwrap();
}

#[test]
fn a_host_in_its_slot_and_in_the_overflow_is_counted_once_and_idle_overflow_entries_go() {
    use smtpguard_common::{HostKey, HostStats};
    use std::time::SystemTime;
    let pins = PinFolder::new("duplicates");
    let config = Config::parse(CONFIG, Path::new("pins.toml")).unwrap();
    let mut dataplane = load(&pins.0, &DesiredPolicy::from_config(&config));
    let state = std::env::temp_dir().join(format!("smtpguard-duplicates-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);
    let mut snapshotter = smtpguard::report::snapshot::Snapshotter::open(&pins.0, &state).unwrap();
    let counted = |attempts: u64, epoch: u32| {
        let mut stats = HostStats::first_seen(1_000, 0, epoch);
        (stats.attempts, stats.segments, stats.dropped) = (attempts, attempts, attempts);
        stats
    };
    // The host's slot (3 attempts) and, as a CPU that lost the claim's race would leave it,
    // an overflow entry of the same host (1 attempt); then 2,000 scattered hosts last seen in
    // epoch 0, of which a few hundred share a slot and take the overflow.
    let key = HostKey::from_v4([100, 64, 0, 9]);
    let others = (1..=2_000u32).map(|i| {
        let scattered = 0x6440_0000 | (i.wrapping_mul(0x9e37_79b1) & 0x003f_ffff);
        (HostKey::from_v4(scattered.to_be_bytes()), counted(1, 0))
    });
    dataplane
        .insert_hosts(
            [(key, counted(3, 1)), (key, counted(1, 1))]
                .into_iter()
                .chain(others),
        )
        .unwrap();
    let records = dataplane.host_records().unwrap();
    let mine = records.hosts.iter().find(|r| r.key == key).unwrap();
    assert!(mine.slot.is_some() && mine.duplicate.is_some(), "{mine:?}");
    let overflow = dataplane.host_count().unwrap().overflow;
    assert!(
        overflow > 1,
        "scattered hosts share slots: {overflow} in the overflow"
    );

    let first = SystemTime::now();
    let report = snapshotter.take(first).unwrap();
    assert_eq!(report.hosts_read, 2_001);
    let second = first + Duration::from_secs(60);
    let report = snapshotter.take(second).unwrap();
    assert_eq!(
        report.intervals_written, 0,
        "nothing new: the slot's cursor is the slot's own, the duplicate is gone"
    );
    let history = smtpguard::store::Store::open(&state)
        .unwrap()
        .host_intervals(first - Duration::from_secs(3600), second)
        .unwrap();
    let attempts: u64 = history
        .iter()
        .filter(|interval| interval.host == key.addr)
        .map(|interval| interval.attempts)
        .sum();
    assert_eq!(attempts, 4, "the slot's 3 and the duplicate's 1, once");
    let count = dataplane.host_count().unwrap();
    assert_eq!(
        count.overflow, 0,
        "the duplicate went after the first snapshot, the hosts idle since epoch 0 after the \
         second (epoch 2): {count:?}"
    );
    assert_eq!(count.slots_used, 2_002 - overflow, "2,002 entries written");
    drop(snapshotter);
    std::fs::remove_dir_all(&state).unwrap();
}

/// `reject` goes on answering with no process holding the program: the reply programs'
/// arrays are pinned, so the kernel keeps their programs; a new instance puts its own reply
/// programs into the same arrays.
#[test]
fn reject_keeps_answering_while_the_agent_is_stopped() {
    let lab = GatewayLab::new().unwrap();
    let _servers = Servers::start(&lab.internet, &[25]).unwrap();
    let pins = PinFolder::new("reject");
    let text = CONFIG.replace(
        "[[subscribers]]\n",
        "[[subscribers]]\naction = \"reject\"\nrate = 100\nper = \"1h\"\n",
    );
    let config = Config::parse(&text, Path::new("pins.toml")).unwrap();
    let desired = DesiredPolicy::from_config(&config);
    let refused = || match connect(&lab.subscriber, ip(addr::MX_V4), 25, OPEN) {
        Connect::Failed(error) if error.contains("Connection refused") => Ok(()),
        other => Err(other),
    };
    let attach = |dataplane: &mut Dataplane| {
        lab.gateway
            .run(|| {
                dataplane.attach_pinned(&pins.0, SUBSCRIBER_INTERFACE, Attach::Xdp(XdpMode::Driver))
            })
            .unwrap_or_else(|e| panic!("attaching: {e}"))
    };

    let mut first = load(&pins.0, &desired);
    attach(&mut first);
    assert_eq!(
        refused(),
        Ok(()),
        "attached: the SYN is answered with a reset"
    );
    drop(first);
    assert_eq!(
        refused(),
        Ok(()),
        "no process holds the program: still answered, not dropped"
    );

    let mut second = load(&pins.0, &desired);
    assert_eq!(attach(&mut second).outcome, AttachOutcome::Updated);
    drop(second);
    assert_eq!(
        refused(),
        Ok(()),
        "after a restart and with its process gone again"
    );
}

/// A host's attempts over its rate reach the history as `limited`, and from there the report.
#[test]
fn limited_attempts_reach_the_history_and_the_report() {
    use smtpguard::report::{Grouping, ReportOptions};
    use smtpguard_tests::frames::{FrameSpec, TCP_SYN};
    use std::time::SystemTime;
    let pins = PinFolder::new("limited");
    let text = CONFIG.replace(
        "[[subscribers]]\n",
        "[[subscribers]]\naction = \"ratelimit\"\nrate = 2\nper = \"1h\"\n",
    );
    let config = Config::parse(&text, Path::new("pins.toml")).unwrap();
    let mut dataplane = load(&pins.0, &DesiredPolicy::from_config(&config));
    let state = std::env::temp_dir().join(format!("smtpguard-limited-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);
    let mut snapshotter = smtpguard::report::snapshot::Snapshotter::open(&pins.0, &state).unwrap();
    let syn = FrameSpec::tcp(ip("100.64.0.2"), ip("198.51.100.7"), 25, TCP_SYN).build();
    let start = SystemTime::now();
    let mut limited = Vec::new();
    for (attempts, now) in [(5, start), (3, start + Duration::from_secs(60))] {
        for _ in 0..attempts {
            dataplane.run_xdp(&syn).unwrap();
        }
        snapshotter.take(now).unwrap();
        let history = smtpguard::store::Store::open(&state)
            .unwrap()
            .host_intervals(
                start - Duration::from_secs(3600),
                now + Duration::from_secs(1),
            )
            .unwrap();
        limited.push(history.iter().map(|i| i.limited).collect::<Vec<_>>());
    }
    assert_eq!(
        limited,
        [vec![3], vec![3, 3]],
        "rate 2: 3 of the first 5 attempts limited, then all 3 of the next interval's"
    );
    let options = ReportOptions {
        from: start - Duration::from_secs(3600),
        to: start + Duration::from_secs(61),
        top: None,
        min_attempts: 0,
        prefix: None,
        group: Grouping::Host,
        limited_only: true,
    };
    let history = smtpguard::store::Store::open(&state)
        .unwrap()
        .host_intervals(options.from, options.to)
        .unwrap();
    let rows = smtpguard::report::build(&history, &config, &options);
    let rows: Vec<(String, u64)> = rows
        .iter()
        .map(|row| (row.host.to_string(), row.limited))
        .collect();
    assert_eq!(rows, [("100.64.0.2".to_owned(), 6)]);
    drop(snapshotter);
    std::fs::remove_dir_all(&state).unwrap();
}
