//! Idempotent installation of build and test prerequisites, in three levels: what the demo
//! needs, what `cargo xtask package` adds, and what the test suites add. Every program xtask,
//! the demo or a suite runs comes from a package listed here (or from its dependencies, or
//! from Debian's required packages): the setup-closure suite checks that in a fresh Debian
//! root. Each step that installs something says what and roughly how long first.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use crate::{
    Result,
    apt::{self, Mirror, Private},
    output, run,
};

/// A Debian package setup installs, and the programs from it that the demo, xtask or a suite
/// run (the setup-closure suite looks each up in a fresh root).
#[derive(Clone, Copy, Debug)]
pub struct Package {
    pub name: &'static str,
    pub programs: &'static [&'static str],
}

const fn package(name: &'static str, programs: &'static [&'static str]) -> Package {
    Package { name, programs }
}

/// What `cargo xtask demo` (and the build itself) needs.
pub const DEMO_PACKAGES: &[Package] = &[
    package("runc", &["runc"]),                     // the low-level runtime
    package("busybox-static", &["busybox"]),        // container root filesystems
    package("bpftool", &["bpftool"]),               // the demo's views of programs and maps
    package("util-linux", &["unshare", "nsenter"]), // the pure cgroup v2 namespace
    package("docker.io", &["dockerd", "docker"]),   // the demo's Docker part
];

/// What `cargo xtask package` adds (with [`CARGO_TOOLS`]).
pub const PACKAGING_PACKAGES: &[Package] = &[
    package("binutils", &["strip"]), // strips the packages' binaries
];

/// What the test suites add.
pub const TEST_PACKAGES: &[Package] = &[
    package("containerd", &["containerd", "ctr"]), // the containerd and Kubernetes suites
    package("protobuf-compiler", &["protoc"]),     // builds the Kubernetes suite's CRI client
    package("podman", &["podman", "conmon"]),      // the Podman suites
    package("strace", &["strace"]),                // kills the hook at chosen syscalls
    package("qemu-system-x86", &["qemu-system-x86_64"]), // boots Debian's kernels
    package("cpio", &["cpio"]),                    // packs the guests' initramfs
    package("qemu-utils", &["qemu-img"]),          // the node guests' copy-on-write disks
    package("e2fsprogs", &["mkfs.ext4"]),          // node images and their payload disks
    package("procps", &["pgrep", "pkill"]),        // finds the CRI suite's shims, recvtty
    package("lintian", &["lintian"]),              // checks the .deb
    package("rpm", &["rpm"]),                      // reads the .rpm's metadata and files
    package("man-db", &["man"]),                   // man -w on the installed package
    package("systemd", &["systemd-analyze"]),      // verifies the installed units
    package("mmdebstrap", &["mmdebstrap"]),        // the fresh root and the node images
    // runc's integration suite: bats in a terminal (script), jq in its helpers, its
    // Debian image, its source package unpacked, and its helpers built with cgo.
    package("bats", &["bats"]),
    package("jq", &["jq"]),
    package("gawk", &["gawk"]), // the suite's helpers.bash parses cgroup paths with it
    package("bsdutils", &["script"]),
    package("debootstrap", &["debootstrap"]),
    package("dpkg-dev", &["dpkg-source"]),
    package("xz-utils", &["xz"]),
    package("golang-go", &["go"]),
    package("gcc", &["gcc"]),
    package("libc6-dev", &[]), // gcc only recommends the C library's headers
    package("pkgconf", &["pkg-config"]),
    package("libseccomp-dev", &[]),
    // The Go libraries runc's helpers import (runc 1.1's Build-Depends, built offline).
    package("golang-dbus-dev", &[]),
    package("golang-github-checkpoint-restore-go-criu-dev", &[]),
    package("golang-github-cilium-ebpf-dev", &[]),
    package("golang-github-containerd-console-dev", &[]),
    package("golang-github-coreos-go-systemd-dev", &[]),
    package("golang-github-cyphar-filepath-securejoin-dev", &[]),
    package("golang-github-docker-go-units-dev", &[]),
    package("golang-github-moby-sys-dev", &[]),
    package("golang-github-mrunalp-fileutils-dev", &[]),
    package("golang-github-opencontainers-selinux-dev", &[]),
    package("golang-github-opencontainers-specs-dev", &[]),
    package("golang-github-seccomp-libseccomp-golang-dev", &[]),
    package("golang-github-sirupsen-logrus-dev", &[]),
    package("golang-github-urfave-cli-dev", &[]),
    package("golang-github-vishvananda-netlink-dev", &[]),
    package("golang-gocapability-dev", &[]),
    package("golang-golang-x-net-dev", &[]),
    package("golang-google-protobuf-dev", &[]),
];

/// How much to set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// The build and the demo.
    Demo,
    /// Also `cargo xtask package`.
    Packages,
    /// Also every test suite.
    Tests,
}

