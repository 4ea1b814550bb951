//! `smtpguard report` as the binary, over a state folder whose history was written through the
//! store as the agent's snapshots write it (issue #14): attempts per minute over the time a
//! host was active, distinct destinations marked as estimates, and the mode a host was judged
//! under at the time, in the table, JSON and CSV. Needs no privileges.

use std::{
    collections::HashMap,
    net::Ipv4Addr,
    time::{Duration, SystemTime},
};

use serde_json::Value;
use smtpguard::store::{HostInterval, SnapshotState, Store};
use smtpguard_common::{Reason, host::ipv4_mapped, sketch};

mod harness;

use harness::*;

/// Whole seconds, as the store keeps milliseconds.
fn whole_seconds(time: SystemTime) -> SystemTime {
    let since = time.duration_since(SystemTime::UNIX_EPOCH).unwrap();
    SystemTime::UNIX_EPOCH + Duration::from_secs(since.as_secs())
}

/// One interval of `host` from `start` to `end` (seconds after `base`), active from `first`
/// to `last`, with one segment (a SYN) to each of `destinations`, judged for `reason`.
fn interval(
    base: SystemTime,
    host: Ipv4Addr,
    [start, first, last, end]: [u64; 4],
    destinations: &[Ipv4Addr],
    reason: Reason,
) -> HostInterval {
    let second = |s: u64| base + Duration::from_secs(s);
    let mut registers = [0u8; sketch::SKETCH_REGISTERS];
    for destination in destinations {
        let (index, rank) = sketch::slot(&ipv4_mapped(destination.octets()));
        registers[index] = registers[index].max(rank);
    }
    let attempts = destinations.len() as u64;
    HostInterval {
        host: ipv4_mapped(host.octets()),
        start: second(start),
        end: second(end),
        first_seen: second(first),
        last_seen: second(last),
        attempts,
        segments: attempts,
        dropped: if reason == Reason::Dropped {
            attempts
        } else {
            0
        },
        sketch: registers,
        last_dst: ipv4_mapped(destinations[0].octets()),
        last_port: 25,
        last_reason: reason as u16,
    }
}

fn mx(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 51, 100, n)
}

/// A state folder with the history of three hosts in the last half hour, and a config that
/// puts them in one range, in monitor mode today.
fn state_with_history(scratch: &Scratch) -> String {
    let base = whole_seconds(SystemTime::now() - Duration::from_secs(30 * 60));
    let (one, busy, switched) = (
        Ipv4Addr::new(100, 64, 0, 2),
        Ipv4Addr::new(100, 64, 0, 3),
        Ipv4Addr::new(100, 64, 0, 4),
    );
    let snapshots = [
        vec![
            // Enforced then: one SYN in a 5-second interval (the first after a restart).
            interval(base, one, [55, 57, 57, 60], &[mx(10)], Reason::Dropped),
            // Enforced then (an escalation, or before the range went back to monitor).
            interval(
                base,
                switched,
                [0, 10, 40, 60],
                &[mx(10), mx(11)],
                Reason::Dropped,
            ),
        ],
        vec![
            // Monitored: 12 SYNs to 4 MX hosts within 2 minutes of a 10-minute interval.
            interval(
                base,
                busy,
                [60, 300, 420, 660],
                &[mx(10), mx(11), mx(12), mx(13)].repeat(3),
                Reason::Monitored,
            ),
            interval(
                base,
                switched,
                [60, 70, 70, 660],
                &[mx(12)],
                Reason::Monitored,
            ),
        ],
    ];
    let state = scratch.file("state");
    let mut store = Store::open(&state).unwrap();
    for (epoch, snapshot) in snapshots.iter().enumerate() {
        let last = snapshot[0].end;
        store
            .record_snapshot(
                snapshot,
                &HashMap::new(),
                SnapshotState {
                    epoch: epoch as u32 + 1,
                    last,
                },
            )
            .unwrap();
    }
    let config = scratch.file("smtpguard.toml");
    std::fs::write(
        &config,
        format!(
            "[[subscribers]]\nprefix = \"100.64.0.0/10\"\nmode = \"monitor\"\n[agent]\n\
             state_dir = \"{}\"\nsocket = \"{}\"\n",
            state.display(),
            scratch.file("sock").display()
        ),
    )
    .unwrap();
    config.to_str().unwrap().to_owned()
}

