//! The Kubernetes side of `npu-ctk doctor`: the `npu` handler in containerd's CRI plugin
//! config, the shim binary it names, and how the shim treats pod sandboxes (the pause
//! container of every pod goes through the handler too and must pass through untouched).
use std::{os::unix::fs::PermissionsExt, path::Path, process::Command};

use super::{Check, Verdict, check};
use crate::{
    node::config::Config,
    operate::engines::{self, EngineError, RUNTIME_NAME},
    start::{
        names::Treatment,
        shim,
        spec::{Cleanup, Spec},
    },
};

const RUNC_V2: &str = "io.containerd.runc.v2";

/// A pod sandbox's spec as containerd's CRI plugin writes it (1.6 and 1.7): the pause
/// image's command, the engine's default capabilities, every device denied, none listed.
const SANDBOX: &str = r#"{
  "ociVersion": "1.0.2-dev",
  "process": {
    "args": ["/pause"], "cwd": "/", "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
    "capabilities": {"bounding": CAPS, "effective": CAPS, "permitted": CAPS}
  },
  "root": {"path": "rootfs", "readonly": true},
  "annotations": {"io.kubernetes.cri.container-type": "sandbox"},
  "linux": {
    "resources": {"devices": [{"allow": false, "access": "rwm"}], "cpu": {"shares": 2}},
    "cgroupsPath": "/kubepods/besteffort/pod0/sandbox"
  }
}"#;
const DEFAULT_CAPS: &str = r#"["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER",
  "CAP_MKNOD", "CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
  "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"]"#;
/// A privileged pod's sandbox has every capability, and still no device.
const ALL_CAPS: &str = r#"["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER",
  "CAP_MKNOD", "CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
  "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE", "CAP_SYS_ADMIN",
  "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_PTRACE", "CAP_NET_ADMIN", "CAP_SYS_RESOURCE"]"#;

/// The CRI checks: the handler, then the sandboxes.
/// Whether this node runs a kubelet (its program, or the directories it and kubeadm keep).
pub fn kubernetes_node() -> bool {
    ["/var/lib/kubelet", "/etc/kubernetes"]
        .iter()
        .any(|d| Path::new(d).is_dir())
        || ["/usr/bin/kubelet", "/usr/local/bin/kubelet"]
            .iter()
            .any(|p| Path::new(p).is_file())
}

pub fn checks(config: &Config, containerd_config: &Path) -> Vec<Check> {
    vec![handler(containerd_config), sandboxes(config)]
}

fn handler(path: &Path) -> Check {
    let name = "CRI handler";
    let configure = "npu-ctk runtime configure --runtime=containerd, then restart containerd";
    let h = match engines::containerd_handler(path) {
        Ok(h) => h,
        Err(EngineError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return check(
                name,
                Verdict::Warn,
                format!(
                    "no {}: containerd is not configured on this node",
                    path.display()
                ),
                configure,
            );
        }
        Err(e) => {
            return check(
                name,
                Verdict::Fail,
                e.to_string(),
                "fix the file (containerd does not start with it)",
            );
        }
    };
    let at = format!("{} in {}", h.section, path.display());
    if h.cri_disabled {
        return check(
            name,
            Verdict::Warn,
            format!(
                "the CRI plugin is disabled (disabled_plugins) in {}: the kubelet cannot reach any handler",
                path.display()
            ),
            "on a Kubernetes node, remove \"cri\" from disabled_plugins",
        );
    }
    if !h.registered {
        return check(
            name,
            Verdict::Warn,
            format!("no handler \"{RUNTIME_NAME}\" ({at})"),
            configure,
        );
    }
    if h.runtime_type.as_deref() != Some(RUNC_V2) {
        return check(
            name,
            Verdict::Fail,
            format!(
                "{at}: runtime_type is {:?}, not {RUNC_V2:?}",
                h.runtime_type.unwrap_or_default()
            ),
            configure,
        );
    }
    let Some(binary) = h.binary else {
        return check(
            name,
            Verdict::Fail,
            format!(
                "{at} names no options.BinaryName: its pods run plain runc, with no NPU and no isolation"
            ),
            configure,
        );
    };
    let executable = std::fs::metadata(&binary)
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if !executable {
        return check(
            name,
            Verdict::Fail,
            format!(
                "{at}: BinaryName {} is not an executable file: every pod of the handler fails to start",
                binary.display()
            ),
            "install npu-container-runtime there, or run npu-ctk runtime configure --runtime=containerd --runtime-path PATH",
        );
    }
    // It must be our shim (a wrapper that execs it counts): it says so first after runc.
    let version = Command::new(&binary).arg("--version").output();
    let says = version
        .as_ref()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if !says.contains("npu-container-runtime") {
        let first = says.lines().next().unwrap_or("nothing").to_string();
        return check(
            name,
            Verdict::Fail,
            format!(
                "{at}: BinaryName {} is not npu-container-runtime (its --version says {first:?})",
                binary.display()
            ),
            "point BinaryName at npu-container-runtime",
        );
    }
    let default = if h.default {
        "; the default runtime (pods without a RuntimeClass use it)"
    } else {
        "; pods choose it with a RuntimeClass of handler \"npu\""
    };
    check(
        name,
        Verdict::Ok,
        format!(
            "\"{RUNTIME_NAME}\" runs {} (config version {}){default}",
            binary.display(),
            h.version
        ),
        "",
    )
}

