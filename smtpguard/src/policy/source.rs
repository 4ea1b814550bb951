//! Where the runtime part of the policy lives and how it changes: the seam between the agent
//! and its policy's storage. Today that is the local SQLite store ([`LocalStore`]); in fleet
//! mode it is etcd (list + watch, transactions), behind the same trait.
//!
//! Every change a source accepts is durable when the method returns, together with its audit
//! entry: the agent writes the kernel maps only after that, and answers the CLI last.

use std::{net::IpAddr, path::Path, time::SystemTime};

use ipnet::IpNet;
use smtpguard_common::Origin;

use super::{DesiredPolicy, ResolvedRelays};
use crate::{
    config::Config,
    store::{
        Escalation, Exemption, ExemptionUpdate, NewExemption, NewRelay, NewSubscriberExemption,
        RuntimeRelay, Store, StoreError, SubscriberExemption,
    },
};

/// Why a source refused or failed a change.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The local store refused the change or could not carry it out.
    #[error(transparent)]
    Local(#[from] StoreError),
    /// etcd refused the change or could not be reached (fleet mode).
    #[error(transparent)]
    Fleet(#[from] super::etcd::FleetError),
}

/// A change the source refused as the caller's mistake, as opposed to the source failing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// A field is wrong (host bits, empty reason, control characters, an expiry in the past).
    Invalid,
    /// The entry is there already.
    Duplicate,
    /// There is no such entry.
    NotFound,
    /// Another gateway changed the entry since this one saw it (fleet mode).
    ChangedMeanwhile,
}

impl PolicyError {
    /// `Some` when the caller asked for something the source refuses; `None` when the source
    /// itself failed (full, read-only, unreachable), which counts as a store error.
    pub fn rejection(&self) -> Option<Rejection> {
        match self {
            PolicyError::Local(error) => match error {
                StoreError::Duplicate { .. } | StoreError::DuplicateSubscriber { .. } => {
                    Some(Rejection::Duplicate)
                }
                StoreError::NotFound { .. } | StoreError::NoSubscriberExemption { .. } => {
                    Some(Rejection::NotFound)
                }
                StoreError::HostBits { .. }
                | StoreError::BoundHostBits { .. }
                | StoreError::EmptySubscriber
                | StoreError::SubscriberTooLong { .. }
                | StoreError::EmptySubscriberReason { .. }
                | StoreError::EmptyReason { .. }
                | StoreError::ControlCharacter { .. }
                | StoreError::TooLong { .. }
                | StoreError::ExpiryNotInFuture { .. }
                | StoreError::SubscriberExpiryNotInFuture { .. }
                | StoreError::TimeOutOfRange { .. } => Some(Rejection::Invalid),
                _ => None,
            },
            PolicyError::Fleet(error) => match error {
                super::etcd::FleetError::ChangedMeanwhile { .. }
                | super::etcd::FleetError::SubscriberChangedMeanwhile { .. } => {
                    Some(Rejection::ChangedMeanwhile)
                }
                _ => None,
            },
        }
    }

    /// The source cannot be reached (etcd down): the CLI says so with exit code 2.
    pub fn unavailable(&self) -> bool {
        matches!(
            self,
            PolicyError::Fleet(super::etcd::FleetError::Unreachable { .. })
        )
    }
}

pub type PolicyResult<T> = Result<T, PolicyError>;

/// The runtime policy: what is exempt, relayed and escalated on top of the configuration
/// file, and the changes to it. Each change is recorded in the audit trail by the source, in
/// the same transaction, with `who` made it.
pub trait PolicySource: Send {
    /// Runtime exemptions, in prefix order.
    fn exemptions(&self) -> PolicyResult<Vec<Exemption>>;
    fn add_exemption(&mut self, new: &NewExemption, now: SystemTime) -> PolicyResult<Exemption>;
    fn remove_exemption(
        &mut self,
        prefix: IpNet,
        who: &str,
        now: SystemTime,
    ) -> PolicyResult<Exemption>;
    /// Changes an exemption's reason, ticket or expiry in place: it never lapses meanwhile.
    /// Returns it as it was and as it is.
    fn update_exemption(
        &mut self,
        prefix: IpNet,
        update: &ExemptionUpdate,
        who: &str,
        now: SystemTime,
    ) -> PolicyResult<(Exemption, Exemption)>;
    /// Removes the exemptions whose expiry is at or before `now` and returns them.
    fn expire_exemptions(&mut self, now: SystemTime) -> PolicyResult<Vec<Exemption>>;
    /// When the next exemption runs out.
    fn next_exemption_expiry(&self) -> PolicyResult<Option<SystemTime>>;

    /// Runtime relays, in prefix order.
    fn relays(&self) -> PolicyResult<Vec<RuntimeRelay>>;
    fn add_relay(&mut self, new: &NewRelay, now: SystemTime) -> PolicyResult<RuntimeRelay>;
    fn remove_relay(
        &mut self,
        prefix: IpNet,
        who: &str,
        now: SystemTime,
    ) -> PolicyResult<RuntimeRelay>;

    /// Subscriber identities exempt whatever address they hold, by identity.
    fn subscriber_exemptions(&self) -> PolicyResult<Vec<SubscriberExemption>>;
    fn add_subscriber_exemption(
        &mut self,
        new: &NewSubscriberExemption,
        now: SystemTime,
    ) -> PolicyResult<SubscriberExemption>;
    fn remove_subscriber_exemption(
        &mut self,
        subscriber: &str,
        who: &str,
        now: SystemTime,
    ) -> PolicyResult<SubscriberExemption>;
    /// Removes the identity exemptions that ran out by `now` and returns them (what
    /// `next_exemption_expiry` counts too).
    fn expire_subscriber_exemptions(
        &mut self,
        now: SystemTime,
    ) -> PolicyResult<Vec<SubscriberExemption>>;

