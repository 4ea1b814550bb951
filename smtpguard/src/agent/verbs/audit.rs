//! `audit`: who changed what, from the audit trail.

use serde_json::json;

use super::Outcome;
use crate::{agent::state::AgentState, input};

impl AgentState {
    pub(super) fn audit(&mut self, since: Option<&str>) -> Outcome {
        let since = since.map(|at| input::parse_time("since", at)).transpose()?;
        Ok(json!(self.journal.store.audit(since)?))
    }
}
