//! What the agent owns and every operation on it. One `AgentState` exists per agent, behind
//! one lock, so the store and the kernel maps always change together and in order: the store
//! first (durable), then the maps (reconciled by difference), then the answer.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::PathBuf,
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;
use ipnet::IpNet;
use serde_json::{Value, json};
use smtpguard_common::{
    Origin, PrefixOrigin, REASON_COUNT, Reason,
    maps::{self as names, source_capacity},
};
use tracing::{error, info, warn};

use super::{
    api::{ErrorKind, Request, Response},
    events::{self, Event, Events},
    netns,
};
use crate::{
    config::{
        AttachKind, Config, XdpMode,
        danger::{self, Danger},
    },
    dataplane::{
        Attach, Attached, Dataplane, DataplaneError, HeldLinks, PinLayout, PinLock,
        ReconcileReport,
        interfaces::{self, UnlistedTunnel},
    },
    input::{self, InputError},
    metrics::{AgentCounters, MetricsSnapshot},
    policy::{DesiredPolicy, most_specific},
    report::ReportRow,
    store::{AuditAction, MAX_TEXT_BYTES, NewExemption, NewRelay, SYSTEM_WHO, Store, StoreError},
};

/// The prefix lists that change one entry at a time at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EntryList {
    Relays,
    Exemptions,
}

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

