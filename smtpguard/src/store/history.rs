//! Per-host statistics history: for each snapshot interval, every host that reached the policy
//! in it, with that interval's counter deltas and distinct-destination sketch. Reports are
//! computed from this history only, so they survive agent restarts and the kernel map's LRU
//! evictions. The cursors (cumulative kernel counters at the last snapshot) let the next
//! snapshot, in this process or after a restart, compute deltas.
//!
//! A snapshot of a million hosts is stored as a few hundred chunks, each a blob of
//! fixed-size little-endian records sorted by host, rather than a million rows: a report reads
//! whole chunks and decodes records at memory speed, where SQLite's per-row and per-column
//! work alone would take longer than the report may (under a second for a million hosts).
//! The cursors are stored the same way. Each chunk's exact destination sets (schema version 5)
//! sit in a blob of their own beside the records, in the same host order; chunks written
//! before version 5 have none, and their hosts' destinations are only estimated. So do the
//! hosts' rate-limited attempts (schema version 8), beside the records and beside the
//! cursors; history from before has none (0), and a cursor from before counts from 0.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr},
    time::SystemTime,
};

use rusqlite::{OptionalExtension as _, params};
use smtpguard_common::sketch::{EXACT_DESTINATIONS, SKETCH_REGISTERS};

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
    /// Attempts the host's bucket refused: dropped above its `ratelimit` rate, or unanswered
    /// beyond its `reject` reply budget (0 in history from before schema version 8).
    pub limited: u64,
    /// Distinct destinations of the interval (HyperLogLog registers).
    pub sketch: [u8; SKETCH_REGISTERS],
    /// The interval's distinct destinations exactly, as keys of the sketch's hash (0: an
    /// empty slot), while they fitted the kernel's exact set; `None` when they did not, or
    /// were not recorded (history from before schema version 6).
    pub exact_destinations: Option<[u32; EXACT_DESTINATIONS]>,
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
    /// The kernel's 32-bit count of refused attempts (see [`HostInterval::limited`]).
    pub limited: u32,
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

const TABLE: &str = "history_chunks";
const CURSOR_TABLE: &str = "cursor_chunks";

/// Records per chunk: big enough that SQLite's per-row cost vanishes, small enough that a
/// chunk (about 570 KiB) is cheap to hold while it is decoded.
const CHUNK_HOSTS: usize = 4096;

/// One interval record: host 16, first and last seen (Unix ms) 8 + 8, attempts, segments,
/// dropped 8 each, sketch 64, last destination 16, last port 2, last reason 2.
const INTERVAL_BYTES: usize = 16 + 8 * 5 + SKETCH_REGISTERS + 16 + 2 + 2;
/// One exact set: how many keys it holds (or [`UNKNOWN_SET`]), then its slots, 4 each.
const EXACT_SET_BYTES: usize = 1 + 4 * EXACT_DESTINATIONS;
/// The first byte of an exact set that is not known (it overflowed).
const UNKNOWN_SET: u8 = 0xff;
/// One cursor record: host 16, attempts, segments, dropped, first seen (ns) 8 each.
const CURSOR_BYTES: usize = 16 + 8 * 4;
/// A host's limited attempts beside its interval record or its cursor record.
const LIMITED_BYTES: usize = 4;

/// Pages of SQLite cache for a connection that writes snapshots (negative: KiB), so a million
/// hosts do not churn the default 2 MiB cache.
const HISTORY_CACHE_KIB: i64 = 256 * 1024;

/// The tables of schema version 4 (see the migration in the parent module).
pub(super) const SCHEMA: &str = "
     CREATE TABLE history_chunks (
         id       INTEGER PRIMARY KEY,
         start_ms INTEGER NOT NULL,
         end_ms   INTEGER NOT NULL CHECK (end_ms > start_ms),
         hosts    INTEGER NOT NULL CHECK (hosts > 0),
         records  BLOB    NOT NULL CHECK (length(records) = hosts * 140)
     ) STRICT;
     CREATE INDEX history_chunks_end ON history_chunks (end_ms);

     CREATE TABLE cursor_chunks (
         id      INTEGER PRIMARY KEY,
         records BLOB    NOT NULL CHECK (length(records) % 48 = 0)
     ) STRICT;";

