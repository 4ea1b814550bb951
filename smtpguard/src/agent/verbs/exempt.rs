//! `exempt add | rm | list`: runtime exemptions, on top of the config file's.

use std::time::SystemTime;

use serde_json::{Value, json};
use tracing::info;

use super::{Failure, Outcome, refuse_unless_forced};
use crate::{
    agent::{
        api::ErrorKind,
        reconcile::EntryList,
        state::{AgentState, list},
    },
    config::danger,
    input,
    store::NewExemption,
};

impl AgentState {
    pub(super) fn exempt_add(
        &mut self,
        prefix: &str,
        reason: String,
        ticket: Option<String>,
        expires: Option<&str>,
        force: bool,
        who: &str,
    ) -> Outcome {
        let prefix = input::parse_prefix("prefix", prefix)?;
        if !self
            .config
            .subscribers
            .iter()
            .any(|range| range.prefix.contains(&prefix))
        {
            return Err(Failure::new(
                ErrorKind::BadRequest,
                format!(
                    "{prefix} is outside every subscriber range ({}); an exemption there would \
                     change nothing",
                    list(self.config.subscribers.iter().map(|s| s.prefix))
                ),
            ));
        }
        if self.config.exemptions.iter().any(|e| e.prefix == prefix) {
            return Err(Failure::new(
                ErrorKind::Conflict,
                format!(
                    "{prefix} is already exempt in the config file {}",
                    self.config_path.display()
                ),
            ));
        }
        let dangers = danger::exemption_dangers(&self.config, prefix);
        refuse_unless_forced(&dangers, force, "exempt add")?;
        let expires = expires
            .map(|at| input::parse_time("expires", at))
            .transpose()?;
        let exemption = self
            .policy
            .add_exemption(
                &NewExemption {
                    prefix,
                    reason,
                    ticket,
                    who: who.to_owned(),
                    expires,
                },
                SystemTime::now(),
            )
            .inspect_err(|e| self.count_policy_error(e))?;
        if let Err(error) = self.add_entry(EntryList::Exemptions, prefix) {
            // The map refused it (full?): take it back out of the source so the two agree.
            let _ = self.policy.remove_exemption(prefix, who, SystemTime::now());
            return Err(Failure::new(
                ErrorKind::Failed,
                format!("the kernel map did not take {prefix}: {error:#}; nothing was changed"),
            ));
        }
        info!(%prefix, who, "exemption added");
        self.record_forced(&dangers, &prefix.to_string(), who);
        Ok(json!(exemption))
    }

    pub(super) fn exempt_remove(&mut self, prefix: &str, who: &str) -> Outcome {
        let prefix = input::parse_prefix("prefix", prefix)?;
        if self.config.exemptions.iter().any(|e| e.prefix == prefix) {
            return Err(Failure::new(
                ErrorKind::BadRequest,
                format!(
                    "{prefix} is exempt in the config file {}; remove it there and reload",
                    self.config_path.display()
                ),
            ));
        }
        let removed = self
            .policy
            .remove_exemption(prefix, who, SystemTime::now())
            .inspect_err(|e| self.count_policy_error(e))?;
        self.remove_or_fail(EntryList::Exemptions, prefix)?;
        info!(%prefix, who, "exemption removed");
        Ok(json!(removed))
    }

    pub(super) fn exempt_list(&mut self) -> Outcome {
        let mut rows: Vec<Value> = self
            .config
            .exemptions
            .iter()
            .map(
                |e| json!({"prefix": e.prefix.to_string(), "reason": e.reason, "source": "config"}),
            )
            .collect();
        for exemption in self.policy.exemptions()? {
            let mut row = json!(exemption);
            row["source"] = json!("runtime");
            rows.push(row);
        }
        Ok(Value::Array(rows))
    }
}
