//! `escalations` and `escalations lift HOST`.

use serde_json::json;

use super::{Failure, Outcome};
use crate::{agent::state::AgentState, input};

impl AgentState {
    pub(super) fn escalation_list(&mut self) -> Outcome {
        self.policy
            .active_escalations()
            .map(|e| json!(e))
            .map_err(Failure::from)
    }

    pub(super) fn escalation_lift(&mut self, host: &str, who: &str) -> Outcome {
        // Any address of an escalated host lifts it (an IPv6 host is its /64).
        let host = input::parse_address("host", host)?;
        let host = self.config.enforcement.host_of(host).network();
        self.end_escalation(host, who, false)
    }
}
