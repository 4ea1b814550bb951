//! What the agent owns and every operation on it. One `AgentState` exists per agent, behind
//! one lock, so the store and the kernel maps always change together and in order: the store
//! first (durable), then the maps (reconciled by difference), then the answer.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::PathBuf,
    str::FromStr,
    time::{Duration, SystemTime},
};

use anyhow::Context as _;
use ipnet::IpNet;
use serde_json::{Value, json};
use smtpguard_common::{Origin, PrefixOrigin, REASON_COUNT, Reason, maps as names};
use tracing::{info, warn};

use super::{
    api::{ErrorKind, Request, Response},
    events::{self, Event, Events},
    netns,
};
use crate::{
    config::{AttachKind, Config, XdpMode},
    dataplane::{Attach, Dataplane, EntryList, PinLayout, ReconcileReport},
    metrics::MetricsSnapshot,
    policy::DesiredPolicy,
    report::{Class, Grouping, ReportOptions},
    store::{AuditAction, NewExemption, NewRelay, SYSTEM_WHO, Store, StoreError},
};

/// A failed request: the kind decides the CLI's exit code.
struct Failure {
    kind: ErrorKind,
    message: String,
}

impl Failure {
    fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

impl From<StoreError> for Failure {
    fn from(error: StoreError) -> Self {
        Failure::new(store_error_kind(&error), error.to_string())
    }
}

/// Bad input and conflicts are the caller's; anything else is the store failing.
fn store_error_kind(error: &StoreError) -> ErrorKind {
    match error {
        StoreError::Duplicate { .. } => ErrorKind::Conflict,
        StoreError::NotFound { .. } => ErrorKind::NotFound,
        StoreError::HostBits { .. }
        | StoreError::EmptyReason { .. }
        | StoreError::ControlCharacter { .. }
        | StoreError::TooLong { .. }
        | StoreError::ExpiryNotInFuture { .. }
        | StoreError::TimeOutOfRange { .. } => ErrorKind::BadRequest,
        _ => ErrorKind::Failed,
    }
}

type Outcome = Result<Value, Failure>;

/// Counters the agent keeps about itself, for metrics.
#[derive(Clone, Copy, Debug, Default)]
pub struct AgentCounters {
    pub reconcile_errors: u64,
    pub store_errors: u64,
    pub reloads: u64,
    pub reload_failures: u64,
    pub bots_classified: u64,
}

pub struct AgentState {
    config: Config,
    config_path: PathBuf,
    store: Store,
    dataplane: Dataplane,
    pins: PinLayout,
    /// Relay hostnames and the addresses they last resolved to.
    resolved: BTreeMap<String, Vec<IpAddr>>,
    /// What the maps hold since the last successful reconcile.
    desired: DesiredPolicy,
    counters: AgentCounters,
    started: SystemTime,
    detached: bool,
    events: Events,
}

impl AgentState {
    /// Opens the store, loads the program with its pinned maps, restores the policy into the
    /// maps and only then swaps the program into the interfaces' links.
    pub fn start(config: Config, config_path: PathBuf) -> anyhow::Result<Self> {
        let store = Store::open(&config.agent.state_dir)?;
        let pins = PinLayout::new(&config.agent.pin_dir);
        let dataplane = Dataplane::load_pinned(&config.capacity, &pins)
            .context("loading the kernel program")?;
        let resolved = resolve_relay_hosts(&config, &BTreeMap::new());
        let desired = DesiredPolicy::from_config(&config);
        let mut state = Self {
            config,
            config_path,
            store,
            dataplane,
            pins,
            resolved,
            desired,
            counters: AgentCounters::default(),
            started: SystemTime::now(),
            detached: false,
            events: events::channel(),
        };
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
        state.attach_all()?;
        Ok(state)
    }

    /// Makes the kernel's escalation map hold exactly the store's active escalations.
    fn restore_escalations(&mut self) -> anyhow::Result<()> {
        let active: Vec<IpAddr> = self
            .store
            .active_escalations()?
            .iter()
            .map(|e| e.host)
            .collect();
        for host in &active {
            self.dataplane.set_override(*host)?;
        }
        for host in self.dataplane.overrides()? {
            if !active.contains(&host) {
                self.dataplane.remove_override(host)?;
            }
        }
        Ok(())
    }

