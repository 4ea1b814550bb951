//! `session start | stop` and `who`: subscriber bindings made by hand (a BNG without RADIUS)
//! and who held an address when.

use std::time::SystemTime;

use ipnet::IpNet;
use serde_json::json;
use tracing::info;

use super::{Failure, Outcome};
use crate::{
    agent::{api::ErrorKind, state::AgentState},
    identity::{Change, ChangeKind, SessionChange},
    input,
};

impl AgentState {
    /// The prefix a `session` request names, as it is bound: an address is its host.
    fn session_prefix(&self, address: &str) -> Result<IpNet, Failure> {
        Ok(self.bound_prefix(input::parse_prefix_or_host("address", address)?))
    }

    pub(super) fn session_start(
        &mut self,
        subscriber: String,
        address: &str,
        who: &str,
    ) -> Outcome {
        let prefix = self.session_prefix(address)?;
        let change = SessionChange {
            kind: ChangeKind::Hold,
            subscriber,
            session: None,
            nas: None,
            prefixes: vec![prefix],
        };
        self.apply_session(&change)?;
        info!(%prefix, subscriber = change.subscriber, who, "session started");
        Ok(self.binding_body(prefix))
    }

    pub(super) fn session_stop(&mut self, subscriber: String, address: &str, who: &str) -> Outcome {
        let prefix = self.session_prefix(address)?;
        let holder = self
            .identities
            .holder(&prefix)
            .map(|h| h.subscriber.clone());
        if holder.as_deref() != Some(subscriber.as_str()) {
            let held = match holder {
                Some(other) => format!("it is bound to {other:?}"),
                None => "it is not bound".to_owned(),
            };
            return Err(Failure::new(
                ErrorKind::NotFound,
                format!(
                    "{prefix} is not bound to {subscriber:?} ({held}); expected an address \
                     `smtpguard who` names with that subscriber"
                ),
            ));
        }
        let change = SessionChange {
            kind: ChangeKind::Stop,
            subscriber,
            session: None,
            nas: None,
            prefixes: vec![prefix],
        };
        self.apply_session(&change)?;
        info!(%prefix, subscriber = change.subscriber, who, "session stopped");
        Ok(json!({"prefix": prefix.to_string(), "subscriber": change.subscriber}))
    }

    fn apply_session(&mut self, change: &SessionChange) -> Result<(), Failure> {
        let change = Change::Session(change.clone());
        self.apply_changes([&change]).map_err(Failure::from)?;
        Ok(())
    }

    /// The binding `prefix` has now, as `session start` answers.
    fn binding_body(&self, prefix: IpNet) -> serde_json::Value {
        let holder = self.identities.holder(&prefix);
        json!({
            "prefix": prefix.to_string(),
            "subscriber": holder.map(|h| h.subscriber.clone()),
            "exempt": self.identities.exempts(&prefix),
        })
    }

    /// Who held `address` at `at` (now when absent), from the store's history.
    pub(super) fn who(&mut self, address: &str, at: Option<&str>) -> Outcome {
        let address = input::parse_address("address", address)?;
        let at = match at {
            Some(at) => input::parse_time("at", at)?,
            None => SystemTime::now(),
        };
        let full = IpNet::from(address).max_prefix_len();
        let held = self
            .journal
            .store
            .binding_at(address, at, (0..=full).rev())?;
        let holder = held.as_ref();
        Ok(json!({
            "address": address.to_string(),
            "at": humantime::format_rfc3339_millis(at).to_string(),
            "subscriber": holder.map(|b| b.subscriber.clone()),
            "prefix": holder.map(|b| b.prefix.to_string()),
            "session": holder.and_then(|b| b.session.clone()),
            "nas": holder.and_then(|b| b.nas.clone()),
            "started": holder.map(|b| humantime::format_rfc3339_seconds(b.started).to_string()),
            "stopped": holder
                .and_then(|b| b.stopped)
                .map(|t| humantime::format_rfc3339_seconds(t).to_string()),
        }))
    }
}
