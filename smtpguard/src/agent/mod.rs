//! `smtpguard run`: the long-running agent. It owns the kernel state (pinned maps and links),
//! the exemption store, the CLI socket and the metrics endpoint.

pub mod api;
mod enforcement;
mod escalation;
mod events;
mod expiry;
mod identity;
mod interface_counts;
pub(crate) mod netns;
mod notify;
mod radius;
mod reconcile;
mod server;
mod state;
pub mod stream;
mod verbs;

use std::{
    fs::File,
    io::Write as _,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, bail};
use nix::fcntl::{Flock, FlockArg};
use tokio::{
    net::TcpListener,
    signal::unix::{SignalKind, signal},
    sync::Notify,
};
use tracing::{debug, error, info, warn};

use self::{
    api::{Request, Response},
    state::AgentState,
};
use crate::{
    config::Config, dataplane::PinLayout, metrics::MetricsSnapshot, policy::resolve_relay_hosts,
    report::snapshot::Snapshotter,
};

/// How often the agent looks for exemptions that have expired: well inside the promised
/// second.
const EXPIRY_TICK: Duration = Duration::from_millis(250);

/// How often the agent checks its pins and interfaces: a removed pin folder or a deleted and
/// re-created interface is repaired within about a second.
const WATCH_TICK: Duration = Duration::from_secs(1);

/// Runs the agent until SIGTERM, SIGINT or `smtpguard detach`. Leaving on a signal keeps
/// enforcement in place: the program stays on the interfaces through its pinned links.
pub fn run(config_path: &Path) -> anyhow::Result<()> {
    let config = Config::load(config_path).context("invalid configuration")?;
    crate::logging::init(config.agent.log_level);
    if config.agent.interfaces.is_empty() {
        bail!(
            "{}: [agent] interfaces is empty; expected the subscriber-facing interfaces to \
             enforce on, such as interfaces = [\"eth1\"]",
            config_path.display()
        );
    }
    let _lock = lock_state_dir(&config.agent.state_dir)?;
    notify::status("loading the kernel program and restoring the policy");
    let state = AgentState::start(config.clone(), config_path.to_owned())?;
    let snapshotter = Snapshotter::open(
        &PinLayout::new(&config.agent.pin_dir),
        &config.agent.state_dir,
    )
    .context("opening the statistics history")?;
    info!("{}", startup_line(&config, &state.metrics()));
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(serve(state, snapshotter, &config))
}

async fn serve(state: AgentState, snapshotter: Snapshotter, config: &Config) -> anyhow::Result<()> {
    let state = Arc::new(Mutex::new(state));
    let detached = Arc::new(Notify::new());
    let socket = server::bind(&config.agent.socket, config.agent.socket_group.as_deref())?;
    let metrics = TcpListener::bind(config.agent.metrics_listen)
        .await
        .with_context(|| {
            format!(
                "binding the metrics endpoint {}",
                config.agent.metrics_listen
            )
        })?;

    tokio::spawn(server::accept(socket, state.clone(), detached.clone()));
    if let Some(radius) = &config.radius {
        let counters = lock(&state).radius_counters();
        radius::start(radius, state.clone(), counters)?;
    }
    // The socket listens (connections queue until the accept task takes them), the program
    // is attached and the maps are pinned: from here on the CLI answers.
    notify::ready(&enforcing_status(&lock(&state).metrics(), config));
    let scrape_state = state.clone();
    tokio::spawn(crate::metrics::serve(metrics, move || {
        lock(&scrape_state).metrics()
    }));
    tokio::spawn(expire_exemptions(state.clone()));
    tokio::spawn(watch(state.clone()));
    tokio::spawn(refresh_relays(state.clone(), config.agent.relay_refresh));
    if let Some(fleet) = lock(&state).fleet() {
        tokio::spawn(follow_fleet(state.clone(), fleet.changed()));
    }
    if let (Some(fleet), Some(status)) = (&config.fleet, lock(&state).shipping())
        && let Some(postgres) = &fleet.postgres
    {
        tokio::spawn(crate::fleet::shipping::ship(
            postgres.clone(),
            fleet.gateway_id.clone(),
            config.agent.state_dir.clone(),
            status,
        ));
    }
    let snapshotter = Arc::new(Mutex::new(snapshotter));
    tokio::spawn(snapshot_statistics(
        snapshotter.clone(),
        state.clone(),
        config.report.interval,
        config.report.retention,
    ));

    let mut hangup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut watchdog = notify::watchdog_interval().map(tokio::time::interval);
    loop {
        tokio::select! {
            _ = hangup.recv() => {
                notify::reloading();
                let reload_state = state.clone();
                // The outcome is logged by the reload; an invalid file leaves everything as it
                // was, and so does a dangerous one: a signal cannot carry --force.
                let outcome = tokio::task::spawn_blocking(move || lock(&reload_state).handle(Request::Reload { force: false }, "SIGHUP")).await;
                let status = match outcome {
                    Ok(Response::Ok { body }) => format!(
                        "reloaded (added {}, updated {}, removed {}); {}",
                        body["added"], body["updated"], body["removed"],
                        enforcing_status(&lock(&state).metrics(), config)
                    ),
                    Ok(Response::Error { message, .. }) => message,
                    Err(error) => format!("reload failed: {error}"),
                };
                notify::ready(&status);
            }
            // Pinged from this loop, after the state lock was taken on the blocking pool: a
            // hung loop, a lock held forever or a starved pool all stop the pings.
            () = tick(&mut watchdog) => {
                let state = state.clone();
                if tokio::task::spawn_blocking(move || drop(lock(&state))).await.is_ok() {
                    notify::watchdog();
                }
            }
            _ = terminate.recv() => {
                info!("SIGTERM: stopping; enforcement stays in place");
                break;
            }
            _ = interrupt.recv() => {
                info!("SIGINT: stopping; enforcement stays in place");
                break;
            }
            () = detached.notified() => {
                info!("detached on request: stopping");
                break;
            }
        }
    }
    notify::stopping();
    let _ = std::fs::remove_file(&config.agent.socket);
    // The interval in progress goes into the history too, so a restart loses nothing.
    let final_snapshot = tokio::task::spawn_blocking(move || {
        snapshotter
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take(SystemTime::now())
    })
    .await;
    if let Ok(Err(error)) = final_snapshot {
        warn!(%error, "the last statistics snapshot failed");
    }
    Ok(())
}

