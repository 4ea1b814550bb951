//! Pinned state: the maps and the attachment links live on bpffs, so enforcement outlasts the
//! agent process. A restart, an upgrade or a crash reuses the maps (per-host statistics
//! survive) and swaps the new program into the existing links atomically; port 25 stays
//! blocked throughout.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use aya::maps::{MapInfo, MapType};
use aya::programs::{
    ProgramError, SchedClassifier, Xdp, XdpMode,
    links::{FdLink, LinkError, PinnedLink},
    tc::{SchedClassifierLink, SchedClassifierLinkId, TcAttachType},
    xdp::{XdpLink, XdpLinkId},
};
use aya_obj::generated::bpf_map_type;
use nix::{
    errno::Errno,
    fcntl::{Flock, FlockArg},
    mount::{MsFlags, mount},
    sys::statfs::{BPF_FS_MAGIC, statfs},
    unistd::{Gid, Uid, chown},
};
use smtpguard_common::maps as names;

use super::{
    DataplaneError, TC_L3_PROGRAM, TC_PROGRAM, XDP_PROGRAM, attach_error,
    interfaces::{ARPHRD_ETHER, link_type_name},
    links, program_mut,
};

/// Where the kernel objects are pinned, below the configured pin folder.
#[derive(Clone, Debug)]
pub struct PinLayout {
    root: PathBuf,
}

/// The map names the loader pins, all of them: the program's whole state. The reply
/// programs' arrays are pinned too (with the scratch entry through which an entry point hands
/// its reply program the action), so that `reject` keeps answering while no agent runs: the
/// kernel empties a program array once no process and no pin holds it.
pub const PINNED_MAPS: [&str; 20] = [
    names::SOURCES_V4,
    names::SOURCES_V6,
    names::SUBSCRIBER_SPACE_V4,
    names::SUBSCRIBER_SPACE_V6,
    names::RELAYS_V4,
    names::RELAYS_V6,
    names::RELAY_FILTER,
    names::ENFORCEMENT,
    names::COUNTERS,
    names::INTERFACE_SLOTS,
    names::INTERFACE_COUNTERS,
    names::HOST_TABLE,
    names::HOST_STATS,
    names::UNRECORDED_HOSTS,
    names::SKETCH_EPOCH,
    names::POLICY_GENERATION,
    names::HOST_OVERRIDES,
    names::XDP_REPLY,
    names::TC_REPLY,
    names::REPLY_ACTION,
];

/// Maps of earlier versions, whose contents the agent now writes elsewhere (the subscriber
/// and exemption tries became the source tries). An upgrade unpins them: the old program
/// keeps its maps until its links run the new one, and the pin folder then holds only what
/// the program uses.
const RETIRED_MAPS: [&str; 4] = [
    "SUBSCRIBERS_V4",
    "SUBSCRIBERS_V6",
    "EXEMPTIONS_V4",
    "EXEMPTIONS_V6",
];

/// A map's shape as the kernel checks it against the program: its type, key and value size.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MapShape {
    pub map_type: Option<MapType>,
    pub key_size: u32,
    pub value_size: u32,
}

impl std::fmt::Display for MapShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.map_type {
            Some(map_type) => write!(f, "{map_type:?}")?,
            None => write!(f, "unknown type")?,
        }
        write!(f, ", key {} B, value {} B", self.key_size, self.value_size)
    }
}

/// A pinned map of an earlier version whose shape this program's declaration no longer has.
#[derive(Clone, Debug, PartialEq)]
pub struct ReplacedPin {
    pub name: &'static str,
    pub found: MapShape,
    pub expected: MapShape,
}

