//! The compiler flags of the kernel program, in one place for every build of it:
//! smtpguard/build.rs (the program the agent embeds) and `cargo xtask bench` (its stage and
//! baseline builds, which include this file with `#[path]`), so that the bench times the same
//! code the agent loads.

/// The flags for smtpguard-ebpf built for `arch`: those every aya program gets (the target
/// arch, debug information for BTF, BTF itself), then those `listed`, the text of
/// smtpguard-ebpf/rustflags (one per line, `#` comments and blank lines skipped).
pub fn kernel_rustflags(arch: &str, listed: &str) -> Vec<String> {
    let mut flags = vec![
        format!("--cfg=bpf_target_arch=\"{arch}\""),
        "-Cdebuginfo=2".to_owned(),
        "-Clink-arg=--btf".to_owned(),
    ];
    flags.extend(
        listed
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(str::to_owned),
    );
    flags
}
