//! `audit`: who changed what, from this gateway's audit trail or the fleet's.

use serde_json::json;

use super::{Failure, Outcome};
use crate::{
    agent::{api::ErrorKind, state::AgentState},
    input,
    policy::PolicyError,
};

impl AgentState {
    pub(super) fn audit(&mut self, since: Option<&str>, fleet: bool) -> Outcome {
        let since = since.map(|at| input::parse_time("since", at)).transpose()?;
        if !fleet {
            return Ok(json!(self.journal.store.audit(since)?));
        }
        let Some(handle) = &self.fleet else {
            return Err(Failure::new(
                ErrorKind::BadRequest,
                format!(
                    "{} has no [fleet] etcd: this gateway keeps its own audit trail only \
                     (`smtpguard audit` without --fleet)",
                    self.config_path.display()
                ),
            ));
        };
        let entries = handle.audit(since).map_err(PolicyError::from)?;
        Ok(json!(entries))
    }
}
