//! Device profiles: a simulated Kunlun host (`xpu0..3`, `xpuctrl`), a mixed Ascend + Kunlun
//! host, and a profile defined only in the config file (a made-up accelerator), each through
//! the shim with real runc on pure cgroup v2 and this VM's v1, and the mixed host through
//! Docker: requests of one family, of both in one container, `none`, `all`, bad values naming
//! the family's variable, and privileged-like containers without a request confined for every
//! family. Then `npu-ctk profiles`, `devices`, `cdi generate --profile` and `doctor` per profile.
use std::process::Command;

use npu_runtime::node::config::PATH_ENV;
use npu_tests::runc::start_through_shim as start;
use npu_tests::{
    bin,
    cgroups::{Place, each_cgroup_mode},
    engines::Dockerd,
    host::{FakeHost, Family},
    require_root, require_tools,
    runc::{RuncContainer, device_rules, expect_only, open_verdict, spec_devices},
};

fn can_run() -> bool {
    require_root() && require_tools(&["runc", "bpftool", "busybox", "nsenter"])
}

fn each_place(test: impl Fn(Place<'_>, &str)) {
    if can_run() {
        each_cgroup_mode(test);
    }
}

/// A Kunlun family as the built-in profile expects it: `xpu0..chips`, `xpuctrl`, and a
/// driver file in `kunlun.list`.
fn add_kunlun(host: &mut FakeHost, chips: u32) -> Family {
    host.add_family("xpu", chips, &["xpuctrl"], Some("kunlun"))
}

/// A made-up accelerator known only from the config file.
fn add_acme(host: &mut FakeHost) -> Family {
    let acme = host.add_family("acme", 3, &["acmectl"], Some("acme"));
    host.append_config(
        "\n[profiles.acme]\nrequest_env = \"ACME_VISIBLE_DEVICES\"\n\
         chip_pattern = \"acme[0-9]*\"\nmanagement_devices = [\"acmectl\"]\n\
         named_forms = [\"gpu\"]\nmount_lists = [\"acme\"]\ndevice_word = \"GPU\"\n\
         cdi_kind = \"acme.example/gpu\"\n",
    );
    acme
}

/// mknod + open verdicts for the chips of a family.
fn verdicts(c: &RuncContainer<'_>, family: &Family) -> Vec<String> {
    (0..family.chips)
        .map(|i| c.node_verdict(family.chip_major, i))
        .collect()
}

/// Privileged-like: allow-all, and every node under the fake dev root listed.
fn privileged(host: &FakeHost, spec: &mut serde_json::Value) {
    device_rules(spec).push(serde_json::json!({"allow": true, "access": "rwm"}));
    for entry in std::fs::read_dir(&host.dev_root).unwrap().flatten() {
        let node = npu_runtime::node::devices::DeviceNode::stat(&entry.path())
            .unwrap()
            .unwrap();
        spec_devices(spec).push(serde_json::json!({
            "path": format!("/dev/{}", node.name), "type": "c", "major": node.major,
            "minor": node.minor, "fileMode": 0o666, "uid": 0, "gid": 0}));
    }
}

fn ctk(host: &FakeHost, args: &[&str]) -> (bool, String) {
    npu_tests::npu_ctk(host, args)
}

#[test]
fn kunlun_host_gets_exactly_the_xpus_named() {
    each_place(|place, mode| {
        let mut host = FakeHost::new(4);
        host.remove_ascend();
        let xpu = add_kunlun(&mut host, 4);
        for (request, granted) in [
            ("CXPU_VISIBLE_DEVICES=1", vec![1]),
            ("CXPU_VISIBLE_DEVICES=0,2-3", vec![0, 2, 3]),
            ("CXPU_VISIBLE_DEVICES=all", vec![0, 1, 2, 3]),
            ("CXPU_VISIBLE_DEVICES=none", vec![]),
            ("CXPU_CDI_XPU_2=2", vec![2]),
        ] {
            let c = start(place, &host, &[request], |_| {}).expect("start");
            assert_eq!(
                verdicts(&c, &xpu),
                expect_only(&granted, xpu.chips),
                "{mode} {request}"
            );
            // The control node, and the family's mount list, come with every request.
            assert_eq!(
                open_verdict(&c, "/dev/xpuctrl"),
                "ENXIO",
                "{mode} {request}"
            );
            let (_, version) = c.sh("cat /usr/local/xpu/version");
            assert!(
                version.contains("xpu driver"),
                "{mode} {request}: {version}"
            );
        }
        // Bad values name Kunlun's variable; nothing is created.
        for (request, words) in [
            (
                "CXPU_VISIBLE_DEVICES=0,x",
                &["CXPU_VISIBLE_DEVICES", "malformed item"][..],
            ),
            (
                "CXPU_VISIBLE_DEVICES=npu-1",
                &["CXPU_VISIBLE_DEVICES", "expected all, N or N-M"],
            ),
            (
                "CXPU_VISIBLE_DEVICES=7",
                &["XPU 7 does not exist", "XPUs found: 0-3"],
            ),
        ] {
            let e = start(place, &host, &[request], |_| {})
                .err()
                .expect(request);
            for w in words {
                assert!(e.contains(w), "{mode} {request}: {e}");
            }
        }
        // Privileged-like without a request: no XPU and no control node opens.
        let c = start(place, &host, &[], |spec| privileged(&host, spec)).expect("start");
        assert_eq!(verdicts(&c, &xpu), expect_only(&[], xpu.chips), "{mode}");
        assert_eq!(c.node_verdict(xpu.mgmt_major, 0), "EPERM", "{mode}");
        // An Ascend request on a host without Ascend nodes fails as before.
        let e = start(place, &host, &["ASCEND_VISIBLE_DEVICES=0"], |_| {})
            .err()
            .expect("no NPU here");
        assert!(e.contains("NPU 0 does not exist"), "{mode}: {e}");
    });
}

#[test]
fn mixed_host_grants_each_family_its_own_request() {
    each_place(|place, mode| {
        let mut host = FakeHost::new(4);
        let xpu = add_kunlun(&mut host, 4);
        let npu = Family {
            prefix: "davinci".into(),
            chips: host.chips,
            chip_major: host.chip_major,
            mgmt_major: host.mgmt_major,
        };
        for (env, npus, xpus) in [
            (
                &["ASCEND_VISIBLE_DEVICES=0", "CXPU_VISIBLE_DEVICES=2"][..],
                vec![0],
                vec![2],
            ),
            (&["CXPU_VISIBLE_DEVICES=1,3"], vec![], vec![1, 3]),
            (&["ASCEND_VISIBLE_DEVICES=npu-1"], vec![1], vec![]),
            (
                &["ASCEND_VISIBLE_DEVICES=all", "CXPU_VISIBLE_DEVICES=none"],
                vec![0, 1, 2, 3],
                vec![],
            ),
        ] {
            let c = start(place, &host, env, |_| {}).expect("start");
            assert_eq!(verdicts(&c, &npu), expect_only(&npus, 4), "{mode} {env:?}");
            assert_eq!(verdicts(&c, &xpu), expect_only(&xpus, 4), "{mode} {env:?}");
            // Each family's management nodes come with its own request only.
            let want = |asked: bool| if asked { "ENXIO" } else { "ENOENT" };
            let asks = |var: &str| env.iter().any(|e| e.starts_with(var));
            assert_eq!(
                open_verdict(&c, "/dev/xpuctrl"),
                want(asks("CXPU")),
                "{mode} {env:?}"
            );
            assert_eq!(
                open_verdict(&c, "/dev/davinci_manager"),
                want(asks("ASCEND")),
                "{mode} {env:?}"
            );
        }
        // One bad value fails the container, naming its family's variable.
        let e = start(
            place,
            &host,
            &["ASCEND_VISIBLE_DEVICES=1", "CXPU_VISIBLE_DEVICES=1-"],
            |_| {},
        )
        .err()
        .expect("bad xpu request");
        assert!(e.contains("CXPU_VISIBLE_DEVICES"), "{mode}: {e}");
        // Privileged-like, no request: neither family opens.
        let c = start(place, &host, &[], |spec| privileged(&host, spec)).expect("start");
        assert_eq!(verdicts(&c, &npu), expect_only(&[], 4), "{mode}");
        assert_eq!(verdicts(&c, &xpu), expect_only(&[], 4), "{mode}");
        // Privileged-like with an Ascend request: the XPUs stay closed.
        let c = start(place, &host, &["ASCEND_VISIBLE_DEVICES=2"], |spec| {
            privileged(&host, spec)
        })
        .expect("start");
        assert_eq!(verdicts(&c, &npu), expect_only(&[2], 4), "{mode}");
        assert_eq!(verdicts(&c, &xpu), expect_only(&[], 4), "{mode}");
        assert_eq!(c.node_verdict(xpu.mgmt_major, 0), "EPERM", "{mode}");
    });
}

#[test]
fn a_profile_from_the_config_file_gets_the_same_matrix() {
    each_place(|place, mode| {
        let mut host = FakeHost::new(4);
        let acme = add_acme(&mut host);
        for (request, granted) in [
            ("ACME_VISIBLE_DEVICES=2", vec![2]),
            ("ACME_VISIBLE_DEVICES=gpu-0,gpu-1", vec![0, 1]),
            ("ACME_VISIBLE_DEVICES=all", vec![0, 1, 2]),
            ("ACME_VISIBLE_DEVICES=none", vec![]),
        ] {
            let c = start(place, &host, &[request], |_| {}).expect("start");
            assert_eq!(
                verdicts(&c, &acme),
                expect_only(&granted, acme.chips),
                "{mode} {request}"
            );
            assert_eq!(
                open_verdict(&c, "/dev/acmectl"),
                "ENXIO",
                "{mode} {request}"
            );
            let (_, version) = c.sh("cat /usr/local/acme/version");
            assert!(version.contains("acme driver"), "{mode}: {version}");
            // The Ascend chips stay closed to it.
            assert_eq!(
                (0..4)
                    .map(|i| c.node_verdict(host.chip_major, i))
                    .collect::<Vec<_>>(),
                expect_only(&[], 4),
                "{mode} {request}"
            );
        }
        for (request, words) in [
            (
                "ACME_VISIBLE_DEVICES=9",
                &["GPU 9 does not exist", "GPUs found: 0-2"][..],
            ),
            (
                "ACME_VISIBLE_DEVICES=npu-1",
                &["ACME_VISIBLE_DEVICES", "gpu-N"],
            ),
        ] {
            let e = start(place, &host, &[request], |_| {})
                .err()
                .expect(request);
            for w in words {
                assert!(e.contains(w), "{mode} {request}: {e}");
            }
        }
        let c = start(place, &host, &["ASCEND_VISIBLE_DEVICES=1"], |spec| {
            privileged(&host, spec)
        })
        .expect("start");
        assert_eq!(verdicts(&c, &acme), expect_only(&[], 3), "{mode}");
        assert_eq!(c.node_verdict(acme.mgmt_major, 0), "EPERM", "{mode}");
    });
}

#[test]
fn docker_on_a_mixed_host() {
    if !can_run() || !require_tools(&["dockerd", "docker"]) {
        return;
    }
    each_cgroup_mode(|place, mode| {
        let mut host = FakeHost::new(4);
        let xpu = add_kunlun(&mut host, 4);
        let d = Dockerd::start(place, &host);
        let run_with = |env: &[&str], flags: &[&str], major: u32| d.verdicts(env, flags, major, 4);
        let both = ["ASCEND_VISIBLE_DEVICES=3", "CXPU_VISIBLE_DEVICES=0,1"];
        assert_eq!(
            run_with(&both, &[], host.chip_major),
            expect_only(&[3], 4),
            "{mode}"
        );
        assert_eq!(
            run_with(&both, &[], xpu.chip_major),
            expect_only(&[0, 1], 4),
            "{mode}"
        );
        let only = ["CXPU_VISIBLE_DEVICES=2"];
        assert_eq!(
            run_with(&only, &[], xpu.chip_major),
            expect_only(&[2], 4),
            "{mode}"
        );
        assert_eq!(
            run_with(&only, &[], host.chip_major),
            expect_only(&[], 4),
            "{mode}"
        );
        for (env, xpus) in [
            ("CXPU_VISIBLE_DEVICES=all", vec![0, 1, 2, 3]),
            ("CXPU_VISIBLE_DEVICES=none", vec![]),
        ] {
            assert_eq!(
                run_with(&[env], &[], xpu.chip_major),
                expect_only(&xpus, 4),
                "{mode} {env}"
            );
            assert_eq!(
                run_with(&[env], &[], host.chip_major),
                expect_only(&[], 4),
                "{mode} {env}"
            );
        }
        // `none` still gives the control node.
        let (_, out) = d.output(&[
            "run",
            "--rm",
            "--runtime=npu",
            "-e",
            "CXPU_VISIBLE_DEVICES=none",
            &d.image,
            "ls",
            "/dev",
        ]);
        assert!(
            out.contains("xpuctrl") && !out.contains("xpu0"),
            "{mode}: {out}"
        );
        let privileged = [
            "--device-cgroup-rule=a *:* rwm",
            "--cap-add=ALL",
            "--cap-drop=SYS_RESOURCE",
            "--security-opt=seccomp=unconfined",
        ];
        for major in [host.chip_major, xpu.chip_major] {
            assert_eq!(
                run_with(&[], &privileged, major),
                expect_only(&[], 4),
                "{mode}"
            );
        }
        let (ok, out) = d.output(&[
            "run",
            "--rm",
            "--runtime=npu",
            "-e",
            "CXPU_VISIBLE_DEVICES=0,y",
            &d.image,
            "true",
        ]);
        assert!(!ok && out.contains("CXPU_VISIBLE_DEVICES"), "{mode}: {out}");
    });
}

#[test]
fn operator_commands_per_profile() {
    if !require_tools(&["runc"]) {
        return;
    }
    let mut host = FakeHost::new(2);
    add_kunlun(&mut host, 3);
    add_acme(&mut host);
    let (ok, table) = ctk(&host, &["profiles"]);
    assert!(ok, "{table}");
    for line in [
        "ascend",
        "kunlun     CXPU_VISIBLE_DEVICES",
        "3 XPUs (0-2), 1 management",
        "acme       ACME_VISIBLE_DEVICES",
        "3 GPUs (0-2)",
    ] {
        assert!(table.contains(line), "{line} in:\n{table}");
    }
    let (_, json) = ctk(&host, &["profiles", "--json"]);
    let profiles: serde_json::Value = serde_json::from_str(&json).unwrap();
    let names: Vec<&str> = profiles
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["ascend", "kunlun", "acme"]);
    assert!(
        profiles
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["active"] == true)
    );

    let (_, devices) = ctk(&host, &["devices"]);
    for row in ["npu 1", "xpu 2", "xpu management", "gpu 0", "management"] {
        assert!(devices.contains(row), "{row} in:\n{devices}");
    }
    let (ok, cdi) = ctk(&host, &["cdi", "generate", "--profile", "kunlun"]);
    assert!(ok, "{cdi}");
    let spec: serde_json::Value = serde_json::from_str(&cdi).unwrap();
    assert_eq!(spec["kind"], "kunlunxin.com/xpu");
    assert_eq!(
        spec["devices"][1]["containerEdits"]["env"][0],
        "CXPU_CDI_XPU_1=1"
    );
    assert_eq!(
        spec["containerEdits"]["deviceNodes"][0]["path"],
        "/dev/xpuctrl"
    );
    let (ok, e) = ctk(&host, &["cdi", "generate", "--profile", "nvidia"]);
    assert!(!ok && e.contains("no device profile \"nvidia\""), "{e}");
    let (_, doctor) = ctk(&host, &["doctor"]);
    for line in [
        "XPUs (kunlun)",
        "GPUs (acme)",
        "management devices (kunlun)",
    ] {
        assert!(doctor.contains(line), "{line} in:\n{doctor}");
    }

    // A Kunlun-only host: Ascend is inactive and the doctor does not fail on its absence.
    let mut kunlun = FakeHost::new(1);
    kunlun.remove_ascend();
    add_kunlun(&mut kunlun, 2);
    let (_, table) = ctk(&kunlun, &["profiles"]);
    assert!(table.contains("inactive"), "{table}");
    let (_, doctor) = ctk(&kunlun, &["doctor", "--json"]);
    let checks: serde_json::Value = serde_json::from_str(&doctor).unwrap();
    let failed: Vec<&serde_json::Value> = checks
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["name"] == "NPUs" || c["name"] == "management devices")
        .collect();
    assert!(failed.is_empty(), "{failed:?}");

    // A bad profile table is an error naming the table and key.
    let bad = FakeHost::new(1);
    std::fs::write(
        &bad.config_path,
        std::fs::read_to_string(&bad.config_path).unwrap()
            + "\n[profiles.x]\nrequest_env = \"ASCEND_VISIBLE_DEVICES\"\nchip_pattern = \"x*\"\n",
    )
    .unwrap();
    let out = Command::new(bin("npu-ctk"))
        .env(PATH_ENV, &bad.config_path)
        .arg("devices")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && text.contains("ASCEND_VISIBLE_DEVICES")
            && text.contains("profiles"),
        "{text}"
    );
}
