//! Hostile input through the shim and real runc: each bad request or file fails the container
//! with a message naming the culprit; the container is not created, the spec is not touched,
//! nothing is granted, no record is left.
use std::{os::unix::fs::symlink, process::Command};

use npu_runtime::node::config::PATH_ENV;
use npu_tests::{
    bin,
    cgroups::Place,
    host::FakeHost,
    require_root, require_tools,
    runc::{RuncContainer, write_bundle},
};

fn can_run() -> bool {
    require_root() && require_tools(&["runc", "busybox"])
}

/// Runs `runc run -d` through the shim on a bundle with `env`; returns (success, stderr).
fn shim_run(
    host: &FakeHost,
    env: &[String],
    edit: impl FnOnce(&mut serde_json::Value),
) -> (bool, String, bool) {
    let (bundle, written) = write_bundle(
        host.dir.path(),
        &npu_tests::unique("bad"),
        &["sleep", "10"],
        |spec| {
            for e in env {
                spec["process"]["env"]
                    .as_array_mut()
                    .unwrap()
                    .push(e.clone().into());
            }
            edit(spec);
        },
    );
    let root = host.dir.path().join("runc-root");
    let id = npu_tests::unique("bad-ctr");
    let out = Command::new(bin("npu-container-runtime"))
        .env(PATH_ENV, &host.config_path)
        .arg("--root")
        .arg(&root)
        .args(["run", "-d", "--bundle"])
        .arg(&bundle)
        .arg(&id)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .output()
        .unwrap();
    let untouched = std::fs::read(bundle.join("config.json")).is_ok_and(|b| b == written);
    let exists = Command::new("runc")
        .arg("--root")
        .arg(&root)
        .args(["state", &id])
        .output()
        .unwrap()
        .status
        .success();
    if exists {
        // Through the shim, as an engine deletes it: it cleans up after runc.
        let _ = Command::new(bin("npu-container-runtime"))
            .env(PATH_ENV, &host.config_path)
            .arg("--root")
            .arg(&root)
            .args(["delete", "-f", &id])
            .output();
    }
    assert!(
        !(out.status.success() ^ exists),
        "runc state disagrees with the exit status"
    );
    // Hook errors reach us inside runc's own message, with their quotes escaped.
    let err = String::from_utf8_lossy(&out.stderr).replace("\\\"", "\"");
    (out.status.success(), err, untouched)
}

fn assert_clean(host: &FakeHost, what: &str) {
    assert!(
        host.records().is_empty(),
        "{what}: records {:?}",
        host.records()
    );
    assert!(host.granted_cgroups().is_empty(), "{what}: grants left");
}

