//! Real runc containers from busybox bundles, started through plain runc or our shim, and the
//! verdicts seen from inside them.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use crate::{bin, cgroups::Place, host::FakeHost, run, unique};

/// A busybox root filesystem for containers.
pub fn busybox_rootfs(dir: &Path) -> PathBuf {
    let rootfs = dir.join("rootfs");
    for sub in ["bin", "dev", "proc", "sys", "tmp", "etc"] {
        std::fs::create_dir_all(rootfs.join(sub)).unwrap();
    }
    let busybox = ["/usr/bin/busybox", "/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("busybox (busybox-static) is installed");
    std::fs::copy(busybox, rootfs.join("bin/busybox")).unwrap();
    for applet in [
        "sh", "cat", "echo", "ls", "mknod", "sleep", "true", "rm", "stat", "grep", "mount",
        "touch", "test",
    ] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    rootfs
}

/// Writes a busybox bundle under `dir/name`: `runc spec` with the rootfs, no terminal, a
/// writable root, CAP_MKNOD (as Docker gives; without it mknod fails before the device cgroup
/// is asked), `args`, then `edit`. Returns the bundle and the spec bytes written.
pub fn write_bundle(
    dir: &Path,
    name: &str,
    args: &[&str],
    edit: impl FnOnce(&mut serde_json::Value),
) -> (PathBuf, Vec<u8>) {
    let bundle = dir.join(name);
    std::fs::create_dir_all(&bundle).unwrap();
    let rootfs = busybox_rootfs(&bundle);
    run(Command::new("runc").arg("spec").current_dir(&bundle));
    let path = bundle.join("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    spec["root"]["path"] = rootfs.display().to_string().into();
    spec["root"]["readonly"] = false.into();
    spec["process"]["terminal"] = false.into();
    spec["process"]["args"] = serde_json::json!(args);
    for set in ["bounding", "effective", "permitted"] {
        if let Some(caps) = spec["process"]["capabilities"][set].as_array_mut() {
            caps.push("CAP_MKNOD".into());
        }
    }
    edit(&mut spec);
    let bytes = serde_json::to_vec_pretty(&spec).unwrap();
    std::fs::write(&path, &bytes).unwrap();
    (bundle, bytes)
}

/// A runc container running `sleep` from a busybox bundle, deleted on drop through the
/// runtime that created it (as engines do: the shim cleans up after the runtime's delete).
pub struct RuncContainer<'a> {
    pub place: Place<'a>,
    pub id: String,
    pub root: PathBuf,
    pub bundle: PathBuf,
    runtime: PathBuf,
    config: Option<PathBuf>,
}

impl<'a> RuncContainer<'a> {
    /// Writes a bundle whose spec `edit` may change (devices, resources, env), then
    /// `runc run -d` it through `runtime` (plain runc or our shim).
    pub fn start(
        place: Place<'a>,
        dir: &Path,
        runtime: &Path,
        edit: impl FnOnce(&mut serde_json::Value),
    ) -> Result<Self, String> {
        Self::start_inner(place, dir, runtime, None, edit)
    }

    /// Like [`Self::start`], with the runtime told where our configuration file is.
    pub fn start_with_env(
        place: Place<'a>,
        dir: &Path,
        runtime: &Path,
        config: &Path,
        edit: impl FnOnce(&mut serde_json::Value),
    ) -> Result<Self, String> {
        Self::start_inner(place, dir, runtime, Some(config), edit)
    }

    fn start_inner(
        place: Place<'a>,
        dir: &Path,
        runtime: &Path,
        config: Option<&Path>,
        edit: impl FnOnce(&mut serde_json::Value),
    ) -> Result<Self, String> {
        let id = unique("npu-ctr");
        let root = dir.join(format!("{id}-state"));
        let (bundle, _) = write_bundle(dir, &id, &["sleep", "3600"], edit);
        // The container inherits these descriptors: no pipe we would wait on for EOF.
        let errors = dir.join(format!("{id}.stderr"));
        let status = runtime_command(place, runtime, config, &root)
            .args(["run", "-d", "--bundle"])
            .arg(&bundle)
            .arg(&id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&errors).unwrap())
            .status()
            .map_err(|e| e.to_string())?;
        if status.success() {
            Ok(Self {
                place,
                id,
                root,
                bundle,
                runtime: runtime.to_path_buf(),
                config: config.map(Path::to_path_buf),
            })
        } else {
            // Nothing to delete: the runtime tore down what it had made (and an engine's
            // delete of it afterwards would hide what the shim left).
            // Hook errors reach us inside runc's own message, with their quotes escaped.
            Err(std::fs::read_to_string(&errors)
                .unwrap_or_default()
                .replace("\\\"", "\""))
        }
    }

    /// Verdict for device `major:minor` in the container: mknod it in /tmp, then open it.
    /// `ENXIO` means allowed (no driver behind it), `EPERM` denied.
    pub fn node_verdict(&self, major: u32, minor: u32) -> String {
        let n = format!("/tmp/n{major}_{minor}");
        let (ok, text) = self.sh(&format!(
            "rm -f {n}; mknod {n} c {major} {minor} && cat {n} </dev/null >/dev/null; r=$?; rm -f {n}; exit $r"
        ));
        errno_of(ok, &text)
    }

    /// The verdict for every chip of `host` from inside the container: ENXIO allowed, EPERM
    /// denied.
    pub fn chip_verdicts(&self, host: &FakeHost) -> Vec<String> {
        (0..host.chips)
            .map(|i| self.node_verdict(host.chip_major, i))
            .collect()
    }

    /// The runtime the container was created with, told its root and our configuration.
    pub fn runtime_command(&self) -> Command {
        runtime_command(
            self.place,
            &self.runtime,
            self.config.as_deref(),
            &self.root,
        )
    }

    pub fn runc(&self) -> Command {
        let mut cmd = self.place.command("runc");
        cmd.arg("--root").arg(&self.root);
        cmd
    }

    pub fn pid(&self) -> u32 {
        let state = run(self.runc().args(["state", &self.id]));
        let state: serde_json::Value = serde_json::from_str(&state).unwrap();
        state["pid"].as_u64().expect("pid") as u32
    }

    /// Runs a shell snippet in the container; returns (success, stdout + stderr).
    pub fn sh(&self, script: &str) -> (bool, String) {
        let out = self
            .runc()
            .args(["exec", &self.id, "sh", "-c", script])
            .stdin(Stdio::null())
            .output()
            .expect("runc exec");
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }

    /// The container's cgroup as `/proc/PID/cgroup` names it in the unified tree.
    pub fn unified_path(&self) -> String {
        let text = std::fs::read_to_string(format!("/proc/{}/cgroup", self.pid())).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("0::"))
            .expect("unified cgroup line")
            .to_string()
    }
}

