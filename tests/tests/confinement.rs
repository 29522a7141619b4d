//! What a container gets is what it names (DESIGN.md section 2), through the shim and real
//! runc, on a pure cgroup v2 host and on cgroup v1: privileged-like containers and broad
//! device rules name nothing and are confined; exact device entries (`--device`, a device
//! plugin's DeviceSpecs) name their nodes and add to a request; `none` gives the management
//! nodes and the driver mounts without a chip.
use npu_tests::{
    cgroups::{Place, each_cgroup_mode},
    host::FakeHost,
    require_root, require_tools,
    runc::{
        RuncContainer, device_entry, device_rules, expect_only, open_verdict, privileged_devices,
    },
};
use serde_json::{Value, json};

fn can_run() -> bool {
    require_root() && require_tools(&["runc", "busybox", "nsenter"])
}

/// A spec edit: what an engine would write for the container.
type Edit<'a> = Box<dyn Fn(&mut Value) + 'a>;

fn start<'a>(
    place: Place<'a>,
    host: &FakeHost,
    edit: &Edit<'_>,
) -> Result<RuncContainer<'a>, String> {
    RuncContainer::start_with_env(
        place,
        host.dir.path(),
        &npu_tests::bin("npu-container-runtime"),
        &host.config_path,
        |spec| edit(spec),
    )
}

fn env(spec: &mut Value, entry: &str) {
    spec["process"]["env"]
        .as_array_mut()
        .unwrap()
        .push(entry.into());
}

/// Every management node's verdict from inside the container (mknod + open).
fn management(c: &RuncContainer<'_>, host: &FakeHost) -> Vec<String> {
    (0..3).map(|m| c.node_verdict(host.mgmt_major, m)).collect()
}

#[test]
fn broad_rules_name_nothing() {
    if !can_run() {
        return;
    }
    each_cgroup_mode(|place, mode| {
        let host = FakeHost::new(4);
        let denied = expect_only(&[], host.chips);
        let cases: Vec<(&str, Edit<'_>)> = vec![
            (
                "privileged-like, no request",
                Box::new(|s: &mut Value| privileged_devices(&host, s)),
            ),
            (
                "privileged-like, void",
                Box::new(|s: &mut Value| {
                    privileged_devices(&host, s);
                    env(s, "ASCEND_VISIBLE_DEVICES=void");
                }),
            ),
            (
                "c M:* rwm on the chips' major",
                Box::new(|s: &mut Value| {
                    device_rules(s)
                        .push(json!({"allow": true, "type": "c", "major": host.chip_major,
                                         "access": "rwm"}))
                }),
            ),
        ];
        for (what, edit) in &cases {
            let c = start(place, &host, edit).unwrap_or_else(|e| panic!("{mode}, {what}: {e}"));
            assert_eq!(c.chip_verdicts(&host), denied, "{mode}, {what}: chips");
            if what.starts_with("privileged") {
                assert_eq!(
                    management(&c, &host),
                    ["EPERM"; 3],
                    "{mode}, {what}: management nodes"
                );
                // Everything else stays as the engine allowed it.
                assert_eq!(
                    c.node_verdict(host.other_major, 0),
                    "ENXIO",
                    "{mode}, {what}: a device outside the NPU classes"
                );
            }
            // Confined, not granted: the record says so and holds no grant.
            let record: Value = serde_json::from_str(
                &std::fs::read_to_string(host.config.state_dir.join(format!("{}.json", c.id)))
                    .unwrap(),
            )
            .unwrap();
            assert_eq!(record["confined"], true, "{mode}, {what}: {record}");
            assert_eq!(record["grants"], json!([]), "{mode}, {what}");
        }
        assert!(host.records().is_empty(), "{mode}: {:?}", host.records());
    });
}