/// Schema version 5: the exact destination sets of each chunk's hosts, one
/// [`EXACT_SET_BYTES`] record per host in the records' order; NULL in chunks written before.
pub(super) const EXACT_SETS: &str = "
     ALTER TABLE history_chunks ADD COLUMN exact_sets BLOB
         CHECK (exact_sets IS NULL OR length(exact_sets) = hosts * 21);";

/// Schema version 8: each chunk's and each cursor chunk's limited attempts, a little-endian
/// `u32` per host in the records' order; NULL in chunks written before.
pub(super) const LIMITED: &str = "
     ALTER TABLE history_chunks ADD COLUMN limited BLOB
         CHECK (limited IS NULL OR length(limited) = hosts * 4);
     ALTER TABLE cursor_chunks ADD COLUMN limited BLOB
         CHECK (limited IS NULL OR length(limited) = length(records) / 48 * 4);";

/// Which columns a chunk is written with.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ChunkColumns {
    /// Version 4's, for its migration (the exact sets' column comes with version 6, the
    /// limited attempts' with version 8).
    Version4,
    Current,
}

fn put_exact_set(out: &mut Vec<u8>, set: Option<[u32; EXACT_DESTINATIONS]>) {
    match set {
        Some(keys) => {
            out.push(keys.iter().filter(|key| **key != 0).count() as u8);
            for key in keys {
                out.extend_from_slice(&key.to_le_bytes());
            }
        }
        None => {
            out.push(UNKNOWN_SET);
            out.extend_from_slice(&[0; 4 * EXACT_DESTINATIONS]);
        }
    }
}

fn exact_set(record: &[u8]) -> Option<[u32; EXACT_DESTINATIONS]> {
    let mut fields = Fields(record);
    let [len] = fields.take::<1>();
    let keys = std::array::from_fn(|_| u32::from_le_bytes(fields.take()));
    (usize::from(len) <= EXACT_DESTINATIONS).then_some(keys)
}

/// Little-endian field writer for records.
fn put(out: &mut Vec<u8>, fields: &[&[u8]]) {
    for field in fields {
        out.extend_from_slice(field);
    }
}

/// Appends one interval to a chunk's records and exact sets, in the layout the store keeps
/// (and the fleet's PostgreSQL too): `first_ms` and `last_ms` are its first- and last-seen
/// times in Unix milliseconds.
pub(crate) fn put_record(
    records: &mut Vec<u8>,
    sets: &mut Vec<u8>,
    interval: &HostInterval,
    first_ms: i64,
    last_ms: i64,
) {
    put_exact_set(sets, interval.exact_destinations);
    put(
        records,
        &[
            &interval.host,
            &first_ms.to_le_bytes(),
            &last_ms.to_le_bytes(),
            &interval.attempts.to_le_bytes(),
            &interval.segments.to_le_bytes(),
            &interval.dropped.to_le_bytes(),
            &interval.sketch,
            &interval.last_dst,
            &interval.last_port.to_le_bytes(),
            &interval.last_reason.to_le_bytes(),
        ],
    );
}

/// Appends `interval`'s limited attempts to a chunk's `limited` column (read back by
/// [`decode_records`]): a little-endian `u32` per host in the records' order.
pub(crate) fn put_limited(out: &mut Vec<u8>, interval: &HostInterval) {
    // A 32-bit kernel counter's delta: it fits.
    let count = u32::try_from(interval.limited).unwrap_or(u32::MAX);
    out.extend_from_slice(&count.to_le_bytes());
}

