//! A true drop-in for runc: runc's own integration suite (bats, from Debian's source package
//! of the installed runc, prepared by `cargo xtask setup`) run three ways, on this VM's hybrid
//! layout and in the pure v2 emulation: plain runc (the baseline), the shim with no request,
//! and the shim with an NPU request added to every container it creates (`npu-request-runc`,
//! on a simulated NPU host). Every test that passes with plain runc must pass through the shim
//! in both modes. Tests that cannot
//! run here are skipped by the baseline too (no criu, no systemd as PID 1, no rootless user,
//! no network for `spec validator`): they are listed, not judged.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use npu_runtime::node::config::PATH_ENV;
use npu_tests::{
    bin,
    cgroups::{Place, V2Namespace},
    host::FakeHost,
    require, require_root, require_tools,
    runc_suite::{self, MODES, Outcomes, missing_programs, not_passing, run_bats, table_row},
};

/// Where `cargo xtask setup` prepares the suite (`NPU_RUNC_SUITE` overrides it).
const SUITE_DEFAULT: &str = "/var/cache/npu-tests/runc-suite";

/// The runc source tree with the prepared suite, if there is one.
fn suite() -> Option<PathBuf> {
    let dir =
        std::env::var_os("NPU_RUNC_SUITE").map_or_else(|| SUITE_DEFAULT.into(), PathBuf::from);
    runc_suite::source_tree(&dir)
}

/// Runs the whole suite with `runc` as `$RUNC` (`npu_tests::runc_suite::run_bats`).
fn run_suite(place: Place<'_>, src: &Path, runc: &Path, config: &Path, log: &Path) -> Outcomes {
    // Entering the v2 namespace resets the working directory: change to the tree inside it.
    let mut bats = place.command("sh");
    bats.arg("-c")
        .arg(r#"cd "$1" && exec script -qec "bats -t tests/integration" /dev/null"#)
        .arg("sh")
        .arg(src)
        .env("RUNC", runc)
        .env(PATH_ENV, config);
    run_bats(bats, log, Duration::from_secs(30 * 60)).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn runc_s_own_suite_passes_through_the_shim() {
    if !(require_root() && require_tools(&["bats", "script", "runc", "jq"])) {
        return;
    }
    let Some(src) = suite() else {
        require(
            &format!("runc's integration suite prepared in {SUITE_DEFAULT} (cargo xtask setup)"),
            false,
        );
        return;
    };
    let host = FakeHost::new(2);
    let runc: PathBuf = npu_tests::run(Command::new("sh").args(["-c", "command -v runc"]))
        .trim()
        .into();
    let binaries = [runc, bin("npu-container-runtime"), bin("npu-request-runc")];
    // The TAP logs outlive the test, for whoever reads a failure.
    let logs = std::env::temp_dir().join("npu-runc-conformance");
    std::fs::create_dir_all(&logs).unwrap();
    let mut table = vec![table_row("runc's suite", None)];
    let mut regressions = Vec::new();
    let v2 = V2Namespace::new();
    for (place, layout) in [(Place::Host, "hybrid"), (Place::V2(&v2), "cgroup v2")] {
        let mut results = Vec::new();
        for (mode, binary) in MODES.iter().zip(&binaries) {
            let name = format!("{layout} {mode}").replace([' ', '+'], "-");
            let log = logs.join(format!("{name}.tap"));
            let r = run_suite(place, &src, binary, &host.config_path, &log);
            assert!(
                !r.is_empty(),
                "{layout} {mode}: no test ran; see {}",
                log.display()
            );
            // A program the suite runs that is not installed fails its tests with plain runc
            // too, so they would silently leave the comparison: that is a missing package
            // (cargo xtask setup's list), not a limit of this machine.
            let missing = missing_programs(&std::fs::read_to_string(&log).unwrap_or_default());
            assert!(
                missing.is_empty(),
                "{layout} {mode}: runc's suite ran programs that are not installed: {missing:?} \
                 (add their packages to xtask/src/setup.rs); see {}",
                log.display()
            );
            table.push(table_row(&format!("{layout}: {mode}"), Some(&r)));
            results.push(r);
        }
        let baseline = &results[0];
        eprintln!(
            "{layout}: not passing with plain runc here (not judged): {:?}",
            not_passing(baseline)
        );
        for (mode, r) in MODES.iter().zip(&results).skip(1) {
            regressions.extend(
                runc_suite::regressions(baseline, r)
                    .into_iter()
                    .map(|t| format!("{layout}: {mode}: {t}")),
            );
        }
    }
    eprintln!("{}", table.join("\n"));
    assert!(
        regressions.is_empty(),
        "tests that pass with plain runc but not through the shim (TAP logs in {}):\n{}",
        logs.display(),
        regressions.join("\n")
    );
    assert!(
        host.records().is_empty(),
        "records left: {:?}",
        host.records()
    );
}
