//! Runtime exemptions: subscriber source ranges let through to port 25, optionally until an
//! expiry time.

use std::path::Path;
use std::time::SystemTime;

use ipnet::IpNet;
use rusqlite::{Connection, params};
use serde::Serialize;

use super::audit::{AuditAction, insert_audit};
use super::{
    EntryKind, PREFIX_ORDER, PrefixColumns, PrefixTable, SYSTEM_WHO, Store, StoreError,
    check_prefix, check_text, describe_time, from_millis, future_time, parse_stored_prefix, sql,
    stored_optional_time, stored_time, to_millis,
};

/// An exemption to add.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NewExemption {
    #[serde(serialize_with = "super::serialize_prefix")]
    pub prefix: IpNet,
    /// Why the range is exempt; not empty.
    pub reason: String,
    /// The ticket or case that asked for it.
    pub ticket: Option<String>,
    /// Who adds it (an operator's name).
    pub who: String,
    /// When it lapses (see [`Store::expire`]); after the time of the change when given.
    #[serde(serialize_with = "super::serialize_optional_time")]
    pub expires: Option<SystemTime>,
}

/// What `exempt update` changes; `None` keeps a field as it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExemptionUpdate {
    pub reason: Option<String>,
    pub ticket: Option<String>,
    /// `Some(None)`: it no longer expires.
    pub expires: Option<Option<SystemTime>>,
}

impl NewExemption {
    /// The exemption as the store or a fleet source keeps it when added at `now` (times in
    /// whole milliseconds), once its fields are sane.
    pub fn checked(&self, now: SystemTime) -> Result<Exemption, StoreError> {
        let now_ms = to_millis("now", now)?;
        check_prefix(EntryKind::Exemption, self.prefix)?;
        check_text("reason", &self.reason)?;
        if self.reason.trim().is_empty() {
            return Err(StoreError::EmptyReason {
                prefix: self.prefix,
            });
        }
        if let Some(ticket) = &self.ticket {
            check_text("ticket", ticket)?;
        }
        check_text("who", &self.who)?;
        let expires = self
            .expires
            .map(|at| future_millis(self.prefix, at, now, now_ms))
            .transpose()?;
        Ok(Exemption {
            prefix: self.prefix,
            reason: self.reason.clone(),
            ticket: self.ticket.clone(),
            who: self.who.clone(),
            // What reading it back gives: whole milliseconds.
            created: from_millis(now_ms).unwrap_or(now),
            expires,
            gateway: None,
        })
    }
}

/// `expires` in whole milliseconds, refused unless it is after `now`.
fn future_millis(
    prefix: IpNet,
    expires: SystemTime,
    now: SystemTime,
    now_ms: i64,
) -> Result<SystemTime, StoreError> {
    future_time(expires, now_ms, || StoreError::ExpiryNotInFuture {
        prefix,
        expires,
        now,
    })
}

impl ExemptionUpdate {
    /// Refuses what no store keeps: bad text, an empty reason, an expiry not after `now`.
    pub fn check(&self, prefix: IpNet, who: &str, now: SystemTime) -> Result<(), StoreError> {
        let now_ms = to_millis("now", now)?;
        check_prefix(EntryKind::Exemption, prefix)?;
        check_text("who", who)?;
        if let Some(reason) = &self.reason {
            check_text("reason", reason)?;
            if reason.trim().is_empty() {
                return Err(StoreError::EmptyReason { prefix });
            }
        }
        if let Some(ticket) = &self.ticket {
            check_text("ticket", ticket)?;
        }
        if let Some(Some(expires)) = self.expires {
            future_millis(prefix, expires, now, now_ms)?;
        }
        Ok(())
    }

    /// `old` with this update's fields, once [`Self::check`]ed.
    pub fn applied_to(&self, old: &Exemption) -> Exemption {
        Exemption {
            reason: self.reason.clone().unwrap_or_else(|| old.reason.clone()),
            ticket: self.ticket.clone().or_else(|| old.ticket.clone()),
            expires: match self.expires {
                Some(expires) => expires.map(|at| {
                    to_millis("expires", at)
                        .ok()
                        .and_then(from_millis)
                        .unwrap_or(at)
                }),
                None => old.expires,
            },
            ..old.clone()
        }
    }
}

