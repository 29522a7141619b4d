//! The guard next to runc's own device filter on a pure cgroup v2 host: both programs stay
//! attached and a device is usable only if both allow it.
use std::process::Command;

use npu_tests::{
    cgroups::{Place, V2Namespace, unified_mount},
    host::FakeHost,
    probe::guardctl,
    require_root, require_tools, run,
    runc::{RuncContainer, open_verdict},
};

#[test]
fn verdicts_are_the_and_of_runc_and_guard() {
    if !(require_root() && require_tools(&["runc", "bpftool", "busybox"])) {
        return;
    }
    let host = FakeHost::new(3);
    let ns = V2Namespace::new();
    let place = Place::V2(&ns);
    let m = host.chip_major;
    // runc's filter allows NPUs 0 and 1 (and its defaults, like /dev/null).
    let container = RuncContainer::start(place, host.dir.path(), "runc".as_ref(), |spec| {
        let node = |i: u32| {
            serde_json::json!({"path": format!("/dev/davinci{i}"), "type": "c",
                "major": m, "minor": i, "fileMode": 438, "uid": 0, "gid": 0})
        };
        spec["linux"]["devices"] = serde_json::json!([node(0), node(1)]);
        spec["linux"]["resources"]["devices"] = serde_json::json!([
            {"allow": false, "access": "rwm"},
            {"allow": true, "type": "c", "major": m, "minor": 0, "access": "rwm"},
            {"allow": true, "type": "c", "major": m, "minor": 1, "access": "rwm"},
        ]);
    })
    .expect("runc run");

    // The guard grants NPUs 1 and 2.
    guardctl(
        place,
        &host,
        &["enforce", &container.pid().to_string(), "1,2"],
    );

    let cgroup = unified_mount().join(container.unified_path().trim_start_matches('/'));
    let show = run(Command::new("bpftool").args(["cgroup", "show", cgroup.to_str().unwrap()]));
    let programs: Vec<&str> = show
        .lines()
        .filter(|l| l.contains("cgroup_device"))
        .collect();
    assert_eq!(programs.len(), 2, "runc's filter and ours: {show}");
    assert!(show.contains("npu_dev_guard"), "{show}");

    // Both allow NPU 1.
    assert_eq!(open_verdict(&container, "/dev/davinci1"), "ENXIO");
    // runc allows NPU 0, the guard does not.
    assert_eq!(open_verdict(&container, "/dev/davinci0"), "EPERM");
    // The guard allows NPU 2, runc does not: runc's defaults allow mknod of any char device
    // (`c *:* m`), but opening the node is refused by runc's filter.
    assert_eq!(container.node_verdict(m, 2), "EPERM", "NPU 2");
    // Both allow NPU 1 through a fresh node too; the guard refuses NPU 0's.
    assert_eq!(container.node_verdict(m, 1), "ENXIO", "NPU 1");
    assert_eq!(container.node_verdict(m, 0), "EPERM", "NPU 0");
    // Non-guarded devices runc allows still work.
    assert_eq!(open_verdict(&container, "/dev/null"), "OK");
}
