//! Faults: the pinned program deleted under running containers, and bpffs not mounted. Never
//! an open NPU: running containers keep their verdicts, new ones get a working guard.
use npu_tests::{
    FakeHost, Place, RuncContainer, V2Namespace, bin, have_tool, require, require_root, run,
};

fn can_run() -> bool {
    require_root()
        && require("runc", have_tool("runc"))
        && require("busybox", have_tool("busybox"))
        && require("nsenter", have_tool("nsenter"))
}

fn start<'a>(place: Place<'a>, host: &FakeHost, npus: &str) -> RuncContainer<'a> {
    RuncContainer::start_with_env(
        place,
        host.dir.path(),
        &bin("npu-container-runtime"),
        &host.config_path,
        |spec| {
            spec["process"]["env"]
                .as_array_mut()
                .unwrap()
                .push(format!("ASCEND_VISIBLE_DEVICES={npus}").into());
        },
    )
    .expect("start")
}

fn verdicts(c: &RuncContainer<'_>, host: &FakeHost) -> Vec<String> {
    (0..host.chips)
        .map(|i| c.node_verdict(host.chip_major, i))
        .collect()
}

#[test]
fn pins_deleted_under_running_containers() {
    if !can_run() {
        return;
    }
    let ns = V2Namespace::new();
    let place = Place::V2(&ns);
    let host = FakeHost::new(3);
    let a = start(place, &host, "0");
    let before = verdicts(&a, &host);
    assert_eq!(before, ["ENXIO", "EPERM", "EPERM"]);
    // Someone removes every pin.
    std::fs::remove_dir_all(&host.config.bpf_dir).unwrap();
    // The attached program and its maps live on: A keeps exactly its NPU.
    assert_eq!(verdicts(&a, &host), before, "after the pins vanished");
    // The next container loads and pins the program again and is guarded.
    let b = start(place, &host, "2");
    assert_eq!(verdicts(&b, &host), ["EPERM", "EPERM", "ENXIO"]);
    assert_eq!(verdicts(&a, &host), before, "A after B started");
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
    let c = start(Place::V2(&ns), &host, "1");
    assert_eq!(verdicts(&c, &host), ["EPERM", "ENXIO"]);
    let fs = run(ns.command("stat").args(["-f", "-c", "%T", "/sys/fs/bpf"]));
    assert_eq!(
        fs.trim(),
        "bpf_fs",
        "the hook mounts bpffs where it belongs"
    );
}