#[test]
fn bad_requests_fail_closed() {
    if !can_run() {
        return;
    }
    let host = FakeHost::new(4);
    let v = |value: &str| vec![format!("ASCEND_VISIBLE_DEVICES={value}")];
    let with = |value: &str, extra: &str| {
        vec![format!("ASCEND_VISIBLE_DEVICES={value}"), extra.to_string()]
    };
    let cases: Vec<(Vec<String>, &str)> = vec![
        (v("garbage"), "\"garbage\""),
        (v("-1"), "\"-1\""),
        (v("4294967296"), "\"4294967296\""),
        (v("99999999999999999999"), "\"99999999999999999999\""),
        (v("3-1"), "reversed"),
        (v("0-65535"), "does not exist"),
        (v("0-99999999"), "\"0-99999999\""),
        (v("1,npu-2"), "mixed"),
        (v("npu-1,Ascend910-2"), "another chip"),
        (v("Ascend-1"), "\"Ascend-1\""),
        (v("gpu-0"), "\"gpu-0\""),
        (v("   "), "empty item"),
        (v("1,,2"), "empty item"),
        (v(","), "empty item"),
        (v("7"), "NPU 7 does not exist"),
        (v("npu-9"), "NPU 9 does not exist"),
        (v("٣"), "\"٣\""),
        (v("+1"), "\"+1\""),
        (v("0x1"), "\"0x1\""),
        (v("1 2"), "\"1 2\""),
        (v("all,1"), "\"all\""),
        (v("ALL"), "\"ALL\""),
        (v("1.0"), "\"1.0\""),
        (v("1-"), "\"1-\""),
        (v("0\t1"), "\"0\\t1\""),
        (with("1", "ASCEND_RUNTIME_OPTIONS=NODRV,FAST"), "\"FAST\""),
        (with("1", "ASCEND_RUNTIME_OPTIONS=nodrv"), "\"nodrv\""),
        (
            with("7", "ASCEND_RUNTIME_OPTIONS=VIRTUAL"),
            "virtual NPU 7 does not exist",
        ),
        (
            with("1", "ASCEND_RUNTIME_MOUNTS=nope"),
            "mount list \"nope\"",
        ),
        (with("1", "ASCEND_RUNTIME_MOUNTS=../etc"), "\"../etc\""),
        (with("1", "ASCEND_RUNTIME_MOUNTS=a/b"), "\"a/b\""),
        (with("1", "ASCEND_ALLOW_LINK=yes"), "ASCEND_ALLOW_LINK"),
    ];
    for (env, needle) in &cases {
        let (ok, err, untouched) = shim_run(&host, env, |_| {});
        assert!(!ok, "{env:?} started");
        assert!(
            err.contains(needle),
            "{env:?}: message lacks {needle:?}: {err}"
        );
        assert!(untouched, "{env:?}: the spec was changed");
        assert_clean(&host, &format!("{env:?}"));
    }
    // Duplicates are not an error: they are de-duplicated.
    let (ok, err, _) = shim_run(&host, &v("1,1,1-1"), |_| {});
    assert!(ok, "{err}");
    eprintln!("{} malformed requests refused", cases.len());
}

#[test]
fn bad_files_fail_closed() {
    if !can_run() {
        return;
    }
    let host = FakeHost::new(2);
    let shim = bin("npu-container-runtime");
    let run_with = |config: &std::path::Path, bundle: &std::path::Path| {
        Command::new(&shim)
            .env(PATH_ENV, config)
            .args(["create", "--bundle"])
            .arg(bundle)
            .arg(npu_tests::unique("f"))
            .output()
            .unwrap()
    };
    let dir = host.dir.path();
    // Spec files: malformed, truncated, huge, missing bundle.
    for (name, content) in [
        (
            "malformed",
            b"{\"process\": {\"env\": [\"ASCEND_VISIBLE_DEVICES=1\"]}, ]".to_vec(),
        ),
        (
            "truncated",
            b"{\"ociVersion\": \"1.0.2\", \"process\": {\"env\": [\"ASCEND_VISIBLE_DEVICES=1\""
                .to_vec(),
        ),
        ("huge", {
            let mut v =
                b"{\"process\":{\"env\":[\"ASCEND_VISIBLE_DEVICES=1\"]},\"pad\":\"".to_vec();
            v.extend(std::iter::repeat_n(b'x', 17 << 20));
            v.extend(b"\"}");
            v
        }),
    ] {
        let b = dir.join(format!("bundle-{name}"));
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(b.join("config.json"), &content).unwrap();
        let out = run_with(&host.config_path, &b);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("config.json"),
            "{name}: {err}"
        );
        assert_eq!(
            std::fs::read(b.join("config.json")).unwrap(),
            content,
            "{name}: changed"
        );
    }
    // No spec at all: the runtime's own error, naming the bundle.
    let out = run_with(&host.config_path, &dir.join("no-such-bundle"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-bundle"));

    // Configuration files: unknown keys, bad values.
    for (text, needle) in [
        ("dev_rot = \"/dev\"\n", "dev_rot"),
        ("bpf_dir = 3\n", "bpf_dir"),
    ] {
        let cfg = dir.join("bad.toml");
        std::fs::write(&cfg, text).unwrap();
        let out = run_with(&cfg, &dir.join("no-such-bundle"));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(needle) && err.contains("bad.toml"),
            "{err}"
        );
    }

    // Hook state on stdin: garbage, and a pid that is not a live process.
    let hook = bin("npu-container-hook");
    for state in [
        "garbage".to_string(),
        format!(
            "{{\"ociVersion\":\"1.0.2\",\"id\":\"x\",\"status\":\"creating\",\"pid\":999999999,\"bundle\":{:?}}}",
            dir.join("bundle-ok")
        ),
    ] {
        let b = dir.join("bundle-ok");
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(
            b.join("config.json"),
            r#"{"process":{"env":["ASCEND_VISIBLE_DEVICES=1"]},"root":{"path":"rootfs"}}"#,
        )
        .unwrap();
        let mut child = Command::new(&hook)
            .env(PATH_ENV, &host.config_path)
            .arg("create-runtime")
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), state.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{state}: {err}");
        assert!(
            err.contains("invalid container state") || err.contains("/proc/999999999/cgroup"),
            "{err}"
        );
        assert_clean(&host, &state);
    }
}

