//! The audit trail: one entry per change, written in the change's own transaction, plus
//! free-form entries the agent records (reloads, detaches).

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::SystemTime;

use rusqlite::{Connection, params};
use serde::{Serialize, Serializer};

use super::{Store, StoreError, check_text, sql, stored_time, to_millis};

/// What an audit entry records. Stored and serialized by its [`name`](AuditAction::name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuditAction {
    ExemptionAdded,
    ExemptionRemoved,
    /// Its reason, ticket or expiry changed; the exemption stayed in force throughout.
    ExemptionUpdated,
    ExemptionExpired,
    RelayAdded,
    RelayRemoved,
    ConfigReloaded,
    /// A reload refused (an invalid or dangerous file) or rolled back: the running policy
    /// stayed as it was.
    ConfigRefused,
    Detached,
    Escalated,
    EscalationLifted,
    EscalationExpired,
    /// A change made with `--force` past the warnings about it (named in the detail).
    Forced,
    /// Pins removed by hand were made again by the agent.
    PinsRestored,
    /// Maps pinned by an earlier version whose layout no longer fits were made afresh.
    PinsReplaced,
    /// A configured interface disappeared: nothing is enforced on it.
    InterfaceDetached,
    /// A configured interface appeared (again) and the program was attached to it.
    InterfaceAttached,
    /// A subscriber identity was exempted, whatever address it holds.
    SubscriberExempted,
    SubscriberExemptionRemoved,
    /// A subscriber identity's exemption reached its expiry and was removed.
    SubscriberExemptionExpired,
}

impl AuditAction {
    /// Every action, in declaration order.
    pub const ALL: [AuditAction; 20] = [
        AuditAction::ExemptionAdded,
        AuditAction::ExemptionRemoved,
        AuditAction::ExemptionUpdated,
        AuditAction::ExemptionExpired,
        AuditAction::RelayAdded,
        AuditAction::RelayRemoved,
        AuditAction::ConfigReloaded,
        AuditAction::ConfigRefused,
        AuditAction::Detached,
        AuditAction::Escalated,
        AuditAction::EscalationLifted,
        AuditAction::EscalationExpired,
        AuditAction::Forced,
        AuditAction::PinsRestored,
        AuditAction::PinsReplaced,
        AuditAction::InterfaceDetached,
        AuditAction::InterfaceAttached,
        AuditAction::SubscriberExempted,
        AuditAction::SubscriberExemptionRemoved,
        AuditAction::SubscriberExemptionExpired,
    ];

    /// The stable lowercase-hyphen name, as stored and shown.
    pub fn name(self) -> &'static str {
        match self {
            AuditAction::ExemptionAdded => "exemption-added",
            AuditAction::ExemptionRemoved => "exemption-removed",
            AuditAction::ExemptionUpdated => "exemption-updated",
            AuditAction::ExemptionExpired => "exemption-expired",
            AuditAction::RelayAdded => "relay-added",
            AuditAction::RelayRemoved => "relay-removed",
            AuditAction::ConfigReloaded => "config-reloaded",
            AuditAction::ConfigRefused => "config-refused",
            AuditAction::Detached => "detached",
            AuditAction::Escalated => "escalated",
            AuditAction::EscalationLifted => "escalation-lifted",
            AuditAction::EscalationExpired => "escalation-expired",
            AuditAction::Forced => "forced",
            AuditAction::PinsRestored => "pins-restored",
            AuditAction::PinsReplaced => "pins-replaced",
            AuditAction::InterfaceDetached => "interface-detached",
            AuditAction::InterfaceAttached => "interface-attached",
            AuditAction::SubscriberExempted => "subscriber-exempted",
            AuditAction::SubscriberExemptionRemoved => "subscriber-exemption-removed",
            AuditAction::SubscriberExemptionExpired => "subscriber-exemption-expired",
        }
    }
}

impl fmt::Display for AuditAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A string that is no [`AuditAction`] name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown audit action {value:?}; expected one of {}", expected_names())]
pub struct ParseAuditActionError {
    pub value: String,
}

fn expected_names() -> String {
    AuditAction::ALL.map(AuditAction::name).join(", ")
}

impl FromStr for AuditAction {
    type Err = ParseAuditActionError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        AuditAction::ALL
            .into_iter()
            .find(|action| action.name() == value)
            .ok_or_else(|| ParseAuditActionError {
                value: value.to_owned(),
            })
    }
}

