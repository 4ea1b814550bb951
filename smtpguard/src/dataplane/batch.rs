//! Whole-map reads with `BPF_MAP_LOOKUP_BATCH`: a snapshot reads a million hosts, and one
//! syscall per few thousand entries instead of two per entry (next key, then lookup) takes
//! the kernel read from seconds to a fraction of one (aya 0.14 has no batch API; the command
//! goes through `sys::bpf`).

use std::{
    io,
    mem::MaybeUninit,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::{Pod, maps::MapData};

use super::DataplaneError;

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// Entries per call. A hash map hands out whole buckets, and a bucket larger than this would
/// fail with ENOSPC; buckets hold a handful of entries.
const BATCH_ENTRIES: usize = 4096;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Hands every entry of a (non-per-CPU) hash map or array to `visit`, a batch at a time, so
/// a caller keeping few of them (the host table's occupied slots) never holds them all.
/// Entries added or removed while it runs may or may not be seen, as with a key walk.
pub(super) fn for_each<K: Pod, V: Pod>(
    map: &MapData,
    name: &'static str,
    mut visit: impl FnMut(K, V),
) -> Result<(), DataplaneError> {
    let error = |source: io::Error| DataplaneError::Batch { map: name, source };
    let fd = u32::try_from(map.fd().as_fd().as_raw_fd())
        .map_err(|_| error(io::Error::from_raw_os_error(libc::EBADF)))?;
    let mut keys = vec![MaybeUninit::<K>::uninit(); BATCH_ENTRIES];
    let mut values = vec![MaybeUninit::<V>::uninit(); BATCH_ENTRIES];
    // Hash maps use a bucket index (u32) as the position token, arrays the next index (u32).
    // The kernel reads the position in before it writes the next one out, so one variable
    // serves both.
    let mut position = 0u32;
    // The first call starts at the beginning (no position).
    let mut in_batch = 0;
    loop {
        let mut attr = BatchAttr {
            in_batch,
            out_batch: (&raw mut position) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: BATCH_ENTRIES as u32,
            map_fd: fd,
            ..BatchAttr::default()
        };
        // The buffers hold `count` keys and values and outlive the call, as does the
        // position token.
        let done = match super::sys::bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) {
            Ok(_) => false,
            Err(failure) if failure.raw_os_error() == Some(libc::ENOENT) => true,
            Err(failure) => return Err(error(failure)),
        };
        let filled = (attr.count as usize).min(BATCH_ENTRIES);
        for (key, value) in keys[..filled].iter().zip(&values[..filled]) {
            // SAFETY: the kernel wrote `count` whole keys and values.
            visit(unsafe { key.assume_init_read() }, unsafe {
                value.assume_init_read()
            });
        }
        if done {
            return Ok(());
        }
        in_batch = (&raw const position) as u64;
    }
}