/// A stored exemption. Times have millisecond precision.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Exemption {
    #[serde(serialize_with = "super::serialize_prefix")]
    pub prefix: IpNet,
    pub reason: String,
    pub ticket: Option<String>,
    pub who: String,
    #[serde(serialize_with = "super::serialize_time")]
    pub created: SystemTime,
    #[serde(serialize_with = "super::serialize_optional_time")]
    pub expires: Option<SystemTime>,
    /// The gateway it was made on, in fleet mode; `None` in a gateway's own store.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
}

const TABLE: &str = "exemptions";
const COLUMNS: &str = "prefix, reason, ticket, who, created_ms, expires_ms";

/// An `exemptions` row as stored.
struct Row {
    prefix: String,
    reason: String,
    ticket: Option<String>,
    who: String,
    created_ms: i64,
    expires_ms: Option<i64>,
}

impl Row {
    fn read(row: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
        Ok(Row {
            prefix: row.get(0)?,
            reason: row.get(1)?,
            ticket: row.get(2)?,
            who: row.get(3)?,
            created_ms: row.get(4)?,
            expires_ms: row.get(5)?,
        })
    }

    fn into_exemption(self, path: &Path) -> Result<Exemption, StoreError> {
        Ok(Exemption {
            prefix: parse_stored_prefix(path, TABLE, self.prefix)?,
            reason: self.reason,
            ticket: self.ticket,
            who: self.who,
            created: stored_time(path, TABLE, "created_ms", self.created_ms)?,
            expires: stored_optional_time(path, TABLE, "expires_ms", self.expires_ms)?,
            gateway: None,
        })
    }
}

/// Reads the exemptions matching `filter` (an SQL condition on `?1`, bound to `param`), in
/// prefix order.
fn select(
    conn: &Connection,
    path: &Path,
    filter: &str,
    param: impl rusqlite::ToSql,
) -> Result<Vec<Exemption>, StoreError> {
    let query = format!("SELECT {COLUMNS} FROM {TABLE} WHERE {filter} ORDER BY {PREFIX_ORDER}");
    let mut statement = conn.prepare(&query).map_err(sql(path))?;
    let rows = statement
        .query_map([param], Row::read)
        .map_err(sql(path))?
        .collect::<rusqlite::Result<Vec<Row>>>()
        .map_err(sql(path))?;
    rows.into_iter()
        .map(|row| row.into_exemption(path))
        .collect()
}

/// The audit detail of an exemption: all its fields but the prefix (the subject).
fn describe(exemption: &Exemption) -> String {
    let ticket = match &exemption.ticket {
        Some(ticket) => format!("{ticket:?}"),
        None => "none".to_owned(),
    };
    let expires = match exemption.expires {
        Some(expires) => describe_time(expires),
        None => "never".to_owned(),
    };
    format!(
        "reason {:?}; ticket {ticket}; expires {expires}; added by {:?} at {}",
        exemption.reason,
        exemption.who,
        describe_time(exemption.created)
    )
}

const EXEMPTIONS: PrefixTable<Exemption> = PrefixTable {
    kind: EntryKind::Exemption,
    name: TABLE,
    removed: AuditAction::ExemptionRemoved,
    select: |conn, path, filter, param| select(conn, path, filter, param),
    describe,
};

