//! What kind of network device an interface is, asked of the kernel in the calling thread's
//! network namespace: the link type (does a frame start with an Ethernet header?), the driver
//! (a VXLAN, TUN or WireGuard device?) and whether it is up.
//!
//! The questions go through ioctls on a socket made in the current namespace. The agent runs
//! them on a thread that entered `[agent] netns`; /sys/class/net would describe the namespace
//! /sys was mounted in instead.
//!
//! Tunnel endpoints are where subscriber traffic can enter the routing stack without passing a
//! listed interface: a VXLAN device decapsulates a subscriber's frame and the kernel routes the
//! inner packet from the VXLAN device. [`unlisted_tunnels`] names those that are up and not in
//! `interfaces`, for `status` and `config check`.

use std::{
    ffi::CStr,
    fmt, io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use super::DataplaneError;

/// ARPHRD_* link types from linux/if_arp.h (`ifr_hwaddr.sa_family` of SIOCGIFHWADDR).
pub const ARPHRD_ETHER: u16 = 1;
const ARPHRD_PPP: u16 = 512;
const ARPHRD_RAWIP: u16 = 519;
const ARPHRD_TUNNEL: u16 = 768;
const ARPHRD_TUNNEL6: u16 = 769;
const ARPHRD_LOOPBACK: u16 = 772;
const ARPHRD_SIT: u16 = 776;
const ARPHRD_IPGRE: u16 = 778;
const ARPHRD_IP6GRE: u16 = 823;
const ARPHRD_NONE: u16 = 65534;

/// Link types that carry IP without a link-layer header (or with one the program does not
/// read), with the name status and warnings give them.
const L3_LINK_TYPES: [(u16, &str); 8] = [
    (ARPHRD_PPP, "ppp"),
    (ARPHRD_RAWIP, "rawip"),
    (ARPHRD_TUNNEL, "ipip"),
    (ARPHRD_TUNNEL6, "ip6tnl"),
    (ARPHRD_SIT, "sit"),
    (ARPHRD_IPGRE, "gre"),
    (ARPHRD_IP6GRE, "ip6gre"),
    (ARPHRD_NONE, "none"),
];

/// Drivers (ethtool's driver name, which is the rtnl link kind for most virtual devices) of
/// tunnel endpoints and other devices that hand decapsulated or user-space traffic to the
/// routing stack. `tun` covers TAP devices too (their bus info says which).
const TUNNEL_DRIVERS: [&str; 20] = [
    "vxlan",
    "geneve",
    "gre",
    "gretap",
    "erspan",
    "ip6gre",
    "ip6gretap",
    "ip6erspan",
    "ipip",
    "sit",
    "ip6tnl",
    "vti",
    "vti6",
    "wireguard",
    "tun",
    "ppp",
    "l2tp_eth",
    "bareudp",
    "gtp",
    "pptp",
];

/// The name of a link type: `ether`, `none`, `ipip`, ... or its number.
pub fn link_type_name(link_type: u16) -> String {
    match link_type {
        ARPHRD_ETHER => "ether".to_owned(),
        ARPHRD_LOOPBACK => "loopback".to_owned(),
        other => L3_LINK_TYPES
            .iter()
            .find(|(number, _)| *number == other)
            .map_or_else(|| other.to_string(), |(_, name)| (*name).to_owned()),
    }
}

/// What the kernel says about one interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    pub name: String,
    /// ARPHRD_* link type; [`ARPHRD_ETHER`] for every device whose frames start with an
    /// Ethernet header (veth, bridges, bonds, VLAN devices, VXLAN, TAP).
    pub link_type: u16,
    /// The driver (ETHTOOL_GDRVINFO), `None` for a device that names none.
    pub driver: Option<String>,
    /// The driver's bus info: `tun` or `tap` for the TUN driver.
    pub bus_info: Option<String>,
    /// IFF_UP: administratively up.
    pub up: bool,
}

