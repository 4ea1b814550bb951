//! `cargo xtask demo`'s scenario as an end-to-end test: the very same file
//! (xtask/src/demo/scenario.rs), run against this build's `smtpguard` and `smtp_sink`. A real
//! ISP edge in network namespaces, real SMTP (swaks against smtp_sink), the real agent. Needs
//! root and swaks (`cargo xtask bootstrap` installs it).

#[allow(dead_code)]
#[path = "../../xtask/src/demo/scenario.rs"]
mod scenario;

use std::path::{Path, PathBuf};

#[test]
fn demo_story_holds_end_to_end() {
    let smtpguard = PathBuf::from(env!("CARGO_BIN_EXE_smtpguard"));
    // Built by `cargo test --workspace` (smtpguard-tests has integration tests, so its binaries
    // are built with them) and by `cargo xtask demo`.
    let sink = smtpguard
        .parent()
        .unwrap_or(Path::new("."))
        .join("smtp_sink");
    assert!(
        sink.exists(),
        "{} is missing: build it with `cargo build -p smtpguard-tests --bin smtp_sink`",
        sink.display()
    );
    let pid = std::process::id();
    let options = scenario::Options {
        smtpguard,
        sink,
        work: Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("demo-test-{pid}")),
        pin_dir: format!("/sys/fs/bpf/smtpguard-demo-test-{pid}").into(),
        prefix: format!("sgdt{pid}"),
        keep: false,
    };
    if let Err(error) = scenario::run(&options) {
        panic!("the demo's story did not hold: {error}");
    }
}
