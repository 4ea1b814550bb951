//! The enforcement entry read and written as bytes, so an older program whose entry is a
//! shorter prefix of today's (a benchmark's baseline build) gets the fields it knows; the
//! fields added since are at its end and read as zero from it.

use std::os::fd::{AsFd as _, AsRawFd as _};

use aya::maps::MapData;
use smtpguard_common::{EnforcementConfig, maps as names};

use super::{DataplaneError, maps::map_error};

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;

/// The `map_elem` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

pub(super) fn read(map: &MapData) -> Result<EnforcementConfig, DataplaneError> {
    let mut buffer = Buffer::for_map(map)?;
    elem(map, BPF_MAP_LOOKUP_ELEM, &mut buffer.bytes)?;
    // SAFETY: `EnforcementConfig` is plain integers (layout test); the bytes the map does
    // not have stay zero.
    Ok(unsafe { std::ptr::read_unaligned(buffer.bytes.as_ptr().cast()) })
}

pub(super) fn write(map: &MapData, config: &EnforcementConfig) -> Result<(), DataplaneError> {
    let mut buffer = Buffer::for_map(map)?;
    let size = size_of::<EnforcementConfig>().min(buffer.bytes.len());
    // SAFETY: reading the plain integers of `config` as bytes.
    let bytes = unsafe {
        std::slice::from_raw_parts(
            std::ptr::from_ref(config).cast::<u8>(),
            size_of::<EnforcementConfig>(),
        )
    };
    buffer.bytes[..size].copy_from_slice(&bytes[..size]);
    elem(map, BPF_MAP_UPDATE_ELEM, &mut buffer.bytes)
}

/// A value buffer as long as the map's value, and at least a whole `EnforcementConfig`.
struct Buffer {
    bytes: Vec<u8>,
}

impl Buffer {
    fn for_map(map: &MapData) -> Result<Self, DataplaneError> {
        let info = map
            .info()
            .map_err(|source| map_error(names::ENFORCEMENT, source))?;
        let len = (info.value_size() as usize).max(size_of::<EnforcementConfig>());
        Ok(Self {
            bytes: vec![0; len],
        })
    }
}

fn elem(map: &MapData, command: libc::c_long, value: &mut [u8]) -> Result<(), DataplaneError> {
    let key = 0u32;
    let mut attr = ElemAttr {
        map_fd: map.fd().as_fd().as_raw_fd() as u32,
        key: std::ptr::from_ref(&key) as u64,
        value: value.as_mut_ptr() as u64,
        ..ElemAttr::default()
    };
    super::sys::bpf(command, &mut attr).map_err(|io_error| {
        map_error(
            names::ENFORCEMENT,
            aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                call: "bpf_map_lookup_elem",
                io_error,
            }),
        )
    })?;
    Ok(())
}
