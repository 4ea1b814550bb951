//! A small SMTP server for the demo lab (`cargo xtask demo`): enough SMTP for swaks, and a log
//! with one line per connection and per accepted message, so the demo counts what each mail
//! server really saw.
//!
//! ```text
//! smtp_sink --name mx1.example --log FILE --port 25 [--port 587] [--auth-port 587 --auth USER:PASSWORD]
//! ```
//!
//! Listens on `[::]` (IPv4 and IPv6) on every `--port`. On an `--auth-port` it advertises and
//! requires `AUTH PLAIN` with the one configured user. Log lines (appended, flushed at once):
//!
//! ```text
//! ready ports=25,587
//! connect peer=100.64.1.2 local=198.51.100.10:25
//! message peer=100.64.2.2 local=192.0.2.25:587 auth=demo from=<a@b> to=<c@d> bytes=123
//! ```
//!
//! Runs until killed. std only.

use std::{
    fs::{File, OpenOptions},
    io::{BufRead, BufReader, Write},
    net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    process::ExitCode,
    sync::{Arc, Mutex},
    thread,
    time::Duration,
};

struct Config {
    name: String,
    ports: Vec<u16>,
    auth_ports: Vec<u16>,
    auth: Option<(String, String)>,
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("smtp_sink: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let mut config = Config {
        name: "mx.example".to_owned(),
        ports: Vec::new(),
        auth_ports: Vec::new(),
        auth: None,
    };
    let mut log_path = None;
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--name" => config.name = value()?,
            "--log" => log_path = Some(value()?),
            "--port" => config.ports.push(port(&value()?)?),
            "--auth-port" => config.auth_ports.push(port(&value()?)?),
            "--auth" => {
                let text = value()?;
                let (user, password) = text
                    .split_once(':')
                    .ok_or_else(|| format!("--auth {text}: expected USER:PASSWORD"))?;
                config.auth = Some((user.to_owned(), password.to_owned()));
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let log_path = log_path.ok_or("--log FILE is required")?;
    if config.ports.is_empty() {
        return Err("at least one --port is required".to_owned());
    }
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| format!("opening {log_path}: {e}"))?;
    let log = Arc::new(Mutex::new(log));
    let config = Arc::new(config);
    let mut listeners = Vec::new();
    for &port in &config.ports {
        // [::] with IPV6_V6ONLY off (Linux's default) takes IPv4 too, as mapped addresses.
        let bind = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port);
        let listener = TcpListener::bind(bind).map_err(|e| format!("binding {bind}: {e}"))?;
        listeners.push((port, listener));
    }
    let ports: Vec<String> = config.ports.iter().map(u16::to_string).collect();
    write_line(&log, &format!("ready ports={}", ports.join(",")));
    let mut threads = Vec::new();
    for (port, listener) in listeners {
        let (config, log) = (config.clone(), log.clone());
        threads.push(thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (config, log) = (config.clone(), log.clone());
                thread::spawn(move || {
                    let _ = session(stream, port, &config, &log);
                });
            }
        }));
    }
    for thread in threads {
        let _ = thread.join();
    }
    Ok(())
}

fn port(text: &str) -> Result<u16, String> {
    text.parse().map_err(|_| format!("bad port {text}"))
}

fn write_line(log: &Mutex<File>, line: &str) {
    let mut file = log.lock().unwrap_or_else(|e| e.into_inner());
    let _ = writeln!(file, "{line}");
    let _ = file.flush();
}

fn canonical(address: SocketAddr) -> (IpAddr, u16) {
    (address.ip().to_canonical(), address.port())
}

