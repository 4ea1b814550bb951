//! Helpers for smtpguard's kernel-level tests: a frame builder and a network-namespace lab.
pub mod frames;
pub mod lab;
