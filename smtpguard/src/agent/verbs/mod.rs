//! The socket's verbs, one module per verb family (as `cli/`): each checks its request,
//! changes the policy source first, the kernel maps second, and answers with a JSON body or
//! a [`Failure`] whose kind decides the CLI's exit code.

mod audit;
mod check;
mod detach;
mod escalations;
mod exempt;
mod pbl;
mod relay;
mod reload;
pub(super) mod report;
mod session;
mod status;

use std::time::SystemTime;

use ipnet::IpNet;
use serde_json::Value;
use tracing::warn;

use super::{
    api::{ErrorKind, Request, Response},
    reconcile::EntryList,
    state::AgentState,
};
use crate::{
    config::danger::{self, Danger},
    input::InputError,
    policy::{PolicyError, PolicySource, Rejection},
    store::{AuditAction, MAX_TEXT_BYTES},
};

/// A failed request: the kind decides the CLI's exit code.
pub(super) struct Failure {
    pub kind: ErrorKind,
    pub message: String,
}

impl Failure {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

impl From<InputError> for Failure {
    fn from(error: InputError) -> Self {
        Failure::new(ErrorKind::BadRequest, error.to_string())
    }
}

impl From<PolicyError> for Failure {
    fn from(error: PolicyError) -> Self {
        // Bad input and conflicts are the caller's; anything else is the source failing.
        let kind = match error.rejection() {
            _ if error.unavailable() => ErrorKind::Unavailable,
            Some(Rejection::Duplicate | Rejection::ChangedMeanwhile) => ErrorKind::Conflict,
            Some(Rejection::NotFound) => ErrorKind::NotFound,
            Some(Rejection::Invalid) => ErrorKind::BadRequest,
            None => ErrorKind::Failed,
        };
        Failure::new(kind, error.to_string())
    }
}

impl From<crate::store::StoreError> for Failure {
    fn from(error: crate::store::StoreError) -> Self {
        PolicyError::from(error).into()
    }
}

type Outcome = Result<Value, Failure>;

pub(super) fn failed(error: impl std::fmt::Display) -> Failure {
    Failure::new(ErrorKind::Failed, error.to_string())
}

impl AgentState {
    /// Carries out one request from `who` (the peer's user name), once its fields are within
    /// the input limits: a client other than the CLI gets no further than the CLI would.
    pub fn handle(&mut self, request: Request, who: &str) -> Response {
        if let Err(error) = request.validate(SystemTime::now()) {
            return Response::error(ErrorKind::BadRequest, error.to_string());
        }
        let outcome = match request {
            Request::ExemptAdd {
                prefix,
                reason,
                ticket,
                expires,
                force,
            } => self.exempt_add(&prefix, reason, ticket, expires.as_deref(), force, who),
            Request::ExemptUpdate {
                prefix,
                reason,
                ticket,
                expires,
                no_expiry,
            } => self.exempt_update(&prefix, reason, ticket, expires.as_deref(), no_expiry, who),
            Request::ExemptList {} => self.exempt_list(),
            Request::ExemptRemove { prefix } => self.exempt_remove(&prefix, who),
            Request::SubscriberExemptAdd {
                subscriber,
                reason,
                ticket,
                expires,
            } => self.subscriber_exempt_add(subscriber, reason, ticket, expires.as_deref(), who),
            Request::SubscriberExemptRemove { subscriber } => {
                self.subscriber_exempt_remove(&subscriber, who)
            }
            Request::SessionStart {
                subscriber,
                address,
            } => self.session_start(subscriber, &address, who),
            Request::SessionStop {
                subscriber,
                address,
            } => self.session_stop(subscriber, &address, who),
            Request::Who { address, at } => self.who(&address, at.as_deref()),
            Request::RelayAdd {
                prefix,
                note,
                force,
            } => self.relay_add(&prefix, note, force, who),
            Request::RelayList {} => self.relay_list(),
            Request::RelayRemove { prefix } => self.relay_remove(&prefix, who),
            Request::Status {} => self.status(),
            Request::Check { src, dst, port } => self.check(&src, &dst, port),
            Request::Audit { since, fleet } => self.audit(since.as_deref(), fleet),
            Request::Reload { force } => self.reload(force, who),
            Request::EscalationList {} => self.escalation_list(),
            Request::EscalationLift { host } => self.escalation_lift(&host, who),
            // Streamed by the server, never answered here.
            Request::Events {} => Err(Failure::new(
                ErrorKind::BadRequest,
                "events are streamed by the socket server",
            )),
            Request::Detach {} => self.detach(who),
            Request::PblExport {} => self.pbl_export(),
            // Streamed by the server (see `report::produce`), never answered here.
            Request::Report { .. } => Err(Failure::new(
                ErrorKind::BadRequest,
                "reports are streamed by the socket server",
            )),
        };
        match outcome {
            Ok(body) => Response::Ok { body },
            Err(failure) => Response::error(failure.kind, failure.message),
        }
    }

    /// What `exempt list` and `relay list` call the runtime entries: the fleet's in fleet mode.
    fn runtime_source(&self) -> &'static str {
        if self.fleet.is_some() {
            "fleet"
        } else {
            "runtime"
        }
    }

    /// Takes a runtime entry out of the maps after the source removed it; a failure leaves the
    /// two apart until the next reconcile, and says so.
    pub(super) fn remove_or_fail(&mut self, list: EntryList, prefix: IpNet) -> Result<(), Failure> {
        self.remove_entry(list, prefix).map_err(|error| {
            Failure::new(
                ErrorKind::Failed,
                format!(
                    "the store changed but the kernel map could not follow: {error:#}; the next \
                     reload reconciles it"
                ),
            )
        })
    }

    /// Puts a runtime entry the policy source just took into the kernel maps. When a map
    /// refuses it (full?), `undo` takes it back out of the source, so the two agree and the
    /// answer can say nothing changed.
    fn install_or_undo(
        &mut self,
        list: EntryList,
        prefix: IpNet,
        undo: impl FnOnce(&mut dyn PolicySource),
    ) -> Result<(), Failure> {
        self.add_entry(list, prefix).map_err(|error| {
            undo(self.policy.as_mut());
            Failure::new(
                ErrorKind::Failed,
                format!("the kernel map did not take {prefix}: {error:#}; nothing was changed"),
            )
        })
    }

    /// Audits a change forced past `dangers` (nothing when there were none). The change itself
    /// is done and audited already: a failure here is logged, not answered.
    fn record_forced(&mut self, dangers: &[Danger], subject: &str, who: &str) {
        if dangers.is_empty() {
            return;
        }
        let detail = truncated(&danger::describe(dangers), MAX_TEXT_BYTES);
        warn!(subject, who, detail, "forced past warnings");
        if let Err(error) = self.journal.store.record(
            AuditAction::Forced,
            subject,
            who,
            &detail,
            SystemTime::now(),
        ) {
            self.journal.counters.store_errors += 1;
            warn!(%error, subject, "recording a forced change in the audit log failed");
        }
    }
}

/// Refuses a dangerous change unless it is forced; the message names every danger and the
/// flag.
fn refuse_unless_forced(dangers: &[Danger], force: bool, verb: &str) -> Result<(), Failure> {
    if dangers.is_empty() || force {
        return Ok(());
    }
    Err(Failure::new(
        ErrorKind::BadRequest,
        format!(
            "{}; `smtpguard {verb} --force` does it anyway",
            danger::describe(dangers)
        ),
    ))
}

/// `text` cut to at most `max` bytes, at a character boundary.
pub(super) fn truncated(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}
