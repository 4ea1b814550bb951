//! Subscriber identities in the agent: session changes (RADIUS accounting, `smtpguard
//! session`) go to the in-memory bindings and the kernel's exemption map first, through the
//! same one-entry writes as a runtime exemption, and to the store next (durable, with their
//! times), before anyone is answered: the kernel follows a Start without waiting for the
//! disk, and what the store refuses is undone. A prefix bound to an exempt identity is exempt with the origin
//! `subscriber`; the config's and the runtime exemptions win where both name a prefix.

use std::{net::IpAddr, time::SystemTime};

use ipnet::IpNet;
use smtpguard_common::{Origin, PrefixOrigin};
use tracing::{info, warn};

use super::{reconcile::EntryList, state::AgentState};
use crate::{
    identity::{Change, ChangeKind, Holder, SessionChange},
    policy::DesiredPolicy,
    store::{Escalation, StoreError},
};

const BOUND: PrefixOrigin = PrefixOrigin::new(Origin::Subscriber);

/// The most hosts an escalation follows into one bound prefix: a delegated IPv6 /56 under
/// /64 hosts (or an IPv4 /24 under /32 hosts). A /48's 65,536 would fill the override map.
const MAX_FOLLOWED_HOSTS: u32 = 256;

/// A binding's change, made in memory and in the kernel before the store holds it, with what
/// undoing it restores.
struct Rebinding {
    prefix: IpNet,
    from: Option<Holder>,
    to: Option<Holder>,
}

impl AgentState {
    /// The prefix a session's address or prefix is bound as: a prefix longer than one host
    /// (a Framed-IPv6-Prefix /128, say) is its whole host, since the kernel judges hosts.
    pub(super) fn bound_prefix(&self, prefix: IpNet) -> IpNet {
        let (host, _) = self.config.enforcement.host_prefix(&prefix);
        if prefix.prefix_len() > host {
            self.config.enforcement.host_of(prefix.network())
        } else {
            prefix.trunc()
        }
    }

    /// Adds the prefixes bound to exempt identities to a freshly built desired policy (where
    /// neither the config nor a runtime exemption names them already).
    pub(super) fn add_bound_exemptions(&self, desired: &mut DesiredPolicy) {
        let bound: Vec<IpNet> = self
            .identities
            .exempt_prefixes()
            .filter(|prefix| in_subscriber_space(desired, prefix))
            .collect();
        for prefix in bound {
            desired.add_exemption(prefix, Origin::Subscriber);
        }
    }

