//! Faults: the pinned program deleted under running containers, bpffs not mounted, the hook
//! killed mid-work. Never an open NPU: running containers keep their verdicts, new ones get a
//! working guard, and what a killed hook leaves behind is found by `npu-ctk gc`.
use std::process::Command;

use npu_tests::{
    bin,
    cgroups::{Place, V2Namespace},
    have_tool,
    host::FakeHost,
    require, require_root, require_tools, run,
    runc::RuncContainer,
};

/// Waits up to 20 s for `path` to exist (a slowed step announcing itself); `what` says why
/// it never came.
fn wait_for(path: &std::path::Path, what: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !path.exists() {
        assert!(std::time::Instant::now() < deadline, "{what}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn can_run() -> bool {
    require_root() && require_tools(&["runc", "busybox", "nsenter"])
}

#[test]
fn pins_deleted_under_running_containers() {
    if !can_run() {
        return;
    }
    let ns = V2Namespace::new();
    let place = Place::V2(&ns);
    let host = FakeHost::new(3);
    let a = npu_tests::runc::start_npu(place, &host, "0").expect("start");
    let before = a.chip_verdicts(&host);
    assert_eq!(before, ["ENXIO", "EPERM", "EPERM"]);
    // Someone removes every pin.
    std::fs::remove_dir_all(&host.config.bpf_dir).unwrap();
    // The attached program and its maps live on: A keeps exactly its NPU.
    assert_eq!(a.chip_verdicts(&host), before, "after the pins vanished");
    // The next container loads and pins the program again and is guarded.
    let b = npu_tests::runc::start_npu(place, &host, "2").expect("start");
    assert_eq!(b.chip_verdicts(&host), ["EPERM", "EPERM", "ENXIO"]);
    assert_eq!(a.chip_verdicts(&host), before, "A after B started");
    // A's cleanup has nothing to unpin and still removes its record.
    let a_record = format!("{}.json", a.id);
    drop(a);
    assert!(!host.records().contains(&a_record), "{:?}", host.records());
    assert_eq!(host.records().len(), 1);
}

#[test]
fn bpffs_not_mounted() {
    if !can_run() {
        return;
    }
    let ns = V2Namespace::new();
    // Inside the namespace only: the host keeps its bpffs.
    run(ns.command("umount").arg("/sys/fs/bpf"));
    let fs = run(ns.command("stat").args(["-f", "-c", "%T", "/sys/fs/bpf"]));
    assert_ne!(fs.trim(), "bpf_fs", "bpffs still mounted in the namespace");
    let host = FakeHost::new(2);
    let c = npu_tests::runc::start_npu(Place::V2(&ns), &host, "1").expect("start");
    assert_eq!(c.chip_verdicts(&host), ["EPERM", "ENXIO"]);
    let fs = run(ns.command("stat").args(["-f", "-c", "%T", "/sys/fs/bpf"]));
    assert_eq!(
        fs.trim(),
        "bpf_fs",
        "the hook mounts bpffs where it belongs"
    );
}

/// The hook killed (SIGKILL, injected by strace at a chosen syscall) while it registers the
/// container, before its record lands, and while it mounts: the container never runs, `gc`
/// leaves no stale grant or record, and a container already running is unaffected.
#[test]
fn hook_killed_mid_work() {
    if !(can_run()
        && require("strace", have_tool("strace"))
        && require("bpftool", have_tool("bpftool")))
    {
        return;
    }
    let host = FakeHost::new(3);
    let bystander = npu_tests::runc::start_npu(Place::Host, &host, "2").expect("start");
    // The shim injects the hook that sits next to it: a copy of the shim beside a wrapper.
    let dir = host.dir.path().join("killing");
    std::fs::create_dir_all(&dir).unwrap();
    let shim = dir.join("npu-container-runtime");
    std::fs::copy(bin("npu-container-runtime"), &shim).unwrap();
    let hook = dir.join("npu-container-hook");
    for (syscall, when) in [
        ("bpf", "6"),
        ("rename,renameat,renameat2", "1"),
        ("move_mount", "2"),
    ] {
        std::fs::write(
            &hook,
            format!(
                "#!/bin/sh\nif [ \"$1\" = create-runtime ]; then\n  exec strace -f -qq -o /dev/null \
                 -e inject={syscall}:signal=KILL:when={when} {} \"$@\"\nfi\nexec {} \"$@\"\n",
                bin("npu-container-hook").display(),
                bin("npu-container-hook").display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let result = RuncContainer::start_with_env(
            Place::Host,
            host.dir.path(),
            &shim,
            &host.config_path,
            |spec| {
                spec["process"]["env"]
                    .as_array_mut()
                    .unwrap()
                    .push("ASCEND_VISIBLE_DEVICES=0".into());
            },
        );
        let err = result
            .err()
            .unwrap_or_else(|| panic!("killed at {syscall}: the container started"));
        assert!(err.contains("hook"), "killed at {syscall}: {err}");
        let gc = run(Command::new(bin("npu-ctk"))
            .env(npu_runtime::node::config::PATH_ENV, &host.config_path)
            .args(["gc", "--json"]));
        eprintln!("killed at {syscall} #{when}: gc {gc}");
        assert_eq!(
            host.records(),
            [format!("{}.json", bystander.id)],
            "killed at {syscall}"
        );
        assert_eq!(
            host.granted_cgroups().len(),
            1,
            "killed at {syscall}: only the bystander is registered"
        );
        assert_eq!(
            bystander.chip_verdicts(&host),
            ["EPERM", "EPERM", "ENXIO"],
            "bystander after {syscall}"
        );
    }
}

/// The container map full: the next NPU container fails with an error naming the map and is
/// not created; once there is room again, containers start as before.
#[test]
fn maps_full() {
    if !can_run() {
        return;
    }
    let host = FakeHost::new(2);
    // Load the program by starting (and removing) one container.
    drop(npu_tests::runc::start_npu(Place::Host, &host, "0").expect("start"));
    let mut guard = npu_runtime::enforce::guard::Guard::ensure(&host.config).unwrap();
    let fake = |i: usize| (1u64 << 42) + i as u64;
    let mut filled = 0;
    while guard.maps.register(fake(filled), &[]).is_ok() {
        filled += 1;
        assert!(
            filled <= npu_guard_common::MAX_CONTAINERS,
            "the map never filled"
        );
    }
    assert_eq!(filled, npu_guard_common::MAX_CONTAINERS);
    let err = npu_tests::runc::start_npu(Place::Host, &host, "1")
        .err()
        .expect("a container started with the map full");
    assert!(err.contains("npu_containers"), "{err}");
    assert!(host.records().is_empty());
    for i in 0..filled {
        guard.maps.unregister(fake(i), &[]).unwrap();
    }
    let c = npu_tests::runc::start_npu(Place::Host, &host, "1").expect("start");
    assert_eq!(c.chip_verdicts(&host), ["EPERM", "ENXIO"]);
}

/// runc killed (SIGKILL) while our hook runs: the container never starts; the engine's usual
/// `delete -f` and then `npu-ctk gc` leave no stale grant or record.
#[test]
fn runc_killed_mid_create() {
    if !(can_run() && require("bpftool", have_tool("bpftool"))) {
        return;
    }
    let host = FakeHost::new(2);
    let dir = host.dir.path().join("slow");
    std::fs::create_dir_all(&dir).unwrap();
    let shim = dir.join("npu-container-runtime");
    std::fs::copy(bin("npu-container-runtime"), &shim).unwrap();
    let entered = dir.join("hook-entered");
    let release = dir.join("hook-release");
    // The hook announces itself, then waits to be released (by us, after killing runc).
    std::fs::write(
        dir.join("npu-container-hook"),
        format!(
            "#!/bin/sh\nif [ \"$1\" = create-runtime ]; then\n  touch {e}\n  while [ ! -e {r} ]; do sleep 0.05; done\nfi\nexec {h} \"$@\"\n",
            e = entered.display(),
            r = release.display(),
            h = bin("npu-container-hook").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        dir.join("npu-container-hook"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let id = npu_tests::unique("victim");
    let (bundle, _) = npu_tests::runc::write_bundle(&dir, &id, &["sleep", "600"], |spec| {
        spec["process"]["env"]
            .as_array_mut()
            .unwrap()
            .push("ASCEND_VISIBLE_DEVICES=0".into());
    });
    let root = dir.join("runc-root");
    let mut runc = Command::new(&shim)
        .env(npu_runtime::node::config::PATH_ENV, &host.config_path)
        .arg("--root")
        .arg(&root)
        .args(["create", "--bundle"])
        .arg(&bundle)
        .arg(&id)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&entered, "the hook never ran");
    // The shim's runc is tied to it (as an exec'd runc would be the same process): killing
    // the command the engine started kills runc mid-create.
    runc.kill().unwrap();
    runc.wait().unwrap();
    std::fs::write(&release, "").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    // runc died with the shim, before saving the container's state (an untied runc would
    // have finished the create once the hook returned: state "created").
    let state = Command::new("runc")
        .arg("--root")
        .arg(&root)
        .args(["state", &id])
        .output()
        .unwrap();
    assert!(
        !state.status.success(),
        "runc outlived the killed shim: {}",
        String::from_utf8_lossy(&state.stdout)
    );
    // What an engine does with a half-created container, then gc.
    let _ = Command::new("runc")
        .arg("--root")
        .arg(&root)
        .args(["delete", "-f", &id])
        .output();
    run(Command::new(bin("npu-ctk"))
        .env(npu_runtime::node::config::PATH_ENV, &host.config_path)
        .arg("gc"));
    assert!(host.records().is_empty(), "{:?}", host.records());
    assert!(host.granted_cgroups().is_empty(), "grants left");
    // runc died before saving its state, so `delete` could not find the container: remove the
    // (empty) cgroups it had made, in every hierarchy, as an engine's cleanup would.
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let _ = std::fs::remove_dir(hierarchy.path().join(&id));
    }
}

/// The shim killed while the runtime deletes a container (an engine's timeout): the runtime's
/// delete is not tied to the shim and finishes; what the shim had no time to clean up (the
/// record, the grants) is found by `npu-ctk gc`.
#[test]
fn shim_killed_mid_delete() {
    if !(can_run() && require("bpftool", have_tool("bpftool"))) {
        return;
    }
    let mut host = FakeHost::new(2);
    let c = npu_tests::runc::start_npu(Place::Host, &host, "1").expect("start");
    assert_eq!(host.records().len(), 1);
    let dir = host.dir.path().join("slow");
    std::fs::create_dir_all(&dir).unwrap();
    let entered = dir.join("delete-entered");
    let release = dir.join("delete-release");
    let slow = dir.join("slow-runc");
    // runc, held at the start of `delete` until released.
    std::fs::write(
        &slow,
        format!(
            "#!/bin/sh\ncase \" $* \" in *\" delete \"*)\n  touch {e}\n  while [ ! -e {r} ]; do sleep 0.05; done;;\nesac\nexec {runc} \"$@\"\n",
            e = entered.display(),
            r = release.display(),
            runc = run(Command::new("sh").args(["-c", "command -v runc"])).trim()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&slow, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    host.append_config(&format!("runtimes = [{:?}]\n", slow));
    let mut shim = c
        .runtime_command()
        .args(["delete", "-f", &c.id])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&entered, "the delete never ran");
    shim.kill().unwrap();
    shim.wait().unwrap();
    std::fs::write(&release, "").unwrap();
    // The orphaned runtime finishes the delete on its own.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while c
        .runc()
        .args(["state", &c.id])
        .output()
        .unwrap()
        .status
        .success()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the runtime's delete died with the shim"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(host.records().len(), 1, "the killed shim cleaned up");
    let out = run(Command::new(bin("npu-ctk"))
        .env(npu_runtime::node::config::PATH_ENV, &host.config_path)
        .arg("gc"));
    assert!(out.contains(&format!("record {}", c.id)), "{out}");
    assert!(host.records().is_empty(), "{:?}", host.records());
    assert!(host.granted_cgroups().is_empty(), "grants left");
}