fn sandboxes(config: &Config) -> Check {
    let name = "CRI sandboxes";
    for (what, caps) in [
        ("a pod's sandbox", DEFAULT_CAPS),
        ("a privileged pod's sandbox", ALL_CAPS),
    ] {
        let text = SANDBOX.replace("CAPS", caps);
        let treated = Spec::parse(text.as_bytes(), "sandbox/config.json".into())
            .map_err(|e| e.to_string())
            .and_then(|mut spec| {
                shim::edit(config, &mut spec, Cleanup::Shim).map_err(|e| e.to_string())
            });
        match treated {
            Ok(Treatment::PassThrough) => {}
            Ok(other) => {
                return check(
                    name,
                    Verdict::Fail,
                    format!(
                        "{what} would not pass through ({other:?}): every pod would start slower"
                    ),
                    "report this: pause containers name no NPU and reach none",
                );
            }
            Err(e) => {
                return check(
                    name,
                    Verdict::Fail,
                    format!("{what} fails: {e}"),
                    "fix the config the error names",
                );
            }
        }
    }
    check(
        name,
        Verdict::Ok,
        "pause containers (plain and privileged pods) pass through untouched".into(),
        "",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandboxes_pass_through_and_a_request_would_not() {
        let config = Config::default();
        let c = sandboxes(&config);
        assert_eq!(c.verdict, Verdict::Ok, "{}", c.detail);
        // The same spec with a request is granted: the check looks at what matters.
        let text = SANDBOX
            .replace("CAPS", DEFAULT_CAPS)
            .replace(r#""env": ["#, r#""env": ["ASCEND_VISIBLE_DEVICES=0", "#);
        let mut spec = Spec::parse(text.as_bytes(), "config.json".into()).unwrap();
        assert!(!matches!(
            shim::edit(&config, &mut spec, Cleanup::Shim),
            Ok(Treatment::PassThrough)
        ));
    }

    #[test]
    fn the_handler_is_judged_by_what_it_runs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        let verdict = |text: &str| {
            std::fs::write(&path, text).unwrap();
            let c = handler(&path);
            (c.verdict, c.detail)
        };
        let section = "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.npu]";
        assert_eq!(
            handler(&dir.path().join("none.toml")).verdict,
            Verdict::Warn
        );
        assert_eq!(verdict("version = 2\n").0, Verdict::Warn);
        let (v, d) = verdict(&format!(
            "version = 2\n{section}\nruntime_type = \"{RUNC_V2}\"\n"
        ));
        assert!(v == Verdict::Fail && d.contains("BinaryName"), "{d}");
        let (v, d) = verdict(&format!(
            "version = 2\n{section}\nruntime_type = \"{RUNC_V2}\"\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.npu.options]\nBinaryName = \"/no/such/shim\"\n"
        ));
        assert!(v == Verdict::Fail && d.contains("/no/such/shim"), "{d}");
        let (v, d) = verdict(&format!(
            "version = 2\n{section}\nruntime_type = \"{RUNC_V2}\"\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.npu.options]\nBinaryName = \"/bin/true\"\n"
        ));
        assert!(
            v == Verdict::Fail && d.contains("not npu-container-runtime"),
            "{d}"
        );
        let (v, d) = verdict(&format!(
            "version = 2\n{section}\nruntime_type = \"io.containerd.kata.v2\"\n"
        ));
        assert!(v == Verdict::Fail && d.contains("kata"), "{d}");
    }
}
