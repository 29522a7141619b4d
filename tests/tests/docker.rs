//! Docker end to end, on this VM's cgroup v1 and on pure cgroup v2 (dockerd in a private
//! mount namespace): configured with `npu-ctk runtime configure --runtime=docker`, containers
//! started with `docker run --runtime=npu -e ASCEND_VISIBLE_DEVICES=...`.
use std::{collections::BTreeSet, process::Command};

use npu_runtime::node::config::PATH_ENV;
use npu_tests::{
    bin,
    cgroups::Place,
    engines::{Dockerd, matrix_script, parse_matrix},
    host::FakeHost,
    require_root, require_tools, run,
};

fn can_run() -> bool {
    require_root() && require_tools(&["dockerd", "docker", "bpftool", "busybox", "nsenter"])
}

fn each_mode(test: impl Fn(Place<'_>, &str)) {
    if can_run() {
        npu_tests::cgroups::each_cgroup_mode(test);
    }
}

fn ctk_policy(host: &FakeHost) -> serde_json::Value {
    serde_json::from_str(&run(Command::new(bin("npu-ctk"))
        .env(PATH_ENV, &host.config_path)
        .args(["policy", "show", "--json"])))
    .unwrap()
}

#[test]
fn docker_run_gets_exactly_its_npus() {
    each_mode(|place, mode| {
        let host = FakeHost::new(4);
        let d = Dockerd::start(place, &host);
        let script = format!(
            "{}; ls /dev; cat /usr/local/Ascend/driver/version.info; echo x > /usr/local/Ascend/driver/version.info",
            matrix_script(host.chip_major, host.chips)
        );
        // What --privileged does to devices: every device allowed, every capability. (This
        // sandbox's bounding set lacks CAP_SYS_RESOURCE, so --privileged itself cannot start
        // any container here, with or without our runtime.)
        let privileged = [
            "--device-cgroup-rule=a *:* rwm",
            "--cap-add=ALL",
            "--cap-drop=SYS_RESOURCE",
            "--security-opt=seccomp=unconfined",
        ];
        for (extra, what) in [(&[][..], "plain"), (&privileged[..], "privileged")] {
            let mut args = vec![
                "run",
                "--rm",
                "--runtime=npu",
                "-e",
                "ASCEND_VISIBLE_DEVICES=1",
            ];
            args.extend(extra);
            args.extend([d.image.as_str(), "sh", "-c", &script]);
            let (_, out) = d.output(&args);
            assert_eq!(
                parse_matrix(&out, host.chips),
                npu_tests::runc::expect_only(&[1], host.chips),
                "{mode} {what}:\n{out}"
            );
            assert!(
                out.contains("davinci_manager") && out.contains("Version=24.1.0"),
                "{mode} {what}:\n{out}"
            );
            assert!(
                out.contains("Read-only file system"),
                "{mode} {what}:\n{out}"
            );
            if extra.is_empty() {
                assert!(
                    out.contains("davinci1") && !out.contains("davinci0"),
                    "{mode}:\n{out}"
                );
            }
        }
        // A bad request fails `docker run`, and our message is in its output.
        let (ok, out) = d.output(&[
            "run",
            "--rm",
            "--runtime=npu",
            "-e",
            "ASCEND_VISIBLE_DEVICES=9",
            &d.image,
            "true",
        ]);
        assert!(
            !ok && out.contains("NPU 9 does not exist") && out.contains("NPUs found: 0-3"),
            "{mode}:\n{out}"
        );
        let (ok, out) = d.output(&[
            "run",
            "--rm",
            "--runtime=npu",
            "-e",
            "ASCEND_VISIBLE_DEVICES=1,x",
            &d.image,
            "true",
        ]);
        assert!(
            !ok && out.contains("ASCEND_VISIBLE_DEVICES") && out.contains("\"x\""),
            "{mode}:\n{out}"
        );
        assert!(host.records().is_empty(), "{mode}: {:?}", host.records());
        assert_eq!(ctk_policy(&host), serde_json::json!([]), "{mode}");
    });
}

/// What a container names is what it gets, through `docker run --runtime=npu`: a
/// privileged-like container without a request gets no NPU, `--device` names exactly its node
/// and adds to a request, `none` gives the management nodes and the driver mounts.
#[test]
fn docker_containers_get_what_they_name() {
    each_mode(|place, mode| {
        let host = FakeHost::new(4);
        let d = Dockerd::start(place, &host);
        let script = format!(
            "{}; ls /dev; cat /usr/local/Ascend/driver/version.info",
            matrix_script(host.chip_major, host.chips)
        );
        let device = |i: u32| format!("--device={}:/dev/davinci{i}", host.chip(i).display());
        let privileged = [
            "--device-cgroup-rule=a *:* rwm",
            "--cap-add=ALL",
            "--cap-drop=SYS_RESOURCE",
            "--security-opt=seccomp=unconfined",
        ];
        let (d2, d3) = (device(2), device(3));
        // (case, docker run flags, NPUs it gets, whether it asked with the variable)
        let cases: [(&str, Vec<&str>, &[u32], bool); 4] = [
            (
                "privileged-like, no request",
                privileged.to_vec(),
                &[],
                false,
            ),
            ("--device of NPU 2", vec![d2.as_str()], &[2], false),
            (
                "privileged-like, request 1, --device of NPU 3",
                [
                    &privileged[..],
                    &["-e", "ASCEND_VISIBLE_DEVICES=1", d3.as_str()],
                ]
                .concat(),
                &[1, 3],
                true,
            ),
            ("none", vec!["-e", "ASCEND_VISIBLE_DEVICES=none"], &[], true),
        ];
        for (what, extra, granted, requested) in cases {
            let mut args = vec!["run", "--rm", "--runtime=npu"];
            args.extend(extra);
            args.extend([d.image.as_str(), "sh", "-c", &script]);
            let (_, out) = d.output(&args);
            assert_eq!(
                parse_matrix(&out, host.chips),
                npu_tests::runc::expect_only(granted, host.chips),
                "{mode}, {what}:\n{out}\n{}",
                std::fs::read_to_string(host.dir.path().join("runtime.log")).unwrap_or_default()
            );
            // Driver mounts and management nodes come with a request, `none` included.
            assert_eq!(
                out.contains("Version=24.1.0") && out.contains("davinci_manager"),
                requested,
                "{mode}, {what}:\n{out}"
            );
        }
        assert!(host.records().is_empty(), "{mode}: {:?}", host.records());
    });
}

#[test]
fn docker_update_restart_and_rm() {
    each_mode(|place, mode| {
        let host = FakeHost::new(4);
        let d = Dockerd::start(place, &host);
        let run_detached = |npus: &str| {
            let (ok, out) = d.output(&[
                "run",
                "-d",
                "--runtime=npu",
                "-e",
                &format!("ASCEND_VISIBLE_DEVICES={npus}"),
                &d.image,
                "sleep",
                "600",
            ]);
            assert!(ok, "{mode}: {out}");
            out.trim().to_string()
        };
        let a = run_detached("0");
        let b = run_detached("2,3");
        let verdicts = |id: &str| {
            let (_, out) = d.output(&[
                "exec",
                id,
                "sh",
                "-c",
                &matrix_script(host.chip_major, host.chips),
            ]);
            parse_matrix(&out, host.chips)
        };
        assert_eq!(
            verdicts(&a),
            npu_tests::runc::expect_only(&[0], host.chips),
            "{mode}: a"
        );
        assert_eq!(
            verdicts(&b),
            npu_tests::runc::expect_only(&[2, 3], host.chips),
            "{mode}: b"
        );

        // bpftool and npu-ctk agree on the grants of the running containers.
        let policy = ctk_policy(&host);
        assert_eq!(policy.as_array().unwrap().len(), 2, "{mode}: {policy}");
        let ids: BTreeSet<u64> = policy
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["cgroup_id"].as_u64().unwrap())
            .collect();
        assert_eq!(ids, host.granted_cgroups(), "{mode}: npu-ctk vs bpftool");
        // `bpftool cgroup tree` shows the guard on each container's own cgroup.
        let tree = run(Command::new("bpftool").args(["cgroup", "tree"]));
        for id in [&a, &b] {
            let section: Vec<&str> = tree
                .split('\n')
                .skip_while(|l| !(l.starts_with('/') && l.ends_with(id.as_str())))
                .take_while(|l| !l.starts_with('/') || l.ends_with(id.as_str()))
                .collect();
            assert!(
                section.iter().any(|l| l.contains("npu_dev_guard")),
                "{mode}: {id}:\n{tree}"
            );
        }

        if mode == "cgroup v1" {
            // (This VM's cgroup2 tree has no cpu controller, so only the v1 run can update CPUs;
            // the runc suite covers update on v2.)
            let (ok, out) = d.output(&["update", "--cpus", "1", &a]);
            assert!(ok, "{out}");
            assert_eq!(
                verdicts(&a),
                npu_tests::runc::expect_only(&[0], host.chips),
                "{mode}: after update"
            );
        }
        let (ok, out) = d.output(&["restart", "-t", "0", &a]);
        assert!(ok, "{mode}: {out}");
        assert_eq!(
            verdicts(&a),
            npu_tests::runc::expect_only(&[0], host.chips),
            "{mode}: after restart"
        );

        for id in [&a, &b] {
            let (ok, out) = d.output(&["rm", "-f", id]);
            assert!(ok, "{mode}: {out}");
        }
        assert!(host.records().is_empty(), "{mode}: {:?}", host.records());
        assert!(host.granted_cgroups().is_empty(), "{mode}: grants left");
        assert_eq!(ctk_policy(&host), serde_json::json!([]), "{mode}");
    });
}
