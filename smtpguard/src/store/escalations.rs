//! Bot classifications and escalations. A host classified as a bot gets a `bot_events` row
//! (at most one per classification window); a reoffender is a host with bot events at least
//! the reoffense gap apart. An escalation switches a monitor-mode host to enforcement for
//! itself alone, for a time that doubles with each level.

use std::{
    net::{IpAddr, Ipv6Addr},
    time::SystemTime,
};

use ipnet::IpNet;
use rusqlite::{OptionalExtension as _, params};
use serde::Serialize;

use super::{
    SYSTEM_WHO, Store, StoreError, audit::AuditAction, audit::insert_audit, sql,
    stored_optional_time, stored_time, to_millis,
};

/// A host classified as a bot at a time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BotEvent {
    pub host: IpAddr,
    #[serde(serialize_with = "super::serialize_time")]
    pub at: SystemTime,
    pub reason: String,
    /// The identity that held the host then, if one did: the reoffender it counts for.
    pub subscriber: Option<String>,
}

/// An escalation, active (no `ended`) or past.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Escalation {
    pub id: i64,
    pub host: IpAddr,
    #[serde(serialize_with = "super::serialize_time")]
    pub started: SystemTime,
    #[serde(serialize_with = "super::serialize_time")]
    pub until: SystemTime,
    /// 0 for the first escalation of the host, one more for each reoffense.
    pub level: u32,
    #[serde(serialize_with = "super::serialize_optional_time")]
    pub ended: Option<SystemTime>,
    pub ended_by: Option<String>,
}

