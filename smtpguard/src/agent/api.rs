//! The agent's socket protocol: one JSON request per connection, one JSON line back. The CLI
//! is the client; tools may speak it too.

use std::{
    io::{BufRead as _, BufReader, ErrorKind as IoErrorKind},
    os::{
        fd::AsRawFd as _,
        unix::{fs::MetadataExt as _, net::UnixStream},
    },
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use serde::{Deserialize, Serialize};

use crate::input::{self, InputError, MAX_REASON_BYTES, MAX_TICKET_BYTES};

/// Largest request the agent reads; anything longer is refused.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Connections the agent serves at once, event streams included: far more than operators and
/// tools need, far fewer than its file descriptor limit (1024 by default). Any beyond get a
/// [`ErrorKind::Busy`] answer at once.
pub const MAX_CONNECTIONS: usize = 128;
/// The first line of an event stream: the agent has subscribed the client (an answer, where
/// an event may take hours to come), so a client knows it is connected.
pub const SUBSCRIBED: &str = r#"{"event":"subscribed"}"#;
/// How long the CLI waits for an answer (`exempt add` includes an fsync and a map update).
pub(crate) const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the CLI keeps trying while the agent answers "busy".
pub(crate) const BUSY_RETRY_FOR: Duration = Duration::from_secs(15);
/// Pause between two tries while the agent is busy.
pub(crate) const BUSY_PAUSE: Duration = Duration::from_millis(100);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    ExemptAdd {
        prefix: String,
        reason: String,
        #[serde(default)]
        ticket: Option<String>,
        /// RFC 3339; the CLI turns `--expires 30d` into a time.
        #[serde(default)]
        expires: Option<String>,
        /// Add it even though it exempts a whole subscriber range.
        #[serde(default, skip_serializing_if = "is_false")]
        force: bool,
    },
    /// Changes an exemption's reason, ticket or expiry without removing it.
    ExemptUpdate {
        prefix: String,
        #[serde(default)]
        reason: Option<String>,
        #[serde(default)]
        ticket: Option<String>,
        /// RFC 3339.
        #[serde(default)]
        expires: Option<String>,
        /// It no longer expires (refused together with `expires`).
        #[serde(default, skip_serializing_if = "is_false")]
        no_expiry: bool,
    },
    ExemptList {},
    ExemptRemove {
        prefix: String,
    },
    /// Exempts a customer identity, whatever address it holds.
    SubscriberExemptAdd {
        subscriber: String,
        reason: String,
        #[serde(default)]
        ticket: Option<String>,
        /// RFC 3339, as for `ExemptAdd`.
        #[serde(default)]
        expires: Option<String>,
    },
    SubscriberExemptRemove {
        subscriber: String,
    },
    /// Binds an address or prefix to a subscriber identity (a BNG without RADIUS).
    SessionStart {
        subscriber: String,
        address: String,
    },
    SessionStop {
        subscriber: String,
        address: String,
    },
    /// Who held an address at a time (RFC 3339; now when absent).
    Who {
        address: String,
        #[serde(default)]
        at: Option<String>,
    },
    RelayAdd {
        prefix: String,
        #[serde(default)]
        note: Option<String>,
        /// Add it even though it opens a large part of the Internet.
        #[serde(default, skip_serializing_if = "is_false")]
        force: bool,
    },
    RelayList {},
    RelayRemove {
        prefix: String,
    },
    Status {},
    Check {
        src: String,
        dst: String,
        port: u16,
    },
    Audit {
        /// RFC 3339.
        #[serde(default)]
        since: Option<String>,
        /// The fleet's changes (etcd's audit range) instead of this gateway's trail.
        #[serde(default)]
        fleet: bool,
    },
    Reload {
        /// Apply the file even though it is dangerous (see `config::danger`).
        #[serde(default, skip_serializing_if = "is_false")]
        force: bool,
    },
    Detach {},
    EscalationList {},
    EscalationLift {
        host: String,
    },
    /// Keeps the connection open and streams events as JSON lines.
    Events {},
    /// The abuse-desk report of the agent's history, streamed (see [`super::stream`]),
    /// rendered as `format` (table, json, csv).
    Report {
        /// The window, RFC 3339; the CLI turns `--since 7d` into times.
        from: String,
        to: String,
        #[serde(default)]
        top: Option<usize>,
        #[serde(default)]
        min_attempts: u64,
        /// Only hosts that hit their limit (rate-limited or unanswered attempts).
        #[serde(default, skip_serializing_if = "is_false")]
        limited: bool,
        #[serde(default)]
        prefix: Option<String>,
        /// host, /64, /56 or subscriber-prefix.
        group: String,
        /// table, json or csv.
        format: String,
        /// Reoffenders instead of hosts.
        #[serde(default, skip_serializing_if = "is_false")]
        reoffenders: bool,
        /// Every gateway's history, from the fleet's PostgreSQL.
        #[serde(default, skip_serializing_if = "is_false")]
        fleet: bool,
        /// With `fleet`: one gateway's only.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        gateway: Option<String>,
    },
    /// The ranges to publish on a policy block list.
    PblExport {},
}