/// Unpins every pinned map whose shape differs from the program's declaration (an upgrade
/// that changed a key or value layout). Reusing it would fail verification, or worse, let
/// the program misread it; the loader creates it afresh instead. The old program keeps its
/// maps until its links run the new one, so enforcement has no gap: the policy maps are
/// refilled before that, and a replaced statistics map starts over (the store keeps what
/// was snapshotted). Capacities may differ: a pinned map keeps the size it was made with.
pub(super) fn unpin_incompatible(
    layout: &PinLayout,
    program: &[u8],
) -> Result<Vec<ReplacedPin>, DataplaneError> {
    let object = aya_obj::Object::parse(program)
        .map_err(|error| DataplaneError::Object(error.to_string()))?;
    let mut replaced = Vec::new();
    for name in PINNED_MAPS {
        let path = layout.map(name);
        if !path.exists() {
            continue;
        }
        let declared = object
            .maps
            .get(name)
            .ok_or(DataplaneError::Missing { kind: "map", name })?;
        let expected = MapShape {
            map_type: bpf_map_type::try_from(declared.map_type())
                .ok()
                .and_then(|t| MapType::try_from(t).ok()),
            key_size: declared.key_size(),
            value_size: declared.value_size(),
        };
        let info = MapInfo::from_pin(&path).map_err(|error| DataplaneError::Bpffs {
            path: path.clone(),
            problem: format!("reading the pinned map {name}: {error}"),
        })?;
        let found = MapShape {
            map_type: info.map_type().ok(),
            key_size: info.key_size(),
            value_size: info.value_size(),
        };
        if found == expected {
            continue;
        }
        fs::remove_file(&path).map_err(|error| DataplaneError::Bpffs {
            path: path.clone(),
            problem: format!("cannot unpin the map {name} of an earlier version: {error}"),
        })?;
        replaced.push(ReplacedPin {
            name,
            found,
            expected,
        });
    }
    Ok(replaced)
}

/// How the program sits on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attach {
    Xdp(XdpMode),
    /// The Ethernet TC entry point at ingress.
    Tc,
    /// The L3 TC entry point at ingress, for devices without an Ethernet header. Never
    /// configured: chosen by [`for_link_type`](Self::for_link_type).
    TcL3,
}

/// Each kind's name in status and metrics, and the prefix of its link pins (`KIND-IFNAME`):
/// a prefix holds no `-`, so the first `-` of a pin's name ends it whatever the interface
/// is called.
const LINK_KINDS: [(&str, &str); 3] = [("xdp", "xdp"), ("tc", "tc"), ("tc-l3", "tcl3")];

impl Attach {
    /// The kind's name in status and metrics: "xdp", "tc" or "tc-l3".
    pub fn kind(self) -> &'static str {
        match self {
            Attach::Xdp(_) => "xdp",
            Attach::Tc => "tc",
            Attach::TcL3 => "tc-l3",
        }
    }

    /// The entry point this attachment runs.
    pub fn program(self) -> &'static str {
        match self {
            Attach::Xdp(_) => XDP_PROGRAM,
            Attach::Tc => TC_PROGRAM,
            Attach::TcL3 => TC_L3_PROGRAM,
        }
    }

    /// What to attach to a device of `link_type` (ARPHRD_*) when `self` is asked for: an
    /// Ethernet device gets what was asked (TC for TC L3), any other the L3 TC entry point.
    /// Generic XDP on an L3 device would hand the XDP program the IP header, which it reads
    /// as an Ethernet header.
    pub fn for_link_type(self, link_type: u16) -> Attach {
        match (link_type == ARPHRD_ETHER, self) {
            (false, _) => Attach::TcL3,
            (true, Attach::TcL3) => Attach::Tc,
            (true, asked) => asked,
        }
    }
}

/// What [`Dataplane::attach_pinned`](super::Dataplane::attach_pinned) did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attached {
    pub outcome: AttachOutcome,
    /// What runs on the interface now.
    pub attach: Attach,
    /// What was asked for (the configuration's attach kind).
    pub requested: Attach,
    /// The interface's link type (ARPHRD_*).
    pub link_type: u16,
}

impl Attached {
    /// Why the attachment differs from what was asked, or `None` when it does not.
    pub fn note(&self) -> Option<String> {
        let why = match self.attach {
            _ if self.attach == self.requested => return None,
            Attach::TcL3 => format!(
                "no Ethernet header (link type {})",
                link_type_name(self.link_type)
            ),
            _ => "its driver has no native XDP".to_owned(),
        };
        Some(format!(
            "{why}: {} at TC ingress instead of {}",
            self.attach.program(),
            self.requested.kind()
        ))
    }
}

/// A pinned attachment found on bpffs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinnedAttachment {
    pub kind: String,
    pub interface: String,
}

/// What attaching did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachOutcome {
    /// A new link was created and pinned.
    Created,
    /// The pinned link now runs this program (atomic replacement, no gap).
    Updated,
}

impl std::fmt::Display for AttachOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AttachOutcome::Created => "new link",
            AttachOutcome::Updated => "pinned link updated in place",
        })
    }
}

