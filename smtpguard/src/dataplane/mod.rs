//! The kernel side seen from user space: load the compiled program with the configured
//! capacities, install the policy into its maps, attach it, run frames through it.

mod batch;
mod enforcement;
mod hosts;
mod interface_counters;
pub mod interfaces;
mod links;
mod mapped;
mod maps;
mod pins;
mod sys;

use std::{net::IpAddr, os::fd::BorrowedFd, path::PathBuf};

use aya::{
    Ebpf, EbpfLoader,
    programs::{
        ProgramError, SchedClassifier, TestRun, TestRunOptions, TestRunResult, Xdp, XdpMode,
        tc::{self, TcAttachType},
    },
};
use smtpguard_common::{
    HostKey, HostOverride, HostStats, InterfaceSlot, Mode, REASON_COUNT, Reason,
    host_table::table_slots,
    maps::{self as names, host_overflow_capacity},
};

pub use self::{
    hosts::{HostCount, HostRecord, HostsRead},
    links::HeldLinks,
    maps::{KernelMatch, PinnedHostStats, PolicyMaps, ReconcileReport, host_address},
    pins::{
        Attach, AttachOutcome, Attached, MapShape, PinLayout, PinLock, PinnedAttachment,
        ReplacedPin,
    },
};
use crate::{
    config::{Capacity, Config},
    policy::DesiredPolicy,
};

/// The compiled kernel program, built by build.rs (aya-build) from smtpguard-ebpf.
static PROGRAM: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/smtpguard"));

pub const XDP_PROGRAM: &str = "smtpguard_xdp";
pub const TC_PROGRAM: &str = "smtpguard_tc";
/// The TC entry point for devices without an Ethernet header (TUN, WireGuard, IPIP, GRE):
/// it reads from the IP header and takes the protocol from the skb.
pub const TC_L3_PROGRAM: &str = "smtpguard_tc_l3";
/// The reply programs (`reject`), tail-called by the entry points through the program
/// arrays, each in its slot.
const REPLY_PROGRAMS: [ReplyProgram; 3] = [
    ReplyProgram::Xdp("smtpguard_xdp_reply"),
    ReplyProgram::Tc("smtpguard_tc_reply", names::TC_REPLY_ETHERNET),
    ReplyProgram::Tc("smtpguard_tc_l3_reply", names::TC_REPLY_L3),
];

/// A reply program: its name and, at TC, its slot in `TC_REPLY`.
enum ReplyProgram {
    Xdp(&'static str),
    Tc(&'static str, u32),
}

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("loading the kernel program: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("the kernel program has no {kind} named {name}")]
    Missing {
        kind: &'static str,
        name: &'static str,
    },
    #[error("{action} program {program}: {source}")]
    Program {
        action: &'static str,
        program: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("attaching {program} to interface {interface}: {source}")]
    Attach {
        program: &'static str,
        interface: String,
        #[source]
        source: ProgramError,
    },
    #[error("preparing the clsact qdisc on interface {interface}: {source}")]
    Qdisc {
        interface: String,
        #[source]
        source: tc::TcError,
    },
    #[error(
        "map {map} holds a key with prefix length {prefix_len}, impossible for its address family"
    )]
    CorruptKey { map: &'static str, prefix_len: u32 },
    #[error("interface {interface} does not exist")]
    InterfaceMissing { interface: String },
    #[error("interface {interface}: {request} failed: {source}")]
    LinkQuery {
        interface: String,
        request: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "interface {interface} has no Ethernet header (link type {link_type}); the XDP \
         program reads Ethernet frames: attach with TC, which uses {TC_L3_PROGRAM} there"
    )]
    NotEthernet {
        interface: String,
        link_type: String,
    },
    #[error(
        "another smtpguard agent (pid {owner}) already owns the pin folder {}; one agent per \
         pin folder",
        .path.display()
    )]
    PinsOwned { path: PathBuf, owner: String },
    #[error("pin folder {path}: {problem}")]
    Bpffs { path: PathBuf, problem: String },
    #[error("reading the kernel program's object file: {0}")]
    Object(String),
    #[error("pinned link {path}: {source}")]
    Link {
        path: PathBuf,
        #[source]
        source: Box<aya::programs::links::LinkError>,
    },
    #[error("pinning the {program} link of interface {interface} at {path}: {source}")]
    Pin {
        program: &'static str,
        interface: String,
        path: PathBuf,
        #[source]
        source: Box<aya::pin::PinError>,
    },
    #[error("reading map {map} in batches: {source}")]
    Batch {
        map: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("mapping map {map} into memory: {source}")]
    Mapping {
        map: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

impl DataplaneError {
    /// Whether the kernel refused the input of a test run (EINVAL) before the program ran:
    /// frames shorter than an Ethernet header, and for the skb (TC) test run untagged IP
    /// frames whose IP header is cut.
    pub fn is_refused_input(&self) -> bool {
        matches!(
            self,
            DataplaneError::Program {
                source: ProgramError::SyscallError(aya::sys::SyscallError { io_error, .. }),
                ..
            } if io_error.raw_os_error() == Some(libc::EINVAL)
        )
    }
}

/// A loaded (verified) instance of the kernel program with its own maps.
pub struct Dataplane {
    ebpf: Ebpf,
    /// Pinned maps of an earlier version that did not fit and were made afresh at load.
    replaced_pins: Vec<ReplacedPin>,
}

/// How a frame fared in a test run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameOutcome {
    /// The program's return code (`xdp_action` for XDP).
    pub action: u32,
    /// The reason counter that moved; `None` only if the program returned without counting
    /// (it always counts, so `None` is a bug the caller should report).
    pub reason: Option<Reason>,
}

