//! What the agent tells tools as it happens: new bot classifications and escalations,
//! streamed to `smtpguard events` clients and handed to the `on_bot` program.

use std::{
    io::Write as _,
    net::IpAddr,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, SystemTime},
};

use serde::Serialize;
use tokio::sync::broadcast;
use tracing::{info, warn};

use crate::report::ReportRow;

/// How many events a slow `events` client may fall behind before it misses some.
pub const BACKLOG: usize = 1024;
/// How long the `on_bot` program may run.
const HOOK_LIMIT: Duration = Duration::from_secs(30);

#[derive(Clone, Debug, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// A host newly classified as a bot (its report row over the classification window).
    Bot {
        #[serde(serialize_with = "rfc3339")]
        at: SystemTime,
        #[serde(flatten)]
        row: ReportRow,
    },
    Escalated {
        #[serde(serialize_with = "rfc3339")]
        at: SystemTime,
        host: IpAddr,
        level: u32,
        #[serde(serialize_with = "rfc3339")]
        until: SystemTime,
    },
    EscalationEnded {
        #[serde(serialize_with = "rfc3339")]
        at: SystemTime,
        host: IpAddr,
        by: String,
        expired: bool,
    },
}

fn rfc3339<S: serde::Serializer>(time: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&humantime::format_rfc3339_seconds(*time).to_string())
}

pub type Events = broadcast::Sender<Event>;

pub fn channel() -> Events {
    broadcast::channel(BACKLOG).0
}

/// Publishes `event` to the streaming clients (none listening is fine).
pub fn publish(events: &Events, event: Event) {
    let _ = events.send(event);
}

/// Runs the `on_bot` program with the bot's row as JSON on standard input, on a thread of its
/// own: a slow or failing program never holds up the agent.
pub fn run_hook(program: &Path, row: &ReportRow) {
    let Ok(input) = serde_json::to_vec(row) else {
        return;
    };
    let program = program.to_owned();
    let host = row.host.to_string();
    std::thread::spawn(move || {
        let spawned = Command::new(&program)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(error) => {
                warn!(program = %program.display(), %error, "on_bot program did not start");
                return;
            }
        };
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(&input);
        }
        let started = std::time::Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(status)) if status.success() => {
                    info!(program = %program.display(), host, "on_bot program done");
                    return;
                }
                Ok(Some(status)) => {
                    warn!(program = %program.display(), host, %status, "on_bot program failed");
                    return;
                }
                Ok(None) if started.elapsed() > HOOK_LIMIT => {
                    let _ = child.kill();
                    let _ = child.wait();
                    warn!(program = %program.display(), host, "on_bot program killed after 30 s");
                    return;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                Err(error) => {
                    warn!(program = %program.display(), %error, "waiting for the on_bot program");
                    return;
                }
            }
        }
    });
}
