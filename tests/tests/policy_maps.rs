//! The policy maps as the agent writes them, in the real kernel: the subscriber ranges and
//! exemptions compiled into one source trie, changed one exemption at a time; relays behind
//! their filter; the host classes cached with the statistics, made stale by every change;
//! and the maps an earlier version pinned, unpinned or replaced where they no longer fit.

use std::{net::IpAddr, path::Path, process::Command};

use ipnet::IpNet;
use smtpguard::{config::Config, dataplane::Dataplane, policy::DesiredPolicy};
use smtpguard_common::{Origin, PrefixOrigin, Reason};
use smtpguard_tests::{
    frames::{FrameSpec, TCP_SYN},
    lab::PinFolder,
};

const CONFIG: &str = r#"
[[subscribers]]
prefix = "100.64.0.0/10"
[[subscribers]]
prefix = "100.64.7.0/24"
mode = "monitor"
[[subscribers]]
prefix = "2001:db8:1000::/36"
[[relays]]
prefix = "192.0.2.25/32"
[capacity]
hosts = 4096
"#;

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn net(text: &str) -> IpNet {
    text.parse().unwrap()
}

/// (subscriber mode is monitor, exempt) as the kernel's tries answer for `src`.
fn kernel_view(dataplane: &mut Dataplane, src: &str) -> (Option<bool>, bool) {
    let found = dataplane
        .policy_maps()
        .unwrap()
        .lookup(ip(src), ip("198.51.100.7"))
        .unwrap();
    (
        found.subscriber.map(|s| s.is_monitor()),
        found.exemption.is_some(),
    )
}

/// Exempts (`Some`) or un-exempts (`None`) `prefix` the way the agent does.
fn exempt(
    dataplane: &mut Dataplane,
    desired: &mut DesiredPolicy,
    prefix: IpNet,
    value: Option<PrefixOrigin>,
) {
    let mut maps = dataplane.policy_maps().unwrap();
    maps.set_exemption(desired, prefix, value).unwrap();
}

/// A full reconcile finds nothing to change: the single writes left the maps as it would.
fn assert_maps_hold(dataplane: &mut Dataplane, desired: &DesiredPolicy, after: &str) {
    let report = dataplane.policy_maps().unwrap().reconcile(desired).unwrap();
    assert_eq!(
        (report.added, report.updated, report.removed),
        (0, 0, 0),
        "after {after} the maps differ from the desired policy"
    );
}

#[test]
fn one_exemption_at_a_time_keeps_the_source_trie_equal_to_the_policy() {
    let config = Config::parse(CONFIG, Path::new("policy.toml")).unwrap();
    let mut desired = DesiredPolicy::from_config(&config);
    let mut dataplane = Dataplane::with_policy(&config).unwrap();
    let inside = "100.64.7.9"; // in the monitor range nested in the /16 below
    assert_eq!(kernel_view(&mut dataplane, inside), (Some(true), false));

    // An exemption covering a nested range: the range's own entry must turn exempt too.
    let runtime = Some(PrefixOrigin::new(Origin::Runtime));
    let covering = net("100.64.0.0/16");
    exempt(&mut dataplane, &mut desired, covering, runtime);
    assert_eq!(kernel_view(&mut dataplane, inside), (Some(true), true));
    assert_eq!(
        kernel_view(&mut dataplane, "100.64.200.1"),
        (Some(false), true)
    );
    assert_eq!(
        kernel_view(&mut dataplane, "100.65.0.1"),
        (Some(false), false)
    );

    // An exemption outside every range: an entry, but nobody becomes a subscriber.
    let outside = net("203.0.113.0/24");
    exempt(&mut dataplane, &mut desired, outside, runtime);
    assert_eq!(kernel_view(&mut dataplane, "203.0.113.5"), (None, true));
    assert_maps_hold(&mut dataplane, &desired, "two exempt adds");

    for prefix in [covering, outside] {
        exempt(&mut dataplane, &mut desired, prefix, None);
    }
    assert_eq!(kernel_view(&mut dataplane, inside), (Some(true), false));
    assert_eq!(kernel_view(&mut dataplane, "203.0.113.5"), (None, false));
    assert_eq!(desired, DesiredPolicy::from_config(&config));
    assert_maps_hold(&mut dataplane, &desired, "removing them");
}

