//! Frames onto a wire and TCP off it: an AF_PACKET writer that puts raw frames (any bytes:
//! VLAN stacks, PPPoE, broken headers) onto an interface, raw TCP sockets that see every
//! TCP packet a namespace's kernel delivers locally, after reassembly: what really got through,
//! and an AF_PACKET capture of every frame an interface receives (what came back).
//!
//! A receiver that silently lost packets would hide exactly what it is there to find, so
//! [`TcpArrivals`] asks the kernel for its drop count (`SO_RXQ_OVFL`) on every packet and
//! reports it; callers fail when it is not zero.

use std::{
    fmt,
    io::IoSliceMut,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use nix::{
    errno::Errno,
    sys::socket::{
        AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockProtocol, SockType,
        SockaddrIn6, recvmsg, send, setsockopt, socket, sockopt,
    },
};

use crate::{lab::Netns, regression::hex};

/// Receive buffer of each raw socket: room for far more than one batch of arrivals.
const RECEIVE_BUFFER: usize = 64 << 20;

/// Writes raw frames onto one interface (AF_PACKET, `SOCK_RAW`: the frame as given,
/// Ethernet header included).
pub struct PacketWriter {
    socket: OwnedFd,
}

impl PacketWriter {
    /// A writer on `interface` of `netns`.
    pub fn open(netns: &Netns, interface: &str) -> anyhow::Result<Self> {
        let ifindex = netns.ifindex(interface)?;
        let socket = netns.run(|| -> anyhow::Result<OwnedFd> {
            // Protocol 0: this socket sends only and receives nothing.
            let socket = socket(
                AddressFamily::Packet,
                SockType::Raw,
                SockFlag::empty(),
                None,
            )
            .context("AF_PACKET socket")?;
            bind_to_interface(&socket, ifindex, 0)?;
            setsockopt(&socket, sockopt::SndBufForce, &RECEIVE_BUFFER)?;
            Ok(socket)
        })?;
        Ok(Self { socket })
    }

    /// Sends one frame. The kernel refuses frames shorter than an Ethernet header.
    pub fn send(&self, frame: &[u8]) -> nix::Result<()> {
        send(self.socket.as_raw_fd(), frame, MsgFlags::empty()).map(drop)
    }
}

/// Binds an AF_PACKET socket to interface `ifindex`, receiving `protocol` (an ethertype in
/// network byte order; 0 receives nothing).
fn bind_to_interface(socket: &OwnedFd, ifindex: u32, protocol: u16) -> anyhow::Result<()> {
    // SAFETY: sockaddr_ll is plain data; zero is a valid value for every field.
    let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    address.sll_family = libc::AF_PACKET as u16;
    address.sll_protocol = protocol;
    address.sll_ifindex = ifindex as i32;
    // SAFETY: the pointer and length describe `address`, which outlives the call.
    let bound = unsafe {
        libc::bind(
            socket.as_raw_fd(),
            (&raw const address).cast(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    Errno::result(bound)
        .map(drop)
        .with_context(|| format!("binding an AF_PACKET socket to interface {ifindex}"))
}

/// Every frame an interface receives (AF_PACKET, `ETH_P_ALL`), as the namespace's taps see
/// it: after the interface's XDP program, and without an outer VLAN tag the kernel moved into
/// the packet's metadata (`skb_vlan_untag` runs before the taps). Frames the namespace sends
/// itself are left out.
pub struct FrameCapture {
    socket: OwnedFd,
    /// Frames the kernel could not queue for this socket, summed (`PACKET_STATISTICS`).
    drops: u64,
    buffer: Vec<u8>,
}

impl FrameCapture {
    pub fn open(netns: &Netns, interface: &str) -> anyhow::Result<Self> {
        let ifindex = netns.ifindex(interface)?;
        let all = (libc::ETH_P_ALL as u16).to_be();
        let socket = netns.run(|| -> anyhow::Result<OwnedFd> {
            // SAFETY: plain arguments; the descriptor is owned at once.
            let fd = unsafe {
                libc::socket(
                    libc::AF_PACKET,
                    libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                    i32::from(all),
                )
            };
            let fd = Errno::result(fd).context("AF_PACKET capture socket")?;
            // SAFETY: a descriptor just returned by socket(2), owned by nothing else.
            let socket = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
            bind_to_interface(&socket, ifindex, all)?;
            setsockopt(&socket, sockopt::RcvBufForce, &RECEIVE_BUFFER)?;
            Ok(socket)
        })?;
        Ok(Self {
            socket,
            drops: 0,
            buffer: vec![0; 1 << 16],
        })
    }

    /// Takes every frame queued now.
    pub fn drain(&mut self) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        loop {
            // SAFETY: sockaddr_ll is plain data; zero is a valid value for every field.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut from_len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: the buffer and the address describe memory that outlives the call.
            let len = unsafe {
                libc::recvfrom(
                    self.socket.as_raw_fd(),
                    self.buffer.as_mut_ptr().cast(),
                    self.buffer.len(),
                    libc::MSG_DONTWAIT,
                    (&raw mut from).cast(),
                    &mut from_len,
                )
            };
            match Errno::result(len) {
                Ok(len) if from.sll_pkttype != libc::PACKET_OUTGOING => {
                    frames.push(self.buffer[..len as usize].to_vec())
                }
                Ok(_) | Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => return frames,
                Err(error) => panic!("receiving from the capture socket: {error}"),
            }
        }
    }

    /// Frames the kernel dropped for want of room in this socket's queue so far (0, or the
    /// capture missed frames).
    pub fn drops(&mut self) -> u64 {
        // SAFETY: tpacket_stats is plain data; zero is a valid value for every field.
        let mut stats: libc::tpacket_stats = unsafe { std::mem::zeroed() };
        let mut len = size_of::<libc::tpacket_stats>() as libc::socklen_t;
        // SAFETY: the pointer and length describe `stats`, which outlives the call.
        let read = unsafe {
            libc::getsockopt(
                self.socket.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&raw mut stats).cast(),
                &mut len,
            )
        };
        Errno::result(read).expect("reading the capture socket's statistics");
        // The kernel resets its counters on every read.
        self.drops += u64::from(stats.tp_drops);
        self.drops
    }
}

/// A TCP packet some namespace's kernel delivered locally, as its raw socket saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Arrival {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// The interface it came in on.
    pub ifindex: u32,
    /// The TCP header and payload (after reassembly).
    pub tcp: Vec<u8>,
}

impl Arrival {
    pub fn src_port(&self) -> Option<u16> {
        self.be16(0)
    }

    pub fn dst_port(&self) -> Option<u16> {
        self.be16(2)
    }

    /// The TCP flags byte; `None` when the segment is shorter than that.
    pub fn flags(&self) -> Option<u8> {
        self.tcp.get(13).copied()
    }

    fn be16(&self, at: usize) -> Option<u16> {
        Some(u16::from_be_bytes([
            *self.tcp.get(at)?,
            *self.tcp.get(at + 1)?,
        ]))
    }
}

impl fmt::Display for Arrival {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let port = |port: Option<u16>| port.map_or("?".to_string(), |p| p.to_string());
        write!(
            f,
            "TCP {} port {} -> {} port {}, flags {}, {} bytes of TCP (ifindex {}): {}",
            self.src,
            port(self.src_port()),
            self.dst,
            port(self.dst_port()),
            self.flags()
                .map_or("?".to_string(), |flags| format!("{flags:#04x}")),
            self.tcp.len(),
            self.ifindex,
            hex(&self.tcp)
        )
    }
}