    /// A receiver of the events from now on (for `smtpguard events`).
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Classifies the hosts active within the last bot window: a new bot is recorded,
    /// announced and handed to `on_bot`; with `escalate`, a bot in a monitor-mode range is
    /// switched to enforcement for itself alone.
    pub fn classify(&mut self, now: SystemTime) -> anyhow::Result<()> {
        let report = self.config.report.clone();
        let from = now
            .checked_sub(report.bot_window)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let history = self.store.host_intervals(from, now)?;
        let options = ReportOptions {
            from,
            to: now,
            top: None,
            min_attempts: 0,
            prefix: None,
            group: Grouping::Host,
        };
        let rows = crate::report::build(&history, &self.config, &options);
        let known: Vec<IpAddr> = self
            .store
            .bot_events(from)?
            .into_iter()
            .map(|e| e.host)
            .collect();
        for row in rows.into_iter().filter(|row| row.class == Class::Bot) {
            let host: IpAddr = row.host.parse().context("a host row names an address")?;
            if !known.contains(&host) {
                self.store.record_bot(host, now, &row.class_reason)?;
                self.counters.bots_classified += 1;
                info!(%host, reason = row.class_reason, "new bot");
                if let Some(program) = &report.on_bot {
                    events::run_hook(program, &row);
                }
                events::publish(
                    &self.events,
                    Event::Bot {
                        at: now,
                        row: row.clone(),
                    },
                );
            }
            if report.escalate && row.mode == Some("monitor") {
                self.escalate(host, now, &row.class_reason)?;
            }
        }
        Ok(())
    }

    /// Escalates `host` unless it already is: for `escalate_for`, doubled for each reoffense
    /// (a bot again at least `reoffense_gap` after its last escalation began).
    fn escalate(&mut self, host: IpAddr, now: SystemTime, reason: &str) -> anyhow::Result<()> {
        let history = self.store.escalations_of(host)?;
        if history.iter().any(|e| e.ended.is_none()) {
            return Ok(());
        }
        // A lifted or expired escalation is not renewed from the activity that caused it:
        // only once a whole bot window has passed since it ended.
        let window = self.config.report.bot_window;
        if history
            .last()
            .and_then(|last| last.ended)
            .is_some_and(|ended| now.duration_since(ended).unwrap_or_default() < window)
        {
            return Ok(());
        }
        let gap = self.config.report.reoffense_gap;
        let level = match history.last() {
            None => 0,
            Some(last) if now.duration_since(last.started).unwrap_or_default() >= gap => {
                last.level + 1
            }
            Some(last) => last.level,
        };
        let length = self
            .config
            .report
            .escalate_for
            .saturating_mul(1 << level.min(16));
        let until = now
            .checked_add(length)
            .unwrap_or(now + self.config.report.escalate_for);
        let escalation = self.store.escalate(host, level, now, until, reason)?;
        if let Err(error) = self.dataplane.set_override(host) {
            self.store.end_escalation(host, SYSTEM_WHO, false, now)?;
            return Err(error.into());
        }
        warn!(%host, level, until = %humantime::format_rfc3339_seconds(until), "escalated to enforcement");
        events::publish(
            &self.events,
            Event::Escalated {
                at: now,
                host,
                level: escalation.level,
                until,
            },
        );
        Ok(())
    }

    /// Ends the escalation of `host`: lifted by `who`, or expired.
    fn end_escalation(&mut self, host: IpAddr, who: &str, expired: bool) -> Result<Value, Failure> {
        let now = SystemTime::now();
        let ended = self.store.end_escalation(host, who, expired, now)?;
        self.dataplane.remove_override(host).map_err(failed)?;
        info!(%host, who, expired, "escalation ended");
        events::publish(
            &self.events,
            Event::EscalationEnded {
                at: now,
                host,
                by: ended.ended_by.clone().unwrap_or_default(),
                expired,
            },
        );
        Ok(json!(ended))
    }

