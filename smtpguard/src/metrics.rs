//! Prometheus exposition for the agent: [`render`] turns a [`MetricsSnapshot`] (what the agent
//! knows at scrape time) into the text format, and [`serve`] answers `GET /metrics` with it.
//!
//! # Formats
//!
//! The text is encoded by `prometheus-client` (the Prometheus project's Rust client), which
//! writes OpenMetrics 1.0 text: a counter family is declared without its `_total` suffix
//! (`# TYPE smtpguard_packets counter`), its samples carry it (`smtpguard_packets_total{…}`),
//! and the text ends with `# EOF`. Prometheus asks for that format first, and reads it.
//! The older Prometheus text format 0.0.4 (what `promtool check metrics`, the node exporter's
//! textfile collector and plain `curl` users read) names the family itself `…_total` and has no
//! `# EOF`; [`render_as`] derives it from the same encoding, and [`serve`] picks one of the two
//! by the request's `Accept` header, as the official Go client does.
//!
//! Every label value comes from a bounded set (reason and verdict names, kernel map names, the
//! interfaces the program is attached to): never a host, a prefix or a subscriber.
//!
//! # HTTP
//!
//! [`serve`] is a deliberately small HTTP/1.1 responder on tokio rather than hyper: it answers
//! one request per connection (`Connection: close`), reads nothing but the request head, and a
//! few dozen lines keep every limit in plain sight (head size, head and connection deadlines,
//! concurrent connections) without pulling an HTTP stack into a program that runs on border
//! gateways. Each connection runs in its own task, so a slow or silent client holds only its
//! own connection, and only until its deadline.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use smtpguard_common::{REASON_COUNT, Reason, Verdict};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Counters the agent keeps about itself, for metrics; each only ever grows.
#[derive(Clone, Copy, Debug, Default)]
pub struct AgentCounters {
    /// Failed reconciliations of the kernel maps.
    pub reconcile_errors: u64,
    /// Failed exemption store operations.
    pub store_errors: u64,
    /// Configuration reloads attempted, failed ones included.
    pub reloads: u64,
    /// Configuration reloads that failed.
    pub reload_failures: u64,
    /// Attachments made again to an interface that was deleted and created again.
    pub reattachments: u64,
    /// Times pins removed by hand were made again.
    pub pin_restores: u64,
    /// Hosts newly classified as bots since the agent started.
    pub bots_classified: u64,
}

/// What the agent knows at scrape time; the agent fills it (from kernel maps, the store, its
/// own counters).
#[derive(Debug, Clone, Default)]
pub struct MetricsSnapshot {
    /// Packets per reason, summed over CPUs: (reason name, verdict name "pass"|"drop", count).
    /// Reason names are [`Reason::name`] values, the verdict is from [`Reason::verdict`]
    /// ([`packet_rows`] builds this from per-reason counts). Rows with the same reason and
    /// verdict are added up.
    pub packets: Vec<(&'static str, &'static str, u64)>,
    /// Frames that reached the policy (every reason but "other"), summed over CPUs, by the
    /// interface they arrived on: (interface, reason name, count) ([`judged_rows`] gives an
    /// interface's rows). Rows repeating an interface and reason are ignored.
    pub interface_packets: Vec<(String, &'static str, u64)>,
    /// The same for frames of interfaces without a counter slot of their own: (reason name,
    /// count).
    pub unattributed_interface_packets: Vec<(&'static str, u64)>,
    /// Subscriber hosts in the kernel's host statistics map.
    pub tracked_hosts: u64,
    /// Judged segments whose host neither a table slot nor an overflow entry could record.
    pub unrecorded_host_segments: u64,
    /// Entries in the exemption map (configuration and runtime exemptions).
    pub exemptions: u64,
    /// Allowlisted relay prefixes loaded into the kernel.
    pub relays: u64,
    /// Kernel map fill levels: (map name e.g. "SOURCES_V4", entries, capacity). The first
    /// row of a map name counts; later rows with the same name are ignored.
    pub maps: Vec<(&'static str, u64, u64)>,
    /// The agent's own counters (monotonically increasing).
    pub counters: AgentCounters,
    /// Configured interfaces with nothing enforced on them now (missing).
    pub detached_interfaces: u64,
    /// Tunnel and L3 devices that are up and not configured (when last looked at).
    pub unfiltered_tunnel_interfaces: u64,
    /// Interfaces the program is attached to: (interface, attach "xdp"|"tc"|"tc-l3", mode
    /// "native"|"skb"|"tcx"). Repeated rows are shown once.
    pub attached: Vec<(String, &'static str, &'static str)>,
    /// Unix time the agent started, in seconds (a non-finite value is shown as 0).
    pub start_time_seconds: f64,
    /// Whether the last reload (or the start) applied the file on disk: a refused one leaves
    /// this false until a reload succeeds, so an alert on it lasts as long as the broken file.
    pub config_last_reload_successful: bool,
    /// Unix time of the last reload attempt, refused ones included (the start, before any).
    pub config_last_reload_timestamp_seconds: f64,
    /// Subscriber ranges per mode: ("enforce" | "monitor", ranges).
    pub subscriber_ranges: Vec<(&'static str, u64)>,
    /// Relay hostnames whose last lookup failed (or found no address).
    pub relay_hosts_unresolved: u64,
    /// Hosts of monitor-mode ranges enforced now because they were classified as bots.
    pub escalated_hosts: u64,
    /// Unix time of the last successful statistics snapshot, in seconds (0: none yet).
    pub last_snapshot_timestamp_seconds: f64,
    /// The etcd connection of a fleet-mode gateway; `None` for a gateway on its own (no
    /// fleet families are exported then).
    pub fleet: Option<FleetMetrics>,
    /// The history's shipping to the fleet's PostgreSQL; `None` without `[fleet] postgres`.
    pub shipping: Option<crate::fleet::shipping::Shipping>,
    /// RADIUS accounting datagrams by result ("accepted", "store-failed" or why one was
    /// ignored); `None` without `[radius]` (the family is not exported then).
    pub radius_packets: Option<Vec<(&'static str, u64)>>,
}

/// What the fleet families say.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FleetMetrics {
    pub connected: bool,
    pub revision: i64,
    /// Unix seconds of the last list or watch event (0: never).
    pub last_sync_timestamp_seconds: f64,
    pub corrupt_keys: u64,
}

/// The label value of a verdict in `smtpguard_packets_total`.
pub const fn verdict_name(verdict: Verdict) -> &'static str {
    verdict.name()
}

/// [`MetricsSnapshot::packets`] rows from per-reason counts (e.g. the `COUNTERS` map summed
/// over CPUs).
pub fn packet_rows(
    counts: impl IntoIterator<Item = (Reason, u64)>,
) -> Vec<(&'static str, &'static str, u64)> {
    counts
        .into_iter()
        .map(|(reason, count)| (reason.name(), verdict_name(reason.verdict()), count))
        .collect()
}

/// [`MetricsSnapshot::interface_packets`] rows of one interface from its per-reason counts
/// (indexed by `Reason as usize`): every reason a frame is counted by interface for, that is
/// all but [`Reason::Other`].
pub fn judged_rows(
    counts: [u64; REASON_COUNT as usize],
) -> impl Iterator<Item = (&'static str, u64)> {
    Reason::ALL
        .into_iter()
        .filter(|reason| *reason != Reason::Other)
        .map(move |reason| (reason.name(), counts[reason as usize]))
}

/// The text formats [`render_as`] writes and [`serve`] negotiates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0 text (counter families declared without `_total`, ends with `# EOF`).
    OpenMetrics,
    /// Prometheus text format 0.0.4 (counter families named `…_total`, no `# EOF`).
    PrometheusText,
}

impl Format {
    /// The `Content-Type` of a response in this format.
    pub const fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::PrometheusText => "text/plain; version=0.0.4; charset=utf-8",
        }
    }

    /// OpenMetrics if the `Accept` header asks for it (with a non-zero quality), else the
    /// Prometheus text format, which every scraper reads.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let wants_open_metrics = accept.is_some_and(|accept| {
            accept.split(',').any(|range| {
                let mut parts = range.split(';');
                let media_type = parts.next().unwrap_or("").trim();
                media_type.eq_ignore_ascii_case("application/openmetrics-text")
                    && !parts.any(|param| {
                        param.split_once('=').is_some_and(|(key, value)| {
                            key.trim().eq_ignore_ascii_case("q")
                                && value.trim().parse::<f64>().is_ok_and(|q| q <= 0.0)
                        })
                    })
            })
        });
        if wants_open_metrics {
            Format::OpenMetrics
        } else {
            Format::PrometheusText
        }
    }
}

/// Renders the snapshot in OpenMetrics 1.0 text, the exposition format Prometheus asks for
/// first (see [`render_as`] for the older Prometheus text format).
pub fn render(snapshot: &MetricsSnapshot) -> String {
    render_as(snapshot, Format::OpenMetrics)
}

