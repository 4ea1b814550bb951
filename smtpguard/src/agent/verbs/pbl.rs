//! `pbl export`: the subscriber ranges minus the exempted and relay ranges, from the running
//! config and the runtime entries, so that it needs only the socket.

use ipnet::IpNet;
use serde_json::json;

use super::Outcome;
use crate::{agent::state::AgentState, report::pbl};

impl AgentState {
    pub(super) fn pbl_export(&mut self) -> Outcome {
        let config = &self.config;
        let mut holes: Vec<IpNet> = config.exemptions.iter().map(|e| e.prefix).collect();
        holes.extend(config.relays.iter().map(|r| r.prefix));
        holes.extend(self.policy.exemptions()?.into_iter().map(|e| e.prefix));
        holes.extend(self.policy.relays()?.into_iter().map(|r| r.prefix));
        let ranges: Vec<IpNet> = config.subscribers.iter().map(|s| s.prefix).collect();
        let prefixes: Vec<String> = pbl::subtract(&ranges, &holes)
            .iter()
            .map(IpNet::to_string)
            .collect();
        Ok(json!({ "prefixes": prefixes }))
    }
}