impl Level {
    /// The Debian packages this level installs.
    pub fn packages(self) -> Vec<Package> {
        let mut list = DEMO_PACKAGES.to_vec();
        if self >= Level::Packages {
            list.extend_from_slice(PACKAGING_PACKAGES);
        }
        if self >= Level::Tests {
            list.extend_from_slice(TEST_PACKAGES);
        }
        list
    }
}

/// Installs this level's Debian packages on `target` that are missing, saying so first.
pub fn install_packages(target: apt::Target<'_>, level: Level) -> Result {
    let missing: Vec<&str> = level
        .packages()
        .iter()
        .map(|p| p.name)
        .filter(|p| !target.installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!(
        "xtask setup: Debian packages: {} (about {} min)",
        missing.join(" "),
        1 + missing.len() / 15
    );
    target.install(&missing)
}

/// The packaging tools `cargo xtask package` runs: (crate and cargo subcommand, version).
const CARGO_TOOLS: [(&str, &str); 2] = [("cargo-deb", "3.8.0"), ("cargo-generate-rpm", "0.21.1")];

/// Where the kernel suite's kernels are kept (tests/src/qemu.rs reads the same default).
pub const KERNEL_CACHE: &str = "/var/cache/npu-tests/kernels";

/// Debian's cloud kernels the kernel suite boots: (suite, kernel series). bullseye's 5.10 is
/// the series openEuler 22.03 LTS runs; bookworm's 6.1 a current one.
const KERNELS: [(&str, &str); 2] = [("bullseye", "5.10"), ("bookworm", "6.1")];

/// bpf-linker release known to build against the nightly's LLVM 22.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Sets up `level`. The CPU-bound builds (bpf-linker, then the packaging tools) run beside
/// the downloads and installs.
pub fn ensure(level: Level) -> Result {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err("setup installs packages and the tests need root: run as root".into());
    }
    // rustup first: the builds and rustup's changes to the toolchains do not overlap.
    rust_src()?;
    musl_target()?;
    let builds = std::thread::spawn(move || {
        bpf_linker()?;
        if level >= Level::Packages {
            cargo_tools()?;
        }
        Ok::<_, String>(())
    });
    let rest = install_packages(apt::Target::Host, level).and_then(|()| {
        if level >= Level::Tests {
            kernels()?;
            crate::nodes::ensure()?;
            crate::runc_suite::prepare()?;
            crate::runc_suite::prepare_node()?;
        }
        Ok(())
    });
    let built = builds.join().map_err(|_| "setup's build thread panicked")?;
    rest.and(built)
}

/// Downloads the kernel suite's kernels into [`KERNEL_CACHE`] unless they are there, with a
/// private apt configuration per suite (DESIGN.md 6b).
fn kernels() -> Result {
    let cache = Path::new(KERNEL_CACHE);
    for (suite, series) in KERNELS {
        let have = std::fs::read_dir(cache)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("vmlinuz-{series}."))
            });
        if have {
            continue;
        }
        eprintln!(
            "xtask setup: Debian's {series} cloud kernel from {suite}, for the kernel suite \
             (about 1 min)"
        );
        let dir = cache.join(format!("apt-{suite}"));
        let apt = Private::new(
            &dir,
            &Mirror::of_this_machine()?.sources("deb", &[suite], false),
        )?;
        let package = apt.first_dependency("linux-image-cloud-amd64", "linux-image-")?;
        run(apt
            .command("apt-get")
            .args(["download", "-qq", &package])
            .current_dir(&dir))?;
        let deb = apt::downloaded_deb(&dir, &package)?;
        let extract = dir.join("extract");
        std::fs::create_dir_all(&extract).map_err(|e| e.to_string())?;
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&extract))?;
        let boot = extract.join("boot");
        let image = std::fs::read_dir(&boot)
            .map_err(|e| format!("{}: {e}", boot.display()))?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
            })
            .ok_or_else(|| format!("{package} holds no vmlinuz"))?;
        std::fs::copy(&image, cache.join(image.file_name().unwrap())).map_err(|e| e.to_string())?;
        std::fs::remove_dir_all(&dir).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The host's target triple (`rustc -vV`).
