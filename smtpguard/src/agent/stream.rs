//! Streamed answers, for verbs whose answer can be far larger than a request (a report over a
//! million hosts): the agent sends a start line, the output in data lines of at most
//! [`CHUNK_BYTES`] each (whole lines of the output, so every chunk is valid UTF-8), and an end
//! line with the number of rows and bytes, or an error line if it failed after starting. A
//! refusal before the start (a bad request, busy) is the ordinary one-line error answer.
//!
//! ```text
//! {"frame":"start"}
//! {"frame":"data","text":"host,hosts,...\n100.64.0.2,1,...\n"}
//! {"frame":"end","rows":2,"bytes":123}
//! ```
//!
//! Neither side holds more than a few chunks: the agent's producer runs on a blocking thread
//! and hands chunks over a channel of [`CHANNEL_CHUNKS`]; the connection's task writes them to
//! the socket, so when a client reads slowly its socket buffer fills, the task waits, the
//! channel fills and the producer waits. A client that stops reading for [`WRITE_STALL`] is
//! dropped, which stops its producer. Each connection has its own task: a slow reader holds
//! up no other client.

use std::{
    io::{BufRead as _, Write},
    path::Path,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::AsyncWriteExt as _,
    net::unix::OwnedWriteHalf,
    sync::{Semaphore, mpsc},
};

use super::api::{self, ClientError, ErrorKind, Request, Response};

/// Output bytes per data line: large enough that framing costs nothing, small enough that a
/// few in flight are nothing either.
pub const CHUNK_BYTES: usize = 64 * 1024;
/// Chunks between the producer and the socket.
const CHANNEL_CHUNKS: usize = 4;
/// Streams produced at once: each holds its report's rows while it is read, so a handful of
/// slow readers cannot multiply that. Any beyond get a "busy" answer, which the CLI retries.
pub const MAX_STREAMS: usize = 4;
/// How long a client may leave one chunk unread before the agent gives up on it.
const WRITE_STALL: Duration = Duration::from_secs(30);

static STREAMS: Semaphore = Semaphore::const_new(MAX_STREAMS);

/// One line of a streamed answer after the first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "frame", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Frame {
    Start {},
    Data {
        text: String,
    },
    End {
        rows: u64,
        bytes: u64,
    },
    /// The producer failed after the start: the output so far is incomplete.
    Error {
        kind: ErrorKind,
        message: String,
    },
}

fn line_of(value: &impl Serialize) -> String {
    let mut line = serde_json::to_string(value).unwrap_or_else(|error| {
        format!(r#"{{"frame":"error","kind":"failed","message":"encoding a frame: {error}"}}"#)
    });
    line.push('\n');
    line
}

/// The producer's side: an [`std::io::Write`] whose bytes go out as data lines.
pub struct StreamWriter {
    lines: mpsc::Sender<String>,
    buffer: Vec<u8>,
    started: bool,
    bytes: u64,
}

impl StreamWriter {
    /// Sends the start line: from now on a failure is an error frame, not a refusal.
    pub fn start(&mut self) -> std::io::Result<()> {
        self.started = true;
        self.send(line_of(&Frame::Start {}))
    }

    fn send(&self, line: String) -> std::io::Result<()> {
        self.lines.blocking_send(line).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "the client stopped reading the stream",
            )
        })
    }

    /// Sends the buffered bytes up to the last whole line (all of them with `all`).
    fn send_lines(&mut self, all: bool) -> std::io::Result<()> {
        let cut = if all {
            self.buffer.len()
        } else {
            match self.buffer.iter().rposition(|&b| b == b'\n') {
                Some(newline) => newline + 1,
                // No line end in a whole chunk (no renderer writes such lines): cut at a
                // character boundary instead.
                None => match std::str::from_utf8(&self.buffer) {
                    Ok(_) => self.buffer.len(),
                    Err(error) => error.valid_up_to(),
                },
            }
        };
        if cut == 0 {
            return Ok(());
        }
        let rest = self.buffer.split_off(cut);
        let chunk = std::mem::replace(&mut self.buffer, rest);
        let text = String::from_utf8(chunk).map_err(|error| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("the output is not UTF-8: {error}"),
            )
        })?;
        self.bytes += text.len() as u64;
        self.send(line_of(&Frame::Data { text }))
    }

    /// Sends what is left and the end line.
    fn finish(mut self, rows: u64) -> std::io::Result<()> {
        self.send_lines(true)?;
        let end = Frame::End {
            rows,
            bytes: self.bytes,
        };
        self.send(line_of(&end))
    }

    fn fail(self, kind: ErrorKind, message: String) {
        let line = if self.started {
            line_of(&Frame::Error { kind, message })
        } else {
            line_of(&Response::error(kind, message))
        };
        let _ = self.send(line);
    }
}

