//! The cgroup v2 device guard on real cgroups with fake NPUs: on this VM's own cgroup2 tree
//! and in a private mount namespace where cgroup2 is /sys/fs/cgroup (a pure v2 host).
use std::{path::PathBuf, process::Command};

use npu_runtime::node::state::Enforced;
use npu_tests::{
    cgroups::{Place, TestCgroup, V2Namespace, unified_mount},
    have_tool,
    host::FakeHost,
    probe::{Holder, all_ops, assert_matrix, assert_unowned, guardctl, probe},
    require, require_root, require_tools, run, unique,
};

fn bpftool(args: &[&str]) -> String {
    run(Command::new("bpftool").args(args))
}

/// The whole v2 matrix at `place`; `by_pid` enforces through layout detection from a pid
/// (as the hook will), otherwise on the cgroup directory directly.
fn guard_matrix(place: Place<'_>, by_pid: bool) {
    let host = FakeHost::new(4);
    let cg = TestCgroup::new(&unified_mount(), &unique("npu-guard"));
    let sub = cg.child("sub");
    let inside = place.unified_mount();
    let holder = Holder::start(place, &[cg.dir_under(&inside)], &cg);

    let out = if by_pid {
        guardctl(place, &host, &["enforce", &holder.pid().to_string(), "1"])
    } else {
        let dir = cg.dir_under(&inside);
        guardctl(place, &host, &["enforce-v2", dir.to_str().unwrap(), "1"])
    };
    let done: Enforced = serde_json::from_str(&out).expect("enforce output");
    assert_eq!(done.cgroup_id, Some(cg.id()));
    assert_eq!(done.devices_v1_dir, None);

    // guardctl has exited; the program stays attached, next to nothing else here.
    let show = bpftool(&["cgroup", "show", cg.dir().to_str().unwrap()]);
    assert!(
        show.contains("npu_dev_guard") && show.contains("multi"),
        "bpftool cgroup show: {show}"
    );

    for (joined, ctx) in [(&cg, "container cgroup"), (&sub, "sub-cgroup")] {
        let v = probe(place, &[joined.dir_under(&inside)], &all_ops(&host));
        assert_matrix(&host, &v, &[1], true, ctx);
    }

    // bpftool prints the grants with BTF field names.
    assert!(done.guard_version.is_some());
    let grants_pin = host.map_pin("npu_grants");
    let dump = bpftool(&["map", "dump", "pinned", grants_pin.to_str().unwrap()]);
    for field in ["cgroup_id", "dev_type", "major", "minor", "access"] {
        assert!(
            dump.contains(&format!("\"{field}\"")),
            "{field} missing: {dump}"
        );
    }
    assert!(
        dump.contains(&format!("\"cgroup_id\": {}", cg.id())),
        "{dump}"
    );
    assert!(
        dump.contains(&format!("\"major\": {}", host.chip_major)),
        "chip grant missing: {dump}"
    );

    // The counters saw both verdicts.
    let policy: serde_json::Value =
        serde_json::from_str(&guardctl(place, &host, &["policy"])).unwrap();
    let entry = policy
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["cgroup_id"] == cg.id())
        .expect("container in policy");
    assert!(entry["allowed"].as_u64().unwrap() > 0, "{entry}");
    assert!(entry["denied"].as_u64().unwrap() > 0, "{entry}");
    assert_eq!(entry["grants"].as_array().unwrap().len(), 4, "{entry}");

    // Unregistered: no read or write of a guarded node from the cgroup, others still work.
    guardctl(place, &host, &["release", "1", &out]);
    let v = probe(place, &[cg.dir_under(&inside)], &all_ops(&host));
    assert_unowned(&host, &v, "after release");
    drop(holder);
}

fn can_run() -> bool {
    require_root() && require_tools(&["bpftool"])
}

#[test]
fn guard_on_host_cgroup2_tree() {
    if can_run() {
        guard_matrix(Place::Host, false);
    }
}

#[test]
fn guard_on_pure_v2_host_by_pid() {
    if can_run()
        && require(
            "nsenter and unshare",
            have_tool("nsenter") && have_tool("unshare"),
        )
    {
        let ns = V2Namespace::new();
        guard_matrix(Place::V2(&ns), true);
    }
}

