//! `cargo xtask package`: a Debian package (dpkg-deb) of the agent with its systemd unit,
//! sysusers.d entry, example config (a conffile), man pages (smtpguard(1), one per verb,
//! smtpguard.toml(5)), shell completions, copyright and changelog. The man pages and
//! completions come from the binary itself (`smtpguard generate-assets`), so xtask never
//! compiles the agent's code.

use std::{
    fs,
    io::Write as _,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result};
use clap::Args;

use crate::cmd;

#[derive(Debug, Args)]
pub struct PackageArgs {
    /// Package the debug build instead of the release build (quick; for tests), e.g. --debug
    #[arg(long)]
    debug: bool,
    /// Where the .deb is written, e.g. --out target/debian (the default)
    #[arg(long)]
    out: Option<PathBuf>,
}

/// The Debian revision of this packaging of the workspace version.
const DEBIAN_REVISION: &str = "1";

pub fn run(root: &Path, args: &PackageArgs) -> Result<()> {
    let profile = if args.debug { "dev" } else { "release" };
    cmd::run(Command::new("cargo").current_dir(root).args([
        "build",
        "-p",
        "smtpguard",
        "--profile",
        profile,
    ]))?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| root.join("target").join("debian"));
    let deb = build(root, &binary(root, args.debug), &out, "xz")?;
    println!("{}", deb.display());
    Ok(())
}

/// The binary cargo built for the profile.
pub fn binary(root: &Path, debug: bool) -> PathBuf {
    let folder = if debug { "debug" } else { "release" };
    root.join("target").join(folder).join("smtpguard")
}

/// Stages the package's files from `binary` and the repository, and builds the .deb in
/// `out` with dpkg-deb's `compression` (xz, gzip or none); returns its path.
pub fn build(root: &Path, binary: &Path, out: &Path, compression: &str) -> Result<PathBuf> {
    let version = format!("{}-{DEBIAN_REVISION}", env!("CARGO_PKG_VERSION"));
    let architecture = cmd::output(Command::new("dpkg").arg("--print-architecture"))?
        .trim()
        .to_owned();
    let name = format!("smtpguard_{version}_{architecture}");
    let stage = out.join(&name);
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("removing {}", stage.display()))?;
    }
    let deploy = root.join("deploy");
    let doc = "usr/share/doc/smtpguard";

    install(&stage, "usr/bin/smtpguard", &read(binary)?, 0o755)?;
    install(
        &stage,
        "usr/lib/systemd/system/smtpguard.service",
        &read(&deploy.join("systemd/smtpguard.service"))?,
        0o644,
    )?;
    install(
        &stage,
        "usr/lib/sysusers.d/smtpguard.conf",
        &read(&deploy.join("sysusers.d/smtpguard.conf"))?,
        0o644,
    )?;
    install(
        &stage,
        "etc/smtpguard/smtpguard.toml",
        &read(&deploy.join("smtpguard.example.toml"))?,
        0o644,
    )?;

    let assets = out.join(format!("{name}.assets"));
    cmd::run(Command::new(binary).arg("generate-assets").arg(&assets))?;
    for page in man_pages(&assets)? {
        let section = page.rsplit('.').next().unwrap_or_default();
        install(
            &stage,
            &format!("usr/share/man/man{section}/{page}.gz"),
            &gzip(&read(&assets.join(&page))?)?,
            0o644,
        )?;
    }
    for (file, path) in [
        (
            "smtpguard.bash",
            "usr/share/bash-completion/completions/smtpguard",
        ),
        ("_smtpguard", "usr/share/zsh/vendor-completions/_smtpguard"),
        (
            "smtpguard.fish",
            "usr/share/fish/vendor_completions.d/smtpguard.fish",
        ),
    ] {
        install(&stage, path, &read(&assets.join(file))?, 0o644)?;
    }
    fs::remove_dir_all(&assets).with_context(|| format!("removing {}", assets.display()))?;

    install(
        &stage,
        &format!("{doc}/copyright"),
        COPYRIGHT.as_bytes(),
        0o644,
    )?;
    install(
        &stage,
        &format!("{doc}/changelog.Debian.gz"),
        &gzip(changelog(&version).as_bytes())?,
        0o644,
    )?;
    for file in ["README.md", "docs/operations.md"] {
        let source = root.join(file);
        let target = Path::new(file).file_name().expect("a file name");
        install(
            &stage,
            &format!("{doc}/{}", target.to_string_lossy()),
            &read(&source)?,
            0o644,
        )?;
    }

    let size_kib = installed_size(&stage)? / 1024;
    install(
        &stage,
        "DEBIAN/control",
        control(&version, &architecture, size_kib).as_bytes(),
        0o644,
    )?;
    install(
        &stage,
        "DEBIAN/conffiles",
        b"/etc/smtpguard/smtpguard.toml\n",
        0o644,
    )?;
    install(&stage, "DEBIAN/postinst", POSTINST.as_bytes(), 0o755)?;
    install(&stage, "DEBIAN/prerm", PRERM.as_bytes(), 0o755)?;
    install(&stage, "DEBIAN/postrm", POSTRM.as_bytes(), 0o755)?;

    let deb = out.join(format!("{name}.deb"));
    cmd::run(
        Command::new("dpkg-deb")
            .arg("--root-owner-group")
            .arg(format!("-Z{compression}"))
            .arg("--build")
            .arg(&stage)
            .arg(&deb),
    )?;
    fs::remove_dir_all(&stage).with_context(|| format!("removing {}", stage.display()))?;
    Ok(deb)
}