#[test]
fn exact_entries_name_their_nodes_and_add_to_a_request() {
    if !can_run() {
        return;
    }
    each_cgroup_mode(|place, mode| {
        let host = FakeHost::new(4);
        // --device of NPU 2, no request: exactly NPU 2 (and no management node it did not
        // name).
        let only_2: Edit<'_> = Box::new(|s: &mut Value| device_entry(&host, s, 2));
        let c = start(place, &host, &only_2).unwrap_or_else(|e| panic!("{mode}: {e}"));
        assert_eq!(
            c.chip_verdicts(&host),
            expect_only(&[2], host.chips),
            "{mode}"
        );
        assert_eq!(open_verdict(&c, "/dev/davinci2"), "ENXIO", "{mode}");
        assert_eq!(management(&c, &host), ["EPERM"; 3], "{mode}");
        drop(c);
        // Privileged-like with request 1 plus an exact entry for NPU 3: exactly 1 and 3.
        let both: Edit<'_> = Box::new(|s: &mut Value| {
            device_rules(s).push(json!({"allow": true, "access": "rwm"}));
            device_entry(&host, s, 3);
            env(s, "ASCEND_VISIBLE_DEVICES=1");
        });
        let c = start(place, &host, &both).unwrap_or_else(|e| panic!("{mode}: {e}"));
        assert_eq!(
            c.chip_verdicts(&host),
            expect_only(&[1, 3], host.chips),
            "{mode}"
        );
        assert_eq!(management(&c, &host), ["ENXIO"; 3], "{mode}");
        drop(c);
        assert!(host.records().is_empty(), "{mode}: {:?}", host.records());
    });
}

#[test]
fn none_gives_management_nodes_and_driver_mounts() {
    if !can_run() {
        return;
    }
    each_cgroup_mode(|place, mode| {
        let host = FakeHost::new(2);
        let none: Edit<'_> = Box::new(|s: &mut Value| env(s, "ASCEND_VISIBLE_DEVICES=none"));
        let c = start(place, &host, &none).unwrap_or_else(|e| panic!("{mode}: {e}"));
        assert_eq!(
            c.chip_verdicts(&host),
            expect_only(&[], host.chips),
            "{mode}"
        );
        for dev in ["davinci_manager", "devmm_svm", "hisi_hdc"] {
            assert_eq!(
                open_verdict(&c, &format!("/dev/{dev}")),
                "ENXIO",
                "{mode}: {dev}"
            );
        }
        let (ok, text) = c.sh("cat /usr/local/Ascend/driver/version.info");
        assert!(ok && text.contains("Version=24.1.0"), "{mode}: {text}");
        // Mixed with numbers, `none` is an error that names the item.
        let mixed: Edit<'_> = Box::new(|s: &mut Value| env(s, "ASCEND_VISIBLE_DEVICES=none,1"));
        let err = start(place, &host, &mixed).err().expect("none,1 started");
        assert!(
            err.contains("ASCEND_VISIBLE_DEVICES") && err.contains("cannot be combined"),
            "{mode}: {err}"
        );
    });
}

#[test]
fn confinement_can_be_turned_off() {
    if !can_run() {
        return;
    }
    let host = FakeHost::new(2);
    let mut text = std::fs::read_to_string(&host.config_path).unwrap();
    text.push_str("confine_unnamed = false\n");
    std::fs::write(&host.config_path, text).unwrap();
    let edit: Edit<'_> = Box::new(|s: &mut Value| {
        device_rules(s).push(json!({"allow": true, "access": "rwm"}));
    });
    let c = start(Place::Host, &host, &edit).expect("start");
    // Passed through as before: the engine's allow-all rule decides.
    assert_eq!(c.chip_verdicts(&host), expect_only(&[0, 1], host.chips));
    assert!(host.records().is_empty(), "{:?}", host.records());
    let (_, out) = npu_tests::npu_ctk(&host, &["doctor"]);
    assert!(
        out.lines()
            .any(|l| l.starts_with("[warn] confinement") && l.contains("confine_unnamed")),
        "{out}"
    );
}
