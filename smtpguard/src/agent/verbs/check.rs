//! `check SRC DST [--port P]`: the live decision, rule by rule, confirmed against the kernel
//! maps.

use std::collections::BTreeMap;

use ipnet::IpNet;
use serde_json::json;
use smtpguard_common::{Origin, PrefixOrigin, Reason};

use super::{Failure, Outcome, failed};
use crate::{
    agent::{api::ErrorKind, state::AgentState},
    config::EnforceAction,
    input,
    policy::most_specific,
};

impl AgentState {
    /// Explains what the live policy does with TCP from `src` to `dst:port`, rule by rule, and
    /// confirms each match against the kernel maps.
    pub(super) fn check(&mut self, src: &str, dst: &str, port: u16) -> Outcome {
        let src = input::parse_address("source", src)?;
        let dst = input::parse_address("destination", dst)?;
        if src.is_ipv4() != dst.is_ipv4() {
            return Err(Failure::new(
                ErrorKind::BadRequest,
                format!("{src} and {dst} are of different address families"),
            ));
        }
        let kernel = self
            .dataplane
            .policy_maps()
            .map_err(failed)?
            .lookup(src, dst)
            .map_err(failed)?;
        let subscriber = most_specific(&self.desired.subscribers, src);
        let relay = most_specific(&self.desired.relays, dst);
        let exemption = most_specific(&self.desired.exemptions, src);
        let enforced = self.config.enforcement.ports.contains(&port);
        let mode = subscriber.map(|p| self.desired.subscribers[&p]);
        let action = subscriber
            .and_then(|p| self.config.subscribers.iter().find(|r| r.prefix == p))
            .map_or(EnforceAction::Drop, |range| range.action);
        // An escalated host of a monitor-mode range is enforced with its range's action.
        let host = self.config.enforcement.host_of(src).network();
        let escalated = self
            .policy
            .active_escalations()
            .map_err(failed)?
            .iter()
            .any(|escalation| escalation.host == host);
        let reason = if !enforced {
            Reason::Other
        } else if subscriber.is_none() {
            Reason::NotSubscriber
        } else if relay.is_some() {
            Reason::Relayed
        } else if exemption.is_some() {
            Reason::Exempt
        } else if mode.is_some_and(|m| m.is_monitor()) && !escalated {
            Reason::Monitored
        } else {
            // What a connection attempt (SYN) gets while the host is within its bucket.
            match action {
                EnforceAction::Drop => Reason::Dropped,
                EnforceAction::Reject { .. } => Reason::Rejected,
                EnforceAction::RateLimit { .. } => Reason::WithinRate,
            }
        };
        let action_applies = matches!(
            reason,
            Reason::Dropped | Reason::Rejected | Reason::WithinRate
        );
        let agrees = kernel.subscriber == mode
            && kernel.relay.is_some() == relay.is_some()
            && kernel.exemption.is_some() == exemption.is_some();
        let origin = |map: &BTreeMap<IpNet, PrefixOrigin>, prefix: Option<IpNet>| {
            prefix.map(|p| origin_name(map[&p].origin))
        };
        Ok(json!({
            "src": src.to_string(),
            "dst": dst.to_string(),
            "port": port,
            "verdict": reason.verdict().name(),
            "reason": reason.name(),
            "enforced_port": enforced,
            "enforced_ports": self.config.enforcement.ports,
            "subscriber": subscriber.map(|p| p.to_string()),
            "subscriber_mode": mode.map(|m| if m.is_monitor() { "monitor" } else { "enforce" }),
            "escalated": escalated,
            "action": subscriber.map(|_| action.describe()),
            "action_applies": action_applies,
            "relay": relay.map(|p| p.to_string()),
            "relay_source": origin(&self.desired.relays, relay),
            "exemption": exemption.map(|p| p.to_string()),
            "exemption_source": origin(&self.desired.exemptions, exemption),
            "kernel_agrees": agrees,
        }))
    }
}

fn origin_name(origin: u32) -> &'static str {
    match origin {
        o if o == Origin::Config as u32 => "config",
        o if o == Origin::Runtime as u32 => "runtime",
        o if o == Origin::Dns as u32 => "dns",
        o if o == Origin::Subscriber as u32 => "subscriber",
        _ => "unknown",
    }
}
