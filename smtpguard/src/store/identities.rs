//! Subscriber identities: customers exempt whatever address they hold, and the bindings of
//! addresses to identities with their start and stop times (from RADIUS accounting or
//! `smtpguard session`). Bindings are never deleted when they end, only stopped: who held an
//! address when is what an abuse desk asks (RFC 5068).

use std::path::Path;
use std::time::SystemTime;

use ipnet::IpNet;
use rusqlite::{Connection, OptionalExtension as _, params};
use serde::Serialize;

use super::audit::{AuditAction, insert_audit};
use super::{
    PrefixColumns, SYSTEM_WHO, Store, StoreError, check_text, describe_time, from_millis,
    future_time, parse_stored_prefix, query_all, quoted_or_none, sql, stored_optional_time,
    stored_time, to_millis,
};

/// The most bytes a subscriber identity may hold: a RADIUS attribute's value.
pub const MAX_SUBSCRIBER_BYTES: usize = 253;

/// The schema of migration 7.
pub(super) const SCHEMA: &str = "CREATE TABLE subscriber_exemptions (
     subscriber TEXT    NOT NULL PRIMARY KEY,
     reason     TEXT    NOT NULL,
     ticket     TEXT,
     who        TEXT    NOT NULL,
     created_ms INTEGER NOT NULL
 ) STRICT;

 CREATE TABLE bindings (
     id         INTEGER PRIMARY KEY AUTOINCREMENT,
     prefix     TEXT    NOT NULL,
     family     INTEGER NOT NULL CHECK (family IN (4, 6)),
     address    BLOB    NOT NULL,
     length     INTEGER NOT NULL,
     subscriber TEXT    NOT NULL,
     session    TEXT,
     started_ms INTEGER NOT NULL,
     stopped_ms INTEGER CHECK (stopped_ms >= started_ms)
 ) STRICT;
 CREATE UNIQUE INDEX bindings_current ON bindings (prefix) WHERE stopped_ms IS NULL;
 CREATE INDEX bindings_started ON bindings (family, started_ms);
 CREATE INDEX bindings_prefix ON bindings (prefix, started_ms);
 CREATE INDEX bindings_subscriber ON bindings (subscriber, started_ms);";

/// The schema of migration 9: the NAS (BNG) that announced a binding, so that its
/// Accounting-On or -Off (it restarted: every session it held is over) ends exactly its
/// bindings (older bindings and those made by `smtpguard session` have none); and the
/// identity that held a bot's host when it was classified, so that a reoffender is the
/// customer, whatever its address; and when an identity's exemption lapses.
pub(super) const MIGRATION_9: &str = "ALTER TABLE bindings ADD COLUMN nas TEXT;
 ALTER TABLE bot_events ADD COLUMN subscriber TEXT;
 ALTER TABLE subscriber_exemptions ADD COLUMN expires_ms INTEGER;";

/// A subscriber identity exemption to add.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NewSubscriberExemption {
    pub subscriber: String,
    pub reason: String,
    pub ticket: Option<String>,
    pub who: String,
    /// When it lapses; `None`: never.
    pub expires: Option<SystemTime>,
}

/// A stored subscriber identity exemption.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SubscriberExemption {
    pub subscriber: String,
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

/// Who holds a bound prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub subscriber: String,
    /// The RADIUS Acct-Session-Id; `None` for `smtpguard session start`.
    pub session: Option<String>,
    /// The NAS (BNG) whose accounting announced it; `None` for `smtpguard session start`.
    pub nas: Option<String>,
}

/// An address (or prefix) held by a subscriber identity from `started` until `stopped`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Binding {
    #[serde(serialize_with = "super::serialize_prefix")]
    pub prefix: IpNet,
    pub subscriber: String,
    /// The RADIUS Acct-Session-Id; `None` for `smtpguard session start`.
    pub session: Option<String>,
    /// The NAS that announced it; `None` for `smtpguard session start`.
    pub nas: Option<String>,
    #[serde(serialize_with = "super::serialize_time")]
    pub started: SystemTime,
    /// `None` while it holds.
    #[serde(serialize_with = "super::serialize_optional_time")]
    pub stopped: Option<SystemTime>,
}