/// Renders the snapshot in the given format.
pub fn render_as(snapshot: &MetricsSnapshot, format: Format) -> String {
    let families = families(snapshot);
    let counters: Vec<&'static str> = families
        .iter()
        .filter(|family| family.kind == Kind::Counter)
        .map(|family| family.name)
        .collect();

    let mut registry = Registry::default();
    registry.register_collector(Box::new(Families(families)));
    let mut open_metrics = String::new();
    prometheus_client::encoding::text::encode(&mut open_metrics, &registry)
        .expect("encoding into a String cannot fail");

    match format {
        Format::OpenMetrics => open_metrics,
        Format::PrometheusText => to_prometheus_text(&open_metrics, &counters),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

#[derive(Debug, Clone, Copy)]
enum Value {
    Int(u64),
    Float(f64),
}

type Labels = Vec<(&'static str, String)>;

#[derive(Debug)]
enum Samples {
    /// One sample without labels.
    Single(Value),
    /// Any number of labelled samples, each label set once.
    Labelled(Vec<(Labels, Value)>),
}

#[derive(Debug)]
struct Family {
    /// The OpenMetrics family name: a counter's without `_total`, which the encoder appends to
    /// its samples.
    name: &'static str,
    help: &'static str,
    kind: Kind,
    samples: Samples,
}

/// The metric families of a snapshot, in exposition order.
fn families(snapshot: &MetricsSnapshot) -> Vec<Family> {
    let mut packets: Vec<((&'static str, &'static str), u64)> = Vec::new();
    for &(reason, verdict, count) in &snapshot.packets {
        match packets
            .iter_mut()
            .find(|(key, _)| *key == (reason, verdict))
        {
            Some((_, total)) => *total = total.saturating_add(count),
            None => packets.push(((reason, verdict), count)),
        }
    }
    let mut maps: Vec<(&'static str, u64, u64)> = Vec::new();
    for &(map, entries, capacity) in &snapshot.maps {
        if !maps.iter().any(|&(seen, _, _)| seen == map) {
            maps.push((map, entries, capacity));
        }
    }
    let mut attached: Vec<(&str, &'static str, &'static str)> = Vec::new();
    for (interface, attach, mode) in &snapshot.attached {
        let row = (interface.as_str(), *attach, *mode);
        if !attached.contains(&row) {
            attached.push(row);
        }
    }
    let mut interface_packets: Vec<(&str, &'static str, u64)> = Vec::new();
    for (interface, reason, count) in &snapshot.interface_packets {
        if !interface_packets
            .iter()
            .any(|&(seen, seen_reason, _)| (seen, seen_reason) == (interface.as_str(), *reason))
        {
            interface_packets.push((interface.as_str(), *reason, *count));
        }
    }
    let finite_or_zero = |seconds: f64| if seconds.is_finite() { seconds } else { 0.0 };
    let start_time = finite_or_zero(snapshot.start_time_seconds);
    let last_reload = finite_or_zero(snapshot.config_last_reload_timestamp_seconds);
    let last_snapshot = finite_or_zero(snapshot.last_snapshot_timestamp_seconds);

    let single = |name, help, kind, value| Family {
        name,
        help,
        kind,
        samples: Samples::Single(value),
    };
    let labelled = |name, help, kind, samples| Family {
        name,
        help,
        kind,
        samples: Samples::Labelled(samples),
    };
    let mut families = vec![
        labelled(
            "smtpguard_packets",
            "Frames seen by the kernel program, summed over CPUs, by the reason behind their \
             verdict and the verdict (pass or drop).",
            Kind::Counter,
            packets
                .iter()
                .map(|&((reason, verdict), count)| {
                    (
                        vec![
                            ("reason", reason.to_owned()),
                            ("verdict", verdict.to_owned()),
                        ],
                        Value::Int(count),
                    )
                })
                .collect(),
        ),
        labelled(
            "smtpguard_interface_packets",
            "Frames that reached the policy (every reason but other), summed over CPUs, by \
             the interface they arrived on and the reason behind their verdict.",
            Kind::Counter,
            interface_packets
                .iter()
                .map(|&(interface, reason, count)| {
                    (
                        vec![
                            ("interface", interface.to_owned()),
                            ("reason", reason.to_owned()),
                        ],
                        Value::Int(count),
                    )
                })
                .collect(),
        ),
        labelled(
            "smtpguard_interface_packets_unattributed",
            "Frames that reached the policy on an interface without a counter slot of its own \
             (more attached interfaces than slots, or two sharing a slot table entry), by \
             reason.",
            Kind::Counter,
            snapshot
                .unattributed_interface_packets
                .iter()
                .map(|&(reason, count)| (vec![("reason", reason.to_owned())], Value::Int(count)))
                .collect(),
        ),
        single(
            "smtpguard_tracked_hosts",
            "Subscriber hosts currently tracked in the kernel's host statistics map.",
            Kind::Gauge,
            Value::Int(snapshot.tracked_hosts),
        ),
        single(
            "smtpguard_unrecorded_host_segments",
            "Judged segments of subscriber hosts whose statistics the kernel could not record \
             (host table slot held, overflow map full); they were judged all the same.",
            Kind::Counter,
            Value::Int(snapshot.unrecorded_host_segments),
        ),
        single(
            "smtpguard_exemptions",
            "Entries in the exemption map (from the configuration and added at runtime).",
            Kind::Gauge,
            Value::Int(snapshot.exemptions),
        ),
        single(
            "smtpguard_relays",
            "Allowlisted relay prefixes loaded into the kernel.",
            Kind::Gauge,
            Value::Int(snapshot.relays),
        ),
        labelled(
            "smtpguard_map_entries",
            "Entries in each kernel map.",
            Kind::Gauge,
            maps.iter()
                .map(|&(map, entries, _)| (vec![("map", map.to_owned())], Value::Int(entries)))
                .collect(),
        ),
        labelled(
            "smtpguard_map_capacity",
            "Maximum number of entries of each kernel map.",
            Kind::Gauge,
            maps.iter()
                .map(|&(map, _, capacity)| (vec![("map", map.to_owned())], Value::Int(capacity)))
                .collect(),
        ),
        single(
            "smtpguard_reconcile_errors",
            "Failed reconciliations of the kernel maps with the agent's desired state.",
            Kind::Counter,
            Value::Int(snapshot.counters.reconcile_errors),
        ),
        single(
            "smtpguard_store_errors",
            "Failed operations on the exemption store.",
            Kind::Counter,
            Value::Int(snapshot.counters.store_errors),
        ),
        single(
            "smtpguard_reloads",
            "Configuration reloads attempted, failed ones included.",
            Kind::Counter,
            Value::Int(snapshot.counters.reloads),
        ),
        single(
            "smtpguard_reload_failures",
            "Configuration reloads that failed.",
            Kind::Counter,
            Value::Int(snapshot.counters.reload_failures),
        ),
        single(
            "smtpguard_config_last_reload_successful",
            "1 when the last reload (or the start) applied the configuration file, 0 when it \
             was refused or rolled back: the file on disk is not the running policy.",
            Kind::Gauge,
            Value::Int(u64::from(snapshot.config_last_reload_successful)),
        ),
        single(
            "smtpguard_config_last_reload_timestamp_seconds",
            "Unix time of the last reload attempt (or of the start, before any), in seconds.",
            Kind::Gauge,
            Value::Float(last_reload),
        ),
        labelled(
            "smtpguard_subscriber_ranges",
            "Subscriber ranges of the running configuration, by mode (enforce or monitor).",
            Kind::Gauge,
            snapshot
                .subscriber_ranges
                .iter()
                .map(|&(mode, ranges)| (vec![("mode", mode.to_owned())], Value::Int(ranges)))
                .collect(),
        ),
        single(
            "smtpguard_relay_hosts_unresolved",
            "Relay hostnames that do not resolve now: their last known addresses stay relays, \
             a name that never resolved allowlists nothing.",
            Kind::Gauge,
            Value::Int(snapshot.relay_hosts_unresolved),
        ),
        single(
            "smtpguard_escalated_hosts",
            "Hosts of monitor-mode ranges enforced now because they were classified as bots.",
            Kind::Gauge,
            Value::Int(snapshot.escalated_hosts),
        ),
        single(
            "smtpguard_last_snapshot_timestamp_seconds",
            "Unix time of the last successful statistics snapshot, in seconds (0 before the \
             first).",
            Kind::Gauge,
            Value::Float(last_snapshot),
        ),
        single(
            "smtpguard_reattachments",
            "Attachments made again to a configured interface that was deleted and created \
             again (or appeared after the start).",
            Kind::Counter,
            Value::Int(snapshot.counters.reattachments),
        ),
        single(
            "smtpguard_pin_restores",
            "Times the agent pinned its maps and links again after their pins were removed.",
            Kind::Counter,
            Value::Int(snapshot.counters.pin_restores),
        ),
        single(
            "smtpguard_detached_interfaces",
            "Configured interfaces that do not exist now, so nothing is enforced on them; \
             alert when above 0.",
            Kind::Gauge,
            Value::Int(snapshot.detached_interfaces),
        ),
        single(
            "smtpguard_unfiltered_tunnel_interfaces",
            "Tunnel and L3 devices (VXLAN, GRE, WireGuard, TUN, ...) that are up and not in \
             interfaces: what they decapsulate is routed unfiltered.",
            Kind::Gauge,
            Value::Int(snapshot.unfiltered_tunnel_interfaces),
        ),
        single(
            "smtpguard_bots_classified",
            "Subscriber hosts newly classified as bots (after each statistics snapshot).",
            Kind::Counter,
            Value::Int(snapshot.counters.bots_classified),
        ),
        labelled(
            "smtpguard_attached",
            "Interfaces the kernel program is attached to, by attach point (xdp or tc) and \
             mode; 1 per attachment, absent when detached.",
            Kind::Gauge,
            attached
                .iter()
                .map(|&(interface, attach, mode)| {
                    (
                        vec![
                            ("interface", interface.to_owned()),
                            ("attach", attach.to_owned()),
                            ("mode", mode.to_owned()),
                        ],
                        Value::Int(1),
                    )
                })
                .collect(),
        ),
        labelled(
            "smtpguard_build_info",
            "The version of the running smtpguard agent; the value is always 1.",
            Kind::Gauge,
            vec![(
                vec![("version", env!("CARGO_PKG_VERSION").to_owned())],
                Value::Int(1),
            )],
        ),
        single(
            "smtpguard_start_time_seconds",
            "Unix time the agent started, in seconds.",
            Kind::Gauge,
            Value::Float(start_time),
        ),
    ];
    if let Some(radius) = &snapshot.radius_packets {
        families.push(labelled(
            "smtpguard_radius_packets",
            "RADIUS accounting datagrams by result: accepted (applied and answered), \
             store-failed (not answered: the client sends it again), or why one was ignored.",
            Kind::Counter,
            radius
                .iter()
                .map(|&(result, count)| (vec![("result", result.to_owned())], Value::Int(count)))
                .collect(),
        ));
    }
    if let Some(shipping) = &snapshot.shipping {
        families.extend([
            single(
                "smtpguard_fleet_postgres_connected",
                "1 while the agent ships its report history to the fleet's PostgreSQL, 0 while \
                 it cannot (the backlog grows in the local store).",
                Kind::Gauge,
                Value::Int(u64::from(shipping.connected)),
            ),
            single(
                "smtpguard_fleet_report_backlog_intervals",
                "Snapshot intervals in the local store not yet shipped to PostgreSQL.",
                Kind::Gauge,
                Value::Int(shipping.backlog_intervals),
            ),
            single(
                "smtpguard_fleet_report_rows_shipped",
                "Per-host interval records written to PostgreSQL (a retry counts again).",
                Kind::Counter,
                Value::Int(shipping.rows_shipped),
            ),
        ]);
    }
    if let Some(fleet) = snapshot.fleet {
        families.extend([
            single(
                "smtpguard_fleet_connected",
                "1 while the agent follows the fleet's etcd, 0 while it enforces the last fleet \
                 policy it saw because etcd is unreachable.",
                Kind::Gauge,
                Value::Int(u64::from(fleet.connected)),
            ),
            single(
                "smtpguard_fleet_revision",
                "The etcd revision the agent's fleet policy is complete at.",
                Kind::Gauge,
                Value::Int(u64::try_from(fleet.revision).unwrap_or(0)),
            ),
            single(
                "smtpguard_fleet_last_sync_timestamp_seconds",
                "Unix time the fleet policy was last read or changed from etcd, in seconds (0: \
                 never).",
                Kind::Gauge,
                Value::Float(finite_or_zero(fleet.last_sync_timestamp_seconds)),
            ),
            single(
                "smtpguard_fleet_corrupt_keys",
                "Keys under the fleet prefix that did not decode and were skipped (never \
                 applied); someone other than smtpguard wrote them.",
                Kind::Counter,
                Value::Int(fleet.corrupt_keys),
            ),
        ]);
    }
    families
}

/// The snapshot's families, handed to `prometheus-client` as a collector: it is asked to
/// encode them once, by the registry built for one [`render_as`] call.
#[derive(Debug)]
struct Families(Vec<Family>);

impl Collector for Families {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for family in &self.0 {
            let metric_type = match family.kind {
                Kind::Counter => MetricType::Counter,
                Kind::Gauge => MetricType::Gauge,
            };
            let mut metric_encoder =
                encoder.encode_descriptor(family.name, family.help, None, metric_type)?;
            match &family.samples {
                Samples::Single(value) => encode_value(family.kind, *value, metric_encoder)?,
                Samples::Labelled(samples) => {
                    for (labels, value) in samples {
                        encode_value(family.kind, *value, metric_encoder.encode_family(labels)?)?;
                    }
                }
            }
        }
        Ok(())
    }
}

fn encode_value(kind: Kind, value: Value, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
    match (kind, value) {
        (Kind::Counter, Value::Int(v)) => ConstCounter::new(v).encode(encoder),
        (Kind::Counter, Value::Float(v)) => ConstCounter::new(v).encode(encoder),
        (Kind::Gauge, Value::Int(v)) => ConstGauge::new(v).encode(encoder),
        (Kind::Gauge, Value::Float(v)) => ConstGauge::new(v).encode(encoder),
    }
}

/// OpenMetrics text as `prometheus-client` writes it for counters and gauges, rewritten into
/// the Prometheus text format 0.0.4: the two differ, for these types, only in the counter
/// families' names in `# HELP`/`# TYPE` and in the `# EOF` line. (Samples, label escaping and
/// numbers are written the same way; label values cannot hold a raw line feed.)
fn to_prometheus_text(open_metrics: &str, counters: &[&str]) -> String {
    let mut text = String::with_capacity(open_metrics.len() + 16 * counters.len());
    for line in open_metrics.lines() {
        if line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|keyword| {
            let (name, rest) = line.strip_prefix(keyword)?.split_once(' ')?;
            counters
                .contains(&name)
                .then(|| format!("{keyword}{name}_total {rest}"))
        });
        text.push_str(renamed.as_deref().unwrap_or(line));
        text.push('\n');
    }
    text
}

/// Serves GET /metrics on `listener` (an already-bound tokio TcpListener), calling
/// `snapshot()` per scrape (on tokio's blocking pool, so it may read maps or the store).
/// Anything else: 404 (405 for another method on /metrics). Each connection runs in its own
/// task with a deadline for the request head and one for the whole exchange; malformed
/// requests get a 4xx answer, and a `snapshot()` that panics a 500. Runs until the future is
/// dropped (which also ends the connections still open), or returns the error of a listener
/// that can no longer accept; transient accept errors (a connection aborted, file descriptors
/// exhausted) are waited out.
pub async fn serve<F>(listener: TcpListener, snapshot: F) -> io::Result<()>
where
    F: Fn() -> MetricsSnapshot + Send + Sync + 'static,
{
    serve_with(listener, Arc::new(snapshot), Limits::DEFAULT).await
}

/// The endpoint's limits; [`serve`] uses [`Limits::DEFAULT`], tests shorter ones.
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// Largest request head (request line and headers) read; a longer one gets 431.
    max_head: usize,
    /// Time a client has to send the whole request head; then it gets 408.
    head_timeout: Duration,
    /// Time a whole exchange may take, writing the response included.
    connection_timeout: Duration,
    /// Connections served at once; more are closed at once (a scraper needs one).
    max_connections: usize,
    /// After answering, the time and bytes spent reading what the client still sends, so
    /// that closing does not reset the connection before the client has read the answer.
    linger: Duration,
    max_drain: usize,
}

impl Limits {
    const DEFAULT: Limits = Limits {
        max_head: 8 * 1024,
        head_timeout: Duration::from_secs(5),
        connection_timeout: Duration::from_secs(15),
        max_connections: 64,
        linger: Duration::from_secs(1),
        max_drain: 256 * 1024,
    };
}

/// Pause after an accept error caused by exhausted resources (file descriptors, memory).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

async fn serve_with<F>(listener: TcpListener, snapshot: Arc<F>, limits: Limits) -> io::Result<()>
where
    F: Fn() -> MetricsSnapshot + Send + Sync + 'static,
{
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    // Dropping the set, with this future, aborts the connections still open.
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            Err(error) => match classify_accept_error(&error) {
                AcceptError::Connection => continue,
                AcceptError::Resources => {
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
                AcceptError::Listener => return Err(error),
            },
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            // As many connections open as allowed: shed this one rather than queue it.
            continue;
        };
        let snapshot = Arc::clone(&snapshot);
        connections.spawn(async move {
            let _permit = permit;
            let exchange = handle_connection(stream, snapshot, limits);
            let _ = tokio::time::timeout(limits.connection_timeout, exchange).await;
        });
    }
}

enum AcceptError {
    /// The failure concerns the connection being accepted only.
    Connection,
    /// The system is short of something; retry after a pause.
    Resources,
    /// The listening socket itself is unusable.
    Listener,
}

fn classify_accept_error(error: &io::Error) -> AcceptError {
    match error.raw_os_error() {
        Some(libc::EBADF | libc::EINVAL | libc::ENOTSOCK | libc::EOPNOTSUPP | libc::EFAULT) => {
            AcceptError::Listener
        }
        // accept(2) on Linux passes the new connection's pending network errors through.
        Some(
            libc::ECONNABORTED
            | libc::EINTR
            | libc::EPROTO
            | libc::EPERM
            | libc::ENETDOWN
            | libc::ENOPROTOOPT
            | libc::EHOSTDOWN
            | libc::ENONET
            | libc::EHOSTUNREACH
            | libc::ENETUNREACH
            | libc::ETIMEDOUT
            | libc::ECONNRESET,
        ) => AcceptError::Connection,
        // EMFILE, ENFILE, ENOBUFS, ENOMEM, and whatever else: pause rather than spin.
        _ => AcceptError::Resources,
    }
}

async fn handle_connection<F>(mut stream: TcpStream, snapshot: Arc<F>, limits: Limits)
where
    F: Fn() -> MetricsSnapshot + Send + Sync + 'static,
{
    let head = tokio::time::timeout(limits.head_timeout, read_head(&mut stream, limits.max_head));
    let response = match head.await {
        Err(_elapsed) => error_response(Status::RequestTimeout, true),
        // Reset, or closed before sending anything: nobody to answer.
        Ok(Err(_) | Ok(Head::Empty)) => return,
        Ok(Ok(Head::Incomplete)) => error_response(Status::BadRequest, true),
        Ok(Ok(Head::TooLarge)) => error_response(Status::HeaderFieldsTooLarge, true),
        Ok(Ok(Head::Complete(head))) => match parse_head(&head) {
            // No body in the answer to a HEAD request, whatever its status.
            Err(status) => error_response(status, !head.starts_with(b"HEAD ")),
            Ok(request) => respond(&request, &snapshot).await,
        },
    };
    if stream.write_all(&response).await.is_err() {
        return;
    }
    let _ = stream.shutdown().await;
    linger(&mut stream, &limits).await;
}

/// Reads what the client still sends (up to a limit, for a short time) before the socket is
/// closed: closing with unread data would reset the connection, and the client could lose
/// the answer (a 431 sent while it is still writing its oversized head, say).
async fn linger(stream: &mut TcpStream, limits: &Limits) {
    let mut sink = [0u8; 4096];
    let mut drained = 0;
    let drain = async {
        while drained < limits.max_drain {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    };
    let _ = tokio::time::timeout(limits.linger, drain).await;
}

#[derive(Debug, PartialEq, Eq)]
enum Head {
    /// The client closed without sending anything.
    Empty,
    /// The client closed in the middle of the head.
    Incomplete,
    /// No end of the head within the size limit.
    TooLarge,
    /// The head, up to and including the empty line that ends it (leading empty lines cut).
    Complete(Vec<u8>),
}

async fn read_head(stream: &mut TcpStream, max_head: usize) -> io::Result<Head> {
    let mut buffer = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(if buffer.is_empty() {
                Head::Empty
            } else {
                Head::Incomplete
            });
        }
        buffer.extend_from_slice(&chunk[..n]);
        if let Some((start, end)) = head_bounds(&buffer) {
            if end > max_head {
                return Ok(Head::TooLarge);
            }
            buffer.truncate(end);
            buffer.drain(..start);
            return Ok(Head::Complete(buffer));
        }
        if buffer.len() > max_head {
            return Ok(Head::TooLarge);
        }
    }
}

