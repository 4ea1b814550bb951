//! Runtime relays: destinations (the ISP's smarthosts) allowed on port 25, added at run time on
//! top of the config file's `[[relays]]`.

use std::path::Path;
use std::time::SystemTime;

use ipnet::IpNet;
use rusqlite::{Connection, params};
use serde::Serialize;

use super::audit::{AuditAction, insert_audit};
use super::{
    EntryKind, PREFIX_ORDER, PrefixColumns, PrefixTable, Store, StoreError, check_prefix,
    check_text, describe_time, from_millis, parse_stored_prefix, sql, stored_time, to_millis,
};

/// A runtime relay to add.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NewRelay {
    #[serde(serialize_with = "super::serialize_prefix")]
    pub prefix: IpNet,
    /// What the relay is.
    pub note: Option<String>,
    /// Who adds it.
    pub who: String,
}

/// A stored runtime relay. `created` has millisecond precision.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuntimeRelay {
    #[serde(serialize_with = "super::serialize_prefix")]
    pub prefix: IpNet,
    pub note: Option<String>,
    pub who: String,
    #[serde(serialize_with = "super::serialize_time")]
    pub created: SystemTime,
    /// The gateway it was made on, in fleet mode; `None` in a gateway's own store.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
}

impl NewRelay {
    /// The relay as the store or a fleet source keeps it when added at `now`, once its fields
    /// are sane.
    pub fn checked(&self, now: SystemTime) -> Result<RuntimeRelay, StoreError> {
        let now_ms = to_millis("now", now)?;
        check_prefix(EntryKind::Relay, self.prefix)?;
        if let Some(note) = &self.note {
            check_text("note", note)?;
        }
        check_text("who", &self.who)?;
        Ok(RuntimeRelay {
            prefix: self.prefix,
            note: self.note.clone(),
            who: self.who.clone(),
            created: from_millis(now_ms).unwrap_or(now),
            gateway: None,
        })
    }
}

const TABLE: &str = "relays";

/// Reads the relays matching `filter` (an SQL condition on `?1`, bound to `param`), in prefix
/// order.
fn select(
    conn: &Connection,
    path: &Path,
    filter: &str,
    param: impl rusqlite::ToSql,
) -> Result<Vec<RuntimeRelay>, StoreError> {
    let query = format!(
        "SELECT prefix, note, who, created_ms FROM {TABLE} WHERE {filter} ORDER BY {PREFIX_ORDER}"
    );
    let mut statement = conn.prepare(&query).map_err(sql(path))?;
    let rows = statement
        .query_map([param], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, Option<String>>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, i64>(3)?,
            ))
        })
        .map_err(sql(path))?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(sql(path))?;
    rows.into_iter()
        .map(|(prefix, note, who, created_ms)| {
            Ok(RuntimeRelay {
                prefix: parse_stored_prefix(path, TABLE, prefix)?,
                note,
                who,
                created: stored_time(path, TABLE, "created_ms", created_ms)?,
                gateway: None,
            })
        })
        .collect()
}

/// The audit detail of a relay: all its fields but the prefix (the subject).
fn describe(relay: &RuntimeRelay) -> String {
    let note = match &relay.note {
        Some(note) => format!("{note:?}"),
        None => "none".to_owned(),
    };
    format!(
        "note {note}; added by {:?} at {}",
        relay.who,
        describe_time(relay.created)
    )
}

const RELAYS: PrefixTable<RuntimeRelay> = PrefixTable {
    kind: EntryKind::Relay,
    name: TABLE,
    removed: AuditAction::RelayRemoved,
    select: |conn, path, filter, param| select(conn, path, filter, param),
    describe,
};