/// Refuses an identity no store keeps: empty, too long, or with control characters.
pub fn check_subscriber(subscriber: &str) -> Result<(), StoreError> {
    if subscriber.trim().is_empty() {
        return Err(StoreError::EmptySubscriber);
    }
    if subscriber.len() > MAX_SUBSCRIBER_BYTES {
        return Err(StoreError::SubscriberTooLong {
            len: subscriber.len(),
        });
    }
    check_text("subscriber", subscriber)
}

impl NewSubscriberExemption {
    /// The exemption as a store keeps it when added at `now`, once its fields are sane.
    pub fn checked(&self, now: SystemTime) -> Result<SubscriberExemption, StoreError> {
        let now_ms = to_millis("now", now)?;
        check_subscriber(&self.subscriber)?;
        check_text("reason", &self.reason)?;
        if self.reason.trim().is_empty() {
            return Err(StoreError::EmptySubscriberReason {
                subscriber: self.subscriber.clone(),
            });
        }
        if let Some(ticket) = &self.ticket {
            check_text("ticket", ticket)?;
        }
        check_text("who", &self.who)?;
        let expires = self
            .expires
            .map(|expires| {
                future_time(expires, now_ms, || {
                    StoreError::SubscriberExpiryNotInFuture {
                        subscriber: self.subscriber.clone(),
                        expires,
                        now,
                    }
                })
            })
            .transpose()?;
        Ok(SubscriberExemption {
            subscriber: self.subscriber.clone(),
            reason: self.reason.clone(),
            ticket: self.ticket.clone(),
            who: self.who.clone(),
            created: from_millis(now_ms).unwrap_or(now),
            expires,
            gateway: None,
        })
    }
}

/// The audit detail of a subscriber exemption: all its fields but the identity (the subject).
fn describe(exemption: &SubscriberExemption) -> String {
    let expires = exemption
        .expires
        .map_or_else(|| "never".to_owned(), describe_time);
    format!(
        "reason {:?}; ticket {}; expires {expires}; added by {:?} at {}",
        exemption.reason,
        quoted_or_none(exemption.ticket.as_deref()),
        exemption.who,
        describe_time(exemption.created)
    )
}

const EXEMPTIONS: &str = "subscriber_exemptions";
const BINDINGS: &str = "bindings";
const BINDING_COLUMNS: &str = "prefix, subscriber, session, nas, started_ms, stopped_ms";

fn select_exemptions(
    conn: &Connection,
    path: &Path,
    filter: &str,
    param: impl rusqlite::ToSql,
) -> Result<Vec<SubscriberExemption>, StoreError> {
    let query = format!(
        "SELECT subscriber, reason, ticket, who, created_ms, expires_ms FROM {EXEMPTIONS} \
         WHERE {filter} ORDER BY subscriber"
    );
    let rows = query_all(conn, path, &query, [param], |row| {
        Ok((
            row.get::<_, String>(0)?,
            row.get::<_, String>(1)?,
            row.get::<_, Option<String>>(2)?,
            row.get::<_, String>(3)?,
            row.get::<_, i64>(4)?,
            row.get::<_, Option<i64>>(5)?,
        ))
    })?;
    rows.into_iter()
        .map(
            |(subscriber, reason, ticket, who, created_ms, expires_ms)| {
                Ok(SubscriberExemption {
                    subscriber,
                    reason,
                    ticket,
                    who,
                    created: stored_time(path, EXEMPTIONS, "created_ms", created_ms)?,
                    expires: stored_optional_time(path, EXEMPTIONS, "expires_ms", expires_ms)?,
                    gateway: None,
                })
            },
        )
        .collect()
}

