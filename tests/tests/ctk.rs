//! `npu-ctk`: the device list, the live policy (which must agree with bpftool), and gc (which
//! must remove only what belongs to dead containers).
use std::{collections::BTreeSet, process::Command};

use npu_runtime::node::config::PATH_ENV;
use npu_tests::{
    bin,
    cgroups::{Place, TestCgroup, V2Namespace, unified_mount},
    host::FakeHost,
    probe::guardctl,
    require_root, require_tools, run,
    runc::open_verdict,
    syscalls::MountPath,
    unique,
};

fn can_run() -> bool {
    require_root() && require_tools(&["runc", "bpftool", "busybox", "nsenter"])
}

fn ctk(host: &FakeHost, args: &[&str]) -> String {
    run(Command::new(bin("npu-ctk"))
        .env(PATH_ENV, &host.config_path)
        .args(args))
}

/// (cgroup id, major, minor) of every grant bpftool shows in the pinned grant map.
fn bpftool_grants(host: &FakeHost) -> BTreeSet<(u64, u64, u64)> {
    let dump = run(Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(host.map_pin("npu_grants")));
    let entries: serde_json::Value = serde_json::from_str(&dump).unwrap();
    entries
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let k = &e["formatted"]["key"];
            (
                k["cgroup_id"].as_u64().unwrap(),
                k["major"].as_u64().unwrap(),
                k["minor"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn devices_lists_the_nodes() {
    if !require_root() {
        return;
    }
    let host = FakeHost::new(3);
    let text = ctk(&host, &["devices"]);
    for (role, name, majmin) in [
        ("npu 0", "davinci0", format!("{}:0", host.chip_major)),
        ("npu 2", "davinci2", format!("{}:2", host.chip_major)),
        ("management", "hisi_hdc", format!("{}:2", host.mgmt_major)),
        (
            "virtual npu 1",
            "vdavinci1",
            format!("{}:1", host.virtual_major),
        ),
    ] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(role) && l.contains(name) && l.ends_with(&majmin)),
            "{role} {name} {majmin} missing:\n{text}"
        );
    }
    let json: serde_json::Value =
        serde_json::from_str(&ctk(&host, &["devices", "--json"])).unwrap();
    // 3 NPUs, 3 virtual NPUs, 3 management nodes.
    assert_eq!(json["devices"].as_array().unwrap().len(), 9, "{json}");
    assert!(json["missing_management"].as_array().unwrap().is_empty());
}

#[test]
fn policy_show_agrees_with_bpftool() {
    if !can_run() {
        return;
    }
    let ns = V2Namespace::new();
    for (place, mode) in [(Place::V2(&ns), "v2"), (Place::Host, "v1")] {
        let host = FakeHost::new(4);
        let a = npu_tests::runc::start_npu(place, &host, "0").expect("start");
        let b = npu_tests::runc::start_npu(place, &host, "2,3").expect("start");
        // Make some verdicts to count.
        assert_eq!(open_verdict(&a, "/dev/davinci0"), "ENXIO");
        assert_eq!(a.node_verdict(host.chip_major, 1), "EPERM");

        let json: serde_json::Value =
            serde_json::from_str(&ctk(&host, &["policy", "show", "--json"])).unwrap();
        let entries = json.as_array().unwrap();
        assert_eq!(entries.len(), 2, "{mode}: {json}");
        let mut from_ctk = BTreeSet::new();
        for (c, minors) in [(&a, vec![0]), (&b, vec![2, 3])] {
            let e = entries
                .iter()
                .find(|e| e["id"] == c.id.as_str())
                .expect("entry");
            let chips: Vec<String> = minors
                .iter()
                .map(|m| format!("c {}:{m} rwm", host.chip_major))
                .collect();
            let grants: Vec<&str> = e["grants"]
                .as_array()
                .unwrap()
                .iter()
                .map(|g| g.as_str().unwrap())
                .collect();
            for chip in &chips {
                assert!(grants.contains(&chip.as_str()), "{mode}: {e}");
            }
            assert_eq!(
                grants.len(),
                minors.len() + 3,
                "{mode}: chips + 3 management: {e}"
            );
            let id = e["cgroup_id"]
                .as_u64()
                .expect("every container has a BPF layer here");
            for g in &grants {
                let (_, majmin) = g.split_once(' ').unwrap();
                let (maj, min) = majmin.split(' ').next().unwrap().split_once(':').unwrap();
                from_ctk.insert((id, maj.parse().unwrap(), min.parse().unwrap()));
            }
        }
        assert_eq!(
            from_ctk,
            bpftool_grants(&host),
            "{mode}: npu-ctk and bpftool disagree"
        );
        let ea = entries.iter().find(|e| e["id"] == a.id.as_str()).unwrap();
        assert!(
            ea["allowed"].as_u64().unwrap() >= 1 && ea["denied"].as_u64().unwrap() >= 1,
            "{mode}: {ea}"
        );

        let one = ctk(&host, &["policy", "show", &b.id]);
        assert!(one.contains(&b.id) && !one.contains(&a.id), "{mode}: {one}");
        let out = Command::new(bin("npu-ctk"))
            .env(PATH_ENV, &host.config_path)
            .args(["policy", "show", "no-such-container"])
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-container"));
    }
}

