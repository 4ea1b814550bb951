//! The few `bpf(2)` commands the benchmark issues itself, so that smtpguard, the floor and
//! xdp-filter are all timed through exactly the same `BPF_PROG_TEST_RUN` call.

use std::os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd};

use anyhow::{Context as _, Result};

use smtpguard_tests::bpf::{CALL, EXIT, MOV64_IMM, bpf, insn, load_xdp};
pub use smtpguard_tests::bpf::{XDP_DROP, XDP_PASS};

const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
/// `BPF_F_TEST_XDP_LIVE_FRAMES`: XDP_TX and XDP_REDIRECT really transmit the frames.
pub const TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;

const HELPER_REDIRECT: i32 = 23; // bpf_redirect(ifindex, flags)

/// `r0 = XDP_PASS; exit`: the least an XDP program can cost (the floor).
pub fn load_floor() -> Result<OwnedFd> {
    smtpguard_tests::bpf::load_constant("bench_floor", XDP_PASS)
}

/// `return bpf_redirect(ifindex, 0)`: sends every frame out of `ifindex` (the flood's sender,
/// run with live frames).
pub fn load_redirect(ifindex: u32) -> Result<OwnedFd> {
    load_xdp(
        "bench_redirect",
        &[
            insn(MOV64_IMM, 1, 0, 0, ifindex as i32),
            insn(MOV64_IMM, 2, 0, 0, 0),
            insn(CALL, 0, 0, 0, HELPER_REDIRECT),
            insn(EXIT, 0, 0, 0, 0),
        ],
    )
}

#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// What one `BPF_PROG_TEST_RUN` reported.
#[derive(Clone, Copy, Debug)]
pub struct TestRun {
    /// The program's return value (of the last run).
    pub action: u32,
    /// The kernel's mean time per run, in nanoseconds (0 in live-frames mode).
    pub ns: u32,
}

/// Runs `frame` through the XDP program `repeat` times in one call; `live` sends the frames
/// for real (`BPF_F_TEST_XDP_LIVE_FRAMES`, `batch` frames per batch).
pub fn test_run(
    program: BorrowedFd<'_>,
    frame: &[u8],
    repeat: u32,
    live: Option<u32>,
) -> Result<TestRun> {
    let mut attr = TestRunAttr {
        prog_fd: program.as_raw_fd() as u32,
        data_size_in: frame.len() as u32,
        data_in: frame.as_ptr() as u64,
        repeat,
        ..TestRunAttr::default()
    };
    if let Some(batch) = live {
        attr.flags = TEST_XDP_LIVE_FRAMES;
        attr.batch_size = batch;
    }
    bpf(BPF_PROG_TEST_RUN, &mut attr).context("BPF_PROG_TEST_RUN")?;
    Ok(TestRun {
        action: attr.retval,
        ns: attr.duration,
    })
}

/// `struct xdp_md` as `BPF_PROG_TEST_RUN` takes it for a context.
#[repr(C)]
#[derive(Default)]
struct XdpMd {
    data: u32,
    data_end: u32,
    data_meta: u32,
    ingress_ifindex: u32,
    rx_queue_index: u32,
    egress_ifindex: u32,
}

/// Runs `frame` through the XDP program `repeat` times with live frames (batches of 64) as if
/// it arrived on interface `ifindex` of the calling thread's namespace, so that `XDP_TX`
/// really sends it back out there; returns the CPU time the calling thread spent in the call
/// (the kernel reports no time in this mode; CPU time rather than the wall clock, so that
/// other work on a busy machine is not counted). Each repetition starts from the frame as
/// given.
pub fn test_run_live_on(
    program: BorrowedFd<'_>,
    frame: &[u8],
    repeat: u32,
    ifindex: u32,
) -> Result<std::time::Duration> {
    let mut context = XdpMd {
        data_end: frame.len() as u32,
        ingress_ifindex: ifindex,
        ..XdpMd::default()
    };
    let mut attr = TestRunAttr {
        prog_fd: program.as_raw_fd() as u32,
        data_size_in: frame.len() as u32,
        data_in: frame.as_ptr() as u64,
        repeat,
        ctx_size_in: size_of::<XdpMd>() as u32,
        ctx_in: (&raw mut context) as u64,
        flags: TEST_XDP_LIVE_FRAMES,
        batch_size: 64,
        ..TestRunAttr::default()
    };
    let started = thread_cpu_time()?;
    bpf(BPF_PROG_TEST_RUN, &mut attr).context("BPF_PROG_TEST_RUN with live frames")?;
    Ok(thread_cpu_time()?.saturating_sub(started))
}

/// The calling thread's CPU time so far (`CLOCK_THREAD_CPUTIME_ID`).
fn thread_cpu_time() -> Result<std::time::Duration> {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec for the call to write.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) } != 0 {
        return Err(std::io::Error::last_os_error()).context("clock_gettime");
    }
    Ok(std::time::Duration::new(
        now.tv_sec as u64,
        now.tv_nsec as u32,
    ))
}

#[repr(C)]
#[derive(Default)]
struct GetFdByIdAttr {
    id: u32,
    next_id: u32,
    open_flags: u32,
}

/// A new fd for a loaded program, by its id (as `bpftool prog show` lists it).
pub fn program_by_id(id: u32) -> Result<OwnedFd> {
    let mut attr = GetFdByIdAttr {
        id,
        ..GetFdByIdAttr::default()
    };
    let fd = bpf(BPF_PROG_GET_FD_BY_ID, &mut attr)
        .with_context(|| format!("BPF_PROG_GET_FD_BY_ID {id}"))?;
    // SAFETY: the kernel returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[repr(C)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// Sizes the kernel reports for a loaded program.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct ProgramSize {
    /// Instructions the verifier processed (all paths explored).
    pub verified_insns: u32,
    /// Instructions after the kernel's rewrites.
    pub xlated_insns: u32,
    pub jited_bytes: u32,
}

/// `BPF_OBJ_GET_INFO_BY_FD` for a program: the sizes in `struct bpf_prog_info`.
pub fn program_size(program: BorrowedFd<'_>) -> Result<ProgramSize> {
    // struct bpf_prog_info is 232 bytes today; the rest stays zero, as the kernel requires.
    let mut info = [0u8; 256];
    let mut attr = InfoAttr {
        bpf_fd: program.as_raw_fd() as u32,
        info_len: info.len() as u32,
        info: info.as_mut_ptr() as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).context("BPF_OBJ_GET_INFO_BY_FD")?;
    let field = |offset: usize| {
        u32::from_ne_bytes(info[offset..offset + 4].try_into().expect("four bytes"))
    };
    Ok(ProgramSize {
        jited_bytes: field(16),
        xlated_insns: field(20) / 8,
        verified_insns: field(216),
    })
}
