//! Per-host statistics history: one row per host and snapshot interval in which the host
//! reached the policy, holding that interval's counter deltas and distinct-destination sketch.
//! Reports are computed from these rows only, so they survive agent restarts and the kernel
//! map's LRU evictions. The cursors (cumulative kernel counters at the last snapshot) let the
//! next snapshot, in this process or after a restart, compute deltas.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr},
    time::SystemTime,
};

use rusqlite::{OptionalExtension as _, params};
use smtpguard_common::sketch::SKETCH_REGISTERS;

use super::{Store, StoreError, sql, stored_time, to_millis};

/// One host's activity in one snapshot interval.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostInterval {
    /// The host, IPv4-mapped for IPv4 (as the kernel keys it).
    pub host: [u8; 16],
    pub start: SystemTime,
    pub end: SystemTime,
    /// When the host was first and last seen within the interval (wall clock).
    pub first_seen: SystemTime,
    pub last_seen: SystemTime,
    pub attempts: u64,
    pub segments: u64,
    pub dropped: u64,
    /// Distinct destinations of the interval (HyperLogLog registers).
    pub sketch: [u8; SKETCH_REGISTERS],
    pub last_dst: [u8; 16],
    pub last_port: u16,
    /// A `Reason` discriminant.
    pub last_reason: u16,
}

impl HostInterval {
    pub fn host_address(&self) -> IpAddr {
        unmap(self.host)
    }

    pub fn last_destination(&self) -> IpAddr {
        unmap(self.last_dst)
    }
}

fn unmap(bytes: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(bytes);
    v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
}

/// A host's cumulative kernel counters at the last snapshot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostCursor {
    pub attempts: u64,
    pub segments: u64,
    pub dropped: u64,
    /// Identifies the kernel entry: a host evicted and seen again gets a new first-seen time,
    /// and its counters start from zero.
    pub first_seen_ns: u64,
}

/// The snapshotter's position: the sketch epoch in force and when the last interval ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotState {
    pub epoch: u32,
    pub last: SystemTime,
}

const TABLE: &str = "host_intervals";

fn as_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Pages of SQLite cache for a connection that writes snapshots (negative: KiB), so a million
/// rows do not churn the default 2 MiB cache.
const HISTORY_CACHE_KIB: i64 = 256 * 1024;

impl Store {
    /// Tunes this connection for writing snapshots: a large page cache, and commits that are
    /// durable against a crash of the process but not of the machine (WAL with
    /// `synchronous=NORMAL`): a power loss can lose the last snapshot, never corrupt the
    /// store, and the cursors roll back with it, so the next snapshot counts that interval.
    /// Exemptions are written through other connections, which stay fully synchronous.
    pub fn tune_for_history(&mut self) -> Result<(), StoreError> {
        let path = &self.path;
        self.conn
            .pragma_update(None, "cache_size", -HISTORY_CACHE_KIB)
            .map_err(sql(path))?;
        self.conn
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(sql(path))
    }