    /// Applies `changes` in order: to the bindings in memory and the kernel's exemptions at
    /// once, then to the store in one transaction (one commit for a whole batch of
    /// accounting). Returns the prefixes whose binding changed. When the store fails, the
    /// memory and the kernel are put back as they were and the error is returned: the caller
    /// must not answer, so that a RADIUS client sends its packets again. A crash before the
    /// commit loses nothing either: the request was not answered, and the agent reconciles
    /// the kernel maps to the store when it starts. A kernel map that cannot follow is
    /// logged, and the next reconcile mends it.
    pub fn apply_changes<'c>(
        &mut self,
        changes: impl IntoIterator<Item = &'c Change>,
    ) -> Result<Vec<IpNet>, StoreError> {
        let mut staged = Vec::new();
        for change in changes {
            match change {
                Change::Session(change) => self.stage_session(change, &mut staged),
                Change::NasRestarted { nas } => {
                    let prefixes = self.identities.prefixes_of_nas(nas);
                    info!(
                        nas,
                        sessions = prefixes.len(),
                        "the NAS restarted: its sessions end"
                    );
                    self.stage_release(&prefixes, &mut staged);
                }
            }
        }
        self.follow_rebindings(&staged);
        let rows: Vec<(IpNet, Option<&Holder>)> = staged
            .iter()
            .map(|rebinding| (rebinding.prefix, rebinding.to.as_ref()))
            .collect();
        if let Err(error) = self.journal.store.rebind(&rows, SystemTime::now()) {
            self.journal.counters.store_errors += 1;
            for rebinding in staged.iter().rev() {
                match &rebinding.from {
                    Some(holder) => self.identities.bind(rebinding.prefix, holder.clone()),
                    None => self.identities.unbind(&rebinding.prefix),
                }
            }
            self.follow_rebindings(&staged);
            return Err(error);
        }
        Ok(staged
            .into_iter()
            .map(|rebinding| rebinding.prefix)
            .collect())
    }

    /// Makes the kernel follow the bindings of `staged` (exemptions, then escalations).
    fn follow_rebindings(&mut self, staged: &[Rebinding]) {
        for rebinding in staged {
            self.follow_binding(rebinding.prefix);
        }
        if !staged.is_empty() {
            self.follow_escalations();
        }
    }

    /// Stages a session's change in memory.
    fn stage_session(&mut self, change: &SessionChange, staged: &mut Vec<Rebinding>) {
        let mut prefixes: Vec<IpNet> = change
            .prefixes
            .iter()
            .map(|prefix| self.bound_prefix(*prefix))
            .collect();
        prefixes.sort_unstable();
        prefixes.dedup();
        let session = change.session.as_deref();
        let holder = Holder {
            subscriber: change.subscriber.clone(),
            session: change.session.clone(),
            nas: change.nas.clone(),
        };
        match change.kind {
            ChangeKind::Hold => self.stage_hold(&holder, &prefixes, staged),
            ChangeKind::Stop => {
                let stopped: Vec<IpNet> = if !prefixes.is_empty() {
                    prefixes
                        .into_iter()
                        .filter(|prefix| {
                            self.identities.holder(prefix).is_some_and(|h| {
                                h.subscriber == holder.subscriber
                                    && (session.is_none() || h.session == holder.session)
                            })
                        })
                        .collect()
                } else if session.is_some() {
                    self.identities
                        .prefixes_of(&holder.subscriber, Some(session))
                } else {
                    Vec::new()
                };
                self.stage_release(&stopped, staged);
            }
        }
    }

    /// The session of `holder` holds exactly `prefixes` now: each is bound to it, and with
    /// a session id, what the session held before and no longer does is released.
    fn stage_hold(&mut self, holder: &Holder, prefixes: &[IpNet], staged: &mut Vec<Rebinding>) {
        for prefix in prefixes {
            let from = self.identities.holder(prefix).cloned();
            if from.as_ref() == Some(holder) {
                continue;
            }
            if let Some(from) = from
                .as_ref()
                .filter(|from| from.subscriber != holder.subscriber)
            {
                info!(%prefix, from = from.subscriber, to = holder.subscriber, "address moved");
            }
            self.identities.bind(*prefix, holder.clone());
            staged.push(Rebinding {
                prefix: *prefix,
                from,
                to: Some(holder.clone()),
            });
        }
        let Some(session) = holder.session.as_deref() else {
            return;
        };
        let given_up: Vec<IpNet> = self
            .identities
            .prefixes_of(&holder.subscriber, Some(Some(session)))
            .into_iter()
            .filter(|prefix| !prefixes.contains(prefix))
            .collect();
        self.stage_release(&given_up, staged);
    }

    /// Ends the bindings of `prefixes` in memory.
    fn stage_release(&mut self, prefixes: &[IpNet], staged: &mut Vec<Rebinding>) {
        for prefix in prefixes {
            let from = self.identities.holder(prefix).cloned();
            self.identities.unbind(prefix);
            staged.push(Rebinding {
                prefix: *prefix,
                from,
                to: None,
            });
        }
    }

    /// Makes the kernel's exemption of `prefix` follow its binding: exempt while an exempt
    /// identity holds it (inside a subscriber range), not otherwise.
    pub(super) fn follow_binding(&mut self, prefix: IpNet) {
        let wanted =
            self.identities.exempts(&prefix) && in_subscriber_space(&self.desired, &prefix);
        let outcome = match self.desired.exemptions.get(&prefix) {
            // The config's or a runtime exemption: exempt whoever holds it.
            Some(origin) if *origin != BOUND => Ok(()),
            Some(_) if !wanted => self.write_entry(EntryList::Exemptions, prefix, None),
            None if wanted => self.write_entry(EntryList::Exemptions, prefix, Some(BOUND)),
            _ => Ok(()),
        };
        if let Err(error) = outcome {
            warn!(
                %prefix,
                error = format!("{error:#}"),
                "the kernel map could not follow a subscriber binding; the next reload \
                 reconciles it"
            );
        }
    }

    /// What a runtime exemption of `prefix` leaves behind when it is removed: the binding's
    /// exemption, if an exempt identity holds the prefix.
    pub(super) fn bound_exemption(&self, prefix: &IpNet) -> Option<PrefixOrigin> {
        (self.identities.exempts(prefix) && in_subscriber_space(&self.desired, prefix))
            .then_some(BOUND)
    }

    /// Every prefix `subscriber` holds now.
    pub(super) fn bound_to(&self, subscriber: &str) -> Vec<IpNet> {
        self.identities.prefixes_of(subscriber, None)
    }

    /// Marks `subscriber` exempt or not, and makes the kernel follow for what it holds.
    pub(super) fn set_subscriber_exempt(&mut self, subscriber: &str, exempt: bool) {
        self.identities.set_exempt(subscriber, exempt);
        for prefix in self.bound_to(subscriber) {
            self.follow_binding(prefix);
        }
    }
}

