//! The node guard (`npu-ctk guard install|uninstall|status`): attached to a container parent
//! cgroup, it keeps containers started around the runtime (`docker run --runtime=runc`,
//! `ctr run` without our binary, `podman --runtime runc`) off every NPU, while containers
//! started through the shim under the same parent keep exactly their NPUs. Pure cgroup v2
//! (dockerd in a private namespace) and this VM's hybrid layout (the guard on the unified
//! tree, next to the v1 devices controller).
use std::{path::PathBuf, process::Command};

use npu_runtime::node::config::PATH_ENV;
use npu_tests::{
    bin,
    cgroups::{Place, TestCgroup, each_cgroup_mode, guards_attached, unified_mount},
    engines::{Containerd, Dockerd, Podman, matrix_script, parse_matrix},
    host::FakeHost,
    probe::probe,
    require_root, require_tools,
    runc::expect_only,
    unique,
};

fn can_run() -> bool {
    require_root() && require_tools(&["dockerd", "docker", "bpftool", "busybox", "nsenter", "runc"])
}

fn ctk(place: Place<'_>, host: &FakeHost, args: &[&str]) -> (bool, String) {
    npu_tests::npu_ctk_at(place, host, args)
}

/// What --privileged does to devices, as far as this VM lets containers start (DESIGN 6).
const PRIVILEGED: [&str; 4] = [
    "--device-cgroup-rule=a *:* rwm",
    "--cap-add=ALL",
    "--cap-drop=SYS_RESOURCE",
    "--security-opt=seccomp=unconfined",
];

#[test]
fn docker_containers_started_around_the_runtime_open_no_npu() {
    if !can_run() {
        return;
    }
    each_cgroup_mode(|place, mode| {
        let host = FakeHost::new(4);
        // Docker puts its containers under a parent of this test's own.
        let name = unique("docker-npu");
        let parent = TestCgroup::new(&unified_mount(), &name);
        let path = format!("/{name}");
        let d = Dockerd::start_with(place, &host, &[&format!("--cgroup-parent={path}")]);
        let (ok, out) = ctk(place, &host, &["guard", "install", "--cgroup", &path]);
        assert!(
            ok && out.contains(&format!("{path}: guarded")),
            "{mode}: {out}"
        );
        assert_eq!(guards_attached(&parent.dir()).len(), 1, "{mode}");

        let run_detached = |args: &[&str]| {
            let mut all = vec!["run", "-d"];
            all.extend(args);
            all.extend([d.image.as_str(), "sleep", "600"]);
            let (ok, out) = d.output(&all);
            assert!(ok, "{mode}: {out}");
            out.trim().to_string()
        };
        let matrix = |id: &str| {
            let (_, out) = d.output(&[
                "exec",
                id,
                "sh",
                "-c",
                &matrix_script(host.chip_major, host.chips),
            ]);
            parse_matrix(&out, host.chips)
        };
        let none = expect_only(&[], host.chips);
        // Around the runtime: privileged-like, and with every NPU given as --device.
        let mut around = vec!["--runtime=runc"];
        around.extend(PRIVILEGED);
        let bypass = run_detached(&around);
        assert_eq!(
            matrix(&bypass),
            none,
            "{mode}: docker --runtime=runc, privileged-like"
        );
        let devices: Vec<String> = (0..host.chips)
            .map(|i| format!("--device={}:/dev/davinci{i}", host.chip(i).display()))
            .collect();
        let mut given = vec!["--runtime=runc"];
        given.extend(devices.iter().map(String::as_str));
        let handed = run_detached(&given);
        assert_eq!(
            matrix(&handed),
            none,
            "{mode}: docker --runtime=runc with --device"
        );
        // Through the shim, under the same parent: exactly its NPU.
        let npu = run_detached(&["--runtime=npu", "-e", "ASCEND_VISIBLE_DEVICES=1"]);
        assert_eq!(
            matrix(&npu),
            expect_only(&[1], host.chips),
            "{mode}: through the shim"
        );
        // A process outside the guarded parents is untouched.
        let outside = TestCgroup::new(&unified_mount(), &unique("npu-outside"));
        let chip = host.chip(0).display().to_string();
        let v = probe(Place::Host, &[outside.dir()], &[format!("read:{chip}")]);
        assert_eq!(v[0].2, "ENXIO", "{mode}: outside the guarded parent");

        // The monitor names the bypassing container and says how it was started.
        let (events, _) = npu_tests::monitor_events(place, &host, &[], || {
            let _ = d.output(&[
                "exec",
                &bypass,
                "sh",
                "-c",
                "mknod /tmp/x c 1 1; cat /dev/null",
            ]);
            let _ = matrix(&bypass);
        });
        assert!(!events.is_empty(), "{mode}: no denial reported");
        for e in &events {
            assert_eq!(e["container"], bypass.as_str(), "{mode}: {e}");
            assert_eq!(e["engine"], "docker", "{mode}: {e}");
            assert_eq!(e["through_runtime"], false, "{mode}: {e}");
        }

        // An upgrade: this build's pins move aside as if an older build had made them; the
        // next install replaces the old program on the parent without a window.
        let versions = npu_runtime::enforce::guard::versions(&host.config.bpf_dir).unwrap();
        let old_id = guards_attached(&parent.dir())[0];
        std::fs::rename(
            host.config.bpf_dir.join(&versions[0]),
            host.config.bpf_dir.join("0000000000000000"),
        )
        .unwrap();
        let (ok, out) = ctk(place, &host, &["guard", "install", "--cgroup", &path]);
        assert!(
            ok && out.contains("replaced 0000000000000000"),
            "{mode}: {out}"
        );
        let now = guards_attached(&parent.dir());
        assert!(
            now.len() == 1 && now[0] != old_id,
            "{mode}: {now:?} (old {old_id})"
        );
        let (_, status) = ctk(place, &host, &["guard", "status"]);
        assert!(
            status
                .lines()
                .any(|l| l.starts_with(&path) && l.contains("current")),
            "{mode}: {status}"
        );
        assert_eq!(
            matrix(&npu),
            expect_only(&[1], host.chips),
            "{mode}: after the upgrade"
        );
        assert_eq!(matrix(&bypass), none, "{mode}: bypass after the upgrade");
        let late = run_detached(&around);
        assert_eq!(
            matrix(&late),
            none,
            "{mode}: bypass started after the upgrade"
        );

        // Uninstalled: containers around the runtime get what runc gives them again.
        let (ok, out) = ctk(place, &host, &["guard", "uninstall", "--cgroup", &path]);
        assert!(ok && out.contains("guard removed"), "{mode}: {out}");
        assert!(guards_attached(&parent.dir()).is_empty(), "{mode}");
        assert_eq!(
            matrix(&bypass),
            expect_only(&[0, 1, 2, 3], host.chips),
            "{mode}: after uninstall"
        );
        assert_eq!(
            matrix(&npu),
            expect_only(&[1], host.chips),
            "{mode}: shim after uninstall"
        );
        drop(d);
        drop(parent);
    });
}