/// Where the head in `buffer` starts (after empty lines, which RFC 9112 §2.2 lets a server
/// skip) and ends (after the empty line, CRLF or bare LF, that closes it), once complete.
fn head_bounds(buffer: &[u8]) -> Option<(usize, usize)> {
    let start = buffer.iter().position(|&b| b != b'\r' && b != b'\n')?;
    let head = &buffer[start..];
    head.iter().enumerate().find_map(|(i, &byte)| {
        if byte != b'\n' {
            return None;
        }
        match (head.get(i + 1), head.get(i + 2)) {
            (Some(b'\n'), _) => Some((start, start + i + 2)),
            (Some(b'\r'), Some(b'\n')) => Some((start, start + i + 3)),
            _ => None,
        }
    })
}

#[derive(Debug, PartialEq, Eq)]
struct Request {
    head_only: bool,
    /// The `Accept` header's values, joined with commas if it was sent more than once.
    accept: Option<String>,
}

/// Parses a request head: only GET or HEAD of /metrics is served.
fn parse_head(head: &[u8]) -> Result<Request, Status> {
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line));
    let request_line = lines.next().ok_or(Status::BadRequest)?;
    let request_line = std::str::from_utf8(request_line).map_err(|_| Status::BadRequest)?;
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Status::BadRequest);
    };
    if method.is_empty() || target.is_empty() {
        return Err(Status::BadRequest);
    }
    match version.strip_prefix("HTTP/") {
        Some("1.0" | "1.1") => {}
        Some(other)
            if !other.is_empty() && other.bytes().all(|b| b.is_ascii_digit() || b == b'.') =>
        {
            return Err(Status::VersionNotSupported);
        }
        _ => return Err(Status::BadRequest),
    }

    if request_path(target) != Some("/metrics") {
        return Err(Status::NotFound);
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Err(Status::MethodNotAllowed),
    };

    let mut accept: Option<String> = None;
    for line in lines {
        // Header lines that are not UTF-8 (obsolete text) cannot be an Accept worth reading.
        let Some((name, value)) = std::str::from_utf8(line)
            .ok()
            .and_then(|line| line.split_once(':'))
        else {
            continue;
        };
        if name.eq_ignore_ascii_case("accept") {
            let value = value.trim();
            match &mut accept {
                Some(accept) => {
                    accept.push(',');
                    accept.push_str(value);
                }
                None => accept = Some(value.to_owned()),
            }
        }
    }
    Ok(Request { head_only, accept })
}

