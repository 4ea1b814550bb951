//! The agent's Unix socket: one request per connection, answered by the one `AgentState`.
//! A slow, malformed or oversized client gets an error and never holds up the others; at most
//! [`MAX_CONNECTIONS`] are served at once, and any beyond get a "busy" answer at once, so a
//! flood of connections cannot use up the agent's file descriptors.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, bail};
use nix::unistd::{Group, User, chown};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::{Notify, OwnedSemaphorePermit, Semaphore},
};
use tracing::warn;

use crate::input::escape_unprintable;

use super::{
    api::{ErrorKind, MAX_CONNECTIONS, MAX_REQUEST_BYTES, Request, Response},
    state::AgentState,
};

/// How long a client may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to read its answer (a long `exempt list`).
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Binds the socket with mode 0660 (owner and group only), replacing a stale socket file
/// but never one another agent still answers on.
pub fn bind(path: &Path, group: Option<&str>) -> anyhow::Result<UnixListener> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating the socket folder {}", parent.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "another smtpguard agent answers on {}; stop it or give this one another socket",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("binding the socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    if let Some(group) = group {
        let gid = Group::from_name(group)
            .with_context(|| format!("looking up group {group}"))?
            .with_context(|| format!("socket_group {group:?} does not exist"))?
            .gid;
        chown(path, None, Some(gid))
            .with_context(|| format!("giving {} to group {group}", path.display()))?;
    }
    Ok(listener)
}

/// Accepts clients until the listener fails; each client is served on its own task.
pub async fn accept(listener: UnixListener, state: Arc<Mutex<AgentState>>, detached: Arc<Notify>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        match listener.accept().await {
            Ok((stream, _)) => match slots.clone().try_acquire_owned() {
                Ok(slot) => {
                    tokio::spawn(serve(stream, slot, state.clone(), detached.clone()));
                }
                Err(_) => refuse_busy(&stream),
            },
            Err(error) => {
                warn!(%error, "accepting a CLI connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Answers "busy" without waiting: the answer fits in the empty socket buffer of a new
/// connection, and the stream is closed when dropped.
fn refuse_busy(stream: &UnixStream) {
    let response = Response::error(
        ErrorKind::Busy,
        format!(
            "the agent is serving its limit of {MAX_CONNECTIONS} connections; try again shortly"
        ),
    );
    let _ = stream.try_write(answer_line(&response).as_bytes());
}

/// A response as the one JSON line the client reads.
fn answer_line(response: &Response) -> String {
    let mut line = serde_json::to_string(response).unwrap_or_else(|error| {
        format!(r#"{{"status":"error","kind":"failed","message":"encoding the answer: {error}"}}"#)
    });
    line.push('\n');
    line
}

/// Serves one client while holding `_slot`, one of the [`MAX_CONNECTIONS`].
async fn serve(
    stream: UnixStream,
    _slot: OwnedSemaphorePermit,
    state: Arc<Mutex<AgentState>>,
    detached: Arc<Notify>,
) {
    let who = peer_name(&stream);
    let (reader, mut writer) = stream.into_split();
    let response = match read_request(reader).await {
        Ok(Request::Events {}) => {
            let receiver = state.lock().unwrap_or_else(|p| p.into_inner()).subscribe();
            stream_events(receiver, writer).await;
            return;
        }
        Ok(request @ Request::Report { .. }) => {
            let config = state
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .report_config();
            super::stream::serve(writer, move |out| {
                super::verbs::report::produce(request, &config, out)
            })
            .await;
            return;
        }
        Ok(request) => {
            let state = state.clone();
            tokio::task::spawn_blocking(move || {
                let mut state = state
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                let response = state.handle(request, &who);
                (response, state.detached())
            })
            .await
            .map(|(response, now_detached)| {
                if now_detached {
                    detached.notify_one();
                }
                response
            })
            .unwrap_or_else(|error| {
                Response::error(
                    ErrorKind::Failed,
                    format!("the request failed inside the agent: {error}"),
                )
            })
        }
        Err(response) => response,
    };
    let line = answer_line(&response);
    // A client that does not read its answer loses it, and its slot.
    let _ = tokio::time::timeout(WRITE_TIMEOUT, writer.write_all(line.as_bytes())).await;
}

/// Writes [`api::SUBSCRIBED`], then each event as a JSON line until the client goes away.
async fn stream_events(
    mut events: tokio::sync::broadcast::Receiver<super::events::Event>,
    mut writer: tokio::net::unix::OwnedWriteHalf,
) {
    use tokio::sync::broadcast::error::RecvError;
    if writer
        .write_all(format!("{}\n", super::api::SUBSCRIBED).as_bytes())
        .await
        .is_err()
    {
        return;
    }
    loop {
        let line = match events.recv().await {
            Ok(event) => serde_json::to_string(&event).unwrap_or_default(),
            Err(RecvError::Lagged(missed)) => format!(r#"{{"event":"lagged","missed":{missed}}}"#),
            Err(RecvError::Closed) => return,
        };
        if writer
            .write_all(format!("{line}\n").as_bytes())
            .await
            .is_err()
        {
            return;
        }
    }
}

async fn read_request(reader: tokio::net::unix::OwnedReadHalf) -> Result<Request, Response> {
    let mut line = String::new();
    let mut limited = BufReader::new(reader.take(MAX_REQUEST_BYTES as u64 + 1));
    match tokio::time::timeout(READ_TIMEOUT, limited.read_line(&mut line)).await {
        Err(_) => {
            return Err(Response::error(
                ErrorKind::BadRequest,
                format!("no request within {} seconds", READ_TIMEOUT.as_secs()),
            ));
        }
        Ok(Err(error)) => {
            return Err(Response::error(
                ErrorKind::BadRequest,
                format!("reading the request: {error}"),
            ));
        }
        Ok(Ok(_)) => {}
    }
    if line.len() > MAX_REQUEST_BYTES {
        return Err(Response::error(
            ErrorKind::BadRequest,
            format!("the request is longer than {MAX_REQUEST_BYTES} bytes"),
        ));
    }
    // serde quotes parts of the request (an unknown verb): escaped, as they are the client's.
    serde_json::from_str(&line).map_err(|error| {
        Response::error(
            ErrorKind::BadRequest,
            format!(
                "malformed request: {}; expected one JSON object such as {{\"op\":\"status\"}}",
                escape_unprintable(&error.to_string())
            ),
        )
    })
}

/// The connecting user's name, from the kernel's peer credentials (not from the client).
fn peer_name(stream: &UnixStream) -> String {
    match stream.peer_cred() {
        Ok(credentials) => {
            let uid = nix::unistd::Uid::from_raw(credentials.uid());
            match User::from_uid(uid) {
                Ok(Some(user)) => user.name,
                _ => format!("uid {uid}"),
            }
        }
        Err(_) => "unknown".to_owned(),
    }
}