/// Reads the bindings matching `filter` (an SQL condition on `?1` and `?2`), oldest first.
fn select_bindings(
    conn: &Connection,
    path: &Path,
    filter: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<Binding>, StoreError> {
    let query =
        format!("SELECT {BINDING_COLUMNS} FROM {BINDINGS} WHERE {filter} ORDER BY started_ms, id");
    let rows = query_all(conn, path, &query, params, |row| {
        Ok((
            row.get::<_, String>(0)?,
            row.get::<_, String>(1)?,
            row.get::<_, Option<String>>(2)?,
            row.get::<_, Option<String>>(3)?,
            row.get::<_, i64>(4)?,
            row.get::<_, Option<i64>>(5)?,
        ))
    })?;
    rows.into_iter()
        .map(
            |(prefix, subscriber, session, nas, started_ms, stopped_ms)| {
                Ok(Binding {
                    prefix: parse_stored_prefix(path, BINDINGS, prefix)?,
                    subscriber,
                    session,
                    nas,
                    started: stored_time(path, BINDINGS, "started_ms", started_ms)?,
                    stopped: stored_optional_time(path, BINDINGS, "stopped_ms", stopped_ms)?,
                })
            },
        )
        .collect()
}

/// Checks what a binding to `holder` would store.
fn check_holder(prefix: IpNet, holder: &Holder) -> Result<(), StoreError> {
    if prefix.trunc() != prefix {
        return Err(StoreError::BoundHostBits { prefix });
    }
    check_subscriber(&holder.subscriber)?;
    if let Some(session) = &holder.session {
        check_text("session", session)?;
    }
    if let Some(nas) = &holder.nas {
        check_text("nas", nas)?;
    }
    Ok(())
}

impl Binding {
    fn is_held_by(&self, holder: &Holder) -> bool {
        self.subscriber == holder.subscriber
            && self.session == holder.session
            && self.nas == holder.nas
    }
}

impl Store {
    /// Adds a subscriber identity exemption and its [`AuditAction::SubscriberExempted`] entry
    /// in one transaction. Fails with [`StoreError::DuplicateSubscriber`] if the identity is
    /// exempt already.
    pub fn add_subscriber_exemption(
        &mut self,
        new: &NewSubscriberExemption,
        now: SystemTime,
    ) -> Result<SubscriberExemption, StoreError> {
        let now_ms = to_millis("now", now)?;
        let exemption = new.checked(now)?;
        self.write(|tx, path| {
            let exists = tx
                .query_row(
                    "SELECT 1 FROM subscriber_exemptions WHERE subscriber = ?1",
                    [&exemption.subscriber],
                    |_| Ok(()),
                )
                .optional()
                .map_err(sql(path))?;
            if exists.is_some() {
                return Err(StoreError::DuplicateSubscriber {
                    subscriber: exemption.subscriber.clone(),
                });
            }
            let expires_ms = exemption
                .expires
                .map(|at| to_millis("expires", at))
                .transpose()?;
            tx.execute(
                "INSERT INTO subscriber_exemptions
                     (subscriber, reason, ticket, who, created_ms, expires_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    exemption.subscriber,
                    exemption.reason,
                    exemption.ticket,
                    exemption.who,
                    now_ms,
                    expires_ms
                ],
            )
            .map_err(sql(path))?;
            insert_audit(
                tx,
                path,
                now_ms,
                AuditAction::SubscriberExempted,
                &exemption.subscriber,
                &exemption.who,
                &describe(&exemption),
            )
        })?;
        Ok(exemption)
    }

    /// Removes the exemption of `subscriber` and records an
    /// [`AuditAction::SubscriberExemptionRemoved`] entry by `who`, in one transaction.
    pub fn remove_subscriber_exemption(
        &mut self,
        subscriber: &str,
        who: &str,
        now: SystemTime,
    ) -> Result<SubscriberExemption, StoreError> {
        let now_ms = to_millis("now", now)?;
        check_subscriber(subscriber)?;
        check_text("who", who)?;
        self.write(|tx, path| {
            let removed = select_exemptions(tx, path, "subscriber = ?1", subscriber)?
                .pop()
                .ok_or_else(|| StoreError::NoSubscriberExemption {
                    subscriber: subscriber.to_owned(),
                })?;
            tx.execute(
                "DELETE FROM subscriber_exemptions WHERE subscriber = ?1",
                [subscriber],
            )
            .map_err(sql(path))?;
            insert_audit(
                tx,
                path,
                now_ms,
                AuditAction::SubscriberExemptionRemoved,
                subscriber,
                who,
                &describe(&removed),
            )?;
            Ok(removed)
        })
    }

    /// Removes every identity exemption whose `expires <= now`, audits each as
    /// [`AuditAction::SubscriberExemptionExpired`] by [`SYSTEM_WHO`], all in one transaction,
    /// and returns them by identity.
    pub fn expire_subscriber_exemptions(
        &mut self,
        now: SystemTime,
    ) -> Result<Vec<SubscriberExemption>, StoreError> {
        let now_ms = to_millis("now", now)?;
        self.write(|tx, path| {
            let expired = select_exemptions(tx, path, "expires_ms <= ?1", now_ms)?;
            for exemption in &expired {
                tx.execute(
                    "DELETE FROM subscriber_exemptions WHERE subscriber = ?1",
                    [&exemption.subscriber],
                )
                .map_err(sql(path))?;
                insert_audit(
                    tx,
                    path,
                    now_ms,
                    AuditAction::SubscriberExemptionExpired,
                    &exemption.subscriber,
                    SYSTEM_WHO,
                    &describe(exemption),
                )?;
            }
            Ok(expired)
        })
    }

    /// Every subscriber identity exemption, by identity.
    pub fn subscriber_exemptions(&self) -> Result<Vec<SubscriberExemption>, StoreError> {
        select_exemptions(&self.conn, &self.path, "?1", true)
    }

    /// Makes each prefix held by its holder from `now` (by nobody, for `None`), in order and
    /// in one transaction, so that a batch of accounting costs one commit: the binding a
    /// prefix had until now stops. A prefix its holder holds already is left as it is. An
    /// empty batch writes nothing.
    pub fn rebind(
        &mut self,
        changes: &[(IpNet, Option<&Holder>)],
        now: SystemTime,
    ) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        let now_ms = to_millis("now", now)?;
        for (prefix, holder) in changes {
            if let Some(holder) = holder {
                check_holder(*prefix, holder)?;
            }
        }
        self.write(|tx, path| {
            for (prefix, holder) in changes {
                let columns = PrefixColumns::new(*prefix);
                if let Some(holder) = holder {
                    let current = select_bindings(
                        tx,
                        path,
                        "prefix = ?1 AND stopped_ms IS NULL",
                        [&columns.text],
                    )?;
                    if current.iter().any(|b| b.is_held_by(holder)) {
                        continue;
                    }
                }
                // A binding started later than `now` (a clock step back) stops when it
                // started.
                tx.execute(
                    "UPDATE bindings SET stopped_ms = max(started_ms, ?2)
                     WHERE prefix = ?1 AND stopped_ms IS NULL",
                    params![columns.text, now_ms],
                )
                .map_err(sql(path))?;
                let Some(holder) = holder else {
                    continue;
                };
                tx.execute(
                    "INSERT INTO bindings
                         (prefix, family, address, length, subscriber, session, nas, started_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    params![
                        columns.text,
                        columns.family,
                        columns.address,
                        columns.length,
                        holder.subscriber,
                        holder.session,
                        holder.nas,
                        now_ms
                    ],
                )
                .map_err(sql(path))?;
            }
            Ok(())
        })
    }

    /// The bindings that hold now, oldest first.
    pub fn current_bindings(&self) -> Result<Vec<Binding>, StoreError> {
        select_bindings(&self.conn, &self.path, "stopped_ms IS NULL AND ?1", [true])
    }

    /// The binding that held `address` at `at`, looked up (by index) among the prefixes of
    /// `lengths` that hold it, in that order: the first length with a binding wins.
    pub fn binding_at(
        &self,
        address: std::net::IpAddr,
        at: SystemTime,
        lengths: impl IntoIterator<Item = u8>,
    ) -> Result<Option<Binding>, StoreError> {
        let at_ms = to_millis("at", at)?;
        for length in lengths {
            let Ok(prefix) = IpNet::new(address, length) else {
                continue;
            };
            let held = select_bindings(
                &self.conn,
                &self.path,
                "prefix = ?1 AND started_ms <= ?2 AND (stopped_ms IS NULL OR stopped_ms > ?2)",
                params![prefix.trunc().to_string(), at_ms],
            )?
            .pop();
            if held.is_some() {
                return Ok(held);
            }
        }
        Ok(None)
    }

    /// The identity whose binding held `host` (its first `host_len` bits) at `at`: a binding
    /// is a host or wider, so only those lengths are looked up, the most specific first.
    pub fn identity_at(
        &self,
        host: std::net::IpAddr,
        host_len: u8,
        at: SystemTime,
    ) -> Result<Option<String>, StoreError> {
        let held = self.binding_at(host, at, (0..=host_len).rev())?;
        Ok(held.map(|b| b.subscriber))
    }

    /// Every binding `subscriber` ever had, oldest first.
    pub fn bindings_of(&self, subscriber: &str) -> Result<Vec<Binding>, StoreError> {
        select_bindings(&self.conn, &self.path, "subscriber = ?1", [subscriber])
    }

    /// The bindings that held at some time between `from` and `to` (both included), oldest
    /// first: what a report over that window names its hosts by.
    pub fn bindings_between(
        &self,
        from: SystemTime,
        to: SystemTime,
    ) -> Result<Vec<Binding>, StoreError> {
        let from_ms = to_millis("from", from)?;
        let to_ms = to_millis("to", to)?;
        select_bindings(
            &self.conn,
            &self.path,
            "started_ms <= ?2 AND (stopped_ms IS NULL OR stopped_ms > ?1)",
            [from_ms, to_ms],
        )
    }
}

/// The binding among `bindings` that held `address` at `at`: the most specific prefix
/// holding it, the latest started where several did.
pub fn holder_at(
    bindings: &[Binding],
    address: std::net::IpAddr,
    at: SystemTime,
) -> Option<&Binding> {
    bindings
        .iter()
        .filter(|b| {
            b.prefix.contains(&address) && b.started <= at && b.stopped.is_none_or(|s| s > at)
        })
        .max_by_key(|b| (b.prefix.prefix_len(), b.started))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::testing::{NOW, at, net, temp_store};
    use super::*;

    fn holder(subscriber: &str, session: Option<&str>) -> Holder {
        Holder {
            subscriber: subscriber.to_owned(),
            session: session.map(str::to_owned),
            nas: session.map(|_| "192.0.2.10".to_owned()),
        }
    }

    fn bind(
        store: &mut Store,
        prefix: IpNet,
        subscriber: &str,
        session: Option<&str>,
        at: SystemTime,
    ) -> Result<(), StoreError> {
        store.rebind(&[(prefix, Some(&holder(subscriber, session)))], at)
    }

    fn unbind(store: &mut Store, prefix: IpNet, at: SystemTime) {
        store.rebind(&[(prefix, None)], at).unwrap();
    }

    fn exemption(subscriber: &str) -> NewSubscriberExemption {
        NewSubscriberExemption {
            subscriber: subscriber.to_owned(),
            reason: "own mail server".to_owned(),
            ticket: Some("T-1".to_owned()),
            who: "alice".to_owned(),
            expires: None,
        }
    }

    #[test]
    fn subscriber_exemptions_expire_when_they_say() {
        let (_dir, mut store) = temp_store();
        let lapsing = NewSubscriberExemption {
            expires: Some(at(NOW + 60)),
            ..exemption("cust-7")
        };
        let err = store
            .add_subscriber_exemption(&lapsing, at(NOW + 60))
            .unwrap_err();
        assert!(
            err.to_string().contains("expected an expiry in the future"),
            "{err}"
        );
        assert_eq!(
            crate::policy::PolicyError::from(err).rejection(),
            Some(crate::policy::Rejection::Invalid),
            "the caller's mistake, not the store failing"
        );
        store.add_subscriber_exemption(&lapsing, at(NOW)).unwrap();
        store
            .add_subscriber_exemption(&exemption("cust-8"), at(NOW))
            .unwrap();
        assert_eq!(store.next_expiry().unwrap(), Some(at(NOW + 60)));
        assert!(
            store
                .expire_subscriber_exemptions(at(NOW + 59))
                .unwrap()
                .is_empty()
        );
        let expired = store.expire_subscriber_exemptions(at(NOW + 60)).unwrap();
        assert_eq!(
            expired
                .iter()
                .map(|e| e.subscriber.as_str())
                .collect::<Vec<_>>(),
            ["cust-7"]
        );
        let left = store.subscriber_exemptions().unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(
            (left[0].subscriber.as_str(), left[0].expires),
            ("cust-8", None)
        );
        assert_eq!(store.next_expiry().unwrap(), None);
        let last = store.audit(None).unwrap().pop().unwrap();
        assert_eq!(
            (last.action, last.subject.as_str(), last.who.as_str()),
            (
                AuditAction::SubscriberExemptionExpired,
                "cust-7",
                SYSTEM_WHO
            )
        );
    }

    #[test]
    fn subscriber_exemptions_round_trip_and_are_audited() {
        let (_dir, mut store) = temp_store();
        let added = store
            .add_subscriber_exemption(&exemption("cust-42@isp"), at(NOW))
            .unwrap();
        assert_eq!(store.subscriber_exemptions().unwrap(), vec![added.clone()]);
        let err = store
            .add_subscriber_exemption(&exemption("cust-42@isp"), at(NOW + 1))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "subscriber \"cust-42@isp\" is already exempt; expected an identity not yet listed \
             (remove it first)"
        );
        let removed = store
            .remove_subscriber_exemption("cust-42@isp", "bob", at(NOW + 2))
            .unwrap();
        assert_eq!(removed, added);
        assert!(store.subscriber_exemptions().unwrap().is_empty());
        let err = store
            .remove_subscriber_exemption("cust-42@isp", "bob", at(NOW + 3))
            .unwrap_err();
        assert!(
            matches!(err, StoreError::NoSubscriberExemption { .. }),
            "{err:?}"
        );
        let trail: Vec<(AuditAction, String, String)> = store
            .audit(None)
            .unwrap()
            .into_iter()
            .map(|e| (e.action, e.subject, e.who))
            .collect();
        assert_eq!(
            trail,
            [
                (
                    AuditAction::SubscriberExempted,
                    "cust-42@isp".to_owned(),
                    "alice".to_owned()
                ),
                (
                    AuditAction::SubscriberExemptionRemoved,
                    "cust-42@isp".to_owned(),
                    "bob".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn bad_identities_are_refused_naming_the_value() {
        let (_dir, mut store) = temp_store();
        for (subscriber, expected) in [
            (" ", "an empty subscriber identity; expected"),
            (
                "a\u{7}b",
                "subscriber \"a\\u{7}b\" contains the control character U+0007",
            ),
        ] {
            let err = store
                .add_subscriber_exemption(&exemption(subscriber), at(NOW))
                .unwrap_err();
            assert!(err.to_string().contains(expected), "{err}");
            let err =
                bind(&mut store, net("100.64.0.2/32"), subscriber, None, at(NOW)).unwrap_err();
            assert!(err.to_string().contains(expected), "{err}");
        }
        let long = "x".repeat(MAX_SUBSCRIBER_BYTES + 1);
        let err = bind(&mut store, net("100.64.0.2/32"), &long, None, at(NOW)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "subscriber is 254 bytes long; expected at most 253 bytes (a RADIUS attribute)"
        );
        let err = bind(&mut store, net("100.64.0.2/24"), "c", None, at(NOW)).unwrap_err();
        assert!(err.to_string().contains("has host bits set"), "{err}");
        assert!(store.current_bindings().unwrap().is_empty());
    }

    #[test]
    fn a_prefix_moves_between_identities_and_the_history_keeps_both() {
        let (_dir, mut store) = temp_store();
        let prefix = net("100.64.0.2/32");
        let started = |store: &Store| {
            let current = store.current_bindings().unwrap();
            current
                .iter()
                .map(|b| (b.subscriber.clone(), b.started))
                .collect::<Vec<_>>()
        };
        bind(&mut store, prefix, "alice", Some("s1"), at(NOW)).unwrap();
        // The same binding again (an Interim-Update) changes nothing.
        bind(&mut store, prefix, "alice", Some("s1"), at(NOW + 5)).unwrap();
        assert_eq!(started(&store), [("alice".to_owned(), at(NOW))]);
        bind(&mut store, prefix, "bob", Some("s2"), at(NOW + 10)).unwrap();
        assert_eq!(started(&store), [("bob".to_owned(), at(NOW + 10))]);
        assert_eq!(
            store.current_bindings().unwrap()[0].nas.as_deref(),
            Some("192.0.2.10")
        );

        unbind(&mut store, prefix, at(NOW + 20));
        unbind(&mut store, prefix, at(NOW + 21));
        assert!(store.current_bindings().unwrap().is_empty());

        let history = store.bindings_between(at(NOW), at(NOW + 30)).unwrap();
        let address = "100.64.0.2".parse().unwrap();
        let who = |secs: u64| {
            holder_at(&history, address, at(NOW) + Duration::from_secs(secs))
                .map(|b| b.subscriber.as_str())
        };
        assert_eq!(who(0), Some("alice"));
        assert_eq!(who(9), Some("alice"));
        assert_eq!(who(10), Some("bob"));
        assert_eq!(who(19), Some("bob"));
        assert_eq!(who(20), None);
        assert_eq!(
            store.bindings_between(at(NOW + 25), at(NOW + 30)).unwrap(),
            vec![]
        );
        // The indexed lookup agrees with the history at every moment.
        for secs in [0, 9, 10, 19, 20] {
            let indexed = store
                .binding_at(address, at(NOW + secs), (0..=32).rev())
                .unwrap();
            assert_eq!(
                indexed.as_ref().map(|b| b.subscriber.as_str()),
                who(secs),
                "at +{secs}s"
            );
        }
    }

    #[test]
    fn a_batch_is_applied_in_order_and_all_or_nothing() {
        let (_dir, mut store) = temp_store();
        let (a, b) = (net("100.64.0.2/32"), net("100.64.0.3/32"));
        let (alice, bob) = (holder("alice", Some("s1")), holder("bob", Some("s2")));
        store
            .rebind(
                &[(a, Some(&alice)), (b, Some(&alice)), (a, Some(&bob))],
                at(NOW),
            )
            .unwrap();
        let current: Vec<(IpNet, String)> = store
            .current_bindings()
            .unwrap()
            .into_iter()
            .map(|b| (b.prefix, b.subscriber))
            .collect();
        assert_eq!(current, [(b, "alice".to_owned()), (a, "bob".to_owned())]);
        // A bad entry late in a batch: the earlier ones are not stored either.
        let err = store
            .rebind(
                &[(b, None), (net("100.64.0.4/24"), Some(&bob))],
                at(NOW + 1),
            )
            .unwrap_err();
        assert!(err.to_string().contains("has host bits set"), "{err}");
        assert_eq!(store.current_bindings().unwrap().len(), 2);
        store.rebind(&[], at(NOW + 2)).unwrap();
        assert_eq!(store.current_bindings().unwrap().len(), 2);
    }

    #[test]
    fn bindings_survive_reopening() {
        let (dir, mut store) = temp_store();
        bind(
            &mut store,
            net("2001:db8:1000::/56"),
            "carol",
            Some("s9"),
            at(NOW),
        )
        .unwrap();
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        let current = store.current_bindings().unwrap();
        assert_eq!(
            current,
            vec![Binding {
                prefix: net("2001:db8:1000::/56"),
                subscriber: "carol".to_owned(),
                session: Some("s9".to_owned()),
                nas: Some("192.0.2.10".to_owned()),
                started: at(NOW),
                stopped: None,
            }]
        );
    }
}