impl AgentState {
    /// The identity that held `host` at `at`, from the bindings' history (see
    /// `bound_prefix`).
    pub(super) fn identity_at(
        &self,
        host: IpAddr,
        at: SystemTime,
    ) -> Result<Option<String>, StoreError> {
        let (length, _) = self.config.enforcement.host_prefix(&IpNet::from(host));
        self.journal.store.identity_at(host, length, at)
    }

    /// The hosts the kernel enforces for the active escalations. An escalation follows the
    /// identity that held its host when it began: to the hosts that identity holds now (none
    /// while it is offline), every host of a bound prefix wider than one (the 256 /64 hosts
    /// of a delegated /56), up to [`MAX_FOLLOWED_HOSTS`] per prefix; a host no identity held
    /// stays escalated itself.
    pub(super) fn escalated_hosts(&self) -> anyhow::Result<Vec<IpAddr>> {
        let mut hosts = Vec::new();
        for escalation in self.policy.active_escalations()? {
            match self.identity_at(escalation.host, escalation.started)? {
                None => hosts.push(escalation.host),
                Some(subscriber) => {
                    for prefix in self.bound_to(&subscriber) {
                        hosts.extend(self.hosts_of(prefix, &subscriber));
                    }
                }
            }
        }
        Ok(hosts)
    }

    /// The hosts of a bound prefix, as the override map keys them (see [`host_keys`]).
    fn hosts_of(&self, prefix: IpNet, subscriber: &str) -> Vec<IpAddr> {
        let (host, _) = self.config.enforcement.host_prefix(&prefix);
        host_keys(prefix, host).unwrap_or_else(|| {
            warn!(
                %prefix,
                subscriber,
                "an escalated identity holds a prefix of more than the {MAX_FOLLOWED_HOSTS} \
                 hosts an escalation follows; its hosts are judged by their range"
            );
            Vec::new()
        })
    }

    /// The binding that covers `host` now: its own, or a wider bound prefix's.
    fn holder_of_host(&self, host: IpAddr) -> Option<&Holder> {
        self.identities
            .covering(self.config.enforcement.host_of(host))
    }