impl LinkInfo {
    /// The kind of tunnel or L3 device (`vxlan`, `tun`, `tap`, `wireguard`, `gre`, `ppp`,
    /// ...), or `None` for an ordinary Ethernet device or the loopback.
    pub fn tunnel_kind(&self) -> Option<String> {
        if let Some(driver) = self.driver.as_deref()
            && TUNNEL_DRIVERS.contains(&driver)
        {
            return Some(match (driver, self.bus_info.as_deref()) {
                ("tun", Some("tap")) => "tap".to_owned(),
                _ => driver.to_owned(),
            });
        }
        L3_LINK_TYPES
            .iter()
            .find(|(number, _)| *number == self.link_type)
            .map(|(_, name)| match *name {
                "none" => "l3".to_owned(),
                name => name.to_owned(),
            })
    }
}

/// A tunnel or L3 device that is up and not in `interfaces`: what it decapsulates (or what a
/// VPN server writes into it) is routed without passing the program.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct UnlistedTunnel {
    pub interface: String,
    pub kind: String,
}

/// What stands for every unlisted PPP device: a BNG has one per session, thousands, which
/// come and go all day, so they are one warning that does not change with them.
const PPP_DEVICES: &str = "ppp*";

impl fmt::Display for UnlistedTunnel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.interface == PPP_DEVICES {
            return write!(
                f,
                "PPP session devices ({PPP_DEVICES}) are up and not in interfaces: PPPoE \
                 sessions are judged on the interface that carries their frames, but PPP over \
                 L2TP or PPTP is not filtered unless its devices are listed"
            );
        }
        write!(
            f,
            "interface {} ({}) is up and not in interfaces: traffic it decapsulates is not \
             filtered",
            self.interface, self.kind
        )
    }
}

/// The tunnel and L3 devices of the current network namespace that are up and not in
/// `listed`, by name.
pub fn unlisted_tunnels(listed: &[String]) -> Result<Vec<UnlistedTunnel>, DataplaneError> {
    let probe = Probe::new()?;
    let names = nix::net::if_::if_nameindex().map_err(|errno| DataplaneError::LinkQuery {
        interface: "*".to_owned(),
        request: "listing the interfaces (if_nameindex)",
        source: errno.into(),
    })?;
    let mut unlisted = Vec::new();
    for entry in names.iter() {
        let name = entry.name().to_string_lossy().into_owned();
        if listed.contains(&name) {
            continue;
        }
        let info = match probe.inspect(&name) {
            Ok(info) => info,
            // Deleted since it was listed.
            Err(DataplaneError::InterfaceMissing { .. }) => continue,
            Err(error) => return Err(error),
        };
        if let (true, Some(kind)) = (info.up, info.tunnel_kind()) {
            unlisted.push(UnlistedTunnel {
                interface: name,
                kind,
            });
        }
    }
    Ok(grouped(unlisted))
}

/// Sorted by name, with every PPP device folded into one [`PPP_DEVICES`] entry.
fn grouped(mut unlisted: Vec<UnlistedTunnel>) -> Vec<UnlistedTunnel> {
    let before = unlisted.len();
    unlisted.retain(|tunnel| tunnel.kind != "ppp");
    if unlisted.len() != before {
        unlisted.push(UnlistedTunnel {
            interface: PPP_DEVICES.to_owned(),
            kind: "ppp".to_owned(),
        });
    }
    unlisted.sort_by(|a, b| a.interface.cmp(&b.interface));
    unlisted
}

/// The link type of `interface` in the current network namespace.
pub fn link_type(interface: &str) -> Result<u16, DataplaneError> {
    Probe::new()?.link_type(interface)
}

/// A datagram socket of the current network namespace, for interface ioctls.
pub struct Probe {
    socket: OwnedFd,
}