/// Decodes a chunk written by [`put_record`] (its exact sets, if it has them) onto `out`, the
/// records of `keep` only. `time` turns stored milliseconds into a time, naming the field when
/// they are out of range.
pub(crate) fn decode_records<E>(
    [start, end]: [SystemTime; 2],
    records: &[u8],
    sets: Option<&[u8]>,
    limited: Option<&[u8]>,
    keep: impl Fn(&[u8; 16]) -> bool,
    time: impl Fn(&'static str, i64) -> Result<SystemTime, E>,
    out: &mut Vec<HostInterval>,
) -> Result<(), E> {
    let mut sets = sets.map(|sets| sets.chunks_exact(EXACT_SET_BYTES));
    let mut limited = limited.map(|limited| limited.chunks_exact(LIMITED_BYTES));
    out.reserve(records.len() / INTERVAL_BYTES);
    for record in records.chunks_exact(INTERVAL_BYTES) {
        let exact_destinations = sets
            .as_mut()
            .and_then(|sets| sets.next())
            .and_then(exact_set);
        let limited = limited
            .as_mut()
            .and_then(|limited| limited.next())
            .map_or(0, |bytes| u64::from(Fields(bytes).u32()));
        let mut fields = Fields(record);
        let host = fields.take();
        if !keep(&host) {
            continue;
        }
        out.push(HostInterval {
            host,
            start,
            end,
            first_seen: time("records.first_seen", fields.i64())?,
            last_seen: time("records.last_seen", fields.i64())?,
            attempts: fields.u64(),
            segments: fields.u64(),
            dropped: fields.u64(),
            limited,
            sketch: fields.take(),
            exact_destinations,
            last_dst: fields.take(),
            last_port: fields.u16(),
            last_reason: fields.u16(),
        });
    }
    Ok(())
}

/// Reads fixed-size fields off a record in order.
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let (head, rest) = self.0.split_at(N);
        self.0 = rest;
        head.try_into().expect("split_at gave N bytes")
    }

    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }

    fn i64(&mut self) -> i64 {
        i64::from_le_bytes(self.take())
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.take())
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }
}

/// Writes intervals as chunks, grouped by interval and sorted by host. `rows` holds each
/// interval with its start, end, first-seen and last-seen milliseconds.
fn insert_intervals(
    tx: &rusqlite::Transaction<'_>,
    path: &std::path::Path,
    rows: &mut [(&HostInterval, [i64; 4])],
    columns: ChunkColumns,
) -> Result<(), StoreError> {
    rows.sort_unstable_by_key(|(interval, [start, end, ..])| (*start, *end, interval.host));
    let mut insert = tx
        .prepare_cached(match columns {
            ChunkColumns::Version4 => {
                "INSERT INTO history_chunks (start_ms, end_ms, hosts, records) \
                 VALUES (?1, ?2, ?3, ?4)"
            }
            ChunkColumns::Current => {
                "INSERT INTO history_chunks (start_ms, end_ms, hosts, records, exact_sets, \
                 limited) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
            }
        })
        .map_err(sql(path))?;
    let mut records = Vec::with_capacity(CHUNK_HOSTS * INTERVAL_BYTES);
    let mut sets = Vec::with_capacity(CHUNK_HOSTS * EXACT_SET_BYTES);
    let mut limited = Vec::with_capacity(CHUNK_HOSTS * LIMITED_BYTES);
    for same_interval in rows.chunk_by(|a, b| a.1[..2] == b.1[..2]) {
        let [start_ms, end_ms, ..] = same_interval[0].1;
        for chunk in same_interval.chunks(CHUNK_HOSTS) {
            records.clear();
            sets.clear();
            limited.clear();
            for (interval, [_, _, first_ms, last_ms]) in chunk {
                put_record(&mut records, &mut sets, interval, *first_ms, *last_ms);
                put_limited(&mut limited, interval);
            }
            let hosts = chunk.len() as i64;
            match columns {
                ChunkColumns::Version4 => {
                    insert.execute(params![start_ms, end_ms, hosts, &records])
                }
                ChunkColumns::Current => {
                    insert.execute(params![start_ms, end_ms, hosts, &records, &sets, &limited])
                }
            }
            .map_err(sql(path))?;
        }
    }
    Ok(())
}

