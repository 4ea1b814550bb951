//! `reload` (and SIGHUP): the config file read again and applied, or refused as a whole.

use std::time::SystemTime;

use serde_json::json;
use tracing::{info, warn};

use super::{Failure, Outcome, refuse_unless_forced, truncated};
use crate::{
    agent::{
        api::ErrorKind,
        state::{AgentState, LastReload},
    },
    config::{Config, danger},
    input::escape_unprintable,
    policy::{self, resolve_relay_hosts},
    store::{AuditAction, MAX_TEXT_BYTES},
};

impl AgentState {
    /// Re-reads the config file. An invalid file changes nothing, and neither does a dangerous
    /// one unless `force`; a valid one is reconciled into the maps and the interfaces.
    pub(super) fn reload(&mut self, force: bool, who: &str) -> Outcome {
        self.journal.counters.reloads += 1;
        self.last_reload = LastReload {
            at: SystemTime::now(),
            successful: false,
        };
        let config = match Config::load(&self.config_path) {
            Ok(config) => config,
            Err(error) => {
                return Err(self.refuse_reload(who, ErrorKind::BadRequest, &error.to_string()));
            }
        };
        // The policy source is chosen at start: switching it under a running agent would
        // leave its connection and its cache behind.
        if config.fleet != self.config.fleet {
            let message = format!(
                "{}: the [fleet] table changed; restart the agent to apply it (a reload keeps \
                 the fleet connection it has)",
                self.config_path.display()
            );
            return Err(self.refuse_reload(who, ErrorKind::BadRequest, &message));
        }
        let dangers = danger::dangers(Some(&self.config), &config);
        if let Err(failure) = refuse_unless_forced(&dangers, force, "reload") {
            return Err(self.refuse_reload(who, failure.kind, &failure.message));
        }
        let changes: Vec<String> = policy::changes(&self.config, &config)
            .iter()
            .map(ToString::to_string)
            .collect();
        let previous = std::mem::replace(&mut self.config, config);
        self.resolved = resolve_relay_hosts(&self.config, &self.resolved, SystemTime::now());
        let applied = self
            .reconcile()
            .and_then(|report| self.attach_all().map(|()| report));
        match applied {
            Ok(report) => {
                self.last_reload.successful = true;
                let mut detail = format!(
                    "added {}, updated {}, removed {}",
                    report.added, report.updated, report.removed
                );
                for change in &changes {
                    detail.push_str("; ");
                    detail.push_str(change);
                }
                let detail = truncated(&escape_unprintable(&detail), MAX_TEXT_BYTES);
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
                    json!({"reloaded": self.config_path.display().to_string(), "added": report.added, "updated": report.updated, "removed": report.removed, "changes": changes, "warnings": self.resolved.warnings().map(|w| w.to_string()).collect::<Vec<_>>()}),
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
                let message = format!("reload failed and was rolled back: {error:#}");
                self.audit_refused(who, &message);
                Err(Failure::new(ErrorKind::Failed, message))
            }
        }
    }

    /// A reload refused before anything changed (an invalid or dangerous file): logged,
    /// counted and audited, and the answer says the running policy stays.
    fn refuse_reload(&mut self, who: &str, kind: ErrorKind, why: &str) -> Failure {
        self.journal.counters.reload_failures += 1;
        warn!(
            who,
            error = why,
            "reload refused: the running policy stays as it was"
        );
        let message = format!("reload refused, the running policy stays as it was: {why}");
        self.audit_refused(who, &message);
        Failure::new(kind, message)
    }

    fn audit_refused(&mut self, who: &str, message: &str) {
        // Config errors quote the file, which may hold anything: the audit trail takes
        // printable text of a bounded length.
        let detail = truncated(&escape_unprintable(message), MAX_TEXT_BYTES);
        let subject = self.config_path.display().to_string();
        self.journal
            .record(AuditAction::ConfigRefused, &subject, who, &detail);
    }
}
