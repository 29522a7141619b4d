//! The shim is a drop-in for runc: what runc answers without a bundle goes to runc untouched
//! (help), `--version` keeps runc's lines first and intact, and containers with a user
//! namespace - where runc binds host files instead of making nodes - get exactly the host
//! node they were given (VIRTUAL's `vdavinciN`, a `dev_root` other than /dev).
use std::process::Command;

use npu_tests::{
    bin, cgroups::each_cgroup_mode, host::FakeHost, require_root, require_tools, runc::open_verdict,
};

fn can_run() -> bool {
    require_root() && require_tools(&["runc", "busybox", "nsenter"])
}

fn output(program: &std::path::Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(program).args(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn runc() -> std::path::PathBuf {
    npu_tests::run(Command::new("sh").args(["-c", "command -v runc"]))
        .trim()
        .into()
}

#[test]
fn help_is_runc_s_to_answer() {
    if !can_run() {
        return;
    }
    // In a directory without config.json, as runc's own suite runs them.
    for args in [
        &["create", "-h"][..],
        &["create", "--help"],
        &["run", "-h"],
        &["run", "--help"],
    ] {
        assert_eq!(
            output(&bin("npu-container-runtime"), args),
            output(&runc(), args),
            "{args:?}"
        );
    }
}

#[test]
fn version_keeps_runc_s_lines_first() {
    if !can_run() {
        return;
    }
    for flag in ["--version", "-v"] {
        let (code, ours, _) = output(&bin("npu-container-runtime"), &[flag]);
        let (runc_code, theirs, _) = output(&runc(), &[flag]);
        assert_eq!(code, runc_code, "{flag}");
        assert!(
            ours.starts_with(&theirs),
            "{flag}: runc's output must come first, intact:\n{ours}"
        );
        let rest = &ours[theirs.len()..];
        assert!(
            rest.starts_with("npu-container-runtime version ") && rest.contains("guard program"),
            "{flag}: {rest}"
        );
    }
}

/// A user namespace mapping container root to host uid 100000.
fn user_namespace(spec: &mut serde_json::Value) {
    spec["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"type": "user"}));
    let map = serde_json::json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    spec["linux"]["uidMappings"] = map.clone();
    spec["linux"]["gidMappings"] = map;
}

#[test]
fn user_namespaces_get_the_right_host_nodes() {
    if !can_run() {
        return;
    }
    each_cgroup_mode(|place, mode| {
        let host = FakeHost::new(3);
        let start = |env: &[&str]| {
            npu_tests::runc::start_through_shim(place, &host, env, user_namespace)
                .unwrap_or_else(|e| panic!("{mode} {env:?}: {e}"))
        };
        // dev_root is the fake host's, not /dev: the container still starts, with its NPU.
        let c = start(&["ASCEND_VISIBLE_DEVICES=1"]);
        assert_eq!(open_verdict(&c, "/dev/davinci1"), "ENXIO", "{mode}");
        assert_eq!(open_verdict(&c, "/dev/davinci0"), "ENOENT", "{mode}");
        let (_, ids) = c.sh("cat /proc/self/uid_map");
        assert!(
            ids.contains("100000"),
            "{mode}: not in a user namespace: {ids}"
        );
        drop(c);
        // VIRTUAL: /dev/davinci0 is the host's vdavinci0 (the virtual major), which is granted,
        // not the physical davinci0.
        let c = start(&["ASCEND_VISIBLE_DEVICES=0", "ASCEND_RUNTIME_OPTIONS=VIRTUAL"]);
        let (_, major) = c.sh("stat -c %t /dev/davinci0");
        assert_eq!(
            u32::from_str_radix(major.trim(), 16).ok(),
            Some(host.virtual_major),
            "{mode}: /dev/davinci0 is not the virtual NPU"
        );
        assert_eq!(open_verdict(&c, "/dev/davinci0"), "ENXIO", "{mode}");
        drop(c);
        assert!(host.records().is_empty(), "{mode}: {:?}", host.records());
    });
}