/// The file names of the man pages (`NAME.1`, `NAME.5`) among the generated assets, sorted.
fn man_pages(assets: &Path) -> Result<Vec<String>> {
    let mut pages = Vec::new();
    for entry in fs::read_dir(assets).with_context(|| format!("reading {}", assets.display()))? {
        let name = entry
            .with_context(|| format!("reading {}", assets.display()))?
            .file_name()
            .to_string_lossy()
            .into_owned();
        if name.ends_with(".1") || name.ends_with(".5") {
            pages.push(name);
        }
    }
    pages.sort();
    anyhow::ensure!(
        pages.iter().any(|p| p == "smtpguard.1"),
        "{}: expected smtpguard.1 among the generated man pages, found {pages:?}",
        assets.display()
    );
    Ok(pages)
}

fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// Writes `contents` to `stage/path` with `mode`, creating the folders (mode 0755).
fn install(stage: &Path, path: &str, contents: &[u8], mode: u32) -> Result<()> {
    let target = stage.join(path);
    let folder = target.parent().expect("a path below the stage");
    fs::create_dir_all(folder).with_context(|| format!("creating {}", folder.display()))?;
    fs::write(&target, contents).with_context(|| format!("writing {}", target.display()))?;
    fs::set_permissions(&target, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", target.display()))
}

/// `gzip -9n` (no name, no time stamp: the same input gives the same package).
fn gzip(contents: &[u8]) -> Result<Vec<u8>> {
    let mut child = Command::new("gzip")
        .arg("-9n")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting gzip")?;
    let mut stdin = child.stdin.take().context("gzip's stdin")?;
    let input = contents.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let output = child.wait_with_output().context("running gzip")?;
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("the thread feeding gzip panicked"))?
        .context("feeding gzip")?;
    anyhow::ensure!(output.status.success(), "gzip failed ({})", output.status);
    Ok(output.stdout)
}

fn installed_size(folder: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in fs::read_dir(folder).with_context(|| format!("reading {}", folder.display()))? {
        let entry = entry.with_context(|| format!("reading {}", folder.display()))?;
        let metadata = entry.metadata()?;
        total += if metadata.is_dir() {
            installed_size(&entry.path())?
        } else {
            metadata.len()
        };
    }
    Ok(total)
}

fn control(version: &str, architecture: &str, size_kib: u64) -> String {
    format!(
        "Package: smtpguard
Version: {version}
Architecture: {architecture}
Maintainer: smtpguard maintainers <maintainers@smtpguard.invalid>
Installed-Size: {size_kib}
Depends: libc6, adduser
Recommends: systemd
Section: net
Priority: optional
Homepage: https://smtpguard.invalid/
Description: block direct-to-MX SMTP from subscriber lines (eBPF)
 smtpguard runs on an ISP's Linux border gateways and stops subscriber hosts
 from sending mail straight to other networks' MX hosts (TCP port 25), with
 an XDP or TC program, exemptions, relays, reports and Prometheus metrics.
"
    )
}

fn changelog(version: &str) -> String {
    format!(
        "smtpguard ({version}) unstable; urgency=medium

  * Packaged with cargo xtask package.

 -- smtpguard maintainers <maintainers@smtpguard.invalid>  Mon, 23 Nov 2026 00:00:00 +0000
"
    )
}

const COPYRIGHT: &str = "\
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: smtpguard