/// The reason the XDP entry point gives a SYN to port 25 from `src`.
fn syn_reason(dataplane: &mut Dataplane, src: &str) -> Reason {
    let frame = FrameSpec::tcp(ip(src), ip("198.51.100.7"), 25, TCP_SYN).build();
    dataplane.run_xdp(&frame).unwrap().reason.unwrap()
}

#[test]
fn a_host_class_cached_in_its_statistics_never_outlives_a_policy_change() {
    let config = Config::parse(CONFIG, Path::new("policy.toml")).unwrap();
    let mut desired = DesiredPolicy::from_config(&config);
    let mut dataplane = Dataplane::with_policy(&config).unwrap();
    let (enforced, monitored) = ("100.64.0.2", "100.64.7.9");
    // Twice each: the second segment is judged on the class cached by the first.
    for _ in 0..2 {
        assert_eq!(syn_reason(&mut dataplane, enforced), Reason::Dropped);
        assert_eq!(syn_reason(&mut dataplane, monitored), Reason::Monitored);
    }

    let exemption = net("100.64.0.2/32");
    let runtime = Some(PrefixOrigin::new(Origin::Runtime));
    exempt(&mut dataplane, &mut desired, exemption, runtime);
    assert_eq!(syn_reason(&mut dataplane, enforced), Reason::Exempt);
    exempt(&mut dataplane, &mut desired, exemption, None);
    assert_eq!(syn_reason(&mut dataplane, enforced), Reason::Dropped);

    dataplane.set_override(ip(monitored)).unwrap();
    assert_eq!(syn_reason(&mut dataplane, monitored), Reason::Dropped);
    dataplane.remove_override(ip(monitored)).unwrap();
    assert_eq!(syn_reason(&mut dataplane, monitored), Reason::Monitored);

    // A reload that drops the monitor range: the host falls to the enclosing enforce range.
    let mut reloaded = desired.clone();
    reloaded.subscribers.remove(&net("100.64.7.0/24"));
    dataplane
        .policy_maps()
        .unwrap()
        .reconcile(&reloaded)
        .unwrap();
    assert_eq!(syn_reason(&mut dataplane, monitored), Reason::Dropped);
    // And one that drops every IPv4 range: nobody there is a subscriber any more.
    reloaded
        .subscribers
        .retain(|prefix, _| prefix.network().is_ipv6());
    dataplane
        .policy_maps()
        .unwrap()
        .reconcile(&reloaded)
        .unwrap();
    assert_eq!(syn_reason(&mut dataplane, enforced), Reason::NotSubscriber);
}

/// The reason the XDP entry point gives a SYN to port 25 from the enforced subscriber to
/// `dst`.
fn syn_to(dataplane: &mut Dataplane, dst: &str) -> Reason {
    let frame = FrameSpec::tcp(ip("100.64.0.2"), ip(dst), 25, TCP_SYN).build();
    dataplane.run_xdp(&frame).unwrap().reason.unwrap()
}

#[test]
fn relays_added_and_removed_at_run_time_pass_through_the_filter() {
    let config = Config::parse(CONFIG, Path::new("policy.toml")).unwrap();
    let mut desired = DesiredPolicy::from_config(&config);
    let mut dataplane = Dataplane::with_policy(&config).unwrap();
    // The config's relay is a single address: the filter rules most destinations out.
    assert_eq!(desired.relay_filter().v4.count_ones(), 1);
    assert_eq!(syn_to(&mut dataplane, "192.0.2.25"), Reason::Relayed);
    assert_eq!(syn_to(&mut dataplane, "198.51.100.7"), Reason::Dropped);

    let runtime = Some(PrefixOrigin::new(Origin::Runtime));
    let single = net("203.0.113.25/32");
    let mut maps = dataplane.policy_maps().unwrap();
    maps.set_relay(&mut desired, single, runtime).unwrap();
    assert_eq!(syn_to(&mut dataplane, "203.0.113.25"), Reason::Relayed);
    assert_eq!(syn_to(&mut dataplane, "203.0.113.26"), Reason::Dropped);

    // A relay prefix opens the filter for the whole family: every address in it passes.
    let wide = net("198.18.0.0/24");
    let mut maps = dataplane.policy_maps().unwrap();
    maps.set_relay(&mut desired, wide, runtime).unwrap();
    for dst in ["198.18.0.1", "198.18.0.77", "198.18.0.254"] {
        assert_eq!(syn_to(&mut dataplane, dst), Reason::Relayed, "to {dst}");
    }
    assert_eq!(syn_to(&mut dataplane, "198.18.1.1"), Reason::Dropped);

    for prefix in [single, wide] {
        let mut maps = dataplane.policy_maps().unwrap();
        maps.set_relay(&mut desired, prefix, None).unwrap();
    }
    assert_eq!(syn_to(&mut dataplane, "203.0.113.25"), Reason::Dropped);
    assert_eq!(syn_to(&mut dataplane, "198.18.0.77"), Reason::Dropped);
    assert_eq!(syn_to(&mut dataplane, "192.0.2.25"), Reason::Relayed);
    assert_eq!(desired, DesiredPolicy::from_config(&config));
    assert_eq!(desired.relay_filter().v4.count_ones(), 1);
}

