//! Shipping the history to the fleet's PostgreSQL: every snapshot interval of the local store,
//! in order, as idempotent upserts. The local store is the backlog: an interval counts as
//! shipped only once PostgreSQL committed it, so an outage (or an agent restart during one)
//! delays the intervals and loses none, unless the local retention prunes them first.

use std::{
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use serde::Serialize;
use tracing::{info, warn};

use super::postgres::{PostgresError, Reports};
use crate::{
    config::PostgresConfig,
    store::{IntervalSpan, Store},
};

/// How often the shipper looks for new intervals (and retries an unreachable server).
const SHIP_TICK: Duration = Duration::from_secs(1);

/// What `status` and the metrics say about the shipping.
#[derive(Debug, Default)]
pub struct ShippingStatus {
    connected: AtomicBool,
    /// Intervals in the local store not shipped yet.
    backlog: AtomicU64,
    rows_shipped: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// A copy of [`ShippingStatus`] for `status`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Shipping {
    pub server: String,
    pub connected: bool,
    pub backlog_intervals: u64,
    pub rows_shipped: u64,
    pub last_error: Option<String>,
}

impl ShippingStatus {
    pub fn snapshot(&self, server: String) -> Shipping {
        Shipping {
            server,
            connected: self.connected.load(Ordering::Relaxed),
            backlog_intervals: self.backlog.load(Ordering::Relaxed),
            rows_shipped: self.rows_shipped.load(Ordering::Relaxed),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }

    fn failed(&self, error: &PostgresError) {
        if self.connected.swap(false, Ordering::Relaxed) {
            warn!(%error, "shipping reports to PostgreSQL stopped; the backlog stays in the local store");
        }
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(error.to_string());
    }

    fn succeeded(&self) {
        if !self.connected.swap(true, Ordering::Relaxed) {
            info!("shipping reports to PostgreSQL");
        }
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// Ships the history in `state_dir` as `gateway` for as long as the agent runs.
pub async fn ship(
    postgres: PostgresConfig,
    gateway: String,
    state_dir: PathBuf,
    status: Arc<ShippingStatus>,
) {
    let mut reports: Option<Reports> = None;
    let mut tick = tokio::time::interval(SHIP_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // Counted whether PostgreSQL answers or not: the backlog is what the metrics watch.
        let dir = state_dir.clone();
        let pending = match blocking(move || Store::open(&dir)?.unshipped_intervals()).await {
            Ok(pending) => pending,
            Err(error) => {
                warn!(error, "listing the intervals to ship failed");
                continue;
            }
        };
        status
            .backlog
            .store(pending.len() as u64, Ordering::Relaxed);
        if reports.as_ref().is_none_or(Reports::closed) {
            match Reports::open(&postgres).await {
                Ok(opened) => reports = Some(opened),
                Err(error) => {
                    status.failed(&error);
                    continue;
                }
            }
        }
        let Some(open) = reports.as_mut() else {
            continue;
        };
        match ship_backlog(open, &gateway, &state_dir, &status, pending).await {
            Ok(()) => status.succeeded(),
            Err(error) => {
                status.failed(&error);
                reports = None;
            }
        }
    }
}

/// Ships `pending`, oldest first; stops at the first failure.
async fn ship_backlog(
    reports: &mut Reports,
    gateway: &str,
    state_dir: &std::path::Path,
    status: &ShippingStatus,
    pending: Vec<IntervalSpan>,
) -> Result<(), PostgresError> {
    let local = |what: &'static str| {
        move |error: String| PostgresError::Refused {
            server: "the local store".to_owned(),
            what: what.to_owned(),
            cause: error,
        }
    };
    for span in pending {
        let dir = state_dir.to_owned();
        let intervals = blocking(move || Store::open(&dir)?.host_intervals(span.end, span.end))
            .await
            .map_err(local("reading an interval"))?;
        let rows = reports.ship(gateway, &intervals).await?;
        let dir = state_dir.to_owned();
        blocking(move || Store::open(&dir)?.mark_shipped(span.end))
            .await
            .map_err(local("recording the shipped interval"))?;
        status.rows_shipped.fetch_add(rows, Ordering::Relaxed);
        status.backlog.fetch_sub(1, Ordering::Relaxed);
    }
    Ok(())
}

/// Runs a store operation on the blocking pool; its error as text.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, crate::store::StoreError> + Send + 'static,
) -> Result<T, String> {
    match tokio::task::spawn_blocking(work).await {
        Ok(outcome) => outcome.map_err(|error| error.to_string()),
        Err(error) => Err(error.to_string()),
    }
}
