//! `reload` (and SIGHUP): the config file read again and applied, or refused as a whole.

use std::time::SystemTime;

use serde_json::json;
use tracing::{info, warn};

use super::{Failure, Outcome, refuse_unless_forced};
use crate::{
    agent::{api::ErrorKind, state::AgentState},
    config::{Config, danger},
    policy::resolve_relay_hosts,
    store::AuditAction,
};

impl AgentState {
    /// Re-reads the config file. An invalid file changes nothing, and neither does a dangerous
    /// one unless `force`; a valid one is reconciled into the maps and the interfaces.
    pub(super) fn reload(&mut self, force: bool, who: &str) -> Outcome {
        self.journal.counters.reloads += 1;
        let config = match Config::load(&self.config_path) {
            Ok(config) => config,
            Err(error) => {
                self.journal.counters.reload_failures += 1;
                warn!(%error, "reload refused: the running policy stays as it was");
                return Err(Failure::new(
                    ErrorKind::BadRequest,
                    format!("reload refused, the running policy stays as it was: {error}"),
                ));
            }
        };
        let dangers = danger::dangers(Some(&self.config), &config);
        if let Err(failure) = refuse_unless_forced(&dangers, force, "reload") {
            self.journal.counters.reload_failures += 1;
            warn!(
                who,
                error = failure.message,
                "reload refused: the running policy stays as it was"
            );
            return Err(Failure::new(
                failure.kind,
                format!(
                    "reload refused, the running policy stays as it was: {}",
                    failure.message
                ),
            ));
        }
        let previous = std::mem::replace(&mut self.config, config);
        self.resolved = resolve_relay_hosts(&self.config, &self.resolved);
        let applied = self
            .reconcile()
            .and_then(|report| self.attach_all().map(|()| report));
        match applied {
            Ok(report) => {
                let detail = format!(
                    "added {}, updated {}, removed {}",
                    report.added, report.updated, report.removed
                );
                self.journal
                    .store
                    .record(
                        AuditAction::ConfigReloaded,
                        &self.config_path.display().to_string(),
                        who,
                        &detail,
                        SystemTime::now(),
                    )
                    .inspect_err(|_| self.journal.counters.store_errors += 1)?;
                info!(who, detail, "config reloaded");
                self.record_forced(&dangers, &self.config_path.display().to_string(), who);
                Ok(
                    json!({"reloaded": self.config_path.display().to_string(), "added": report.added, "updated": report.updated, "removed": report.removed}),
                )
            }
            Err(error) => {
                self.journal.counters.reload_failures += 1;
                self.config = previous;
                let restored = self.reconcile().and_then(|_| self.attach_all());
                warn!(
                    error = format!("{error:#}"),
                    restored = restored.is_ok(),
                    "reload failed; back to the previous config"
                );
                Err(Failure::new(
                    ErrorKind::Failed,
                    format!("reload failed and was rolled back: {error:#}"),
                ))
            }
        }
    }
}