impl PinLayout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.root.join("maps").join(name)
    }

    fn links(&self) -> PathBuf {
        self.root.join("links")
    }

    /// The pin of the link of `kind` (a name of [`Attach::kind`]) on `interface`.
    pub(super) fn link(&self, kind: &str, interface: &str) -> PathBuf {
        let prefix = LINK_KINDS
            .iter()
            .find(|(name, _)| *name == kind)
            .map_or(kind, |(_, prefix)| prefix);
        self.links().join(format!("{prefix}-{interface}"))
    }

    /// Makes sure the pin folders exist on a bpffs, mounting bpffs on /sys/fs/bpf when the
    /// folders are below it and it is not mounted (it is not at boot on many systems).
    pub fn prepare(&self) -> Result<(), DataplaneError> {
        if !on_bpffs(&self.root) {
            let default_mount = Path::new("/sys/fs/bpf");
            if self.root.starts_with(default_mount) && !on_bpffs(default_mount) {
                mount(
                    Some("bpf"),
                    default_mount,
                    Some("bpf"),
                    MsFlags::empty(),
                    None::<&str>,
                )
                .map_err(|errno| DataplaneError::Bpffs {
                    path: default_mount.to_owned(),
                    problem: format!("mounting bpffs failed: {errno}"),
                })?;
            }
        }
        for dir in [self.root.join("maps"), self.links()] {
            fs::create_dir_all(&dir).map_err(|error| DataplaneError::Bpffs {
                path: dir.clone(),
                problem: format!("cannot create the pin folder: {error}"),
            })?;
        }
        if !on_bpffs(&self.root) {
            return Err(DataplaneError::Bpffs {
                path: self.root.clone(),
                problem: "not on a BPF file system; mount one there (mount -t bpf bpf DIR) or \
                          choose a pin folder below /sys/fs/bpf"
                    .to_owned(),
            });
        }
        for name in RETIRED_MAPS {
            let path = self.map(name);
            match fs::remove_file(&path) {
                Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                    return Err(DataplaneError::Bpffs {
                        path,
                        problem: format!("cannot unpin a map of an earlier version: {error}"),
                    });
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Prepares the pin folder for an agent that runs as `uid`:`gid` with only CAP_BPF,
    /// CAP_NET_ADMIN and CAP_PERFMON (the systemd unit's ExecStartPre, as root): the folders
    /// exist on a bpffs ([`prepare`](Self::prepare)), every bpffs folder above them lets
    /// others pass through, and the pin folder with everything pinned in it (by an agent that
    /// ran as root before) belongs to the user.
    ///
    /// systemd mounts bpffs with mode 0700, where only root could pass; search permission
    /// (o+x) lets a process reach a path it knows, never list the folder or touch another
    /// program's pins (those keep their own 0600 modes).
    pub fn hand_over(&self, uid: Uid, gid: Gid) -> Result<(), DataplaneError> {
        self.prepare()?;
        let mut above = self.root.parent();
        while let Some(folder) = above.filter(|folder| on_bpffs(folder)) {
            let mode = fs::metadata(folder)
                .map_err(|error| self.io_error(folder, error))?
                .permissions()
                .mode();
            if mode & 0o001 == 0 {
                fs::set_permissions(folder, fs::Permissions::from_mode(mode | 0o001))
                    .map_err(|error| self.io_error(folder, error))?;
            }
            above = folder.parent();
        }
        self.chown_tree(&self.root, uid, gid)
    }

    fn chown_tree(&self, path: &Path, uid: Uid, gid: Gid) -> Result<(), DataplaneError> {
        chown(path, Some(uid), Some(gid)).map_err(|errno| DataplaneError::Bpffs {
            path: path.to_owned(),
            problem: format!("cannot hand it to {uid}:{gid}: {errno}"),
        })?;
        if path.is_dir() {
            for entry in fs::read_dir(path).map_err(|error| self.io_error(path, error))? {
                let entry = entry.map_err(|error| self.io_error(path, error))?;
                self.chown_tree(&entry.path(), uid, gid)?;
            }
        }
        Ok(())
    }

    /// The attachments pinned now.
    pub fn attachments(&self) -> Result<Vec<PinnedAttachment>, DataplaneError> {
        let entries = match fs::read_dir(self.links()) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(self.io_error(&self.links(), error)),
        };
        let mut attachments = Vec::new();
        for entry in entries {
            let name = entry
                .map_err(|error| self.io_error(&self.links(), error))?
                .file_name();
            if let Some((prefix, interface)) = name.to_string_lossy().split_once('-') {
                let kind = LINK_KINDS
                    .iter()
                    .find(|(_, known)| *known == prefix)
                    .map_or(prefix, |(name, _)| name);
                attachments.push(PinnedAttachment {
                    kind: kind.to_owned(),
                    interface: interface.to_owned(),
                });
            }
        }
        attachments.sort_by(|a, b| (&a.interface, &a.kind).cmp(&(&b.interface, &b.kind)));
        Ok(attachments)
    }

    /// Removes a pinned attachment: the link goes with its last reference, and the interface
    /// no longer runs the program.
    pub fn detach(&self, attachment: &PinnedAttachment) -> Result<(), DataplaneError> {
        let path = self.link(&attachment.kind, &attachment.interface);
        let link = PinnedLink::from_pin(&path).map_err(|source| DataplaneError::Link {
            path: path.clone(),
            source: Box::new(source),
        })?;
        // Dropping the returned fd releases the last reference: the kernel detaches the link.
        link.unpin().map_err(|error| self.io_error(&path, error))?;
        Ok(())
    }

    /// Takes the pin folder for this process: one agent per pin folder, whatever its state
    /// folder. The lock is an flock on the folder itself (bpffs supports it); the kernel
    /// releases it when the process ends, kill -9 included. A refusal names the owner's pid,
    /// found in /proc/locks.
    pub fn lock(&self) -> Result<PinLock, DataplaneError> {
        let folder =
            fs::File::open(&self.root).map_err(|error| self.io_error(&self.root, error))?;
        match Flock::lock(folder, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(PinLock { lock }),
            Err((_, Errno::EWOULDBLOCK)) => Err(DataplaneError::PinsOwned {
                path: self.root.clone(),
                owner: lock_owner(&self.root)
                    .map_or_else(|| "unknown".to_owned(), |pid| pid.to_string()),
            }),
            Err((_, errno)) => Err(self.io_error(&self.root, errno.into())),
        }
    }

    fn io_error(&self, path: &Path, error: std::io::Error) -> DataplaneError {
        DataplaneError::Bpffs {
            path: path.to_owned(),
            problem: error.to_string(),
        }
    }
}

/// The hold on a pin folder; released on drop.
#[derive(Debug)]
pub struct PinLock {
    lock: Flock<fs::File>,
}

impl PinLock {
    /// Whether the locked folder is still the one at `layout`'s root: a folder removed by hand
    /// and made again is a new folder, without the lock.
    pub fn is_current(&self, layout: &PinLayout) -> bool {
        use std::os::unix::fs::MetadataExt as _;
        match (self.lock.metadata(), fs::metadata(layout.root())) {
            (Ok(held), Ok(now)) => (held.dev(), held.ino()) == (now.dev(), now.ino()),
            _ => false,
        }
    }
}

/// The pid holding an flock on `path`, from /proc/locks ("1: FLOCK ADVISORY WRITE <pid>
/// <major>:<minor>:<inode> 0 EOF", device numbers in hex).
fn lock_owner(path: &Path) -> Option<u32> {
    use std::os::unix::fs::MetadataExt as _;
    let metadata = fs::metadata(path).ok()?;
    let device = metadata.dev();
    let id = format!(
        "{:02x}:{:02x}:{}",
        nix::sys::stat::major(device),
        nix::sys::stat::minor(device),
        metadata.ino()
    );
    let locks = fs::read_to_string("/proc/locks").ok()?;
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.get(1) == Some(&"FLOCK") && fields.get(5) == Some(&id.as_str()))
            .then(|| fields.get(4)?.parse().ok())
            .flatten()
    })
}

