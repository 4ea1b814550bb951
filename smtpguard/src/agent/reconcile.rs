//! A prefix's way into the kernel: the desired policy (config, policy source, resolved relay
//! hostnames) reconciled into the maps by difference, or one runtime entry written alone.

use ipnet::IpNet;
use smtpguard_common::{Origin, PrefixOrigin};

use super::state::AgentState;
use crate::{
    dataplane::ReconcileReport,
    policy::{PolicyError, ResolvedRelays},
};

/// The prefix lists that change one entry at a time at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum EntryList {
    Relays,
    Exemptions,
}

impl AgentState {
    /// Makes the kernel maps hold the config, the policy source and the resolved relays.
    pub(super) fn reconcile(&mut self) -> anyhow::Result<ReconcileReport> {
        let mut desired = self
            .policy
            .desired(&self.config, &self.resolved)
            .inspect_err(|_| self.journal.counters.store_errors += 1)?;
        // The exempt identities too: in fleet mode another gateway may have changed them.
        let exempt = self
            .policy
            .subscriber_exemptions()
            .inspect_err(|_| self.journal.counters.store_errors += 1)?;
        self.identities
            .set_exempt_identities(exempt.into_iter().map(|e| e.subscriber));
        self.add_bound_exemptions(&mut desired);
        let report = self
            .dataplane
            .policy_maps()
            .and_then(|mut maps| maps.reconcile(&desired))
            .inspect_err(|_| self.journal.counters.reconcile_errors += 1)?;
        let hosts_changed = desired.enforcement.host_mask != self.desired.enforcement.host_mask;
        self.desired = desired;
        if hosts_changed {
            // Escalations are keyed by host: under another host prefix, each is keyed anew.
            self.restore_escalations()?;
        }
        Ok(report)
    }

    /// Counts a failure of the policy source itself; a refused change (a duplicate, a bad
    /// field) is the caller's and is not counted.
    pub(super) fn count_policy_error(&mut self, error: &PolicyError) {
        if error.rejection().is_none() {
            self.journal.counters.store_errors += 1;
        }
    }

    fn entries(&self, list: EntryList) -> &std::collections::BTreeMap<IpNet, PrefixOrigin> {
        match list {
            EntryList::Relays => &self.desired.relays,
            EntryList::Exemptions => &self.desired.exemptions,
        }
    }

    /// Adds one runtime relay or exemption, unless the config (which wins) or DNS already has
    /// it. A subscriber binding's exemption of the prefix becomes the runtime one, which
    /// outlives the binding.
    pub(super) fn add_entry(&mut self, list: EntryList, prefix: IpNet) -> anyhow::Result<()> {
        let bound = PrefixOrigin::new(Origin::Subscriber);
        if self
            .entries(list)
            .get(&prefix)
            .is_some_and(|origin| *origin != bound)
        {
            return Ok(());
        }
        self.write_entry(list, prefix, Some(PrefixOrigin::new(Origin::Runtime)))
    }

    /// Takes a runtime relay or exemption out again, unless the config still has it; what DNS
    /// or a subscriber binding still has stays with that origin.
    pub(super) fn remove_entry(&mut self, list: EntryList, prefix: IpNet) -> anyhow::Result<()> {
        if self.entries(list).get(&prefix) != Some(&PrefixOrigin::new(Origin::Runtime)) {
            return Ok(());
        }
        let left = match list {
            EntryList::Relays => self
                .resolved
                .addresses()
                .any(|a| IpNet::from(*a) == prefix)
                .then(|| PrefixOrigin::new(Origin::Dns)),
            EntryList::Exemptions => self.bound_exemption(&prefix),
        };
        self.write_entry(list, prefix, left)
    }

    /// Sets (`Some`) or removes (`None`) one entry in the kernel maps and the desired policy.
    /// The maps hold exactly `desired` after every change, so writing what the one entry
    /// changes keeps them equal: an `exempt add` costs a map write or a few, however many
    /// entries there are.
    pub(super) fn write_entry(
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
            .inspect_err(|_| self.journal.counters.reconcile_errors += 1)?;
        Ok(())
    }

    /// Installs freshly resolved relay addresses (resolved outside the lock).
    pub fn update_relays(&mut self, resolved: ResolvedRelays) -> anyhow::Result<()> {
        if resolved != self.resolved {
            self.resolved = resolved;
            self.reconcile()?;
        }
        Ok(())
    }

    pub fn resolved(&self) -> &ResolvedRelays {
        &self.resolved
    }
}