/// Two containers with disjoint NPUs on one program: each sees only its own.
#[test]
fn two_containers_disjoint() {
    if !can_run() {
        return;
    }
    let host = FakeHost::new(4);
    let mount = unified_mount();
    let a = TestCgroup::new(&mount, &unique("npu-a"));
    let b = TestCgroup::new(&mount, &unique("npu-b"));
    for (cg, npus, granted) in [(&a, "0,1", [0, 1]), (&b, "2,3", [2, 3])] {
        let dir = cg.dir();
        guardctl(
            Place::Host,
            &host,
            &["enforce-v2", dir.to_str().unwrap(), npus],
        );
        let _ = granted;
    }
    for (cg, granted) in [(&a, [0, 1]), (&b, [2, 3])] {
        let v = probe(Place::Host, &[cg.dir()], &all_ops(&host));
        assert_matrix(&host, &v, &granted, true, &cg.rel);
    }
}

/// A new build pinned beside an old one: containers on the old program keep their verdicts,
/// and can still be released from it.
#[test]
fn upgrade_keeps_running_containers() {
    if !can_run() {
        return;
    }
    let host = FakeHost::new(2);
    let mount = unified_mount();
    let old = TestCgroup::new(&mount, &unique("npu-old"));
    let out = guardctl(
        Place::Host,
        &host,
        &["enforce-v2", old.dir().to_str().unwrap(), "0"],
    );
    let mut done: Enforced = serde_json::from_str(&out).unwrap();
    // Pretend that pin set came from an older build: move it aside (bpffs supports rename).
    let version = done.guard_version.clone().unwrap();
    let old_dir = host.config.bpf_dir.join("0000000000000000");
    std::fs::rename(host.config.bpf_dir.join(&version), &old_dir).unwrap();
    done.guard_version = Some("0000000000000000".into());

    // The next container loads the current build afresh.
    let new = TestCgroup::new(&mount, &unique("npu-new"));
    let out_new = guardctl(
        Place::Host,
        &host,
        &["enforce-v2", new.dir().to_str().unwrap(), "1"],
    );
    let done_new: Enforced = serde_json::from_str(&out_new).unwrap();
    assert_eq!(done_new.guard_version.as_deref(), Some(version.as_str()));
    let ids = |cg: &TestCgroup| -> Vec<PathBuf> { vec![cg.dir()] };
    assert_matrix(
        &host,
        &probe(Place::Host, &ids(&old), &all_ops(&host)),
        &[0],
        true,
        "old",
    );
    assert_matrix(
        &host,
        &probe(Place::Host, &ids(&new), &all_ops(&host)),
        &[1],
        true,
        "new",
    );

    guardctl(
        Place::Host,
        &host,
        &["release", "0", &serde_json::to_string(&done).unwrap()],
    );
    assert_unowned(
        &host,
        &probe(Place::Host, &ids(&old), &all_ops(&host)),
        "old released",
    );
    assert_matrix(
        &host,
        &probe(Place::Host, &ids(&new), &all_ops(&host)),
        &[1],
        true,
        "new after",
    );
}

/// A bpffs left with the kernel's default mode 1777 at /sys/fs/bpf (as a plain
/// `mount -t bpf bpf /sys/fs/bpf` or an fstab line leaves it): the fixtures' mount check
/// accepts it, the runtime's pins go in a 0700 directory below it, and only making the
/// world-writable root itself private is refused, naming it. In a private mount namespace of
/// one thread, so the host's bpffs is never touched.
#[test]
fn a_world_writable_bpffs_root_holds_a_private_pin_directory() {
    use std::os::unix::fs::PermissionsExt;
    if !require_root() {
        return;
    }
    npu_tests::cgroups::in_private_mount_namespace(|| {
        use nix::mount::MsFlags;
        let root = std::path::Path::new("/sys/fs/bpf");
        nix::mount::mount(
            Some("bpf"),
            root,
            Some("bpf"),
            MsFlags::empty(),
            Some("mode=1777"),
        )
        .expect("a fresh bpffs");
        let mode =
            |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(root), 0o1777);
        npu_runtime::enforce::guard::mount_bpffs(root).expect("the fixtures' check");
        let pins = root.join(unique("npu-pins"));
        npu_runtime::enforce::guard::ensure_bpffs(&pins).expect("pins below a 1777 bpffs");
        assert_eq!(mode(&pins), 0o700);
        let refused = npu_runtime::enforce::guard::ensure_bpffs(root).unwrap_err();
        assert!(refused.to_string().contains("/sys/fs/bpf"), "{refused}");
    });
}