impl Dataplane {
    /// Loads the entry points into the kernel with maps sized from `capacity`. The maps are
    /// private to this instance: nothing is pinned, nothing live is touched.
    pub fn load(capacity: &Capacity) -> Result<Self, DataplaneError> {
        Self::load_with(PROGRAM, capacity, None)
    }

    /// Like [`load`](Self::load), for another build of the kernel program (an ELF object
    /// with the same entry points and policy maps): the benchmark times an earlier build
    /// against this one in the same rounds.
    pub fn load_object(object: &[u8], capacity: &Capacity) -> Result<Self, DataplaneError> {
        Self::load_with(object, capacity, None)
    }

    /// Loads the entry points with every map pinned below `layout`: maps already pinned
    /// there are reused with their contents (their sizes are the ones they were created
    /// with), missing ones are created and pinned.
    ///
    /// Pinned maps whose shape no longer fits (see [`pins::unpin_incompatible`]) are made
    /// afresh: [`replaced_pins`](Self::replaced_pins) names them.
    pub fn load_pinned(capacity: &Capacity, layout: &PinLayout) -> Result<Self, DataplaneError> {
        layout.prepare()?;
        let replaced_pins = pins::unpin_incompatible(layout, PROGRAM)?;
        let mut dataplane = Self::load_with(PROGRAM, capacity, Some(layout))?;
        dataplane.replaced_pins = replaced_pins;
        Ok(dataplane)
    }

    pub fn replaced_pins(&self) -> &[ReplacedPin] {
        &self.replaced_pins
    }