/// The STATUS= line of a running agent.
fn enforcing_status(metrics: &MetricsSnapshot, config: &Config) -> String {
    format!(
        "enforcing on {}; {} exemptions, {} relays; CLI on {}",
        config.agent.interfaces.join(", "),
        metrics.exemptions,
        metrics.relays,
        config.agent.socket.display()
    )
}

/// The log's first word of a running agent: what it enforces, where, and how it is reached.
fn startup_line(config: &Config, metrics: &MetricsSnapshot) -> String {
    use crate::config::{AttachKind, XdpMode};
    let agent = &config.agent;
    let attach = match (agent.attach, agent.xdp_mode) {
        (AttachKind::Xdp, XdpMode::Native) => "xdp, native",
        (AttachKind::Xdp, XdpMode::Skb) => "xdp, skb",
        (AttachKind::Tc, _) => "tc",
    };
    let netns = match &agent.netns {
        Some(name) => format!("network namespace {name}"),
        None => "the agent's network namespace".to_owned(),
    };
    let ports: Vec<String> = config
        .enforcement
        .ports
        .iter()
        .map(u16::to_string)
        .collect();
    let ports = match ports.as_slice() {
        [one] => format!("port {one}"),
        many => format!("ports {}", many.join(", ")),
    };
    let ranges = |mode: smtpguard_common::Mode| {
        // An ISP lists thousands of ranges: the first few say which, the count says how many.
        const SHOWN: usize = 8;
        let of_mode: Vec<String> = config
            .subscribers
            .iter()
            .filter(|range| range.mode == mode)
            .map(|range| range.prefix.to_string())
            .collect();
        match of_mode.len() {
            0 => "none".to_owned(),
            n if n <= SHOWN => of_mode.join(", "),
            n => format!("{} and {} more", of_mode[..SHOWN].join(", "), n - SHOWN),
        }
    };
    format!(
        "smtpguard agent running: {ports} enforced on {} ({attach}) in {netns}; enforce: {}; \
         monitor: {}; {} exemptions, {} relays; CLI on {}; metrics on {}; pins in {}",
        agent.interfaces.join(", "),
        ranges(smtpguard_common::Mode::Enforce),
        ranges(smtpguard_common::Mode::Monitor),
        metrics.exemptions,
        metrics.relays,
        agent.socket.display(),
        agent.metrics_listen,
        agent.pin_dir.display(),
    )
}