/// Raw IPv4 and IPv6 TCP sockets in one namespace: every TCP packet its kernel delivers
/// locally, whatever its port and whether or not a socket listens there.
pub struct TcpArrivals {
    v4: OwnedFd,
    v6: OwnedFd,
    /// Arrivals are kept from this interface only (the namespace's own answers loop back
    /// over `lo` when it takes every address as its own).
    ifindex: u32,
    /// The highest drop count the kernel reported for either socket.
    overflows: u32,
    /// Arrivals from other interfaces, skipped.
    pub elsewhere: u64,
    buffer: Vec<u8>,
}

impl TcpArrivals {
    /// Receivers in `netns` for TCP that comes in on `interface`.
    pub fn open(netns: &Netns, interface: &str) -> anyhow::Result<Self> {
        let ifindex = netns.ifindex(interface)?;
        let (v4, v6) = netns.run(|| -> anyhow::Result<(OwnedFd, OwnedFd)> {
            let open = |family| -> anyhow::Result<OwnedFd> {
                let socket = socket(
                    family,
                    SockType::Raw,
                    SockFlag::SOCK_NONBLOCK,
                    SockProtocol::Tcp,
                )
                .with_context(|| format!("raw {family:?} TCP socket"))?;
                setsockopt(&socket, sockopt::RcvBufForce, &RECEIVE_BUFFER)?;
                setsockopt(&socket, sockopt::RxqOvfl, &1)?;
                Ok(socket)
            };
            let v4 = open(AddressFamily::Inet)?;
            setsockopt(&v4, sockopt::Ipv4PacketInfo, &true)?;
            let v6 = open(AddressFamily::Inet6)?;
            setsockopt(&v6, sockopt::Ipv6RecvPacketInfo, &true)?;
            Ok((v4, v6))
        })?;
        Ok(Self {
            v4,
            v6,
            ifindex,
            overflows: 0,
            elsewhere: 0,
            buffer: vec![0; 1 << 16],
        })
    }