impl From<InputError> for Failure {
    fn from(error: InputError) -> Self {
        Failure::new(ErrorKind::BadRequest, error.to_string())
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

/// How often the watch looks for unlisted tunnel devices (the metric's freshness); `status`
/// and every (re)attach look at once. Listing every interface each second would cost a
/// gateway with thousands of PPP devices more than the answer is worth.
const TUNNEL_CHECK: Duration = Duration::from_secs(10);

pub struct AgentState {
    config: Config,
    config_path: PathBuf,
    store: Store,
    dataplane: Dataplane,
    pins: PinLayout,
    /// One agent per pin folder.
    pin_lock: PinLock,
    /// The agent's own fd of every link it attached: enforcement survives removed pins.
    links: HeldLinks,
    /// Configured interfaces with nothing enforced on them now (missing).
    detached_interfaces: BTreeSet<String>,
    /// Tunnel and L3 devices that are up and not configured, when last looked at.
    unlisted_tunnels: Vec<UnlistedTunnel>,
    /// When `unlisted_tunnels` was last looked for.
    tunnels_checked: Instant,
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
        pins.prepare().context("preparing the pin folder")?;
        let pin_lock = pins.lock()?;
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
            pin_lock,
            links: HeldLinks::default(),
            detached_interfaces: BTreeSet::new(),
            unlisted_tunnels: Vec::new(),
            tunnels_checked: Instant::now(),
            resolved,
            desired,
            counters: AgentCounters::default(),
            started: SystemTime::now(),
            detached: false,
            events: events::channel(),
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
        state.attach_all()?;
        Ok(state)
    }

    /// Says which pinned maps of an earlier version were made afresh at load, and what their
    /// contents were: a replaced statistics map starts its counts over.
    fn record_replaced_pins(&mut self) {
        let pin_dir = self.pins.root().display().to_string();
        for replaced in self.dataplane.replaced_pins().to_vec() {
            let detail = format!(
                "{}: pinned as {}, this version needs {}; made afresh",
                replaced.name, replaced.found, replaced.expected
            );
            warn!(
                pin_dir,
                detail, "a map pinned by an earlier version no longer fits; it was replaced"
            );
            self.record_system(AuditAction::PinsReplaced, &pin_dir, &detail);
        }
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

    /// Acts on the bots of the last bot window (see `Snapshotter::recent_bots`): a new bot is
    /// recorded, announced and handed to `on_bot`; with `escalate`, a bot in a monitor-mode
    /// range is switched to enforcement for itself alone.
    pub fn record_bots(&mut self, bots: Vec<ReportRow>, now: SystemTime) -> anyhow::Result<()> {
        let report = self.config.report.clone();
        let from = now
            .checked_sub(report.bot_window)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let known: std::collections::HashSet<IpAddr> = self
            .store
            .bot_events(from)?
            .into_iter()
            .map(|e| e.host)
            .collect();
        for row in bots {
            let host = row.host.address().context("a host row names an address")?;
            let reason = row.class_reason.to_string();
            if !known.contains(&host) {
                self.store.record_bot(host, now, &reason)?;
                self.counters.bots_classified += 1;
                info!(%host, reason, "new bot");
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
                self.escalate(host, now, &reason)?;
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

    fn entries(&self, list: EntryList) -> &BTreeMap<IpNet, PrefixOrigin> {
        match list {
            EntryList::Relays => &self.desired.relays,
            EntryList::Exemptions => &self.desired.exemptions,
        }
    }

    /// Adds one runtime relay or exemption, unless the config (which wins) or DNS already has
    /// it.
    fn add_entry(&mut self, list: EntryList, prefix: IpNet) -> anyhow::Result<()> {
        if self.entries(list).contains_key(&prefix) {
            return Ok(());
        }
        self.write_entry(list, prefix, Some(PrefixOrigin::new(Origin::Runtime)))
    }

    /// Takes a runtime relay or exemption out again, unless the config or DNS still has it.
    fn remove_entry(&mut self, list: EntryList, prefix: IpNet) -> anyhow::Result<()> {
        if self.entries(list).get(&prefix) != Some(&PrefixOrigin::new(Origin::Runtime)) {
            return Ok(());
        }
        let resolved = list == EntryList::Relays
            && self
                .resolved
                .values()
                .flatten()
                .any(|a| IpNet::from(*a) == prefix);
        self.write_entry(
            list,
            prefix,
            resolved.then(|| PrefixOrigin::new(Origin::Dns)),
        )
    }

    /// Sets (`Some`) or removes (`None`) one entry in the kernel maps and the desired policy.
    /// The maps hold exactly `desired` after every change, so writing what the one entry
    /// changes keeps them equal: an `exempt add` costs a map write or a few, however many
    /// entries there are.
    fn write_entry(
        &mut self,
        list: EntryList,
        prefix: IpNet,
        value: Option<PrefixOrigin>,
    ) -> anyhow::Result<()> {
        let desired = &mut self.desired;
        self.dataplane
            .policy_maps()
            .and_then(|mut maps| match list {
                EntryList::Relays => maps.set_relay(desired, prefix, value),
                EntryList::Exemptions => maps.set_exemption(desired, prefix, value),
            })
            .inspect_err(|_| self.counters.reconcile_errors += 1)?;
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
    /// attachments of interfaces no longer configured. A configured interface that does not
    /// exist (yet) is reported detached, and attached by `watch` once it appears.
    fn attach_all(&mut self) -> anyhow::Result<()> {
        let configured = self.config.agent.interfaces.clone();
        // An interface no longer configured is neither attached nor missing.
        self.detached_interfaces
            .retain(|interface| configured.contains(interface));
        for interface in configured {
            match self.attach_one(&interface)? {
                Some(attached) => {
                    self.detached_interfaces.remove(&interface);
                    info!(
                        interface,
                        attach = attached.attach.kind(),
                        outcome = %attached.outcome,
                        "enforcing"
                    );
                }
                None => self.interface_gone(&interface),
            }
        }
        for pinned in self.pins.attachments()? {
            if !self.config.agent.interfaces.contains(&pinned.interface) {
                self.links.release(&pinned.interface);
                self.pins.detach(&pinned)?;
                info!(
                    interface = pinned.interface,
                    "detached: no longer configured"
                );
            }
        }
        self.refresh_unlisted_tunnels();
        Ok(())
    }

    /// Attaches to `interface` (in the configured namespace) and holds the link; `None` when
    /// the interface does not exist. An interface without an Ethernet header gets the L3 TC
    /// entry point whatever the configuration asks for, which is logged.
    fn attach_one(&mut self, interface: &str) -> anyhow::Result<Option<Attached>> {
        let attach = self.attach();
        let (dataplane, pins) = (&mut self.dataplane, &self.pins);
        let attached = netns::run_in(self.config.agent.netns.as_deref(), || {
            dataplane.attach_pinned(pins, interface, attach)
        })?;
        match attached {
            Ok(attached) => {
                self.links
                    .hold(&self.pins, interface, attached.attach.kind())?;
                if let Some(note) = attached.note() {
                    info!(interface, note, "attached for a device without Ethernet");
                }
                Ok(Some(attached))
            }
            Err(DataplaneError::InterfaceMissing { .. }) => {
                self.links.release(interface);
                Ok(None)
            }
            Err(error) => Err(error).with_context(|| format!("attaching to interface {interface}")),
        }
    }

    /// Looks again for tunnel and L3 devices that are up and not configured (in the
    /// configured namespace), and logs each one that was not there the last time.
    fn refresh_unlisted_tunnels(&mut self) {
        self.tunnels_checked = Instant::now();
        let listed = &self.config.agent.interfaces;
        let found = netns::run_in(self.config.agent.netns.as_deref(), || {
            interfaces::unlisted_tunnels(listed)
        })
        .and_then(|found| Ok(found?));
        match found {
            Ok(found) => {
                for tunnel in found.iter().filter(|t| !self.unlisted_tunnels.contains(t)) {
                    warn!(interface = tunnel.interface, kind = tunnel.kind, "{tunnel}");
                }
                self.unlisted_tunnels = found;
            }
            Err(error) => warn!(
                error = format!("{error:#}"),
                "looking for unlisted tunnel interfaces failed"
            ),
        }
    }

    /// Records that `interface` has no enforcement, once per disappearance.
    fn interface_gone(&mut self, interface: &str) {
        if self.detached_interfaces.insert(interface.to_owned()) {
            warn!(
                interface,
                "interface missing: port 25 is not enforced on it until it appears"
            );
            self.record_system(
                AuditAction::InterfaceDetached,
                interface,
                "interface missing; attached again when it appears",
            );
        }
    }

    /// An audit entry by the agent itself. A store that cannot write (full, read-only) must
    /// not stop what the entry is about: the failure is logged and counted.
    fn record_system(&mut self, action: AuditAction, subject: &str, detail: &str) {
        if let Err(error) =
            self.store
                .record(action, subject, SYSTEM_WHO, detail, SystemTime::now())
        {
            self.counters.store_errors += 1;
            error!(%error, action = action.name(), subject, "writing the audit entry failed");
        }
    }

    /// Runs every `WATCH_TICK`: pins removed by hand are made again, and interfaces that were
    /// deleted or created again are noticed and attached again.
    pub fn watch(&mut self) {
        if self.detached {
            // Detached on request: stopping, and nothing is to be attached again.
            return;
        }
        if let Err(error) = self.watch_pins() {
            error!(
                error = format!("{error:#}"),
                "restoring removed pins failed; retrying"
            );
        }
        if let Err(error) = self.watch_interfaces() {
            error!(
                error = format!("{error:#}"),
                "checking the interfaces failed; retrying"
            );
        }
        if self.tunnels_checked.elapsed() >= TUNNEL_CHECK {
            self.refresh_unlisted_tunnels();
        }
    }

    fn watch_pins(&mut self) -> anyhow::Result<()> {
        let maps = self.dataplane.restore_map_pins(&self.pins)?;
        let links = self.links.restore_pins(&self.pins)?;
        if maps.is_empty() && links.is_empty() {
            return Ok(());
        }
        // A pin folder removed and made again is a new folder: lock it again.
        if !self.pin_lock.is_current(&self.pins) {
            self.pin_lock = self.pins.lock()?;
        }
        self.counters.pin_restores += 1;
        let detail = format!(
            "pinned again: maps {}; links {}",
            list(maps.iter()),
            list(links.iter().map(|path| path.display()))
        );
        let pin_dir = self.pins.root().display().to_string();
        warn!(
            pin_dir,
            detail, "pins were removed by hand; the live maps and links are pinned again"
        );
        self.record_system(AuditAction::PinsRestored, &pin_dir, &detail);
        Ok(())
    }

    fn watch_interfaces(&mut self) -> anyhow::Result<()> {
        let interfaces = self.config.agent.interfaces.clone();
        let indexes: Vec<Option<u32>> = netns::run_in(self.config.agent.netns.as_deref(), || {
            interfaces
                .iter()
                .map(|name| nix::net::if_::if_nametoindex(name.as_str()).ok())
                .collect()
        })?;
        for (interface, index) in interfaces.iter().zip(indexes) {
            match index {
                None => self.interface_gone(interface),
                Some(index) if self.links.bound_ifindex(interface) == Some(index) => {}
                // Created again (a new ifindex) or appeared for the first time.
                Some(index) => match self.attach_one(interface) {
                    Ok(Some(attached)) => {
                        self.detached_interfaces.remove(interface);
                        self.counters.reattachments += 1;
                        let detail = match attached.note() {
                            Some(note) => format!("ifindex {index}, {note}"),
                            None => format!("ifindex {index}, {}", self.attach_name()),
                        };
                        warn!(
                            interface,
                            index,
                            outcome = %attached.outcome,
                            "interface appeared: attached again"
                        );
                        self.record_system(AuditAction::InterfaceAttached, interface, &detail);
                    }
                    Ok(None) => self.interface_gone(interface),
                    Err(error) => error!(
                        interface,
                        error = format!("{error:#}"),
                        "attaching to the interface failed; retrying"
                    ),
                },
            }
        }
        Ok(())
    }

    /// The pinned attachments that enforce now: a link left on a deleted interface does not.
    fn live_attachments(&self) -> Result<Vec<crate::dataplane::PinnedAttachment>, DataplaneError> {
        Ok(self
            .pins
            .attachments()?
            .into_iter()
            .filter(|a| !self.detached_interfaces.contains(&a.interface))
            .collect())
    }

    /// Carries out one request from `who` (the peer's user name), once its fields are within
    /// the input limits: a client other than the CLI gets no further than the CLI would.
    pub fn handle(&mut self, request: Request, who: &str) -> Response {
        if let Err(error) = request.validate(SystemTime::now()) {
            return Response::error(ErrorKind::BadRequest, error.to_string());
        }
        let outcome = match request {
            Request::ExemptAdd {
                prefix,
                reason,
                ticket,
                expires,
                force,
            } => self.exempt_add(&prefix, reason, ticket, expires.as_deref(), force, who),
            Request::ExemptList {} => self.exempt_list(),
            Request::ExemptRemove { prefix } => self.exempt_remove(&prefix, who),
            Request::RelayAdd {
                prefix,
                note,
                force,
            } => self.relay_add(&prefix, note, force, who),
            Request::RelayList {} => self.relay_list(),
            Request::RelayRemove { prefix } => self.relay_remove(&prefix, who),
            Request::Status {} => self.status(),
            Request::Check { src, dst, port } => self.check(&src, &dst, port),
            Request::Audit { since } => self.audit(since.as_deref()),
            Request::Reload { force } => self.reload(force, who),
            Request::EscalationList {} => self
                .store
                .active_escalations()
                .map(|e| json!(e))
                .map_err(Failure::from),
            Request::EscalationLift { host } => input::parse_address("host", &host)
                .map_err(Failure::from)
                .and_then(|host| self.end_escalation(host, who, false)),
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
        force: bool,
        who: &str,
    ) -> Outcome {
        let prefix = input::parse_prefix("prefix", prefix)?;
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
        let dangers = danger::exemption_dangers(&self.config, prefix);
        refuse_unless_forced(&dangers, force, "exempt add")?;
        let expires = expires
            .map(|at| input::parse_time("expires", at))
            .transpose()?;
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
        self.record_forced(&dangers, &prefix.to_string(), who);
        Ok(json!(exemption))
    }

    fn exempt_remove(&mut self, prefix: &str, who: &str) -> Outcome {
        let prefix = input::parse_prefix("prefix", prefix)?;
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

    fn relay_add(&mut self, prefix: &str, note: Option<String>, force: bool, who: &str) -> Outcome {
        let prefix = input::parse_prefix("prefix", prefix)?;
        let dangers: Vec<Danger> = danger::relay_danger(prefix).into_iter().collect();
        refuse_unless_forced(&dangers, force, "relay add")?;
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
        self.record_forced(&dangers, &prefix.to_string(), who);
        Ok(json!(relay))
    }

    fn relay_remove(&mut self, prefix: &str, who: &str) -> Outcome {
        let prefix = input::parse_prefix("prefix", prefix)?;
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

    /// Audits a change forced past `dangers` (nothing when there were none). The change itself
    /// is done and audited already: a failure here is logged, not answered.
    fn record_forced(&mut self, dangers: &[Danger], subject: &str, who: &str) {
        if dangers.is_empty() {
            return;
        }
        let detail = truncated(&danger::describe(dangers), MAX_TEXT_BYTES);
        warn!(subject, who, detail, "forced past warnings");
        if let Err(error) = self.store.record(
            AuditAction::Forced,
            subject,
            who,
            &detail,
            SystemTime::now(),
        ) {
            self.counters.store_errors += 1;
            warn!(%error, subject, "recording a forced change in the audit log failed");
        }
    }

    fn count_store_error(&mut self, error: &StoreError) {
        if store_error_kind(error) == ErrorKind::Failed {
            self.counters.store_errors += 1;
        }
    }

    fn status(&mut self) -> Outcome {
        self.refresh_unlisted_tunnels();
        let counters = self.dataplane.counters().map_err(failed)?;
        let attachments = self.live_attachments().map_err(failed)?;
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
            "detached": self.detached_interfaces,
            "unlisted_tunnels": self.unlisted_tunnels.iter().map(|t| json!({"interface": t.interface, "kind": t.kind, "warning": t.to_string()})).collect::<Vec<_>>(),
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
            Attach::TcL3 => "tc-l3",
        }
    }

    /// (map, entries, capacity) for every map; policy maps are counted from the reconciled
    /// policy (they hold exactly that), the host map from the kernel.
    fn map_fill(&self) -> Result<Vec<(&'static str, u64, u64)>, crate::dataplane::DataplaneError> {
        let capacity = &self.config.capacity;
        let desired = &self.desired;
        let (source4, source6) = per_family_of(desired.source_prefixes());
        let (space4, space6) = per_family_of(desired.subscriber_space().keys());
        let (relay4, relay6) = per_family_of(desired.relays.keys());
        let sources = u64::from(source_capacity(capacity.subscribers, capacity.exemptions));
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
        let src = input::parse_address("source", src)?;
        let dst = input::parse_address("destination", dst)?;
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
        let since = since.map(|at| input::parse_time("since", at)).transpose()?;
        Ok(json!(self.store.audit(since)?))
    }

    /// Re-reads the config file. An invalid file changes nothing, and neither does a dangerous
    /// one unless `force`; a valid one is reconciled into the maps and the interfaces.
    fn reload(&mut self, force: bool, who: &str) -> Outcome {
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
        let dangers = danger::dangers(Some(&self.config), &config);
        if let Err(failure) = refuse_unless_forced(&dangers, force, "reload") {
            self.counters.reload_failures += 1;
            warn!(
                who,
                error = failure.message,
                "reload refused: the running policy stays as it was"
            );
            return Err(Failure::new(
                failure.kind,
                format!(
                    "reload refused, the running policy stays as it was: {}",
                    failure.message
                ),
            ));
        }
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
                self.record_forced(&dangers, &self.config_path.display().to_string(), who);
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
            self.links.release(&attachment.interface);
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
        MetricsSnapshot {
            packets: crate::metrics::packet_rows(
                Reason::ALL.into_iter().map(|r| (r, counters[r as usize])),
            ),
            tracked_hosts,
            exemptions: self.desired.exemptions.len() as u64,
            relays: self.desired.relays.len() as u64,
            maps,
            counters: self.counters,
            detached_interfaces: self.detached_interfaces.len() as u64,
            unfiltered_tunnel_interfaces: self.unlisted_tunnels.len() as u64,
            attached,
            start_time_seconds: self
                .started
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64(),
        }
    }
}

/// Refuses a dangerous change unless it is forced; the message names every danger and the
/// flag.
fn refuse_unless_forced(dangers: &[Danger], force: bool, verb: &str) -> Result<(), Failure> {
    if dangers.is_empty() || force {
        return Ok(());
    }
    Err(Failure::new(
        ErrorKind::BadRequest,
        format!(
            "{}; `smtpguard {verb} --force` does it anyway",
            danger::describe(dangers)
        ),
    ))
}

fn failed(error: impl std::fmt::Display) -> Failure {
    Failure::new(ErrorKind::Failed, error.to_string())
}

/// `text` cut to at most `max` bytes, at a character boundary.
fn truncated(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// How many of `prefixes` are IPv4 and how many IPv6.
fn per_family_of<'a>(prefixes: impl Iterator<Item = &'a IpNet>) -> (u64, u64) {
    prefixes.fold((0, 0), |(v4, v6), prefix| match prefix {
        IpNet::V4(_) => (v4 + 1, v6),
        IpNet::V6(_) => (v4, v6 + 1),
    })
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
}
