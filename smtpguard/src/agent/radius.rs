//! The RADIUS accounting listener: a thread of its own on a UDP socket. A datagram is checked
//! outside the agent's lock (client, authenticator, attributes), so a flood of bad ones never
//! holds up the CLI. The authentic ones that arrived together take the lock once: their
//! changes reach the kernel at once and the store in one commit, and each is answered only
//! once that commit is durable (RFC 2866 section 2: a client sends again what was not
//! answered).

use std::{
    io::ErrorKind,
    net::{SocketAddr, UdpSocket},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use anyhow::Context as _;
use tracing::{debug, info, warn};

use super::{lock, state::AgentState};
use crate::{
    config::RadiusConfig,
    identity::radius::{self, Accounting, Client, IdentityAttribute, MAX_PACKET_BYTES, Rejected},
};

/// What became of the accounting datagrams, for `smtpguard_radius_packets_total{result}`.
#[derive(Debug, Default)]
pub struct RadiusCounters {
    /// Authentic and applied (and answered).
    accepted: AtomicU64,
    /// Authentic, but the store failed: not answered, so the client sends it again.
    failed: AtomicU64,
    rejected: [AtomicU64; Rejected::ALL.len()],
}

impl RadiusCounters {
    fn reject(&self, reason: Rejected) {
        let index = Rejected::ALL
            .iter()
            .position(|r| *r == reason)
            .expect("every reason is in ALL");
        self.rejected[index].fetch_add(1, Ordering::Relaxed);
    }

    /// (result, count) for every result, the rejections by reason.
    pub fn rows(&self) -> Vec<(&'static str, u64)> {
        let mut rows = vec![
            ("accepted", self.accepted.load(Ordering::Relaxed)),
            ("store-failed", self.failed.load(Ordering::Relaxed)),
        ];
        rows.extend(
            Rejected::ALL
                .iter()
                .zip(&self.rejected)
                .map(|(reason, count)| (reason.name(), count.load(Ordering::Relaxed))),
        );
        rows
    }
}

/// Reads the clients' secrets, binds the socket and starts the listener thread. Fails (and
/// the agent with it) when a secret cannot be read or the address cannot be bound.
pub(super) fn start(
    config: &RadiusConfig,
    state: Arc<Mutex<AgentState>>,
    counters: Arc<RadiusCounters>,
) -> anyhow::Result<()> {
    let clients = config
        .clients
        .iter()
        .map(|client| {
            let text = std::fs::read_to_string(&client.secret_file).with_context(|| {
                format!(
                    "reading the RADIUS secret of client {} from {}",
                    client.prefix,
                    client.secret_file.display()
                )
            })?;
            let secret = text.lines().next().unwrap_or("").as_bytes().to_vec();
            anyhow::ensure!(
                !secret.is_empty(),
                "{}: the RADIUS secret of client {} is empty; expected the shared secret on \
                 its first line",
                client.secret_file.display(),
                client.prefix
            );
            Ok(Client {
                prefix: client.prefix,
                secret,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let socket = UdpSocket::bind(config.listen)
        .with_context(|| format!("binding the RADIUS accounting listener {}", config.listen))?;
    info!(listen = %config.listen, clients = clients.len(), "RADIUS accounting listener ready");
    let identity = config.identity;
    std::thread::Builder::new()
        .name("radius".to_owned())
        .spawn(move || listen(&socket, &clients, identity, &state, &counters))
        .context("starting the RADIUS listener thread")?;
    Ok(())
}

/// The most datagrams read before their changes are committed: bounds the wait of the first
/// of them for its answer under a flood.
const MAX_BATCH: usize = 256;

fn listen(
    socket: &UdpSocket,
    clients: &[Client],
    identity: IdentityAttribute,
    state: &Mutex<AgentState>,
    counters: &RadiusCounters,
) {
    // One more than the largest packet: a datagram that fills it is too long.
    let mut buffer = vec![0u8; MAX_PACKET_BYTES + 1];
    let mut batch = Vec::new();
    loop {
        // Waits for a datagram, then takes what else has arrived meanwhile without waiting:
        // the changes of all of them take one commit.
        for read in 0..MAX_BATCH {
            if read <= 1
                && let Err(error) = socket.set_nonblocking(read == 1)
            {
                warn!(%error, "switching the RADIUS socket's blocking mode failed");
            }
            let (length, peer) = match socket.recv_from(&mut buffer) {
                Ok(received) => received,
                Err(error) if error.kind() == ErrorKind::WouldBlock => break,
                Err(error) => {
                    warn!(%error, "receiving RADIUS accounting failed");
                    break;
                }
            };
            if let Some(accounting) =
                authentic(&buffer[..length], peer, clients, identity, counters)
            {
                batch.push((peer, accounting));
            }
        }
        if batch.is_empty() {
            continue;
        }
        let applied = lock(state).apply_changes(batch.iter().map(|(_, a)| &a.change));
        if let Err(error) = applied {
            counters
                .failed
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            warn!(%error, packets = batch.len(), "RADIUS session changes could not be stored; not answered");
            batch.clear();
            continue;
        }
        counters
            .accepted
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        for (peer, accounting) in batch.drain(..) {
            if let Err(error) = socket.send_to(&accounting.response(), peer) {
                warn!(%peer, %error, "answering RADIUS accounting failed");
            }
        }
    }
}

/// The accounting in a datagram from `peer`, if it is an authentic one; what is not is
/// counted by reason.
fn authentic(
    datagram: &[u8],
    peer: SocketAddr,
    clients: &[Client],
    identity: IdentityAttribute,
    counters: &RadiusCounters,
) -> Option<Accounting> {
    let Some(client) = radius::client_of(clients, peer.ip()) else {
        counters.reject(Rejected::UnknownClient);
        debug!(%peer, "RADIUS packet from an unknown client ignored");
        return None;
    };
    radius::decode(datagram, peer.ip(), &client.secret, identity)
        .inspect_err(|reason| {
            counters.reject(*reason);
            debug!(%peer, %reason, "RADIUS packet ignored");
        })
        .ok()
}
