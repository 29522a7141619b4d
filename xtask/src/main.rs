//! Developer tasks: `cargo xtask setup | test | demo | bench | package`.
//!
//! `setup` installs, idempotently, everything the build and the tests need that cargo does not
//! fetch by itself: Debian packages (runc, bpftool, ...), the nightly `rust-src` component and
//! `bpf-linker` built against the nightly's own LLVM (DESIGN.md section 5). `test` and `demo`
//! run `setup` first, so each is a single command on a fresh machine.
use std::process::{Command, ExitCode};

use xtask::{Build, Result, cargo, package, release_build, run, setup, target_dir};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("setup") => setup::ensure(setup::Level::Tests),
        Some("test") => setup::ensure(setup::Level::Tests).and_then(|()| test(&args[1..])),
        Some("demo") => setup::ensure(setup::Level::Demo).and_then(|()| release_binary("npu-demo")),
        Some("bench") => {
            setup::ensure(setup::Level::Demo).and_then(|()| release_binary("npu-bench"))
        }
        Some("package") => {
            setup::ensure(setup::Level::Packages).and_then(|()| package::command(&args[1..]))
        }
        _ => Err(
            "usage: cargo xtask setup | test [cargo test args] | demo | bench | package \
             [--version V]"
                .into(),
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs one release binary: `npu-demo` (real containers through the runtime on simulated
/// NPUs) or `npu-bench`.
fn release_binary(name: &str) -> Result {
    run(&mut Command::new(release_build(Build::Demo)?.join(name)))
}

/// Test suites that take minutes and run beside the others (they mostly wait on emulators,
/// downloads and dpkg), each as (test target, test name to skip in the main run), in lanes:
/// the suites of a lane run one after the other, the lanes side by side.
const LANES: [&[(&str, &str)]; 2] = [
    // One after the other, so no more than three guests boot at once (the node suite's two
    // beside the runc suite's node).
    &[
        (
            "setup_closure",
            "setup_s_packages_bring_every_program_to_a_fresh_root",
        ),
        ("kernels", "npu_containers_on_older_and_current_kernels"),
        ("nodes", "npu_containers_on_systemd_nodes"),
    ],
    // A current runc's own suite on a node guest (two vCPUs, mostly one busy: bats is serial).
    &[("node_runc_suite", "runc_s_own_suite_on_a_systemd_node")],
];

/// Run once the lanes are done, when no guest loads the machine: the host's runc suite, whose
/// helpers race on recvtty's socket when emulated CPUs load it (plain runc's runs too).
const AFTER_LANES: &[(&str, &str)] = &[(
    "runc_conformance",
    "runc_s_own_suite_passes_through_the_shim",
)];

/// The test that installs the .deb on this machine: (test target, test name).
const LAST_SUITE: (&str, &str) = (
    "packages",
    "package_installs_runs_upgrades_and_purges_cleanly",
);

/// Formatting, lints, then every test (unit, kernel-level and end-to-end suites). The slow
/// suites run in parallel with the rest, from the same build.
fn test(extra: &[String]) -> Result {
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    // The demo's build leaves the test crate's `cri` feature out: lint that build too.
    run(cargo()
        .args([
            "clippy",
            "-p",
            "npu-tests",
            "--all-targets",
            "--no-default-features",
        ])
        .args(["--", "-D", "warnings"]))?;
    // The eBPF crate is not a default member: lint it on its own target with nightly.
    run(Command::new("rustup")
        .args(["run", "nightly", "cargo", "clippy", "-p", "npu-guard-ebpf"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .args(["--", "-D", "warnings"])
        .env("PATH", setup::path_with_cargo_bin()))?;
    // The kernel suite boots the static release binaries.
    let release = release_build(Build::All)?;
    // The package suite installs these; the second is the same build one version later.
    let packages = package::build(None, None)?;
    let upgrade = package::build(
        Some(&format!("{}+1", env!("CARGO_PKG_VERSION"))),
        Some(&target_dir().join("upgrade")),
    )?;
    let env = [
        ("NPU_RELEASE_DIR", release.into_os_string()),
        ("NPU_TEST_KERNELS", setup::KERNEL_CACHE.into()),
        ("NPU_PACKAGE_DEB", packages.deb.into_os_string()),
        ("NPU_PACKAGE_RPM", packages.rpm.into_os_string()),
        ("NPU_PACKAGE_DEB_UPGRADE", upgrade.deb.into_os_string()),
    ];
    let mut build = cargo();
    build.args([
        "test",
        "--no-run",
        "--message-format=json-render-diagnostics",
    ]);
    let built = build
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run cargo test --no-run: {e}"))?;
    if !built.status.success() {
        return Err("cargo test --no-run failed".into());
    }
    let lanes = LANES
        .iter()
        .map(|suites| spawn_lane(suites, &built.stdout, &env))
        .collect::<Result<Vec<_>>>()?;
    let beside: Vec<&str> = LANES
        .iter()
        .flat_map(|l| l.iter().map(|(t, _)| *t))
        .collect();
    eprintln!(
        "xtask: running the {} suites beside the others (output in {})",
        beside.join(", "),
        std::env::temp_dir().display()
    );
    let mut main = cargo();
    main.arg("test")
        .args(extra)
        .envs(env.iter().cloned())
        .arg("--");
    let all = LANES.iter().flat_map(|l| l.iter()).chain(AFTER_LANES);
    for (_, name) in all.chain([&LAST_SUITE]) {
        main.args(["--skip", name]);
    }
    let result = run(&mut main);
    let mut failed = Vec::new();
    let mut finished = Vec::new();
    for lane in lanes {
        finished.extend(lane.join().map_err(|_| "a parallel lane panicked")?);
    }
    let after = spawn_lane(AFTER_LANES, &built.stdout, &env)?;
    finished.extend(after.join().map_err(|_| "the last lane panicked")?);
    for (target, log, status) in finished {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        match status {
            Ok(s) => {
                eprintln!("xtask: the {target} suite ({s}):\n{text}");
                if !s.success() {
                    failed.push(target);
                }
            }
            Err(e) => {
                eprintln!("xtask: the {target} suite: {e}");
                failed.push(target);
            }
        }
    }
    result?;
    // Alone, after everything: it installs the package, changing /usr/bin and /etc.
    let (target, name) = LAST_SUITE;
    run(Command::new(test_executable(&built.stdout, target)?)
        .arg(name)
        .envs(env.iter().cloned()))?;
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("suite(s) failed: {}", failed.join(", ")))
    }
}

/// What a lane reports of each suite: its target, log and exit status.
type LaneReport = Vec<(
    &'static str,
    std::path::PathBuf,
    Result<std::process::ExitStatus>,
)>;

/// Starts a thread that runs `suites` one after the other (each target's executable from
/// cargo's build `messages`, with `env`), each writing its own log.
fn spawn_lane(
    suites: &'static [(&'static str, &'static str)],
    messages: &[u8],
    env: &[(&'static str, std::ffi::OsString)],
) -> Result<std::thread::JoinHandle<LaneReport>> {
    let mut lane = Vec::new();
    for (target, _) in suites {
        let exe = test_executable(messages, target)?;
        let log = std::env::temp_dir().join(format!("npu-xtask-{target}.log"));
        lane.push((*target, exe, log));
    }
    let env = env.to_vec();
    Ok(std::thread::spawn(move || {
        lane.into_iter()
            .map(|(target, exe, log)| {
                let status = std::fs::File::create(&log)
                    .and_then(|file| {
                        // Their tables and figures in the log, whether they pass or not.
                        Command::new(&exe)
                            .arg("--nocapture")
                            .envs(env.iter().cloned())
                            .stdout(file.try_clone()?)
                            .stderr(file)
                            .status()
                    })
                    .map_err(|e| format!("cannot run {}: {e}", exe.display()));
                (target, log, status)
            })
            .collect()
    }))
}

/// The executable of test target `name` from cargo's JSON build messages.
fn test_executable(messages: &[u8], name: &str) -> Result<std::path::PathBuf> {
    String::from_utf8_lossy(messages)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|m| {
            m["reason"] == "compiler-artifact"
                && m["target"]["name"] == name
                && m["target"]["kind"][0] == "test"
        })
        .and_then(|m| m["executable"].as_str().map(std::path::PathBuf::from))
        .ok_or_else(|| format!("cargo built no test executable for {name}"))
}