    pub fn detached(&self) -> bool {
        self.detached
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    fn desired_policy(&self) -> Result<DesiredPolicy, StoreError> {
        let mut desired = DesiredPolicy::from_config(&self.config);
        for exemption in self.store.exemptions()? {
            desired.add_exemption(exemption.prefix, Origin::Runtime);
        }
        for relay in self.store.relays()? {
            desired.add_relay(relay.prefix, Origin::Runtime);
        }
        for address in self.resolved.values().flatten() {
            desired.add_relay(IpNet::from(*address), Origin::Dns);
        }
        Ok(desired)
    }

    /// Makes the kernel maps hold the config, the store and the resolved relays.
    fn reconcile(&mut self) -> anyhow::Result<ReconcileReport> {
        let desired = self
            .desired_policy()
            .inspect_err(|_| self.counters.store_errors += 1)?;
        let report = self
            .dataplane
            .policy_maps()
            .and_then(|mut maps| maps.reconcile(&desired))
            .inspect_err(|_| self.counters.reconcile_errors += 1)?;
        self.desired = desired;
        Ok(report)
    }

    /// Writes one runtime relay or exemption into the kernel map and the desired policy. The
    /// maps hold exactly `desired` after every change, so one write keeps them equal: an
    /// `exempt add` costs one map update however many entries there are.
    fn add_entry(&mut self, list: EntryList, prefix: IpNet) -> anyhow::Result<()> {
        let entries = match list {
            EntryList::Relays => &self.desired.relays,
            EntryList::Exemptions => &self.desired.exemptions,
        };
        if entries.contains_key(&prefix) {
            // Already there from the config (which wins) or DNS: nothing to write.
            return Ok(());
        }
        let value = PrefixOrigin::new(Origin::Runtime);
        self.dataplane
            .policy_maps()
            .and_then(|mut maps| maps.set_entry(list, prefix, value))
            .inspect_err(|_| self.counters.reconcile_errors += 1)?;
        match list {
            EntryList::Relays => self.desired.relays.insert(prefix, value),
            EntryList::Exemptions => self.desired.exemptions.insert(prefix, value),
        };
        Ok(())
    }

    /// Takes a runtime relay or exemption out again, unless the config or DNS still has it.
    fn remove_entry(&mut self, list: EntryList, prefix: IpNet) -> anyhow::Result<()> {
        let entries = match list {
            EntryList::Relays => &self.desired.relays,
            EntryList::Exemptions => &self.desired.exemptions,
        };
        if entries.get(&prefix) != Some(&PrefixOrigin::new(Origin::Runtime)) {
            return Ok(());
        }
        let resolved = list == EntryList::Relays
            && self
                .resolved
                .values()
                .flatten()
                .any(|a| IpNet::from(*a) == prefix);
        let mut maps = self
            .dataplane
            .policy_maps()
            .inspect_err(|_| self.counters.reconcile_errors += 1)?;
        if resolved {
            let dns = PrefixOrigin::new(Origin::Dns);
            maps.set_entry(list, prefix, dns)?;
            self.desired.relays.insert(prefix, dns);
        } else {
            maps.remove_entry(list, prefix)
                .inspect_err(|_| self.counters.reconcile_errors += 1)?;
            match list {
                EntryList::Relays => self.desired.relays.remove(&prefix),
                EntryList::Exemptions => self.desired.exemptions.remove(&prefix),
            };
        }
        Ok(())
    }

    fn attach(&self) -> Attach {
        match (self.config.agent.attach, self.config.agent.xdp_mode) {
            (AttachKind::Xdp, XdpMode::Native) => Attach::Xdp(aya::programs::XdpMode::Driver),
            (AttachKind::Xdp, XdpMode::Skb) => Attach::Xdp(aya::programs::XdpMode::Skb),
            (AttachKind::Tc, _) => Attach::Tc,
        }
    }

    /// Attaches (or atomically updates) every configured interface, then removes pinned
    /// attachments of interfaces no longer configured.
    fn attach_all(&mut self) -> anyhow::Result<()> {
        let attach = self.attach();
        let netns = self.config.agent.netns.clone();
        for interface in self.config.agent.interfaces.clone() {
            let (dataplane, pins) = (&mut self.dataplane, &self.pins);
            let outcome = netns::run_in(netns.as_deref(), || {
                dataplane.attach_pinned(pins, &interface, attach)
            })?
            .with_context(|| format!("attaching to interface {interface}"))?;
            info!(interface, ?attach, ?outcome, "enforcing");
        }
        for pinned in self.pins.attachments()? {
            if !self.config.agent.interfaces.contains(&pinned.interface) {
                self.pins.detach(&pinned)?;
                info!(
                    interface = pinned.interface,
                    "detached: no longer configured"
                );
            }
        }
        Ok(())
    }

    /// Carries out one request from `who` (the peer's user name).
    pub fn handle(&mut self, request: Request, who: &str) -> Response {
        let outcome = match request {
            Request::ExemptAdd {
                prefix,
                reason,
                ticket,
                expires,
            } => self.exempt_add(&prefix, reason, ticket, expires.as_deref(), who),
            Request::ExemptList {} => self.exempt_list(),
            Request::ExemptRemove { prefix } => self.exempt_remove(&prefix, who),
            Request::RelayAdd { prefix, note } => self.relay_add(&prefix, note, who),
            Request::RelayList {} => self.relay_list(),
            Request::RelayRemove { prefix } => self.relay_remove(&prefix, who),
            Request::Status {} => self.status(),
            Request::Check { src, dst, port } => self.check(&src, &dst, port),
            Request::Audit { since } => self.audit(since.as_deref()),
            Request::Reload {} => self.reload(who),
            Request::EscalationList {} => self
                .store
                .active_escalations()
                .map(|e| json!(e))
                .map_err(Failure::from),
            Request::EscalationLift { host } => {
                parse_address(&host).and_then(|host| self.end_escalation(host, who, false))
            }
            // Streamed by the server, never answered here.
            Request::Events {} => Err(Failure::new(
                ErrorKind::BadRequest,
                "events are streamed by the socket server",
            )),
            Request::Detach {} => self.detach(who),
        };
        match outcome {
            Ok(body) => Response::Ok { body },
            Err(failure) => Response::error(failure.kind, failure.message),
        }
    }

    fn exempt_add(
        &mut self,
        prefix: &str,
        reason: String,
        ticket: Option<String>,
        expires: Option<&str>,
        who: &str,
    ) -> Outcome {
        let prefix = parse_prefix(prefix)?;
        if !self
            .config
            .subscribers
            .iter()
            .any(|range| range.prefix.contains(&prefix))
        {
            return Err(Failure::new(
                ErrorKind::BadRequest,
                format!(
                    "{prefix} is outside every subscriber range ({}); an exemption there would \
                     change nothing",
                    list(self.config.subscribers.iter().map(|s| s.prefix))
                ),
            ));
        }
        if self.config.exemptions.iter().any(|e| e.prefix == prefix) {
            return Err(Failure::new(
                ErrorKind::Conflict,
                format!(
                    "{prefix} is already exempt in the config file {}",
                    self.config_path.display()
                ),
            ));
        }
        let expires = expires.map(parse_time).transpose()?;
        let exemption = self
            .store
            .add_exemption(
                &NewExemption {
                    prefix,
                    reason,
                    ticket,
                    who: who.to_owned(),
                    expires,
                },
                SystemTime::now(),
            )
            .inspect_err(|e| self.count_store_error(e))?;
        if let Err(error) = self.add_entry(EntryList::Exemptions, prefix) {
            // The map refused it (full?): take it back out of the store so the two agree.
            let _ = self.store.remove_exemption(prefix, who, SystemTime::now());
            return Err(Failure::new(
                ErrorKind::Failed,
                format!("the kernel map did not take {prefix}: {error:#}; nothing was changed"),
            ));
        }
        info!(%prefix, who, "exemption added");
        Ok(json!(exemption))
    }

    fn exempt_remove(&mut self, prefix: &str, who: &str) -> Outcome {
        let prefix = parse_prefix(prefix)?;
        if self.config.exemptions.iter().any(|e| e.prefix == prefix) {
            return Err(Failure::new(
                ErrorKind::BadRequest,
                format!(
                    "{prefix} is exempt in the config file {}; remove it there and reload",
                    self.config_path.display()
                ),
            ));
        }
        let removed = self
            .store
            .remove_exemption(prefix, who, SystemTime::now())
            .inspect_err(|e| self.count_store_error(e))?;
        self.remove_or_fail(EntryList::Exemptions, prefix)?;
        info!(%prefix, who, "exemption removed");
        Ok(json!(removed))
    }

    fn exempt_list(&mut self) -> Outcome {
        let mut rows: Vec<Value> = self
            .config
            .exemptions
            .iter()
            .map(
                |e| json!({"prefix": e.prefix.to_string(), "reason": e.reason, "source": "config"}),
            )
            .collect();
        for exemption in self.store.exemptions()? {
            let mut row = json!(exemption);
            row["source"] = json!("runtime");
            rows.push(row);
        }
        Ok(Value::Array(rows))
    }

    fn relay_add(&mut self, prefix: &str, note: Option<String>, who: &str) -> Outcome {
        let prefix = parse_prefix(prefix)?;
        if self.config.relays.iter().any(|r| r.prefix == prefix) {
            return Err(Failure::new(
                ErrorKind::Conflict,
                format!(
                    "{prefix} is already a relay in the config file {}",
                    self.config_path.display()
                ),
            ));
        }
        let relay = self
            .store
            .add_relay(
                &NewRelay {
                    prefix,
                    note,
                    who: who.to_owned(),
                },
                SystemTime::now(),
            )
            .inspect_err(|e| self.count_store_error(e))?;
        if let Err(error) = self.add_entry(EntryList::Relays, prefix) {
            let _ = self.store.remove_relay(prefix, who, SystemTime::now());
            return Err(Failure::new(
                ErrorKind::Failed,
                format!("the kernel map did not take {prefix}: {error:#}; nothing was changed"),
            ));
        }
        info!(%prefix, who, "relay added");
        Ok(json!(relay))
    }

    fn relay_remove(&mut self, prefix: &str, who: &str) -> Outcome {
        let prefix = parse_prefix(prefix)?;
        let removed = self
            .store
            .remove_relay(prefix, who, SystemTime::now())
            .inspect_err(|e| self.count_store_error(e))?;
        self.remove_or_fail(EntryList::Relays, prefix)?;
        info!(%prefix, who, "relay removed");
        Ok(json!(removed))
    }

    fn relay_list(&mut self) -> Outcome {
        let mut rows: Vec<Value> = self
            .config
            .relays
            .iter()
            .map(|r| json!({"prefix": r.prefix.to_string(), "source": "config"}))
            .collect();
        for (host, addresses) in &self.resolved {
            for address in addresses {
                rows.push(json!({"prefix": IpNet::from(*address).to_string(), "source": "dns", "host": host}));
            }
        }
        for relay in self.store.relays()? {
            let mut row = json!(relay);
            row["source"] = json!("runtime");
            rows.push(row);
        }
        Ok(Value::Array(rows))
    }

    fn remove_or_fail(&mut self, list: EntryList, prefix: IpNet) -> Result<(), Failure> {
        self.remove_entry(list, prefix).map_err(|error| {
            Failure::new(
                ErrorKind::Failed,
                format!(
                    "the store changed but the kernel map could not follow: {error:#}; the next \
                     reload reconciles it"
                ),
            )
        })
    }

    fn count_store_error(&mut self, error: &StoreError) {
        if store_error_kind(error) == ErrorKind::Failed {
            self.counters.store_errors += 1;
        }
    }

    fn status(&mut self) -> Outcome {
        let counters = self.dataplane.counters().map_err(failed)?;
        let attachments = self.pins.attachments().map_err(failed)?;
        let reasons: serde_json::Map<String, Value> = Reason::ALL
            .into_iter()
            .map(|r| (r.name().to_owned(), json!(counters[r as usize])))
            .collect();
        let maps: Vec<Value> = self
            .map_fill()
            .map_err(failed)?
            .into_iter()
            .map(|(name, entries, capacity)| json!({"map": name, "entries": entries, "capacity": capacity}))
            .collect();
        let uptime = self.started.elapsed().unwrap_or(Duration::ZERO).as_secs();
        Ok(json!({
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_seconds": uptime,
            "config": self.config_path.display().to_string(),
            "attach": self.attach_name(),
            "interfaces": self.config.agent.interfaces,
            "attached": attachments.iter().map(|a| json!({"interface": a.interface, "attach": a.kind})).collect::<Vec<_>>(),
            "enforced_ports": self.config.enforcement.ports,
            "packets": reasons,
            "maps": maps,
            "exemptions": self.desired.exemptions.len(),
            "relays": self.desired.relays.len(),
            "pin_dir": self.pins.root().display().to_string(),
            "state_dir": self.config.agent.state_dir.display().to_string(),
        }))
    }

    fn attach_name(&self) -> &'static str {
        match self.attach() {
            Attach::Xdp(aya::programs::XdpMode::Skb) => "xdp (skb)",
            Attach::Xdp(_) => "xdp (native)",
            Attach::Tc => "tc",
        }
    }