/// Replaces the stored cursors.
fn replace_cursors(
    tx: &rusqlite::Transaction<'_>,
    path: &std::path::Path,
    cursors: &mut [([u8; 16], HostCursor)],
    columns: ChunkColumns,
) -> Result<(), StoreError> {
    cursors.sort_unstable_by_key(|(host, _)| *host);
    tx.execute("DELETE FROM cursor_chunks", [])
        .map_err(sql(path))?;
    let mut insert = tx
        .prepare_cached(match columns {
            ChunkColumns::Version4 => "INSERT INTO cursor_chunks (records) VALUES (?1)",
            ChunkColumns::Current => "INSERT INTO cursor_chunks (records, limited) VALUES (?1, ?2)",
        })
        .map_err(sql(path))?;
    let mut records = Vec::with_capacity(CHUNK_HOSTS * CURSOR_BYTES);
    let mut limited = Vec::with_capacity(CHUNK_HOSTS * LIMITED_BYTES);
    for chunk in cursors.chunks(CHUNK_HOSTS) {
        records.clear();
        limited.clear();
        for (host, cursor) in chunk {
            limited.extend_from_slice(&cursor.limited.to_le_bytes());
            put(
                &mut records,
                &[
                    host,
                    &cursor.attempts.to_le_bytes(),
                    &cursor.segments.to_le_bytes(),
                    &cursor.dropped.to_le_bytes(),
                    &cursor.first_seen_ns.to_le_bytes(),
                ],
            );
        }
        match columns {
            ChunkColumns::Version4 => insert.execute([&records]),
            ChunkColumns::Current => insert.execute([&records, &limited]),
        }
        .map_err(sql(path))?;
    }
    Ok(())
}