fn is_false(value: &bool) -> bool {
    !*value
}

impl Request {
    /// Checks every field against the input limits of [`crate::input`]: the CLI does before it
    /// sends, and the agent does again before it acts, since any local tool may speak the
    /// socket protocol.
    pub fn validate(&self, now: SystemTime) -> Result<(), InputError> {
        match self {
            Request::ExemptAdd {
                prefix,
                reason,
                ticket,
                expires,
                force: _,
            } => check_exemption(prefix, Some(reason), ticket, expires, now)?,
            Request::ExemptUpdate {
                prefix,
                reason,
                ticket,
                expires,
                no_expiry: _,
            } => check_exemption(prefix, reason.as_ref(), ticket, expires, now)?,
            Request::RelayAdd {
                prefix,
                note,
                force: _,
            } => {
                input::parse_prefix("prefix", prefix)?;
                if let Some(note) = note {
                    input::check_text("note", note, MAX_REASON_BYTES)?;
                }
            }
            // A bare address is the host it belongs to, which the agent's config says.
            Request::ExemptRemove { prefix } => {
                input::parse_prefix_or_host("prefix", prefix)?;
            }
            Request::RelayRemove { prefix } => {
                input::parse_prefix("prefix", prefix)?;
            }
            Request::SubscriberExemptAdd {
                subscriber,
                reason,
                ticket,
                expires,
            } => {
                input::check_subscriber(subscriber)?;
                check_exemption_text(reason, ticket)?;
                check_expiry(expires, now)?;
            }
            Request::SubscriberExemptRemove { subscriber } => {
                input::check_subscriber(subscriber)?;
            }
            Request::SessionStart {
                subscriber,
                address,
            }
            | Request::SessionStop {
                subscriber,
                address,
            } => {
                input::check_subscriber(subscriber)?;
                input::parse_prefix_or_host("address", address)?;
            }
            Request::Who { address, at } => {
                input::parse_address("address", address)?;
                if let Some(at) = at {
                    input::parse_time("at", at)?;
                }
            }
            Request::Check { src, dst, port: _ } => {
                input::parse_address("source", src)?;
                input::parse_address("destination", dst)?;
            }
            Request::Audit {
                since: Some(since), ..
            } => {
                input::parse_time("since", since)?;
            }
            Request::EscalationLift { host } => {
                input::parse_address("host", host)?;
            }
            Request::Report {
                from, to, prefix, ..
            } => {
                input::parse_time("from", from)?;
                input::parse_time("to", to)?;
                if let Some(prefix) = prefix {
                    input::parse_prefix("prefix", prefix)?;
                }
            }
            Request::ExemptList {}
            | Request::RelayList {}
            | Request::Status {}
            | Request::Audit { since: None, .. }
            | Request::Reload { .. }
            | Request::Detach {}
            | Request::EscalationList {}
            | Request::Events {}
            | Request::PblExport {} => {}
        }
        Ok(())
    }
}

