//! The agent's own hold on its pinned links. A pinned link lives as long as its pin or any
//! open fd: holding an fd of each link keeps enforcement in place when someone removes the
//! pin folder by hand, and lets the agent pin the very same link again. The fd also tells
//! which interface the link is bound to; a link whose interface was deleted is bound to none.
//!
//! aya offers no fd of a pinned link, so the two bpf object commands are made here.

use std::{
    collections::BTreeMap,
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Path, PathBuf},
};

use super::{DataplaneError, PinLayout};

/// `BPF_OBJ_PIN` and `BPF_OBJ_GET` from linux/bpf.h.
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;

/// The `bpf_attr` member of the two object commands (`pathname`, `bpf_fd`, `file_flags`,
/// `path_fd`), with room to spare: the kernel wants the unused rest zeroed.
#[repr(C)]
#[derive(Default)]
struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _rest: [u32; 3],
}

fn bpf_obj(command: libc::c_long, path: &Path, fd: u32) -> io::Result<libc::c_long> {
    let path = CString::new(path.as_os_str().as_bytes())
        .map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, error))?;
    let mut attr = ObjAttr {
        pathname: path.as_ptr() as u64,
        bpf_fd: fd,
        ..ObjAttr::default()
    };
    // `path` outlives the call.
    super::sys::bpf(command, &mut attr)
}

/// Opens the object pinned at `path`.
pub(super) fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let fd = bpf_obj(BPF_OBJ_GET, path, 0)?;
    // SAFETY: BPF_OBJ_GET returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn obj_pin(fd: &OwnedFd, path: &Path) -> io::Result<()> {
    bpf_obj(BPF_OBJ_PIN, path, fd.as_raw_fd() as u32).map(drop)
}

/// The ifindex an XDP or TCX link is bound to, from the kernel's fdinfo; 0 once its
/// interface is gone (the link stays, bound to nothing).
pub(super) fn link_ifindex(fd: &OwnedFd) -> io::Result<u32> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))?;
    info.lines()
        .find_map(|line| line.strip_prefix("ifindex:"))
        .and_then(|value| value.trim().parse().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "the link's fdinfo names no ifindex",
            )
        })
}

/// One fd per attached interface, of the link pinned for it.
#[derive(Debug, Default)]
pub struct HeldLinks {
    links: BTreeMap<String, HeldLink>,
}

#[derive(Debug)]
struct HeldLink {
    kind: &'static str,
    fd: OwnedFd,
}

impl HeldLinks {
    /// Holds the link pinned for `interface` (replacing any link held for it before).
    pub fn hold(
        &mut self,
        layout: &PinLayout,
        interface: &str,
        kind: &'static str,
    ) -> Result<(), DataplaneError> {
        let path = layout.link(kind, interface);
        let fd = obj_get(&path).map_err(|error| bpffs_error(&path, error))?;
        self.links
            .insert(interface.to_owned(), HeldLink { kind, fd });
        Ok(())
    }

    /// Lets go of the link of `interface`, so removing its pin detaches it.
    pub fn release(&mut self, interface: &str) {
        self.links.remove(interface);
    }

    /// The ifindex the link of `interface` is bound to; `None` when no link is held or its
    /// interface is gone.
    pub fn bound_ifindex(&self, interface: &str) -> Option<u32> {
        let link = self.links.get(interface)?;
        link_ifindex(&link.fd).ok().filter(|&index| index != 0)
    }

    /// Pins every held link whose pin is missing again; returns the pins made.
    pub fn restore_pins(&self, layout: &PinLayout) -> Result<Vec<PathBuf>, DataplaneError> {
        let mut restored = Vec::new();
        for (interface, link) in &self.links {
            let path = layout.link(link.kind, interface);
            if !path.exists() {
                obj_pin(&link.fd, &path).map_err(|error| bpffs_error(&path, error))?;
                restored.push(path);
            }
        }
        Ok(restored)
    }
}

fn bpffs_error(path: &Path, error: io::Error) -> DataplaneError {
    DataplaneError::Bpffs {
        path: path.to_owned(),
        problem: error.to_string(),
    }
}
