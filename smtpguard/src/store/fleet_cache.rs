//! The last good fleet policy (fleet mode): the etcd keys under the fleet prefix as the agent
//! last saw them, and the revision they were read at. An agent that starts while etcd is
//! unreachable enforces this at once, instead of nothing or a stale config-only policy.

use std::time::SystemTime;

use rusqlite::{OptionalExtension as _, params};

use super::{Store, StoreError, from_millis, sql, to_millis};

/// One cached etcd key: its full name, its value as etcd holds it, and its revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedKey {
    pub key: String,
    pub value: Vec<u8>,
    pub mod_revision: i64,
}

/// The cached fleet state: the keys, the revision they are complete at and when that was read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FleetCache {
    pub keys: Vec<CachedKey>,
    pub revision: i64,
    pub synced: Option<SystemTime>,
}

impl Store {
    pub fn fleet_cache(&self) -> Result<FleetCache, StoreError> {
        let path = &self.path;
        let mut statement = self
            .conn
            .prepare("SELECT key, value, mod_revision FROM fleet_keys ORDER BY key")
            .map_err(sql(path))?;
        let keys = statement
            .query_map([], |row| {
                Ok(CachedKey {
                    key: row.get(0)?,
                    value: row.get(1)?,
                    mod_revision: row.get(2)?,
                })
            })
            .map_err(sql(path))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(sql(path))?;
        let state: Option<(i64, i64)> = self
            .conn
            .query_row(
                "SELECT revision, synced_ms FROM fleet_state WHERE id = 1",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()
            .map_err(sql(path))?;
        let (revision, synced) = state.map_or((0, None), |(revision, synced_ms)| {
            (revision, from_millis(synced_ms))
        });
        Ok(FleetCache {
            keys,
            revision,
            synced,
        })
    }

    /// Records what changed since the last call: `upserts` written, `deletes` gone, and the
    /// revision the whole is now complete at; `replace` first forgets every key (a relist).
    pub fn save_fleet_cache(
        &mut self,
        replace: bool,
        upserts: &[CachedKey],
        deletes: &[String],
        revision: i64,
        now: SystemTime,
    ) -> Result<(), StoreError> {
        let now_ms = to_millis("synced", now)?;
        self.write(|tx, path| {
            if replace {
                tx.execute("DELETE FROM fleet_keys", [])
                    .map_err(sql(path))?;
            }
            for key in upserts {
                tx.execute(
                    "INSERT INTO fleet_keys (key, value, mod_revision) VALUES (?1, ?2, ?3)
                     ON CONFLICT (key) DO UPDATE SET value = ?2, mod_revision = ?3",
                    params![key.key, key.value, key.mod_revision],
                )
                .map_err(sql(path))?;
            }
            for key in deletes {
                tx.execute("DELETE FROM fleet_keys WHERE key = ?1", [key])
                    .map_err(sql(path))?;
            }
            tx.execute(
                "INSERT INTO fleet_state (id, revision, synced_ms) VALUES (1, ?1, ?2)
                 ON CONFLICT (id) DO UPDATE SET revision = ?1, synced_ms = ?2",
                params![revision, now_ms],
            )
            .map_err(sql(path))?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn key(name: &str, value: &str, mod_revision: i64) -> CachedKey {
        CachedKey {
            key: name.to_owned(),
            value: value.as_bytes().to_vec(),
            mod_revision,
        }
    }

    #[test]
    fn the_cache_keeps_changes_and_a_relist_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        assert_eq!(store.fleet_cache().unwrap(), FleetCache::default());
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        store
            .save_fleet_cache(
                false,
                &[key("/p/a", "1", 5), key("/p/b", "2", 6)],
                &[],
                6,
                at,
            )
            .unwrap();
        store
            .save_fleet_cache(false, &[key("/p/a", "3", 7)], &["/p/b".to_owned()], 7, at)
            .unwrap();
        let cache = Store::open(dir.path()).unwrap().fleet_cache().unwrap();
        assert_eq!(cache.keys, vec![key("/p/a", "3", 7)]);
        assert_eq!((cache.revision, cache.synced), (7, Some(at)));
        store
            .save_fleet_cache(true, &[key("/p/c", "4", 9)], &[], 9, at)
            .unwrap();
        assert_eq!(store.fleet_cache().unwrap().keys, vec![key("/p/c", "4", 9)]);
    }
}