/// The path of a request target in origin form (`/metrics?x`) or absolute form
/// (`http://host:port/metrics`), without its query.
fn request_path(target: &str) -> Option<&str> {
    let path = if target.starts_with('/') {
        target
    } else {
        let (scheme, rest) = target.split_once("://")?;
        if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
            return None;
        }
        rest.find('/').map_or("/", |slash| &rest[slash..])
    };
    Some(path.split(['?', '#']).next().unwrap_or(path))
}

async fn respond<F>(request: &Request, snapshot: &Arc<F>) -> Vec<u8>
where
    F: Fn() -> MetricsSnapshot + Send + Sync + 'static,
{
    let format = Format::negotiate(request.accept.as_deref());
    let snapshot = Arc::clone(snapshot);
    match tokio::task::spawn_blocking(move || render_as(&snapshot(), format)).await {
        Ok(body) => encode_response(Status::Ok, format.content_type(), &body, !request.head_only),
        // `snapshot()` panicked (or the runtime is shutting down).
        Err(_) => error_response(Status::InternalServerError, !request.head_only),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Ok,
    BadRequest,
    NotFound,
    MethodNotAllowed,
    RequestTimeout,
    HeaderFieldsTooLarge,
    InternalServerError,
    VersionNotSupported,
}

impl Status {
    const fn code_and_reason(self) -> (u16, &'static str) {
        match self {
            Status::Ok => (200, "OK"),
            Status::BadRequest => (400, "Bad Request"),
            Status::NotFound => (404, "Not Found"),
            Status::MethodNotAllowed => (405, "Method Not Allowed"),
            Status::RequestTimeout => (408, "Request Timeout"),
            Status::HeaderFieldsTooLarge => (431, "Request Header Fields Too Large"),
            Status::InternalServerError => (500, "Internal Server Error"),
            Status::VersionNotSupported => (505, "HTTP Version Not Supported"),
        }
    }
}

fn error_response(status: Status, with_body: bool) -> Vec<u8> {
    let (_, reason) = status.code_and_reason();
    let body = format!("{reason}\n");
    encode_response(status, "text/plain; charset=utf-8", &body, with_body)
}

fn encode_response(status: Status, content_type: &str, body: &str, with_body: bool) -> Vec<u8> {
    let (code, reason) = status.code_and_reason();
    let mut head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n",
        body.len()
    );
    if status == Status::MethodNotAllowed {
        head.push_str("Allow: GET, HEAD\r\n");
    }
    head.push_str("\r\n");
    let mut response = head.into_bytes();
    if with_body {
        response.extend_from_slice(body.as_bytes());
    }
    response
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use smtpguard_common::REASON_COUNT;
    use tokio::net::TcpStream;
    use tokio::time::timeout;

    use super::*;

    // ---- A reader of the exposition formats, to check `render` by parsing it back ----

    #[derive(Debug, Clone, PartialEq)]
    struct Sample {
        name: String,
        labels: BTreeMap<String, String>,
        value: f64,
    }

    #[derive(Debug, Default)]
    struct Exposition {
        help: BTreeMap<String, String>,
        types: BTreeMap<String, String>,
        /// Family names in the order of their `# TYPE` lines.
        order: Vec<String>,
        samples: Vec<Sample>,
    }

    impl Exposition {
        fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
            let labels: BTreeMap<String, String> = labels
                .iter()
                .map(|&(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
            let mut found = self
                .samples
                .iter()
                .filter(|s| s.name == name && s.labels == labels);
            let value = found.next()?.value;
            assert!(found.next().is_none(), "{name} {labels:?} appears twice");
            Some(value)
        }

        fn samples_of(&self, name: &str) -> Vec<&Sample> {
            self.samples.iter().filter(|s| s.name == name).collect()
        }
    }

    /// Parses `name{k="v",…} value`.
    fn parse_sample(line: &str) -> Result<Sample, String> {
        let name_end = line
            .find(['{', ' '])
            .ok_or_else(|| format!("no value: {line:?}"))?;
        let name = &line[..name_end];
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
        {
            return Err(format!("bad metric name in {line:?}"));
        }
        let mut rest = &line[name_end..];
        let mut labels = BTreeMap::new();
        if let Some(after_brace) = rest.strip_prefix('{') {
            rest = after_brace;
            loop {
                if let Some(after) = rest.strip_prefix('}') {
                    rest = after;
                    break;
                }
                let (key, after_key) = rest
                    .split_once("=\"")
                    .ok_or_else(|| format!("bad label in {line:?}"))?;
                if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                    return Err(format!("bad label name {key:?} in {line:?}"));
                }
                let mut value = String::new();
                let mut chars = after_key.char_indices();
                let end = loop {
                    match chars.next() {
                        None => return Err(format!("unterminated label value in {line:?}")),
                        Some((i, '"')) => break i,
                        Some((_, '\\')) => match chars.next() {
                            Some((_, '\\')) => value.push('\\'),
                            Some((_, '"')) => value.push('"'),
                            Some((_, 'n')) => value.push('\n'),
                            other => return Err(format!("bad escape {other:?} in {line:?}")),
                        },
                        Some((_, c)) => value.push(c),
                    }
                };
                if labels.insert(key.to_owned(), value).is_some() {
                    return Err(format!("label {key} twice in {line:?}"));
                }
                rest = &after_key[end + 1..];
                if let Some(after) = rest.strip_prefix(',') {
                    rest = after;
                }
            }
        }
        let value = rest
            .strip_prefix(' ')
            .ok_or_else(|| format!("no space before the value in {line:?}"))?;
        let value: f64 = value
            .parse()
            .map_err(|_| format!("bad value {value:?} in {line:?}"))?;
        Ok(Sample {
            name: name.to_owned(),
            labels,
            value,
        })
    }

    /// Parses and checks an exposition: every line well-formed, every family with HELP before
    /// TYPE, every sample in a declared family under the format's naming rule, counter
    /// samples (and in the Prometheus format counter families) ending in `_total`, no sample
    /// twice, and OpenMetrics' `# EOF` last and only there.
    fn check(text: &str, format: Format) -> Exposition {
        assert!(text.ends_with('\n'), "no final line feed");
        let mut exposition = Exposition::default();
        let lines: Vec<&str> = text.lines().collect();
        let mut seen = BTreeSet::new();
        for (index, line) in lines.iter().enumerate() {
            assert!(!line.is_empty(), "empty line {index}");
            if *line == "# EOF" {
                assert_eq!(
                    format,
                    Format::OpenMetrics,
                    "# EOF in the Prometheus format"
                );
                assert_eq!(index, lines.len() - 1, "# EOF before the end");
                continue;
            }
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').expect("HELP without text");
                assert!(help.len() > 10, "HELP of {name} says too little: {help:?}");
                assert!(
                    exposition
                        .help
                        .insert(name.to_owned(), help.to_owned())
                        .is_none(),
                    "second HELP for {name}"
                );
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE without type");
                assert!(
                    exposition.help.contains_key(name),
                    "TYPE before HELP: {name}"
                );
                assert!(matches!(kind, "counter" | "gauge"), "type {kind} of {name}");
                assert!(
                    exposition
                        .types
                        .insert(name.to_owned(), kind.to_owned())
                        .is_none(),
                    "second TYPE for {name}"
                );
                exposition.order.push(name.to_owned());
                continue;
            }
            assert!(!line.starts_with('#'), "unexpected comment {line:?}");
            let sample = parse_sample(line).unwrap_or_else(|e| panic!("{e}"));
            let family = exposition.order.last().expect("sample before any TYPE");
            let kind = &exposition.types[family];
            let expected_name = match (format, kind.as_str()) {
                (Format::OpenMetrics, "counter") => format!("{family}_total"),
                _ => family.clone(),
            };
            assert_eq!(sample.name, expected_name, "sample outside its family");
            if kind == "counter" {
                assert!(sample.name.ends_with("_total"), "{line:?}");
                assert!(sample.value >= 0.0, "{line:?}");
            }
            assert!(
                seen.insert((sample.name.clone(), format!("{:?}", sample.labels))),
                "duplicate sample {line:?}"
            );
            exposition.samples.push(sample);
        }
        if format == Format::OpenMetrics {
            assert_eq!(lines.last(), Some(&"# EOF"), "no # EOF at the end");
        }
        assert_eq!(
            exposition.help.len(),
            exposition.types.len(),
            "HELP without TYPE"
        );
        for (name, kind) in &exposition.types {
            assert!(name.starts_with("smtpguard_"), "{name}");
            match (format, kind.as_str()) {
                (Format::PrometheusText, "counter") => {
                    assert!(name.ends_with("_total"), "counter family {name}")
                }
                (_, "gauge") | (Format::OpenMetrics, _) => {
                    assert!(!name.ends_with("_total"), "family {name} ({kind})")
                }
                _ => unreachable!(),
            }
        }
        exposition
    }

    const FAMILIES: [(&str, &str); 27] = [
        ("smtpguard_packets_total", "counter"),
        ("smtpguard_interface_packets_total", "counter"),
        ("smtpguard_interface_packets_unattributed_total", "counter"),
        ("smtpguard_tracked_hosts", "gauge"),
        ("smtpguard_unrecorded_host_segments_total", "counter"),
        ("smtpguard_exemptions", "gauge"),
        ("smtpguard_relays", "gauge"),
        ("smtpguard_map_entries", "gauge"),
        ("smtpguard_map_capacity", "gauge"),
        ("smtpguard_reconcile_errors_total", "counter"),
        ("smtpguard_store_errors_total", "counter"),
        ("smtpguard_reloads_total", "counter"),
        ("smtpguard_reload_failures_total", "counter"),
        ("smtpguard_config_last_reload_successful", "gauge"),
        ("smtpguard_config_last_reload_timestamp_seconds", "gauge"),
        ("smtpguard_subscriber_ranges", "gauge"),
        ("smtpguard_relay_hosts_unresolved", "gauge"),
        ("smtpguard_escalated_hosts", "gauge"),
        ("smtpguard_last_snapshot_timestamp_seconds", "gauge"),
        ("smtpguard_reattachments_total", "counter"),
        ("smtpguard_pin_restores_total", "counter"),
        ("smtpguard_detached_interfaces", "gauge"),
        ("smtpguard_unfiltered_tunnel_interfaces", "gauge"),
        ("smtpguard_bots_classified_total", "counter"),
        ("smtpguard_attached", "gauge"),
        ("smtpguard_build_info", "gauge"),
        ("smtpguard_start_time_seconds", "gauge"),
    ];

    /// The family name in a format's `# TYPE` line for a sample name in [`FAMILIES`].
    fn family_name(sample_name: &str, kind: &str, format: Format) -> String {
        match (format, kind) {
            (Format::OpenMetrics, "counter") => sample_name.trim_end_matches("_total").to_owned(),
            _ => sample_name.to_owned(),
        }
    }

    fn filled() -> MetricsSnapshot {
        let counts = Reason::ALL
            .iter()
            .enumerate()
            .map(|(i, &reason)| (reason, 1000 + i as u64));
        let mut eth0 = [0; REASON_COUNT as usize];
        eth0[Reason::Dropped as usize] = 7;
        MetricsSnapshot {
            packets: packet_rows(counts),
            interface_packets: judged_rows(eth0)
                .map(|(reason, count)| ("eth0".to_owned(), reason, count))
                .chain([("eth1".to_owned(), "monitored", 3)])
                .collect(),
            unattributed_interface_packets: vec![("dropped", 2)],
            tracked_hosts: 4242,
            unrecorded_host_segments: 5,
            exemptions: 17,
            relays: 3,
            maps: vec![
                ("SOURCES_V4", 120, 65_536),
                ("HOST_STATS", 4242, 1_048_576),
                ("SOURCES_V6", 0, 131_072),
            ],
            counters: AgentCounters {
                reconcile_errors: 2,
                store_errors: 1,
                reloads: 7,
                reload_failures: 1,
                reattachments: 2,
                pin_restores: 1,
                bots_classified: 5,
            },
            detached_interfaces: 1,
            unfiltered_tunnel_interfaces: 2,
            attached: vec![
                ("eth0".to_owned(), "xdp", "native"),
                ("bond0.100".to_owned(), "tc", "tcx"),
            ],
            start_time_seconds: 1_700_000_000.5,
            config_last_reload_successful: true,
            config_last_reload_timestamp_seconds: 1_700_000_100.25,
            subscriber_ranges: vec![("enforce", 12), ("monitor", 3)],
            relay_hosts_unresolved: 1,
            escalated_hosts: 4,
            last_snapshot_timestamp_seconds: 1_700_000_200.5,
            fleet: None,
            shipping: None,
            radius_packets: None,
        }
    }

    fn check_filled(text: &str, format: Format) {
        let exposition = check(text, format);
        let expected_order: Vec<String> = FAMILIES
            .iter()
            .map(|&(name, kind)| family_name(name, kind, format))
            .collect();
        assert_eq!(exposition.order, expected_order);
        for (name, kind) in FAMILIES {
            assert_eq!(exposition.types[&family_name(name, kind, format)], kind);
        }

        let packets = exposition.samples_of("smtpguard_packets_total");
        assert_eq!(packets.len(), REASON_COUNT as usize);
        for (i, reason) in Reason::ALL.iter().enumerate() {
            let verdict = verdict_name(reason.verdict());
            let labels = [("reason", reason.name()), ("verdict", verdict)];
            assert_eq!(
                exposition.value("smtpguard_packets_total", &labels),
                Some(1000.0 + i as f64),
                "{labels:?}"
            );
        }
        assert_eq!(
            exposition.value(
                "smtpguard_packets_total",
                &[("reason", "dropped"), ("verdict", "drop")]
            ),
            Some(1005.0)
        );
        assert_eq!(
            exposition.value(
                "smtpguard_packets_total",
                &[("reason", "other"), ("verdict", "pass")]
            ),
            Some(1000.0)
        );

        let by_interface = exposition.samples_of("smtpguard_interface_packets_total");
        assert_eq!(by_interface.len(), 15, "eth0's 14 reasons and eth1's 1");
        for (interface, reason, count) in [
            ("eth0", "dropped", Some(7.0)),
            ("eth0", "not-subscriber", Some(0.0)),
            ("eth0", "other", None),
            ("eth1", "monitored", Some(3.0)),
        ] {
            let labels = [("interface", interface), ("reason", reason)];
            assert_eq!(
                exposition.value("smtpguard_interface_packets_total", &labels),
                count,
                "{labels:?}"
            );
        }
        assert_eq!(
            exposition.value(
                "smtpguard_interface_packets_unattributed_total",
                &[("reason", "dropped")]
            ),
            Some(2.0)
        );

        for (name, value) in [
            ("smtpguard_tracked_hosts", 4242.0),
            ("smtpguard_unrecorded_host_segments_total", 5.0),
            ("smtpguard_exemptions", 17.0),
            ("smtpguard_relays", 3.0),
            ("smtpguard_reconcile_errors_total", 2.0),
            ("smtpguard_store_errors_total", 1.0),
            ("smtpguard_reloads_total", 7.0),
            ("smtpguard_reload_failures_total", 1.0),
            ("smtpguard_reattachments_total", 2.0),
            ("smtpguard_pin_restores_total", 1.0),
            ("smtpguard_detached_interfaces", 1.0),
            ("smtpguard_unfiltered_tunnel_interfaces", 2.0),
            ("smtpguard_bots_classified_total", 5.0),
            ("smtpguard_start_time_seconds", 1_700_000_000.5),
            ("smtpguard_config_last_reload_successful", 1.0),
            (
                "smtpguard_config_last_reload_timestamp_seconds",
                1_700_000_100.25,
            ),
            ("smtpguard_relay_hosts_unresolved", 1.0),
            ("smtpguard_escalated_hosts", 4.0),
            ("smtpguard_last_snapshot_timestamp_seconds", 1_700_000_200.5),
        ] {
            assert_eq!(exposition.value(name, &[]), Some(value), "{name}");
        }

        for (map, entries, capacity) in [
            ("SOURCES_V4", 120.0, 65_536.0),
            ("HOST_STATS", 4242.0, 1_048_576.0),
            ("SOURCES_V6", 0.0, 131_072.0),
        ] {
            let labels = [("map", map)];
            assert_eq!(
                exposition.value("smtpguard_map_entries", &labels),
                Some(entries)
            );
            assert_eq!(
                exposition.value("smtpguard_map_capacity", &labels),
                Some(capacity)
            );
        }
        assert_eq!(exposition.samples_of("smtpguard_map_entries").len(), 3);
        for (mode, ranges) in [("enforce", 12.0), ("monitor", 3.0)] {
            assert_eq!(
                exposition.value("smtpguard_subscriber_ranges", &[("mode", mode)]),
                Some(ranges)
            );
        }

        let attached = exposition.samples_of("smtpguard_attached");
        assert_eq!(attached.len(), 2);
        for (interface, attach, mode) in [("eth0", "xdp", "native"), ("bond0.100", "tc", "tcx")] {
            let labels = [("interface", interface), ("attach", attach), ("mode", mode)];
            assert_eq!(exposition.value("smtpguard_attached", &labels), Some(1.0));
        }

        assert_eq!(
            exposition.value(
                "smtpguard_build_info",
                &[("version", env!("CARGO_PKG_VERSION"))]
            ),
            Some(1.0)
        );
        assert_eq!(exposition.samples_of("smtpguard_build_info").len(), 1);
    }

    #[test]
    fn filled_snapshot_renders_every_value_with_its_labels() {
        check_filled(&render(&filled()), Format::OpenMetrics);
    }

    #[test]
    fn prometheus_text_format_carries_the_same_samples() {
        let snapshot = filled();
        check_filled(
            &render_as(&snapshot, Format::PrometheusText),
            Format::PrometheusText,
        );
        let open_metrics = check(&render(&snapshot), Format::OpenMetrics);
        let text = check(
            &render_as(&snapshot, Format::PrometheusText),
            Format::PrometheusText,
        );
        assert_eq!(open_metrics.samples, text.samples);
        assert_eq!(render(&snapshot), render_as(&snapshot, Format::OpenMetrics));
    }

    #[test]
    fn empty_snapshot_renders_valid_output() {
        for format in [Format::OpenMetrics, Format::PrometheusText] {
            let text = render_as(&MetricsSnapshot::default(), format);
            let exposition = check(&text, format);
            assert_eq!(exposition.order.len(), FAMILIES.len(), "{text}");
            for name in [
                "smtpguard_packets_total",
                "smtpguard_map_entries",
                "smtpguard_map_capacity",
                "smtpguard_attached",
            ] {
                assert!(exposition.samples_of(name).is_empty(), "{name}");
            }
            for name in [
                "smtpguard_tracked_hosts",
                "smtpguard_reloads_total",
                "smtpguard_start_time_seconds",
            ] {
                assert_eq!(exposition.value(name, &[]), Some(0.0), "{name}");
            }
            assert_eq!(exposition.samples_of("smtpguard_build_info").len(), 1);
        }
    }

    #[test]
    fn counter_families_end_in_total() {
        let snapshot = filled();
        let open_metrics = check(&render(&snapshot), Format::OpenMetrics);
        let text = check(
            &render_as(&snapshot, Format::PrometheusText),
            Format::PrometheusText,
        );
        let counters = |e: &Exposition| -> Vec<String> {
            e.types
                .iter()
                .filter(|(_, kind)| *kind == "counter")
                .map(|(name, _)| name.clone())
                .collect()
        };
        // The Prometheus format names the family `…_total`; OpenMetrics names its samples so.
        let text_counters = counters(&text);
        assert_eq!(text_counters.len(), 11);
        assert!(text_counters.iter().all(|name| name.ends_with("_total")));
        for family in counters(&open_metrics) {
            let samples = open_metrics.samples_of(&format!("{family}_total"));
            assert!(!samples.is_empty(), "{family}");
            assert!(text_counters.contains(&format!("{family}_total")));
        }
        // Every sample of every counter family, in both formats.
        for sample in open_metrics.samples.iter().chain(&text.samples) {
            let kind = FAMILIES
                .iter()
                .find(|(name, _)| *name == sample.name)
                .unwrap()
                .1;
            assert_eq!(
                kind == "counter",
                sample.name.ends_with("_total"),
                "{sample:?}"
            );
        }
    }

    #[test]
    fn help_texts_are_distinct() {
        let exposition = check(&render(&MetricsSnapshot::default()), Format::OpenMetrics);
        let helps: BTreeSet<&String> = exposition.help.values().collect();
        assert_eq!(
            helps.len(),
            FAMILIES.len(),
            "two families share a HELP text"
        );
    }

    #[test]
    fn repeated_rows_are_merged_and_odd_label_values_escaped() {
        let snapshot = MetricsSnapshot {
            packets: vec![
                ("dropped", "drop", 5),
                ("dropped", "drop", 7),
                ("exempt", "pass", u64::MAX),
                ("exempt", "pass", 1),
            ],
            maps: vec![("HOST_STATS", 1, 10), ("HOST_STATS", 2, 20)],
            attached: vec![
                ("eth0".to_owned(), "xdp", "skb"),
                ("eth0".to_owned(), "xdp", "skb"),
                ("we\"ird\\if\nname".to_owned(), "tc", "tcx"),
            ],
            start_time_seconds: f64::NAN,
            ..MetricsSnapshot::default()
        };
        for format in [Format::OpenMetrics, Format::PrometheusText] {
            let exposition = check(&render_as(&snapshot, format), format);
            let packets = "smtpguard_packets_total";
            assert_eq!(
                exposition.value(packets, &[("reason", "dropped"), ("verdict", "drop")]),
                Some(12.0)
            );
            assert_eq!(
                exposition.value(packets, &[("reason", "exempt"), ("verdict", "pass")]),
                Some(u64::MAX as f64)
            );
            assert_eq!(
                exposition.value("smtpguard_map_entries", &[("map", "HOST_STATS")]),
                Some(1.0)
            );
            assert_eq!(
                exposition.value("smtpguard_map_capacity", &[("map", "HOST_STATS")]),
                Some(10.0)
            );
            assert_eq!(exposition.samples_of("smtpguard_attached").len(), 2);
            let odd = [
                ("interface", "we\"ird\\if\nname"),
                ("attach", "tc"),
                ("mode", "tcx"),
            ];
            assert_eq!(exposition.value("smtpguard_attached", &odd), Some(1.0));
            assert_eq!(
                exposition.value("smtpguard_start_time_seconds", &[]),
                Some(0.0)
            );
        }
    }

    #[test]
    fn packet_rows_follow_the_reasons() {
        let rows = packet_rows([(Reason::Dropped, 3), (Reason::Relayed, 4)]);
        assert_eq!(rows, vec![("dropped", "drop", 3), ("relayed", "pass", 4)]);
        let drops = packet_rows(Reason::ALL.map(|reason| (reason, 0)))
            .into_iter()
            .filter(|&(_, verdict, _)| verdict == "drop")
            .count();
        assert_eq!(
            drops, 5,
            "dropped, fragment-dropped, unparseable-dropped, link-unparseable-dropped, \
             rate-limited"
        );
    }

    /// `promtool check metrics` lints the Prometheus text format (it reads no OpenMetrics).
    #[test]
    fn promtool_accepts_the_prometheus_format() {
        let Some(promtool) = std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join("promtool"))
                .find(|candidate| candidate.is_file())
        }) else {
            println!("promtool not found on PATH (Debian package `prometheus`): check skipped");
            return;
        };
        for snapshot in [filled(), MetricsSnapshot::default()] {
            let text = render_as(&snapshot, Format::PrometheusText);
            let mut child = std::process::Command::new(&promtool)
                .args(["check", "metrics"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("run promtool");
            {
                use std::io::Write as _;
                let mut stdin = child.stdin.take().unwrap();
                stdin.write_all(text.as_bytes()).unwrap();
            }
            let output = child.wait_with_output().unwrap();
            assert!(
                output.status.success(),
                "promtool check metrics: {}\n{}{}\n--- input ---\n{text}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }

    // ---- Content negotiation and the request parser ----

    #[test]
    fn negotiation_follows_accept() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                          version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(
            Format::negotiate(Some("Application/OpenMetrics-Text; version=1.0.0")),
            Format::OpenMetrics
        );
        for accept in [
            None,
            Some(""),
            Some("*/*"),
            Some("text/plain;version=0.0.4"),
            Some("application/openmetrics-text;q=0, text/plain"),
            Some("application/openmetrics-text-ish"),
        ] {
            assert_eq!(
                Format::negotiate(accept),
                Format::PrometheusText,
                "{accept:?}"
            );
        }
    }

    #[test]
    fn heads_are_found_and_bounded() {
        assert_eq!(head_bounds(b"GET / HTTP/1.1\r\n"), None);
        assert_eq!(head_bounds(b"GET / HTTP/1.1\r\n\r\n"), Some((0, 18)));
        assert_eq!(
            head_bounds(b"\r\n\r\nGET / HTTP/1.1\n\nrest"),
            Some((4, 20))
        );
        assert_eq!(head_bounds(b"\r\n\r\n"), None);
        assert_eq!(head_bounds(b""), None);
    }

    #[test]
    fn requests_are_parsed() {
        let get = |head: &str| parse_head(head.as_bytes());
        assert_eq!(
            get("GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: text/plain\r\n\r\n"),
            Ok(Request {
                head_only: false,
                accept: Some("text/plain".to_owned())
            })
        );
        assert_eq!(
            get("HEAD /metrics?x=1 HTTP/1.0\naccept: a\nACCEPT: b\n\n"),
            Ok(Request {
                head_only: true,
                accept: Some("a,b".to_owned())
            })
        );
        assert!(get("GET http://gw:9100/metrics HTTP/1.1\r\n\r\n").is_ok());
        for (head, status) in [
            ("GET /other HTTP/1.1\r\n\r\n", Status::NotFound),
            ("GET / HTTP/1.1\r\n\r\n", Status::NotFound),
            ("GET /metrics/ HTTP/1.1\r\n\r\n", Status::NotFound),
            ("GET http://gw/ HTTP/1.1\r\n\r\n", Status::NotFound),
            ("GET ftp://gw/metrics HTTP/1.1\r\n\r\n", Status::NotFound),
            ("POST /metrics HTTP/1.1\r\n\r\n", Status::MethodNotAllowed),
            ("GET /metrics HTTP/2.0\r\n\r\n", Status::VersionNotSupported),
            ("GET /metrics HTTP/1.1 x\r\n\r\n", Status::BadRequest),
            ("GET /metrics\r\n\r\n", Status::BadRequest),
            ("GET  /metrics HTTP/1.1\r\n\r\n", Status::BadRequest),
            ("GET /metrics SMTP/1.1\r\n\r\n", Status::BadRequest),
            ("\r\n\r\n", Status::BadRequest),
        ] {
            assert_eq!(get(head), Err(status), "{head:?}");
        }
        assert_eq!(
            parse_head(b"GET /metrics HTTP/1.1\r\nX: \xff\xfe\r\n\r\n").map(|r| r.accept),
            Ok(None)
        );
        assert_eq!(
            parse_head(b"GET /m\xffetrics HTTP/1.1\r\n\r\n"),
            Err(Status::BadRequest)
        );
    }

    #[test]
    fn garbage_never_panics_the_parser() {
        // A fixed linear congruential generator: reproducible noise without a dependency.
        let mut state: u64 = 0x5eed;
        let mut next = move || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) as u8
        };
        let alphabet = b"GET /metrics HTTP/1.1\r\n:?#\x00\xff \t";
        for round in 0..20_000 {
            let len = usize::from(next()) % 96;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    let b = next();
                    if round % 2 == 0 {
                        alphabet[usize::from(b) % alphabet.len()]
                    } else {
                        b
                    }
                })
                .collect();
            if let Some((start, end)) = head_bounds(&bytes) {
                let _ = parse_head(&bytes[start..end]);
            }
            let _ = parse_head(&bytes);
        }
    }

    // ---- The HTTP endpoint, through real sockets ----

    const TEST_DEADLINE: Duration = Duration::from_secs(10);

    #[derive(Debug)]
    struct Reply {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    }

    impl Reply {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    fn parse_reply(raw: &[u8]) -> Reply {
        let text = String::from_utf8_lossy(raw);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no complete response head in {text:?}"));
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        let mut parts = status_line.splitn(3, ' ');
        assert_eq!(parts.next(), Some("HTTP/1.1"), "{status_line}");
        let status = parts.next().unwrap().parse().unwrap();
        let headers = lines
            .map(|line| {
                let (name, value) = line.split_once(':').expect("header line");
                (name.to_owned(), value.trim().to_owned())
            })
            .collect();
        Reply {
            status,
            headers,
            body: body.to_owned(),
        }
    }

    /// Sends `request` raw and reads the reply to the server's close.
    async fn exchange(addr: SocketAddr, request: &[u8]) -> Reply {
        let raw = timeout(TEST_DEADLINE, async {
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            // The server may answer (and stop reading) before it has the whole request: a
            // failed write is no failure here, the reply is what counts.
            let _ = stream.write_all(request).await;
            let mut raw = Vec::new();
            let _ = stream.read_to_end(&mut raw).await;
            raw
        })
        .await
        .expect("the exchange took too long");
        parse_reply(&raw)
    }

    async fn start<F>(snapshot: F, limits: Limits) -> (SocketAddr, tokio::task::JoinHandle<()>)
    where
        F: Fn() -> MetricsSnapshot + Send + Sync + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            serve_with(listener, Arc::new(snapshot), limits)
                .await
                .expect("serve failed");
        });
        (addr, server)
    }

    const SCRAPE: &[u8] = b"GET /metrics HTTP/1.1\r\nHost: gw\r\n\
        Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\n\
        User-Agent: Prometheus/3.0.0\r\n\r\n";

    #[tokio::test]
    async fn scrape_answers_with_metrics() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let scrapes = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&scrapes);
        let server = tokio::spawn(serve(listener, move || {
            counted.fetch_add(1, Ordering::SeqCst);
            filled()
        }));

        let reply = exchange(addr, SCRAPE).await;
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(
            reply.header("content-type"),
            Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
        );
        assert_eq!(reply.header("connection"), Some("close"));
        assert_eq!(
            reply.header("content-length"),
            Some(reply.body.len().to_string().as_str())
        );
        check_filled(&reply.body, Format::OpenMetrics);
        assert!(reply.body.contains("\nsmtpguard_tracked_hosts 4242\n"));

        let reply = exchange(addr, b"GET /metrics HTTP/1.0\r\n\r\n").await;
        assert_eq!(reply.status, 200);
        assert_eq!(
            reply.header("content-type"),
            Some("text/plain; version=0.0.4; charset=utf-8")
        );
        check_filled(&reply.body, Format::PrometheusText);

        let reply = exchange(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n").await;
        assert_eq!(reply.status, 200);
        assert!(reply.body.is_empty());
        assert_ne!(reply.header("content-length"), Some("0"));

        assert_eq!(scrapes.load(Ordering::SeqCst), 3, "one snapshot per scrape");
        server.abort();
    }

    #[tokio::test]
    async fn other_requests_get_error_statuses() {
        let (addr, server) = start(MetricsSnapshot::default, Limits::DEFAULT).await;
        for (request, status) in [
            (&b"GET /other HTTP/1.1\r\n\r\n"[..], 404),
            (b"GET / HTTP/1.1\r\nHost: gw\r\n\r\n", 404),
            (
                b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
                405,
            ),
            (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),
            (b"BREW /pot HTCPCP/1.0\r\n\r\n", 400),
        ] {
            let reply = exchange(addr, request).await;
            assert_eq!(reply.status, status, "{request:?} → {reply:?}");
            assert_eq!(reply.header("connection"), Some("close"));
            if status == 405 {
                assert_eq!(reply.header("allow"), Some("GET, HEAD"));
            }
        }
        let reply = exchange(addr, b"HEAD /other HTTP/1.1\r\n\r\n").await;
        assert_eq!(reply.status, 404);
        assert!(reply.body.is_empty(), "{reply:?}");
        // A head cut short by the client closing its side.
        let reply = timeout(TEST_DEADLINE, async {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream
                .write_all(b"GET /metrics HTTP/1.1\r\nHost")
                .await
                .unwrap();
            stream.shutdown().await.unwrap();
            let mut raw = Vec::new();
            stream.read_to_end(&mut raw).await.unwrap();
            parse_reply(&raw)
        })
        .await
        .unwrap();
        assert_eq!(reply.status, 400);
        // The server is still there.
        assert_eq!(exchange(addr, SCRAPE).await.status, 200);
        server.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn silent_clients_do_not_block_a_scrape() {
        let (addr, server) = start(filled, Limits::DEFAULT).await;
        // One client that connects and sends nothing, one that stops mid-request.
        let _silent = TcpStream::connect(addr).await.unwrap();
        let mut stalled = TcpStream::connect(addr).await.unwrap();
        stalled.write_all(b"GET /metr").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;

        let reply = timeout(Duration::from_secs(3), exchange(addr, SCRAPE))
            .await
            .expect("a silent client blocked the scrape");
        assert_eq!(reply.status, 200);
        assert!(reply.body.contains("smtpguard_packets_total{"));
        server.abort();
    }

    #[tokio::test]
    async fn silent_clients_are_timed_out() {
        let limits = Limits {
            head_timeout: Duration::from_millis(200),
            ..Limits::DEFAULT
        };
        let (addr, server) = start(MetricsSnapshot::default, limits).await;
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let raw = timeout(Duration::from_secs(5), async {
            let mut raw = Vec::new();
            let _ = silent.read_to_end(&mut raw).await;
            raw
        })
        .await
        .expect("the silent connection was never closed");
        assert_eq!(parse_reply(&raw).status, 408);
        server.abort();
    }

    #[tokio::test]
    async fn oversized_heads_are_refused() {
        let (addr, server) = start(filled, Limits::DEFAULT).await;
        let mut request = b"GET /metrics HTTP/1.1\r\nX-Padding: ".to_vec();
        request.resize(request.len() + 100 * 1024, b'a');
        request.extend_from_slice(b"\r\n\r\n");
        let reply = exchange(addr, &request).await;
        assert_eq!(reply.status, 431, "{reply:?}");

        // A request line alone past the limit, and a head that ends just past it.
        let mut long_target = b"GET /metrics?".to_vec();
        long_target.resize(20 * 1024, b'x');
        long_target.extend_from_slice(b" HTTP/1.1\r\n\r\n");
        assert_eq!(exchange(addr, &long_target).await.status, 431);
        let mut just_over = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        just_over.resize(Limits::DEFAULT.max_head - 2, b'a');
        just_over.extend_from_slice(b"\r\n\r\n");
        assert_eq!(exchange(addr, &just_over).await.status, 431);
        let mut just_under = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        just_under.resize(Limits::DEFAULT.max_head - 4, b'a');
        just_under.extend_from_slice(b"\r\n\r\n");
        assert_eq!(exchange(addr, &just_under).await.status, 200);

        assert_eq!(exchange(addr, SCRAPE).await.status, 200);
        server.abort();
    }

    #[tokio::test]
    async fn a_panicking_snapshot_gets_a_500_and_the_server_goes_on() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&calls);
        let (addr, server) = start(
            move || {
                if counted.fetch_add(1, Ordering::SeqCst) == 0 {
                    panic!("the first snapshot fails (expected in this test)");
                }
                filled()
            },
            Limits::DEFAULT,
        )
        .await;
        assert_eq!(exchange(addr, SCRAPE).await.status, 500);
        assert_eq!(exchange(addr, SCRAPE).await.status, 200);
        server.abort();
    }

    #[tokio::test]
    async fn excess_connections_are_shed() {
        let limits = Limits {
            max_connections: 2,
            ..Limits::DEFAULT
        };
        let (addr, server) = start(filled, limits).await;
        let first = TcpStream::connect(addr).await.unwrap();
        let _second = TcpStream::connect(addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        // A third connection is closed without an answer while both are open…
        let raw = timeout(TEST_DEADLINE, async {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            let _ = stream.write_all(SCRAPE).await;
            let mut raw = Vec::new();
            let _ = stream.read_to_end(&mut raw).await;
            raw
        })
        .await
        .unwrap();
        assert!(raw.is_empty(), "{}", String::from_utf8_lossy(&raw));
        // …and served once one of them is gone.
        drop(first);
        let reply = timeout(TEST_DEADLINE, async {
            loop {
                let mut stream = TcpStream::connect(addr).await.unwrap();
                let _ = stream.write_all(SCRAPE).await;
                let mut raw = Vec::new();
                let _ = stream.read_to_end(&mut raw).await;
                if !raw.is_empty() {
                    break parse_reply(&raw);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap();
        assert_eq!(reply.status, 200);
        server.abort();
    }
}
