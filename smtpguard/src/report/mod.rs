//! The abuse-desk report: which subscriber hosts tried to reach other networks' MX hosts
//! directly, how hard, since when, and which of them are bots. Computed from the stored
//! snapshot history only, so it is the same before and after an agent restart.

pub mod pbl;
pub mod render;
pub mod snapshot;
mod subscribers;

pub use subscribers::by_subscriber;

use std::{
    cmp::Reverse,
    collections::{BTreeMap, HashMap},
    fmt,
    net::IpAddr,
    time::{Duration, SystemTime},
};

use ipnet::IpNet;
use serde::Serialize;
use smtpguard_common::{Reason, sketch::DistinctSketch, sketch::SKETCH_REGISTERS};

use crate::{config::Config, store::HostInterval};

/// How rows are formed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Grouping {
    /// One row per host.
    #[default]
    Host,
    /// IPv6 hosts by /64 (one customer LAN); IPv4 hosts stay single.
    #[value(name = "/64")]
    Slash64,
    /// IPv6 hosts by /56 (one customer's delegation); IPv4 hosts stay single.
    #[value(name = "/56")]
    Slash56,
    /// By the most specific subscriber range that holds the host.
    SubscriberPrefix,
    /// By the customer identity that held the host (RADIUS accounting, `smtpguard
    /// session`), summed across address changes; hosts no identity held stay single.
    SubscriberId,
}

#[derive(Clone, Debug)]
pub struct ReportOptions {
    pub from: SystemTime,
    pub to: SystemTime,
    pub top: Option<usize>,
    pub min_attempts: u64,
    pub prefix: Option<IpNet>,
    pub group: Grouping,
    /// Only rows whose hosts hit their limit (some attempts were `limited`).
    pub limited_only: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Class {
    /// Many distinct destinations, or many attempts, in a short window.
    Bot,
    /// Repeated attempts to one or two destinations: a mail client set to port 25.
    MisconfiguredClient,
    /// Exempted: shown so the desk sees exempt hosts that behave like bots.
    ExemptSender,
    /// Below the thresholds.
    Low,
}

impl Class {
    pub fn name(self) -> &'static str {
        match self {
            Class::Bot => "bot",
            Class::MisconfiguredClient => "misconfigured-client",
            Class::ExemptSender => "exempt-sender",
            Class::Low => "low",
        }
    }
}

/// One row of the report: a host, or a group of hosts. Its texts (addresses, the reason) are
/// formed when the row is written out, straight into the output: a report over a million
/// hosts builds no strings.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReportRow {
    /// The host's address, or the group's prefix.
    pub host: RowSubject,
    pub hosts: usize,
    #[serde(serialize_with = "optional_text")]
    pub subscriber_prefix: Option<IpNet>,
    /// The mode of the subscriber range in today's configuration (the agent escalates bots of
    /// monitor-mode ranges). Not shown: the report shows [`Self::judged_mode`].
    #[serde(skip)]
    pub mode: Option<&'static str>,
    /// The modes the host was judged under when its segments arrived, shown as `mode`.
    #[serde(rename = "mode")]
    pub judged_mode: Modes,
    pub attempts: u64,
    /// The busiest snapshot interval's attempts over the time the host was active in it (at
    /// least a minute), and never below the average.
    pub attempts_per_minute_peak: f64,
    /// All attempts over the time from the first to the last segment of the report's
    /// window (at least a minute).
    pub attempts_per_minute_avg: f64,
    pub distinct_destinations: u64,
    /// Whether `distinct_destinations` is the sketch's estimate (see [`Distinct`]).
    pub distinct_destinations_estimated: bool,
    pub dropped: u64,
    pub segments: u64,
    #[serde(serialize_with = "rfc3339")]
    pub first_seen: SystemTime,
    #[serde(serialize_with = "rfc3339")]
    pub last_seen: SystemTime,
    pub class: Class,
    pub class_reason: ClassReason,
    /// The customer identity that held the row's host at its last segment (RADIUS accounting
    /// or `smtpguard session`); empty when none did, or nobody knows.
    #[serde(serialize_with = "empty_when_none")]
    pub subscriber_id: Option<String>,
    /// Attempts the hosts' buckets refused: dropped above a `ratelimit` rate or unanswered
    /// beyond a `reject` reply budget. Above 0: the host hit its limit.
    pub limited: u64,
    /// In a fleet report, how many gateways saw the host (or the group's hosts); `None` in a
    /// gateway's own report, which has no such column.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateways: Option<usize>,
}

impl ReportRow {
    /// The distinct destinations as the table shows them: `~37` for an estimate.
    pub fn distinct(&self) -> Distinct {
        Distinct {
            count: self.distinct_destinations,
            estimated: self.distinct_destinations_estimated,
        }
    }
}

/// What a row is about: one host (shown as its address) or a group (shown as its prefix).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RowSubject(IpNet);

impl RowSubject {
    pub fn new(prefix: IpNet) -> Self {
        Self(prefix)
    }

    /// The host (an IPv6 host is its /64 by default), or the group's prefix.
    pub fn prefix(&self) -> IpNet {
        self.0
    }

    /// The host's address, if the row is one address.
    pub fn address(&self) -> Option<IpAddr> {
        (self.0.prefix_len() == self.0.max_prefix_len()).then(|| self.0.addr())
    }
}

impl fmt::Display for RowSubject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.address() {
            Some(address) => address.fmt(f),
            None => self.0.fmt(f),
        }
    }
}

impl Serialize for RowSubject {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

fn optional_text<S: serde::Serializer, T: fmt::Display>(
    value: &Option<T>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(value) => serializer.collect_str(value),
        None => serializer.serialize_none(),
    }
}

fn empty_when_none<S: serde::Serializer>(
    value: &Option<String>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(value.as_deref().unwrap_or(""))
}

/// How a segment was judged, from the reason the kernel recorded for a host's last segment of
/// a snapshot interval: the mode of its range at that time (or of its escalation), not
/// today's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JudgedMode {
    /// Dropped (also fragments and unparseable segments of enforced hosts).
    Enforce,
    /// Counted and passed: a monitor-mode range.
    Monitor,
    /// Passed: an exempted host.
    Exempt,
}

impl JudgedMode {
    /// The mode a recorded reason (a `Reason` discriminant) belongs to; `None` for reasons
    /// that never come with per-host statistics.
    pub fn of(reason: u16) -> Option<Self> {
        const DROPPED: u16 = Reason::Dropped as u16;
        const FRAGMENT_DROPPED: u16 = Reason::FragmentDropped as u16;
        const UNPARSEABLE_DROPPED: u16 = Reason::UnparseableDropped as u16;
        const UNPARSEABLE_PASSED: u16 = Reason::UnparseablePassed as u16;
        const MONITORED: u16 = Reason::Monitored as u16;
        const EXEMPT: u16 = Reason::Exempt as u16;
        match reason {
            DROPPED | FRAGMENT_DROPPED | UNPARSEABLE_DROPPED | UNPARSEABLE_PASSED => {
                Some(Self::Enforce)
            }
            MONITORED => Some(Self::Monitor),
            EXEMPT => Some(Self::Exempt),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Enforce => "enforce",
            Self::Monitor => "monitor",
            Self::Exempt => "exempt",
        }
    }
}

