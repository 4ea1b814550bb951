//! What the agent owns. One `AgentState` exists per agent, behind one lock, so the policy
//! source and the kernel maps always change together and in order: the source first
//! (durable), then the maps (reconciled by difference), then the answer.
//!
//! The operations on it live by concern: `verbs/` (one module per verb family, as `cli/`),
//! `reconcile` (desired policy into the kernel maps), `enforcement` (attach, pins, interface
//! watch), `escalation` (bots and their escalations) and `expiry`.

use std::{path::PathBuf, sync::Arc, time::SystemTime};

use anyhow::Context as _;
use smtpguard_common::{
    Mode, REASON_COUNT, Reason,
    maps::{self as names, source_capacity},
};
use tracing::{error, info, warn};

use super::{
    enforcement::Enforcement,
    events::{self, Event, Events},
    radius::RadiusCounters,
};
use crate::{
    config::{Config, XdpMode},
    dataplane::{Dataplane, DataplaneError, PinLayout},
    fleet::{
        postgres::server_name,
        shipping::{Shipping, ShippingStatus},
    },
    identity::Identities,
    metrics::{AgentCounters, MetricsSnapshot},
    policy::{
        DesiredPolicy, EtcdSource, FleetHandle, LocalStore, PolicySource, ResolvedRelays,
        resolve_relay_hosts,
    },
    store::{AuditAction, SYSTEM_WHO, Store},
};

/// What the agent records about itself: the audit entries it writes on its own account
/// (reloads, detaches, interfaces, pins), the bots it found, and its counters. Changes to the
/// policy are audited by the policy source, in the change's own transaction.
pub struct Journal {
    pub store: Store,
    pub counters: AgentCounters,
}

impl Journal {
    /// An audit entry by the agent itself. A store that cannot write (full, read-only) must
    /// not stop what the entry is about: the failure is logged and counted.
    pub fn record_system(&mut self, action: AuditAction, subject: &str, detail: &str) {
        self.record(action, subject, SYSTEM_WHO, detail);
    }

    /// An audit entry by `who`, with the same treatment of failures as `record_system`.
    pub fn record(&mut self, action: AuditAction, subject: &str, who: &str, detail: &str) {
        if let Err(error) = self
            .store
            .record(action, subject, who, detail, SystemTime::now())
        {
            self.counters.store_errors += 1;
            error!(%error, action = action.name(), subject, "writing the audit entry failed");
        }
    }
}

/// The outcome of the last reload (the start counts as a successful one).
#[derive(Clone, Copy, Debug)]
pub struct LastReload {
    pub at: SystemTime,
    pub successful: bool,
}

pub struct AgentState {
    pub(super) config: Config,
    pub(super) config_path: PathBuf,
    /// Exemptions, runtime relays and escalations: the runtime part of the policy.
    pub(super) policy: Box<dyn PolicySource>,
    /// The etcd connection of a fleet-mode gateway: its status, changes and audit.
    pub(super) fleet: Option<FleetHandle>,
    /// How the history's shipping to the fleet's PostgreSQL goes (fleet mode with postgres).
    pub(super) shipping: Option<Arc<ShippingStatus>>,
    pub(super) journal: Journal,
    pub(super) dataplane: Dataplane,
    pub(super) enforcement: Enforcement,
    /// Relay hostnames and the addresses they last resolved to.
    pub(super) resolved: ResolvedRelays,
    /// What the maps hold since the last successful reconcile.
    pub(super) desired: DesiredPolicy,
    pub(super) started: SystemTime,
    pub(super) last_reload: LastReload,
    /// When the statistics were last snapshotted successfully (kept in the store across
    /// restarts).
    pub(super) last_snapshot: Option<SystemTime>,
    pub(super) detached: bool,
    pub(super) events: Events,
    /// Who holds which address now, and which identities are exempt.
    pub(super) identities: Identities,
    /// The RADIUS listener's counts (exported with `[radius]` only).
    pub(super) radius: Arc<RadiusCounters>,
}

impl AgentState {
    /// Opens the store, loads the program with its pinned maps, restores the policy into the
    /// maps and only then swaps the program into the interfaces' links.
    pub fn start(config: Config, config_path: PathBuf) -> anyhow::Result<Self> {
        let store = Store::open(&config.agent.state_dir)?;
        let last_snapshot = store.snapshot_state()?.map(|s| s.last);
        let (policy, fleet) = open_policy(&config)?;
        let identities = Identities::new(
            store.current_bindings()?,
            policy
                .subscriber_exemptions()?
                .into_iter()
                .map(|exemption| exemption.subscriber),
        );
        let shipping = config
            .fleet
            .as_ref()
            .and_then(|fleet| fleet.postgres.as_ref())
            .map(|_| Arc::default());
        let pins = PinLayout::new(&config.agent.pin_dir);
        let enforcement = Enforcement::prepare(pins)?;
        let dataplane = Dataplane::load_pinned(&config.capacity, enforcement.pins())
            .context("loading the kernel program")?;
        let resolved = resolve_relay_hosts(&config, &ResolvedRelays::default(), SystemTime::now());
        let desired = DesiredPolicy::from_config(&config);
        let mut state = Self {
            config,
            config_path,
            policy,
            fleet,
            shipping,
            journal: Journal {
                store,
                counters: AgentCounters::default(),
            },
            dataplane,
            enforcement,
            resolved,
            desired,
            started: SystemTime::now(),
            last_reload: LastReload {
                at: SystemTime::now(),
                successful: true,
            },
            last_snapshot,
            detached: false,
            events: events::channel(),
            identities,
            radius: Arc::default(),
        };
        state.record_replaced_pins();
        let report = state
            .reconcile()
            .context("restoring the policy into the kernel maps")?;
        info!(
            added = report.added,
            updated = report.updated,
            removed = report.removed,
            "kernel maps reconciled"
        );
        state.restore_escalations()?;
        state
            .enforcement
            .adopt_counted_interfaces(&mut state.dataplane, &state.config.agent)?;
        state.attach_all()?;
        Ok(state)
    }

