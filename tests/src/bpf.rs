//! Tiny XDP programs written as raw instructions and loaded with `bpf(2)` directly, for the
//! lab and the benchmark: no object file, no loader, nothing of smtpguard's.

use std::{
    io,
    mem::size_of,
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
};

use anyhow::{Context as _, Result, bail};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_XDP: u32 = 6;
/// `enum bpf_attach_type`'s `BPF_XDP`.
const BPF_XDP: u32 = 37;

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

/// Issues `bpf(cmd, attr)`. `T` must be a `#[repr(C)]` prefix of `union bpf_attr` for `cmd`,
/// zero-padded, whose pointers refer to buffers that outlive the call.
pub fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: as the caller promises above.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            size_of::<T>() as libc::c_uint,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// One eBPF instruction: opcode, registers, offset, immediate.
pub fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    u64::from(code)
        | u64::from(dst & 0xf) << 8
        | u64::from(src & 0xf) << 12
        | u64::from(off as u16) << 16
        | u64::from(imm as u32) << 32
}

pub const MOV64_IMM: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
pub const CALL: u8 = 0x85; // BPF_JMP | BPF_CALL
pub const EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT

/// `r0 = verdict; exit`: an XDP program that returns `verdict` for every frame.
pub fn load_constant(name: &str, verdict: u32) -> Result<OwnedFd> {
    load_xdp(
        name,
        &[
            insn(MOV64_IMM, 0, 0, 0, verdict as i32),
            insn(EXIT, 0, 0, 0, 0),
        ],
    )
}

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// Loads `insns` as an XDP program called `name` (at most 15 bytes); the verifier's log
/// is in the error.
pub fn load_xdp(name: &str, insns: &[u64]) -> Result<OwnedFd> {
    let license = c"GPL";
    let mut log = vec![0u8; 4096];
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_XDP,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        ..ProgLoadAttr::default()
    };
    attr.prog_name[..name.len()].copy_from_slice(name.as_bytes());
    match bpf(BPF_PROG_LOAD, &mut attr) {
        // SAFETY: the kernel returned a new file descriptor that nothing else owns.
        Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) }),
        Err(error) => {
            let log = String::from_utf8_lossy(&log);
            bail!(
                "loading {name}: {error}; verifier: {}",
                log.trim_end_matches('\0').trim()
            )
        }
    }
}

#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
}

/// Attaches the XDP program on interface `ifindex` of the calling thread's namespace through
/// a BPF link; the program stays attached while the returned link lives (and the interface
/// exists).
pub fn attach_xdp(program: BorrowedFd<'_>, ifindex: u32) -> Result<OwnedFd> {
    let mut attr = LinkCreateAttr {
        prog_fd: program.as_raw_fd() as u32,
        target_ifindex: ifindex,
        attach_type: BPF_XDP,
        flags: 0,
    };
    let fd = bpf(BPF_LINK_CREATE, &mut attr).with_context(|| {
        format!("attaching an XDP program to ifindex {ifindex} (BPF_LINK_CREATE)")
    })?;
    // SAFETY: the kernel returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}