#[test]
fn bad_mount_sources_are_refused() {
    if !can_run() {
        return;
    }
    let host = FakeHost::new(2);
    let driver = host.dir.path().join("driver");
    let lists = &host.config.mount_list_dir;
    let base = "usr/local/Ascend/driver";
    // One source per way of being unsafe, each in its own list.
    std::fs::write(driver.join(base).join("world.conf"), "x").unwrap();
    std::fs::set_permissions(
        driver.join(base).join("world.conf"),
        std::os::unix::fs::PermissionsExt::from_mode(0o666),
    )
    .unwrap();
    std::fs::write(driver.join(base).join("user.conf"), "x").unwrap();
    std::os::unix::fs::chown(driver.join(base).join("user.conf"), Some(1000), Some(1000)).unwrap();
    symlink("version.info", driver.join(base).join("link.info")).unwrap();
    for (list, content) in [
        ("world", format!("/{base}/world.conf\n")),
        ("user", format!("/{base}/user.conf\n")),
        ("link", format!("/{base}/link.info\n")),
        ("relative", "usr/local/Ascend\n".to_string()),
        ("dotdot", "/usr/../etc\n".to_string()),
        ("missing", "/usr/local/Ascend/not-there\n".to_string()),
    ] {
        std::fs::write(lists.join(format!("{list}.list")), content).unwrap();
    }
    let start = |mounts: &str, extra: &[&str]| {
        RuncContainer::start_with_env(
            Place::Host,
            host.dir.path(),
            &bin("npu-container-runtime"),
            &host.config_path,
            |spec| {
                let env = spec["process"]["env"].as_array_mut().unwrap();
                env.push("ASCEND_VISIBLE_DEVICES=0".into());
                env.push(format!("ASCEND_RUNTIME_MOUNTS={mounts}").into());
                for e in extra {
                    env.push((*e).into());
                }
            },
        )
    };
    for (list, needle) in [
        ("world", "world-writable"),
        ("user", "owned by uid 1000"),
        ("link", "symlink"),
        ("relative", "relative.list:1: not an absolute path"),
        ("dotdot", "dotdot.list:1"),
    ] {
        let err = start(list, &[])
            .err()
            .unwrap_or_else(|| panic!("{list} started"));
        assert!(err.contains(needle), "{list}: {err}");
        assert_clean(&host, list);
    }
    // A root-owned symlink is allowed with ASCEND_ALLOW_LINK=True; a missing entry is skipped.
    let c = start("link,missing", &["ASCEND_ALLOW_LINK=True"]).expect("allowed link");
    let (_, out) = c.sh(&format!("cat /{base}/link.info"));
    assert!(out.contains("Version=24.1.0"), "{out}");
}