    /// Says which pinned maps of an earlier version were made afresh at load, and what their
    /// contents were: a replaced statistics map starts its counts over.
    fn record_replaced_pins(&mut self) {
        let pin_dir = self.enforcement.pins().root().display().to_string();
        for replaced in self.dataplane.replaced_pins().to_vec() {
            let detail = format!(
                "{}: pinned as {}, this version needs {}; made afresh",
                replaced.name, replaced.found, replaced.expected
            );
            warn!(
                pin_dir,
                detail, "a map pinned by an earlier version no longer fits; it was replaced"
            );
            self.journal
                .record_system(AuditAction::PinsReplaced, &pin_dir, &detail);
        }
    }

    /// Attaches every configured interface (see [`Enforcement::attach_all`]).
    pub(super) fn attach_all(&mut self) -> anyhow::Result<()> {
        self.enforcement
            .attach_all(&mut self.dataplane, &self.config.agent, &mut self.journal)
    }

    /// Runs every `WATCH_TICK` (see [`Enforcement::watch`]).
    pub fn watch(&mut self) {
        if self.detached {
            // Detached on request: stopping, and nothing is to be attached again.
            return;
        }
        self.enforcement
            .watch(&mut self.dataplane, &self.config.agent, &mut self.journal);
    }

    /// A receiver of the events from now on (for `smtpguard events`).
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    pub fn detached(&self) -> bool {
        self.detached
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn fleet(&self) -> Option<&FleetHandle> {
        self.fleet.as_ref()
    }

    pub fn shipping(&self) -> Option<Arc<ShippingStatus>> {
        self.shipping.clone()
    }

    /// The shipping's status as `status` and the metrics show it.
    pub(super) fn shipping_status(&self) -> Option<Shipping> {
        let postgres = self.config.fleet.as_ref()?.postgres.as_ref()?;
        Some(self.shipping.as_ref()?.snapshot(server_name(postgres)))
    }

    /// Brings the kernel maps to the fleet policy after etcd changed it (or the connection
    /// changed): reconciled by difference, like a reload.
    pub fn follow_fleet(&mut self) {
        match self.reconcile() {
            Ok(report) if report.added + report.updated + report.removed > 0 => info!(
                added = report.added,
                updated = report.updated,
                removed = report.removed,
                "fleet policy applied to the kernel maps"
            ),
            Ok(_) => {}
            Err(error) => error!(
                error = format!("{error:#}"),
                "applying the fleet policy failed; retried at its next change"
            ),
        }
    }

    /// (map, entries, capacity) for every map; policy maps are counted from the reconciled
    /// policy (they hold exactly that), the host map from the kernel.
    pub(super) fn map_fill(&self) -> Result<Vec<(&'static str, u64, u64)>, DataplaneError> {
        let capacity = &self.config.capacity;
        let desired = &self.desired;
        let (source4, source6) = per_family_of(desired.source_prefixes());
        let (space4, space6) = per_family_of(desired.subscriber_space().keys());
        let (relay4, relay6) = per_family_of(desired.relays.keys());
        let sources = u64::from(source_capacity(capacity.subscribers, capacity.exemptions));
        // The host table is an array, full to the kernel: its occupied slots are counted.
        let hosts = self.dataplane.host_count()?;
        Ok(vec![
            (names::SOURCES_V4, source4, sources),
            (names::SOURCES_V6, source6, sources),
            (
                names::SUBSCRIBER_SPACE_V4,
                space4,
                u64::from(capacity.subscribers),
            ),
            (
                names::SUBSCRIBER_SPACE_V6,
                space6,
                u64::from(capacity.subscribers),
            ),
            (names::RELAYS_V4, relay4, u64::from(capacity.relays)),
            (names::RELAYS_V6, relay6, u64::from(capacity.relays)),
            (names::HOST_TABLE, hosts.slots_used, hosts.slots),
            (names::HOST_STATS, hosts.overflow, hosts.overflow_capacity),
        ])
    }

    /// Subscriber ranges per mode, both modes always named.
    pub(super) fn ranges_by_mode(&self) -> [(&'static str, u64); 2] {
        let monitor = self
            .config
            .subscribers
            .iter()
            .filter(|range| range.mode == Mode::Monitor)
            .count() as u64;
        let all = self.config.subscribers.len() as u64;
        [("enforce", all - monitor), ("monitor", monitor)]
    }

    /// Records a successful statistics snapshot taken at `at`.
    pub fn snapshot_taken(&mut self, at: SystemTime) {
        self.last_snapshot = Some(at);
    }

    pub fn metrics(&self) -> MetricsSnapshot {
        let counters = self
            .dataplane
            .counters()
            .unwrap_or([0; REASON_COUNT as usize]);
        let maps = self.map_fill().unwrap_or_default();
        let tracked_hosts = maps
            .iter()
            .filter(|(name, ..)| [names::HOST_TABLE, names::HOST_STATS].contains(name))
            .map(|m| m.1)
            .sum();
        let attached = self
            .enforcement
            .live_attachments()
            .unwrap_or_default()
            .into_iter()
            .map(|a| {
                let (attach, mode) = match (a.kind.as_str(), self.config.agent.xdp_mode) {
                    ("tc", _) => ("tc", "tcx"),
                    ("tc-l3", _) => ("tc-l3", "tcx"),
                    (_, XdpMode::Native) => ("xdp", "native"),
                    (_, XdpMode::Skb) => ("xdp", "skb"),
                };
                (a.interface, attach, mode)
            })
            .collect();
        let (interface_packets, unattributed_packets) = self
            .enforcement
            .counted_interfaces()
            .counts(&self.dataplane)
            .unwrap_or_default();
        MetricsSnapshot {
            packets: crate::metrics::packet_rows(
                Reason::ALL.into_iter().map(|r| (r, counters[r as usize])),
            ),
            interface_packets: interface_packets
                .into_iter()
                .flat_map(|(interface, counts)| {
                    crate::metrics::judged_rows(counts)
                        .map(move |(reason, count)| (interface.clone(), reason, count))
                })
                .collect(),
            unattributed_interface_packets: crate::metrics::judged_rows(unattributed_packets)
                .collect(),
            tracked_hosts,
            unrecorded_host_segments: self.dataplane.unrecorded_hosts().unwrap_or(0),
            exemptions: self.desired.exemptions.len() as u64,
            relays: self.desired.relays.len() as u64,
            maps,
            counters: self.journal.counters,
            detached_interfaces: self.enforcement.detached_interfaces().len() as u64,
            unfiltered_tunnel_interfaces: self.enforcement.unlisted_tunnels().len() as u64,
            attached,
            start_time_seconds: unix_seconds(self.started),
            config_last_reload_successful: self.last_reload.successful,
            config_last_reload_timestamp_seconds: unix_seconds(self.last_reload.at),
            subscriber_ranges: self.ranges_by_mode().to_vec(),
            relay_hosts_unresolved: self.resolved.warnings().count() as u64,
            escalated_hosts: self
                .policy
                .active_escalations()
                .map_or(0, |active| active.len() as u64),
            last_snapshot_timestamp_seconds: self.last_snapshot.map_or(0.0, unix_seconds),
            fleet: self.fleet.as_ref().map(|fleet| {
                let status = fleet.status();
                crate::metrics::FleetMetrics {
                    connected: status.connected,
                    revision: status.revision,
                    last_sync_timestamp_seconds: status.last_sync.map_or(0.0, unix_seconds),
                    corrupt_keys: status.corrupt_keys,
                }
            }),
            shipping: self.shipping_status(),
            radius_packets: self.config.radius.as_ref().map(|_| self.radius.rows()),
        }
    }

    pub fn radius_counters(&self) -> Arc<RadiusCounters> {
        self.radius.clone()
    }
}

/// The runtime policy's source: etcd with `[fleet] etcd`, else the local store.
fn open_policy(config: &Config) -> anyhow::Result<(Box<dyn PolicySource>, Option<FleetHandle>)> {
    let state_dir = &config.agent.state_dir;
    match config
        .fleet
        .as_ref()
        .and_then(|fleet| Some((fleet, fleet.etcd.as_ref()?)))
    {
        Some((fleet, etcd)) => {
            let (source, handle) = EtcdSource::start(fleet, etcd, state_dir)?;
            Ok((Box::new(source), Some(handle)))
        }
        None => Ok((Box::new(LocalStore::open(state_dir)?), None)),
    }
}

fn unix_seconds(at: SystemTime) -> f64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// How many of `prefixes` are IPv4 and how many IPv6.
fn per_family_of<'a>(prefixes: impl Iterator<Item = &'a ipnet::IpNet>) -> (u64, u64) {
    prefixes.fold((0, 0), |(v4, v6), prefix| match prefix {
        ipnet::IpNet::V4(_) => (v4 + 1, v6),
        ipnet::IpNet::V6(_) => (v4, v6 + 1),
    })
}

/// `items` as one comma-separated line, for logs and audit details.
pub(super) fn list<T: std::fmt::Display>(items: impl Iterator<Item = T>) -> String {
    items
        .map(|item| item.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
