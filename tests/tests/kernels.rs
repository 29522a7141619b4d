//! The kernels NPU servers run: Debian's 5.10 (openEuler 22.03's series) and 6.1, booted under
//! qemu, each with a pure cgroup v2, a hybrid and a v1-only layout. In every boot real NPU
//! containers start through the static release binaries on a simulated NPU host, and the
//! guest reports the isolation matrix, read-only driver mounts, `npu-ctk doctor`, the monitor
//! and cleanup (`tests/src/bin/kernel-guest.rs`). What each kernel gives is checked too: 6.1
//! runs the full guard program; 5.10 lacks three helpers for cgroup device programs and runs
//! the basic one (a container's sub-cgroups are denied, denial events carry no pid) and has
//! no `mount_setattr` (the driver mounts are remounted read-only after attaching). On every
//! layout a privileged-like container naming no NPU is confined, and where there is a cgroup
//! v2 tree the node guard keeps plain runc containers under a guarded parent off the NPUs.
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use npu_tests::{
    qemu::{self, LAYOUTS},
    require, require_root, require_tools,
};

/// What a kernel series is expected to give.
struct Expect {
    series: &'static str,
    /// How doctor names the guard variant it loads.
    variant: &'static str,
    /// The hook's mount API (its `mount_api` log field).
    mount_api: &'static str,
    /// What a task in a sub-cgroup of a container gets for the container's NPU.
    sub_cgroup: &'static str,
    /// Whether denial events carry the task's pid.
    pid: bool,
}

const KERNELS: [Expect; 2] = [
    Expect {
        series: "5.10",
        variant: "only the Basic variant",
        mount_api: "mount_api=AttachThenRemount",
        sub_cgroup: "EPERM",
        pid: false,
    },
    Expect {
        series: "6.1",
        variant: "loads the full variant",
        mount_api: "mount_api=DetachedReadOnly",
        sub_cgroup: "ENXIO",
        pid: true,
    },
];

fn check<'a>(results: &'a [serde_json::Value], name: &str) -> Option<&'a serde_json::Value> {
    results.iter().find(|r| r["check"] == name)
}

/// Everything the boot reported must be ok, and the kernel-specific facts as expected.
fn judge(k: &Expect, layout: &str, boot: &qemu::Boot) -> Vec<String> {
    let ctx = format!("{} {layout}", k.series);
    let mut problems = Vec::new();
    let r = &boot.results;
    if !r.iter().any(|v| v["done"] == true) {
        let tail: Vec<&str> = boot.console.lines().rev().take(40).collect();
        problems.push(format!(
            "{ctx}: the guest did not finish ({:.0} s); results {r:?}; console tail:\n{}",
            boot.seconds,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ));
        return problems;
    }
    for v in r.iter().filter(|v| v["ok"] == false) {
        problems.push(format!("{ctx}: {} failed: {}", v["check"], v["detail"]));
    }
    let detail = |name: &str| {
        check(r, name)
            .and_then(|v| v["detail"].as_str())
            .unwrap_or_default()
            .to_string()
    };
    let mut want = vec!["layout", "doctor", "start", "isolation matrix"];
    want.extend(["read-only driver mounts", "confinement", "cleanup"]);
    if layout != "v1" {
        want.extend([
            "sub-cgroup of a container",
            "monitor",
            "policy show",
            "node guard",
        ]);
    }
    for name in want {
        if check(r, name).is_none() {
            problems.push(format!("{ctx}: no {name} check"));
        }
    }
    let doctor = detail("doctor");
    if layout == "v1" {
        if !doctor.contains("not used: cgroup v1 only") {
            problems.push(format!("{ctx}: doctor on v1: {doctor}"));
        }
    } else if !doctor.contains(k.variant) {
        problems.push(format!(
            "{ctx}: doctor should say {:?}: {doctor}",
            k.variant
        ));
    }
    let mounts = detail("read-only driver mounts");
    if !mounts.contains(k.mount_api) {
        problems.push(format!(
            "{ctx}: mounts should use {}: {mounts}",
            k.mount_api
        ));
    }
    if layout != "v1" {
        let sub = detail("sub-cgroup of a container");
        // The probe joins only the unified sub-cgroup (its v1 devices cgroup is the root's,
        // which allows everything), so on hybrid hosts too the guard alone decides.
        if sub != k.sub_cgroup {
            problems.push(format!(
                "{ctx}: a sub-cgroup task got {sub}, want {}",
                k.sub_cgroup
            ));
        }
        let notes = detail("policy show");
        let noted = notes.contains("sub-cgroups of a container are denied");
        if noted != k.variant.contains("Basic") {
            problems.push(format!(
                "{ctx}: policy show's notes on the variant: {notes:?}"
            ));
        }
        let monitor = detail("monitor");
        let has_pid = !monitor.starts_with("pid=0 ");
        if has_pid != k.pid {
            problems.push(format!("{ctx}: monitor pid presence: {monitor}"));
        }
    }
    problems
}

#[test]
fn npu_containers_on_older_and_current_kernels() {
    if !(require_root() && require_tools(&["qemu-system-x86_64", "cpio", "runc", "busybox"])) {
        return;
    }
    let kernels: Vec<(&Expect, PathBuf)> = KERNELS
        .iter()
        .filter_map(|k| {
            let path = qemu::kernel(k.series);
            require(
                &format!(
                    "Debian's {} kernel in {} (cargo xtask setup downloads it)",
                    k.series,
                    qemu::kernels_dir().display()
                ),
                path.is_some(),
            )
            .then(|| (k, path.unwrap()))
        })
        .collect();
    if kernels.len() != KERNELS.len() {
        return;
    }
    let release = qemu::release_dir();
    if !require(
        &format!("the static release binaries in {}", release.display()),
        qemu::GUEST_BINARIES
            .iter()
            .all(|b| release.join(b).exists()),
    ) {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("npu-kernels-")
        .tempdir()
        .unwrap();
    let initramfs = qemu::build_initramfs(dir.path(), &release);
    let boots: Vec<(&Expect, &Path, &str)> = kernels
        .iter()
        .flat_map(|(k, path)| LAYOUTS.map(|l| (*k, path.as_path(), l)))
        .collect();
    // Two guests at a time: each emulated CPU takes one host core.
    let mut problems = Vec::new();
    let mut summary = Vec::new();
    for pair in boots.chunks(2) {
        let outcomes: Vec<(String, Vec<String>)> = std::thread::scope(|s| {
            let handles: Vec<_> = pair
                .iter()
                .map(|(k, kernel, layout)| {
                    let (initramfs, dir) = (&initramfs, dir.path());
                    s.spawn(move || {
                        let boot =
                            qemu::boot(kernel, initramfs, layout, dir, Duration::from_secs(600));
                        let line = format!(
                            "{} {layout}: {:.0} s, {} checks",
                            k.series,
                            boot.seconds,
                            boot.results.len()
                        );
                        (line, judge(k, layout, &boot))
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (line, p) in outcomes {
            summary.push(line);
            problems.extend(p);
        }
    }
    eprintln!("{}", summary.join("\n"));
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}