fn host_triple() -> Result<String> {
    output(Command::new("rustc").arg("-vV"))?
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(String::from)
        .ok_or_else(|| "rustc -vV names no host".into())
}

/// The target release binaries are built for: the host's architecture with musl, so they are
/// static without glibc's start-up cost.
pub fn release_target() -> Result<String> {
    let host = host_triple()?;
    let arch = host
        .split('-')
        .next()
        .ok_or_else(|| format!("cannot tell the architecture of {host}"))?;
    Ok(format!("{arch}-unknown-linux-musl"))
}

/// The standard library for [`release_target`] on the default toolchain.
fn musl_target() -> Result {
    let target = release_target()?;
    let installed = output(Command::new("rustup").args(["target", "list", "--installed"]))?;
    if installed.lines().any(|l| l.trim() == target) {
        return Ok(());
    }
    eprintln!(
        "xtask setup: the {target} standard library, for static release builds (under a minute)"
    );
    run(Command::new("rustup").args(["target", "add", &target]))
}

fn nightly_sysroot() -> Result<PathBuf> {
    output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
        .map(PathBuf::from)
        .map_err(|e| format!("the nightly toolchain is needed for the eBPF crate: {e}"))
}

fn rust_src() -> Result {
    let sysroot = nightly_sysroot()?;
    if sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        return Ok(());
    }
    eprintln!("xtask setup: the nightly's rust-src, for the eBPF crate's core (under a minute)");
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

/// `$CARGO_HOME/bin`, where `cargo install` puts bpf-linker.
fn cargo_bin() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
        .join("bin")
}

/// PATH with `$CARGO_HOME/bin` first, so builds find bpf-linker.
pub fn path_with_cargo_bin() -> std::ffi::OsString {
    let bin = cargo_bin();
    let mut paths = vec![bin.clone()];
    if let Some(path) = std::env::var_os("PATH") {
        paths.extend(std::env::split_paths(&path).filter(|p| *p != bin));
    }
    std::env::join_paths(paths).unwrap_or_default()
}

/// Installs each of [`CARGO_TOOLS`] unless that version is there.
fn cargo_tools() -> Result {
    for (name, version) in CARGO_TOOLS {
        let subcommand = name.trim_start_matches("cargo-");
        let have = Command::new(cargo_bin().join(name))
            .args([subcommand, "--version"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(version));
        if !have {
            eprintln!(
                "xtask setup: building {name} {version} for cargo xtask package (4-5 min on 2 cores)"
            );
            run(Command::new("cargo")
                .args(["install", "--locked", name, "--version", version])
                .env("PATH", path_with_cargo_bin()))?;
        }
    }
    Ok(())
}

fn bpf_linker() -> Result {
    let linker = cargo_bin().join("bpf-linker");
    let works = Command::new(&linker)
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION));
    if works {
        return Ok(());
    }
    // Build against the nightly's own libLLVM (no system LLVM of that version exists here),
    // with an rpath so the linker finds it at run time without LD_LIBRARY_PATH.
    let sysroot = nightly_sysroot()?;
    let lib = sysroot.join("lib");
    let llvm = std::fs::read_dir(&lib)
        .map_err(|e| format!("cannot list {}: {e}", lib.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so."))
        .ok_or_else(|| format!("no libLLVM.so.* in {}", lib.display()))?;
    let version = output(Command::new("rustc").args(["+nightly", "-vV"]))?;
    let major = version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .ok_or("cannot tell the nightly's LLVM version")?
        .to_string();
    let prefix = std::env::temp_dir().join(format!("npu-bpf-linker-llvm-{major}"));
    std::fs::create_dir_all(prefix.join("lib")).map_err(|e| e.to_string())?;
    let link = prefix.join("lib/libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(lib.join(&llvm), &link).map_err(|e| e.to_string())?;
    eprintln!(
        "xtask setup: building bpf-linker {BPF_LINKER_VERSION} against the nightly's {llvm}, \
         which links the eBPF guard (about 2 min on 2 cores)"
    );
    run(Command::new("cargo")
        .args(["install", "--force", "bpf-linker", "--version"])
        .arg(BPF_LINKER_VERSION)
        .args(["--no-default-features", "--features"])
        .arg(format!("llvm-{major}"))
        .env("LLVM_PREFIX", &prefix)
        .env(
            "RUSTFLAGS",
            format!("-C link-arg=-Wl,-rpath,{}", lib.display()),
        ))
}
