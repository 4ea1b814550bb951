//! Helpers for smtpguard's kernel-level tests: a frame builder, a network-namespace lab, and
//! the differential harness with its frame and policy generators and regression cases.
pub mod bench_agent;
pub mod bpf;
pub mod cases;
pub mod differential;
pub mod engines;
pub mod frames;
pub mod generate;
pub mod lab;
pub mod oracle;
pub mod regression;
pub mod replies;
pub mod wire;