    /// (map, entries, capacity) for every map; policy maps are counted from the reconciled
    /// policy (they hold exactly that), the host map from the kernel.
    fn map_fill(&self) -> Result<Vec<(&'static str, u64, u64)>, crate::dataplane::DataplaneError> {
        let capacity = &self.config.capacity;
        let (sub4, sub6) = per_family_of(&self.desired.subscribers);
        let (relay4, relay6) = per_family_of(&self.desired.relays);
        let (exempt4, exempt6) = per_family_of(&self.desired.exemptions);
        Ok(vec![
            (names::SUBSCRIBERS_V4, sub4, u64::from(capacity.subscribers)),
            (names::SUBSCRIBERS_V6, sub6, u64::from(capacity.subscribers)),
            (names::RELAYS_V4, relay4, u64::from(capacity.relays)),
            (names::RELAYS_V6, relay6, u64::from(capacity.relays)),
            (
                names::EXEMPTIONS_V4,
                exempt4,
                u64::from(capacity.exemptions),
            ),
            (
                names::EXEMPTIONS_V6,
                exempt6,
                u64::from(capacity.exemptions),
            ),
            (
                names::HOST_STATS,
                self.dataplane.host_count()? as u64,
                u64::from(capacity.hosts),
            ),
        ])
    }

