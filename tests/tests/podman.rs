//! Podman end to end, on this VM's cgroup v1 and on pure cgroup v2: runtime mode (the "npu"
//! runtime registered by `npu-ctk runtime configure --runtime=podman`) and hook-only mode
//! (`npu-ctk hook install` + `--hooks-dir`, where the precreate stage writes the grant).
use std::process::Command;

use npu_runtime::node::config::PATH_ENV;
use npu_tests::{
    bin,
    cgroups::Place,
    engines::{Podman, matrix_script, parse_matrix},
    host::FakeHost,
    require_root, require_tools, run,
};

fn can_run() -> bool {
    require_root() && require_tools(&["podman", "conmon", "runc", "bpftool", "busybox", "nsenter"])
}

fn each_mode(test: impl Fn(Place<'_>, &str)) {
    if can_run() {
        npu_tests::cgroups::each_cgroup_mode(test);
    }
}

/// What --privileged does to devices (this sandbox lacks CAP_SYS_RESOURCE, so --privileged
/// itself cannot start any container here).
const PRIVILEGED: [&str; 5] = [
    "--device-cgroup-rule=a *:* rwm",
    "--cap-add=all",
    "--cap-drop=sys_resource",
    "--security-opt",
    "seccomp=unconfined",
];

#[test]
fn podman_runtime_mode() {
    each_mode(|place, mode| {
        let host = FakeHost::new(4);
        let p = Podman::new(place, &host);
        let script = format!("{}; ls /dev", matrix_script(host.chip_major, host.chips));
        for (extra, what) in [(&[][..], "plain"), (&PRIVILEGED[..], "privileged")] {
            let mut args = vec!["-e", "ASCEND_VISIBLE_DEVICES=1"];
            args.extend(extra);
            args.extend([p.image.as_str(), "sh", "-c", &script]);
            let (_, out) = p.run(&["--runtime", "npu"], &args);
            assert_eq!(
                parse_matrix(&out, host.chips),
                npu_tests::runc::expect_only(&[1], host.chips),
                "{mode} {what}:\n{out}"
            );
            assert!(out.contains("davinci_manager"), "{mode} {what}:\n{out}");
        }
        let (ok, out) = p.run(
            &["--runtime", "npu"],
            &["-e", "ASCEND_VISIBLE_DEVICES=7", &p.image, "true"],
        );
        assert!(
            !ok && out.contains("NPU 7 does not exist"),
            "{mode}:\n{out}"
        );
        assert!(host.records().is_empty(), "{mode}: {:?}", host.records());
        assert!(host.granted_cgroups().is_empty(), "{mode}: grants left");
    });
}

#[test]
fn podman_hook_mode() {
    each_mode(|place, mode| {
        let host = FakeHost::new(4);
        let p = Podman::new(place, &host);
        let hooks = p.dir().join("hooks.d");
        run(Command::new(bin("npu-ctk"))
            .env(PATH_ENV, &host.config_path)
            .args(["hook", "install", "--hooks-dir"])
            .arg(&hooks));
        let hooks_dir = hooks.to_str().unwrap();
        let global = ["--hooks-dir", hooks_dir, "--runtime", "runc"];
        let script = matrix_script(host.chip_major, host.chips);
        for (extra, what) in [(&[][..], "plain"), (&PRIVILEGED[..], "privileged")] {
            let mut args = vec!["-e", "ASCEND_VISIBLE_DEVICES=2"];
            args.extend(extra);
            args.extend([p.image.as_str(), "sh", "-c", &script]);
            let (_, out) = p.run(&global, &args);
            assert_eq!(
                parse_matrix(&out, host.chips),
                npu_tests::runc::expect_only(&[2], host.chips),
                "{mode} {what}:\n{out}"
            );
        }
        // Containers without a request pass through the hooks untouched.
        let (ok, out) = p.run(&global, &[&p.image, "sh", "-c", "ls /dev"]);
        assert!(ok && !out.contains("davinci"), "{mode}:\n{out}");
        assert!(host.records().is_empty(), "{mode}: {:?}", host.records());
        assert!(host.granted_cgroups().is_empty(), "{mode}: grants left");
    });
}
