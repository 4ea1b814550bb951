//! Helpers for smtpguard's kernel-level tests: a frame builder, a network-namespace lab and
//! the harness that drives the agent binary.
pub mod agent;
pub mod frames;
pub mod lab;