/// The fields of `exempt add` and `exempt update` (where each is optional but the prefix).
fn check_exemption(
    prefix: &str,
    reason: Option<&String>,
    ticket: &Option<String>,
    expires: &Option<String>,
    now: SystemTime,
) -> Result<(), InputError> {
    input::parse_prefix_or_host("prefix", prefix)?;
    if let Some(reason) = reason {
        check_exemption_text(reason, ticket)?;
    } else if let Some(ticket) = ticket {
        input::check_text("ticket", ticket, MAX_TICKET_BYTES)?;
    }
    check_expiry(expires, now)
}

/// An exemption's expiry, if it has one: a time, after `now`.
fn check_expiry(expires: &Option<String>, now: SystemTime) -> Result<(), InputError> {
    if let Some(expires) = expires {
        let at = input::parse_time("expires", expires)?;
        input::check_expiry("expires", at, now)?;
    }
    Ok(())
}

/// An exemption's reason and ticket.
fn check_exemption_text(reason: &str, ticket: &Option<String>) -> Result<(), InputError> {
    input::check_text("reason", reason, MAX_REASON_BYTES)?;
    if let Some(ticket) = ticket {
        input::check_text("ticket", ticket, MAX_TICKET_BYTES)?;
    }
    Ok(())
}

/// Why a request failed, for the exit code and for tools.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// The request is wrong (bad prefix, missing reason, outside every subscriber range).
    BadRequest,
    /// It conflicts with what is there (a duplicate).
    Conflict,
    NotFound,
    /// The agent could not carry it out (store or kernel failure); nothing was changed.
    Failed,
    /// The agent serves its most connections at once; the CLI tries again.
    Busy,
    /// The fleet's etcd cannot be reached: nothing was changed (exit code 2, like an agent
    /// that cannot be reached).
    Unavailable,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum Response {
    Ok { body: serde_json::Value },
    Error { kind: ErrorKind, message: String },
}

impl Response {
    pub fn error(kind: ErrorKind, message: impl Into<String>) -> Self {
        Response::Error {
            kind,
            message: message.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach the smtpguard agent at {} (is `smtpguard run` running, and is this the \
         socket of its config?)",
        .socket.display()
    )]
    Unreachable {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The socket's permissions keep this user out (exit code 3).
    #[error(
        "permission denied: {} {access}; you need to be in group {group} (or root) to use the \
         smtpguard agent",
        .socket.display()
    )]
    PermissionDenied {
        socket: PathBuf,
        /// What the socket allows, e.g. "is mode 0660, owner root, group smtpguard".
        access: String,
        group: String,
    },
    #[error("the smtpguard agent at {} gave no usable answer: {problem}", .socket.display())]
    BadAnswer { socket: PathBuf, problem: String },
    /// The event stream ended: the agent stopped or restarted (exit code 2).
    #[error(
        "the smtpguard agent at {} went away (stopped or restarted); the event stream ended \
         (`smtpguard events --follow` connects again)",
        .socket.display()
    )]
    Gone { socket: PathBuf },
}

/// The error for a connect that failed: permission denied names the group to join.
fn connect_error(socket: &Path, source: std::io::Error) -> ClientError {
    if source.kind() != IoErrorKind::PermissionDenied {
        return ClientError::Unreachable {
            socket: socket.to_owned(),
            source,
        };
    }
    let name = |gid: u32| {
        nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
            .ok()
            .flatten()
            .map_or_else(|| format!("gid {gid}"), |g| g.name)
    };
    let (access, group) = match std::fs::metadata(socket) {
        Ok(meta) => {
            let owner = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(meta.uid()))
                .ok()
                .flatten()
                .map_or_else(|| format!("uid {}", meta.uid()), |u| u.name);
            let group = name(meta.gid());
            (
                format!(
                    "is mode {:04o}, owner {owner}, group {group}",
                    meta.mode() & 0o7777
                ),
                group,
            )
        }
        // The folder on the way is closed to this user; the socket's group is what the
        // agent's `socket_group` names.
        Err(_) => (
            "is in a folder this user cannot enter".to_owned(),
            "socket_group (see the agent's config)".to_owned(),
        ),
    };
    ClientError::PermissionDenied {
        socket: socket.to_owned(),
        access,
        group,
    }
}

