//! `npu-ctk cdi generate`: a spec the container-device-interface crate accepts, and Podman
//! running `--device ascend.com/npu=N` from it with the isolation matrix intact (our hook comes
//! in through the spec's hooks), on pure cgroup v2 and on cgroup v1.
use std::{path::PathBuf, process::Command};

use npu_runtime::node::config::PATH_ENV;
use npu_tests::{
    bin,
    cgroups::each_cgroup_mode,
    engines::{Podman, matrix_script, parse_matrix},
    host::FakeHost,
    require_root, require_tools, run,
    runc::expect_only,
};

fn generate(host: &FakeHost, output: &std::path::Path) -> serde_json::Value {
    run(Command::new(bin("npu-ctk"))
        .env(PATH_ENV, &host.config_path)
        .args(["cdi", "generate", "--output"])
        .arg(output));
    serde_json::from_str(&std::fs::read_to_string(output).unwrap()).unwrap()
}

#[test]
fn generated_spec_is_valid() {
    // The fake host's device nodes need root.
    if !require_root() {
        return;
    }
    let host = FakeHost::new(3);
    let path = host.dir.path().join("ascend.json");
    let spec = generate(&host, &path);
    container_device_interface::spec::read_spec(&path, 0).expect("valid per the CDI crate");
    let names: Vec<&str> = spec["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["0", "1", "2", "all"]);
    assert_eq!(spec["kind"], "ascend.com/npu");
    let common = &spec["containerEdits"];
    assert_eq!(
        common["deviceNodes"].as_array().unwrap().len(),
        3,
        "management nodes"
    );
    assert_eq!(common["hooks"].as_array().unwrap().len(), 2);
    assert!(
        common["mounts"]
            .to_string()
            .contains("/usr/local/Ascend/driver/lib64")
    );
}

/// A CDI spec file in the engine's directory, removed on drop.
struct CdiFile(PathBuf);

impl Drop for CdiFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn podman_runs_cdi_devices_with_isolation() {
    if !(require_root() && require_tools(&["podman", "runc", "busybox", "nsenter"])) {
        return;
    }
    each_cgroup_mode(|place, mode| {
        let host = FakeHost::new(4);
        // Podman reads CDI specs from /etc/cdi and /var/run/cdi.
        std::fs::create_dir_all("/var/run/cdi").unwrap();
        let file = CdiFile(PathBuf::from(format!(
            "/var/run/cdi/{}.json",
            npu_tests::unique("npu-test")
        )));
        generate(&host, &file.0);
        let p = Podman::new(place, &host);
        let script = format!(
            "{}; cat /usr/local/Ascend/driver/version.info",
            matrix_script(host.chip_major, host.chips)
        );
        for (devices, granted) in [(&["1"][..], &[1][..]), (&["0", "2"][..], &[0, 2][..])] {
            let mut args: Vec<String> = Vec::new();
            for d in devices {
                args.push("--device".into());
                args.push(format!("ascend.com/npu={d}"));
            }
            args.extend([p.image.clone(), "sh".into(), "-c".into(), script.clone()]);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let (_, out) = p.run(&["--runtime", "runc"], &args);
            assert_eq!(
                parse_matrix(&out, host.chips),
                expect_only(granted, host.chips),
                "{mode} {devices:?}:\n{out}"
            );
            assert!(
                out.contains("Version=24.1.0"),
                "{mode}: driver mount:\n{out}"
            );
        }
        assert!(host.records().is_empty(), "{mode}: {:?}", host.records());
        assert!(host.granted_cgroups().is_empty(), "{mode}: grants left");
    });
}