    /// Explains what the live policy does with TCP from `src` to `dst:port`, rule by rule, and
    /// confirms each match against the kernel maps.
    fn check(&mut self, src: &str, dst: &str, port: u16) -> Outcome {
        let src = parse_address(src)?;
        let dst = parse_address(dst)?;
        if src.is_ipv4() != dst.is_ipv4() {
            return Err(Failure::new(
                ErrorKind::BadRequest,
                format!("{src} and {dst} are of different address families"),
            ));
        }
        let kernel = self
            .dataplane
            .policy_maps()
            .map_err(failed)?
            .lookup(src, dst)
            .map_err(failed)?;
        let subscriber = most_specific(&self.desired.subscribers, src);
        let relay = most_specific(&self.desired.relays, dst);
        let exemption = most_specific(&self.desired.exemptions, src);
        let enforced = self.config.enforcement.ports.contains(&port);
        let mode = subscriber.map(|p| self.desired.subscribers[&p]);
        let reason = if !enforced {
            Reason::Other
        } else if subscriber.is_none() {
            Reason::NotSubscriber
        } else if relay.is_some() {
            Reason::Relayed
        } else if exemption.is_some() {
            Reason::Exempt
        } else if mode.is_some_and(|m| m.is_monitor()) {
            Reason::Monitored
        } else {
            Reason::Dropped
        };
        let agrees = kernel.subscriber == mode
            && kernel.relay.is_some() == relay.is_some()
            && kernel.exemption.is_some() == exemption.is_some();
        let origin = |map: &BTreeMap<IpNet, smtpguard_common::PrefixOrigin>,
                      prefix: Option<IpNet>| {
            prefix.map(|p| origin_name(map[&p].origin))
        };
        Ok(json!({
            "src": src.to_string(),
            "dst": dst.to_string(),
            "port": port,
            "verdict": match reason.verdict() { smtpguard_common::Verdict::Pass => "pass", smtpguard_common::Verdict::Drop => "drop" },
            "reason": reason.name(),
            "enforced_port": enforced,
            "enforced_ports": self.config.enforcement.ports,
            "subscriber": subscriber.map(|p| p.to_string()),
            "subscriber_mode": mode.map(|m| if m.is_monitor() { "monitor" } else { "enforce" }),
            "relay": relay.map(|p| p.to_string()),
            "relay_source": origin(&self.desired.relays, relay),
            "exemption": exemption.map(|p| p.to_string()),
            "exemption_source": origin(&self.desired.exemptions, exemption),
            "kernel_agrees": agrees,
        }))
    }