/// The modes a row's hosts were judged under, each once, in the order they first occurred:
/// `enforce`, or `monitor,enforce` for a host whose range was switched (or that was
/// escalated) within the report's window. Empty only for history without a known reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Modes {
    seen: [Option<JudgedMode>; 3],
}

impl Modes {
    fn add(&mut self, mode: Option<JudgedMode>) {
        let Some(mode) = mode else { return };
        if let Some(free) = self
            .seen
            .iter_mut()
            .find(|slot| slot.is_none_or(|m| m == mode))
        {
            *free = Some(mode);
        }
    }

    fn merge(&mut self, other: Modes) {
        for mode in other.seen {
            self.add(mode);
        }
    }

    /// The modes in the order they first occurred.
    pub fn iter(&self) -> impl Iterator<Item = JudgedMode> + '_ {
        self.seen.iter().map_while(|mode| *mode)
    }
}

impl fmt::Display for Modes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, mode) in self.iter().enumerate() {
            if index > 0 {
                f.write_str(",")?;
            }
            f.write_str(mode.name())?;
        }
        Ok(())
    }
}

impl Serialize for Modes {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.seen[0] {
            Some(_) => serializer.collect_str(self),
            None => serializer.serialize_none(),
        }
    }
}

/// A number of distinct destinations: the HyperLogLog sketch's estimate, shown as `~37`, or
/// an exact count where one is provable. Registers alone never prove a count (two
/// destinations may share a register); the kernel's exact sets do, while every interval of
/// the row kept its destinations in one (a few each), and so does a row of a single
/// segment, which went to one destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Distinct {
    pub count: u64,
    pub estimated: bool,
}

impl Distinct {
    /// The distinct destinations of `segments` segments whose sketch (the union of the
    /// intervals' registers) is `registers`, and whose exact count is `exact` when every
    /// interval's exact set was kept.
    fn of(registers: &[u8; SKETCH_REGISTERS], segments: u64, exact: Option<u64>) -> Self {
        match (exact, segments) {
            (Some(count), _) => Distinct {
                count,
                estimated: false,
            },
            // Every tracked segment is counted and its destination sketched: one segment,
            // one destination, whatever the registers hold.
            (None, 1) => Distinct {
                count: 1,
                estimated: false,
            },
            _ => Distinct {
                count: DistinctSketch::new(registers).estimate(),
                estimated: true,
            },
        }
    }
}

impl fmt::Display for Distinct {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.estimated {
            f.write_str("~")?;
        }
        self.count.fmt(f)
    }
}

/// Why a row got its class, as a sentence for the desk (see [`fmt::Display`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClassReason {
    /// Exempt; with its busiest window if that looks like a bot.
    Exempt(Option<Busiest>),
    Bot(Busiest),
    MisconfiguredClient {
        attempts: u64,
        destinations: Distinct,
    },
    /// Below the thresholds of the configured bot window.
    Low {
        destinations: u64,
        attempts: u64,
        window: Duration,
    },
}

/// The figure of a host's busiest bot window that crossed a threshold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Busiest {
    pub measure: Measure,
    pub window: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Measure {
    /// The distinct destinations of the window: exact where the exact sets prove them.
    Destinations(Distinct),
    Attempts(u64),
}

impl fmt::Display for Busiest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let window = humantime::format_duration(self.window);
        match self.measure {
            Measure::Destinations(n) => write!(f, "{n} distinct destinations within {window}"),
            Measure::Attempts(n) => write!(f, "{n} attempts within {window}"),
        }
    }
}

impl fmt::Display for ClassReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClassReason::Exempt(None) => f.write_str("exempt"),
            ClassReason::Exempt(Some(busiest)) => {
                write!(f, "exempt, and behaves like a bot: {busiest}")
            }
            ClassReason::Bot(busiest) => busiest.fmt(f),
            ClassReason::MisconfiguredClient {
                attempts,
                destinations,
            } => write!(f, "{attempts} attempts to {destinations} destination(s)"),
            ClassReason::Low {
                destinations,
                attempts,
                window,
            } => write!(
                f,
                "below the thresholds ({destinations} destinations or {attempts} attempts \
                 within {})",
                humantime::format_duration(*window)
            ),
        }
    }
}

impl Serialize for ClassReason {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

fn rfc3339<S: serde::Serializer>(time: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&humantime::format_rfc3339_seconds(*time))
}

/// One snapshot interval of a group (the members' intervals of that snapshot merged).
#[derive(Clone)]
struct Slice {
    end: SystemTime,
    first_seen: SystemTime,
    last_seen: SystemTime,
    attempts: u64,
    segments: u64,
    dropped: u64,
    limited: u64,
    sketch: [u8; SKETCH_REGISTERS],
    exempt: bool,
    modes: Modes,
}

impl Slice {
    fn of(interval: &HostInterval) -> Self {
        Slice {
            end: interval.end,
            first_seen: interval.first_seen,
            last_seen: interval.last_seen,
            attempts: interval.attempts,
            segments: interval.segments,
            dropped: interval.dropped,
            limited: interval.limited,
            sketch: interval.sketch,
            exempt: interval.last_reason == Reason::Exempt as u16,
            modes: {
                let mut modes = Modes::default();
                modes.add(JudgedMode::of(interval.last_reason));
                modes
            },
        }
    }

    /// Adds another member's interval of the same snapshot.
    fn absorb(&mut self, other: &HostInterval) {
        self.attempts += other.attempts;
        self.segments += other.segments;
        self.dropped += other.dropped;
        self.limited += other.limited;
        self.first_seen = self.first_seen.min(other.first_seen);
        self.last_seen = self.last_seen.max(other.last_seen);
        self.sketch = DistinctSketch::new(&self.sketch).union(&other.sketch);
        self.exempt |= other.last_reason == Reason::Exempt as u16;
        self.modes.add(JudgedMode::of(other.last_reason));
    }

    /// The attempts per minute of the time the slice's hosts were active in it.
    fn rate(&self) -> f64 {
        per_minute_active(self.attempts, self.first_seen, self.last_seen)
    }
}

/// A row before its text is formed.
struct Summary {
    key: IpNet,
    hosts: usize,
    attempts: u64,
    peak: f64,
    average: f64,
    distinct: Distinct,
    modes: Modes,
    dropped: u64,
    limited: u64,
    segments: u64,
    first_seen: SystemTime,
    last_seen: SystemTime,
    exempt: bool,
    /// The busiest window's figure that crossed a bot threshold, if one did.
    bot_like: Option<Measure>,
}

/// Builds the report rows from the history of the window (`intervals` oldest first, as
/// [`crate::store::Store::host_intervals`] returns them), sorted by attempts.
///
/// The intervals are grouped by sorting their indices by row key: no allocation per row, and
/// each row's intervals come out in time order because the indices do.
pub fn build(
    intervals: &[HostInterval],
    config: &Config,
    options: &ReportOptions,
) -> Vec<ReportRow> {
    let ranges = SubscriberRanges::new(config);
    let summaries = summaries(intervals, &ranges, config, options);
    rows(&summaries, &ranges, config, options)
}

/// Like [`build`], but lets the history go once it is summarised, before the rows are made:
/// the agent building a report for a client never holds both (the history is the larger).
pub fn build_owned(
    intervals: Vec<HostInterval>,
    config: &Config,
    options: &ReportOptions,
) -> Vec<ReportRow> {
    let ranges = SubscriberRanges::new(config);
    let summaries = summaries(&intervals, &ranges, config, options);
    drop(intervals);
    rows(&summaries, &ranges, config, options)
}

