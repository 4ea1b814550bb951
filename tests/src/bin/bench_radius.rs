//! The RADIUS half of `cargo xtask bench` (as root): one real agent on a namespace gateway,
//! fed real Accounting-Requests over UDP (built with the `radius` crate, as a BNG sends
//! them). Measures, in one run: Accounting-Starts applied per second (each a durable store
//! write), Interim-Updates per second for sessions the agent already holds (a BNG's storm
//! after a restart), packets with a wrong secret ignored per second (a flood), and the time
//! from sending an Accounting-Start for an exempt customer to its address's exemption in the
//! kernel map, and to its answer (after the store's commit). Writes its figures as JSON.
//!
//! Usage: bench_radius --smtpguard BIN --out FILE [--quick]

use std::{
    net::{Ipv4Addr, UdpSocket},
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use aya::maps::lpm_trie::Key;
use radius::core::{
    code::Code,
    packet::Packet,
    rfc2865, rfc2866,
    rfc2866::{ACCT_STATUS_TYPE_INTERIM_UPDATE, ACCT_STATUS_TYPE_START},
};
use serde::Serialize;
use smtpguard_tests::bench_agent::{BenchAgent, quantile_ms};

const SECRET: &[u8] = b"bench-secret";
/// Requests in flight at once, as a BNG's accounting queue keeps them: fewer than the agent's
/// socket buffer holds (the kernel's default), so that none is lost and waited for.
const WINDOW: usize = 64;

#[derive(Debug, Default, Serialize)]
struct Results {
    sessions: usize,
    /// Accounting-Starts answered per second (each binds a new address: a store commit).
    starts_per_s: f64,
    interims: usize,
    /// Interim-Updates of held sessions answered per second (target 20,000).
    interims_per_s: f64,
    rejects: usize,
    /// Wrong-secret packets counted and ignored per second.
    rejects_per_s: f64,
    latency_samples: usize,
    /// From sending an Accounting-Start to the exemption in the kernel map (target < 10 ms).
    start_to_map_ms_p50: f64,
    start_to_map_ms_p99: f64,
    start_to_map_ms_max: f64,
    /// From sending the same Accounting-Start to its Accounting-Response, which waits for
    /// the store's commit (a disk flush).
    start_to_answer_ms_p50: f64,
    start_to_answer_ms_p99: f64,
    /// The same two while another connection keeps Starts of new sessions in flight, and
    /// how many of those were answered per second meanwhile.
    loaded_starts_per_s: f64,
    loaded_start_to_map_ms_p50: f64,
    loaded_start_to_map_ms_p99: f64,
    loaded_start_to_answer_ms_p50: f64,
    loaded_start_to_answer_ms_p99: f64,
}

fn main() -> Result<()> {
    let mut binary = None;
    let mut out = None;
    let mut quick = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--smtpguard" => binary = args.next().map(PathBuf::from),
            "--out" => out = args.next().map(PathBuf::from),
            "--quick" => quick = true,
            other => {
                anyhow::bail!("unknown argument {other:?}; expected --smtpguard, --out, --quick")
            }
        }
    }
    let binary = binary.context("--smtpguard BIN is required")?;
    let out = out.context("--out FILE is required")?;
    let (sessions, interims, rejects, samples) = if quick {
        (500, 20_000, 20_000, 50)
    } else {
        (2_000, 200_000, 200_000, 200)
    };

    let agent = Agent::start(&binary)?;
    let mut results = Results {
        sessions,
        interims,
        rejects,
        latency_samples: samples,
        ..Results::default()
    };
    let client = UdpSocket::bind("127.0.0.1:0")?;
    client.connect(("127.0.0.1", agent.port))?;
    client.set_read_timeout(Some(Duration::from_secs(5)))?;

    let starts: Vec<Vec<u8>> = (0..sessions)
        .map(|i| accounting(ACCT_STATUS_TYPE_START, &format!("user-{i}"), i, SECRET))
        .collect::<Result<_>>()?;
    results.starts_per_s = answered_per_second(&client, &starts, starts.len())?;
    let storm: Vec<Vec<u8>> = (0..sessions)
        .map(|i| {
            accounting(
                ACCT_STATUS_TYPE_INTERIM_UPDATE,
                &format!("user-{i}"),
                i,
                SECRET,
            )
        })
        .collect::<Result<_>>()?;
    results.interims_per_s = answered_per_second(&client, &storm, interims)?;
    results.rejects_per_s = rejected_per_second(&client, &agent, &storm[0], rejects)?;
    latency(&agent, &client, samples, &mut results)?;

    println!(
        "radius: {:.0} Accounting-Starts/s ({sessions} sessions); {:.0} Interim-Updates/s of held \
         sessions (target 20,000/s); {:.0} wrong-secret packets ignored/s; Start to kernel map: \
         p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (target < 10 ms); to its answer (durable): \
         p50 {:.2} ms, p99 {:.2} ms; under a storm of Starts ({:.0}/s answered): to the map \
         p50 {:.2} ms, p99 {:.2} ms, to the answer p50 {:.2} ms, p99 {:.2} ms",
        results.starts_per_s,
        results.interims_per_s,
        results.rejects_per_s,
        results.start_to_map_ms_p50,
        results.start_to_map_ms_p99,
        results.start_to_map_ms_max,
        results.start_to_answer_ms_p50,
        results.start_to_answer_ms_p99,
        results.loaded_starts_per_s,
        results.loaded_start_to_map_ms_p50,
        results.loaded_start_to_map_ms_p99,
        results.loaded_start_to_answer_ms_p50,
        results.loaded_start_to_answer_ms_p99
    );
    std::fs::write(&out, serde_json::to_string_pretty(&results)?)
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}

