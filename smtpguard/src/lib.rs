//! smtpguard's user space: configuration, the kernel program's loader and maps, offline
//! replay, and the command line.
pub mod agent;
pub mod cli;
pub mod config;
pub mod dataplane;
pub mod fleet;
pub mod identity;
pub mod input;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod policy;
pub mod replay;
pub mod report;
pub mod store;