    fn audit(&mut self, since: Option<&str>) -> Outcome {
        let since = since.map(parse_time).transpose()?;
        Ok(json!(self.store.audit(since)?))
    }

    /// Re-reads the config file. An invalid file changes nothing; a valid one is reconciled
    /// into the maps and the interfaces.
    fn reload(&mut self, who: &str) -> Outcome {
        self.counters.reloads += 1;
        let config = match Config::load(&self.config_path) {
            Ok(config) => config,
            Err(error) => {
                self.counters.reload_failures += 1;
                warn!(%error, "reload refused: the running policy stays as it was");
                return Err(Failure::new(
                    ErrorKind::BadRequest,
                    format!("reload refused, the running policy stays as it was: {error}"),
                ));
            }
        };
        let previous = std::mem::replace(&mut self.config, config);
        self.resolved = resolve_relay_hosts(&self.config, &self.resolved);
        let applied = self
            .reconcile()
            .and_then(|report| self.attach_all().map(|()| report));
        match applied {
            Ok(report) => {
                let detail = format!(
                    "added {}, updated {}, removed {}",
                    report.added, report.updated, report.removed
                );
                self.store
                    .record(
                        AuditAction::ConfigReloaded,
                        &self.config_path.display().to_string(),
                        who,
                        &detail,
                        SystemTime::now(),
                    )
                    .inspect_err(|_| self.counters.store_errors += 1)?;
                info!(who, detail, "config reloaded");
                Ok(
                    json!({"reloaded": self.config_path.display().to_string(), "added": report.added, "updated": report.updated, "removed": report.removed}),
                )
            }
            Err(error) => {
                self.counters.reload_failures += 1;
                self.config = previous;
                let restored = self.reconcile().and_then(|_| self.attach_all());
                warn!(
                    error = format!("{error:#}"),
                    restored = restored.is_ok(),
                    "reload failed; back to the previous config"
                );
                Err(Failure::new(
                    ErrorKind::Failed,
                    format!("reload failed and was rolled back: {error:#}"),
                ))
            }
        }
    }

