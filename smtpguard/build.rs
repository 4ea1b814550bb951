//! Compiles the kernel program (smtpguard-ebpf) for the BPF target with the nightly
//! toolchain and places the object in OUT_DIR, where `dataplane` embeds it. This is
//! aya-build's recipe (the flags every aya program gets, `-Z build-std=core`, a target folder
//! of its own in OUT_DIR) written out, because aya-build fixes the compiler flags and the
//! program needs one more: smtpguard-ebpf/rustflags.
mod kernel_flags;

use std::{env, fs, path::PathBuf, process::Command};

use anyhow::{Context as _, Result, bail};

/// `-Z build-std` and the BPF target need a nightly toolchain.
const TOOLCHAIN: &str = "nightly";

fn main() -> Result<()> {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("no CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest_dir
        .parent()
        .context("the smtpguard crate has no parent folder")?
        .join("smtpguard-ebpf");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("no OUT_DIR")?);
    println!("cargo:rerun-if-changed={}", ebpf_dir.display());

    let target = match env::var("CARGO_CFG_TARGET_ENDIAN")
        .context("no CARGO_CFG_TARGET_ENDIAN")?
        .as_str()
    {
        "little" => "bpfel-unknown-none",
        "big" => "bpfeb-unknown-none",
        other => bail!("unsupported byte order {other:?}: expected little or big"),
    };
    let arch = env::var("CARGO_CFG_TARGET_ARCH").context("no CARGO_CFG_TARGET_ARCH")?;
    let listed = ebpf_dir.join("rustflags");
    let listed =
        fs::read_to_string(&listed).with_context(|| format!("reading {}", listed.display()))?;
    let flags = kernel_flags::kernel_rustflags(&arch, &listed);

    let target_dir = out_dir.join("ebpf-target");
    let mut cargo = Command::new("rustup");
    cargo
        .args([
            "run",
            TOOLCHAIN,
            "cargo",
            "build",
            "--release",
            "--package",
            "smtpguard-ebpf",
        ])
        .args([
            "--bins",
            "--target",
            target,
            "-Z",
            "build-std=core",
            "--target-dir",
        ])
        .arg(&target_dir)
        .current_dir(&ebpf_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", flags.join("\x1f"))
        // This build's own compiler, not the one cargo chose for the host build.
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER");
    let output = cargo
        .output()
        .with_context(|| format!("running {cargo:?}"))?;
    // Its warnings are left to the lint (clippy with -D warnings on the BPF target): rustc
    // warns about every unstable target feature on every build, ours included.
    if !output.status.success() {
        bail!(
            "building the kernel program failed ({}); run `cargo xtask bootstrap` first\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let built = target_dir.join(target).join("release").join("smtpguard");
    let object = out_dir.join("smtpguard");
    fs::copy(&built, &object)
        .with_context(|| format!("copying {} to {}", built.display(), object.display()))?;
    Ok(())
}