impl Store {
    /// Adds an exemption and its [`AuditAction::ExemptionAdded`] entry in one transaction.
    /// Fails with [`StoreError::Duplicate`] if the prefix is already exempt.
    pub fn add_exemption(
        &mut self,
        new: &NewExemption,
        now: SystemTime,
    ) -> Result<Exemption, StoreError> {
        let now_ms = to_millis("now", now)?;
        let exemption = new.checked(now)?;
        let expires_ms = exemption
            .expires
            .map(|at| to_millis("expires", at))
            .transpose()?;
        let columns = PrefixColumns::new(new.prefix);
        self.write(|tx, path| {
            EXEMPTIONS.refuse_duplicate(tx, path, &columns, new.prefix)?;
            tx.execute(
                "INSERT INTO exemptions
                     (prefix, family, address, length, reason, ticket, who, created_ms, expires_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    columns.text,
                    columns.family,
                    columns.address,
                    columns.length,
                    exemption.reason,
                    exemption.ticket,
                    exemption.who,
                    now_ms,
                    expires_ms,
                ],
            )
            .map_err(sql(path))?;
            insert_audit(
                tx,
                path,
                now_ms,
                AuditAction::ExemptionAdded,
                &columns.text,
                &exemption.who,
                &describe(&exemption),
            )
        })?;
        Ok(exemption)
    }

    /// Changes the reason, ticket or expiry of the exemption of exactly `prefix` in place (it
    /// is never absent meanwhile) and records an [`AuditAction::ExemptionUpdated`] entry by
    /// `who` naming the old and the new values, in one transaction; returns the exemption as
    /// it was and as it is. Fails with [`StoreError::NotFound`] if there is none.
    pub fn update_exemption(
        &mut self,
        prefix: IpNet,
        update: &ExemptionUpdate,
        who: &str,
        now: SystemTime,
    ) -> Result<(Exemption, Exemption), StoreError> {
        let now_ms = to_millis("now", now)?;
        update.check(prefix, who, now)?;
        let text = prefix.to_string();
        self.write(|tx, path| {
            let old =
                select(tx, path, "prefix = ?1", &text)?
                    .pop()
                    .ok_or(StoreError::NotFound {
                        kind: EntryKind::Exemption,
                        prefix,
                    })?;
            let new = update.applied_to(&old);
            let new_expires_ms = new.expires.map(|at| to_millis("expires", at)).transpose()?;
            tx.execute(
                "UPDATE exemptions SET reason = ?2, ticket = ?3, expires_ms = ?4 WHERE prefix = ?1",
                params![text, new.reason, new.ticket, new_expires_ms],
            )
            .map_err(sql(path))?;
            let detail = format!("was: {}; now: {}", describe(&old), describe(&new));
            insert_audit(
                tx,
                path,
                now_ms,
                AuditAction::ExemptionUpdated,
                &text,
                who,
                &detail,
            )?;
            Ok((old, new))
        })
    }

    /// Removes the exemption of exactly `prefix` and records an
    /// [`AuditAction::ExemptionRemoved`] entry by `who`, in one transaction; returns what was
    /// removed. Fails with [`StoreError::NotFound`] if there is none.
    pub fn remove_exemption(
        &mut self,
        prefix: IpNet,
        who: &str,
        now: SystemTime,
    ) -> Result<Exemption, StoreError> {
        self.remove_prefix(&EXEMPTIONS, prefix, who, now)
    }

    /// Every exemption, ordered by prefix: IPv4 before IPv6, then by address, then by length.
    pub fn exemptions(&self) -> Result<Vec<Exemption>, StoreError> {
        // `WHERE ?1` with true: every row.
        select(&self.conn, &self.path, "?1", true)
    }

    /// Removes every exemption whose `expires <= now`, audits each as
    /// [`AuditAction::ExemptionExpired`] by [`SYSTEM_WHO`], all in one transaction, and returns
    /// them in prefix order.
    pub fn expire(&mut self, now: SystemTime) -> Result<Vec<Exemption>, StoreError> {
        let now_ms = to_millis("now", now)?;
        self.write(|tx, path| {
            let expired = select(tx, path, "expires_ms <= ?1", now_ms)?;
            for exemption in &expired {
                let text = exemption.prefix.to_string();
                tx.execute("DELETE FROM exemptions WHERE prefix = ?1", [&text])
                    .map_err(sql(path))?;
                insert_audit(
                    tx,
                    path,
                    now_ms,
                    AuditAction::ExemptionExpired,
                    &text,
                    SYSTEM_WHO,
                    &describe(exemption),
                )?;
            }
            Ok(expired)
        })
    }