    fn load_with(
        object: &[u8],
        capacity: &Capacity,
        pins: Option<&PinLayout>,
    ) -> Result<Self, DataplaneError> {
        let mut loader = EbpfLoader::new();
        let sources = names::source_capacity(capacity.subscribers, capacity.exemptions);
        loader
            .map_max_entries(names::SOURCES_V4, sources)
            .map_max_entries(names::SOURCES_V6, sources)
            .map_max_entries(names::SUBSCRIBER_SPACE_V4, capacity.subscribers)
            .map_max_entries(names::SUBSCRIBER_SPACE_V6, capacity.subscribers)
            .map_max_entries(names::RELAYS_V4, capacity.relays)
            .map_max_entries(names::RELAYS_V6, capacity.relays)
            .map_max_entries(names::HOST_TABLE, table_slots(capacity.hosts))
            .map_max_entries(names::HOST_STATS, host_overflow_capacity(capacity.hosts));
        // A table pinned before this load keeps its hosts where its seed put them.
        let mut table_reused = false;
        if let Some(layout) = pins {
            table_reused = layout.map(names::HOST_TABLE).exists();
            for name in pins::PINNED_MAPS {
                loader.map_pin_path(name, layout.map(name));
            }
        }
        let mut ebpf = loader.load(object)?;
        hosts::place_table(&mut ebpf, !table_reused)?;
        program_mut::<Xdp>(&mut ebpf, XDP_PROGRAM)?
            .load()
            .map_err(|source| program_error("loading", XDP_PROGRAM, source))?;
        for name in [TC_PROGRAM, TC_L3_PROGRAM] {
            // Builds from before the L3 entry point (a benchmark's baseline) lack it; an
            // attach that needs it then names the missing program.
            if name == TC_L3_PROGRAM && ebpf.program(name).is_none() {
                continue;
            }
            program_mut::<SchedClassifier>(&mut ebpf, name)?
                .load()
                .map_err(|source| program_error("loading", name, source))?;
        }
        for reply in REPLY_PROGRAMS {
            load_reply(&mut ebpf, reply)?;
        }
        Ok(Self {
            ebpf,
            replaced_pins: Vec::new(),
        })
    }

    /// Puts this program on `interface` through a link pinned below `layout`, replacing the
    /// program of an existing link atomically. The attachment outlives this instance.
    ///
    /// An interface without an Ethernet header (TUN, WireGuard, IPIP, GRE, PPP) gets the L3
    /// entry point at TC ingress whatever `attach` asks for: the XDP and Ethernet TC programs
    /// would misread its packets. [`Attached`] says what was attached and why.
    pub fn attach_pinned(
        &mut self,
        layout: &PinLayout,
        interface: &str,
        attach: Attach,
    ) -> Result<Attached, DataplaneError> {
        let ifindex = nix::net::if_::if_nametoindex(interface).map_err(|_| {
            DataplaneError::InterfaceMissing {
                interface: interface.to_owned(),
            }
        })?;
        let link_type = interfaces::link_type(interface)?;
        let mut effective = attach.for_link_type(link_type);
        if !matches!(effective, Attach::Xdp(_)) {
            ensure_clsact(interface)?;
        }
        let outcome = match pins::attach(&mut self.ebpf, layout, interface, effective, ifindex) {
            // Virtual devices such as VXLAN, Geneve, bridges and VLAN devices have no XDP in
            // their driver; refusing to start would leave their traffic unfiltered, and
            // generic XDP runs after GRO anyway: the TC entry point sees the same packets.
            Err(error)
                if matches!(effective, Attach::Xdp(XdpMode::Driver)) && no_native_xdp(&error) =>
            {
                effective = Attach::Tc;
                ensure_clsact(interface)?;
                pins::attach(&mut self.ebpf, layout, interface, effective, ifindex)?
            }
            attached => attached?,
        };
        Ok(Attached {
            outcome,
            attach: effective,
            requested: attach,
            link_type,
        })
    }

