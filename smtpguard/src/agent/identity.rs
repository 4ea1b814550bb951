//! Subscriber identities in the agent: session changes (RADIUS accounting, `smtpguard
//! session`) go to the store first (durable, with their times), to the in-memory bindings
//! next, and to the kernel's exemption map last, through the same one-entry writes as a
//! runtime exemption. A prefix bound to an exempt identity is exempt with the origin
//! `subscriber`; the config's and the runtime exemptions win where both name a prefix.

use std::time::SystemTime;

use ipnet::IpNet;
use smtpguard_common::{Origin, PrefixOrigin};
use tracing::{info, warn};

use super::{reconcile::EntryList, state::AgentState};
use crate::{
    identity::{ChangeKind, Holder, SessionChange},
    policy::DesiredPolicy,
    store::StoreError,
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

/// Whether `prefix` lies in a subscriber range: elsewhere an exemption changes nothing and
/// only takes a map entry.
fn in_subscriber_space(desired: &DesiredPolicy, prefix: &IpNet) -> bool {
    desired
        .subscribers
        .keys()
        .any(|range| range.contains(prefix))
}
