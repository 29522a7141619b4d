//! Live revoke and restore (`npu-ctk device revoke|restore`) on running containers, on pure
//! cgroup v2 and on cgroup v1 (deny-all and allow-all device cgroups).

use npu_tests::{
    bin,
    cgroups::{Place, each_cgroup_mode},
    host::FakeHost,
    require_root, require_tools,
    runc::RuncContainer,
};

fn can_run() -> bool {
    require_root() && require_tools(&["runc", "busybox", "nsenter"])
}

fn revoke_and_restore(place: Place<'_>, mode: &str, allow_all: bool) {
    let host = FakeHost::new(3);
    let c = RuncContainer::start_with_env(
        place,
        host.dir.path(),
        &bin("npu-container-runtime"),
        &host.config_path,
        |spec| {
            spec["process"]["env"]
                .as_array_mut()
                .unwrap()
                .push("ASCEND_VISIBLE_DEVICES=0,1".into());
            if allow_all {
                spec["linux"]["resources"]["devices"] =
                    serde_json::json!([{"allow": true, "access": "rwm"}]);
            }
        },
    )
    .expect("start");
    let what = format!("{mode}{}", if allow_all { ", allow-all" } else { "" });
    assert_eq!(
        c.chip_verdicts(&host),
        ["ENXIO", "ENXIO", "EPERM"],
        "{what}"
    );

    let (ok, out) = npu_tests::npu_ctk(&host, &["device", "revoke", &c.id, "1"]);
    assert!(
        ok && out.contains("revoked") && out.contains("file descriptors"),
        "{what}: {out}"
    );
    assert_eq!(
        c.chip_verdicts(&host),
        ["ENXIO", "EPERM", "EPERM"],
        "{what}: after revoke"
    );
    let (_, policy) = npu_tests::npu_ctk(&host, &["policy", "show", "--json"]);
    let revoked = format!("c {}:1 rwm", host.chip_major);
    assert!(
        policy.contains(&format!("\"revoked\": [\n      \"{revoked}\"")),
        "{what}: {policy}"
    );
    let (ok, out) = npu_tests::npu_ctk(&host, &["device", "revoke", &c.id, "1"]);
    assert!(ok && out.contains("no change"), "{what}: {out}");

    let (ok, out) = npu_tests::npu_ctk(&host, &["device", "restore", &c.id, "1"]);
    assert!(ok && out.contains("restored"), "{what}: {out}");
    assert_eq!(
        c.chip_verdicts(&host),
        ["ENXIO", "ENXIO", "EPERM"],
        "{what}: after restore"
    );

    // Only original grants come back.
    let (ok, out) = npu_tests::npu_ctk(&host, &["device", "restore", &c.id, "2"]);
    assert!(!ok && out.contains("never granted"), "{what}: {out}");
    assert_eq!(
        c.chip_verdicts(&host),
        ["ENXIO", "ENXIO", "EPERM"],
        "{what}: after refused restore"
    );
    let (ok, out) = npu_tests::npu_ctk(&host, &["device", "revoke", "no-such-container", "0"]);
    assert!(!ok && out.contains("no-such-container"), "{what}: {out}");
}

#[test]
fn revoke_and_restore_live() {
    if can_run() {
        each_cgroup_mode(|place, mode| revoke_and_restore(place, mode, false));
    }
}

#[test]
fn revoke_in_an_allow_all_cgroup() {
    if can_run() {
        revoke_and_restore(Place::Host, "cgroup v1", true);
    }
}
