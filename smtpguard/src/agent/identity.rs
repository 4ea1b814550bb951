//! Subscriber identities in the agent: session changes (RADIUS accounting, `smtpguard
//! session`) go to the store first (durable, with their times), to the in-memory bindings
//! next, and to the kernel's exemption map last, through the same one-entry writes as a
//! runtime exemption. A prefix bound to an exempt identity is exempt with the origin
//! `subscriber`; the config's and the runtime exemptions win where both name a prefix.

use std::{net::IpAddr, time::SystemTime};

use ipnet::IpNet;
use smtpguard_common::{Origin, PrefixOrigin};
use tracing::{info, warn};

use super::{reconcile::EntryList, state::AgentState};
use crate::{
    identity::{ChangeKind, Holder, SessionChange},
    policy::DesiredPolicy,
    store::{Escalation, StoreError},
};

const BOUND: PrefixOrigin = PrefixOrigin::new(Origin::Subscriber);

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

    /// Applies a session change and returns the prefixes whose binding changed. A failing
    /// store changes nothing (the change is not answered, so a RADIUS client sends it again);
    /// a kernel map that cannot follow is logged and counted, and the next reconcile mends it.
    pub fn apply_session(&mut self, change: &SessionChange) -> Result<Vec<IpNet>, StoreError> {
        let now = SystemTime::now();
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
        };
        let mut changed = Vec::new();
        let result = match change.kind {
            ChangeKind::Hold => self.hold(&holder, &prefixes, now, &mut changed),
            ChangeKind::Stop => {
                let given = !prefixes.is_empty();
                let stopped: Vec<IpNet> = if given {
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
                self.release(&stopped, now, &mut changed)
            }
        };
        // What was stored is in force, even when a later write failed.
        for prefix in &changed {
            self.follow_binding(*prefix);
        }
        if !changed.is_empty() {
            self.follow_escalations();
        }
        result.map(|()| changed)
    }

    /// The session of `holder` holds exactly `prefixes` now: each is bound to it, and with
    /// a session id, what the session held before and no longer does is released.
    fn hold(
        &mut self,
        holder: &Holder,
        prefixes: &[IpNet],
        now: SystemTime,
        changed: &mut Vec<IpNet>,
    ) -> Result<(), StoreError> {
        for prefix in prefixes {
            if self.identities.holder(prefix) == Some(holder) {
                continue;
            }
            let moved = self.journal.store.bind(
                *prefix,
                &holder.subscriber,
                holder.session.as_deref(),
                now,
            );
            let moved = moved.inspect_err(|_| self.journal.counters.store_errors += 1)?;
            if let Some(from) = moved.filter(|from| from.subscriber != holder.subscriber) {
                info!(%prefix, from = from.subscriber, to = holder.subscriber, "address moved");
            }
            self.identities.bind(*prefix, holder.clone());
            changed.push(*prefix);
        }
        let Some(session) = holder.session.as_deref() else {
            return Ok(());
        };
        let given_up: Vec<IpNet> = self
            .identities
            .prefixes_of(&holder.subscriber, Some(Some(session)))
            .into_iter()
            .filter(|prefix| !prefixes.contains(prefix))
            .collect();
        self.release(&given_up, now, changed)
    }

    /// Ends the bindings of `prefixes`.
    fn release(
        &mut self,
        prefixes: &[IpNet],
        now: SystemTime,
        changed: &mut Vec<IpNet>,
    ) -> Result<(), StoreError> {
        for prefix in prefixes {
            self.journal
                .store
                .unbind(*prefix, now)
                .inspect_err(|_| self.journal.counters.store_errors += 1)?;
            self.identities.unbind(prefix);
            changed.push(*prefix);
        }
        Ok(())
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
    /// The identity that held `host` at `at`, from the bindings' history: a binding is a
    /// host or wider (see `bound_prefix`), so only those lengths are looked up.
    fn identity_at(&self, host: IpAddr, at: SystemTime) -> Result<Option<String>, StoreError> {
        let (length, _) = self.config.enforcement.host_prefix(&IpNet::from(host));
        let held = self
            .journal
            .store
            .binding_at(host, at, (0..=length).rev())?;
        Ok(held.map(|b| b.subscriber))
    }

    /// The hosts the kernel enforces for the active escalations. An escalation follows the
    /// identity that held its host when it began: to the hosts that identity holds now (none
    /// while it is offline); a host no identity held stays escalated itself. A bound prefix
    /// wider than a host (a delegated /56) is not followed: the override map holds hosts.
    pub(super) fn escalated_hosts(&self) -> anyhow::Result<Vec<IpAddr>> {
        let mut hosts = Vec::new();
        for escalation in self.policy.active_escalations()? {
            match self.identity_at(escalation.host, escalation.started)? {
                None => hosts.push(escalation.host),
                Some(subscriber) => hosts.extend(
                    self.bound_to(&subscriber)
                        .into_iter()
                        .filter(|prefix| {
                            self.config.enforcement.host_prefix(prefix).0 == prefix.prefix_len()
                        })
                        .map(|prefix| prefix.network()),
                ),
            }
        }
        Ok(hosts)
    }

    /// The escalations that count for `host`: its own, and when an identity holds it now,
    /// every escalation of a host while that identity held it (a bot that reconnects with
    /// another address does not start over), oldest first.
    pub(super) fn escalation_history(&self, host: IpAddr) -> anyhow::Result<Vec<Escalation>> {
        let mut history = self.policy.escalations_of(host)?;
        let Some(subscriber) = self
            .identities
            .holder(&self.config.enforcement.host_of(host))
            .map(|h| h.subscriber.clone())
        else {
            return Ok(history);
        };
        let mut hosts: Vec<IpAddr> = self
            .journal
            .store
            .bindings_of(&subscriber)?
            .into_iter()
            .map(|b| b.prefix.network())
            .filter(|other| *other != host)
            .collect();
        hosts.sort_unstable();
        hosts.dedup();
        for other in hosts {
            for escalation in self.policy.escalations_of(other)? {
                if self.identity_at(other, escalation.started)?.as_deref() == Some(&subscriber) {
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
        let Some(holder) = self
            .identities
            .holder(&self.config.enforcement.host_of(host))
        else {
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