/// The address of session `i`: inside the agent's subscriber range, one per session.
fn address(i: usize) -> Ipv4Addr {
    let i = u32::try_from(i).expect("few sessions");
    Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 80, 0, 0)) + i)
}

/// An Accounting-Request of `user`'s session `i` at [`address`]`(i)`, signed with `secret`.
fn accounting(status: u32, user: &str, i: usize, secret: &[u8]) -> Result<Vec<u8>> {
    let mut packet = Packet::new(Code::AccountingRequest, secret);
    rfc2866::add_acct_status_type(&mut packet, status);
    rfc2865::add_user_name(&mut packet, user);
    rfc2866::add_acct_session_id(&mut packet, &format!("session-{i}"));
    rfc2865::add_framed_ip_address(&mut packet, &address(i));
    packet.encode().map_err(|e| anyhow::anyhow!("{e}"))
}

/// Sends `count` packets, cycling through `packets`, with up to [`WINDOW`] unanswered at once;
/// returns the answers per second.
fn answered_per_second(client: &UdpSocket, packets: &[Vec<u8>], count: usize) -> Result<f64> {
    let mut answer = [0u8; 4096];
    let started = Instant::now();
    let (mut sent, mut answered) = (0, 0);
    while answered < count {
        while sent < count && sent - answered < WINDOW {
            client.send(&packets[sent % packets.len()])?;
            sent += 1;
        }
        client
            .recv(&mut answer)
            .with_context(|| format!("waiting for answer {answered} of {count}"))?;
        ensure!(
            answer[0] == Code::AccountingResponse as u8,
            "answer {answered}: code {}",
            answer[0]
        );
        answered += 1;
    }
    Ok(count as f64 / started.elapsed().as_secs_f64())
}

/// Sends `count` copies of `packet` signed with a wrong secret, in bursts each followed by
/// `packet` itself: its answer says the agent has been through the burst (one socket, read in
/// order), so the agent is measured, not the kernel dropping what a full socket buffer cannot
/// take. The agent must have counted every forged packet as ignored and answered none.
fn rejected_per_second(
    client: &UdpSocket,
    agent: &Agent,
    packet: &[u8],
    count: usize,
) -> Result<f64> {
    /// Fewer than the agent's default socket buffer holds.
    const BURST: usize = 128;
    let mut forged = packet.to_vec();
    // Another authenticator: what a client with another secret would have computed.
    forged[4..20].fill(0x5a);
    let before = agent.rejected()?;
    let mut answer = [0u8; 4096];
    let started = Instant::now();
    let mut sent = 0;
    while sent < count {
        let burst = BURST.min(count - sent);
        for _ in 0..burst {
            client.send(&forged)?;
        }
        sent += burst;
        client.send(packet)?;
        client
            .recv(&mut answer)
            .context("waiting for the answer after a burst")?;
        // Only the authentic packet is answered.
        ensure!(
            answer[..20] != forged[..20] && answer[0] == Code::AccountingResponse as u8,
            "an answer to a forged packet"
        );
    }
    let elapsed = started.elapsed();
    let counted = agent.rejected()? - before;
    ensure!(
        counted == count as u64,
        "the agent counted {counted} of {count} wrong-secret packets"
    );
    Ok(count as f64 / elapsed.as_secs_f64())
}