#[test]
fn ctr_and_podman_around_the_runtime_open_no_npu() {
    if !(can_run() && require_tools(&["containerd", "ctr", "podman"])) {
        return;
    }
    let host = FakeHost::new(2);
    let place = Place::Host;
    let none = expect_only(&[], host.chips);

    // ctr without --runc-binary: its containers live under /default.
    let c = Containerd::start(place, &host);
    let id = unique("around");
    let default = unified_mount().join("default");
    let created = !default.exists();
    if created {
        std::fs::create_dir(&default).unwrap();
    }
    let (ok, out) = ctk(place, &host, &["guard", "install", "--cgroup", "/default"]);
    assert!(ok, "{out}");
    let (ok, out) = c.run_around(&id, &[host.chip(0), host.chip(1)]);
    assert!(ok, "{out}");
    let out = c.exec(&id, &matrix_script(host.chip_major, host.chips));
    assert_eq!(
        parse_matrix(&out, host.chips),
        none,
        "ctr run around the runtime:\n{out}"
    );
    c.remove(&id);
    let (ok, out) = ctk(
        place,
        &host,
        &["guard", "uninstall", "--cgroup", "/default"],
    );
    assert!(ok, "{out}");
    drop(c);
    if created {
        let _ = std::fs::remove_dir(&default);
    }

    // podman --runtime runc, under a parent of this test's own.
    let p = Podman::new(place, &host);
    let name = unique("npu-podman");
    let parent = TestCgroup::new(&unified_mount(), &name);
    let path = format!("/{name}");
    let (ok, out) = ctk(place, &host, &["guard", "install", "--cgroup", &path]);
    assert!(ok, "{out}");
    let devices: Vec<String> = (0..host.chips)
        .map(|i| format!("--device={}:/dev/davinci{i}", host.chip(i).display()))
        .collect();
    let script = matrix_script(host.chip_major, host.chips);
    let mut args: Vec<&str> = vec!["--cgroup-parent", &path, "--cap-add=MKNOD"];
    args.extend(devices.iter().map(String::as_str));
    args.extend([p.image.as_str(), "sh", "-c", &script]);
    let (_, out) = p.run(&["--runtime", "runc"], &args);
    assert_eq!(
        parse_matrix(&out, host.chips),
        none,
        "podman --runtime runc:\n{out}"
    );
    let (ok, out) = ctk(place, &host, &["guard", "uninstall", "--cgroup", &path]);
    assert!(ok, "{out}");
    drop(p);
    drop(parent);
}

#[test]
fn bad_input_changes_nothing() {
    if !can_run() {
        return;
    }
    let host = FakeHost::new(1);
    let place = Place::Host;
    // A missing parent, a file of the cgroup tree, a relative path, the root.
    for (bad, needle) in [
        ("/npu-no-such-parent", "no such cgroup"),
        ("/cgroup.procs", "not a cgroup v2 directory"),
        ("kubepods", "not an absolute cgroup path"),
        ("/", "root cgroup"),
    ] {
        let (ok, out) = ctk(place, &host, &["guard", "install", "--cgroup", bad]);
        assert!(
            !ok && out.contains(needle) && out.contains("could not guard"),
            "{bad}: {out}"
        );
    }
    assert!(guards_attached(&unified_mount()).is_empty());
    let (_, status) = ctk(place, &host, &["guard", "status", "--json"]);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert!(
        status
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["versions"] == serde_json::json!([])),
        "{status}"
    );
    // A malformed guarded_parents is an error naming the key and the file.
    let config: PathBuf = host.dir.path().join("bad.toml");
    let mut text = std::fs::read_to_string(&host.config_path).unwrap();
    text.push_str("guarded_parents = [\"docker\"]\n");
    std::fs::write(&config, text).unwrap();
    let out = Command::new(bin("npu-ctk"))
        .env(PATH_ENV, &config)
        .args(["guard", "install"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("guarded_parents") && err.contains("bad.toml"),
        "{err}"
    );
    // A pure cgroup v1 host (the unified tree unmounted in a private namespace) has no node
    // guard: a clear error, nothing attached.
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "umount {} && {} guard install --cgroup /x",
            unified_mount().display(),
            bin("npu-ctk").display()
        ))
        .env(PATH_ENV, &host.config_path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no cgroup v2 tree"),
        "{err}"
    );
}
