//! The binaries' command-line behaviour that needs no root: version, usage, and failing
//! cleanly on bad input before anything is touched.
use std::{
    io::Write,
    process::{Command, Stdio},
};

const SHIM: &str = env!("CARGO_BIN_EXE_npu-container-runtime");
const HOOK: &str = env!("CARGO_BIN_EXE_npu-container-hook");

fn run_with_stdin(cmd: &mut Command, input: &[u8]) -> (i32, String, String) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn config(dir: &tempfile::TempDir, text: &str) -> std::path::PathBuf {
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn version_names_ours_and_the_runtime() {
    let dir = tempfile::tempdir().unwrap();
    // `true` stands in for the low-level runtime: the shim execs it with `--version`.
    let cfg = config(&dir, "runtimes = [\"true\"]\n");
    let out = Command::new(SHIM)
        .arg("--version")
        .env("NPU_CONTAINER_RUNTIME_CONFIG", &cfg)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(text.contains(&format!(
        "npu-container-runtime version {}",
        env!("CARGO_PKG_VERSION")
    )));
    assert!(
        text.contains("guard program") && text.contains("low-level runtime /"),
        "{text}"
    );
}

#[test]
fn bad_config_fails_naming_key_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir, "dev_rot = \"/dev\"\n");
    let log = dir.path().join("runc-log.json");
    let out = Command::new(SHIM)
        .arg("--log")
        .arg(&log)
        .args([
            "--log-format",
            "json",
            "create",
            "--bundle",
            "/nonexistent",
            "x",
        ])
        .env("NPU_CONTAINER_RUNTIME_CONFIG", &cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("dev_rot") && err.contains(cfg.to_str().unwrap()),
        "{err}"
    );
    // The engine reads the error from runc's log file, in runc's JSON format.
    let line = std::fs::read_to_string(&log).unwrap();
    let json: serde_json::Value = serde_json::from_str(line.lines().last().unwrap()).unwrap();
    assert_eq!(json["level"], "error");
    assert!(json["msg"].as_str().unwrap().contains("dev_rot"), "{line}");
}

#[test]
fn missing_runtime_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir, "runtimes = [\"no-such-runc\", \"/no/crun\"]\n");
    let out = Command::new(SHIM)
        .args(["state", "x"])
        .env("NPU_CONTAINER_RUNTIME_CONFIG", &cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no-such-runc") && err.contains("/no/crun"),
        "{err}"
    );
}

#[test]
fn a_missing_bundle_is_the_runtimes_to_report() {
    // runc answers a missing bundle in its own words and exit code; the shim adds nothing
    // and changes nothing (the drop-in contract: behave as runc where we have nothing to do).
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let fake = dir.path().join("fake-runc");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\necho \"$@\" > {}\necho 'fake-runc: no bundle' >&2\nexit 7\n",
            marker.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let cfg = config(&dir, &format!("runtimes = [{:?}]\n", fake));
    let out = Command::new(SHIM)
        .args(["create", "--bundle", "/nonexistent-bundle", "x"])
        .env("NPU_CONTAINER_RUNTIME_CONFIG", &cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("fake-runc: no bundle"), "{err}");
    assert!(!err.contains("npu-container-runtime"), "{err}");
    let argv = std::fs::read_to_string(&marker).expect("the runtime must run");
    assert_eq!(argv.trim(), "create --bundle /nonexistent-bundle x");
    assert!(!std::path::Path::new("/nonexistent-bundle").exists());
    // Other commands are passed through unchanged, exit code included.
    std::fs::remove_file(&marker).unwrap();
    let out = Command::new(SHIM)
        .args(["delete", "x"])
        .env("NPU_CONTAINER_RUNTIME_CONFIG", &cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(std::fs::read_to_string(&marker).unwrap().trim(), "delete x");
}

#[test]
fn hook_stages() {
    let (code, _, err) = run_with_stdin(Command::new(HOOK).arg("bogus"), b"");
    assert_eq!(code, 2);
    assert!(err.contains("usage"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        &dir,
        &format!("state_dir = {:?}\n", dir.path().join("state")),
    );
    let hook = |stage: &str| {
        let mut c = Command::new(HOOK);
        c.arg(stage).env("NPU_CONTAINER_RUNTIME_CONFIG", &cfg);
        c
    };
    // poststop never fails a deletion, even on garbage.
    let (code, _, err) = run_with_stdin(&mut hook("poststop"), b"garbage");
    assert_eq!(code, 0);
    assert!(err.contains("invalid container state"), "{err}");
    let (code, _, err) = run_with_stdin(&mut hook("create-runtime"), b"{\"id\": 3}");
    assert_eq!(code, 1);
    assert!(err.contains("invalid container state"), "{err}");
    // precreate passes a non-NPU spec through byte for byte.
    let spec = b"{\"process\": {\"env\": [\"A=1\"]},   \"root\": {\"path\": \"r\"}}";
    let (code, out, _) = run_with_stdin(&mut hook("precreate"), spec);
    assert_eq!(code, 0);
    assert_eq!(out.as_bytes(), spec);
    let bad = b"{\"process\": {\"env\": [\"ASCEND_VISIBLE_DEVICES=1,,2\"]}}";
    let (code, _, err) = run_with_stdin(&mut hook("precreate"), bad);
    assert_eq!(code, 1);
    assert!(
        err.contains("ASCEND_VISIBLE_DEVICES") && err.contains("empty item"),
        "{err}"
    );
}

#[test]
fn the_runtimes_exit_code_and_message_are_the_shims() {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("failing-runc");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho \"runc says no to $1\" >&2\nexit 42\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let cfg = config(&dir, &format!("runtimes = [{fake:?}]\n"));
    let bundle = dir.path().join("bundle");
    std::fs::create_dir_all(&bundle).unwrap();
    std::fs::write(
        bundle.join("config.json"),
        r#"{"process": {"env": []}, "root": {"path": "r"}}"#,
    )
    .unwrap();
    for args in [
        vec!["state", "x"],
        vec!["create", "--bundle", bundle.to_str().unwrap(), "x"],
    ] {
        let out = Command::new(SHIM)
            .args(&args)
            .env("NPU_CONTAINER_RUNTIME_CONFIG", &cfg)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(42), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            err.trim(),
            format!("runc says no to {}", args[0]),
            "{args:?}"
        );
    }
}