fn report(config: &str, format: &str) -> String {
    let output = smtpguard(&["--config", config, "report", "--since", "1h", "-o", format]);
    assert!(
        output.status.success(),
        "report -o {format}: expected exit 0, observed {}",
        show(&output)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn the_report_reads_as_what_its_figures_are() {
    let scratch = Scratch::new("report-cli");
    let config = state_with_history(&scratch);

    let rows: Value = serde_json::from_str(&report(&config, "json")).unwrap();
    let shown: Vec<Value> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            serde_json::json!([
                row["host"],
                row["mode"],
                row["attempts"],
                row["attempts_per_minute_peak"],
                row["attempts_per_minute_avg"],
                row["distinct_destinations"],
                row["distinct_destinations_estimated"],
            ])
        })
        .collect();
    assert_eq!(
        serde_json::to_string_pretty(&shown).unwrap(),
        serde_json::to_string_pretty(&serde_json::json!([
            // 12 attempts in the 2 minutes it was active: 6 a minute.
            ["100.64.0.3", "monitor", 12, 6.0, 6.0, 4, true],
            // 3 attempts from 00:10 to 01:10: 3 a minute, also at the busiest.
            ["100.64.0.4", "enforce,monitor", 3, 3.0, 3.0, 3, true],
            // One SYN: one a minute, to exactly one destination.
            ["100.64.0.2", "enforce", 1, 1.0, 1.0, 1, false],
        ]))
        .unwrap(),
        "[host, mode, attempts, peak/min, avg/min, destinations, estimated]"
    );

    let csv = report(&config, "csv");
    let records = report_csv(&csv);
    let fields = smtpguard::report::render::FIELDS;
    let column = |name: &str| fields.iter().position(|h| *h == name).unwrap();
    let cells: Vec<[&str; 4]> = records
        .iter()
        .map(|r| {
            [
                &r[column("host")],
                &r[column("mode")],
                &r[column("distinct_destinations")],
                &r[column("distinct_destinations_estimated")],
            ]
        })
        .collect();
    assert_eq!(
        cells,
        [
            ["100.64.0.3", "monitor", "4", "true"],
            ["100.64.0.4", "enforce,monitor", "3", "true"],
            ["100.64.0.2", "enforce", "1", "false"],
        ]
    );

    let table = report(&config, "table");
    let lines: Vec<Vec<&str>> = table
        .lines()
        .map(|line| line.split_whitespace().collect())
        .collect();
    assert_eq!(
        lines[0][..9],
        [
            "HOST",
            "SUBSCRIBER",
            "RANGE",
            "MODE",
            "ATTEMPTS",
            "PEAK/MIN",
            "AVG/MIN",
            "DESTINATIONS",
            "DROPPED"
        ],
        "{table}"
    );
    let cells: Vec<&[&str]> = lines[1..4].iter().map(|cells| &cells[..7]).collect();
    assert_eq!(
        cells,
        [
            &[
                "100.64.0.3",
                "100.64.0.0/10",
                "monitor",
                "12",
                "6.0",
                "6.0",
                "~4"
            ][..],
            &[
                "100.64.0.4",
                "100.64.0.0/10",
                "enforce,monitor",
                "3",
                "3.0",
                "3.0",
                "~3"
            ],
            &[
                "100.64.0.2",
                "100.64.0.0/10",
                "enforce",
                "1",
                "1.0",
                "1.0",
                "1"
            ],
        ],
        "{table}"
    );
}
