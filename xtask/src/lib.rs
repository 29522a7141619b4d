//! Developer tasks: `cargo xtask setup | test | demo | bench | package`, as a library so the
//! setup-closure suite (`tests/tests/setup_closure.rs`) installs setup's package lists into a
//! fresh root with the same code setup runs here.
pub mod apt;
pub mod nodes;
pub mod package;
pub mod runc_suite;
pub mod setup;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

pub type Result<T = ()> = std::result::Result<T, String>;

/// Runs a command with inherited stdio, failing with its name if it fails.
pub fn run(cmd: &mut Command) -> Result {
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed with {status}"))
    }
}

/// Runs a command and returns its trimmed stdout, failing with everything it printed.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Cargo, with `$CARGO_HOME/bin` first on PATH so builds find bpf-linker.
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.env("PATH", setup::path_with_cargo_bin());
    cmd
}

/// Cargo's target directory.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    )
}

/// Release build of every binary, linked statically against musl. The shim and the hook are
/// exec'd on every container start, and a static glibc binary spends about 0.4 ms of that in
/// its start-up CPU probing (`cpuid` traps to the hypervisor on a VM); a static musl binary
/// starts in half the time (docs/benchmarks.md). `Build::Demo` leaves out what only the
/// tests need (the test crate's `cri` feature: the CRI client, tonic and the CRI protos).
/// Returns their directory.
pub fn release_build(build: Build) -> Result<PathBuf> {
    let target = setup::release_target()?;
    let mut cmd = cargo();
    cmd.args(["build", "--release", "--bins", "--target", &target]);
    if build == Build::Demo {
        cmd.arg("--no-default-features");
    }
    run(&mut cmd)?;
    Ok(target_dir().join(target).join("release"))
}

/// Which release binaries to build.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Build {
    /// Every binary but those needing the `cri` feature (the node guest).
    Demo,
    /// Every binary.
    All,
}
