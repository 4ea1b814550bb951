//! `status`: what is enforced where, the packet counters and the maps' fill.

use std::time::Duration;

use serde_json::{Value, json};
use smtpguard_common::Reason;

use super::{Outcome, failed};
use crate::{
    agent::{enforcement::attach_name, state::AgentState},
    policy::mode_name,
};

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
        let (by_interface, unattributed) = self
            .enforcement
            .counted_interfaces()
            .counts(&self.dataplane)
            .map_err(failed)?;
        let judged = |counts| -> serde_json::Map<String, Value> {
            crate::metrics::judged_rows(counts)
                .map(|(reason, count)| (reason.to_owned(), json!(count)))
                .collect()
        };
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
            "subscribers": self.config.subscribers.iter().map(|r| json!({"prefix": r.prefix.to_string(), "mode": mode_name(r.mode), "action": r.action.describe()})).collect::<Vec<_>>(),
            "ranges_by_mode": self.ranges_by_mode().into_iter().map(|(mode, ranges)| (mode.to_owned(), json!(ranges))).collect::<serde_json::Map<String, Value>>(),
            "relay_hosts": self.resolved.hosts().map(|(name, host)| json!({"host": name, "addresses": host.addresses, "unresolved": host.unresolved})).collect::<Vec<_>>(),
            "netns": self.config.agent.netns,
            "socket": self.config.agent.socket.display().to_string(),
            "metrics_listen": self.config.agent.metrics_listen.to_string(),
            "packets": reasons,
            "judged_packets_by_interface": by_interface.into_iter().map(|(interface, counts)| (interface, Value::Object(judged(counts)))).collect::<serde_json::Map<String, Value>>(),
            "judged_packets_unattributed": judged(unattributed),
            "maps": maps,
            "unrecorded_host_segments": self.dataplane.unrecorded_hosts().map_err(failed)?,
            "exemptions": self.desired.exemptions.len(),
            "relays": self.desired.relays.len(),
            "pin_dir": self.enforcement.pins().root().display().to_string(),
            "state_dir": self.config.agent.state_dir.display().to_string(),
            "fleet": self.fleet.as_ref().map(|fleet| fleet.status()),
            "fleet_reports": self.shipping_status(),
        }))
    }
}
