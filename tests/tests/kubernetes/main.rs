//! Kubernetes as the kubelet drives it: a private containerd with its CRI plugin, the `npu`
//! handler registered by `npu-ctk runtime configure --runtime=containerd`, driven over the CRI
//! socket in the kubelet's order (RunPodSandbox -> CreateContainer -> StartContainer ->
//! ExecSync -> UpdateContainerResources -> StopContainer -> RemoveContainer -> StopPodSandbox
//! -> RemovePodSandbox). Every verdict is the chip matrix seen from inside the container.
//!
//! Layouts: this VM's hybrid cgroup v1 runs everything. In the pure-v2 emulation the CRI
//! plugin runs pods only with `disable_cgroup = true` (it always writes the sandbox's CPU
//! shares, and this VM's cgroup2 tree has no cpu controller: it is bound to v1), so there
//! `UpdateContainerResources` cannot work and pods have no parent cgroup to guard; the
//! requests, device-plugin entries, the sandbox and the cleanup are checked there.
//!
//! Privileged containers run on `vm-runc` below the shim: this VM's root lacks
//! CAP_SYS_RESOURCE, which runc would otherwise fail to give them (DESIGN 6).
mod cri;

use std::{collections::BTreeSet, path::Path};

use cri::Cri;
use npu_tests::{
    bin,
    cgroups::{Place, V2Namespace},
    cri::{ContainerSpec, PodSpec},
    engines::{matrix_script, parse_matrix},
    have_tool,
    host::FakeHost,
    require, require_root, require_tools,
    runc::expect_only,
};

fn can_run() -> bool {
    require_root()
        && require_tools(&["containerd", "ctr", "runc", "bpftool", "busybox"])
        && require(
            "containerd-shim-runc-v2",
            have_tool("containerd-shim-runc-v2"),
        )
}

/// A simulated host whose shim runs `vm-runc` (see the module's note) with `extra` config.
fn host_with(chips: u32, extra: &str) -> FakeHost {
    let host = FakeHost::new(chips);
    let mut text = std::fs::read_to_string(&host.config_path).unwrap();
    text.push_str(&format!("runtimes = [{:?}]\n{extra}", bin("vm-runc")));
    std::fs::write(&host.config_path, text).unwrap();
    host
}

fn ctk(place: Place<'_>, host: &FakeHost, args: &[&str]) -> (bool, String) {
    npu_tests::npu_ctk_at(place, host, args)
}

fn has_record(host: &FakeHost, id: &str) -> bool {
    host.records().contains(&format!("{id}.json"))
}

fn env(npus: &str) -> Vec<(String, String)> {
    vec![("ASCEND_VISIBLE_DEVICES".into(), npus.into())]
}

/// A device plugin's DeviceSpecs for chips `indices` (host path -> same path in the pod),
/// with the permissions Ascend's plugin gives (`rwm`).
fn device_specs(host: &FakeHost, indices: &[u32]) -> Vec<(String, String, String)> {
    device_specs_with(host, indices, "rwm")
}

fn device_specs_with(
    host: &FakeHost,
    indices: &[u32],
    permissions: &str,
) -> Vec<(String, String, String)> {
    indices
        .iter()
        .map(|i| {
            (
                format!("/dev/davinci{i}"),
                host.chip(*i).display().to_string(),
                permissions.to_string(),
            )
        })
        .collect()
}

fn matrix(cri: &mut Cri<'_>, host: &FakeHost, id: &str) -> Vec<String> {
    let out = cri.exec(id, &matrix_script(host.chip_major, host.chips));
    parse_matrix(&out, host.chips)
}

/// Every pin under the bpf dir, by name: node-wide objects only, nothing per container.
fn pins(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(e.path());
            }
            out.insert(e.path().strip_prefix(dir).unwrap().display().to_string());
        }
    }
    out
}

/// The chip nodes (by major) a spec gives its container, and whether it carries our hook.
fn spec_view(spec: &serde_json::Value, major: u32) -> (usize, bool) {
    let chips = spec
        .pointer("/linux/devices")
        .and_then(|d| d.as_array())
        .map_or(0, |d| {
            d.iter()
                .filter(|d| d["major"].as_u64() == Some(major.into()))
                .count()
        });
    let hooked = spec
        .get("hooks")
        .is_some_and(|h| h.to_string().contains("npu-container-hook"));
    (chips, hooked)
}