/// Names each row's customer: the identity whose binding held the row's whole prefix (its
/// host, or its group) at the row's last segment. `bindings` are those of the report's window
/// (see [`crate::store::Store::bindings_between`]).
pub fn name_subscribers(rows: &mut [ReportRow], bindings: &[crate::store::Binding]) {
    for row in rows {
        let prefix = row.host.prefix();
        row.subscriber_id = crate::store::holder_at(bindings, prefix.network(), row.last_seen)
            .filter(|binding| binding.prefix.contains(&prefix))
            .map(|binding| binding.subscriber.clone());
    }
}

/// The hosts whose history makes the `top` rows of a report, given each host's attempts
/// within the report's window (`totals`, one entry per stored host): the members of the rows
/// [`build`] keeps (the most attempts first, then by row key, at least `min_attempts`, within
/// `prefix`), in address order. A report built from these hosts' history alone has the same
/// rows, so a large store need only sum attempts per host to answer `--top`.
pub fn top_hosts(
    totals: &[([u8; 16], u64)],
    top: usize,
    config: &Config,
    options: &ReportOptions,
) -> Vec<[u8; 16]> {
    let ranges = SubscriberRanges::new(config);
    // A stored host with its row's key and its attempts.
    type Member = (IpNet, u64, [u8; 16]);
    let mut keyed: Vec<Member> = totals
        .iter()
        .filter_map(|&(stored, attempts)| {
            let host = std::net::Ipv6Addr::from(stored).to_canonical();
            let wanted = options.prefix.is_none_or(|prefix| prefix.contains(&host));
            wanted.then(|| {
                (
                    group_key(host, options.group, &ranges, config),
                    attempts,
                    stored,
                )
            })
        })
        .collect();
    // Stable, and the hosts come in address order: linear for one address family.
    keyed.sort_by_key(|(key, ..)| *key);
    let mut groups: Vec<(Reverse<u64>, IpNet, &[Member])> = keyed
        .chunk_by(|a, b| a.0 == b.0)
        .map(|run| (Reverse(run.iter().map(|m| m.1).sum()), run[0].0, run))
        .filter(|(Reverse(attempts), ..)| *attempts >= options.min_attempts)
        .collect();
    // The order of `rows`: most attempts first, ties in key order.
    if top < groups.len() {
        if top > 0 {
            groups.select_nth_unstable_by_key(top - 1, |(attempts, key, _)| (*attempts, *key));
        }
        groups.truncate(top);
    }
    let mut hosts: Vec<[u8; 16]> = groups
        .iter()
        .flat_map(|(.., members)| members.iter().map(|m| m.2))
        .collect();
    hosts.sort_unstable();
    hosts
}

/// The groups' figures, in key order.
fn summaries(
    intervals: &[HostInterval],
    ranges: &SubscriberRanges,
    config: &Config,
    options: &ReportOptions,
) -> Vec<Summary> {
    let mut keyed: Vec<(IpNet, usize)> = Vec::with_capacity(intervals.len());
    keyed.extend(
        intervals
            .iter()
            .enumerate()
            .filter_map(|(index, interval)| {
                let host = interval.host_address();
                let wanted = options.prefix.is_none_or(|prefix| prefix.contains(&host));
                wanted.then(|| (group_key(host, options.group, ranges, config), index))
            }),
    );
    // Stable: the store hands each snapshot out in address order, and a stable sort merges
    // such runs in linear time.
    keyed.sort();

    // Groups are independent: summarised on every core. Group runs are never
    // split between parts.
    let parts = group_parts(&keyed, parallelism());
    on_threads(&parts, |part| {
        summarize_runs(part, intervals, config, options)
    })
}

/// The rows of `summaries`, most attempts first.
fn rows(
    summaries: &[Summary],
    ranges: &SubscriberRanges,
    config: &Config,
    options: &ReportOptions,
) -> Vec<ReportRow> {
    // The summaries are in key order, so a stable sort of their indices by attempts alone
    // gives "most attempts first, then by address" without comparing addresses.
    let mut order: Vec<(Reverse<u64>, usize)> = summaries
        .iter()
        .enumerate()
        .map(|(index, summary)| (Reverse(summary.attempts), index))
        .collect();
    order.sort_by_key(|(attempts, _)| *attempts);
    order.truncate(options.top.unwrap_or(usize::MAX));
    let maker = RowMaker {
        config,
        ranges,
        grouping: options.group,
    };
    order
        .into_iter()
        .map(|(_, index)| maker.row(&summaries[index]))
        .collect()
}

pub(crate) fn parallelism() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(8))
}

/// Splits the sorted keys into about `parts` slices without cutting a group's run.
fn group_parts(keyed: &[(IpNet, usize)], parts: usize) -> Vec<&[(IpNet, usize)]> {
    let mut slices = Vec::with_capacity(parts);
    let mut rest = keyed;
    for remaining in (1..=parts).rev() {
        let mut cut = rest.len() / remaining;
        while cut > 0 && cut < rest.len() && rest[cut].0 == rest[cut - 1].0 {
            cut += 1;
        }
        let (part, tail) = rest.split_at(if remaining == 1 { rest.len() } else { cut });
        slices.push(part);
        rest = tail;
    }
    slices
}

/// Runs `work` on each part, one thread per part (the first on this one), and concatenates
/// the results in order.
pub(crate) fn on_threads<P: Sync, R: Send>(
    parts: &[P],
    work: impl Fn(&P) -> Vec<R> + Sync,
) -> Vec<R> {
    let Some((first, others)) = parts.split_first() else {
        return Vec::new();
    };
    std::thread::scope(|scope| {
        let handles: Vec<_> = others
            .iter()
            .map(|part| scope.spawn(|| work(part)))
            .collect();
        let mut all = work(first);
        for handle in handles {
            // A panic in a worker is a bug in this module: pass it on as it is.
            all.extend(
                handle
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            );
        }
        all
    })
}

/// The summaries of the groups in `keyed` (whole runs of equal keys), those with at least
/// `min_attempts` (and some limited attempts, with `limited_only`).
fn summarize_runs(
    keyed: &[(IpNet, usize)],
    intervals: &[HostInterval],
    config: &Config,
    options: &ReportOptions,
) -> Vec<Summary> {
    let mut summaries = Vec::with_capacity(keyed.len());
    let (mut members, mut slices): (Vec<[u8; 16]>, Vec<Slice>) = (Vec::new(), Vec::new());
    let mut keys = Vec::new();
    for run in keyed.chunk_by(|a, b| a.0 == b.0) {
        members.clear();
        slices.clear();
        for &(_, index) in run {
            let interval = &intervals[index];
            members.push(interval.host);
            match slices.last_mut() {
                Some(last) if last.end == interval.end => last.absorb(interval),
                _ => slices.push(Slice::of(interval)),
            }
        }
        members.sort_unstable();
        members.dedup();
        let exact = exact_distinct(run.iter().map(|&(_, index)| &intervals[index]), &mut keys);
        let summary = summarize(run[0].0, members.len(), &slices, exact, config);
        if summary.attempts >= options.min_attempts
            && (!options.limited_only || summary.limited > 0)
        {
            summaries.push(summary);
        }
    }
    summaries
}

