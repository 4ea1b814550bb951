//! Types shared by the smtpguard kernel program and user space.
//!
//! Every map key and value is `#[repr(C)]` with explicit padding only, so the kernel and
//! user space agree on the bytes; each type's layout is pinned by a test next to it.
#![cfg_attr(not(test), no_std)]

pub mod host;
pub mod host_table;
pub mod interface;
pub mod maps;
pub mod policy;
pub mod reason;
pub mod relay;
pub mod sketch;

pub use host::{CachedClass, HostKey, HostMask, HostStats, SourceClass};
pub use host_table::{HostSlot, HostTableParams};
pub use interface::InterfaceSlot;
pub use policy::{
    Action, EnforcementConfig, HostOverride, Limit, Mode, Origin, PrefixOrigin, ReplyScratch,
    SourcePolicy, SubscriberPolicy, UnparseableAction,
};
pub use reason::{REASON_COUNT, Reason, Verdict};
pub use relay::{RelayFilter, RelayMatch};