/// The next tick of an optional interval; never, without one.
async fn tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Every `interval`, turns the kernel's per-host counters into history and prunes history
/// older than `retention`. Runs on the blocking pool with its own handles: the agent's state
/// lock is never held while a million hosts are read.
async fn snapshot_statistics(
    snapshotter: Arc<Mutex<Snapshotter>>,
    state: Arc<Mutex<AgentState>>,
    interval: Duration,
    retention: Duration,
) {
    let mut tick = tokio::time::interval(interval);
    // A snapshot that takes longer than the interval (a million hosts) is followed by the
    // next one an interval later, not by a burst of catch-up snapshots.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is immediate: nothing to record yet
    loop {
        tick.tick().await;
        let snapshotter = snapshotter.clone();
        let state = state.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let mut snapshotter = snapshotter.lock().unwrap_or_else(|p| p.into_inner());
            let now = SystemTime::now();
            let report = snapshotter.take(now)?;
            lock(&state).snapshot_taken(now);
            snapshotter.prune(now, retention)?;
            // The new history classifies hosts: the grouping runs on the snapshotter's own
            // store connection; the state is locked only to act on the bots found.
            let config = lock(&state).config().clone();
            let classified = snapshotter
                .recent_bots(&config, now)
                .map_err(anyhow::Error::from)
                .and_then(|bots| lock(&state).record_bots(bots, now));
            if let Err(error) = classified {
                error!(error = format!("{error:#}"), "classifying hosts failed");
            }
            Ok::<_, crate::report::snapshot::SnapshotError>(report)
        })
        .await;
        match outcome {
            Ok(Ok(report)) => {
                debug!(
                    hosts = report.hosts_read,
                    intervals = report.intervals_written,
                    elapsed_ms = report.elapsed.as_millis() as u64,
                    "statistics snapshot"
                );
            }
            Ok(Err(error)) => {
                error!(%error, "statistics snapshot failed; the next one covers this interval too")
            }
            Err(error) => error!(%error, "statistics snapshot task failed"),
        }
    }
}

fn lock(state: &Mutex<AgentState>) -> std::sync::MutexGuard<'_, AgentState> {
    // A panic while holding the lock must not take the agent down with it: the state is
    // still consistent (the store is transactional and the maps are reconciled by difference).
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn expire_exemptions(state: Arc<Mutex<AgentState>>) {
    let mut tick = tokio::time::interval(EXPIRY_TICK);
    loop {
        tick.tick().await;
        let state = state.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let mut state = lock(&state);
            if state
                .next_expiry()
                .is_some_and(|due| due <= SystemTime::now())
                && let Err(error) = state.expire()
            {
                error!(
                    error = format!("{error:#}"),
                    "expiring exemptions failed; retrying"
                );
            }
        })
        .await;
    }
}

async fn watch(state: Arc<Mutex<AgentState>>) {
    let mut tick = tokio::time::interval(WATCH_TICK);
    tick.tick().await; // the first tick is immediate; start attached everything already
    loop {
        tick.tick().await;
        let state = state.clone();
        let _ = tokio::task::spawn_blocking(move || lock(&state).watch()).await;
    }
}

/// Applies every change of the fleet policy to the kernel maps as etcd reports it. Changes
/// that arrive while one is applied are taken together by the next pass.
async fn follow_fleet(state: Arc<Mutex<AgentState>>, changed: Arc<Notify>) {
    loop {
        changed.notified().await;
        let state = state.clone();
        let _ = tokio::task::spawn_blocking(move || lock(&state).follow_fleet()).await;
    }
}

/// Resolves relay hostnames again every `every`, outside the state lock.
async fn refresh_relays(state: Arc<Mutex<AgentState>>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await; // the first tick is immediate; start resolved them already
    loop {
        tick.tick().await;
        let (config, previous) = {
            let state = lock(&state);
            (state.config().clone(), state.resolved().clone())
        };
        if config.relay_hosts.is_empty() {
            continue;
        }
        let resolved = match tokio::task::spawn_blocking(move || {
            resolve_relay_hosts(&config, &previous, SystemTime::now())
        })
        .await
        {
            Ok(resolved) => resolved,
            Err(error) => {
                warn!(%error, "resolving relay hosts failed");
                continue;
            }
        };
        if let Err(error) = lock(&state).update_relays(resolved) {
            error!(
                error = format!("{error:#}"),
                "installing resolved relay addresses failed"
            );
        }
    }
}

/// One agent per state folder: a second one is refused, never allowed to share the pins.
fn lock_state_dir(state_dir: &Path) -> anyhow::Result<Flock<File>> {
    // The store's modes (folder 0750, files 0640), whatever the umask: this runs first, and a
    // folder made here would keep a mode the umask chose.
    crate::store::create_state_dir(state_dir)?;
    let path = state_dir.join("agent.lock");
    let file = crate::store::create_private_file(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((_, _)) => {
            let owner = std::fs::read_to_string(&path).unwrap_or_default();
            bail!(
                "another smtpguard agent (pid {}) already owns the state folder {}; one agent \
                 per installation",
                owner.trim(),
                state_dir.display()
            );
        }
    };
    lock.set_len(0).ok();
    write!(lock, "{}", std::process::id()).ok();
    Ok(lock)
}
