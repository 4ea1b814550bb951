//! A network-namespace lab: a subscriber, a gateway and an internet host, wired with veth
//! pairs and routed through the gateway, for tests that need a real kernel path.
//!
//! Every namespace is deleted when its guard drops, including on panic, and names carry the
//! process id so parallel tests and runs never collide.

use std::{
    fs::File,
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    os::fd::{AsFd as _, OwnedFd},
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use nix::sched::{CloneFlags, setns};
use smtpguard::dataplane::{Attach, Dataplane};

use crate::frames::{FrameSpec, TCP_ACK, TCP_SYN};

static NEXT_ID: AtomicUsize = AtomicUsize::new(0);

/// Runs `ip` with the arguments and fails with its stderr if it fails.
pub fn ip(args: &[&str]) -> anyhow::Result<()> {
    ip_output(args).map(drop)
}

/// Runs `ip` with the arguments and returns its stdout; fails with its stderr if it fails.
fn ip_output(args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (iproute2)")?;
    if !output.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A named network namespace, deleted on drop.
pub struct Netns {
    name: String,
}

impl Netns {
    pub fn new(role: &str) -> anyhow::Result<Self> {
        let name = format!(
            "sg{}-{}-{role}",
            std::process::id(),
            NEXT_ID.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name])?;
        let netns = Self { name };
        netns.ip(&["link", "set", "lo", "up"])?;
        Ok(netns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n <ns> ...`
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<()> {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// `ip -n <ns> ...`, returning its stdout.
    pub fn ip_output(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        ip_output(&full)
    }

    /// The MAC address of `interface`.
    pub fn mac(&self, interface: &str) -> anyhow::Result<[u8; 6]> {
        let link = self.ip_output(&["-o", "link", "show", "dev", interface])?;
        let text = link
            .split_whitespace()
            .skip_while(|word| *word != "link/ether")
            .nth(1)
            .with_context(|| format!("no link/ether address in {link:?}"))?;
        let mut mac = [0u8; 6];
        for (byte, part) in mac.iter_mut().zip(text.split(':')) {
            *byte = u8::from_str_radix(part, 16).with_context(|| format!("MAC {text:?}"))?;
        }
        Ok(mac)
    }

    /// The interface index of `interface` in this namespace.
    pub fn ifindex(&self, interface: &str) -> anyhow::Result<u32> {
        self.run(|| nix::net::if_::if_nametoindex(interface))
            .with_context(|| format!("no interface {interface} in {}", self.name))
    }

    /// Packet and drop counts of `interface` (`ip -s link`).
    pub fn link_stats(&self, interface: &str) -> anyhow::Result<LinkStats> {
        let json = self.ip_output(&["-s", "-j", "link", "show", "dev", interface])?;
        let value: serde_json::Value =
            serde_json::from_str(&json).with_context(|| format!("ip -s -j link: {json}"))?;
        let stats = &value[0]["stats64"];
        let count = |direction: &str, field: &str| -> anyhow::Result<u64> {
            stats[direction][field]
                .as_u64()
                .with_context(|| format!("no {direction}.{field} in {json}"))
        };
        Ok(LinkStats {
            rx_packets: count("rx", "packets")?,
            rx_dropped: count("rx", "dropped")?,
            tx_packets: count("tx", "packets")?,
            tx_dropped: count("tx", "dropped")?,
        })
    }

    /// Waits until `interface` is operationally up (the kernel reports a veth's carrier only
    /// when its link watcher next runs, up to a second after `link set up`) and IPv6 is usable
    /// on it: addrconf has configured a link-local address and it is no longer tentative.
    /// Until then IPv4 already works but IPv6 neighbour discovery on the link fails, so the
    /// first IPv6 connection of a test would stall for a SYN retransmission.
    fn wait_until_ready(&self, interface: &str, deadline: Instant) -> anyhow::Result<()> {
        loop {
            let link = self.ip_output(&["-o", "link", "show", "dev", interface])?;
            let link_local = self.ip_output(&[
                "-o", "-6", "addr", "show", "dev", interface, "scope", "link",
            ])?;
            if link.contains(" state UP ")
                && link_local.contains("fe80:")
                && !link_local.contains("tentative")
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{interface} in {} is not ready (operationally up with a usable IPv6 \
                     link-local address): {} {}",
                    self.name,
                    link.trim(),
                    link_local.trim()
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn sysctl(&self, key: &str, value: &str) -> anyhow::Result<()> {
        let status = Command::new("ip")
            .args(["netns", "exec", &self.name, "sysctl", "-qw"])
            .arg(format!("{key}={value}"))
            .status()
            .context("running sysctl")?;
        if !status.success() {
            bail!("sysctl {key}={value} in {} failed", self.name);
        }
        Ok(())
    }

    /// Runs `f` on a thread that has entered this namespace; sockets and netlink requests
    /// made there belong to it. The caller's thread stays where it was.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        thread::scope(|scope| {
            scope
                .spawn(|| {
                    self.enter_current_thread();
                    f()
                })
                .join()
                .expect("namespace thread panicked")
        })
    }

    /// Like `run`, but detached: the thread lives on after the call returns.
    fn spawn<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
        let path = self.path();
        thread::spawn(move || {
            enter(&path);
            f()
        })
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    fn enter_current_thread(&self) {
        enter(&self.path());
    }
}

fn enter(path: &str) {
    let file = File::open(path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
    setns(&file, CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| panic!("entering {path}: {e}"));
}

/// An interface's counters, from `ip -s link`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    pub rx_packets: u64,
    pub rx_dropped: u64,
    pub tx_packets: u64,
    pub tx_dropped: u64,
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(error) = ip(&["netns", "del", &self.name]) {
            eprintln!("cleanup: {error}");
        }
    }
}

/// Addresses of the lab. Subscribers live in the CGNAT range 100.64.0.0/10 and in
/// 2001:db8:1000::/36; the internet side is documentation space.
pub mod addr {
    pub const SUBSCRIBER_V4: &str = "100.64.0.2";
    pub const GATEWAY_SUB_V4: &str = "100.64.0.1";
    pub const MX_V4: &str = "198.51.100.7";
    pub const GATEWAY_INET_V4: &str = "198.51.100.1";
    pub const RELAY_V4: &str = "192.0.2.25";
    pub const SUBSCRIBER_V6: &str = "2001:db8:1000::2";
    pub const GATEWAY_SUB_V6: &str = "2001:db8:1000::1";
    pub const MX_V6: &str = "2001:db8:ffff::7";
    pub const GATEWAY_INET_V6: &str = "2001:db8:ffff::1";
    pub const RELAY_V6: &str = "2001:db8:25::25";
    /// Inside the VXLAN tunnel of [`GatewayLab::add_vxlan_tunnel`](super::GatewayLab::add_vxlan_tunnel).
    pub const TUNNELED_SUBSCRIBER_V4: &str = "100.65.0.2";
    pub const GATEWAY_TUNNEL_V4: &str = "100.65.0.1";
    /// Behind a VPN server's TUN device on the gateway ([`Tun`](super::Tun)).
    pub const VPN_SUBSCRIBER_V4: &str = "100.66.0.2";
    pub const VPN_SUBSCRIBER_V6: &str = "2001:db8:1066::2";
}

/// A policy for the lab: port 25 enforced for both subscriber ranges (IPv4 explicitly, IPv6
/// by default), the relay's two addresses allowlisted.
pub const LAB_CONFIG: &str = r#"
[enforcement]
ports = [25]

[[subscribers]]
prefix = "100.64.0.0/10"
mode = "enforce"

[[subscribers]]
prefix = "2001:db8:1000::/36"

[[relays]]
prefix = "192.0.2.25/32"

[[relays]]
prefix = "2001:db8:25::25/128"

[capacity]
hosts = 4096
"#;

/// subscriber (sub0) <-> (sub0) gateway (inet0) <-> (inet0) internet
///
/// The gateway's `SUBSCRIBER_INTERFACE` is where smtpguard attaches.
pub struct GatewayLab {
    pub subscriber: Netns,
    pub gateway: Netns,
    pub internet: Netns,
    /// The pass-all XDP program on the subscriber's end of the subscriber link (see
    /// [`create_subscriber_link`](Self::create_subscriber_link)) and its link, replaced when
    /// the link is created again.
    subscriber_xdp: Mutex<Option<(OwnedFd, OwnedFd)>>,
}

pub const SUBSCRIBER_INTERFACE: &str = "sub0";
/// The gateway's interface toward the internet host (whose end is its `eth0`).
pub const INTERNET_INTERFACE: &str = "inet0";
/// The gateway's end of the VXLAN tunnel of [`GatewayLab::add_vxlan_tunnel`].
pub const VXLAN_INTERFACE: &str = "vx0";

impl GatewayLab {
    pub fn new() -> anyhow::Result<Self> {
        use addr::*;
        let lab = Self {
            subscriber: Netns::new("sub")?,
            gateway: Netns::new("gw")?,
            internet: Netns::new("inet")?,
            subscriber_xdp: Mutex::new(None),
        };
        // No duplicate address detection, for the link-local addresses too (the global ones
        // are added with nodad): a tentative link-local address holds back the gateway's
        // neighbour solicitations for about a second. Set before the veths exist, so they
        // inherit it.
        for netns in [&lab.subscriber, &lab.gateway, &lab.internet] {
            netns.sysctl("net.ipv6.conf.all.accept_dad", "0")?;
            netns.sysctl("net.ipv6.conf.default.accept_dad", "0")?;
        }
        add_veth(&lab.gateway, INTERNET_INTERFACE, &lab.internet)?;
        for (netns, interface, addresses) in [
            (
                &lab.gateway,
                INTERNET_INTERFACE,
                [
                    format!("{GATEWAY_INET_V4}/24"),
                    format!("{GATEWAY_INET_V6}/64"),
                ],
            ),
            (
                &lab.internet,
                "eth0",
                [format!("{MX_V4}/24"), format!("{MX_V6}/64")],
            ),
        ] {
            add_addresses(netns, interface, &addresses)?;
        }
        // The relay is a second address of the internet host, routed through the gateway.
        lab.internet
            .ip(&["addr", "add", &format!("{RELAY_V4}/32"), "dev", "eth0"])?;
        lab.internet.ip(&[
            "addr",
            "add",
            &format!("{RELAY_V6}/128"),
            "dev",
            "eth0",
            "nodad",
        ])?;
        lab.gateway
            .ip(&["route", "add", &format!("{RELAY_V4}/32"), "via", MX_V4])?;
        lab.gateway.ip(&[
            "-6",
            "route",
            "add",
            &format!("{RELAY_V6}/128"),
            "via",
            MX_V6,
        ])?;
        lab.internet
            .ip(&["route", "add", "default", "via", GATEWAY_INET_V4])?;
        lab.internet
            .ip(&["-6", "route", "add", "default", "via", GATEWAY_INET_V6])?;
        lab.gateway.sysctl("net.ipv4.ip_forward", "1")?;
        lab.gateway.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        let deadline = Instant::now() + Duration::from_secs(5);
        for (netns, interface) in [(&lab.gateway, INTERNET_INTERFACE), (&lab.internet, "eth0")] {
            netns.wait_until_ready(interface, deadline)?;
        }
        lab.create_subscriber_link()?;
        Ok(lab)
    }

    /// Creates the subscriber link: the gateway's `SUBSCRIBER_INTERFACE` and the subscriber's
    /// eth0, addressed and routed, and waits until both are ready. A link created again after
    /// [`delete_subscriber_link`](Self::delete_subscriber_link) has the same name and a new
    /// ifindex.
    ///
    /// The subscriber's eth0 runs a pass-all XDP program, so that what the gateway's XDP
    /// program sends back (`XDP_TX`) reaches the subscriber as a NIC's transmit would: veth
    /// hands an XDP_TX frame to its peer's receive ring only when the peer has NAPI (else the
    /// gateway counts `xdp_tx_errors`), and schedules the peer's NAPI to take it from there
    /// only when the peer has an XDP program (`veth_xdp_flush`): with GRO alone the frames
    /// are counted as sent (`xdp_tx`) and wait in the ring until other traffic comes.
    pub fn create_subscriber_link(&self) -> anyhow::Result<()> {
        use addr::*;
        add_veth(&self.gateway, SUBSCRIBER_INTERFACE, &self.subscriber)?;
        let program = crate::bpf::load_constant("lab_pass", crate::bpf::XDP_PASS)?;
        let link = self.subscriber.run(|| -> anyhow::Result<OwnedFd> {
            let ifindex = nix::net::if_::if_nametoindex("eth0")
                .context("the subscriber's end of the subscriber link")?;
            crate::bpf::attach_xdp(program.as_fd(), ifindex)
        })?;
        *self
            .subscriber_xdp
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some((program, link));
        add_addresses(
            &self.subscriber,
            "eth0",
            &[format!("{SUBSCRIBER_V4}/24"), format!("{SUBSCRIBER_V6}/64")],
        )?;
        add_addresses(
            &self.gateway,
            SUBSCRIBER_INTERFACE,
            &[
                format!("{GATEWAY_SUB_V4}/24"),
                format!("{GATEWAY_SUB_V6}/64"),
            ],
        )?;
        self.subscriber
            .ip(&["route", "add", "default", "via", GATEWAY_SUB_V4])?;
        self.subscriber
            .ip(&["-6", "route", "add", "default", "via", GATEWAY_SUB_V6])?;
        let deadline = Instant::now() + Duration::from_secs(5);
        self.subscriber.wait_until_ready("eth0", deadline)?;
        self.gateway
            .wait_until_ready(SUBSCRIBER_INTERFACE, deadline)
    }

    /// A VXLAN tunnel (VNI 42, UDP 4789) over the subscriber link whose far end is the
    /// gateway, as on a gateway that terminates subscribers' overlay: the subscriber's `vx0`
    /// and the gateway's [`VXLAN_INTERFACE`], addressed in 100.65.0.0/24, and the subscriber
    /// routes the MX (IPv4) through it. The gateway receives the MX-bound packets as UDP on
    /// `SUBSCRIBER_INTERFACE`, decapsulates them and routes the inner packet from `vx0`.
    pub fn add_vxlan_tunnel(&self) -> anyhow::Result<()> {
        use addr::*;
        for (netns, local, remote, inner) in [
            (
                &self.subscriber,
                SUBSCRIBER_V4,
                GATEWAY_SUB_V4,
                TUNNELED_SUBSCRIBER_V4,
            ),
            (
                &self.gateway,
                GATEWAY_SUB_V4,
                SUBSCRIBER_V4,
                GATEWAY_TUNNEL_V4,
            ),
        ] {
            netns.ip(&[
                "link",
                "add",
                VXLAN_INTERFACE,
                "type",
                "vxlan",
                "id",
                "42",
                "local",
                local,
                "remote",
                remote,
                "dstport",
                "4789",
            ])?;
            add_addresses(netns, VXLAN_INTERFACE, &[format!("{inner}/24")])?;
        }
        self.subscriber.ip(&[
            "route",
            "add",
            &format!("{MX_V4}/32"),
            "via",
            GATEWAY_TUNNEL_V4,
            "dev",
            VXLAN_INTERFACE,
        ])
    }

    /// Deletes the subscriber link (both ends go, with their addresses and routes).
    pub fn delete_subscriber_link(&self) -> anyhow::Result<()> {
        self.gateway.ip(&["link", "del", SUBSCRIBER_INTERFACE])
    }

    /// Puts `dataplane`'s entry point on the gateway's subscriber-facing interface, for as
    /// long as `dataplane` lives. (The interface name is resolved in the calling thread's
    /// namespace, hence the gateway thread.)
    pub fn attach(&self, dataplane: &mut Dataplane, attach: Attach) -> anyhow::Result<()> {
        self.gateway
            .run(|| match attach {
                Attach::Xdp(mode) => dataplane.attach_xdp(SUBSCRIBER_INTERFACE, mode),
                Attach::Tc | Attach::TcL3 => dataplane.attach_tc(SUBSCRIBER_INTERFACE).map(drop),
            })
            .with_context(|| {
                format!(
                    "attaching {attach:?} to {SUBSCRIBER_INTERFACE} in {}",
                    self.gateway.name()
                )
            })
    }

    /// Makes the gateway forward packets to ANY destination, whatever their source, and the
    /// internet host take every one of them as its own: the gateway's default routes lead to
    /// the internet host (fixed neighbour entries: no resolution to wait for or lose), reverse
    /// path filtering is off, and the internet host has local routes for all of IPv4 and IPv6
    /// (AnyIP) and accepts IPv6 segment routing headers (which a forwarded packet may carry).
    ///
    /// The internet host's own answers (RSTs, ICMP errors) go to addresses it now calls its own,
    /// so they loop back over `lo` and never reach the gateway.
    pub fn forward_everything(&self) -> anyhow::Result<()> {
        use addr::*;
        let internet_mac = mac_text(self.internet.mac("eth0")?);
        for (family, next_hop) in [("-4", MX_V4), ("-6", MX_V6)] {
            self.gateway.ip(&[
                family,
                "neigh",
                "replace",
                next_hop,
                "lladdr",
                &internet_mac,
                "nud",
                "permanent",
                "dev",
                INTERNET_INTERFACE,
            ])?;
            self.gateway
                .ip(&[family, "route", "add", "default", "via", next_hop])?;
        }
        for key in ["all", "default", SUBSCRIBER_INTERFACE, INTERNET_INTERFACE] {
            self.gateway
                .sysctl(&format!("net.ipv4.conf.{key}.rp_filter"), "0")?;
        }
        self.internet
            .ip(&["route", "add", "local", "0.0.0.0/0", "dev", "lo"])?;
        self.internet
            .ip(&["-6", "route", "add", "local", "::/0", "dev", "lo"])?;
        for key in ["all", "default", "eth0"] {
            // Every source is one of its own addresses now: without accept_local it would
            // call them all martians.
            self.internet
                .sysctl(&format!("net.ipv4.conf.{key}.accept_local"), "1")?;
            self.internet
                .sysctl(&format!("net.ipv4.conf.{key}.rp_filter"), "0")?;
            self.internet
                .sysctl(&format!("net.ipv6.conf.{key}.seg6_enabled"), "1")?;
        }
        Ok(())
    }
}

/// `aa:bb:cc:dd:ee:ff`
fn mac_text(mac: [u8; 6]) -> String {
    mac.map(|byte| format!("{byte:02x}")).join(":")
}

/// A veth pair: `interface` in `netns`, its peer `eth0` in `peer`.
fn add_veth(netns: &Netns, interface: &str, peer: &Netns) -> anyhow::Result<()> {
    netns.ip(&[
        "link",
        "add",
        interface,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        peer.name(),
    ])
}

/// A TUN device (IFF_TUN | IFF_NO_PI) in a namespace, as a VPN server holds one: each
/// packet written to it the kernel receives from the device (a VPN client's decapsulated
/// traffic), each packet the kernel routes to it can be read. The device goes when this is
/// dropped.
pub struct Tun {
    file: File,
    pub name: String,
}

impl Tun {
    /// Creates TUN device `name` in `netns`, sets it up and routes the VPN subscribers'
    /// addresses ([`addr::VPN_SUBSCRIBER_V4`], [`addr::VPN_SUBSCRIBER_V6`]) to it.
    pub fn open(netns: &Netns, name: &str) -> anyhow::Result<Self> {
        let file = netns.run(|| create_tun(name))?;
        let tun = Self {
            file,
            name: name.to_owned(),
        };
        netns.ip(&["link", "set", name, "up"])?;
        netns.ip(&["route", "add", "100.66.0.0/24", "dev", name])?;
        netns.ip(&["-6", "route", "add", "2001:db8:1066::/64", "dev", name])?;
        Ok(tun)
    }

    /// Writes `packet` (an IP packet) into the device, then reads what the kernel sends back
    /// through it until a packet satisfies `answer` or `timeout` passes; returns that packet.
    /// Packets already waiting are discarded first.
    pub fn exchange(
        &self,
        packet: &[u8],
        answer: impl Fn(&[u8]) -> bool,
        timeout: Duration,
    ) -> anyhow::Result<Option<Vec<u8>>> {
        let mut buffer = vec![0u8; 65_536];
        while self.read_within(&mut buffer, Duration::ZERO)?.is_some() {}
        (&self.file)
            .write_all(packet)
            .with_context(|| format!("writing a packet into {}", self.name))?;
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read_within(&mut buffer, left)? {
                Some(len) if answer(&buffer[..len]) => return Ok(Some(buffer[..len].to_vec())),
                Some(_) => {}
                None if left.is_zero() => return Ok(None),
                None => {}
            }
        }
    }

    /// Writes a TCP SYN from `src` to `dst:port` into the device, from a source port of its
    /// own (so no earlier half-open connection answers), and says whether `dst` answered it
    /// with a SYN-ACK within `timeout`: a listener there took the SYN.
    pub fn syn_answered(
        &self,
        src: IpAddr,
        dst: IpAddr,
        port: u16,
        timeout: Duration,
    ) -> anyhow::Result<bool> {
        static NEXT_PORT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(41_000);
        let src_port = NEXT_PORT.fetch_add(1, Ordering::Relaxed);
        let syn = FrameSpec::tcp(src, dst, port, TCP_SYN)
            .src_port(src_port)
            .ip_packet();
        let answer = self.exchange(
            &syn,
            |packet| is_syn_ack(packet, dst, port, src_port),
            timeout,
        )?;
        Ok(answer.is_some())
    }

    /// One packet, if one arrives within `timeout`.
    fn read_within(&self, buffer: &mut [u8], timeout: Duration) -> anyhow::Result<Option<usize>> {
        use std::os::fd::AsRawFd as _;
        let mut poll = libc::pollfd {
            fd: self.file.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let ready = unsafe { libc::poll(&mut poll, 1, timeout.as_millis() as libc::c_int) };
        if ready < 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("polling {}", self.name));
        }
        if ready == 0 {
            return Ok(None);
        }
        let len = (&self.file)
            .read(buffer)
            .with_context(|| format!("reading from {}", self.name))?;
        Ok(Some(len))
    }
}

/// Whether `packet` (IPv4 or IPv6) is a TCP segment from `from:port` to `to_port` with SYN
/// and ACK set.
fn is_syn_ack(packet: &[u8], from: IpAddr, port: u16, to_port: u16) -> bool {
    let (source, protocol, tcp) = match packet.first().map(|b| b >> 4) {
        Some(4) if packet.len() >= 20 => {
            let header = usize::from(packet[0] & 0x0f) * 4;
            let source: [u8; 4] = packet[12..16].try_into().unwrap_or_default();
            (IpAddr::from(source), packet[9], packet.get(header..))
        }
        Some(6) if packet.len() >= 40 => {
            let source: [u8; 16] = packet[8..24].try_into().unwrap_or_default();
            (IpAddr::from(source), packet[6], packet.get(40..))
        }
        _ => return false,
    };
    let Some(tcp) = tcp.filter(|tcp| protocol == 6 && tcp.len() >= 20) else {
        return false;
    };
    source == from
        && u16::from_be_bytes([tcp[0], tcp[1]]) == port
        && u16::from_be_bytes([tcp[2], tcp[3]]) == to_port
        && tcp[13] & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK
}

/// Opens /dev/net/tun and attaches it to a new TUN device `name` of the calling thread's
/// namespace.
fn create_tun(name: &str) -> anyhow::Result<File> {
    use std::os::fd::AsRawFd as _;
    let file = File::options()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .context("opening /dev/net/tun")?;
    // SAFETY: all-zero bytes are a valid ifreq.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= request.ifr_name.len() {
        bail!("TUN device name {name:?} is longer than 15 bytes");
    }
    for (slot, byte) in request.ifr_name.iter_mut().zip(name.bytes()) {
        *slot = byte as libc::c_char;
    }
    request.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes the ifreq, which outlives the call.
    let result = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut request) };
    if result < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("creating TUN device {name} (TUNSETIFF)"));
    }
    Ok(file)
}

/// Adds `addresses` to `interface` and sets it up.
fn add_addresses(netns: &Netns, interface: &str, addresses: &[String]) -> anyhow::Result<()> {
    for address in addresses {
        // nodad: IPv6 addresses are usable at once instead of after duplicate detection.
        let mut args = vec!["addr", "add", address.as_str(), "dev", interface];
        if address.contains(':') {
            args.push("nodad");
        }
        netns.ip(&args)?;
    }
    netns.ip(&["link", "set", interface, "up"])
}

/// The banner every lab server sends, so a client sees data cross the gateway both ways.
pub const BANNER: &[u8] = b"220 lab ESMTP\r\n";

/// TCP servers in a namespace that greet every client with [`BANNER`]; stopped on drop.
pub struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    accepted: Arc<AtomicUsize>,
}

impl Servers {
    /// Listens on every address of the namespace (IPv4 and IPv6) on each port.
    pub fn start(netns: &Netns, ports: &[u16]) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let mut threads = Vec::new();
        for &port in ports {
            for any in ["0.0.0.0", "[::]"] {
                let bind: SocketAddr = format!("{any}:{port}").parse()?;
                let (ready_tx, ready_rx) = std::sync::mpsc::channel();
                let stop = stop.clone();
                let accepted = accepted.clone();
                threads.push(netns.spawn(move || {
                    let listener = match bind_only(bind) {
                        Ok(listener) => listener,
                        Err(error) => {
                            let _ = ready_tx.send(Err(error));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    serve(listener, &stop, &accepted);
                }));
                ready_rx.recv().context("server thread died")??;
            }
        }
        Ok(Self {
            stop,
            threads,
            accepted,
        })
    }

    /// Connections accepted so far, over all ports and addresses.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

fn bind_only(address: SocketAddr) -> anyhow::Result<TcpListener> {
    use nix::sys::socket::{
        AddressFamily, Backlog, SockFlag, SockType, SockaddrStorage, bind, listen, setsockopt,
        socket, sockopt,
    };
    let family = if address.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let socket = socket(family, SockType::Stream, SockFlag::SOCK_NONBLOCK, None)?;
    setsockopt(&socket, sockopt::ReuseAddr, &true)?;
    if address.is_ipv6() {
        // Separate IPv4 and IPv6 listeners, so each family is served by its own socket.
        setsockopt(&socket, sockopt::Ipv6V6Only, &true)?;
    }
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&socket),
        &SockaddrStorage::from(address),
    )
    .with_context(|| format!("binding {address}"))?;
    listen(&socket, Backlog::new(64)?)?;
    Ok(TcpListener::from(socket))
}

fn serve(listener: TcpListener, stop: &AtomicBool, accepted: &AtomicUsize) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((mut stream, _)) => {
                accepted.fetch_add(1, Ordering::SeqCst);
                let _ = stream.set_nonblocking(false);
                let _ = stream.write_all(BANNER);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(10));
            }
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// The outcome of one client connection attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum Connect {
    /// Connected and received the server's banner.
    Greeted,
    /// No answer within the timeout (the SYN was dropped on the way).
    TimedOut,
    /// Anything else, with the error.
    Failed(String),
}

/// Connects from inside `netns` to `dst:port` and waits for the banner.
pub fn connect(netns: &Netns, dst: IpAddr, port: u16, timeout: Duration) -> Connect {
    netns.run(|| {
        let target = SocketAddr::new(dst, port);
        let mut stream = match TcpStream::connect_timeout(&target, timeout) {
            Ok(stream) => stream,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return Connect::TimedOut,
            Err(e) => return Connect::Failed(format!("connect {target}: {e}")),
        };
        let _ = stream.set_read_timeout(Some(timeout));
        let mut banner = vec![0u8; BANNER.len()];
        match stream.read_exact(&mut banner) {
            Ok(()) if banner == BANNER => Connect::Greeted,
            Ok(()) => Connect::Failed(format!("unexpected banner {banner:?}")),
            Err(e) => Connect::Failed(format!("reading banner from {target}: {e}")),
        }
    })
}

/// A pin folder of a test's own below /sys/fs/bpf: its links are detached and the folder
/// removed on drop, also when the test fails.
pub struct PinFolder(pub smtpguard::dataplane::PinLayout);

impl PinFolder {
    pub fn new(name: &str) -> Self {
        Self(smtpguard::dataplane::PinLayout::new(format!(
            "/sys/fs/bpf/smtpguard-test-{}-{name}",
            std::process::id()
        )))
    }
}

impl Drop for PinFolder {
    fn drop(&mut self) {
        for attachment in self.0.attachments().unwrap_or_default() {
            let _ = self.0.detach(&attachment);
        }
        let _ = std::fs::remove_dir_all(self.0.root());
    }
}