impl Write for StreamWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        if self.buffer.len() >= CHUNK_BYTES {
            self.send_lines(false)?;
        }
        Ok(bytes.len())
    }

    /// Nothing: renderers flush when they are done, and the rest goes out with the end line.
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs `produce` on a blocking thread and writes what it sends to `writer` until the end
/// line, an error, or a client that stops reading. `produce` calls [`StreamWriter::start`]
/// once it knows it can answer, writes the output and returns its number of rows.
pub(super) async fn serve<P>(mut writer: OwnedWriteHalf, produce: P)
where
    P: FnOnce(&mut StreamWriter) -> Result<u64, (ErrorKind, String)> + Send + 'static,
{
    let Ok(_permit) = STREAMS.try_acquire() else {
        let busy = Response::error(
            ErrorKind::Busy,
            format!("the agent is sending {MAX_STREAMS} reports already; try again shortly"),
        );
        let _ = writer.write_all(line_of(&busy).as_bytes()).await;
        return;
    };
    let (sender, mut lines) = mpsc::channel(CHANNEL_CHUNKS);
    let producer = tokio::task::spawn_blocking(move || {
        let mut stream = StreamWriter {
            lines: sender,
            buffer: Vec::with_capacity(CHUNK_BYTES),
            started: false,
            bytes: 0,
        };
        match produce(&mut stream) {
            Ok(rows) => {
                let _ = stream.finish(rows);
            }
            Err((kind, message)) => stream.fail(kind, message),
        }
    });
    while let Some(line) = lines.recv().await {
        match tokio::time::timeout(WRITE_STALL, writer.write_all(line.as_bytes())).await {
            Ok(Ok(())) => {}
            // Gone or stalled: closing the channel makes the producer's next send fail.
            _ => break,
        }
    }
    drop(lines);
    let _ = producer.await;
}

/// What a complete stream carried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Received {
    pub rows: u64,
    pub bytes: u64,
}

/// How a streamed request failed on the client's side.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The agent refused the request, or failed while producing the output.
    #[error("{message}")]
    Refused { kind: ErrorKind, message: String },
    #[error("writing the output")]
    Output(#[source] std::io::Error),
}

