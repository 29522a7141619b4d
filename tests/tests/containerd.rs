//! containerd, the Kubernetes node path: `ctr run --runc-binary npu-container-runtime`, one
//! pair of containers with disjoint NPUs, on this VM's cgroup v1 (hybrid, so the guard is
//! attached on the unified tree too). Not in the pure-v2 namespace: ctr's default spec always
//! sets CPU shares, and this VM's cgroup2 tree has no cpu controller (it is bound to v1), so
//! runc cannot create any ctr container there, with or without our runtime; Docker, Podman
//! and runc cover pure v2.
use npu_tests::{
    cgroups::Place,
    engines::{Containerd, matrix_script, parse_matrix},
    have_tool,
    host::FakeHost,
    require, require_root, require_tools,
};

#[test]
fn ctr_pair_with_disjoint_npus() {
    if !(require_root()
        && require_tools(&["containerd", "ctr"])
        && require(
            "containerd-shim-runc-v2",
            have_tool("containerd-shim-runc-v2"),
        )
        && require("busybox", have_tool("busybox"))
        && require("runc", have_tool("runc")))
    {
        return;
    }
    for (place, mode) in [(Place::Host, "cgroup v1")] {
        let host = FakeHost::new(4);
        let c = Containerd::start(place, &host);
        let script = matrix_script(host.chip_major, host.chips);
        for (id, npus, granted) in [("npu-a", "0,1", [0, 1]), ("npu-b", "2,3", [2, 3])] {
            let (ok, out) = c.run_detached(id, &[&format!("ASCEND_VISIBLE_DEVICES={npus}")]);
            assert!(ok, "{mode}: {out}");
            let out = c.exec(id, &script);
            assert_eq!(
                parse_matrix(&out, host.chips),
                npu_tests::runc::expect_only(&granted, host.chips),
                "{mode} {id}:\n{out}"
            );
        }
        // A bad request fails the task, with our message.
        let (ok, out) = c.run_detached("npu-bad", &["ASCEND_VISIBLE_DEVICES=0-9"]);
        assert!(!ok && out.contains("does not exist"), "{mode}: {out}");
        c.remove("npu-bad");
        assert_eq!(host.records().len(), 2, "{mode}");
        for id in ["npu-a", "npu-b"] {
            c.remove(id);
        }
        assert!(host.records().is_empty(), "{mode}: {:?}", host.records());
        assert!(host.granted_cgroups().is_empty(), "{mode}: grants left");
    }
}
