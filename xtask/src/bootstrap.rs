//! `cargo xtask bootstrap`: everything building and testing needs beyond a Rust install, each
//! step skipped when already done. See ../shared/TOOLCHAIN.md for why each step is needed.

use std::{
    fs,
    io::ErrorKind,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::cmd;

/// The toolchain that compiles the kernel program (`-Z build-std=core`).
const NIGHTLY: &str = "nightly";

/// Pinned like the aya crates: a newer release may need a newer stable rustc than ours.
/// Changing it rebuilds bpf-linker (the version is part of the stamp).
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Debian packages the tests and benchmarks use.
const DEBIAN_PACKAGES: &[&str] = &[
    "iproute2",
    "bpftool",
    "xdp-tools",
    "nftables",
    "swaks",
    "python3-scapy",
    "tcpdump",
    // promtool, for the Prometheus alerting rules' unit tests (deploy/prometheus/).
    "prometheus",
    // The package test parses the zsh completion with `zsh -n`.
    "zsh",
    // Fleet mode's engines, started by the fleet tests in temporary folders: etcd (v3 API) for
    // the policy, PostgreSQL for the reports.
    "etcd-server",
    "postgresql",
    // etcd-client's build script compiles etcd's protobuf definitions with protoc.
    "protobuf-compiler",
    // radclient, which sends the RADIUS accounting of the identity tests.
    "freeradius-utils",
];

pub fn run(root: &Path) -> Result<()> {
    let tools = root.join(".tools");
    fs::create_dir_all(&tools).with_context(|| format!("creating {}", tools.display()))?;
    rust_src()?;
    bpf_linker(&tools)?;
    debian_packages(&tools, DEBIAN_PACKAGES)
}

fn done(what: &str) {
    println!("done: {what}");
}

fn skip(what: &str) {
    println!("skip: {what} (already there)");
}

fn rust_src() -> Result<()> {
    let what = "rust-src for the nightly toolchain";
    let installed = cmd::output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        NIGHTLY,
        "--installed",
    ]))
    .context("cannot list the nightly toolchain's components; install the toolchain with `rustup toolchain install nightly`")?;
    if installed
        .lines()
        .any(|component| component.trim() == "rust-src")
    {
        skip(what);
        return Ok(());
    }
    cmd::output(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", NIGHTLY]))
        .context("cannot add rust-src to the nightly toolchain; check that static.rust-lang.org is reachable")?;
    done(what);
    Ok(())
}

/// The nightly toolchain, as far as bpf-linker cares.
struct Nightly {
    commit_hash: String,
    llvm_major: u32,
    /// The toolchain's shared libLLVM, e.g. <sysroot>/lib/libLLVM.so.22.1-rust-1.97.0-nightly.
    libllvm: PathBuf,
}

impl Nightly {
    fn detect() -> Result<Self> {
        let version = cmd::output(Command::new("rustc").args([&format!("+{NIGHTLY}"), "-vV"]))?;
        let field = |name: &str| {
            version
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .map(str::trim)
                .with_context(|| format!("`rustc +{NIGHTLY} -vV` prints no `{name}` line"))
        };
        let commit_hash = field("commit-hash:")?.to_owned();
        let llvm = field("LLVM version:")?;
        let llvm_major = llvm
            .split('.')
            .next()
            .and_then(|major| major.parse().ok())
            .with_context(|| format!("cannot read an LLVM major version from `{llvm}`"))?;
        let sysroot = cmd::output(Command::new("rustc").args([
            &format!("+{NIGHTLY}"),
            "--print",
            "sysroot",
        ]))?;
        let lib = Path::new(sysroot.trim()).join("lib");
        let mut libllvm = Vec::new();
        for entry in fs::read_dir(&lib).with_context(|| format!("listing {}", lib.display()))? {
            let path = entry
                .with_context(|| format!("listing {}", lib.display()))?
                .path();
            if path
                .file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with("libLLVM.so."))
            {
                libllvm.push(path);
            }
        }
        let [libllvm] = <[PathBuf; 1]>::try_from(libllvm).map_err(|found| {
            anyhow::anyhow!(
                "expected exactly one libLLVM.so.* in {}, found {found:?}; bpf-linker needs the nightly toolchain's own LLVM",
                lib.display()
            )
        })?;
        Ok(Self {
            commit_hash,
            llvm_major,
            libllvm,
        })
    }

    /// What the stamp file says about a bpf-linker built for this toolchain.
    fn stamp(&self) -> String {
        format!(
            "bpf-linker {BPF_LINKER_VERSION}\nnightly commit-hash: {}\nLLVM major: {}\n",
            self.commit_hash, self.llvm_major
        )
    }
}