    /// Pins every map whose pin is missing (removed by hand) again: this instance holds them
    /// all, contents included. Returns the names of the maps pinned again.
    pub fn restore_map_pins(
        &self,
        layout: &PinLayout,
    ) -> Result<Vec<&'static str>, DataplaneError> {
        layout.prepare()?;
        let mut restored = Vec::new();
        for name in pins::PINNED_MAPS {
            let path = layout.map(name);
            if path.exists() {
                continue;
            }
            let map = self
                .ebpf
                .map(name)
                .ok_or(DataplaneError::Missing { kind: "map", name })?;
            map.pin(&path).map_err(|error| DataplaneError::Bpffs {
                path: path.clone(),
                problem: format!("pinning map {name} again: {error}"),
            })?;
            restored.push(name);
        }
        Ok(restored)
    }

    /// Loads the program and writes `config`'s policy into its fresh maps.
    pub fn with_policy(config: &Config) -> Result<Self, DataplaneError> {
        let mut dataplane = Self::load(&config.capacity)?;
        dataplane
            .policy_maps()?
            .reconcile(&DesiredPolicy::from_config(config))?;
        Ok(dataplane)
    }

    pub fn policy_maps(&mut self) -> Result<PolicyMaps<'_>, DataplaneError> {
        PolicyMaps::new(&mut self.ebpf)
    }

    /// Attaches the XDP entry point; the attachment lasts as long as this instance. An
    /// interface without an Ethernet header is refused (see [`attach_tc`](Self::attach_tc)).
    pub fn attach_xdp(&mut self, interface: &str, mode: XdpMode) -> Result<(), DataplaneError> {
        let link_type = interfaces::link_type(interface)?;
        if link_type != interfaces::ARPHRD_ETHER {
            return Err(DataplaneError::NotEthernet {
                interface: interface.to_owned(),
                link_type: interfaces::link_type_name(link_type),
            });
        }
        program_mut::<Xdp>(&mut self.ebpf, XDP_PROGRAM)?
            .attach(interface, mode)
            .map_err(|source| attach_error(XDP_PROGRAM, interface, source))?;
        Ok(())
    }

    /// Attaches a TC entry point on the interface's ingress: the Ethernet one, or the L3 one
    /// on an interface without an Ethernet header. Returns the program's name.
    pub fn attach_tc(&mut self, interface: &str) -> Result<&'static str, DataplaneError> {
        let program = Attach::Tc
            .for_link_type(interfaces::link_type(interface)?)
            .program();
        ensure_clsact(interface)?;
        program_mut::<SchedClassifier>(&mut self.ebpf, program)?
            .attach(interface, TcAttachType::Ingress)
            .map_err(|source| attach_error(program, interface, source))?;
        Ok(program)
    }

    /// Runs one frame through the XDP entry point with `BPF_PROG_TEST_RUN` and reports the
    /// action and the reason counter it moved.
    pub fn run_xdp(&mut self, frame: &[u8]) -> Result<FrameOutcome, DataplaneError> {
        self.run_xdp_traced(frame).map(|(outcome, _)| outcome)
    }

    /// [`run_xdp`](Self::run_xdp), with the frame as the program left it: for `XDP_TX`, the
    /// reply it sends back.
    pub fn run_xdp_traced(
        &mut self,
        frame: &[u8],
    ) -> Result<(FrameOutcome, Vec<u8>), DataplaneError> {
        let before = self.counters()?;
        let (action, out) = self.run_xdp_out(frame)?;
        let after = self.counters()?;
        let reason = Reason::ALL
            .into_iter()
            .find(|reason| after[*reason as usize] != before[*reason as usize]);
        Ok((FrameOutcome { action, reason }, out))
    }

    /// Runs one frame through the XDP entry point and returns the action with the frame as
    /// the program left it: for `XDP_TX`, the reply it sends back.
    pub fn run_xdp_out(&mut self, frame: &[u8]) -> Result<(u32, Vec<u8>), DataplaneError> {
        test_run_out(
            program_ref::<Xdp>(&self.ebpf, XDP_PROGRAM)?,
            XDP_PROGRAM,
            frame,
        )
    }

    /// The same through the TC entry point; a reply's action is `TC_ACT_REDIRECT`.
    pub fn run_tc_out(&mut self, frame: &[u8]) -> Result<(i32, Vec<u8>), DataplaneError> {
        let program = program_ref::<SchedClassifier>(&self.ebpf, TC_PROGRAM)?;
        test_run_out(program, TC_PROGRAM, frame).map(|(action, out)| (action as i32, out))
    }

    /// The XDP entry point's program fd, for callers that drive `BPF_PROG_TEST_RUN`
    /// themselves (benchmarks: repeat counts, live frames). Valid as long as this instance.
    pub fn xdp_program_fd(&self) -> Result<BorrowedFd<'_>, DataplaneError> {
        use std::os::fd::AsFd as _;
        let fd = program_ref::<Xdp>(&self.ebpf, XDP_PROGRAM)?
            .fd()
            .map_err(|source| program_error("using", XDP_PROGRAM, source))?;
        Ok(fd.as_fd())
    }

    /// Writes host statistics entries directly, one map update each, where the kernel would
    /// place them: a free slot of the host table, else the overflow map (benchmarks pre-fill
    /// the table to its production size this way). Returns how many were written.
    pub fn insert_hosts(
        &mut self,
        hosts: impl IntoIterator<Item = (HostKey, HostStats)>,
    ) -> Result<usize, DataplaneError> {
        hosts::insert(&mut self.ebpf, hosts)
    }

    /// Runs one frame through the TC entry point (`__sk_buff` test run); returns the TC action.
    pub fn run_tc(&mut self, frame: &[u8]) -> Result<i32, DataplaneError> {
        let program = program_ref::<SchedClassifier>(&self.ebpf, TC_PROGRAM)?;
        Ok(test_run(program, TC_PROGRAM, frame)? as i32)
    }

    /// How many instructions the kernel's verifier processed for each entry point and each
    /// reply program: their complexity, which must stay far below the kernel's one-million
    /// limit.
    pub fn verified_instructions(&self) -> Result<Vec<(&'static str, u32)>, DataplaneError> {
        let replies = REPLY_PROGRAMS.map(|reply| match reply {
            ReplyProgram::Xdp(name) | ReplyProgram::Tc(name, _) => name,
        });
        [XDP_PROGRAM, TC_PROGRAM]
            .into_iter()
            .chain(
                replies
                    .into_iter()
                    .filter(|name| self.ebpf.program(name).is_some()),
            )
            .map(|name| {
                let program = self.ebpf.program(name).ok_or(DataplaneError::Missing {
                    kind: "program",
                    name,
                })?;
                let info = program
                    .info()
                    .map_err(|source| program_error("inspecting", name, source))?;
                Ok((name, info.verified_instruction_count().unwrap_or(0)))
            })
            .collect()
    }

    /// Per-reason packet counts, summed over CPUs, indexed by `Reason as usize`.
    pub fn counters(&self) -> Result<[u64; REASON_COUNT as usize], DataplaneError> {
        maps::read_counters(&self.ebpf)
    }

    /// Judged segments of hosts the host table and its overflow could not record.
    pub fn unrecorded_hosts(&self) -> Result<u64, DataplaneError> {
        maps::read_unrecorded_hosts(&self.ebpf)
    }

    /// The slot table's entries that name an interface: whose judged frames go to which
    /// counter slot.
    pub fn interface_slots(&mut self) -> Result<Vec<InterfaceSlot>, DataplaneError> {
        interface_counters::slots(&mut self.ebpf)
    }

    /// Attributes the judged frames of `entry.ifindex` to `entry.slot`; the counters of a
    /// `fresh` slot (one that counted another interface before) start from zero.
    pub fn assign_interface_slot(
        &mut self,
        entry: InterfaceSlot,
        fresh: bool,
    ) -> Result<(), DataplaneError> {
        interface_counters::assign(&mut self.ebpf, entry, fresh)
    }

    /// Stops attributing the judged frames of `ifindex` to a slot of its own.
    pub fn release_interface_slot(&mut self, ifindex: u32) -> Result<(), DataplaneError> {
        interface_counters::release(&mut self.ebpf, ifindex)
    }

    /// The judged frames counted in `slot` per reason (indexed by `Reason as usize`), summed
    /// over CPUs.
    pub fn interface_counts(
        &self,
        slot: u32,
    ) -> Result<[u64; REASON_COUNT as usize], DataplaneError> {
        interface_counters::counts(&self.ebpf, slot)
    }

    /// Starts a new sketch epoch: from now on each host's distinct-destination registers start
    /// empty the first time the host is seen, so a snapshot interval gets its own sketch.
    pub fn set_sketch_epoch(&mut self, epoch: u32) -> Result<(), DataplaneError> {
        let map = self
            .ebpf
            .map_mut(names::SKETCH_EPOCH)
            .ok_or(DataplaneError::Missing {
                kind: "map",
                name: names::SKETCH_EPOCH,
            })?;
        let mut array: aya::maps::Array<&mut aya::maps::MapData, u32> =
            map.try_into().map_err(|source| DataplaneError::Map {
                map: names::SKETCH_EPOCH,
                source,
            })?;
        array
            .set(0, epoch, 0)
            .map_err(|source| DataplaneError::Map {
                map: names::SKETCH_EPOCH,
                source,
            })
    }

    /// Escalates `host` (of a monitor-mode range) to enforcement on its own.
    pub fn set_override(&mut self, host: IpAddr) -> Result<(), DataplaneError> {
        let key = maps::host_mask(&self.ebpf)?.key(host);
        maps::overrides(&mut self.ebpf)?
            .insert(
                key,
                HostOverride {
                    mode: Mode::Enforce as u32,
                },
                0,
            )
            .map_err(|source| DataplaneError::Map {
                map: names::HOST_OVERRIDES,
                source,
            })?;
        maps::advance_policy_generation(&mut self.ebpf)
    }

    /// Ends the escalation of `host`; a host without one is fine.
    pub fn remove_override(&mut self, host: IpAddr) -> Result<(), DataplaneError> {
        let key = maps::host_mask(&self.ebpf)?.key(host);
        match maps::overrides(&mut self.ebpf)?.remove(&key) {
            Ok(()) => maps::advance_policy_generation(&mut self.ebpf),
            Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(DataplaneError::Map {
                map: names::HOST_OVERRIDES,
                source,
            }),
        }
    }

    /// Makes the escalation map hold exactly `hosts`, each keyed as the program keys hosts
    /// now: entries of another host mask (before `[enforcement] ipv6_host_prefix` changed)
    /// go, and their hosts come back under the new one.
    pub fn sync_overrides(&mut self, hosts: &[IpAddr]) -> Result<(), DataplaneError> {
        let mask = maps::host_mask(&self.ebpf)?;
        let wanted: std::collections::HashSet<HostKey> =
            hosts.iter().map(|host| mask.key(*host)).collect();
        let mut map = maps::overrides(&mut self.ebpf)?;
        let map_error = |source| DataplaneError::Map {
            map: names::HOST_OVERRIDES,
            source,
        };
        let present = map
            .keys()
            .collect::<Result<std::collections::HashSet<HostKey>, _>>()
            .map_err(map_error)?;
        let enforce = HostOverride {
            mode: Mode::Enforce as u32,
        };
        for key in wanted.difference(&present) {
            map.insert(key, enforce, 0).map_err(map_error)?;
        }
        for key in present.difference(&wanted) {
            map.remove(key).map_err(map_error)?;
        }
        maps::advance_policy_generation(&mut self.ebpf)
    }

    /// How many hosts the host table and its overflow map hold (the table's from the kernel's
    /// count of occupied slots, the overflow's by walking its keys).
    pub fn host_count(&self) -> Result<HostCount, DataplaneError> {
        hosts::count(&self.ebpf)
    }

    /// Every tracked host with its statistics (a host in a slot and in the overflow map with
    /// both counts added).
    pub fn hosts(&self) -> Result<Vec<(IpAddr, HostStats)>, DataplaneError> {
        Ok(self
            .host_records()?
            .hosts
            .iter()
            .map(|record| (record.key.address(), record.merged()))
            .collect())
    }

    /// Every tracked host as the kernel holds it: slot holders first, then overflow entries.
    pub fn host_records(&self) -> Result<HostsRead, DataplaneError> {
        hosts::read_loaded(&self.ebpf)
    }
}

