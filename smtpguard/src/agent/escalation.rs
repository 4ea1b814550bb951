//! Bots and their escalations: a host classified as a bot is recorded and announced, and with
//! `[report] escalate`, a bot in a monitor-mode range is enforced for itself alone until its
//! escalation runs out or is lifted.

use std::{collections::HashSet, net::IpAddr, time::SystemTime};

use serde_json::{Value, json};
use tracing::{info, warn};

use super::{
    events::{self, Event},
    state::AgentState,
    verbs::{Failure, failed},
};
use crate::{report::ReportRow, store::SYSTEM_WHO};

impl AgentState {
    /// Makes the kernel's escalation map hold exactly the policy's active escalations, at
    /// the hosts their identities hold now (see `escalated_hosts`).
    pub(super) fn restore_escalations(&mut self) -> anyhow::Result<()> {
        let active = self.escalated_hosts()?;
        self.dataplane.sync_overrides(&active)?;
        Ok(())
    }

    /// Acts on the bots of the last bot window (see `Snapshotter::recent_bots`): a new bot is
    /// recorded, announced and handed to `on_bot`; with `escalate`, a bot in a monitor-mode
    /// range is switched to enforcement for itself alone.
    pub fn record_bots(&mut self, bots: Vec<ReportRow>, now: SystemTime) -> anyhow::Result<()> {
        let report = self.config.report.clone();
        let from = now
            .checked_sub(report.bot_window)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        // A bot is recorded once per bot window: a host, or the customer that holds it under
        // any of its addresses (a bot that reconnects is not new).
        let mut known_hosts = HashSet::new();
        let mut known_customers = HashSet::new();
        for event in self.journal.store.bot_events(from)? {
            known_hosts.insert(event.host);
            known_customers.extend(event.subscriber);
        }
        for mut row in bots {
            // A host row's first address is the one the kernel keys the host by.
            let host = row.host.prefix().network();
            let reason = row.class_reason.to_string();
            row.subscriber_id = self.identity_at(host, now)?;
            let known = known_hosts.contains(&host)
                || row
                    .subscriber_id
                    .as_ref()
                    .is_some_and(|customer| known_customers.contains(customer));
            if !known {
                let subscriber = row.subscriber_id.as_deref();
                self.journal
                    .store
                    .record_bot(host, now, &reason, subscriber)?;
                self.journal.counters.bots_classified += 1;
                info!(%host, reason, subscriber, "new bot");
                if let Some(program) = &report.on_bot {
                    events::run_hook(program, &row);
                }
                events::publish(
                    &self.events,
                    Event::Bot {
                        at: now,
                        row: row.clone(),
                    },
                );
            }
            if report.escalate && row.mode == Some("monitor") {
                self.escalate(host, now, &reason)?;
            }
        }
        Ok(())
    }

    /// Escalates `host` unless it already is: for `escalate_for`, doubled for each reoffense
    /// (a bot again at least `reoffense_gap` after its last escalation began).
    fn escalate(&mut self, host: IpAddr, now: SystemTime, reason: &str) -> anyhow::Result<()> {
        let history = self.escalation_history(host)?;
        if history.iter().any(|e| e.ended.is_none()) {
            return Ok(());
        }
        // A lifted or expired escalation is not renewed from the activity that caused it:
        // only once a whole bot window has passed since it ended.
        let window = self.config.report.bot_window;
        if history
            .last()
            .and_then(|last| last.ended)
            .is_some_and(|ended| now.duration_since(ended).unwrap_or_default() < window)
        {
            return Ok(());
        }
        let gap = self.config.report.reoffense_gap;
        let level = match history.last() {
            None => 0,
            Some(last) if now.duration_since(last.started).unwrap_or_default() >= gap => {
                last.level + 1
            }
            Some(last) => last.level,
        };
        let length = self
            .config
            .report
            .escalate_for
            .saturating_mul(1 << level.min(16));
        let until = now
            .checked_add(length)
            .unwrap_or(now + self.config.report.escalate_for);
        let escalation = self.policy.escalate(host, level, now, until, reason)?;
        if let Err(error) = self.restore_escalations() {
            self.policy.end_escalation(host, SYSTEM_WHO, false, now)?;
            return Err(error);
        }
        warn!(%host, level, until = %humantime::format_rfc3339_seconds(until), "escalated to enforcement");
        events::publish(
            &self.events,
            Event::Escalated {
                at: now,
                host,
                level: escalation.level,
                until,
            },
        );
        Ok(())
    }

    /// Ends the escalation of `host`: lifted by `who`, or expired.
    pub(super) fn end_escalation(
        &mut self,
        host: IpAddr,
        who: &str,
        expired: bool,
    ) -> Result<Value, Failure> {
        let now = SystemTime::now();
        let ended = self.policy.end_escalation(host, who, expired, now)?;
        self.restore_escalations().map_err(failed)?;
        info!(%host, who, expired, "escalation ended");
        events::publish(
            &self.events,
            Event::EscalationEnded {
                at: now,
                host,
                by: ended.ended_by.clone().unwrap_or_default(),
                expired,
            },
        );
        Ok(json!(ended))
    }
}