impl Serialize for AuditAction {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

/// One audit entry. `at` has millisecond precision.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditEntry {
    /// Increases with every entry written.
    pub id: i64,
    #[serde(serialize_with = "super::serialize_time")]
    pub at: SystemTime,
    pub action: AuditAction,
    /// What the entry is about: the prefix for exemptions and relays.
    pub subject: String,
    /// Who made the change ([`super::SYSTEM_WHO`] for expiries).
    pub who: String,
    /// Human-readable particulars (the entry's fields, a reload's outcome, ...).
    pub detail: String,
}

/// Appends an entry inside the caller's transaction.
pub(super) fn insert_audit(
    conn: &Connection,
    path: &Path,
    at_ms: i64,
    action: AuditAction,
    subject: &str,
    who: &str,
    detail: &str,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO audit (at_ms, action, subject, who, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![at_ms, action.name(), subject, who, detail],
    )
    .map_err(sql(path))?;
    Ok(())
}

impl Store {
    /// Audit entries at or after `since` (all when `None`), oldest first (entries with the
    /// same time in the order they were written).
    pub fn audit(&self, since: Option<SystemTime>) -> Result<Vec<AuditEntry>, StoreError> {
        let path = &self.path;
        // A `since` outside the storable range selects everything or nothing.
        let since_ms = match since {
            None => i64::MIN,
            Some(since) => to_millis("since", since).unwrap_or_else(|_| {
                if since < SystemTime::UNIX_EPOCH {
                    i64::MIN
                } else {
                    i64::MAX
                }
            }),
        };
        let mut statement = self
            .conn
            .prepare(
                "SELECT id, at_ms, action, subject, who, detail FROM audit WHERE at_ms >= ?1
                 ORDER BY at_ms, id",
            )
            .map_err(sql(path))?;
        let rows = statement
            .query_map([since_ms], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, String>(3)?,
                    row.get::<_, String>(4)?,
                    row.get::<_, String>(5)?,
                ))
            })
            .map_err(sql(path))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(sql(path))?;
        rows.into_iter()
            .map(|(id, at_ms, action, subject, who, detail)| {
                let action = action.parse().map_err(|_| StoreError::InvalidStoredValue {
                    path: path.to_path_buf(),
                    table: "audit",
                    column: "action",
                    value: action,
                    expected: "an audit action name such as \"exemption-added\"",
                })?;
                Ok(AuditEntry {
                    id,
                    at: stored_time(path, "audit", "at_ms", at_ms)?,
                    action,
                    subject,
                    who,
                    detail,
                })
            })
            .collect()
    }

    /// Appends a free-form audit entry (the agent logs reloads, detaches, escalations with
    /// it). `subject`, `who` and `detail` may be empty but not hold control characters or more
    /// than [`super::MAX_TEXT_BYTES`] bytes.
    pub fn record(
        &mut self,
        action: AuditAction,
        subject: &str,
        who: &str,
        detail: &str,
        now: SystemTime,
    ) -> Result<(), StoreError> {
        let now_ms = to_millis("now", now)?;
        check_text("subject", subject)?;
        check_text("who", who)?;
        check_text("detail", detail)?;
        self.write(|tx, path| insert_audit(tx, path, now_ms, action, subject, who, detail))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::testing::{NOW, at, temp_store};
    use super::super::{MAX_TEXT_BYTES, NewExemption};
    use super::*;

    #[test]
    fn action_names_round_trip_and_serialize_as_the_name() {
        let names: Vec<&str> = AuditAction::ALL.iter().map(|a| a.name()).collect();
        assert_eq!(
            names,
            [
                "exemption-added",
                "exemption-removed",
                "exemption-updated",
                "exemption-expired",
                "relay-added",
                "relay-removed",
                "config-reloaded",
                "config-refused",
                "detached",
                "escalated",
                "escalation-lifted",
                "escalation-expired",
                "forced",
                "pins-restored",
                "pins-replaced",
                "interface-detached",
                "interface-attached",
                "subscriber-exempted",
                "subscriber-exemption-removed",
                "subscriber-exemption-expired",
            ]
        );
        for action in AuditAction::ALL {
            assert_eq!(action.name().parse::<AuditAction>(), Ok(action));
            assert_eq!(action.to_string(), action.name());
            assert_eq!(
                serde_json::to_value(action).unwrap(),
                serde_json::Value::String(action.name().to_owned())
            );
        }
        let err = "ExemptionAdded".parse::<AuditAction>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown audit action \"ExemptionAdded\"; expected one of exemption-added, \
             exemption-removed, exemption-updated, exemption-expired, relay-added, relay-removed, \
             config-reloaded, config-refused, detached, escalated, escalation-lifted, escalation-expired, forced, pins-restored, \
             pins-replaced, interface-detached, interface-attached, subscriber-exempted, \
             subscriber-exemption-removed, subscriber-exemption-expired"
        );
    }

    #[test]
    fn record_appends_and_audit_filters_by_time_oldest_first() {
        let (_dir, mut store) = temp_store();
        store
            .record(
                AuditAction::ConfigReloaded,
                "/etc/smtpguard.toml",
                "smtpguard",
                "3 subscriber ranges",
                at(NOW + 10),
            )
            .unwrap();
        store
            .record(AuditAction::Detached, "eth1", "ops", "", at(NOW))
            .unwrap();
        store
            .record(
                AuditAction::ConfigReloaded,
                "/etc/smtpguard.toml",
                "smtpguard",
                "",
                at(NOW + 20),
            )
            .unwrap();

        let all = store.audit(None).unwrap();
        let order: Vec<(i64, u64)> = all
            .iter()
            .map(|e| {
                (
                    e.id,
                    e.at.duration_since(SystemTime::UNIX_EPOCH)
                        .unwrap()
                        .as_secs()
                        - NOW,
                )
            })
            .collect();
        assert_eq!(
            order,
            [(2, 0), (1, 10), (3, 20)],
            "oldest first, not insertion order"
        );
        assert_eq!(
            all[1],
            AuditEntry {
                id: 1,
                at: at(NOW + 10),
                action: AuditAction::ConfigReloaded,
                subject: "/etc/smtpguard.toml".to_owned(),
                who: "smtpguard".to_owned(),
                detail: "3 subscriber ranges".to_owned(),
            }
        );
        assert_eq!(
            serde_json::to_value(&all[1]).unwrap(),
            serde_json::json!({
                "id": 1,
                "at": "2023-11-14T22:13:30Z",
                "action": "config-reloaded",
                "subject": "/etc/smtpguard.toml",
                "who": "smtpguard",
                "detail": "3 subscriber ranges",
            })
        );

        let since = |t: SystemTime| -> Vec<i64> {
            store.audit(Some(t)).unwrap().iter().map(|e| e.id).collect()
        };
        assert_eq!(since(at(NOW + 10)), [1, 3], "at or after");
        assert_eq!(
            since(at(NOW + 10) + Duration::from_micros(1)),
            [1, 3],
            "millisecond precision"
        );
        assert_eq!(since(at(NOW + 11)), [3]);
        assert_eq!(since(at(NOW + 21)), Vec::<i64>::new());
        assert_eq!(
            since(SystemTime::UNIX_EPOCH - Duration::from_secs(1)),
            [2, 1, 3]
        );
    }

    #[test]
    fn record_validates_its_text() {
        let (_dir, mut store) = temp_store();
        let err = store
            .record(AuditAction::Detached, "eth1", "ops", "line\nbreak", at(NOW))
            .unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::ControlCharacter {
                    field: "detail",
                    ..
                }
            ),
            "{err:?}"
        );
        let err = store
            .record(
                AuditAction::Detached,
                &"s".repeat(MAX_TEXT_BYTES + 1),
                "ops",
                "",
                at(NOW),
            )
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "subject is 1025 bytes long; expected at most 1024 bytes"
        );
        assert!(store.audit(None).unwrap().is_empty());
    }

    /// A change's audit entry lives and dies with the change: when the audit insert fails, the
    /// change is rolled back too.
    #[test]
    fn a_failing_audit_insert_rolls_the_change_back() {
        let (_dir, mut store) = temp_store();
        store
            .conn
            .execute_batch(
                "CREATE TRIGGER refuse_audit BEFORE INSERT ON audit
                 BEGIN SELECT RAISE(ABORT, 'audit refused'); END;",
            )
            .unwrap();
        let new = NewExemption {
            prefix: "198.51.100.0/24".parse().unwrap(),
            reason: "test".to_owned(),
            ticket: None,
            who: "alice".to_owned(),
            expires: None,
        };
        let err = store.add_exemption(&new, at(NOW)).unwrap_err();
        assert!(matches!(err, StoreError::Sqlite { .. }), "{err:?}");
        store
            .conn
            .execute_batch("DROP TRIGGER refuse_audit")
            .unwrap();
        assert!(store.exemptions().unwrap().is_empty());
        assert!(store.audit(None).unwrap().is_empty());
    }

    #[test]
    fn an_unknown_stored_action_is_reported_with_the_file() {
        let (_dir, mut store) = temp_store();
        store
            .record(AuditAction::Detached, "eth1", "ops", "", at(NOW))
            .unwrap();
        store
            .conn
            .execute("UPDATE audit SET action = 'exploded'", [])
            .unwrap();
        let err = store.audit(None).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "the exemption store {} holds audit.action = \"exploded\"; expected an audit \
                 action name such as \"exemption-added\"",
                store.path().display()
            )
        );
    }
}
