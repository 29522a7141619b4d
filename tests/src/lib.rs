//! Fixtures for the end-to-end suites, one module per thing a suite stands on:
//! - [`host`]: a simulated NPU host (fake device nodes, driver tree, mount lists, config);
//! - [`cgroups`]: test cgroups and the pure cgroup v2 namespace ([`cgroups::Place`]);
//! - [`probe`]: device verdicts from a process in given cgroups, and the expected matrix;
//! - [`runc`]: runc containers from busybox bundles, through plain runc or our shim;
//! - [`engines`]: private Docker, Podman and containerd daemons;
//! - `cri`: a CRI client that drives containerd's CRI plugin as the kubelet does (the `cri`
//!   feature, on by default; the demo's build leaves its gRPC crates out);
//! - [`syscalls`]: older kernels' code paths forced by hiding syscalls (seccomp);
//! - [`qemu`]: Debian's kernels booted under qemu with the release binaries.
//!
//! This file has what every suite uses: helper binaries, unique names, requirements and
//! running commands.
//!
//! Requirements (root, tools) are checked with [`require`]: under `CI=true` a missing one
//! fails the test; elsewhere the test says loudly that it skipped.
use std::{
    path::PathBuf,
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

use crate::host::FakeHost;

pub mod cgroups;
#[cfg(feature = "cri")]
pub mod cri;
pub mod engines;
pub mod guest;
pub mod host;
pub mod probe;
pub mod qemu;
pub mod runc;
pub mod runc_suite;
pub mod syscalls;

/// Path of a binary of this workspace: this package's helpers (`devprobe`, `guardctl`) or the
/// runtime's (`npu-container-runtime`, `npu-container-hook`, built for the runtime's own CLI
/// tests). Cargo puts them next to the `deps/` directory that holds the test executables.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // Test executables live in deps/, helper binaries (and the demo) one level up.
    let dir = exe.parent().expect("executable directory");
    [dir.join(name), dir.join("..").join(name)]
        .into_iter()
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("binary {name} is not built next to {}", exe.display()))
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique to this process and call, for cgroups, bpffs dirs and namespaces.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Whether a test may run. A missing requirement fails under `CI=true`, and is reported as a
/// skip (on stderr, with the reason) elsewhere.
pub fn require(what: &str, ok: bool) -> bool {
    if !ok {
        assert!(!in_ci(), "CI=true but the test environment lacks: {what}");
        eprintln!("SKIPPED: this test needs {what}");
    }
    ok
}

pub fn require_root() -> bool {
    require("root", nix::unistd::geteuid().is_root())
}

/// Whether every tool in `tools` is on PATH, each required as [`require`] does.
pub fn require_tools(tools: &[&str]) -> bool {
    tools.iter().all(|t| require(t, have_tool(t)))
}

pub fn have_tool(name: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {name} >/dev/null")])
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs a command, panicking with its output when it fails; returns stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `npu-ctk monitor --json EXTRA` at `place` with `host`'s config while `during` runs (started
/// once the monitor says it listens; stopped with Ctrl-C 1.5 s after, past its rescan):
/// every line it printed, parsed, and the whole text.
pub fn monitor_events(
    place: cgroups::Place<'_>,
    host: &FakeHost,
    extra: &[&str],
    during: impl FnOnce(),
) -> (Vec<serde_json::Value>, String) {
    use std::io::{BufRead, Read};
    let mut monitor = place
        .command(bin("npu-ctk"))
        .env(npu_runtime::node::config::PATH_ENV, &host.config_path)
        .args(["monitor", "--json"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("npu-ctk monitor");
    let mut listening = String::new();
    std::io::BufReader::new(monitor.stderr.take().unwrap())
        .read_line(&mut listening)
        .unwrap();
    during();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(monitor.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let mut out = String::new();
    monitor
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let _ = monitor.wait();
    let events = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    (events, format!("{listening}{out}"))
}

/// Runs `npu-ctk` with `host`'s configuration; returns success and stdout + stderr.
pub fn npu_ctk(host: &FakeHost, args: &[&str]) -> (bool, String) {
    npu_ctk_at(cgroups::Place::Host, host, args)
}

/// [`npu_ctk`] run at `place` (inside the pure-v2 namespace, or on the host).
pub fn npu_ctk_at(place: cgroups::Place<'_>, host: &FakeHost, args: &[&str]) -> (bool, String) {
    let out = place
        .command(bin("npu-ctk"))
        .env(npu_runtime::node::config::PATH_ENV, &host.config_path)
        .args(args)
        .output()
        .expect("npu-ctk");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}
