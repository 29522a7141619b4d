//! Developer tasks: `cargo xtask setup | test | demo | bench`.
//!
//! `setup` installs, idempotently, everything the build and the tests need that cargo does not
//! fetch by itself: Debian packages (runc, bpftool, ...), the nightly `rust-src` component and
//! `bpf-linker` built against the nightly's own LLVM (DESIGN.md section 5). `test` and `demo`
//! run `setup` first, so each is a single command on a fresh machine.
mod setup;

use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("setup") => setup::all(),
        Some("test") => setup::all().and_then(|()| test(&args[1..])),
        Some("demo") => setup::all().and_then(|()| release_binary("npu-demo")),
        Some("bench") => setup::all().and_then(|()| release_binary("npu-bench")),
        _ => Err("usage: cargo xtask setup | test [cargo test args] | demo | bench".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

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

fn cargo() -> Command {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.env("PATH", setup::path_with_cargo_bin());
    cmd
}

/// Release build of every binary, linked statically against musl, then runs one of them:
/// `npu-demo` (real containers through the runtime on simulated NPUs) or `npu-bench`. The shim
/// and the hook are exec'd on every container start, and a static glibc binary spends about
/// 0.4 ms of that in its start-up CPU probing (`cpuid` traps to the hypervisor on a VM); a
/// static musl binary starts in half the time (README, "Where the start time goes").
fn release_binary(name: &str) -> Result {
    let target = setup::release_target()?;
    run(cargo().args(["build", "--release", "--bins", "--target", &target]))?;
    let dir = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
        std::path::PathBuf::from,
    );
    run(&mut Command::new(
        dir.join(&target).join("release").join(name),
    ))
}

/// Formatting, lints, then every test (unit, kernel-level and end-to-end suites).
fn test(extra: &[String]) -> Result {
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    // The eBPF crate is not a default member: lint it on its own target with nightly.
    run(Command::new("rustup")
        .args(["run", "nightly", "cargo", "clippy", "-p", "npu-guard-ebpf"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .args(["--", "-D", "warnings"])
        .env("PATH", setup::path_with_cargo_bin()))?;
    run(cargo().arg("test").args(extra))
}
