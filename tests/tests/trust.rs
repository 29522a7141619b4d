//! Trust boundaries: every file that decides what root runs or what reaches a container (the
//! config, the mount lists, the low-level runtime, the hook binary) must be one only root could
//! have written, and so must the directories of records and pins. Each way a user could have
//! written one refuses the container, naming the path, on the shim path and on the hook-only
//! path, and leaves nothing behind.
use std::{
    os::unix::fs::{PermissionsExt, symlink},
    path::{Path, PathBuf},
};

use npu_tests::{
    bin, cgroups::Place, host::FakeHost, require_root, require_tools, runc::RuncContainer,
};

fn can_run() -> bool {
    require_root() && require_tools(&["runc", "busybox"])
}

const USER: u32 = 1000;

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn chown(path: &Path, uid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(uid)).unwrap();
}

/// Starts an NPU container through `runtime` with the config at `config`.
fn start_through<'a>(
    host: &FakeHost,
    runtime: &Path,
    config: &Path,
    hook_only: bool,
) -> Result<RuncContainer<'a>, String> {
    let hook = bin("npu-container-hook");
    let cfg = format!(
        "{}={}",
        npu_runtime::node::config::PATH_ENV,
        config.display()
    );
    RuncContainer::start_with_env(Place::Host, host.dir.path(), runtime, config, |spec| {
        spec["process"]["env"]
            .as_array_mut()
            .unwrap()
            .push("ASCEND_VISIBLE_DEVICES=0".into());
        if hook_only {
            let entry = |stage: &str| serde_json::json!({"path": hook, "args": ["npu-container-hook", stage], "env": [cfg]});
            spec["hooks"] = serde_json::json!({
                "createRuntime": [entry("create-runtime")],
                "poststop": [entry("poststop")],
            });
        }
    })
}

/// A bad case: how to spoil a fresh host, and the path the refusal must name.
struct Case {
    name: &'static str,
    spoil: fn(&FakeHost) -> (PathBuf, PathBuf),
}

/// The config a case's containers use, and the path their refusal must name.
fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "config.toml mode 0666",
            spoil: |h| {
                chmod(&h.config_path, 0o666);
                (h.config_path.clone(), h.config_path.clone())
            },
        },
        Case {
            name: "config.toml owned by uid 1000",
            spoil: |h| {
                chown(&h.config_path, USER);
                (h.config_path.clone(), h.config_path.clone())
            },
        },
        Case {
            name: "base.list mode 0666",
            spoil: |h| {
                let list = h.config.mount_list_dir.join("base.list");
                chmod(&list, 0o666);
                (h.config_path.clone(), list)
            },
        },
        Case {
            name: "mount_list_dir mode 0777",
            spoil: |h| {
                chmod(&h.config.mount_list_dir, 0o777);
                (h.config_path.clone(), h.config.mount_list_dir.clone())
            },
        },
        Case {
            name: "config reached through a symlink to a user-writable file",
            spoil: |h| {
                let user = h.dir.path().join("user-config.toml");
                std::fs::copy(&h.config_path, &user).unwrap();
                chown(&user, USER);
                let link = h.dir.path().join("link.toml");
                symlink(&user, &link).unwrap();
                (link, user)
            },
        },
        Case {
            name: "a user-writable directory in the middle of the path",
            spoil: |h| {
                let mid = h.dir.path().join("mid");
                std::fs::create_dir(&mid).unwrap();
                chmod(&mid, 0o777);
                let config = mid.join("config.toml");
                std::fs::copy(&h.config_path, &config).unwrap();
                (config, mid)
            },
        },
        Case {
            name: "state_dir made first by uid 1000",
            spoil: |h| {
                std::fs::create_dir_all(&h.config.state_dir).unwrap();
                chown(&h.config.state_dir, USER);
                (h.config_path.clone(), h.config.state_dir.clone())
            },
        },
    ]
}