#[test]
fn pods_get_exactly_the_npus_they_name() {
    if !can_run() {
        return;
    }
    let host = host_with(6, "");
    let place = Place::Host;
    let mut cri = Cri::start(place, &host, false);
    // The node as doctor sees it: the handler the configure command registered, a binary
    // that is our shim, pause containers passed through.
    let (_, out) = ctk(
        place,
        &host,
        &[
            "doctor",
            "--containerd-config",
            cri.config.to_str().unwrap(),
        ],
    );
    for line in [
        "[ ok ] CRI handler: \"npu\" runs ",
        "[ ok ] CRI sandboxes: ",
    ] {
        assert!(out.lines().any(|l| l.starts_with(line)), "{line}\n{out}");
    }
    let npu = |cgroup: &str| PodSpec {
        handler: "npu".into(),
        cgroup_parent: cgroup.into(),
        ..Default::default()
    };
    let kubepods = cri.kubepods.clone();
    let parent = |pod: &str| format!("{kubepods}/pod{pod}");

    // The request variable, and the form the Ascend device plugin sets, side by side.
    let pod_a = cri.run_pod(&npu(&parent("a"))).expect("pod a");
    let a = cri
        .start_container(
            &pod_a,
            &ContainerSpec {
                env: env("0,1"),
                ..Default::default()
            },
        )
        .expect("container a");
    let pod_b = cri.run_pod(&npu(&parent("b"))).expect("pod b");
    let b_spec = ContainerSpec {
        name: "trainer".into(),
        env: env("Ascend910-2"),
        ..Default::default()
    };
    let b = cri.start_container(&pod_b, &b_spec).expect("container b");
    let pinned = pins(&host.config.bpf_dir);
    assert!(!pinned.is_empty(), "the guard is not pinned");
    assert_eq!(
        matrix(&mut cri, &host, &a),
        expect_only(&[0, 1], host.chips),
        "pod a"
    );
    assert_eq!(
        matrix(&mut cri, &host, &b),
        expect_only(&[2], host.chips),
        "pod b"
    );

    // The pause container is passed through untouched: no device, no hook.
    for pod in [&pod_a, &pod_b] {
        let spec = cri.spec_of(&pod.id);
        assert_eq!(
            spec_view(&spec, host.chip_major),
            (0, false),
            "sandbox {spec}"
        );
    }
    // A container through the handler carries the hook and its chips.
    assert_eq!(spec_view(&cri.spec_of(&a), host.chip_major), (2, true));

    // One pod, two containers: one by the variable, one by a device plugin's DeviceSpecs
    // alone (exactly those chips; the plugin's entries are names the pod cannot forge).
    let pod_c = cri.run_pod(&npu(&parent("c"))).expect("pod c");
    let c1 = cri
        .start_container(
            &pod_c,
            &ContainerSpec {
                env: env("3"),
                ..Default::default()
            },
        )
        .expect("container c1");
    let c2 = cri
        .start_container(
            &pod_c,
            &ContainerSpec {
                devices: [
                    device_specs(&host, &[4]),
                    vec![(
                        "/dev/davinci_manager".into(),
                        host.node("davinci_manager").display().to_string(),
                        "rwm".into(),
                    )],
                ]
                .concat(),
                ..Default::default()
            },
        )
        .expect("container c2");
    let out = cri.exec(&c2, "cat /dev/davinci_manager </dev/null >/dev/null");
    assert_eq!(
        npu_tests::runc::errno_of(false, &out),
        "ENXIO",
        "c2's management node: {out}"
    );
    assert_eq!(
        matrix(&mut cri, &host, &c1),
        expect_only(&[3], host.chips),
        "c1"
    );
    assert_eq!(
        matrix(&mut cri, &host, &c2),
        expect_only(&[4], host.chips),
        "c2"
    );
    // A plugin that hands over `rw` (as NVIDIA's does) grants that: the node the runtime
    // made opens, and no chip can be made anew (mknod needs `m`; broad rules grant nothing).
    let c3 = cri
        .start_container(
            &pod_c,
            &ContainerSpec {
                devices: device_specs_with(&host, &[5], "rw"),
                ..Default::default()
            },
        )
        .expect("container c3");
    let out = cri.exec(&c3, "cat /dev/davinci5 </dev/null >/dev/null");
    assert_eq!(
        npu_tests::runc::errno_of(false, &out),
        "ENXIO",
        "c3 /dev/davinci5: {out}"
    );
    assert_eq!(
        matrix(&mut cri, &host, &c3),
        expect_only(&[], host.chips),
        "c3 mknod"
    );

    // UpdateContainerResources as the CPU manager calls it (cpuset), then as an in-place
    // resize does (quota, period, shares): the verdicts stay.
    for (what, resources) in npu_tests::cri::kubelet_updates() {
        for (id, granted) in [(&a, vec![0, 1]), (&c2, vec![4])] {
            cri.update(id, resources.clone())
                .unwrap_or_else(|e| panic!("update {what}: {e}"));
            assert_eq!(
                matrix(&mut cri, &host, id),
                expect_only(&granted, host.chips),
                "after UpdateContainerResources ({what})"
            );
        }
    }

    // A crash: the kubelet creates and starts the container again in the same sandbox
    // (attempt 1). The new one gets its NPU again; the old one leaves no record.
    cri.crash(&b);
    assert!(!has_record(&host, &b), "{:?}", host.records());
    let b2 = cri
        .start_container(
            &pod_b,
            &ContainerSpec {
                attempt: 1,
                ..b_spec.clone()
            },
        )
        .expect("restarted container");
    assert_eq!(
        matrix(&mut cri, &host, &b2),
        expect_only(&[2], host.chips),
        "restart"
    );

    // A privileged pod without a request opens no chip.
    let privileged_pod = PodSpec {
        privileged: true,
        ..npu(&parent("p"))
    };
    let pod_p = cri.run_pod(&privileged_pod).expect("privileged pod");
    let p = cri
        .start_container(
            &pod_p,
            &ContainerSpec {
                privileged: true,
                ..Default::default()
            },
        )
        .expect("privileged container");
    // What the CRI plugin makes of it: allow-all (the host's own /dev is listed too; the
    // simulated chips live elsewhere).
    let spec = cri.spec_of(&p);
    let rules = spec.pointer("/linux/resources/devices").unwrap();
    assert!(
        rules.as_array().unwrap().iter().any(|r| r["allow"] == true
            && r["access"] == "rwm"
            && r.get("type").is_none_or(|t| t == "a")
            && r.get("major").is_none()),
        "privileged rules: {rules}"
    );
    assert_eq!(
        matrix(&mut cri, &host, &p),
        expect_only(&[], host.chips),
        "privileged"
    );

    // A pod of the plain `runc` handler, handed every chip: under the node guard on the pods'
    // parent it opens none, while pods through the runtime keep theirs.
    let (ok, out) = ctk(
        place,
        &host,
        &["guard", "install", "--cgroup", &cri.kubepods],
    );
    assert!(ok, "{out}");
    let pod_r = cri
        .run_pod(&PodSpec {
            handler: "runc".into(),
            cgroup_parent: parent("r"),
            ..Default::default()
        })
        .expect("runc pod");
    let all: Vec<u32> = (0..host.chips).collect();
    let r = cri
        .start_container(
            &pod_r,
            &ContainerSpec {
                devices: device_specs(&host, &all),
                ..Default::default()
            },
        )
        .expect("runc container");
    assert_eq!(spec_view(&cri.spec_of(&r), host.chip_major), (6, false));
    assert_eq!(
        matrix(&mut cri, &host, &r),
        expect_only(&[], host.chips),
        "runc handler"
    );
    assert_eq!(
        matrix(&mut cri, &host, &a),
        expect_only(&[0, 1], host.chips),
        "a, guarded"
    );
    cri.remove_pod(&pod_r);

    // A bad request fails StartContainer with our message, and leaves nothing.
    let before = host.records();
    let err = cri
        .start_container(
            &pod_a,
            &ContainerSpec {
                env: env("0-9"),
                ..Default::default()
            },
        )
        .expect_err("a bad request must fail");
    assert!(
        err.starts_with("StartContainer") && err.contains("does not exist"),
        "{err}"
    );
    assert_eq!(host.records(), before);

    // The pod's containerd-shim killed mid-life: containerd cleans up the task; `npu-ctk gc`
    // then finds nothing of it left.
    let shim = cri.shim_of(&pod_c);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shim),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    for id in [&c1, &c2, &c3] {
        cri.wait_exited(id);
    }
    cri.wait_dead_shim_cleanup();
    let (ok, out) = ctk(place, &host, &["gc"]);
    assert!(ok, "{out}");
    assert!(
        [&c1, &c2, &c3].iter().all(|id| !has_record(&host, id)),
        "{:?}",
        host.records()
    );
    cri.remove_pod(&pod_c);

    // RemovePodSandbox leaves no record, grant, pin or cgroup of ours.
    for pod in [&pod_a, &pod_b, &pod_p] {
        cri.remove_pod(pod);
    }
    assert!(host.records().is_empty(), "{:?}", host.records());
    assert!(host.granted_cgroups().is_empty(), "grants left");
    assert_eq!(
        pins(&host.config.bpf_dir),
        pinned,
        "per-container pins left"
    );
    let (ok, out) = ctk(
        place,
        &host,
        &["guard", "uninstall", "--cgroup", &cri.kubepods],
    );
    assert!(ok, "{out}");
    for pod in ["a", "b", "c", "p", "r"] {
        let dir = npu_tests::cgroups::unified_mount().join(&parent(pod)[1..]);
        let left: Vec<_> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect();
        assert!(left.is_empty(), "container cgroups left: {left:?}");
    }
}