    /// Removes enforcement on purpose: the links go, the maps stay (statistics are kept for a
    /// later `run`), and the agent stops.
    fn detach(&mut self, who: &str) -> Outcome {
        let mut detached = Vec::new();
        for attachment in self.pins.attachments().map_err(failed)? {
            self.pins.detach(&attachment).map_err(failed)?;
            detached.push(attachment.interface);
        }
        self.store.record(
            AuditAction::Detached,
            &list(detached.iter()),
            who,
            "enforcement removed",
            SystemTime::now(),
        )?;
        self.detached = true;
        warn!(
            who,
            interfaces = list(detached.iter()),
            "detached: port 25 is no longer enforced"
        );
        Ok(json!({"detached": detached}))
    }

    /// Removes expired exemptions and ends expired escalations.
    pub fn expire(&mut self) -> anyhow::Result<()> {
        let now = SystemTime::now();
        for escalation in self.store.active_escalations()? {
            if escalation.until <= now {
                self.end_escalation(escalation.host, SYSTEM_WHO, true)
                    .map_err(|failure| anyhow::anyhow!(failure.message))?;
            }
        }
        let expired = self
            .store
            .expire(SystemTime::now())
            .inspect_err(|_| self.counters.store_errors += 1)?;
        for exemption in expired {
            self.remove_entry(EntryList::Exemptions, exemption.prefix)?;
            info!(prefix = %exemption.prefix, "exemption expired");
        }
        Ok(())
    }

    /// When the next exemption or escalation runs out, so the agent can act then.
    pub fn next_expiry(&self) -> Option<SystemTime> {
        let exemption = self.store.next_expiry().ok().flatten();
        let escalation = self.store.next_escalation_end().ok().flatten();
        exemption.into_iter().chain(escalation).min()
    }

    /// Installs freshly resolved relay addresses (resolved outside the lock).
    pub fn update_relays(&mut self, resolved: BTreeMap<String, Vec<IpAddr>>) -> anyhow::Result<()> {
        if resolved != self.resolved {
            self.resolved = resolved;
            self.reconcile()?;
        }
        Ok(())
    }

    pub fn resolved(&self) -> &BTreeMap<String, Vec<IpAddr>> {
        &self.resolved
    }

    pub fn metrics(&self) -> MetricsSnapshot {
        let counters = self
            .dataplane
            .counters()
            .unwrap_or([0; REASON_COUNT as usize]);
        let maps = self.map_fill().unwrap_or_default();
        let tracked_hosts = maps
            .iter()
            .find(|(name, ..)| *name == names::HOST_STATS)
            .map_or(0, |m| m.1);
        let attached = self
            .pins
            .attachments()
            .unwrap_or_default()
            .into_iter()
            .map(|a| {
                let mode = match (a.kind.as_str(), self.config.agent.xdp_mode) {
                    ("tc", _) => "tcx",
                    (_, XdpMode::Native) => "native",
                    (_, XdpMode::Skb) => "skb",
                };
                let attach = if a.kind == "tc" { "tc" } else { "xdp" };
                (a.interface, attach, mode)
            })
            .collect();
        MetricsSnapshot {
            packets: crate::metrics::packet_rows(
                Reason::ALL.into_iter().map(|r| (r, counters[r as usize])),
            ),
            tracked_hosts,
            exemptions: self.desired.exemptions.len() as u64,
            relays: self.desired.relays.len() as u64,
            maps,
            reconcile_errors: self.counters.reconcile_errors,
            store_errors: self.counters.store_errors,
            reloads: self.counters.reloads,
            reload_failures: self.counters.reload_failures,
            bots_classified: self.counters.bots_classified,
            attached,
            start_time_seconds: self
                .started
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64(),
        }
    }
}

fn failed(error: impl std::fmt::Display) -> Failure {
    Failure::new(ErrorKind::Failed, error.to_string())
}

/// The longest prefix of `map` that contains `address`: what an LPM trie lookup finds.
fn most_specific<V>(map: &BTreeMap<IpNet, V>, address: IpAddr) -> Option<IpNet> {
    map.keys()
        .filter(|prefix| prefix.contains(&address))
        .max_by_key(|prefix| prefix.prefix_len())
        .copied()
}

fn per_family_of<V>(map: &BTreeMap<IpNet, V>) -> (u64, u64) {
    let v4 = map.keys().filter(|p| matches!(p, IpNet::V4(_))).count() as u64;
    (v4, map.len() as u64 - v4)
}

fn origin_name(origin: u32) -> &'static str {
    match origin {
        o if o == Origin::Config as u32 => "config",
        o if o == Origin::Runtime as u32 => "runtime",
        o if o == Origin::Dns as u32 => "dns",
        _ => "unknown",
    }
}