fn on_bpffs(path: &Path) -> bool {
    statfs(path).is_ok_and(|stat| stat.filesystem_type() == BPF_FS_MAGIC)
}

/// A program type that attaches through a bpf link: XDP, or TC (TCX links).
trait LinkedProgram {
    type Id;
    fn attach_new(&mut self, interface: &str, attach: Attach) -> Result<Self::Id, ProgramError>;
    fn attach_existing(&mut self, link: FdLink) -> Result<Self::Id, AttachError>;
    fn take_fd_link(&mut self, id: Self::Id) -> Result<FdLink, AttachError>;
}

/// Why attaching through a link failed, before the interface name is added.
enum AttachError {
    Program(ProgramError),
    Link(LinkError),
}

impl From<ProgramError> for AttachError {
    fn from(error: ProgramError) -> Self {
        AttachError::Program(error)
    }
}

impl From<LinkError> for AttachError {
    fn from(error: LinkError) -> Self {
        AttachError::Link(error)
    }
}

impl LinkedProgram for Xdp {
    type Id = XdpLinkId;

    fn attach_new(&mut self, interface: &str, attach: Attach) -> Result<XdpLinkId, ProgramError> {
        let mode = match attach {
            Attach::Xdp(mode) => mode,
            Attach::Tc | Attach::TcL3 => XdpMode::default(),
        };
        self.attach(interface, mode)
    }

