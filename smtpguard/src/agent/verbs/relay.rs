//! `relay add | rm | list`: runtime relays, beside the config file's and the resolved relay
//! hostnames.

use std::time::SystemTime;

use ipnet::IpNet;
use serde_json::{Value, json};
use tracing::info;

use super::{Failure, Outcome, refuse_unless_forced};
use crate::{
    agent::{api::ErrorKind, reconcile::EntryList, state::AgentState},
    config::danger::{self, Danger},
    input,
    store::NewRelay,
};

impl AgentState {
    pub(super) fn relay_add(
        &mut self,
        prefix: &str,
        note: Option<String>,
        force: bool,
        who: &str,
    ) -> Outcome {
        let prefix = input::parse_prefix("prefix", prefix)?;
        let dangers: Vec<Danger> = danger::relay_danger(prefix).into_iter().collect();
        refuse_unless_forced(&dangers, force, "relay add")?;
        if self.config.relays.iter().any(|r| r.prefix == prefix) {
            return Err(Failure::new(
                ErrorKind::Conflict,
                format!(
                    "{prefix} is already a relay in the config file {}",
                    self.config_path.display()
                ),
            ));
        }
        self.refuse_overlap(prefix)?;
        let relay = self
            .policy
            .add_relay(
                &NewRelay {
                    prefix,
                    note,
                    who: who.to_owned(),
                },
                SystemTime::now(),
            )
            .inspect_err(|e| self.count_policy_error(e))?;
        self.install_or_undo(EntryList::Relays, prefix, |policy| {
            let _ = policy.remove_relay(prefix, who, SystemTime::now());
        })?;
        info!(%prefix, who, "relay added");
        self.record_forced(&dangers, &prefix.to_string(), who);
        Ok(json!(relay))
    }

    /// The config file's rule, at run time too: no two relays overlap (one would hide the
    /// other, and removing the wider one would quietly leave the narrower in force).
    fn refuse_overlap(&self, prefix: IpNet) -> Result<(), Failure> {
        let configured = self.config.relays.iter().map(|r| {
            (
                r.prefix,
                format!("in the config file {}", self.config_path.display()),
            )
        });
        let runtime = self
            .policy
            .relays()?
            .into_iter()
            .map(|r| (r.prefix, "added at run time".to_owned()));
        for (relay, origin) in configured.chain(runtime) {
            // An equal runtime prefix is the store's duplicate, with its own message.
            if relay != prefix && (relay.contains(&prefix) || prefix.contains(&relay)) {
                return Err(Failure::new(
                    ErrorKind::Conflict,
                    format!(
                        "{prefix} overlaps the relay {relay} ({origin}); expected relays that do \
                         not overlap, so keep only one of them"
                    ),
                ));
            }
        }
        Ok(())
    }

    pub(super) fn relay_remove(&mut self, prefix: &str, who: &str) -> Outcome {
        let prefix = input::parse_prefix("prefix", prefix)?;
        if self.config.relays.iter().any(|r| r.prefix == prefix) {
            return Err(Failure::new(
                ErrorKind::BadRequest,
                format!(
                    "{prefix} is a relay in the config file {}; remove it there and reload",
                    self.config_path.display()
                ),
            ));
        }
        let removed = self
            .policy
            .remove_relay(prefix, who, SystemTime::now())
            .inspect_err(|e| self.count_policy_error(e))?;
        self.remove_or_fail(EntryList::Relays, prefix)?;
        info!(%prefix, who, "relay removed");
        Ok(json!(removed))
    }

    pub(super) fn relay_list(&mut self) -> Outcome {
        let mut rows: Vec<Value> = self
            .config
            .relays
            .iter()
            .map(|r| json!({"prefix": r.prefix.to_string(), "source": "config"}))
            .collect();
        for (name, host) in self.resolved.hosts() {
            let unresolved = host.unresolved.as_ref().map(|u| {
                format!(
                    "unresolved since {}: {}",
                    humantime::format_rfc3339_seconds(u.since),
                    u.error
                )
            });
            for address in &host.addresses {
                rows.push(json!({"prefix": IpNet::from(*address).to_string(), "source": "dns", "host": name, "note": unresolved}));
            }
            // A name without any address is listed all the same: nothing is allowlisted for
            // it, which is worth seeing.
            if host.addresses.is_empty() {
                rows.push(
                    json!({"prefix": null, "source": "dns", "host": name, "note": unresolved}),
                );
            }
        }
        for relay in self.policy.relays()? {
            let mut row = json!(relay);
            row["source"] = json!(self.runtime_source());
            rows.push(row);
        }
        Ok(Value::Array(rows))
    }
}
