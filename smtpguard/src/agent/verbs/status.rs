//! `status`: what is enforced where, the packet counters and the maps' fill.

use std::time::Duration;

use serde_json::{Value, json};
use smtpguard_common::Reason;

use super::{Outcome, failed};
use crate::agent::{enforcement::attach_name, state::AgentState};

impl AgentState {
    pub(super) fn status(&mut self) -> Outcome {
        self.enforcement
            .refresh_unlisted_tunnels(&self.config.agent);
        let counters = self.dataplane.counters().map_err(failed)?;
        let attachments = self.enforcement.live_attachments().map_err(failed)?;
        let reasons: serde_json::Map<String, Value> = Reason::ALL
            .into_iter()
            .map(|r| (r.name().to_owned(), json!(counters[r as usize])))
            .collect();
        let maps: Vec<Value> = self
            .map_fill()
            .map_err(failed)?
            .into_iter()
            .map(|(name, entries, capacity)| json!({"map": name, "entries": entries, "capacity": capacity}))
            .collect();
        let uptime = self.started.elapsed().unwrap_or(Duration::ZERO).as_secs();
        Ok(json!({
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_seconds": uptime,
            "config": self.config_path.display().to_string(),
            "attach": attach_name(&self.config.agent),
            "interfaces": self.config.agent.interfaces,
            "attached": attachments.iter().map(|a| json!({"interface": a.interface, "attach": a.kind})).collect::<Vec<_>>(),
            "detached": self.enforcement.detached_interfaces(),
            "unlisted_tunnels": self.enforcement.unlisted_tunnels().iter().map(|t| json!({"interface": t.interface, "kind": t.kind, "warning": t.to_string()})).collect::<Vec<_>>(),
            "enforced_ports": self.config.enforcement.ports,
            "packets": reasons,
            "maps": maps,
            "exemptions": self.desired.exemptions.len(),
            "relays": self.desired.relays.len(),
            "pin_dir": self.enforcement.pins().root().display().to_string(),
            "state_dir": self.config.agent.state_dir.display().to_string(),
        }))
    }
}