fn group_key(
    host: IpAddr,
    grouping: Grouping,
    ranges: &SubscriberRanges,
    config: &Config,
) -> IpNet {
    let single = IpNet::from(host);
    let truncated = |len: u8| match host {
        IpAddr::V6(_) => IpNet::new(host, len).map_or(single, |net| net.trunc()),
        IpAddr::V4(_) => single,
    };
    // A host is what the kernel counts as one (an IPv6 /64 by default); history kept under
    // a longer host prefix joins the host that holds it now.
    match grouping {
        // Customers are formed from host rows once they are named (see `by_subscriber`).
        Grouping::Host | Grouping::SubscriberId => config.enforcement.host_of(host),
        Grouping::Slash64 => truncated(64),
        Grouping::Slash56 => truncated(56),
        Grouping::SubscriberPrefix => ranges.of(host).map_or(single, |(prefix, _)| prefix),
    }
}

/// The configured subscriber ranges, for finding the most specific one holding an address
/// with one table lookup per prefix length in use (an ISP configures thousands of ranges;
/// a report asks for a million addresses).
struct SubscriberRanges {
    by_prefix: HashMap<IpNet, &'static str>,
    /// The prefix lengths in use, longest first.
    lengths: Vec<u8>,
}

impl SubscriberRanges {
    fn new(config: &Config) -> Self {
        let by_prefix: HashMap<IpNet, &'static str> = config
            .subscribers
            .iter()
            .map(|range| {
                let mode = match range.mode {
                    smtpguard_common::Mode::Enforce => "enforce",
                    smtpguard_common::Mode::Monitor => "monitor",
                };
                (range.prefix.trunc(), mode)
            })
            .collect();
        let mut lengths: Vec<u8> = by_prefix.keys().map(IpNet::prefix_len).collect();
        lengths.sort_unstable_by(|a, b| b.cmp(a));
        lengths.dedup();
        Self { by_prefix, lengths }
    }

    /// The most specific subscriber range holding `host`, with its mode.
    fn of(&self, host: IpAddr) -> Option<(IpNet, &'static str)> {
        self.lengths.iter().find_map(|&len| {
            let candidate = IpNet::new(host, len).ok()?.trunc();
            self.by_prefix
                .get(&candidate)
                .map(|mode| (candidate, *mode))
        })
    }
}

/// Rates are per minute of activity, and a host is taken as active for at least this long: one
/// attempt is one per minute, not sixty because it took a second.
const SHORTEST_ACTIVITY: Duration = Duration::from_secs(60);

/// `attempts` over the time from `first_seen` to `last_seen`, at least [`SHORTEST_ACTIVITY`].
fn per_minute_active(attempts: u64, first_seen: SystemTime, last_seen: SystemTime) -> f64 {
    let active = last_seen
        .duration_since(first_seen)
        .unwrap_or_default()
        .max(SHORTEST_ACTIVITY);
    attempts as f64 / (active.as_secs_f64() / 60.0)
}

/// The exact number of distinct destinations of `intervals`, if each kept its exact set: the
/// size of their union. `keys` is scratch space, reused from row to row.
fn exact_distinct<'a>(
    intervals: impl Iterator<Item = &'a HostInterval>,
    keys: &mut Vec<u32>,
) -> Option<u64> {
    keys.clear();
    for interval in intervals {
        keys.extend(
            interval
                .exact_destinations?
                .into_iter()
                .filter(|key| *key != 0),
        );
    }
    keys.sort_unstable();
    keys.dedup();
    Some(keys.len() as u64)
}

/// The figures of one row from its slices (oldest first, one per snapshot) and the exact
/// count of its distinct destinations, if known.
fn summarize(
    key: IpNet,
    hosts: usize,
    slices: &[Slice],
    exact: Option<u64>,
    config: &Config,
) -> Summary {
    let attempts: u64 = slices.iter().map(|s| s.attempts).sum();
    let union = slices.iter().fold([0u8; SKETCH_REGISTERS], |all, s| {
        DistinctSketch::new(&all).union(&s.sketch)
    });
    let first_seen = slices
        .iter()
        .map(|s| s.first_seen)
        .min()
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let last_seen = slices
        .iter()
        .map(|s| s.last_seen)
        .max()
        .unwrap_or(first_seen);
    // The kernel keeps a host's first and last segment, so an interval's first-seen time is
    // its start when the host was already known before it: the active time is never
    // understated, and neither rate overstated.
    let average = per_minute_active(attempts, first_seen, last_seen);
    // The whole active time is a window too: the busiest is at least as busy as it.
    let peak = slices.iter().map(Slice::rate).fold(average, f64::max);
    let segments: u64 = slices.iter().map(|s| s.segments).sum();
    let distinct = Distinct::of(&union, segments, exact);
    let report = &config.report;
    let within_one_window = match (slices.first(), slices.last()) {
        (Some(first), Some(last)) => {
            last.end.duration_since(first.end).unwrap_or_default() < report.bot_window
        }
        _ => true,
    };
    let (window_attempts, window_distinct) = if within_one_window {
        (attempts, distinct)
    } else {
        busiest_window(slices, report.bot_window)
    };
    let bot_like = if window_distinct.count >= report.bot_destinations {
        Some(Measure::Destinations(window_distinct))
    } else if window_attempts >= report.bot_attempts {
        Some(Measure::Attempts(window_attempts))
    } else {
        None
    };
    Summary {
        key,
        hosts,
        attempts,
        peak: round2(peak),
        average: round2(average),
        distinct,
        modes: slices.iter().fold(Modes::default(), |mut all, s| {
            all.merge(s.modes);
            all
        }),
        dropped: slices.iter().map(|s| s.dropped).sum(),
        limited: slices.iter().map(|s| s.limited).sum(),
        segments,
        first_seen,
        last_seen,
        exempt: slices.iter().any(|s| s.exempt),
        bot_like,
    }
}

/// Turns summaries into rows: the subscriber range and the class.
struct RowMaker<'a> {
    config: &'a Config,
    ranges: &'a SubscriberRanges,
    grouping: Grouping,
}

impl RowMaker<'_> {
    fn row(&self, summary: &Summary) -> ReportRow {
        let key = summary.key;
        let representative = if matches!(self.grouping, Grouping::Host | Grouping::SubscriberId) {
            key.addr()
        } else {
            key.network()
        };
        let subscriber = self.ranges.of(representative);
        let (class, class_reason) = self.classify(summary);
        ReportRow {
            host: RowSubject(key),
            hosts: summary.hosts,
            subscriber_prefix: subscriber.map(|(prefix, _)| prefix),
            subscriber_id: None,
            mode: subscriber.map(|(_, mode)| mode),
            judged_mode: summary.modes,
            attempts: summary.attempts,
            attempts_per_minute_peak: summary.peak,
            attempts_per_minute_avg: summary.average,
            distinct_destinations: summary.distinct.count,
            distinct_destinations_estimated: summary.distinct.estimated,
            dropped: summary.dropped,
            limited: summary.limited,
            segments: summary.segments,
            first_seen: summary.first_seen,
            last_seen: summary.last_seen,
            class,
            class_reason,
            gateways: None,
        }
    }

    fn classify(&self, summary: &Summary) -> (Class, ClassReason) {
        let report = &self.config.report;
        let busiest = summary.bot_like.map(|measure| Busiest {
            measure,
            window: report.bot_window,
        });
        if summary.exempt {
            return (Class::ExemptSender, ClassReason::Exempt(busiest));
        }
        if let Some(busiest) = busiest {
            return (Class::Bot, ClassReason::Bot(busiest));
        }
        let (attempts, destinations) = (summary.attempts, summary.distinct);
        if attempts >= report.client_attempts && destinations.count <= 2 {
            return (
                Class::MisconfiguredClient,
                ClassReason::MisconfiguredClient {
                    attempts,
                    destinations,
                },
            );
        }
        (
            Class::Low,
            ClassReason::Low {
                destinations: report.bot_destinations,
                attempts: report.bot_attempts,
                window: report.bot_window,
            },
        )
    }
}

fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

/// The busiest `bot_window` of the slices (oldest first): the most attempts, and the most
/// distinct destinations (estimated), seen within any window of that length ending at a
/// snapshot. The window slides forward, so a host active all day costs its slices times the
/// few that fit in one window, not its slices squared.
fn busiest_window(slices: &[Slice], window: Duration) -> (u64, Distinct) {
    let mut best = (0, 0);
    let (mut oldest, mut attempts) = (0, 0);
    for (newest, last) in slices.iter().enumerate() {
        let since = last
            .end
            .checked_sub(window)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        attempts += last.attempts;
        while slices[oldest].end <= since {
            attempts -= slices[oldest].attempts;
            oldest += 1;
        }
        let sketch = slices[oldest..=newest]
            .iter()
            .fold([0u8; SKETCH_REGISTERS], |all, s| {
                DistinctSketch::new(&all).union(&s.sketch)
            });
        best.0 = best.0.max(attempts);
        best.1 = best.1.max(DistinctSketch::new(&sketch).estimate());
    }
    let (attempts, destinations) = best;
    (
        attempts,
        Distinct {
            count: destinations,
            estimated: true,
        },
    )
}

/// A host, or a customer under any of its addresses, classified as a bot in windows at least
/// the reoffense gap apart.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Reoffender {
    /// The host of its last classification.
    pub host: String,
    /// The customer identity that held its hosts when they were classified; empty for a host
    /// no identity held.
    #[serde(serialize_with = "empty_when_none")]
    pub subscriber_id: Option<String>,
    /// The hosts it was classified under, in the order of their first classification.
    pub hosts: Vec<String>,
    pub classifications: usize,
    #[serde(serialize_with = "rfc3339")]
    pub first_classified: SystemTime,
    #[serde(serialize_with = "rfc3339")]
    pub last_classified: SystemTime,
    /// When each classification happened, oldest first.
    #[serde(serialize_with = "rfc3339_list")]
    pub history: Vec<SystemTime>,
    pub escalations: usize,
    pub highest_level: Option<u32>,
}

fn rfc3339_list<S: serde::Serializer>(
    times: &[SystemTime],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(
        times
            .iter()
            .map(|t| humantime::format_rfc3339_seconds(*t).to_string()),
    )
}

/// Whom a bot classification counts for: the customer that held the host, or else the host.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Offender<'a> {
    Subscriber(&'a str),
    Host(IpAddr),
}

