//! Idempotent installation of build and test prerequisites.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use crate::{Result, run};

/// Debian packages the build, the demo and the suites use.
const PACKAGES: &[&str] = &[
    "bpftool",           // the bpftool views in tests and demo
    "runc",              // the low-level runtime
    "busybox-static",    // container root filesystems
    "util-linux",        // unshare, nsenter (pure cgroup v2 namespace)
    "docker.io",         // the Docker suites (dockerd 20.10, containerd)
    "containerd",        // the containerd suite (ctr)
    "podman",            // the Podman suites (runtime and hooks.d modes)
    "strace",            // kills the hook at chosen syscalls in the fault suite
    "qemu-system-x86",   // boots Debian's 5.10 and 6.1 kernels for the kernel suite
    "cpio",              // packs the guests' initramfs
    "protobuf-compiler", // protoc, for the Kubernetes suite's CRI client (k8s-cri)
    "procps",            // pgrep, finding the CRI suite's containerd-shims
    "binutils",          // strip, for the packages' binaries
    "lintian",           // checks the .deb
    "rpm",               // reads the .rpm's metadata and file list
    "man-db",            // man -w, finding the installed package's pages
];

/// The packaging tools `cargo xtask package` runs: (crate and cargo subcommand, version).
const CARGO_TOOLS: [(&str, &str); 2] = [("cargo-deb", "3.8.0"), ("cargo-generate-rpm", "0.21.1")];

/// Where the kernel suite's kernels are kept (tests/src/qemu.rs reads the same default).
pub const KERNEL_CACHE: &str = "/var/cache/npu-tests/kernels";

/// Debian's cloud kernels the kernel suite boots: (suite, kernel series). bullseye's 5.10 is
/// the series openEuler 22.03 LTS runs; bookworm's 6.1 a current one.
const KERNELS: [(&str, &str); 2] = [("bullseye", "5.10"), ("bookworm", "6.1")];

/// bpf-linker release known to build against the nightly's LLVM 22.
const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn all() -> Result {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err("setup installs packages and the tests need root: run as root".into());
    }
    apt_packages()?;
    rust_src()?;
    bpf_linker()?;
    musl_target()?;
    cargo_tools()?;
    kernels()?;
    crate::runc_suite::prepare()?;
    Ok(())
}

/// Downloads the kernel suite's kernels into [`KERNEL_CACHE`] unless they are there, with a
/// private apt configuration per suite, so the machine's own sources and lists stay as they
/// are (DESIGN.md 6b).
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
        eprintln!("xtask: downloading Debian's {series} cloud kernel ({suite})");
        let apt = cache.join(format!("apt-{suite}"));
        for sub in ["sources", "lists/partial", "cache/archives/partial"] {
            std::fs::create_dir_all(apt.join(sub)).map_err(|e| e.to_string())?;
        }
        std::fs::write(
            apt.join("sources/debian.sources"),
            format!(
                "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: {suite}\n\
                 Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
            ),
        )
        .map_err(|e| e.to_string())?;
        let private = |cmd: &str| {
            let mut c = Command::new(cmd);
            c.arg("-o").arg("Dir::Etc::sourcelist=/dev/null");
            for (key, sub) in [
                ("Dir::Etc::sourceparts", "sources"),
                ("Dir::State::Lists", "lists"),
                ("Dir::Cache", "cache"),
            ] {
                c.arg("-o")
                    .arg(format!("{key}={}", apt.join(sub).display()));
            }
            c.args(["-o", "Dir::State::status=/dev/null"]);
            // Root downloads into a root-only directory: no _apt sandbox user.
            c.args(["-o", "APT::Sandbox::User=root"]);
            c
        };
        run(private("apt-get").args(["update", "-qq"]))?;
        // The metapackage names the suite's current kernel package.
        let depends = output(private("apt-cache").args(["depends", "linux-image-cloud-amd64"]))?;
        let package = depends
            .lines()
            .find_map(|l| l.trim().strip_prefix("Depends: "))
            .filter(|p| p.starts_with("linux-image-"))
            .ok_or_else(|| format!("no kernel package named in {suite}'s metapackage"))?
            .to_string();
        run(private("apt-get")
            .args(["download", "-qq", &package])
            .current_dir(&apt))?;
        let deb = std::fs::read_dir(&apt)
            .map_err(|e| e.to_string())?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .ok_or_else(|| format!("apt-get download {package} left no .deb"))?;
        let extract = apt.join("extract");
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
        std::fs::remove_dir_all(&apt).map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn apt_packages() -> Result {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn dpkg_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Status}", package])
        .output()
        .is_ok_and(|o| o.status.success() && o.stdout == b"installed")
}

pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
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
            eprintln!("xtask: installing {name} {version}");
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
    eprintln!("xtask: building bpf-linker {BPF_LINKER_VERSION} against {llvm}");
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