fn key(host: IpAddr) -> [u8; 16] {
    match host {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

fn address(bytes: &[u8]) -> IpAddr {
    let bytes: [u8; 16] = bytes.try_into().unwrap_or([0; 16]);
    let v6 = Ipv6Addr::from(bytes);
    v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
}

const COLUMNS: &str = "id, host, started_ms, until_ms, level, ended_ms, ended_by";

type EscalationRow = (i64, Vec<u8>, i64, i64, u32, Option<i64>, Option<String>);

impl Store {
    /// Records a bot classification of `host`, which `subscriber` held then (if anyone did).
    pub fn record_bot(
        &mut self,
        host: IpAddr,
        at: SystemTime,
        reason: &str,
        subscriber: Option<&str>,
    ) -> Result<(), StoreError> {
        let at_ms = to_millis("classification time", at)?;
        self.write(|tx, path| {
            tx.execute(
                "INSERT OR IGNORE INTO bot_events (host, at_ms, reason, subscriber)
                 VALUES (?1, ?2, ?3, ?4)",
                params![&key(host)[..], at_ms, reason, subscriber],
            )
            .map_err(sql(path))?;
            Ok(())
        })
    }

    /// Bot classifications since `since`, oldest first.
    pub fn bot_events(&self, since: SystemTime) -> Result<Vec<BotEvent>, StoreError> {
        let path = &self.path;
        let since_ms = to_millis("since", since)?;
        let mut select = self
            .conn
            .prepare_cached(
                "SELECT host, at_ms, reason, subscriber FROM bot_events WHERE at_ms >= ?1
                 ORDER BY at_ms, host",
            )
            .map_err(sql(path))?;
        let rows = select
            .query_map([since_ms], |row| {
                Ok((
                    row.get::<_, Vec<u8>>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, Option<String>>(3)?,
                ))
            })
            .map_err(sql(path))?;
        rows.map(|row| {
            let (host, at_ms, reason, subscriber) = row.map_err(sql(path))?;
            Ok(BotEvent {
                host: address(&host),
                at: stored_time(path, "bot_events", "at_ms", at_ms)?,
                reason,
                subscriber,
            })
        })
        .collect()
    }

    /// Starts an escalation of `host` until `until` (audited); fails if one is active.
    pub fn escalate(
        &mut self,
        host: IpAddr,
        level: u32,
        now: SystemTime,
        until: SystemTime,
        reason: &str,
    ) -> Result<Escalation, StoreError> {
        let (now_ms, until_ms) = (
            to_millis("escalation start", now)?,
            to_millis("escalation end", until)?,
        );
        let subject = host.to_string();
        let id = self.write(|tx, path| {
            tx.execute(
                "INSERT INTO escalations (host, started_ms, until_ms, level) VALUES (?1, ?2, ?3, ?4)",
                params![&key(host)[..], now_ms, until_ms, level],
            )
            .map_err(sql(path))?;
            let id = tx.last_insert_rowid();
            let detail = format!("level {level} until {}; {reason}", humantime::format_rfc3339_seconds(until));
            insert_audit(tx, path, now_ms, AuditAction::Escalated, &subject, SYSTEM_WHO, &detail)?;
            Ok(id)
        })?;
        Ok(Escalation {
            id,
            host,
            started: now,
            until,
            level,
            ended: None,
            ended_by: None,
        })
    }

    /// Ends the active escalation of `host`: lifted by `who`, or expired (audited either way).
    pub fn end_escalation(
        &mut self,
        host: IpAddr,
        who: &str,
        expired: bool,
        now: SystemTime,
    ) -> Result<Escalation, StoreError> {
        let now_ms = to_millis("time", now)?;
        let active = self
            .active_escalations()?
            .into_iter()
            .find(|e| e.host == host)
            .ok_or(StoreError::NoEscalation { host })?;
        let (action, by) = if expired {
            (AuditAction::EscalationExpired, SYSTEM_WHO)
        } else {
            (AuditAction::EscalationLifted, who)
        };
        self.write(|tx, path| {
            tx.execute(
                "UPDATE escalations SET ended_ms = ?1, ended_by = ?2 WHERE id = ?3",
                params![now_ms, by, active.id],
            )
            .map_err(sql(path))?;
            let detail = format!(
                "level {} escalation since {}",
                active.level,
                humantime::format_rfc3339_seconds(active.started)
            );
            insert_audit(tx, path, now_ms, action, &host.to_string(), by, &detail)
        })?;
        Ok(Escalation {
            ended: Some(now),
            ended_by: Some(by.to_owned()),
            ..active
        })
    }

    pub fn active_escalations(&self) -> Result<Vec<Escalation>, StoreError> {
        self.select_escalations("WHERE ended_ms IS NULL ORDER BY started_ms, id", [])
    }

    /// Every escalation of a host in `prefix` (the host itself for a host prefix), oldest
    /// first.
    pub fn escalations_in(&self, prefix: IpNet) -> Result<Vec<Escalation>, StoreError> {
        self.select_escalations(
            "WHERE host BETWEEN ?1 AND ?2 ORDER BY started_ms, id",
            [
                key(prefix.network()).to_vec(),
                key(prefix.broadcast()).to_vec(),
            ],
        )
    }

    fn select_escalations<P: rusqlite::Params>(
        &self,
        clause: &str,
        params: P,
    ) -> Result<Vec<Escalation>, StoreError> {
        let path = &self.path;
        let mut select = self
            .conn
            .prepare_cached(&format!("SELECT {COLUMNS} FROM escalations {clause}"))
            .map_err(sql(path))?;
        let rows = select
            .query_map(params, |row| {
                Ok((
                    row.get(0)?,
                    row.get(1)?,
                    row.get(2)?,
                    row.get(3)?,
                    row.get(4)?,
                    row.get(5)?,
                    row.get(6)?,
                ))
            })
            .map_err(sql(path))?;
        rows.map(|row| {
            let (id, host, started, until, level, ended, ended_by): EscalationRow =
                row.map_err(sql(path))?;
            Ok(Escalation {
                id,
                host: address(&host),
                started: stored_time(path, "escalations", "started_ms", started)?,
                until: stored_time(path, "escalations", "until_ms", until)?,
                level,
                ended: stored_optional_time(path, "escalations", "ended_ms", ended)?,
                ended_by,
            })
        })
        .collect()
    }

    /// The active escalation that ends first, if any (the agent wakes then).
    pub fn next_escalation_end(&self) -> Result<Option<SystemTime>, StoreError> {
        let path = &self.path;
        let ms: Option<i64> = self
            .conn
            .query_row(
                "SELECT MIN(until_ms) FROM escalations WHERE ended_ms IS NULL",
                [],
                |row| row.get(0),
            )
            .optional()
            .map_err(sql(path))?
            .flatten();
        stored_optional_time(path, "escalations", "until_ms", ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::{at, temp_store};

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn escalations_start_end_and_are_audited() {
        let (_dir, mut store) = temp_store();
        let host = ip("100.127.0.9");
        let first = store.escalate(host, 0, at(100), at(200), "bot").unwrap();
        assert!(
            store.escalate(host, 1, at(110), at(300), "bot").is_err(),
            "one active per host"
        );
        assert_eq!(
            store.active_escalations().unwrap(),
            std::slice::from_ref(&first)
        );
        assert_eq!(store.next_escalation_end().unwrap(), Some(at(200)));
        let ended = store.end_escalation(host, "alice", false, at(150)).unwrap();
        assert_eq!(
            (ended.ended, ended.ended_by.as_deref()),
            (Some(at(150)), Some("alice"))
        );
        assert!(store.active_escalations().unwrap().is_empty());
        assert!(matches!(
            store.end_escalation(host, "alice", false, at(160)),
            Err(StoreError::NoEscalation { .. })
        ));
        let second = store
            .escalate(host, 1, at(400), at(600), "bot again")
            .unwrap();
        store.end_escalation(host, "x", true, at(600)).unwrap();
        let history = store.escalations_in(IpNet::from(host)).unwrap();
        assert_eq!(history.iter().map(|e| e.level).collect::<Vec<_>>(), [0, 1]);
        assert_eq!(history[1].id, second.id);
        assert_eq!(history[1].ended_by.as_deref(), Some(SYSTEM_WHO));
        let actions: Vec<&str> = store
            .audit(None)
            .unwrap()
            .iter()
            .map(|a| a.action.name())
            .collect();
        assert_eq!(
            actions,
            [
                "escalated",
                "escalation-lifted",
                "escalated",
                "escalation-expired"
            ]
        );
    }

    #[test]
    fn bot_events_round_trip() {
        let (_dir, mut store) = temp_store();
        store
            .record_bot(
                ip("100.64.0.2"),
                at(10),
                "30 distinct destinations within 10m",
                Some("cust-42@isp"),
            )
            .unwrap();
        store
            .record_bot(ip("2001:db8::2"), at(20), "70 attempts within 10m", None)
            .unwrap();
        store
            .record_bot(ip("100.64.0.2"), at(10), "again", None)
            .unwrap();
        let events = store.bot_events(at(0)).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].host, ip("100.64.0.2"));
        assert_eq!(events[0].subscriber.as_deref(), Some("cust-42@isp"));
        assert_eq!(events[1].host, ip("2001:db8::2"));
        assert_eq!(events[1].subscriber, None);
        assert_eq!(store.bot_events(at(15)).unwrap().len(), 1);
    }
}
