//! The few `bpf(2)` commands the agent issues itself, where aya 0.14 has no API: batch reads
//! of a map (`batch.rs`) and the object commands that keep hold of pinned links (`links.rs`).

use std::io;

/// Runs `bpf(command, attr, sizeof attr)`; the kernel may write results back into `attr`.
pub(super) fn bpf<T>(command: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: the callers pass the `#[repr(C)]` member of `union bpf_attr` for `command`,
    // zero-padded, whose pointers refer to buffers that outlive the call.
    let result = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command,
            std::ptr::from_mut(attr),
            size_of::<T>() as libc::c_uint,
        )
    };
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(result)
    }
}
