//! Expiry: exemptions (of addresses and of identities) and escalations that ran out leave
//! the kernel map within a second.

use std::time::SystemTime;

use tracing::info;

use super::{reconcile::EntryList, state::AgentState};
use crate::store::SYSTEM_WHO;

impl AgentState {
    /// Removes expired exemptions and ends expired escalations.
    pub fn expire(&mut self) -> anyhow::Result<()> {
        let now = SystemTime::now();
        for escalation in self.policy.active_escalations()? {
            if escalation.until <= now {
                self.end_escalation(escalation.host, SYSTEM_WHO, true)
                    .map_err(|failure| anyhow::anyhow!(failure.message))?;
            }
        }
        let expired = self
            .policy
            .expire_exemptions(SystemTime::now())
            .inspect_err(|_| self.journal.counters.store_errors += 1)?;
        for exemption in expired {
            self.remove_entry(EntryList::Exemptions, exemption.prefix)?;
            info!(prefix = %exemption.prefix, "exemption expired");
        }
        let expired = self
            .policy
            .expire_subscriber_exemptions(now)
            .inspect_err(|_| self.journal.counters.store_errors += 1)?;
        for exemption in expired {
            self.set_subscriber_exempt(&exemption.subscriber, false);
            info!(
                subscriber = exemption.subscriber,
                "subscriber exemption expired"
            );
        }
        Ok(())
    }

    /// When the next exemption or escalation runs out, so the agent can act then.
    pub fn next_expiry(&self) -> Option<SystemTime> {
        let exemption = self.policy.next_exemption_expiry().ok().flatten();
        let escalation = self.policy.next_escalation_end().ok().flatten();
        exemption.into_iter().chain(escalation).min()
    }
}
