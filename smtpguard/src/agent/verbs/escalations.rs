//! `escalations` and `escalations lift HOST`.

use serde_json::json;

use super::{Failure, Outcome};
use crate::{agent::state::AgentState, input};

impl AgentState {
    /// The active escalations, each with the identity it follows (null for a host no
    /// identity held).
    pub(super) fn escalation_list(&mut self) -> Outcome {
        let active = self.policy.active_escalations().map_err(Failure::from)?;
        Ok(active
            .iter()
            .map(|escalation| {
                let mut row = json!(escalation);
                row["subscriber"] = json!(self.escalation_identity(escalation));
                row
            })
            .collect())
    }

    pub(super) fn escalation_lift(&mut self, host: &str, who: &str) -> Outcome {
        // Any address of an escalated host lifts it (an IPv6 host is its /64).
        let host = input::parse_address("host", host)?;
        let host = self.config.enforcement.host_of(host).network();
        // The address an escalated customer holds now lifts the customer's escalation.
        let host = self.escalation_host(host).map_err(super::failed)?;
        self.end_escalation(host, who, false)
    }
}
