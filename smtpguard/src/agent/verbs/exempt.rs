//! `exempt add | rm | list`: runtime exemptions, on top of the config file's.

use std::{net::IpAddr, time::SystemTime};

use ipnet::IpNet;
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
    store::{ExemptionUpdate, NewExemption, NewSubscriberExemption},
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
        let prefix = self.exempted_prefix(prefix)?;
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
        if let Some(problem) = self.config.enforcement.splits_host(&prefix) {
            return Err(Failure::new(ErrorKind::BadRequest, problem));
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
        self.install_or_undo(EntryList::Exemptions, prefix, |policy| {
            let _ = policy.remove_exemption(prefix, who, SystemTime::now());
        })?;
        info!(%prefix, who, "exemption added");
        self.record_forced(&dangers, &prefix.to_string(), who);
        Ok(json!(exemption))
    }

    /// Changes an exemption's reason, ticket or expiry. The kernel map is not touched: the
    /// prefix stays exempt throughout, so the customer is never blocked in between.
    pub(super) fn exempt_update(
        &mut self,
        prefix: &str,
        reason: Option<String>,
        ticket: Option<String>,
        expires: Option<&str>,
        no_expiry: bool,
        who: &str,
    ) -> Outcome {
        let prefix = self.exempted_prefix(prefix)?;
        self.refuse_config_exemption(prefix, "change")?;
        let expires = match (expires, no_expiry) {
            (Some(_), true) => {
                return Err(Failure::new(
                    ErrorKind::BadRequest,
                    "--expires and --no-expiry contradict each other; expected one of them",
                ));
            }
            (Some(at), false) => Some(Some(input::parse_time("expires", at)?)),
            (None, true) => Some(None),
            (None, false) => None,
        };
        if reason.is_none() && ticket.is_none() && expires.is_none() {
            return Err(Failure::new(
                ErrorKind::BadRequest,
                format!(
                    "nothing to change for {prefix}; expected --reason, --ticket, --expires or \
                     --no-expiry"
                ),
            ));
        }
        let update = ExemptionUpdate {
            reason,
            ticket,
            expires,
        };
        let (_, updated) = self
            .policy
            .update_exemption(prefix, &update, who, SystemTime::now())
            .inspect_err(|e| self.count_policy_error(e))?;
        info!(%prefix, who, "exemption updated");
        Ok(json!(updated))
    }

    /// The prefix a request names: a prefix, or a bare address meaning the host it belongs
    /// to (its /32, or its /64 with the default IPv6 host prefix).
    fn exempted_prefix(&self, text: &str) -> Result<IpNet, Failure> {
        match text.parse::<IpAddr>() {
            Ok(address) => Ok(self.config.enforcement.host_of(address)),
            Err(_) => Ok(input::parse_prefix("prefix", text)?),
        }
    }

    /// A config file exemption is changed there, never at run time.
    fn refuse_config_exemption(&self, prefix: IpNet, verb: &str) -> Result<(), Failure> {
        if self.config.exemptions.iter().any(|e| e.prefix == prefix) {
            return Err(Failure::new(
                ErrorKind::BadRequest,
                format!(
                    "{prefix} is exempt in the config file {}; {verb} it there and reload",
                    self.config_path.display()
                ),
            ));
        }
        Ok(())
    }

    pub(super) fn exempt_remove(&mut self, prefix: &str, who: &str) -> Outcome {
        let prefix = self.exempted_prefix(prefix)?;
        self.refuse_config_exemption(prefix, "remove")?;
        let removed = self
            .policy
            .remove_exemption(prefix, who, SystemTime::now())
            .inspect_err(|e| self.count_policy_error(e))?;
        self.remove_or_fail(EntryList::Exemptions, prefix)?;
        info!(%prefix, who, "exemption removed");
        Ok(json!(removed))
    }

    /// Exempts a customer identity: what it holds now is exempt at once, and whatever it is
    /// bound to later while the exemption lasts.
    pub(super) fn subscriber_exempt_add(
        &mut self,
        subscriber: String,
        reason: String,
        ticket: Option<String>,
        expires: Option<&str>,
        who: &str,
    ) -> Outcome {
        let expires = expires
            .map(|at| input::parse_time("expires", at))
            .transpose()?;
        let exemption = self
            .policy
            .add_subscriber_exemption(
                &NewSubscriberExemption {
                    subscriber,
                    reason,
                    ticket,
                    who: who.to_owned(),
                    expires,
                },
                SystemTime::now(),
            )
            .inspect_err(|e| self.count_policy_error(e))?;
        self.set_subscriber_exempt(&exemption.subscriber, true);
        info!(
            subscriber = exemption.subscriber,
            who, "subscriber exempted"
        );
        Ok(self.subscriber_row(json!(exemption), &exemption.subscriber))
    }

    pub(super) fn subscriber_exempt_remove(&mut self, subscriber: &str, who: &str) -> Outcome {
        let removed = self
            .policy
            .remove_subscriber_exemption(subscriber, who, SystemTime::now())
            .inspect_err(|e| self.count_policy_error(e))?;
        self.set_subscriber_exempt(subscriber, false);
        info!(subscriber, who, "subscriber exemption removed");
        Ok(self.subscriber_row(json!(removed), subscriber))
    }

    /// A subscriber exemption's row: its fields, its source and what it holds now.
    fn subscriber_row(&self, mut row: Value, subscriber: &str) -> Value {
        row["source"] = json!(self.runtime_source());
        let bound: Vec<String> = self
            .bound_to(subscriber)
            .iter()
            .map(ToString::to_string)
            .collect();
        row["prefix"] = json!(bound.join(" "));
        row
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
            row["source"] = json!(self.runtime_source());
            rows.push(row);
        }
        for exemption in self.policy.subscriber_exemptions()? {
            let row = self.subscriber_row(json!(exemption), &exemption.subscriber);
            rows.push(row);
        }
        Ok(Value::Array(rows))
    }
}