    /// When the next exemption (of an address or of an identity) expires, if any (the agent
    /// sleeps until then).
    pub fn next_expiry(&self) -> Result<Option<SystemTime>, StoreError> {
        let path = &self.path;
        let next: Option<i64> = self
            .conn
            .query_row(
                "SELECT min(expires_ms) FROM (SELECT expires_ms FROM exemptions
                 UNION ALL SELECT expires_ms FROM subscriber_exemptions)",
                [],
                |row| row.get(0),
            )
            .map_err(sql(path))?;
        stored_optional_time(path, TABLE, "expires_ms", next)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::testing::{NOW, at, net, temp_store};
    use super::*;

    fn new(prefix: &str) -> NewExemption {
        NewExemption {
            prefix: net(prefix),
            reason: "hosted mail server, contract 4711".to_owned(),
            ticket: None,
            who: "alice".to_owned(),
            expires: None,
        }
    }

    #[test]
    fn add_list_remove_round_trip_with_all_fields() {
        let (_dir, mut store) = temp_store();
        let now = at(NOW) + Duration::from_nanos(42_500_000); // 42.5 ms
        let full = NewExemption {
            ticket: Some("NOC-1234".to_owned()),
            expires: Some(at(NOW + 86_400)),
            ..new("198.51.100.0/24")
        };
        let added = store.add_exemption(&full, now).unwrap();
        assert_eq!(
            added,
            Exemption {
                prefix: net("198.51.100.0/24"),
                reason: "hosted mail server, contract 4711".to_owned(),
                ticket: Some("NOC-1234".to_owned()),
                who: "alice".to_owned(),
                created: at(NOW) + Duration::from_millis(42),
                expires: Some(at(NOW + 86_400)),
                gateway: None,
            }
        );
        assert_eq!(store.exemptions().unwrap(), vec![added.clone()]);

        let removed = store
            .remove_exemption(net("198.51.100.0/24"), "bob", at(NOW + 60))
            .unwrap();
        assert_eq!(removed, added);
        assert!(store.exemptions().unwrap().is_empty());
        assert_eq!(store.next_expiry().unwrap(), None);
    }