#[test]
fn env_requests_privileged_counts_only_what_a_pod_cannot_forge() {
    if !can_run() {
        return;
    }
    let host = host_with(4, "env_requests = \"privileged\"\n");
    let place = Place::Host;
    let mut cri = Cri::start(place, &host, false);
    let pod = |privileged: bool| PodSpec {
        handler: "npu".into(),
        privileged,
        ..Default::default()
    };
    let plain = cri.run_pod(&pod(false)).expect("pod");

    // The pod's own variable is not an authority: no chip, and the refusal is visible.
    let forged = cri
        .start_container(
            &plain,
            &ContainerSpec {
                env: env("0"),
                ..Default::default()
            },
        )
        .expect("a refused request still starts");
    assert_eq!(
        matrix(&mut cri, &host, &forged),
        expect_only(&[], host.chips),
        "forged"
    );
    let (ok, out) = ctk(place, &host, &["policy", "show"]);
    assert!(ok, "{out}");
    let refused: Vec<&str> = out.lines().filter(|l| l.contains("refused")).collect();
    assert!(
        refused.len() == 1
            && refused[0].contains("ASCEND_VISIBLE_DEVICES")
            && refused[0].contains("env_requests = \"privileged\""),
        "{out}"
    );
    let (ok, out) = ctk(place, &host, &["policy", "show", "--json"]);
    assert!(ok, "{out}");
    assert!(out.contains("\"refused\""), "{out}");

    // The monitor says why the pod was denied the chip it set.
    let (events, out) = npu_tests::monitor_events(place, &host, &[], || {
        let _ = matrix(&mut cri, &host, &forged);
    });
    assert!(
        events.iter().any(|e| e["container"] == forged.as_str()
            && e["npu"] == 0
            && e["refused"]
                .as_str()
                .is_some_and(|r| r.contains("ASCEND_VISIBLE_DEVICES=0"))),
        "{out}"
    );

    // The same pod with the chips as a device plugin's DeviceSpecs gets exactly those.
    let handed = cri
        .start_container(
            &plain,
            &ContainerSpec {
                env: env("0"),
                devices: device_specs(&host, &[1]),
                ..Default::default()
            },
        )
        .expect("device plugin container");
    assert_eq!(
        matrix(&mut cri, &host, &handed),
        expect_only(&[1], host.chips),
        "DeviceSpecs"
    );

    // A privileged pod's variable still counts.
    let admin = cri.run_pod(&pod(true)).expect("privileged pod");
    let trusted = cri
        .start_container(
            &admin,
            &ContainerSpec {
                env: env("2,3"),
                privileged: true,
                ..Default::default()
            },
        )
        .expect("privileged container");
    assert_eq!(
        matrix(&mut cri, &host, &trusted),
        expect_only(&[2, 3], host.chips),
        "privileged"
    );

    for p in [&plain, &admin] {
        cri.remove_pod(p);
    }
    assert!(host.records().is_empty(), "{:?}", host.records());
    assert!(host.granted_cgroups().is_empty(), "grants left");
}