    /// Hosts of monitor-mode ranges enforced for themselves (bots), oldest first.
    fn active_escalations(&self) -> PolicyResult<Vec<Escalation>>;
    /// Every escalation a host in `prefix` had (a host itself, or the hosts of a delegated
    /// prefix), oldest first: the level of the next one depends on them.
    fn escalations_in(&self, prefix: IpNet) -> PolicyResult<Vec<Escalation>>;
    fn escalate(
        &mut self,
        host: IpAddr,
        level: u32,
        now: SystemTime,
        until: SystemTime,
        reason: &str,
    ) -> PolicyResult<Escalation>;
    /// Ends the active escalation of `host`: lifted by `who`, or `expired`.
    fn end_escalation(
        &mut self,
        host: IpAddr,
        who: &str,
        expired: bool,
        now: SystemTime,
    ) -> PolicyResult<Escalation>;
    fn next_escalation_end(&self) -> PolicyResult<Option<SystemTime>>;

    /// The whole desired policy: `config`'s part, this source's exemptions and relays, and
    /// the addresses of the relay hostnames. The file wins where both name a prefix.
    fn desired(&self, config: &Config, resolved: &ResolvedRelays) -> PolicyResult<DesiredPolicy> {
        let mut desired = DesiredPolicy::from_config(config);
        for exemption in self.exemptions()? {
            desired.add_exemption(exemption.prefix, Origin::Runtime);
        }
        for relay in self.relays()? {
            desired.add_relay(relay.prefix, Origin::Runtime);
        }
        for address in resolved.addresses() {
            desired.add_relay(IpNet::from(*address), Origin::Dns);
        }
        Ok(desired)
    }
}

/// The policy kept in this gateway's own SQLite store (`state_dir/smtpguard.db`), on a
/// connection of its own.
#[derive(Debug)]
pub struct LocalStore {
    store: Store,
}

impl LocalStore {
    pub fn open(state_dir: &Path) -> PolicyResult<Self> {
        Ok(Self {
            store: Store::open(state_dir)?,
        })
    }
}

impl PolicySource for LocalStore {
    fn exemptions(&self) -> PolicyResult<Vec<Exemption>> {
        Ok(self.store.exemptions()?)
    }

    fn add_exemption(&mut self, new: &NewExemption, now: SystemTime) -> PolicyResult<Exemption> {
        Ok(self.store.add_exemption(new, now)?)
    }

    fn remove_exemption(
        &mut self,
        prefix: IpNet,
        who: &str,
        now: SystemTime,
    ) -> PolicyResult<Exemption> {
        Ok(self.store.remove_exemption(prefix, who, now)?)
    }

    fn update_exemption(
        &mut self,
        prefix: IpNet,
        update: &ExemptionUpdate,
        who: &str,
        now: SystemTime,
    ) -> PolicyResult<(Exemption, Exemption)> {
        Ok(self.store.update_exemption(prefix, update, who, now)?)
    }

    fn expire_exemptions(&mut self, now: SystemTime) -> PolicyResult<Vec<Exemption>> {
        Ok(self.store.expire(now)?)
    }

    fn next_exemption_expiry(&self) -> PolicyResult<Option<SystemTime>> {
        Ok(self.store.next_expiry()?)
    }

    fn relays(&self) -> PolicyResult<Vec<RuntimeRelay>> {
        Ok(self.store.relays()?)
    }

    fn add_relay(&mut self, new: &NewRelay, now: SystemTime) -> PolicyResult<RuntimeRelay> {
        Ok(self.store.add_relay(new, now)?)
    }

    fn remove_relay(
        &mut self,
        prefix: IpNet,
        who: &str,
        now: SystemTime,
    ) -> PolicyResult<RuntimeRelay> {
        Ok(self.store.remove_relay(prefix, who, now)?)
    }

    fn subscriber_exemptions(&self) -> PolicyResult<Vec<SubscriberExemption>> {
        Ok(self.store.subscriber_exemptions()?)
    }

    fn add_subscriber_exemption(
        &mut self,
        new: &NewSubscriberExemption,
        now: SystemTime,
    ) -> PolicyResult<SubscriberExemption> {
        Ok(self.store.add_subscriber_exemption(new, now)?)
    }

    fn remove_subscriber_exemption(
        &mut self,
        subscriber: &str,
        who: &str,
        now: SystemTime,
    ) -> PolicyResult<SubscriberExemption> {
        Ok(self
            .store
            .remove_subscriber_exemption(subscriber, who, now)?)
    }

    fn expire_subscriber_exemptions(
        &mut self,
        now: SystemTime,
    ) -> PolicyResult<Vec<SubscriberExemption>> {
        Ok(self.store.expire_subscriber_exemptions(now)?)
    }

    fn active_escalations(&self) -> PolicyResult<Vec<Escalation>> {
        Ok(self.store.active_escalations()?)
    }

    fn escalations_in(&self, prefix: IpNet) -> PolicyResult<Vec<Escalation>> {
        Ok(self.store.escalations_in(prefix)?)
    }

    fn escalate(
        &mut self,
        host: IpAddr,
        level: u32,
        now: SystemTime,
        until: SystemTime,
        reason: &str,
    ) -> PolicyResult<Escalation> {
        Ok(self.store.escalate(host, level, now, until, reason)?)
    }

    fn end_escalation(
        &mut self,
        host: IpAddr,
        who: &str,
        expired: bool,
        now: SystemTime,
    ) -> PolicyResult<Escalation> {
        Ok(self.store.end_escalation(host, who, expired, now)?)
    }

    fn next_escalation_end(&self) -> PolicyResult<Option<SystemTime>> {
        Ok(self.store.next_escalation_end()?)
    }
}