Files: *
Copyright: smtpguard maintainers
License: MIT or Apache-2.0
 On Debian systems the Apache License 2.0 is in
 /usr/share/common-licenses/Apache-2.0. The MIT license:
 .
 Permission is hereby granted, free of charge, to any person obtaining a copy
 of this software and associated documentation files (the \"Software\"), to
 deal in the Software without restriction, including without limitation the
 rights to use, copy, modify, merge, publish, distribute, sublicense, and/or
 sell copies of the Software, and to permit persons to whom the Software is
 furnished to do so, subject to the following conditions:
 .
 The above copyright notice and this permission notice shall be included in
 all copies or substantial portions of the Software.
 .
 THE SOFTWARE IS PROVIDED \"AS IS\", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
 IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
 FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT.
";

/// Creates the user (sysusers.d where systemd is, adduser otherwise), then lets systemd know
/// the unit. It is not started on install: enforcement begins when the operator has
/// configured it. An upgrade restarts a running agent: the pins keep enforcing while the
/// new program is swapped into the links.
const POSTINST: &str = "#!/bin/sh
set -e
if [ \"$1\" = configure ]; then
    if command -v systemd-sysusers >/dev/null 2>&1; then
        systemd-sysusers smtpguard.conf
    elif ! getent passwd smtpguard >/dev/null; then
        adduser --system --group --home /var/lib/smtpguard --no-create-home smtpguard
    fi
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload
        if [ -n \"$2\" ]; then
            systemctl try-restart smtpguard.service
        fi
    fi
fi
exit 0
";

/// Removing the package removes enforcement with it: `detach` takes the program off the
/// interfaces and stops the agent. An upgrade keeps both.
const PRERM: &str = "#!/bin/sh
set -e
if [ \"$1\" = remove ]; then
    /usr/bin/smtpguard --config /etc/smtpguard/smtpguard.toml detach --yes || true
    if [ -d /run/systemd/system ]; then
        systemctl stop smtpguard.service || true
    fi
fi
exit 0
";

const POSTRM: &str = "#!/bin/sh
set -e
if [ \"$1\" = purge ]; then
    rm -rf /var/lib/smtpguard /sys/fs/bpf/smtpguard
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
fi
exit 0
";

#[cfg(test)]
mod tests {
    use std::{os::unix::fs::PermissionsExt as _, path::Path, process::Command};

    use crate::{cmd, repo_root};

    /// Builds the package from the debug binary (a release build takes minutes on CI's two
    /// cores; the packaging is the same), unpacks it into a scratch root the way dpkg
    /// would, and checks what an operator gets.
    #[test]
    fn the_package_installs_a_working_tree() {
        let root = repo_root();
        // The same build as `cargo xtask test`'s build phase, so under CI it finds everything
        // built (`-p smtpguard` alone resolves other dependency features and rebuilds).
        cmd::run(&mut crate::test::build_command(&root)).unwrap();
        let scratch = tempfile::tempdir().unwrap();
        // Uncompressed: xz spends most of a minute on the 100 MB debug binary.
        let deb = super::build(&root, &super::binary(&root, true), scratch.path(), "none").unwrap();

        let tree = scratch.path().join("root");
        let control = scratch.path().join("control");
        cmd::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree)).unwrap();
        cmd::run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control)).unwrap();

        let fields = cmd::output(Command::new("dpkg-deb").args(["-f"]).arg(&deb)).unwrap();
        for field in ["Package: smtpguard", "Version: 0.1.0-1", "Depends: "] {
            assert!(fields.contains(field), "{field} in:\n{fields}");
        }
        let conffiles = std::fs::read_to_string(control.join("conffiles")).unwrap();
        assert_eq!(conffiles, "/etc/smtpguard/smtpguard.toml\n");
        for script in ["postinst", "prerm", "postrm"] {
            let path = control.join(script);
            assert_mode(&path, 0o755);
            cmd::run(Command::new("sh").arg("-n").arg(&path)).unwrap();
        }
        let postinst = std::fs::read_to_string(control.join("postinst")).unwrap();
        assert!(
            postinst.contains("systemd-sysusers smtpguard.conf"),
            "{postinst}"
        );

        for (path, mode) in [
            ("usr/bin/smtpguard", 0o755),
            ("usr/lib/systemd/system/smtpguard.service", 0o644),
            ("usr/lib/sysusers.d/smtpguard.conf", 0o644),
            ("etc/smtpguard/smtpguard.toml", 0o644),
            ("usr/share/man/man1/smtpguard.1.gz", 0o644),
            ("usr/share/man/man1/smtpguard-exempt.1.gz", 0o644),
            ("usr/share/man/man1/smtpguard-report.1.gz", 0o644),
            ("usr/share/man/man1/smtpguard-completions.1.gz", 0o644),
            ("usr/share/man/man5/smtpguard.toml.5.gz", 0o644),
            ("usr/share/bash-completion/completions/smtpguard", 0o644),
            ("usr/share/zsh/vendor-completions/_smtpguard", 0o644),
            ("usr/share/fish/vendor_completions.d/smtpguard.fish", 0o644),
            ("usr/share/doc/smtpguard/copyright", 0o644),
            ("usr/share/doc/smtpguard/changelog.Debian.gz", 0o644),
            ("usr/share/doc/smtpguard/operations.md", 0o644),
        ] {
            assert_mode(&tree.join(path), mode);
        }
        // Every file belongs to root (dpkg-deb --root-owner-group).
        let listing = cmd::output(Command::new("dpkg-deb").arg("-c").arg(&deb)).unwrap();
        for line in listing.lines() {
            assert!(line.contains(" root/root "), "{line}");
        }

        assert!(
            !tree.join("lib").exists(),
            "nothing in /lib: the unit is in /usr/lib/systemd/system"
        );
        // The installed binary runs, and checks the installed example config, named by the
        // variable as the default path would (a test cannot write /etc).
        let binary = tree.join("usr/bin/smtpguard");
        let conffile = tree.join("etc/smtpguard/smtpguard.toml");
        let checked = cmd::output(
            Command::new(&binary)
                .args(["config", "check"])
                .env("SMTPGUARD_CONFIG", &conffile),
        )
        .unwrap();
        assert!(checked.contains(": ok ("), "{checked}");
        let conffile_text = std::fs::read_to_string(&conffile).unwrap();
        assert!(
            !conffile_text.contains("mode = \"enforce\"\n"),
            "the conffile starts every range in monitor mode:\n{conffile_text}"
        );
        let unit =
            std::fs::read_to_string(tree.join("usr/lib/systemd/system/smtpguard.service")).unwrap();
        assert!(unit.contains("ExecStart=/usr/bin/smtpguard "), "{unit}");

        // The man page renders, with the verbs in it.
        let page = cmd::output(
            Command::new("man")
                .env("MANWIDTH", "100")
                .arg("-l")
                .arg(tree.join("usr/share/man/man1/smtpguard.1.gz")),
        )
        .unwrap();
        for needle in [
            "NAME",
            "smtpguard",
            "SUBCOMMANDS",
            "exempt",
            "replay",
            "EXIT STATUS",
        ] {
            assert!(page.contains(needle), "{needle} in the man page:\n{page}");
        }
        // A page per verb, and the config file's, each with its sections.
        for (page, needles) in [
            (
                "usr/share/man/man1/smtpguard-exempt.1.gz",
                &["EXIT STATUS", "FILES", "ENVIRONMENT", "SMTPGUARD_CONFIG"][..],
            ),
            (
                "usr/share/man/man5/smtpguard.toml.5.gz",
                &[
                    "socket_group",
                    "netns",
                    "escalate_for",
                    "[report]",
                    "ENVIRONMENT",
                ],
            ),
        ] {
            let text = cmd::output(
                Command::new("man")
                    .env("MANWIDTH", "100")
                    .arg("-l")
                    .arg(tree.join(page)),
            )
            .unwrap();
            for needle in needles {
                assert!(text.contains(needle), "{needle} in {page}:\n{text}");
            }
        }

        // The completions parse in their shells, and bash's completes the verbs.
        let bash = tree.join("usr/share/bash-completion/completions/smtpguard");
        let words = cmd::output(Command::new("bash").arg("-c").arg(format!(
            "source {} && COMP_WORDS=(smtpguard ex) COMP_CWORD=1 && _smtpguard smtpguard ex smtpguard && echo \"${{COMPREPLY[@]}}\"",
            bash.display()
        )))
        .unwrap();
        assert_eq!(words.trim(), "exempt", "bash completion of `smtpguard ex`");
        for (shell, path) in [
            ("zsh", "usr/share/zsh/vendor-completions/_smtpguard"),
            ("fish", "usr/share/fish/vendor_completions.d/smtpguard.fish"),
        ] {
            if Command::new(shell).arg("--version").output().is_ok() {
                cmd::run(Command::new(shell).arg("-n").arg(tree.join(path))).unwrap();
            } else {
                println!("{shell} is not installed: its completion is not parsed");
            }
        }
    }

    #[track_caller]
    fn assert_mode(path: &Path, mode: u32) {
        let metadata = std::fs::metadata(path)
            .unwrap_or_else(|e| panic!("{}: expected in the package: {e}", path.display()));
        assert_eq!(
            metadata.permissions().mode() & 0o7777,
            mode,
            "mode of {}",
            path.display()
        );
    }
}
