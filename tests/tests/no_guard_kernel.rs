//! A kernel on which no guard variant loads (forced here: `bpf(BPF_MAP_CREATE)` fails with
//! EINVAL, as on kernels without the guard's map types). On a pure cgroup v2 host NPU
//! containers are refused, since the guard is the only thing that keeps a privileged container
//! off other NPUs there, and the verdict is remembered so later containers do not retry; on a
//! hybrid host the v1 devices controller isolates alone. Nothing is left pinned either way.
use npu_runtime::node::config::PATH_ENV;
use npu_tests::{
    bin,
    cgroups::{Place, V2Namespace},
    host::FakeHost,
    require_root, require_tools,
    runc::{RuncContainer, expect_only},
    syscalls::runtime_hiding,
};

const NO_MAPS: &[&str] = &["bpf_map_create"];

fn can_run() -> bool {
    require_root() && require_tools(&["runc", "busybox", "nsenter"])
}

fn start<'a>(place: Place<'a>, host: &FakeHost, npus: &str) -> Result<RuncContainer<'a>, String> {
    RuncContainer::start_with_env(
        place,
        host.dir.path(),
        &runtime_hiding(NO_MAPS, host.dir.path()),
        &host.config_path,
        |spec| {
            spec["process"]["env"]
                .as_array_mut()
                .unwrap()
                .push(format!("ASCEND_VISIBLE_DEVICES={npus}").into());
        },
    )
}

/// `npu-ctk doctor`'s guard line at `place`, as that kernel would see it.
fn doctor_guard_line(place: Place<'_>, host: &FakeHost) -> String {
    let out = place
        .command(bin("nosys"))
        .arg(NO_MAPS.join(","))
        .arg("--")
        .arg(bin("npu-ctk"))
        .arg("doctor")
        .env(PATH_ENV, &host.config_path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.contains("guard program"))
        .unwrap_or_default()
        .to_string()
}

fn log(host: &FakeHost) -> String {
    std::fs::read_to_string(host.dir.path().join("runtime.log")).unwrap_or_default()
}

/// Nothing of the guard is pinned: no program version, no maps.
fn assert_nothing_pinned(host: &FakeHost, ctx: &str) {
    let bpf_dir = &host.config.bpf_dir;
    assert!(
        npu_runtime::enforce::guard::versions(bpf_dir)
            .unwrap()
            .is_empty(),
        "{ctx}: a program is pinned"
    );
    assert!(
        !npu_runtime::enforce::guard::maps_dir(bpf_dir).exists(),
        "{ctx}: maps are pinned"
    );
}

#[test]
fn pure_v2_refuses_npu_containers_and_remembers_why() {
    if !can_run() {
        return;
    }
    let ns = V2Namespace::new();
    let place = Place::V2(&ns);
    let host = FakeHost::new(2);
    let err = start(place, &host, "0")
        .err()
        .expect("an NPU container started on pure v2 without a guard");
    assert!(
        err.contains("cannot run the device guard") && err.contains("refuses to create map"),
        "{err}"
    );
    assert!(host.records().is_empty(), "{:?}", host.records());
    assert_nothing_pinned(&host, "first refusal");
    let fact = host.config.state_dir.join("node/guard-unsupported.json");
    assert!(fact.exists(), "the verdict is not kept");
    // The next container is refused from the kept verdict, without loading again.
    let err = start(place, &host, "1").err().expect("second start");
    assert!(err.contains("cannot run the device guard"), "{err}");
    assert!(log(&host).contains("(remembered)"), "{}", log(&host));
    assert_nothing_pinned(&host, "second refusal");
    // Containers without a request are not NPU containers: they start as before.
    let plain = RuncContainer::start_with_env(
        place,
        host.dir.path(),
        &runtime_hiding(NO_MAPS, host.dir.path()),
        &host.config_path,
        |_| {},
    );
    assert!(plain.is_ok(), "{:?}", plain.err());
    let line = doctor_guard_line(place, &host);
    assert!(
        line.starts_with("[FAIL] guard program") && line.contains("refused"),
        "{line}"
    );
}

#[test]
fn hybrid_host_isolates_with_the_v1_controller_alone() {
    if !can_run() || npu_tests::cgroups::devices_v1_mount().is_none() {
        return;
    }
    let host = FakeHost::new(3);
    let c = start(Place::Host, &host, "1").expect("start on the hybrid host");
    assert_eq!(c.chip_verdicts(&host), expect_only(&[1], host.chips));
    assert!(log(&host).contains("BPF layer skipped"), "{}", log(&host));
    let record: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(host.config.state_dir.join(format!("{}.json", c.id))).unwrap(),
    )
    .unwrap();
    assert_eq!(record["enforced"]["guard_version"], serde_json::Value::Null);
    assert!(record["enforced"]["devices_v1_dir"].is_string(), "{record}");
    assert_nothing_pinned(&host, "hybrid");
    let line = doctor_guard_line(Place::Host, &host);
    assert!(
        line.starts_with("[warn] guard program") && line.contains("v1 devices controller"),
        "{line}"
    );
    drop(c);
    assert!(host.records().is_empty());
}