impl Drop for RuncContainer<'_> {
    fn drop(&mut self) {
        let _ = self
            .runtime_command()
            .args(["delete", "-f", &self.id])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// `runtime` at `place`, told its state root and our configuration file (if any).
fn runtime_command(
    place: Place<'_>,
    runtime: &Path,
    config: Option<&Path>,
    root: &Path,
) -> Command {
    let mut cmd = place.command(runtime);
    if let Some(config) = config {
        cmd.env(npu_runtime::node::config::PATH_ENV, config);
    }
    cmd.arg("--root").arg(root);
    cmd
}

/// Opens `path` for reading in a container and names the outcome: `ENXIO`, `EPERM`, `ENOENT`
/// or `OK`, from busybox's error text.
pub fn open_verdict(container: &RuncContainer<'_>, path: &str) -> String {
    let (ok, text) = container.sh(&format!("cat {path} </dev/null >/dev/null"));
    errno_of(ok, &text)
}

pub fn errno_of(ok: bool, text: &str) -> String {
    if ok {
        "OK".into()
    } else if text.contains("No such device or address") {
        "ENXIO".into()
    } else if text.contains("Operation not permitted") {
        "EPERM".into()
    } else if text.contains("No such file or directory") {
        "ENOENT".into()
    } else {
        format!("other: {text}")
    }
}

/// The verdicts a container granted `granted` should see for NPUs `0..chips`.
pub fn expect_only(granted: &[u32], chips: u32) -> Vec<String> {
    (0..chips)
        .map(|i| {
            if granted.contains(&i) {
                "ENXIO"
            } else {
                "EPERM"
            }
            .to_string()
        })
        .collect()
}

/// Starts a sleeping container through npu-container-runtime asking for `npus`.
pub fn start_npu<'a>(
    place: Place<'a>,
    host: &FakeHost,
    npus: &str,
) -> Result<RuncContainer<'a>, String> {
    start_through_shim(
        place,
        host,
        &[&format!("ASCEND_VISIBLE_DEVICES={npus}")],
        |_| {},
    )
}