/// Asks for the event stream, calls `connected` once the agent has subscribed this client,
/// then `each` with every event's JSON line; ends with [`ClientError::Gone`] when the agent
/// goes away.
pub fn stream_events(
    socket: &Path,
    connected: impl FnOnce(),
    mut each: impl FnMut(&str),
) -> Result<(), ClientError> {
    let deadline = Instant::now() + BUSY_RETRY_FOR;
    let (mut lines, first) = loop {
        let (reader, first) = exchange(socket, &Request::Events {}, None)?;
        // Events are no responses: a line that parses as one is the agent refusing.
        match serde_json::from_str::<Response>(&first) {
            Ok(Response::Error {
                kind: ErrorKind::Busy,
                ..
            }) if Instant::now() < deadline => std::thread::sleep(BUSY_PAUSE),
            Ok(Response::Error { message, .. }) => {
                return Err(ClientError::BadAnswer {
                    socket: socket.to_owned(),
                    problem: message,
                });
            }
            _ => break (reader.lines(), first),
        }
    };
    if first.is_empty() {
        return Err(ClientError::Gone {
            socket: socket.to_owned(),
        });
    }
    connected();
    if first.trim_end() != SUBSCRIBED {
        each(first.trim_end());
    }
    while let Some(Ok(line)) = lines.next() {
        each(&line);
    }
    Err(ClientError::Gone {
        socket: socket.to_owned(),
    })
}

/// Sends one request and waits for the answer; while the agent is busy, tries again for up to
/// [`BUSY_RETRY_FOR`].
pub fn call(socket: &Path, request: &Request) -> Result<Response, ClientError> {
    let deadline = Instant::now() + BUSY_RETRY_FOR;
    loop {
        let (_, answer) = exchange(socket, request, Some(CLIENT_TIMEOUT))?;
        if answer.is_empty() {
            return Err(ClientError::BadAnswer {
                socket: socket.to_owned(),
                problem: "the connection closed without an answer".to_owned(),
            });
        }
        let response: Response =
            serde_json::from_str(&answer).map_err(|e| ClientError::BadAnswer {
                socket: socket.to_owned(),
                problem: format!("{e}: {answer:?}"),
            })?;
        let busy = matches!(
            response,
            Response::Error {
                kind: ErrorKind::Busy,
                ..
            }
        );
        if !busy || Instant::now() >= deadline {
            return Ok(response);
        }
        std::thread::sleep(BUSY_PAUSE);
    }
}

/// Connects, sends `request` and reads the first line back (empty if the agent closed the
/// connection without one). An agent that answers "busy" closes without reading the request,
/// so a failed send is only an error when no answer came either.
pub(crate) fn exchange(
    socket: &Path,
    request: &Request,
    timeout: Option<Duration>,
) -> Result<(BufReader<UnixStream>, String), ClientError> {
    let unreachable = |source| ClientError::Unreachable {
        socket: socket.to_owned(),
        source,
    };
    let bad = |problem: String| ClientError::BadAnswer {
        socket: socket.to_owned(),
        problem,
    };
    let stream = UnixStream::connect(socket).map_err(|e| connect_error(socket, e))?;
    stream.set_read_timeout(timeout).map_err(unreachable)?;
    let mut line = serde_json::to_string(request).map_err(|e| bad(e.to_string()))?;
    line.push('\n');
    let sent = send_all(&stream, line.as_bytes());
    let mut reader = BufReader::new(stream);
    let mut answer = String::new();
    let read = reader.read_line(&mut answer);
    if answer.is_empty() {
        sent.map_err(unreachable)?;
        read.map_err(|e| bad(e.to_string()))?;
    }
    Ok((reader, answer))
}