#[test]
fn pods_on_pure_cgroup_v2() {
    if !can_run() {
        return;
    }
    let ns = V2Namespace::new();
    let place = Place::V2(&ns);
    let host = host_with(4, "");
    let mut cri = Cri::start(place, &host, true);
    let pod = cri
        .run_pod(&PodSpec {
            handler: "npu".into(),
            ..Default::default()
        })
        .expect("pod");
    let a = cri
        .start_container(
            &pod,
            &ContainerSpec {
                env: env("npu-0,npu-1"),
                ..Default::default()
            },
        )
        .expect("container a");
    let b = cri
        .start_container(
            &pod,
            &ContainerSpec {
                devices: device_specs(&host, &[3]),
                ..Default::default()
            },
        )
        .expect("container b");
    assert_eq!(
        matrix(&mut cri, &host, &a),
        expect_only(&[0, 1], host.chips),
        "v2 a"
    );
    assert_eq!(
        matrix(&mut cri, &host, &b),
        expect_only(&[3], host.chips),
        "v2 b"
    );
    assert_eq!(
        spec_view(&cri.spec_of(&pod.id), host.chip_major),
        (0, false)
    );
    assert_eq!(host.granted_cgroups().len(), 2, "one grant per container");

    let err = cri
        .start_container(
            &pod,
            &ContainerSpec {
                env: env("7"),
                ..Default::default()
            },
        )
        .expect_err("a bad request must fail");
    assert!(err.contains("does not exist"), "{err}");

    cri.crash(&a);
    assert!(!has_record(&host, &a), "{:?}", host.records());
    cri.remove_pod(&pod);
    assert!(host.records().is_empty(), "{:?}", host.records());
    assert!(host.granted_cgroups().is_empty(), "grants left");
}