    /// Writes one snapshot in one transaction: the intervals, the cursors of the hosts read
    /// (cursors of hosts no longer in the kernel map are dropped) and the new state.
    pub fn record_snapshot(
        &mut self,
        intervals: &[HostInterval],
        cursors: &HashMap<[u8; 16], HostCursor>,
        state: SnapshotState,
    ) -> Result<(), StoreError> {
        let last_ms = to_millis("snapshot time", state.last)?;
        let rows = intervals
            .iter()
            .map(|i| {
                Ok((
                    i,
                    [
                        to_millis("interval start", i.start)?,
                        to_millis("interval end", i.end)?,
                        to_millis("first seen", i.first_seen)?,
                        to_millis("last seen", i.last_seen)?,
                    ],
                ))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        self.write(|tx, path| {
            let mut insert = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO host_intervals (host, start_ms, end_ms, first_ms, \
                     last_ms, attempts, segments, dropped, sketch, last_dst, last_port, \
                     last_reason) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                )
                .map_err(sql(path))?;
            for (interval, [start_ms, end_ms, first_ms, last_ms]) in &rows {
                insert
                    .execute(params![
                        &interval.host[..],
                        start_ms,
                        end_ms,
                        first_ms,
                        last_ms,
                        as_i64(interval.attempts),
                        as_i64(interval.segments),
                        as_i64(interval.dropped),
                        &interval.sketch[..],
                        &interval.last_dst[..],
                        interval.last_port,
                        interval.last_reason,
                    ])
                    .map_err(sql(path))?;
            }
            tx.execute("DELETE FROM host_cursors", [])
                .map_err(sql(path))?;
            let mut cursor_insert = tx
                .prepare_cached(
                    "INSERT INTO host_cursors (host, attempts, segments, dropped, first_seen_ns) \
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .map_err(sql(path))?;
            for (host, cursor) in cursors {
                cursor_insert
                    .execute(params![
                        &host[..],
                        as_i64(cursor.attempts),
                        as_i64(cursor.segments),
                        as_i64(cursor.dropped),
                        as_i64(cursor.first_seen_ns),
                    ])
                    .map_err(sql(path))?;
            }
            tx.execute(
                "INSERT INTO snapshot_state (id, epoch, last_ms) VALUES (1, ?1, ?2) \
                 ON CONFLICT (id) DO UPDATE SET epoch = excluded.epoch, last_ms = excluded.last_ms",
                params![state.epoch, last_ms],
            )
            .map_err(sql(path))?;
            Ok(())
        })
    }

    /// The cursors written by the last snapshot.
    pub fn host_cursors(&self) -> Result<HashMap<[u8; 16], HostCursor>, StoreError> {
        let path = &self.path;
        let mut select = self
            .conn
            .prepare("SELECT host, attempts, segments, dropped, first_seen_ns FROM host_cursors")
            .map_err(sql(path))?;
        let rows = select
            .query_map([], |row| {
                let host: Vec<u8> = row.get(0)?;
                Ok((
                    host,
                    HostCursor {
                        attempts: row.get::<_, i64>(1)?.unsigned_abs(),
                        segments: row.get::<_, i64>(2)?.unsigned_abs(),
                        dropped: row.get::<_, i64>(3)?.unsigned_abs(),
                        first_seen_ns: row.get::<_, i64>(4)?.unsigned_abs(),
                    },
                ))
            })
            .map_err(sql(path))?;
        let mut cursors = HashMap::new();
        for row in rows {
            let (host, cursor) = row.map_err(sql(path))?;
            if let Ok(host) = <[u8; 16]>::try_from(host.as_slice()) {
                cursors.insert(host, cursor);
            }
        }
        Ok(cursors)
    }

    /// Where the last snapshot left off, if there was one.
    pub fn snapshot_state(&self) -> Result<Option<SnapshotState>, StoreError> {
        let path = &self.path;
        let row: Option<(i64, i64)> = self
            .conn
            .query_row(
                "SELECT epoch, last_ms FROM snapshot_state WHERE id = 1",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()
            .map_err(sql(path))?;
        row.map(|(epoch, last_ms)| {
            Ok(SnapshotState {
                epoch: u32::try_from(epoch).unwrap_or(0),
                last: stored_time(path, "snapshot_state", "last_ms", last_ms)?,
            })
        })
        .transpose()
    }

    /// Intervals that ended within `[from, to]`, oldest first (in the order of the end-time
    /// index: no sort of a large window).
    pub fn host_intervals(
        &self,
        from: SystemTime,
        to: SystemTime,
    ) -> Result<Vec<HostInterval>, StoreError> {
        let path = &self.path;
        let (from_ms, to_ms) = (to_millis("from", from)?, to_millis("to", to)?);
        let mut select = self
            .conn
            .prepare_cached(
                "SELECT host, start_ms, end_ms, first_ms, last_ms, attempts, segments, dropped, \
                 sketch, last_dst, last_port, last_reason FROM host_intervals \
                 WHERE end_ms >= ?1 AND end_ms <= ?2 ORDER BY end_ms",
            )
            .map_err(sql(path))?;
        let invalid = |column: &'static str, len: usize| StoreError::InvalidStoredValue {
            path: path.clone(),
            table: TABLE,
            column,
            value: format!("{len} bytes"),
            expected: "the length the schema checks",
        };
        let mut rows = select.query(params![from_ms, to_ms]).map_err(sql(path))?;
        let mut intervals = Vec::new();
        while let Some(row) = rows.next().map_err(sql(path))? {
            // Blobs are borrowed from SQLite and copied into fixed arrays: no allocation per
            // column, which a report over a million hosts would otherwise make three million of.
            let blob = |index: usize, column: &'static str| -> Result<&[u8], StoreError> {
                row.get_ref(index)
                    .and_then(|value| value.as_blob().map_err(Into::into))
                    .map_err(|_| invalid(column, 0))
            };
            let fixed = |index: usize, column: &'static str| -> Result<[u8; 16], StoreError> {
                let bytes = blob(index, column)?;
                bytes.try_into().map_err(|_| invalid(column, bytes.len()))
            };
            let number = |index: usize| row.get::<_, i64>(index).map_err(sql(path));
            let sketch = blob(8, "sketch")?;
            intervals.push(HostInterval {
                host: fixed(0, "host")?,
                start: stored_time(path, TABLE, "start_ms", number(1)?)?,
                end: stored_time(path, TABLE, "end_ms", number(2)?)?,
                first_seen: stored_time(path, TABLE, "first_ms", number(3)?)?,
                last_seen: stored_time(path, TABLE, "last_ms", number(4)?)?,
                attempts: number(5)?.unsigned_abs(),
                segments: number(6)?.unsigned_abs(),
                dropped: number(7)?.unsigned_abs(),
                sketch: sketch
                    .try_into()
                    .map_err(|_| invalid("sketch", sketch.len()))?,
                last_dst: fixed(9, "last_dst")?,
                last_port: row.get(10).map_err(sql(path))?,
                last_reason: row.get(11).map_err(sql(path))?,
            });
        }
        Ok(intervals)
    }