/// Writes all of `bytes` without raising SIGPIPE (the CLI runs with its default action): an
/// agent that closed the connection early gives an error to handle, not a dead CLI.
fn send_all(stream: &UnixStream, mut bytes: &[u8]) -> std::io::Result<()> {
    use nix::{
        errno::Errno,
        sys::socket::{MsgFlags, send},
    };
    while !bytes.is_empty() {
        match send(stream.as_raw_fd(), bytes, MsgFlags::MSG_NOSIGNAL) {
            Ok(sent) => bytes = &bytes[sent..],
            Err(Errno::EINTR) => {}
            Err(errno) => return Err(errno.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_a_stable_wire_form() {
        let request = Request::ExemptAdd {
            prefix: "100.64.1.0/24".to_owned(),
            reason: "static block".to_owned(),
            ticket: Some("T-1".to_owned()),
            expires: None,
            force: false,
        };
        let wire = serde_json::to_string(&request).unwrap();
        assert_eq!(
            wire,
            r#"{"op":"exempt-add","prefix":"100.64.1.0/24","reason":"static block","ticket":"T-1","expires":null}"#
        );
        assert_eq!(serde_json::from_str::<Request>(&wire).unwrap(), request);
        // Empty struct variants, not unit ones: serde then refuses unknown fields there too.
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"op":"status"}"#).unwrap(),
            Request::Status {}
        );
        assert!(serde_json::from_str::<Request>(r#"{"op":"status","extra":1}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"op":"format-disk"}"#).is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// Whatever a local client sends in a verb's fields, the agent either refuses it with
        /// a message that is safe to print or accepts only what is within the limits. Never a
        /// panic.
        #[test]
        fn any_request_is_within_the_limits_or_refused(
            op in proptest::sample::select(vec![
                "exempt-add", "exempt-remove", "relay-add", "relay-remove", "check", "audit",
                "escalation-lift", "reload",
            ]),
            text in proptest::prelude::any::<String>(),
            other in proptest::prop_oneof![
                "[0-9a-f.:/]{0,45}",
                proptest::strategy::Just("100.64.0.0/24".to_owned()),
            ],
            expires in proptest::option::of("20[0-9]{2}-[01][0-9]-[0-3][0-9]T[0-9:]{8}Z"),
            force in proptest::prelude::any::<bool>(),
        ) {
            let fields: &[(&str, serde_json::Value)] = &[
                ("prefix", other.clone().into()),
                ("reason", text.clone().into()),
                ("ticket", text.clone().into()),
                ("note", text.clone().into()),
                ("expires", expires.clone().into()),
                ("src", text.clone().into()),
                ("dst", other.clone().into()),
                ("port", 25.into()),
                ("since", text.clone().into()),
                ("host", other.clone().into()),
                ("force", force.into()),
            ];
            let own: &[&str] = match op {
                "exempt-add" => &["prefix", "reason", "ticket", "expires", "force"],
                "relay-add" => &["prefix", "note", "force"],
                "exempt-remove" | "relay-remove" => &["prefix"],
                "check" => &["src", "dst", "port"],
                "audit" => &["since"],
                "escalation-lift" => &["host"],
                _ => &["force"],
            };
            let mut value = serde_json::json!({ "op": op });
            for (name, field) in fields.iter().filter(|(name, _)| own.contains(name)) {
                value[*name] = field.clone();
            }
            let request: Request = serde_json::from_value(value).unwrap();
            match request.validate(std::time::SystemTime::now()) {
                Err(error) => {
                    let message = error.to_string();
                    proptest::prop_assert_eq!(crate::input::first_unprintable(&message), None);
                }
                Ok(()) => {
                    if let Request::ExemptAdd { reason, ticket, prefix, .. } = &request {
                        proptest::prop_assert!(reason.len() <= MAX_REASON_BYTES);
                        proptest::prop_assert!(ticket.as_ref().is_none_or(|t| t.len() <= MAX_TICKET_BYTES));
                        proptest::prop_assert_eq!(crate::input::first_unprintable(reason), None);
                        proptest::prop_assert!(input::parse_prefix_or_host("prefix", prefix).is_ok());
                    }
                }
            }
        }
    }

    #[test]
    fn responses_round_trip() {
        let response = Response::error(ErrorKind::Conflict, "100.64.1.0/24 is already exempt");
        let wire = serde_json::to_string(&response).unwrap();
        assert_eq!(
            wire,
            r#"{"status":"error","kind":"conflict","message":"100.64.1.0/24 is already exempt"}"#
        );
        assert_eq!(serde_json::from_str::<Response>(&wire).unwrap(), response);
    }
}
