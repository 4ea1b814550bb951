//! smtpguard's user space: configuration, the kernel program's loader and maps, offline
//! replay, and the command line.
pub mod cli;
pub mod config;
pub mod dataplane;
pub mod replay;
