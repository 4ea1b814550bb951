//! Enforcement: the program on the configured interfaces through pinned links the agent also
//! holds, the pins kept in place, and the interfaces watched for deletion, re-creation and
//! unlisted tunnel devices.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tracing::{error, info, warn};

use super::{interface_counts::CountedInterfaces, netns, state::Journal};
use crate::{
    config::{AgentConfig, AttachKind, XdpMode},
    dataplane::{
        Attach, Attached, Dataplane, DataplaneError, HeldLinks, PinLayout, PinLock,
        PinnedAttachment,
        interfaces::{self, UnlistedTunnel},
    },
    store::AuditAction,
};

/// How often the watch looks for unlisted tunnel devices (the metric's freshness); `status`
/// and every (re)attach look at once. Listing every interface each second would cost a
/// gateway with thousands of PPP devices more than the answer is worth.
const TUNNEL_CHECK: Duration = Duration::from_secs(10);

pub struct Enforcement {
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
    /// The counter slots of the configured interfaces' judged frames.
    counted: CountedInterfaces,
}

impl Enforcement {
    /// Prepares and locks the pin folder: one agent per pin folder.
    pub fn prepare(pins: PinLayout) -> anyhow::Result<Self> {
        pins.prepare().context("preparing the pin folder")?;
        let pin_lock = pins.lock()?;
        Ok(Self {
            pins,
            pin_lock,
            links: HeldLinks::default(),
            detached_interfaces: BTreeSet::new(),
            unlisted_tunnels: Vec::new(),
            tunnels_checked: Instant::now(),
            counted: CountedInterfaces::default(),
        })
    }

    /// Takes over the interface counter slots an earlier agent gave the configured
    /// interfaces (see [`CountedInterfaces::adopt`]); before the first attach.
    pub fn adopt_counted_interfaces(
        &mut self,
        dataplane: &mut Dataplane,
        agent: &AgentConfig,
    ) -> anyhow::Result<()> {
        self.counted = CountedInterfaces::adopt(dataplane, agent)
            .context("reading the interface counter slots")?;
        Ok(())
    }

    pub fn counted_interfaces(&self) -> &CountedInterfaces {
        &self.counted
    }

    pub fn pins(&self) -> &PinLayout {
        &self.pins
    }

    pub fn detached_interfaces(&self) -> &BTreeSet<String> {
        &self.detached_interfaces
    }

    pub fn unlisted_tunnels(&self) -> &[UnlistedTunnel] {
        &self.unlisted_tunnels
    }

    /// Attaches (or atomically updates) every configured interface, then removes pinned
    /// attachments of interfaces no longer configured. A configured interface that does not
    /// exist (yet) is reported detached, and attached by `watch` once it appears.
    pub fn attach_all(
        &mut self,
        dataplane: &mut Dataplane,
        agent: &AgentConfig,
        journal: &mut Journal,
    ) -> anyhow::Result<()> {
        let configured = &agent.interfaces;
        // An interface no longer configured is neither attached nor missing.
        self.detached_interfaces
            .retain(|interface| configured.contains(interface));
        self.counted.retain_configured(dataplane, configured);
        for interface in configured {
            match self.attach_one(dataplane, agent, interface)? {
                Some(attached) => {
                    self.detached_interfaces.remove(interface);
                    info!(
                        interface,
                        attach = attached.attach.kind(),
                        outcome = %attached.outcome,
                        "enforcing"
                    );
                }
                None => self.interface_gone(interface, journal),
            }
        }
        for pinned in self.pins.attachments()? {
            if !configured.contains(&pinned.interface) {
                self.links.release(&pinned.interface);
                self.pins.detach(&pinned)?;
                info!(
                    interface = pinned.interface,
                    "detached: no longer configured"
                );
            }
        }
        self.refresh_unlisted_tunnels(agent);
        Ok(())
    }