fn interval_millis(interval: &HostInterval) -> Result<[i64; 4], StoreError> {
    Ok([
        to_millis("interval start", interval.start)?,
        to_millis("interval end", interval.end)?,
        to_millis("first seen", interval.first_seen)?,
        to_millis("last seen", interval.last_seen)?,
    ])
}

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
        let mut rows = intervals
            .iter()
            .map(|interval| Ok((interval, interval_millis(interval)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        let mut cursors: Vec<_> = cursors.iter().map(|(host, c)| (*host, *c)).collect();
        self.write(|tx, path| {
            insert_intervals(tx, path, &mut rows, ChunkColumns::Current)?;
            replace_cursors(tx, path, &mut cursors, ChunkColumns::Current)?;
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
            .prepare("SELECT records, limited FROM cursor_chunks ORDER BY id")
            .map_err(sql(path))?;
        let mut rows = select.query([]).map_err(sql(path))?;
        let mut cursors = HashMap::new();
        while let Some(row) = rows.next().map_err(sql(path))? {
            let records = blob(row, 0, path, CURSOR_TABLE, "records")?;
            let mut limited = optional_blob(row, 1, path, CURSOR_TABLE, "limited")?
                .map(|limited| limited.chunks_exact(LIMITED_BYTES));
            for record in records.chunks_exact(CURSOR_BYTES) {
                let mut fields = Fields(record);
                let host = fields.take();
                cursors.insert(
                    host,
                    HostCursor {
                        attempts: fields.u64(),
                        segments: fields.u64(),
                        dropped: fields.u64(),
                        limited: limited
                            .as_mut()
                            .and_then(|limited| limited.next())
                            .map_or(0, |bytes| Fields(bytes).u32()),
                        first_seen_ns: fields.u64(),
                    },
                );
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

    /// Intervals that ended within `[from, to]`, oldest first, hosts of one interval in
    /// address order.
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
                "SELECT start_ms, end_ms, records, exact_sets, limited FROM history_chunks \
                 WHERE end_ms >= ?1 AND end_ms <= ?2 ORDER BY end_ms, id",
            )
            .map_err(sql(path))?;
        let mut rows = select.query(params![from_ms, to_ms]).map_err(sql(path))?;
        let mut intervals = Vec::new();
        let time = |column, ms| stored_time(path, TABLE, column, ms);
        while let Some(row) = rows.next().map_err(sql(path))? {
            let start = time("start_ms", row.get(0).map_err(sql(path))?)?;
            let end = time("end_ms", row.get(1).map_err(sql(path))?)?;
            // Records are decoded straight from the blob SQLite holds: no copy of the chunk.
            let records = blob(row, 2, path, TABLE, "records")?;
            let sets = optional_blob(row, 3, path, TABLE, "exact_sets")?;
            let limited = optional_blob(row, 4, path, TABLE, "limited")?;
            decode_records(
                [start, end],
                records,
                sets,
                limited,
                |_| true,
                time,
                &mut intervals,
            )?;
        }
        Ok(intervals)
    }

    /// Deletes intervals that ended before `before` (retention); returns how many.
    pub fn prune_history(&mut self, before: SystemTime) -> Result<usize, StoreError> {
        let before_ms = to_millis("retention limit", before)?;
        self.write(|tx, path| {
            let pruned: i64 = tx
                .query_row(
                    "SELECT coalesce(sum(hosts), 0) FROM history_chunks WHERE end_ms < ?1",
                    [before_ms],
                    |row| row.get(0),
                )
                .map_err(sql(path))?;
            tx.execute("DELETE FROM history_chunks WHERE end_ms < ?1", [before_ms])
                .map_err(sql(path))?;
            Ok(usize::try_from(pruned).unwrap_or(0))
        })
    }
}

/// A blob column whose length the schema's CHECK keeps a whole number of records.
fn blob<'row>(
    row: &'row rusqlite::Row<'_>,
    index: usize,
    path: &std::path::Path,
    table: &'static str,
    column: &'static str,
) -> Result<&'row [u8], StoreError> {
    row.get_ref(index)
        .map_err(sql(path))?
        .as_blob()
        .map_err(|_| StoreError::InvalidStoredValue {
            path: path.to_path_buf(),
            table,
            column,
            value: "a value that is not a blob".to_owned(),
            expected: "a blob of records",
        })
}

/// A blob column that is NULL in rows written before it existed.
fn optional_blob<'row>(
    row: &'row rusqlite::Row<'_>,
    index: usize,
    path: &std::path::Path,
    table: &'static str,
    column: &'static str,
) -> Result<Option<&'row [u8]>, StoreError> {
    match row.get_ref(index).map_err(sql(path))? {
        rusqlite::types::ValueRef::Null => Ok(None),
        _ => blob(row, index, path, table, column).map(Some),
    }
}

/// A version 3 blob column of a fixed length.
fn fixed_blob<const N: usize>(
    row: &rusqlite::Row<'_>,
    index: usize,
    path: &std::path::Path,
    column: &'static str,
) -> Result<[u8; N], StoreError> {
    let bytes = blob(row, index, path, "host_intervals", column)?;
    bytes
        .try_into()
        .map_err(|_| StoreError::InvalidStoredValue {
            path: path.to_path_buf(),
            table: "host_intervals",
            column,
            value: format!("{} bytes", bytes.len()),
            expected: "the length the version 3 schema checks",
        })
}

