//! Concurrency and endurance: 50 NPU containers started at once, each with its own subset of
//! 8 NPUs, all get exactly their NPUs; 1000 create/delete cycles leave maps, records, pins and
//! mounts as they found them.
use std::process::{Command, Stdio};

use npu_runtime::node::config::PATH_ENV;
use npu_tests::{
    bin,
    cgroups::Place,
    host::FakeHost,
    require_root, require_tools,
    runc::{RuncContainer, write_bundle},
};

fn can_run() -> bool {
    require_root() && require_tools(&["runc", "bpftool", "busybox"])
}

/// A fixed pseudo-random non-empty subset of 0..8 for container `i`.
fn subset(i: u32) -> Vec<u32> {
    let bits = (i.wrapping_mul(2_654_435_761) >> 7) % 255 + 1;
    (0..8).filter(|b| bits & (1 << b) != 0).collect()
}

#[test]
fn fifty_concurrent_containers() {
    if !can_run() {
        return;
    }
    let host = FakeHost::new(8);
    let started: Vec<(Vec<u32>, Result<RuncContainer<'_>, String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..50)
            .map(|i| {
                let host = &host;
                s.spawn(move || {
                    let npus = subset(i);
                    let list = npus
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(",");
                    let c = RuncContainer::start_with_env(
                        Place::Host,
                        host.dir.path(),
                        &bin("npu-container-runtime"),
                        &host.config_path,
                        |spec| {
                            spec["process"]["env"]
                                .as_array_mut()
                                .unwrap()
                                .push(format!("ASCEND_VISIBLE_DEVICES={list}").into());
                        },
                    );
                    (npus, c)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut checked = 0;
    for (npus, c) in &started {
        let c = c
            .as_ref()
            .unwrap_or_else(|e| panic!("a concurrent start failed: {e}"));
        for chip in 0..8 {
            let want = if npus.contains(&chip) {
                "ENXIO"
            } else {
                "EPERM"
            };
            assert_eq!(
                c.node_verdict(host.chip_major, chip),
                want,
                "{} with {npus:?}, NPU {chip}",
                c.id
            );
            checked += 1;
        }
    }
    assert_eq!(host.records().len(), 50);
    eprintln!("50 concurrent containers, {checked} verdicts checked");
    drop(started);
    assert!(host.records().is_empty() && host.granted_cgroups().is_empty());
}

/// Kernel id of the program pinned for `host`.
fn pinned_program_id(host: &FakeHost) -> u64 {
    let bpf_dir = &host.config.bpf_dir;
    let version = &npu_runtime::enforce::guard::versions(bpf_dir).unwrap()[0];
    let variant = npu_runtime::enforce::guard::pinned_variant(bpf_dir, version).unwrap();
    let pin = bpf_dir.join(version).join(variant.pin_name());
    let out = Command::new("bpftool")
        .args(["-j", "prog", "show", "pinned"])
        .arg(pin)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["id"].as_u64().expect("program id")
}

/// The host's mount points where a hook that leaked a mount out of the container would leave
/// it: under the test's own directory (bundles, rootfs, driver tree) or at a mount-list
/// target's own path. Suites running beside this one mount elsewhere (the v2 namespace
/// holders under /run/npu-tests), which says nothing about the hook.
fn leak_sites(host: &FakeHost) -> Vec<String> {
    let dir = host.dir.path().to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|point| point.starts_with(&dir) || point.starts_with("/usr/local/Ascend"))
        .map(String::from)
        .collect()
}

#[test]
fn thousand_create_delete_cycles() {
    if !can_run() {
        return;
    }
    let host = FakeHost::new(2);
    let (bundle, spec) = write_bundle(host.dir.path(), "cycle", &["true"], |s| {
        s["process"]["env"]
            .as_array_mut()
            .unwrap()
            .push("ASCEND_VISIBLE_DEVICES=1".into());
    });
    let root = host.dir.path().join("runc-root");
    let mounts_before = leak_sites(&host);
    let mut pinned_id = None;
    for i in 0..1000 {
        std::fs::write(bundle.join("config.json"), &spec).unwrap();
        let status = Command::new(bin("npu-container-runtime"))
            .env(PATH_ENV, &host.config_path)
            .arg("--root")
            .arg(&root)
            .args(["run", "--bundle"])
            .arg(&bundle)
            .arg(format!("cycle-{i}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "cycle {i} failed");
        if i == 0 {
            pinned_id = Some(pinned_program_id(&host));
        }
    }
    assert!(host.records().is_empty(), "{:?}", host.records());
    assert!(host.granted_cgroups().is_empty(), "grants left");
    assert_eq!(
        npu_runtime::enforce::guard::versions(&host.config.bpf_dir)
            .unwrap()
            .len(),
        1,
        "one pinned program"
    );
    assert_eq!(leak_sites(&host), mounts_before, "host mounts changed");
    // The program loaded for the first container served all of them.
    assert_eq!(
        Some(pinned_program_id(&host)),
        pinned_id,
        "the pinned program changed"
    );
    let cgroups: usize = std::fs::read_dir("/sys/fs/cgroup/unified")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("cycle-"))
        .count();
    assert_eq!(cgroups, 0, "container cgroups left");
}