#[test]
fn files_a_user_could_have_written_refuse_the_container() {
    if !can_run() {
        return;
    }
    for case in cases() {
        for hook_only in [false, true] {
            let ctx = format!(
                "{} ({} path)",
                case.name,
                if hook_only { "hook" } else { "shim" }
            );
            let host = FakeHost::new(1);
            let (config, culprit) = (case.spoil)(&host);
            let runtime = if hook_only {
                PathBuf::from("runc")
            } else {
                bin("npu-container-runtime")
            };
            let err = start_through(&host, &runtime, &config, hook_only)
                .err()
                .unwrap_or_else(|| panic!("{ctx}: the container started"));
            assert!(
                err.contains("refusing") && err.contains(culprit.to_str().unwrap()),
                "{ctx}: the refusal must name {}:\n{err}",
                culprit.display()
            );
            assert!(host.records().is_empty(), "{ctx}: {:?}", host.records());
            assert!(host.granted_cgroups().is_empty(), "{ctx}: grants left");
        }
    }
}

#[test]
fn untrusted_binaries_are_refused() {
    if !can_run() {
        return;
    }
    // A low-level runtime a user could have replaced.
    let host = FakeHost::new(1);
    let runc = host.dir.path().join("runc-copy");
    std::fs::copy(run_path("runc"), &runc).unwrap();
    chmod(&runc, 0o777);
    let mut text = std::fs::read_to_string(&host.config_path).unwrap();
    text.push_str(&format!("runtimes = [{:?}]\n", runc.display().to_string()));
    std::fs::write(&host.config_path, text).unwrap();
    let err = start_through(
        &host,
        &bin("npu-container-runtime"),
        &host.config_path,
        false,
    )
    .err()
    .expect("started with an untrusted runtime");
    assert!(
        err.contains("refusing") && err.contains(runc.to_str().unwrap()),
        "{err}"
    );
    // A hook binary a user could have replaced, next to a copy of the shim.
    let host = FakeHost::new(1);
    let dir = host.dir.path().join("bin");
    std::fs::create_dir(&dir).unwrap();
    let shim = dir.join("npu-container-runtime");
    let hook = dir.join("npu-container-hook");
    std::fs::copy(bin("npu-container-runtime"), &shim).unwrap();
    std::fs::copy(bin("npu-container-hook"), &hook).unwrap();
    chown(&hook, USER);
    let err = start_through(&host, &shim, &host.config_path, false)
        .err()
        .expect("started with an untrusted hook");
    assert!(
        err.contains("refusing") && err.contains(hook.to_str().unwrap()),
        "{err}"
    );
    assert!(host.records().is_empty());
}

fn run_path(name: &str) -> PathBuf {
    PathBuf::from(
        npu_tests::run(
            std::process::Command::new("sh").args(["-c", &format!("command -v {name}")]),
        )
        .trim(),
    )
}

#[test]
fn doctor_names_each_untrusted_file_with_the_fix() {
    if !can_run() {
        return;
    }
    let host = FakeHost::new(1);
    chmod(&host.config_path, 0o666);
    chmod(&host.config.mount_list_dir.join("base.list"), 0o666);
    std::fs::create_dir_all(&host.config.state_dir).unwrap();
    chown(&host.config.state_dir, USER);
    let (ok, out) = npu_tests::npu_ctk(&host, &["doctor"]);
    assert!(!ok, "{out}");
    for (check, path) in [
        ("config file trust", host.config_path.clone()),
        (
            "mount list trust",
            host.config.mount_list_dir.join("base.list"),
        ),
        ("state_dir", host.config.state_dir.clone()),
    ] {
        let line = out
            .lines()
            .position(|l| l.starts_with(&format!("[FAIL] {check}")))
            .unwrap_or_else(|| panic!("no failed {check} check:\n{out}"));
        let lines: Vec<&str> = out.lines().collect();
        assert!(
            lines[line].contains(path.to_str().unwrap()) && lines[line + 1].contains("fix:"),
            "{check}:\n{out}"
        );
    }
}