    fn attach_existing(&mut self, link: FdLink) -> Result<XdpLinkId, AttachError> {
        Ok(self.attach_to_link(XdpLink::try_from(link)?)?)
    }

    fn take_fd_link(&mut self, id: XdpLinkId) -> Result<FdLink, AttachError> {
        Ok(FdLink::try_from(self.take_link(id)?)?)
    }
}

impl LinkedProgram for SchedClassifier {
    type Id = SchedClassifierLinkId;

    fn attach_new(
        &mut self,
        interface: &str,
        _attach: Attach,
    ) -> Result<SchedClassifierLinkId, ProgramError> {
        self.attach(interface, TcAttachType::Ingress)
    }

    fn attach_existing(&mut self, link: FdLink) -> Result<SchedClassifierLinkId, AttachError> {
        Ok(self.attach_to_link(SchedClassifierLink::try_from(link)?)?)
    }

    fn take_fd_link(&mut self, id: SchedClassifierLinkId) -> Result<FdLink, AttachError> {
        Ok(FdLink::try_from(self.take_link(id)?)?)
    }
}

/// Attaches the loaded program to `interface` through a pinned link: the existing link is
/// updated in place when there is one, otherwise a new link is created and pinned. Links of
/// the other kinds on the same interface are removed only after the new one is in place.
pub(super) fn attach(
    ebpf: &mut aya::Ebpf,
    layout: &PinLayout,
    interface: &str,
    attach: Attach,
    ifindex: u32,
) -> Result<AttachOutcome, DataplaneError> {
    let path = layout.link(attach.kind(), interface);
    remove_stale_link(&path, ifindex)?;
    let program = attach.program();
    let outcome = match attach {
        Attach::Xdp(_) => attach_through(
            program_mut::<Xdp>(ebpf, program)?,
            program,
            &path,
            interface,
            attach,
        )?,
        Attach::Tc | Attach::TcL3 => attach_through(
            program_mut::<SchedClassifier>(ebpf, program)?,
            program,
            &path,
            interface,
            attach,
        )?,
    };
    for (kind, _) in LINK_KINDS {
        if kind != attach.kind() && layout.link(kind, interface).exists() {
            layout.detach(&PinnedAttachment {
                kind: kind.to_owned(),
                interface: interface.to_owned(),
            })?;
        }
    }
    Ok(outcome)
}

fn attach_through<P: LinkedProgram>(
    program: &mut P,
    name: &'static str,
    path: &Path,
    interface: &str,
    attach: Attach,
) -> Result<AttachOutcome, DataplaneError> {
    let failed = |error: AttachError| match error {
        AttachError::Program(source) => attach_error(name, interface, source),
        AttachError::Link(source) => DataplaneError::Link {
            path: path.to_owned(),
            source: Box::new(source),
        },
    };
    let (outcome, id) = match existing_link(path)? {
        Some(link) => (
            AttachOutcome::Updated,
            program.attach_existing(link).map_err(failed)?,
        ),
        None => (
            AttachOutcome::Created,
            program
                .attach_new(interface, attach)
                .map_err(|source| attach_error(name, interface, source))?,
        ),
    };
    let link = program.take_fd_link(id).map_err(failed)?;
    // An updated link is pinned already (the pin names the link, which now runs the new
    // program), so its fd is simply closed; a new one is pinned.
    if outcome == AttachOutcome::Created {
        link.pin(path).map_err(|source| DataplaneError::Pin {
            program: name,
            interface: interface.to_owned(),
            path: path.to_owned(),
            source: Box::new(source),
        })?;
    }
    Ok(outcome)
}

/// A link pinned for an interface that was deleted (and perhaps created again under the same
/// name) is bound to no interface or another one: updating it would enforce nothing, so its
/// pin goes and a new link is made.
fn remove_stale_link(path: &Path, ifindex: u32) -> Result<(), DataplaneError> {
    let problem = |error: std::io::Error| DataplaneError::Bpffs {
        path: path.to_owned(),
        problem: error.to_string(),
    };
    if !path.exists() {
        return Ok(());
    }
    let link = links::obj_get(path).map_err(problem)?;
    if links::link_ifindex(&link).map_err(problem)? != ifindex {
        fs::remove_file(path).map_err(problem)?;
    }
    Ok(())
}

fn existing_link(path: &Path) -> Result<Option<FdLink>, DataplaneError> {
    if !path.exists() {
        return Ok(None);
    }
    let pinned = PinnedLink::from_pin(path).map_err(|source| DataplaneError::Link {
        path: path.to_owned(),
        source: Box::new(source),
    })?;
    Ok(Some(pinned.into()))
}