/// Sends `request`, writes the streamed output to `out` and returns what the end line counted;
/// while the agent is busy, tries again as [`api::call`] does. A stream that ends without its
/// end line (the agent stopped) is [`ClientError::BadAnswer`]: the output is incomplete.
pub fn receive(
    socket: &Path,
    request: &Request,
    out: &mut dyn Write,
) -> Result<Received, StreamError> {
    let bad = |problem: String| ClientError::BadAnswer {
        socket: socket.to_owned(),
        problem,
    };
    let deadline = Instant::now() + api::BUSY_RETRY_FOR;
    let (mut reader, first) = loop {
        let (reader, first) = api::exchange(socket, request, Some(api::CLIENT_TIMEOUT))?;
        match serde_json::from_str::<Response>(&first) {
            Ok(Response::Error {
                kind: ErrorKind::Busy,
                ..
            }) if Instant::now() < deadline => std::thread::sleep(api::BUSY_PAUSE),
            Ok(Response::Error { kind, message }) => {
                return Err(StreamError::Refused { kind, message });
            }
            _ => break (reader, first),
        }
    };
    match serde_json::from_str::<Frame>(&first) {
        Ok(Frame::Start {}) => {}
        _ if first.is_empty() => {
            return Err(bad("the connection closed without an answer".to_owned()).into());
        }
        _ => return Err(bad(format!("expected the start of a stream, got {first:?}")).into()),
    }
    let mut written = 0u64;
    let mut line = String::new();
    loop {
        line.clear();
        let read = reader.read_line(&mut line);
        if line.is_empty() || !line.ends_with('\n') {
            let why = read.err().map(|e| format!(" ({e})")).unwrap_or_default();
            return Err(bad(format!(
                "the stream ended after {written} bytes without its end line{why}; the output \
                 is incomplete (did the agent stop?)"
            ))
            .into());
        }
        match serde_json::from_str::<Frame>(&line) {
            Ok(Frame::Data { text }) => {
                out.write_all(text.as_bytes())
                    .map_err(StreamError::Output)?;
                written += text.len() as u64;
            }
            Ok(Frame::End { rows, bytes }) if bytes == written => {
                return Ok(Received { rows, bytes });
            }
            Ok(Frame::End { bytes, .. }) => {
                return Err(bad(format!(
                    "the agent sent {bytes} bytes by its count, {written} arrived"
                ))
                .into());
            }
            Ok(Frame::Error { kind, message }) => {
                return Err(StreamError::Refused { kind, message });
            }
            Ok(Frame::Start {}) | Err(_) => {
                return Err(bad(format!("unexpected line in the stream: {line:?}")).into());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_have_a_stable_wire_form() {
        let frames = [
            (Frame::Start {}, r#"{"frame":"start"}"#),
            (
                Frame::Data {
                    text: "a,b\n".to_owned(),
                },
                r#"{"frame":"data","text":"a,b\n"}"#,
            ),
            (
                Frame::End { rows: 2, bytes: 4 },
                r#"{"frame":"end","rows":2,"bytes":4}"#,
            ),
        ];
        for (frame, wire) in frames {
            assert_eq!(serde_json::to_string(&frame).unwrap(), wire);
            assert_eq!(serde_json::from_str::<Frame>(wire).unwrap(), frame);
        }
        // An ordinary error answer is no frame: the client tells a refusal from a start.
        assert!(serde_json::from_str::<Frame>(r#"{"status":"error","kind":"busy"}"#).is_err());
    }

    /// The producer's chunks are whole output lines, at most a chunk and a line long, and
    /// together exactly the output.
    #[test]
    fn chunks_are_whole_lines_and_add_up() {
        let (sender, mut receiver) = mpsc::channel(1_000);
        let mut stream = StreamWriter {
            lines: sender,
            buffer: Vec::new(),
            started: true,
            bytes: 0,
        };
        let mut expected = String::new();
        for n in 0..20_000 {
            let line = format!("row {n}, é {}\n", "x".repeat(n % 50));
            write!(stream, "{line}").unwrap();
            expected.push_str(&line);
        }
        stream.finish(20_000).unwrap();
        let mut got = String::new();
        let mut end = None;
        while let Ok(line) = receiver.try_recv() {
            match serde_json::from_str::<Frame>(&line).unwrap() {
                Frame::Data { text } => {
                    assert!(text.ends_with('\n'), "a chunk ends inside a line");
                    assert!(text.len() < CHUNK_BYTES + 100, "{} bytes", text.len());
                    got.push_str(&text);
                }
                Frame::End { rows, bytes } => end = Some((rows, bytes)),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(got, expected);
        assert_eq!(end, Some((20_000, expected.len() as u64)));
    }
}