/// Accounting-Starts of an exempt customer at new addresses: from the send to the entry in
/// the kernel's source trie and to the answer, alone and while another connection keeps
/// Starts of new sessions in flight (each a store write).
fn latency(agent: &Agent, client: &UdpSocket, samples: usize, results: &mut Results) -> Result<()> {
    let added = agent.agent.cli(&[
        "exempt",
        "add",
        "--subscriber",
        "exempt-customer",
        "--reason",
        "bench",
    ])?;
    ensure!(added.status.success(), "exempt add --subscriber: {added:?}");
    // Sessions after the throughput ones: addresses no binding holds yet.
    let (map, answer) = start_latencies(agent, client, 100_000, samples)?;
    results.start_to_map_ms_p50 = quantile_ms(&map, 0.5);
    results.start_to_map_ms_p99 = quantile_ms(&map, 0.99);
    results.start_to_map_ms_max = quantile_ms(&map, 1.0);
    results.start_to_answer_ms_p50 = quantile_ms(&answer, 0.5);
    results.start_to_answer_ms_p99 = quantile_ms(&answer, 0.99);

    let stop = AtomicBool::new(false);
    let (measured, storm) = std::thread::scope(|scope| {
        let storm = scope.spawn(|| start_storm(agent.port, 1_000_000, &stop));
        let measured = start_latencies(agent, client, 200_000, samples);
        stop.store(true, Ordering::Relaxed);
        (measured, storm.join())
    });
    let (map, answer) = measured?;
    results.loaded_starts_per_s = storm.map_err(|_| anyhow::anyhow!("the storm panicked"))??;
    results.loaded_start_to_map_ms_p50 = quantile_ms(&map, 0.5);
    results.loaded_start_to_map_ms_p99 = quantile_ms(&map, 0.99);
    results.loaded_start_to_answer_ms_p50 = quantile_ms(&answer, 0.5);
    results.loaded_start_to_answer_ms_p99 = quantile_ms(&answer, 0.99);
    Ok(())
}

/// `samples` Starts of the exempt customer, one at a time, at the addresses of sessions
/// `first..`: the times to the kernel map and to the answer, each sorted.
fn start_latencies(
    agent: &Agent,
    client: &UdpSocket,
    first: usize,
    samples: usize,
) -> Result<(Vec<Duration>, Vec<Duration>)> {
    let trie = agent.agent.sources()?;
    let mut answer = [0u8; 4096];
    let mut times = Vec::with_capacity(samples);
    let mut answered = Vec::with_capacity(samples);
    for i in first..first + samples {
        let start = accounting(ACCT_STATUS_TYPE_START, "exempt-customer", i, SECRET)?;
        let key = Key::new(32, address(i).octets());
        let sent = Instant::now();
        client.send(&start)?;
        let deadline = sent + Duration::from_secs(5);
        while !trie.get(&key, 0).is_ok_and(|policy| policy.is_exempt()) {
            ensure!(
                Instant::now() < deadline,
                "{} never became exempt",
                address(i)
            );
            std::hint::spin_loop();
        }
        times.push(sent.elapsed());
        client.recv(&mut answer)?;
        answered.push(sent.elapsed());
    }
    times.sort();
    answered.sort();
    Ok((times, answered))
}

/// Starts of new sessions (`first..`, each a store write), [`WINDOW`] in flight, from a
/// socket of their own until `stop`; returns the answers per second.
fn start_storm(port: u16, first: usize, stop: &AtomicBool) -> Result<f64> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    socket.connect(("127.0.0.1", port))?;
    socket.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut answer = [0u8; 4096];
    let started = Instant::now();
    let (mut sent, mut answered) = (0, 0);
    while !stop.load(Ordering::Relaxed) {
        while sent - answered < WINDOW {
            let i = first + sent;
            socket.send(&accounting(
                ACCT_STATUS_TYPE_START,
                &format!("user-{i}"),
                i,
                SECRET,
            )?)?;
            sent += 1;
        }
        socket
            .recv(&mut answer)
            .with_context(|| format!("waiting for storm answer {answered}"))?;
        answered += 1;
    }
    Ok(answered as f64 / started.elapsed().as_secs_f64())
}

/// The agent with a RADIUS listener for 127.0.0.1, and its ports.
struct Agent {
    agent: BenchAgent,
    port: u16,
    metrics: u16,
}

/// A port the kernel says is free now.
fn free_port(udp: bool) -> Result<u16> {
    Ok(if udp {
        UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port()
    } else {
        std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port()
    })
}

impl Agent {
    fn start(binary: &Path) -> Result<Self> {
        let (port, metrics) = (free_port(true)?, free_port(false)?);
        let agent = BenchAgent::start(
            binary,
            "bench-radius",
            &format!("127.0.0.1:{metrics}"),
            |dir| {
                let secret = dir.join("bng.secret");
                std::fs::write(&secret, SECRET)?;
                Ok(format!(
                    r#"[[subscribers]]
prefix = "100.64.0.0/10"
[radius]
listen = "127.0.0.1:{port}"
clients = [{{ address = "127.0.0.1", secret_file = "{}" }}]
"#,
                    secret.display()
                ))
            },
        )?;
        Ok(Self {
            agent,
            port,
            metrics,
        })
    }

    /// The wrong-secret packets the agent has counted, from its metrics endpoint.
    fn rejected(&self) -> Result<u64> {
        use std::io::{Read as _, Write as _};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.metrics))?;
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
        let mut text = String::new();
        stream.read_to_string(&mut text)?;
        let sample = "smtpguard_radius_packets_total{result=\"bad-authenticator\"} ";
        text.lines()
            .find_map(|line| line.strip_prefix(sample))
            .and_then(|value| value.trim().parse().ok())
            .context("the agent's metrics have no bad-authenticator count")
    }
}