/// `bpftool map create` at `path`; returns the map's id.
fn pin_map(path: &Path, shape: &[&str], name: &str) -> u64 {
    let created = Command::new("bpftool")
        .args(["map", "create"])
        .arg(path)
        .args(shape)
        .args(["name", name])
        .status()
        .unwrap();
    assert!(created.success(), "bpftool map create {name}: {created}");
    pinned_id(path)
}

fn pinned_id(path: &Path) -> u64 {
    let out = Command::new("bpftool")
        .args(["-j", "map", "show", "pinned"])
        .arg(path)
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bpftool map show {}: {e}", path.display()));
    info["id"].as_u64().unwrap()
}

#[test]
fn maps_of_an_earlier_version_are_unpinned_or_replaced_at_load() {
    let pins = PinFolder::new("upgrade");
    pins.0.prepare().unwrap();
    // A map this version no longer has.
    let retired = pins.0.map("EXEMPTIONS_V4");
    let array = ["type", "array", "key", "4", "value", "4", "entries", "1"];
    pin_map(&retired, &array, "EXEMPTIONS_V4");
    // The statistics map as versions before the jiffy field made it: values of 128 bytes.
    let old_stats = [
        "type", "lru_hash", "key", "16", "value", "128", "entries", "4096",
    ];
    let stats_id = pin_map(&pins.0.map("HOST_STATS"), &old_stats, "HOST_STATS");
    // The reply programs' scratch entry with a value of another size than this version's.
    let old_scratch = [
        "type",
        "percpu_array",
        "key",
        "4",
        "value",
        "8",
        "entries",
        "1",
    ];
    pin_map(&pins.0.map("REPLY_ACTION"), &old_scratch, "REPLY_ACTION");
    // A map whose shape did not change: it must be reused as it is.
    let epoch_id = pin_map(&pins.0.map("SKETCH_EPOCH"), &array, "SKETCH_EPOCH");

    let config = Config::parse(CONFIG, Path::new("policy.toml")).unwrap();
    let dataplane = Dataplane::load_pinned(&config.capacity, &pins.0)
        .unwrap_or_else(|e| panic!("loading over an earlier version's pins: {e}"));

    assert!(!retired.exists(), "{} is still pinned", retired.display());
    let replaced: Vec<(&str, u32, u32)> = dataplane
        .replaced_pins()
        .iter()
        .map(|r| (r.name, r.found.value_size, r.expected.value_size))
        .collect();
    let expected_size = std::mem::size_of::<smtpguard_common::HostStats>() as u32;
    let scratch_size = std::mem::size_of::<smtpguard_common::ReplyScratch>() as u32;
    assert_eq!(
        replaced,
        [
            ("HOST_STATS", 128, expected_size),
            ("REPLY_ACTION", 8, scratch_size)
        ]
    );
    assert_ne!(pinned_id(&pins.0.map("HOST_STATS")), stats_id);
    assert_eq!(pinned_id(&pins.0.map("SKETCH_EPOCH")), epoch_id);
    assert!(pins.0.map("SOURCES_V4").exists());
}