/// One SMTP session: greeting, EHLO/HELO, optional AUTH PLAIN, MAIL, RCPT, DATA, RSET, NOOP, QUIT.
fn session(
    stream: TcpStream,
    port: u16,
    config: &Config,
    log: &Mutex<File>,
) -> std::io::Result<()> {
    let (peer, _) = canonical(stream.peer_addr()?);
    let (local, local_port) = canonical(stream.local_addr()?);
    let local = match local {
        IpAddr::V6(v6) => format!("[{v6}]:{local_port}"),
        IpAddr::V4(v4) => format!("{v4}:{local_port}"),
    };
    write_line(log, &format!("connect peer={peer} local={local}"));
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    let name = &config.name;
    let needs_auth = config.auth_ports.contains(&port) && config.auth.is_some();
    write!(out, "220 {name} ESMTP smtp_sink\r\n")?;
    let mut authenticated: Option<String> = None;
    let mut from: Option<String> = None;
    let mut to: Vec<String> = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let command = line.trim_end_matches(['\r', '\n']);
        let verb = command
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        let argument = command.get(verb.len()..).unwrap_or("").trim();
        match verb.as_str() {
            "EHLO" => {
                write!(out, "250-{name} greets {argument}\r\n")?;
                if needs_auth {
                    write!(out, "250-AUTH PLAIN\r\n")?;
                }
                write!(out, "250-8BITMIME\r\n250 HELP\r\n")?;
            }
            "HELO" => write!(out, "250 {name}\r\n")?,
            "AUTH" if needs_auth => {
                let mut words = argument.split_whitespace();
                if !words
                    .next()
                    .is_some_and(|m| m.eq_ignore_ascii_case("PLAIN"))
                {
                    write!(out, "504 5.5.4 only AUTH PLAIN is supported\r\n")?;
                    continue;
                }
                let response = match words.next() {
                    Some(initial) => initial.to_owned(),
                    None => {
                        write!(out, "334 \r\n")?;
                        let mut answer = String::new();
                        reader.read_line(&mut answer)?;
                        answer.trim().to_owned()
                    }
                };
                match check_plain(&response, config.auth.as_ref()) {
                    Some(user) => {
                        authenticated = Some(user);
                        write!(out, "235 2.7.0 Authentication successful\r\n")?;
                    }
                    None => write!(out, "535 5.7.8 Authentication credentials invalid\r\n")?,
                }
            }
            "MAIL" => {
                if needs_auth && authenticated.is_none() {
                    write!(out, "530 5.7.0 Authentication required\r\n")?;
                } else {
                    from = Some(address(argument));
                    to.clear();
                    write!(out, "250 2.1.0 Ok\r\n")?;
                }
            }
            "RCPT" => {
                if from.is_none() {
                    write!(out, "503 5.5.1 MAIL first\r\n")?;
                } else {
                    to.push(address(argument));
                    write!(out, "250 2.1.5 Ok\r\n")?;
                }
            }
            "DATA" => {
                if to.is_empty() {
                    write!(out, "503 5.5.1 RCPT first\r\n")?;
                    continue;
                }
                write!(out, "354 End data with <CR><LF>.<CR><LF>\r\n")?;
                let mut bytes = 0usize;
                loop {
                    let mut data = String::new();
                    if reader.read_line(&mut data)? == 0 {
                        return Ok(());
                    }
                    if data.trim_end_matches(['\r', '\n']) == "." {
                        break;
                    }
                    bytes += data.len();
                }
                write_line(
                    log,
                    &format!(
                        "message peer={peer} local={local} auth={} from={} to={} bytes={bytes}",
                        authenticated.as_deref().unwrap_or("-"),
                        from.take().unwrap_or_default(),
                        to.join(","),
                    ),
                );
                to.clear();
                write!(out, "250 2.0.0 Ok: queued\r\n")?;
            }
            "RSET" => {
                from = None;
                to.clear();
                write!(out, "250 2.0.0 Ok\r\n")?;
            }
            "NOOP" => write!(out, "250 2.0.0 Ok\r\n")?,
            "QUIT" => {
                write!(out, "221 2.0.0 Bye\r\n")?;
                return Ok(());
            }
            _ => write!(out, "502 5.5.2 Command not recognized\r\n")?,
        }
    }
}

/// `FROM:<a@b> SIZE=1` → `<a@b>`
fn address(argument: &str) -> String {
    let rest = argument.split_once(':').map_or(argument, |(_, rest)| rest);
    rest.split_whitespace().next().unwrap_or("").to_owned()
}

/// Decodes an AUTH PLAIN response (base64 of `authzid\0user\0password`) and returns the user
/// when it matches the configured one.
fn check_plain(response: &str, expected: Option<&(String, String)>) -> Option<String> {
    let (user, password) = expected?;
    let decoded = base64(response)?;
    let mut parts = decoded.split(|&b| b == 0);
    let (_authzid, given_user, given_password) = (parts.next()?, parts.next()?, parts.next()?);
    (given_user == user.as_bytes() && given_password == password.as_bytes()).then(|| user.clone())
}

fn base64(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let (mut buffer, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            _ => return None,
        };
        buffer = (buffer << 6) | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
            buffer &= (1 << bits) - 1;
        }
    }
    Some(out)
}
