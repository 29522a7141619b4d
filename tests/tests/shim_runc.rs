//! A container started through `npu-container-runtime` and real runc gets exactly its NPUs,
//! on a pure cgroup v2 host (private namespace) and on this VM's cgroup v1 devices controller.
use std::process::Command;

use npu_runtime::node::config::PATH_ENV;
use npu_tests::runc::start_through_shim as start;
use npu_tests::{
    bin,
    cgroups::{Place, V2Namespace},
    host::FakeHost,
    require_root, require_tools, run,
    runc::{RuncContainer, open_verdict},
};

fn can_run() -> bool {
    require_root() && require_tools(&["runc", "bpftool", "busybox", "nsenter"])
}

/// Both places: the pure-v2 namespace and the host's v1 devices controller.
fn each_place(test: impl Fn(Place<'_>, &str)) {
    if can_run() {
        npu_tests::cgroups::each_cgroup_mode(test);
    }
}

fn shim() -> std::path::PathBuf {
    bin("npu-container-runtime")
}

/// Starts a sleeping busybox container through the shim with `env` added.
#[test]
fn one_npu_container() {
    each_place(|place, mode| {
        let host = FakeHost::new(4);
        let c = start(place, &host, &["ASCEND_VISIBLE_DEVICES=1"], |_| {}).expect("start");
        // Its NPU and the management nodes exist and are usable (ENXIO: no driver behind).
        for dev in ["davinci1", "davinci_manager", "devmm_svm", "hisi_hdc"] {
            assert_eq!(
                open_verdict(&c, &format!("/dev/{dev}")),
                "ENXIO",
                "{mode}: {dev}"
            );
        }
        // Other NPUs are absent, and a node made for one is unusable.
        assert_eq!(open_verdict(&c, "/dev/davinci0"), "ENOENT", "{mode}");
        assert_eq!(
            c.chip_verdicts(&host),
            npu_tests::runc::expect_only(&[1], host.chips),
            "{mode}"
        );
        // Driver files are there, read-only; missing list entries are skipped.
        let (ok, text) = c.sh("cat /usr/local/Ascend/driver/version.info /usr/local/Ascend/driver/lib64/libascend_hal.so");
        assert!(
            ok && text.contains("Version=24.1.0") && text.contains("fake driver"),
            "{mode}: {text}"
        );
        let (ok, text) = c.sh("echo x > /usr/local/Ascend/driver/version.info");
        assert!(
            !ok && text.contains("Read-only file system"),
            "{mode}: {text}"
        );
        let (ok, text) = c.sh("touch /usr/local/Ascend/driver/lib64/new");
        assert!(
            !ok && text.contains("Read-only file system"),
            "{mode}: {text}"
        );
        let (ok, _) = c.sh("test -e /usr/local/Ascend/not-installed");
        assert!(!ok, "{mode}: a missing source must not appear");
        // The environment says which runtime prepared it.
        let (_, env) = c.sh("echo $ASCEND_DOCKER_RUNTIME");
        assert_eq!(env.trim(), "True", "{mode}");
        assert_eq!(host.records().len(), 1, "{mode}: one record while running");
    });
}

#[test]
fn two_containers_with_disjoint_npus() {
    each_place(|place, mode| {
        let host = FakeHost::new(4);
        let a = start(place, &host, &["ASCEND_VISIBLE_DEVICES=0,1"], |_| {}).expect("a");
        let b = start(place, &host, &["ASCEND_VISIBLE_DEVICES=2-3"], |_| {}).expect("b");
        assert_eq!(
            a.chip_verdicts(&host),
            npu_tests::runc::expect_only(&[0, 1], host.chips),
            "{mode}: a"
        );
        assert_eq!(
            b.chip_verdicts(&host),
            npu_tests::runc::expect_only(&[2, 3], host.chips),
            "{mode}: b"
        );
    });
}

#[test]
fn privileged_container_still_gets_only_its_npu() {
    each_place(|place, mode| {
        let host = FakeHost::new(4);
        let all_nodes: Vec<serde_json::Value> = (0..host.chips)
            .map(|i| {
                serde_json::json!({"path": format!("/dev/davinci{i}"), "type": "c",
                    "major": host.chip_major, "minor": i, "fileMode": 438})
            })
            .collect();
        let c = start(place, &host, &["ASCEND_VISIBLE_DEVICES=1"], |spec| {
            // What --privileged produces: every host node bound, every device allowed.
            spec["linux"]["devices"] = all_nodes.into();
            spec["linux"]["resources"]["devices"] =
                serde_json::json!([{"allow": true, "access": "rwm"}]);
        })
        .expect("start");
        assert_eq!(open_verdict(&c, "/dev/davinci0"), "EPERM", "{mode}");
        assert_eq!(open_verdict(&c, "/dev/davinci3"), "EPERM", "{mode}");
        assert_eq!(open_verdict(&c, "/dev/davinci1"), "ENXIO", "{mode}");
        assert_eq!(
            c.chip_verdicts(&host),
            npu_tests::runc::expect_only(&[1], host.chips),
            "{mode}"
        );
        // Non-NPU devices keep working.
        assert_eq!(open_verdict(&c, "/dev/null"), "OK", "{mode}");
    });
}

#[test]
fn update_keeps_verdicts() {
    each_place(|place, mode| {
        let host = FakeHost::new(3);
        let c = start(place, &host, &["ASCEND_VISIBLE_DEVICES=2"], |_| {}).expect("start");
        let before = c.chip_verdicts(&host);
        let mut update = place.command(shim());
        update
            .env(PATH_ENV, &host.config_path)
            .arg("--root")
            .arg(&c.root)
            .arg("update");
        if mode == "cgroup v1" {
            update.args(["--cpu-share", "512", "--pids-limit", "200"]);
        } else {
            // This VM's cgroup2 tree has no cpu or pids controller (they are bound to v1):
            // an update that changes nothing still runs runc's whole Set path.
            let resources = host.dir.path().join("resources.json");
            std::fs::write(&resources, "{}").unwrap();
            update.arg("--resources").arg(resources);
        }
        run(update.arg(&c.id));
        assert_eq!(c.chip_verdicts(&host), before, "{mode}");
        assert_eq!(
            before,
            npu_tests::runc::expect_only(&[2], host.chips),
            "{mode}"
        );
    });
}

/// Behind the shim there is no poststop process: the shim removes a container's grants and
/// record after the runtime's `delete`, and only once the container is really gone.
#[test]
fn delete_through_the_shim_leaves_nothing_behind() {
    each_place(|place, mode| {
        let host = FakeHost::new(2);
        let c = start(place, &host, &["ASCEND_VISIBLE_DEVICES=0"], |_| {}).expect("start");
        let spec: serde_json::Value =
            serde_json::from_slice(&std::fs::read(c.bundle.join("config.json")).unwrap()).unwrap();
        assert!(spec["hooks"]["createRuntime"].is_array(), "{mode}: {spec}");
        assert!(
            spec["hooks"].get("poststop").is_none(),
            "{mode}: the shim injected a poststop hook: {}",
            spec["hooks"]
        );
        assert_eq!(host.records().len(), 1, "{mode}");
        let guarded = host.granted_cgroups();
        if mode == "cgroup v2" {
            assert_eq!(guarded.len(), 1, "{mode}: one container in the grant map");
        }
        // A delete the runtime refuses (running, no --force) keeps everything, verdicts too.
        let refused = c
            .runtime_command()
            .args(["delete", &c.id])
            .output()
            .unwrap();
        assert!(
            !refused.status.success(),
            "{mode}: runc deleted a running container"
        );
        assert_eq!(
            host.records().len(),
            1,
            "{mode}: record gone after a refused delete"
        );
        assert_eq!(host.granted_cgroups(), guarded, "{mode}");
        assert_eq!(
            c.chip_verdicts(&host),
            npu_tests::runc::expect_only(&[0], host.chips),
            "{mode}"
        );
        drop(c); // the shim's delete -f
        assert!(
            host.records().is_empty(),
            "{mode}: records {:?}",
            host.records()
        );
        assert!(host.granted_cgroups().is_empty(), "{mode}: grants left");
    });
}

/// A container deleted around the shim (plain runc) keeps its record until `npu-ctk gc`; a
/// later `delete` through the shim of the id runc no longer knows removes it too.
#[test]
fn delete_around_the_shim_is_left_to_gc_or_a_later_delete() {
    each_place(|place, mode| {
        let host = FakeHost::new(2);
        let ctk = |args: &[&str]| {
            run(place
                .command(bin("npu-ctk"))
                .env(PATH_ENV, &host.config_path)
                .args(args))
        };
        for later in ["gc", "shim delete"] {
            let c = start(place, &host, &["ASCEND_VISIBLE_DEVICES=1"], |_| {}).expect("start");
            run(c.runc().args(["delete", "-f", &c.id]));
            assert_eq!(
                host.records().len(),
                1,
                "{mode}: {later}: nothing cleaned yet"
            );
            if later == "gc" {
                let out = ctk(&["gc"]);
                assert!(out.contains(&format!("record {}", c.id)), "{mode}: {out}");
            } else {
                let out = c
                    .runtime_command()
                    .args(["delete", &c.id])
                    .output()
                    .unwrap();
                assert!(
                    !out.status.success(),
                    "{mode}: runc knew a deleted container"
                );
            }
            assert!(
                host.records().is_empty(),
                "{mode}: {later}: {:?}",
                host.records()
            );
            assert!(
                host.granted_cgroups().is_empty(),
                "{mode}: {later}: grants left"
            );
        }
    });
}

/// A `create` that fails after our hook prepared the container (a later hook fails): the
/// runtime tears the container down, and the shim removes its grants and record at once.
#[test]
fn failed_create_after_our_hook_leaves_nothing() {
    each_place(|place, mode| {
        let host = FakeHost::new(2);
        let err = start(place, &host, &["ASCEND_VISIBLE_DEVICES=1"], |spec| {
            // The shim appends its hook: this one runs after it and fails.
            spec["hooks"] = serde_json::json!({
                "createRuntime": [],
                "createContainer": [{"path": "/bin/false", "args": ["false"]}],
            });
        })
        .err()
        .expect("a failing createContainer hook must fail the container");
        assert!(
            err.contains("createContainer") || err.contains("hook"),
            "{mode}: {err}"
        );
        assert!(host.records().is_empty(), "{mode}: {:?}", host.records());
        assert!(host.granted_cgroups().is_empty(), "{mode}: grants left");
    });
}

#[test]
fn no_request_leaves_the_spec_byte_identical() {
    each_place(|place, mode| {
        let host = FakeHost::new(2);
        let c = start(place, &host, &[], |_| {}).expect("start");
        let spec = std::fs::read(c.bundle.join("config.json")).unwrap();
        // The fixture wrote it with serde_json::to_vec_pretty; the shim did not touch it.
        let value: serde_json::Value = serde_json::from_slice(&spec).unwrap();
        assert_eq!(spec, serde_json::to_vec_pretty(&value).unwrap(), "{mode}");
        assert!(value.get("hooks").is_none(), "{mode}: no hook injected");
        assert_eq!(open_verdict(&c, "/dev/davinci0"), "ENOENT", "{mode}");
        assert!(host.records().is_empty(), "{mode}");
    });
}

#[test]
fn bad_request_fails_the_container_and_changes_nothing() {
    each_place(|place, mode| {
        let host = FakeHost::new(2);
        for (env, needle) in [
            ("ASCEND_VISIBLE_DEVICES=7", "NPU 7 does not exist"),
            ("ASCEND_VISIBLE_DEVICES=0,,1", "empty item"),
            ("ASCEND_VISIBLE_DEVICES=1-0", "reversed"),
        ] {
            let err = start(place, &host, &[env], |_| {})
                .err()
                .expect("must fail");
            assert!(err.contains(needle), "{mode}: {env}: {err}");
            assert!(
                err.contains("ASCEND_VISIBLE_DEVICES") || err.contains("NPUs found: 0-1"),
                "{err}"
            );
        }
        assert!(host.records().is_empty(), "{mode}");
        assert!(host.granted_cgroups().is_empty(), "{mode}");
    });
}

/// Hook-only mode (Podman/CRI-O hooks.d, no shim): on v1 the hook creates the nodes and grants
/// them; on v2 it cannot grant, and says how to fix it instead of starting the container.
#[test]
fn hook_only_mode() {
    each_place(|place, mode| {
        let host = FakeHost::new(2);
        let hook = bin("npu-container-hook");
        let cfg = format!("{}={}", PATH_ENV, host.config_path.display());
        let result = RuncContainer::start(place, host.dir.path(), "runc".as_ref(), |spec| {
            spec["process"]["env"]
                .as_array_mut()
                .unwrap()
                .push("ASCEND_VISIBLE_DEVICES=1".into());
            let entry = |stage: &str| serde_json::json!({"path": hook, "args": ["npu-container-hook", stage], "env": [cfg]});
            spec["hooks"] = serde_json::json!({
                "createRuntime": [entry("create-runtime")],
                "poststop": [entry("poststop")],
            });
        });
        if mode == "cgroup v2" {
            let err = result.err().expect("v2 hook-only must fail");
            assert!(
                err.contains("precreate") && err.contains("npu-container-runtime"),
                "{err}"
            );
            assert!(host.records().is_empty() && host.granted_cgroups().is_empty());
        } else {
            let c = result.expect("v1 hook-only");
            assert_eq!(open_verdict(&c, "/dev/davinci1"), "ENXIO", "{mode}");
            assert_eq!(open_verdict(&c, "/dev/davinci_manager"), "ENXIO", "{mode}");
            assert_eq!(
                c.chip_verdicts(&host),
                npu_tests::runc::expect_only(&[1], host.chips),
                "{mode}"
            );
        }
    });
}

/// `bpftool` sees our program on the container's cgroup next to runc's (v2).
#[test]
fn bpftool_shows_the_guard() {
    if !can_run() {
        return;
    }
    let ns = V2Namespace::new();
    let host = FakeHost::new(2);
    let c = start(Place::V2(&ns), &host, &["ASCEND_VISIBLE_DEVICES=0"], |_| {}).expect("start");
    let cgroup = npu_tests::cgroups::unified_mount().join(c.unified_path().trim_start_matches('/'));
    let show = run(Command::new("bpftool").args(["cgroup", "show", cgroup.to_str().unwrap()]));
    assert!(show.contains("npu_dev_guard"), "{show}");
    assert_eq!(
        show.lines().filter(|l| l.contains("cgroup_device")).count(),
        2,
        "{show}"
    );
}

/// `VIRTUAL`: the host's `vdavinciN` appears as `/dev/davinciN` and only it is usable (the
/// physical chip is not); `NODRV`: devices only, no driver mounts.
#[test]
fn virtual_npus_without_driver_mounts() {
    each_place(|place, mode| {
        let host = FakeHost::new(2);
        let c = start(
            place,
            &host,
            &[
                "ASCEND_VISIBLE_DEVICES=1",
                "ASCEND_RUNTIME_OPTIONS=VIRTUAL,NODRV",
            ],
            |_| {},
        )
        .expect("start");
        let (_, out) = c.sh("stat -c '%t:%T' /dev/davinci1; ls /dev");
        let expect = format!("{:x}:1", host.virtual_major);
        assert!(
            out.contains(&expect),
            "{mode}: /dev/davinci1 should be vdavinci1 ({expect}): {out}"
        );
        assert!(!out.contains("vdavinci"), "{mode}: {out}");
        assert_eq!(open_verdict(&c, "/dev/davinci1"), "ENXIO", "{mode}");
        assert_eq!(
            c.node_verdict(host.virtual_major, 1),
            "ENXIO",
            "{mode}: vNPU 1"
        );
        assert_eq!(
            c.node_verdict(host.virtual_major, 0),
            "EPERM",
            "{mode}: vNPU 0"
        );
        assert_eq!(
            c.node_verdict(host.chip_major, 1),
            "EPERM",
            "{mode}: physical NPU 1"
        );
        let (ok, _) = c.sh("test -e /usr/local/Ascend/driver/version.info");
        assert!(!ok, "{mode}: NODRV must not mount the driver");
    });
}

/// A cgroup2 tree shown from a subtree (an engine nested in a container without a cgroup
/// namespace: `/sys/fs/cgroup` is a bind of its own branch). The hook's quick look at the
/// standard places derives a path that names another cgroup there (a decoy at the same
/// relative path), sees that it does not hold the container, and reads the mount table
/// instead: a privileged container still gets exactly its NPU.
#[test]
fn cgroup_tree_shown_from_a_subtree() {
    if !can_run() {
        return;
    }
    let ns = V2Namespace::new();
    let branch = npu_tests::unique("npu-branch");
    let cg = npu_tests::unique("npu-ctr-cg");
    let tree = "/run/npu-tests-cgroup2";
    // The decoy: where the branch's path, read from the host's view, lands inside the bind.
    let script = format!(
        "mkdir -p {tree} && mount -t cgroup2 none {tree} && mkdir -p {tree}/{branch}/{branch}/{cg} && \
         mount --bind {tree}/{branch} /sys/fs/cgroup"
    );
    run(ns.command("sh").args(["-c", &script]));
    let place = Place::V2(&ns);
    let host = FakeHost::new(3);
    {
        let c = start(place, &host, &["ASCEND_VISIBLE_DEVICES=1"], |spec| {
            spec["linux"]["cgroupsPath"] = format!("/{cg}").into();
            spec["linux"]["resources"]["devices"] =
                serde_json::json!([{"allow": true, "access": "rwm"}]);
        })
        .expect("start");
        assert_eq!(c.unified_path(), format!("/{branch}/{cg}"));
        assert_eq!(
            c.chip_verdicts(&host),
            npu_tests::runc::expect_only(&[1], host.chips),
        );
    }
    run(ns.command("sh").args([
        "-c",
        &format!("rmdir {tree}/{branch}/{branch}/{cg} {tree}/{branch}/{branch} {tree}/{branch}"),
    ]));
}
