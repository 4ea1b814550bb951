//! The agent's socket protocol: one JSON request per connection, one JSON line back. The CLI
//! is the client; tools may speak it too.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

/// Largest request the agent reads; anything longer is refused.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// How long the CLI waits for an answer (`exempt add` includes an fsync and a map update).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

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
    },
    ExemptList {},
    ExemptRemove {
        prefix: String,
    },
    RelayAdd {
        prefix: String,
        #[serde(default)]
        note: Option<String>,
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
    },
    Reload {},
    Detach {},
    EscalationList {},
    EscalationLift {
        host: String,
    },
    /// Keeps the connection open and streams events as JSON lines.
    Events {},
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
    #[error("the smtpguard agent at {} gave no usable answer: {problem}", .socket.display())]
    BadAnswer { socket: PathBuf, problem: String },
}

/// Asks for the event stream and calls `each` with every JSON line until the agent goes away.
pub fn stream_events(socket: &Path, mut each: impl FnMut(&str)) -> Result<(), ClientError> {
    let unreachable = |source| ClientError::Unreachable {
        socket: socket.to_owned(),
        source,
    };
    let mut stream = UnixStream::connect(socket).map_err(unreachable)?;
    let mut line = serde_json::to_string(&Request::Events {}).unwrap_or_default();
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(unreachable)?;
    for line in BufReader::new(stream).lines() {
        match line {
            Ok(line) => each(&line),
            Err(_) => break,
        }
    }
    Ok(())
}

/// Sends one request and waits for the answer.
pub fn call(socket: &Path, request: &Request) -> Result<Response, ClientError> {
    let unreachable = |source| ClientError::Unreachable {
        socket: socket.to_owned(),
        source,
    };
    let bad = |problem: String| ClientError::BadAnswer {
        socket: socket.to_owned(),
        problem,
    };
    let mut stream = UnixStream::connect(socket).map_err(unreachable)?;
    stream
        .set_read_timeout(Some(CLIENT_TIMEOUT))
        .map_err(unreachable)?;
    let mut line = serde_json::to_string(request).map_err(|e| bad(e.to_string()))?;
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(unreachable)?;
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .map_err(|e| bad(e.to_string()))?;
    if answer.is_empty() {
        return Err(bad("the connection closed without an answer".to_owned()));
    }
    serde_json::from_str(&answer).map_err(|e| bad(format!("{e}: {answer:?}")))
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
