//! Which snapshot intervals have reached the fleet's PostgreSQL (fleet mode with `postgres`):
//! the history itself stays in this store, so while PostgreSQL is unreachable the backlog is
//! simply the intervals after the last one shipped, bounded by the local retention.

use std::time::SystemTime;

use rusqlite::{OptionalExtension as _, params};

use super::{Store, StoreError, sql, stored_time, to_millis};

/// One snapshot interval of the history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IntervalSpan {
    pub start: SystemTime,
    pub end: SystemTime,
}

impl Store {
    /// The intervals not shipped yet, oldest first.
    pub fn unshipped_intervals(&self) -> Result<Vec<IntervalSpan>, StoreError> {
        let path = &self.path;
        let shipped: i64 = self
            .conn
            .query_row(
                "SELECT shipped_end_ms FROM fleet_shipping WHERE id = 1",
                [],
                |row| row.get(0),
            )
            .optional()
            .map_err(sql(path))?
            .unwrap_or(i64::MIN);
        let mut select = self
            .conn
            .prepare(
                "SELECT DISTINCT start_ms, end_ms FROM history_chunks WHERE end_ms > ?1 \
                 ORDER BY end_ms",
            )
            .map_err(sql(path))?;
        let spans = select
            .query_map([shipped], |row| Ok((row.get(0)?, row.get(1)?)))
            .map_err(sql(path))?
            .collect::<Result<Vec<(i64, i64)>, _>>()
            .map_err(sql(path))?;
        spans
            .into_iter()
            .map(|(start, end)| {
                Ok(IntervalSpan {
                    start: stored_time(path, "history_chunks", "start_ms", start)?,
                    end: stored_time(path, "history_chunks", "end_ms", end)?,
                })
            })
            .collect()
    }

    /// Every interval up to the one ending at `end` has been shipped.
    pub fn mark_shipped(&mut self, end: SystemTime) -> Result<(), StoreError> {
        let end_ms = to_millis("end", end)?;
        self.write(|tx, path| {
            tx.execute(
                "INSERT INTO fleet_shipping (id, shipped_end_ms) VALUES (1, ?1) \
                 ON CONFLICT (id) DO UPDATE SET shipped_end_ms = ?1",
                params![end_ms],
            )
            .map_err(sql(path))?;
            Ok(())
        })
    }
}