    /// The escalations that count for `host`: its own, and when an identity holds it now,
    /// every escalation of a host while that identity held it (a bot that reconnects with
    /// another address does not start over), oldest first.
    pub(super) fn escalation_history(&self, host: IpAddr) -> anyhow::Result<Vec<Escalation>> {
        let mut history = self.policy.escalations_in(IpNet::from(host))?;
        let Some(subscriber) = self.holder_of_host(host).map(|h| h.subscriber.clone()) else {
            return Ok(history);
        };
        let mut prefixes: Vec<IpNet> = self
            .journal
            .store
            .bindings_of(&subscriber)?
            .into_iter()
            .map(|b| b.prefix)
            .collect();
        prefixes.sort_unstable();
        prefixes.dedup();
        for prefix in prefixes {
            for escalation in self.policy.escalations_in(prefix)? {
                if escalation.host != host
                    && !history.iter().any(|e| e.id == escalation.id)
                    && self
                        .identity_at(escalation.host, escalation.started)?
                        .as_deref()
                        == Some(&subscriber)
                {
                    history.push(escalation);
                }
            }
        }
        history.sort_by_key(|e| (e.started, e.id));
        Ok(history)
    }

    /// The host whose escalation `host` is enforced for: itself, or the escalated host whose
    /// identity holds `host` now.
    pub(super) fn escalation_host(&self, host: IpAddr) -> anyhow::Result<IpAddr> {
        for escalation in self.policy.active_escalations()? {
            if escalation.host == host {
                return Ok(host);
            }
        }
        let Some(holder) = self.holder_of_host(host) else {
            return Ok(host);
        };
        for escalation in self.policy.active_escalations()? {
            if self
                .identity_at(escalation.host, escalation.started)?
                .as_deref()
                == Some(holder.subscriber.as_str())
            {
                return Ok(escalation.host);
            }
        }
        Ok(host)
    }

    /// The identity an escalation follows, for `escalations`.
    pub(super) fn escalation_identity(&self, escalation: &Escalation) -> Option<String> {
        self.identity_at(escalation.host, escalation.started)
            .ok()
            .flatten()
    }

    /// Brings the override map to the escalations after bindings changed; a failure is
    /// logged, and the next change or reload tries again.
    fn follow_escalations(&mut self) {
        if let Err(error) = self.restore_escalations() {
            self.journal.counters.reconcile_errors += 1;
            warn!(
                error = format!("{error:#}"),
                "escalations could not follow a subscriber binding"
            );
        }
    }
}

/// Whether `prefix` lies in a subscriber range: elsewhere an exemption changes nothing and
/// only takes a map entry.
fn in_subscriber_space(desired: &DesiredPolicy, prefix: &IpNet) -> bool {
    desired
        .subscribers
        .keys()
        .any(|range| range.contains(prefix))
}

/// The hosts (of `host` bits) of `prefix`, by their first address; `None` for a prefix of
/// more than [`MAX_FOLLOWED_HOSTS`] hosts, which would crowd out every other escalation.
fn host_keys(prefix: IpNet, host: u8) -> Option<Vec<IpAddr>> {
    let bits = host.saturating_sub(prefix.prefix_len());
    if u32::from(bits) > MAX_FOLLOWED_HOSTS.ilog2() {
        return None;
    }
    let hosts = prefix.subnets(host.max(prefix.prefix_len())).ok()?;
    Some(hosts.map(|host| host.network()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(prefix: &str, host: u8) -> Option<Vec<String>> {
        let keys = host_keys(prefix.parse().unwrap(), host)?;
        Some(keys.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn an_escalation_follows_every_host_of_a_delegation_up_to_256() {
        assert_eq!(
            keys("100.64.0.2/32", 32),
            Some(vec!["100.64.0.2".to_owned()])
        );
        assert_eq!(
            keys("2001:db8:1:2::/64", 64),
            Some(vec!["2001:db8:1:2::".to_owned()])
        );
        let delegated = keys("2001:db8:1000:100::/56", 64).unwrap();
        assert_eq!(delegated.len(), 256);
        assert_eq!(
            (delegated[0].as_str(), delegated[255].as_str()),
            ("2001:db8:1000:100::", "2001:db8:1000:1ff::")
        );
        assert_eq!(keys("2001:db8:1000::/55", 64), None, "512 hosts");
        assert_eq!(keys("2001:db8::/48", 64), None);
    }
}
