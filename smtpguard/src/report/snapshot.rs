//! Snapshots: every interval, the kernel's cumulative per-host counters become per-interval
//! deltas in the store, with the interval's distinct-destination sketch. The snapshotter has
//! its own map handles and store connection, so the agent keeps answering while it reads.

use std::{
    collections::HashMap,
    path::Path,
    time::{Duration, Instant, SystemTime},
};

use smtpguard_common::{HostStats, sketch::SKETCH_REGISTERS};

use super::{Class, Grouping, ReportOptions, ReportRow};
use crate::{
    config::Config,
    dataplane::{DataplaneError, HostRecord, PinLayout, PinnedHostStats},
    store::{HostCursor, HostInterval, SnapshotState, Store, StoreError},
};

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What one snapshot did and how long it took.
#[derive(Clone, Copy, Debug)]
pub struct SnapshotReport {
    pub hosts_read: usize,
    pub intervals_written: usize,
    pub elapsed: Duration,
}

pub struct Snapshotter {
    kernel: PinnedHostStats,
    store: Store,
    cursors: HashMap<[u8; 16], HostCursor>,
    state: SnapshotState,
}

impl Snapshotter {
    /// Continues where the last snapshot (of this or an earlier agent) left off.
    pub fn open(pins: &PinLayout, state_dir: &Path) -> Result<Self, SnapshotError> {
        let mut kernel = PinnedHostStats::open(pins)?;
        let mut store = Store::open(state_dir)?;
        store.tune_for_history()?;
        let cursors = store.host_cursors()?;
        let state = store.snapshot_state()?.unwrap_or(SnapshotState {
            epoch: 1,
            last: SystemTime::now(),
        });
        kernel.set_epoch(state.epoch)?;
        Ok(Self {
            kernel,
            store,
            cursors,
            state,
        })
    }

    /// Reads every host, records the interval since the last snapshot, starts the next one.
    pub fn take(&mut self, now: SystemTime) -> Result<SnapshotReport, SnapshotError> {
        let started = Instant::now();
        let clock = KernelClock::now(now);
        let read = self.kernel.read_all(self.state.epoch)?;
        let mut cursors = HashMap::with_capacity(read.hosts.len());
        let mut intervals = Vec::new();
        for record in &read.hosts {
            let (key, stats) = (record.key, &record.stats);
            let base = match self.cursors.get(&key.addr) {
                // The same kernel entry as last time: count what it added since.
                Some(cursor)
                    if cursor.first_seen_ns == stats.first_seen_ns
                        && cursor.segments <= stats.segments =>
                {
                    *cursor
                }
                // New, or evicted and seen again: everything it holds is new.
                _ => HostCursor::default(),
            };
            // The cursor follows the host's own entry; a duplicate overflow entry is counted
            // whole in this interval and removed below, so it is never counted again.
            cursors.insert(key.addr, cursor_of(stats));
            if stats.segments == base.segments && record.duplicate.is_none() {
                continue;
            }
            intervals.push(self.interval(key.addr, record, &base, &clock, now));
        }
        let next = SnapshotState {
            epoch: self.state.epoch.wrapping_add(1),
            last: now,
        };
        // The sketches of this interval have been read: the next interval starts empty.
        self.kernel.set_epoch(next.epoch)?;
        self.store.record_snapshot(&intervals, &cursors, next)?;
        // Recorded: duplicates and idle overflow entries may go.
        self.kernel.remove_overflow(&read.removable)?;
        self.cursors = cursors;
        self.state = next;
        Ok(SnapshotReport {
            hosts_read: read.hosts.len(),
            intervals_written: intervals.len(),
            elapsed: started.elapsed(),
        })
    }

    /// The hosts the history of the last bot window (ending `now`) classifies as bots, read
    /// through the snapshotter's own store connection, so the agent's state is not held while
    /// a million hosts are grouped.
    pub fn recent_bots(
        &self,
        config: &Config,
        now: SystemTime,
    ) -> Result<Vec<ReportRow>, SnapshotError> {
        let from = now
            .checked_sub(config.report.bot_window)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let history = self.store.host_intervals(from, now)?;
        let options = ReportOptions {
            from,
            to: now,
            top: None,
            min_attempts: 0,
            prefix: None,
            group: Grouping::Host,
            limited_only: false,
        };
        let mut rows = super::build(&history, config, &options);
        rows.retain(|row| row.class == Class::Bot);
        Ok(rows)
    }

    /// Removes history older than `retention`.
    pub fn prune(&mut self, now: SystemTime, retention: Duration) -> Result<usize, SnapshotError> {
        let before = now.checked_sub(retention).unwrap_or(SystemTime::UNIX_EPOCH);
        Ok(self.store.prune_history(before)?)
    }

    /// The interval of `record` since `base`, its cursor of the last snapshot; a duplicate
    /// overflow entry's counts are added whole (see [`HostRecord::duplicate`]).
    fn interval(
        &self,
        host: [u8; 16],
        record: &HostRecord,
        base: &HostCursor,
        clock: &KernelClock,
        now: SystemTime,
    ) -> HostInterval {
        let mut stats = record.stats;
        stats.attempts = stats.attempts.saturating_sub(base.attempts);
        stats.segments -= base.segments;
        stats.dropped = stats.dropped.saturating_sub(base.dropped);
        stats.limited = stats.limited.saturating_sub(base.limited);
        let stats = HostRecord { stats, ..*record }.merged();
        // The store keeps milliseconds: compare there, so a snapshot right after the last one
        // still has an end after its start.
        let start = whole_millis(self.state.last.min(now));
        let end = whole_millis(now).max(start + Duration::from_millis(1));
        // A host not seen in this epoch keeps the last epoch's destinations: none of them are
        // this interval's, and which ones are is not known.
        let (sketch, exact_destinations) = if stats.sketch_epoch == self.state.epoch {
            (stats.dst_sketch, stats.exact_destinations())
        } else {
            ([0; SKETCH_REGISTERS], None)
        };
        HostInterval {
            host,
            start,
            end,
            first_seen: clock.wall(stats.first_seen_ns).clamp(start, end),
            last_seen: clock.wall(stats.last_seen_ns).clamp(start, end),
            attempts: stats.attempts,
            segments: stats.segments,
            dropped: stats.dropped,
            limited: u64::from(stats.limited),
            sketch,
            exact_destinations,
            last_dst: stats.last_dst,
            last_port: stats.last_dst_port,
            last_reason: stats.last_reason,
        }
    }
}

fn whole_millis(time: SystemTime) -> SystemTime {
    let since = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    SystemTime::UNIX_EPOCH + Duration::from_millis(since.as_millis() as u64)
}

fn cursor_of(stats: &HostStats) -> HostCursor {
    HostCursor {
        attempts: stats.attempts,
        segments: stats.segments,
        dropped: stats.dropped,
        limited: stats.limited,
        first_seen_ns: stats.first_seen_ns,
    }
}

/// Converts the kernel's `CLOCK_MONOTONIC_COARSE` nanoseconds (`bpf_ktime_get_coarse_ns`) to
/// wall-clock time.
struct KernelClock {
    wall: SystemTime,
    kernel: Duration,
}

impl KernelClock {
    fn now(wall: SystemTime) -> Self {
        let kernel = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC_COARSE)
            .map(Duration::from)
            .unwrap_or_default();
        Self { wall, kernel }
    }

    fn wall(&self, kernel_ns: u64) -> SystemTime {
        let ago = self.kernel.saturating_sub(Duration::from_nanos(kernel_ns));
        self.wall.checked_sub(ago).unwrap_or(SystemTime::UNIX_EPOCH)
    }
}
