//! The cgroup v1 fallback on this VM's own devices controller, through layout detection from
//! a pid as the hook does it: deny-all cgroups (exact and wildcard rules, as runc and
//! `--device-cgroup-rule` produce them), allow-all (privileged) cgroups, sub-cgroups, and the
//! hybrid case where the guard is attached on the unified tree as well.
use std::process::Command;

use npu_runtime::node::state::Enforced;
use npu_tests::{
    cgroups::{Place, TestCgroup, devices_v1_mount, unified_mount},
    host::FakeHost,
    probe::{Holder, all_ops, assert_matrix, guardctl, probe},
    require, require_root, require_tools, run, unique,
};

fn v1_mount() -> Option<std::path::PathBuf> {
    let mount = devices_v1_mount();
    require("a cgroup v1 devices controller", mount.is_some()).then(|| mount.unwrap())
}

/// Puts a holder in a fresh v1 devices cgroup prepared by `setup`, enforces NPU 1 from its
/// pid, and checks the matrix from the cgroup and from a sub-cgroup made afterwards.
fn v1_case(setup: &[(&str, String)], what: &str) {
    if !require_root() {
        return;
    }
    let Some(mount) = v1_mount() else { return };
    let host = FakeHost::new(3);
    let cg = TestCgroup::new(&mount, &unique("npu-v1"));
    for (file, rule) in setup {
        cg.write(file, rule);
    }
    let holder = Holder::start(Place::Host, &[cg.dir()], &cg);
    let out = guardctl(
        Place::Host,
        &host,
        &["enforce", &holder.pid().to_string(), "1"],
    );
    let done: Enforced = serde_json::from_str(&out).unwrap();
    assert_eq!(done.devices_v1_dir, Some(cg.dir()), "{what}");
    // The holder sits in the unified root: no BPF layer is attached there.
    assert_eq!(done.cgroup_id, None, "{what}");

    let sub = cg.child("sub");
    for joined in [&cg, &sub] {
        let v = probe(Place::Host, &[joined.dir()], &all_ops(&host));
        assert_matrix(&host, &v, &[1], true, &format!("{what}, {}", joined.rel));
    }
}

#[test]
fn deny_all_with_exact_rules() {
    let h = FakeHost::new(3);
    // What runc writes for a container given every NPU node explicitly.
    let mut setup = vec![("devices.deny", "a".to_string())];
    for rule in [
        "c 1:3 rwm".to_string(),
        format!("c {}:0 rwm", h.chip_major),
        format!("c {}:1 rwm", h.chip_major),
        format!("c {}:2 rwm", h.chip_major),
        format!("c {}:* rwm", h.mgmt_major),
        format!("c {}:0 rwm", h.other_major),
    ] {
        setup.push(("devices.allow", rule));
    }
    v1_case(&setup, "deny-all, exact rules");
}

#[test]
fn deny_all_with_wildcard_rules() {
    // `--device-cgroup-rule='c *:* rwm'` style: cannot be narrowed in place, is re-expressed.
    let setup = vec![
        ("devices.deny", "a".to_string()),
        ("devices.allow", "c *:* rwm".to_string()),
        ("devices.allow", "b *:* rwm".to_string()),
    ];
    if !require_root() {
        return;
    }
    v1_case(&setup, "deny-all, c *:* rwm");
}

#[test]
fn allow_all_privileged() {
    // A fresh cgroup under the root inherits `a *:* rwm`, as a privileged container has.
    v1_case(&[], "allow-all");
}

/// Hybrid: the v1 rules and the BPF guard on the container's unified cgroup together.
#[test]
fn hybrid_both_layers() {
    if !(require_root() && require_tools(&["bpftool"])) {
        return;
    }
    let Some(mount) = v1_mount() else { return };
    let host = FakeHost::new(3);
    let v1 = TestCgroup::new(&mount, &unique("npu-hy"));
    let v2 = TestCgroup::new(&unified_mount(), &unique("npu-hy"));
    let holder = Holder::start(Place::Host, &[v1.dir(), v2.dir()], &v1);
    let out = guardctl(
        Place::Host,
        &host,
        &["enforce", &holder.pid().to_string(), "2"],
    );
    let done: Enforced = serde_json::from_str(&out).unwrap();
    assert_eq!(done.devices_v1_dir, Some(v1.dir()));
    assert_eq!(done.cgroup_id, Some(v2.id()));
    let show = run(Command::new("bpftool").args(["cgroup", "show", v2.dir().to_str().unwrap()]));
    assert!(show.contains("npu_dev_guard"), "{show}");
    let v = probe(Place::Host, &[v1.dir(), v2.dir()], &all_ops(&host));
    assert_matrix(&host, &v, &[2], true, "hybrid");

    // Each layer alone also holds: the BPF layer for a process only in the unified cgroup...
    let v = probe(Place::Host, &[v2.dir()], &all_ops(&host));
    assert_matrix(&host, &v, &[2], true, "hybrid, BPF layer only");
    // ...and the v1 layer for one only in the v1 cgroup.
    let v = probe(Place::Host, &[v1.dir()], &all_ops(&host));
    assert_matrix(&host, &v, &[2], true, "hybrid, v1 layer only");
}

/// Bad targets fail closed with a clear error and grant nothing.
#[test]
fn refuses_root_cgroup() {
    if !require_root() {
        return;
    }
    let host = FakeHost::new(1);
    // This test process sits in the root v1 devices cgroup.
    let mut cmd = Command::new(npu_tests::bin("guardctl"));
    cmd.env(npu_runtime::node::config::PATH_ENV, &host.config_path)
        .args(["enforce", &std::process::id().to_string(), "0"]);
    let out = cmd.output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("root") && err.contains("refusing"), "{err}");
}
