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

/// A user namespace (`--uidmap`, what `--userns=auto` sets up from /etc/subuid): runc cannot
/// mknod there, so the shim binds the host node itself, and VIRTUAL still gets the virtual NPU.
#[test]
fn podman_user_namespace() {
    each_mode(|place, mode| {
        let host = FakeHost::new(3);
        let p = Podman::new(place, &host);
        let userns = ["--uidmap", "0:100000:65536", "--gidmap", "0:100000:65536"];
        // No mknod in a user namespace: open what the container was given.
        let script = "for n in 0 1 2; do cat /dev/davinci$n </dev/null >/dev/null 2>/tmp/e; \
                      echo $n $(cat /tmp/e); done; cat /proc/self/uid_map";
        let mut args = userns.to_vec();
        args.extend([
            "-e",
            "ASCEND_VISIBLE_DEVICES=1",
            p.image.as_str(),
            "sh",
            "-c",
        ]);
        args.push(script);
        let (_, out) = p.run(&["--runtime", "npu"], &args);
        let verdicts: Vec<String> = (0..3)
            .map(|n| {
                let line = out.lines().find(|l| l.starts_with(&format!("{n} ")));
                npu_tests::runc::errno_of(false, line.unwrap_or_default())
            })
            .collect();
        assert_eq!(verdicts, ["ENOENT", "ENXIO", "ENOENT"], "{mode}:\n{out}");
        assert!(out.contains("100000"), "{mode}: no user namespace:\n{out}");
        let mut args = userns.to_vec();
        let virt = "ASCEND_RUNTIME_OPTIONS=VIRTUAL";
        args.extend([
            "-e",
            "ASCEND_VISIBLE_DEVICES=0",
            "-e",
            virt,
            p.image.as_str(),
        ]);
        args.extend(["sh", "-c", "stat -c %t /dev/davinci0 && cat /dev/davinci0"]);
        let (_, out) = p.run(&["--runtime", "npu"], &args);
        let major = format!("{:x}", host.virtual_major);
        assert!(
            out.lines().next().map(str::trim) == Some(major.as_str())
                && out.contains("No such device or address"),
            "{mode}: /dev/davinci0 is not the granted virtual NPU:\n{out}"
        );
        assert!(host.records().is_empty(), "{mode}: {:?}", host.records());
        assert!(host.granted_cgroups().is_empty(), "{mode}: grants left");
    });
}
