//! `detach`: enforcement removed on purpose.

use std::time::SystemTime;

use serde_json::json;
use tracing::warn;

use super::{Outcome, failed};
use crate::{
    agent::state::{AgentState, list},
    store::AuditAction,
};

impl AgentState {
    /// Removes enforcement on purpose: the links go, the maps stay (statistics are kept for a
    /// later `run`), and the agent stops.
    pub(super) fn detach(&mut self, who: &str) -> Outcome {
        let detached = self.enforcement.detach_all().map_err(failed)?;
        self.journal.store.record(
            AuditAction::Detached,
            &list(detached.iter()),
            who,
            "enforcement removed",
            SystemTime::now(),
        )?;
        self.detached = true;
        warn!(
            who,
            interfaces = list(detached.iter()),
            "detached: port 25 is no longer enforced"
        );
        Ok(json!({"detached": detached}))
    }
}
