//! Real nodes: Debian 13 (kernel 6.12, systemd 257, Docker 26 with the systemd cgroup driver,
//! Podman 5 over crun, pure cgroup v2 with every controller) and Debian 11 (kernel 5.10, the
//! series of openEuler 22.03 LTS, systemd 247, Docker 20.10, runc 1.0), booted under qemu
//! from the images `cargo xtask setup` builds (xtask/src/nodes.rs), with systemd as PID 1.
//! In each, `node-guest` (tests/src/bin/node-guest.rs) runs Docker's isolation checks with
//! the systemd driver (requests, privileged, `--device`, `docker update`, `daemon-reload`
//! with and without /dev/char links, a container and an engine restart with live-restore,
//! the node guard on docker.slice, the monitor), Podman's three modes where the node has it,
//! `doctor`, and the .deb: installed, the node rebooted (the node guard must be on the
//! parent before the engine's first container at boot), reload, upgrade, remove and purge.
//! On Debian 13 a third boot checks the shim over each low-level runtime: the node's runc 1.1
//! and crun 1.21, then Debian's newer runc packages (sid's 1.3, experimental's 1.4) installed
//! over it; and Kubernetes' path: containerd's CRI plugin with the systemd cgroup driver, pods
//! under kubepods.slice driven in the kubelet's order (requests, DeviceSpecs, CDI, updates on
//! the real controllers, privileged pods, the node guard on kubepods.slice, a killed shim), on
//! the node's containerd 1.7 and on sid's 2.1 installed over it.
//! The majors, the chip count and the NPUs asked for are random per run (the seed is
//! printed; `NPU_TEST_SEED` repeats one).
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use npu_tests::{
    qemu::{self, NodeGuest, Rng},
    require, require_root, require_tools,
};

/// A node and what its guest runs.
struct Node {
    suite: &'static str,
    podman: bool,
    /// Whether the node also checks the shim over crun and newer runc packages (boot 3).
    runtimes: bool,
    /// Whether the kernel runs only the basic guard variant (5.10: doctor warns so).
    basic_guard: bool,
}

const NODES: [Node; 2] = [
    Node {
        suite: "trixie",
        podman: true,
        runtimes: true,
        basic_guard: false,
    },
    Node {
        suite: "bullseye",
        podman: false,
        runtimes: false,
        basic_guard: true,
    },
];

/// Checks every node must report in boots 1 and 2 (boot 3's are below).
const BOOT_ONE: [&str; 14] = [
    "node",
    "configure docker",
    "docker request",
    "docker privileged without a request",
    "docker --device",
    "docker long-lived containers",
    "/dev/char links and daemon-reload",
    "docker update",
    "container restart",
    "engine restart with live-restore",
    "node guard on docker.slice",
    "monitor names a container started around the runtime",
    "docker cleanup",
    "doctor",
];
const PODMAN: [&str; 4] = [
    "configure podman",
    "podman runtime mode over crun",
    "podman hooks.d",
    "podman CDI",
];
const BOOT_TWO: [&str; 7] = [
    "node guard at boot",
    "doctor with the node guard",
    "gc timer",
    "guard reload",
    "package upgrade",
    "package remove",
    "package purge",
];

/// Boot 3 (nodes with `runtimes`): the shim over the node's runc and crun, then the newer runc
/// packages setup keeps (xtask/src/nodes.rs), each as `runtime: runc-SUITE`, and the CRI checks
/// on the node's containerd and each newer containerd package (`CRI on containerd-SUITE: ...`).
const BOOT_THREE: [&str; 3] = ["runtimes setup", "runtime: runc", "runtime: crun"];
const CRI: [&str; 12] = [
    "setup",
    "requests and device plugin",
    "UpdateContainerResources",
    "restart",
    "pods over crun",
    "privileged pod without a request",
    "CDI",
    "node guard on kubepods.slice",
    "env_requests privileged",
    "killed shim",
    "doctor",
    "cleanup",
];