impl Store {
    /// Adds a runtime relay and its [`AuditAction::RelayAdded`] entry in one transaction.
    /// Fails with [`StoreError::Duplicate`] if the prefix is already a runtime relay.
    pub fn add_relay(
        &mut self,
        new: &NewRelay,
        now: SystemTime,
    ) -> Result<RuntimeRelay, StoreError> {
        let now_ms = to_millis("now", now)?;
        let relay = new.checked(now)?;
        let columns = PrefixColumns::new(new.prefix);
        self.write(|tx, path| {
            RELAYS.refuse_duplicate(tx, path, &columns, new.prefix)?;
            tx.execute(
                "INSERT INTO relays (prefix, family, address, length, note, who, created_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    columns.text,
                    columns.family,
                    columns.address,
                    columns.length,
                    relay.note,
                    relay.who,
                    now_ms,
                ],
            )
            .map_err(sql(path))?;
            insert_audit(
                tx,
                path,
                now_ms,
                AuditAction::RelayAdded,
                &columns.text,
                &relay.who,
                &describe(&relay),
            )
        })?;
        Ok(relay)
    }

    /// Removes the runtime relay of exactly `prefix` and records an
    /// [`AuditAction::RelayRemoved`] entry by `who`, in one transaction; returns what was
    /// removed. Fails with [`StoreError::NotFound`] if there is none (relays from the config
    /// file are not in the store).
    pub fn remove_relay(
        &mut self,
        prefix: IpNet,
        who: &str,
        now: SystemTime,
    ) -> Result<RuntimeRelay, StoreError> {
        self.remove_prefix(&RELAYS, prefix, who, now)
    }

    /// Every runtime relay, ordered by prefix: IPv4 before IPv6, then by address, then by
    /// length.
    pub fn relays(&self) -> Result<Vec<RuntimeRelay>, StoreError> {
        // `WHERE ?1` with true: every row.
        select(&self.conn, &self.path, "?1", true)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{NOW, at, net, temp_store};
    use super::*;

    fn new(prefix: &str) -> NewRelay {
        NewRelay {
            prefix: net(prefix),
            note: Some("smarthost pool".to_owned()),
            who: "alice".to_owned(),
        }
    }

    #[test]
    fn add_list_remove_round_trip() {
        let (_dir, mut store) = temp_store();
        let added = store.add_relay(&new("192.0.2.0/28"), at(NOW)).unwrap();
        assert_eq!(
            added,
            RuntimeRelay {
                prefix: net("192.0.2.0/28"),
                note: Some("smarthost pool".to_owned()),
                who: "alice".to_owned(),
                created: at(NOW),
                gateway: None,
            }
        );
        let bare = store
            .add_relay(
                &NewRelay {
                    note: None,
                    ..new("2001:db8:25::/64")
                },
                at(NOW + 1),
            )
            .unwrap();
        assert_eq!(store.relays().unwrap(), vec![added.clone(), bare.clone()]);
        assert_eq!(
            serde_json::to_value(&bare).unwrap(),
            serde_json::json!({
                "prefix": "2001:db8:25::/64",
                "note": null,
                "who": "alice",
                "created": "2023-11-14T22:13:21Z",
            })
        );

        let removed = store
            .remove_relay(net("192.0.2.0/28"), "bob", at(NOW + 2))
            .unwrap();
        assert_eq!(removed, added);
        assert_eq!(store.relays().unwrap(), vec![bare]);

        let trail: Vec<_> = store
            .audit(None)
            .unwrap()
            .into_iter()
            .map(|e| (e.action, e.subject, e.who, e.detail))
            .collect();
        assert_eq!(
            trail,
            [
                (
                    AuditAction::RelayAdded,
                    "192.0.2.0/28".to_owned(),
                    "alice".to_owned(),
                    "note \"smarthost pool\"; added by \"alice\" at 2023-11-14T22:13:20Z"
                        .to_owned()
                ),
                (
                    AuditAction::RelayAdded,
                    "2001:db8:25::/64".to_owned(),
                    "alice".to_owned(),
                    "note none; added by \"alice\" at 2023-11-14T22:13:21Z".to_owned()
                ),
                (
                    AuditAction::RelayRemoved,
                    "192.0.2.0/28".to_owned(),
                    "bob".to_owned(),
                    "note \"smarthost pool\"; added by \"alice\" at 2023-11-14T22:13:20Z"
                        .to_owned()
                ),
            ]
        );
    }

    #[test]
    fn duplicates_absent_prefixes_and_invalid_input_change_nothing() {
        let (_dir, mut store) = temp_store();
        let added = store.add_relay(&new("192.0.2.0/28"), at(NOW)).unwrap();

        let err = store.add_relay(&new("192.0.2.0/28"), at(NOW)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "runtime relay 192.0.2.0/28 already exists; expected a prefix not yet listed \
             (remove it first)"
        );
        let err = store
            .remove_relay(net("192.0.2.16/28"), "bob", at(NOW))
            .unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::NotFound {
                    kind: EntryKind::Relay,
                    ..
                }
            ),
            "{err:?}"
        );
        let err = store.add_relay(&new("192.0.2.1/28"), at(NOW)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "runtime relay prefix 192.0.2.1/28 has host bits set; expected the network address \
             192.0.2.0/28"
        );
        let err = store
            .add_relay(
                &NewRelay {
                    note: Some("a\tb".to_owned()),
                    ..new("192.0.2.64/28")
                },
                at(NOW),
            )
            .unwrap_err();
        assert!(
            matches!(err, StoreError::ControlCharacter { field: "note", .. }),
            "{err:?}"
        );
        let err = store
            .add_relay(
                &NewRelay {
                    who: "w".repeat(2000),
                    ..new("192.0.2.64/28")
                },
                at(NOW),
            )
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "who is 2000 bytes long; expected at most 1024 bytes"
        );

        assert_eq!(store.relays().unwrap(), vec![added]);
        assert_eq!(store.audit(None).unwrap().len(), 1);
    }

    #[test]
    fn relays_are_ordered_by_family_address_length() {
        let (_dir, mut store) = temp_store();
        for prefix in [
            "2001:db8::/32",
            "192.0.2.128/25",
            "10.0.0.0/8",
            "192.0.2.0/24",
            "192.0.2.0/25",
        ] {
            store.add_relay(&new(prefix), at(NOW)).unwrap();
        }
        let listed: Vec<String> = store
            .relays()
            .unwrap()
            .iter()
            .map(|r| r.prefix.to_string())
            .collect();
        assert_eq!(
            listed,
            [
                "10.0.0.0/8",
                "192.0.2.0/24",
                "192.0.2.0/25",
                "192.0.2.128/25",
                "2001:db8::/32"
            ]
        );
    }
}