#[test]
fn gc_removes_only_what_is_dead() {
    if !can_run() {
        return;
    }
    let ns = V2Namespace::new();
    let host = FakeHost::new(3);
    let alive = npu_tests::runc::start_npu(Place::V2(&ns), &host, "1").expect("start");

    // A container whose poststop never ran: registered, then its cgroup vanished.
    let dead = TestCgroup::new(&unified_mount(), &unique("npu-dead"));
    let dead_id = dead.id();
    guardctl(
        Place::Host,
        &host,
        &["enforce-v2", dead.dir().to_str().unwrap(), "0"],
    );
    drop(dead);
    // And a record left behind by it.
    std::fs::write(
        host.config.state_dir.join("ghost.json"),
        serde_json::json!({"id": "ghost", "bundle": "/nonexistent", "devices": [], "grants": [],
            "enforced": {"guard_version": null, "cgroup_id": null,
                         "unified_dir": "/sys/fs/cgroup/unified/npu-ghost-gone", "devices_v1_dir": null}})
        .to_string(),
    )
    .unwrap();
    assert!(host.granted_cgroups().contains(&dead_id));

    let report: serde_json::Value = serde_json::from_str(&ctk(&host, &["gc", "--json"])).unwrap();
    assert_eq!(report["records"], serde_json::json!(["ghost"]), "{report}");
    let purged: Vec<u64> = report["map_entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_u64().unwrap())
        .collect();
    assert_eq!(purged, [dead_id], "{report}");
    assert!(!host.granted_cgroups().contains(&dead_id));
    assert_eq!(host.records(), [format!("{}.json", alive.id)]);
    // The live container is untouched and still works.
    assert_eq!(open_verdict(&alive, "/dev/davinci1"), "ENXIO");
    assert_eq!(host.granted_cgroups().len(), 1);
    // A second run finds nothing.
    let again = ctk(&host, &["gc"]);
    assert!(again.starts_with("removed 0 record(s), 0 map"), "{again}");
}

#[test]
fn runtime_configure_cli() {
    // The fake host's device nodes need root.
    if !require_root() {
        return;
    }
    let host = FakeHost::new(1);
    let daemon = host.dir.path().join("daemon.json");
    let daemon_arg = daemon.to_str().unwrap();
    std::fs::write(&daemon, "{\n  \"debug\": true\n}\n").unwrap();
    let base = [
        "runtime",
        "configure",
        "--runtime=docker",
        "--config",
        daemon_arg,
        "--runtime-path",
        "/opt/npu/npu-container-runtime",
    ];

    let mut dry = base.to_vec();
    dry.push("--dry-run");
    let (ok, out) = npu_tests::npu_ctk(&host, &dry);
    assert!(
        ok && out.contains("+    \"npu\"") && out.contains("dry run"),
        "{out}"
    );
    assert_eq!(
        std::fs::read_to_string(&daemon).unwrap(),
        "{\n  \"debug\": true\n}\n"
    );

    let (ok, out) = npu_tests::npu_ctk(&host, &base);
    assert!(
        ok && out.contains("updated") && out.contains("daemon.json.npu-ctk.bak"),
        "{out}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&daemon).unwrap()).unwrap();
    assert_eq!(
        v["runtimes"]["npu"]["path"],
        "/opt/npu/npu-container-runtime"
    );
    assert_eq!(v["debug"], true);
    let (ok, out) = npu_tests::npu_ctk(&host, &base);
    assert!(ok && out.contains("no change"), "{out}");

    let (ok, out) = npu_tests::npu_ctk(
        &host,
        &[
            "runtime",
            "unconfigure",
            "--runtime=docker",
            "--config",
            daemon_arg,
        ],
    );
    assert!(ok && out.contains("updated"), "{out}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&daemon).unwrap()).unwrap();
    assert_eq!(v, serde_json::json!({"debug": true}));

    // A malformed file: a clear error naming it, and the file untouched.
    std::fs::write(&daemon, "{ not json").unwrap();
    let (ok, out) = npu_tests::npu_ctk(&host, &base);
    assert!(
        !ok && out.contains("daemon.json") && out.contains("not valid JSON"),
        "{out}"
    );
    assert_eq!(std::fs::read_to_string(&daemon).unwrap(), "{ not json");
}

#[test]
fn hook_install_and_doctor() {
    if !require_root() {
        return;
    }
    let host = FakeHost::new(2);
    let hooks = host.dir.path().join("hooks.d");
    let (ok, out) = npu_tests::npu_ctk(
        &host,
        &["hook", "install", "--hooks-dir", hooks.to_str().unwrap()],
    );
    assert!(ok, "{out}");
    let mut stages = Vec::new();
    for entry in std::fs::read_dir(&hooks).unwrap() {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap()).unwrap();
        assert_eq!(v["when"]["always"], true);
        // The hook runs with our configuration.
        assert!(
            v["hook"]["env"]
                .to_string()
                .contains(host.config_path.to_str().unwrap()),
            "{v}"
        );
        stages.push(v["stages"][0].as_str().unwrap().to_string());
    }
    stages.sort();
    assert_eq!(stages, ["createRuntime", "poststop", "precreate"]);

    // The fake host has every device: only warnings (program not loaded yet, engines not
    // configured), so doctor passes; each line carries a verdict.
    let (ok, out) = npu_tests::npu_ctk(&host, &["doctor"]);
    assert!(ok, "{out}");
    assert!(out.contains("[ ok ] NPUs: 2 found (0-1)"), "{out}");
    assert!(
        out.contains("[ ok ] management devices: 3 present"),
        "{out}"
    );
    assert!(
        out.lines()
            .all(|l| l.starts_with('[') || l.trim_start().starts_with("fix:")),
        "{out}"
    );
    // The guard is loaded as a dry run (nothing pinned), and a real read-only bind mount is
    // made the way the hook makes it, on each mount path.
    assert!(
        out.contains("[ ok ] guard program: this kernel loads the full variant"),
        "{out}"
    );
    assert!(
        !host.config.bpf_dir.exists()
            || npu_runtime::enforce::guard::versions(&host.config.bpf_dir)
                .unwrap()
                .is_empty(),
        "doctor pinned something"
    );
    for path in MountPath::ALL {
        let hidden = path.hidden().join(",");
        let out = Command::new(bin("nosys"))
            .arg(&hidden)
            .arg("--")
            .arg(bin("npu-ctk"))
            .arg("doctor")
            .env(PATH_ENV, &host.config_path)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text
            .lines()
            .find(|l| l.contains("driver mounts"))
            .unwrap_or_else(|| panic!("{path:?}: {text}"));
        let want = match path {
            MountPath::Native => "mount_setattr + move_mount",
            MountPath::NoSetattr => "then a bind remount (no mount_setattr",
            MountPath::Classic => "through /proc/self/fd",
        };
        assert!(
            line.starts_with("[ ok ]") && line.contains(want),
            "{path:?}: {line}"
        );
    }
    // Without its management devices, the host fails the check, with the fix.
    std::fs::remove_file(host.node("hisi_hdc")).unwrap();
    let (ok, out) = npu_tests::npu_ctk(&host, &["doctor"]);
    assert!(
        !ok && out.contains("[FAIL] management devices: missing:") && out.contains("hisi_hdc"),
        "{out}"
    );
    assert!(out.contains("fix: install the Ascend driver"), "{out}");
}
