//! The desired policy and the one seam it comes through.
//!
//! What the kernel maps should hold is built from three inputs: the configuration file, the
//! runtime entries (exemptions, relays, escalations) of a [`PolicySource`], and the addresses
//! the relay hostnames resolve to. The agent's verbs, its reconcile and its expiry all read and
//! change the runtime part through [`PolicySource`] only, so a second source (etcd in fleet
//! mode) is a second implementation of that trait, not a second code path.

mod changes;
mod desired;
pub mod etcd;
mod fleet_keys;
mod relay_hosts;
mod source;

pub use self::{
    changes::{PolicyChange, changes, mode_name},
    desired::{DesiredPolicy, most_specific},
    etcd::{EtcdSource, FleetHandle, FleetStatus},
    fleet_keys::FleetAuditEntry,
    relay_hosts::{RelayHost, ResolvedRelays, Unresolved, UnresolvedWarning, resolve_relay_hosts},
    source::{LocalStore, PolicyError, PolicyResult, PolicySource, Rejection},
};