/// Loads a reply program and puts it in its program array slot. Builds from before `reject`
/// (a benchmark's baseline) have neither; they never tail-call.
fn load_reply(ebpf: &mut Ebpf, reply: ReplyProgram) -> Result<(), DataplaneError> {
    let (name, array, slot) = match reply {
        ReplyProgram::Xdp(name) => (name, names::XDP_REPLY, 0),
        ReplyProgram::Tc(name, slot) => (name, names::TC_REPLY, slot),
    };
    if ebpf.program(name).is_none() {
        return Ok(());
    }
    let fd = match reply {
        ReplyProgram::Xdp(_) => {
            let program = program_mut::<Xdp>(ebpf, name)?;
            program
                .load()
                .map_err(|source| program_error("loading", name, source))?;
            program.fd()
        }
        ReplyProgram::Tc(..) => {
            let program = program_mut::<SchedClassifier>(ebpf, name)?;
            program
                .load()
                .map_err(|source| program_error("loading", name, source))?;
            program.fd()
        }
    }
    .and_then(|fd| fd.try_clone().map_err(ProgramError::from))
    .map_err(|source| program_error("using", name, source))?;
    let map = ebpf.map_mut(array).ok_or(DataplaneError::Missing {
        kind: "map",
        name: array,
    })?;
    let map_error = |source| DataplaneError::Map { map: array, source };
    aya::maps::ProgramArray::try_from(map)
        .map_err(map_error)?
        .set(slot, &fd, 0)
        .map_err(map_error)
}