    /// Deletes intervals that ended before `before` (retention); returns how many.
    pub fn prune_history(&mut self, before: SystemTime) -> Result<usize, StoreError> {
        let before_ms = to_millis("retention limit", before)?;
        self.write(|tx, path| {
            tx.execute("DELETE FROM host_intervals WHERE end_ms < ?1", [before_ms])
                .map_err(sql(path))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::testing::{at, temp_store};

    fn interval(host: u8, end_secs: u64, attempts: u64) -> HostInterval {
        HostInterval {
            host: smtpguard_common::host::ipv4_mapped([100, 64, 0, host]),
            start: at(end_secs - 60),
            end: at(end_secs),
            first_seen: at(end_secs - 50),
            last_seen: at(end_secs - 5),
            attempts,
            segments: attempts + 1,
            dropped: attempts,
            sketch: [1; SKETCH_REGISTERS],
            last_dst: smtpguard_common::host::ipv4_mapped([198, 51, 100, 7]),
            last_port: 25,
            last_reason: 5,
        }
    }

    #[test]
    fn snapshots_round_trip_and_prune() {
        let (_dir, mut store) = temp_store();
        assert_eq!(store.snapshot_state().unwrap(), None);
        let mut cursors = HashMap::new();
        cursors.insert(
            [7; 16],
            HostCursor {
                attempts: 3,
                segments: 4,
                dropped: 3,
                first_seen_ns: 99,
            },
        );
        let first = [interval(2, 1_000, 5), interval(3, 1_000, 1)];
        store
            .record_snapshot(
                &first,
                &cursors,
                SnapshotState {
                    epoch: 1,
                    last: at(1_000),
                },
            )
            .unwrap();
        store
            .record_snapshot(
                &[interval(2, 1_060, 7)],
                &HashMap::new(),
                SnapshotState {
                    epoch: 2,
                    last: at(1_060),
                },
            )
            .unwrap();

        assert_eq!(
            store.snapshot_state().unwrap(),
            Some(SnapshotState {
                epoch: 2,
                last: at(1_060)
            })
        );
        assert!(
            store.host_cursors().unwrap().is_empty(),
            "cursors are replaced, not merged"
        );
        let all = store.host_intervals(at(0), at(2_000)).unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(all[2], interval(2, 1_060, 7));
        assert_eq!(
            all[0].host_address(),
            "100.64.0.2".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            all[0].last_destination(),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        let late = store.host_intervals(at(1_030), at(2_000)).unwrap();
        assert_eq!(late, [interval(2, 1_060, 7)]);

        assert_eq!(store.prune_history(at(1_030)).unwrap(), 2);
        assert_eq!(store.host_intervals(at(0), at(2_000)).unwrap().len(), 1);
    }

    #[test]
    fn cursors_survive_reopening() {
        let (dir, mut store) = temp_store();
        let mut cursors = HashMap::new();
        cursors.insert(
            [9; 16],
            HostCursor {
                attempts: 1,
                segments: 2,
                dropped: 0,
                first_seen_ns: 5,
            },
        );
        store
            .record_snapshot(
                &[],
                &cursors,
                SnapshotState {
                    epoch: 4,
                    last: at(500) + Duration::from_millis(250),
                },
            )
            .unwrap();
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.host_cursors().unwrap(), cursors);
        assert_eq!(store.snapshot_state().unwrap().unwrap().epoch, 4);
    }
}