    /// Attaches to `interface` (in the configured namespace) and holds the link; `None` when
    /// the interface does not exist. An interface without an Ethernet header gets the L3 TC
    /// entry point whatever the configuration asks for, which is logged.
    fn attach_one(
        &mut self,
        dataplane: &mut Dataplane,
        agent: &AgentConfig,
        interface: &str,
    ) -> anyhow::Result<Option<Attached>> {
        let pins = &self.pins;
        let attached = netns::run_in(agent.netns.as_deref(), || {
            dataplane.attach_pinned(pins, interface, attach_of(agent))
        })?;
        match attached {
            Ok(attached) => {
                self.links
                    .hold(&self.pins, interface, attached.attach.kind())?;
                if let Some(ifindex) = self.links.bound_ifindex(interface) {
                    self.counted.attached(dataplane, interface, ifindex);
                }
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
    pub fn refresh_unlisted_tunnels(&mut self, agent: &AgentConfig) {
        self.tunnels_checked = Instant::now();
        let listed = &agent.interfaces;
        let found = netns::run_in(agent.netns.as_deref(), || {
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
    fn interface_gone(&mut self, interface: &str, journal: &mut Journal) {
        if self.detached_interfaces.insert(interface.to_owned()) {
            warn!(
                interface,
                "interface missing: port 25 is not enforced on it until it appears"
            );
            journal.record_system(
                AuditAction::InterfaceDetached,
                interface,
                "interface missing; attached again when it appears",
            );
        }
    }

    /// Runs every `WATCH_TICK`: pins removed by hand are made again, and interfaces that were
    /// deleted or created again are noticed and attached again.
    pub fn watch(&mut self, dataplane: &mut Dataplane, agent: &AgentConfig, journal: &mut Journal) {
        if let Err(error) = self.watch_pins(dataplane, journal) {
            error!(
                error = format!("{error:#}"),
                "restoring removed pins failed; retrying"
            );
        }
        if let Err(error) = self.watch_interfaces(dataplane, agent, journal) {
            error!(
                error = format!("{error:#}"),
                "checking the interfaces failed; retrying"
            );
        }
        if self.tunnels_checked.elapsed() >= TUNNEL_CHECK {
            self.refresh_unlisted_tunnels(agent);
        }
    }

    fn watch_pins(
        &mut self,
        dataplane: &mut Dataplane,
        journal: &mut Journal,
    ) -> anyhow::Result<()> {
        let maps = dataplane.restore_map_pins(&self.pins)?;
        let links = self.links.restore_pins(&self.pins)?;
        if maps.is_empty() && links.is_empty() {
            return Ok(());
        }
        // A pin folder removed and made again is a new folder: lock it again.
        if !self.pin_lock.is_current(&self.pins) {
            self.pin_lock = self.pins.lock()?;
        }
        journal.counters.pin_restores += 1;
        let detail = format!(
            "pinned again: maps {}; links {}",
            super::state::list(maps.iter()),
            super::state::list(links.iter().map(|path| path.display()))
        );
        let pin_dir = self.pins.root().display().to_string();
        warn!(
            pin_dir,
            detail, "pins were removed by hand; the live maps and links are pinned again"
        );
        journal.record_system(AuditAction::PinsRestored, &pin_dir, &detail);
        Ok(())
    }

    fn watch_interfaces(
        &mut self,
        dataplane: &mut Dataplane,
        agent: &AgentConfig,
        journal: &mut Journal,
    ) -> anyhow::Result<()> {
        let interfaces = &agent.interfaces;
        let indexes: Vec<Option<u32>> = netns::run_in(agent.netns.as_deref(), || {
            interfaces
                .iter()
                .map(|name| nix::net::if_::if_nametoindex(name.as_str()).ok())
                .collect()
        })?;
        for (interface, index) in interfaces.iter().zip(indexes) {
            match index {
                None => self.interface_gone(interface, journal),
                Some(index) if self.links.bound_ifindex(interface) == Some(index) => {}
                // Created again (a new ifindex) or appeared for the first time.
                Some(index) => match self.attach_one(dataplane, agent, interface) {
                    Ok(Some(attached)) => {
                        self.detached_interfaces.remove(interface);
                        journal.counters.reattachments += 1;
                        let detail = match attached.note() {
                            Some(note) => format!("ifindex {index}, {note}"),
                            None => format!("ifindex {index}, {}", attach_name(agent)),
                        };
                        warn!(
                            interface,
                            index,
                            outcome = %attached.outcome,
                            "interface appeared: attached again"
                        );
                        journal.record_system(AuditAction::InterfaceAttached, interface, &detail);
                    }
                    Ok(None) => self.interface_gone(interface, journal),
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
    pub fn live_attachments(&self) -> Result<Vec<PinnedAttachment>, DataplaneError> {
        Ok(self
            .pins
            .attachments()?
            .into_iter()
            .filter(|a| !self.detached_interfaces.contains(&a.interface))
            .collect())
    }

    /// Removes enforcement on purpose: every pinned link goes (the agent's own fds too), the
    /// maps stay. Returns the interfaces it was removed from.
    pub fn detach_all(&mut self) -> Result<Vec<String>, DataplaneError> {
        let mut detached = Vec::new();
        for attachment in self.pins.attachments()? {
            self.links.release(&attachment.interface);
            self.pins.detach(&attachment)?;
            detached.push(attachment.interface);
        }
        Ok(detached)
    }
}

/// How the configuration asks for the program to be attached.
pub fn attach_of(agent: &AgentConfig) -> Attach {
    match (agent.attach, agent.xdp_mode) {
        (AttachKind::Xdp, XdpMode::Native) => Attach::Xdp(aya::programs::XdpMode::Driver),
        (AttachKind::Xdp, XdpMode::Skb) => Attach::Xdp(aya::programs::XdpMode::Skb),
        (AttachKind::Tc, _) => Attach::Tc,
    }
}

pub fn attach_name(agent: &AgentConfig) -> &'static str {
    match attach_of(agent) {
        Attach::Xdp(aya::programs::XdpMode::Skb) => "xdp (skb)",
        Attach::Xdp(_) => "xdp (native)",
        Attach::Tc => "tc",
        Attach::TcL3 => "tc-l3",
    }
}