/// One `BPF_PROG_TEST_RUN` of `frame`; returns the program's return value.
fn test_run<P>(program: &P, name: &'static str, frame: &[u8]) -> Result<u32, DataplaneError>
where
    for<'a> P: TestRun<Opts<'a> = TestRunOptions<'a>, Result = TestRunResult>,
{
    test_run_out(program, name, frame).map(|(action, _)| action)
}

/// The most a test run's frame may grow to: a page, what the kernel gives an XDP test run.
const TEST_RUN_OUT: usize = 4096;

/// One `BPF_PROG_TEST_RUN` of `frame`; returns the program's return value and the frame as
/// the program left it.
fn test_run_out<P>(
    program: &P,
    name: &'static str,
    frame: &[u8],
) -> Result<(u32, Vec<u8>), DataplaneError>
where
    for<'a> P: TestRun<Opts<'a> = TestRunOptions<'a>, Result = TestRunResult>,
{
    let mut out = vec![0; TEST_RUN_OUT];
    let options = TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ..TestRunOptions::default()
    };
    let result = program
        .test_run(options)
        .map_err(|source| program_error("test-running", name, source))?;
    out.truncate(result.data_size_out as usize);
    Ok((result.return_value, out))
}

/// TCX (kernel >= 6.6) needs no qdisc; the clsact qdisc is for older kernels, and an existing
/// one is fine. aya reports the existing one as a netlink error carrying EEXIST ("Exclusivity
/// flag on, cannot modify"), not as an I/O error.
fn ensure_clsact(interface: &str) -> Result<(), DataplaneError> {
    match tc::qdisc_add_clsact(interface) {
        Err(tc::TcError::IoError(error)) if error.kind() == std::io::ErrorKind::AlreadyExists => {
            Ok(())
        }
        Err(tc::TcError::NetlinkError(error)) if error.raw_os_error() == Some(libc::EEXIST) => {
            Ok(())
        }
        Err(source) => Err(DataplaneError::Qdisc {
            interface: interface.to_owned(),
            source,
        }),
        Ok(()) => Ok(()),
    }
}