/// The newer `package` packages setup keeps for the node (`debs/PACKAGE-SUITE.deb`, from
/// xtask's list): all of them, or the suite fails.
fn newer(node: &Node, package: &str) -> Vec<String> {
    if !node.runtimes {
        return Vec::new();
    }
    xtask::nodes::NEWER_PACKAGES
        .iter()
        .filter(|(p, _)| *p == package)
        .map(|(package, suite)| format!("{package}-{suite}.deb"))
        .collect()
}

/// What the guest is asked to do: the simulated NPUs (`qemu::node_plan`) and the node's
/// engines and newer packages.
fn plan(rng: &mut Rng, node: &Node) -> serde_json::Value {
    let mut plan = qemu::node_plan(rng);
    plan.insert("podman".into(), node.podman.into());
    plan.insert("runtimes".into(), newer(node, "runc").into());
    plan.insert("containerds".into(), newer(node, "containerd").into());
    plan.into()
}

fn payload(dir: &Path, plan: &serde_json::Value) -> PathBuf {
    let payload = qemu::node_payload(
        dir,
        &[
            "npu-container-runtime",
            "npu-container-hook",
            "npu-ctk",
            "devprobe",
            "node-guest",
        ],
        plan,
    );
    for (var, name) in [
        ("NPU_PACKAGE_DEB", "npu.deb"),
        ("NPU_PACKAGE_DEB_UPGRADE", "npu-upgrade.deb"),
    ] {
        let deb = std::env::var_os(var)
            .unwrap_or_else(|| panic!("{var} names no .deb: run this suite with cargo xtask test"));
        std::fs::copy(&deb, payload.join(name)).unwrap();
    }
    let debs = payload.join("debs");
    std::fs::create_dir_all(&debs).unwrap();
    let runtimes = plan["runtimes"].as_array().into_iter().flatten();
    for deb in runtimes.chain(plan["containerds"].as_array().into_iter().flatten()) {
        let name = deb.as_str().unwrap();
        let from = qemu::nodes_dir().join("debs").join(name);
        std::fs::copy(&from, debs.join(name)).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
    }
    payload
}

/// Problems with what the boots reported: failed or missing checks, or a boot that did not
/// end as it should (with the console's tail).
fn judge(node: &Node, plan: &serde_json::Value, boots: &[qemu::Boot]) -> Vec<String> {
    let mut problems = Vec::new();
    let tail = |b: &qemu::Boot| {
        let lines: Vec<&str> = b.console.lines().rev().take(60).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join("\n")
    };
    let debs = |key: &str| -> Vec<String> {
        plan[key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| d.as_str())
            .map(|d| d.trim_end_matches(".deb").to_string())
            .collect()
    };
    let (runtimes, containerds) = (debs("runtimes"), debs("containerds"));
    let boot_three = node.runtimes;
    // Boots 1 and 2, and boot 3 when there are runtimes to check; the last ends with done.
    let count = if boot_three { 3 } else { 2 };
    if boots.len() < count {
        problems.push(format!(
            "{}: {} boot(s), want {count}",
            node.suite,
            boots.len()
        ));
    }
    for (n, boot) in boots.iter().enumerate() {
        let end = if n + 1 == count { "done" } else { "reboot" };
        if !boot.results.iter().any(|v| v[end] == true) {
            problems.push(format!(
                "{} boot {} did not end with {end} ({:.0} s); console tail:\n{}",
                node.suite,
                n + 1,
                boot.seconds,
                tail(boot)
            ));
        }
    }
    let results: Vec<&serde_json::Value> = boots.iter().flat_map(|b| &b.results).collect();
    for v in results.iter().filter(|v| v["ok"] == false) {
        problems.push(format!(
            "{}: {} failed: {}",
            node.suite, v["check"], v["detail"]
        ));
    }
    let mut want: Vec<&str> = BOOT_ONE.to_vec();
    if node.podman {
        want.extend(PODMAN);
    }
    want.push("package install");
    want.extend(BOOT_TWO);
    let mut boot_three_checks: Vec<String> = Vec::new();
    if boot_three {
        boot_three_checks.extend(BOOT_THREE.iter().map(|c| c.to_string()));
        boot_three_checks.extend(runtimes.iter().map(|d| format!("runtime: {d}")));
        for containerd in ["containerd".to_string()].iter().chain(&containerds) {
            boot_three_checks.extend(CRI.iter().map(|c| format!("CRI on {containerd}: {c}")));
        }
    }
    want.extend(boot_three_checks.iter().map(String::as_str));
    for name in want {
        if !results.iter().any(|v| v["check"] == name) {
            problems.push(format!("{}: no {name} check", node.suite));
        }
    }
    // doctor warns only about what it should: a kernel with the basic guard variant, and the
    // parents left unguarded (everywhere but where the package's guard runs).
    for v in &results {
        let check = v["check"].as_str().unwrap_or_default();
        if !(check == "doctor"
            || check.ends_with(": doctor")
            || check == "doctor with the node guard")
        {
            continue;
        }
        let unguarded = check != "doctor with the node guard";
        for line in v["detail"].as_str().unwrap_or_default().lines() {
            let explained = (node.basic_guard
                && line.starts_with("[warn] guard program: this kernel loads only the Basic"))
                || (unguarded && line.starts_with("[warn] node guard: not guarded by this build"));
            if !explained {
                problems.push(format!("{}: {check} says: {line}", node.suite));
            }
        }
    }
    problems
}