/// `struct ethtool_drvinfo` from linux/ethtool.h.
#[repr(C)]
struct EthtoolDrvinfo {
    cmd: u32,
    driver: [u8; 32],
    version: [u8; 32],
    fw_version: [u8; 32],
    bus_info: [u8; 32],
    erom_version: [u8; 32],
    reserved2: [u8; 12],
    n_priv_flags: u32,
    n_stats: u32,
    testinfo_len: u32,
    eedump_len: u32,
    regdump_len: u32,
}

const ETHTOOL_GDRVINFO: u32 = 0x0000_0003;

impl Probe {
    pub fn new() -> Result<Self, DataplaneError> {
        // SAFETY: plain socket(2); the fd is owned below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(DataplaneError::LinkQuery {
                interface: "*".to_owned(),
                request: "making a socket for interface requests",
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: a new fd that nothing else owns.
        Ok(Self {
            socket: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// The link type (ARPHRD_*) of `interface`.
    pub fn link_type(&self, interface: &str) -> Result<u16, DataplaneError> {
        let mut request = ifreq(interface)?;
        self.ioctl(
            interface,
            libc::SIOCGIFHWADDR,
            "SIOCGIFHWADDR",
            &mut request,
        )?;
        // SAFETY: SIOCGIFHWADDR filled in the hardware address member.
        Ok(unsafe { request.ifr_ifru.ifru_hwaddr.sa_family })
    }

    /// Link type, driver and state of `interface`.
    pub fn inspect(&self, interface: &str) -> Result<LinkInfo, DataplaneError> {
        let link_type = self.link_type(interface)?;
        let mut request = ifreq(interface)?;
        self.ioctl(interface, libc::SIOCGIFFLAGS, "SIOCGIFFLAGS", &mut request)?;
        // SAFETY: SIOCGIFFLAGS filled in the flags member.
        let flags = unsafe { request.ifr_ifru.ifru_flags };
        let (driver, bus_info) = self.driver(interface)?;
        Ok(LinkInfo {
            name: interface.to_owned(),
            link_type,
            driver,
            bus_info,
            up: flags & libc::IFF_UP as libc::c_short != 0,
        })
    }

    /// The driver name and bus info from ETHTOOL_GDRVINFO; `None` for devices that answer
    /// none (no ethtool operations, no parent device and no rtnl link kind).
    fn driver(&self, interface: &str) -> Result<(Option<String>, Option<String>), DataplaneError> {
        // SAFETY: all-zero bytes are a valid value of this plain C struct.
        let mut info: EthtoolDrvinfo = unsafe { std::mem::zeroed() };
        info.cmd = ETHTOOL_GDRVINFO;
        let mut request = ifreq(interface)?;
        request.ifr_ifru.ifru_data = std::ptr::from_mut(&mut info).cast();
        match self.ioctl(interface, libc::SIOCETHTOOL, "SIOCETHTOOL", &mut request) {
            Ok(()) => Ok((c_text(&info.driver), c_text(&info.bus_info))),
            Err(DataplaneError::LinkQuery { source, .. })
                if source.raw_os_error() == Some(libc::EOPNOTSUPP) =>
            {
                Ok((None, None))
            }
            Err(error) => Err(error),
        }
    }

    fn ioctl(
        &self,
        interface: &str,
        command: libc::c_ulong,
        name: &'static str,
        request: &mut libc::ifreq,
    ) -> Result<(), DataplaneError> {
        // SAFETY: `request` is a valid ifreq for `command`, and what its data pointer refers to
        // (ETHTOOL_GDRVINFO) outlives the call.
        let result = unsafe {
            libc::ioctl(
                self.socket.as_raw_fd(),
                command as _,
                std::ptr::from_mut(request),
            )
        };
        if result == 0 {
            return Ok(());
        }
        let source = io::Error::last_os_error();
        if source.raw_os_error() == Some(libc::ENODEV) {
            return Err(DataplaneError::InterfaceMissing {
                interface: interface.to_owned(),
            });
        }
        Err(DataplaneError::LinkQuery {
            interface: interface.to_owned(),
            request: name,
            source,
        })
    }
}

/// An ifreq naming `interface`; a name that does not fit IFNAMSIZ names no interface.
fn ifreq(interface: &str) -> Result<libc::ifreq, DataplaneError> {
    // SAFETY: all-zero bytes are a valid ifreq (an empty name, a zero union).
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = interface.as_bytes();
    if bytes.is_empty() || bytes.len() >= request.ifr_name.len() || bytes.contains(&0) {
        return Err(DataplaneError::InterfaceMissing {
            interface: interface.to_owned(),
        });
    }
    for (slot, byte) in request.ifr_name.iter_mut().zip(bytes) {
        *slot = *byte as libc::c_char;
    }
    Ok(request)
}

fn c_text(bytes: &[u8]) -> Option<String> {
    let text = CStr::from_bytes_until_nul(bytes).ok()?.to_string_lossy();
    (!text.is_empty()).then(|| text.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(link_type: u16, driver: Option<&str>, bus_info: Option<&str>) -> LinkInfo {
        LinkInfo {
            name: "x".to_owned(),
            link_type,
            driver: driver.map(str::to_owned),
            bus_info: bus_info.map(str::to_owned),
            up: true,
        }
    }

    #[test]
    fn tunnel_kinds_come_from_the_driver_then_the_link_type() {
        let cases = [
            (info(ARPHRD_ETHER, Some("vxlan"), None), Some("vxlan")),
            (info(ARPHRD_ETHER, Some("tun"), Some("tap")), Some("tap")),
            (info(ARPHRD_NONE, Some("tun"), Some("tun")), Some("tun")),
            (
                info(ARPHRD_NONE, Some("wireguard"), None),
                Some("wireguard"),
            ),
            (info(ARPHRD_IPGRE, None, None), Some("gre")),
            (info(ARPHRD_PPP, None, None), Some("ppp")),
            (info(ARPHRD_NONE, Some("someone"), None), Some("l3")),
            (info(ARPHRD_ETHER, Some("veth"), None), None),
            (info(ARPHRD_ETHER, None, None), None),
            (info(ARPHRD_LOOPBACK, None, None), None),
        ];
        for (link, expected) in cases {
            assert_eq!(
                link.tunnel_kind().as_deref(),
                expected,
                "link type {}, driver {:?}, bus {:?}: expected {expected:?}",
                link.link_type,
                link.driver,
                link.bus_info
            );
        }
    }

    #[test]
    fn ppp_devices_are_one_warning_whatever_their_number() {
        let tunnel = |interface: &str, kind: &str| UnlistedTunnel {
            interface: interface.to_owned(),
            kind: kind.to_owned(),
        };
        let found = vec![
            tunnel("ppp7", "ppp"),
            tunnel("vx0", "vxlan"),
            tunnel("ppp0", "ppp"),
            tunnel("tun0", "tun"),
        ];
        let folded = grouped(found);
        assert_eq!(
            folded,
            [
                tunnel(PPP_DEVICES, "ppp"),
                tunnel("tun0", "tun"),
                tunnel("vx0", "vxlan")
            ]
        );
        assert!(folded[0].to_string().contains("L2TP"), "{}", folded[0]);
        assert_eq!(
            grouped(vec![tunnel("tun0", "tun")]),
            [tunnel("tun0", "tun")]
        );
    }

    #[test]
    fn the_loopback_is_an_up_loopback_without_a_tunnel_kind() {
        // Every namespace has `lo`; asks the real kernel.
        let lo = Probe::new().unwrap().inspect("lo").unwrap();
        assert_eq!(
            (lo.link_type, lo.up, lo.tunnel_kind()),
            (ARPHRD_LOOPBACK, true, None),
            "observed {lo:?}"
        );
    }

    #[test]
    fn a_missing_interface_is_reported_missing() {
        let error = link_type("nosuchif0").unwrap_err();
        assert!(
            matches!(&error, DataplaneError::InterfaceMissing { interface } if interface == "nosuchif0"),
            "expected InterfaceMissing for nosuchif0, observed {error}"
        );
    }
}