    #[test]
    fn serializes_times_as_rfc3339_and_prefixes_as_text() {
        let (_dir, mut store) = temp_store();
        let added = store
            .add_exemption(
                &NewExemption {
                    expires: Some(at(NOW + 3600)),
                    ..new("2001:db8:1::/48")
                },
                at(NOW),
            )
            .unwrap();
        let json = serde_json::to_value(&added).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "prefix": "2001:db8:1::/48",
                "reason": "hosted mail server, contract 4711",
                "ticket": null,
                "who": "alice",
                "created": "2023-11-14T22:13:20Z",
                "expires": "2023-11-14T23:13:20Z",
            })
        );
    }

    #[test]
    fn duplicate_add_fails_and_changes_nothing() {
        let (_dir, mut store) = temp_store();
        let first = store
            .add_exemption(&new("203.0.113.0/24"), at(NOW))
            .unwrap();
        let again = NewExemption {
            reason: "other reason".to_owned(),
            ..new("203.0.113.0/24")
        };
        let err = store.add_exemption(&again, at(NOW + 1)).unwrap_err();
        assert!(
            matches!(err, StoreError::Duplicate { kind: EntryKind::Exemption, prefix }
                if prefix == net("203.0.113.0/24")),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "exemption 203.0.113.0/24 already exists; expected a prefix not yet listed (remove \
             it first)"
        );
        assert_eq!(store.exemptions().unwrap(), vec![first]);
        assert_eq!(
            store.audit(None).unwrap().len(),
            1,
            "no audit entry for the failed add"
        );
    }

    #[test]
    fn removing_an_absent_prefix_is_not_found() {
        let (_dir, mut store) = temp_store();
        store
            .add_exemption(&new("203.0.113.0/24"), at(NOW))
            .unwrap();
        // A prefix inside an exempt one is not the same prefix.
        let err = store
            .remove_exemption(net("203.0.113.128/25"), "bob", at(NOW + 1))
            .unwrap_err();
        assert!(
            matches!(err, StoreError::NotFound { kind: EntryKind::Exemption, prefix }
                if prefix == net("203.0.113.128/25")),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "there is no exemption 203.0.113.128/25; expected a prefix exactly as listed (not \
             an address or a range inside it)"
        );
        assert_eq!(store.exemptions().unwrap().len(), 1);
        assert_eq!(store.audit(None).unwrap().len(), 1);
    }

    #[test]
    fn exemptions_are_ordered_ipv4_first_then_by_address_then_length() {
        let (_dir, mut store) = temp_store();
        // Inserted out of order; text order would put "10.0.0.0/8" before "9.0.0.0/8" and
        // "100.64.0.0/10" before "20.0.0.0/8".
        for prefix in [
            "2001:db8::/32",
            "100.64.0.0/10",
            "::/0",
            "10.0.0.0/16",
            "9.0.0.0/8",
            "2001:db8::/48",
            "10.0.0.0/8",
            "20.0.0.0/8",
            "0.0.0.0/0",
            "10.0.0.0/24",
            "fe80::/10",
            "::ffff:192.0.2.0/120",
        ] {
            store.add_exemption(&new(prefix), at(NOW)).unwrap();
        }
        let listed: Vec<String> = store
            .exemptions()
            .unwrap()
            .iter()
            .map(|e| e.prefix.to_string())
            .collect();
        assert_eq!(
            listed,
            [
                "0.0.0.0/0",
                "9.0.0.0/8",
                "10.0.0.0/8",
                "10.0.0.0/16",
                "10.0.0.0/24",
                "20.0.0.0/8",
                "100.64.0.0/10",
                "::/0",
                "::ffff:192.0.2.0/120",
                "2001:db8::/32",
                "2001:db8::/48",
                "fe80::/10",
            ]
        );
    }

    #[test]
    fn ipv6_exemptions_round_trip() {
        let (_dir, mut store) = temp_store();
        let added = store
            .add_exemption(&new("2001:db8:abcd:12::/64"), at(NOW))
            .unwrap();
        assert_eq!(added.prefix, net("2001:db8:abcd:12::/64"));
        assert_eq!(store.exemptions().unwrap(), vec![added.clone()]);
        let err = store
            .add_exemption(&new("2001:0db8:abcd:0012:0000::/64"), at(NOW))
            .unwrap_err();
        assert!(matches!(err, StoreError::Duplicate { .. }), "{err:?}");
        let removed = store
            .remove_exemption(net("2001:db8:abcd:12::/64"), "bob", at(NOW))
            .unwrap();
        assert_eq!(removed, added);
        let trail = store.audit(None).unwrap();
        assert_eq!(trail.len(), 2);
        assert!(trail.iter().all(|e| e.subject == "2001:db8:abcd:12::/64"));
    }

    #[test]
    fn every_change_writes_exactly_one_audit_entry() {
        let (_dir, mut store) = temp_store();
        let with_ticket = NewExemption {
            ticket: Some("NOC-1".to_owned()),
            expires: Some(at(NOW + 100)),
            ..new("198.51.100.0/24")
        };
        store.add_exemption(&with_ticket, at(NOW)).unwrap();
        store
            .add_exemption(&new("203.0.113.0/24"), at(NOW + 1))
            .unwrap();
        // Failures in between leave no trace.
        store
            .add_exemption(&new("203.0.113.0/24"), at(NOW + 2))
            .unwrap_err();
        store
            .remove_exemption(net("192.0.2.0/24"), "bob", at(NOW + 2))
            .unwrap_err();
        store
            .add_exemption(
                &NewExemption {
                    reason: " ".to_owned(),
                    ..new("192.0.2.0/24")
                },
                at(NOW + 2),
            )
            .unwrap_err();
        store
            .remove_exemption(net("203.0.113.0/24"), "bob", at(NOW + 3))
            .unwrap();
        store.expire(at(NOW + 100)).unwrap();
        store.expire(at(NOW + 200)).unwrap(); // nothing left to expire: no entry

        let trail: Vec<(AuditAction, String, String, u64)> = store
            .audit(None)
            .unwrap()
            .into_iter()
            .map(|e| {
                let secs =
                    e.at.duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_secs();
                (e.action, e.subject, e.who, secs - NOW)
            })
            .collect();
        assert_eq!(
            trail,
            [
                (
                    AuditAction::ExemptionAdded,
                    "198.51.100.0/24".into(),
                    "alice".into(),
                    0
                ),
                (
                    AuditAction::ExemptionAdded,
                    "203.0.113.0/24".into(),
                    "alice".into(),
                    1
                ),
                (
                    AuditAction::ExemptionRemoved,
                    "203.0.113.0/24".into(),
                    "bob".into(),
                    3
                ),
                (
                    AuditAction::ExemptionExpired,
                    "198.51.100.0/24".into(),
                    SYSTEM_WHO.into(),
                    100
                ),
            ]
        );
        let details: Vec<String> = store
            .audit(None)
            .unwrap()
            .into_iter()
            .map(|e| e.detail)
            .collect();
        assert_eq!(
            details[0],
            "reason \"hosted mail server, contract 4711\"; ticket \"NOC-1\"; expires \
             2023-11-14T22:15:00Z; added by \"alice\" at 2023-11-14T22:13:20Z"
        );
        assert_eq!(
            details[2],
            "reason \"hosted mail server, contract 4711\"; ticket none; expires never; added by \
             \"alice\" at 2023-11-14T22:13:21Z"
        );
    }

    #[test]
    fn expire_removes_and_audits_only_the_expired() {
        let (_dir, mut store) = temp_store();
        let soon = NewExemption {
            expires: Some(at(NOW + 60)),
            ..new("198.51.100.0/24")
        };
        let sooner = NewExemption {
            expires: Some(at(NOW + 30)),
            ..new("2001:db8::/32")
        };
        let later = NewExemption {
            expires: Some(at(NOW + 3600)),
            ..new("203.0.113.0/24")
        };
        let soon = store.add_exemption(&soon, at(NOW)).unwrap();
        let sooner = store.add_exemption(&sooner, at(NOW)).unwrap();
        let later = store.add_exemption(&later, at(NOW)).unwrap();
        let forever = store.add_exemption(&new("192.0.2.0/24"), at(NOW)).unwrap();

        assert_eq!(store.next_expiry().unwrap(), Some(at(NOW + 30)));
        assert_eq!(store.expire(at(NOW + 29)).unwrap(), vec![]);
        assert_eq!(store.audit(None).unwrap().len(), 4);

        // Expiry is inclusive: `expires <= now`.
        let expired = store.expire(at(NOW + 60)).unwrap();
        assert_eq!(expired, vec![soon, sooner]);
        assert_eq!(
            store.exemptions().unwrap(),
            vec![forever.clone(), later.clone()]
        );
        assert_eq!(store.next_expiry().unwrap(), Some(at(NOW + 3600)));
        let expiries: Vec<_> = store
            .audit(Some(at(NOW + 60)))
            .unwrap()
            .into_iter()
            .map(|e| (e.action, e.subject, e.who))
            .collect();
        assert_eq!(
            expiries,
            [
                (
                    AuditAction::ExemptionExpired,
                    "198.51.100.0/24".into(),
                    "smtpguard".into()
                ),
                (
                    AuditAction::ExemptionExpired,
                    "2001:db8::/32".into(),
                    "smtpguard".into()
                ),
            ]
        );

        assert_eq!(store.expire(at(NOW + 7200)).unwrap(), vec![later]);
        assert_eq!(store.exemptions().unwrap(), vec![forever]);
        assert_eq!(store.next_expiry().unwrap(), None, "the rest never expires");
    }

    /// Each invalid input is rejected with an error naming it, and nothing is stored.
    #[test]
    fn validation_errors_store_nothing() {
        let (_dir, mut store) = temp_store();
        let cases: Vec<(NewExemption, &str)> = vec![
            (
                new("198.51.100.7/24"),
                "exemption prefix 198.51.100.7/24 has host bits set; expected the network \
                 address 198.51.100.0/24",
            ),
            (
                new("2001:db8::1/64"),
                "exemption prefix 2001:db8::1/64 has host bits set; expected the network \
                 address 2001:db8::/64",
            ),
            (
                NewExemption {
                    reason: String::new(),
                    ..new("198.51.100.0/24")
                },
                "exemption 198.51.100.0/24 has an empty reason; expected a short note on why it \
                 is exempt",
            ),
            (
                NewExemption {
                    reason: " \u{a0} ".to_owned(),
                    ..new("198.51.100.0/24")
                },
                "exemption 198.51.100.0/24 has an empty reason; expected a short note on why it \
                 is exempt",
            ),
            (
                NewExemption {
                    reason: "line one\nline two".to_owned(),
                    ..new("198.51.100.0/24")
                },
                "reason \"line one\\nline two\" contains the control character U+000A at byte 8; \
                 expected text without control characters",
            ),
            (
                NewExemption {
                    ticket: Some("T-1\u{1b}[2J".to_owned()),
                    ..new("198.51.100.0/24")
                },
                "ticket \"T-1\\u{1b}[2J\" contains the control character U+001B at byte 3; \
                 expected text without control characters",
            ),
            (
                NewExemption {
                    who: "al\u{0}ice".to_owned(),
                    ..new("198.51.100.0/24")
                },
                "who \"al\\0ice\" contains the control character U+0000 at byte 2; expected text \
                 without control characters",
            ),
            (
                NewExemption {
                    reason: "x".repeat(1025),
                    ..new("198.51.100.0/24")
                },
                "reason is 1025 bytes long; expected at most 1024 bytes",
            ),
            (
                NewExemption {
                    ticket: Some("é".repeat(513)),
                    ..new("198.51.100.0/24")
                },
                "ticket is 1026 bytes long; expected at most 1024 bytes",
            ),
            (
                NewExemption {
                    expires: Some(at(NOW - 1)),
                    ..new("198.51.100.0/24")
                },
                "exemption 198.51.100.0/24 would expire at 2023-11-14T22:13:19Z, which is not \
                 after the current time 2023-11-14T22:13:20Z; expected an expiry in the future",
            ),
            (
                NewExemption {
                    expires: Some(at(NOW)),
                    ..new("198.51.100.0/24")
                },
                "exemption 198.51.100.0/24 would expire at 2023-11-14T22:13:20Z, which is not \
                 after the current time 2023-11-14T22:13:20Z; expected an expiry in the future",
            ),
        ];
        for (invalid, message) in cases {
            let err = store.add_exemption(&invalid, at(NOW)).unwrap_err();
            assert_eq!(err.to_string(), message, "{invalid:?}");
        }
        // The limit itself is fine.
        let longest = NewExemption {
            reason: "x".repeat(1024),
            ..new("198.51.100.0/24")
        };
        store.add_exemption(&longest, at(NOW)).unwrap();
        assert_eq!(store.exemptions().unwrap().len(), 1);
        assert_eq!(store.audit(None).unwrap().len(), 1);

        let err = store
            .remove_exemption(net("198.51.100.0/24"), "bob\r", at(NOW))
            .unwrap_err();
        assert!(
            matches!(err, StoreError::ControlCharacter { field: "who", .. }),
            "{err:?}"
        );
        let err = store
            .remove_exemption(net("198.51.100.1/24"), "bob", at(NOW))
            .unwrap_err();
        assert!(matches!(err, StoreError::HostBits { .. }), "{err:?}");
        assert_eq!(store.exemptions().unwrap().len(), 1);
        assert_eq!(store.audit(None).unwrap().len(), 1);
    }
}