/// Boots `node` until its guest says done (it reboots between its parts: two, or three with
/// runtimes) and judges the results.
fn run_node(node: &Node, seed: u64) -> Vec<String> {
    let image = qemu::node_dir(node.suite);
    if !require(
        &format!("the {} node image (cargo xtask setup)", node.suite),
        image.join("node.img").exists(),
    ) {
        return Vec::new();
    }
    let mut rng = Rng::new(seed, node.suite.len() as u64);
    let plan = plan(&mut rng, node);
    let dir = tempfile::Builder::new()
        .prefix(&format!("npu-node-{}-", node.suite))
        .tempdir()
        .unwrap();
    let payload = payload(dir.path(), &plan);
    let mut guest = NodeGuest::new(&image, &payload, dir.path());
    // Boots 1 and 3 take 6-7 minutes beside the other suites; a hung guest costs no more than
    // this.
    let limit = Duration::from_secs(15 * 60);
    let mut boots = vec![guest.boot(limit)];
    while boots.len() < 3
        && boots
            .last()
            .unwrap()
            .results
            .iter()
            .any(|v| v["reboot"] == true)
    {
        boots.push(guest.boot(limit));
    }
    for (n, boot) in boots.iter().enumerate() {
        eprintln!(
            "{} boot {} ({:.0} s), plan {plan}:",
            node.suite,
            n + 1,
            boot.seconds
        );
        for v in &boot.results {
            eprintln!("  {v}");
        }
    }
    let problems = judge(node, &plan, &boots);
    if !problems.is_empty() {
        // Kept for a look: the consoles and the disk.
        let kept = dir.keep();
        eprintln!(
            "{}: the guest's files are kept in {}",
            node.suite,
            kept.display()
        );
    }
    problems
}

#[test]
fn npu_containers_on_systemd_nodes() {
    if !require_root() || !require_tools(&["qemu-system-x86_64", "qemu-img", "mkfs.ext4"]) {
        return;
    }
    let seed = qemu::seed();
    // Both nodes at once: each guest mostly waits on its emulated CPUs.
    let runs: Vec<_> = NODES
        .iter()
        .map(|node| std::thread::spawn(move || run_node(node, seed)))
        .collect();
    let problems: Vec<String> = runs
        .into_iter()
        .flat_map(|t| t.join().expect("node thread"))
        .collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
