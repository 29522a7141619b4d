//! A true drop-in for a current runc on a real node: the integration suite of the runc that
//! Kubernetes nodes run now (Debian sid's 1.3 package, its source from Debian's source package,
//! prepared by `cargo xtask setup`; its helpers from the package itself) on the Debian 13 node
//! under qemu (tests/tests/nodes.rs): systemd as PID 1, pure cgroup v2 with every controller,
//! the systemd cgroup driver (`RUNC_USE_SYSTEMD`, so the suite's systemd tests run rather than
//! skip). Three ways, as on the host (tests/tests/runc_conformance.rs): plain runc, the shim,
//! and the shim adding an NPU request to every container (`npu-request-runc`, on the node's
//! simulated NPUs). Every test that passes with plain runc must pass through the shim both ways.
//!
//! Under emulation (no KVM here) a test of this suite costs 5-10 s with the systemd driver
//! (bats forks ~100 processes per test, ~35 ms each under TCG, and every container is a
//! systemd scope): the whole suite (312 tests) would take about 40 minutes a way, two hours for
//! three. So the node runs the files that exercise what the shim changes, [`FILES`]: device
//! rules (`dev`), `runc update` (which rewrites them), hooks (the shim adds one) and deletion
//! with its systemd unit (`delete`); the host runs all of its runc's suite three ways.
//! `NPU_RUNC_SUITE_FILES=all` (or a space-separated list of files) runs others.
use std::{path::Path, time::Duration};

use npu_tests::{
    qemu::{self, NodeGuest, Rng},
    require, require_root, require_tools,
    runc_suite::{self, MODES, not_passing, parse_tap, table_row},
};
use xtask::runc_suite::{NODE_RUNC, node_dir};

/// The suite's files the node runs by default (see the module's comment).
const FILES: [&str; 4] = ["dev.bats", "update.bats", "hooks.bats", "delete.bats"];

/// The files to run: [`FILES`], or `NPU_RUNC_SUITE_FILES` (`all`: every file of the suite).
fn files(tree: &Path) -> Vec<String> {
    match std::env::var("NPU_RUNC_SUITE_FILES").ok().as_deref() {
        None | Some("") => FILES.iter().map(|f| f.to_string()).collect(),
        Some("all") => {
            let mut all: Vec<String> = std::fs::read_dir(tree.join("tests/integration"))
                .unwrap()
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.ends_with(".bats"))
                .collect();
            all.sort();
            all
        }
        Some(list) => list.split_whitespace().map(String::from).collect(),
    }
}

