//! A true drop-in for runc: runc's own integration suite (bats, from Debian's source package
//! of the installed runc, prepared by `cargo xtask setup`) run three ways, on this VM's hybrid
//! layout and in the pure v2 emulation: plain runc (the baseline), the shim with no request,
//! and the shim with an NPU request added to every container it creates (`npu-request-runc`, on a simulated NPU host). Every test
//! that passes with plain runc must pass through the shim in both modes. Tests that cannot
//! run here are skipped by the baseline too (no criu, no systemd as PID 1, no rootless user,
//! no network for `spec validator`): they are listed, not judged.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use npu_runtime::node::config::PATH_ENV;
use npu_tests::{
    bin,
    cgroups::{Place, V2Namespace},
    host::FakeHost,
    require, require_root, require_tools,
};

/// Where `cargo xtask setup` prepares the suite (`NPU_RUNC_SUITE` overrides it).
const SUITE_DEFAULT: &str = "/var/cache/npu-tests/runc-suite";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Pass,
    Fail,
    Skip,
}

/// The runc source tree with the prepared suite, if there is one.
fn suite() -> Option<PathBuf> {
    let dir =
        std::env::var_os("NPU_RUNC_SUITE").map_or_else(|| SUITE_DEFAULT.into(), PathBuf::from);
    if !dir.join("ready").exists() {
        return None;
    }
    std::fs::read_dir(dir.join("src"))
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join("tests/integration").is_dir())
}

/// Parses bats' TAP output: `ok N name`, `ok N name # skip (why)`, `not ok N name`.
fn parse_tap(text: &str) -> BTreeMap<String, Outcome> {
    let mut out = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        let (rest, failed) = match line.strip_prefix("not ok ") {
            Some(rest) => (rest, true),
            None => match line.strip_prefix("ok ") {
                Some(rest) => (rest, false),
                None => continue,
            },
        };
        let Some((_, name)) = rest.split_once(' ') else {
            continue;
        };
        let (name, outcome) = match name.split_once(" # skip") {
            Some((name, _)) => (name, Outcome::Skip),
            None if failed => (name, Outcome::Fail),
            None => (name, Outcome::Pass),
        };
        out.insert(name.trim().to_string(), outcome);
    }
    out
}

/// The programs a TAP log says were not found (`NAME: command not found`).
fn missing_programs(text: &str) -> std::collections::BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_suffix(": command not found"))
        .filter_map(|l| l.rsplit(": ").next())
        .map(String::from)
        .collect()
}

/// Runs the whole suite with `runc` as `$RUNC`; returns each test's outcome. bats needs a
/// terminal (the suite's specs ask for one): `script` gives it a pseudo-terminal. A test that
/// fails before its teardown can leave its `recvtty` holding that terminal, so bats never
/// ends: once every planned test has reported, such leftovers are killed.
fn run_suite(
    place: Place<'_>,
    src: &Path,
    runc: &Path,
    config: &Path,
    log: &Path,
) -> BTreeMap<String, Outcome> {
    // Entering the v2 namespace resets the working directory: change to the tree inside it.
    let mut child = place
        .command("sh")
        .arg("-c")
        .arg(r#"cd "$1" && exec script -qec "bats -t tests/integration" /dev/null"#)
        .arg("sh")
        .arg(src)
        .env("RUNC", runc)
        .env(PATH_ENV, config)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(log).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("script");
    let started = Instant::now();
    let mut done_at: Option<Instant> = None;
    while child.try_wait().unwrap().is_none() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let planned = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("1.."))
            .and_then(|n| n.trim().parse::<usize>().ok());
        if planned.is_some_and(|n| parse_tap(&text).len() >= n) {
            let since = *done_at.get_or_insert_with(Instant::now);
            if since.elapsed() > Duration::from_secs(20) {
                // By name: the suite starts it by a path of its own (`tests/integration/../..`),
                // which a match on the full path missed and bats waited the 30 minutes out.
                let _ = Command::new("pkill").args(["-x", "recvtty"]).status();
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(30 * 60),
            "runc's suite did not finish in 30 minutes; see {}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    parse_tap(&std::fs::read_to_string(log).unwrap_or_default())
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
    let modes = [
        ("runc", runc),
        ("shim", bin("npu-container-runtime")),
        ("shim + NPU request", bin("npu-request-runc")),
    ];
    // The TAP logs outlive the test, for whoever reads a failure.
    let logs = std::env::temp_dir().join("npu-runc-conformance");
    std::fs::create_dir_all(&logs).unwrap();
    let tally = |r: &BTreeMap<String, Outcome>, o: Outcome| r.values().filter(|v| **v == o).count();
    let mut table = vec![format!(
        "{:<34} {:>6} {:>6} {:>6}",
        "runc's suite", "pass", "fail", "skip"
    )];
    let mut regressions = Vec::new();
    let v2 = V2Namespace::new();
    for (place, layout) in [(Place::Host, "hybrid"), (Place::V2(&v2), "cgroup v2")] {
        let mut results = Vec::new();
        for (mode, binary) in &modes {
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
            table.push(format!(
                "{:<34} {:>6} {:>6} {:>6}",
                format!("{layout}: {mode}"),
                tally(&r, Outcome::Pass),
                tally(&r, Outcome::Fail),
                tally(&r, Outcome::Skip)
            ));
            results.push(r);
        }
        let baseline = &results[0];
        let not_here: Vec<&String> = baseline
            .iter()
            .filter(|(_, o)| **o != Outcome::Pass)
            .map(|(name, _)| name)
            .collect();
        eprintln!("{layout}: not passing with plain runc here (not judged): {not_here:?}");
        for ((mode, _), r) in modes.iter().zip(&results).skip(1) {
            for (name, o) in baseline {
                if *o == Outcome::Pass && r.get(name) != Some(&Outcome::Pass) {
                    regressions.push(format!("{layout}: {mode}: {name} ({:?})", r.get(name)));
                }
            }
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

#[test]
fn missing_programs_are_named() {
    let log =
        "# helpers.bash: line 134: gawk: command not found\nok 1 x\n# sh: 1: foo: not found\n";
    assert_eq!(
        missing_programs(log).into_iter().collect::<Vec<_>>(),
        ["gawk"]
    );
}

#[test]
fn tap_parsing() {
    let r = parse_tap(
        "1..3\nok 1 runc version\r\nnot ok 2 spec validator\nok 3 checkpoint # skip test requires criu\n# comment\n",
    );
    assert_eq!(r["runc version"], Outcome::Pass);
    assert_eq!(r["spec validator"], Outcome::Fail);
    assert_eq!(r["checkpoint"], Outcome::Skip);
    assert_eq!(r.len(), 3);
}