/// Starts a sleeping container through npu-container-runtime with `host`'s configuration,
/// `env` added to its environment and then `edit` applied to its spec.
pub fn start_through_shim<'a>(
    place: Place<'a>,
    host: &FakeHost,
    env: &[&str],
    edit: impl FnOnce(&mut serde_json::Value),
) -> Result<RuncContainer<'a>, String> {
    RuncContainer::start_with_env(
        place,
        host.dir.path(),
        &bin("npu-container-runtime"),
        &host.config_path,
        |spec| {
            let list = spec["process"]["env"].as_array_mut().unwrap();
            list.extend(env.iter().map(|e| serde_json::Value::from(*e)));
            edit(spec);
        },
    )
}

/// The spec's `linux.resources.devices` (device cgroup rules).
pub fn device_rules(spec: &mut serde_json::Value) -> &mut Vec<serde_json::Value> {
    spec["linux"]["resources"]["devices"]
        .as_array_mut()
        .unwrap()
}

/// Docker's privileged devices: allow everything, and every host node listed (here the fake
/// host's nodes, as Docker lists /dev).
pub fn privileged_devices(host: &FakeHost, spec: &mut serde_json::Value) {
    device_rules(spec).push(serde_json::json!({"allow": true, "access": "rwm"}));
    let mut nodes: Vec<serde_json::Value> = (0..host.chips)
        .map(|i| (format!("davinci{i}"), host.chip_major, i))
        .chain(
            ["davinci_manager", "devmm_svm", "hisi_hdc"]
                .iter()
                .enumerate()
                .map(|(m, n)| (n.to_string(), host.mgmt_major, m as u32)),
        )
        .map(|(name, major, minor)| {
            serde_json::json!({"path": format!("/dev/{name}"), "type": "c", "major": major, "minor": minor,
                   "fileMode": 0o666, "uid": 0, "gid": 0})
        })
        .collect();
    spec_devices(spec).append(&mut nodes);
}

pub fn spec_devices(spec: &mut serde_json::Value) -> &mut Vec<serde_json::Value> {
    let linux = &mut spec["linux"];
    if linux["devices"].is_null() {
        linux["devices"] = serde_json::json!([]);
    }
    linux["devices"].as_array_mut().unwrap()
}

/// `--device` of chip `i`: its node and its own exact rule.
pub fn device_entry(host: &FakeHost, spec: &mut serde_json::Value, i: u32) {
    spec_devices(spec).push(serde_json::json!({
        "path": format!("/dev/davinci{i}"), "type": "c", "major": host.chip_major, "minor": i,
        "fileMode": 0o666, "uid": 0, "gid": 0}));
    device_rules(spec).push(
        serde_json::json!({"allow": true, "type": "c", "major": host.chip_major, "minor": i,
                            "access": "rwm"}),
    );
}

/// The body of the wrapper binaries (`npu-request-runc`, `vm-runc`), called exactly as runc
/// is: on `create` and `run`, `edit` may change the bundle's spec (written back when it
/// returns true); then `runtime` is exec'd with the same argv. A missing or unreadable spec is
/// left for the runtime to report.
pub fn edit_spec_then_exec(
    name: &str,
    runtime: &Path,
    edit: impl FnOnce(&mut serde_json::Value) -> bool,
) -> ! {
    use std::os::unix::process::CommandExt;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parsed = npu_runtime::start::args::RuncArgs::parse(&args);
    if matches!(parsed.command.as_deref(), Some("create" | "run")) && !parsed.help {
        let bundle = parsed
            .bundle
            .clone()
            .unwrap_or_else(|| std::env::current_dir().unwrap_or_default());
        let path = bundle.join("config.json");
        if let Ok(text) = std::fs::read(&path)
            && let Ok(mut spec) = serde_json::from_slice::<serde_json::Value>(&text)
            && edit(&mut spec)
        {
            std::fs::write(&path, serde_json::to_vec_pretty(&spec).unwrap())
                .unwrap_or_else(|e| panic!("{name}: cannot write {}: {e}", path.display()));
        }
    }
    let err = Command::new(runtime).args(&args).exec();
    eprintln!("{name}: cannot run {}: {err}", runtime.display());
    std::process::exit(127)
}