#[test]
fn runc_s_own_suite_on_a_systemd_node() {
    if !require_root() || !require_tools(&["qemu-system-x86_64", "qemu-img", "mkfs.ext4"]) {
        return;
    }
    let image = qemu::node_dir("trixie");
    let suite_dir = node_dir(&qemu::nodes_dir());
    let deb_name = format!("{}-{}.deb", NODE_RUNC.0, NODE_RUNC.1);
    let deb = qemu::nodes_dir().join("debs").join(&deb_name);
    let Some(tree) = runc_suite::source_tree(&suite_dir) else {
        require(
            &format!(
                "runc's suite for the node prepared in {} (cargo xtask setup)",
                suite_dir.display()
            ),
            false,
        );
        return;
    };
    if !require(
        "the trixie node image and the newer runc package (cargo xtask setup)",
        image.join("node.img").exists() && deb.exists(),
    ) {
        return;
    }
    let mut rng = Rng::new(qemu::seed(), 0x72_75_6e_63);
    let files = files(&tree);
    // Up to 15 s a test under emulation (5-10 s measured): each way's limit, and the boot's.
    let tests: usize = files
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(tree.join("tests/integration").join(f))
                .unwrap_or_else(|e| panic!("{f}: {e}"));
            text.lines().filter(|l| l.starts_with("@test ")).count()
        })
        .sum();
    let way_minutes = 5 + tests as u64 / 4;
    let mut plan = qemu::node_plan(&mut rng);
    plan.insert(
        "runc_suite".into(),
        serde_json::json!({"deb": deb_name, "files": files, "minutes": way_minutes}),
    );
    let plan = serde_json::Value::from(plan);
    let dir = tempfile::Builder::new()
        .prefix("npu-node-runc-suite-")
        .tempdir()
        .unwrap();
    let payload = qemu::node_payload(
        dir.path(),
        &[
            "npu-container-runtime",
            "npu-container-hook",
            "npu-ctk",
            "devprobe",
            "node-guest",
            "npu-request-runc",
        ],
        &plan,
    );
    std::fs::create_dir_all(payload.join("debs")).unwrap();
    std::fs::copy(&deb, payload.join("debs").join(&deb_name)).unwrap();
    npu_tests::run(
        std::process::Command::new("cp")
            .arg("-a")
            .arg(&tree)
            .arg(payload.join("runc-suite")),
    );
    let mut guest = NodeGuest::new(&image, &payload, dir.path());
    let boot = guest.boot(Duration::from_secs((10 + 3 * way_minutes) * 60));
    eprintln!("runc's suite node ({:.0} s), plan {plan}:", boot.seconds);
    let problems = judge(&boot);
    if !problems.is_empty() {
        let kept = dir.keep();
        eprintln!("the guest's files are kept in {}", kept.display());
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Problems with what the node reported: a failed setup, a way that did not run, or a test
/// that passed with plain runc and not through the shim.
fn judge(boot: &qemu::Boot) -> Vec<String> {
    let mut problems = Vec::new();
    let check = |name: &str| boot.results.iter().find(|v| v["check"] == name);
    for v in &boot.results {
        let detail = v["detail"].as_str().unwrap_or_default();
        let name = v["check"].as_str().unwrap_or_default();
        if name.starts_with("runc's suite: ") {
            eprintln!("  {name}: ok {}", v["ok"]);
        } else {
            eprintln!("  {v}");
        }
        if v["ok"] == false {
            problems.push(format!("{name} failed: {detail}"));
        }
    }
    for name in [
        "node",
        "runc's suite setup",
        "runc's suite: NPU containers prepared",
        "runc's suite: nothing left",
    ] {
        if check(name).is_none() {
            problems.push(format!("no {name} check"));
        }
    }
    let version = check("runc's suite setup")
        .and_then(|v| v["detail"].as_str())
        .unwrap_or_default();
    let mut table = vec![table_row(&format!("runc's suite ({version})"), None)];
    let mut runs = Vec::new();
    for mode in MODES {
        let Some(text) = check(&format!("runc's suite: {mode}")).and_then(|v| v["detail"].as_str())
        else {
            problems.push(format!("no run of runc's suite: {mode}"));
            continue;
        };
        let outcomes = parse_tap(text);
        table.push(table_row(mode, Some(&outcomes)));
        runs.push((mode, outcomes));
    }
    eprintln!("{}", table.join("\n"));
    if !boot.results.iter().any(|v| v["done"] == true) {
        let tail: Vec<&str> = boot.console.lines().rev().take(40).collect();
        problems.push(format!(
            "the node did not end with done ({:.0} s); console tail:\n{}",
            boot.seconds,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ));
    }
    if let Some((_, baseline)) = runs.first().filter(|(mode, _)| *mode == MODES[0]) {
        eprintln!(
            "not passing with plain runc on the node (not judged): {:?}",
            not_passing(baseline)
        );
        // The baseline must be a real run of the suite with the systemd driver: most tests
        // pass, and none skips for want of systemd.
        let passed = runc_suite::tally(baseline, runc_suite::Outcome::Pass);
        if passed * 2 < baseline.len() {
            problems.push(format!(
                "plain runc passed {passed} of {} tests: not a baseline",
                baseline.len()
            ));
        }
        let text = check(&format!("runc's suite: {}", MODES[0]))
            .and_then(|v| v["detail"].as_str())
            .unwrap_or_default();
        if text.contains("# skip test requires systemd") {
            problems
                .push("tests skipped for want of systemd: RUNC_USE_SYSTEMD did not hold".into());
        }
        for (mode, outcomes) in &runs[1..] {
            problems.extend(
                runc_suite::regressions(baseline, outcomes)
                    .into_iter()
                    .map(|t| format!("{mode}: {t}")),
            );
        }
    }
    problems
}
