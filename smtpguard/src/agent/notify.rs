//! Telling the service manager what the agent is doing (systemd `Type=notify`): READY=1 once
//! it enforces and answers, STATUS= lines, RELOADING=1 around a reload, STOPPING=1, and
//! watchdog pings. Without `NOTIFY_SOCKET` (not started by systemd) every call does nothing.
//!
//! A notification that cannot be sent is logged and otherwise ignored: the agent's job is
//! enforcement, and systemd notices a missing READY=1 or watchdog ping by itself.

use std::time::Duration;

use sd_notify::NotifyState;
use tracing::warn;

/// Startup is done: maps pinned, program attached, the CLI socket listening.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// What the agent is busy with, shown by `systemctl status`.
pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// A reload begins; [`ready`] ends it. systemd 253 and later require the monotonic time of
/// the reload's start with it.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[
            NotifyState::Reloading,
            now,
            NotifyState::Status("reloading the configuration"),
        ]),
        Err(error) => warn!(%error, "reading the monotonic clock for RELOADING=1 failed"),
    }
}

pub fn stopping() {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("stopping; enforcement stays in place"),
    ]);
}

/// The agent is alive: its main loop ran and its state answered.
pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// How often to ping the watchdog when systemd asks for pings (`WatchdogSec=`): twice per
/// period, as sd_watchdog_enabled(3) advises, so one late ping is not fatal.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|period| period / 2)
}

fn send(states: &[NotifyState]) {
    if let Err(error) = sd_notify::notify(states) {
        let first = states.first().map(ToString::to_string).unwrap_or_default();
        warn!(%error, notification = first, "notifying the service manager failed");
    }
}