/// bpf-linker in <tools>/bin, linked against the nightly toolchain's libLLVM (TOOLCHAIN.md §2).
fn bpf_linker(tools: &Path) -> Result<()> {
    let nightly = Nightly::detect()?;
    let major = nightly.llvm_major;
    let linker = tools.join("bin").join("bpf-linker");
    let stamp_path = tools.join("bpf-linker.stamp");
    // Rewritten only after a successful build: after a failed one, the old stamp still
    // describes the old linker, and still does not match.
    let stamp = nightly.stamp();
    let what = format!(
        "bpf-linker {BPF_LINKER_VERSION} for LLVM {major} in {}",
        linker.display()
    );

    let version = cmd::output(Command::new(&linker).arg("--version")).ok();
    if version.as_deref().map(str::trim) == Some(&format!("bpf-linker {BPF_LINKER_VERSION}")) {
        match fs::read_to_string(&stamp_path) {
            Ok(recorded) if recorded == stamp => {
                skip(&what);
                return Ok(());
            }
            // Installed by hand before stamps existed: keep it if it loads this nightly's
            // libLLVM.
            Err(error)
                if error.kind() == ErrorKind::NotFound && loads(&linker, &nightly.libllvm) =>
            {
                write_stamp(&stamp_path, &stamp)?;
                done(&format!(
                    "{what}: the installed one loads the nightly's libLLVM; recorded in {}",
                    stamp_path.display()
                ));
                return Ok(());
            }
            _ => {}
        }
    }

    let prefix = tools.join("rust-llvm");
    let lib = prefix.join("lib");
    if lib.exists() {
        // Links to an earlier nightly's libLLVM.
        fs::remove_dir_all(&lib).with_context(|| format!("removing {}", lib.display()))?;
    }
    fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    let soname = nightly
        .libllvm
        .file_name()
        .context("libLLVM path without a file name")?;
    // What the linker looks for, and what the loader looks for (bpf-linker's rpath).
    for link in [lib.join("libLLVM.so"), lib.join(soname)] {
        symlink(&nightly.libllvm, &link).with_context(|| {
            format!(
                "linking {} to {}",
                link.display(),
                nightly.libllvm.display()
            )
        })?;
    }
    let log = tools.join("bpf-linker-build.log");
    println!(
        "building bpf-linker {BPF_LINKER_VERSION} against the nightly's LLVM {major} (about a minute on 2 cores; output in {})",
        log.display()
    );
    let mut install = Command::new("cargo");
    install
        .env("LLVM_PREFIX", &prefix)
        .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
        .args(["--locked", "--force", "--no-default-features", "--features"])
        .arg(format!("llvm-{major}"))
        .arg("--root")
        .arg(tools);
    cmd::run_logged(&mut install, &log).with_context(|| {
        format!(
            "bpf-linker failed to build against LLVM {major} from {}; see {}",
            nightly.libllvm.display(),
            log.display()
        )
    })?;
    cmd::output(Command::new(&linker).arg("--version"))
        .context("the freshly built bpf-linker does not run")?;
    write_stamp(&stamp_path, &stamp)?;
    done(&what);
    Ok(())
}

/// Whether the dynamic loader resolves `linker`'s libLLVM to `libllvm`.
fn loads(linker: &Path, libllvm: &Path) -> bool {
    let Ok(ldd) = cmd::output(Command::new("ldd").arg(linker)) else {
        return false;
    };
    let Ok(expected) = fs::canonicalize(libllvm) else {
        return false;
    };
    ldd.lines()
        .filter_map(|line| line.trim().split_once(" => "))
        .filter(|(name, _)| name.starts_with("libLLVM"))
        .filter_map(|(_, resolved)| resolved.split(" (").next())
        .any(|resolved| fs::canonicalize(resolved).is_ok_and(|path| path == expected))
}

fn write_stamp(path: &Path, stamp: &str) -> Result<()> {
    fs::write(path, stamp).with_context(|| format!("writing {}", path.display()))
}

/// Installs those of `packages` that are missing (apt-get, logs in `tools`); idempotent.
pub fn debian_packages(tools: &Path, packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|package| !installed(package))
        .collect();
    if missing.is_empty() {
        skip(&format!("Debian packages {}", packages.join(" ")));
        return Ok(());
    }
    let update_log = tools.join("apt-get-update.log");
    println!("installing Debian packages {}", missing.join(" "));
    cmd::run_logged(Command::new("apt-get").arg("update"), &update_log).with_context(|| {
        format!(
            "apt-get update failed; bootstrap must run as root with the Debian mirrors reachable (see {})",
            update_log.display()
        )
    })?;
    let install_log = tools.join("apt-get-install.log");
    cmd::run_logged(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y"])
            .args(&missing),
        &install_log,
    )
    .with_context(|| {
        format!(
            "cannot install the Debian packages {}; see {}",
            missing.join(" "),
            install_log.display()
        )
    })?;
    if let Some(package) = missing.iter().find(|package| !installed(package)) {
        bail!(
            "apt-get install succeeded but {package} is still not installed; see {}",
            install_log.display()
        );
    }
    done(&format!("Debian packages {}", missing.join(" ")));
    Ok(())
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|output| output.status.success() && output.stdout == b"install ok installed")
}