/// The reoffenders among `events` (oldest first), with `escalations_of(host, subscriber)` for
/// their history: a customer's classifications count together whatever address it held.
pub fn reoffenders(
    events: &[crate::store::BotEvent],
    gap: Duration,
    escalations_of: impl Fn(IpAddr, Option<&str>) -> Vec<crate::store::Escalation>,
) -> Vec<Reoffender> {
    let mut by_offender: BTreeMap<Offender<'_>, Vec<&crate::store::BotEvent>> = BTreeMap::new();
    for event in events {
        let offender = match &event.subscriber {
            Some(subscriber) => Offender::Subscriber(subscriber),
            None => Offender::Host(event.host),
        };
        by_offender.entry(offender).or_default().push(event);
    }
    let mut rows: Vec<Reoffender> = by_offender
        .into_iter()
        .filter_map(|(offender, events)| {
            let (first, last) = (*events.first()?, *events.last()?);
            if last.at.duration_since(first.at).unwrap_or_default() < gap {
                return None;
            }
            let subscriber = match offender {
                Offender::Subscriber(subscriber) => Some(subscriber),
                Offender::Host(_) => None,
            };
            let mut hosts: Vec<IpAddr> = Vec::new();
            for event in &events {
                if !hosts.contains(&event.host) {
                    hosts.push(event.host);
                }
            }
            let escalations: Vec<crate::store::Escalation> = hosts
                .iter()
                .flat_map(|host| escalations_of(*host, subscriber))
                .collect();
            Some(Reoffender {
                host: last.host.to_string(),
                subscriber_id: subscriber.map(str::to_owned),
                hosts: hosts.iter().map(IpAddr::to_string).collect(),
                classifications: events.len(),
                first_classified: first.at,
                last_classified: last.at,
                history: events.iter().map(|event| event.at).collect(),
                escalations: escalations.len(),
                highest_level: escalations.iter().map(|e| e.level).max(),
            })
        })
        .collect();
    rows.sort_by(|a, b| {
        b.classifications
            .cmp(&a.classifications)
            .then_with(|| a.host.cmp(&b.host))
    });
    rows
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use smtpguard_common::{host::ipv4_mapped, sketch};

    use super::*;

    fn config() -> Config {
        Config::parse(
            "[[subscribers]]\nprefix = \"100.64.0.0/10\"\n[[subscribers]]\nprefix = \"100.127.0.0/16\"\nmode = \"monitor\"\n[[subscribers]]\nprefix = \"2001:db8:1000::/36\"\n",
            Path::new("report.toml"),
        )
        .unwrap()
    }

    fn at(minute: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + minute * 60)
    }

    /// One host's interval ending at `minute`, with `attempts` SYNs to `destinations`.
    fn interval(
        host: IpAddr,
        minute: u64,
        attempts: u64,
        destinations: &[u32],
        reason: Reason,
    ) -> HostInterval {
        let (registers, exact_destinations) =
            sketch::recorded(destinations.iter().map(|d| ipv4_mapped(d.to_be_bytes())));
        let host = match host {
            IpAddr::V4(v4) => ipv4_mapped(v4.octets()),
            IpAddr::V6(v6) => v6.octets(),
        };
        HostInterval {
            host,
            start: at(minute - 1),
            end: at(minute),
            first_seen: at(minute - 1) + Duration::from_secs(10),
            last_seen: at(minute) - Duration::from_secs(10),
            attempts,
            segments: attempts,
            dropped: attempts,
            limited: 0,
            sketch: registers,
            exact_destinations,
            last_dst: ipv4_mapped([198, 51, 100, 7]),
            last_port: 25,
            last_reason: reason as u16,
        }
    }

    fn options(group: Grouping) -> ReportOptions {
        ReportOptions {
            from: at(0),
            to: at(1_000),
            top: None,
            min_attempts: 0,
            prefix: None,
            group,
            limited_only: false,
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn classifies_bots_clients_exempt_and_low() {
        let bot = ip("100.64.0.2");
        let client = ip("100.64.0.3");
        let exempt = ip("100.64.10.5");
        let quiet = ip("100.127.0.9");
        let mut history = Vec::new();
        // The bot: 30 destinations over 3 minutes.
        for minute in 1..=3 {
            let destinations: Vec<u32> = (0..10)
                .map(|i| 0xC633_6400 + minute as u32 * 10 + i)
                .collect();
            history.push(interval(bot, minute, 10, &destinations, Reason::Dropped));
        }
        // The client: 8 attempts to one MX.
        history.push(interval(client, 2, 8, &[0xC633_6407], Reason::Dropped));
        // An exempt host that behaves like a bot.
        let many: Vec<u32> = (0..25).map(|i| 0xCB00_7100 + i).collect();
        history.push(interval(exempt, 2, 25, &many, Reason::Exempt));
        // One attempt.
        history.push(interval(quiet, 3, 1, &[0xC633_6407], Reason::Monitored));

        let rows = build(&history, &config(), &options(Grouping::Host));
        let texts: Vec<String> = rows.iter().map(|r| r.host.to_string()).collect();
        let summary: Vec<(&str, Class, u64)> = rows
            .iter()
            .zip(&texts)
            .map(|(r, host)| (host.as_str(), r.class, r.attempts))
            .collect();
        assert_eq!(
            summary,
            [
                ("100.64.0.2", Class::Bot, 30),
                ("100.64.10.5", Class::ExemptSender, 25),
                ("100.64.0.3", Class::MisconfiguredClient, 8),
                ("100.127.0.9", Class::Low, 1),
            ]
        );
        let bot_row = &rows[0];
        assert!(
            (26..=34).contains(&bot_row.distinct_destinations),
            "{bot_row:?}"
        );
        assert!(
            bot_row
                .class_reason
                .to_string()
                .contains("distinct destinations within 10m"),
            "{}",
            bot_row.class_reason
        );
        // 30 attempts from 00:10 to 02:50: 11.25 a minute, more than any one interval's 10
        // (each interval's 40 s of activity count as a minute).
        assert_eq!(bot_row.attempts_per_minute_avg, 11.25);
        assert_eq!(bot_row.attempts_per_minute_peak, 11.25);
        assert_eq!(
            bot_row.subscriber_prefix,
            Some("100.64.0.0/10".parse().unwrap())
        );
        assert_eq!(rows[3].mode, Some("monitor"));
        assert!(
            rows[1]
                .class_reason
                .to_string()
                .contains("behaves like a bot"),
            "{}",
            rows[1].class_reason
        );
        assert_eq!(bot_row.first_seen, at(0) + Duration::from_secs(10));
        assert_eq!(bot_row.last_seen, at(3) - Duration::from_secs(10));
    }

    #[test]
    fn a_slow_bot_is_judged_by_its_busiest_window() {
        // 30 destinations, but one every 5 minutes: never 20 within 10 minutes.
        let host = ip("100.64.0.7");
        let history: Vec<HostInterval> = (1..=30)
            .map(|n| interval(host, n * 5, 1, &[0xC633_6400 + n as u32], Reason::Dropped))
            .collect();
        let rows = build(&history, &config(), &options(Grouping::Host));
        assert_eq!(rows[0].class, Class::Low, "{:?}", rows[0]);
        assert!(
            rows[0].distinct_destinations >= 24,
            "all 30 count over the whole report"
        );
    }

    #[test]
    fn ipv6_hosts_group_by_64_and_56() {
        let history = vec![
            interval(ip("2001:db8:1000:1::a"), 1, 5, &[1], Reason::Dropped),
            interval(ip("2001:db8:1000:1::b"), 1, 5, &[2], Reason::Dropped),
            interval(ip("2001:db8:1000:2::c"), 1, 5, &[3], Reason::Dropped),
            interval(ip("100.64.0.2"), 1, 1, &[3], Reason::Dropped),
        ];
        let by64 = build(&history, &config(), &options(Grouping::Slash64));
        let texts: Vec<String> = by64.iter().map(|r| r.host.to_string()).collect();
        let rows: Vec<(&str, usize, u64)> = by64
            .iter()
            .zip(&texts)
            .map(|(r, host)| (host.as_str(), r.hosts, r.attempts))
            .collect();
        assert_eq!(
            rows,
            [
                ("2001:db8:1000:1::/64", 2, 10),
                ("2001:db8:1000:2::/64", 1, 5),
                ("100.64.0.2", 1, 1)
            ]
        );
        let by56 = build(&history, &config(), &options(Grouping::Slash56));
        assert_eq!(by56[0].host.to_string(), "2001:db8:1000::/56");
        assert_eq!((by56[0].hosts, by56[0].attempts), (3, 15));
        let by_range = build(&history, &config(), &options(Grouping::SubscriberPrefix));
        assert_eq!(by_range[0].host.to_string(), "2001:db8:1000::/36");
    }

    #[test]
    fn reoffenders_need_two_classifications_a_gap_apart() {
        use crate::store::BotEvent;
        let event = |host: &str, minute: u64, subscriber: Option<&str>| BotEvent {
            host: ip(host),
            at: at(minute),
            reason: "bot".to_owned(),
            subscriber: subscriber.map(str::to_owned),
        };
        let events = vec![
            event("100.64.0.2", 0, None),
            event("100.64.0.3", 0, None),
            event("100.64.0.9", 0, Some("cust-7")),
            event("100.64.0.3", 30, None),
            event("100.64.0.2", 24 * 60, None),
            // The customer's bot under its next address: the same reoffender.
            event("100.64.0.10", 24 * 60, Some("cust-7")),
            event("100.64.0.2", 25 * 60, None),
            // Another customer's bot at the customer's old address: not the customer.
            event("100.64.0.9", 26 * 60, Some("cust-8")),
        ];
        let rows = reoffenders(&events, Duration::from_secs(24 * 3600), |host, who| {
            let level = if who == Some("cust-7") { 1 } else { 0 };
            vec![crate::store::Escalation {
                id: 1,
                host,
                started: at(0),
                until: at(60),
                level,
                ended: None,
                ended_by: None,
            }]
        });
        let summary: Vec<_> = rows
            .iter()
            .map(|row| {
                (
                    row.host.as_str(),
                    row.subscriber_id.as_deref(),
                    row.hosts.join(" "),
                    row.classifications,
                    row.escalations,
                    row.highest_level,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("100.64.0.2", None, "100.64.0.2".to_owned(), 3, 1, Some(0)),
                (
                    "100.64.0.10",
                    Some("cust-7"),
                    "100.64.0.9 100.64.0.10".to_owned(),
                    2,
                    2,
                    Some(1)
                ),
            ]
        );
        assert_eq!(rows[0].history, [at(0), at(24 * 60), at(25 * 60)]);
    }

    #[test]
    fn the_top_hosts_history_makes_the_top_rows() {
        // Ties (equal attempts) across families, IPv6 hosts sharing a /64 and a /56, hosts
        // in several intervals, and hosts that a prefix or a minimum leaves out.
        let hosts = [
            "100.64.0.2",
            "100.64.0.3",
            "100.64.9.3",
            "100.127.0.9",
            "2001:db8:1000:1::a",
            "2001:db8:1000:1::b",
            "2001:db8:1000:2::c",
            "2001:db8:1001::d",
        ];
        let mut history = Vec::new();
        for minute in 1..=3 {
            for (n, host) in hosts.iter().enumerate() {
                let attempts = 1 + (n as u64 * minute) % 4;
                let destinations: Vec<u32> = (0..attempts as u32).collect();
                history.push(interval(
                    ip(host),
                    minute,
                    attempts,
                    &destinations,
                    Reason::Dropped,
                ));
            }
        }
        let mut totals: Vec<([u8; 16], u64)> = Vec::new();
        let mut stored: Vec<&HostInterval> = history.iter().collect();
        stored.sort_by_key(|i| i.host);
        for run in stored.chunk_by(|a, b| a.host == b.host) {
            totals.push((run[0].host, run.iter().map(|i| i.attempts).sum()));
        }
        for group in [
            Grouping::Host,
            Grouping::Slash64,
            Grouping::Slash56,
            Grouping::SubscriberPrefix,
        ] {
            for (prefix, min_attempts) in [(None, 0), (Some("100.64.0.0/16"), 0), (None, 7)] {
                let mut opts = options(group);
                opts.prefix = prefix.map(|p| p.parse().unwrap());
                opts.min_attempts = min_attempts;
                let whole = build(&history, &config(), &opts);
                for top in 0..=whole.len() + 1 {
                    opts.top = Some(top);
                    let chosen = top_hosts(&totals, top, &config(), &opts);
                    let theirs: Vec<HostInterval> = history
                        .iter()
                        .filter(|i| chosen.contains(&i.host))
                        .cloned()
                        .collect();
                    assert_eq!(
                        build(&theirs, &config(), &opts),
                        whole[..top.min(whole.len())],
                        "{group:?} {prefix:?} at least {min_attempts}, top {top}"
                    );
                }
            }
        }
    }

    #[test]
    fn limited_attempts_are_summed_kept_by_the_store_and_can_be_listed_alone() {
        let mut history = vec![
            interval(ip("100.64.0.2"), 1, 9, &[1], Reason::RateLimited),
            interval(ip("100.64.0.3"), 1, 5, &[1], Reason::Dropped),
            interval(ip("100.64.0.2"), 2, 4, &[1], Reason::RateLimited),
        ];
        (history[0].limited, history[2].limited) = (6, 3);
        let history = through_store(&history);
        let mut opts = options(Grouping::Host);
        let limited = |rows: &[ReportRow]| -> Vec<(String, u64)> {
            rows.iter()
                .map(|row| (row.host.to_string(), row.limited))
                .collect()
        };
        let rows = build(&history, &config(), &opts);
        assert_eq!(
            limited(&rows),
            [("100.64.0.2".to_owned(), 9), ("100.64.0.3".to_owned(), 0)]
        );
        opts.limited_only = true;
        let rows = build(&history, &config(), &opts);
        assert_eq!(limited(&rows), [("100.64.0.2".to_owned(), 9)]);
        opts.group = Grouping::SubscriberPrefix;
        let rows = build(&history, &config(), &opts);
        assert_eq!(limited(&rows), [("100.64.0.0/10".to_owned(), 9)]);
    }

    #[test]
    fn filters_top_and_min_attempts() {
        let history = vec![
            interval(ip("100.64.0.2"), 1, 9, &[1], Reason::Dropped),
            interval(ip("100.64.0.3"), 1, 5, &[1], Reason::Dropped),
            interval(ip("100.64.9.3"), 1, 2, &[1], Reason::Dropped),
        ];
        let mut opts = options(Grouping::Host);
        opts.top = Some(1);
        assert_eq!(build(&history, &config(), &opts).len(), 1);
        opts.top = None;
        opts.min_attempts = 5;
        assert_eq!(build(&history, &config(), &opts).len(), 2);
        opts.min_attempts = 0;
        opts.prefix = Some("100.64.9.0/24".parse().unwrap());
        let rows = build(&history, &config(), &opts);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].host.to_string(), "100.64.9.3");
    }

    /// `host` active from `first` to `last` (seconds after `at(0)`) within the interval from
    /// `start` to `end`, with one attempt to each of `destinations`, judged for `reason`.
    fn timed(
        host: &str,
        [start, first, last, end]: [u64; 4],
        destinations: &[u32],
        reason: Reason,
    ) -> HostInterval {
        let second = |s: u64| at(0) + Duration::from_secs(s);
        let mut interval = interval(ip(host), 1, destinations.len() as u64, destinations, reason);
        (interval.start, interval.end) = (second(start), second(end));
        (interval.first_seen, interval.last_seen) = (second(first), second(last));
        interval
    }

    /// Writes `history` as snapshots into a store in a temporary folder and reads it back, as
    /// the agent and `smtpguard report` do.
    fn through_store(history: &[HostInterval]) -> Vec<HostInterval> {
        let dir = tempfile::tempdir().unwrap();
        let mut store = crate::store::Store::open(dir.path()).unwrap();
        for (epoch, snapshot) in history.chunk_by(|a, b| a.end == b.end).enumerate() {
            let state = crate::store::SnapshotState {
                epoch: epoch as u32 + 1,
                last: snapshot[0].end,
            };
            store
                .record_snapshot(snapshot, &HashMap::new(), state)
                .unwrap();
        }
        let stored = store.host_intervals(at(0), at(1_000)).unwrap();
        assert_eq!(stored.len(), history.len(), "every interval stored");
        stored
    }

    fn rates(rows: &[ReportRow], host: &str) -> (f64, f64) {
        let row = rows
            .iter()
            .find(|r| r.host.to_string() == host)
            .unwrap_or_else(|| panic!("no row for {host} in {rows:#?}"));
        (row.attempts_per_minute_peak, row.attempts_per_minute_avg)
    }

    #[test]
    fn attempts_per_minute_are_over_the_time_the_host_was_active() {
        let history = through_store(&[
            // One attempt in a 5-second interval (the first after a restart): one a minute,
            // not twelve.
            timed("100.64.0.2", [55, 57, 57, 60], &[1], Reason::Dropped),
            // 10 attempts within 2 minutes of a 10-minute interval: 5 a minute, not 1.
            timed("100.64.0.3", [60, 300, 420, 660], &[1; 10], Reason::Dropped),
            // 6 attempts within 30 s, then 2 in an interval 20 minutes later: 8 over the 20
            // minutes from the first to the last segment, and 6 a minute at the busiest.
            timed("100.64.0.4", [0, 30, 60, 60], &[1; 6], Reason::Dropped),
            timed(
                "100.64.0.4",
                [1_200, 1_230, 1_230, 1_260],
                &[1, 2],
                Reason::Dropped,
            ),
        ]);
        let rows = build(&history, &config(), &options(Grouping::Host));
        assert_eq!(rates(&rows, "100.64.0.2"), (1.0, 1.0), "peak, average");
        assert_eq!(rates(&rows, "100.64.0.3"), (5.0, 5.0), "peak, average");
        assert_eq!(rates(&rows, "100.64.0.4"), (6.0, 0.4), "peak, average");
        // Grouped, the /24's hosts are active from 00:30 to 20:30: 19 attempts in 20 minutes;
        // the busiest interval is the first, with 7 attempts of two hosts within 30 s.
        let mut grouped = options(Grouping::SubscriberPrefix);
        grouped.prefix = Some("100.64.0.0/24".parse().unwrap());
        let rows = build(&history, &config(), &grouped);
        assert_eq!(rows.len(), 1, "{rows:#?}");
        assert_eq!(rows[0].attempts, 19);
        assert_eq!(
            (
                rows[0].attempts_per_minute_peak,
                rows[0].attempts_per_minute_avg
            ),
            (7.0, 0.95)
        );
    }

    #[test]
    fn distinct_destinations_are_exact_while_the_sets_hold_them_and_else_estimates() {
        let eight: Vec<u32> = (1..=8).collect();
        let history = through_store(
            &[
                // Eight destinations outgrow the exact set: the sketch's estimate.
                timed("100.64.0.2", [0, 10, 20, 60], &eight, Reason::Dropped),
                // Three destinations in one interval: exact.
                timed("100.64.0.5", [0, 10, 20, 60], &[1, 2, 3], Reason::Dropped),
                // Four in each of two intervals, six in all: the union of the sets is exact,
                // however large.
                timed(
                    "100.64.0.6",
                    [0, 10, 20, 60],
                    &[1, 2, 3, 4],
                    Reason::Dropped,
                ),
                timed(
                    "100.64.0.6",
                    [60, 70, 80, 120],
                    &[3, 4, 5, 6],
                    Reason::Dropped,
                ),
                // One segment went to one destination, provably, even without a set or sketch (a
                // host whose sketch epoch was not the snapshot's).
                {
                    let mut one = timed("100.64.0.3", [0, 10, 10, 60], &[1], Reason::Dropped);
                    one.sketch = [0; SKETCH_REGISTERS];
                    one.exact_destinations = None;
                    one
                },
                // One segment in each of two intervals without sets (history from before the
                // sets): two segments, an estimate again.
                timed("100.64.0.4", [0, 10, 10, 60], &[1], Reason::Dropped),
                timed("100.64.0.4", [60, 70, 70, 120], &[1], Reason::Dropped),
            ]
            .map(|mut i| {
                if i.host == ipv4_mapped([100, 64, 0, 4]) {
                    i.exact_destinations = None;
                }
                i
            }),
        );
        let rows = build(&history, &config(), &options(Grouping::Host));
        let shown: Vec<(String, u64, bool, String)> = rows
            .iter()
            .map(|r| {
                (
                    r.host.to_string(),
                    r.distinct_destinations,
                    r.distinct_destinations_estimated,
                    r.distinct().to_string(),
                )
            })
            .collect();
        let estimate = DistinctSketch::new(&history[0].sketch).estimate();
        assert_eq!(
            shown,
            [
                (
                    "100.64.0.2".to_owned(),
                    estimate,
                    true,
                    format!("~{estimate}")
                ),
                ("100.64.0.6".to_owned(), 6, false, "6".to_owned()),
                ("100.64.0.5".to_owned(), 3, false, "3".to_owned()),
                ("100.64.0.4".to_owned(), 1, true, "~1".to_owned()),
                ("100.64.0.3".to_owned(), 1, false, "1".to_owned()),
            ]
        );

        let mut table = Vec::new();
        render::table(&rows, &mut table).unwrap();
        let table = String::from_utf8(table).unwrap();
        for (host, cell) in [
            ("100.64.0.2", format!("~{estimate}")),
            ("100.64.0.5", "3".into()),
        ] {
            let line = table.lines().find(|l| l.contains(host)).unwrap();
            assert!(line.split_whitespace().any(|c| c == cell), "{table}");
        }

        let mut json = Vec::new();
        render::json(&rows, &mut json).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(json[0]["distinct_destinations"], estimate);
        assert_eq!(json[0]["distinct_destinations_estimated"], true);
        assert_eq!(json[2]["distinct_destinations"], 3);
        assert_eq!(json[2]["distinct_destinations_estimated"], false);

        let mut csv = Vec::new();
        render::csv(&rows, &mut csv).unwrap();
        let mut reader = csv::Reader::from_reader(&csv[..]);
        let header = reader.headers().unwrap().clone();
        let column = header
            .iter()
            .position(|h| h == "distinct_destinations_estimated")
            .unwrap_or_else(|| panic!("no estimated column in {header:?}"));
        let flags: Vec<String> = reader
            .records()
            .map(|r| r.unwrap()[column].to_owned())
            .collect();
        assert_eq!(flags, ["true", "false", "false", "true", "false"]);
    }

    #[test]
    fn a_misconfigured_client_reads_its_destinations_exactly() {
        let history = [timed(
            "100.64.0.3",
            [0, 10, 20, 60],
            &[7; 5],
            Reason::Dropped,
        )];
        let rows = build(&history, &config(), &options(Grouping::Host));
        assert_eq!(rows[0].class, Class::MisconfiguredClient);
        assert_eq!(
            rows[0].class_reason.to_string(),
            "5 attempts to 1 destination(s)"
        );
    }

    #[test]
    fn the_mode_is_the_one_judged_at_the_time() {
        let history = through_store(&[
            // In an enforce range today, but in monitor mode then.
            timed("100.64.0.2", [0, 10, 20, 60], &[1, 2], Reason::Monitored),
            // In a monitor range today: escalated (enforced) first, then monitored again.
            timed("100.127.0.9", [0, 10, 20, 60], &[1, 2, 3], Reason::Dropped),
            timed("100.127.0.9", [60, 70, 80, 120], &[1, 2], Reason::Monitored),
            timed("100.127.0.9", [120, 130, 140, 180], &[1], Reason::Dropped),
            // Exempt then; and an unparseable segment of an enforced host.
            timed(
                "100.64.10.5",
                [0, 10, 20, 60],
                &[1, 2, 3, 4],
                Reason::Exempt,
            ),
            timed(
                "100.64.0.7",
                [0, 10, 20, 60],
                &[1],
                Reason::UnparseablePassed,
            ),
        ]);
        let rows = build(&history, &config(), &options(Grouping::Host));
        let modes: Vec<(String, String, Option<&str>)> = rows
            .iter()
            .map(|r| (r.host.to_string(), r.judged_mode.to_string(), r.mode))
            .collect();
        assert_eq!(
            modes,
            [
                (
                    "100.127.0.9".to_owned(),
                    "enforce,monitor".to_owned(),
                    Some("monitor")
                ),
                (
                    "100.64.10.5".to_owned(),
                    "exempt".to_owned(),
                    Some("enforce")
                ),
                (
                    "100.64.0.2".to_owned(),
                    "monitor".to_owned(),
                    Some("enforce")
                ),
                (
                    "100.64.0.7".to_owned(),
                    "enforce".to_owned(),
                    Some("enforce")
                ),
            ],
            "(host, mode judged, today's range mode)"
        );

        let mut json = Vec::new();
        render::json(&rows, &mut json).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&json).unwrap();
        let shown: Vec<&str> = json
            .as_array()
            .unwrap()
            .iter()
            .map(|row| row["mode"].as_str().unwrap())
            .collect();
        assert_eq!(shown, ["enforce,monitor", "exempt", "monitor", "enforce"]);

        let mut table = Vec::new();
        render::table(&rows, &mut table).unwrap();
        let table = String::from_utf8(table).unwrap();
        let line = table.lines().find(|l| l.contains("100.64.0.2 ")).unwrap();
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            cells[..3],
            ["100.64.0.2", "100.64.0.0/10", "monitor"],
            "{table}"
        );

        let mut csv = Vec::new();
        render::csv(&rows, &mut csv).unwrap();
        let mut reader = csv::Reader::from_reader(&csv[..]);
        let column = render::FIELDS.iter().position(|f| *f == "mode").unwrap();
        let mode: Vec<String> = reader
            .records()
            .map(|r| r.unwrap()[column].to_owned())
            .collect();
        assert_eq!(mode, ["enforce,monitor", "exempt", "monitor", "enforce"]);
    }
}