fn program_ref<'a, P>(ebpf: &'a Ebpf, name: &'static str) -> Result<&'a P, DataplaneError>
where
    &'a P: TryFrom<&'a aya::programs::Program, Error = ProgramError>,
{
    let program = ebpf.program(name).ok_or(DataplaneError::Missing {
        kind: "program",
        name,
    })?;
    program
        .try_into()
        .map_err(|source| program_error("using", name, source))
}

fn program_mut<'a, P>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut P, DataplaneError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let program = ebpf.program_mut(name).ok_or(DataplaneError::Missing {
        kind: "program",
        name,
    })?;
    program
        .try_into()
        .map_err(|source| program_error("using", name, source))
}

fn program_error(
    action: &'static str,
    program: &'static str,
    source: ProgramError,
) -> DataplaneError {
    DataplaneError::Program {
        action,
        program,
        source,
    }
}

/// Whether attaching failed because the device's driver has no XDP of its own
/// (`dev_xdp_attach`: EOPNOTSUPP for XDP_FLAGS_DRV_MODE without `ndo_bpf`).
fn no_native_xdp(error: &DataplaneError) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = cause {
        if let Some(io) = error.downcast_ref::<std::io::Error>()
            && io.raw_os_error() == Some(libc::EOPNOTSUPP)
        {
            return true;
        }
        cause = error.source();
    }
    false
}

fn attach_error(program: &'static str, interface: &str, source: ProgramError) -> DataplaneError {
    DataplaneError::Attach {
        program,
        interface: interface.to_owned(),
        source,
    }
}