/// Migration to schema version 4: the per-row history and cursors of version 3 are packed into
/// chunks, and the old tables dropped.
pub(super) fn pack_rows_into_chunks(
    tx: &rusqlite::Transaction<'_>,
    path: &std::path::Path,
) -> Result<(), StoreError> {
    tx.execute_batch(SCHEMA).map_err(sql(path))?;
    let time = |column, ms| stored_time(path, "host_intervals", column, ms);
    let mut intervals = Vec::new();
    {
        let mut select = tx
            .prepare(
                "SELECT host, start_ms, end_ms, first_ms, last_ms, attempts, segments, dropped, \
                 sketch, last_dst, last_port, last_reason FROM host_intervals",
            )
            .map_err(sql(path))?;
        let mut rows = select.query([]).map_err(sql(path))?;
        while let Some(row) = rows.next().map_err(sql(path))? {
            let fixed = |index, column| fixed_blob(row, index, path, column);
            let number = |index| row.get::<_, i64>(index).map_err(sql(path));
            intervals.push(HostInterval {
                host: fixed(0, "host")?,
                start: time("start_ms", number(1)?)?,
                end: time("end_ms", number(2)?)?,
                first_seen: time("first_ms", number(3)?)?,
                last_seen: time("last_ms", number(4)?)?,
                attempts: number(5)?.unsigned_abs(),
                segments: number(6)?.unsigned_abs(),
                dropped: number(7)?.unsigned_abs(),
                limited: 0,
                sketch: fixed_blob(row, 8, path, "sketch")?,
                exact_destinations: None,
                last_dst: fixed(9, "last_dst")?,
                last_port: row.get(10).map_err(sql(path))?,
                last_reason: row.get(11).map_err(sql(path))?,
            });
        }
    }
    let mut rows = intervals
        .iter()
        .map(|interval| Ok((interval, interval_millis(interval)?)))
        .collect::<Result<Vec<_>, StoreError>>()?;
    insert_intervals(tx, path, &mut rows, ChunkColumns::Version4)?;

    let mut cursors = Vec::new();
    {
        let mut select = tx
            .prepare("SELECT host, attempts, segments, dropped, first_seen_ns FROM host_cursors")
            .map_err(sql(path))?;
        let mut rows = select.query([]).map_err(sql(path))?;
        while let Some(row) = rows.next().map_err(sql(path))? {
            let number = |index| row.get::<_, i64>(index).map_err(sql(path));
            if let Ok(host) = <[u8; 16]>::try_from(blob(row, 0, path, "host_cursors", "host")?) {
                cursors.push((
                    host,
                    HostCursor {
                        attempts: number(1)?.unsigned_abs(),
                        segments: number(2)?.unsigned_abs(),
                        dropped: number(3)?.unsigned_abs(),
                        limited: 0,
                        first_seen_ns: number(4)?.unsigned_abs(),
                    },
                ));
            }
        }
    }
    replace_cursors(tx, path, &mut cursors, ChunkColumns::Version4)?;
    tx.execute_batch("DROP TABLE host_intervals; DROP TABLE host_cursors;")
        .map_err(sql(path))
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
            limited: attempts / 2,
            sketch: [1; SKETCH_REGISTERS],
            // Hosts with odd numbers went to more destinations than the set holds.
            exact_destinations: host.is_multiple_of(2).then_some([0x11, u32::MAX, 0, 0, 0]),
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
                limited: 0,
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
                limited: 3,
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

    #[test]
    fn version_3_rows_are_packed_into_chunks() {
        use crate::store::{DB_FILE_NAME, MIGRATIONS, Migration};
        let dir = tempfile::tempdir().unwrap();
        // Version 3 kept no exact sets: the history comes back without them.
        let old = [
            interval(3, 1_000, 4),
            interval(2, 1_000, 5),
            interval(2, 1_060, 7),
        ]
        // Version 3 kept neither exact sets nor limited attempts.
        .map(|i| HostInterval {
            exact_destinations: None,
            limited: 0,
            ..i
        });
        {
            let conn = rusqlite::Connection::open(dir.path().join(DB_FILE_NAME)).unwrap();
            for migration in &MIGRATIONS[..3] {
                let Migration::Sql(batch) = migration else {
                    panic!("versions 1 to 3 are SQL")
                };
                conn.execute_batch(batch).unwrap();
            }
            conn.pragma_update(None, "user_version", 3).unwrap();
            for i in &old {
                let ms = |t: SystemTime| to_millis("t", t).unwrap();
                conn.execute(
                    "INSERT INTO host_intervals VALUES \
                     (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                    params![
                        &i.host[..],
                        ms(i.start),
                        ms(i.end),
                        ms(i.first_seen),
                        ms(i.last_seen),
                        i.attempts as i64,
                        i.segments as i64,
                        i.dropped as i64,
                        &i.sketch[..],
                        &i.last_dst[..],
                        i.last_port,
                        i.last_reason
                    ],
                )
                .unwrap();
            }
            conn.execute(
                "INSERT INTO host_cursors VALUES (?1, 7, 9, 7, 42)",
                [&[7u8; 16][..]],
            )
            .unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(
            store.host_intervals(at(0), at(2_000)).unwrap(),
            [old[1].clone(), old[0].clone(), old[2].clone()],
            "oldest first, then by host"
        );
        let cursors = store.host_cursors().unwrap();
        assert_eq!(
            cursors.get(&[7; 16]),
            Some(&HostCursor {
                attempts: 7,
                segments: 9,
                dropped: 7,
                limited: 0,
                first_seen_ns: 42
            })
        );
        let tables: Vec<String> = store
            .conn
            .prepare("SELECT name FROM sqlite_master WHERE name LIKE 'host_%'")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(tables.is_empty(), "old tables dropped: {tables:?}");
    }

    #[test]
    fn version_4_chunks_are_kept_without_exact_sets() {
        use crate::store::{DB_FILE_NAME, MIGRATIONS, Migration};
        let dir = tempfile::tempdir().unwrap();
        // Version 4 kept neither exact sets nor limited attempts.
        let old = [interval(2, 1_000, 5), interval(4, 1_000, 1)].map(|i| HostInterval {
            exact_destinations: None,
            limited: 0,
            ..i
        });
        {
            let mut conn = rusqlite::Connection::open(dir.path().join(DB_FILE_NAME)).unwrap();
            let tx = conn.transaction().unwrap();
            for migration in &MIGRATIONS[..4] {
                match migration {
                    Migration::Sql(batch) => tx.execute_batch(batch).unwrap(),
                    Migration::Code(migrate) => migrate(&tx, dir.path()).unwrap(),
                }
            }
            let mut rows: Vec<_> = old
                .iter()
                .map(|i| (i, interval_millis(i).unwrap()))
                .collect();
            insert_intervals(&tx, dir.path(), &mut rows, ChunkColumns::Version4).unwrap();
            tx.pragma_update(None, "user_version", 4).unwrap();
            tx.commit().unwrap();
        }
        let mut store = Store::open(dir.path()).unwrap();
        assert_eq!(store.host_intervals(at(0), at(2_000)).unwrap(), old);
        // Chunks written from now on carry their sets, beside the old ones.
        let new = interval(2, 1_060, 7);
        store
            .record_snapshot(
                std::slice::from_ref(&new),
                &HashMap::new(),
                SnapshotState {
                    epoch: 2,
                    last: at(1_060),
                },
            )
            .unwrap();
        let all = store.host_intervals(at(0), at(2_000)).unwrap();
        assert_eq!(all, [old[0].clone(), old[1].clone(), new]);
        assert!(all[2].exact_destinations.is_some());
    }

    #[test]
    fn a_large_snapshot_spans_several_chunks() {
        let (_dir, mut store) = temp_store();
        let hosts = CHUNK_HOSTS as u32 * 2 + 17;
        let intervals: Vec<HostInterval> = (0..hosts)
            .map(|n| {
                let mut i = interval(0, 1_000, u64::from(n));
                i.host = smtpguard_common::host::ipv4_mapped((0x6440_0000 + n).to_be_bytes());
                i
            })
            .collect();
        let mut cursors = HashMap::new();
        for i in &intervals {
            cursors.insert(i.host, HostCursor::default());
        }
        let state = SnapshotState {
            epoch: 1,
            last: at(1_000),
        };
        store.record_snapshot(&intervals, &cursors, state).unwrap();
        assert_eq!(store.host_intervals(at(0), at(2_000)).unwrap(), intervals);
        assert_eq!(store.host_cursors().unwrap(), cursors);
        assert_eq!(store.prune_history(at(1_001)).unwrap(), hosts as usize);
    }
}