    /// How many packets the kernel dropped because a socket's buffer was full (0, or the run
    /// missed arrivals).
    pub fn overflows(&self) -> u32 {
        self.overflows
    }

    /// Waits up to `timeout` for arrivals, then takes all that are queued.
    pub fn receive(&mut self, timeout: Duration) -> Vec<Arrival> {
        let millis = timeout.as_millis().min(i32::MAX as u128) as i32;
        let mut fds = [self.v4.as_raw_fd(), self.v6.as_raw_fd()].map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        });
        // SAFETY: the pointer and count describe `fds`, which outlives the call.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, millis) };
        match Errno::result(ready) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(error) => panic!("poll on the raw TCP sockets: {error}"),
        }
        let mut arrivals = Vec::new();
        self.drain(true, &mut arrivals);
        self.drain(false, &mut arrivals);
        arrivals
    }

    /// Takes arrivals until `done` says the last one taken completes what the caller waits
    /// for, or `timeout` passes; returns everything taken and whether `done` was met.
    pub fn receive_until(
        &mut self,
        timeout: Duration,
        mut done: impl FnMut(&Arrival) -> bool,
    ) -> (Vec<Arrival>, bool) {
        let deadline = Instant::now() + timeout;
        let mut all = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let arrivals = self.receive(left);
            let met = arrivals
                .iter()
                .fold(false, |met, arrival| done(arrival) | met);
            all.extend(arrivals);
            if met {
                return (all, true);
            }
            if left.is_zero() {
                return (all, false);
            }
        }
    }

    /// Takes everything queued on one socket.
    fn drain(&mut self, v4: bool, into: &mut Vec<Arrival>) {
        loop {
            let fd = if v4 {
                self.v4.as_raw_fd()
            } else {
                self.v6.as_raw_fd()
            };
            let mut control = nix::cmsg_space!(libc::in6_pktinfo, u32);
            let mut iov = [IoSliceMut::new(&mut self.buffer)];
            let message = match recvmsg::<SockaddrIn6>(
                fd,
                &mut iov,
                Some(&mut control),
                MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(message) => message,
                Err(Errno::EAGAIN) => return,
                Err(Errno::EINTR) => continue,
                Err(error) => panic!("receiving from the raw TCP socket: {error}"),
            };
            let len = message.bytes;
            let mut ifindex = None;
            let mut dst6 = None;
            for cmsg in message.cmsgs().expect("control messages fit their buffer") {
                match cmsg {
                    ControlMessageOwned::RxqOvfl(dropped) => {
                        self.overflows = self.overflows.max(dropped)
                    }
                    ControlMessageOwned::Ipv4PacketInfo(info) => {
                        ifindex = Some(info.ipi_ifindex as u32)
                    }
                    ControlMessageOwned::Ipv6PacketInfo(info) => {
                        ifindex = Some(info.ipi6_ifindex);
                        dst6 = Some(Ipv6Addr::from(info.ipi6_addr.s6_addr));
                    }
                    _ => {}
                }
            }
            let src6 = message.address.map(|address| address.ip());
            let data = &self.buffer[..len];
            let arrival = if v4 {
                ipv4_arrival(data, ifindex)
            } else {
                src6.zip(dst6).map(|(src, dst)| Arrival {
                    src: IpAddr::V6(src),
                    dst: IpAddr::V6(dst),
                    ifindex: ifindex.unwrap_or(0),
                    tcp: data.to_vec(),
                })
            };
            let arrival = arrival.unwrap_or_else(|| {
                panic!(
                    "a raw TCP socket delivered what it should not ({} bytes, v4 {v4}, \
                     packet info {ifindex:?}): {}",
                    len,
                    hex(data)
                )
            });
            if arrival.ifindex == self.ifindex {
                into.push(arrival);
            } else {
                self.elsewhere += 1;
            }
        }
    }
}

/// An IPv4 raw socket delivers the IP header (as the kernel holds it) and the payload.
fn ipv4_arrival(data: &[u8], ifindex: Option<u32>) -> Option<Arrival> {
    let header_len = usize::from(*data.first()? & 0x0f) * 4;
    let src: [u8; 4] = data.get(12..16)?.try_into().ok()?;
    let dst: [u8; 4] = data.get(16..20)?.try_into().ok()?;
    Some(Arrival {
        src: IpAddr::V4(Ipv4Addr::from(src)),
        dst: IpAddr::V4(Ipv4Addr::from(dst)),
        ifindex: ifindex?,
        tcp: data.get(header_len..)?.to_vec(),
    })
}