fn list<T: std::fmt::Display>(items: impl Iterator<Item = T>) -> String {
    items
        .map(|item| item.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn parse_prefix(text: &str) -> Result<IpNet, Failure> {
    let prefix = IpNet::from_str(text).map_err(|_| {
        Failure::new(
            ErrorKind::BadRequest,
            format!("{text:?} is not a prefix; expected ADDRESS/LENGTH such as 100.64.10.0/24 or 2001:db8:1000:10::/64"),
        )
    })?;
    if prefix.trunc() != prefix {
        return Err(Failure::new(
            ErrorKind::BadRequest,
            format!(
                "{prefix} has host bits set; expected the network address {}",
                prefix.trunc()
            ),
        ));
    }
    Ok(prefix)
}

fn parse_address(text: &str) -> Result<IpAddr, Failure> {
    text.parse().map_err(|_| {
        Failure::new(
            ErrorKind::BadRequest,
            format!(
                "{text:?} is not an IP address; expected one such as 100.64.0.2 or 2001:db8::2"
            ),
        )
    })
}

fn parse_time(text: &str) -> Result<SystemTime, Failure> {
    humantime::parse_rfc3339_weak(text).map_err(|_| {
        Failure::new(
            ErrorKind::BadRequest,
            format!("{text:?} is not a time; expected RFC 3339 such as 2026-12-31T23:59:59Z"),
        )
    })
}

/// Resolves every relay hostname; a name that fails keeps its last known addresses.
pub fn resolve_relay_hosts(
    config: &Config,
    previous: &BTreeMap<String, Vec<IpAddr>>,
) -> BTreeMap<String, Vec<IpAddr>> {
    use std::net::ToSocketAddrs as _;
    let mut resolved = BTreeMap::new();
    for relay in &config.relay_hosts {
        match (relay.host.as_str(), 0).to_socket_addrs() {
            Ok(addresses) => {
                let mut addresses: Vec<IpAddr> = addresses.map(|a| a.ip()).collect();
                addresses.sort();
                addresses.dedup();
                resolved.insert(relay.host.clone(), addresses);
            }
            Err(error) => {
                let kept = previous.get(&relay.host).cloned().unwrap_or_default();
                warn!(host = relay.host, %error, kept = kept.len(), "relay lookup failed; keeping the last known addresses");
                resolved.insert(relay.host.clone(), kept);
            }
        }
    }
    resolved
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn config(relay_hosts: &[&str]) -> Config {
        let mut text = String::from("[[subscribers]]\nprefix = \"100.64.0.0/10\"\n");
        for host in relay_hosts {
            text.push_str(&format!("[[relays]]\nhost = \"{host}\"\n"));
        }
        Config::parse(&text, Path::new("relays.toml")).unwrap()
    }

    #[test]
    fn relay_hosts_resolve_to_their_addresses() {
        // localhost resolves from /etc/hosts, without any network.
        let resolved = resolve_relay_hosts(&config(&["localhost"]), &BTreeMap::new());
        let addresses = &resolved["localhost"];
        assert!(
            addresses.contains(&IpAddr::from([127, 0, 0, 1])),
            "localhost resolved to {addresses:?}"
        );
        assert!(
            addresses.windows(2).all(|w| w[0] < w[1]),
            "sorted, no duplicates"
        );
    }

    #[test]
    fn most_specific_prefix_wins() {
        let mut map = BTreeMap::new();
        for prefix in ["100.64.0.0/10", "100.64.10.0/24", "100.64.10.128/25"] {
            map.insert(prefix.parse::<IpNet>().unwrap(), ());
        }
        let found =
            |address: &str| most_specific(&map, address.parse().unwrap()).map(|p| p.to_string());
        assert_eq!(found("100.64.10.200").as_deref(), Some("100.64.10.128/25"));
        assert_eq!(found("100.64.10.5").as_deref(), Some("100.64.10.0/24"));
        assert_eq!(found("100.70.0.1").as_deref(), Some("100.64.0.0/10"));
        assert_eq!(found("198.51.100.7"), None);
    }
}
